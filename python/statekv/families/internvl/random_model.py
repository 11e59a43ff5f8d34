"""Random-weight InternVL mmproj files at real tower shapes (benchmarks, the demo)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ...convert.common import write_mmproj_file
from .convert import _expected_shapes, _Hparams, _sort_key, _tensor_qtype

__all__ = ["VISION_SHAPES", "make_random_internvl_mmproj", "make_random_mmproj"]

# Vision towers of the InternVL3 family (OpenGVLab's InternViT-*/config.json).
VISION_SHAPES: dict[str, dict[str, Any]] = {
    # InternViT-300M-448px-V2_5: the tower of InternVL3-1B / 2B / 8B / 9B / 14B
    "internvit-300m": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                           image_size=448, patch_size=14, layer_norm_eps=1e-6, attention_bias=True,
                           use_qk_norm=False, norm_type="layer_norm"),
    # InternViT-6B-448px-V2_5: the tower of InternVL3-38B / 78B
    "internvit-6b": dict(hidden_size=3200, num_hidden_layers=45, num_attention_heads=25, intermediate_size=12800,
                         image_size=448, patch_size=14, layer_norm_eps=1e-6, attention_bias=False,
                         use_qk_norm=True, norm_type="rms_norm"),
}
_QTYPES = ("f32", "f16", "bf16", "q8_0")


def make_random_internvl_mmproj(out_path: str | os.PathLike, shape: str | dict = "internvit-300m",
                                n_embd_out: int = 896, qtype: str = "f16", seed: int = 0,
                                downsample_ratio: float = 0.5) -> Path:
    """Write an InternVL mmproj GGUF with random weights at a real tower's shape.

    ``shape``: a key of :data:`VISION_SHAPES` (``internvit-300m``: InternVL3-1B/2B/8B;
    ``internvit-6b``: InternVL3-38B/78B) or a dict of InternVL ``vision_config`` fields;
    ``n_embd_out``: the text model's width (InternVL3-1B 896, 2B 1536, 8B 3584); ``qtype``: type of
    the matrices (``f32``, ``f16``, ``bf16``, ``q8_0``), with llama.cpp's F32/F16 exceptions.
    Weights ~ N(0, 0.02^2) (patch kernel N(0, 0.05^2), position table N(0, 0.02^2)), norms
    1 + N(0, 0.02^2), biases N(0, 0.02^2), layer scales 0.1: values stay finite through the tower.
    Same layout and metadata as :func:`write_mmproj`; ImageNet mean/std.
    """
    if qtype not in _QTYPES:
        raise ValueError(f"qtype {qtype!r} is not supported (expected one of {list(_QTYPES)})")
    if isinstance(shape, str):
        if shape not in VISION_SHAPES:
            raise ValueError(f"unknown shape {shape!r} (expected one of {sorted(VISION_SHAPES)} or a dict)")
        vc = dict(VISION_SHAPES[shape])
        shape_name = shape
    else:
        vc = dict(VISION_SHAPES["internvit-300m"], **shape)
        shape_name = "custom"
    config = dict(vision_config=vc, text_config=dict(hidden_size=int(n_embd_out)), downsample_ratio=downsample_ratio)
    hp = _Hparams(config, f"shape {shape_name!r}")
    want = _expected_shapes(hp, qkv_bias=bool(vc.get("attention_bias")), qk_norm=bool(vc.get("use_qk_norm")),
                            bias_norms=vc.get("norm_type", "layer_norm") == "layer_norm")
    plan = sorted(((n, s, _tensor_qtype(n, s, qtype)) for n, s in want.items()), key=lambda t: _sort_key(t[0]))

    def values() -> Iterator[np.ndarray]:
        for i, (name, shp, _) in enumerate(plan):
            rng = np.random.default_rng([seed, i])
            if name.endswith((".ls1.weight", ".ls2.weight")):
                yield np.full(shp, 0.1, dtype=np.float32)
            elif len(shp) == 1 and name.endswith(".weight"):  # norm scales
                yield (1.0 + 0.02 * rng.standard_normal(shp, dtype=np.float32))
            elif name == "v.patch_embd.weight":
                yield 0.05 * rng.standard_normal(shp, dtype=np.float32)
            else:
                yield 0.02 * rng.standard_normal(shp, dtype=np.float32)

    return write_mmproj_file(Path(out_path), f"random {shape_name} InternVL mmproj", qtype,
                             lambda writer: hp.write(writer, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]), plan,
                             values())



def make_random_mmproj(out_path: str | os.PathLike, tower: str | dict, n_embd_out: int, qtype: str) -> Path:
    """The family's random-mmproj hook (:meth:`statekv.families.Family.make_random_mmproj`)."""
    return make_random_internvl_mmproj(out_path, shape=tower, n_embd_out=n_embd_out, qtype=qtype)
