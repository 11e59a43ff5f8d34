"""Files statekv cannot run give a statekv.ModelError naming the file, the key or tensor, and
what was expected; never a crash."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter

import statekv


def rewrite(src, dst, drop=(), reshape=None, arch=None):
    """Copy a GGUF with tensors dropped / one tensor's shape changed / another architecture."""
    r = GGUFReader(src)
    a = arch or r.fields["general.architecture"].contents()
    w = GGUFWriter(dst, a)
    for name, field in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name.startswith(r.fields["general.architecture"].contents() + "."):
            name = a + name[name.index("."):]
        vtype = field.types[0]
        if vtype.name == "ARRAY":
            w.add_array(name, field.contents())
        else:
            w.add_key_value(name, field.contents(), vtype)
    for t in r.tensors:
        if t.name in drop:
            continue
        data = np.array(t.data)
        if reshape and t.name == reshape[0]:
            data = data.reshape(-1)[: int(np.prod(reshape[1]))].reshape(reshape[1])
        w.add_tensor(t.name, data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


@pytest.fixture(scope="module")
def good(tiny_gguf):
    return tiny_gguf("qwen2", "f32")


def expect_model_error(path, *needles):
    with pytest.raises(statekv.ModelError) as e:
        statekv.Model(path, threads=1)
    msg = str(e.value)
    assert str(path) in msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_missing_file(tmp_path):
    expect_model_error(tmp_path / "nope.gguf", "cannot open")


def test_wrong_magic(tmp_path, good):
    p = tmp_path / "bad.gguf"
    data = bytearray(open(good, "rb").read())
    data[:4] = b"GGML"
    p.write_bytes(data)
    expect_model_error(p, "magic")


def test_not_gguf_at_all(tmp_path):
    p = tmp_path / "text.gguf"
    p.write_text("hello")
    expect_model_error(p, "magic")


@pytest.mark.parametrize("keep", [0.5, 0.999, 0.01])
def test_truncated(tmp_path, good, keep):
    p = tmp_path / "trunc.gguf"
    data = open(good, "rb").read()
    p.write_bytes(data[: int(len(data) * keep)])
    expect_model_error(p, "trunc")


def test_missing_tensor(tmp_path, good):
    p = rewrite(good, tmp_path / "missing.gguf", drop={"blk.1.attn_k.weight"})
    expect_model_error(p, "blk.1.attn_k.weight", "missing tensor")


def test_wrong_tensor_shape(tmp_path, good):
    p = rewrite(good, tmp_path / "shape.gguf", reshape=("blk.0.ffn_up.weight", (64, 64)))
    expect_model_error(p, "blk.0.ffn_up.weight", "shape", "expected")


def test_unknown_architecture(tmp_path, good):
    p = rewrite(good, tmp_path / "arch.gguf", arch="mamba9")
    expect_model_error(p, "mamba9", "general.architecture", "qwen2")


def test_missing_metadata_key(tmp_path, good):
    src = GGUFReader(good)
    p = tmp_path / "nokey.gguf"
    shutil.copy(good, p)
    # Rename the key in place (same length) so the file stays well-formed.
    data = bytearray(open(good, "rb").read())
    key = b"qwen2.block_count"
    i = data.find(key)
    assert i > 0 and src is not None
    data[i:i + len(key)] = b"qwen2.block_cOunt"
    p.write_bytes(data)
    expect_model_error(p, "qwen2.block_count", "missing metadata key")


def test_vocab_only_file_has_no_weights(qwen2_vocab_gguf):
    expect_model_error(qwen2_vocab_gguf, "token_embd.weight")


def test_mmproj_argument_is_refused_with_the_projector_named(good, tmp_path):
    p = tmp_path / "mmproj.gguf"
    w = GGUFWriter(p, "clip")
    w.add_string("clip.projector_type", "resampler")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(statekv.ModelError, match="resampler"):
        statekv.Model(good, mmproj=p)
    # The mmproj passed as the text model is recognised as such.
    expect_model_error(p, "mmproj")
