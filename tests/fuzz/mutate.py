"""Structure-aware mutations of GGUF-format files (models, mmproj files, session and chat files).

Every mutation is a deterministic function of (seed bytes, rng): a case is reproduced from its
kind, its seed file and its case number. Most mutations keep the file well-formed for ggml's own
parser (that is where crashes hide: random bit flips and truncations are refused by gguf.h), by
editing one field of the structure: a metadata value to an edge value, a metadata type, an array's
element type or length, a tensor's ggml type, shape, name or offset, the tensor data (NaN, inf),
the header counts; plus raw bit flips and truncations for completeness. Session files get the
same and, with the payload checksum recomputed, edits of their payload and JSON app data.
"""
from __future__ import annotations

import json
import math
import random
import struct

from . import gguf_edit as ge

INT_EDGES = [0, 1, -1, 2, 3, 7, 255, 256, 65535, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1,
             -2**31, -2**63, 2**64 - 1]
FLOAT_EDGES = [0.0, -0.0, -1.0, 1.0, -1e-6, 1e-45, 1e38, -1e38, 3.4e38, math.inf, -math.inf, math.nan, 1e-30, 2.0**24]
STRING_EDGES = [b"", b"\xff\xfe\xfa", b"qwen2", b"qwen3", b"qwen3vl", b"clip", b"internvl", b"qwen3vl_merger",
                b"statekv", b"none", b"yarn", b"\x00", b"x" * 5000, b"caf\xc3", b"\xed\xa0\x80"]


def int_variants(x: int):
    return INT_EDGES + [x + 1, x - 1, x * 2, x // 2, -x, x + 2**32, x * 1000]


def mutate_value(v: ge.Value, rng: random.Random) -> ge.Value:
    v = v.clone()
    if v.type in ge.INT_TYPES:
        choice = rng.random()
        if choice < 0.7:
            v.data = rng.choice(int_variants(int(v.data)))
        else:  # another integer width (u64 where u32 was, i8 ...), same or an edge value
            v.type = rng.choice(ge.INT_TYPES)
            v.data = rng.choice([int(v.data)] + INT_EDGES)
    elif v.type in (ge.F32, ge.F64):
        v.data = rng.choice(FLOAT_EDGES + [v.data * 1e10, -v.data, v.data / 1e10])
        if rng.random() < 0.2:
            v.type = ge.F64 if v.type == ge.F32 else ge.F32
    elif v.type == ge.BOOL:
        v.data = not v.data
    elif v.type == ge.STRING:
        r = rng.random()
        if r < 0.5:
            v.data = rng.choice(STRING_EDGES)
        elif r < 0.8 and v.data:
            b = bytearray(v.data)
            b[rng.randrange(len(b))] = rng.randrange(256)
            v.data = bytes(b)
        else:
            v.data = v.data + rng.choice([b"\x80", b"\xc0", b"!", b"\xf4\x90\x80\x80"])
    elif v.type == ge.ARRAY:
        r = rng.random()
        items = list(v.data)
        if r < 0.35 and items:
            i = rng.randrange(len(items))
            e = mutate_value(ge.Value(v.elem_type, items[i]), rng)
            if e.type == v.elem_type:
                items[i] = e.data
        elif r < 0.5:
            items = items[:rng.randrange(len(items) + 1)]
        elif r < 0.6:
            items = items + items[: rng.randrange(1, 4)] if items else [0]
        elif r < 0.8:  # another element type: strings where numbers are expected, and back
            new = rng.choice([ge.STRING, ge.I32, ge.U64, ge.F32, ge.BOOL, ge.I8, ge.I64])
            items = [_convert(x, v.elem_type, new) for x in items]
            v.elem_type = new
        else:
            items = []
        v.data = items
    return v


def _convert(x, old: int, new: int):
    if new == ge.STRING:
        return str(x).encode() if not isinstance(x, bytes) else x
    if new == ge.BOOL:
        return bool(x) if not isinstance(x, bytes) else bool(len(x))
    if new in (ge.F32, ge.F64):
        return float(x) if not isinstance(x, bytes) else 1.0
    return int(x) if not isinstance(x, (bytes, float)) else (len(x) if isinstance(x, bytes) else int(x) if math.isfinite(x) else 0)


def other_type_value(v: ge.Value, rng: random.Random) -> ge.Value:
    """A value of another GGUF type in place of v (a string where a number is expected, ...)."""
    t = rng.choice([ge.STRING, ge.U32, ge.I64, ge.F32, ge.BOOL, ge.ARRAY, ge.F64, ge.U8])
    if t == ge.STRING:
        return ge.Value(t, rng.choice(STRING_EDGES))
    if t == ge.ARRAY:
        et = rng.choice([ge.STRING, ge.I32, ge.F32, ge.U64])
        n = rng.choice([0, 1, 3, 4, 5])
        return ge.Value(t, [_convert(rng.choice(INT_EDGES[:8]), ge.I64, et) for _ in range(n)], et)
    if t in (ge.F32, ge.F64):
        return ge.Value(t, rng.choice(FLOAT_EDGES))
    if t == ge.BOOL:
        return ge.Value(t, rng.random() < 0.5)
    return ge.Value(t, rng.choice(INT_EDGES))


# ggml type ids: every known type (integer, float and quantized), plus unknown ids.
GGML_TYPE_IDS = list(range(0, 42)) + [2**31, 2**32 - 1]


def mutate_tensor(g: ge.GGUF, rng: random.Random) -> str:
    if not g.tensors:
        return "no tensors"
    t = rng.choice(g.tensors)
    r = rng.random()
    if r < 0.35:
        old = t.ggml_type
        t.ggml_type = rng.choice(GGML_TYPE_IDS)
        if rng.random() < 0.8:
            ge.fit_body(t)
        return f"type {t.name!r} {old}->{t.ggml_type}"
    if r < 0.6:
        dims = list(t.dims)
        how = rng.random()
        if how < 0.3 and dims:
            i = rng.randrange(len(dims))
            dims[i] = rng.choice([0, 1, dims[i] + 1, dims[i] * 2, max(1, dims[i] // 2), 2**31, 2**62, 3])
        elif how < 0.5:
            dims = dims[::-1]
        elif how < 0.7:
            dims = dims + [rng.choice([1, 2])]
        elif how < 0.85 and len(dims) > 1:
            dims = dims[:-1]
        else:
            dims = [d for d in dims] + [1] * rng.randrange(0, 4)
        t.dims = dims
        if rng.random() < 0.8:
            ge.fit_body(t)
        return f"dims {t.name!r} -> {dims}"
    if r < 0.7:
        names = [x.name for x in g.tensors]
        name = t.name.decode(errors="replace")
        choices = [name.replace("blk.0.", "blk.9."), name.replace("blk.1.", "blk.0."), name + ".x", "",
                   name.replace("weight", "bias"), name.upper(), "blk.2." + name.split(".", 2)[-1],
                   "v.blk.5.ln1.weight", "blk.x.attn_norm.weight", "blk.99999999.attn_norm.weight"]
        new = rng.choice(choices).encode()
        if new in names:  # gguf refuses duplicates: keep it interesting by swapping instead
            other = next(x for x in g.tensors if x.name == new)
            other.name, t.name = t.name, other.name
            return f"swap names {t.name!r} {other.name!r}"
        old = t.name
        t.name = new
        return f"rename {old!r} -> {new!r}"
    if r < 0.78:
        g.tensors.remove(t)
        return f"drop {t.name!r}"
    if r < 0.85:
        t.offset_override = rng.choice([0, 1, 31, 32, 2**20, 2**40, 2**63, 2**64 - 32])
        return f"offset {t.name!r} {t.offset_override}"
    # data: NaN / inf / huge values in a float tensor, random bytes in any
    body = bytearray(t.body)
    if not body:
        return "empty body"
    if t.ggml_type == 0 and len(body) >= 4:
        val = rng.choice([math.nan, math.inf, -math.inf, 3e38, 1e30])
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(len(body) // 4) * 4
            body[i:i + 4] = struct.pack("<f", val)
    elif t.ggml_type == 1 and len(body) >= 2:
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(len(body) // 2) * 2
            body[i:i + 2] = rng.choice([b"\x00\x7c", b"\x00\xfc", b"\x01\x7e", b"\xff\x7b"])  # inf, -inf, nan, max
    else:
        for _ in range(rng.randrange(1, 8)):
            body[rng.randrange(len(body))] = rng.randrange(256)
    t.body = bytes(body)
    return f"data {t.name!r}"


def mutate_kv(g: ge.GGUF, rng: random.Random) -> str:
    if not g.kv:
        return "no kv"
    i = rng.randrange(len(g.kv))
    key, v = g.kv[i]
    r = rng.random()
    if r < 0.6:
        g.kv[i] = (key, mutate_value(v, rng))
        return f"value {key!r}"
    if r < 0.8:
        g.kv[i] = (key, other_type_value(v, rng))
        return f"type of {key!r}"
    if r < 0.9:
        del g.kv[i]
        return f"drop {key!r}"
    # rename (another known key, or a near miss)
    keys = [k for k, _ in g.kv]
    new = rng.choice(keys) + b"x" if rng.random() < 0.5 else key[:-1] + b"Q"
    if new in keys:
        return "rename noop"
    g.kv[i] = (new, v)
    return f"rename {key!r}"


def mutate_header(g: ge.GGUF, rng: random.Random) -> str:
    r = rng.random()
    if r < 0.3:
        g.version = rng.choice([0, 1, 2, 4, 2**31])
        return f"version {g.version}"
    if r < 0.6:
        g.n_tensors_override = rng.choice([0, len(g.tensors) + 1, max(0, len(g.tensors) - 1), 2**32, 2**63])
        return f"n_tensors {g.n_tensors_override}"
    if r < 0.9:
        g.n_kv_override = rng.choice([0, len(g.kv) + 1, max(0, len(g.kv) - 1), 2**40])
        return f"n_kv {g.n_kv_override}"
    g.set("general.alignment", ge.Value(ge.U32, rng.choice([0, 1, 3, 7, 64, 2**31])))
    return "alignment"


def raw_mutation(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    b = bytearray(data)
    if rng.random() < 0.5:
        n = rng.randrange(len(b))
        return bytes(b[:n]), f"truncate {n}"
    for _ in range(rng.randrange(1, 16)):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b), "bit flips"


def mutate_gguf(data: bytes, rng: random.Random, extra=None) -> tuple[bytes, list[str]]:
    """1-3 structural mutations of a GGUF file (or a raw one, 8% of cases)."""
    if rng.random() < 0.08:
        out, what = raw_mutation(data, rng)
        return out, [what]
    g = ge.parse(data)
    log = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        r = rng.random()
        if extra is not None and r < 0.3:
            log.append(extra(g, rng))
        elif r < 0.6:
            log.append(mutate_kv(g, rng))
        elif r < 0.95:
            log.append(mutate_tensor(g, rng))
        else:
            log.append(mutate_header(g, rng))
    return ge.serialize(g), log


# ---- session and chat files -----------------------------------------------------------------

def payload_checksum(g: ge.GGUF) -> int:
    """statekv.payload.checksum as the C++ side computes it (cpp/src/session_state.cpp)."""
    mask = 2**64 - 1

    def mix(h, w):
        h = ((h ^ w) * 0x9E3779B97F4A7C15) & mask
        return h ^ (h >> 29)

    import numpy as np
    h = 0x6a09e667f3bcc909
    data = b"".join(t.body for t in g.tensors)
    n_words = len(data) // 8
    words = np.frombuffer(data[:n_words * 8], dtype="<u8")
    for w in words.tolist():
        h = mix(h, w)
    rest = data[n_words * 8:]
    if rest:
        h = mix(h, int.from_bytes(rest, "little"))
    return mix(h, len(data))


def reseal(g: ge.GGUF) -> None:
    v = g.get("statekv.payload.checksum")
    if v is not None and v.type == ge.U64:
        v.data = payload_checksum(g)


def mutate_json(text: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A JSON document with one field dropped, retyped or set to an edge value."""
    try:
        doc = json.loads(text.decode())
    except (ValueError, UnicodeDecodeError):
        return text + b"}", "json garbage"
    paths = []

    def walk(x, path):
        paths.append(path)
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, path + [k])
        elif isinstance(x, list):
            for i, v in enumerate(x):
                walk(v, path + [i])
    walk(doc, [])
    path = rng.choice(paths)
    edge = rng.choice([None, -1, 0, 2**31, 2**63, 1e308, "x", "", [], {}, [1, 2], True, "NaN", -1.5,
                       {"index": 0}, [{"index": "a"}], [[1, 2]]])
    if not path:
        doc = edge
    else:
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if rng.random() < 0.3 and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = edge
    return json.dumps(doc, allow_nan=True).encode(), f"json {path}"


def session_extra(g: ge.GGUF, rng: random.Random) -> str:
    """Session-specific edits that keep the checksum valid, so the header checks are reached:
    counts and positions, the chunk layout, kept counts, option values, payload values."""
    r = rng.random()
    if r < 0.45:
        keys = [k for k, _ in g.kv if k.startswith(b"statekv.")]
        key = rng.choice(keys)
        v = g.get(key.decode())
        g.set(key.decode(), mutate_value(v, rng) if rng.random() < 0.8 else other_type_value(v, rng))
        what = f"session field {key!r}"
    elif r < 0.65:
        app = g.get("statekv.app_data")
        if app is None or app.type != ge.STRING:
            return "no app data"
        app.data, what = mutate_json(app.data, rng)
    else:
        what = mutate_tensor(g, rng)
    if rng.random() < 0.9:
        reseal(g)
        what += " (resealed)"
    return what
