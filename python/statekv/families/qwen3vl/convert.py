"""Qwen3-VL vision tower -> mmproj GGUF, in llama.cpp's layout.

    statekv convert HF_DIR OUT.gguf --mmproj MMPROJ.gguf     (Qwen3VLForConditionalGeneration)

What llama.cpp's converter (``Qwen3VLVisionModel`` / ``MmprojModel``) writes, and so what this
module writes for the same checkpoint:

Metadata (``general.architecture = "clip"``, ``general.type = "mmproj"``, then the model card
keys, then): ``general.file_type``, ``clip.has_vision_encoder = true``,
``clip.vision.projection_dim`` (the text hidden size), ``clip.vision.image_size``
(``sqrt(num_position_embeddings) * patch_size``: the learned position grid), ``patch_size``,
``embedding_length``, ``feed_forward_length``, ``block_count``, ``attention.head_count``,
``image_mean`` / ``image_std`` (from ``preprocessor_config.json``), ``clip.projector_type =
"qwen3vl_merger"``, ``clip.use_gelu = true``, ``clip.vision.spatial_merge_size``,
``clip.vision.attention.layer_norm_epsilon`` (llama.cpp takes the *text* config's
``rms_norm_eps``), ``clip.vision.is_deepstack_layers`` (one bool per vision layer),
``general.quantization_version``. No min/max pixel keys.

Tensors (HF ``model.visual.*`` -> GGUF):

=========================================== ==================================================
``patch_embed.proj.weight`` [C, 3, 2, P, P]  ``v.patch_embd.weight`` (t = 0) and
                                            ``v.patch_embd.weight.1`` (t = 1), each [C, 3, P, P]
``patch_embed.proj.bias``                    ``v.patch_embd.bias``
``pos_embed.weight``                         ``v.position_embd.weight`` (always F32)
``blocks.N.norm1`` / ``norm2``               ``v.blk.N.ln1`` / ``v.blk.N.ln2``
``blocks.N.attn.qkv`` / ``attn.proj``        ``v.blk.N.attn_qkv`` / ``v.blk.N.attn_out``
``blocks.N.mlp.linear_fc1`` / ``linear_fc2`` ``v.blk.N.ffn_up`` / ``v.blk.N.ffn_down``
``merger.norm``                              ``v.post_ln``
``merger.linear_fc1`` / ``linear_fc2``       ``mm.0`` / ``mm.2``
``deepstack_merger_list.I.norm`` / ``fc1`` / ``v.deepstack.L.norm`` / ``fc1`` / ``fc2`` with
``fc2``                                      L = ``deepstack_visual_indexes[I]`` (absolute layer)
=========================================== ==================================================

Types: 1-D tensors (norms, biases) and the position table are F32; the patch kernels are F16
for ``--outtype f16`` and F32 otherwise; other matrices take the output type (Q8_0 falls back to
F16 for rows that are not a multiple of 32), as llama.cpp does.

``preprocessor_config.json`` is optional here: without it, ``image_mean`` / ``image_std`` take the
values of Qwen3-VL's released processors ([0.5, 0.5, 0.5]) and a warning is logged (llama.cpp's
converter requires the file).

:func:`statekv.families.qwen3vl.random_model.make_random_qwen3vl_mmproj` writes a random-weight
mmproj of a real model's vision tower shape (Qwen3-VL 2B / 4B / 8B) for benchmarks.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ...convert.common import (OUTTYPES, ConversionError, TextFamily, _gguf, add_clip_vision_keys, add_tensor_infos,
                               read_image_mean_std, tensor_qtype, write_gguf_atomically)
from ...convert.safetensors import SafetensorsIndex

__all__ = ["TEXT_FAMILY", "QWEN3VL_VISION_SHAPES", "VisionHParams", "write_qwen3vl_mmproj", "write_mmproj"]

logger = logging.getLogger("statekv.convert")

PROJECTOR_TYPE = "qwen3vl_merger"
QWEN3VL_IMAGE_MEAN = (0.5, 0.5, 0.5)   # preprocessor_config.json of the released Qwen3-VL models
QWEN3VL_IMAGE_STD = (0.5, 0.5, 0.5)


def _text_params(writer: Any, hparams: dict, config: dict) -> None:
    vision = config.get("vision_config") or {}
    writer.add_num_deepstack_layers(len(vision.get("deepstack_visual_indexes") or []))


# The text half: "model.language_model.*" is the decoder; the vision tower goes to the mmproj.
TEXT_FAMILY = TextFamily(
    "QWEN3VL",
    rename=(("model.language_model.", "model."),),
    skip_prefixes=("model.visual.", "visual."),
    extra_params=_text_params,
)


@dataclass(frozen=True)
class VisionHParams:
    """The vision tower hyper-parameters the mmproj records (HF ``vision_config`` names)."""

    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    out_hidden_size: int           # = the text model's hidden size (clip.vision.projection_dim)
    num_position_embeddings: int
    deepstack_visual_indexes: tuple[int, ...]
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    in_channels: int = 3
    layer_norm_eps: float = 1e-6   # written from the text config's rms_norm_eps, as llama.cpp does

    @property
    def grid_side(self) -> int:
        return int(round(math.sqrt(self.num_position_embeddings)))

    @property
    def image_size(self) -> int:
        # llama.cpp: int(num_position_embeddings ** 0.5 * patch_size)
        return int(self.num_position_embeddings ** 0.5 * self.patch_size)

    @property
    def merged_size(self) -> int:
        return self.hidden_size * self.spatial_merge_size ** 2


# Vision towers of the released checkpoints (their config.json vision_config; text rms_norm_eps 1e-6).
QWEN3VL_VISION_SHAPES: dict[str, VisionHParams] = {
    "qwen3-vl-2b": VisionHParams(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16,
                                 out_hidden_size=2048, num_position_embeddings=2304,
                                 deepstack_visual_indexes=(5, 11, 17)),
    "qwen3-vl-4b": VisionHParams(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16,
                                 out_hidden_size=2560, num_position_embeddings=2304,
                                 deepstack_visual_indexes=(5, 11, 17)),
    "qwen3-vl-8b": VisionHParams(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16,
                                 out_hidden_size=4096, num_position_embeddings=2304,
                                 deepstack_visual_indexes=(8, 16, 24)),
}


# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]           # numpy order
    load: Callable[[], np.ndarray]   # float32 data of that shape
    force: str | None = None         # "f32" or "patch" (F16 for f16 output, else F32)


def _tensor_layout(hp: VisionHParams, source: Callable[[str, tuple[int, ...]], Callable[[], np.ndarray]],
                   patch_kernel: Callable[[int], Callable[[], np.ndarray]]) -> list[_Tensor]:
    """The mmproj's tensors in file order. ``source(hf_suffix, shape)`` gives a loader of
    ``model.visual.<hf_suffix>``; ``patch_kernel(t)`` the loader of the t-th temporal slice."""
    C, F, M, E, P = hp.hidden_size, hp.intermediate_size, hp.merged_size, hp.out_hidden_size, hp.patch_size
    out: list[_Tensor] = []

    def add(name, hf, shape, force=None):
        out.append(_Tensor(name, tuple(shape), source(hf, tuple(shape)), force))

    for t, suffix in ((0, ""), (1, ".1")):
        out.append(_Tensor("v.patch_embd.weight" + suffix, (C, hp.in_channels, P, P), patch_kernel(t), "patch"))
    add("v.patch_embd.bias", "patch_embed.proj.bias", (C,))
    add("v.position_embd.weight", "pos_embed.weight", (hp.num_position_embeddings, C), "f32")
    for i in range(hp.depth):
        b, h = f"v.blk.{i}.", f"blocks.{i}."
        for g, n in (("ln1", "norm1"), ("ln2", "norm2")):
            add(b + g + ".weight", h + n + ".weight", (C,))
            add(b + g + ".bias", h + n + ".bias", (C,))
        add(b + "attn_qkv.weight", h + "attn.qkv.weight", (3 * C, C))
        add(b + "attn_qkv.bias", h + "attn.qkv.bias", (3 * C,))
        add(b + "attn_out.weight", h + "attn.proj.weight", (C, C))
        add(b + "attn_out.bias", h + "attn.proj.bias", (C,))
        add(b + "ffn_up.weight", h + "mlp.linear_fc1.weight", (F, C))
        add(b + "ffn_up.bias", h + "mlp.linear_fc1.bias", (F,))
        add(b + "ffn_down.weight", h + "mlp.linear_fc2.weight", (C, F))
        add(b + "ffn_down.bias", h + "mlp.linear_fc2.bias", (C,))
    for j, layer in enumerate(hp.deepstack_visual_indexes):
        b, h = f"v.deepstack.{layer}.", f"deepstack_merger_list.{j}."
        add(b + "norm.weight", h + "norm.weight", (M,))
        add(b + "norm.bias", h + "norm.bias", (M,))
        add(b + "fc1.weight", h + "linear_fc1.weight", (M, M))
        add(b + "fc1.bias", h + "linear_fc1.bias", (M,))
        add(b + "fc2.weight", h + "linear_fc2.weight", (E, M))
        add(b + "fc2.bias", h + "linear_fc2.bias", (E,))
    add("v.post_ln.weight", "merger.norm.weight", (C,))
    add("v.post_ln.bias", "merger.norm.bias", (C,))
    add("mm.0.weight", "merger.linear_fc1.weight", (M, M))
    add("mm.0.bias", "merger.linear_fc1.bias", (M,))
    add("mm.2.weight", "merger.linear_fc2.weight", (E, M))
    add("mm.2.bias", "merger.linear_fc2.bias", (E,))
    return out


def _qtype_for(t: _Tensor, outtype: str):
    """The GGML type llama.cpp's converter gives this mmproj tensor for ``outtype``."""
    Q = _gguf().GGMLQuantizationType
    if t.force == "patch":
        return Q.F16 if outtype == "f16" else Q.F32
    if t.force == "f32":
        return Q.F32
    return tensor_qtype(t.name, t.shape, Q[OUTTYPES[outtype][0]])


def _write(out_path: Path, hp: VisionHParams, tensors: list[_Tensor], outtype: str, image_mean: Sequence[float],
           image_std: Sequence[float], name: str, hf_dir: Path | None) -> Path:
    gguf = _gguf()
    if outtype not in OUTTYPES:
        raise ValueError(f"outtype {outtype!r} is not supported (expected one of {sorted(OUTTYPES)})")
    writer = gguf.GGUFWriter(path=None, arch="clip")
    qtypes = [_qtype_for(t, outtype) for t in tensors]
    add_tensor_infos(writer, ((t.name, t.shape, q) for t, q in zip(tensors, qtypes)))

    writer.add_type(gguf.GGUFType.MMPROJ)
    total_params, shared, expert, n_expert = writer.get_total_parameter_count()
    meta = gguf.Metadata.load(None, hf_dir, None, total_params)
    if meta.name is None:
        meta.name = name
    if meta.size_label is None and total_params > 0:
        meta.size_label = gguf.size_label(total_params, shared, expert, n_expert)
    meta.set_gguf_meta_model(writer)

    writer.add_file_type(int(gguf.LlamaFileType[OUTTYPES[outtype][1]]))
    add_clip_vision_keys(writer, projection_dim=hp.out_hidden_size, image_size=hp.image_size,
                         patch_size=hp.patch_size, width=hp.hidden_size, ff=hp.intermediate_size, blocks=hp.depth,
                         heads=hp.num_heads, mean=image_mean, std=image_std, projector=PROJECTOR_TYPE,
                         eps=hp.layer_norm_eps)
    writer.add_vision_spatial_merge_size(hp.spatial_merge_size)
    flags = [False] * hp.depth
    for i in hp.deepstack_visual_indexes:
        flags[i] = True
    writer.add_vision_is_deepstack_layers(flags)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    def tensor_data():
        for t, q in zip(tensors, qtypes):
            data = np.ascontiguousarray(t.load(), dtype=np.float32)
            if data.shape != t.shape:  # pragma: no cover - guarded by the loaders
                raise ConversionError(f"{t.name}: data of shape {data.shape}, expected {t.shape}")
            yield data, q

    write_gguf_atomically(writer, out_path, tensor_data())
    logger.info("wrote %s (clip/%s, %s, %d tensors)", out_path, PROJECTOR_TYPE, outtype, len(tensors))
    return out_path


# --------------------------------------------------------------------------------------------
# From a Hugging Face checkpoint
# --------------------------------------------------------------------------------------------


def _hparams_from_config(config: dict, where: Path) -> VisionHParams:
    v = config.get("vision_config")
    if not isinstance(v, dict):
        raise ConversionError(f"{where}: no 'vision_config' (expected Qwen3-VL's vision tower configuration)")
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config

    def need(key, src=v, name="vision_config"):
        if src.get(key) is None:
            raise ConversionError(f"{where}: '{name}.{key}' missing")
        return src[key]

    n_embd_text = text.get("hidden_size", config.get("hidden_size"))
    if n_embd_text is None:
        raise ConversionError(f"{where}: 'text_config.hidden_size' missing")
    hp = VisionHParams(
        depth=int(need("depth")),
        hidden_size=int(need("hidden_size")),
        intermediate_size=int(need("intermediate_size")),
        num_heads=int(need("num_heads")),
        out_hidden_size=int(n_embd_text),
        num_position_embeddings=int(v.get("num_position_embeddings", 2304)),
        deepstack_visual_indexes=tuple(int(i) for i in v.get("deepstack_visual_indexes") or ()),
        patch_size=int(v.get("patch_size", 16)),
        temporal_patch_size=int(v.get("temporal_patch_size", 2)),
        spatial_merge_size=int(v.get("spatial_merge_size", 2)),
        in_channels=int(v.get("in_channels", 3)),
        layer_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
    )
    if hp.temporal_patch_size != 2:
        raise ConversionError(f"{where}: vision_config.temporal_patch_size is {hp.temporal_patch_size}; the "
                              "mmproj layout splits the patch kernel into exactly 2 temporal slices")
    if int(v.get("out_hidden_size", hp.out_hidden_size)) != hp.out_hidden_size:
        raise ConversionError(f"{where}: vision_config.out_hidden_size {v.get('out_hidden_size')} differs from the "
                              f"text hidden_size {hp.out_hidden_size}")
    if hp.grid_side ** 2 != hp.num_position_embeddings:
        raise ConversionError(f"{where}: vision_config.num_position_embeddings {hp.num_position_embeddings} is not a "
                              "square (expected a side x side learned grid)")
    if any(i < 0 or i >= hp.depth for i in hp.deepstack_visual_indexes):
        raise ConversionError(f"{where}: deepstack_visual_indexes {list(hp.deepstack_visual_indexes)} must be vision "
                              f"layers in [0, {hp.depth})")
    return hp


def write_qwen3vl_mmproj(hf_dir: str | os.PathLike, config: dict, st: SafetensorsIndex | None,
                         out_path: str | os.PathLike, outtype: str = "f16") -> Path:
    """Write the mmproj GGUF of the Qwen3-VL checkpoint in ``hf_dir`` (registered in
    family registry, :mod:`statekv.families`). ``st``: the checkpoint's tensors (opened if None)."""
    hf_dir, out_path = Path(hf_dir), Path(out_path)
    hp = _hparams_from_config(config, hf_dir / "config.json")
    st = st if st is not None else SafetensorsIndex(hf_dir)
    prefix = next((p for p in ("model.visual.", "visual.") if f"{p}patch_embed.proj.weight" in st.entries), None)
    if prefix is None:
        raise ConversionError(f"{hf_dir}: no vision tower tensors (expected model.visual.patch_embed.proj.weight)")

    def source(hf: str, shape: tuple[int, ...]):
        name = prefix + hf
        if name not in st.entries:
            raise ConversionError(f"{hf_dir}: tensor {name!r} is missing (expected shape {list(shape)})")
        if tuple(st.shape(name)) != shape:
            raise ConversionError(f"{st.entries[name].file}: tensor {name!r} has shape {list(st.shape(name))}, "
                                  f"expected {list(shape)}")
        return lambda: st.load(name)

    kname = prefix + "patch_embed.proj.weight"
    kshape = (hp.hidden_size, hp.in_channels, hp.temporal_patch_size, hp.patch_size, hp.patch_size)
    if tuple(st.shape(kname)) != kshape:
        raise ConversionError(f"{st.entries[kname].file}: tensor {kname!r} has shape {list(st.shape(kname))}, "
                              f"expected {list(kshape)}")

    def patch_kernel(t: int):
        return lambda: np.ascontiguousarray(st.load(kname)[:, :, t])

    tensors = _tensor_layout(hp, source, patch_kernel)
    mean, std = read_image_mean_std(hf_dir, default=(QWEN3VL_IMAGE_MEAN, QWEN3VL_IMAGE_STD))
    return _write(out_path, hp, tensors, outtype, mean, std, hf_dir.name, hf_dir)


write_mmproj = write_qwen3vl_mmproj  # the family's converter hook
