"""The vision side of `statekv bench frames`: random-weight mmproj files at real tower shapes, the
layout of one frame step of a video VLM, and the encoder's timing.

A frame step of a video VLM carries the visual rows of one encoder patch plus a few text tokens
around them. Their number is fixed here to the family's prompt layout (as its processor writes
the first frames of a video; :mod:`statekv.vision.internvl` and :mod:`statekv.vision.qwen3vl`
build the real prompts):

- InternVL3, one frame per step: ``Frame1: <img>`` (5 tokens: ``Frame``, ``1``, ``:``, `` ``,
  ``<img>``), the 256 rows of a 448 x 448 tile, ``</img>`` and ``\\n`` (2 tokens).
- Qwen3-VL, one temporal patch (two frames) per step: ``<0.5 seconds>`` (6 tokens) and
  ``<|vision_start|>``, the ``gh x gw`` merged rows, ``<|vision_end|>``; positions on three axes
  as ``get_rope_index`` gives them.

Frames from the tenth on (InternVL) or past ten seconds (Qwen3-VL) have one more digit, i.e. one
more token per step: a 0.4 % difference the benchmark leaves out so that every step has the
same size.

The encoder is timed on random frames preprocessed by the family's own helper: a single
``image_size`` tile for InternVL (448 x 448 for InternViT-300M), and for Qwen3-VL the size the
video processor picks for the benchmark's whole video under its default pixel bounds (a 640 x 360
source becomes 352 x 640: an 11 x 20 grid, 220 rows per temporal patch, for up to ~110 frames).
"""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "TOWER_OF_SHAPE", "INTERNVL_TEXT_TOKENS", "QWEN3VL_TEXT_TOKENS", "DEFAULT_SOURCE_SIZE",
    "random_mmproj_path", "StepLayout", "step_layout", "random_pixels", "time_encoder", "qwen3vl_positions",
]

# Text shape (statekv.bench.shapes) -> (vision family, vision tower shape of that family's maker).
TOWER_OF_SHAPE: dict[str, tuple[str, str]] = {
    "internvl3-1b": ("internvl", "internvit-300m"),
    "internvl3-2b": ("internvl", "internvit-300m"),
    "internvl3-8b": ("internvl", "internvit-300m"),
    "qwen3-vl-2b": ("qwen3vl", "qwen3-vl-2b"),
    "qwen3-vl-4b": ("qwen3vl", "qwen3-vl-4b"),
    "qwen3-vl-8b": ("qwen3vl", "qwen3-vl-8b"),
}

# Text tokens of a step (before, after) its visual rows; see the module docstring.
INTERNVL_TEXT_TOKENS = (5, 2)
QWEN3VL_TEXT_TOKENS = (7, 1)

# (width, height) of the source video frames (Qwen3-VL's frame size depends on it).
DEFAULT_SOURCE_SIZE = (640, 360)

_PROJECTOR_FAMILY = {"internvl": "internvl", "qwen3vl_merger": "qwen3vl"}


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
    # Both writers write to a temporary file and rename it: an interrupted run leaves no partial file.
    if family == "internvl":
        from ..convert_internvl import make_random_internvl_mmproj

        make_random_internvl_mmproj(path, shape=tower, n_embd_out=get_shape(shape_name).hidden, qtype=qtype)
    else:
        from ..convert_qwen3vl import make_random_qwen3vl_mmproj

        make_random_qwen3vl_mmproj(path, shape=tower, qtype=qtype)
    return path


@dataclass(frozen=True)
class StepLayout:
    """What one frame step holds: ``frames_per_step`` frames of ``frame_size`` (h, w) pixels give
    ``visual_rows`` rows, between ``text_before`` and ``text_after`` text tokens. ``grid`` is the
    (rows, cols) of merged patches for Qwen3-VL's 3-axis positions (None for InternVL)."""

    family: str
    frames_per_step: int
    frame_size: tuple[int, int]
    visual_rows: int
    text_before: int
    text_after: int
    grid: tuple[int, int] | None = None

    @property
    def tokens_per_step(self) -> int:
        return self.text_before + self.visual_rows + self.text_after

    @property
    def row_indices(self) -> np.ndarray:
        """Where the visual rows go within a step's tokens."""
        return np.arange(self.text_before, self.text_before + self.visual_rows, dtype=np.int32)


def step_layout(info: dict, n_steps: int, source_size: tuple[int, int] = DEFAULT_SOURCE_SIZE) -> StepLayout:
    """The step layout of the model described by ``info`` (``Model.info()`` with an mmproj), for a
    video of ``n_steps`` steps whose source frames are ``source_size`` (width, height).
    ``visual_rows`` is what the encoder is expected to give (-1: counted by :func:`time_encoder`)."""
    projector = info.get("vision.projector")
    family = _PROJECTOR_FAMILY.get(projector)
    if family is None:
        raise ValueError(f"bench frames: no step layout for the projector {projector!r} "
                         f"(known: {', '.join(_PROJECTOR_FAMILY)})")
    if family == "internvl":
        # One 448 x 448 tile per frame (the tower's image_size); the rows are counted from the
        # encoder's output, which knows the projector's pixel-shuffle factor.
        size = int(info["vision.image_size"])
        return StepLayout("internvl", 1, (size, size), visual_rows=-1, text_before=INTERNVL_TEXT_TOKENS[0],
                          text_after=INTERNVL_TEXT_TOKENS[1])
    from ..vision import qwen3vl

    width, height = source_size
    frames_per_step = int(info["vision.frames_per_patch"])
    # the video processor sizes frames for the whole video (t * h * w within its pixel bounds)
    h, w = qwen3vl.target_size(n_steps * frames_per_step, height, width)
    grid = qwen3vl.merged_grid(h, w)
    return StepLayout("qwen3vl", frames_per_step, (h, w), visual_rows=grid[0] * grid[1],
                      text_before=QWEN3VL_TEXT_TOKENS[0], text_after=QWEN3VL_TEXT_TOKENS[1], grid=grid)


def random_pixels(layout: StepLayout, n_frames: int, info: dict, rng: np.random.Generator,
                  source_size: tuple[int, int] = DEFAULT_SOURCE_SIZE) -> np.ndarray:
    """``n_frames`` random RGB frames of ``source_size`` (width, height) through the family's
    preprocessing, with the mmproj's mean/std: float32 ``(n_frames, 3, h, w)``."""
    width, height = source_size
    frames = rng.integers(0, 256, (n_frames, height, width, 3), dtype=np.uint8)
    mean = [float(x) for x in str(info["vision.image_mean"]).split(",")]
    std = [float(x) for x in str(info["vision.image_std"]).split(",")]
    if layout.family == "internvl":
        from ..vision import internvl

        return internvl.preprocess_frames(frames, image_size=layout.frame_size[0], mean=mean, std=std)
    from ..vision import qwen3vl

    return qwen3vl.preprocess_frames(frames, size=layout.frame_size, image_mean=mean, image_std=std)


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
    the encoder's output (checked against the expected grid for Qwen3-VL)."""
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
    layout = StepLayout(layout.family, layout.frames_per_step, layout.frame_size, rows_per_patch,
                        layout.text_before, layout.text_after, layout.grid)
    return EncoderTiming(frames_per_encode, seconds, np.ascontiguousarray(out[0])), layout


def qwen3vl_positions(layout: StepLayout, start: int) -> tuple[np.ndarray, int]:
    """3-axis positions (3, tokens_per_step) of a Qwen3-VL step starting at position ``start``,
    and the next step's start: text tokens take (p, p, p); the merged rows take
    (p, p + row, p + col), then p advances by max(rows, cols) (as in
    :meth:`statekv.vision.qwen3vl.VideoPromptBuilder.step`)."""
    gh, gw = layout.grid
    before, after = layout.text_before, layout.text_after
    pos = np.empty((3, layout.tokens_per_step), dtype=np.int32)
    pos[:, :before] = np.arange(start, start + before, dtype=np.int32)
    p = start + before
    rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    visual = slice(before, before + gh * gw)
    pos[0, visual] = p
    pos[1, visual] = p + rows.ravel()
    pos[2, visual] = p + cols.ravel()
    p += max(gh, gw)
    pos[:, before + gh * gw:] = np.arange(p, p + after, dtype=np.int32)
    return pos, p + after
