"""Byte-level BPE tokenizers rebuilt from the vocabulary stored in a GGUF file.

llama.cpp stores a model's tokenizer as metadata (``tokenizer.ggml.*``): the token strings, their
types, the BPE merges, the special token ids and the name of the pre-tokenizer (a regex that
splits text into words before BPE runs).  This module turns that metadata into a
``tokenizers.Tokenizer`` that produces the same ids as llama.cpp for the vocabularies statekv
supports (``tokenizer.ggml.model == "gpt2"`` with ``tokenizer.ggml.pre == "qwen2"``: Qwen2,
Qwen2.5, Qwen3, Qwen3-VL, InternVL3 and Eagle2.5 all use it).

The metadata is read with gguf-py (:mod:`statekv.gguf_io`).  Nothing here imports the compiled
extension.
"""
from __future__ import annotations

import os
from typing import Any, Iterable

from ..gguf_io import read_gguf_kv

__all__ = [
    "TokenType",
    "PRE_TOKENIZER_REGEX",
    "SUPPORTED_TOKENIZER_MODELS",
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

SUPPORTED_TOKENIZER_MODELS = ("gpt2", "llama")

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
    "add_space_prefix": "tokenizer.ggml.add_space_prefix",
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
        "scores": None if kv.get("tokenizer.ggml.scores") is None else [float(x) for x in kv["tokenizer.ggml.scores"]],
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
            f"(expected one of {list(SUPPORTED_TOKENIZER_MODELS)}: byte-level BPE or SentencePiece)")
    if model == "gpt2" and pre not in PRE_TOKENIZER_REGEX:
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
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
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

    add_vocabulary_specials(tok, tokens, token_type, vocab, where)
    if not set_bos_eos(tok, tokens, bos_token_id if add_bos_token else None,
                       eos_token_id if add_eos_token else None):
        tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    return tok


def add_vocabulary_specials(tok: Any, tokens: list[str], token_type: list[int], vocab: dict[str, int], where: str) -> None:
    """Control tokens (type 3) as special added tokens, user-defined ones (type 4) as non-special
    added tokens: both are matched whole in the raw text before the model runs, as llama.cpp
    partitions them out first."""
    from tokenizers import AddedToken

    added = []
    for t, tt in zip(tokens, token_type):
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


def set_bos_eos(tok: Any, tokens: list[str], bos_id: int | None, eos_id: int | None) -> bool:
    """A post-processor adding BOS before and/or EOS after each sequence; False if neither."""
    from tokenizers import processors

    single = "$A"
    specials = []
    if bos_id is not None:
        single = f"{tokens[bos_id]}:0 " + single
        specials.append((tokens[bos_id], bos_id))
    if eos_id is not None:
        single = single + f" {tokens[eos_id]}:0"
        specials.append((tokens[eos_id], eos_id))
    if not specials:
        return False
    tok.post_processor = processors.TemplateProcessing(
        single=single, pair=single + " " + single.replace("$A", "$B").replace(":0", ":1"),
        special_tokens=list(dict.fromkeys(specials)))
    return True


def tokenizer_from_gguf(path_or_reader: Any):
    """A ``tokenizers.Tokenizer`` equivalent to llama.cpp's tokenizer for a GGUF file.

    ``path_or_reader`` is a path or a ``gguf.GGUFReader``.  Raises ``ValueError`` naming the file
    and the key when ``tokenizer.ggml.model`` or ``tokenizer.ggml.pre`` is not supported.
    BOS/EOS are added by the post-processor only if the file says so
    (``tokenizer.ggml.add_bos_token``; false or absent for the Qwen vocabularies).
    """
    meta = read_tokenizer_metadata(path_or_reader)
    _check_supported(meta["model"], meta["pre"], meta["path"])
    if meta["model"] == "llama":
        from .spm import spm_tokenizer_from_metadata
        return spm_tokenizer_from_metadata(meta)
    return build_tokenizer(
        meta["tokens"], meta["token_type"], meta["merges"],
        pre=meta["pre"],
        bos_token_id=meta["bos_token_id"], eos_token_id=meta["eos_token_id"],
        add_bos_token=bool(meta["add_bos_token"]), add_eos_token=bool(meta["add_eos_token"]),
        where=meta["path"],
    )
