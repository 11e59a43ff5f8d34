"""Hostile inputs: every file statekv is given is checked before ggml sees it, every argument
before anything is allocated. The regression cases below are the crash classes a mutation
harness found (GGML_ASSERT aborts, segfaults, absurd allocations, wrong answers from NaN); each
must now be a statekv.ModelError naming the file and the key or tensor, or a ValueError. A short
bounded run of the harness itself (tests/fuzz/run.py; long runs by command) closes the file.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import statekv
from fuzz import gguf_edit as ge
from fuzz import mutate, run, seeds

I16, I32, F16, F32 = 25, 26, 1, 0  # ggml type ids


@pytest.fixture(scope="module")
def seed_files(tmp_path_factory):
    return seeds.write_all(tmp_path_factory.mktemp("fuzz-seeds"))


def edited(seed: Path, out: Path, edit) -> Path:
    g = ge.parse(seed.read_bytes())
    edit(g)
    out.write_bytes(ge.serialize(g))
    return out


def set_type(g, name, ggml_type):
    t = g.tensor(name)
    t.ggml_type = ggml_type
    ge.fit_body(t)


def set_dims(g, name, dims):
    t = g.tensor(name)
    t.dims = dims
    ge.fit_body(t)


def expect_error(path, *needles, mmproj=None, text=None):
    with pytest.raises(statekv.ModelError) as e:
        if mmproj is None:
            statekv.Model(path, threads=1)
        else:
            statekv.Model(text, mmproj=path, threads=1)
    msg = str(e.value)
    assert str(path) in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


# ---- text decoders ------------------------------------------------------------------------

TYPE_CASES = [
    ("text-qwen2", "blk.0.attn_norm.weight", I32, "f32, f16 or bf16"),
    ("text-qwen2", "blk.1.attn_q.bias", I16, "f32, f16 or bf16"),
    ("text-qwen3", "blk.0.attn_q_norm.weight", I32, "f32, f16 or bf16"),
    ("text-qwen2", "blk.0.attn_q.weight", I16, "quantized"),
    ("text-qwen3", "blk.1.ffn_down.weight", I32, "quantized"),
    ("text-qwen2", "token_embd.weight", I16, "quantized"),
    ("text-qwen3", "token_embd.weight", 28, "quantized"),  # f64
    # found by the long fuzz run (SIGSEGV): q8_1 is quantized but only an activation type
    ("text-qwen2", "blk.1.ffn_down.weight", 9, "quantized"),
    ("text-qwen3", "token_embd.weight", 30, None),   # bf16 embedding: accepted (get_rows and mul_mat)
]


@pytest.mark.parametrize("seed,tensor,ggml_type,expected", TYPE_CASES)
def test_tensor_types_are_checked_by_role(seed_files, tmp_path, seed, tensor, ggml_type, expected):
    p = edited(seed_files[seed], tmp_path / "t.gguf", lambda g: set_type(g, tensor, ggml_type))
    if expected is None:
        m = statekv.Model(p, threads=1)
        assert np.isfinite(m.logits([1, 2, 3])).all()
        return
    expect_error(p, tensor, expected)


def test_f16_and_bf16_norms_are_widened_exactly(seed_files, tmp_path):
    """Float-role tensors stored as f16 are widened to f32 on load: a file whose norm holds
    f16-representable values gives identical logits stored either way."""
    def round_norms(g, as_f16):
        for t in g.tensors:
            if t.name.endswith(b"norm.weight") and t.ggml_type == F32:
                vals = np.frombuffer(t.body, np.float32).astype(np.float16)
                if as_f16:
                    t.ggml_type, t.body = F16, vals.tobytes()
                else:
                    t.body = vals.astype(np.float32).tobytes()
    a = edited(seed_files["text-qwen3"], tmp_path / "f32.gguf", lambda g: round_norms(g, False))
    b = edited(seed_files["text-qwen3"], tmp_path / "f16.gguf", lambda g: round_norms(g, True))
    la = statekv.Model(a, threads=1).logits([1, 5, 9, 13])
    lb = statekv.Model(b, threads=1).logits([1, 5, 9, 13])
    np.testing.assert_array_equal(la, lb)
    assert statekv.Model(b, threads=1).info()["tensor_types"]["f32"] >= 5


def u32(x):
    return ge.Value(ge.U32, x)


def f32(x):
    return ge.Value(ge.F32, x)


HPARAM_CASES = [
    ("text-qwen2", "qwen2.attention.layer_norm_rms_epsilon", f32(-1e-6), "out of range"),
    ("text-qwen2", "qwen2.attention.layer_norm_rms_epsilon", f32(math.nan), "out of range"),
    ("text-qwen3", "qwen3.attention.layer_norm_rms_epsilon", f32(math.inf), "out of range"),
    ("text-qwen3", "qwen3.rope.freq_base", f32(0.0), "out of range"),
    ("text-qwen3", "qwen3.rope.freq_base", f32(-1.0), "out of range"),
    ("text-qwen3", "qwen3.rope.freq_base", f32(math.nan), "out of range"),
    ("text-qwen2", "qwen2.rope.freq_base", f32(math.inf), "out of range"),
    ("text-qwen3", "qwen3.rope.dimension_count", u32(7), "odd"),
    ("text-qwen3", "qwen3.rope.dimension_count", u32(16), "out of range"),
    ("text-qwen3", "qwen3.attention.key_length", u32(2**32 - 1), "4294967295"),
    ("text-qwen3", "qwen3.attention.key_length", ge.Value(ge.U64, 2**64 - 1), "18446744073709551615"),
    ("text-qwen2", "qwen2.block_count", u32(2**31 - 1), "out of range"),
    ("text-qwen2", "qwen2.block_count", u32(10**7), "out of range"),
    ("text-qwen2", "qwen2.block_count", u32(1), "tensors for 2 layers"),
    ("text-qwen2", "qwen2.block_count", u32(3), "tensors for 2 layers"),
    ("text-qwen2", "qwen2.attention.head_count_kv", u32(3), "multiple"),
    ("text-qwen2", "qwen2.attention.head_count", u32(0), "out of range"),
    ("text-qwen3", "qwen3.attention.head_count", ge.Value(ge.STRING, b"four"), "expected an integer"),
    ("text-qwen3vl", "qwen3vl.rope.dimension_sections", ge.Value(ge.ARRAY, [0, 0, 0, 0], ge.I32), "all 0"),
    ("text-qwen3vl", "qwen3vl.rope.dimension_sections", ge.Value(ge.ARRAY, [-2, 3, 3, 0], ge.I32), "entry 0"),
    ("text-qwen3vl", "qwen3vl.rope.dimension_sections",
     ge.Value(ge.ARRAY, [2**31 - 1, 2**31 - 1, 2, 0], ge.I32), "entry 0"),
    ("text-qwen3vl", "qwen3vl.rope.dimension_sections", ge.Value(ge.ARRAY, [3, 1, 1, 0], ge.I32), "sum to 5"),
    ("text-qwen3vl", "qwen3vl.rope.dimension_sections", ge.Value(ge.ARRAY, [b"2", b"1", b"1", b"0"], ge.STRING),
     "array of str"),
    ("text-qwen3vl", "qwen3vl.n_deepstack_layers", u32(2**32 - 1), "out of range"),
    ("text-qwen3", "general.architecture", ge.Value(ge.STRING, b"qwen\xff3"), "not valid UTF-8"),
]


@pytest.mark.parametrize("seed,key,value,expected", HPARAM_CASES)
def test_hyper_parameters_are_range_checked(seed_files, tmp_path, seed, key, value, expected):
    p = edited(seed_files[seed], tmp_path / "h.gguf", lambda g: g.set(key, value))
    expect_error(p, key, expected)


def test_non_utf8_string_in_an_error_message(seed_files, tmp_path):
    """A string that is valid UTF-8 but names an unknown architecture is quoted in the error;
    one that is not UTF-8 is refused before it is quoted anywhere."""
    p = edited(seed_files["text-qwen3"], tmp_path / "a.gguf",
               lambda g: g.set("general.architecture", ge.Value(ge.STRING, "llamą".encode())))
    expect_error(p, "llamą", "general.architecture")


def test_vocabulary_size_is_bounded(seed_files, tmp_path):
    p = edited(seed_files["text-qwen3"], tmp_path / "v.gguf", lambda g: set_dims(g, "token_embd.weight", [32, 0]))
    expect_error(p, "token_embd.weight")


def test_non_finite_norm_values_are_refused(seed_files, tmp_path):
    def nan_norm(g):
        t = g.tensor("blk.1.ffn_norm.weight")
        body = bytearray(t.body)
        body[8:12] = np.float32(np.nan).tobytes()
        t.body = bytes(body)
    p = edited(seed_files["text-qwen2"], tmp_path / "n.gguf", nan_norm)
    expect_error(p, "blk.1.ffn_norm.weight", "non-finite")


def test_non_finite_weights_give_an_error_not_an_answer(seed_files, tmp_path):
    """An inf in an f16 matrix (not checked element by element on load) poisons the logits:
    the first call that computes them raises ModelError naming the file."""
    def inf_matrix(g):
        t = g.tensor("blk.0.ffn_up.weight")
        body = bytearray(t.body)
        for i in range(0, len(body), 2):
            body[i:i + 2] = b"\x00\x7c"
        t.body = bytes(body)
    p = edited(seed_files["text-qwen3"], tmp_path / "inf.gguf", inf_matrix)
    m = statekv.Model(p, threads=1)
    with pytest.raises(statekv.ModelError, match="non-finite"):
        m.logits([1, 2, 3])
    with pytest.raises(statekv.ModelError, match=str(p)):
        m.generate([1, 2, 3], 2)
    s = m.session(mode="full")
    s.prefill([1, 2])
    with pytest.raises(statekv.ModelError, match="non-finite"):
        s.question_logits([3])


# ---- vision towers ------------------------------------------------------------------------

VISION_CASES = [
    ("internvl", "clip.vision.attention.layer_norm_epsilon", f32(-1e-6), "out of range"),
    ("qwen3vl", "clip.vision.attention.layer_norm_epsilon", f32(math.nan), "out of range"),
    ("internvl", "clip.vision.block_count", u32(2**31 - 1), "out of range"),
    ("qwen3vl", "clip.vision.block_count", u32(50), "out of range"),
    ("internvl", "clip.vision.projector.scale_factor", u32(0), "out of range"),
    ("qwen3vl", "clip.vision.patch_size", ge.Value(ge.I32, -16), "out of range"),
    ("qwen3vl", "clip.vision.image_std", ge.Value(ge.ARRAY, [0.5, math.nan, 0.5], ge.F32), "image_std"),
    # found by the long fuzz run: gguf_get_arr_data aborted on a string array here
    ("internvl", "clip.vision.image_mean", ge.Value(ge.ARRAY, [b"0.5", b"0.5", b"0.5"], ge.STRING), "image_mean"),
    ("qwen3vl", "clip.vision.image_mean", ge.Value(ge.ARRAY, [b"0.5", b"0.5", b"0.5"], ge.STRING), "image_mean"),
]


@pytest.mark.parametrize("family,key,value,expected", VISION_CASES)
def test_vision_hyper_parameters_are_range_checked(seed_files, tmp_path, family, key, value, expected):
    text = seed_files[f"text-{seeds.MMPROJ_PAIRS[family][0]}"]
    p = edited(seed_files[f"mmproj-{family}"], tmp_path / "m.gguf", lambda g: g.set(key, value))
    expect_error(p, key.split(".")[-1], expected, mmproj=True, text=text)


@pytest.mark.parametrize("family,tensor,edit,expected", [
    ("qwen3vl", "v.position_embd.weight", lambda t: setattr(t, "dims", [16, 0]), "any positive size"),
    ("qwen3vl", "v.position_embd.weight", lambda t: setattr(t, "dims", [16, 2**62]), None),  # gguf refuses
    ("qwen3vl", "v.blk.0.ln1.bias", lambda t: setattr(t, "ggml_type", I32), "f32, f16 or bf16"),
    ("internvl", "v.patch_embd.weight", lambda t: setattr(t, "ggml_type", 30), "f32 or f16"),
    ("internvl", "mm.model.mlp.1.weight", lambda t: setattr(t, "ggml_type", I16), "quantized"),
    ("internvl", "v.position_embd.weight", lambda t: setattr(t, "ggml_type", I32), "f32, f16 or bf16"),
])
def test_vision_tensors_are_checked(seed_files, tmp_path, family, tensor, edit, expected):
    text = seed_files[f"text-{seeds.MMPROJ_PAIRS[family][0]}"]

    def change(g):
        t = g.tensor(tensor)
        edit(t)
        ge.fit_body(t)
    p = edited(seed_files[f"mmproj-{family}"], tmp_path / "m.gguf", change)
    if expected is None:
        expect_error(p, mmproj=True, text=text)
    else:
        expect_error(p, tensor, expected, mmproj=True, text=text)


def test_non_finite_pixels_and_embeddings_are_refused(seed_files):
    m = statekv.Model(seed_files["text-qwen2"], mmproj=seed_files["mmproj-internvl"], threads=1)
    px = np.zeros((1, 3, seeds.IVL_IMAGE, seeds.IVL_IMAGE), np.float32)
    px[0, 1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        m.encode_frames(px)
    s = m.session(mode="full")
    with pytest.raises(ValueError, match="not finite"):
        s.add_step([1, 2, 3], embeddings=np.full((1, seeds.E), np.inf, np.float32), embedding_rows=[1])
    with pytest.raises(ValueError, match="not finite"):
        m.logits([1, 2], embeddings=np.full((1, seeds.E), np.nan, np.float32), embedding_rows=[0])


# ---- arguments ----------------------------------------------------------------------------

def test_arguments_out_of_int32_range_are_value_errors(seed_files):
    m = statekv.Model(seed_files["text-qwen3"], threads=1)
    for kw in (dict(budget=2**31), dict(window=2**40), dict(expected_length=-2**33), dict(detailed_chunk=2**31)):
        with pytest.raises(ValueError, match="out of range"):
            m.session(**kw)
    with pytest.raises(ValueError, match="32 bits"):
        m.logits([1, 2**31 + 1])
    with pytest.raises(ValueError, match="32 bits"):
        m.logits(np.array([1, 2**32 + 1], np.int64))
    with pytest.raises(ValueError, match="max_tokens"):
        m.generate([1, 2], 2**31)
    s = m.session(mode="full")
    s.prefill([1, 2])
    with pytest.raises(ValueError, match="32 bits"):
        s.add_step([3], positions=[2**32 + 5])
    with pytest.raises(ValueError, match="temperature"):
        s.generate([3], 4, temperature=math.inf)
    with pytest.raises(ValueError, match="decrease"):
        s.add_step([3, 4, 5], positions=[9, 8, 10])
    with pytest.raises(ValueError, match="rope_scale"):
        m.session(rope_scale=math.inf)


def test_threads_are_capped_with_a_note(seed_files):
    import os
    m = statekv.Model(seed_files["text-qwen3"], threads=100000)
    info = m.info()
    assert info["threads"] == 2 * os.cpu_count() or info["threads"] <= 2 * os.cpu_count()
    assert "capped" in info["threads_note"] and "100000" in info["threads_note"]
    assert np.isfinite(m.logits([1, 2])).all()


def test_a_huge_budget_allocates_only_what_is_carried(seed_files, tmp_path):
    """B = 10^7 with a handful of tokens: C holds those tokens (it grows with what it holds)
    and the session, saved and loaded, stays that small; it computes what B = 100 (also more
    than the 63 tokens) computes."""
    m = statekv.Model(seed_files["text-qwen3"], threads=1)
    big, small = m.session(budget=10**7, kv_type="f32"), m.session(budget=100, kv_type="f32")
    rng = np.random.default_rng(3)
    for s in (big, small):
        s.prefill([1, 2, 3])
    for _ in range(12):
        step = rng.integers(0, seeds.N_VOCAB, 5)
        big.add_step(step)
        small.add_step(step)
    assert big.stats()["bytes_carried"] < 2**20
    np.testing.assert_array_equal(big.question_logits([4, 5]), small.question_logits([4, 5]))
    big.save(tmp_path / "big.statekv")
    loaded = m.load_session(tmp_path / "big.statekv")
    assert loaded.stats()["bytes_carried"] < 2**20
    np.testing.assert_array_equal(loaded.question_logits([4, 5]), big.question_logits([4, 5]))


def test_a_prompt_beyond_memory_is_refused_before_allocating(seed_files):
    m = statekv.Model(seed_files["text-qwen3"], threads=1)
    # 4 million tokens: the attention mask alone would be 32 TB
    with pytest.raises(ValueError, match="GiB"):
        m.logits(np.ones(4_000_000, np.int32))


# ---- session files ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def session_model(seed_files):
    return statekv.Model(seed_files["text-qwen3"], threads=1)


@pytest.fixture(scope="module")
def session_files(session_model, tmp_path_factory):
    return seeds.save_sessions(session_model, tmp_path_factory.mktemp("sessions"))


def test_a_flipped_payload_bit_is_refused(session_model, session_files, tmp_path):
    data = bytearray(session_files["statekv"].read_bytes())
    g = ge.parse(bytes(data))
    total = sum(len(t.body) for t in g.tensors)
    data[len(data) - total + 123] ^= 0x10
    p = tmp_path / "flip.statekv"
    p.write_bytes(bytes(data))
    with pytest.raises(statekv.ModelError, match="checksum") as e:
        session_model.load_session(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize("session,key,value,expected", [
    ("statekv", "statekv.n_tokens", ge.Value(ge.I64, 3), "statekv.n_tokens"),
    ("full", "statekv.detailed.chunks", ge.Value(ge.ARRAY, [], ge.I64), "statekv.n_tokens"),
    ("statekv-f16", "statekv.detailed.chunks", ge.Value(ge.ARRAY, [5, 5, 5, 5, 2**31 - 1, 5], ge.I64),
     "impossible chunk"),
    ("statekv", "statekv.next_position", ge.Value(ge.I64, 2**31 + 7), "out of range"),
    ("statekv", "statekv.n_steps", ge.Value(ge.I64, 99), "out of range"),
    ("statekv", "statekv.carried.n_kept", ge.Value(ge.I64, 5), "statekv.carried.n_kept"),
    ("window", "statekv.window.step_begin", ge.Value(ge.ARRAY, [3, 3, 7], ge.I64), "strictly increasing"),
    ("window", "statekv.window.n_prefix", ge.Value(ge.I64, 1), "first step"),
    ("statekv", "statekv.options.budget", ge.Value(ge.I64, 0), "options"),
    ("statekv", "statekv.options.mode", ge.Value(ge.STRING, b"fast"), "options"),
    ("statekv", "statekv.options.rope_scale", f32(math.inf), "options"),
    ("statekv", "statekv.options.budget", ge.Value(ge.STRING, b"6"), "statekv.options.budget"),
    ("statekv", "statekv.session.version", u32(1), "checksum"),
])
def test_session_header_fields_are_checked(session_model, session_files, tmp_path, session, key, value, expected):
    def edit(g):
        g.set(key, value)
        mutate.reseal(g)  # the payload is intact: the header checks themselves must refuse
    p = edited(session_files[session], tmp_path / "s.statekv", edit)
    with pytest.raises(statekv.ModelError) as e:
        session_model.load_session(p)
    assert str(p) in str(e.value) and expected in str(e.value), str(e.value)


def test_resealed_non_finite_payload_is_refused(session_model, session_files, tmp_path):
    def edit(g):
        t = g.tensor("d.k.0")
        body = bytearray(t.body)
        body[0:4] = np.float32(np.inf).tobytes()
        t.body = bytes(body)
        mutate.reseal(g)
    p = edited(session_files["statekv"], tmp_path / "inf.statekv", edit)
    with pytest.raises(statekv.ModelError, match="d.k.0.*non-finite"):
        session_model.load_session(p)


def test_unmodified_seed_sessions_load(session_model, session_files):
    """The checks accept what save() writes (each mode, f16 and chunked layouts)."""
    for name, p in session_files.items():
        s = session_model.load_session(p)
        assert s.n_tokens == 3 + sum(len(x) for x in seeds.SESSION_STEPS), name
        assert np.isfinite(s.question_logits([1, 2])).all()


# ---- the harness itself -------------------------------------------------------------------

def test_gguf_edit_round_trip(seed_files):
    for p in seed_files.values():
        data = p.read_bytes()
        assert ge.serialize(ge.parse(data)) == data


def test_payload_checksum_matches_the_runtime(session_files):
    for p in session_files.values():
        g = ge.parse(p.read_bytes())
        assert g.get("statekv.payload.checksum").data == mutate.payload_checksum(g)


def test_short_fuzz_run(tmp_path):
    """~150 mutated text, mmproj and session files, each in its own process: no signal, no hang,
    no exception other than a ModelError/ValueError naming the file."""
    ctx = run.Context(tmp_path / "work", ["text", "mmproj", "session"])
    report = run.fuzz(ctx, ["text", "mmproj", "session"], 150, base_seed=11, out_dir=tmp_path / "findings",
                      timeout=60, progress=False)
    counts = report["counts"]
    bad = [f for f in report["findings"]]
    assert not bad, json.dumps(bad[:3], indent=1, default=str)[:4000]
    for kind, c in counts.items():
        assert sum(c.values()) == 50
        assert c["clean"] > 10, (kind, c)  # the mutations do reach the checks


# found by the long fuzz run (SIGABRT in a test mul_mat): a zero size where any size is allowed
@pytest.mark.parametrize("seed,tensor,dims,text", [
    ("mmproj-gemma3", "mm.input_projection.weight", [0, 16], "text-gemma3"),
    ("mmproj-eagle2_5", "mm.model.mlp.1.weight", [64, 0], "text-qwen2"),
    ("mmproj-internvl", "mm.model.mlp.1.weight", [64, 0], "text-qwen2"),
])
def test_empty_wildcard_dimensions_are_refused(seed_files, tmp_path, seed, tensor, dims, text):
    p = edited(seed_files[seed], tmp_path / "m.gguf", lambda g: set_dims(g, tensor, dims))
    expect_error(p, tensor, "any positive size", mmproj=True, text=seed_files[text])


def test_new_families_seeds_run_clean(seed_files):
    """The Gemma 3 text seed (sliding windows), and the Gemma 3 / Eagle 2.5 mmproj seeds, unmutated."""
    m = statekv.Model(seed_files["text-gemma3"], threads=1)
    s = m.session(mode="statekv", budget=4)
    s.prefill([1, 2])
    for _ in range(3):
        s.add_step([3, 4, 5])
    assert np.isfinite(s.question_logits([6])).all()
    for family in ("gemma3", "eagle2_5"):
        text, shape = seeds.MMPROJ_PAIRS[family]
        vm = statekv.Model(seed_files[f"text-{text}"], mmproj=seed_files[f"mmproj-{family}"], threads=1)
        assert np.isfinite(vm.encode_frames(np.zeros(shape, np.float32))).all()


# found by the long fuzz run (SIGABRT): the Gemma 3 input projection is used transposed, so a
# quantized one cannot be; it must be a float type
def test_quantized_gemma3_input_projection_is_refused(seed_files, tmp_path):
    p = edited(seed_files["mmproj-gemma3"], tmp_path / "m.gguf", lambda g: set_type(g, "mm.input_projection.weight", 8))
    expect_error(p, "mm.input_projection.weight", "f32, f16 or bf16", mmproj=True, text=seed_files["text-gemma3"])
