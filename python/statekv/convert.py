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
  :data:`MMPROJ_WRITERS`)

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
import json
import logging
import math
import os
import re
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

__all__ = [
    "ConversionError",
    "OUTTYPES",
    "TEXT_FAMILIES",
    "MMPROJ_WRITERS",
    "SafetensorsIndex",
    "detect_pre_tokenizer",
    "vocab_from_hf",
    "merges_from_hf",
    "convert",
    "add_arguments",
    "run",
    "main",
]

logger = logging.getLogger("statekv.convert")


class ConversionError(ValueError):
    """The checkpoint cannot be converted (unsupported or malformed); the message names the file."""


def _gguf():
    import gguf  # gguf-py; imported lazily so `statekv --help` stays fast

    return gguf


# --------------------------------------------------------------------------------------------
# Output types
# --------------------------------------------------------------------------------------------

# outtype -> (GGMLQuantizationType name, LlamaFileType name)
OUTTYPES: dict[str, tuple[str, str]] = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
}


# --------------------------------------------------------------------------------------------
# Safetensors, read with numpy (no torch)
# --------------------------------------------------------------------------------------------

_ST_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # converted below
}


@dataclass
class _StEntry:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


class SafetensorsIndex:
    """Tensor names, shapes and lazily loaded float32 data of a checkpoint's safetensors files."""

    def __init__(self, hf_dir: Path):
        self.dir = hf_dir
        self.entries: dict[str, _StEntry] = {}
        files = self._find_files(hf_dir)
        for f in files:
            self._read_header(f)

    @staticmethod
    def _find_files(hf_dir: Path) -> list[Path]:
        index = hf_dir / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ConversionError(f"{index}: malformed safetensors index ({e}); expected a JSON "
                                      "object with a 'weight_map'") from None
            files = []
            for name in dict.fromkeys(weight_map.values()):
                p = hf_dir / name
                if not p.is_file():
                    raise FileNotFoundError(f"{p}: shard listed in {index.name} is missing")
                files.append(p)
            return files
        files = sorted(p for p in hf_dir.glob("model*.safetensors") if p.is_file())
        if files:
            return files
        bins = sorted(hf_dir.glob("pytorch_model*.bin"))
        if bins:
            raise ConversionError(
                f"{bins[0]}: PyTorch .bin checkpoints are not supported; expected model.safetensors "
                "(re-save the model with save_pretrained(..., safe_serialization=True))")
        raise FileNotFoundError(
            f"{hf_dir}: no weights found (expected model.safetensors or model.safetensors.index.json "
            "with its shards)")

    def _read_header(self, path: Path) -> None:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ConversionError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            n = int.from_bytes(head, "little")
            if n <= 0 or 8 + n > size:
                raise ConversionError(f"{path}: not a safetensors file (bad header length {n})")
            try:
                header = json.loads(f.read(n).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ConversionError(f"{path}: not a safetensors file (bad JSON header: {e})") from None
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype, shape, (b, e) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise ConversionError(f"{path}: malformed header entry for tensor {name!r}") from None
            if base + e > size:
                raise ConversionError(f"{path}: tensor {name!r} extends past the end of the file (truncated?)")
            if name in self.entries:
                raise ConversionError(f"{path}: tensor {name!r} also appears in {self.entries[name].file.name}")
            self.entries[name] = _StEntry(path, dtype, shape, base + b, base + e)

    def names(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name].shape

    def dtype(self, name: str) -> str:
        return self.entries[name].dtype

    def load(self, name: str) -> np.ndarray:
        """The tensor as a float32 numpy array (a fresh array, not a view of the file)."""
        e = self.entries[name]
        np_dtype = _ST_DTYPES.get(e.dtype)
        if np_dtype is None:
            raise ConversionError(f"{e.file}: tensor {name!r} has dtype {e.dtype}, expected one of "
                                  f"{sorted(_ST_DTYPES)} (quantized checkpoints are not supported)")
        count = math.prod(e.shape)
        if (e.end - e.start) != count * np_dtype.itemsize:
            raise ConversionError(f"{e.file}: tensor {name!r} has {e.end - e.start} bytes, expected "
                                  f"{count * np_dtype.itemsize} for {e.dtype}{list(e.shape)}")
        raw = np.fromfile(e.file, dtype=np_dtype, count=count, offset=e.start).reshape(e.shape)
        if e.dtype == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------
# Tokenizer (byte-level BPE from tokenizer.json)
# --------------------------------------------------------------------------------------------

_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _is_split(node: dict, regex: str) -> bool:
    return (node.get("type") == "Split" and node.get("pattern", {}).get("Regex") == regex
            and node.get("behavior") == "Isolated" and not node.get("invert", False))


def _is_bytelevel_noregex(node: dict) -> bool:
    return (node.get("type") == "ByteLevel" and not node.get("add_prefix_space", False)
            and node.get("use_regex", True) is False)


def detect_pre_tokenizer(tokenizer_json: dict, where: str = "tokenizer.json") -> str:
    """The ``tokenizer.ggml.pre`` value for an HF ``tokenizer.json`` (parsed), or raise.

    llama.cpp identifies pre-tokenizers by hashing the ids of a probe text; statekv looks at the
    pre-tokenizer itself: a byte-level BPE whose words are split by the Qwen2 regex (isolated)
    and then byte-mapped without a second regex is ``qwen2``.  Anything else raises
    :class:`ConversionError` naming the file.
    """
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE":
        raise ConversionError(f"{where}: tokenizer model {model.get('type')!r} is not supported "
                              "(expected a byte-level 'BPE' model)")
    pt = tokenizer_json.get("pre_tokenizer") or {}
    seq = pt.get("pretokenizers") if pt.get("type") == "Sequence" else None
    if seq and len(seq) == 2 and _is_split(seq[0], _QWEN2_SPLIT) and _is_bytelevel_noregex(seq[1]):
        norm = tokenizer_json.get("normalizer")
        if norm is None or norm.get("type") == "NFC":
            return "qwen2"
    summary = json.dumps(pt)[:300]
    raise ConversionError(
        f"{where}: unrecognized pre-tokenizer {summary}; supported: 'qwen2' (Sequence[Split(Qwen2 "
        "regex, Isolated), ByteLevel(use_regex=false)], as in the Qwen2/Qwen2.5/Qwen3 tokenizers)")


def merges_from_hf(tokenizer_json: dict, where: Path | str = "tokenizer.json") -> list[str]:
    """``tokenizer.ggml.merges``: "left right" strings (a space inside a part is stored as U+0120,
    as llama.cpp does for the pair format of tokenizers >= 0.20)."""
    merges = (tokenizer_json.get("model") or {}).get("merges") or []
    if not merges:
        raise ConversionError(f"{where}: no BPE merges found (expected model.merges)")
    if isinstance(merges[0], str):
        return list(merges)
    out = []
    for pair in merges:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise ConversionError(f"{where}: malformed merge {pair!r} (expected [left, right])")
        a, b = pair
        if " " in a or " " in b:
            a, b = a.replace(" ", "\u0120"), b.replace(" ", "\u0120")
        out.append(a + " " + b)
    return out


def _has_bytelevel_post_processor(tokenizer_json: dict) -> bool:
    pp = tokenizer_json.get("post_processor") or {}
    return any(p.get("type") == "ByteLevel" for p in pp.get("processors", [pp]))


def _looks_special(token: str) -> bool:
    # Added tokens that llama.cpp's converter treats as control tokens even when not flagged special
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
            or (token.startswith("<unused") and token.endswith(">")))


def _read_tokenizer_json(hf_dir: Path) -> dict:
    path = hf_dir / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (expected the Hugging Face fast tokenizer file "
                                "tokenizer.json next to config.json)")
    try:
        tj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(tj, dict) or not isinstance(tj.get("model"), dict):
        raise ConversionError(f"{path}: expected a tokenizers JSON object with a 'model'")
    return tj


def vocab_from_hf(hf_dir: Path, vocab_size: int | None,
                  tokenizer_json: dict | None = None) -> tuple[list[str], list[int], str]:
    """Token strings, token types and pre-tokenizer name for ``tokenizer.ggml.*``.

    Mirrors llama.cpp's converter: ids missing from the tokenizer up to the model's vocabulary
    size become ``[PAD{id}]`` with type UNUSED; added tokens are CONTROL when special (or when
    they look like ``<|...|>``) and USER_DEFINED otherwise; all other tokens are NORMAL.
    """
    gguf = _gguf()
    path = hf_dir / "tokenizer.json"
    tj = tokenizer_json if tokenizer_json is not None else _read_tokenizer_json(hf_dir)
    pre = detect_pre_tokenizer(tj, str(path))

    id_to_tok: dict[int, str] = {}
    for tok, i in (tj["model"].get("vocab") or {}).items():
        id_to_tok[int(i)] = tok
    added: dict[int, dict] = {}
    for a in tj.get("added_tokens") or []:
        i = int(a["id"])
        id_to_tok[i] = a["content"]
        added[i] = a
    if not id_to_tok:
        raise ConversionError(f"{path}: empty vocabulary")
    n = vocab_size if vocab_size is not None else max(id_to_tok) + 1
    if max(id_to_tok) >= n:
        raise ConversionError(f"{path}: token id {max(id_to_tok)} does not fit the model's vocab_size {n} "
                              "(config.json)")
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n):
        tok = id_to_tok.get(i)
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
        elif i in added:
            if added[i].get("special", False) or _looks_special(tok):
                types.append(int(gguf.TokenType.CONTROL))
            else:
                tok = tok.replace("\u2581", " ")  # llama.cpp pre-normalizes user-defined spaces
                types.append(int(gguf.TokenType.USER_DEFINED))
            tokens.append(tok)
        else:
            tokens.append(tok)
            types.append(int(gguf.TokenType.NORMAL))
    return tokens, types, pre


# --------------------------------------------------------------------------------------------
# Families
# --------------------------------------------------------------------------------------------


@dataclass
class TextFamily:
    """How one Hugging Face architecture maps to a llama.cpp text architecture."""

    arch: str                                  # gguf MODEL_ARCH member name, e.g. "QWEN2"
    skip_prefixes: tuple[str, ...] = ()        # HF tensor names (after renaming) not in the text GGUF
    rename: tuple[tuple[str, str], ...] = ()   # substring replacements applied to HF names
    extra_params: Callable[[Any, dict, dict], None] | None = None  # (writer, hparams, config)

    def gguf_arch(self):
        return _gguf().MODEL_ARCH[self.arch]


def _qwen3vl_params(writer: Any, hparams: dict, config: dict) -> None:
    vision = config.get("vision_config") or {}
    writer.add_num_deepstack_layers(len(vision.get("deepstack_visual_indexes") or []))


TEXT_FAMILIES: dict[str, TextFamily] = {
    "Qwen2ForCausalLM": TextFamily("QWEN2"),
    "Qwen3ForCausalLM": TextFamily("QWEN3"),
    "Qwen3VLForConditionalGeneration": TextFamily(
        "QWEN3VL",
        rename=(("model.language_model.", "model."),),
        skip_prefixes=("model.visual.", "visual."),
        extra_params=_qwen3vl_params,
    ),
    # transformers' InternVL (the -hf InternVL3 checkpoints): a Qwen2 LLM saved as
    # "model.language_model.*" (or "language_model.model.*"); vision tensors go to the mmproj
    "InternVLForConditionalGeneration": TextFamily(
        "QWEN2",
        rename=(("model.language_model.", "model."), ("language_model.model.", "model."),
                ("language_model.lm_head.", "lm_head.")),
        skip_prefixes=("model.vision_tower.", "model.multi_modal_projector.", "vision_tower.", "multi_modal_projector."),
        extra_params=lambda writer, h, config: _internvl().check_text_config(config),
    ),
}


def _internvl():
    from . import convert_internvl  # imported lazily: it imports this module
    return convert_internvl


def _qwen3vl():
    from . import convert_qwen3vl  # imported lazily: it imports this module
    return convert_qwen3vl


# HF architecture -> function(hf_dir, config, tensors, out_path, outtype) writing the mmproj GGUF.
MMPROJ_WRITERS: dict[str, Callable[..., Path]] = {
    "InternVLForConditionalGeneration": lambda *a, **k: _internvl().write_mmproj(*a, **k),
    "Qwen3VLForConditionalGeneration": lambda *a, **k: _qwen3vl().write_qwen3vl_mmproj(*a, **k),
}

_IGNORED_SUFFIXES = (".rotary_emb.inv_freq", ".attention.masked_bias", ".attention.bias")


# --------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------


def _text_hparams(config: dict) -> dict:
    # like llama.cpp: the text_config of a multimodal model is merged over the root
    text = config.get("text_config")
    return {**config, **text} if isinstance(text, dict) else dict(config)


def _first(h: dict, keys: Sequence[str]):
    for k in keys:
        if k in h and h[k] is not None:
            return h[k]
    return None


def _write_text_params(writer: Any, h: dict, family: TextFamily, config: dict, config_path: Path,
                       file_type: int) -> None:
    gguf = _gguf()
    n_layer = _first(h, ["num_hidden_layers", "n_layers", "n_layer", "num_layers"])
    if n_layer is None:
        raise ConversionError(f"{config_path}: 'num_hidden_layers' missing (expected the number of decoder layers)")
    writer.add_block_count(int(n_layer))
    required = {
        "max_position_embeddings": writer.add_context_length,
        "hidden_size": writer.add_embedding_length,
        "intermediate_size": writer.add_feed_forward_length,
        "num_attention_heads": writer.add_head_count,
    }
    for key, add in required.items():
        if h.get(key) is None:
            raise ConversionError(f"{config_path}: '{key}' missing from the text config")
        add(int(h[key]))
    if h.get("num_key_value_heads") is not None:
        writer.add_head_count_kv(int(h["num_key_value_heads"]))

    rope = dict(h.get("rope_parameters") or h.get("rope_scaling") or {})
    if "rope_theta" not in rope and h.get("rope_theta") is not None:
        rope["rope_theta"] = h["rope_theta"]
    rope_type = rope.get("rope_type", rope.get("type"))
    if rope_type in (None, "default", "dynamic"):
        # llama.cpp writes nothing for dynamic NTK (InternVL3's LLM config carries it): the
        # scaling depends on the length at run time. statekv sessions apply it from
        # expected_length (see Model.session).
        pass
    elif rope_type == "linear" and rope.get("factor") is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope_type == "yarn" and rope.get("factor") is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        if rope.get("original_max_position_embeddings") is None:
            raise ConversionError(f"{config_path}: yarn rope scaling without 'original_max_position_embeddings'")
        writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
        for key, add in (("extrapolation_factor", writer.add_rope_scaling_yarn_ext_factor),
                         ("beta_fast", writer.add_rope_scaling_yarn_beta_fast),
                         ("beta_slow", writer.add_rope_scaling_yarn_beta_slow)):
            if rope.get(key) is not None:
                add(float(rope[key]))
        attn = rope.get("attention_factor", rope.get("attn_factor"))
        if attn is not None:
            writer.add_rope_scaling_yarn_attn_factor(float(attn))
    else:
        raise ConversionError(f"{config_path}: rope type {rope_type!r} is not supported "
                              "(expected 'default', 'dynamic', 'linear' or 'yarn')")
    if "mrope_section" in rope:
        sections = [int(s) for s in rope["mrope_section"]]
        if len(sections) > 4:
            raise ConversionError(f"{config_path}: mrope_section {sections} has more than 4 entries")
        writer.add_rope_dimension_sections((sections + [0, 0, 0, 0])[:4])
    if rope.get("rope_theta") is not None:
        writer.add_rope_freq_base(float(rope["rope_theta"]))
    if h.get("rms_norm_eps") is not None:
        writer.add_layer_norm_rms_eps(float(h["rms_norm_eps"]))
    if h.get("head_dim") is not None:
        writer.add_key_length(int(h["head_dim"]))
        writer.add_value_length(int(h["head_dim"]))
    writer.add_file_type(file_type)
    if family.extra_params is not None:
        family.extra_params(writer, h, config)


# --------------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------------


@dataclass
class _PlannedTensor:
    gguf_name: str
    hf_name: str
    shape: tuple[int, ...]  # numpy order
    qtype: Any              # GGMLQuantizationType


def _tensor_qtype(gguf_name: str, shape: tuple[int, ...], want):
    """The GGML type llama.cpp's converter gives this tensor for output type ``want``."""
    gguf = _gguf()
    Q = gguf.GGMLQuantizationType
    if len(shape) <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
        return Q.F32
    if want not in (Q.F32, Q.F16):
        block, _ = gguf.GGML_QUANT_SIZES[want]
        if shape[-1] % block != 0:
            logger.warning("%s: row length %d is not a multiple of %d, falling back to F16",
                           gguf_name, shape[-1], block)
            return Q.F16
    return want


def _sort_key(name: str):
    # token_embd, blk.0.*, blk.1.*, ..., output_norm, output (natural order within a block)
    m = re.match(r"blk\.(\d+)\.", name)
    if m:
        return (1, int(m.group(1)), name)
    return (0 if name.startswith("token_embd") else 2, 0, name)


def _plan_tensors(family: TextFamily, st: SafetensorsIndex, n_layer: int, want) -> list[_PlannedTensor]:
    gguf = _gguf()
    tmap = gguf.get_tensor_name_map(family.gguf_arch(), n_layer)
    plan: list[_PlannedTensor] = []
    seen: dict[str, str] = {}
    for hf_name in st.names():
        name = hf_name
        for a, b in family.rename:
            name = name.replace(a, b)
        if name.startswith(family.skip_prefixes) or name.endswith(_IGNORED_SUFFIXES):
            continue
        gname = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise ConversionError(f"{st.entries[hf_name].file}: tensor {hf_name!r} has no "
                                  f"{gguf.MODEL_ARCH_NAMES[family.gguf_arch()]} GGUF name "
                                  "(unexpected tensor for this architecture)")
        if gname in seen:
            raise ConversionError(f"{st.entries[hf_name].file}: tensors {seen[gname]!r} and {hf_name!r} "
                                  f"both map to {gname!r}")
        seen[gname] = hf_name
        shape = st.shape(hf_name)
        plan.append(_PlannedTensor(gname, hf_name, shape, _tensor_qtype(gname, shape, want)))
    plan.sort(key=lambda t: _sort_key(t.gguf_name))
    return plan


def _auto_outtype(st: SafetensorsIndex, names: Iterable[str]) -> str:
    # llama.cpp's heuristic: the dtype of the first 2-D tensor; bf16 -> bf16, anything else -> f16
    for n in names:
        if len(st.shape(n)) >= 2:
            return "bf16" if st.dtype(n) == "BF16" else "f16"
    return "f16"


# --------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------


def _load_config(hf_dir: Path) -> tuple[dict, Path]:
    if not hf_dir.exists():
        raise FileNotFoundError(f"{hf_dir}: no such directory (expected a Hugging Face checkpoint "
                                "directory with config.json, model.safetensors and tokenizer.json)")
    if not hf_dir.is_dir():
        raise FileNotFoundError(f"{hf_dir}: not a directory (expected a Hugging Face checkpoint directory)")
    path = hf_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (expected the model's config.json)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    return config, path


def _family_for(config: dict, config_path: Path) -> tuple[str, TextFamily]:
    archs = config.get("architectures") or []
    if not archs:
        raise ConversionError(f"{config_path}: no 'architectures' entry (expected one of {sorted(TEXT_FAMILIES)})")
    hf_arch = archs[0]
    family = TEXT_FAMILIES.get(hf_arch)
    if family is None:
        raise ConversionError(f"{config_path}: architecture {hf_arch!r} is not supported "
                              f"(expected one of {sorted(TEXT_FAMILIES)})")
    return hf_arch, family


def read_image_mean_std(hf_dir: Path, default: tuple[Sequence[float], Sequence[float]] | None = None
                        ) -> tuple[list[float], list[float]]:
    """The image processor's normalization of a checkpoint: preprocessor_config.json, then
    processor_config.json (its ``image_processor`` section) over it, as llama.cpp's converter
    merges them. ``default`` when neither has image_mean/image_std; ConversionError otherwise."""
    cfg: dict[str, Any] = {}
    for fname, section in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        p = Path(hf_dir) / fname
        if not p.is_file():
            continue
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConversionError(f"{p}: not valid JSON ({e})") from None
        if section and isinstance(d.get(section), dict):
            d = {**d, **d[section]}
        cfg.update(d)
    mean, std = cfg.get("image_mean"), cfg.get("image_std")
    if mean is None or std is None:
        if default is None:
            raise ConversionError(f"{hf_dir}: image_mean / image_std not found (expected the image processor's "
                                  "preprocessor_config.json next to config.json)")
        logger.warning("%s: no image_mean/image_std in the processor configs; using %s / %s", hf_dir, *default)
        mean, std = default
    if len(mean) != 3 or len(std) != 3:
        raise ConversionError(f"{hf_dir}: image_mean / image_std must have 3 values, got {mean} / {std}")
    return [float(v) for v in mean], [float(v) for v in std]


def add_clip_vision_keys(writer: Any, *, projection_dim: int, image_size: int, patch_size: int, width: int,
                         ff: int, blocks: int, heads: int, mean: Sequence[float], std: Sequence[float],
                         projector: Any, eps: float) -> None:
    """The clip.vision.* keys every mmproj carries (llama.cpp's converter writes them for every
    projector), plus the projector type, GELU and the norm epsilon."""
    writer.add_clip_has_vision_encoder(True)
    writer.add_vision_projection_dim(int(projection_dim))
    writer.add_vision_image_size(int(image_size))
    writer.add_vision_patch_size(int(patch_size))
    writer.add_vision_embedding_length(int(width))
    writer.add_vision_feed_forward_length(int(ff))
    writer.add_vision_block_count(int(blocks))
    writer.add_vision_head_count(int(heads))
    writer.add_vision_image_mean([float(v) for v in mean])
    writer.add_vision_image_std([float(v) for v in std])
    writer.add_clip_projector_type(projector)
    writer.add_vision_use_gelu(True)
    writer.add_vision_attention_layernorm_eps(float(eps))


def write_gguf_atomically(writer: Any, out_path: Path, tensors: Iterable[tuple[np.ndarray, Any]]) -> None:
    """Write ``writer``'s header, metadata and tensor infos, then each ``(float data, ggml type)``
    as llama.cpp stores it (F32 as is, F16 cast, quantized types through gguf-py), in the order
    the infos were added. The file goes to a hidden sibling (same file system, normal
    permissions) renamed at the end, so a failure leaves nothing behind."""
    gguf = _gguf()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for data, qtype in tensors:
            if qtype == gguf.GGMLQuantizationType.F32:
                out = np.ascontiguousarray(data, dtype=np.float32)
            else:
                out = gguf.quants.quantize(np.asarray(data, dtype=np.float32), qtype)
            writer.write_tensor_data(out)
        writer.close()
        os.replace(tmp, out_path)
    except BaseException:
        try:
            writer.close()
        except Exception:
            pass
        tmp.unlink(missing_ok=True)
        raise


def convert(hf_dir: str | os.PathLike, out_path: str | os.PathLike, outtype: str = "f32", *,
            mmproj_out: str | os.PathLike | None = None) -> Path:
    """Convert the checkpoint in ``hf_dir`` to the text GGUF ``out_path``; returns ``out_path``.

    ``outtype`` is one of ``f32``, ``f16``, ``bf16``, ``q8_0`` or ``auto`` (BF16 if the
    checkpoint's weights are bf16, else F16, like llama.cpp).  ``mmproj_out`` asks for the vision
    projector GGUF too; it raises :class:`ConversionError` for families without an mmproj writer.
    """
    gguf = _gguf()
    hf_dir = Path(hf_dir)
    out_path = Path(out_path)
    if outtype not in OUTTYPES and outtype != "auto":
        raise ValueError(f"outtype {outtype!r} is not supported (expected one of {sorted(OUTTYPES) + ['auto']})")

    config, config_path = _load_config(hf_dir)
    hf_arch, family = _family_for(config, config_path)
    if mmproj_out is not None and hf_arch not in MMPROJ_WRITERS:
        raise ConversionError(f"{config_path}: no mmproj writer for {hf_arch!r} yet "
                              f"(available for: {sorted(MMPROJ_WRITERS) or 'none'})")
    h = _text_hparams(config)
    n_layer = _first(h, ["num_hidden_layers", "n_layers", "n_layer", "num_layers"])
    if n_layer is None:
        raise ConversionError(f"{config_path}: 'num_hidden_layers' missing (expected the number of decoder layers)")

    st = SafetensorsIndex(hf_dir)
    if outtype == "auto":
        outtype = _auto_outtype(st, st.names())
    qname, ftname = OUTTYPES[outtype]
    want = gguf.GGMLQuantizationType[qname]
    file_type = int(gguf.LlamaFileType[ftname])

    tj = _read_tokenizer_json(hf_dir)
    tokens, toktypes, pre = vocab_from_hf(hf_dir, h.get("vocab_size"), tj)
    plan = _plan_tensors(family, st, int(n_layer), want)
    if not plan:
        raise ConversionError(f"{hf_dir}: no text-model tensors found in the safetensors files")
    present = {t.gguf_name for t in plan}
    if "token_embd.weight" not in present:
        raise ConversionError(f"{hf_dir}: the embedding table (model.embed_tokens.weight) is missing")

    arch_name = gguf.MODEL_ARCH_NAMES[family.gguf_arch()]
    writer = gguf.GGUFWriter(path=None, arch=arch_name)
    for t in plan:
        if t.qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            dt = np.dtype(np.float32 if t.qtype == gguf.GGMLQuantizationType.F32 else np.float16)
            writer.add_tensor_info(t.gguf_name, t.shape, dt, math.prod(t.shape) * dt.itemsize, raw_dtype=t.qtype)
        else:
            bshape = gguf.quant_shape_to_byte_shape(t.shape, t.qtype)
            writer.add_tensor_info(t.gguf_name, bshape, np.dtype(np.uint8), math.prod(bshape), raw_dtype=t.qtype)

    # general.* (as llama.cpp: type, then the model card metadata)
    writer.add_type(gguf.GGUFType.MODEL)
    total_params, shared, expert, n_expert = writer.get_total_parameter_count()
    meta = gguf.Metadata.load(None, hf_dir, None, total_params)
    if meta.name is None:
        meta.name = hf_dir.name
    if meta.size_label is None and total_params > 0:
        meta.size_label = gguf.size_label(total_params, shared, expert, n_expert)
    meta.set_gguf_meta_model(writer)
    _write_text_params(writer, h, family, config, config_path, file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    # tokenizer.*
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(toktypes)
    merges = merges_from_hf(tj, hf_dir / "tokenizer.json")
    writer.add_token_merges(merges)
    special = gguf.SpecialVocab(hf_dir, load_merges=False)
    if _has_bytelevel_post_processor(tj):
        # a byte-level post-processor adds no BOS/EOS: current llama.cpp (the SpecialVocab of its
        # own gguf-py, newer than gguf 0.19 on PyPI) then writes add_bos_token = add_eos_token =
        # false unless tokenizer_config.json says otherwise
        special.add_special_token.setdefault("bos", False)
        special.add_special_token.setdefault("eos", False)
    for typ, tid in special.special_token_ids.items():
        if tid >= len(tokens):
            raise ConversionError(f"{hf_dir}: special token {typ} id {tid} is outside the vocabulary ({len(tokens)})")
    special.add_to_gguf(writer, quiet=True)

    write_gguf_atomically(writer, out_path, ((st.load(t.hf_name), t.qtype) for t in plan))
    logger.info("wrote %s (%s, %s, %d tensors)", out_path, arch_name, outtype, len(plan))

    if mmproj_out is not None:
        MMPROJ_WRITERS[hf_arch](hf_dir, config, st, Path(mmproj_out), outtype)
    return out_path


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
