"""The evaluation API: a text decoder loaded from a llama.cpp GGUF file."""
from __future__ import annotations

import os
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from ._native import _core
from ._core import ModelError


def backends() -> list[dict]:
    """Devices ggml offers in this build: ``[{"name", "description", "type", "memory_free",
    "memory_total"}, ...]``. Pass a ``name`` as ``device=`` to :class:`Model`."""
    return _core.backends()


def _ids(tokens: Iterable[int]) -> np.ndarray:
    arr = np.asarray(list(tokens) if not isinstance(tokens, np.ndarray) else tokens)
    if arr.ndim != 1:
        raise ValueError(f"tokens must be a 1-D sequence of token ids, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"tokens must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int32, copy=False)


def _optional_array(x, dtype, name: str):
    if x is None:
        return None
    arr = np.asarray(x)
    if arr.dtype == object:
        raise ValueError(f"{name} must be a numeric array")
    return np.ascontiguousarray(arr, dtype=dtype)


def _check_mmproj(path: str) -> None:
    # Vision encoders arrive family by family; until one is supported, say which projector the
    # file holds rather than ignoring it.
    from gguf import GGUFReader

    if not os.path.exists(path):
        raise ModelError(f"{path}: cannot open file (missing or unreadable)")
    try:
        reader = GGUFReader(path)
    except Exception as exc:  # gguf-py raises various types for corrupt files
        raise ModelError(f"{path}: not a readable GGUF file ({exc})") from None
    field = reader.fields.get("clip.projector_type")
    kind = field.contents() if field is not None else "<none>"
    raise ModelError(f"{path}: mmproj with clip.projector_type '{kind}' is not supported by this "
                     "version of statekv (text decoders only); load the text model without mmproj")


class Model:
    """A text decoder (qwen2, qwen3, qwen3vl) loaded from a GGUF file.

    ``device``: a name from :func:`backends` (default: best GPU, else CPU);
    ``threads``: CPU threads (default: all cores).
    """

    def __init__(self, text_gguf: str | os.PathLike, mmproj: Optional[str | os.PathLike] = None,
                 device: Optional[str] = None, threads: Optional[int] = None):
        self.path = os.fspath(text_gguf)
        if mmproj is not None:
            _check_mmproj(os.fspath(mmproj))
        self._m = _core.Model(self.path, device or "", int(threads or 0))

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

    def logits(self, tokens: Sequence[int], positions=None, embeddings=None, embedding_rows=None) -> np.ndarray:
        """One stateless full-attention prefill of a single sequence.

        ``positions``: ``(n,)`` or, for multi-axis RoPE models (qwen3vl), ``(3, n)``;
        ``embeddings``: ``(k, n_embd)`` (or ``(k, n_embd * (1 + n_deepstack))`` with DeepStack
        features, llama.cpp's mmproj layout) replacing the token embeddings at
        ``embedding_rows`` ``(k,)``. Returns float32 ``(len(tokens), n_vocab)``.
        """
        return self._m.logits(_ids(tokens), _optional_array(positions, np.int32, "positions"),
                              _optional_array(embeddings, np.float32, "embeddings"),
                              _optional_array(embedding_rows, np.int32, "embedding_rows"))

    def generate(self, tokens: Sequence[int], max_tokens: int, *, positions=None, embeddings=None,
                 embedding_rows=None, kv_type: str = "f16", stop: Sequence[int] = (),
                 ignore_eos: bool = False, callback: Optional[Callable[[int], Optional[bool]]] = None) -> list[int]:
        """Greedy decoding with a KV cache (``kv_type`` f32/f16/q8_0). Stops after
        ``max_tokens`` tokens, at an end-of-turn token (unless ``ignore_eos``), or at a token of
        ``stop``; the stop token is included. ``callback(token)`` sees each token as it is
        decoded and may return False to stop."""
        return self._m.generate(_ids(tokens), int(max_tokens),
                                _optional_array(positions, np.int32, "positions"),
                                _optional_array(embeddings, np.float32, "embeddings"),
                                _optional_array(embedding_rows, np.int32, "embedding_rows"),
                                kv_type, [int(s) for s in stop], bool(ignore_eos), callback)

    def bench_prompt(self, n_prompt: int, n_depth: int = 0, repetitions: int = 3, kv_type: str = "f16",
                     n_ubatch: int = 512) -> list[float]:
        """Seconds to prefill ``n_prompt`` tokens over a KV cache already holding ``n_depth``
        tokens (llama-bench's pp test with ``-d``), one value per repetition."""
        return self._m.bench_prompt(int(n_prompt), int(n_depth), int(repetitions), kv_type, int(n_ubatch))

    def __repr__(self) -> str:
        i = self._m.info()
        return f"statekv.Model({self.path!r}, arch={i['architecture']}, device={i['device']})"
