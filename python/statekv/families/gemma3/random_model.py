"""Random-weight Gemma 3 mmproj files at the real tower shape (benchmarks)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ...convert.common import random_tower, write_mmproj_file
from .convert import _Hparams, _qtype

__all__ = ["VISION_SHAPES", "make_random_mmproj"]

# The SigLIP tower of every Gemma 3 VLM (4B, 12B, 27B: google/gemma-3-*-it config.json vision_config).
VISION_SHAPES: dict[str, dict[str, Any]] = {
    "siglip-so400m-896": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                              image_size=896, patch_size=14, layer_norm_eps=1e-6),
}


def make_random_mmproj(out_path: str | os.PathLike, tower: str | dict, n_embd_out: int, qtype: str,
                       seed: int = 0) -> Path:
    """A ``gemma3`` mmproj with random weights at the tower shape ``tower`` (a key of
    :data:`VISION_SHAPES` or a dict of vision_config fields) whose projector gives ``n_embd_out``
    features (Gemma 3 4B: 2560, 12B: 3840, 27B: 5376). Weights ~ N(0, 0.02^2), norms 1 + N(0,
    0.02^2), biases N(0, 0.02^2); same layout and metadata as the converter's."""
    vc, name = random_tower(VISION_SHAPES, tower, "siglip-so400m-896", qtype)
    hp = _Hparams(dict(vision_config=vc, text_config=dict(hidden_size=int(n_embd_out)), mm_tokens_per_image=256),
                  f"tower {name!r}")
    plan = [(n, s, _qtype(n, s, qtype)) for n, s in hp.shapes().items()]

    def values():
        for i, (n, shp, _) in enumerate(plan):
            rng = np.random.default_rng([seed, i])
            scale = 1.0 if len(shp) == 1 and n.endswith(".weight") else 0.0
            yield scale + 0.02 * rng.standard_normal(shp, dtype=np.float32)

    return write_mmproj_file(Path(out_path), f"random {name} Gemma 3 mmproj", qtype,
                             lambda writer: hp.write(writer, [0.5] * 3, [0.5] * 3), plan, values())

