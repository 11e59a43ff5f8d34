"""SentencePiece vocabularies (``tokenizer.ggml.model = "llama"``: Gemma, Llama 2, Mistral...)
rebuilt as a ``tokenizers.Tokenizer`` that gives llama.cpp's ids.

llama.cpp tokenizes such a vocabulary in three stages (``llama-vocab.cpp``, ``llm_tokenizer_spm``):

1. control, user-defined and unknown tokens are cut out of the raw text whole (control tokens
   only when special tokens are parsed, which is what statekv always does);
2. each remaining piece gets a leading space when ``tokenizer.ggml.add_space_prefix`` is set, and
   its spaces become U+2581;
3. starting from single characters, the adjacent pair whose concatenation is a vocabulary token
   with the highest score is merged, again and again; symbols that are not tokens at the end
   become their UTF-8 bytes (``<0xNN>`` tokens).

Stage 3 is a BPE whose merge list is every split of every token into two tokens, ranked by the
score of the merged token, so ``tokenizers``' BPE with byte fallback runs it. Where transformers'
GGUF tokenizer differs from llama.cpp (it does not cut user-defined tokens made of spaces, such as
Gemma's two-space token, out of the raw text), this follows llama.cpp; tests/test_gemma3.py
holds ids produced by llama.cpp's ``llama-tokenize``.
"""
from __future__ import annotations

from typing import Any

from .tokenizer import TokenType, add_vocabulary_specials, set_bos_eos

__all__ = ["build_spm_tokenizer", "spm_tokenizer_from_metadata"]

_SPACE = "\u2581"


def build_spm_tokenizer(tokens: list[str], scores: list[float], token_type: list[int], *,
                        unk_token_id: int | None = None, bos_token_id: int | None = None,
                        eos_token_id: int | None = None, add_bos_token: bool = False,
                        add_eos_token: bool = False, add_space_prefix: bool = False,
                        where: str = "<tokenizer>"):
    """A ``tokenizers.Tokenizer`` for a SentencePiece vocabulary given as GGUF-style lists."""
    from tokenizers import Tokenizer, decoders, normalizers
    from tokenizers.models import BPE

    if len(scores) != len(tokens) or len(token_type) != len(tokens):
        raise ValueError(f"{where}: {len(tokens)} tokens but {len(scores)} scores and {len(token_type)} token types "
                         "(tokenizer.ggml.scores / tokenizer.ggml.token_type must have one entry per token)")
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)  # llama.cpp's text -> id map keeps the first id of a repeated text
    for i in range(256):
        if f"<0x{i:02X}>" not in vocab:
            raise ValueError(f"{where}: SentencePiece vocabulary without the byte token <0x{i:02X}> "
                             "(tokenizer.ggml.tokens): llama.cpp's byte fallback needs all 256")
    # Every split of a token into two tokens, the token with the higher score merged first (ties:
    # the lower id, as the order of the vocabulary).
    ranked = []
    for i, t in enumerate(tokens):
        if len(t) < 2 or vocab[t] != i:
            continue
        for k in range(1, len(t)):
            left, right = t[:k], t[k:]
            if left in vocab and right in vocab:
                ranked.append((-scores[i], i, k))
    ranked.sort()
    merges = [(tokens[i][:k], tokens[i][k:]) for _, i, k in ranked]
    unk = tokens[unk_token_id] if unk_token_id is not None and 0 <= unk_token_id < len(tokens) else None
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    steps = [normalizers.Replace(" ", _SPACE)]
    if add_space_prefix:
        steps.insert(0, normalizers.Prepend(" "))
    tok.normalizer = normalizers.Sequence(steps)
    tok.decoder = decoders.Sequence([decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
                                    + ([decoders.Strip(" ", 1, 0)] if add_space_prefix else []))
    # Unknown tokens are cut out of the text like control tokens (llama.cpp's special cache).
    types = [TokenType.CONTROL if tt == TokenType.UNKNOWN else tt for tt in token_type]
    add_vocabulary_specials(tok, tokens, types, vocab, where)
    set_bos_eos(tok, tokens, bos_token_id if add_bos_token else None, eos_token_id if add_eos_token else None)
    return tok


def spm_tokenizer_from_metadata(meta: dict[str, Any]):
    """From :func:`statekv.text.tokenizer.read_tokenizer_metadata`'s dict; ValueError naming the
    file when the scores are missing."""
    if meta.get("scores") is None:
        raise ValueError(f"{meta['path']}: SentencePiece vocabulary (tokenizer.ggml.model = 'llama') without "
                         "'tokenizer.ggml.scores': the merge order comes from the scores")
    # llama.cpp's defaults for a SentencePiece vocabulary: a space prefix and BOS, unless the file
    # says otherwise.
    prefix, bos = meta.get("add_space_prefix"), meta.get("add_bos_token")
    return build_spm_tokenizer(
        meta["tokens"], meta["scores"], meta["token_type"],
        unk_token_id=meta.get("unk_token_id"), bos_token_id=meta.get("bos_token_id"),
        eos_token_id=meta.get("eos_token_id"), add_bos_token=True if bos is None else bool(bos),
        add_eos_token=bool(meta.get("add_eos_token")), add_space_prefix=True if prefix is None else bool(prefix),
        where=meta["path"])
