"""The text half of ``statekv convert``: a checkpoint's decoder -> a GGUF laid out like llama.cpp's.

Text-only architectures are the table :data:`TEXT_ONLY`; a video VLM's architecture is declared
by its family (:mod:`statekv.families`), which also writes its mmproj.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .common import OUTTYPES, ConversionError, TextFamily, _gguf, add_tensor_infos, tensor_qtype, write_gguf_atomically
from .hf_vocab import has_bytelevel_post_processor, merges_from_hf, read_tokenizer_json, vocab_from_hf
from .safetensors import SafetensorsIndex
from ..families.gemma3.convert import CAUSAL_LM_FAMILY as _GEMMA3_CAUSAL_LM

__all__ = ["TEXT_ONLY", "text_families", "mmproj_writers", "convert"]

logger = logging.getLogger("statekv.convert")

# HF architecture -> llama.cpp text architecture, for text-only checkpoints (a data table).
TEXT_ONLY: dict[str, TextFamily] = {
    "Qwen2ForCausalLM": TextFamily("QWEN2"),
    "Qwen3ForCausalLM": TextFamily("QWEN3"),
    "Gemma3ForCausalLM": _GEMMA3_CAUSAL_LM,
}


def text_families() -> dict[str, TextFamily]:
    """Every HF architecture the converter takes: :data:`TEXT_ONLY` and the video families'."""
    from ..families import FAMILIES

    out = dict(TEXT_ONLY)
    for family in FAMILIES.values():
        out[family.hf_architecture] = family.text_family()
    return out


def mmproj_writers() -> dict[str, Callable[..., Path]]:
    """HF architecture -> function(hf_dir, config, tensors, out_path, outtype) writing the mmproj."""
    from ..families import FAMILIES

    return {f.hf_architecture: f.write_mmproj for f in FAMILIES.values()}


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
    """The GGML type llama.cpp's converter gives this text tensor for output type ``want``."""
    return tensor_qtype(gguf_name, shape, want)


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
    TEXT_FAMILIES = text_families()
    archs = config.get("architectures") or []
    if not archs:
        raise ConversionError(f"{config_path}: no 'architectures' entry (expected one of {sorted(TEXT_FAMILIES)})")
    hf_arch = archs[0]
    family = TEXT_FAMILIES.get(hf_arch)
    if family is None:
        raise ConversionError(f"{config_path}: architecture {hf_arch!r} is not supported "
                              f"(expected one of {sorted(TEXT_FAMILIES)})")
    return hf_arch, family

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
    MMPROJ_WRITERS = mmproj_writers()
    if mmproj_out is not None and hf_arch not in MMPROJ_WRITERS:
        raise ConversionError(f"{config_path}: no mmproj writer for {hf_arch!r} yet "
                              f"(available for: {sorted(MMPROJ_WRITERS) or 'none'})")
    h = _text_hparams(config)
    if family.prepare is not None:
        h = family.prepare(h, config_path)
    n_layer = _first(h, ["num_hidden_layers", "n_layers", "n_layer", "num_layers"])
    if n_layer is None:
        raise ConversionError(f"{config_path}: 'num_hidden_layers' missing (expected the number of decoder layers)")

    st = SafetensorsIndex(hf_dir)
    if outtype == "auto":
        outtype = _auto_outtype(st, st.names())
    qname, ftname = OUTTYPES[outtype]
    want = gguf.GGMLQuantizationType[qname]
    file_type = int(gguf.LlamaFileType[ftname])

    tj = read_tokenizer_json(hf_dir)
    tokens, toktypes, pre = vocab_from_hf(hf_dir, h.get("vocab_size"), tj)
    plan = _plan_tensors(family, st, int(n_layer), want)
    if not plan:
        raise ConversionError(f"{hf_dir}: no text-model tensors found in the safetensors files")
    present = {t.gguf_name for t in plan}
    if "token_embd.weight" not in present:
        raise ConversionError(f"{hf_dir}: the embedding table (model.embed_tokens.weight) is missing")

    arch_name = gguf.MODEL_ARCH_NAMES[family.gguf_arch()]
    writer = gguf.GGUFWriter(path=None, arch=arch_name)
    add_tensor_infos(writer, ((t.gguf_name, t.shape, t.qtype) for t in plan))

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
    if has_bytelevel_post_processor(tj):
        # a byte-level post-processor adds no BOS/EOS: current llama.cpp (the SpecialVocab of its
        # own gguf-py, newer than gguf 0.19 on PyPI) then writes add_bos_token = add_eos_token =
        # false unless tokenizer_config.json says otherwise
        special.add_special_token.setdefault("bos", False)
        special.add_special_token.setdefault("eos", False)
    for typ, tid in special.special_token_ids.items():
        if tid >= len(tokens):
            raise ConversionError(f"{hf_dir}: special token {typ} id {tid} is outside the vocabulary ({len(tokens)})")
    special.add_to_gguf(writer, quiet=True)

    transform = family.transform or (lambda name, data: data)
    write_gguf_atomically(writer, out_path, ((transform(t.gguf_name, st.load(t.hf_name)), t.qtype) for t in plan))
    logger.info("wrote %s (%s, %s, %d tensors)", out_path, arch_name, outtype, len(plan))

    if mmproj_out is not None:
        MMPROJ_WRITERS[hf_arch](hf_dir, config, st, Path(mmproj_out), outtype)
    return out_path
