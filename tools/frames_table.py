"""The per-frame table of docs/benchmarks.md: statekv's measured frame steps (`statekv bench frames
--json`) against llama.cpp's cost per frame, integrated from `llama-bench -p <tokens per step> -d ...`
at a few depths (a frame at depth d costs the same prompt processing as llama-bench's pp at d).

    python tools/frames_table.py STATEKV_FRAMES.json LLAMA_BENCH_DEPTHS.json ENCODER_SECONDS \
        [--frames 1,16,64,128,256,512]

The peer's step time between and beyond the measured depths comes from a least-squares line
a + b * depth (attention over the KV cache is linear in its length; the fit's residuals are printed
so that the reader can judge it). ENCODER_SECONDS per frame is added to both sides' frames (the
same tower on the same file costs the same on both; see benchmarks.md for the measured encoders).
"""
from __future__ import annotations

import argparse
import json

import numpy as np


def peer_fit(results: list[dict], tokens: int) -> tuple[float, float, list[tuple[int, float, float]]]:
    depths = np.array([r["n_depth"] for r in results], dtype=float)
    seconds = np.array([tokens / r["avg_ts"] for r in results])
    b, a = np.polyfit(depths, seconds, 1)
    return a, b, [(int(d), s, a + b * d) for d, s in zip(depths, seconds)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("statekv_json")
    p.add_argument("llama_bench_json")
    p.add_argument("encoder_seconds", type=float)
    p.add_argument("--frames", default="1,16,32,64,128,256,512")
    p.add_argument("--mode", default="statekv")
    args = p.parse_args()
    sk = json.load(open(args.statekv_json))
    tokens = int(sk["tokens_per_step"])
    mode = sk["modes"][args.mode]
    steps = np.array(mode["step_seconds"])
    peer = [r for r in json.load(open(args.llama_bench_json)) if r["n_prompt"] == tokens and r["n_gen"] == 0]
    a, b, fit = peer_fit(peer, tokens)
    print(f"llama.cpp step of {tokens} tokens: {a:.3f} s + {b * 1e3:.4f} ms per token of depth "
          f"(measured vs line: " + ", ".join(f"d{d}: {s:.2f}/{f:.2f}" for d, f, s in [(d, f, s) for d, s, f in fit]) + ")")
    prefix = 0  # the prompt before the first frame is a few tokens on both sides; depth counts frames
    marks = [int(x) for x in args.frames.split(",") if int(x) <= len(steps)]
    print(f"| frame | statekv s/frame | llama.cpp s/frame | statekv total s | llama.cpp total s | ratio of totals |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    peer_total = sk_total = 0.0
    for i in range(1, max(marks) + 1):
        depth = prefix + (i - 1) * tokens
        peer_frame = args.encoder_seconds + a + b * depth
        sk_frame = args.encoder_seconds + steps[i - 1]
        peer_total += peer_frame
        sk_total += sk_frame
        if i in marks:
            print(f"| {i} | {sk_frame:.2f} | {peer_frame:.2f} | {sk_total:.0f} | {peer_total:.0f} | "
                  f"{peer_total / sk_total:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
