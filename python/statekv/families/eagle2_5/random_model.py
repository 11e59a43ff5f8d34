"""Random-weight Eagle 2.5 mmproj files at the real tower shape (benchmarks)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ...convert.common import random_tower, write_mmproj_file
from .convert import Hparams, mmproj_shapes, qtype_of

__all__ = ["VISION_SHAPES", "make_random_mmproj"]

# Eagle2.5-8B's SigLIP So400m at 448 px (NVlabs' processor: 448 tiles, 256 tokens per tile; the
# released config.json could not be read here: select_layer -1 as NVlabs' training scripts pass it).
VISION_SHAPES: dict[str, dict[str, Any]] = {
    "siglip-so400m-448": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                              image_size=448, patch_size=14, layer_norm_eps=1e-6),
}


def make_random_mmproj(out_path: str | os.PathLike, tower: str | dict, n_embd_out: int, qtype: str,
                       seed: int = 0, select_layer: int = -1) -> Path:
    """An ``eagle2_5`` mmproj with random weights (N(0, 0.02^2), norms 1 + N(0, 0.02^2)) at the tower
    shape ``tower`` (a key of :data:`VISION_SHAPES` or a dict of vision_config fields) whose
    projector gives ``n_embd_out`` features (Eagle2.5-8B: 3584)."""
    vc, name = random_tower(VISION_SHAPES, tower, "siglip-so400m-448", qtype)
    hp = Hparams(dict(vision_config=vc, text_config=dict(hidden_size=int(n_embd_out)), select_layer=select_layer),
                 f"tower {name!r}")
    plan = [(n, s, qtype_of(n, s, qtype)) for n, s in mmproj_shapes(hp).items()]

    def values():
        for i, (n, shp, _) in enumerate(plan):
            rng = np.random.default_rng([seed, i])
            base = 1.0 if len(shp) == 1 and n.endswith(".weight") else 0.0
            yield base + 0.02 * rng.standard_normal(shp, dtype=np.float32)

    return write_mmproj_file(Path(out_path), f"random {name} Eagle 2.5 mmproj", qtype,
                             lambda writer: hp.write(writer, [0.5] * 3, [0.5] * 3), plan, values())

