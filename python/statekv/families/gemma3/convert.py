"""``Gemma3ForCausalLM`` -> llama.cpp's ``gemma3`` text GGUF, as llama.cpp's converter writes it.

Facts (from llama.cpp's ``Gemma3Model`` converter and its gemma3 loader, checked against
transformers' ``modeling_gemma3.py``):

* every ``*norm.weight`` is stored with Gemma's ``1 +`` already added (``Gemma3RMSNorm``
  multiplies by ``1 + w``);
* ``rope.freq_base`` is the global (``full_attention``) layers' base; llama.cpp has no key for
  the local layers' base and uses 10,000, nor for the layer pattern (every 6th layer global), nor
  for the attention scale (``query_pre_attn_scalar``: head_dim, or n_embd / n_head for the 27B).
  A checkpoint that differs from those cannot be expressed in the format: it is refused rather
  than written as a file that loads and computes something else;
* ``attention.sliding_window`` is written; ``final_logit_softcapping`` when set.

The vocabulary: llama.cpp writes a SentencePiece vocabulary from ``tokenizer.model`` and falls
back to the byte-level BPE of ``tokenizer.json`` when there is none. The second path is the
shared one of :mod:`statekv.convert.text`; ``tokenizer.model`` is not read yet (a clear error:
convert such checkpoints with llama.cpp's ``convert_hf_to_gguf.py``, whose files statekv loads).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...convert.common import ConversionError, TextFamily

__all__ = ["TEXT_FAMILY"]

# Gemma3TextConfig's defaults for keys a config.json may leave out (llama.cpp's converter uses
# the same ones).
_DEFAULTS = {
    "max_position_embeddings": 131072,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "rms_norm_eps": 1e-6,
    "sliding_window": 4096,
}
_LOCAL_ROPE_BASE = 10000.0
_PATTERN = 6  # every 6th layer is global (llama.cpp's gemma3 loader)


def _prepare(h: dict, config_path: Path) -> dict:
    h = {**_DEFAULTS, **{k: v for k, v in h.items() if v is not None}}
    where = f"{config_path}"
    if (config_path.parent / "tokenizer.model").is_file():
        raise ConversionError(f"{config_path.parent / 'tokenizer.model'}: SentencePiece tokenizer files are not "
                              "read by statekv convert yet; convert this checkpoint with llama.cpp's "
                              "convert_hf_to_gguf.py (statekv loads its gemma3 files)")
    if h.get("attn_logit_softcapping") is not None:
        raise ConversionError(f"{where}: attn_logit_softcapping = {h['attn_logit_softcapping']} (Gemma 2); "
                              "Gemma 3 has none")
    if h.get("use_bidirectional_attention"):
        raise ConversionError(f"{where}: use_bidirectional_attention = true (an embedding model); expected a causal LM")
    act = h.get("hidden_activation", "gelu_pytorch_tanh")
    if act != "gelu_pytorch_tanh":
        raise ConversionError(f"{where}: hidden_activation {act!r}, expected 'gelu_pytorch_tanh'")
    n_layer = int(h["num_hidden_layers"])
    want = ["full_attention" if (il + 1) % _PATTERN == 0 else "sliding_attention" for il in range(n_layer)]
    if h.get("layer_types") is not None and list(h["layer_types"]) != want:
        raise ConversionError(f"{where}: layer_types {h['layer_types']} is not Gemma 3's pattern (every "
                              f"{_PATTERN}th layer global), which is all llama.cpp's gemma3 format can express")
    head_dim, n_embd, n_head = int(h["head_dim"]), int(h["hidden_size"]), int(h["num_attention_heads"])
    scalar = h.get("query_pre_attn_scalar", head_dim)
    implied = n_embd // n_head if n_layer == 62 else head_dim
    if scalar != implied:
        raise ConversionError(f"{where}: query_pre_attn_scalar = {scalar}, but llama.cpp's gemma3 format implies "
                              f"{implied} ({'n_embd / n_head for 62 layers' if n_layer == 62 else 'head_dim'})")
    rope = h.get("rope_parameters") or {}
    if "full_attention" in rope or "sliding_attention" in rope:
        local = rope.get("sliding_attention") or {}
        if float(local.get("rope_theta", _LOCAL_ROPE_BASE)) != _LOCAL_ROPE_BASE or \
                local.get("rope_type", "default") != "default":
            raise ConversionError(f"{where}: the sliding layers' rope {local} differs from llama.cpp's fixed "
                                  f"default rope with base {_LOCAL_ROPE_BASE:g}")
        h["rope_parameters"] = dict(rope.get("full_attention") or {})
    window = int(h["sliding_window"])
    if not 1 <= window <= int(h["max_position_embeddings"]):
        raise ConversionError(f"{where}: sliding_window = {window}, expected 1 to max_position_embeddings")
    return h


def _extra_params(writer, h: dict, config: dict) -> None:
    writer.add_sliding_window(int(h["sliding_window"]))
    if h.get("final_logit_softcapping"):
        writer.add_final_logit_softcapping(float(h["final_logit_softcapping"]))


def _shift_norms(name: str, data: np.ndarray) -> np.ndarray:
    return data + 1.0 if name.endswith("norm.weight") else data


TEXT_FAMILY = TextFamily("GEMMA3", extra_params=_extra_params, prepare=_prepare, transform=_shift_norms)
