"""The product API: a video VLM you load once, chats over growing videos, questions in text.

Example::

    import statekv

    vlm = statekv.load("InternVL3-1B-Q8_0.gguf", "mmproj-InternVL3-1B-Q8_0.gguf")
    chat = vlm.video_chat(mode="statekv", budget=4096, fps=1.0)
    chat.add_video("match.mp4")                      # frame steps, decoded ahead in a thread
    print(chat.ask("Who scores first?"))              # the video state is not disturbed
    for piece in chat.stream("And then?"):            # text pieces as they are decoded
        print(piece, end="", flush=True)
    chat.add_frames(camera_frames)                    # a stream keeps growing
    chat.save("match.statekv")                        # later: statekv.load_chat(vlm, "match.statekv")

    print(vlm.ask("clip.mp4", "What happens?"))       # one shot

Each question is asked over the video so far (and the system prompt), on its own: it sees
neither earlier questions nor their answers, and the frames added after it continue the video
exactly as if it had not been asked. How frames become steps (prompt, token ids, positions,
preprocessed pixels) is the family's layout, in Python (:mod:`statekv.families`); the vision
encoder and the decoder run in C++, and :meth:`VideoChat._add_steps` is the one place where
planned steps go through them into the session.
"""
from __future__ import annotations

import binascii
import json
import math
import os
import statistics
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np

from . import families
from .model import Model
from .text.tokenizer import tokenizer_from_gguf
from .video import Frame, VideoReader, frames_from_arrays, prefetch

__all__ = ["VLM", "VideoChat", "load", "load_chat"]

ProgressCallback = Callable[[int, Optional[int]], None]

# Question and answer tokens assumed when the first video sets the session's expected length.
_ANSWER_ALLOWANCE = 1024
_CHAT_FORMAT = "statekv.chat.v1"


class VLM:
    """A video VLM: llama.cpp's text GGUF and mmproj GGUF, loaded once (see :func:`load`)."""

    def __init__(self, text_gguf: str | os.PathLike, mmproj_gguf: str | os.PathLike,
                 device: Optional[str] = None, threads: Optional[int] = None,
                 overlap_encoder: Optional[bool] = None):
        if mmproj_gguf is None:
            raise ValueError(f"{os.fspath(text_gguf)}: a video model needs its mmproj GGUF (the vision encoder and "
                             "projector, llama.cpp's `mmproj-*.gguf`)")
        with ThreadPoolExecutor(max_workers=1) as pool:
            # The vocabulary is read and the tokenizer built (Python, one core) while the native
            # loader reads the weights with the GIL released: about 0.6 s less before the first
            # frame for a Qwen2 vocabulary. The loader's errors come first: they check the file.
            tokenizer = pool.submit(tokenizer_from_gguf, text_gguf)
            self.model = Model(text_gguf, mmproj=mmproj_gguf, device=device, threads=threads,
                               overlap_encoder=overlap_encoder)
            self.tokenizer = tokenizer.result()
        self.info = self.model.info()
        projector = self.info.get("vision.projector")
        family = families.for_projector(projector)
        if family is None:
            raise ValueError(f"{self.model.mmproj}: projector '{projector}' has no video layout in statekv "
                             f"(supported: {', '.join(sorted(families.PROJECTORS))})")
        self.family = family.name  # the family's registry name, e.g. for saved chats
        self._family = family
        self.end_ids = {int(x) for x in str(self.info.get("eos_ids", "")).split(",") if x.strip()}
        family.layout(self.tokenizer, self.info)  # checks the vocabulary's special tokens now

    def video_chat(self, mode: str = "statekv", budget: int = 4096, window: int = 16, fps: Optional[float] = 1.0,
                   max_frames: int = 512, kv_type: str = "f16", system: Optional[str] = None, *,
                   expected_length: Optional[int] = None, rope_scale: Optional[float] = None) -> "VideoChat":
        """A new chat over a video that can keep growing (see :class:`VideoChat`).

        ``mode``/``budget``/``window``/``kv_type``: the cache policy (:meth:`Model.session`).
        ``fps``/``max_frames``: frame sampling of each :meth:`VideoChat.add_video` (at most ``fps``
        frames per second, at most ``max_frames`` frames, spread uniformly; ``fps=None``: exactly
        ``max_frames``). ``system``: a system prompt. ``expected_length`` (tokens) or
        ``rope_scale`` set the rotary scaling for streams longer than the trained context;
        otherwise the first video sets it from its length."""
        return VideoChat(self, dict(mode=mode, budget=int(budget), window=int(window), kv_type=kv_type,
                                    expected_length=expected_length, rope_scale=rope_scale),
                         fps=fps, max_frames=int(max_frames), system=system)

    def ask(self, video: Any, question: str, *, start: Optional[float] = None, end: Optional[float] = None,
            progress: Optional[ProgressCallback] = None, **options) -> str:
        """One shot: a chat over ``video`` (a path, a binary file object, or an iterable of
        ``(H, W, 3)`` uint8 frames) and one answer. ``options``: those of :meth:`video_chat` and
        of :meth:`VideoChat.ask`."""
        chat_keys = {"mode", "budget", "window", "fps", "max_frames", "kv_type", "system", "expected_length",
                     "rope_scale"}
        chat = self.video_chat(**{k: v for k, v in options.items() if k in chat_keys})
        if isinstance(video, (str, os.PathLike)) or hasattr(video, "read"):
            chat.add_video(video, start=start, end=end, progress=progress)
        else:
            chat.add_frames(video, progress=progress)
        return chat.ask(question, **{k: v for k, v in options.items() if k not in chat_keys})

    def __repr__(self) -> str:
        return f"statekv.VLM({self.model.path!r}, {self.model.mmproj!r}, family={self.family})"


def load(text_gguf: str | os.PathLike, mmproj_gguf: str | os.PathLike, device: Optional[str] = None,
         threads: Optional[int] = None, overlap_encoder: Optional[bool] = None) -> VLM:
    """Load a video VLM from llama.cpp's two GGUF files (text model, ``mmproj``). A file statekv
    cannot run, or a pair that does not belong together, raises :class:`statekv.ModelError`.
    ``overlap_encoder`` (:class:`statekv.Model`; default: on GPUs): the vision encoder gets its own
    backend instance, and a video's next frames are encoded while the current ones' steps run."""
    return VLM(text_gguf, mmproj_gguf, device=device, threads=threads, overlap_encoder=overlap_encoder)


class VideoChat:
    """Questions over a video that grows: :meth:`add_video` / :meth:`add_frames` append frame
    steps (each costs the same however long the video is, in ``statekv`` mode), :meth:`ask` /
    :meth:`stream` answer over everything so far without changing it."""

    def __init__(self, vlm: VLM, session_options: dict, fps: Optional[float], max_frames: int,
                 system: Optional[str]):
        if fps is not None and not (float(fps) > 0 and math.isfinite(float(fps))):
            raise ValueError(f"fps must be positive (or None), got {fps!r}")
        if max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, got {max_frames}")
        if session_options["mode"] == "statekv" and session_options["budget"] <= 0:
            raise ValueError(f"budget must be positive, got {session_options['budget']}")
        if session_options["mode"] == "window" and session_options["window"] <= 0:
            raise ValueError(f"window must be positive, got {session_options['window']}")
        self.vlm = vlm
        self.options = dict(session_options)
        self.fps = None if fps is None else float(fps)
        self.max_frames = int(max_frames)
        self.system = system
        self.layout = vlm._family.layout(vlm.tokenizer, vlm.info)
        self.session = None
        self._frames_in_steps = 0
        self.frame_seconds: list[float] = []  # wall time per frame (decode wait + encode + step)
        self.video_seconds = 0.0  # time of the last frame added, on the chat's timeline
        # Where each step begins in the session's token order (what Session.carried() indexes)
        # and the chat index of its first frame: maps carried tokens back to frames.
        self.step_token_starts: list[int] = []
        self.step_first_frames: list[int] = []
        self.last_answer_ids: list[int] = []  # token ids of the latest answer (ask, stream)
        self._next_index = 0
        self._t_last = time.perf_counter()  # when the chat's last steps were added (per-frame wall time)

    # ---- state -------------------------------------------------------------------------------

    def _ensure_session(self, timestamps: Optional[Iterable[float]]) -> None:
        """The session, made before the first frames (``timestamps``: those of a video's frames,
        which set the expected length; None for a stream)."""
        if self.session is not None:
            return
        o = dict(self.options)
        ids, positions = self.layout.prefix(self.system)
        timestamps = list(timestamps) if timestamps is not None else []
        if o["expected_length"] is None and o["rope_scale"] is None and timestamps:
            o["expected_length"] = len(ids) + self.layout.video_tokens(timestamps) + _ANSWER_ALLOWANCE
        s = self.vlm.model.session(o["mode"], o["budget"], o["window"], o["kv_type"],
                                   expected_length=o["expected_length"], rope_scale=o["rope_scale"])
        s.prefill(ids, positions=positions)
        self.session = s

    @property
    def n_frames(self) -> int:
        """Frames taken in: those in the session's steps plus any waiting for its pair."""
        return self._frames_in_steps + len(self.layout.waiting)

    def _run(self, frames: Iterator[tuple[Frame, np.ndarray]], total: Optional[int],
             progress: Optional[ProgressCallback], batch: int, others: tuple["VideoChat", ...] = (),
             pipeline: bool = False) -> int:
        """Add (Frame, pixels) items as steps, ``batch`` frames encoded at a time, to this chat and
        to ``others`` (each batch encoded once for all of them, see :class:`_SharedEncoder`). Each
        step counts once ``add_step`` succeeded, so an error (or Ctrl-C) leaves every chat
        consistent: the steps before it are in, the frames after it are not.

        ``pipeline`` (a file's frames, which are there to read ahead) and an encoder with its own
        backend instance (``Model.encoder_overlaps``): a batch is planned ahead
        (:meth:`_plan_ahead`) and encoded in a worker thread while the previous batch's steps run,
        so a batch's steps wait for the next batch's frames (live frames are not held back this
        way). The steps still take their rows through the same encoder, which hands over the early
        result only for exactly the pixels it was given: the session receives what the sequential
        order gives it."""
        chats = (self, *others)
        before = self.n_frames
        for chat in chats:
            chat._t_last = time.perf_counter()
        pool = (ThreadPoolExecutor(1, thread_name_prefix="statekv-encode")
                if pipeline and self.vlm.model.encoder_overlaps else None)
        ahead: list = []  # the batches handed over whose steps have not run yet, in order
        pending = None    # (items, encoder) of the batch whose steps run next

        def take(items, encoder):
            for chat in chats:
                chat._take(items, encoder)
            if progress:
                progress(self.n_frames - before, total)

        def hand_over(items):
            # The batch's encoding starts now (with a pool) and its steps run after the previous
            # batch's: the encoder works on this batch while the LLM works on that one.
            nonlocal pending
            encoder = _SharedEncoder(self.vlm.model)
            if pool is None:
                take(items, encoder)
                return
            steps = self._plan_ahead(ahead, items)
            if steps:
                encoder.start(pool, np.concatenate([st.pixels for st in steps]))
            ahead.append(items)
            if pending is not None:
                take(*pending)
                ahead.pop(0)
            pending = (items, encoder)

        try:
            buf: list = []
            for item in frames:
                buf.append(item)
                if len(buf) == batch:
                    hand_over(buf)
                    buf = []
            if buf:
                hand_over(buf)
            if pending is not None:
                take(*pending)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)  # an early encode still running ends before the chat moves on
        return self.n_frames - before

    def _plan_ahead(self, ahead: list, items: list) -> list:
        """The steps ``items`` will make once the batches ``ahead`` (lists of items) are in: planned
        on the layout advanced as taking them would advance it, then put back as it was."""
        mark, waiting = self.layout.progress(), self.layout.waiting
        try:
            for taken in ahead:
                steps, self.layout.waiting = self.layout.plan(self.layout.waiting + list(taken))
                for st in steps:
                    self.layout.commit(st)
            steps, _ = self.layout.plan(self.layout.waiting + list(items))
            return steps
        finally:
            self.layout.set_progress(mark)
            self.layout.waiting = waiting

    def _take(self, items: list, encoder: "_SharedEncoder") -> None:
        """Plan ``items`` (after the frames waiting for their pair) into steps and add them."""
        items = self.layout.waiting + list(items)
        self.layout.waiting = []
        steps, leftover = self.layout.plan(items)
        in_steps = 0

        def added(step):
            nonlocal in_steps
            self.layout.commit(step)
            self.step_first_frames.append(self._frames_in_steps)
            self._frames_in_steps += len(step.frames)
            self.video_seconds = step.frames[-1].timestamp
            in_steps += len(step.frames)

        self._add_steps(self.session, steps, added, encoder)  # an error: the steps before it are in
        self.layout.waiting = leftover
        if leftover:
            self.video_seconds = leftover[-1][0].timestamp
        if in_steps:  # wall time since the last steps (decoding wait, encoder, LLM) per frame
            now = time.perf_counter()
            self.frame_seconds += [(now - self._t_last) / in_steps] * in_steps
            self._t_last = now

    def _add_steps(self, session, steps: list, on_added: Optional[Callable[[Any], None]] = None,
                   encoder: Optional["_SharedEncoder"] = None) -> None:
        """The one place where planned steps (:class:`statekv.families.PlannedStep`) become
        committed session steps: their frames through the vision encoder in one batch (``encoder``:
        shared with other chats fed the same frames), each step's rows into its tokens with
        ``Session.add_step``; ``on_added(step)`` after each."""
        if not steps:
            return
        encoder = encoder or _SharedEncoder(self.vlm.model)
        encoded = encoder.encode(np.concatenate([s.pixels for s in steps]))
        for step, rows in zip(steps, encoded):
            if len(rows) != len(step.rows):
                raise ValueError(f"{self.vlm.model.mmproj}: the encoder gave {len(rows)} visual rows per step, the "
                                 f"{self.layout.family} layout expected {len(step.rows)}")
            start = session.n_tokens
            session.add_step(step.ids, embeddings=rows, embedding_rows=step.rows, positions=step.positions,
                             blocks=step.blocks)
            if on_added is not None:
                self.step_token_starts.append(start)
                on_added(step)

    def add_video(self, path_or_file: Any, start: Optional[float] = None, end: Optional[float] = None, *,
                  progress: Optional[ProgressCallback] = None, batch: int = 4,
                  others: Iterable["VideoChat"] = ()) -> int:
        """Sample (``fps``, ``max_frames``), decode and preprocess a video in a background thread
        and add its frames as steps; returns the number of frames added. ``start``/``end``
        (seconds) bound the clip. A second video continues the timeline after the first.
        ``progress(frames_done, frames_total)`` is called after each batch of ``batch`` frames.
        Raises :class:`statekv.VideoError` (a ``ValueError``) for a file that is not a readable video.

        ``others``: more chats of the same VLM, at the same point of the same timeline (same
        ``fps``, ``max_frames``, frames and layout state; e.g. new chats in other cache modes),
        that get the same frames: the video is decoded, preprocessed and run through the vision
        encoder once for all of them, and each ends as if it had been given the video alone (its
        per-frame seconds in :meth:`stats` are then those of the shared pass)::

            full, kept = vlm.video_chat(mode="full"), vlm.video_chat(mode="statekv", budget=4096)
            full.add_video("match.mp4", others=[kept])        # one decode + encode, two sessions
        """
        others = self._check_shared(others)
        reader = VideoReader(path_or_file, fps=self.fps, max_frames=self.max_frames, start=start, end=end)
        offset = self._timeline_offset(reader.timestamps[0] if len(reader) else 0.0)
        for chat in (self, *others):
            chat.layout.fix_size(len(reader), reader.height, reader.width)
            chat._ensure_session(t + offset for t in reader.timestamps)

        def prepare(f: Frame):
            shifted = Frame(self._next_index + f.index, f.timestamp + offset, f.rgb)
            return shifted, self.layout.preprocess(f.rgb)

        try:
            with prefetch(reader, depth=2 * batch, fn=prepare) as frames:
                return self._run(frames, len(reader), progress, batch, others, pipeline=True)
        finally:
            reader.close()
            for chat in (self, *others):
                chat._next_index += reader.frame_count

    def _check_shared(self, others: Iterable["VideoChat"]) -> tuple["VideoChat", ...]:
        """``others`` of :meth:`add_video`, checked: chats of this VLM at this chat's point of the
        timeline (else the shared frames would not be the frames each would sample alone)."""
        out = tuple(others)
        for chat in out:
            if not isinstance(chat, VideoChat) or chat.vlm is not self.vlm:
                raise ValueError("others: every chat must be a VideoChat of the same VLM")
            if chat is self or sum(c is chat for c in out) > 1:
                raise ValueError("others: each chat once, and not the chat itself")
            here = (self.fps, self.max_frames, self.n_frames, self._next_index, self.video_seconds,
                    self.layout.state())
            there = (chat.fps, chat.max_frames, chat.n_frames, chat._next_index, chat.video_seconds,
                     chat.layout.state())
            if here != there:
                raise ValueError("others: every chat must have this chat's fps and max_frames and be at the same "
                                 "point of the same video (e.g. all new)")
        return out

    def frames_of_tokens(self, token_indices) -> np.ndarray:
        """Chat frame index (from 0) of each session token index (e.g. from ``session.carried``);
        -1 for prefix tokens. A step of several frames maps its tokens to its first frame."""
        idx = np.asarray(token_indices)
        starts = np.asarray(self.step_token_starts, dtype=np.int64)
        which = np.searchsorted(starts, idx, side="right") - 1
        frames = np.asarray(self.step_first_frames, dtype=np.int64)
        return np.where(which < 0, -1, frames[np.maximum(which, 0)] if len(frames) else -1)

    def _timeline_offset(self, first: float) -> float:
        # A new video (or stream) starts one sampling interval after what the chat has seen.
        if self.n_frames == 0:
            return 0.0
        gap = 1.0 / self.fps if self.fps else 1.0
        return max(0.0, self.video_seconds + gap - first)

    def add_frames(self, frames: Iterable, timestamps: Optional[Iterable[float]] = None, *,
                   progress: Optional[ProgressCallback] = None, batch: int = 4) -> int:
        """Add live frames (any iterable of ``(H, W, 3)`` uint8 arrays, consumed as they come)
        as steps; every frame is used (no sampling). ``timestamps``: seconds per frame (default:
        ``1 / fps`` apart). Returns the number of frames added."""
        gap = 1.0 / self.fps if self.fps else 1.0
        source = frames_from_arrays(frames, timestamps, None if timestamps is not None else 1.0 / gap,
                                    start_index=self._next_index)
        offset = None
        first_checked = False

        def prepared():
            nonlocal offset, first_checked
            for f in source:
                if not first_checked:
                    self.layout.fix_size(self.max_frames, f.rgb.shape[0], f.rgb.shape[1])
                    self._ensure_session(None)
                    first_checked = True
                if offset is None:
                    offset = self._timeline_offset(f.timestamp)
                yield Frame(f.index, f.timestamp + offset, f.rgb), self.layout.preprocess(f.rgb)

        n_before = self.n_frames
        try:
            return self._run(prepared(), None, progress, batch)
        finally:
            self._next_index += self.n_frames - n_before

    # ---- questions ---------------------------------------------------------------------------

    def _question_session(self, question: str):
        if self.session is None:
            raise ValueError("the chat has no video yet: add_video() or add_frames() first")
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the question must be a non-empty string")
        session = self.session
        padded, ids, positions = self.layout.question(question)
        if padded is not None:  # an odd frame: asked about on a branch, the chat goes on without it
            session = session.fork()
            self._add_steps(session, [padded])
        return session, ids, positions

    def question_logits(self, question: str, *, last: Optional[int] = None) -> np.ndarray:
        """Logits ``(n, n_vocab)`` of the question's prompt tokens (question, end of turn,
        assistant header) over the video so far; the last row predicts the answer's first token.
        ``last=k``: only the last k rows (``Session.question_logits``)."""
        session, ids, positions = self._question_session(question)
        return session.question_logits(ids, positions=positions, last=last)

    def answer_tokens(self, question: str, max_tokens: int = 256, **sampling) -> list[int]:
        """The answer's token ids (the end-of-turn token, if reached, excluded)."""
        session, ids, positions = self._question_session(question)
        out = session.generate(ids, max_tokens, positions=positions, **sampling)
        self.last_answer_ids = self._strip_end(out)
        return list(self.last_answer_ids)

    def _strip_end(self, ids: list[int]) -> list[int]:
        if ids and int(ids[-1]) in self.vlm.end_ids:
            return ids[:-1]
        return ids

    def ask(self, question: str, max_tokens: int = 256, temperature: float = 0.0, top_k: int = 0,
            top_p: float = 1.0, min_p: float = 0.0, repeat_penalty: float = 1.0, seed: Optional[int] = None) -> str:
        """The answer to ``question`` over the video so far (greedy at ``temperature`` 0)."""
        ids = self.answer_tokens(question, max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                 min_p=min_p, repeat_penalty=repeat_penalty, seed=seed)
        return self.vlm.tokenizer.decode(ids, skip_special_tokens=True)

    def stream(self, question: str, max_tokens: int = 256, **sampling) -> Iterator[str]:
        """Like :meth:`ask`, yielding text pieces as tokens are decoded (a piece is held back
        while it ends inside a multi-byte character)."""
        session, ids, positions = self._question_session(question)
        done: list[int] = []
        self.last_answer_ids = done  # grows as the answer streams
        emitted = ""
        for tok in session.stream(ids, max_tokens, positions=positions, **sampling):
            if self._strip_end([tok]) == []:
                break
            done.append(int(tok))
            text = self.vlm.tokenizer.decode(done, skip_special_tokens=True)
            if text.endswith("\ufffd"):
                continue
            if len(text) > len(emitted):
                yield text[len(emitted):]
                emitted = text
        text = self.vlm.tokenizer.decode(done, skip_special_tokens=True)
        if len(text) > len(emitted):
            yield text[len(emitted):]

    # ---- persistence and statistics ----------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the chat (carried state, detailed cache, positions, frame numbering) to ``path``;
        :func:`load_chat` continues it without decoding the video again."""
        if self.session is None:
            raise ValueError("nothing to save: the chat has no video yet")
        app = {"format": _CHAT_FORMAT, "family": self.layout.family, "fps": self.fps, "max_frames": self.max_frames,
               "system": self.system, "frames_in_steps": self._frames_in_steps, "video_seconds": self.video_seconds,
               "next_index": self._next_index, "layout": self.layout.state(),
               "step_token_starts": self.step_token_starts, "step_first_frames": self.step_first_frames}
        self.session.save(path, app_data=json.dumps(app))

    def stats(self) -> dict:
        """Frames, tokens, per-frame seconds (median, last) and cache bytes so far."""
        st = dict(self.session.stats()) if self.session is not None else {}
        fs = self.frame_seconds
        st.update(frames=self.n_frames, frame_seconds_median=statistics.median(fs) if fs else None,
                  frame_seconds_last=fs[-1] if fs else None)
        return st

    def __repr__(self) -> str:
        return (f"statekv.VideoChat(mode={self.options['mode']}, frames={self.n_frames}, "
                f"tokens={self.session.n_tokens if self.session else 0})")


def load_chat(vlm: VLM, path: str | os.PathLike) -> VideoChat:
    """A chat saved with :meth:`VideoChat.save`. A file that is not a chat session, is corrupt or
    truncated, or was saved from another model raises :class:`statekv.ModelError`."""
    from ._core import ModelError

    session = vlm.model.load_session(path)
    where = os.fspath(path)
    try:
        app = json.loads(session.app_data.decode("utf-8") or "{}")
    except ValueError:
        app = {}
    if not isinstance(app, dict) or app.get("format") != _CHAT_FORMAT:
        raise ModelError(f"{where}: a statekv session but not a saved chat (statekv.app_data has no "
                         f"'{_CHAT_FORMAT}' record; load it with Model.load_session)")
    if app.get("family") != vlm.family:
        raise ModelError(f"{where}: saved from a '{app.get('family')}' model, not '{vlm.family}'")
    record = _ChatRecord(where, app, session)
    chat = VideoChat(vlm, session.options(), fps=record.fps, max_frames=record.max_frames, system=record.system)
    chat.session = session
    chat._frames_in_steps = record.frames_in_steps
    chat.video_seconds = record.video_seconds
    chat._next_index = record.next_index
    chat.step_token_starts = record.step_token_starts
    chat.step_first_frames = record.step_first_frames
    try:
        chat.layout.restore(record.layout)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError, binascii.Error) as exc:
        raise ModelError(f"{where}: statekv.app_data 'layout' is not a valid {vlm.family} frame layout "
                         f"({type(exc).__name__}: {exc})") from None
    return chat


class _ChatRecord:
    """The chat bookkeeping of a session file's app data, each field checked (type, range,
    consistency with the session) into a ModelError naming the file and the field."""

    def __init__(self, where: str, app: dict, session):
        self.where = where
        self.app = app
        fps = app.get("fps")
        self.fps = None if fps is None else self.number("fps", lo=0.0, exclusive=True)
        self.max_frames = self.integer("max_frames", lo=1)
        system = app.get("system")
        if system is not None and not isinstance(system, str):
            self.fail("system", "a string or null")
        self.system = system
        self.frames_in_steps = self.integer("frames_in_steps", lo=0)
        self.video_seconds = self.number("video_seconds", lo=0.0)
        self.next_index = self.integer("next_index", lo=0)
        n_tokens = session.n_tokens
        self.step_token_starts = self.int_list("step_token_starts", 0, n_tokens)
        if any(b <= a for a, b in zip(self.step_token_starts, self.step_token_starts[1:])):
            self.fail("step_token_starts", "strictly increasing token indices")
        if len(self.step_token_starts) > session.stats()["steps"]:
            self.fail("step_token_starts", f"at most one entry per step ({session.stats()['steps']})")
        self.step_first_frames = self.int_list("step_first_frames", 0, self.next_index)
        self.layout = app.get("layout")
        if not isinstance(self.layout, dict):
            self.fail("layout", "an object")

    def fail(self, key: str, expected: str):
        from ._core import ModelError
        raise ModelError(f"{self.where}: statekv.app_data field '{key}' = {self.app.get(key)!r:.80} is not valid "
                         f"(expected {expected})")

    def integer(self, key: str, lo: int = 0, hi: int = 2**31 - 1) -> int:
        v = self.app.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            self.fail(key, f"an integer in [{lo}, {hi}]")
        return v

    def number(self, key: str, lo: float, exclusive: bool = False) -> float:
        v = self.app.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < lo or (exclusive and v == lo):
            self.fail(key, f"a finite number {'>' if exclusive else '>='} {lo}")
        return float(v)

    def int_list(self, key: str, lo: int, hi: int) -> list[int]:
        v = self.app.get(key, [])
        if not isinstance(v, list) or any(isinstance(x, bool) or not isinstance(x, int) or not lo <= x <= hi for x in v):
            self.fail(key, f"a list of integers in [{lo}, {hi}]")
        return list(v)


class _SharedEncoder:
    """The vision encoder for one batch of frames fed to several chats: the first chat's pixels
    are encoded, and a chat asking for the same pixels again (the same frames, planned the same
    way) gets the same rows without running the encoder again; other pixels are encoded anew.
    :meth:`start` begins encoding expected pixels early in a worker thread; their rows are used
    only if the pixels asked for are exactly those."""

    def __init__(self, model: Model):
        self.model = model
        self._pixels: Optional[np.ndarray] = None
        self._rows: Optional[np.ndarray] = None
        self._early: Optional[Future] = None

    def start(self, pool: ThreadPoolExecutor, pixels: np.ndarray) -> None:
        self._pixels, self._early = pixels, pool.submit(self.model.encode_frames, pixels)

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        if self._pixels is not None and self._pixels.shape == pixels.shape and np.array_equal(self._pixels, pixels):
            if self._early is not None:
                self._rows, self._early = self._early.result(), None
            return self._rows
        if self._early is not None:  # planned otherwise (it cannot happen with a consistent layout): drop it
            self._early.cancel() or self._early.exception()
            self._early = None
        rows = self.model.encode_frames(pixels)
        self._pixels, self._rows = pixels, rows
        return rows
