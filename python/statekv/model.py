"""The evaluation API: a text decoder loaded from a llama.cpp GGUF file."""
from __future__ import annotations

import os
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from ._native import _core
from ._core import ModelError


def backends() -> list[dict]:
    """Devices ggml offers in this build: ``[{"name", "description", "type", "memory_free",
    "memory_total"}, ...]``. Pass a ``name`` as ``device=`` to :class:`Model`."""
    return _core.backends()


def ggml_info() -> dict:
    """The ggml that runs: ``version``, ``library`` (path of libggml), ``origin`` (the source it
    was built from), ``cpu_variant`` (the CPU module picked for this machine, e.g. ``haswell``),
    ``cpu_module``, ``cpu_features`` (e.g. ``AVX2,FMA,...,LLAMAFILE``), ``modules`` (loaded
    backends) and ``packed_gemm_lanes`` (the vector width of statekv's own CPU product of F16 and
    Q8_0 weights: ``16`` with AVX-512, else ``8``). ``STATEKV_CPU_VARIANT=<name>`` in the
    environment forces a CPU variant, ``STATEKV_GEMM_LANES=8`` or ``16`` a width."""
    return dict(_core.ggml_info())


INT32_MAX = 2**31 - 1


def _int(name: str, value, lo: int = -INT32_MAX - 1, hi: int = INT32_MAX) -> int:
    """``value`` as a Python int in ``[lo, hi]`` (the native side takes 32-bit ints): a clear
    ValueError instead of a pybind11 TypeError or a silent wrap."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if not lo <= value <= hi:
        raise ValueError(f"{name} = {value} is out of range, expected an integer in [{lo}, {hi}]")
    return value


def _float(name: str, value) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(out):
        raise ValueError(f"{name} must be finite, got {out}")
    return out


def _int32_array(arr: np.ndarray, name: str) -> np.ndarray:
    """An integer array checked to fit int32 before the cast (which would wrap silently)."""
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    if arr.size and (arr.dtype.itemsize > 4 or arr.dtype == np.uint32):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < -INT32_MAX - 1 or hi > INT32_MAX:
            raise ValueError(f"{name} must fit in 32 bits, got values in [{lo}, {hi}]")
    return np.ascontiguousarray(arr, dtype=np.int32)


def _last_rows(last) -> int:
    if isinstance(last, bool) or not isinstance(last, (int, np.integer)) or last < 1:
        raise ValueError(f"last must be a positive number of rows, got {last!r}")
    return int(last)


def _ids(tokens: Iterable[int]) -> np.ndarray:
    try:
        arr = np.asarray(list(tokens) if not isinstance(tokens, np.ndarray) else tokens)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"tokens must be a 1-D sequence of token ids ({exc})") from None
    if arr.ndim != 1:
        raise ValueError(f"tokens must be a 1-D sequence of token ids, got shape {arr.shape}")
    if arr.dtype == object:
        raise ValueError("tokens must be integers that fit in 32 bits")
    return _int32_array(arr, "tokens")


def _optional_array(x, dtype, name: str):
    if x is None:
        return None
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{name} must be a numeric array ({exc})") from None
    if arr.dtype == object:
        raise ValueError(f"{name} must be a numeric array")
    if np.dtype(dtype) == np.int32:
        return _int32_array(arr, name)
    if arr.size and not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=dtype)


class Model:
    """A text decoder loaded from a llama.cpp GGUF file (``info()["architecture"]``).

    ``device``: a name from :func:`backends` (default: best GPU, else CPU);
    ``threads``: CPU threads (default: all cores);
    ``overlap_encoder``: give the vision encoder its own backend instance (on a GPU, its own
    stream) so that frames are encoded while sessions run the steps of earlier frames
    (:class:`statekv.VideoChat` then pipelines the two). Default (None): on a GPU yes; on the
    CPU no, where the encoder and the steps would compete for the same cores.
    """

    def __init__(self, text_gguf: str | os.PathLike, mmproj: Optional[str | os.PathLike] = None,
                 device: Optional[str] = None, threads: Optional[int] = None,
                 overlap_encoder: Optional[bool] = None):
        self.path = os.fspath(text_gguf)
        self.mmproj = os.fspath(mmproj) if mmproj is not None else None
        overlap = -1 if overlap_encoder is None else int(bool(overlap_encoder))
        self._m = _core.Model(self.path, device or "", _int("threads", threads or 0), self.mmproj or "", overlap)
        self._info = None

    @property
    def info_cached(self) -> dict:
        if self._info is None:
            self._info = self.info()
        return self._info

    @property
    def n_vocab(self) -> int:
        return self._m.n_vocab

    @property
    def n_embd(self) -> int:
        return self._m.n_embd

    def info(self) -> dict:
        """Architecture, sizes, tensor types and device."""
        out = {}
        for k, v in self._m.info().items():
            try:
                out[k] = int(v)
            except ValueError:
                try:
                    out[k] = float(v)
                except ValueError:
                    out[k] = {"true": True, "false": False}.get(v, v)
        types = out.get("tensor_types")
        if isinstance(types, str):
            out["tensor_types"] = {t.split(":")[0]: int(t.split(":")[1]) for t in types.split(",") if t}
        return out

    @property
    def has_vision(self) -> bool:
        return self._m.has_vision

    @property
    def encoder_overlaps(self) -> bool:
        """True when the vision encoder has its own backend instance (``overlap_encoder``), so
        :meth:`encode_frames` runs concurrently with sessions' steps."""
        return self._m.encoder_overlaps

    def encode_frames(self, pixels) -> np.ndarray:
        """Visual rows of preprocessed frames: ``pixels`` float32 ``(n_frames, 3, H, W)`` ->
        ``(n_patches, tokens_per_patch, row_width)``, where a patch is one frame or a temporal
        group of frames (``info()["vision.frames_per_patch"]``) and ``row_width`` is ``n_embd`` or, with DeepStack,
        ``n_embd * (1 + n_deepstack)`` (llama.cpp's layout; pass rows as ``embeddings``)."""
        return self._m.encode_frames(np.ascontiguousarray(pixels, dtype=np.float32))

    def logits(self, tokens: Sequence[int], positions=None, embeddings=None, embedding_rows=None,
               blocks=None) -> np.ndarray:
        """One stateless full-attention prefill of a single sequence.

        ``positions``: ``(n,)`` or, for multi-axis RoPE models (``info()["n_position_axes"]`` > 1), ``(3, n)``;
        ``embeddings``: ``(k, n_embd)`` (or ``(k, n_embd * (1 + n_deepstack))`` with DeepStack
        features, llama.cpp's mmproj layout) replacing the token embeddings at
        ``embedding_rows`` ``(k,)``; ``blocks``: ``(n,)`` bidirectional blocks (Gemma 3's images: the
        tokens sharing a value > 0, one contiguous run, see each other in both directions; 0:
        causal). Returns float32 ``(len(tokens), n_vocab)``.
        """
        return self._m.logits(_ids(tokens), _optional_array(positions, np.int32, "positions"),
                              _optional_array(embeddings, np.float32, "embeddings"),
                              _optional_array(embedding_rows, np.int32, "embedding_rows"),
                              _optional_array(blocks, np.int32, "blocks"))

    def generate(self, tokens: Sequence[int], max_tokens: int, *, positions=None, embeddings=None,
                 embedding_rows=None, kv_type: str = "f16", stop: Sequence[int] = (),
                 ignore_eos: bool = False, callback: Optional[Callable[[int], Optional[bool]]] = None) -> list[int]:
        """Greedy decoding with a KV cache (``kv_type`` f32/f16/q8_0). Stops after
        ``max_tokens`` tokens, at an end-of-turn token (unless ``ignore_eos``), or at a token of
        ``stop``; the stop token is included. ``callback(token)`` sees each token as it is
        decoded and may return False to stop."""
        return self._m.generate(_ids(tokens), _int("max_tokens", max_tokens),
                                _optional_array(positions, np.int32, "positions"),
                                _optional_array(embeddings, np.float32, "embeddings"),
                                _optional_array(embedding_rows, np.int32, "embedding_rows"),
                                kv_type, [int(t) for t in _ids(stop)], bool(ignore_eos), callback)

    def session(self, mode: str = "statekv", budget: int = 4096, window: int = 16, kv_type: str = "f16", *,
                expected_length: Optional[int] = None, rope_scale: Optional[float] = None,
                detailed_chunk: Optional[int] = None, score_decay: float = 0.0,
                pin_prefix: bool = False) -> "Session":
        """A new video session over this model (see :class:`Session`).

        ``mode``: ``"full"`` (every step attends to everything: the exact model), ``"window"``
        (prefix + the last ``window`` steps) or ``"statekv"`` (``budget`` importance-selected keys
        per layer and KV head). ``kv_type``: detailed-cache type, f32/f16/q8_0.
        ``expected_length``: total tokens expected (video + question + answer); beyond the trained
        context the rotary base gets dynamic-NTK scaling. ``rope_scale``: a fixed NTK factor for
        open-ended streams. ``detailed_chunk``: tokens per chunk of the detailed cache.

        Variants of the statekv selection (docs/DESIGN.md section 1, "Policy variants"; mode
        ``"statekv"`` only, a ValueError otherwise); the defaults are the paper's rule:

        - ``score_decay`` d in [0, 1): 0 ranks keys by the current step's attention mass alone.
          With d > 0 each kept key carries an accumulated score, ``s = d * s_prev + s_step``
          (a new key starts from its ``s_step``, prefix keys from 0), and the budget keeps the
          keys with the largest ``s``. Stored as a 32-bit float.
        - ``pin_prefix``: the prefix (everything given to :meth:`Session.prefill`) stays in the
          carried state for good; it counts toward ``budget`` (a prefix larger than the budget is
          refused) and only the video's tokens compete for the rest.

        Example::

            s = model.session(mode="statekv", budget=1024, score_decay=0.5, pin_prefix=True)
            s.options()["score_decay"]   # 0.5
        """
        if not isinstance(pin_prefix, (bool, np.bool_)):
            raise ValueError(f"pin_prefix must be True or False, got {pin_prefix!r}")
        decay = _float("score_decay", score_decay)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"score_decay must be in [0, 1) (0: the paper's rule), got {decay}")
        return Session(self, self._m.session(str(mode), _int("budget", budget), _int("window", window), str(kv_type),
                                             _int("expected_length", expected_length or 0),
                                             _float("rope_scale", rope_scale or 0.0),
                                             _int("detailed_chunk", detailed_chunk or 0), decay, bool(pin_prefix)))

    def load_session(self, path: str | os.PathLike) -> "Session":
        """A session saved with :meth:`Session.save` (same options, positions, caches). A file that
        is not a session file, is truncated, or was saved from another model raises
        :class:`statekv.ModelError`."""
        return Session(self, self._m.load_session(os.fspath(path)))

    def bench_prompt(self, n_prompt: int, n_depth: int = 0, repetitions: int = 3, kv_type: str = "f16",
                     n_ubatch: int = 512) -> list[float]:
        """Seconds to prefill ``n_prompt`` tokens over a KV cache already holding ``n_depth``
        tokens (llama-bench's pp test with ``-d``), one value per repetition."""
        return self._m.bench_prompt(_int("n_prompt", n_prompt), _int("n_depth", n_depth),
                                    _int("repetitions", repetitions), kv_type, _int("n_ubatch", n_ubatch))

    def __repr__(self) -> str:
        i = self._m.info()
        return f"statekv.Model({self.path!r}, arch={i['architecture']}, device={i['device']})"


class Session:
    """The video state of one conversation over a :class:`Model`.

    Example::

        s = model.session(mode="statekv", budget=4096)
        s.prefill(prefix_ids)                                   # system prompt, user header
        for ids, vis, rows in frames:                           # one frame step each
            s.add_step(ids, embeddings=vis, embedding_rows=rows)
        logits = s.question_logits(question_ids)                 # state unchanged
        answer = s.generate(question_ids, max_tokens=64)         # state unchanged
        s.add_step(...)                                          # the video goes on

    Positions default to continuing after the last one entered. Asking (``question_logits``,
    ``generate``, ``stream``) never changes the state; ``fork()`` gives an independent copy.
    """

    def __init__(self, model: Model, native):
        self.model = model
        self._s = native

    def prefill(self, tokens, embeddings=None, embedding_rows=None, positions=None, blocks=None) -> None:
        """Prefix tokens (before the first step): full causal attention, into D and C."""
        self._s.prefill(_ids(tokens), _optional_array(positions, np.int32, "positions"),
                        _optional_array(embeddings, np.float32, "embeddings"),
                        _optional_array(embedding_rows, np.int32, "embedding_rows"),
                        _optional_array(blocks, np.int32, "blocks"))

    def add_step(self, tokens, embeddings=None, embedding_rows=None, positions=None, blocks=None) -> None:
        """One frame step: its text tokens with the visual rows given as ``embeddings`` at
        ``embedding_rows``. Costs the same whatever the number of earlier steps (statekv).
        ``blocks``: bidirectional blocks of the step's tokens, as in :meth:`Model.logits` (a block
        never spans two steps)."""
        self._s.add_step(_ids(tokens), _optional_array(positions, np.int32, "positions"),
                         _optional_array(embeddings, np.float32, "embeddings"),
                         _optional_array(embedding_rows, np.int32, "embedding_rows"),
                         _optional_array(blocks, np.int32, "blocks"))

    def question_logits(self, tokens, positions=None, *, last: Optional[int] = None) -> np.ndarray:
        """Logits ``(n, n_vocab)`` of question tokens attending over all of D plus themselves.
        ``last=k``: only the last k rows, ``(k, n_vocab)``; the same numbers, without running the
        output head for the others (most of the work per token of a small model with a large
        vocabulary), e.g. ``last=1`` for what follows the question."""
        return self._s.question_logits(_ids(tokens), _optional_array(positions, np.int32, "positions"),
                                       self.model.n_vocab, 0 if last is None else _last_rows(last))

    def generate(self, tokens, max_tokens: int, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 min_p: float = 0.0, repeat_penalty: float = 1.0, seed: Optional[int] = None,
                 stop: Sequence[int] = (), callback: Optional[Callable[[int], Optional[bool]]] = None, *,
                 positions=None, repeat_last_n: int = 64, ignore_eos: bool = False) -> list[int]:
        """Answer tokens for a question over all of D. Greedy at ``temperature`` 0; otherwise
        top-k / top-p / min-p sampling with ``seed`` (reproducible). Stops at an end-of-turn
        token, a token of ``stop`` (included) or after ``max_tokens``. ``callback(token)`` sees
        tokens as they are decoded and may return False to stop. The state is unchanged."""
        return self._s.generate(_ids(tokens), _int("max_tokens", max_tokens),
                                _optional_array(positions, np.int32, "positions"),
                                _float("temperature", temperature), _int("top_k", top_k), _float("top_p", top_p),
                                _float("min_p", min_p), _float("repeat_penalty", repeat_penalty),
                                _int("repeat_last_n", repeat_last_n),
                                _int("seed", 0xC0FFEE if seed is None else seed, -2**63, 2**64 - 1) & (2**64 - 1),
                                [int(t) for t in _ids(stop)], bool(ignore_eos), callback)

    def stream(self, tokens, max_tokens: int, **options) -> Iterator[int]:
        """Like :meth:`generate`, yielding each token as soon as it is decoded."""
        import queue
        import threading

        q: "queue.Queue" = queue.Queue()
        done = object()
        cancelled = threading.Event()

        def on_token(tok: int) -> bool:
            q.put(tok)
            return not cancelled.is_set()

        def work():
            try:
                self.generate(tokens, max_tokens, callback=on_token, **options)
            except BaseException as exc:  # re-raised in the consumer
                q.put(exc)
            finally:
                q.put(done)

        t = threading.Thread(target=work, daemon=True)
        t.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancelled.set()
            t.join()

    def carried(self, layer: int) -> np.ndarray:
        """Indices (entry order from 0) of the tokens carried in ``layer``: ``(n_kv_heads, n_kept)``."""
        return self._s.carried(_int("layer", layer), int(self.model.info_cached["n_head_kv"]))

    def fork(self) -> "Session":
        """An independent copy (shares the detailed cache's storage until either side grows it)."""
        return Session(self.model, self._s.fork())

    def save(self, path: str | os.PathLike, app_data: bytes | str = b"") -> None:
        """Write the session (options, positions, detailed cache, carried state) to ``path``, so
        a video indexed once can be asked about later without decoding it again. ``app_data``
        is stored verbatim and comes back as :attr:`app_data` after :meth:`Model.load_session`."""
        self._s.save(os.fspath(path), app_data.decode() if isinstance(app_data, bytes) else str(app_data))

    @property
    def app_data(self) -> bytes:
        """The ``app_data`` the session was saved with (empty for a new session)."""
        return self._s.app_data

    def options(self) -> dict:
        """The options the session was made with: mode, budget, window, kv_type, expected_length,
        rope_scale, score_decay, pin_prefix."""
        return self._s.options()

    def stats(self) -> dict:
        """Tokens and bytes of the detailed cache (D) and carried state (C), per-step seconds."""
        return self._s.stats()

    @property
    def n_tokens(self) -> int:
        return self._s.n_tokens

    @property
    def next_position(self) -> int:
        return self._s.next_position
