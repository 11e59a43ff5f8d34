"""The tokenizer of a Hugging Face checkpoint (byte-level BPE, ``tokenizer.json``) as llama.cpp's
converter writes it into ``tokenizer.ggml.*``."""
from __future__ import annotations

import json
from pathlib import Path

from .common import ConversionError, _gguf

__all__ = ["detect_pre_tokenizer", "merges_from_hf", "vocab_from_hf", "read_tokenizer_json",
           "has_bytelevel_post_processor"]

_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _is_split(node: dict, regex: str) -> bool:
    return (node.get("type") == "Split" and node.get("pattern", {}).get("Regex") == regex
            and node.get("behavior") == "Isolated" and not node.get("invert", False))


def _is_bytelevel_noregex(node: dict) -> bool:
    return (node.get("type") == "ByteLevel" and not node.get("add_prefix_space", False)
            and node.get("use_regex", True) is False)


def detect_pre_tokenizer(tokenizer_json: dict, where: str = "tokenizer.json") -> str:
    """The ``tokenizer.ggml.pre`` value for an HF ``tokenizer.json`` (parsed), or raise.

    llama.cpp identifies pre-tokenizers by hashing the ids of a probe text; statekv looks at the
    pre-tokenizer itself: a byte-level BPE whose words are split by the Qwen2 regex (isolated)
    and then byte-mapped without a second regex is ``qwen2``.  Anything else raises
    :class:`ConversionError` naming the file.
    """
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE":
        raise ConversionError(f"{where}: tokenizer model {model.get('type')!r} is not supported "
                              "(expected a byte-level 'BPE' model)")
    pt = tokenizer_json.get("pre_tokenizer") or {}
    seq = pt.get("pretokenizers") if pt.get("type") == "Sequence" else None
    if seq and len(seq) == 2 and _is_split(seq[0], _QWEN2_SPLIT) and _is_bytelevel_noregex(seq[1]):
        norm = tokenizer_json.get("normalizer")
        if norm is None or norm.get("type") == "NFC":
            return "qwen2"
    summary = json.dumps(pt)[:300]
    raise ConversionError(
        f"{where}: unrecognized pre-tokenizer {summary}; supported: 'qwen2' (Sequence[Split(Qwen2 "
        "regex, Isolated), ByteLevel(use_regex=false)], as in the Qwen2/Qwen2.5/Qwen3 tokenizers)")


def merges_from_hf(tokenizer_json: dict, where: Path | str = "tokenizer.json") -> list[str]:
    """``tokenizer.ggml.merges``: "left right" strings (a space inside a part is stored as U+0120,
    as llama.cpp does for the pair format of tokenizers >= 0.20)."""
    merges = (tokenizer_json.get("model") or {}).get("merges") or []
    if not merges:
        raise ConversionError(f"{where}: no BPE merges found (expected model.merges)")
    if isinstance(merges[0], str):
        return list(merges)
    out = []
    for pair in merges:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise ConversionError(f"{where}: malformed merge {pair!r} (expected [left, right])")
        a, b = pair
        if " " in a or " " in b:
            a, b = a.replace(" ", "\u0120"), b.replace(" ", "\u0120")
        out.append(a + " " + b)
    return out


def has_bytelevel_post_processor(tokenizer_json: dict) -> bool:
    pp = tokenizer_json.get("post_processor") or {}
    return any(p.get("type") == "ByteLevel" for p in pp.get("processors", [pp]))


def _looks_special(token: str) -> bool:
    # Added tokens that llama.cpp's converter treats as control tokens even when not flagged special
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
            or (token.startswith("<unused") and token.endswith(">")))


def read_tokenizer_json(hf_dir: Path) -> dict:
    path = hf_dir / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (expected the Hugging Face fast tokenizer file "
                                "tokenizer.json next to config.json)")
    try:
        tj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(tj, dict) or not isinstance(tj.get("model"), dict):
        raise ConversionError(f"{path}: expected a tokenizers JSON object with a 'model'")
    return tj


def vocab_from_hf(hf_dir: Path, vocab_size: int | None,
                  tokenizer_json: dict | None = None) -> tuple[list[str], list[int], str]:
    """Token strings, token types and pre-tokenizer name for ``tokenizer.ggml.*``.

    Mirrors llama.cpp's converter: ids missing from the tokenizer up to the model's vocabulary
    size become ``[PAD{id}]`` with type UNUSED; added tokens are CONTROL when special (or when
    they look like ``<|...|>``) and USER_DEFINED otherwise; all other tokens are NORMAL.
    """
    gguf = _gguf()
    path = hf_dir / "tokenizer.json"
    tj = tokenizer_json if tokenizer_json is not None else read_tokenizer_json(hf_dir)
    pre = detect_pre_tokenizer(tj, str(path))

    id_to_tok: dict[int, str] = {}
    for tok, i in (tj["model"].get("vocab") or {}).items():
        id_to_tok[int(i)] = tok
    added: dict[int, dict] = {}
    for a in tj.get("added_tokens") or []:
        i = int(a["id"])
        id_to_tok[i] = a["content"]
        added[i] = a
    if not id_to_tok:
        raise ConversionError(f"{path}: empty vocabulary")
    n = vocab_size if vocab_size is not None else max(id_to_tok) + 1
    if max(id_to_tok) >= n:
        raise ConversionError(f"{path}: token id {max(id_to_tok)} does not fit the model's vocab_size {n} "
                              "(config.json)")
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n):
        tok = id_to_tok.get(i)
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
        elif i in added:
            if added[i].get("special", False) or _looks_special(tok):
                types.append(int(gguf.TokenType.CONTROL))
            else:
                tok = tok.replace("\u2581", " ")  # llama.cpp pre-normalizes user-defined spaces
                types.append(int(gguf.TokenType.USER_DEFINED))
            tokens.append(tok)
        else:
            tokens.append(tok)
            types.append(int(gguf.TokenType.NORMAL))
    return tokens, types, pre
