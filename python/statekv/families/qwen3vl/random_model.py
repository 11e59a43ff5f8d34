"""Random-weight Qwen3-VL mmproj files at real vision tower shapes (benchmarks)."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

import numpy as np

from .convert import QWEN3VL_IMAGE_MEAN, QWEN3VL_IMAGE_STD, QWEN3VL_VISION_SHAPES, VisionHParams, _tensor_layout, _write

__all__ = ["make_random_qwen3vl_mmproj", "make_random_mmproj"]

def make_random_qwen3vl_mmproj(out_path: str | os.PathLike, shape: str | VisionHParams = "qwen3-vl-2b",
                               qtype: str = "f16", seed: int = 0) -> Path:
    """A Qwen3-VL mmproj GGUF with random weights at a real vision tower's shape.

    ``shape``: a key of :data:`QWEN3VL_VISION_SHAPES` (``qwen3-vl-2b``, ``-4b``, ``-8b``) or a
    :class:`VisionHParams`; ``qtype``: f32, f16, bf16 or q8_0 (types per tensor as llama.cpp's
    converter gives them). Weights ~ N(0, 0.02^2), norm scales ~ 1 + N(0, 0.02^2), biases
    ~ N(0, 0.02^2), deterministic in ``seed``. Pairs with ``statekv bench make-model``'s
    Qwen3-VL LLM of the same size (projection_dim = its hidden size, one DeepStack slice per
    flagged layer). Returns ``out_path``.
    """
    if isinstance(shape, str):
        if shape not in QWEN3VL_VISION_SHAPES:
            raise ValueError(f"unknown Qwen3-VL vision shape {shape!r} (expected one of {sorted(QWEN3VL_VISION_SHAPES)})")
        hp = QWEN3VL_VISION_SHAPES[shape]
        name = f"{shape}-random-vision"
    else:
        hp, name = shape, "qwen3-vl-random-vision"
    counter = [0]

    def gen(shape_: tuple[int, ...], norm: bool) -> Callable[[], np.ndarray]:
        counter[0] += 1
        ss = np.random.SeedSequence([seed, counter[0]])

        def load():
            rng = np.random.default_rng(ss)
            x = rng.standard_normal(shape_, dtype=np.float32) * np.float32(0.02)
            return x + np.float32(1.0) if norm else x
        return load

    def source(hf: str, shape_: tuple[int, ...]):
        return gen(shape_, norm=hf.endswith(("norm1.weight", "norm2.weight", "norm.weight")))

    def patch_kernel(t: int):
        return gen((hp.hidden_size, hp.in_channels, hp.patch_size, hp.patch_size), norm=False)

    tensors = _tensor_layout(hp, source, patch_kernel)
    return _write(Path(out_path), hp, tensors, qtype, QWEN3VL_IMAGE_MEAN, QWEN3VL_IMAGE_STD, name, None)


def make_random_mmproj(out_path: str | os.PathLike, tower: str | dict, n_embd_out: int, qtype: str) -> Path:
    """The family's random-mmproj hook (:meth:`statekv.families.Family.make_random_mmproj`): the
    tower ``tower`` (a name, or a dict of :class:`VisionHParams` fields) with its projector's
    output width set to ``n_embd_out``."""
    if isinstance(tower, str) and n_embd_out == QWEN3VL_VISION_SHAPES[tower].out_hidden_size:
        return make_random_qwen3vl_mmproj(out_path, tower, qtype)
    hp = QWEN3VL_VISION_SHAPES[tower] if isinstance(tower, str) else VisionHParams(**dict(tower, out_hidden_size=0))
    return make_random_qwen3vl_mmproj(out_path, dataclasses.replace(hp, out_hidden_size=int(n_embd_out)), qtype)
