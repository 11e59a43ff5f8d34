"""GGUF metadata in Python, read with gguf-py's ``GGUFReader`` (the Python side's one GGUF reader;
C++ reads GGUF with ggml's ``gguf.h``).

``GGUFReader`` slices its ``np.memmap`` once per value, and a memmap slice costs several times a
plain array slice (numpy's memmap bookkeeping): opening a 150k-token vocabulary took about 10 s.
:class:`_Reader` only changes that slicing (a plain-array view of the same map); the parsing is
gguf-py's. The functions below turn its errors into ones that name the file.

Nothing here imports the compiled extension.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["open_gguf", "read_gguf_kv", "read_gguf_tensor_infos"]

_MAGIC = b"GGUF"


def _reader_class():
    import gguf  # gguf-py; imported on first use so `statekv --help` stays fast

    class _Reader(gguf.GGUFReader):
        """gguf-py's reader, slicing a plain ndarray view of its memory map (same bytes, same
        parse, much less numpy overhead per value)."""

        _plain: Any = None

        def _get(self, offset, dtype, count=1, override_order=None):
            buf = self._plain
            if buf is None:
                buf = self._plain = self.data.view(np.ndarray)
            dt = np.dtype(dtype)
            count = int(count)
            arr = buf[offset:offset + dt.itemsize * count].view(dt)[:count]
            order = self.byte_order if override_order is None else override_order
            return arr if order == "I" else arr.view(arr.dtype.newbyteorder(order))

    return _Reader


_READER = None


def open_gguf(path: str | os.PathLike) -> Any:
    """A ``gguf.GGUFReader`` of ``path``. Raises ``FileNotFoundError`` or ``ValueError`` naming
    the file when it is missing, empty, not a GGUF file, of an unsupported version, truncated or
    corrupt."""
    global _READER
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such GGUF file")
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        raise ValueError(f"{path}: not a GGUF file (empty)")
    magic = head[:4]
    if magic != _MAGIC or os.path.getsize(path) < 24:
        raise ValueError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
    version = int.from_bytes(head[4:8], "little")
    if version & 0xFFFF == 0 and version != 0:  # byte-swapped version: a big-endian file
        version = int.from_bytes(head[4:8], "big")
    if version not in (2, 3):
        raise ValueError(f"{path}: unsupported GGUF version {version} (expected 2 or 3)")
    if _READER is None:
        _READER = _reader_class()
    try:
        return _READER(path)
    except (IndexError, ValueError, KeyError, OverflowError, TypeError) as exc:
        raise ValueError(f"{path}: truncated or corrupt GGUF file ({type(exc).__name__}: {exc})") from None


def _contents(path: str, reader: Any) -> dict[str, Any]:
    try:
        return {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    except (IndexError, ValueError) as exc:  # e.g. a string that is not UTF-8
        raise ValueError(f"{path}: corrupt GGUF metadata ({type(exc).__name__}: {exc})") from None


def read_gguf_kv(path: str | os.PathLike) -> dict[str, Any]:
    """All key/value metadata of a GGUF file as a dict of Python values (``GGUFReader``'s field
    contents: ``str``, ``int``/``float``/``bool``, lists for arrays). The ``GGUF.*`` pseudo-keys
    are not included. Errors as :func:`open_gguf`."""
    path = os.fspath(path)
    return _contents(path, open_gguf(path))


def read_gguf_tensor_infos(path: str | os.PathLike) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """Key/values, tensor infos and the data offset of a GGUF file.

    Each tensor info is ``{"name", "shape" (ggml order: ne[0] first), "type" (ggml type id),
    "offset" (absolute, from the start of the file)}``.
    """
    path = os.fspath(path)
    reader = open_gguf(path)
    kv = _contents(path, reader)
    infos = [{"name": t.name, "shape": [int(d) for d in t.shape], "type": int(t.tensor_type),
              "offset": int(t.data_offset)} for t in reader.tensors]
    return kv, infos, int(reader.data_offset)
