"""Convert a Hugging Face checkpoint directory to a GGUF file laid out like llama.cpp's.

    statekv convert HF_DIR OUT.gguf [--outtype f32|f16|bf16|q8_0|auto]
    python -m statekv.convert HF_DIR OUT.gguf [--outtype ...]

The output is what llama.cpp's ``convert_hf_to_gguf.py`` writes for the same checkpoint (same
architecture string, tensor names, tensor types and metadata keys), so statekv's tests can make
GGUF files from tiny transformers models and users' existing files load the same way.

Supported (``config.json`` ``architectures[0]`` -> GGUF architecture):

* ``Qwen2ForCausalLM`` -> ``qwen2``
* ``Qwen3ForCausalLM`` -> ``qwen3``
* ``Qwen3VLForConditionalGeneration`` -> ``qwen3vl`` (the text model; vision tensors are skipped:
  they go to a separate ``mmproj`` file, whose writer is registered per family in
  :mod:`statekv.families`)

Tensor types: 1-D tensors (norms, biases), ``*_norm.weight`` and tensors whose name does not end
in ``.weight`` stay F32; other weights take the output type.  A weight whose rows are not a
multiple of the quantization block falls back to F16, as llama.cpp does.

Errors: a missing directory or file raises ``FileNotFoundError``; an unsupported or malformed
checkpoint raises :class:`ConversionError` (a ``ValueError``).  Both name the file and what was
expected.  The output is written to a temporary file next to ``OUT.gguf`` and renamed at the
end, so a failed conversion leaves nothing behind.

Only numpy, gguf-py and the standard library are used (no torch, no transformers); the compiled
extension is not imported.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from .common import OUTTYPES, ConversionError, add_clip_vision_keys, read_image_mean_std, write_gguf_atomically
from .hf_vocab import detect_pre_tokenizer, merges_from_hf, vocab_from_hf
from .safetensors import SafetensorsIndex
from .text import _tensor_qtype  # noqa: F401 - checked by the tests
from .text import TEXT_ONLY, convert, mmproj_writers, text_families

__all__ = [
    "ConversionError",
    "OUTTYPES",
    "TEXT_ONLY",
    "text_families",
    "mmproj_writers",
    "SafetensorsIndex",
    "detect_pre_tokenizer",
    "vocab_from_hf",
    "merges_from_hf",
    "read_image_mean_std",
    "add_clip_vision_keys",
    "write_gguf_atomically",
    "convert",
    "add_arguments",
    "run",
    "main",
]


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``convert`` arguments to ``parser`` (used by ``statekv convert``)."""
    parser.add_argument("hf_dir", help="Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json)")
    parser.add_argument("out", help="output GGUF path (the text model)")
    parser.add_argument("--outtype", choices=[*OUTTYPES, "auto"], default="auto",
                        help="type of 2-D weights (norms and biases stay f32); auto = bf16 for bf16 "
                             "checkpoints, else f16 (default: %(default)s)")
    parser.add_argument("--mmproj", metavar="PATH", default=None,
                        help="also write the vision projector GGUF to PATH (families with an mmproj writer only)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``convert`` command; returns the process exit code."""
    if getattr(args, "verbose", False):
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = convert(args.hf_dir, args.out, args.outtype, mmproj_out=args.mmproj)
    except (FileNotFoundError, ConversionError) as e:
        print(f"statekv convert: error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="statekv convert", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
