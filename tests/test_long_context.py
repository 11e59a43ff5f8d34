"""Long videos: dynamic-NTK scaling of the rotary base when the expected length exceeds the
trained context (the StateKV authors' formula), and a fixed NTK factor for open-ended streams.
Checked against transformers running the same model with the scaled rotary base."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import statekv


def scaled_base(base, factor, length, n_ctx, dims):
    # base * ((factor * L / n_ctx) - (factor - 1)) ** (d / (d - 2))
    return base * ((factor * length / n_ctx) - (factor - 1)) ** (dims / (dims - 2))


def hf_with_theta(hf_dir, tmp_path, theta):
    from transformers import AutoModelForCausalLM

    d = tmp_path / "hf-theta"
    shutil.copytree(hf_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["rope_parameters"]["rope_theta"] = theta
    (d / "config.json").write_text(json.dumps(cfg))
    return AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()


def run_session(path, steps, question, **kw):
    s = statekv.Model(path, threads=2).session(mode="full", kv_type="f32", **kw)
    s.prefill(steps[0])
    for st in steps[1:]:
        s.add_step(st)
    return s, s.question_logits(question)


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_dynamic_ntk_for_an_expected_length_beyond_the_trained_context(arch, tiny_gguf, tiny_hf_dir, tmp_path):
    rng = np.random.default_rng(0)
    steps = [rng.integers(0, 151000, 12) for _ in range(4)]
    question = rng.integers(0, 151000, 6)
    n_ctx, dims, base = 4096, 16, 1e6  # the tiny models' max_position_embeddings, head_dim, rope_theta
    length = 3 * n_ctx
    theta = scaled_base(base, 1.0, length, n_ctx, dims)
    ref_model = hf_with_theta(tiny_hf_dir(arch), tmp_path, theta)
    ids = np.concatenate(steps + [question])
    with torch.no_grad():
        ref = ref_model(torch.tensor(ids)[None]).logits[0, -len(question):].numpy()
    s, out = run_session(tiny_gguf(arch, "f32"), steps, question, expected_length=length)
    assert np.abs(out - ref).max() / np.abs(ref).max() <= 1e-4
    # Unscaled, the same positions give other logits: the scaling is really applied.
    _, plain = run_session(tiny_gguf(arch, "f32"), steps, question)
    assert np.abs(plain - out).max() / np.abs(out).max() > 1e-3
    # Positions up to the expected length now fit; beyond it they do not.
    s.question_logits([5], positions=[length - 1])
    with pytest.raises(ValueError, match="context"):
        s.question_logits([5], positions=[length])


def test_expected_length_within_the_trained_context_changes_nothing(tiny_gguf):
    rng = np.random.default_rng(1)
    steps = [rng.integers(0, 151000, 10) for _ in range(3)]
    q = rng.integers(0, 151000, 5)
    _, a = run_session(tiny_gguf("qwen2", "f32"), steps, q, expected_length=2000)
    _, b = run_session(tiny_gguf("qwen2", "f32"), steps, q)
    np.testing.assert_array_equal(a, b)


def test_fixed_factor_for_open_ended_streams(tiny_gguf, tiny_hf_dir, tmp_path):
    rng = np.random.default_rng(2)
    steps = [rng.integers(0, 151000, 12) for _ in range(3)]
    q = rng.integers(0, 151000, 6)
    factor, dims, base = 4.0, 16, 1e6
    theta = base * factor ** (dims / (dims - 2))
    ref_model = hf_with_theta(tiny_hf_dir("qwen2"), tmp_path, theta)
    with torch.no_grad():
        ref = ref_model(torch.tensor(np.concatenate(steps + [q]))[None]).logits[0, -len(q):].numpy()
    s, out = run_session(tiny_gguf("qwen2", "f32"), steps, q, rope_scale=factor)
    assert np.abs(out - ref).max() / np.abs(ref).max() <= 1e-4
    s.question_logits([5], positions=[4 * 4096 - 1])  # the context grows with the factor


@pytest.mark.parametrize("kw", [dict(rope_scale=0.5), dict(expected_length=-1), dict(expected_length=9000, rope_scale=2.0)])
def test_bad_scaling_options(tiny_gguf, kw):
    with pytest.raises(ValueError):
        statekv.Model(tiny_gguf("qwen2", "f32"), threads=1).session(mode="full", **kw)
