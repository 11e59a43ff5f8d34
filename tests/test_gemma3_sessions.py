"""Sliding-window layers in sessions (Gemma 3), against the PyTorch reference extended with Gemma
3's blocks and windows (tests/statekv_reference.py) and against transformers' plain forward.

The model: a tiny random ``Gemma3ForCausalLM`` (tests/tiny.py) converted by ``statekv convert``:
7 layers of which layer 5 is global and the others see a window of 8 tokens, so that every step
(17..20 tokens) reaches past the window into earlier steps. Every expected number comes from the
reference or from transformers.
"""
from __future__ import annotations

import numpy as np
import pytest

import statekv
from statekv_reference import StateKVReference, check_carried, load_hf, plain_logits
from test_session import TOL, Video, feed, make_pair, ref_step, rel

WINDOW = 8
GLOBAL_LAYERS = [5]
SLIDING_LAYERS = [0, 1, 2, 3, 4, 6]


@pytest.fixture(scope="module")
def gemma(tiny_gguf, tiny_hf_dir):
    """(statekv.Model over the f32 GGUF, transformers model)."""
    return statekv.Model(str(tiny_gguf("gemma3")), threads=1), load_hf(tiny_hf_dir("gemma3"))


def window_rows(n_tokens: int, n_kv: int) -> np.ndarray:
    """What a sliding layer carries after n_tokens: the last WINDOW - 1 entry indices."""
    return np.tile(np.arange(max(0, n_tokens - (WINDOW - 1)), n_tokens, dtype=np.int32), (n_kv, 1))


def test_converted_model_equals_transformers(gemma):
    """The converter (norm shift, rope bases, window, scale) and the decoder on random weights:
    a 60-token forward (many windows) equals transformers'."""
    model, hf = gemma
    assert model.info()["architecture"] == "gemma3"
    ids = np.random.default_rng(0).integers(0, 150000, 60)
    want = plain_logits(hf, ids)
    assert rel(model.logits(ids), want) <= TOL


def test_reference_equals_transformers(gemma):
    """The extended reference itself: with B >= all (and in full / window R >= all mode) it is
    transformers' forward of the whole sequence, windows included."""
    _, hf = gemma
    video = Video(hf, seed=11, n_steps=6, gaps=True)
    q = video.questions[0]
    want = plain_logits(hf, *video.sequence(6, q))[-len(q):]
    for ref in (StateKVReference(hf, "statekv", budget=10_000), StateKVReference(hf, "full"),
                StateKVReference(hf, "window", window=100)):
        ref.prefill(video.prefix)
        for st in video.steps:
            ref_step(ref, st)
        assert rel(ref.question_logits(q), want) <= 1e-5, ref.mode
        assert np.array_equal(ref.carried(0), window_rows(ref.n_tokens, ref.n_kv))


def test_every_mode_with_room_for_all_equals_transformers(gemma):
    """statekv with B >= all tokens == window with R >= all steps == full == transformers; the
    sliding layers carry their window in every mode, the global layer everything."""
    model, hf = gemma
    video = Video(hf, seed=4, n_steps=20, gaps=True)
    total = len(video.prefix) + sum(len(st["tokens"]) for st in video.steps)
    sessions = dict(full=model.session(mode="full", kv_type="f32"),
                    statekv=model.session(mode="statekv", budget=total + 7, kv_type="f32"),
                    window=model.session(mode="window", window=20, kv_type="f32"))
    n_kv = hf.config.num_key_value_heads
    for name, s in sessions.items():
        s.prefill(video.prefix)
        feed(s, video.steps)
        for layer in GLOBAL_LAYERS:
            everything = np.tile(np.arange(total, dtype=np.int32), (n_kv, 1))
            assert np.array_equal(np.asarray(s.carried(layer)), everything), (name, layer)
        for layer in SLIDING_LAYERS:
            assert np.array_equal(np.asarray(s.carried(layer)), window_rows(total, n_kv)), (name, layer)
    q = video.questions[0]
    want = plain_logits(hf, *video.sequence(len(video.steps), q))[-len(q):]
    got = {name: s.question_logits(q) for name, s in sessions.items()}
    for name in sessions:
        assert rel(got[name], want) <= TOL, f"{name} vs transformers: {rel(got[name], want):.3g}"
    # greedy answers are the same tokens in every mode
    answers = {name: list(s.generate(q, max_tokens=6)) for name, s in sessions.items()}
    assert answers["statekv"] == answers["full"] == answers["window"]


@pytest.mark.parametrize("mode,budget,window", [("statekv", 24, 16), ("window", 40, 2)])
def test_small_state_matches_reference(gemma, mode, budget, window):
    """A budget or window far below the video: after every step the global layer's selection is
    the reference's (sliding layers: their window), and question logits match in the middle
    and at the end."""
    model, hf = gemma
    video = Video(hf, seed=5, n_steps=16)
    s, ref = make_pair(model, hf, mode, budget=budget, window=window)
    s.prefill(video.prefix)
    ref.prefill(video.prefix)
    ties, nontrivial = [], 0
    for t, st in enumerate(video.steps):
        s.add_step(**st)
        ref_step(ref, st)
        check_carried(s, ref, f"after step {t}", ties)
        for layer in SLIDING_LAYERS:
            assert np.array_equal(np.asarray(s.carried(layer)), window_rows(ref.n_tokens, ref.n_kv))
        if mode == "statekv" and ref.n_tokens > budget:
            recent = np.arange(ref.n_tokens - budget, ref.n_tokens)
            nontrivial += sum(not np.array_equal(ref.carried(5)[g], recent) for g in range(ref.n_kv))
        if t in (7, len(video.steps) - 1):
            for q in video.questions[:2]:
                got, want = s.question_logits(q), ref.question_logits(q)
                assert rel(got, want) <= TOL, f"{mode}, question after step {t}: rel {rel(got, want):.3g}"
    assert len(ties) <= 2, ties
    if mode == "statekv":
        assert nontrivial > 0   # the selection is not a recency window
        st = s.stats()
        assert st["tokens_carried"] == budget
        # C stores the global layer only: the sliding layers' window lives in D
        n_global = len(GLOBAL_LAYERS)
        assert st["bytes_carried"] < 2 * (n_global + 1) * ref.n_kv * budget * ref.head_dim * 4 + 4 * budget * 8


def test_long_steps_save_load_fork(gemma, tmp_path):
    """Steps far longer than the window and longer than the sliding layers' storage (so that it
    wraps around and grows), a save/load and a fork in between: question logits still equal the
    reference's, and D keeps only the window for the sliding layers."""
    model, hf = gemma
    rng = np.random.default_rng(7)
    lengths = [300, 300, 640, 19, 23, 17]
    prefix = rng.integers(0, 150000, 4)
    steps = [dict(tokens=rng.integers(0, 150000, n)) for n in lengths]
    q = rng.integers(0, 150000, 9)
    for mode, budget in (("full", 64), ("statekv", 64)):
        s, ref = make_pair(model, hf, mode, budget=budget)
        s.prefill(prefix)
        ref.prefill(prefix)
        for t, st in enumerate(steps):
            s.add_step(**st)
            ref.add_step(st["tokens"])
            if t == 2:
                path = tmp_path / f"{mode}.statekv"
                s.save(str(path))
                s = model.load_session(str(path))
            if t == 3:
                s = s.fork()
            if mode == "statekv":
                check_carried(s, ref, f"{mode}, after step {t}", [])
        got, want = s.question_logits(q), ref.question_logits(q)
        assert rel(got, want) <= TOL, f"{mode}: rel {rel(got, want):.3g}"

    # D's bytes: chunks hold the global layer only; the sliding layers hold their window plus
    # the largest step, whatever the length.
    s = model.session(mode="full", kv_type="f32", detailed_chunk=4096)
    s.prefill(prefix)
    feed(s, steps)
    row = hf.config.num_key_value_heads * hf.config.head_dim * 4   # f32
    global_bytes = 4096 * 2 * len(GLOBAL_LAYERS) * row
    all_layers = 4096 * 2 * hf.config.num_hidden_layers * row
    sliding_bytes = s.stats()["bytes_detailed"] - global_bytes
    assert 0 < sliding_bytes <= (WINDOW - 1 + max(lengths)) * 2 * len(SLIDING_LAYERS) * row + 4096
    assert s.stats()["bytes_detailed"] < all_layers / 3


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("window,needle", [(0, "attention.sliding_window = 0"), (10**6, "gemma3.attention.sliding_window")])
def test_bad_sliding_window_is_refused(tiny_gguf, tmp_path, window, needle):
    from fuzz import gguf_edit as ge

    src = tiny_gguf("gemma3")
    g = ge.parse(open(src, "rb").read())
    g.set("gemma3.attention.sliding_window", ge.Value(ge.U32, window))
    bad = tmp_path / "bad-window.gguf"
    bad.write_bytes(ge.serialize(g))
    with pytest.raises(statekv.ModelError) as e:
        statekv.Model(str(bad), threads=1)
    assert str(bad) in str(e.value) and needle in str(e.value), str(e.value)


@pytest.mark.parametrize("edit,needle", [
    (dict(layer_types=["full_attention"] * 7), "layer_types"),
    (dict(query_pre_attn_scalar=256), "query_pre_attn_scalar"),
    (dict(sliding_window=0), "sliding_window = 0"),
])
def test_converter_refuses_what_the_format_cannot_express(tiny_hf_dir, tmp_path, edit, needle):
    import json
    import shutil

    from statekv.convert import ConversionError, convert

    hf = tmp_path / "hf"
    shutil.copytree(tiny_hf_dir("gemma3"), hf)
    cfg = json.loads((hf / "config.json").read_text())
    cfg.update(edit)
    (hf / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out.gguf"
    with pytest.raises(ConversionError, match=needle) as e:
        convert(hf, out, "f32")
    assert str(hf / "config.json") in str(e.value)
    assert not out.exists() and not list(tmp_path.glob(".out.gguf*"))


def test_converter_refuses_sentencepiece_model_files(tiny_hf_dir, tmp_path):
    import shutil

    from statekv.convert import ConversionError, convert

    hf = tmp_path / "hf"
    shutil.copytree(tiny_hf_dir("gemma3"), hf)
    (hf / "tokenizer.model").write_bytes(b"\x0a\x00")
    with pytest.raises(ConversionError, match="tokenizer.model.*llama.cpp"):
        convert(hf, tmp_path / "out.gguf", "f32")


# ----------------------------------------------------------------------------- bidirectional blocks
def image_steps(hf, n_steps, seed, block_len=12):
    """Steps shaped like Gemma 3 frames: 2 text tokens, an image block of ``block_len`` embedding
    rows (longer than the window), 3 text tokens; the block bidirectional."""
    rng = np.random.default_rng(seed)
    std = float(hf.model.embed_tokens.weight.detach().std())
    steps = []
    for t in range(n_steps):
        n = block_len + 5
        rows = np.arange(2, 2 + block_len, dtype=np.int32)
        blocks = np.zeros(n, dtype=np.int32)
        blocks[rows] = 1 + t % 3   # any value > 0 names the block
        steps.append(dict(tokens=rng.integers(0, 150000, n), embeddings=(rng.standard_normal(
            (block_len, hf.config.hidden_size)) * std * 8).astype(np.float32), embedding_rows=rows, blocks=blocks))
    return steps


def joined(prefix, steps, question):
    """One sequence of prefix + steps + question for transformers: (tokens, embeddings, rows, blocks),
    each step's block renumbered so that blocks stay distinct."""
    toks, embs, rows, blocks, offset = [prefix], [], [], [np.zeros(len(prefix), np.int32)], len(prefix)
    for i, st in enumerate(steps):
        toks.append(st["tokens"])
        embs.append(st["embeddings"])
        rows.append(st["embedding_rows"] + offset)
        blocks.append(np.where(st["blocks"] > 0, i + 1, 0).astype(np.int32))
        offset += len(st["tokens"])
    toks.append(question)
    blocks.append(np.zeros(len(question), np.int32))
    return np.concatenate(toks), np.concatenate(embs), np.concatenate(rows), np.concatenate(blocks)


def test_blocks_in_model_logits_equal_transformers(gemma):
    """Image-like blocks longer than the window: Model.logits equals transformers' forward with
    the masks Gemma3Model builds for image tokens (bidirectional within an image, windowed)."""
    model, hf = gemma
    steps = image_steps(hf, 3, seed=1)
    prefix, q = np.arange(100, 104), np.arange(200, 206)
    tokens, emb, rows, blocks = joined(prefix, steps, q)
    want = plain_logits(hf, tokens, emb, rows, blocks=blocks)
    got = model.logits(tokens, embeddings=emb, embedding_rows=rows, blocks=blocks)
    assert rel(got, want) <= TOL
    causal = plain_logits(hf, tokens, emb, rows)
    assert rel(causal, want) > 1e-3   # the blocks change the result (not vacuous)


@pytest.mark.parametrize("mode,budget,window", [("full", 0, 0), ("statekv", 10_000, 0), ("window", 0, 100),
                                                ("statekv", 24, 0), ("window", 0, 2)])
def test_blocks_in_sessions_match_reference(gemma, mode, budget, window):
    """Steps with a bidirectional image block: every mode matches the reference (selections of
    the global layer after every step, question logits), and with room for everything the
    reference and statekv equal transformers' whole-sequence forward."""
    model, hf = gemma
    steps = image_steps(hf, 10, seed=2)
    prefix, q = np.arange(100, 104), np.arange(200, 206)
    s, ref = make_pair(model, hf, mode, budget=budget or 40, window=window or 16)
    s.prefill(prefix)
    ref.prefill(prefix)
    ties = []
    for t, st in enumerate(steps):
        s.add_step(**st)
        ref.add_step(st["tokens"], st["embeddings"], st["embedding_rows"], None, st["blocks"])
        check_carried(s, ref, f"{mode}, after step {t}", ties)
    got, want = s.question_logits(q), ref.question_logits(q)
    assert rel(got, want) <= TOL, f"{mode}: rel {rel(got, want):.3g}"
    assert len(ties) <= 2, ties
    if budget >= 10_000 or window >= 100 or mode == "full":
        whole = plain_logits(hf, *joined(prefix, steps, q)[:3], blocks=joined(prefix, steps, q)[3])[-len(q):]
        assert rel(got, whole) <= TOL


@pytest.mark.parametrize("blocks,needle", [
    ([1, 1, 0, 1, 0, 0], "not one contiguous run"),
    ([1, 1, 0], "one per token"),
    ([0, -1, 0, 0, 0, 0], "must be >= 0"),
])
def test_bad_blocks_are_refused(gemma, blocks, needle):
    model, _ = gemma
    with pytest.raises(ValueError, match=needle):
        model.logits(np.arange(6), blocks=blocks)
    s = model.session("full")
    with pytest.raises(ValueError, match=needle):
        s.add_step(np.arange(6), blocks=blocks)
    s.add_step(np.arange(6), blocks=[0, 1, 1, 1, 0, 2])   # the session is still usable
    assert s.n_tokens == 6
