"""Variants of the statekv selection rule (docs/DESIGN.md section 1, "Policy variants"):
``score_decay`` (scores accumulated over steps with a decay) and ``pin_prefix`` (the prefix always
kept), selected per session with keyword arguments of ``Model.session``.

Every expected selection and logit comes from the PyTorch reference (tests/statekv_reference.py,
which implements each variant independently of statekv's graph) or from transformers' plain
forward; session-against-session comparisons are used only where the claim is an identity
(decay 0 is the paper's rule, a saved/forked session continues as the original does).

Models: the tiny random Qwen2 (3 global layers, 2 KV heads) and Gemma 3 (7 layers, layer 5
global, the others sliding windows of 8 tokens) of tests/conftest.py, f32 weights and caches.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import statekv
from fuzz import gguf_edit as ge
from fuzz import mutate
from statekv_reference import StateKVReference, check_carried, load_hf, plain_logits
from test_session import TOL, Video, feed, ref_step, rel

# per tiny model: its global layers, a budget far below the video, the video's seed and prefix
SETUPS = {
    "qwen2": dict(global_layers=[0, 1, 2], budget=40, seed=21, n_prefix=12, n_steps=22),
    "gemma3": dict(global_layers=[5], budget=24, seed=22, n_prefix=9, n_steps=16),
}
VARIANTS = {
    "decay-0.5": dict(score_decay=0.5),
    "decay-0.9": dict(score_decay=0.9),
    "pin": dict(pin_prefix=True),
    "pin+decay-0.75": dict(score_decay=0.75, pin_prefix=True),
}


@pytest.fixture(scope="module")
def engine(tiny_gguf, tiny_hf_dir):
    """``engine(arch) -> (statekv.Model over the f32 GGUF, transformers model)``, cached."""
    cache = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = (statekv.Model(str(tiny_gguf(arch, "f32")), threads=1), load_hf(tiny_hf_dir(arch)))
        return cache[arch]

    return get


def video_of(arch, hf, **kw):
    cfg = SETUPS[arch]
    return Video(hf, seed=kw.get("seed", cfg["seed"]), n_prefix=kw.get("n_prefix", cfg["n_prefix"]),
                 n_steps=kw.get("n_steps", cfg["n_steps"]))


def make_pair(model, hf, budget, **variant):
    """A statekv session and the reference with the same budget and variant (f32 caches)."""
    return (model.session(mode="statekv", budget=budget, kv_type="f32", **variant),
            StateKVReference(hf, "statekv", budget=budget, **variant))


def total_tokens(video):
    return len(video.prefix) + sum(len(st["tokens"]) for st in video.steps)


# ----------------------------------------------------------------------------- selections
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("arch", SETUPS)
def test_variant_selections_match_reference(engine, arch, variant):
    """A budget far below the video: after every step statekv's carried state (every layer and
    KV head; sliding layers their window) is the reference's, question logits match in the
    middle and at the end, and the variant selects differently from the paper's rule."""
    model, hf = engine(arch)
    cfg, kw = SETUPS[arch], VARIANTS[variant]
    video = video_of(arch, hf)
    s, ref = make_pair(model, hf, cfg["budget"], **kw)
    paper = StateKVReference(hf, "statekv", budget=cfg["budget"])
    n_prefix = len(video.prefix)
    for x in (s, ref, paper):
        x.prefill(video.prefix)
    ties, differs, prefix_dropped = [], 0, 0
    check_carried(s, ref, "after the prefix", ties)
    for t, st in enumerate(video.steps):
        s.add_step(**st)
        ref_step(ref, st)
        ref_step(paper, st)
        check_carried(s, ref, f"{variant}, after step {t}", ties)
        for layer in cfg["global_layers"]:
            differs += not np.array_equal(ref.carried(layer), paper.carried(layer))
            prefix_dropped += int((paper.carried(layer)[:, :n_prefix] != np.arange(n_prefix)).any())
            if kw.get("pin_prefix"):
                kept = np.asarray(s.carried(layer))
                assert np.array_equal(kept[:, :n_prefix], np.tile(np.arange(n_prefix), (ref.n_kv, 1))), (t, layer)
        if t in (len(video.steps) // 2, len(video.steps) - 1):
            for q in video.questions[:2]:
                got, want = s.question_logits(q), ref.question_logits(q)
                assert rel(got, want) <= TOL, f"{variant}, question after step {t}: rel {rel(got, want):.3g}"
    assert len(ties) <= 2, ties   # float ties at the boundary are rare; many would be a bug
    assert differs > 0            # the variant is not the paper's rule in disguise
    if kw.get("pin_prefix"):
        assert prefix_dropped > 0  # the paper's rule does evict prefix tokens here: pinning matters
    assert s.stats()["tokens_carried"] == cfg["budget"]
    o = s.options()
    assert (o["score_decay"], o["pin_prefix"]) == (float(np.float32(kw.get("score_decay", 0.0))),
                                                   kw.get("pin_prefix", False))


def test_pinned_prefix_filling_the_budget(engine):
    """B = the prefix: with pin_prefix the carried state is the prefix for good, each step
    attends to it and to itself only (the reference agrees, logits included)."""
    model, hf = engine("qwen2")
    video = video_of("qwen2", hf, n_steps=8)
    n_prefix = len(video.prefix)
    s, ref = make_pair(model, hf, n_prefix, pin_prefix=True, score_decay=0.5)
    s.prefill(video.prefix)
    ref.prefill(video.prefix)
    for t, st in enumerate(video.steps):
        s.add_step(**st)
        ref_step(ref, st)
        check_carried(s, ref, f"after step {t}")
        assert np.array_equal(np.asarray(s.carried(1)), np.tile(np.arange(n_prefix, dtype=np.int32), (ref.n_kv, 1)))
    q = video.questions[0]
    assert rel(s.question_logits(q), ref.question_logits(q)) <= TOL


# ----------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("arch", SETUPS)
def test_room_for_all_every_variant_equals_full(engine, arch):
    """With B >= all tokens every variant keeps everything and computes what full attention
    computes, which is transformers' forward of the whole sequence."""
    model, hf = engine(arch)
    video = video_of(arch, hf, n_steps=12)
    total = total_tokens(video)
    sessions = {"full": model.session(mode="full", kv_type="f32")}
    for name, kw in VARIANTS.items():
        sessions[name] = model.session(mode="statekv", budget=total + 3, kv_type="f32", **kw)
    for s in sessions.values():
        s.prefill(video.prefix)
        feed(s, video.steps)
    everything = np.tile(np.arange(total, dtype=np.int32), (hf.config.num_key_value_heads, 1))
    for name, s in sessions.items():
        for layer in SETUPS[arch]["global_layers"]:
            assert np.array_equal(np.asarray(s.carried(layer)), everything), (name, layer)
    q = video.questions[0]
    want = plain_logits(hf, *video.sequence(len(video.steps), q))[-len(q):]
    got = {name: s.question_logits(q) for name, s in sessions.items()}
    assert rel(got["full"], want) <= TOL
    for name in VARIANTS:
        assert rel(got[name], got["full"]) <= TOL, f"{name} vs full: {rel(got[name], got['full']):.3g}"


def test_decay_zero_and_pin_without_prefix_are_the_papers_rule(engine):
    """score_decay=0 is the paper's rule bit for bit (same selections, same logits, no score
    storage); so is pin_prefix in a session without a prefix."""
    model, hf = engine("qwen2")
    video = video_of("qwen2", hf, n_steps=12)
    paper = model.session(mode="statekv", budget=40, kv_type="f32")
    zero = model.session(mode="statekv", budget=40, kv_type="f32", score_decay=0.0, pin_prefix=False)
    paper.prefill(video.prefix)
    zero.prefill(video.prefix)
    no_prefix = [model.session(mode="statekv", budget=40, kv_type="f32"),
                 model.session(mode="statekv", budget=40, kv_type="f32", pin_prefix=True)]
    for t, st in enumerate(video.steps):
        for s in (paper, zero, *no_prefix):
            s.add_step(**st)
        for layer in range(3):
            assert np.array_equal(np.asarray(zero.carried(layer)), np.asarray(paper.carried(layer))), (t, layer)
            assert np.array_equal(np.asarray(no_prefix[1].carried(layer)), np.asarray(no_prefix[0].carried(layer)))
    q = video.questions[0]
    assert np.array_equal(zero.question_logits(q), paper.question_logits(q))
    assert np.array_equal(no_prefix[1].question_logits(q), no_prefix[0].question_logits(q))
    assert zero.stats()["bytes_carried"] == paper.stats()["bytes_carried"]
    assert (zero.options()["score_decay"], zero.options()["pin_prefix"]) == (0.0, False)


# ----------------------------------------------------------------------------- session files, fork
@pytest.mark.parametrize("variant", VARIANTS)
def test_save_load_and_fork_mid_video_continue_identically(engine, tmp_path, variant):
    """Saved and forked in the middle of the video, the loaded session and the fork continue
    exactly as the original (selections after every step, logits), and the file carries what
    the variant carries (accumulated scores, the pinned prefix)."""
    model, hf = engine("qwen2")
    kw = VARIANTS[variant]
    video = video_of("qwen2", hf)
    s = model.session(mode="statekv", budget=40, kv_type="f32", **kw)
    s.prefill(video.prefix)
    half = len(video.steps) // 2
    feed(s, video.steps[:half])
    path = tmp_path / "mid.statekv"
    s.save(path)
    loaded, forked = model.load_session(path), s.fork()
    assert loaded.options() == s.options() == forked.options()
    g = ge.parse(path.read_bytes())
    assert g.get("statekv.session.version").data == 3
    if kw.get("score_decay"):
        scores = np.frombuffer(g.tensor("c.scores.0").body, np.float32)
        assert scores.size == 40 * 2 and scores.max() > 0
    if kw.get("pin_prefix"):
        assert g.get("statekv.carried.n_pinned").data == len(video.prefix)
    for t, st in enumerate(video.steps[half:]):
        for x in (s, loaded, forked):
            x.add_step(**st)
        for layer in range(3):
            want = np.asarray(s.carried(layer))
            assert np.array_equal(np.asarray(loaded.carried(layer)), want), (t, layer)
            assert np.array_equal(np.asarray(forked.carried(layer)), want), (t, layer)
    q = video.questions[1]
    want = s.question_logits(q)
    assert np.array_equal(loaded.question_logits(q), want)
    assert np.array_equal(forked.question_logits(q), want)


def edited(src, out, edit):
    g = ge.parse(src.read_bytes())
    edit(g)
    mutate.reseal(g)   # a valid payload checksum: the checks under test must refuse on their own
    out.write_bytes(ge.serialize(g))
    return out


def test_version_2_files_load_as_the_papers_rule(engine, tmp_path):
    """A version 2 file (before the variants: no such options) loads as a session of the paper's
    rule and continues as the session that saved it; a version from the future is refused."""
    model, hf = engine("qwen2")
    video = video_of("qwen2", hf, n_steps=10)
    s = model.session(mode="statekv", budget=40, kv_type="f32")
    s.prefill(video.prefix)
    feed(s, video.steps[:5])
    s.save(tmp_path / "v3.statekv")

    def as_version_2(g):
        g.set("statekv.session.version", ge.Value(ge.U32, 2))
        g.kv = [(k, v) for k, v in g.kv if k not in (b"statekv.options.score_decay", b"statekv.options.pin_prefix")]

    old = model.load_session(edited(tmp_path / "v3.statekv", tmp_path / "v2.statekv", as_version_2))
    assert (old.options()["score_decay"], old.options()["pin_prefix"]) == (0.0, False)
    feed(s, video.steps[5:])
    feed(old, video.steps[5:])
    for layer in range(3):
        assert np.array_equal(np.asarray(old.carried(layer)), np.asarray(s.carried(layer)))
    q = video.questions[0]
    assert np.array_equal(old.question_logits(q), s.question_logits(q))
    future = edited(tmp_path / "v3.statekv", tmp_path / "v4.statekv",
                    lambda g: g.set("statekv.session.version", ge.Value(ge.U32, 4)))
    with pytest.raises(statekv.ModelError, match="version 4 is not supported.*newer"):
        model.load_session(future)


# ----------------------------------------------------------------------------- bad values
@pytest.mark.parametrize("kw,match", [
    (dict(score_decay=1.0), r"score_decay must be in \[0, 1\)"),
    (dict(score_decay=1.5), r"score_decay must be in \[0, 1\)"),
    (dict(score_decay=-0.1), r"score_decay must be in \[0, 1\)"),
    (dict(score_decay=math.nan), "score_decay must be finite"),
    (dict(score_decay="half"), "score_decay must be a number"),
    (dict(pin_prefix="yes"), "pin_prefix must be True or False"),
    (dict(mode="full", score_decay=0.5), "score_decay applies to mode statekv only, not to mode full"),
    (dict(mode="window", pin_prefix=True), "pin_prefix applies to mode statekv only, not to mode window"),
])
def test_bad_options_are_clear_errors(engine, kw, match):
    model, _ = engine("qwen2")
    args = dict(mode="statekv", budget=40)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        model.session(**args)


def test_pinned_prefix_larger_than_the_budget_is_refused(engine):
    model, hf = engine("qwen2")
    video = video_of("qwen2", hf, n_steps=2)
    s = model.session(mode="statekv", budget=8, kv_type="f32", pin_prefix=True)
    with pytest.raises(ValueError, match=r"prefix \(12 tokens\) exceeds the budget B = 8 \(pin_prefix"):
        s.prefill(video.prefix)
    s.prefill(video.prefix[:8])   # the session is still usable
    feed(s, video.steps)
    assert np.array_equal(np.asarray(s.carried(0))[:, :8], np.tile(np.arange(8, dtype=np.int32), (2, 1)))


def test_bad_variant_state_in_files_is_refused(engine, tmp_path):
    """Session files whose variant fields are out of range or disagree with the data (with a
    valid checksum) are refused with a ModelError naming the file and the field."""
    model, hf = engine("qwen2")
    video = video_of("qwen2", hf, n_steps=6)
    s = model.session(mode="statekv", budget=40, kv_type="f32", score_decay=0.5, pin_prefix=True)
    s.prefill(video.prefix)
    feed(s, video.steps)
    src = tmp_path / "ok.statekv"
    s.save(src)

    def shifted_pinned_id(g):
        t = g.tensor("c.ids.1")
        ids = np.frombuffer(t.body, np.float32).copy()
        ids[[0, 1]] = ids[[1, 0]]   # slot order changed: the prefix is not where it is pinned
        t.body = ids.tobytes()

    cases = [
        (lambda g: g.set("statekv.options.score_decay", ge.Value(ge.F32, 1.5)), "score_decay must be in"),
        (lambda g: g.set("statekv.options.pin_prefix", ge.Value(ge.I64, 1)), "statekv.options.pin_prefix"),
        (lambda g: g.set("statekv.carried.n_pinned", ge.Value(ge.I64, 40)), "does not keep the pinned prefix"),
        (lambda g: g.set("statekv.carried.n_pinned", ge.Value(ge.I64, 41)), "statekv.carried.n_pinned"),
        (lambda g: g.tensors.remove(g.tensor("c.scores.2")), "missing tensor 'c.scores.2'"),
        (shifted_pinned_id, "c.ids.1 does not keep the pinned prefix"),
    ]
    # before the first step the pinned slots are the whole prefix
    prefix_only = tmp_path / "prefix.statekv"
    pre = model.session(mode="statekv", budget=40, kv_type="f32", pin_prefix=True)
    pre.prefill(video.prefix)
    pre.save(prefix_only)
    cases = [(src, *c) for c in cases]
    cases.append((prefix_only, lambda g: g.set("statekv.carried.n_pinned", ge.Value(ge.I64, 5)),
                  "statekv.carried.n_pinned = 5 is not the prefix of a session of 12 tokens in 0 steps"))
    for i, (file, edit, match) in enumerate(cases):
        p = edited(file, tmp_path / f"bad{i}.statekv", edit)
        with pytest.raises(statekv.ModelError, match=match) as e:
            model.load_session(p)
        assert str(p) in str(e.value)
    assert model.load_session(src).options()["pin_prefix"] is True
