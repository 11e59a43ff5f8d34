"""Write a tiny random-weight model as GGUF with statekv's converter (the test suite's fixture
builder), for trying the CLI before you have a real model:

    python tests/make_tiny_gguf.py /tmp/statekv-tiny [--arch qwen2|qwen3|qwen3vl] [--outtype f32|f16|q8_0]

prints the path of the GGUF it wrote.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--arch", default="qwen2", choices=sorted(tiny.BUILDERS))
    p.add_argument("--outtype", default="f32")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    from statekv.convert import convert

    out = Path(a.out_dir)
    hf = tiny.make(a.arch, out / f"hf-{a.arch}", seed=a.seed)
    gguf = convert(hf, out / f"{a.arch}-{a.outtype}.gguf", a.outtype)
    print(gguf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
