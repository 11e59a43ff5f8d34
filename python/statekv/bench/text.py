"""`statekv bench text`: prompt-processing speed at given KV depths, measured as llama.cpp's
``llama-bench -p N -d D -fa 1`` measures it (KV cache filled to depth D, then N prompt tokens
timed; flash attention; logits of the last token only), so the two tables compare directly."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", required=True, help="text GGUF file")
    p.add_argument("-p", "--n-prompt", type=_int_list, default=[512], help="prompt tokens, e.g. 256 or 128,512")
    p.add_argument("-d", "--n-depth", type=_int_list, default=[0], help="KV depths, e.g. 0,4096")
    p.add_argument("-t", "--threads", type=int, default=0, help="CPU threads (0: all)")
    p.add_argument("-r", "--repetitions", type=int, default=5)
    p.add_argument("-ctk", "--cache-type", default="f16", help="KV cache type (f32, f16, q8_0)")
    p.add_argument("-ub", "--ubatch-size", type=int, default=512)
    p.add_argument("--device", default=None)
    p.add_argument("-o", "--output", choices=["md", "json"], default="md")


def run(args: argparse.Namespace) -> int:
    from ..model import Model

    model = Model(args.model, device=args.device, threads=args.threads or None)
    info = model.info()
    rows = []
    for depth in args.n_depth:
        for n in args.n_prompt:
            secs = model.bench_prompt(n, depth, args.repetitions, args.cache_type, args.ubatch_size)
            tps = [n / s for s in secs]
            rows.append({
                "model": os.path.basename(args.model), "arch": info["architecture"],
                "size_bytes": info["weights_bytes"], "device": info["device"], "threads": info["threads"],
                "n_prompt": n, "n_depth": depth, "cache_type": args.cache_type,
                "seconds": secs, "tokens_per_second_median": statistics.median(tps),
                "tokens_per_second_mean": statistics.fmean(tps),
                "tokens_per_second_stdev": statistics.stdev(tps) if len(tps) > 1 else 0.0,
            })
    if args.output == "json":
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    print("| model | arch | size | device | threads | test | t/s (median) | t/s (mean ± sd) |")
    print("| --- | --- | ---: | --- | ---: | --- | ---: | ---: |")
    for r in rows:
        test = f"pp{r['n_prompt']}" + (f" @ d{r['n_depth']}" if r["n_depth"] else "")
        print(f"| {r['model']} | {r['arch']} | {r['size_bytes'] / 2**20:.1f} MiB | {r['device']} | {r['threads']} | "
              f"{test} | {r['tokens_per_second_median']:.2f} | "
              f"{r['tokens_per_second_mean']:.2f} ± {r['tokens_per_second_stdev']:.2f} |")
    return 0
