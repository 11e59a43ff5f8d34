"""`statekv bench make-model`: a GGUF with random weights at a real model's LLM shapes.

The file has llama.cpp's layout (architecture strings, tensor names and metadata keys as
``convert_hf_to_gguf.py`` writes them, the real Qwen2 vocabulary and a chat template), so
llama.cpp and statekv both load it; only the weights are random (normal, std 0.02; norms
around 1), drawn deterministically from a seed. Real performance does not need trained
weights.

Tensors are generated, quantized and written in chunks of rows, so writing an 8B model needs
a few hundred MB of RAM, never the whole model. Quantization (Q8_0, Q4_0) is vectorized numpy,
bit exact with gguf-py's reference quantizers (which match ggml's ``quantize_row_*_ref``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import os
import struct
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

import gguf
from gguf.constants import GGMLQuantizationType as QT, GGML_QUANT_SIZES, LlamaFileType, TokenType

try:  # package import (statekv.bench.make_model)
    from .shapes import ENDOFTEXT_ID, SHAPES, Shape, format_table, get_shape
except ImportError:  # run as a file (python make_model.py)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from shapes import ENDOFTEXT_ID, SHAPES, Shape, format_table, get_shape  # type: ignore
try:  # inside the statekv package: its gguf-py reader (statekv.gguf_io)
    from ..gguf_io import read_gguf_kv as _read_gguf_kv
except ImportError:  # run as a file, or this folder loaded on its own
    _read_gguf_kv = None

__all__ = [
    "QTYPES", "make_model", "add_arguments", "run", "main",
    "quantize_q8_0", "quantize_q4_0", "quantize", "tokenizer_metadata", "find_data_dir",
    "read_gguf_metadata", "FastGGUFWriter",
]

# --type value -> (tensor type of 2-D weights, general.file_type)
QTYPES: dict[str, tuple[QT, LlamaFileType]] = {
    "f32": (QT.F32, LlamaFileType.ALL_F32),
    "f16": (QT.F16, LlamaFileType.MOSTLY_F16),
    "q8_0": (QT.Q8_0, LlamaFileType.MOSTLY_Q8_0),
    "q4_0": (QT.Q4_0, LlamaFileType.MOSTLY_Q4_0),
}

WEIGHT_STD = 0.02
NORM_STD = 0.02  # norms are 1 + N(0, NORM_STD)
CHUNK_ELEMS = 1 << 22  # ~4M values per generated chunk (16 MB of float32)

# ------------------------------------------------------------------------------------------
# quantization (block layouts as in ggml-common.h)

_SUB_BLOCKS = 2048  # blocks per inner step (64K values): keeps the temporaries in cache


def _split_blocks(x: np.ndarray, block: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 0 or x.shape[-1] % block:
        raise ValueError(f"row length {x.shape[-1] if x.ndim else 0} is not a multiple of the block size {block}")
    return x.reshape(-1, block)


def _q8_0_blocks(b: np.ndarray, out: np.ndarray) -> None:
    # amax per block: reduce over the leading axis of the transposed copy (vectorizes well;
    # a max over the short trailing axis of 32 does not)
    t = np.ascontiguousarray(b.T)
    np.abs(t, out=t)
    d = t.max(axis=0)
    d /= np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)[:, None]
    a = np.abs(b)
    a *= inv  # |x * id|, the same float32 product as ggml's x*id
    r = np.rint(a)
    r += (a - r) == np.float32(0.5)  # rint ties to even; roundf ties away from zero
    np.copysign(r, b, out=r)
    out[:, :2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    out[:, 2:] = r.astype(np.int8).view(np.uint8)


def _q4_0_blocks(b: np.ndarray, out: np.ndarray) -> None:
    imax = np.abs(b).argmax(axis=1)[:, None]  # first value of largest magnitude, as ggml
    d = np.take_along_axis(b, imax, axis=1)
    d /= np.float32(-8)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d)
    y = b * inv
    y += np.float32(8.5)  # >= 0: the cast truncates like ggml's (int8_t)(x0 + 8.5f)
    q = y.astype(np.uint8)
    np.minimum(q, np.uint8(15), out=q)
    out[:, :2] = d.astype(np.float16).view(np.uint8)
    np.left_shift(q[:, 16:], np.uint8(4), out=q[:, 16:])
    np.bitwise_or(q[:, :16], q[:, 16:], out=out[:, 2:])


def _quantize_blocks(x: np.ndarray, fn: Callable[[np.ndarray, np.ndarray], None], type_size: int) -> np.ndarray:
    shape = x.shape
    b = _split_blocks(x, 32)
    out = np.empty((b.shape[0], type_size), dtype=np.uint8)
    for i in range(0, b.shape[0], _SUB_BLOCKS):
        fn(b[i:i + _SUB_BLOCKS], out[i:i + _SUB_BLOCKS])
    return out.reshape(*shape[:-1], shape[-1] // 32 * type_size)


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    """Q8_0 (block_q8_0): per 32 values, fp16 d = amax/127, then 32 int8 q = roundf(x/d).

    float32 rows (..., n) -> uint8 (..., n/32*34). Same float32 arithmetic as ggml's
    quantize_row_q8_0_ref and gguf-py's quantizer (bit exact), round half away from zero.
    """
    return _quantize_blocks(x, _q8_0_blocks, 34)


def quantize_q4_0(x: np.ndarray) -> np.ndarray:
    """Q4_0 (block_q4_0): per 32 values, fp16 d = max/-8 (max = the signed value of largest
    magnitude), then 16 bytes; q = min(15, trunc(x/d + 8.5)); byte j = q[j] | q[j+16] << 4.

    float32 rows (..., n) -> uint8 (..., n/32*18), bit exact with ggml's quantize_row_q4_0_ref.
    """
    return _quantize_blocks(x, _q4_0_blocks, 18)


def quantize(x: np.ndarray, qtype: QT) -> np.ndarray:
    """float32 rows -> the stored array for `qtype` (float32, float16 or uint8 blocks)."""
    if qtype == QT.F32:
        return np.ascontiguousarray(x, dtype=np.float32)
    if qtype == QT.F16:
        return x.astype(np.float16)
    if qtype == QT.Q8_0:
        return quantize_q8_0(x)
    if qtype == QT.Q4_0:
        return quantize_q4_0(x)
    raise ValueError(f"no quantizer for {qtype.name} (make-model writes f32, f16, q8_0 or q4_0)")


def _row_nbytes(ncols: int, qtype: QT) -> int:
    block, type_size = GGML_QUANT_SIZES[qtype]
    return ncols // block * type_size


# ------------------------------------------------------------------------------------------
# shared data: vocabulary and chat templates


def find_data_dir() -> Path | None:
    """The data folder (vocab/, templates/): $STATEKV_DATA_DIR, else the one shipped in the
    package (statekv/data: the Qwen2-family vocabulary and chat templates, MIT, see its licence)."""
    env = os.environ.get("STATEKV_DATA_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent / "data"
    return here if (here / "vocab").is_dir() else None


# Added tokens of the tokenizers (tokenizer_config.json added_tokens_decoder); `special` as
# there. llama.cpp's converter types them CONTROL when special or when they look like <|...|>,
# USER_DEFINED otherwise. The Qwen2 vocabulary file only carries the first three.
_QWEN25_ADDED = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
    ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False),
    ("<|file_sep|>", False),
]  # ids 151643 .. 151664
# Gemma 3 shapes: the Qwen2 vocabulary's three plus Gemma's special tokens (<end_of_turn> is the
# shapes' eos, GEMMA3_END_OF_TURN_ID).
_GEMMA3_ADDED = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
                 ("<start_of_turn>", True), ("<end_of_turn>", True), ("<start_of_image>", True),
                 ("<end_of_image>", True), ("<image_soft_token>", True), ("<bos>", True)]

_ADDED_TOKENS = {
    "qwen2.5": _QWEN25_ADDED,
    "qwen3": _QWEN25_ADDED + [
        ("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False),
    ],
    "internvl3": _QWEN25_ADDED + [
        ("<img>", True), ("</img>", True), ("<IMG_CONTEXT>", True), ("<quad>", True), ("</quad>", True),
        ("<ref>", True), ("</ref>", True), ("<box>", True), ("</box>", True),
    ],
    "gemma3": _GEMMA3_ADDED,
}


def read_gguf_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """All key/value metadata of a GGUF file, as python values (gguf-py's field contents: str,
    int, float, bool, lists for arrays), read with gguf-py: :func:`statekv.gguf_io.read_gguf_kv`
    inside the package, gguf.GGUFReader itself when this file runs on its own (slower: seconds
    for the 300k-entry Qwen2 vocabulary)."""
    if _read_gguf_kv is not None:
        return _read_gguf_kv(path)
    reader = gguf.GGUFReader(path)
    return {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}


@functools.lru_cache(maxsize=4)
def _read_vocab(path: str) -> dict[str, Any]:
    kv = read_gguf_metadata(path)
    out: dict[str, Any] = {
        "model": kv["tokenizer.ggml.model"],
        "pre": kv["tokenizer.ggml.pre"],
        "tokens": kv["tokenizer.ggml.tokens"],
        "types": [int(x) for x in kv["tokenizer.ggml.token_type"]],
        "merges": kv["tokenizer.ggml.merges"],
    }
    for k in ("bos_token_id", "eos_token_id", "padding_token_id"):
        if f"tokenizer.ggml.{k}" in kv:
            out[k] = int(kv[f"tokenizer.ggml.{k}"])
    return out


def tokenizer_metadata(shape: Shape, vocab_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Token list, types, merges and special ids for `shape`, from the real Qwen2 vocabulary:
    its added tokens filled in at their ids, then cut or padded with [PAD{i}] (UNUSED) to the
    shape's vocab size, as llama.cpp's converter does."""
    v = _read_vocab(str(vocab_path))
    n_base = ENDOFTEXT_ID  # regular BPE tokens 0 .. 151642
    tokens = list(v["tokens"][:n_base])
    types = list(v["types"][:n_base])
    for text, special in _ADDED_TOKENS[shape.added_tokens]:
        tokens.append(text)
        looks_special = text.startswith("<|") and text.endswith("|>")
        types.append(int(TokenType.CONTROL if special or looks_special else TokenType.USER_DEFINED))
    if len(tokens) > shape.vocab:
        raise ValueError(f"shape {shape.name}: vocab {shape.vocab} < {len(tokens)} real tokens")
    for i in range(len(tokens), shape.vocab):
        tokens.append(f"[PAD{i}]")
        types.append(int(TokenType.UNUSED))
    return {
        "model": v["model"], "pre": v["pre"], "tokens": tokens, "types": types, "merges": v["merges"],
        "bos": v.get("bos_token_id", ENDOFTEXT_ID), "eos": shape.eos_id,
        "pad": v.get("padding_token_id", ENDOFTEXT_ID),
    }


# ------------------------------------------------------------------------------------------
# the writer


class FastGGUFWriter(gguf.GGUFWriter):
    """gguf.GGUFWriter that packs long homogeneous str / int arrays (the 300k-entry vocabulary)
    in one go instead of one struct.pack per item. The bytes are the same as GGUFWriter's."""

    def _pack_val(self, val: Any, vtype: gguf.GGUFValueType, add_vtype: bool,
                  sub_type: gguf.GGUFValueType | None = None) -> bytes:
        VT = gguf.GGUFValueType
        if (vtype == VT.ARRAY and isinstance(val, (list, tuple)) and len(val) > 16
                and self.endianess == gguf.GGUFEndian.LITTLE):
            head = struct.pack("<I", vtype) if add_vtype else b""
            if sub_type in (None, VT.STRING) and all(type(x) is str for x in val):
                body = b"".join(struct.pack("<Q", len(e)) + e for e in (x.encode("utf-8") for x in val))
                return head + struct.pack("<IQ", VT.STRING, len(val)) + body
            if sub_type in (None, VT.INT32) and all(type(x) is int for x in val):
                arr = np.asarray(val, dtype=np.int64)
                if arr.min() >= -(2**31) and arr.max() < 2**31:
                    return head + struct.pack("<IQ", VT.INT32, len(val)) + arr.astype("<i4").tobytes()
        return super()._pack_val(val, vtype, add_vtype, sub_type)


def _tensor_seed(seed: int, name: str, chunk: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, zlib.crc32(name.encode()), chunk])))


def _kind(name: str) -> str:
    if name.endswith("norm.weight"):
        return "norm"
    return "bias" if name.endswith(".bias") else "weight"


def _gen_chunk(seed: int, name: str, chunk: int, rows: int, cols: int, qtype: QT) -> np.ndarray:
    rng = _tensor_seed(seed, name, chunk)
    x = rng.standard_normal((rows, cols), dtype=np.float32)
    kind = _kind(name)
    x *= np.float32(NORM_STD if kind == "norm" else WEIGHT_STD)
    if kind == "norm":
        x += np.float32(1.0)
    return quantize(x, qtype)


def _plan(shape: Shape, qtype: QT) -> list[tuple[str, tuple[int, ...], QT]]:
    plan = []
    for name, shp in shape.tensor_shapes():
        if len(shp) == 1:
            t = QT.F32  # norms and biases stay F32, as llama.cpp's converter keeps them
        else:
            block = GGML_QUANT_SIZES[qtype][0]
            # rows not a multiple of the block size fall back to F16, as the converter does
            t = qtype if shp[-1] % block == 0 else QT.F16
        plan.append((name, shp, t))
    return plan


def make_model(
    shape: str | Shape | Mapping[str, Any],
    qtype: str,
    out_path: str | os.PathLike[str],
    seed: int = 0,
    *,
    vocab_path: str | os.PathLike[str] | None = None,
    template_path: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    tokenizer: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write a random-weight GGUF of `shape` (a name from SHAPES, a Shape, or a dict of Shape
    fields) with 2-D weights in `qtype` (f32, f16, q8_0, q4_0) to `out_path`.

    Deterministic in `seed`: each tensor chunk has its own generator, so the bytes do not depend
    on `threads`. `tokenizer=False` leaves out the tokenizer.ggml.* keys (the vocabulary is most
    of the metadata; llama.cpp needs it, quick structural tests do not). Returns a summary (path,
    shape name, type, tensor count, params, bytes, seconds).
    """
    t0 = time.perf_counter()
    shp = get_shape(shape)
    qkey = str(qtype).lower()
    if qkey not in QTYPES:
        raise ValueError(f"unknown type {qtype!r}; expected one of {', '.join(QTYPES)}")
    wtype, ftype = QTYPES[qkey]

    data_dir = find_data_dir()
    if tokenizer and vocab_path is None:
        if data_dir is None:
            raise FileNotFoundError(
                "the Qwen2 vocabulary was not found: pass vocab_path (--vocab) or set STATEKV_DATA_DIR "
                "to the folder holding vocab/ggml-vocab-qwen2.gguf and templates/")
        vocab_path = data_dir / "vocab" / "ggml-vocab-qwen2.gguf"
    if template_path is None:
        if data_dir is None:
            raise FileNotFoundError(
                f"chat template {shp.chat_template} was not found: pass template_path (--template) "
                "or set STATEKV_DATA_DIR to the folder holding templates/")
        template_path = data_dir / "templates" / shp.chat_template
    for p, what in ((vocab_path, "vocabulary"), (template_path, "chat template")):
        if p is not None and not Path(p).is_file():
            raise FileNotFoundError(f"{what} file not found: {p}")
    tok = tokenizer_metadata(shp, vocab_path) if tokenizer else None
    template = Path(template_path).read_text(encoding="utf-8")

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    plan = _plan(shp, wtype)

    w = FastGGUFWriter(None, shp.arch)
    # general.* as the converter writes them
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(f"statekv random {shp.name}")
    # {arch}.* hyper-parameters (TextModel.set_gguf_parameters order)
    w.add_block_count(shp.layers)
    w.add_context_length(shp.context_length)
    w.add_embedding_length(shp.hidden)
    w.add_feed_forward_length(shp.ffn)
    w.add_head_count(shp.heads)
    w.add_head_count_kv(shp.kv_heads)
    if shp.mrope_sections is not None:
        w.add_rope_dimension_sections(list(shp.mrope_sections))
    w.add_rope_freq_base(shp.rope_theta)
    w.add_layer_norm_rms_eps(shp.rms_eps)
    if shp.explicit_head_dim:
        w.add_key_length(shp.head_dim)
        w.add_value_length(shp.head_dim)
    if shp.sliding_window is not None:
        w.add_sliding_window(shp.sliding_window)
    if shp.rope_linear_factor is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(shp.rope_linear_factor)
    w.add_file_type(int(ftype))
    if shp.n_deepstack is not None:
        w.add_num_deepstack_layers(shp.n_deepstack)
    # tokenizer.* (gpt2 BPE; the ByteLevel post-processor makes the converter write
    # add_bos_token = false)
    if tok is not None:
        w.add_tokenizer_model(tok["model"])
        w.add_tokenizer_pre(tok["pre"])
        w.add_token_list(tok["tokens"])
        w.add_token_types(tok["types"])
        w.add_token_merges(tok["merges"])
        w.add_eos_token_id(tok["eos"])
        w.add_pad_token_id(tok["pad"])
        w.add_bos_token_id(tok["bos"])
        w.add_add_bos_token(False)
    w.add_chat_template(template)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    for name, s, t in plan:
        if t in (QT.F32, QT.F16):
            dt = np.float32 if t == QT.F32 else np.float16
            nbytes = int(np.prod(s)) * np.dtype(dt).itemsize
            w.add_tensor_info(name, s, np.dtype(dt), nbytes)
        else:
            byte_shape = (*s[:-1], _row_nbytes(s[-1], t))
            w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=t)

    n_threads = threads or min(2, os.cpu_count() or 1)
    total = 0
    tmp_path = out_path.with_name(out_path.name + ".tmp")
    try:
        w.write_header_to_file(tmp_path)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        assert w.fout is not None and len(w.fout) == 1
        fout = w.fout[0]
        with concurrent.futures.ThreadPoolExecutor(max_workers=n_threads) as pool:
            for ti, (name, s, t) in enumerate(plan):
                rows = int(np.prod(s[:-1])) if len(s) > 1 else 1
                cols = s[-1]
                chunk_rows = max(1, CHUNK_ELEMS // cols)
                starts = list(range(0, rows, chunk_rows))
                w.write_padding(fout, fout.tell())
                nbytes = 0
                # at most 2 * threads chunks in flight: bounded memory, ordered writes
                pending: list[concurrent.futures.Future[np.ndarray]] = []
                it = iter(enumerate(starts))
                done = False
                while not done or pending:
                    while not done and len(pending) < 2 * n_threads:
                        try:
                            ci, r0 = next(it)
                        except StopIteration:
                            done = True
                            break
                        pending.append(pool.submit(_gen_chunk, seed, name, ci, min(chunk_rows, rows - r0), cols, t))
                    if pending:
                        arr = pending.pop(0).result()
                        arr.tofile(fout)
                        nbytes += arr.nbytes
                expected = w.tensors[0][name].nbytes
                if nbytes != expected:
                    raise AssertionError(f"{name}: wrote {nbytes} bytes, expected {expected}")
                w.write_padding(fout, nbytes)
                total += nbytes
                if progress is not None:
                    progress(f"[{ti + 1}/{len(plan)}] {name} {t.name} {tuple(s)}")
        w.close()
        os.replace(tmp_path, out_path)
    except BaseException:
        w.close()
        tmp_path.unlink(missing_ok=True)
        raise
    return {
        "path": str(out_path), "shape": shp.name, "type": qkey, "seed": seed,
        "n_tensors": len(plan), "n_params": shp.n_params(), "tensor_bytes": total,
        "file_bytes": out_path.stat().st_size, "seconds": time.perf_counter() - t0,
    }


# ------------------------------------------------------------------------------------------
# CLI (mounted by the statekv CLI as `statekv bench make-model`)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", nargs="?", help="output .gguf path")
    parser.add_argument("--shape", choices=list(SHAPES), help="model shape (see --list)")
    parser.add_argument("--type", dest="qtype", default="q8_0", choices=list(QTYPES),
                        help="type of the 2-D weights (norms and biases stay f32); default q8_0")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--threads", type=int, default=None, help="worker threads (default: up to 2)")
    parser.add_argument("--vocab", default=None, help="vocabulary GGUF (default: shared data ggml-vocab-qwen2.gguf)")
    parser.add_argument("--template", default=None, help="chat template file (default: the shape's)")
    parser.add_argument("--no-tokenizer", dest="tokenizer", action="store_false",
                        help="leave out the vocabulary (smaller metadata; llama.cpp cannot load such a file)")
    parser.add_argument("--list", action="store_true", help="print the known shapes and exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def run(args: argparse.Namespace) -> int:
    if args.list:
        print(format_table())
        return 0
    if not args.shape or not args.out:
        print("make-model: --shape and an output path are required (or --list)", file=sys.stderr)
        return 2
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    info = make_model(args.shape, args.qtype, args.out, seed=args.seed, vocab_path=args.vocab,
                      template_path=args.template, threads=args.threads, tokenizer=args.tokenizer,
                      progress=log)
    print(f"wrote {info['path']}: {info['shape']} {info['type']}, {info['n_tensors']} tensors, "
          f"{info['n_params'] / 1e9:.2f}B params, {info['file_bytes'] / 2**20:.1f} MiB "
          f"in {info['seconds']:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="statekv bench make-model", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
