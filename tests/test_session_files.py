"""Session files: save a session, load it later (same model), continue and ask with identical
results; refuse files that are not session files, truncated or corrupt files, and sessions saved
from another model."""
from __future__ import annotations

import os

import numpy as np
import pytest

import statekv

RNG = np.random.default_rng(11)
PREFIX = RNG.integers(0, 151000, 6)
STEPS = [RNG.integers(0, 151000, 17) for _ in range(9)]
QUESTION = RNG.integers(0, 151000, 7)


@pytest.fixture(scope="module")
def model(tiny_gguf):
    return statekv.Model(tiny_gguf("qwen3", "f32"), threads=2)


def fill(s, steps):
    for st in steps:
        s.add_step(st)


@pytest.mark.parametrize("kw", [
    dict(mode="statekv", budget=40, kv_type="f32"),
    dict(mode="statekv", budget=40, kv_type="f16", detailed_chunk=30),
    dict(mode="window", window=3, kv_type="f16"),
    dict(mode="full", kv_type="f32", detailed_chunk=40),
])
def test_save_load_continue_and_ask_identically(model, tmp_path, kw):
    s = model.session(**kw)
    s.prefill(PREFIX)
    fill(s, STEPS[:6])
    path = tmp_path / "video.statekv"
    s.save(path)
    t = model.load_session(path)
    assert t.n_tokens == s.n_tokens and t.next_position == s.next_position
    for layer in range(3):
        np.testing.assert_array_equal(t.carried(layer), s.carried(layer))
    np.testing.assert_array_equal(t.question_logits(QUESTION), s.question_logits(QUESTION))
    assert t.generate(QUESTION, 6, ignore_eos=True) == s.generate(QUESTION, 6, ignore_eos=True)
    fill(s, STEPS[6:])
    fill(t, STEPS[6:])
    for layer in range(3):
        np.testing.assert_array_equal(t.carried(layer), s.carried(layer))
    np.testing.assert_array_equal(t.question_logits(QUESTION), s.question_logits(QUESTION))
    st, tt = s.stats(), t.stats()
    assert (st["tokens_detailed"], st["tokens_carried"]) == (tt["tokens_detailed"], tt["tokens_carried"])


def test_save_of_a_fork_and_of_an_empty_session(model, tmp_path):
    s = model.session(mode="statekv", budget=40, kv_type="f32")
    s.save(tmp_path / "empty")
    e = model.load_session(tmp_path / "empty")
    assert e.n_tokens == 0
    e.prefill(PREFIX)
    s.prefill(PREFIX)
    np.testing.assert_array_equal(e.question_logits(QUESTION), s.question_logits(QUESTION))
    fill(s, STEPS[:3])
    f = s.fork()
    f.save(tmp_path / "fork")
    g = model.load_session(tmp_path / "fork")
    fill(f, STEPS[3:5])
    fill(g, STEPS[3:5])
    np.testing.assert_array_equal(g.question_logits(QUESTION), f.question_logits(QUESTION))


def saved(model, tmp_path):
    s = model.session(mode="statekv", budget=40, kv_type="f32")
    s.prefill(PREFIX)
    fill(s, STEPS[:4])
    p = tmp_path / "s.statekv"
    s.save(p)
    return p


def test_truncated_and_corrupt_files_are_refused(model, tmp_path):
    p = saved(model, tmp_path)
    data = p.read_bytes()
    for cut in (len(data) // 2, len(data) - 100, 40):
        q = tmp_path / f"cut{cut}"
        q.write_bytes(data[:cut])
        with pytest.raises(statekv.ModelError, match=str(q)):
            model.load_session(q)
    bad = tmp_path / "magic"
    bad.write_bytes(b"XXXX" + data[4:])
    with pytest.raises(statekv.ModelError, match="magic"):
        model.load_session(bad)
    with pytest.raises(statekv.ModelError, match="not a statekv session file"):
        model.load_session(model.path)


def test_session_from_another_model_is_refused(model, tmp_path, tiny_gguf):
    p = saved(model, tmp_path)
    other_seed = statekv.Model(tiny_gguf("qwen3", "f32", seed=1), threads=1)  # same shapes, other weights
    with pytest.raises(statekv.ModelError, match="another model"):
        other_seed.load_session(p)
    other_arch = statekv.Model(tiny_gguf("qwen2", "f32"), threads=1)
    with pytest.raises(statekv.ModelError, match="another model"):
        other_arch.load_session(p)


def test_failed_save_leaves_nothing(model, tmp_path):
    s = model.session(mode="full", kv_type="f32")
    s.prefill(PREFIX)
    target = tmp_path / "no-such-dir" / "s.statekv"
    with pytest.raises(ValueError, match="cannot open"):
        s.save(target)
    assert not target.parent.exists()
    s.save(tmp_path / "ok")
    assert sorted(os.listdir(tmp_path)) == ["ok"]
