"""Byte-level BPE tokenizers rebuilt from the vocabulary stored in a GGUF file.

llama.cpp stores a model's tokenizer as metadata (``tokenizer.ggml.*``): the token strings, their
types, the BPE merges, the special token ids and the name of the pre-tokenizer (a regex that
splits text into words before BPE runs).  This module turns that metadata into a
``tokenizers.Tokenizer`` that produces the same ids as llama.cpp for the vocabularies statekv
supports (``tokenizer.ggml.model == "gpt2"`` with ``tokenizer.ggml.pre == "qwen2"``: Qwen2,
Qwen2.5, Qwen3, Qwen3-VL, InternVL3 and Eagle2.5 all use it).

``gguf.GGUFReader`` needs several seconds to open a file with a 150k-token vocabulary, because it
maps every string separately; :func:`read_gguf_kv` parses the key/value section directly and is
what this module uses.  Nothing here imports the compiled extension.
"""
from __future__ import annotations

import os
import struct
from typing import Any, Iterable

__all__ = [
    "TokenType",
    "PRE_TOKENIZER_REGEX",
    "SUPPORTED_TOKENIZER_MODELS",
    "read_gguf_kv",
    "read_gguf_tensor_infos",
    "read_tokenizer_metadata",
    "build_tokenizer",
    "tokenizer_from_gguf",
]


class TokenType:
    """Values of ``tokenizer.ggml.token_type`` (gguf-py's ``TokenType``)."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


# Pre-tokenizer regexes by ``tokenizer.ggml.pre`` value.  "qwen2" is the split used by the
# Qwen2/Qwen2.5/Qwen3 tokenizer.json and by llama.cpp's LLAMA_VOCAB_PRE_TYPE_QWEN2 (llama.cpp
# spells the case-insensitive contractions out as character classes; the languages agree).
PRE_TOKENIZER_REGEX: dict[str, str] = {
    "qwen2": (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
        r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
}

SUPPORTED_TOKENIZER_MODELS = ("gpt2",)

# --------------------------------------------------------------------------------------------
# Minimal GGUF key/value reader
# --------------------------------------------------------------------------------------------

_GGUF_MAGIC = b"GGUF"
# GGUFValueType -> struct format of a scalar
_SCALAR_FMT = {
    0: "B",   # UINT8
    1: "b",   # INT8
    2: "H",   # UINT16
    3: "h",   # INT16
    4: "I",   # UINT32
    5: "i",   # INT32
    6: "f",   # FLOAT32
    7: "?",   # BOOL
    10: "Q",  # UINT64
    11: "q",  # INT64
    12: "d",  # FLOAT64
}
_T_STRING = 8
_T_ARRAY = 9


class _Cursor:
    """Sequential reader over a memory-mapped GGUF file."""

    __slots__ = ("buf", "pos", "path", "endian", "_u64")

    def __init__(self, buf: Any, path: str, endian: str):
        self.buf = buf  # an mmap: slicing gives bytes, struct.unpack_from reads it in place
        self.pos = 0
        self.path = path
        self.endian = endian
        self._u64 = struct.Struct(endian + "Q")

    def _truncated(self, what: str):
        return ValueError(f"{self.path}: truncated or corrupt GGUF file ({what} at byte {self.pos})")

    def unpack(self, fmt: str):
        fmt = self.endian + fmt
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise self._truncated("read past the end")
        vals = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return vals

    def string(self) -> str:
        (n,) = self.unpack("Q")
        end = self.pos + n
        if end > len(self.buf):
            raise self._truncated(f"string of {n} bytes")
        s = self.buf[self.pos:end].decode("utf-8", errors="surrogateescape")
        self.pos = end
        return s

    def strings(self, count: int) -> list[str]:
        buf, pos, size, u64 = self.buf, self.pos, len(self.buf), self._u64.unpack_from
        out = []
        append = out.append
        try:
            for _ in range(count):
                (n,) = u64(buf, pos)
                pos += 8
                end = pos + n
                if end > size:
                    raise IndexError
                append(buf[pos:end].decode("utf-8", errors="surrogateescape"))
                pos = end
        except (IndexError, struct.error):
            self.pos = pos
            raise self._truncated(f"string array of {count} entries") from None
        self.pos = pos
        return out

    def value(self, vtype: int):
        if vtype == _T_STRING:
            return self.string()
        if vtype == _T_ARRAY:
            (etype, count) = self.unpack("IQ")
            if etype == _T_STRING:
                return self.strings(count)
            if etype == _T_ARRAY:
                return [self.value(_T_ARRAY) for _ in range(count)]
            fmt = _SCALAR_FMT.get(etype)
            if fmt is None:
                raise ValueError(f"{self.path}: unknown GGUF array element type {etype}")
            return list(self.unpack(f"{count}{fmt}"))
        fmt = _SCALAR_FMT.get(vtype)
        if fmt is None:
            raise ValueError(f"{self.path}: unknown GGUF value type {vtype}")
        return self.unpack(fmt)[0]


def _open_gguf(path: str | os.PathLike) -> tuple[_Cursor, int, int, Any]:
    import mmap

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such GGUF file")
    with open(path, "rb") as f:
        try:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # empty file
            raise ValueError(f"{path}: not a GGUF file (empty)") from None
    magic = mm[:4]
    if magic != _GGUF_MAGIC or len(mm) < 24:
        mm.close()
        raise ValueError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF')")
    endian = "<"
    (version,) = struct.unpack_from("<I", mm, 4)
    if version & 0xFFFF == 0 and version != 0:  # byte-swapped version: big-endian file
        endian = ">"
        (version,) = struct.unpack_from(">I", mm, 4)
    if version not in (2, 3):
        mm.close()
        raise ValueError(f"{path}: unsupported GGUF version {version} (expected 2 or 3)")
    cur = _Cursor(mm, path, endian)
    cur.pos = 8
    n_tensors, n_kv = cur.unpack("QQ")
    return cur, n_tensors, n_kv, mm


def _read_kv_section(cur: _Cursor, n_kv: int) -> dict[str, Any]:
    kv: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        (vtype,) = cur.unpack("I")
        kv[key] = cur.value(vtype)
    return kv


def read_gguf_kv(path: str | os.PathLike) -> dict[str, Any]:
    """All key/value metadata of a GGUF file as a dict of Python values.

    Strings come back as ``str``, numbers as ``int``/``float``/``bool``, arrays as lists.  The
    ``GGUF.*`` pseudo-keys of ``gguf.GGUFReader`` are not included.  Raises ``FileNotFoundError``
    or ``ValueError`` naming the file if it is missing or not a GGUF file.
    """
    cur, _, n_kv, mm = _open_gguf(path)
    try:
        return _read_kv_section(cur, n_kv)
    finally:
        mm.close()


def read_gguf_tensor_infos(path: str | os.PathLike) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """Key/values, tensor infos and the data offset of a GGUF file.

    Each tensor info is ``{"name", "shape" (ggml order: ne[0] first), "type" (ggml type id),
    "offset" (absolute, from the start of the file)}``.
    """
    cur, n_tensors, n_kv, mm = _open_gguf(path)
    try:
        kv = _read_kv_section(cur, n_kv)
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            (n_dims,) = cur.unpack("I")
            shape = list(cur.unpack(f"{n_dims}Q"))
            (ttype, offset) = cur.unpack("IQ")
            infos.append({"name": name, "shape": shape, "type": ttype, "offset": offset})
        align = int(kv.get("general.alignment", 32))
        data_start = (cur.pos + align - 1) // align * align
        for info in infos:
            info["offset"] += data_start
        return kv, infos, data_start
    finally:
        mm.close()


# --------------------------------------------------------------------------------------------
# Tokenizer metadata
# --------------------------------------------------------------------------------------------

_SPECIAL_ID_KEYS = {
    "bos_token_id": "tokenizer.ggml.bos_token_id",
    "eos_token_id": "tokenizer.ggml.eos_token_id",
    "eot_token_id": "tokenizer.ggml.eot_token_id",
    "eom_token_id": "tokenizer.ggml.eom_token_id",
    "unk_token_id": "tokenizer.ggml.unknown_token_id",
    "sep_token_id": "tokenizer.ggml.seperator_token_id",  # sic: llama.cpp's key spelling
    "pad_token_id": "tokenizer.ggml.padding_token_id",
    "cls_token_id": "tokenizer.ggml.cls_token_id",
    "mask_token_id": "tokenizer.ggml.mask_token_id",
}
_FLAG_KEYS = {
    "add_bos_token": "tokenizer.ggml.add_bos_token",
    "add_eos_token": "tokenizer.ggml.add_eos_token",
    "add_sep_token": "tokenizer.ggml.add_sep_token",
}


def _kv_from_reader(reader: Any) -> dict[str, Any]:
    """Key/values of a ``gguf.GGUFReader`` restricted to what this module needs."""
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if not (key.startswith("tokenizer.") or key.startswith("general.")):
            continue
        out[key] = field.contents()
    return out


def read_tokenizer_metadata(path_or_reader: Any) -> dict[str, Any]:
    """The tokenizer metadata of a GGUF file (a path or a ``gguf.GGUFReader``).

    Returns a dict with ``path``, ``model``, ``pre``, ``tokens`` (list[str]), ``token_type``
    (list[int]), ``merges`` (list[str], "a b"), the special ids ``bos_token_id``,
    ``eos_token_id``, ``pad_token_id``, ``unk_token_id``, ``eot_token_id``, ... (``None`` when
    absent), the flags ``add_bos_token``/``add_eos_token``/``add_sep_token`` (``None`` when
    absent) and ``chat_template`` (``None`` when absent).  It does not check that the model/pre
    are supported; :func:`tokenizer_from_gguf` does.
    """
    if hasattr(path_or_reader, "fields"):
        path = str(getattr(getattr(path_or_reader, "data", None), "filename", None) or "<GGUFReader>")
        kv = _kv_from_reader(path_or_reader)
    else:
        path = os.fspath(path_or_reader)
        kv = read_gguf_kv(path)

    if "tokenizer.ggml.model" not in kv:
        raise ValueError(f"{path}: no tokenizer in this GGUF file (key 'tokenizer.ggml.model' missing)")
    tokens = kv.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ValueError(f"{path}: key 'tokenizer.ggml.tokens' missing or empty")
    token_type = kv.get("tokenizer.ggml.token_type")
    if token_type is None:
        token_type = [TokenType.NORMAL] * len(tokens)
    token_type = [int(t) for t in token_type]
    if len(token_type) != len(tokens):
        raise ValueError(f"{path}: 'tokenizer.ggml.token_type' has {len(token_type)} entries, "
                         f"'tokenizer.ggml.tokens' has {len(tokens)}")
    meta: dict[str, Any] = {
        "path": path,
        "model": kv["tokenizer.ggml.model"],
        "pre": kv.get("tokenizer.ggml.pre"),
        "tokens": list(tokens),
        "token_type": token_type,
        "merges": list(kv.get("tokenizer.ggml.merges") or []),
        "chat_template": kv.get("tokenizer.chat_template"),
    }
    for name, key in _SPECIAL_ID_KEYS.items():
        v = kv.get(key)
        meta[name] = None if v is None else int(v)
    for name, key in _FLAG_KEYS.items():
        v = kv.get(key)
        meta[name] = None if v is None else bool(v)
    return meta


# --------------------------------------------------------------------------------------------
# Building the tokenizer
# --------------------------------------------------------------------------------------------


def _check_supported(model: str | None, pre: str | None, where: str) -> None:
    if model not in SUPPORTED_TOKENIZER_MODELS:
        raise ValueError(
            f"{where}: tokenizer.ggml.model = {model!r} is not supported "
            f"(expected one of {list(SUPPORTED_TOKENIZER_MODELS)}: byte-level BPE)")
    if pre not in PRE_TOKENIZER_REGEX:
        raise ValueError(
            f"{where}: tokenizer.ggml.pre = {pre!r} is not supported "
            f"(expected one of {sorted(PRE_TOKENIZER_REGEX)})")


def build_tokenizer(
    tokens: list[str],
    token_type: list[int],
    merges: Iterable[str],
    *,
    pre: str = "qwen2",
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    add_bos_token: bool = False,
    add_eos_token: bool = False,
    where: str = "<tokenizer>",
):
    """A ``tokenizers.Tokenizer`` (byte-level BPE) from GGUF-style vocabulary lists.

    Every token keeps its index as id.  Control tokens (type 3) become special added tokens and
    user-defined tokens (type 4) non-special added tokens, so both are matched whole in the raw
    text, as llama.cpp does (control tokens are always parsed, like llama.cpp with
    ``parse_special``; encode with ``split_special_tokens=True`` for the other behaviour).
    Unused tokens (type 5, llama.cpp's ``[PAD{i}]`` fillers) stay plain vocabulary entries
    that BPE never produces.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    _check_supported("gpt2", pre, where)
    if len(token_type) != len(tokens):
        raise ValueError(f"{where}: {len(token_type)} token types for {len(tokens)} tokens")

    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        if tok in vocab:
            raise ValueError(f"{where}: token {tok!r} appears twice (ids {vocab[tok]} and {i})")
        vocab[tok] = i

    merge_pairs = []
    for n, m in enumerate(merges):
        parts = m.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{where}: malformed merge #{n}: {m!r} (expected 'left right')")
        merge_pairs.append((parts[0], parts[1]))

    model = BPE(
        vocab=vocab,
        merges=merge_pairs,
        dropout=None,
        unk_token=None,
        continuing_subword_prefix="",
        end_of_word_suffix="",
        fuse_unk=False,
        byte_fallback=False,
        ignore_merges=False,
    )
    tok = Tokenizer(model)
    # The HF tokenizers these vocabularies come from normalize to NFC; llama.cpp's test vectors
    # for them were produced by those tokenizers.
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRE_TOKENIZER_REGEX[pre]), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()

    added = []
    for i, (t, tt) in enumerate(zip(tokens, token_type)):
        if tt == TokenType.CONTROL:
            added.append(AddedToken(t, special=True, normalized=False))
        elif tt == TokenType.USER_DEFINED:
            added.append(AddedToken(t, special=False, normalized=False))
    if added:
        tok.add_tokens(added)
        # add_tokens keeps the model's id for content already in the vocabulary
        for a in added:
            got = tok.token_to_id(a.content)
            if got != vocab[a.content]:  # pragma: no cover - a tokenizers behaviour change
                raise RuntimeError(f"{where}: added token {a.content!r} got id {got}, expected {vocab[a.content]}")

    single = "$A"
    specials = []
    if add_bos_token and bos_token_id is not None:
        single = f"{tokens[bos_token_id]}:0 " + single
        specials.append((tokens[bos_token_id], bos_token_id))
    if add_eos_token and eos_token_id is not None:
        single = single + f" {tokens[eos_token_id]}:0"
        specials.append((tokens[eos_token_id], eos_token_id))
    if specials:
        tok.post_processor = processors.TemplateProcessing(
            single=single, pair=single + " " + single.replace("$A", "$B").replace(":0", ":1"),
            special_tokens=list(dict.fromkeys(specials)))
    else:
        tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    return tok


def tokenizer_from_gguf(path_or_reader: Any):
    """A ``tokenizers.Tokenizer`` equivalent to llama.cpp's tokenizer for a GGUF file.

    ``path_or_reader`` is a path or a ``gguf.GGUFReader``.  Raises ``ValueError`` naming the file
    and the key when ``tokenizer.ggml.model`` or ``tokenizer.ggml.pre`` is not supported.
    BOS/EOS are added by the post-processor only if the file says so
    (``tokenizer.ggml.add_bos_token``; false or absent for the Qwen vocabularies).
    """
    meta = read_tokenizer_metadata(path_or_reader)
    _check_supported(meta["model"], meta["pre"], meta["path"])
    return build_tokenizer(
        meta["tokens"], meta["token_type"], meta["merges"],
        pre=meta["pre"],
        bos_token_id=meta["bos_token_id"], eos_token_id=meta["eos_token_id"],
        add_bos_token=bool(meta["add_bos_token"]), add_eos_token=bool(meta["add_eos_token"]),
        where=meta["path"],
    )
