"""Gemma 3 -> llama.cpp's ``gemma3`` text GGUF and ``gemma3`` mmproj, as llama.cpp's converter
writes them: ``Gemma3ForCausalLM`` (text only, :data:`CAUSAL_LM_FAMILY`) and
``Gemma3ForConditionalGeneration`` (its language model, :data:`TEXT_FAMILY`, and its vision tower
and projector, :func:`write_mmproj`).

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

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ...convert.common import (OUTTYPES, ConversionError, TextFamily, _gguf, add_clip_vision_keys,
                               match_mmproj_tensors, read_image_mean_std, siglip_block_shapes,
                               siglip_gguf_name, tensor_qtype, write_mmproj_file)
from ...convert.safetensors import SafetensorsIndex

logger = logging.getLogger("statekv.convert")

__all__ = ["CAUSAL_LM_FAMILY", "TEXT_FAMILY", "write_mmproj"]

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


CAUSAL_LM_FAMILY = TextFamily("GEMMA3", extra_params=_extra_params, prepare=_prepare, transform=_shift_norms)

# Gemma3ForConditionalGeneration: the language model saved as "model.language_model.*" (older
# checkpoints: "language_model.model.*"); the vision tensors go to the mmproj.
TEXT_FAMILY = TextFamily(
    "GEMMA3",
    rename=(("model.language_model.", "model."), ("language_model.model.", "model."),
            ("language_model.lm_head.", "lm_head.")),
    skip_prefixes=("model.vision_tower.", "model.multi_modal_projector.", "vision_tower.", "multi_modal_projector."),
    extra_params=_extra_params, prepare=_prepare, transform=_shift_norms)


# --------------------------------------------------------------------------------------------
# The mmproj: SigLIP tower + Gemma 3's projector
# --------------------------------------------------------------------------------------------
#   transformers name (after "model." and "vision_tower[.vision_model]." are stripped)  GGUF name
#   embeddings.patch_embedding.{weight,bias}          v.patch_embd.{weight,bias}
#   embeddings.position_embedding.weight              v.position_embd.weight
#   encoder.layers.N.layer_norm1 / layer_norm2        v.blk.N.ln1 / ln2.{weight,bias}
#   encoder.layers.N.self_attn.{q,k,v}_proj           v.blk.N.attn_{q,k,v}.{weight,bias}
#   encoder.layers.N.self_attn.out_proj               v.blk.N.attn_out.{weight,bias}
#   encoder.layers.N.mlp.fc1 / fc2                    v.blk.N.ffn_up / ffn_down.{weight,bias}
#   post_layernorm                                    v.post_ln.{weight,bias}
#   multi_modal_projector.mm_input_projection_weight  mm.input_projection.weight  (kept as [C, E])
#   multi_modal_projector.mm_soft_emb_norm.weight     mm.soft_emb_norm.weight     (+1, Gemma's RMSNorm)
# The SigLIP pooling head (head.*) is not used by Gemma 3 and not written. Types as llama.cpp's
# converter: the embeddings F32, the input projection F16 (f32 output: F32), others by the
# shared rules.
_PROJECTOR = {"mm_input_projection_weight": "mm.input_projection.weight",
              "mm_soft_emb_norm.weight": "mm.soft_emb_norm.weight"}


def hf_to_gguf_name(name: str) -> str | None:
    """The mmproj name of a checkpoint tensor; None for text tensors and the unused head."""
    n = name[len("model."):] if name.startswith("model.") else name
    if n.startswith("multi_modal_projector."):
        return _PROJECTOR.get(n[len("multi_modal_projector."):], "")
    if not n.startswith("vision_tower."):
        return None
    return siglip_gguf_name(n[len("vision_tower."):])



class _Hparams:
    """The vision hyper-parameters llama.cpp writes, from a Gemma3Config."""

    def __init__(self, config: dict, where: str):
        vc, tc = config.get("vision_config"), config.get("text_config") or {}
        if not isinstance(vc, dict):
            raise ConversionError(f"{where}: 'vision_config' missing (expected a Gemma3Config)")
        # SiglipVisionConfig's defaults where the file leaves them out
        self.image_size = int(vc.get("image_size", 224))
        self.patch_size = int(vc.get("patch_size", 16))
        self.n_embd = int(vc.get("hidden_size", 768))
        self.n_ff = int(vc.get("intermediate_size", 3072))
        self.n_layer = int(vc.get("num_hidden_layers", 12))
        self.n_head = int(vc.get("num_attention_heads", 12))
        self.eps = float(vc.get("layer_norm_eps", 1e-6))
        self.n_embd_text = int(tc.get("hidden_size", 2304))
        act = vc.get("hidden_act", "gelu_pytorch_tanh")
        if act != "gelu_pytorch_tanh":
            raise ConversionError(f"{where}: vision_config.hidden_act {act!r}, expected 'gelu_pytorch_tanh'")
        tokens = int(config.get("mm_tokens_per_image", 256))
        side, grid = math.isqrt(tokens), self.image_size // self.patch_size
        if side * side != tokens or self.image_size % self.patch_size or grid % side:
            raise ConversionError(f"{where}: mm_tokens_per_image {tokens} is not a square that divides the "
                                  f"{grid} x {grid} patch grid")
        self.pool = grid // side

    def write(self, writer: Any, mean, std) -> None:
        add_clip_vision_keys(writer, projection_dim=self.n_embd_text, image_size=self.image_size,
                             patch_size=self.patch_size, width=self.n_embd, ff=self.n_ff, blocks=self.n_layer,
                             heads=self.n_head, mean=mean, std=std, projector=_gguf().VisionProjectorType.GEMMA3,
                             eps=self.eps)
        if self.pool != 4:   # llama.cpp's default; written only otherwise, as its converter does
            writer.add_vision_projector_scale_factor(self.pool)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        C, F, E, P = self.n_embd, self.n_ff, self.n_embd_text, self.patch_size
        out = {"v.patch_embd.weight": (C, 3, P, P), "v.patch_embd.bias": (C,),
               "v.position_embd.weight": ((self.image_size // P) ** 2, C),
               "v.post_ln.weight": (C,), "v.post_ln.bias": (C,),
               "mm.input_projection.weight": (C, E), "mm.soft_emb_norm.weight": (C,)}
        out.update(siglip_block_shapes(self.n_layer, C, F))
        return out


def _qtype(name: str, shape: tuple[int, ...], outtype: str):
    Q = _gguf().GGMLQuantizationType
    if name in ("v.patch_embd.weight", "v.position_embd.weight"):
        return Q.F32
    if name == "mm.input_projection.weight":
        return Q.F32 if outtype == "f32" else Q.F16
    return tensor_qtype(name, shape, Q[OUTTYPES[outtype][0]])


def write_mmproj(hf_dir: str | os.PathLike, config: dict, st: SafetensorsIndex, out_path: str | os.PathLike,
                 outtype: str) -> Path:
    """Write the ``gemma3`` mmproj of a ``Gemma3ForConditionalGeneration`` checkpoint.
    ``outtype``: ``f32``, ``f16``, ``bf16`` or ``q8_0`` (already resolved from ``auto``)."""
    hf_dir, out_path = Path(hf_dir), Path(out_path)
    where = str(hf_dir / "config.json")
    if outtype not in OUTTYPES:
        raise ValueError(f"outtype {outtype!r} is not supported (expected one of {sorted(OUTTYPES)})")
    hp = _Hparams(config, where)
    mean, std = read_image_mean_std(hf_dir, default=((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))
    want = hp.shapes()
    sources = match_mmproj_tensors(st, hf_dir, want, hf_to_gguf_name, "gemma3",
                                   "a Gemma3ForConditionalGeneration checkpoint")
    plan = [(name, want[name], _qtype(name, want[name], outtype)) for name in want]

    def data(name: str) -> np.ndarray:
        x = np.asarray(st.load(sources[name]), dtype=np.float32)
        return x + 1.0 if name == "mm.soft_emb_norm.weight" else x

    write_mmproj_file(out_path, hf_dir, outtype, lambda writer: hp.write(writer, mean, std), plan,
                      (data(name) for name, _, _ in plan))
    logger.info("wrote %s (clip/gemma3, %s, %d tensors)", out_path, outtype, len(plan))
    return out_path
