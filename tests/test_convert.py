"""The HF -> GGUF converter (statekv.convert) and the GGUF tokenizer (statekv.text.tokenizer).

The expected layout is llama.cpp's (convert_hf_to_gguf.py): tensor names, types and metadata
keys are written out here by hand, independently of the converter's use of gguf-py's tables.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import gguf
from statekv import convert as conv
from statekv.gguf_io import read_gguf_kv, read_gguf_tensor_infos
from statekv.text.tokenizer import (
    TokenType,
    build_tokenizer,
    read_tokenizer_metadata,
    tokenizer_from_gguf,
)

import tiny

Q = gguf.GGMLQuantizationType
F32, F16, BF16, Q8_0 = int(Q.F32), int(Q.F16), int(Q.BF16), int(Q.Q8_0)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def read_gguf(path):
    """(kv, {name: (ggml_shape, ggml_type, raw uint8 bytes)}) through statekv's fast reader
    (cached: treat as read-only)."""
    kv, infos, _ = read_gguf_tensor_infos(path)
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    tensors = {}
    for i in infos:
        block, type_size = gguf.GGML_QUANT_SIZES[Q(i["type"])]
        nbytes = int(np.prod(i["shape"])) // block * type_size
        tensors[i["name"]] = (i["shape"], i["type"], np.array(raw[i["offset"]:i["offset"] + nbytes]))
    return kv, tensors


@functools.lru_cache(maxsize=None)
def cached_tokenizer(path):
    return tokenizer_from_gguf(path)


@functools.lru_cache(maxsize=None)
def cached_metadata(path):
    return read_tokenizer_metadata(path)


def as_f32(entry):
    shape, ttype, data = entry
    assert ttype == F32
    return data.view(np.float32).reshape(list(reversed(shape)))


def hf_state(hf_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(hf_dir / "model.safetensors"))


def hf_config(hf_dir: Path) -> dict:
    return json.loads((hf_dir / "config.json").read_text())


def text_config(cfg: dict) -> dict:
    return cfg.get("text_config", cfg)


# llama.cpp names of the per-layer tensors, by HF module path (HF layout of Qwen2/Qwen3)
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
QWEN2_BIASES = {
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
}
QK_NORMS = {
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
}


def expected_mapping(arch: str, cfg: dict, tied: bool) -> dict[str, str]:
    """GGUF tensor name -> HF tensor name, for the text model."""
    prefix = "model.language_model." if arch == "qwen3vl" else "model."
    per_layer = dict(LAYER_NAMES)
    per_layer.update(QWEN2_BIASES if arch == "qwen2" else QK_NORMS)
    m = {"token_embd.weight": prefix + "embed_tokens.weight", "output_norm.weight": prefix + "norm.weight"}
    if not tied:
        m["output.weight"] = "lm_head.weight"
    for b in range(text_config(cfg)["num_hidden_layers"]):
        for hf, gg in per_layer.items():
            m[f"blk.{b}.{gg}"] = f"{prefix}layers.{b}.{hf}"
    return m


def vocab_cases(path: Path):
    """(text, ids) pairs of llama.cpp's tokenizer test vectors ``path.inp``/``path.out``."""
    sep = "\n__ggml_vocab_test__\n"
    inp = Path(str(path) + ".inp").read_text(encoding="utf-8")
    out = Path(str(path) + ".out").read_text(encoding="utf-8")
    assert inp.endswith(sep) and out.endswith("\n")
    texts = inp[: -len(sep)].split(sep)
    ids = [[int(t) for t in line.split()] for line in out[:-1].split("\n")]
    assert len(texts) == len(ids), (len(texts), len(ids))
    return list(zip(texts, ids))


def write_small_vocab_gguf(path: Path, model="gpt2", pre="qwen2", extra_kv=None, tensors=None):
    """A tiny GGUF with a 7-token byte-level BPE vocabulary (and optional tensors/keys)."""
    w = gguf.GGUFWriter(str(path), arch="qwen2")
    w.add_tokenizer_model(model)
    if pre is not None:
        w.add_tokenizer_pre(pre)
    # 'h','i','hi','Ġ','Ġhi', a control and an unused token
    w.add_token_list(["h", "i", "hi", "Ġ", "Ġhi", "<|end|>", "[PAD6]"])
    w.add_token_types([1, 1, 1, 1, 1, 3, 5])
    w.add_token_merges(["h i", "Ġ hi"])
    w.add_eos_token_id(5)
    w.add_bos_token_id(5)
    for key, (val, vtype, sub) in (extra_kv or {}).items():
        w.add_key_value(key, val, vtype, sub_type=sub)
    for name, arr, raw in tensors or []:
        w.add_tensor(name, arr, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --------------------------------------------------------------------------------------------
# (a) tokenizer from GGUF
# --------------------------------------------------------------------------------------------


def test_tokenizer_reproduces_llama_cpp_vectors(qwen2_vocab_gguf):
    tok = cached_tokenizer(qwen2_vocab_gguf)
    cases = vocab_cases(qwen2_vocab_gguf)
    assert len(cases) == 46
    bad = [(text, want, got) for text, want in cases
           if (got := tok.encode(text, add_special_tokens=False).ids) != want]
    assert not bad, "\n".join(f"{t!r}: expected {w}, got {g}" for t, w, g in bad)
    # and decoding gives the text back
    for text, ids in cases:
        assert tok.decode(ids, skip_special_tokens=False) == text


def test_tokenizer_special_and_user_defined_tokens(qwen2_vocab_gguf):
    tok = cached_tokenizer(qwen2_vocab_gguf)
    text = "<|im_start|>user\nHello<|im_end|>\n"
    assert tok.encode(text).ids == [151644, 872, 198, 9707, 151645, 198]
    # the [PAD] fillers of this (older) file are USER_DEFINED, which llama.cpp matches whole
    assert tok.encode("x[PAD151700]").ids == [87, 151700]
    assert tok.get_vocab_size() == 151936
    assert tok.decode([151644, 9707, 151645], skip_special_tokens=True) == "Hello"


def test_read_tokenizer_metadata(qwen2_vocab_gguf, templates_dir):
    meta = cached_metadata(qwen2_vocab_gguf)
    assert meta["model"] == "gpt2" and meta["pre"] == "qwen2"
    assert len(meta["tokens"]) == len(meta["token_type"]) == 151936
    assert len(meta["merges"]) == 151387 and meta["merges"][0] == "Ġ Ġ"
    assert meta["tokens"][151643:151646] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert meta["token_type"][151643:151646] == [TokenType.CONTROL] * 3
    assert (meta["bos_token_id"], meta["eos_token_id"], meta["pad_token_id"]) == (151643, 151643, 151643)
    assert meta["unk_token_id"] is None and meta["add_bos_token"] is None
    assert meta["chat_template"].startswith("{% for message in messages %}")


def test_fast_reader_agrees_with_gguf_reader(tmp_path):
    """statekv's KV/tensor-info reader against gguf-py's GGUFReader on every value and tensor type."""
    V = gguf.GGUFValueType
    extra = {
        "test.u8": (7, V.UINT8, None), "test.i8": (-7, V.INT8, None),
        "test.u16": (700, V.UINT16, None), "test.i16": (-700, V.INT16, None),
        "test.u32": (70000, V.UINT32, None), "test.i32": (-70000, V.INT32, None),
        "test.u64": (2**40, V.UINT64, None), "test.i64": (-(2**40), V.INT64, None),
        "test.f32": (0.25, V.FLOAT32, None), "test.f64": (1e-300, V.FLOAT64, None),
        "test.bool": (True, V.BOOL, None), "test.str": ("héllo\n", V.STRING, None),
        "test.arr_i32": ([1, -2, 3], V.ARRAY, V.INT32), "test.arr_f32": ([0.5, 1.5], V.ARRAY, V.FLOAT32),
        "test.arr_str": (["a", "", "ü"], V.ARRAY, V.STRING), "test.arr_bool": ([True, False], V.ARRAY, V.BOOL),
    }
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 64)).astype(np.float32)
    tensors = [
        ("t.f32", w, None),
        ("t.f16", w.astype(np.float16), None),
        ("t.bf16", gguf.quants.quantize(w, Q.BF16), Q.BF16),
        ("t.q8_0", gguf.quants.quantize(w, Q.Q8_0), Q.Q8_0),
        ("t.vec", w[0].copy(), None),
    ]
    path = write_small_vocab_gguf(tmp_path / "small.gguf", extra_kv=extra, tensors=tensors)
    kv, infos, data_start = read_gguf_tensor_infos(path)
    reader = gguf.GGUFReader(path)
    want_kv = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert kv.keys() == want_kv.keys()
    for k, v in want_kv.items():
        assert kv[k] == v and type(kv[k]) is type(v), (k, kv[k], v)
    assert read_gguf_kv(path) == kv
    assert data_start == reader.data_offset
    assert [i["name"] for i in infos] == [t.name for t in reader.tensors]
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    for info, t in zip(infos, reader.tensors):
        assert info["shape"] == [int(d) for d in t.shape], t.name
        assert info["type"] == int(t.tensor_type), t.name
        assert info["offset"] == t.data_offset, t.name
        assert bytes(raw[info["offset"]:info["offset"] + t.n_bytes]) == t.data.tobytes(), t.name


def test_tokenizer_from_gguf_reader_object(tmp_path):
    path = write_small_vocab_gguf(tmp_path / "v.gguf")
    from_path = tokenizer_from_gguf(path)
    from_reader = tokenizer_from_gguf(gguf.GGUFReader(path))
    for t in ["hi hi", "hi<|end|>", "ih"]:
        assert from_path.encode(t).ids == from_reader.encode(t).ids
    assert from_path.encode("hi hi<|end|>").ids == [2, 4, 5]
    meta = read_tokenizer_metadata(gguf.GGUFReader(path))
    assert meta["path"] == str(path) and meta["eos_token_id"] == 5


def test_build_tokenizer_bos_eos_only_when_asked():
    vocab = (["h", "i", "hi", "Ġ", "Ġhi", "<|end|>", "<s>"], [1, 1, 1, 1, 1, 3, 3], ["h i", "Ġ hi"])
    plain = build_tokenizer(*vocab, bos_token_id=6, eos_token_id=5)
    assert plain.encode("hi hi").ids == [2, 4]
    bos = build_tokenizer(*vocab, bos_token_id=6, eos_token_id=5, add_bos_token=True)
    assert bos.encode("hi hi").ids == [6, 2, 4]
    assert bos.encode("hi hi", add_special_tokens=False).ids == [2, 4]
    both = build_tokenizer(*vocab, bos_token_id=6, eos_token_id=5, add_bos_token=True, add_eos_token=True)
    assert both.encode("hi").ids == [6, 2, 5]


@pytest.mark.parametrize("model,pre,key", [
    ("llama", "qwen2", "tokenizer.ggml.model"),
    ("gpt2", "llama-bpe", "tokenizer.ggml.pre"),
    ("gpt2", None, "tokenizer.ggml.pre"),
])
def test_tokenizer_rejects_unknown_model_or_pre(tmp_path, model, pre, key):
    path = write_small_vocab_gguf(tmp_path / "v.gguf", model=model, pre=pre)
    with pytest.raises(ValueError) as e:
        tokenizer_from_gguf(path)
    assert str(path) in str(e.value) and key in str(e.value)


def test_tokenizer_rejects_non_gguf(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"NOPE" + bytes(20))
    with pytest.raises(ValueError, match="not a GGUF file"):
        read_tokenizer_metadata(p)
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        read_tokenizer_metadata(tmp_path / "missing.gguf")


# --------------------------------------------------------------------------------------------
# (b) converter output: architecture, tensors, values, hyperparameters
# --------------------------------------------------------------------------------------------

ARCH_CASES = [("qwen2", False), ("qwen2", True), ("qwen3", True), ("qwen3vl", True)]


@pytest.mark.parametrize("arch,tied", ARCH_CASES, ids=[f"{a}-{'tied' if t else 'untied'}" for a, t in ARCH_CASES])
def test_convert_tensors_f32(tiny_hf_dir, tiny_gguf, arch, tied):
    hf = tiny_hf_dir(arch, tied=tied)
    kv, tensors = read_gguf(tiny_gguf(arch, "f32", tied=tied))
    cfg = hf_config(hf)
    state = hf_state(hf)
    assert kv["general.architecture"] == arch
    assert kv["general.file_type"] == 0

    mapping = expected_mapping(arch, cfg, tied)
    assert set(tensors) == set(mapping)
    assert ("output.weight" in tensors) == (not tied)
    assert ("lm_head.weight" in state) == (not tied)
    for gname, hname in mapping.items():
        shape, ttype, _ = tensors[gname]
        assert ttype == F32, gname
        assert shape == list(reversed(state[hname].shape)), gname
        np.testing.assert_array_equal(as_f32(tensors[gname]), state[hname], err_msg=gname, strict=True)
    if arch == "qwen3vl":  # vision tensors stay out of the text GGUF
        assert any(k.startswith("model.visual.") for k in state)
        assert not any(k.startswith("v.") or "visual" in k for k in tensors)


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "qwen3vl"])
def test_convert_hyperparameters(tiny_hf_dir, tiny_gguf, arch):
    hf = tiny_hf_dir(arch)
    kv, _ = read_gguf(tiny_gguf(arch))
    cfg = hf_config(hf)
    t = text_config(cfg)
    a = arch
    assert kv[f"{a}.block_count"] == t["num_hidden_layers"]
    assert kv[f"{a}.context_length"] == t["max_position_embeddings"]
    assert kv[f"{a}.embedding_length"] == t["hidden_size"]
    assert kv[f"{a}.feed_forward_length"] == t["intermediate_size"]
    assert kv[f"{a}.attention.head_count"] == t["num_attention_heads"]
    assert kv[f"{a}.attention.head_count_kv"] == t["num_key_value_heads"]
    assert kv[f"{a}.attention.layer_norm_rms_epsilon"] == np.float32(t["rms_norm_eps"])
    assert kv[f"{a}.rope.freq_base"] == np.float32(t["rope_parameters"]["rope_theta"])
    if "head_dim" in t:  # llama.cpp writes key/value lengths only when config.json has head_dim
        assert kv[f"{a}.attention.key_length"] == kv[f"{a}.attention.value_length"] == t["head_dim"]
    else:
        assert f"{a}.attention.key_length" not in kv and f"{a}.attention.value_length" not in kv
    if arch == "qwen3vl":
        assert kv["qwen3vl.rope.dimension_sections"] == [4, 2, 2, 0]
        assert kv["qwen3vl.n_deepstack_layers"] == len(cfg["vision_config"]["deepstack_visual_indexes"]) == 2
    else:
        assert f"{a}.rope.dimension_sections" not in kv and f"{a}.n_deepstack_layers" not in kv
    assert kv["general.quantization_version"] == 2
    assert kv["general.type"] == "model"
    # nothing llama.cpp does not write for these models
    assert not [k for k in kv if k.startswith(f"{a}.rope.scaling")]


# --------------------------------------------------------------------------------------------
# (c) tokenizer metadata written by the converter
# --------------------------------------------------------------------------------------------


def test_convert_tokenizer_metadata_matches_reference_vocab(tiny_gguf, qwen2_vocab_gguf, templates_dir):
    ours = read_tokenizer_metadata(tiny_gguf("qwen2"))
    ref = cached_metadata(qwen2_vocab_gguf)
    n_real = tiny.N_BASE_TOKENS
    assert ours["model"] == ref["model"] == "gpt2"
    assert ours["pre"] == ref["pre"] == "qwen2"
    assert ours["tokens"] == ref["tokens"]  # including the [PAD{id}] fillers up to 151936
    assert ours["merges"] == ref["merges"]
    assert ours["token_type"][:n_real] == ref["token_type"][:n_real]
    # Fillers: current llama.cpp writes UNUSED; the reference file came from an older converter
    # that wrote USER_DEFINED for them.
    assert set(ours["token_type"][n_real:]) == {TokenType.UNUSED}
    assert set(ref["token_type"][n_real:]) == {TokenType.USER_DEFINED}
    # bos/pad as in the reference; eos is <|im_end|> for instruct checkpoints (tokenizer_config's
    # eos_token), where the reference (a base model's) has <|endoftext|>
    assert ours["bos_token_id"] == ref["bos_token_id"] == 151643
    assert ours["pad_token_id"] == ref["pad_token_id"] == 151643
    assert ours["eos_token_id"] == 151645
    assert ours["add_bos_token"] is False and ours["add_eos_token"] is False
    assert ours["chat_template"] == (templates_dir / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text(encoding="utf-8")


@pytest.mark.parametrize("arch", ["qwen3", "qwen3vl"])
def test_convert_tokenizer_metadata_qwen3_added_tokens(tiny_gguf, templates_dir, arch):
    meta = read_tokenizer_metadata(tiny_gguf(arch))
    toks, types = meta["tokens"], meta["token_type"]
    assert len(toks) == tiny.VOCAB_SIZE
    for i, content, special in tiny.QWEN3_EXTRA_TOKENS:
        assert toks[i] == content
        # llama.cpp: special added tokens and non-special ones that look like <|...|> are CONTROL
        want = TokenType.CONTROL if special or content.startswith("<|") else TokenType.USER_DEFINED
        assert types[i] == want, content
    assert toks[151669] == "[PAD151669]" and set(types[151669:]) == {TokenType.UNUSED}
    assert (meta["bos_token_id"], meta["eos_token_id"], meta["pad_token_id"]) == (151643, 151645, 151643)
    assert meta["chat_template"] == (templates_dir / "Qwen-Qwen3-0.6B.jinja").read_text(encoding="utf-8")


@pytest.mark.parametrize("arch", ["qwen2", "qwen3vl"])
def test_converted_tokenizer_matches_hf_tokenizer(tiny_hf_dir, tiny_gguf, arch):
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(tiny_hf_dir(arch))
    tok = tokenizer_from_gguf(tiny_gguf(arch))
    chat = hf_tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Was ist 2+2? 🦙"}],
        tokenize=False, add_generation_prompt=True)
    texts = [chat, "Hello world", " \n\n  x", "I've 3333 naïve cafés", "<|im_start|><|im_end|>",
             "<|vision_start|><|video_pad|><|video_pad|><|vision_end|>", "<think>\nok\n</think>",
             "[PAD151800]"]
    for text in texts:
        assert tok.encode(text).ids == hf_tok.encode(text, add_special_tokens=True), text
    if arch == "qwen3vl":
        assert tok.encode("<|vision_start|><|image_pad|>").ids == [151652, 151655]


# --------------------------------------------------------------------------------------------
# (d) output types
# --------------------------------------------------------------------------------------------

OUTTYPE_CASES = [("qwen2", "q8_0", Q8_0, 7), ("qwen3", "f16", F16, 1), ("qwen3vl", "bf16", BF16, 32)]


@pytest.mark.parametrize("arch,outtype,qtype,file_type", OUTTYPE_CASES, ids=[c[1] for c in OUTTYPE_CASES])
def test_convert_outtypes(tiny_hf_dir, tiny_gguf, arch, outtype, qtype, file_type):
    hf = tiny_hf_dir(arch)
    kv, tensors = read_gguf(tiny_gguf(arch, outtype))
    state = hf_state(hf)
    mapping = expected_mapping(arch, hf_config(hf), tied=arch != "qwen2")
    assert set(tensors) == set(mapping)
    assert kv["general.file_type"] == file_type
    n_quant = 0
    for gname, hname in mapping.items():
        shape, ttype, data = tensors[gname]
        ref = state[hname]
        assert shape == list(reversed(ref.shape)), gname
        if ref.ndim == 1:  # norms and biases stay F32, bit exact
            assert ttype == F32, gname
            np.testing.assert_array_equal(as_f32(tensors[gname]), ref, err_msg=gname)
        else:
            assert ttype == qtype, gname
            n_quant += 1
            # bit-identical to gguf-py's reference quantization of the HF tensor
            assert data.tobytes() == gguf.quants.quantize(ref, Q(qtype)).tobytes(), gname
            deq = gguf.quants.dequantize(data, Q(qtype)).reshape(ref.shape)
            tol = 0.02 if qtype == Q8_0 else 0.01
            assert np.max(np.abs(deq - ref)) <= tol * np.max(np.abs(ref)), gname
    assert n_quant >= 7 * 3


def test_q8_0_falls_back_to_f16_for_rows_not_multiple_of_32():
    assert conv._tensor_qtype("blk.0.attn_q.weight", (64, 48), Q.Q8_0) == Q.F16
    assert conv._tensor_qtype("blk.0.ffn_down.weight", (48, 96), Q.Q8_0) == Q.Q8_0
    assert conv._tensor_qtype("blk.0.attn_q.weight", (64, 48), Q.BF16) == Q.BF16
    assert conv._tensor_qtype("blk.0.attn_q.bias", (64,), Q.Q8_0) == Q.F32
    assert conv._tensor_qtype("blk.0.attn_q_norm.weight", (16,), Q.F16) == Q.F32
    assert conv._tensor_qtype("output_norm.weight", (64,), Q.BF16) == Q.F32


def test_cli_main_passes_arguments(tmp_path, capsys, monkeypatch):
    seen = {}

    def fake_convert(hf_dir, out, outtype="f32", *, mmproj_out=None):
        seen.update(hf_dir=hf_dir, out=out, outtype=outtype, mmproj_out=mmproj_out)
        return Path(out)

    monkeypatch.setattr(conv, "convert", fake_convert)
    out = tmp_path / "cli.gguf"
    assert conv.main(["some/dir", str(out), "--outtype", "q8_0"]) == 0
    assert seen == {"hf_dir": "some/dir", "out": str(out), "outtype": "q8_0", "mmproj_out": None}
    assert capsys.readouterr().out.strip() == str(out)
    assert conv.main(["some/dir", str(out)]) == 0
    assert seen["outtype"] == "auto"  # llama.cpp's default


# --------------------------------------------------------------------------------------------
# (e) bad inputs
# --------------------------------------------------------------------------------------------


def _partial_copy(src: Path, dst: Path, skip=(), link_weights=True) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        if p.name in skip:
            continue
        if p.suffix == ".safetensors" and link_weights:
            os.symlink(p, dst / p.name)
        else:
            shutil.copy(p, dst / p.name)
    return dst


def test_error_nonexistent_dir(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope.*no such directory"):
        conv.convert(missing, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_error_unknown_architecture(tiny_hf_dir, tmp_path):
    d = _partial_copy(tiny_hf_dir("qwen2"), tmp_path / "llama")
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["LlamaForCausalLM"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(conv.ConversionError) as e:
        conv.convert(d, tmp_path / "out.gguf")
    msg = str(e.value)
    assert str(d / "config.json") in msg and "LlamaForCausalLM" in msg and "Qwen2ForCausalLM" in msg
    assert list(tmp_path.glob("*.gguf*")) == [] and list(tmp_path.glob(".out.gguf*")) == []


def test_error_missing_config(tiny_hf_dir, tmp_path):
    d = _partial_copy(tiny_hf_dir("qwen2"), tmp_path / "nocfg", skip=("config.json",))
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        conv.convert(d, tmp_path / "out.gguf")


def test_error_missing_safetensors(tiny_hf_dir, tmp_path):
    d = _partial_copy(tiny_hf_dir("qwen2"), tmp_path / "noweights", skip=("model.safetensors",))
    with pytest.raises(FileNotFoundError) as e:
        conv.convert(d, tmp_path / "out.gguf")
    assert str(d) in str(e.value) and "model.safetensors" in str(e.value)
    assert not (tmp_path / "out.gguf").exists()


def test_error_missing_tokenizer(tiny_hf_dir, tmp_path):
    d = _partial_copy(tiny_hf_dir("qwen2"), tmp_path / "notok", skip=("tokenizer.json",))
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        conv.convert(d, tmp_path / "out.gguf")


def test_error_unknown_pre_tokenizer(tiny_hf_dir, tmp_path):
    d = _partial_copy(tiny_hf_dir("qwen2"), tmp_path / "pre", skip=("tokenizer.json",))
    tj = json.loads((tiny_hf_dir("qwen2") / "tokenizer.json").read_text(encoding="utf-8"))
    tj["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    (d / "tokenizer.json").write_text(json.dumps(tj), encoding="utf-8")
    with pytest.raises(conv.ConversionError) as e:
        conv.convert(d, tmp_path / "out.gguf")
    assert str(d / "tokenizer.json") in str(e.value) and "pre-tokenizer" in str(e.value)


def test_error_truncated_safetensors(tiny_hf_dir, tmp_path):
    d = _partial_copy(tiny_hf_dir("qwen2"), tmp_path / "trunc", link_weights=False)
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: 1 << 20])
    with pytest.raises(conv.ConversionError, match=r"model\.safetensors.*past the end"):
        conv.convert(d, tmp_path / "out.gguf")


def test_failure_while_writing_leaves_nothing(tiny_hf_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_load = conv.SafetensorsIndex.load

    def flaky_load(self, name):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk on fire")
        return real_load(self, name)

    monkeypatch.setattr(conv.SafetensorsIndex, "load", flaky_load)
    out_dir = tmp_path / "out"
    with pytest.raises(OSError, match="disk on fire"):
        conv.convert(tiny_hf_dir("qwen3"), out_dir / "model.gguf")
    assert calls["n"] == 5
    assert list(out_dir.iterdir()) == []


def test_error_mmproj_not_available_yet(tiny_hf_dir, tmp_path):
    with pytest.raises(conv.ConversionError, match="no mmproj writer"):
        conv.convert(tiny_hf_dir("qwen2"), tmp_path / "t.gguf", mmproj_out=tmp_path / "mm.gguf")  # text-only family
    assert not (tmp_path / "t.gguf").exists()


def test_error_bad_outtype(tiny_hf_dir, tmp_path):
    with pytest.raises(ValueError, match="q4_0"):
        conv.convert(tiny_hf_dir("qwen3"), tmp_path / "t.gguf", "q4_0")


def test_cli_main_reports_errors(tmp_path, capsys):
    assert conv.main([str(tmp_path / "nope"), str(tmp_path / "o.gguf")]) == 1
    err = capsys.readouterr().err
    assert "error" in err and str(tmp_path / "nope") in err
