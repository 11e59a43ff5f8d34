"""The vision side of `statekv bench frames`: random-weight mmproj files at real tower shapes, the
layout of one frame step of a video VLM, and the encoder's timing.

A frame step of a video VLM carries the visual rows of one encoder patch plus a few text tokens
around them. Their number and positions are the family's step layout
(:meth:`statekv.families.Family.step_layout`, in ``statekv/families/<name>/layout.py``, the layout
the chat runs, with the text of the first steps so that every step has the same size).

The encoder is timed on random frames preprocessed by the family's own helper, at the frame size
of its layout for the benchmark's whole video (``--source-size``).
"""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .. import families
from ..families import StepLayout

__all__ = ["TOWER_OF_SHAPE", "DEFAULT_SOURCE_SIZE", "random_mmproj_path", "StepLayout", "step_layout",
           "random_pixels", "time_encoder"]

# Text shape (statekv.bench.shapes) -> (vision family, vision tower shape of that family's maker): a data table.
TOWER_OF_SHAPE: dict[str, tuple[str, str]] = {
    "internvl3-1b": ("internvl", "internvit-300m"),
    "internvl3-2b": ("internvl", "internvit-300m"),
    "internvl3-8b": ("internvl", "internvit-300m"),
    "qwen3-vl-2b": ("qwen3vl", "qwen3-vl-2b"),
    "qwen3-vl-4b": ("qwen3vl", "qwen3-vl-4b"),
    "qwen3-vl-8b": ("qwen3vl", "qwen3-vl-8b"),
    "eagle2.5-8b": ("eagle2_5", "siglip-so400m-448"),
    "gemma3-4b": ("gemma3", "siglip-so400m-896"),
    "gemma3-12b": ("gemma3", "siglip-so400m-896"),
}

# (width, height) of the source video frames (the frame size of some families depends on it).
DEFAULT_SOURCE_SIZE = (640, 360)


def random_mmproj_path(shape_name: str, qtype: str, cache_dir: Path) -> Path:
    """The cached random-weight mmproj that pairs with the text shape ``shape_name`` (made once:
    an existing file is reused). Raises ValueError for a shape without a known vision tower."""
    from .shapes import get_shape

    if shape_name not in TOWER_OF_SHAPE:
        raise ValueError(f"shape {shape_name!r} has no vision tower to pair with (known: {', '.join(TOWER_OF_SHAPE)}); "
                         "pass --mmproj FILE or --no-vision")
    family, tower = TOWER_OF_SHAPE[shape_name]
    path = Path(cache_dir) / f"mmproj-{shape_name}-{tower}-{qtype}.gguf"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"making random-weight mmproj {tower} ({qtype}) for {shape_name} at {path} ...", file=sys.stderr)
    # The writers write to a temporary file and rename it: an interrupted run leaves no partial file.
    families.get(family).make_random_mmproj(path, tower, get_shape(shape_name).hidden, qtype)
    return path


def _family(info: dict) -> families.Family:
    projector = info.get("vision.projector")
    family = families.for_projector(projector)
    if family is None:
        raise ValueError(f"bench frames: no step layout for the projector {projector!r} "
                         f"(known: {', '.join(families.PROJECTORS)})")
    return family


def step_layout(info: dict, n_steps: int, source_size: tuple[int, int] = DEFAULT_SOURCE_SIZE) -> StepLayout:
    """The step layout of the model described by ``info`` (``Model.info()`` with an mmproj), for a
    video of ``n_steps`` steps whose source frames are ``source_size`` (width, height).
    ``visual_rows`` is what the encoder is expected to give (-1: counted by :func:`time_encoder`)."""
    return _family(info).step_layout(info, n_steps, source_size)


def random_pixels(layout: StepLayout, n_frames: int, info: dict, rng: np.random.Generator,
                  source_size: tuple[int, int] = DEFAULT_SOURCE_SIZE) -> np.ndarray:
    """``n_frames`` random RGB frames of ``source_size`` (width, height) through the family's
    preprocessing, with the mmproj's mean/std: float32 ``(n_frames, 3, h, w)``."""
    width, height = source_size
    frames = rng.integers(0, 256, (n_frames, height, width, 3), dtype=np.uint8)
    mean = [float(x) for x in str(info["vision.image_mean"]).split(",")]
    std = [float(x) for x in str(info["vision.image_std"]).split(",")]
    return families.get(layout.family).preprocess(frames, layout, mean, std)


@dataclass
class EncoderTiming:
    """Seconds of each timed ``encode_frames`` call over ``frames_per_encode`` frames, and the
    visual rows of the last call's first patch (what one frame step receives)."""

    frames_per_encode: int
    seconds: list[float]
    rows: np.ndarray  # (visual_rows, row_width)

    @property
    def seconds_per_frame(self) -> float:
        return statistics.median(self.seconds) / self.frames_per_encode


def time_encoder(model, layout: StepLayout, frames_per_encode: int, repetitions: int,
                 rng: np.random.Generator, source_size: tuple[int, int] = DEFAULT_SOURCE_SIZE
                 ) -> tuple[EncoderTiming, StepLayout]:
    """Time ``model.encode_frames`` on ``frames_per_encode`` preprocessed random frames: one
    untimed warm-up call (the first call pages in the mmap'd weights and plans the graph), then
    ``repetitions`` timed calls. Returns the timing and the layout with ``visual_rows`` set from
    the encoder's output (checked against the expected grid when the layout knows it)."""
    if frames_per_encode <= 0 or frames_per_encode % layout.frames_per_step:
        raise ValueError(f"--encode-frames {frames_per_encode} must be a positive multiple of the "
                         f"{layout.frames_per_step} frame(s) of one {layout.family} step")
    if repetitions <= 0:
        raise ValueError("--encode-reps must be positive")
    info = model.info_cached
    pixels = random_pixels(layout, frames_per_encode, info, rng, source_size)
    model.encode_frames(pixels)  # warm-up
    seconds = []
    for _ in range(repetitions):
        t0 = time.perf_counter()
        out = model.encode_frames(pixels)
        seconds.append(time.perf_counter() - t0)
    n_patches, rows_per_patch, width = out.shape
    if n_patches != frames_per_encode // layout.frames_per_step:
        raise ValueError(f"encode_frames gave {n_patches} patches for {frames_per_encode} frames "
                         f"({layout.frames_per_step} per patch expected)")
    if layout.visual_rows >= 0 and rows_per_patch != layout.visual_rows:
        raise ValueError(f"encode_frames gave {rows_per_patch} rows per patch, expected {layout.visual_rows} "
                         f"(grid {layout.grid} of {layout.frame_size[0]}x{layout.frame_size[1]} frames)")
    layout = replace(layout, visual_rows=rows_per_patch)
    return EncoderTiming(frames_per_encode, seconds, np.ascontiguousarray(out[0])), layout
