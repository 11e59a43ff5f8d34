"""Frames to committed steps natively: ``Session.add_frames`` (uint8 RGB frames, normalized in the
encoder graph, visual rows read in place by the steps) against the path through numpy that it
replaces (preprocess to float pixels -> ``Model.encode_frames`` -> rows -> ``Session.add_step``),
for the tiny InternVL and Qwen3-VL models; ``Model.vision_info``; and the errors of bad input.

Both paths run the same encoder and decoder graphs on the same values (the normalization table
is computed with the processors' own float rounding), so the results are compared for equality,
within 1e-6 at most. The native entry points are those of the extension (``model._m``,
``session._s``); the Python API wraps them separately.
"""
from __future__ import annotations

import numpy as np
import pytest

import statekv
from statekv.families import internvl as ivl
from statekv.families import qwen3vl as q3
from test_internvl import make_internvl, random_frames

EXACT = 1e-6  # max |native - reference| allowed (expected 0: the same graphs on the same values)


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def float_pixels(kind, frames, info):
    """What the rows path feeds encode_frames: the package's preprocessing with the mmproj's
    mean/std (frames are already at the model's size, so no resampling happens)."""
    if kind == "internvl":
        return ivl.preprocess_frames(frames, info["image_size"], info["image_mean"], info["image_std"])
    return q3.preprocess_frames(frames, size=frames.shape[1:3], image_mean=info["image_mean"],
                                image_std=info["image_std"])


# ----------------------------------------------------------------------------- the models
@pytest.fixture(scope="module")
def internvl(tmp_path_factory, qwen2_vocab_gguf):
    from statekv.convert import convert
    from statekv.text.tokenizer import tokenizer_from_gguf

    root = tmp_path_factory.mktemp("native-internvl")
    text, mmproj = root / "internvl.gguf", root / "mmproj-internvl.gguf"
    convert(make_internvl(root / "hf"), text, "f32", mmproj_out=mmproj)
    model = statekv.Model(str(text), mmproj=str(mmproj), threads=1)
    frames = random_frames(np.random.default_rng(3), 3, 448, 448)
    prompt = ivl.build_video_prompt(tokenizer_from_gguf(text), len(frames), "What happens?")
    steps = [(np.asarray(ids, np.int32), rows, None) for ids, rows in zip(prompt.steps, prompt.visual_rows)]
    return dict(kind="internvl", model=model, text=text, frames=frames, prefix=(prompt.prefix, None),
                steps=steps, question=(prompt.question, None))


@pytest.fixture(scope="module")
def qwen3vl(tmp_path_factory, tiny_hf_dir):
    from transformers import AutoTokenizer

    from statekv.convert import convert

    hf = tiny_hf_dir("qwen3vl")
    root = tmp_path_factory.mktemp("native-qwen3vl")
    text, mmproj = root / "qwen3vl.gguf", root / "mmproj-qwen3vl.gguf"
    convert(hf, text, "f32", mmproj_out=mmproj)
    model = statekv.Model(str(text), mmproj=str(mmproj), threads=1)
    frames = np.random.default_rng(5).integers(0, 256, (8, 64, 96, 3), dtype=np.uint8)
    prompt = q3.build_video_prompt(AutoTokenizer.from_pretrained(hf), [1.0, 3.0, 5.0, 7.0], (2, 3), "What happens?")
    steps = [(s.ids, s.rows, s.positions) for s in prompt.steps]
    return dict(kind="qwen3vl", model=model, text=text, frames=frames,
                prefix=(prompt.prefix_ids, prompt.prefix_positions), steps=steps,
                question=(prompt.question_ids, prompt.question_positions))


@pytest.fixture(params=["internvl", "qwen3vl"])
def fam(request):
    return request.getfixturevalue(request.param)


def new_session(f, mode, **kw):
    s = f["model"].session(mode=mode, kv_type="f32", **kw)
    ids, pos = f["prefix"]
    s.prefill(ids, positions=pos)
    return s


def via_rows(f, mode, **kw):
    """The path through numpy: float pixels -> encode_frames -> rows -> add_step."""
    s = new_session(f, mode, **kw)
    rows = f["model"].encode_frames(float_pixels(f["kind"], f["frames"], f["model"]._m.vision_info()))
    for (ids, r, pos), feats in zip(f["steps"], rows):
        s.add_step(ids, embeddings=feats, embedding_rows=r, positions=pos)
    return s


def native(f, mode, batches=1, **kw):
    """The native path: the frames' bytes and the steps' layouts, in `batches` calls."""
    s = new_session(f, mode, **kw)
    fpp = f["model"]._m.vision_frames_per_patch
    steps, frames = f["steps"], f["frames"]
    per = -(-len(steps) // batches)
    for b in range(0, len(steps), per):
        part = steps[b:b + per]
        pos = None if part[0][2] is None else [p for _, _, p in part]
        s._s.add_frames(frames[b * fpp:(b + len(part)) * fpp], [i for i, _, _ in part], [r for _, r, _ in part], pos)
    return s


def answer(f, s):
    ids, pos = f["question"]
    return s.question_logits(ids, positions=pos)


# ----------------------------------------------------------------------------- equality
def small_budget(f):
    """A budget that makes every step select: the prefix plus half a step."""
    return len(f["prefix"][0]) + len(f["steps"][0][0]) // 2


@pytest.mark.parametrize("mode", ["full", "statekv", "window"])
def test_native_frames_equal_rows_path(fam, mode):
    """Same logits, same carried selections, same positions and token counts."""
    kw = {"full": {}, "statekv": {"budget": small_budget(fam)}, "window": {"window": 1}}[mode]
    ref, nat = via_rows(fam, mode, **kw), native(fam, mode, **kw)
    assert nat.n_tokens == ref.n_tokens and nat.next_position == ref.next_position
    assert nat.stats()["steps"] == ref.stats()["steps"] == len(fam["steps"])
    for layer in range(3):
        assert np.array_equal(np.asarray(nat.carried(layer)), np.asarray(ref.carried(layer)))
    assert max_diff(answer(fam, nat), answer(fam, ref)) <= EXACT


def test_native_frames_in_several_calls(fam):
    """Frames given a step at a time continue the same session as one batch does."""
    one = native(fam, "statekv", budget=small_budget(fam))
    many = native(fam, "statekv", batches=len(fam["steps"]), budget=small_budget(fam))
    assert many.n_tokens == one.n_tokens
    assert max_diff(answer(fam, many), answer(fam, one)) <= EXACT


def test_native_frames_then_question_generation(fam):
    """A session fed natively answers as the rows-fed one does (greedy tokens)."""
    ids, pos = fam["question"]
    ref, nat = via_rows(fam, "full"), native(fam, "full")
    assert nat.generate(ids, 5, positions=pos, ignore_eos=True) == ref.generate(ids, 5, positions=pos, ignore_eos=True)


# ----------------------------------------------------------------------------- vision_info
def test_vision_info(fam):
    m = fam["model"]._m
    v = m.vision_info()
    info = m.info()
    assert v["projector"] == info["vision.projector"]
    assert v["patch_size"] == int(info["vision.patch_size"]) and v["image_size"] == int(info["vision.image_size"])
    assert v["frames_per_patch"] == m.vision_frames_per_patch and v["row_width"] == m.vision_row_width
    assert v["n_deepstack"] == int(info["vision.n_deepstack"])
    for key in ("image_mean", "image_std"):
        assert len(v[key]) == 3
        # the f32 values of the file, exactly (info() keeps six decimals)
        assert np.allclose(v[key], [float(x) for x in info[f"vision.{key}"].split(",")], atol=1e-6)
        assert np.array_equal(np.float32(v[key]), np.asarray(v[key], np.float64).astype(np.float32))
    if fam["kind"] == "internvl":
        assert (v["image_size"], v["size_multiple"]) == (448, 448)
    else:
        assert (v["image_size"], v["size_multiple"], v["frames_per_patch"]) == (0, 32, 2)
        assert v["row_width"] == 64 * (1 + v["n_deepstack"])


# ----------------------------------------------------------------------------- bad input
def test_add_frames_bad_pixels(fam):
    s = new_session(fam, "full")
    before = (s.n_tokens, s.next_position)
    frames, steps = fam["frames"], fam["steps"]
    fpp = fam["model"]._m.vision_frames_per_patch
    one = frames[:fpp]
    ids, rows, pos = steps[0]
    args = ([ids], [rows], None if pos is None else [pos])
    with pytest.raises(ValueError, match="uint8"):
        s._s.add_frames(one.astype(np.float32), *args)
    with pytest.raises(ValueError, match="uint8"):
        s._s.add_frames(one.astype(np.int64), *args)
    with pytest.raises(ValueError, match=r"\(n_frames, height, width, 3\)"):
        s._s.add_frames(one[..., :2], *args)
    with pytest.raises(ValueError, match=r"\(n_frames, height, width, 3\)"):
        s._s.add_frames(one[0], *args)
    with pytest.raises(ValueError, match=r"\(n_frames, height, width, 3\)"):
        s._s.add_frames(np.zeros((0,) + one.shape[1:], np.uint8), *args)
    if fam["kind"] == "internvl":
        with pytest.raises(ValueError, match="448 x 448"):
            s._s.add_frames(np.zeros((1, 224, 224, 3), np.uint8), *args)
    else:
        with pytest.raises(ValueError, match="temporal pairs"):
            s._s.add_frames(frames[:3], *args)
        with pytest.raises(ValueError, match="multiples of 32"):
            s._s.add_frames(np.zeros((2, 48, 96, 3), np.uint8), *args)
    assert (s.n_tokens, s.next_position) == before


def test_add_frames_bad_steps(fam):
    s = new_session(fam, "full")
    before = (s.n_tokens, s.next_position)
    frames, steps = fam["frames"], fam["steps"]
    fpp = fam["model"]._m.vision_frames_per_patch
    two = frames[:2 * fpp]
    (ids0, rows0, pos0), (ids1, rows1, pos1) = steps[0], steps[1]
    positions = None if pos0 is None else [pos0, pos1]
    with pytest.raises(ValueError, match="2 step\\(s\\).*1 step layouts"):
        s._s.add_frames(two, [ids0], [rows0], None if pos0 is None else [pos0])
    with pytest.raises(ValueError, match="one row list per step"):
        s._s.add_frames(two, [ids0, ids1], [rows0], positions)
    with pytest.raises(ValueError, match="step 1 places .* visual rows"):
        s._s.add_frames(two, [ids0, ids1], [rows0, rows1[:-1]], positions)
    with pytest.raises(ValueError, match="step 1: embedding row .* out of range"):
        s._s.add_frames(two, [ids0, ids1], [rows0, rows1 + len(ids1)], positions)
    with pytest.raises(ValueError, match="step 0: token id"):
        s._s.add_frames(two, [np.full_like(ids0, -1), ids1], [rows0, rows1], positions)
    if pos0 is not None:
        # the second step's positions go back: found before anything runs
        with pytest.raises(ValueError, match="step 1: positions must continue"):
            s._s.add_frames(two, [ids0, ids1], [rows0, rows1], [pos0, pos0])
    # nothing of a refused call entered the session
    assert (s.n_tokens, s.next_position) == before
    assert s.stats()["steps"] == 0


def test_add_frames_without_mmproj(fam):
    text_only = statekv.Model(str(fam["text"]), threads=1)
    s = text_only.session(mode="full", kv_type="f32")
    ids, rows, pos = fam["steps"][0]
    fpp = fam["model"]._m.vision_frames_per_patch
    with pytest.raises(ValueError, match="without an mmproj"):
        s._s.add_frames(fam["frames"][:fpp], [ids], [rows], None if pos is None else [pos])
    with pytest.raises(ValueError, match="without an mmproj"):
        text_only._m.vision_info()
    assert s.n_tokens == 0
