"""`statekv bench frames`: the cost of each frame step as the video grows, per mode.

Every mode runs in its own process (so peak RSS is its own) on the same model and the same
random steps: a prefix, then `--steps` steps of `--tokens-per-step` tokens. Reported per mode:
per-step latency against step index, FLOPs per step (counted from the shapes and what each
step attends to), bytes of the carried state C and the detailed cache D, peak RSS. The summary
compares modes as ratios measured in one run, on the medians of the steps around each index.
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
    src.add_argument("--shape", help="make (once, cached) a random-weight model of this shape, e.g. qwen2.5-0.5b")
    p.add_argument("--type", default="q8_0", help="weight type for --shape (f16, q8_0, q4_0)")
    p.add_argument("--modes", default="full,window,statekv,statekv-all",
                   help="comma-separated: full, window, statekv, statekv-all (statekv with B >= all tokens)")
    p.add_argument("--steps", type=int, default=128)
    p.add_argument("--growing-steps", type=int, default=None,
                   help="run the modes whose cost grows with the video (full, statekv-all) for at most this many "
                        "steps (default: --steps)")
    p.add_argument("--tokens-per-step", type=int, default=256)
    p.add_argument("--budget", type=int, default=1024)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--kv-type", default="f16")
    p.add_argument("-t", "--threads", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--compare", type=_int_list, default=[16, 128], help="two step indices for the ratios")
    p.add_argument("--smooth", type=int, default=2, help="median over steps i-k..i+k for each reported index")
    p.add_argument("--json", default="bench_frames.json", help="output JSON path")
    p.add_argument("--plot", default="bench_frames.png", help="output PNG path ('' to skip)")


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

    from ..model import Model

    try:
        m = Model(cfg["model"], device=cfg["device"], threads=cfg["threads"] or None)
        info = m.info()
        mode = cfg["mode"]
        n, steps = cfg["tokens_per_step"], cfg["steps"]
        budget = cfg["budget"] if mode != "statekv-all" else PREFIX_TOKENS + n * steps
        s = m.session(mode="statekv" if mode.startswith("statekv") else mode, budget=budget, window=cfg["window"],
                      kv_type=cfg["kv_type"], expected_length=PREFIX_TOKENS + n * steps + 64)
        rng = np.random.default_rng(0)
        vocab = min(info["n_vocab"], 150000)
        s.prefill(rng.integers(0, vocab, PREFIX_TOKENS))
        for _ in range(steps):
            s.add_step(rng.integers(0, vocab, n))
        st = s.stats()
        out.put({"mode": mode, "info": info, "step_seconds": st["step_seconds"], "bytes_detailed": st["bytes_detailed"],
                 "bytes_carried": st["bytes_carried"], "tokens_carried": st["tokens_carried"],
                 "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024})
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
    if args.steps <= 0 or args.tokens_per_step <= 0:
        raise ValueError("--steps and --tokens-per-step must be positive")
    model = _model_path(args)
    ctx = mp.get_context("spawn")
    results = {}
    for mode in modes:
        q = ctx.Queue()
        steps = args.steps
        if mode in ("full", "statekv-all") and args.growing_steps:
            steps = min(steps, args.growing_steps)
        cfg = {"model": model, "device": args.device, "threads": args.threads, "mode": mode, "steps": steps,
               "tokens_per_step": args.tokens_per_step, "budget": args.budget, "window": args.window,
               "kv_type": args.kv_type}
        proc = ctx.Process(target=_worker, args=(cfg, q))
        proc.start()
        r = q.get()
        proc.join()
        if "error" in r:
            raise ValueError(f"bench frames, mode {mode}: {r['error']}")
        print(f"{mode}: {len(r['step_seconds'])} steps in {sum(r['step_seconds']):.1f} s", file=sys.stderr)
        results[mode] = r
    info = next(iter(results.values()))["info"]
    n = args.tokens_per_step
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
