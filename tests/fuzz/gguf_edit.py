"""A GGUF file as editable structure (header, metadata, tensor table, data) for the fuzz harness:
parse, change any field, serialize again. Unlike gguf-py's writer it writes whatever it is given
(wrong types, impossible shapes, offsets outside the data), which is the point.

Format (GGUF v3, little-endian): magic ``GGUF``, u32 version, u64 n_tensors, u64 n_kv; n_kv
entries (string key, u32 value type, value); n_tensors infos (string name, u32 n_dims, u64 dims,
u32 ggml type, u64 offset into the data section); padding to the alignment; the data section.
"""
from __future__ import annotations

import copy
import struct
from dataclasses import dataclass, field

# GGUF value types.
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
SCALAR_FORMATS = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?",
                  U64: "<Q", I64: "<q", F64: "<d"}
INT_TYPES = (U8, I8, U16, I16, U32, I32, U64, I64)
INT_RANGES = {U8: (0, 2**8 - 1), I8: (-2**7, 2**7 - 1), U16: (0, 2**16 - 1), I16: (-2**15, 2**15 - 1),
              U32: (0, 2**32 - 1), I32: (-2**31, 2**31 - 1), U64: (0, 2**64 - 1), I64: (-2**63, 2**63 - 1)}


@dataclass
class Value:
    """A metadata value: ``type`` and ``data`` (a number, bytes for a string, or for an array
    ``elem_type`` and a list of element data)."""
    type: int
    data: object
    elem_type: int = -1

    def clone(self) -> "Value":
        return copy.deepcopy(self)


@dataclass
class TensorInfo:
    name: bytes
    dims: list[int]
    ggml_type: int
    body: bytes = b""                 # its data; serialize() lays bodies out one after another
    offset_override: int | None = None  # a mutated offset, written as is


@dataclass
class GGUF:
    version: int = 3
    kv: list[tuple[bytes, Value]] = field(default_factory=list)
    tensors: list[TensorInfo] = field(default_factory=list)
    alignment: int = 32
    tail: bytes = b""  # bytes after the last tensor's data (normally none)
    # Overrides for the header counts (a mutation may make them lie); None: the real counts.
    n_tensors_override: int | None = None
    n_kv_override: int | None = None

    def get(self, key: str) -> Value | None:
        k = key.encode()
        for name, v in self.kv:
            if name == k:
                return v
        return None

    def set(self, key: str, value: Value) -> None:
        k = key.encode()
        for i, (name, _) in enumerate(self.kv):
            if name == k:
                self.kv[i] = (k, value)
                return
        self.kv.append((k, value))

    def tensor(self, name: str) -> TensorInfo | None:
        n = name.encode()
        return next((t for t in self.tensors if t.name == n), None)



class ParseError(ValueError):
    pass


def _read(fmt: str, buf: bytes, pos: int):
    n = struct.calcsize(fmt)
    if pos + n > len(buf):
        raise ParseError("truncated")
    return struct.unpack_from(fmt, buf, pos)[0], pos + n


def _read_str(buf: bytes, pos: int):
    n, pos = _read("<Q", buf, pos)
    if pos + n > len(buf):
        raise ParseError("truncated string")
    return bytes(buf[pos:pos + n]), pos + n


def _read_value(buf: bytes, pos: int, vtype: int):
    if vtype in SCALAR_FORMATS:
        return _read(SCALAR_FORMATS[vtype], buf, pos)
    if vtype == STRING:
        return _read_str(buf, pos)
    raise ParseError(f"value type {vtype}")


def parse(buf: bytes) -> GGUF:
    if buf[:4] != b"GGUF":
        raise ParseError("magic")
    pos = 4
    version, pos = _read("<I", buf, pos)
    n_tensors, pos = _read("<Q", buf, pos)
    n_kv, pos = _read("<Q", buf, pos)
    g = GGUF(version=version)
    offsets = []
    for _ in range(n_kv):
        key, pos = _read_str(buf, pos)
        vtype, pos = _read("<I", buf, pos)
        if vtype == ARRAY:
            etype, pos = _read("<I", buf, pos)
            n, pos = _read("<Q", buf, pos)
            items = []
            for _ in range(n):
                x, pos = _read_value(buf, pos, etype)
                items.append(x)
            g.kv.append((key, Value(ARRAY, items, etype)))
        else:
            x, pos = _read_value(buf, pos, vtype)
            g.kv.append((key, Value(vtype, x)))
    for _ in range(n_tensors):
        name, pos = _read_str(buf, pos)
        n_dims, pos = _read("<I", buf, pos)
        dims = []
        for _ in range(n_dims):
            d, pos = _read("<Q", buf, pos)
            dims.append(d)
        ttype, pos = _read("<I", buf, pos)
        off, pos = _read("<Q", buf, pos)
        g.tensors.append(TensorInfo(name, dims, ttype))
        offsets.append(off)
    al = g.get("general.alignment")
    g.alignment = int(al.data) if al is not None and al.type in INT_TYPES and int(al.data) > 0 else 32
    pos = (pos + g.alignment - 1) // g.alignment * g.alignment
    data = bytes(buf[pos:])
    end = 0
    for t, off in zip(g.tensors, offsets):
        n = tensor_nbytes(t.ggml_type, t.dims) or 0
        t.body = data[off:off + n]
        end = max(end, off + n + (-n) % g.alignment)
    g.tail = data[end:]
    return g


def _pack_value(out: bytearray, vtype: int, x) -> None:
    if vtype in SCALAR_FORMATS:
        fmt = SCALAR_FORMATS[vtype]
        if vtype in INT_TYPES:
            lo, hi = INT_RANGES[vtype]
            x = int(x)
            x = lo + (x - lo) % (hi - lo + 1)  # wrap into the type (the mutation decides the bits)
        elif vtype == BOOL:
            x = bool(x)
        out += struct.pack(fmt, x)
    elif vtype == STRING:
        b = x if isinstance(x, bytes) else str(x).encode()
        out += struct.pack("<Q", len(b)) + b
    else:
        raise ValueError(f"cannot pack value type {vtype}")


def serialize(g: GGUF) -> bytes:
    out = bytearray(b"GGUF")
    out += struct.pack("<I", g.version)
    out += struct.pack("<Q", len(g.tensors) if g.n_tensors_override is None else g.n_tensors_override)
    out += struct.pack("<Q", len(g.kv) if g.n_kv_override is None else g.n_kv_override)
    for key, v in g.kv:
        _pack_value(out, STRING, key)
        out += struct.pack("<I", v.type)
        if v.type == ARRAY:
            out += struct.pack("<I", v.elem_type) + struct.pack("<Q", len(v.data))
            for x in v.data:
                _pack_value(out, v.elem_type, x)
        else:
            _pack_value(out, v.type, v.data)
    data = bytearray()
    for t in g.tensors:
        offset = len(data)
        data += t.body + b"\0" * ((-len(t.body)) % g.alignment)
        _pack_value(out, STRING, t.name)
        out += struct.pack("<I", len(t.dims))
        for d in t.dims:
            out += struct.pack("<Q", d % 2**64)
        off = offset if t.offset_override is None else t.offset_override
        out += struct.pack("<I", t.ggml_type % 2**32) + struct.pack("<Q", off % 2**64)
    pad = (-len(out)) % g.alignment
    out += b"\0" * pad
    out += data + g.tail
    return bytes(out)


def type_size(ggml_type: int):
    """(block size, bytes per block) of a ggml type id, or None for ids ggml does not know."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
    try:
        return GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        return None


def tensor_nbytes(ggml_type: int, dims: list[int]):
    ts = type_size(ggml_type)
    if ts is None or not dims:
        return None
    block, size = ts
    if dims[0] % block:
        return None
    n = dims[0] // block * size
    for d in dims[1:]:
        n *= d
    return n


def fit_body(t: TensorInfo, limit: int = 64 * 2**20) -> None:
    """Make a tensor's data the size its (possibly changed) type and dims say, repeating or
    cutting what it had, so the file stays well-formed and the loader's deeper checks run.
    Sizes that cannot be computed or exceed ``limit`` keep the old data (the file then lies)."""
    n = tensor_nbytes(t.ggml_type, t.dims)
    if n is None or n > limit:
        return
    src = t.body or b"\x3c"
    t.body = (src * (n // len(src) + 1))[:n]
