"""InternVL vision tower + projector -> an ``mmproj`` GGUF in llama.cpp's layout.

``statekv convert HF_DIR text.gguf --mmproj mmproj.gguf`` on a transformers
``InternVLForConditionalGeneration`` checkpoint (the ``-hf`` InternVL3 releases) writes the text
model through :mod:`statekv.convert` (a plain ``qwen2`` GGUF, renamed and checked by
:data:`TEXT_FAMILY`) and the vision part here, laid out
as llama.cpp's converter writes it from the original OpenGVLab checkpoint (``InternVisionModel``
+ ``mlp1``), which is what users' ``mmproj-*.gguf`` files contain:

==========================================================  ==========================  =================================
transformers name (``model.`` prefix optional)               OpenGVLab name              GGUF name
==========================================================  ==========================  =================================
vision_tower.embeddings.cls_token                            embeddings.class_embedding  v.class_embd
vision_tower.embeddings.patch_embeddings.projection.{w,b}    embeddings.patch_embedding  v.patch_embd.{weight,bias}
vision_tower.embeddings.position_embeddings                  embeddings.position_emb..   v.position_embd.weight
vision_tower.encoder.layer.N.attention.{q,k,v}_proj.{w,b}    layers.N.attn.qkv (fused)   v.blk.N.attn_{q,k,v}.{weight,bias}
vision_tower.encoder.layer.N.attention.projection_layer      layers.N.attn.proj          v.blk.N.attn_out.{weight,bias}
vision_tower.encoder.layer.N.attention.{q,k}_norm.weight     layers.N.attn.{q,k}_norm    v.blk.N.attn_{q,k}_norm.weight
vision_tower.encoder.layer.N.lambda_1 / lambda_2             layers.N.ls1 / ls2          v.blk.N.ls1.weight / ls2.weight
vision_tower.encoder.layer.N.layernorm_before / _after       layers.N.norm1 / norm2      v.blk.N.ln1 / ln2.{weight,bias}
vision_tower.encoder.layer.N.mlp.fc1 / fc2                   layers.N.mlp.fc1 / fc2      v.blk.N.ffn_up / ffn_down.{w,b}
multi_modal_projector.layer_norm / linear_1 / linear_2       mlp1.0 / mlp1.1 / mlp1.3    mm.model.mlp.0 / .1 / .3.{w,b}
==========================================================  ==========================  =================================

(llama.cpp splits the fused OpenGVLab ``qkv`` into q, k, v rows in that order; transformers'
checkpoints already hold them separately.)

Tensor types follow llama.cpp's rules: 1-D tensors, ``v.class_embd`` (no ``.weight`` suffix)
and ``v.position_embd.weight`` stay F32; ``v.patch_embd.weight`` is F16 for ``--outtype f16``
and F32 otherwise; other matrices take the output type (F16 when a row does not fit the
quantization block).

Metadata: ``general.architecture = clip``, ``general.type = mmproj``, ``clip.projector_type =
internvl``, ``clip.has_vision_encoder``, ``clip.use_gelu``, ``clip.vision.{projection_dim,
image_size, patch_size, embedding_length, feed_forward_length, block_count,
attention.head_count, attention.layer_norm_epsilon, image_mean, image_std,
projector.scale_factor}`` (``1 / downsample_ratio``).  Mean and std come from
``preprocessor_config.json`` (or the ``image_processor`` of ``processor_config.json``).

:func:`statekv.families.internvl.random_model.make_random_internvl_mmproj` writes a random-weight
mmproj at a real tower's shape for benchmarks.
"""
from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Any


from ...convert.common import (OUTTYPES, ConversionError, TextFamily, _gguf, add_clip_vision_keys,
                               read_image_mean_std, tensor_qtype, write_mmproj_file)
from ...convert.safetensors import SafetensorsIndex

__all__ = ["TEXT_FAMILY", "write_mmproj", "hf_to_gguf_name", "check_text_config"]

logger = logging.getLogger("statekv.convert")

_LAYER_MAP = {
    "attention.q_proj": "attn_q",
    "attention.k_proj": "attn_k",
    "attention.v_proj": "attn_v",
    "attention.projection_layer": "attn_out",
    "attention.q_norm": "attn_q_norm",
    "attention.k_norm": "attn_k_norm",
    "layernorm_before": "ln1",
    "layernorm_after": "ln2",
    "mlp.fc1": "ffn_up",
    "mlp.fc2": "ffn_down",
}
_FIXED_MAP = {
    "vision_tower.embeddings.cls_token": "v.class_embd",
    "vision_tower.embeddings.patch_embeddings.projection.weight": "v.patch_embd.weight",
    "vision_tower.embeddings.patch_embeddings.projection.bias": "v.patch_embd.bias",
    "vision_tower.embeddings.position_embeddings": "v.position_embd.weight",
    "multi_modal_projector.layer_norm.weight": "mm.model.mlp.0.weight",
    "multi_modal_projector.layer_norm.bias": "mm.model.mlp.0.bias",
    "multi_modal_projector.linear_1.weight": "mm.model.mlp.1.weight",
    "multi_modal_projector.linear_1.bias": "mm.model.mlp.1.bias",
    "multi_modal_projector.linear_2.weight": "mm.model.mlp.3.weight",
    "multi_modal_projector.linear_2.bias": "mm.model.mlp.3.bias",
}
# Present in some checkpoints, unused at inference (masked image modeling).
_UNUSED = ("vision_tower.embeddings.mask_token",)
_LAYER_RE = re.compile(r"^vision_tower\.encoder\.layer\.(\d+)\.(.+)$")


def _strip(name: str) -> str:
    # transformers >= 4.52 saves "model.vision_tower.*"; earlier / legacy layouts "vision_tower.*"
    return name[len("model."):] if name.startswith(("model.vision_tower.", "model.multi_modal_projector.")) else name


def is_vision_tensor(name: str) -> bool:
    return _strip(name).startswith(("vision_tower.", "multi_modal_projector."))


def hf_to_gguf_name(name: str) -> str | None:
    """llama.cpp's mmproj name of a transformers InternVL tensor; None for unused tensors.
    Raises :class:`ConversionError` for a vision tensor it does not know."""
    n = _strip(name)
    if n in _UNUSED:
        return None
    if n in _FIXED_MAP:
        return _FIXED_MAP[n]
    m = _LAYER_RE.match(n)
    if m:
        bid, rest = m.group(1), m.group(2)
        if rest in ("lambda_1", "lambda_2"):
            return f"v.blk.{bid}.ls{rest[-1]}.weight"
        for hf, gg in _LAYER_MAP.items():
            for suffix in (".weight", ".bias"):
                if rest == hf + suffix:
                    return f"v.blk.{bid}.{gg}{suffix}"
    raise ConversionError(f"tensor {name!r} is not part of llama.cpp's InternVL mmproj layout "
                          "(unexpected tensor for InternVLForConditionalGeneration)")


def _tensor_qtype(gguf_name: str, shape: tuple[int, ...], outtype: str):
    """The GGML type llama.cpp's converter gives this mmproj tensor."""
    return tensor_qtype(gguf_name, shape, _gguf().GGMLQuantizationType[OUTTYPES[outtype][0]],
                        f32=(".position_embd.",), patch=(".patch_embd.weight",), outtype=outtype)


def _sort_key(name: str):
    m = re.match(r"v\.blk\.(\d+)\.", name)
    if m:
        return (1, int(m.group(1)), name)
    return (2 if name.startswith("mm.") else 0, 0, name)


def check_text_config(config: dict) -> None:
    """The text half of an InternVL checkpoint must be a Qwen2 LLM (InternVL3 1B-78B except 9B)."""
    tc = config.get("text_config") or {}
    mt = tc.get("model_type", "qwen2")
    if mt != "qwen2":
        raise ConversionError(f"config.json: InternVL text_config.model_type {mt!r} is not supported "
                              "(expected 'qwen2', as in InternVL3 1B/2B/8B/14B/38B/78B)")


# transformers' InternVL (the -hf InternVL3 checkpoints): a Qwen2 LLM saved as
# "model.language_model.*" (or "language_model.model.*"); vision tensors go to the mmproj.
TEXT_FAMILY = TextFamily(
    "QWEN2",
    rename=(("model.language_model.", "model."), ("language_model.model.", "model."),
            ("language_model.lm_head.", "lm_head.")),
    skip_prefixes=("model.vision_tower.", "model.multi_modal_projector.", "vision_tower.", "multi_modal_projector."),
    extra_params=lambda writer, h, config: check_text_config(config),
)


def _first_int(v: Any) -> int:
    return int(v[0]) if isinstance(v, (list, tuple)) else int(v)


class _Hparams:
    """The vision hyper-parameters llama.cpp writes, from an InternVL config."""

    def __init__(self, config: dict, where: str):
        vc = config.get("vision_config")
        tc = config.get("text_config") or {}
        if not isinstance(vc, dict):
            raise ConversionError(f"{where}: 'vision_config' missing (expected an InternVL config)")

        def need(d: dict, key: str, what: str):
            if d.get(key) is None:
                raise ConversionError(f"{where}: '{what}.{key}' missing")
            return d[key]

        self.image_size = _first_int(need(vc, "image_size", "vision_config"))
        self.patch_size = _first_int(need(vc, "patch_size", "vision_config"))
        self.n_embd = int(need(vc, "hidden_size", "vision_config"))
        self.n_ff = int(need(vc, "intermediate_size", "vision_config"))
        self.n_layer = int(need(vc, "num_hidden_layers", "vision_config"))
        self.n_head = int(need(vc, "num_attention_heads", "vision_config"))
        self.eps = float(vc.get("layer_norm_eps", 1e-6))
        self.n_embd_text = int(tc.get("hidden_size") or config.get("hidden_size") or 0)
        if self.n_embd_text <= 0:
            raise ConversionError(f"{where}: 'text_config.hidden_size' missing")
        act = vc.get("hidden_act", "gelu")
        if act != "gelu":
            raise ConversionError(f"{where}: vision_config.hidden_act {act!r} is not supported (expected 'gelu')")
        pact = config.get("projector_hidden_act", "gelu")
        if pact != "gelu":
            raise ConversionError(f"{where}: projector_hidden_act {pact!r} is not supported (expected 'gelu')")
        ratio = config.get("downsample_ratio", 0.5)
        self.scale = int(round(1.0 / float(ratio)))
        if abs(1.0 / self.scale - float(ratio)) > 1e-9:
            raise ConversionError(f"{where}: downsample_ratio {ratio} is not 1/k for an integer k")
        if config.get("vision_feature_layer", -1) != -1:
            raise ConversionError(f"{where}: vision_feature_layer {config.get('vision_feature_layer')} is not "
                                  "supported (llama.cpp's InternVL graph uses the last layer, -1)")
        if config.get("vision_feature_select_strategy", "default") != "default":
            raise ConversionError(f"{where}: vision_feature_select_strategy "
                                  f"{config.get('vision_feature_select_strategy')!r} is not supported (expected "
                                  "'default': the CLS token is dropped)")
        if vc.get("use_mean_pooling", True) is False:
            raise ConversionError(f"{where}: vision_config.use_mean_pooling = false (a final LayerNorm) is not part "
                                  "of llama.cpp's InternVL layout")
        # llama.cpp (and statekv) pick RMSNorm only for the 6B tower, by its shape
        is_6b = self.n_embd == 3200 and self.n_layer == 45
        norm = vc.get("norm_type", "layer_norm")
        if (norm == "rms_norm") != is_6b:
            raise ConversionError(f"{where}: vision_config.norm_type {norm!r} with width {self.n_embd} and "
                                  f"{self.n_layer} layers cannot be expressed in llama.cpp's InternVL layout "
                                  "(RMSNorm is implied by the 6B shape 3200 x 45 only)")
        if (self.image_size % self.patch_size) or ((self.image_size // self.patch_size) % self.scale):
            raise ConversionError(f"{where}: image_size {self.image_size} must be a multiple of patch_size "
                                  f"{self.patch_size} x {self.scale}")

    def write(self, writer: Any, mean: list[float], std: list[float]) -> None:
        add_clip_vision_keys(writer, projection_dim=self.n_embd_text, image_size=self.image_size,
                             patch_size=self.patch_size, width=self.n_embd, ff=self.n_ff, blocks=self.n_layer,
                             heads=self.n_head, mean=mean, std=std, projector=_gguf().VisionProjectorType.INTERNVL,
                             eps=self.eps)
        writer.add_vision_projector_scale_factor(self.scale)


def write_mmproj(hf_dir: str | os.PathLike, config: dict, st: SafetensorsIndex, out_path: str | os.PathLike,
                 outtype: str) -> Path:
    """Write the mmproj GGUF of a transformers InternVL checkpoint (see the module docstring).
    ``outtype``: ``f32``, ``f16``, ``bf16`` or ``q8_0`` (already resolved from ``auto``)."""
    hf_dir, out_path = Path(hf_dir), Path(out_path)
    where = str(hf_dir / "config.json")
    if outtype not in OUTTYPES:
        raise ValueError(f"outtype {outtype!r} is not supported (expected one of {sorted(OUTTYPES)})")
    hp = _Hparams(config, where)
    mean, std = read_image_mean_std(hf_dir)

    plan: list[tuple[str, tuple[int, ...], Any]] = []
    sources: dict[str, str] = {}
    for hf_name in st.names():
        if not is_vision_tensor(hf_name):
            continue
        gname = hf_to_gguf_name(hf_name)
        if gname is None:
            continue
        if gname in sources:
            raise ConversionError(f"{st.entries[hf_name].file}: tensors {sources[gname]!r} and {hf_name!r} "
                                  f"both map to {gname!r}")
        sources[gname] = hf_name
        shape = st.shape(hf_name)
        plan.append((gname, shape, _tensor_qtype(gname, shape, outtype)))
    _check_complete(plan, hp, hf_dir)
    plan.sort(key=lambda t: _sort_key(t[0]))

    write_mmproj_file(out_path, hf_dir, outtype, lambda writer: hp.write(writer, mean, std), plan,
                      (st.load(sources[name]) for name, _, _ in plan))
    logger.info("wrote %s (clip/internvl, %s, %d tensors)", out_path, outtype, len(plan))
    return out_path


def _expected_shapes(hp: _Hparams, qkv_bias: bool, qk_norm: bool, bias_norms: bool) -> dict[str, tuple[int, ...]]:
    C, F, E, s = hp.n_embd, hp.n_ff, hp.n_embd_text, hp.scale
    N = (hp.image_size // hp.patch_size) ** 2 + 1
    M = C * s * s
    out = {
        "v.class_embd": (1, 1, C),
        "v.patch_embd.weight": (C, 3, hp.patch_size, hp.patch_size),
        "v.patch_embd.bias": (C,),
        "v.position_embd.weight": (1, N, C),
        "mm.model.mlp.0.weight": (M,), "mm.model.mlp.0.bias": (M,),
        "mm.model.mlp.1.weight": (E, M), "mm.model.mlp.1.bias": (E,),
        "mm.model.mlp.3.weight": (E, E), "mm.model.mlp.3.bias": (E,),
    }
    for i in range(hp.n_layer):
        p = f"v.blk.{i}."
        for t in ("attn_q", "attn_k", "attn_v"):
            out[p + t + ".weight"] = (C, C)
            if qkv_bias:
                out[p + t + ".bias"] = (C,)
        out[p + "attn_out.weight"], out[p + "attn_out.bias"] = (C, C), (C,)
        if qk_norm:
            out[p + "attn_q_norm.weight"] = out[p + "attn_k_norm.weight"] = (C,)
        for t in ("ln1", "ln2"):
            out[p + t + ".weight"] = (C,)
            if bias_norms:
                out[p + t + ".bias"] = (C,)
        out[p + "ls1.weight"] = out[p + "ls2.weight"] = (C,)
        out[p + "ffn_up.weight"], out[p + "ffn_up.bias"] = (F, C), (F,)
        out[p + "ffn_down.weight"], out[p + "ffn_down.bias"] = (C, F), (C,)
    return out


def _check_complete(plan, hp: _Hparams, hf_dir: Path) -> None:
    have = {name: shape for name, shape, _ in plan}
    if not have:
        raise ConversionError(f"{hf_dir}: no vision tensors (vision_tower.* / multi_modal_projector.*) found")
    want = _expected_shapes(hp, qkv_bias="v.blk.0.attn_q.bias" in have, qk_norm="v.blk.0.attn_q_norm.weight" in have,
                            bias_norms="v.blk.0.ln1.bias" in have)
    for name, shape in want.items():
        got = have.get(name)
        if got is None:
            raise ConversionError(f"{hf_dir}: vision tensor for {name!r} is missing (expected shape {list(shape)})")
        if math.prod(got) != math.prod(shape) or tuple(x for x in got if x != 1) != tuple(x for x in shape if x != 1):
            raise ConversionError(f"{hf_dir}: tensor for {name!r} has shape {list(got)}, expected {list(shape)}")
    extra = sorted(set(have) - set(want))
    if extra:
        raise ConversionError(f"{hf_dir}: unexpected vision tensors {extra[:4]} for this configuration")
