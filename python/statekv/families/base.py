"""What every video family declares, and the helpers their layouts share.

A family (one folder under ``statekv/families/``) declares in one place what the rest of statekv
asks of it: its projector types and the decoders they pair with (data), its wrap tokens and
prompt (``prompt.py``, rendered through its chat template), its preprocessing
(``preprocess.py``), its step layout (``layout.py``: the :class:`Layout` a chat runs, and the
:class:`StepLayout` geometry the benchmarks use), its converter (``convert.py``) and its
random-weight mmproj (``random_model.py``). :class:`Family` is the registry entry; it imports the
heavier modules only when asked.

Nothing here imports the compiled extension.
"""
from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Sequence

import numpy as np

__all__ = ["Family", "Layout", "PlannedStep", "StepLayout", "encode", "token_id", "floats", "split_video_prompt",
           "square_frames", "OneFramePerStep", "square_step_layout", "session_step_positions",
           "session_text_positions"]


# ------------------------------------------------------------------------------ tokens and text
def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` with special tokens parsed and nothing added, from a
    ``tokenizers.Tokenizer`` (statekv.text.tokenizer_from_gguf) or a transformers tokenizer."""
    if not text:
        return []
    enc = tokenizer.encode(text, add_special_tokens=False)
    return [int(i) for i in (enc.ids if hasattr(enc, "ids") else enc)]


def token_id(tokenizer: Any, token: str, vocabulary: str) -> int:
    """The id of ``token``, which must be a single token of the vocabulary (``vocabulary`` names
    the family's vocabulary in the error)."""
    ids = encode(tokenizer, token)
    if hasattr(tokenizer, "token_to_id"):
        tid = tokenizer.token_to_id(token)
    elif hasattr(tokenizer, "convert_tokens_to_ids"):
        tid = tokenizer.convert_tokens_to_ids(token)
    else:
        tid = ids[0] if len(ids) == 1 else None
    if tid is None or ids != [tid]:
        raise ValueError(f"the tokenizer has no single token {token!r} (not {vocabulary} vocabulary)")
    return int(tid)


def floats(text: Any) -> tuple[float, ...]:
    """``"0.5,0.5,0.5"`` (a ``Model.info()`` value) -> ``(0.5, 0.5, 0.5)``."""
    return tuple(float(x) for x in str(text).split(",") if x.strip())


_QUESTION = "\x00statekv-question\x00"


def split_video_prompt(template: Any, placeholder: str, question: str, system: Optional[str] = None,
                       add_generation_prompt: bool = True) -> tuple[str, str]:
    """The prompt of one user turn ``[video, question]`` rendered by ``template`` (a
    :class:`statekv.text.ChatTemplate`) and cut at the video's ``placeholder``: (the text before
    it, the text after it with ``question`` in place). The question is put in after rendering,
    so its text is never read as template or placeholder."""
    messages: list[dict] = [] if system is None else [{"role": "system", "content": system}]
    messages.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": _QUESTION}]})
    text = template.render(messages, add_generation_prompt=add_generation_prompt)
    if text.count(placeholder) != 1 or text.count(_QUESTION) != 1 or text.index(_QUESTION) < text.index(placeholder):
        raise ValueError(f"the chat template does not render one {placeholder!r} before the question "
                         "(the system prompt must not contain it)")
    before, after = text.split(placeholder)
    return before, after.replace(_QUESTION, question)


# ------------------------------------------------------------------------------ frames
def square_frames(frames, size: int, mean: Sequence[float], std: Sequence[float], resample: str) -> np.ndarray:
    """RGB frames uint8 ``(n, H, W, 3)`` -> pixels float32 ``(n, 3, size, size)``, as transformers'
    PIL image processors make one square tile: a PIL resize (``resample``: ``"bicubic"`` or
    ``"bilinear"``) of the whole frame, ``x * float32(1/255)``, ``(x - mean) / std`` in float32."""
    from PIL import Image

    arr = np.asarray(frames)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames must have shape (n, height, width, 3) (RGB), got {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB, got dtype {arr.dtype}")
    if 0 in arr.shape:
        raise ValueError(f"frames must be non-empty, got shape {arr.shape}")
    size = int(size)
    if size <= 0:
        raise ValueError(f"image_size must be positive, got {size}")
    m = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    if m.size != 3 or s.size != 3 or np.any(s <= 0):
        raise ValueError("mean and std must have 3 values, std positive")
    filters = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
    out = np.empty((arr.shape[0], 3, size, size), dtype=np.float32)
    for i, frame in enumerate(arr):
        img = Image.fromarray(np.ascontiguousarray(frame), mode="RGB")
        resized = np.asarray(img.resize((size, size), resample=filters[resample]), dtype=np.uint8)
        out[i] = (resized.transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 255) - m) / s
    return out


# ------------------------------------------------------------------------------ steps
@dataclass
class PlannedStep:
    """One frame step ready for the session: ``ids`` (the step's tokens), ``rows`` (where, in
    ``ids``, the encoder's rows go), ``positions`` (None, or ``(3, len(ids))`` for M-RoPE),
    ``pixels`` (the step's preprocessed frames, ``(frames_per_step, 3, h, w)``: one encoder
    patch), ``frames`` (the Frame objects it shows), ``after`` (the layout's state once the
    step is in the session, applied by :meth:`Layout.commit`) and ``blocks`` (None, or the step's
    bidirectional blocks for ``Session.add_step``: Gemma 3's image tokens)."""

    ids: Any
    rows: np.ndarray
    positions: Optional[np.ndarray]
    pixels: np.ndarray
    frames: list
    after: dict
    blocks: Optional[np.ndarray] = None


class Layout(Protocol):
    """How a chat turns frames into session steps for one family (one instance per chat).

    ``waiting`` holds the ``(Frame, pixels)`` items that do not make a step yet (a Qwen3-VL frame
    waiting for its pair). Nothing here runs the model: :meth:`plan` gives steps with pixels, and
    the chat turns them into committed steps in one place (``VideoChat._add_steps``)."""

    family: str
    frames_per_step: int
    waiting: list

    def prefix(self, system: Optional[str]) -> tuple[list[int], Optional[np.ndarray]]:
        """Ids and positions of everything before the first step."""

    def fix_size(self, n_frames: int, height: int, width: int) -> None:
        """Called before the first frames: a video of ``n_frames`` frames of that size."""

    def video_tokens(self, timestamps: Sequence[float]) -> int:
        """The tokens the steps of frames at ``timestamps`` (seconds) will take."""

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """One ``(H, W, 3)`` uint8 frame -> its pixels ``(3, h, w)`` float32."""

    def plan(self, items: list) -> tuple[list[PlannedStep], list]:
        """Steps of ``(Frame, pixels)`` items, and the items left waiting; nothing advances."""

    def commit(self, step: PlannedStep) -> None:
        """The step is in the session: advance (to ``step.after``)."""

    def progress(self) -> dict:
        """Where the layout stands, in the form of a step's ``after``: ``set_progress`` of it
        undoes later commits (a chat plans batches ahead and puts the layout back)."""

    def set_progress(self, after: dict) -> None:
        """Stand at ``after`` (what :meth:`commit` does with a step's)."""

    def question(self, text: str) -> tuple[Optional[PlannedStep], Any, Optional[np.ndarray]]:
        """(a step to add on a branch first, or None; the question's ids; positions)."""

    def state(self) -> dict:
        """What :meth:`restore` needs (JSON types), saved with a chat."""

    def restore(self, state: dict) -> None:
        """Continue from :meth:`state`'s record; raises ValueError/TypeError/KeyError if invalid."""


@dataclass(frozen=True)
class StepLayout:
    """The geometry of one frame step (what the benchmarks run): ``frames_per_step`` frames of
    ``frame_size`` (h, w) pixels give ``visual_rows`` rows, between ``text_before`` and
    ``text_after`` text tokens. ``grid`` is the (rows, cols) of merged patches for families with
    3-axis positions (None otherwise)."""

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


class OneFramePerStep(abc.ABC):
    """The chat layout of the families whose steps are one square tile per frame with text around
    it and one position axis (InternVL3, Gemma 3, Eagle 2.5). A family's ``ChatLayout`` subclasses
    it with ``family``, its preprocessing ``preprocess_frames(frames, size, mean, std)`` and
    ``_step(number, seconds) -> (ids, rows, blocks or None)`` / ``_step_length(number, seconds)``
    (frames numbered from 1 across the chat); ``self.builder`` is the family's prompt builder."""

    family = ""
    frames_per_step = 1
    default_mean: Sequence[float] = (0.5, 0.5, 0.5)
    default_std: Sequence[float] = (0.5, 0.5, 0.5)

    def __init__(self, builder: Any, info: dict):
        self.image_size = int(info["vision.image_size"])
        self.mean = floats(info["vision.image_mean"]) or self.default_mean
        self.std = floats(info["vision.image_std"]) or self.default_std
        self.builder = builder
        self.n_frames = 0  # frames in the session's steps
        self.waiting: list = []  # never used: every frame is a complete step

    @staticmethod
    @abc.abstractmethod
    def preprocess_frames(frames, size, mean, std) -> np.ndarray:
        """uint8 frames -> pixels (the family's preprocess_frames)."""

    @abc.abstractmethod
    def _step(self, number: int, seconds: float):
        """(ids, rows, blocks or None) of frame ``number`` at ``seconds``."""

    @abc.abstractmethod
    def _step_length(self, number: int, seconds: float) -> int:
        """Tokens of that step."""

    def prefix(self, system: Optional[str]):
        return self.builder.prefix(system), None

    def fix_size(self, n_frames: int, height: int, width: int) -> None:
        pass  # every frame is resized to one image_size tile

    def video_tokens(self, timestamps: Sequence[float]) -> int:
        return sum(self._step_length(self.n_frames + k + 1, t) for k, t in enumerate(timestamps))

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        return self.preprocess_frames(rgb[None], self.image_size, self.mean, self.std)[0]

    def plan(self, items: list) -> tuple[list[PlannedStep], list]:
        out = []
        for k, (frame, px) in enumerate(items):
            number = self.n_frames + k + 1
            ids, rows, blocks = self._step(number, frame.timestamp)
            out.append(PlannedStep(ids, rows, None, px[None], [frame], {"n_frames": number}, blocks))
        return out, []

    def commit(self, step: PlannedStep) -> None:
        self.set_progress(step.after)

    def progress(self) -> dict:
        return {"n_frames": self.n_frames}

    def set_progress(self, after: dict) -> None:
        self.n_frames = after["n_frames"]

    def question(self, text: str):
        return None, self.builder.question(text), None

    def state(self) -> dict:
        return {"n_frames": self.n_frames}

    def restore(self, state: dict) -> None:
        n = state["n_frames"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n_frames must be a non-negative integer, got {n!r}")
        self.n_frames = n


def square_step_layout(family: str, info: dict, text_tokens: tuple[int, int]) -> StepLayout:
    """The benchmark step of a one-tile-per-frame family: an ``image_size`` square, the rows
    counted from the encoder's output (``visual_rows`` -1), ``text_tokens`` (before, after)."""
    size = int(info["vision.image_size"])
    return StepLayout(family, 1, (size, size), visual_rows=-1, text_before=text_tokens[0], text_after=text_tokens[1])


def session_step_positions(layout: StepLayout, start: int) -> tuple[Optional[np.ndarray], int]:
    """One position axis: the session's own positions; the next step starts after this one."""
    return None, start + layout.tokens_per_step


def session_text_positions(start: int, n: int) -> Optional[np.ndarray]:
    """One position axis: the session's own positions."""
    return None


# ------------------------------------------------------------------------------ the registry entry
@dataclass(frozen=True)
class Family:
    """A video family's registry entry: its data, and its modules' entry points (imported on
    first use). ``package`` is the family's folder as a module name."""

    name: str
    projectors: tuple[str, ...]  # clip.projector_type values of its mmproj files
    decoders: tuple[str, ...]    # llama.cpp text architectures its projector pairs with
    hf_architecture: str         # the transformers class `statekv convert` turns into this pair
    towers: tuple[str, ...]      # vision tower shapes of its random-weight mmproj maker
    package: str

    def module(self, name: str):
        return importlib.import_module(f"{self.package}.{name}")

    # the chat, the benchmarks and the tests
    def layout(self, tokenizer: Any, info: dict) -> Layout:
        """A new chat layout for a model of this family (``info``: ``Model.info()``)."""
        return self.module("layout").ChatLayout(tokenizer, info)

    def step_layout(self, info: dict, n_steps: int, source_size: tuple[int, int]) -> StepLayout:
        """The step geometry of a video of ``n_steps`` steps of ``source_size`` (width, height)
        frames; ``visual_rows`` -1 when only the encoder's output knows it."""
        return self.module("layout").step_layout(info, n_steps, source_size)

    def step_positions(self, layout: StepLayout, start: int) -> tuple[Optional[np.ndarray], int]:
        """Positions of a step starting at position ``start`` (None: the session's own) and the
        next step's start."""
        return self.module("layout").step_positions(layout, start)

    def text_positions(self, start: int, n: int) -> Optional[np.ndarray]:
        """Positions of ``n`` text tokens from ``start`` (None: the session's own)."""
        return self.module("layout").text_positions(start, n)

    def preprocess(self, frames: np.ndarray, layout: StepLayout, mean: Sequence[float],
                   std: Sequence[float]) -> np.ndarray:
        """uint8 frames ``(n, H, W, 3)`` -> pixels ``(n, 3, h, w)`` at ``layout.frame_size``."""
        return self.module("layout").preprocess(frames, layout, mean, std)

    @property
    def chat_template(self) -> str:
        """The chat template its prompts are rendered with (the transformers checkpoints')."""
        return self.module("prompt").CHAT_TEMPLATE

    # the converter
    def text_family(self):
        """The converter's :class:`statekv.convert.common.TextFamily` of :attr:`hf_architecture`."""
        return self.module("convert").TEXT_FAMILY

    def write_mmproj(self, hf_dir, config: dict, tensors, out_path, outtype: str):
        """Write the mmproj GGUF of a checkpoint of :attr:`hf_architecture`."""
        return self.module("convert").write_mmproj(hf_dir, config, tensors, out_path, outtype)

    def make_random_mmproj(self, out_path, tower, n_embd_out: int, qtype: str):
        """A random-weight mmproj of the tower shape ``tower`` (one of :attr:`towers`, or a dict of
        the family's vision-config fields) whose projector outputs ``n_embd_out`` features (the
        text model's width)."""
        return self.module("random_model").make_random_mmproj(out_path, tower, n_embd_out, qtype)
