"""`statekv bench frames`: the cost of each frame step as the video grows, per mode.

Every mode runs in its own process (so peak RSS is its own) on the same model and the same
random steps: a prefix, then `--steps` steps of `--tokens-per-step` tokens. Reported per mode:
per-step latency against step index, FLOPs per step (counted from the shapes and what each
step attends to), bytes of the carried state C and the detailed cache D, peak RSS. The summary
compares modes as ratios measured in one run, on the medians of the steps around each index.

With a vision model (`--mmproj FILE`, or `--shape` of a video VLM, which pairs the text model
with a cached random-weight mmproj of its vision tower) each mode's process also times the
encoder (`--encode-frames` frames per call, median of `--encode-reps` calls after a warm-up),
the steps take the family's layout (the encoder's visual rows plus the step's text tokens, see
statekv/bench/vision.py) instead of `--tokens-per-step`, and each mode reports encoder ms per
frame, LLM step ms and the end-to-end cost per frame: encoder time of a step's frames plus the
step, over the frames of a step (the family's frames per step).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
from pathlib import Path

PREFIX_TOKENS = 16


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-m", "--model", help="text GGUF file")
    src.add_argument("--shape", help="make (once, cached) a random-weight model of this shape, e.g. qwen2.5-0.5b; "
                                      "a video VLM's shape (see bench/vision.py TOWER_OF_SHAPE) also gets a cached random "
                                      "mmproj of its vision tower")
    p.add_argument("--type", default="q8_0", help="weight type for --shape (f16, q8_0, q4_0)")
    p.add_argument("--modes", default="full,window,statekv,statekv-all",
                   help="comma-separated: full, window, statekv, statekv-all (statekv with B >= all tokens)")
    p.add_argument("--steps", type=int, default=128)
    p.add_argument("--growing-steps", type=int, default=None,
                   help="run the modes whose cost grows with the video (full, statekv-all) for at most this many "
                        "steps (default: --steps)")
    p.add_argument("--tokens-per-step", type=int, default=None,
                   help="tokens per step of a text-only run (default 256); with a vision model they come from the "
                        "encoder's output and the step's text")
    p.add_argument("--budget", type=int, default=1024)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--kv-type", default="f16")
    p.add_argument("-t", "--threads", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--compare", type=_int_list, default=[16, 128], help="two step indices for the ratios")
    p.add_argument("--smooth", type=int, default=2, help="median over steps i-k..i+k for each reported index")
    p.add_argument("--json", default="bench_frames.json", help="output JSON path")
    p.add_argument("--plot", default="bench_frames.png", help="output PNG path ('' to skip)")
    v = p.add_argument_group("vision encoder")
    v.add_argument("--mmproj", default=None, help="mmproj GGUF of the text model: also time the vision encoder")
    v.add_argument("--no-vision", action="store_true",
                   help="with --shape of a video VLM: text model only")
    v.add_argument("--mmproj-type", default="f16", help="weight type of the random mmproj made for --shape")
    v.add_argument("--encode-frames", type=int, default=None,
                   help="frames per encode call (default: one step's frames, as the family's layout says)")
    v.add_argument("--encode-reps", type=int, default=3, help="timed encode calls (after one warm-up); median")
    v.add_argument("--source-size", default="640x360",
                   help="WIDTHxHEIGHT of the source video frames; the frame size of families that size frames "
                        "for the whole video follows from it and the video's frame count (others encode one "
                        "image_size tile)")


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "statekv" / "bench"


def _model_path(args) -> str:
    if args.model:
        return args.model
    from .make_model import make_model

    path = _cache_dir() / f"{args.shape}-{args.type}.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"making random-weight model {args.shape} ({args.type}) at {path} ...", file=sys.stderr)
        make_model(args.shape, args.type, path)
    return str(path)


def _wants_vision(args) -> bool:
    """--mmproj given, or --shape of a video VLM without --no-vision."""
    if args.mmproj and args.no_vision:
        raise ValueError("--mmproj and --no-vision exclude each other")
    from .vision import TOWER_OF_SHAPE

    return bool(args.mmproj) or (bool(args.shape) and not args.no_vision and args.shape in TOWER_OF_SHAPE)


def _mmproj_path(args) -> str | None:
    """The mmproj to time: --mmproj, else for --shape of a video VLM its cached random tower."""
    if not _wants_vision(args):
        return None
    if args.mmproj:
        return args.mmproj
    from .vision import random_mmproj_path

    return str(random_mmproj_path(args.shape, args.mmproj_type, _cache_dir()))


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--source-size {text!r}: expected WIDTHxHEIGHT, e.g. 640x360") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"--source-size {text!r}: both sides must be positive")
    return w, h


def step_flops(info: dict, n: int, visible_before: int) -> float:
    """FLOPs of one step of n tokens whose queries see `visible_before` earlier keys plus the
    step's own keys up to themselves (2 FLOPs per multiply-add)."""
    E, L, H, Hkv, D, F = (info[k] for k in ("n_embd", "n_layer", "n_head", "n_head_kv", "head_dim", "n_ff"))
    proj = 2 * n * E * (H * D + 2 * Hkv * D) + 2 * n * H * D * E + 3 * 2 * n * E * F
    keys_seen = n * visible_before + n * (n + 1) / 2
    attn = 2 * 2 * H * D * keys_seen  # QK^T and PV
    return float(L * (proj + attn))


def _visible_before(mode: str, step: int, n: int, budget: int, window: int) -> int:
    past = PREFIX_TOKENS + step * n
    if mode in ("full", "statekv-all"):
        return past
    if mode == "window":
        return PREFIX_TOKENS + min(step, window) * n
    return min(budget, past)


def _worker(cfg: dict, out: "mp.Queue") -> None:
    import resource

    import numpy as np

    from .. import families
    from ..model import Model

    try:
        m = Model(cfg["model"], mmproj=cfg["mmproj"], device=cfg["device"], threads=cfg["threads"] or None)
        info = m.info()
        mode = cfg["mode"]
        steps = cfg["steps"]
        rng = np.random.default_rng(0)
        vocab = min(info["n_vocab"], 150000)
        result = {"mode": mode, "info": info}
        layout = encoder = None
        if cfg["mmproj"]:
            from . import vision

            source = tuple(cfg["source_size"])
            # the video the benchmark stands for (--steps steps in every mode): its frame count
            # fixes the frame size of families that size frames for the whole video
            layout = vision.step_layout(info, cfg["video_steps"], source)
            encoder, layout = vision.time_encoder(m, layout, cfg["encode_frames"] or layout.frames_per_step,
                                                  cfg["encode_reps"], rng, source)
            n = layout.tokens_per_step
            result.update(layout=vars(layout), encoder_seconds=encoder.seconds,
                          frames_per_encode=encoder.frames_per_encode, row_width=int(encoder.rows.shape[1]))
        else:
            n = cfg["tokens_per_step"]
        budget = cfg["budget"] if mode != "statekv-all" else PREFIX_TOKENS + n * steps
        s = m.session(mode="statekv" if mode.startswith("statekv") else mode, budget=budget, window=cfg["window"],
                      kv_type=cfg["kv_type"], expected_length=PREFIX_TOKENS + n * steps + 64)
        family = families.get(layout.family) if layout is not None else None
        prefix = rng.integers(0, vocab, PREFIX_TOKENS)
        # the family's positions (three axes for M-RoPE families), None: the session's own
        s.prefill(prefix, positions=family.text_positions(0, PREFIX_TOKENS) if family else None)
        start = PREFIX_TOKENS
        for _ in range(steps):
            ids = rng.integers(0, vocab, n)
            if layout is None:
                s.add_step(ids)
                continue
            positions, start = family.step_positions(layout, start)
            # every step gets the same encoder output: the rows' values do not change the cost
            s.add_step(ids, embeddings=encoder.rows, embedding_rows=layout.row_indices, positions=positions)
        st = s.stats()
        result.update({"tokens_per_step": n, "step_seconds": st["step_seconds"], "bytes_detailed": st["bytes_detailed"],
                       "bytes_carried": st["bytes_carried"], "tokens_carried": st["tokens_carried"],
                       "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024})
        out.put(result)
    except BaseException as exc:  # reported by the parent
        out.put({"mode": cfg["mode"], "error": f"{type(exc).__name__}: {exc}"})


def _smoothed(values: list[float], i: int, k: int) -> float:
    lo, hi = max(0, i - k), min(len(values), i + k + 1)
    return statistics.median(values[lo:hi])


def run(args: argparse.Namespace) -> int:
    modes = [x.strip() for x in args.modes.split(",") if x.strip()]
    for mode in modes:
        if mode not in ("full", "window", "statekv", "statekv-all"):
            raise ValueError(f"unknown mode {mode!r} in --modes")
    # check the arguments before making any (large) random-weight file
    if _wants_vision(args) and args.tokens_per_step is not None:
        raise ValueError("--tokens-per-step does not apply with a vision model: a step holds the encoder's visual rows "
                         "and the step's text (pass --no-vision for a text-only run)")
    tokens_per_step = args.tokens_per_step if args.tokens_per_step is not None else 256
    if args.steps <= 0 or tokens_per_step <= 0:
        raise ValueError("--steps and --tokens-per-step must be positive")
    source_size = _size(args.source_size)
    model = _model_path(args)
    mmproj = _mmproj_path(args)
    ctx = mp.get_context("spawn")
    results = {}
    for mode in modes:
        q = ctx.Queue()
        steps = args.steps
        if mode in ("full", "statekv-all") and args.growing_steps:
            steps = min(steps, args.growing_steps)
        cfg = {"model": model, "device": args.device, "threads": args.threads, "mode": mode, "steps": steps,
               "tokens_per_step": tokens_per_step, "budget": args.budget, "window": args.window,
               "kv_type": args.kv_type, "mmproj": mmproj, "video_steps": args.steps, "source_size": source_size,
               "encode_frames": args.encode_frames, "encode_reps": args.encode_reps}
        proc = ctx.Process(target=_worker, args=(cfg, q))
        proc.start()
        r = q.get()
        proc.join()
        if "error" in r:
            raise ValueError(f"bench frames, mode {mode}: {r['error']}")
        print(f"{mode}: {len(r['step_seconds'])} steps in {sum(r['step_seconds']):.1f} s"
              + (f", encoder {statistics.median(r['encoder_seconds']):.2f} s per {r['frames_per_encode']} frame(s)"
                 if mmproj else ""), file=sys.stderr)
        results[mode] = r
    info = next(iter(results.values()))["info"]
    n = next(iter(results.values()))["tokens_per_step"]  # with a vision model: from the encoder's output
    report = {"model": model, "arch": info["architecture"], "threads": info["threads"], "device": info["device"],
              "tokens_per_step": n, "steps": args.steps, "budget": args.budget, "window": args.window,
              "kv_type": args.kv_type, "modes": {}}
    for mode, r in results.items():
        secs = r["step_seconds"]
        report["modes"][mode] = {
            "step_seconds": secs,
            "flops_per_step": [step_flops(info, n, _visible_before(mode, i, n, args.budget, args.window)) for i in range(len(secs))],
            "bytes_carried": r["bytes_carried"], "bytes_detailed": r["bytes_detailed"],
            "tokens_carried": r["tokens_carried"], "peak_rss_bytes": r["peak_rss_bytes"],
        }
    # Ratios at the compared indices (1-based step numbers, as "step 16").
    a, b = args.compare[0], args.compare[-1]
    ratios = {}

    def lat(mode, step):
        return _smoothed(report["modes"][mode]["step_seconds"], step - 1, args.smooth)

    def ran(mode, step):
        return mode in results and step <= len(results[mode]["step_seconds"])

    if ran("statekv", a) and ran("statekv", b):
        ratios[f"statekv step {b} / step {a}"] = lat("statekv", b) / lat("statekv", a)
    for s in (a, b):
        if ran("statekv-all", s) and ran("full", s):
            ratios[f"statekv(B>=all) / full at step {s}"] = lat("statekv-all", s) / lat("full", s)
        if ran("statekv", s) and ran("full", s):
            ratios[f"statekv / full at step {s}"] = lat("statekv", s) / lat("full", s)
    if ran("full", a) and ran("full", b):
        ratios[f"full step {b} / step {a}"] = lat("full", b) / lat("full", a)
    if ran("full", a):
        depth = PREFIX_TOKENS + (a - 1) * n
        report["full_tokens_per_second_at_step"] = {str(a): n / lat("full", a), "kv_depth": depth}
    report["ratios"] = ratios
    if mmproj:
        _add_vision_report(report, results, lat, mmproj, source_size, args.encode_reps)

    # Table.
    shown = sorted({i for i in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, args.steps) if i <= args.steps} | set(args.compare))
    shown = [i for i in shown if i <= args.steps]
    print(f"\nper-step latency (ms, median of steps i-{args.smooth}..i+{args.smooth}), {n} tokens/step, "
          f"{info['architecture']} {os.path.basename(model)}, {info['threads']} threads")
    print("| step | " + " | ".join(f"{m} ms" for m in results) + " | " + " | ".join(f"{m} GFLOP" for m in results) + " |")
    print("|" + " ---: |" * (1 + 2 * len(results)))
    for i in shown:
        lats = [f"{lat(m, i) * 1e3:.1f}" if ran(m, i) else "-" for m in results]
        fl = [f"{report['modes'][m]['flops_per_step'][i - 1] / 1e9:.3g}" if ran(m, i) else "-" for m in results]
        print(f"| {i} | " + " | ".join(lats) + " | " + " | ".join(fl) + " |")
    if mmproj:
        _print_vision_table(report, args.smooth)
    print("\n| mode | C tokens | C MiB | D MiB | peak RSS MiB |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for m, r in report["modes"].items():
        print(f"| {m} | {r['tokens_carried']} | {r['bytes_carried'] / 2**20:.1f} | {r['bytes_detailed'] / 2**20:.1f} | "
              f"{r['peak_rss_bytes'] / 2**20:.0f} |")
    if ratios:
        print()
        for k, v in ratios.items():
            print(f"{k}: {v:.3f}")
    if "full_tokens_per_second_at_step" in report:
        f = report["full_tokens_per_second_at_step"]
        print(f"full mode at step {a} (KV depth {f['kv_depth']}): {f[str(a)]:.2f} tokens/s "
              f"(compare: llama-bench -p {n} -d {f['kv_depth']} -fa 1 -t {info['threads']})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
        print(f"\nwrote {args.json}")
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _add_vision_report(report: dict, results: dict, lat, mmproj: str, source_size: tuple[int, int],
                       encode_reps: int) -> None:
    """Encoder timing, and per mode the end-to-end cost per frame: the encoder time of a step's
    frames plus the LLM step, over the frames of a step."""
    first = next(iter(results.values()))
    layout = first["layout"]
    frames_per_step = layout["frames_per_step"]
    report["vision"] = {
        "mmproj": mmproj, "projector": first["info"]["vision.projector"], "family": layout["family"],
        "frame_size": list(layout["frame_size"]),
        # the frame size of families whose frames are resized for the whole video follows from the source's
        "source_size": list(source_size) if layout["grid"] is not None else None,
        "frames_per_step": frames_per_step, "visual_rows_per_step": layout["visual_rows"],
        "text_tokens_per_step": layout["text_before"] + layout["text_after"], "row_width": first["row_width"],
        "frames_per_encode": first["frames_per_encode"], "encode_repetitions": encode_reps,
    }
    for mode, r in results.items():
        encoder_per_frame = statistics.median(r["encoder_seconds"]) / r["frames_per_encode"]
        last = len(r["step_seconds"])
        report["modes"][mode].update({
            "encoder_seconds_per_call": r["encoder_seconds"],
            "encoder_seconds_per_frame": encoder_per_frame,
            "end_to_end_seconds_per_frame": [encoder_per_frame + t / frames_per_step for t in r["step_seconds"]],
            "summary": {  # smoothed like the table (median of the steps around the index)
                "first_step_seconds": lat(mode, 1), "last_step": last, "last_step_seconds": lat(mode, last),
                "end_to_end_seconds_per_frame_last_step": encoder_per_frame + lat(mode, last) / frames_per_step,
            },
        })


def _print_vision_table(report: dict, smooth: int) -> None:
    v = report["vision"]
    h, w = v["frame_size"]
    print(f"\nper-frame cost with the vision encoder ({v['family']}, {w}x{h} frames, {v['frames_per_step']} "
          f"frame(s) and {v['visual_rows_per_step']} visual rows + {v['text_tokens_per_step']} text tokens per step; "
          f"encoder: median of {v['encode_repetitions']} calls of {v['frames_per_encode']} frame(s); "
          f"LLM step: median of steps i-{smooth}..i+{smooth}; "
          f"end-to-end = encoder ms/frame + step ms / {v['frames_per_step']})")
    print("| mode | encoder ms/frame | LLM step 1 ms | last step | LLM last step ms "
          "| end-to-end ms/frame (last step) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for m, r in report["modes"].items():
        sm = r["summary"]
        print(f"| {m} | {r['encoder_seconds_per_frame'] * 1e3:.1f} | {sm['first_step_seconds'] * 1e3:.1f} | "
              f"{sm['last_step']} | {sm['last_step_seconds'] * 1e3:.1f} | "
              f"{sm['end_to_end_seconds_per_frame_last_step'] * 1e3:.1f} |")


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for mode, r in report["modes"].items():
        secs = r["step_seconds"]
        ax.plot(range(1, len(secs) + 1), [s * 1e3 for s in secs], label=mode, linewidth=1.4)
    ax.set_xlabel("frame step")
    ax.set_ylabel("latency per step (ms)")
    ax.set_title(f"{report['arch']}, {report['tokens_per_step']} tokens/step, B={report['budget']}, "
                 f"R={report['window']}, {report['threads']} threads")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
