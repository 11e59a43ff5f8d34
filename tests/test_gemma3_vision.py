"""Gemma 3 vision: the ``gemma3`` mmproj (SigLIP at 896 px, patch 14, 4 x 4 average pooling to 256
rows, soft-embedding norm, input projection) and image prompts in the decoder (bidirectional
within an image), against transformers' ``Gemma3ForConditionalGeneration`` on a tiny random
checkpoint converted by ``statekv convert --mmproj`` (tests/tiny.py ``make_gemma3vl``), and
sessions in every mode against the PyTorch reference (tests/statekv_reference.py).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import statekv
from statekv_reference import StateKVReference, check_carried, load_hf
from test_session import TOL, rel
from tiny import GEMMA3_IMAGE_TOKENS

BOI, EOI, IMAGE = (GEMMA3_IMAGE_TOKENS[k] for k in ("boi_token_index", "eoi_token_index", "image_token_index"))


@pytest.fixture(scope="module")
def gemma3vl(tiny_hf_dir, tmp_path_factory):
    """(statekv.Model with its mmproj, transformers model, text GGUF path, mmproj path)."""
    from statekv.convert import convert

    hf_dir = tiny_hf_dir("gemma3vl")
    out = tmp_path_factory.mktemp("gguf-gemma3vl")
    text, mmproj = out / "gemma3vl-f32.gguf", out / "mmproj-gemma3vl-f32.gguf"
    convert(hf_dir, text, "f32", mmproj_out=mmproj)
    model = statekv.Model(str(text), mmproj=str(mmproj), threads=1)
    return model, load_hf(hf_dir), text, mmproj


def pixels(n, seed):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, 896, 896)).astype(np.float32)


@torch.no_grad()
def hf_features(hf, px):
    return hf.model.get_image_features(torch.tensor(px), return_dict=True).pooler_output.numpy()


def test_mmproj_metadata_and_features_equal_transformers(gemma3vl):
    model, hf, _, _ = gemma3vl
    info = model.info()
    assert info["vision.projector"] == "gemma3"
    assert int(info["vision.image_size"]) == 896 and int(info["vision.patch_size"]) == 14
    px = pixels(2, seed=0)
    got = np.asarray(model.encode_frames(px))
    want = hf_features(hf, px)
    assert got.shape == want.shape == (2, 256, 64)
    assert rel(got, want) <= TOL
    # the two frames differ (not a constant output)
    assert rel(got[0], got[1]) > 0.1


def image_prompt(n_images, seed):
    """Text, then per image ``\\n``-like text, <start_of_image>, 256 image tokens, <end_of_image>,
    then a question: (ids, rows of the image tokens, blocks)."""
    rng = np.random.default_rng(seed)
    ids, rows, blocks = list(rng.integers(0, 150000, 4)), [], [0] * 4
    for i in range(n_images):
        head = list(rng.integers(0, 150000, 3)) + [BOI]
        ids += head
        blocks += [0] * len(head)
        rows += list(range(len(ids), len(ids) + 256))
        ids += [IMAGE] * 256
        blocks += [i + 1] * 256
        ids += [EOI]
        blocks += [0]
    tail = list(rng.integers(0, 150000, 6))
    return np.array(ids + tail), np.array(rows, dtype=np.int32), np.array(blocks + [0] * len(tail), dtype=np.int32)


@torch.no_grad()
def hf_logits(hf, ids, px):
    """transformers' own forward of an image prompt: token_type_ids mark image tokens, as the
    Gemma 3 processor gives them."""
    ids_t = torch.tensor(ids)[None]
    out = hf(input_ids=ids_t, pixel_values=torch.tensor(px), token_type_ids=(ids_t == IMAGE).long())
    return out.logits[0].numpy()


def test_multi_image_prompt_logits_equal_transformers(gemma3vl):
    model, hf, _, _ = gemma3vl
    px = pixels(2, seed=1)
    ids, rows, blocks = image_prompt(2, seed=1)
    feats = np.asarray(model.encode_frames(px)).reshape(-1, 64)
    got = model.logits(ids, embeddings=feats, embedding_rows=rows, blocks=blocks)
    want = hf_logits(hf, ids, px)
    assert rel(got, want) <= TOL
    # greedy next tokens agree where transformers' choice is clear
    top2 = np.sort(want, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-3 * np.abs(want).max()
    assert np.array_equal(got.argmax(1)[clear], want.argmax(1)[clear])


def video_steps(n_frames, seed):
    """One frame per step: 3 text tokens, <start_of_image>, 256 image tokens (one bidirectional
    block), <end_of_image>, 2 text tokens."""
    rng = np.random.default_rng(seed)
    steps = []
    for _ in range(n_frames):
        ids = np.array(list(rng.integers(0, 150000, 3)) + [BOI] + [IMAGE] * 256 + [EOI] + list(rng.integers(0, 150000, 2)))
        blocks = np.where(ids == IMAGE, 1, 0).astype(np.int32)
        steps.append((ids, np.arange(4, 260, dtype=np.int32), blocks))
    return steps


@pytest.mark.parametrize("mode,budget,window", [("full", 0, 0), ("statekv", 100_000, 0), ("window", 0, 100),
                                                ("statekv", 300, 0), ("window", 0, 1)])
def test_video_session_matches_reference_and_transformers(gemma3vl, mode, budget, window):
    """A 4-frame video, a frame per step, in every mode: the global layer's selections after every
    step and the question logits equal the reference's (fed transformers' own image features);
    with room for everything, the answer logits equal transformers' whole-prompt forward."""
    model, hf, _, _ = gemma3vl
    px = pixels(4, seed=2)
    feats = np.asarray(model.encode_frames(px))
    ref_feats = hf_features(hf, px)
    steps = video_steps(4, seed=2)
    prefix, question = np.arange(100, 105), np.arange(300, 307)
    s = model.session(mode=mode, budget=budget or 40, window=window or 16, kv_type="f32")
    ref = StateKVReference(hf, mode, budget=budget or 40, window=window or 16)
    s.prefill(prefix)
    ref.prefill(prefix)
    ties = []
    for t, (ids, rows, blocks) in enumerate(steps):
        s.add_step(ids, embeddings=feats[t], embedding_rows=rows, blocks=blocks)
        ref.add_step(ids, ref_feats[t], rows, None, blocks)
        check_carried(s, ref, f"{mode}, after frame {t}", ties)
    got = s.question_logits(question)
    assert rel(got, ref.question_logits(question)) <= TOL
    assert len(ties) <= 2, ties
    if mode == "full" or budget >= 100_000 or window >= 100:
        whole = np.concatenate([prefix] + [ids for ids, _, _ in steps] + [question])
        want = hf_logits(hf, whole, px)[-len(question):]
        assert rel(got, want) <= TOL


def test_mmproj_pairs_only_with_gemma3(gemma3vl, tiny_gguf, tmp_path):
    """A gemma3 mmproj with another family's text model, and another family's mmproj with the
    gemma3 text model: clear errors naming both files."""
    from statekv.families.internvl.random_model import make_random_internvl_mmproj

    _, _, text, mmproj = gemma3vl
    with pytest.raises(statekv.ModelError, match="gemma3.*not a pair"):
        statekv.Model(str(tiny_gguf("qwen2")), mmproj=str(mmproj), threads=1)
    other = make_random_internvl_mmproj(tmp_path / "internvl.gguf", dict(hidden_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=64), n_embd_out=64, qtype="f32")
    with pytest.raises(statekv.ModelError, match="internvl.*not a pair") as e:
        statekv.Model(str(text), mmproj=str(other), threads=1)
    assert str(text) in str(e.value) and str(other) in str(e.value)


def test_greedy_answer_over_a_video_follows_transformers(gemma3vl):
    """Greedy tokens of a question over a 3-frame video (statekv with B >= all, so the model's own
    answer): each is transformers' argmax of the whole prompt + answer so far, wherever that
    choice is clear."""
    model, hf, _, _ = gemma3vl
    px = pixels(3, seed=7)
    feats = np.asarray(model.encode_frames(px))
    steps = video_steps(3, seed=7)
    prefix, question = np.arange(100, 105), np.arange(300, 307)
    s = model.session(mode="statekv", budget=100_000, kv_type="f32")
    s.prefill(prefix)
    for t, (ids, rows, blocks) in enumerate(steps):
        s.add_step(ids, embeddings=feats[t], embedding_rows=rows, blocks=blocks)
    answer = [int(x) for x in s.generate(question, max_tokens=6, ignore_eos=True)]
    assert len(answer) == 6
    whole = np.concatenate([prefix] + [ids for ids, _, _ in steps] + [question, answer])
    logits = hf_logits(hf, whole, px)
    start = len(whole) - len(answer) - 1
    for i, tok in enumerate(answer):
        row = logits[start + i]
        top2 = np.sort(row)[-2:]
        if top2[1] - top2[0] > 1e-3 * np.abs(row).max():
            assert tok == int(row.argmax()), (i, tok, int(row.argmax()))


def test_frames_of_another_size_are_refused(gemma3vl):
    model, _, _, _ = gemma3vl
    with pytest.raises(ValueError, match="896 x 896"):
        model.encode_frames(np.zeros((1, 3, 448, 448), np.float32))


QUESTION = "What happens?"


def test_video_chat_equals_transformers(gemma3vl):
    """VideoChat on Gemma 3 (frames as timestamped images, each frame's image tokens one
    bidirectional block) in full mode: the question's logits equal transformers' forward of the
    same prompt written out as text (tokenized by the checkpoint's tokenizer) with pixels from
    transformers' own Gemma 3 image processor."""
    from transformers import AutoTokenizer
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    _, hf, text, mmproj = gemma3vl
    vlm = statekv.load(str(text), str(mmproj), threads=1)
    frames = np.random.default_rng(5).integers(0, 256, (3, 120, 160, 3), dtype=np.uint8)
    chat = vlm.video_chat(mode="full", fps=1.0, kv_type="f32")
    chat.add_frames(list(frames), timestamps=[0.0, 1.0, 2.0])
    got = chat.question_logits(QUESTION)

    image = "\n\n<start_of_image>" + "<image_soft_token>" * 256 + "<end_of_image>\n\n"
    prompt = ("<bos><start_of_turn>user\n" + "".join(f"00:0{t}{image}" for t in range(3))
              + f"{QUESTION}<end_of_turn>\n<start_of_turn>model\n")
    tok = AutoTokenizer.from_pretrained(hf.config._name_or_path or text.parent)
    ids = tok(prompt, add_special_tokens=False).input_ids
    n_q = len(tok(f"{QUESTION}<end_of_turn>\n<start_of_turn>model\n", add_special_tokens=False).input_ids)
    px = Gemma3ImageProcessorPil(size={"height": 896, "width": 896})(images=list(frames), return_tensors="np").pixel_values
    want = hf_logits(hf, np.array(ids), px)[-n_q:]
    assert got.shape == want.shape
    assert rel(got, want) <= TOL


def test_preprocessing_equals_transformers_image_processor():
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    from statekv.families.gemma3 import preprocess_frames

    frames = np.random.default_rng(6).integers(0, 256, (2, 90, 200, 3), dtype=np.uint8)
    want = Gemma3ImageProcessorPil(size={"height": 896, "width": 896})(images=list(frames), return_tensors="np").pixel_values
    got = preprocess_frames(frames)
    assert got.shape == want.shape == (2, 3, 896, 896)
    assert np.abs(got - want).max() <= 1e-6
