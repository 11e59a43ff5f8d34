"""Qwen3-VL frames, video prompts and multi-axis positions, as transformers' Qwen3-VL
processor and model make them.

Frames (:func:`preprocess_frames`): the video processor's steps -- one target size for the whole
video from :func:`smart_resize` (multiples of ``patch_size * merge_size`` = 32, ``t * h * w``
within ``[min_pixels, max_pixels]`` counted over all frames), a bicubic resize of every frame
(PIL's, as the HF image processors do; the torchvision resize of transformers' video processor
rounds slightly differently), ``x / 255``, ``(x - mean) / std``, and temporal pairing: an odd
frame count gets its last frame repeated. Frames of different sizes in one video raise
``ValueError`` unless ``allow_mixed_sizes=True``, which resizes every frame to the size computed
from the first frame (documented behaviour; transformers' processor needs one size per video).
Sampling (:func:`sample_frame_indices`) and timestamps (:func:`frame_timestamps`) follow the video
processor's ``sample_frames`` and the processor's ``_calculate_timestamps``.

Prompt (:func:`build_video_prompt`, :class:`VideoPromptBuilder`): the Qwen3-VL chat template puts
``<|vision_start|><|video_pad|><|vision_end|>`` in the user turn, and the processor replaces the
``<|video_pad|>`` by, for each temporal patch, ``<{t:.1f} seconds>`` + ``<|vision_start|>`` +
``<|video_pad|>`` x rows + ``<|vision_end|>`` -- so the frame steps sit *inside* the template's
own ``<|vision_start|>`` ... ``<|vision_end|>`` (nested, as the processor produces them)::

    [<|im_start|>system\\n{system}<|im_end|>\\n]<|im_start|>user\\n<|vision_start|>   <- prefix
    <0.5 seconds><|vision_start|><|video_pad|>...<|vision_end|>                   <- step 1
    <2.5 seconds><|vision_start|><|video_pad|>...<|vision_end|>                   <- step 2
    ...
    <|vision_end|>{question}<|im_end|>\\n<|im_start|>assistant\\n                   <- question

One frame step = one temporal patch with its timestamp and wrapper tokens. Special tokens split
the text before BPE, so tokenizing the parts separately gives exactly the whole prompt's ids.

Positions (3 axes: t, h, w) are those of transformers' ``Qwen3VLModel.get_rope_index``: text
tokens take ``p, p, p`` and advance ``p`` by one; the ``gh x gw`` merged rows of a temporal patch
(grid split per temporal patch, t = 1) take ``(p, p + row, p + col)``, then ``p += max(gh, gw)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = [
    "IMAGE_MEAN", "IMAGE_STD", "PATCH_SIZE", "MERGE_SIZE", "TEMPORAL_PATCH_SIZE", "MIN_PIXELS", "MAX_PIXELS",
    "FPS", "MIN_FRAMES", "MAX_FRAMES", "CHAT_TEMPLATE",
    "smart_resize", "target_size", "sample_frame_indices", "frame_timestamps", "preprocess_frames",
    "merged_grid", "timestamp_text", "Step", "VideoPrompt", "VideoPromptBuilder", "build_video_prompt",
    "video_prompt_text",
]

# The released checkpoints' video_preprocessor_config.json (Qwen3-VL 2B/4B/8B).
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
PATCH_SIZE = 16
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
MIN_PIXELS = 4096           # size.shortest_edge: least t * h * w of a whole video
MAX_PIXELS = 25165824       # size.longest_edge: most t * h * w of a whole video
FPS = 2.0
MIN_FRAMES = 4
MAX_FRAMES = 768

VISION_START, VISION_END, VIDEO_PAD = "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"

# The user/system/generation part of the released Qwen3-VL Instruct chat template (no tools).
CHAT_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].content is string %}{{- messages[0].content }}"
    "{%- else %}{%- for content in messages[0].content %}{%- if 'text' in content %}{{- content.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif content.type == 'video' or 'video' in content %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in content %}{{- content.text }}"
    "{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


# ----------------------------------------------------------------------------------- frames
def smart_resize(num_frames: int, height: int, width: int, temporal_factor: int = TEMPORAL_PATCH_SIZE,
                 factor: int = PATCH_SIZE * MERGE_SIZE, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Target (height, width) of a video's frames: transformers' Qwen3-VL video ``smart_resize``
    (multiples of ``factor``, aspect kept, ``t_bar * h * w`` within the pixel bounds)."""
    if num_frames < temporal_factor:
        raise ValueError(f"t:{num_frames} must be larger than temporal_factor:{temporal_factor}")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height = int(height * scale)
        width = int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((num_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def target_size(num_frames: int, height: int, width: int, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS,
                cap_pixels_per_frame: bool = False, max_video_tokens: int = 768,
                factor: int = PATCH_SIZE * MERGE_SIZE) -> tuple[int, int]:
    """The frame size the video processor's ``resize`` picks for ``num_frames`` frames of
    ``height x width`` (with its optional per-frame cap, ``cap_pixels_per_frame``). For a stream of
    unknown length, pass the number of frames you plan to keep (or pick the size yourself)."""
    if cap_pixels_per_frame:
        per_frame = max(min(max_video_tokens * factor * factor, max_pixels // num_frames), int(min_pixels * 1.05))
        max_pixels = per_frame * num_frames
    n = max(num_frames, TEMPORAL_PATCH_SIZE)  # a single frame is paired with itself
    return smart_resize(n, height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


def sample_frame_indices(total_frames: int, video_fps: float | None, fps: float | None = FPS,
                         num_frames: int | None = None, min_frames: int = MIN_FRAMES,
                         max_frames: int = MAX_FRAMES) -> np.ndarray:
    """Indices of the frames the video processor samples (its ``sample_frames``): ``fps`` frames
    per second of video (``num_frames`` instead, if given), at least ``min_frames``, at most
    ``max_frames`` and ``total_frames``, evenly spaced (``linspace(...).round()``)."""
    if fps is not None and num_frames is not None:
        raise ValueError("`num_frames` and `fps` are mutually exclusive arguments, please use only one!")
    if num_frames is None and fps is not None:
        video_fps = 24 if video_fps is None else video_fps
        num_frames = int(total_frames / video_fps * fps)
        num_frames = min(max(num_frames, min_frames), max_frames, total_frames)
    if num_frames is None:
        num_frames = min(max(total_frames, min_frames), max_frames)
    return np.linspace(0, total_frames - 1, num_frames).round().astype(int)


def frame_timestamps(indices: Iterable[int], video_fps: float | None,
                     temporal_patch_size: int = TEMPORAL_PATCH_SIZE) -> list[float]:
    """Seconds of each temporal patch, as the processor's ``_calculate_timestamps``: the frame
    indices (padded with the last one to a multiple of the temporal patch) over the video's fps,
    averaged over the first and last frame of each patch. ``video_fps`` None means 24 (the
    processor's default when the fps is unknown)."""
    fps = 24 if video_fps is None else video_fps
    idx = [int(i) for i in indices]
    if not idx:
        raise ValueError("no frame indices")
    if len(idx) % temporal_patch_size:
        idx += [idx[-1]] * (temporal_patch_size - len(idx) % temporal_patch_size)
    ts = [i / fps for i in idx]
    return [(ts[i] + ts[i + temporal_patch_size - 1]) / 2 for i in range(0, len(ts), temporal_patch_size)]


def _as_rgb_uint8(frame, i: int) -> np.ndarray:
    from PIL import Image

    if isinstance(frame, Image.Image):
        frame = np.asarray(frame.convert("RGB"))
    arr = np.asarray(frame)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"frame {i}: expected an RGB image of shape (height, width, 3), got {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"frame {i}: expected uint8 pixels (0..255), got {arr.dtype}")
    return arr


def preprocess_frames(frames, *, num_frames: int | None = None, size: tuple[int, int] | None = None,
                      min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS,
                      image_mean: Sequence[float] = IMAGE_MEAN, image_std: Sequence[float] = IMAGE_STD,
                      cap_pixels_per_frame: bool = False, allow_mixed_sizes: bool = False,
                      pad_to_pairs: bool = True) -> np.ndarray:
    """RGB frames (uint8 ``(n, H, W, 3)`` or a list of such arrays / PIL images) -> pixels float32
    ``(n', 3, h, w)`` for ``Model.encode_frames``, ``n'`` = ``n`` rounded up to even (the last
    frame repeated, as the processor pads temporal patches) unless ``pad_to_pairs=False``.

    ``size``: the target ``(h, w)`` (multiples of 32); default :func:`target_size` of the first
    frame for ``num_frames`` frames (default ``n``: the whole video is given). Streaming callers
    preprocess a pair at a time with a fixed ``size`` (or the total ``num_frames``).
    ``image_mean`` / ``image_std``: pass ``model.info()["vision.image_mean"]`` etc. to use the
    mmproj's values. Frames of different sizes raise ``ValueError`` naming the first odd frame,
    unless ``allow_mixed_sizes`` (then each frame is resized to the common target size).
    """
    from PIL import Image

    if isinstance(frames, np.ndarray) and frames.ndim == 4:
        frames = list(frames)
    frames = [_as_rgb_uint8(f, i) for i, f in enumerate(frames)]
    if not frames:
        raise ValueError("no frames")
    h0, w0 = frames[0].shape[:2]
    for i, f in enumerate(frames):
        if f.shape[:2] != (h0, w0) and not allow_mixed_sizes:
            raise ValueError(f"frame {i} is {f.shape[0]}x{f.shape[1]} but frame 0 is {h0}x{w0}: the frames of one "
                             "video must have one size (pass allow_mixed_sizes=True to resize every frame to the "
                             "size computed from frame 0, or size=(h, w))")
    if size is None:
        size = target_size(num_frames or len(frames), h0, w0, min_pixels=min_pixels, max_pixels=max_pixels,
                           cap_pixels_per_frame=cap_pixels_per_frame)
    th, tw = int(size[0]), int(size[1])
    unit = PATCH_SIZE * MERGE_SIZE
    if th <= 0 or tw <= 0 or th % unit or tw % unit:
        raise ValueError(f"size {th}x{tw}: both sides must be positive multiples of {unit}")
    mean = np.asarray(image_mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(image_std, dtype=np.float32).reshape(3, 1, 1)
    n_out = len(frames) + (len(frames) % TEMPORAL_PATCH_SIZE if pad_to_pairs else 0)
    out = np.empty((n_out, 3, th, tw), dtype=np.float32)
    for i, f in enumerate(frames):
        if f.shape[:2] != (th, tw):
            f = np.asarray(Image.fromarray(f).resize((tw, th), resample=Image.BICUBIC))
        x = (f.astype(np.float64) * (1 / 255)).astype(np.float32).transpose(2, 0, 1)
        out[i] = (x - mean) / std
    if n_out > len(frames):
        out[len(frames):] = out[len(frames) - 1]
    return out


# ----------------------------------------------------------------------------------- prompt
def merged_grid(height: int, width: int, patch_size: int = PATCH_SIZE, merge_size: int = MERGE_SIZE) -> tuple[int, int]:
    """(rows, cols) of visual rows of one temporal patch of ``height x width`` frames."""
    unit = patch_size * merge_size
    if height % unit or width % unit or height <= 0 or width <= 0:
        raise ValueError(f"frame size {height}x{width} is not a positive multiple of {unit}")
    return height // unit, width // unit


def timestamp_text(seconds: float) -> str:
    """``<{t:.1f} seconds>``: the text before each temporal patch."""
    return f"<{seconds:.1f} seconds>"


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` with special tokens parsed and nothing added, from a
    ``tokenizers.Tokenizer`` (statekv.tokenizer.tokenizer_from_gguf) or a transformers tokenizer."""
    if not text:
        return []
    enc = tokenizer.encode(text, add_special_tokens=False)
    return [int(i) for i in (enc.ids if hasattr(enc, "ids") else enc)]


def _token_id(tokenizer: Any, token: str) -> int:
    ids = _encode(tokenizer, token)
    if len(ids) != 1:
        raise ValueError(f"the tokenizer has no single token {token!r} (not a Qwen3-VL vocabulary)")
    return ids[0]


def _text_positions(start: int, n: int) -> np.ndarray:
    return np.tile(np.arange(start, start + n, dtype=np.int32), (3, 1))


@dataclass
class Step:
    """One frame step: ``ids`` (timestamp, ``<|vision_start|>``, the visual rows, ``<|vision_end|>``),
    ``rows`` the indices in ``ids`` of the ``<|video_pad|>`` tokens (row r of the temporal patch's
    ``encode_frames`` output goes to ``rows[r]``), ``positions`` (3, len(ids))."""

    ids: np.ndarray
    rows: np.ndarray
    positions: np.ndarray
    seconds: float


@dataclass
class VideoPrompt:
    """A video prompt cut for StateKV: ``prefix`` + steps + ``question`` is the whole prompt."""

    prefix_ids: np.ndarray
    prefix_positions: np.ndarray
    steps: list[Step]
    question_ids: np.ndarray
    question_positions: np.ndarray
    text: str = field(repr=False, default="")

    @property
    def ids(self) -> np.ndarray:
        return np.concatenate([self.prefix_ids] + [s.ids for s in self.steps] + [self.question_ids]).astype(np.int32)

    @property
    def positions(self) -> np.ndarray:
        return np.concatenate([self.prefix_positions] + [s.positions for s in self.steps] + [self.question_positions],
                              axis=1).astype(np.int32)

    def sequence_rows(self) -> np.ndarray:
        """Indices in :attr:`ids` of all visual rows, temporal patch by temporal patch."""
        rows, offset = [], len(self.prefix_ids)
        for s in self.steps:
            rows.append(s.rows + offset)
            offset += len(s.ids)
        return np.concatenate(rows).astype(np.int32) if rows else np.zeros(0, np.int32)


class VideoPromptBuilder:
    """Incremental Qwen3-VL video prompt: :meth:`prefix`, then :meth:`step` per temporal patch as
    frames arrive, and :meth:`question` at any moment (it does not advance the builder: a later
    step continues the video). Token ids and positions are those of the whole prompt."""

    def __init__(self, tokenizer: Any, grid: tuple[int, int]):
        self.tokenizer = tokenizer
        self.grid = (int(grid[0]), int(grid[1]))
        self.vision_start = _token_id(tokenizer, VISION_START)
        self.vision_end = _token_id(tokenizer, VISION_END)
        self.video_pad = _token_id(tokenizer, VIDEO_PAD)
        self.next_position = 0
        self._started = False

    def prefix(self, system: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Ids and positions of everything before the first timestamp (system turn, user header,
        the template's ``<|vision_start|>``)."""
        if self._started:
            raise ValueError("prefix() must come first")
        self._started = True
        text = ""
        if system is not None:
            text += f"<|im_start|>system\n{system}<|im_end|>\n"
        text += "<|im_start|>user\n" + VISION_START
        ids = np.asarray(_encode(self.tokenizer, text), dtype=np.int32)
        pos = _text_positions(self.next_position, len(ids))
        self.next_position += len(ids)
        return ids, pos

    def step(self, seconds: float) -> Step:
        """The next temporal patch, shown at ``seconds`` (see :func:`frame_timestamps`)."""
        if not self._started:
            raise ValueError("call prefix() before the first step")
        gh, gw = self.grid
        ts = _encode(self.tokenizer, timestamp_text(seconds))
        n_text = len(ts) + 1
        ids = np.asarray(ts + [self.vision_start] + [self.video_pad] * (gh * gw) + [self.vision_end], dtype=np.int32)
        p = self.next_position
        pos = np.empty((3, len(ids)), dtype=np.int32)
        pos[:, :n_text] = _text_positions(p, n_text)
        p += n_text
        hh, ww = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        pos[0, n_text:n_text + gh * gw] = p
        pos[1, n_text:n_text + gh * gw] = p + hh.ravel()
        pos[2, n_text:n_text + gh * gw] = p + ww.ravel()
        p += max(gh, gw)
        pos[:, -1] = p
        self.next_position = p + 1
        rows = np.arange(n_text, n_text + gh * gw, dtype=np.int32)
        return Step(ids=ids, rows=rows, positions=pos, seconds=float(seconds))

    def question(self, question: str, add_generation_prompt: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Ids and positions of the rest of the prompt after the steps so far: the template's
        ``<|vision_end|>``, the question, the end of the user turn and the assistant header."""
        text = VISION_END + question + "<|im_end|>\n"
        if add_generation_prompt:
            text += "<|im_start|>assistant\n"
        ids = np.asarray(_encode(self.tokenizer, text), dtype=np.int32)
        return ids, _text_positions(self.next_position, len(ids))


def video_prompt_text(timestamps: Sequence[float], grid: tuple[int, int], question: str,
                      system: str | None = None, add_generation_prompt: bool = True) -> str:
    """The whole prompt text (chat template + the processor's video expansion)."""
    n = int(grid[0]) * int(grid[1])
    video = "".join(timestamp_text(t) + VISION_START + VIDEO_PAD * n + VISION_END for t in timestamps)
    text = f"<|im_start|>system\n{system}<|im_end|>\n" if system is not None else ""
    text += f"<|im_start|>user\n{VISION_START}{video}{VISION_END}{question}<|im_end|>\n"
    if add_generation_prompt:
        text += "<|im_start|>assistant\n"
    return text


def build_video_prompt(tokenizer: Any, timestamps: Sequence[float], grid: tuple[int, int], question: str,
                       system: str | None = None, add_generation_prompt: bool = True) -> VideoPrompt:
    """The prompt of one user turn ``[video, question]`` cut into prefix, one step per temporal
    patch (``timestamps`` from :func:`frame_timestamps`, ``grid`` from :func:`merged_grid`) and
    question, with the positions of ``get_rope_index``."""
    b = VideoPromptBuilder(tokenizer, grid)
    pids, ppos = b.prefix(system)
    steps = [b.step(t) for t in timestamps]
    qids, qpos = b.question(question, add_generation_prompt)
    return VideoPrompt(pids, ppos, steps, qids, qpos,
                       text=video_prompt_text(timestamps, grid, question, system, add_generation_prompt))
