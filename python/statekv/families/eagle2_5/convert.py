"""Eagle 2.5 (NVlabs' ``Eagle2_5_VLForConditionalGeneration``) -> a plain ``qwen2`` text GGUF and an
``eagle2_5`` mmproj in the layout statekv defines (docs/eagle2_5-gguf.md; llama.cpp has none).

Checkpoint names (NVlabs saves the model's three parts under these attributes)::

    vision_model.vision_model.embeddings.patch_embedding.{weight,bias}  v.patch_embd.{weight,bias}
    vision_model.vision_model.embeddings.position_embedding.weight      v.position_embd.weight
    vision_model.vision_model.encoder.layers.N.layer_norm1 / 2          v.blk.N.ln1 / ln2.{weight,bias}
    vision_model.vision_model.encoder.layers.N.self_attn.{q,k,v}_proj   v.blk.N.attn_{q,k,v}.{weight,bias}
    vision_model.vision_model.encoder.layers.N.self_attn.out_proj       v.blk.N.attn_out.{weight,bias}
    vision_model.vision_model.encoder.layers.N.mlp.fc1 / fc2            v.blk.N.ffn_up / ffn_down.{weight,bias}
    vision_model.vision_model.post_layernorm                            v.post_ln.{weight,bias}
    mlp1.0 / mlp1.1 / mlp1.3                                            mm.model.mlp.0 / .1 / .3.{weight,bias}
    language_model.model.* / language_model.lm_head.*                   the qwen2 text GGUF

Only what runs is written: the blocks before ``select_layer`` (``hidden_states[select_layer]``:
``num_hidden_layers + 1 + select_layer`` blocks for a negative value) and ``v.post_ln`` for
``select_layer`` -1 only (transformers' last_hidden_state includes the post-norm, the other hidden
states do not); ``clip.vision.eagle2_5.select_layer`` records the value.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any


from ...convert.common import (OUTTYPES, ConversionError, TextFamily, _gguf, add_clip_vision_keys,
                               match_mmproj_tensors, read_image_mean_std, siglip_block_shapes,
                               siglip_gguf_name, tensor_qtype, write_mmproj_file)
from ...convert.safetensors import SafetensorsIndex

__all__ = ["TEXT_FAMILY", "PROJECTOR", "write_mmproj", "mmproj_shapes"]

logger = logging.getLogger("statekv.convert")

PROJECTOR = "eagle2_5"


def _check_text(writer, h: dict, config: dict) -> None:
    archs = (config.get("text_config") or {}).get("architectures") or ["Qwen2ForCausalLM"]
    if archs[0] != "Qwen2ForCausalLM":
        raise ConversionError(f"Eagle 2.5 text model {archs[0]!r} is not supported (expected Qwen2ForCausalLM, "
                              "the LLM of Eagle2.5-8B)")


TEXT_FAMILY = TextFamily(
    "QWEN2",
    rename=(("language_model.model.", "model."), ("language_model.lm_head.", "lm_head.")),
    skip_prefixes=("vision_model.", "mlp1."),
    extra_params=_check_text,
)

_MLP_RE = re.compile(r"^mlp1\.(0|1|3)\.(weight|bias)$")


def hf_to_gguf_name(name: str) -> str | None:
    """The mmproj name of a checkpoint tensor; None for text tensors; "" for an unknown vision one."""
    m = _MLP_RE.match(name)
    if m:
        return f"mm.model.mlp.{m.group(1)}.{m.group(2)}"
    if not name.startswith("vision_model."):
        return None
    return siglip_gguf_name(name[len("vision_model."):])


class Hparams:
    """The vision hyper-parameters of an Eagle 2.5 config (SiglipVisionConfig defaults where left out)."""

    def __init__(self, config: dict, where: str):
        vc, tc = config.get("vision_config"), config.get("text_config") or {}
        if not isinstance(vc, dict):
            raise ConversionError(f"{where}: 'vision_config' missing (expected an Eagle 2.5 config)")
        if vc.get("model_type", "siglip_vision_model") not in ("siglip_vision_model", "siglip2_vision_model"):
            raise ConversionError(f"{where}: vision_config.model_type {vc.get('model_type')!r}: Eagle 2.5 uses SigLIP")
        self.image_size = int(config.get("force_image_size") or vc.get("image_size", 448))
        self.patch_size = int(vc.get("patch_size", 14))
        self.n_embd = int(vc.get("hidden_size", 1152))
        self.n_ff = int(vc.get("intermediate_size", 4304))
        self.n_layer_total = int(vc.get("num_hidden_layers", 27))
        self.n_head = int(vc.get("num_attention_heads", 16))
        self.eps = float(vc.get("layer_norm_eps", 1e-6))
        self.n_embd_text = int(tc.get("hidden_size") or 0)
        if self.n_embd_text <= 0:
            raise ConversionError(f"{where}: 'text_config.hidden_size' missing")
        act = vc.get("hidden_act", "gelu_pytorch_tanh")
        if act != "gelu_pytorch_tanh":
            raise ConversionError(f"{where}: vision_config.hidden_act {act!r}, expected 'gelu_pytorch_tanh'")
        if int(config.get("mlp_connector_layers", 2)) != 2:
            raise ConversionError(f"{where}: mlp_connector_layers {config.get('mlp_connector_layers')} is not "
                                  "supported (expected 2: LayerNorm -> Linear -> GELU -> Linear)")
        ratio = float(config.get("downsample_ratio", 0.5))
        self.scale = int(round(1.0 / ratio))
        if abs(1.0 / self.scale - ratio) > 1e-9:
            raise ConversionError(f"{where}: downsample_ratio {ratio} is not 1/k for an integer k")
        self.select_layer = int(config.get("select_layer", -1))
        n_run = self.n_layer_total + 1 + self.select_layer if self.select_layer < 0 else self.select_layer
        if not 1 <= n_run <= self.n_layer_total:
            raise ConversionError(f"{where}: select_layer {self.select_layer} selects no encoder layer of "
                                  f"{self.n_layer_total}")
        self.n_layer = n_run
        if (self.image_size % self.patch_size) or ((self.image_size // self.patch_size) % self.scale):
            raise ConversionError(f"{where}: image_size {self.image_size} must be a multiple of patch_size "
                                  f"{self.patch_size} x {self.scale}")

    def write(self, writer: Any, mean, std) -> None:
        add_clip_vision_keys(writer, projection_dim=self.n_embd_text, image_size=self.image_size,
                             patch_size=self.patch_size, width=self.n_embd, ff=self.n_ff, blocks=self.n_layer,
                             heads=self.n_head, mean=mean, std=std, projector=PROJECTOR, eps=self.eps)
        writer.add_vision_projector_scale_factor(self.scale)
        writer.add_int32("clip.vision.eagle2_5.select_layer", self.select_layer)


def mmproj_shapes(hp: Hparams) -> dict[str, tuple[int, ...]]:
    """numpy shapes of the tensors the mmproj holds."""
    C, F, E, P, s = hp.n_embd, hp.n_ff, hp.n_embd_text, hp.patch_size, hp.scale
    M = C * s * s
    out = {"v.patch_embd.weight": (C, 3, P, P), "v.patch_embd.bias": (C,),
           "v.position_embd.weight": ((hp.image_size // P) ** 2, C),
           "mm.model.mlp.0.weight": (M,), "mm.model.mlp.0.bias": (M,),
           "mm.model.mlp.1.weight": (E, M), "mm.model.mlp.1.bias": (E,),
           "mm.model.mlp.3.weight": (E, E), "mm.model.mlp.3.bias": (E,)}
    if hp.select_layer == -1:
        out["v.post_ln.weight"] = out["v.post_ln.bias"] = (C,)
    out.update(siglip_block_shapes(hp.n_layer, C, F))
    return out


def qtype_of(name: str, shape: tuple[int, ...], outtype: str):
    Q = _gguf().GGMLQuantizationType
    if name == "v.position_embd.weight":
        return Q.F32
    if name == "v.patch_embd.weight":
        return Q.F16 if outtype == "f16" else Q.F32
    return tensor_qtype(name, shape, Q[OUTTYPES[outtype][0]])


def _is_unused(gname: str, hp: Hparams) -> bool:
    m = re.match(r"^v\.blk\.(\d+)\.", gname)
    return bool(m and int(m.group(1)) >= hp.n_layer) or (gname.startswith("v.post_ln.") and hp.select_layer != -1)


def write_mmproj(hf_dir: str | os.PathLike, config: dict, st: SafetensorsIndex, out_path: str | os.PathLike,
                 outtype: str) -> Path:
    """Write the ``eagle2_5`` mmproj of an Eagle 2.5 checkpoint (see the module docstring)."""
    hf_dir, out_path = Path(hf_dir), Path(out_path)
    where = str(hf_dir / "config.json")
    if outtype not in OUTTYPES:
        raise ValueError(f"outtype {outtype!r} is not supported (expected one of {sorted(OUTTYPES)})")
    hp = Hparams(config, where)
    mean, std = read_image_mean_std(hf_dir, default=((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))
    want = mmproj_shapes(hp)
    def to_gguf(hf_name: str) -> str | None:
        gname = hf_to_gguf_name(hf_name)
        return None if gname is None or (gname and _is_unused(gname, hp)) else gname

    sources = match_mmproj_tensors(st, hf_dir, want, to_gguf, PROJECTOR,
                                   "an Eagle 2.5 checkpoint: vision_model.*, mlp1.*")
    plan = [(name, shape, qtype_of(name, shape, outtype)) for name, shape in want.items()]
    write_mmproj_file(out_path, hf_dir, outtype, lambda writer: hp.write(writer, mean, std), plan,
                      (st.load(sources[n]) for n, _, _ in plan))
    logger.info("wrote %s (clip/%s, %s, %d tensors)", out_path, PROJECTOR, outtype, len(plan))
    return out_path
