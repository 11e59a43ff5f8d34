"""InternVL3 end to end against transformers: converter (text + mmproj in llama.cpp's layout),
InternViT encoder + pixel-shuffle projector, frame preprocessing, the video prompt layout, and
StateKV sessions over a 6-frame video.

The checkpoint is a tiny random ``InternVLForConditionalGeneration`` at the real image geometry
(448 x 448, patch 14, downsample 0.5: 1025 vision tokens, 256 visual rows per frame) with a tiny
tower (width 32, 2 layers, 2 heads) and the tiny Qwen2 text model of tests/tiny.py (width 64,
3 layers, 4 / 2 heads), the real InternVL3 vocabulary layout (Qwen2.5 added tokens, then
``<img>`` 151665, ``</img>`` 151666, ``<IMG_CONTEXT>`` 151667, ...; vocab_size 151674) and the
chat template of the ``-hf`` checkpoints. Every expected number comes from transformers or from
the PyTorch reference of docs/DESIGN.md section 1 (tests/statekv_reference.py), never from statekv.

transformers' InternVL video processor needs torchvision, which is not installed here: frames are
compared against the checkpoint's image processor (``GotOcr2ImageProcessorPil``, one tile per
frame) and the prompt against ``InternVLProcessor.replace_video_token`` applied to the chat
template's ``<video>`` placeholder (what the processor's ``__call__`` does with it).
"""
from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import torch

import statekv
import tiny
from statekv_reference import StateKVReference, check_carried, load_hf

TOL = 1e-4          # max|diff| / max|ref| (f32 weights, f32 KV)
N_FRAMES = 6
QUESTION = "What does the person do after opening the door? Answer in one word."
INTERNVL_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
IMG_CONTEXT_ID = 151667
VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=448,
              patch_size=14, attention_bias=True, layer_norm_eps=1e-6, initializer_range=0.05)


def rel(a, b):
    """max|a - b| / max|b| (in float32: exact enough for 1e-4, and fast on (1600, 151674) logits)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def write_mmproj(hf_dir, out, outtype):
    """Only the mmproj half of ``statekv convert --mmproj`` (the text half is the fixture's)."""
    import json

    from statekv.convert import SafetensorsIndex
    from statekv.families.internvl.convert import write_mmproj as write

    return write(hf_dir, json.loads((Path(hf_dir) / "config.json").read_text()), SafetensorsIndex(Path(hf_dir)),
                 out, outtype)


# ----------------------------------------------------------------------------- the checkpoint
def make_internvl(out_dir: Path, seed: int = 0, vision: dict = VISION) -> Path:
    """Save a tiny random InternVLForConditionalGeneration with tokenizer, chat template and
    image processor, like an OpenGVLab/InternVL3-*-hf download (untied lm_head, as InternVL3)."""
    from transformers import (GotOcr2ImageProcessorPil, InternVLConfig, InternVLForConditionalGeneration,
                              PreTrainedTokenizerFast)

    from statekv.families.internvl import CHAT_TEMPLATE

    text = tiny._text_kwargs(False, vocab_size=151674, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    cfg = InternVLConfig(vision_config=vision, text_config=text, downsample_ratio=0.5, image_token_id=IMG_CONTEXT_ID,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(cfg).to(torch.float32).eval()
    tiny._randomize_(model, seed)   # norms ~ N(1, 0.1^2), biases and layer scales ~ N(0 or 1, 0.1^2)
    g = torch.Generator().manual_seed(seed + 17)
    with torch.no_grad():
        emb = model.model.vision_tower.embeddings   # zeros from the HF init
        emb.cls_token.copy_(0.5 * torch.randn(emb.cls_token.shape, generator=g))
        emb.position_embeddings.copy_(0.5 * torch.randn(emb.position_embeddings.shape, generator=g))
        # visual rows at about twice the text embeddings' scale (std ~0.3 vs 0.15)
        model.model.multi_modal_projector.linear_2.weight.mul_(0.2)
        model.model.multi_modal_projector.linear_2.bias.mul_(0.2)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    extra = tiny.QWEN3_EXTRA_TOKENS[:19] + [(151665 + i, t, True) for i, t in enumerate(INTERNVL_TOKENS)]
    base = tiny.make_tokenizer("qwen2", extra_tokens=extra)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token=None, clean_up_tokenization_spaces=False, model_max_length=8192,
        extra_special_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                              "context_image_token": "<IMG_CONTEXT>"})
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out_dir)
    GotOcr2ImageProcessorPil(size={"height": 448, "width": 448}, image_mean=[0.485, 0.456, 0.406],
                             image_std=[0.229, 0.224, 0.225]).save_pretrained(out_dir)
    return out_dir


def random_frames(rng, n, height, width):
    """Smooth random RGB frames (a coarse noise grid, bilinearly upsampled, plus fine noise)."""
    from PIL import Image

    out = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        coarse = rng.integers(0, 256, (max(height // 40, 2), max(width // 40, 2), 3), dtype=np.uint8)
        up = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR), np.int16)
        out[i] = np.clip(up + rng.integers(-20, 21, up.shape), 0, 255).astype(np.uint8)
    return out


class Fixture(types.SimpleNamespace):
    pass


@pytest.fixture(scope="module")
def ivl(tmp_path_factory, qwen2_vocab_gguf):
    from transformers import PreTrainedTokenizerFast

    from statekv.convert import convert
    from statekv.text.tokenizer import tokenizer_from_gguf
    from statekv.families.internvl import build_video_prompt, preprocess_frames

    root = tmp_path_factory.mktemp("internvl")
    hf_dir = make_internvl(root / "hf")
    text, mmproj = root / "internvl-f32.gguf", root / "mmproj-internvl-f32.gguf"
    convert(hf_dir, text, "f32", mmproj_out=mmproj)
    f = Fixture(root=root, hf_dir=hf_dir, text=text, mmproj=mmproj)
    f.model = statekv.Model(str(text), mmproj=str(mmproj), threads=1)
    f.hf = load_hf(hf_dir)
    f.hf_tok = PreTrainedTokenizerFast.from_pretrained(hf_dir)
    f.tok = tokenizer_from_gguf(text)
    rng = np.random.default_rng(0)
    f.frames = random_frames(rng, N_FRAMES, 360, 480)
    f.pixels = preprocess_frames(f.frames)
    f.prompt = build_video_prompt(f.tok, N_FRAMES, QUESTION)
    f.features = f.model.encode_frames(f.pixels)                     # (6, 256, 64)
    return f


@pytest.fixture(scope="module")
def hf_logits(ivl):
    """transformers' forward over the whole prompt with the frames' pixels (its own vision path)."""
    ids = torch.as_tensor(ivl.prompt.ids)[None]
    with torch.no_grad():
        out = ivl.hf(input_ids=ids, pixel_values=torch.from_numpy(ivl.pixels), attention_mask=torch.ones_like(ids))
    return out.logits[0].numpy()


# ----------------------------------------------------------------------------- converter
def test_mmproj_layout_is_llama_cpp(ivl):
    """Metadata, tensor names, shapes and types as llama.cpp's converter writes them for InternVL."""
    from statekv.gguf_io import read_gguf_tensor_infos

    kv, infos, _ = read_gguf_tensor_infos(ivl.mmproj)
    assert kv["general.architecture"] == "clip" and kv["general.type"] == "mmproj"
    assert kv["clip.projector_type"] == "internvl"
    assert kv["clip.has_vision_encoder"] is True and kv["clip.use_gelu"] is True
    want = {"clip.vision.image_size": 448, "clip.vision.patch_size": 14, "clip.vision.embedding_length": 32,
            "clip.vision.feed_forward_length": 64, "clip.vision.block_count": 2, "clip.vision.attention.head_count": 2,
            "clip.vision.projection_dim": 64, "clip.vision.projector.scale_factor": 2}
    assert {k: kv[k] for k in want} == want
    assert kv["clip.vision.attention.layer_norm_epsilon"] == pytest.approx(1e-6)
    assert np.allclose(kv["clip.vision.image_mean"], [0.485, 0.456, 0.406])
    assert np.allclose(kv["clip.vision.image_std"], [0.229, 0.224, 0.225])
    got = {t["name"]: (tuple(t["shape"]), t["type"]) for t in infos}
    F32 = 0
    expect = {"v.class_embd": (32, 1, 1), "v.patch_embd.weight": (14, 14, 3, 32), "v.patch_embd.bias": (32,),
              "v.position_embd.weight": (32, 1025, 1), "mm.model.mlp.0.weight": (128,), "mm.model.mlp.0.bias": (128,),
              "mm.model.mlp.1.weight": (128, 64), "mm.model.mlp.1.bias": (64,), "mm.model.mlp.3.weight": (64, 64),
              "mm.model.mlp.3.bias": (64,)}
    for i in range(2):
        p = f"v.blk.{i}."
        for n in ("attn_q", "attn_k", "attn_v", "attn_out"):
            expect[p + n + ".weight"], expect[p + n + ".bias"] = (32, 32), (32,)
        for n in ("ln1", "ln2"):
            expect[p + n + ".weight"], expect[p + n + ".bias"] = (32,), (32,)
        expect[p + "ls1.weight"] = expect[p + "ls2.weight"] = (32,)
        expect[p + "ffn_up.weight"], expect[p + "ffn_up.bias"] = (32, 64), (64,)
        expect[p + "ffn_down.weight"], expect[p + "ffn_down.bias"] = (64, 32), (32,)
    assert {k: v[0] for k, v in got.items()} == expect
    assert all(t == F32 for _, t in got.values())
    # the values are the checkpoint's (spot check: layer scale, CLS, position table, q bias)
    from safetensors.numpy import load_file

    st = load_file(ivl.hf_dir / "model.safetensors")
    from gguf import GGUFReader

    r = {t.name: np.array(t.data) for t in GGUFReader(ivl.mmproj).tensors}
    assert np.array_equal(r["v.blk.1.ls2.weight"], st["vision_tower.encoder.layer.1.lambda_2"])
    assert np.array_equal(r["v.class_embd"].ravel(), st["vision_tower.embeddings.cls_token"].ravel())
    assert np.array_equal(r["v.position_embd.weight"].ravel(), st["vision_tower.embeddings.position_embeddings"].ravel())
    assert np.array_equal(r["v.blk.0.attn_k.bias"], st["vision_tower.encoder.layer.0.attention.k_proj.bias"])
    assert np.array_equal(r["mm.model.mlp.3.weight"], st["multi_modal_projector.linear_2.weight"])


def test_text_gguf_is_plain_qwen2(ivl):
    from statekv.gguf_io import read_gguf_tensor_infos

    kv, infos, _ = read_gguf_tensor_infos(ivl.text)
    names = {t["name"] for t in infos}
    assert kv["general.architecture"] == "qwen2"
    assert "output.weight" in names and "token_embd.weight" in names   # untied, as InternVL3
    assert not any(n.startswith(("v.", "mm.")) for n in names)
    assert len(names) == 2 + 1 + 3 * 12
    toks = kv["tokenizer.ggml.tokens"]
    assert [toks[151665 + i] for i in range(len(INTERNVL_TOKENS))] == INTERNVL_TOKENS
    assert kv["tokenizer.ggml.token_type"][IMG_CONTEXT_ID] == 3   # control: matched whole in text


@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_quantized_mmproj(ivl, outtype, tmp_path):
    """f16 / q8_0 files: llama.cpp's types (patch kernel F16 for f16 and F32 otherwise; tables and
    1-D tensors F32) and features close to transformers' (f16 weights round at 2^-11, q8_0 at
    about 2^-8 per block: a few 1e-3 through the tower, hence 3e-2 here, not the f32 1e-4)."""
    from statekv.gguf_io import read_gguf_tensor_infos

    mmproj = write_mmproj(ivl.hf_dir, tmp_path / "m.gguf", outtype)
    _, infos, _ = read_gguf_tensor_infos(mmproj)
    types_ = {t["name"]: t["type"] for t in infos}
    F32, F16, Q8_0 = 0, 1, 8
    mat = F16 if outtype == "f16" else Q8_0
    assert types_["v.patch_embd.weight"] == (F16 if outtype == "f16" else F32)
    assert types_["v.position_embd.weight"] == F32 and types_["v.class_embd"] == F32
    assert types_["v.blk.0.attn_q.weight"] == mat and types_["v.blk.1.ffn_down.weight"] == mat
    assert types_["mm.model.mlp.1.weight"] == mat and types_["mm.model.mlp.3.weight"] == mat
    assert types_["v.blk.0.ls1.weight"] == F32 and types_["v.blk.0.ln1.weight"] == F32
    m = statekv.Model(str(ivl.text), mmproj=str(mmproj), threads=1)
    with torch.no_grad():
        ref = ivl.hf.model.get_image_features(pixel_values=torch.from_numpy(ivl.pixels[:2]),
                                              return_dict=True).pooler_output.numpy()
    assert rel(m.encode_frames(ivl.pixels[:2]), ref) <= 3e-2


# ----------------------------------------------------------------------------- vision
def test_f16_tower_to_f32_roundoff(tmp_path, monkeypatch):
    """An f16 mmproj gives transformers' features with the same weights rounded to f16, to f32
    round-off: statekv's CPU product of F16 weights (graph/packed_matmul.h) keeps the activations in
    f32, where ggml's rounds them to f16 (about 1e-3 here). Sizes chosen against its blocking: 72 and
    600 rows (not multiples of its 16-row panels), depths of 588 (patch pixels), 600 and 288 (past
    its 256-deep blocks, with a remainder), 1,025 columns a frame (not a multiple of its 6). Both
    kernel widths (STATEKV_GEMM_LANES): 8 lanes (24-row panels, 4 columns, 256 deep) and AVX-512's
    16 (48 rows, 8 columns, 128 deep), whichever this CPU runs natively."""
    from statekv.convert import convert
    from statekv.families.internvl import preprocess_frames

    hf_dir = make_internvl(tmp_path / "hf", seed=3,
                           vision=dict(VISION, hidden_size=72, intermediate_size=600, num_attention_heads=2))
    text, mmproj = tmp_path / "t.gguf", tmp_path / "m.gguf"
    convert(hf_dir, text, "f32", mmproj_out=mmproj)
    mmproj_f16 = write_mmproj(hf_dir, tmp_path / "m16.gguf", "f16")
    hf = load_hf(hf_dir)
    with torch.no_grad():   # what the f16 file stores: every matrix and the patch kernel as F16
        for name, p in hf.model.named_parameters():
            if name.startswith(("vision_tower", "multi_modal_projector")) and p.ndim >= 2 \
                    and not name.endswith(("position_embeddings", "cls_token")):
                p.copy_(p.half().float())
    pixels = preprocess_frames(random_frames(np.random.default_rng(5), 2, 448, 448))
    with torch.no_grad():
        ref = hf.model.get_image_features(pixel_values=torch.from_numpy(pixels), return_dict=True).pooler_output.numpy()
    for lanes in ("8", "16"):
        monkeypatch.setenv("STATEKV_GEMM_LANES", lanes)
        got = statekv.Model(str(text), mmproj=str(mmproj_f16), threads=2).encode_frames(pixels)
        # 7e-7 measured at both widths; f16 activations: ~1e-4 a product
        assert rel(got, ref) <= 1e-5, f"{lanes} lanes: rel {rel(got, ref):.3g}"
    # not vacuous: the unrounded f32 file is far from the rounded reference (4.5e-4 measured)
    exact = statekv.Model(str(text), mmproj=str(mmproj), threads=2).encode_frames(pixels)
    assert rel(exact, ref) > 1e-4


def test_vision_features_match_transformers(ivl):
    """encode_frames (one batch of 6, then batches of 1 and 4) == get_image_features."""
    with torch.no_grad():
        ref = ivl.hf.model.get_image_features(pixel_values=torch.from_numpy(ivl.pixels),
                                              return_dict=True).pooler_output.numpy()
    assert ivl.features.shape == ref.shape == (N_FRAMES, 256, 64)
    assert ivl.features.dtype == np.float32
    assert rel(ivl.features, ref) <= TOL, f"rel {rel(ivl.features, ref):.3g}"
    one = ivl.model.encode_frames(ivl.pixels[3:4])
    four = ivl.model.encode_frames(ivl.pixels[2:6])
    assert rel(one[0], ref[3]) <= TOL and rel(four, ref[2:6]) <= TOL
    assert rel(ivl.model.encode_frames(ivl.pixels), ivl.features) == 0.0   # the rebuilt graph agrees
    # frames differ (not vacuous) and rows are at the intended scale
    assert rel(ref[0], ref[1]) > 0.1 and 0.1 < ref.std() < 1.0


def test_preprocess_matches_hf_image_processor(ivl):
    from transformers import GotOcr2ImageProcessorPil

    from statekv.families.internvl import preprocess_frames

    proc = GotOcr2ImageProcessorPil.from_pretrained(ivl.hf_dir)
    info = ivl.model.info()
    mean = [float(x) for x in info["vision.image_mean"].split(",")]
    std = [float(x) for x in info["vision.image_std"].split(",")]
    rng = np.random.default_rng(5)
    for h, w in [(360, 480), (448, 448), (720, 1280), (500, 301), (17, 23)]:
        frames = random_frames(rng, 2, h, w)
        got = preprocess_frames(frames, 448, mean, std)
        for i in range(2):
            want = proc(images=[frames[i]], crop_to_patches=False, return_tensors="np")["pixel_values"][0]
            assert got[i].shape == want.shape == (3, 448, 448)
            assert np.max(np.abs(got[i] - want)) <= 1e-5, (h, w)
    assert np.array_equal(preprocess_frames(ivl.frames), ivl.pixels)


# ----------------------------------------------------------------------------- the prompt
def processor_text(hf_tok, n_frames, question, system=None):
    """The chat template of the -hf checkpoints, with <video> replaced by transformers'
    InternVLProcessor.replace_video_token (the processor itself needs torchvision)."""
    from transformers import InternVLProcessor

    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    text = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.count("<video>") == 1
    proc = types.SimpleNamespace(start_image_token="<img>", end_image_token="</img>", image_token="<IMG_CONTEXT>",
                                 image_seq_length=256)
    video = {"pixel_values_videos": [np.zeros((n_frames, 3, 1, 1), np.float32)]}
    return text.replace("<video>", InternVLProcessor.replace_video_token(proc, video, 0))


@pytest.mark.parametrize("system", [None, "You are a careful video assistant."])
def test_prompt_matches_processor(ivl, system):
    from statekv.families.internvl import build_video_prompt, video_prompt_text

    text = processor_text(ivl.hf_tok, N_FRAMES, QUESTION, system)
    assert video_prompt_text(N_FRAMES, QUESTION, system) == text
    want = ivl.hf_tok(text, add_special_tokens=False)["input_ids"]
    for tok in (ivl.tok, ivl.hf_tok):   # statekv's GGUF tokenizer and the checkpoint's
        p = build_video_prompt(tok, N_FRAMES, QUESTION, system)
        assert p.ids == want
        assert len(p.steps) == N_FRAMES
        for i, (step, rows) in enumerate(zip(p.steps, p.visual_rows)):
            assert len(rows) == 256 and all(step[r] == IMG_CONTEXT_ID for r in rows)
            assert ivl.hf_tok.decode(step[: rows[0]]) == f"Frame{i + 1}: <img>"
            assert ivl.hf_tok.decode(step[rows[-1] + 1:]) == "</img>\n"
        assert ivl.hf_tok.decode(p.question) == QUESTION + "<|im_end|>\n<|im_start|>assistant\n"
        assert ivl.hf_tok.decode(p.prefix).endswith("<|im_start|>user\n")
        assert np.array_equal(np.flatnonzero(np.asarray(want) == IMG_CONTEXT_ID), p.sequence_rows())


# ----------------------------------------------------------------------------- full attention
def test_full_logits_match_transformers(ivl, hf_logits):
    """Model.logits over the whole prompt, visual rows = statekv's own features, against
    transformers' forward with input_ids + pixel_values."""
    p = ivl.prompt
    got = ivl.model.logits(p.ids, embeddings=ivl.features.reshape(-1, 64), embedding_rows=p.sequence_rows())
    assert got.shape == hf_logits.shape == (len(p.ids), 151674)
    r = rel(got, hf_logits)
    assert r <= TOL, f"rel {r:.3g}"


def run_session(ivl, mode, **kw):
    p = ivl.prompt
    s = ivl.model.session(mode=mode, kv_type="f32", **kw)
    s.prefill(p.prefix)
    for step, rows, feats in zip(p.steps, p.visual_rows, ivl.features):
        s.add_step(step, embeddings=feats, embedding_rows=rows)
    return s


def test_full_session_matches_transformers(ivl, hf_logits):
    s = run_session(ivl, "full")
    q = ivl.prompt.question
    got = s.question_logits(q)
    r = rel(got, hf_logits[-len(q):])
    assert r <= TOL, f"rel {r:.3g}"
    assert s.n_tokens == len(ivl.prompt.ids) - len(q)


def test_statekv_large_budget_equals_full(ivl):
    total = len(ivl.prompt.ids) - len(ivl.prompt.question)
    full, big = run_session(ivl, "full"), run_session(ivl, "statekv", budget=total)
    everything = np.tile(np.arange(total, dtype=np.int32), (2, 1))
    for layer in range(3):
        assert np.array_equal(np.asarray(big.carried(layer)), everything)
        assert np.array_equal(np.asarray(full.carried(layer)), everything)
    q = ivl.prompt.question
    assert rel(big.question_logits(q), full.question_logits(q)) <= TOL


@pytest.mark.parametrize("budget", [300, 100])
def test_statekv_small_budget_matches_reference(ivl, budget, hf_logits):
    """B = 300 (about one frame step) and B = 100 (less than a step's 256 visual rows): the same
    selections as the reference after every step, in every layer and KV head, and the same
    question logits."""
    p = ivl.prompt
    s = ivl.model.session(mode="statekv", budget=budget, kv_type="f32")
    ref = StateKVReference(ivl.hf, "statekv", budget=budget)
    s.prefill(p.prefix)
    ref.prefill(p.prefix)
    ties = []
    for t, (step, rows, feats) in enumerate(zip(p.steps, p.visual_rows, ivl.features)):
        s.add_step(step, embeddings=feats, embedding_rows=rows)
        ref.add_step(step, feats, rows)
        check_carried(s, ref, f"after step {t}", ties)
        assert np.asarray(s.carried(0)).shape == (2, min(budget, ref.n_tokens))
    assert len(ties) <= 2, ties
    q = p.question
    got, want = s.question_logits(q), ref.question_logits(q)
    assert rel(got, want) <= TOL, f"rel {rel(got, want):.3g}"
    # not vacuous: the selection is not a recency window, and a small budget changes the answer
    recent = np.arange(ref.n_tokens - budget, ref.n_tokens)
    assert any(not np.array_equal(ref.carried(l)[g], recent) for l in range(3) for g in range(2))
    assert rel(want, hf_logits[-len(q):]) > 1e-3


# ----------------------------------------------------------------------------- bad input
def rewrite(src, dst, set_kv=None, drop=()):
    """Copy a GGUF with some string metadata replaced and tensors dropped."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    r = GGUFReader(src)
    w = GGUFWriter(dst, r.fields["general.architecture"].contents())
    for name, field in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if set_kv and name in set_kv:
            w.add_key_value(name, set_kv[name], GGUFValueType.STRING)
        elif field.types[0] == GGUFValueType.ARRAY:
            w.add_array(name, field.contents())
        else:
            w.add_key_value(name, field.contents(), field.types[0])
    for t in r.tensors:
        if t.name not in drop:
            w.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def expect_error(text, mmproj, *needles):
    with pytest.raises(statekv.ModelError) as e:
        statekv.Model(str(text), mmproj=str(mmproj), threads=1)
    msg = str(e.value)
    for n in (str(mmproj), *needles):
        assert n in msg, msg
    return msg


def test_mismatched_pair(ivl, tmp_path):
    """An InternVL mmproj whose projector gives 48-wide rows with the 64-wide text model: a
    ModelError naming both files and both widths."""
    from statekv.families.internvl.random_model import make_random_internvl_mmproj

    other = make_random_internvl_mmproj(tmp_path / "mmproj-48.gguf", shape=dict(VISION), n_embd_out=48, qtype="f32")
    expect_error(ivl.text, other, str(ivl.text), "48", "64", "not a pair")


def test_other_projector_types(ivl, tmp_path):
    bad = rewrite(ivl.mmproj, tmp_path / "llava.gguf", set_kv={"clip.projector_type": "llava"})
    expect_error(ivl.text, bad, "llava", "internvl")
    # a supported projector of another family: its loader rejects the InternVL tensors/keys
    for projector in ("qwen3vl_merger", "gemma3"):
        other = rewrite(ivl.mmproj, tmp_path / f"{projector}.gguf", set_kv={"clip.projector_type": projector})
        expect_error(ivl.text, other)
    missing = rewrite(ivl.mmproj, tmp_path / "no-ls2.gguf", drop=("v.blk.1.ls2.weight",))
    expect_error(ivl.text, missing, "v.blk.1.ls2.weight")
    # an mmproj passed as the text model
    with pytest.raises(statekv.ModelError, match="mmproj"):
        statekv.Model(str(ivl.mmproj), threads=1)


def test_wrong_frames(ivl):
    from statekv.families.internvl import preprocess_frames

    for shape in [(1, 3, 224, 224), (1, 3, 448, 434), (1, 3, 434, 448)]:
        with pytest.raises(ValueError, match="448 x 448"):
            ivl.model.encode_frames(np.zeros(shape, np.float32))
    with pytest.raises(ValueError):
        ivl.model.encode_frames(np.zeros((1, 4, 448, 448), np.float32))
    with pytest.raises(ValueError):
        ivl.model.encode_frames(np.zeros((0, 3, 448, 448), np.float32))
    assert ivl.model.encode_frames(ivl.pixels[:1]).shape == (1, 256, 64)   # still usable
    with pytest.raises(ValueError, match="uint8"):
        preprocess_frames(np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="RGB"):
        preprocess_frames(np.zeros((1, 32, 32, 4), np.uint8))
    text_only = statekv.Model(str(ivl.text), threads=1)
    with pytest.raises(ValueError, match="mmproj"):
        text_only.encode_frames(ivl.pixels[:1])


def test_unsupported_checkpoints(ivl, tmp_path):
    """mmproj conversion errors name config.json and the field; no file is left behind."""
    import json

    from statekv.convert import ConversionError

    for field, value, needle in [("downsample_ratio", 0.3, "downsample_ratio"),
                                 ("vision_feature_layer", -2, "vision_feature_layer"),
                                 ("projector_hidden_act", "silu", "projector_hidden_act")]:
        d = tmp_path / field
        d.mkdir()
        for f in ivl.hf_dir.iterdir():
            (d / f.name).symlink_to(f)
        cfg = json.loads((ivl.hf_dir / "config.json").read_text())
        cfg[field] = value
        (d / "config.json").unlink()
        (d / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ConversionError, match=needle):
            write_mmproj(d, tmp_path / f"{field}-mmproj.gguf", "f32")
        assert not list(tmp_path.glob(f"*{field}-mmproj.gguf*"))
    text_cfg = json.loads((ivl.hf_dir / "config.json").read_text())
    text_cfg["text_config"]["model_type"] = "llama"
    from statekv.families.internvl.convert import check_text_config

    with pytest.raises(ConversionError, match="qwen2"):
        check_text_config(text_cfg)


# ----------------------------------------------------------------------------- benchmark helper
def test_random_mmproj_has_the_converted_layout(ivl, tmp_path):
    """make_random_internvl_mmproj at the tiny tower's shape: the same tensors, shapes, types and
    metadata keys as the converted file; it loads and encodes finite rows. The InternViT-300M
    preset has InternVL3-1B/2B/8B's tower size (about 0.3B parameters)."""
    from statekv.families.internvl.convert import _expected_shapes, _Hparams
    from statekv.families.internvl.random_model import VISION_SHAPES, make_random_internvl_mmproj
    from statekv.gguf_io import read_gguf_tensor_infos

    out = make_random_internvl_mmproj(tmp_path / "rand.gguf", shape=dict(VISION), n_embd_out=64, qtype="f32")
    kv_r, infos_r, _ = read_gguf_tensor_infos(out)
    kv_c, infos_c, _ = read_gguf_tensor_infos(ivl.mmproj)
    assert {(t["name"], tuple(t["shape"]), t["type"]) for t in infos_r} == \
        {(t["name"], tuple(t["shape"]), t["type"]) for t in infos_c}
    clip_keys = lambda kv: {k for k in kv if k.startswith("clip.")}  # noqa: E731
    assert clip_keys(kv_r) == clip_keys(kv_c)
    m = statekv.Model(str(ivl.text), mmproj=str(out), threads=1)
    rows = m.encode_frames(ivl.pixels[:1])
    assert rows.shape == (1, 256, 64) and np.all(np.isfinite(rows))
    vc = VISION_SHAPES["internvit-300m"]
    hp = _Hparams(dict(vision_config=vc, text_config=dict(hidden_size=896), downsample_ratio=0.5), "preset")
    n = sum(int(np.prod(s)) for s in _expected_shapes(hp, True, False, True).values())
    assert 0.30e9 < n < 0.31e9, n


def test_internvl_projector_refuses_a_text_model_of_another_family(tmp_path, tiny_gguf):
    # Same width (64), wrong family: the tiny Qwen3-VL text decoder with an InternVL projector.
    from statekv.families.internvl.random_model import make_random_internvl_mmproj

    mm = tmp_path / "mm.gguf"
    make_random_internvl_mmproj(mm, shape=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64), n_embd_out=64, qtype="f32")
    text = tiny_gguf("qwen3vl", "f32")
    with pytest.raises(statekv.ModelError) as e:
        statekv.Model(text, mmproj=mm, threads=1)
    assert str(mm) in str(e.value) and str(text) in str(e.value) and "qwen3vl" in str(e.value)
