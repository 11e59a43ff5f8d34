"""Eagle 2.5: the eagle2_5 mmproj layout statekv defines (docs/eagle2_5-gguf.md), its converter from
NVlabs' checkpoint names, the tower (SigLIP cut at select_layer, pixel shuffle, MLP projector) and
video prompts in every cache mode.

transformers has no Eagle 2.5 class here, so the reference is a short PyTorch composition of
transformers' own blocks as NVlabs composes them (tests/tiny.py ``EagleParts``: SiglipVisionModel,
NVlabs' pixel_shuffle, the mlp1 projector, Qwen2ForCausalLM) on a tiny random checkpoint saved in
NVlabs' tensor names, and the StateKV reference (tests/statekv_reference.py) over its Qwen2.
"""
from __future__ import annotations

import numpy as np
import pytest

import statekv
from statekv_reference import StateKVReference, check_carried, plain_logits
from test_session import TOL, rel
import tiny

QUESTION = "What happens?"


@pytest.fixture(scope="module", params=[-1, -2], ids=["select-1", "select-2"])
def eagle(request, tmp_path_factory):
    """(statekv.Model with its mmproj, EagleParts reference, text GGUF, mmproj GGUF, HF dir)."""
    from statekv.convert import convert

    hf_dir = tiny.make_eagle2_5(tmp_path_factory.mktemp("hf-eagle"), seed=3, select_layer=request.param)
    out = tmp_path_factory.mktemp("gguf-eagle")
    text, mmproj = out / "eagle-f32.gguf", out / "mmproj-eagle-f32.gguf"
    convert(hf_dir, text, "f32", mmproj_out=mmproj)
    return statekv.Model(str(text), mmproj=str(mmproj), threads=1), tiny.load_eagle2_5(hf_dir), text, mmproj, hf_dir


def pixels(n, seed):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, 448, 448)).astype(np.float32)


def test_mmproj_layout_and_features(eagle):
    from gguf import GGUFReader

    model, ref, _, mmproj, _ = eagle
    r = GGUFReader(mmproj)
    assert r.fields["clip.projector_type"].contents() == "eagle2_5"
    select = r.fields["clip.vision.eagle2_5.select_layer"].contents()
    assert select == ref.select_layer
    # only what runs: the blocks before the selected layer, the post-norm for -1 only
    assert r.fields["clip.vision.block_count"].contents() == 3 + 1 + select
    names = {t.name for t in r.tensors}
    assert ("v.post_ln.weight" in names) == (select == -1)
    assert f"v.blk.{3 + select}.ln1.weight" in names and f"v.blk.{4 + select}.ln1.weight" not in names
    px = pixels(2, seed=0)
    got, want = np.asarray(model.encode_frames(px)), ref.image_features(px)
    assert got.shape == want.shape == (2, 256, 64)
    assert rel(got, want) <= TOL
    assert rel(got[0], got[1]) > 0.1


def video(model, n_frames, seed):
    """A prompt built by the family's builder over the tiny vocabulary (which has <img>, </img>,
    <IMG_CONTEXT>), frames at 1 fps: (prefix, steps [(ids, rows)], question)."""
    from statekv.families.eagle2_5 import VideoPromptBuilder
    from statekv.text.tokenizer import tokenizer_from_gguf

    b = VideoPromptBuilder(tokenizer_from_gguf(model.path))
    return b.prefix(), [b.step(i + 1, float(i)) for i in range(n_frames)], b.question(QUESTION)


@pytest.mark.parametrize("mode,budget,window", [("full", 0, 0), ("statekv", 100_000, 0), ("window", 0, 100),
                                                ("statekv", 300, 0), ("window", 0, 1)])
def test_video_in_every_mode(eagle, mode, budget, window):
    """A 3-frame video, a frame per step: selections after every step and question logits equal
    the reference's (fed the composition's own features); with room for everything, they equal
    the whole prompt through transformers' Qwen2."""
    model, ref, _, _, _ = eagle
    px = pixels(3, seed=1)
    feats, ref_feats = np.asarray(model.encode_frames(px)), ref.image_features(px)
    prefix, steps, question = video(model, 3, seed=1)
    s = model.session(mode=mode, budget=budget or 40, window=window or 16, kv_type="f32")
    r = StateKVReference(ref.language_model, mode, budget=budget or 40, window=window or 16)
    s.prefill(prefix)
    r.prefill(prefix)
    ties = []
    for t, (ids, rows) in enumerate(steps):
        s.add_step(ids, embeddings=feats[t], embedding_rows=rows)
        r.add_step(ids, ref_feats[t], rows)
        check_carried(s, r, f"{mode}, after frame {t}", ties)
    got = s.question_logits(question)
    assert rel(got, r.question_logits(question)) <= TOL
    assert len(ties) <= 2, ties
    if mode == "full" or budget >= 100_000 or window >= 100:
        ids = list(prefix) + [i for st, _ in steps for i in st] + list(question)
        rows = np.concatenate([rw + len(prefix) + sum(len(st) for st, _ in steps[:k]) for k, (_, rw) in enumerate(steps)])
        want = plain_logits(ref.language_model, ids, ref_feats.reshape(-1, 64), rows)[-len(question):]
        assert rel(got, want) <= TOL
        # greedy answer tokens: transformers' argmax of prompt + answer so far, where clear
        answer = [int(x) for x in s.generate(question, max_tokens=5, ignore_eos=True)]
        logits = plain_logits(ref.language_model, ids + answer, ref_feats.reshape(-1, 64), rows)
        for i, tok in enumerate(answer):
            row = logits[len(ids) - 1 + i]
            top2 = np.sort(row)[-2:]
            if top2[1] - top2[0] > 1e-3 * np.abs(row).max():
                assert tok == int(row.argmax())


def test_video_chat_equals_the_written_out_prompt(eagle):
    """VideoChat on Eagle 2.5 (frames numbered and timed, one tile each) in full mode equals
    transformers' Qwen2 on the prompt written out as text (the processor's format), tokenized by the
    checkpoint's tokenizer, with the composition's features of the family's preprocessing."""
    from transformers import AutoTokenizer

    from statekv.families.eagle2_5 import preprocess_frames

    model, ref, text, mmproj, hf_dir = eagle
    vlm = statekv.load(str(text), str(mmproj), threads=1)
    frames = np.random.default_rng(4).integers(0, 256, (2, 90, 120, 3), dtype=np.uint8)
    chat = vlm.video_chat(mode="full", fps=1.0, kv_type="f32")
    chat.add_frames(list(frames), timestamps=[0.0, 1.5])
    got = chat.question_logits(QUESTION)
    img = "<img>" + "<IMG_CONTEXT>" * 256 + "</img>"
    prompt = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nThe first video: "
              f"Frame 1 sample at 0.00s: {img}Frame 2 sample at 1.50s: {img}"
              f"\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    tok = AutoTokenizer.from_pretrained(hf_dir)
    ids = tok(prompt, add_special_tokens=False).input_ids
    n_q = len(tok(f"\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False).input_ids)
    rows = np.flatnonzero(np.array(ids) == tiny.EAGLE_IMAGE_TOKEN)
    feats = ref.image_features(preprocess_frames(frames)).reshape(-1, 64)
    want = plain_logits(ref.language_model, ids, feats, rows)[-n_q:]
    assert got.shape == want.shape
    assert rel(got, want) <= TOL


def test_benchmark_step_geometry_is_the_first_frames_step(eagle):
    from statekv.families.eagle2_5 import VideoPromptBuilder, layout
    from statekv.text.tokenizer import tokenizer_from_gguf

    model = eagle[0]
    ids, rows = VideoPromptBuilder(tokenizer_from_gguf(model.path)).step(1, 0.0)
    assert (int(rows[0]), len(ids) - int(rows[-1]) - 1) == layout.STEP_TEXT_TOKENS


def test_bad_pairs_and_sizes(eagle, tiny_gguf, tmp_path):
    model, _, text, mmproj, _ = eagle
    with pytest.raises(statekv.ModelError, match="eagle2_5.*qwen2.*not a pair"):
        statekv.Model(str(tiny_gguf("qwen3")), mmproj=str(mmproj), threads=1)
    with pytest.raises(ValueError, match="448 x 448"):
        model.encode_frames(np.zeros((1, 3, 224, 224), np.float32))


def test_converter_refuses_what_it_cannot_express(tmp_path):
    import json
    import shutil

    from statekv.convert import ConversionError, convert

    src = tiny.make_eagle2_5(tmp_path / "hf", seed=5)
    for edit, needle in [(dict(select_layer=-9), "select_layer -9"), (dict(mlp_connector_layers=3), "mlp_connector"),
                         (dict(downsample_ratio=0.3), "downsample_ratio")]:
        d = tmp_path / f"bad-{len(edit)}-{needle[:6]}"
        shutil.copytree(src, d)
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(edit)
        (d / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ConversionError, match=needle):
            convert(d, tmp_path / "t.gguf", "f32", mmproj_out=tmp_path / "m.gguf")
        assert not (tmp_path / "m.gguf").exists()


def test_random_tower_for_benchmarks(tmp_path, tiny_gguf):
    from statekv.families import get

    path = get("eagle2_5").make_random_mmproj(tmp_path / "eagle-random.gguf", dict(hidden_size=32, intermediate_size=64,
                                              num_hidden_layers=2, num_attention_heads=2), 64, "f16")
    m = statekv.Model(str(tiny_gguf("qwen2")), mmproj=str(path), threads=1)
    out = np.asarray(m.encode_frames(pixels(1, seed=2)))
    assert out.shape == (1, 256, 64) and np.isfinite(out).all()
