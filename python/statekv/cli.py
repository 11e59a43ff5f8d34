"""The `statekv` command line: `statekv info`, `statekv convert`, `statekv bench ...`."""
from __future__ import annotations

import argparse
import json
import sys


def _cmd_info(args: argparse.Namespace) -> int:
    from .model import Model, backends

    if args.model is None:
        for d in backends():
            print(f"{d['name']}: {d['description']} ({d['type']}, {d['memory_total'] / 2**30:.1f} GiB)")
        return 0
    info = Model(args.model, device=args.device, threads=args.threads).info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:>16}: {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import convert
    from .bench import frames, make_model, text

    p = argparse.ArgumentParser(prog="statekv", description="Linear-time long-video VLM inference on ggml.")
    sub = p.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="describe a GGUF model (or list devices without -m)")
    info.add_argument("-m", "--model", help="text GGUF file")
    info.add_argument("--device", default=None)
    info.add_argument("-t", "--threads", type=int, default=None)
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=_cmd_info)

    conv = sub.add_parser("convert", help="convert a Hugging Face checkpoint to GGUF (llama.cpp layout)")
    convert.add_arguments(conv)
    conv.set_defaults(func=convert.run)

    bench = sub.add_parser("bench", help="benchmarks")
    bsub = bench.add_subparsers(dest="bench_command", required=True)
    bt = bsub.add_parser("text", help="prompt tokens/s at KV depths (comparable with llama-bench -fa 1)")
    text.add_arguments(bt)
    bt.set_defaults(func=text.run)
    bf = bsub.add_parser("frames", help="per-step latency, FLOPs and memory of frame steps per mode")
    frames.add_arguments(bf)
    bf.set_defaults(func=frames.run)
    bm = bsub.add_parser("make-model", help="write a random-weight GGUF at a real model's shapes")
    make_model.add_arguments(bm)
    bm.set_defaults(func=make_model.run)
    return p


def main(argv: list[str] | None = None) -> int:
    from . import ModelError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ModelError, ValueError, FileNotFoundError) as exc:
        print(f"statekv: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("statekv: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
