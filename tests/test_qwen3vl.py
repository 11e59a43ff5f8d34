"""Qwen3-VL end to end against transformers: the mmproj converter, the vision tower (patch
embedding over temporal pairs, interpolated learned positions, 2-D rotary attention, merger,
DeepStack), preprocessing, the video prompt with timestamps and its multi-axis positions, and
full / StateKV sessions over real visual rows.

The model is tests/tiny.py's ``make_qwen3vl`` (real patch 16, temporal patch 2, merge 2, a 12x12
learned position grid, DeepStack after vision layers 0 and 1), converted by statekv's converter
to a text GGUF and an mmproj GGUF (f32).

About the references: transformers' Qwen3-VL *video* processor needs torchvision for its resize
and normalization, and torchvision is not installed here (see docs/DESIGN.md section 7). So the
preprocessing is compared with what can run: the HF image processor's own PIL operations
(resize, rescale, normalize) applied per frame, transformers' published video ``smart_resize``,
``sample_frames`` (called on a real ``Qwen3VLVideoProcessor``), ``patchify`` (temporal pairing with
the last frame repeated), the processor's ``replace_video_token`` / ``_calculate_timestamps`` /
``get_text_with_replacements`` / ``create_mm_token_type_ids``, and the model's ``get_rope_index``
and forward. Every expected number comes from transformers or from tests/statekv_reference.py,
never from statekv.
"""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch

import statekv
from statekv.families import qwen3vl as q3
from statekv_reference import StateKVReference, check_carried, load_hf

TOL = 1e-4          # max|diff| / max|ref|, f32 weights (issue 5)
PRE_TOL = 1e-5      # preprocessing (issue 5)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def q3files(tmp_path_factory, tiny_hf_dir):
    """(hf_dir, text.gguf, mmproj.gguf): the tiny Qwen3-VL converted by statekv (f32)."""
    from statekv.convert import convert

    hf = tiny_hf_dir("qwen3vl")
    out = tmp_path_factory.mktemp("qwen3vl-gguf")
    text = convert(hf, out / "qwen3vl-f32.gguf", "f32", mmproj_out=out / "mmproj-qwen3vl-f32.gguf")
    return hf, text, out / "mmproj-qwen3vl-f32.gguf"


@pytest.fixture(scope="session")
def q3model(q3files):
    _, text, mmproj = q3files
    # one thread: ggml's thread barrier is slow on a busy 2-core machine for these tiny graphs
    return statekv.Model(text, mmproj=mmproj, threads=1)


@pytest.fixture(scope="session")
def q3hf(q3files):
    return load_hf(q3files[0])


@pytest.fixture(scope="session")
def hf_tokenizer(q3files):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(q3files[0])


@pytest.fixture(scope="session")
def gguf_tokenizer(q3files):
    from statekv.text.tokenizer import tokenizer_from_gguf

    return tokenizer_from_gguf(q3files[1])


def hf_processor_stub(hf_tokenizer):
    """A ``Qwen3VLProcessor`` whose prompt-side methods are transformers' own (replace_video_token,
    _calculate_timestamps, get_text_with_replacements, create_mm_token_type_ids); its video
    processor (which needs torchvision to run) is only asked for merge/temporal patch sizes."""
    from transformers import Qwen3VLProcessor

    p = object.__new__(Qwen3VLProcessor)
    p.tokenizer = hf_tokenizer
    p.video_processor = types.SimpleNamespace(merge_size=2, temporal_patch_size=2)
    p.image_token, p.video_token = "<|image_pad|>", "<|video_pad|>"
    p.image_token_id = hf_tokenizer.convert_tokens_to_ids(p.image_token)
    p.video_token_id = hf_tokenizer.convert_tokens_to_ids(p.video_token)
    p.vision_start_token, p.vision_end_token = "<|vision_start|>", "<|vision_end|>"
    return p


def hf_video_prompt(hf_tokenizer, question, n_frames, frame_hw, video_fps, indices, system=None):
    """transformers' prompt for one user turn [video, question]: the Qwen3-VL chat template, then
    the processor's video expansion; returns (text, input_ids, mm_token_type_ids, video_grid_thw)."""
    from transformers.video_utils import VideoMetadata

    proc = hf_processor_stub(hf_tokenizer)
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    text = hf_tokenizer.apply_chat_template(messages, chat_template=q3.CHAT_TEMPLATE, tokenize=False,
                                            add_generation_prompt=True)
    t = (n_frames + 1) // 2
    grid = torch.tensor([[t, frame_hw[0] // 16, frame_hw[1] // 16]])
    meta = VideoMetadata(total_num_frames=max(indices) + 1, fps=video_fps, frames_indices=list(indices))
    replacement = proc.replace_video_token({"video_grid_thw": grid, "video_metadata": [meta]}, 0)
    [text], _ = proc.get_text_with_replacements([text], [], [replacement])
    ids = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    mm = proc.create_mm_token_type_ids([ids])
    return text, torch.tensor([ids]), torch.tensor(mm), grid


def hf_patches(pixels):
    """pixel_values_videos of preprocessed frames (n, 3, H, W): the video processor's patchify
    (pairs frames, repeating the last one of an odd count)."""
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    p, t, h, w = Qwen3VLVideoProcessor.patchify(None, torch.as_tensor(pixels)[None], 16, 2, 2)
    return p[0], torch.tensor([[t, h, w]])


@torch.no_grad()
def hf_vision(hf, pixels):
    """(main rows, [DeepStack rows per layer]) of transformers' visual module."""
    patches, grid = hf_patches(pixels)
    out = hf.model.visual(patches, grid_thw=grid)
    return out.pooler_output.numpy(), [f.numpy() for f in out.deepstack_features]


def random_video(seed, n, h, w):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- converter
def test_mmproj_layout_and_metadata(q3files):
    """The mmproj has llama.cpp's names, shapes, types and metadata (converter of issue 5)."""
    import gguf
    from statekv.gguf_io import read_gguf_kv

    hf, _, mmproj = q3files
    kv = read_gguf_kv(mmproj)
    assert kv["general.architecture"] == "clip" and kv["general.type"] == "mmproj"
    assert kv["clip.projector_type"] == "qwen3vl_merger" and kv["clip.has_vision_encoder"] is True
    assert kv["clip.use_gelu"] is True
    assert (kv["clip.vision.projection_dim"], kv["clip.vision.embedding_length"], kv["clip.vision.feed_forward_length"],
            kv["clip.vision.block_count"], kv["clip.vision.attention.head_count"], kv["clip.vision.patch_size"],
            kv["clip.vision.spatial_merge_size"], kv["clip.vision.image_size"]) == (64, 32, 64, 3, 2, 16, 2, 12 * 16)
    assert kv["clip.vision.is_deepstack_layers"] == [True, True, False]
    assert kv["clip.vision.image_mean"] == [0.5] * 3 and kv["clip.vision.image_std"] == [0.5] * 3
    assert abs(kv["clip.vision.attention.layer_norm_epsilon"] - 1e-6) < 1e-12
    assert not any("min_pixels" in k or "max_pixels" in k for k in kv)
    r = gguf.GGUFReader(mmproj)
    shapes = {t.name: (tuple(int(x) for x in t.shape), t.tensor_type.name) for t in r.tensors}
    assert shapes["v.patch_embd.weight"] == ((16, 16, 3, 32), "F32")
    assert shapes["v.patch_embd.weight.1"] == ((16, 16, 3, 32), "F32")
    assert shapes["v.position_embd.weight"] == ((32, 144), "F32")
    assert shapes["v.blk.2.attn_qkv.weight"] == ((32, 96), "F32")
    assert shapes["v.deepstack.1.fc2.weight"] == ((128, 64), "F32")
    assert shapes["mm.0.weight"] == ((128, 128), "F32") and shapes["mm.2.weight"] == ((128, 64), "F32")
    assert shapes["v.post_ln.weight"] == ((32,), "F32")
    assert "v.deepstack.2.norm.weight" not in shapes and len(shapes) == 2 + 1 + 1 + 3 * 12 + 2 * 6 + 6
    # the temporal halves of the Conv3d kernel, exactly
    from statekv.convert import SafetensorsIndex

    k = SafetensorsIndex(hf).load("model.visual.patch_embed.proj.weight")
    t = {t.name: t for t in r.tensors}
    assert np.array_equal(np.asarray(t["v.patch_embd.weight"].data), k[:, :, 0])
    assert np.array_equal(np.asarray(t["v.patch_embd.weight.1"].data), k[:, :, 1])


def test_mmproj_types_per_outtype(q3files, tmp_path):
    """f16 / q8_0 outputs: llama.cpp's per-tensor types (patch kernels F16 only for f16, the
    position table and 1-D tensors F32)."""
    import gguf
    from statekv.families.qwen3vl.convert import write_qwen3vl_mmproj
    import json

    hf = q3files[0]
    config = json.loads((hf / "config.json").read_text())
    for outtype, mat, patch in (("f16", "F16", "F16"), ("q8_0", "Q8_0", "F32")):
        path = write_qwen3vl_mmproj(hf, config, None, tmp_path / f"m-{outtype}.gguf", outtype)
        types_ = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
        assert types_["v.patch_embd.weight"] == patch and types_["v.patch_embd.weight.1"] == patch
        assert types_["v.position_embd.weight"] == "F32" and types_["v.blk.0.ln1.bias"] == "F32"
        assert types_["v.blk.0.attn_qkv.weight"] == mat and types_["mm.2.weight"] == mat
        assert types_["v.deepstack.0.fc1.weight"] == mat
        m = statekv.Model(q3files[1], mmproj=path, threads=1)
        assert m.encode_frames(np.zeros((2, 3, 32, 32), np.float32)).shape == (1, 1, 192)


def test_mmproj_without_deepstack_flags(q3files, q3model, tmp_path):
    """A file without clip.vision.is_deepstack_layers: the v.deepstack.N mergers present decide."""
    import gguf

    _, text, mmproj = q3files
    r = gguf.GGUFReader(mmproj)
    out = tmp_path / "noflags.gguf"
    w = gguf.GGUFWriter(out, "clip")
    for name, fld in r.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "clip.vision.is_deepstack_layers"):
            continue
        vtype = fld.types[0]
        w.add_key_value(name, fld.contents(), vtype, sub_type=fld.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None)
    for t in r.tensors:
        w.add_tensor(t.name, np.asarray(t.data), raw_shape=tuple(int(x) for x in reversed(t.shape)), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    m = statekv.Model(text, mmproj=out, threads=1)
    assert m.info()["vision.n_deepstack"] == 2
    px = np.random.default_rng(7).standard_normal((2, 3, 64, 64)).astype(np.float32)
    assert np.array_equal(m.encode_frames(px), q3model.encode_frames(px))


def test_random_mmproj_shapes(tmp_path, q3files):
    """make_random_qwen3vl_mmproj: the real towers' hyper-parameters, and a small random file of
    the same layout loads and runs (paired with the tiny text model)."""
    from statekv.families.qwen3vl.convert import QWEN3VL_VISION_SHAPES, VisionHParams
    from statekv.families.qwen3vl.random_model import make_random_qwen3vl_mmproj
    from statekv.gguf_io import read_gguf_kv

    s2 = QWEN3VL_VISION_SHAPES["qwen3-vl-2b"]
    assert (s2.depth, s2.hidden_size, s2.intermediate_size, s2.num_heads, s2.out_hidden_size,
            s2.num_position_embeddings, s2.deepstack_visual_indexes, s2.image_size) == \
        (24, 1024, 4096, 16, 2048, 2304, (5, 11, 17), 768)
    small = VisionHParams(depth=3, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64,
                          num_position_embeddings=64, deepstack_visual_indexes=(0, 2))
    path = make_random_qwen3vl_mmproj(tmp_path / "rand.gguf", small, "q8_0", seed=3)
    kv = read_gguf_kv(path)
    assert kv["clip.vision.is_deepstack_layers"] == [True, False, True] and kv["general.file_type"] == 7
    m = statekv.Model(q3files[1], mmproj=path, threads=1)
    rows = m.encode_frames(np.random.default_rng(0).standard_normal((2, 3, 64, 96)).astype(np.float32))
    assert rows.shape == (1, 6, 192) and np.all(np.isfinite(rows)) and rows.std() > 0


# ----------------------------------------------------------------------------- vision tower
@pytest.mark.parametrize("n,h,w", [(2, 32, 32), (2, 64, 96), (4, 96, 64), (6, 224, 160), (2, 448, 192)])
def test_vision_features_match_transformers(q3model, q3hf, n, h, w):
    """Main merger rows and each DeepStack merger's rows equal transformers' visual module, for
    patch grids smaller and larger than the 12x12 learned table, square and not."""
    px = np.random.default_rng(n * 1000 + h + w).standard_normal((n, 3, h, w)).astype(np.float32)
    out = q3model.encode_frames(px)
    main, ds = hf_vision(q3hf, px)
    per = (h // 32) * (w // 32)
    assert out.shape == (n // 2, per, 64 * 3)
    flat = out.reshape(-1, 192)
    assert rel(flat[:, :64], main) <= TOL, f"merger rows: {rel(flat[:, :64], main):.3g}"
    for i, d in enumerate(ds):
        got = flat[:, 64 * (i + 1): 64 * (i + 2)]
        assert rel(got, d) <= TOL, f"DeepStack {i}: {rel(got, d):.3g}"
    # the temporal patches are encoded independently (one attention sequence each)
    if n > 2:
        alone = q3model.encode_frames(px[2:4])
        assert rel(alone[0], out[1]) <= 1e-5


def test_encoder_graph_shapes_in_any_order(q3files, q3hf):
    """A fresh model encoding one temporal patch of large frames, then two patches of small ones
    (the encoder graph has the same topology for every shape, and the scheduler may keep an
    allocation plan made for another shape): the results do not depend on what came before."""
    _, text, mmproj = q3files
    m = statekv.Model(text, mmproj=mmproj, threads=1)
    rng = np.random.default_rng(21)
    m.encode_frames(rng.standard_normal((2, 3, 448, 192)).astype(np.float32))
    px = rng.standard_normal((4, 3, 64, 64)).astype(np.float32)
    out = m.encode_frames(px).reshape(-1, 192)
    main, ds = hf_vision(q3hf, px)
    assert rel(out[:, :64], main) <= TOL and rel(out[:, 64:128], ds[0]) <= TOL and rel(out[:, 128:], ds[1]) <= TOL


def test_vision_input_errors(q3model):
    with pytest.raises(ValueError, match="temporal pairs"):
        q3model.encode_frames(np.zeros((3, 3, 64, 64), np.float32))
    with pytest.raises(ValueError, match="multiples of 32"):
        q3model.encode_frames(np.zeros((2, 3, 48, 64), np.float32))
    with pytest.raises(ValueError, match="shape"):
        q3model.encode_frames(np.zeros((2, 64, 64), np.float32))
    assert q3model.encode_frames(np.zeros((2, 3, 32, 64), np.float32)).shape == (1, 2, 192)


# ----------------------------------------------------------------------------- preprocessing
def hf_image_ops(frame_hwc, size):
    """One frame through the HF image processor's own PIL-backend operations (resize to
    ``size``, bicubic; rescale 1/255; normalize with Qwen3-VL's mean/std)."""
    from transformers.image_processing_backends import PilBackend
    from transformers.image_utils import PILImageResampling, SizeDict
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    ip = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, image_mean=list(q3.IMAGE_MEAN),
                                  image_std=list(q3.IMAGE_STD))
    img = ip.process_image(frame_hwc, do_convert_rgb=True)  # (3, H, W) uint8
    img = PilBackend.resize(ip, img, SizeDict(height=size[0], width=size[1]), resample=PILImageResampling.BICUBIC)
    img = ip.rescale(img, ip.rescale_factor)
    return ip.normalize(img, ip.image_mean, ip.image_std)


def test_preprocessing_matches_hf(q3files):
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as hf_smart_resize

    # target sizes: transformers' video smart_resize (multiples of 32, pixel bounds over all frames)
    for n, h, w in [(8, 480, 640), (2, 31, 47), (16, 1080, 1920), (512, 720, 1280), (3, 50, 70), (4, 2000, 30)]:
        want = hf_smart_resize(n, h, w, temporal_factor=2, factor=32, min_pixels=q3.MIN_PIXELS,
                               max_pixels=q3.MAX_PIXELS)
        assert q3.target_size(n, h, w) == want, (n, h, w)
        assert q3.smart_resize(n, h, w, min_pixels=128 * 32 * 32, max_pixels=768 * 32 * 32) == hf_smart_resize(
            n, h, w, 2, 32, 128 * 32 * 32, 768 * 32 * 32)
    # pixels: an odd count of frames that need resizing (up and down) and a non-square aspect
    for (n, h, w), seed in (((5, 50, 70), 1), ((4, 130, 100), 2)):
        frames = random_video(seed, n, h, w)
        px = q3.preprocess_frames(frames)
        size = q3.target_size(n, h, w)
        assert px.dtype == np.float32 and px.shape == (n + n % 2, 3, *size)
        for i in range(n):
            want = hf_image_ops(frames[i], size)
            assert np.max(np.abs(px[i] - want)) <= PRE_TOL, f"frame {i}"
        # temporal pairing: what the video processor's patchify makes of the n frames
        want_patches, grid = hf_patches(np.stack([hf_image_ops(f, size) for f in frames]))
        got_patches, got_grid = hf_patches(px)
        assert torch.equal(grid, got_grid)
        assert float((got_patches - want_patches).abs().max()) <= PRE_TOL


def test_frame_sampling_and_timestamps():
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
    from transformers.video_utils import VideoMetadata

    vp = Qwen3VLVideoProcessor()   # constructing works without torchvision; sample_frames is pure
    proc = object.__new__(__import__("transformers").Qwen3VLProcessor)
    for total, fps_v, fps in [(300, 30.0, 2.0), (100, 25.0, 1.0), (7, 24.0, 2.0), (3000, 29.97, 1.0), (40, 10.0, 2.0)]:
        meta = VideoMetadata(total_num_frames=total, fps=fps_v)
        want = vp.sample_frames(meta, fps=fps)
        got = q3.sample_frame_indices(total, fps_v, fps=fps)
        assert np.array_equal(got, want), (total, fps_v, fps)
        assert q3.frame_timestamps(got, fps_v) == proc._calculate_timestamps(list(want), fps_v, 2)
    assert np.array_equal(q3.sample_frame_indices(50, 25.0, fps=None, num_frames=8),
                          vp.sample_frames(VideoMetadata(total_num_frames=50, fps=25.0), num_frames=8, fps=None))


def test_mixed_frame_sizes():
    """Frames of different sizes in one video: a clear error, or (documented) every frame resized
    to the size computed from the first frame."""
    a, b = random_video(3, 1, 64, 96)[0], random_video(4, 1, 80, 60)[0]
    with pytest.raises(ValueError, match=r"frame 1 is 80x60 but frame 0 is 64x96"):
        q3.preprocess_frames([a, b])
    px = q3.preprocess_frames([a, b], allow_mixed_sizes=True)
    size = q3.target_size(2, 64, 96)
    assert px.shape == (2, 3, *size)
    assert np.max(np.abs(px[1] - hf_image_ops(b, size))) <= PRE_TOL
    with pytest.raises(ValueError, match="multiples of 32"):
        q3.preprocess_frames([a], size=(48, 64))


def test_odd_frame_count_encodes_last_frame_twice(q3model, q3hf):
    frames = random_video(5, 3, 64, 64)
    px = q3.preprocess_frames(frames, size=(64, 64))
    assert px.shape[0] == 4 and np.array_equal(px[3], px[2])
    with pytest.raises(ValueError, match="temporal pairs"):
        q3model.encode_frames(px[:3])
    out = q3model.encode_frames(px)
    # transformers: patchify pads the 3 frames itself
    main, ds = hf_vision(q3hf, px[:3])
    assert rel(out.reshape(-1, 192)[:, :64], main) <= TOL
    assert rel(out.reshape(-1, 192)[:, 64:128], ds[0]) <= TOL


# ----------------------------------------------------------------------------- prompt, positions
@pytest.mark.parametrize("n_frames,hw", [(1, (32, 32)), (2, (64, 96)), (3, (96, 64)), (5, (64, 64)),
                                         (8, (160, 224)), (12, (32, 128))])
def test_prompt_and_positions_match_transformers(q3hf, hf_tokenizer, gguf_tokenizer, n_frames, hw):
    """Token ids = the processor's expansion of the chat template's video; positions =
    get_rope_index on them; for several frame counts (odd ones pad the last pair) and sizes."""
    video_fps, total = 24.0, 100 * n_frames
    indices = q3.sample_frame_indices(total, video_fps, fps=None, num_frames=n_frames)
    question = "What happens in the video? Answer briefly."
    system = "You are a helpful assistant." if n_frames % 2 else None
    text, ids, mm, grid = hf_video_prompt(hf_tokenizer, question, n_frames, hw, video_fps, indices, system)
    pos_ref, _ = q3hf.model.get_rope_index(ids, mm, video_grid_thw=grid)
    pos_ref = pos_ref[:, 0].numpy()
    ts = q3.frame_timestamps(indices, video_fps)
    for tok in (hf_tokenizer, gguf_tokenizer):
        p = q3.build_video_prompt(tok, ts, q3.merged_grid(*hw), question, system)
        assert p.text == text
        assert np.array_equal(p.ids, ids[0].numpy())
        assert np.array_equal(p.positions, pos_ref)
        assert len(p.steps) == (n_frames + 1) // 2
        rows = p.sequence_rows()
        assert np.array_equal(rows, np.flatnonzero(mm[0].numpy() == 2))
        for s in p.steps:   # each step: timestamp ... <|vision_start|> pads <|vision_end|>
            assert s.ids[s.rows[0] - 1] == 151652 and s.ids[-1] == 151653 and len(s.rows) == np.prod(q3.merged_grid(*hw))


# ----------------------------------------------------------------------------- full model
@pytest.fixture(scope="session")
def video8(q3model, hf_tokenizer):
    """An 8-frame 64x96 video (4 temporal patches of 6 rows), preprocessed, encoded by statekv,
    and its prompt with a question."""
    frames = random_video(8, 8, 64, 96)
    px = q3.preprocess_frames(frames, size=(64, 96))
    rows = q3model.encode_frames(px)
    indices = q3.sample_frame_indices(80, 10.0, fps=None, num_frames=8)
    prompt = q3.build_video_prompt(hf_tokenizer, q3.frame_timestamps(indices, 10.0), (2, 3),
                                   "Describe the video in one sentence.")
    return types.SimpleNamespace(px=px, rows=rows, prompt=prompt, indices=indices)


@torch.no_grad()
def hf_full_logits(hf, hf_tokenizer, v):
    """transformers' forward of the whole prompt with the video's pixels (its own vision tower,
    placeholder scatter, DeepStack and get_rope_index)."""
    _, ids, mm, grid = hf_video_prompt(hf_tokenizer, "Describe the video in one sentence.", 8, (64, 96), 10.0,
                                       v.indices)
    patches, g2 = hf_patches(v.px)
    assert torch.equal(grid, g2)
    return hf(input_ids=ids, pixel_values_videos=patches, video_grid_thw=grid, mm_token_type_ids=mm,
              attention_mask=torch.ones_like(ids)).logits[0].numpy()


def session_video(model, v, mode, **kw):
    s = model.session(mode=mode, kv_type="f32", **kw)
    p = v.prompt
    s.prefill(p.prefix_ids, positions=p.prefix_positions)
    for step, rows in zip(p.steps, v.rows):
        s.add_step(step.ids, embeddings=rows, embedding_rows=step.rows, positions=step.positions)
    return s


def test_full_logits_match_transformers(q3model, q3hf, hf_tokenizer, video8):
    """8 frames + question: Model.logits over the whole prompt, and a full-mode session (prefill,
    one add_step per temporal patch with positions and DeepStack rows, question_logits), equal
    transformers' forward."""
    v, p = video8, video8.prompt
    want = hf_full_logits(q3hf, hf_tokenizer, v)
    got = q3model.logits(p.ids, positions=p.positions, embeddings=v.rows.reshape(-1, 192),
                         embedding_rows=p.sequence_rows())
    assert rel(got, want) <= TOL, f"Model.logits: {rel(got, want):.3g}"
    s = session_video(q3model, v, "full")
    nq = len(p.question_ids)
    got_q = s.question_logits(p.question_ids, positions=p.question_positions)
    assert rel(got_q, want[-nq:]) <= TOL, f"full session: {rel(got_q, want[-nq:]):.3g}"
    # without DeepStack slices the answer differs (the slices matter in this test)
    flat = q3model.logits(p.ids, positions=p.positions, embeddings=v.rows.reshape(-1, 192)[:, :64],
                          embedding_rows=p.sequence_rows())
    assert rel(flat, want) > 1e-3


def test_statekv_large_budget_equals_full(q3model, video8):
    v, p = video8, video8.prompt
    total = len(p.prefix_ids) + sum(len(s.ids) for s in p.steps)
    full = session_video(q3model, v, "full")
    big = session_video(q3model, v, "statekv", budget=total)
    everything = np.tile(np.arange(total, dtype=np.int32), (2, 1))
    for layer in range(3):
        assert np.array_equal(np.asarray(big.carried(layer)), everything)
    a = full.question_logits(p.question_ids, positions=p.question_positions)
    b = big.question_logits(p.question_ids, positions=p.question_positions)
    assert rel(b, a) <= 1e-5


def test_statekv_small_budget_matches_reference(q3model, q3hf, hf_tokenizer):
    """B = 24 tokens (about 1.5 steps): after every step the carried keys equal the PyTorch
    reference's (docs/DESIGN.md section 1, with 3-axis positions and DeepStack rows), and the question
    logits match in the middle of the video and at the end."""
    frames = random_video(9, 14, 64, 96)
    px = q3.preprocess_frames(frames, size=(64, 96))
    rows = q3model.encode_frames(px)
    ts = q3.frame_timestamps(range(0, 28, 2), 4.0)
    b = q3.VideoPromptBuilder(hf_tokenizer, (2, 3))
    budget = 24
    s = q3model.session(mode="statekv", budget=budget, kv_type="f32")
    ref = StateKVReference(q3hf, "statekv", budget=budget)
    pids, ppos = b.prefix("You are a helpful assistant.")
    s.prefill(pids, positions=ppos)
    ref.prefill(pids, positions=ppos)
    ties, nontrivial = [], 0
    for t, (sec, r) in enumerate(zip(ts, rows)):
        st = b.step(sec)
        s.add_step(st.ids, embeddings=r, embedding_rows=st.rows, positions=st.positions)
        ref.add_step(st.ids, r, st.rows, st.positions)
        check_carried(s, ref, f"after step {t}", ties)
        recent = np.arange(ref.n_tokens - budget, ref.n_tokens)
        nontrivial += sum(not np.array_equal(ref.carried(l)[g], recent) for l in range(3) for g in range(2))
        if t in (3, len(ts) - 1):
            qids, qpos = b.question("What color dominates?")
            got = s.question_logits(qids, positions=qpos)
            want = ref.question_logits(qids, positions=qpos)
            assert rel(got, want) <= TOL, f"question after step {t}: {rel(got, want):.3g}"
    assert nontrivial > 0 and len(ties) <= 2, ties
    # a real budget changes the answer (the comparison above is not vacuous)
    full = StateKVReference(q3hf, "full")
    full.prefill(pids, positions=ppos)
    b2 = q3.VideoPromptBuilder(hf_tokenizer, (2, 3))
    b2.prefix("You are a helpful assistant.")
    for sec, r in zip(ts, rows):
        st = b2.step(sec)
        full.add_step(st.ids, r, st.rows, st.positions)
    qids, qpos = b2.question("What color dominates?")
    assert rel(full.question_logits(qids, positions=qpos), ref.question_logits(qids, positions=qpos)) > 1e-3


# ----------------------------------------------------------------------------- pairs
def test_mismatched_pair_names_both_files(q3files, tiny_gguf, tmp_path):
    """A text model and an mmproj that are not a pair: ModelError naming both files (another
    family's text model, a projector of another width, another number of DeepStack slices)."""
    from statekv.families.qwen3vl.convert import VisionHParams
    from statekv.families.qwen3vl.random_model import make_random_qwen3vl_mmproj

    _, text, mmproj = q3files

    def refused(text_path, mmproj_path, *words):
        with pytest.raises(statekv.ModelError) as e:
            statekv.Model(text_path, mmproj=mmproj_path, threads=1)
        msg = str(e.value)
        assert str(mmproj_path) in msg and str(text_path) in msg and "not a pair" in msg, msg
        for w in words:
            assert w in msg, msg

    refused(tiny_gguf("qwen3", "f32"), mmproj, "qwen3vl")   # same width 64, a Qwen3 text model

    def small(out, ds):
        return make_random_qwen3vl_mmproj(tmp_path / f"{out}-{len(ds)}.gguf", VisionHParams(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=out,
            num_position_embeddings=16, deepstack_visual_indexes=ds), "f32")

    refused(text, small(96, (0, 1)), "96")
    refused(text, small(64, (1,)), "DeepStack")
    statekv.Model(text, mmproj=small(64, (0, 1)), threads=1)   # and a matching pair loads
