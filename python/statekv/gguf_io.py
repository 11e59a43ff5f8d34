"""GGUF metadata in Python, read with gguf-py's ``GGUFReader`` (the Python side's one GGUF reader;
C++ reads GGUF with ggml's ``gguf.h``).

``GGUFReader`` builds a few numpy views per value; a 150k-token vocabulary (with its 150k merges)
took 2-10 s to open, against 0.2 s for the hand-written reader it replaces. :class:`_Reader`
keeps gguf-py's parse and changes two internals: values are sliced from a plain-array view of
the memory map (a memmap slice costs several times more), and an array's parts are made in one
go (a numeric array is one part with all its values; a string array's parts are memoryview
slices of its strings) instead of one recursive parse per element: 0.2-0.8 s. The whole field's
``ReaderField.contents()`` reads these parts as it reads gguf-py's own (an element index into
an array field does not apply). The functions below turn its errors into ones that name the
file.

Nothing here imports the compiled extension.
"""
from __future__ import annotations

import os
import struct
from typing import Any

import numpy as np

__all__ = ["open_gguf", "read_gguf_kv", "read_gguf_tensor_infos"]

_MAGIC = b"GGUF"


def _reader_class():
    import gguf  # gguf-py; imported on first use so `statekv --help` stays fast

    ARRAY, STRING = int(gguf.GGUFValueType.ARRAY), int(gguf.GGUFValueType.STRING)

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

        def _get_field_parts(self, orig_offs, raw_type):
            # Arrays: gguf-py makes parts per element (seconds for a vocabulary); here a numeric
            # array is one part holding all its values, and a string array's parts are
            # memoryview slices. Everything else is gguf-py's own parse.
            if raw_type != ARRAY or self.byte_order != "I":
                return super()._get_field_parts(orig_offs, raw_type)
            item_type = self._get(orig_offs, np.uint32)
            count = self._get(orig_offs + 4, np.uint64)
            n = int(count[0])
            offs = orig_offs + 12
            itype = int(item_type[0])
            nptype = self.gguf_scalar_to_np.get(itype)
            if nptype is not None:
                values = self._get(offs, nptype, n)
                if len(values) != n:
                    raise IndexError(f"array of {n} values at byte {offs} runs past the end")
                return 12 + values.nbytes, [item_type, count, values], [2], [ARRAY, gguf.GGUFValueType(itype)]
            if itype != STRING:
                return super()._get_field_parts(orig_offs, raw_type)
            data = memoryview(self._plain)
            size = len(data)
            u64 = struct.Struct("<Q").unpack_from
            strings = []
            append = strings.append
            for _ in range(n):
                (length,) = u64(data, offs)
                start, offs = offs + 8, offs + 8 + length
                if offs > size:
                    raise IndexError(f"string array entry of {length} bytes at byte {start - 8} runs past the end")
                append(data[start:offs])
            # parts: the item type, the count, then each string's bytes (no per-string length part)
            return offs - orig_offs, [item_type, count] + strings, list(range(2, 2 + n)), [ARRAY, gguf.GGUFValueType.STRING]

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
    except (IndexError, ValueError, KeyError, OverflowError, TypeError, struct.error) as exc:
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
