"""Seed files for the fuzz harness: tiny, valid GGUFs of every supported family (text decoders
qwen2, qwen3, qwen3vl, gemma3; mmproj internvl, qwen3vl_merger, gemma3, eagle2_5) written directly with gguf-py at a
64-token vocabulary, so that one mutated file is a few tens of kilobytes and loads in
milliseconds; plus session files saved from them.

The shapes follow what the loaders declare (cpp/src/models/*.cpp): widths small but with every
tensor, key and type kind present (f32 vectors, f16 and q8_0 matrices, an f16 embedding table).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

N_VOCAB = 64
E = 32          # text width (q8_0 rows need multiples of 32)
N_HEAD, N_HEAD_KV, HEAD_DIM = 4, 2, 8
N_FF = 64
N_LAYER = 2


def _rng(seed: int):
    return np.random.default_rng(seed)


def _quantized(w, qtype):
    from gguf import quants
    return quants.quantize(w.astype(np.float32), qtype)


def _add(w, name, arr, qtype=None):
    """Add a tensor; ``arr`` in numpy order (rows last in ggml terms), optionally quantized."""
    from gguf import GGMLQuantizationType as Q
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if qtype is None or qtype == Q.F32:
        w.add_tensor(name, arr)
    elif qtype == Q.F16:
        w.add_tensor(name, arr.astype(np.float16))
    else:
        w.add_tensor(name, _quantized(arr, qtype), raw_dtype=qtype)


def write_text(path: Path, arch: str, seed: int = 0) -> Path:
    from gguf import GGMLQuantizationType as Q, GGUFWriter
    r = _rng(seed)
    w = GGUFWriter(str(path), arch)
    a = arch
    w.add_uint32(f"{a}.embedding_length", E)
    w.add_uint32(f"{a}.block_count", N_LAYER)
    w.add_uint32(f"{a}.attention.head_count", N_HEAD)
    w.add_uint32(f"{a}.attention.head_count_kv", N_HEAD_KV)
    w.add_uint32(f"{a}.feed_forward_length", N_FF)
    w.add_uint32(f"{a}.context_length", 512)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32(f"{a}.rope.freq_base", 10000.0)
    if arch != "qwen2":
        w.add_uint32(f"{a}.attention.key_length", HEAD_DIM)
        w.add_uint32(f"{a}.attention.value_length", HEAD_DIM)
    if arch == "gemma3":   # local layers see 3 tokens; layer pattern 2: layer 1 global
        w.add_uint32(f"{a}.attention.sliding_window", 3)
        w.add_uint32(f"{a}.attention.sliding_window_pattern", 2)
    if arch == "qwen3vl":
        w.add_array(f"{a}.rope.dimension_sections", [2, 1, 1, 0])
        w.add_uint32(f"{a}.n_deepstack_layers", 1)
    w.add_uint32("tokenizer.ggml.eos_token_id", 1)
    hq, hkv = N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM
    mat = Q.Q8_0 if arch == "qwen2" else Q.F16
    _add(w, "token_embd.weight", r.normal(0, 0.5, (N_VOCAB, E)), Q.F16)
    _add(w, "output_norm.weight", r.normal(1, 0.1, E))
    if arch == "qwen2":
        _add(w, "output.weight", r.normal(0, 0.3, (N_VOCAB, E)), Q.Q8_0)
    for il in range(N_LAYER):
        p = f"blk.{il}."
        _add(w, p + "attn_norm.weight", r.normal(1, 0.1, E))
        _add(w, p + "attn_q.weight", r.normal(0, 0.3, (hq, E)), mat)
        _add(w, p + "attn_k.weight", r.normal(0, 0.3, (hkv, E)), mat)
        _add(w, p + "attn_v.weight", r.normal(0, 0.3, (hkv, E)), mat)
        _add(w, p + "attn_output.weight", r.normal(0, 0.3, (E, hq)), mat)
        if arch == "qwen2":
            for n, size in (("q", hq), ("k", hkv), ("v", hkv)):
                _add(w, p + f"attn_{n}.bias", r.normal(0, 0.1, size))
        else:
            _add(w, p + "attn_q_norm.weight", r.normal(1, 0.1, HEAD_DIM))
            _add(w, p + "attn_k_norm.weight", r.normal(1, 0.1, HEAD_DIM))
        if arch == "gemma3":
            _add(w, p + "post_attention_norm.weight", r.normal(1, 0.1, E))
            _add(w, p + "post_ffw_norm.weight", r.normal(1, 0.1, E))
        _add(w, p + "ffn_norm.weight", r.normal(1, 0.1, E))
        _add(w, p + "ffn_gate.weight", r.normal(0, 0.3, (N_FF, E)), mat)
        _add(w, p + "ffn_up.weight", r.normal(0, 0.3, (N_FF, E)), mat)
        _add(w, p + "ffn_down.weight", r.normal(0, 0.3, (E, N_FF)), mat)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# InternViT tower: 56 x 56 frames, 14 x 14 patches (4 x 4 grid), pixel shuffle 2 -> 4 rows.
IVL_IMAGE, IVL_PATCH, IVL_C, IVL_FF, IVL_SCALE = 56, 14, 16, 32, 2
# Qwen3-VL tower: 32 x 32 frames in pairs, 16 x 16 patches, merge 2 -> 1 row per pair.
Q3_PATCH, Q3_C, Q3_FF, Q3_LAYERS = 16, 16, 32, 2


def _clip_header(w, projector):
    w.add_string("clip.projector_type", projector)
    w.add_bool("clip.has_vision_encoder", True)
    w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    w.add_array("clip.vision.image_std", [0.25, 0.25, 0.25])


def write_mmproj_internvl(path: Path, seed: int = 0) -> Path:
    from gguf import GGMLQuantizationType as Q, GGUFWriter
    r = _rng(seed + 100)
    w = GGUFWriter(str(path), "clip")
    _clip_header(w, "internvl")
    C, F, P = IVL_C, IVL_FF, IVL_PATCH
    grid = IVL_IMAGE // P
    M = C * IVL_SCALE * IVL_SCALE
    w.add_uint32("clip.vision.image_size", IVL_IMAGE)
    w.add_uint32("clip.vision.patch_size", P)
    w.add_uint32("clip.vision.embedding_length", C)
    w.add_uint32("clip.vision.feed_forward_length", F)
    w.add_uint32("clip.vision.block_count", 1)
    w.add_uint32("clip.vision.attention.head_count", 2)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    w.add_uint32("clip.vision.projection_dim", E)
    w.add_uint32("clip.vision.projector.scale_factor", IVL_SCALE)
    w.add_bool("clip.use_gelu", True)
    _add(w, "v.patch_embd.weight", r.normal(0, 0.1, (C, 3, P, P)), Q.F16)
    _add(w, "v.patch_embd.bias", r.normal(0, 0.1, C))
    _add(w, "v.class_embd", r.normal(0, 0.3, C))
    _add(w, "v.position_embd.weight", r.normal(0, 0.3, (grid * grid + 1, C)))
    p = "v.blk.0."
    for n in ("ln1", "ln2"):
        _add(w, p + f"{n}.weight", r.normal(1, 0.1, C))
        _add(w, p + f"{n}.bias", r.normal(0, 0.1, C))
    for n in ("attn_q", "attn_k", "attn_v", "attn_out"):
        _add(w, p + f"{n}.weight", r.normal(0, 0.3, (C, C)), Q.F16)
        _add(w, p + f"{n}.bias", r.normal(0, 0.1, C))
    _add(w, p + "ls1.weight", r.normal(0.5, 0.1, C))
    _add(w, p + "ls2.weight", r.normal(0.5, 0.1, C))
    _add(w, p + "ffn_up.weight", r.normal(0, 0.3, (F, C)), Q.F16)
    _add(w, p + "ffn_up.bias", r.normal(0, 0.1, F))
    _add(w, p + "ffn_down.weight", r.normal(0, 0.3, (C, F)), Q.F16)
    _add(w, p + "ffn_down.bias", r.normal(0, 0.1, C))
    _add(w, "mm.model.mlp.0.weight", r.normal(1, 0.1, M))
    _add(w, "mm.model.mlp.0.bias", r.normal(0, 0.1, M))
    _add(w, "mm.model.mlp.1.weight", r.normal(0, 0.2, (E, M)), Q.Q8_0)
    _add(w, "mm.model.mlp.1.bias", r.normal(0, 0.1, E))
    _add(w, "mm.model.mlp.3.weight", r.normal(0, 0.2, (E, E)), Q.F16)
    _add(w, "mm.model.mlp.3.bias", r.normal(0, 0.1, E))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_mmproj_qwen3vl(path: Path, seed: int = 0) -> Path:
    from gguf import GGMLQuantizationType as Q, GGUFWriter
    r = _rng(seed + 200)
    w = GGUFWriter(str(path), "clip")
    _clip_header(w, "qwen3vl_merger")
    C, F, P = Q3_C, Q3_FF, Q3_PATCH
    M = C * 4
    w.add_uint32("clip.vision.patch_size", P)
    w.add_uint32("clip.vision.spatial_merge_size", 2)
    w.add_uint32("clip.vision.embedding_length", C)
    w.add_uint32("clip.vision.feed_forward_length", F)
    w.add_uint32("clip.vision.block_count", Q3_LAYERS)
    w.add_uint32("clip.vision.attention.head_count", 2)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    w.add_uint32("clip.vision.projection_dim", E)
    w.add_array("clip.vision.is_deepstack_layers", [False, True])
    _add(w, "v.patch_embd.weight", r.normal(0, 0.05, (C, 3, P, P)), Q.F16)
    _add(w, "v.patch_embd.weight.1", r.normal(0, 0.05, (C, 3, P, P)), Q.F16)
    _add(w, "v.patch_embd.bias", r.normal(0, 0.1, C))
    _add(w, "v.position_embd.weight", r.normal(0, 0.3, (16, C)))
    for il in range(Q3_LAYERS):
        p = f"v.blk.{il}."
        for n in ("ln1", "ln2"):
            _add(w, p + f"{n}.weight", r.normal(1, 0.1, C))
            _add(w, p + f"{n}.bias", r.normal(0, 0.1, C))
        _add(w, p + "attn_qkv.weight", r.normal(0, 0.3, (3 * C, C)), Q.F16)
        _add(w, p + "attn_qkv.bias", r.normal(0, 0.1, 3 * C))
        _add(w, p + "attn_out.weight", r.normal(0, 0.3, (C, C)), Q.F16)
        _add(w, p + "attn_out.bias", r.normal(0, 0.1, C))
        _add(w, p + "ffn_up.weight", r.normal(0, 0.3, (F, C)), Q.F16)
        _add(w, p + "ffn_up.bias", r.normal(0, 0.1, F))
        _add(w, p + "ffn_down.weight", r.normal(0, 0.3, (C, F)), Q.F16)
        _add(w, p + "ffn_down.bias", r.normal(0, 0.1, C))
    d = "v.deepstack.1."
    _add(w, d + "norm.weight", r.normal(1, 0.1, M))
    _add(w, d + "norm.bias", r.normal(0, 0.1, M))
    _add(w, d + "fc1.weight", r.normal(0, 0.2, (M, M)), Q.Q8_0)
    _add(w, d + "fc1.bias", r.normal(0, 0.1, M))
    _add(w, d + "fc2.weight", r.normal(0, 0.2, (E, M)), Q.Q8_0)
    _add(w, d + "fc2.bias", r.normal(0, 0.1, E))
    _add(w, "v.post_ln.weight", r.normal(1, 0.1, C))
    _add(w, "v.post_ln.bias", r.normal(0, 0.1, C))
    _add(w, "mm.0.weight", r.normal(0, 0.2, (M, M)), Q.F16)
    _add(w, "mm.0.bias", r.normal(0, 0.1, M))
    _add(w, "mm.2.weight", r.normal(0, 0.2, (E, M)), Q.F16)
    _add(w, "mm.2.bias", r.normal(0, 0.1, E))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# SigLIP towers (Gemma 3, Eagle 2.5): 56 x 56 frames, 14 x 14 patches (4 x 4 grid); Gemma 3 pools
# 4 x 4 to one row, Eagle 2.5 pixel-shuffles by 2 to 4 rows.
SIG_IMAGE, SIG_PATCH, SIG_C, SIG_FF = 56, 14, 16, 32


def _siglip(w, r, n_layer: int, post_ln: bool) -> None:
    C, F, P = SIG_C, SIG_FF, SIG_PATCH
    from gguf import GGMLQuantizationType as Q
    w.add_uint32("clip.vision.image_size", SIG_IMAGE)
    w.add_uint32("clip.vision.patch_size", P)
    w.add_uint32("clip.vision.embedding_length", C)
    w.add_uint32("clip.vision.feed_forward_length", F)
    w.add_uint32("clip.vision.block_count", n_layer)
    w.add_uint32("clip.vision.attention.head_count", 2)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    w.add_uint32("clip.vision.projection_dim", E)
    _add(w, "v.patch_embd.weight", r.normal(0, 0.1, (C, 3, P, P)), Q.F16)
    _add(w, "v.patch_embd.bias", r.normal(0, 0.1, C))
    _add(w, "v.position_embd.weight", r.normal(0, 0.1, ((SIG_IMAGE // P) ** 2, C)))
    for il in range(n_layer):
        p = f"v.blk.{il}."
        for n in ("ln1", "ln2"):
            _add(w, p + n + ".weight", r.normal(1, 0.1, C))
            _add(w, p + n + ".bias", r.normal(0, 0.1, C))
        for n in ("attn_q", "attn_k", "attn_v", "attn_out"):
            _add(w, p + n + ".weight", r.normal(0, 0.2, (C, C)), Q.F16)
            _add(w, p + n + ".bias", r.normal(0, 0.1, C))
        _add(w, p + "ffn_up.weight", r.normal(0, 0.2, (F, C)), Q.F16)
        _add(w, p + "ffn_up.bias", r.normal(0, 0.1, F))
        _add(w, p + "ffn_down.weight", r.normal(0, 0.2, (C, F)), Q.F16)
        _add(w, p + "ffn_down.bias", r.normal(0, 0.1, C))
    if post_ln:
        _add(w, "v.post_ln.weight", r.normal(1, 0.1, C))
        _add(w, "v.post_ln.bias", r.normal(0, 0.1, C))


def _finish(w, path: Path) -> Path:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_mmproj_gemma3(path: Path, seed: int = 0) -> Path:
    from gguf import GGMLQuantizationType as Q, GGUFWriter
    r = _rng(seed + 300)
    w = GGUFWriter(str(path), "clip")
    _clip_header(w, "gemma3")
    _siglip(w, r, 1, post_ln=True)
    _add(w, "mm.soft_emb_norm.weight", r.normal(1, 0.1, SIG_C))
    _add(w, "mm.input_projection.weight", r.normal(0, 0.2, (SIG_C, E)), Q.F16)
    return _finish(w, path)


def write_mmproj_eagle2_5(path: Path, seed: int = 0) -> Path:
    from gguf import GGMLQuantizationType as Q, GGUFWriter
    r = _rng(seed + 400)
    w = GGUFWriter(str(path), "clip")
    _clip_header(w, "eagle2_5")
    _siglip(w, r, 1, post_ln=False)
    w.add_uint32("clip.vision.projector.scale_factor", 2)
    w.add_int32("clip.vision.eagle2_5.select_layer", -2)
    M = SIG_C * 4
    _add(w, "mm.model.mlp.0.weight", r.normal(1, 0.1, M))
    _add(w, "mm.model.mlp.0.bias", r.normal(0, 0.1, M))
    _add(w, "mm.model.mlp.1.weight", r.normal(0, 0.2, (E, M)), Q.F16)
    _add(w, "mm.model.mlp.1.bias", r.normal(0, 0.1, E))
    _add(w, "mm.model.mlp.3.weight", r.normal(0, 0.2, (E, E)), Q.F16)
    _add(w, "mm.model.mlp.3.bias", r.normal(0, 0.1, E))
    return _finish(w, path)


# Which text seed each mmproj seed pairs with, and the frames its encoder takes (n, 3, H, W).
MMPROJ_PAIRS = {"internvl": ("qwen2", (1, 3, IVL_IMAGE, IVL_IMAGE)),
                "qwen3vl": ("qwen3vl", (2, 3, 2 * Q3_PATCH, 2 * Q3_PATCH)),
                "gemma3": ("gemma3", (1, 3, SIG_IMAGE, SIG_IMAGE)),
                "eagle2_5": ("qwen2", (1, 3, SIG_IMAGE, SIG_IMAGE))}

SESSION_STEPS = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16]]


def save_sessions(model, out_dir: Path, prefix: str = "") -> dict[str, Path]:
    """Session files of every mode from a loaded seed model (prefix, three steps); names start
    with ``prefix``."""
    out = {}
    for name, kw in (("statekv", dict(mode="statekv", budget=6, kv_type="f32")),
                     ("statekv-f16", dict(mode="statekv", budget=64, kv_type="f16", detailed_chunk=5)),
                     ("window", dict(mode="window", window=2, kv_type="f16")),
                     ("full", dict(mode="full", kv_type="f32", detailed_chunk=7))):
        s = model.session(**kw)
        s.prefill([2, 3, 4])
        for step in SESSION_STEPS:
            s.add_step(step)
        p = out_dir / f"session-{prefix}{name}.statekv"
        s.save(p, app_data='{"note": "fuzz seed"}')
        out[prefix + name] = p
    return out


def write_all(out_dir: Path) -> dict[str, Path]:
    """Every GGUF seed under out_dir: text-<arch>.gguf and mmproj-<family>.gguf."""
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = {}
    for arch in ("qwen2", "qwen3", "qwen3vl", "gemma3"):
        seeds[f"text-{arch}"] = write_text(out_dir / f"text-{arch}.gguf", arch)
    seeds["mmproj-internvl"] = write_mmproj_internvl(out_dir / "mmproj-internvl.gguf")
    seeds["mmproj-qwen3vl"] = write_mmproj_qwen3vl(out_dir / "mmproj-qwen3vl.gguf")
    seeds["mmproj-gemma3"] = write_mmproj_gemma3(out_dir / "mmproj-gemma3.gguf")
    seeds["mmproj-eagle2_5"] = write_mmproj_eagle2_5(out_dir / "mmproj-eagle2_5.gguf")
    return seeds
