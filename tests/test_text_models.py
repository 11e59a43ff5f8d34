"""Text decoders (qwen2, qwen3, qwen3vl) against transformers on tiny random checkpoints converted
by statekv's converter: logits at every position, greedy generation, multi-axis positions and
DeepStack inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import statekv

N_PROMPT = 48


def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def load_hf(path):
    from transformers import AutoModelForCausalLM, Qwen3VLForConditionalGeneration
    import json

    arch = json.loads((path / "config.json").read_text())["architectures"][0]
    cls = Qwen3VLForConditionalGeneration if arch == "Qwen3VLForConditionalGeneration" else AutoModelForCausalLM
    return cls.from_pretrained(path, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def prompt():
    return np.random.default_rng(1).integers(0, 151000, N_PROMPT)


@pytest.fixture(scope="module")
def hf_models(tiny_hf_dir):
    cache = {}

    def get(arch, tied=None):
        key = (arch, tied)
        if key not in cache:
            cache[key] = load_hf(tiny_hf_dir(arch, tied=tied))
        return cache[key]

    return get


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids)[None]).logits[0].float().numpy()


CASES = [("qwen2", False), ("qwen2", True), ("qwen3", True), ("qwen3", False)]


@pytest.mark.parametrize("arch,tied", CASES)
def test_logits_f32_match_transformers(arch, tied, tiny_gguf, hf_models, prompt):
    ref = hf_logits(hf_models(arch, tied), prompt)
    m = statekv.Model(tiny_gguf(arch, "f32", tied=tied), threads=2)
    assert m.info()["tied_output"] is tied
    out = m.logits(prompt)
    assert out.shape == ref.shape and out.dtype == np.float32
    assert rel_err(out, ref) <= 1e-4


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_logits_f16(arch, tiny_gguf, hf_models, prompt):
    ref = hf_logits(hf_models(arch), prompt)
    out = statekv.Model(tiny_gguf(arch, "f16"), threads=2).logits(prompt)
    assert rel_err(out, ref) <= 1e-2


@pytest.fixture(scope="module")
def confident_gguf(tmp_path_factory):
    """A tiny model that predicts confidently, for the argmax check of quantized weights.

    The default fixture's next-token distribution over 151936 random output rows is flat: its
    top-2 logit gap is ~2% of the largest logit, and rounding the weights to q8_0 alone (measured
    with transformers on the GGUF's dequantized weights) flips ~15% of its argmaxes, so an argmax
    criterion says nothing about the runtime there. Tied embeddings with a small init (and biases
    of the same scale) give a copy-like model whose top-2 gap is ~20% of the largest logit, like a
    trained model's confident predictions."""
    import tiny
    from transformers import AutoModelForCausalLM
    from statekv.convert import convert

    cache = {}

    def make(arch, outtype):
        if (arch, outtype) not in cache:
            hf = tmp_path_factory.mktemp(f"confident-{arch}")
            tiny.make(arch, hf, seed=0, tied=True, initializer_range=0.02)
            model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name.endswith(".bias"):
                        p.mul_(0.2)
            model.save_pretrained(hf)
            cache[(arch, outtype)] = (model.eval(), convert(hf, hf / f"model-{outtype}.gguf", outtype))
        return cache[(arch, outtype)]

    return make


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_logits_q8_0(arch, confident_gguf):
    model, path = confident_gguf(arch, "q8_0")
    ids = np.random.default_rng(10).integers(0, 151000, 192)
    ref = hf_logits(model, ids)
    m = statekv.Model(path, threads=2)
    assert "q8_0" in m.info()["tensor_types"]
    out = m.logits(ids)
    agree = float(np.mean(out.argmax(-1) == ref.argmax(-1)))
    assert agree >= 0.98
    assert rel_err(out, ref) <= 5e-2


def greedy_reference(model, ids, n):
    """Greedy continuation with transformers, and the smallest top-2 margin along the way."""
    with torch.no_grad():
        out = model.generate(torch.tensor(ids)[None], max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             output_scores=True, return_dict_in_generate=True, pad_token_id=0)
    tokens = out.sequences[0, len(ids):].tolist()
    margins = []
    for s in out.scores:
        top = torch.topk(s[0].float(), 2).values
        margins.append(float(top[0] - top[1]))
    return tokens, margins


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_greedy_generation_matches_transformers(arch, tiny_gguf, hf_models, prompt):
    ref, margins = greedy_reference(hf_models(arch), prompt, 16)
    # Compare up to the first step where the reference itself is nearly tied.
    n_clear = next((i for i, m in enumerate(margins) if m <= 1e-3), len(margins))
    assert n_clear >= 8, "the tiny model's greedy path is too close to a tie to be a meaningful test"
    out = statekv.Model(tiny_gguf(arch, "f32"), threads=2).generate(prompt, 16, kv_type="f32", ignore_eos=True)
    assert out[:n_clear] == ref[:n_clear]


def test_generate_long_prompt_uses_several_micro_batches(tiny_gguf):
    # 600 prompt tokens: prefilled in two micro-batches over the KV cache; the last-token logits
    # must equal the stateless full prefill's.
    m = statekv.Model(tiny_gguf("qwen2", "f32"), threads=2)
    ids = np.random.default_rng(2).integers(0, 151000, 600)
    expected = int(m.logits(ids)[-1].argmax())
    assert m.generate(ids, 1, kv_type="f32", ignore_eos=True) == [expected]


def qwen3vl_positions(n_text_before, grid_h, grid_w, n_text_after):
    """3-axis positions of text, one image-like grid at one temporal index, then text, laid out
    as transformers' get_rope_index does for a single image."""
    t = list(range(n_text_before))
    pos = [t[:], t[:], t[:]]
    st = n_text_before
    hh, ww = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    pos[0] += [st] * (grid_h * grid_w)
    pos[1] += list(st + hh.ravel())
    pos[2] += list(st + ww.ravel())
    nxt = st + max(grid_h, grid_w)
    for axis in pos:
        axis += list(range(nxt, nxt + n_text_after))
    return np.array(pos, dtype=np.int64)


def test_qwen3vl_text_positions_and_deepstack(tiny_gguf, hf_models):
    model = hf_models("qwen3vl")
    cfg = model.config.text_config
    rng = np.random.default_rng(3)
    n_before, gh, gw, n_after = 10, 4, 5, 18
    n_vis = gh * gw
    n = n_before + n_vis + n_after
    ids = rng.integers(0, 151000, n)
    pos = qwen3vl_positions(n_before, gh, gw, n_after)
    rows = np.arange(n_before, n_before + n_vis)
    n_ds = len(model.config.vision_config.deepstack_visual_indexes)
    emb = torch.tensor(rng.normal(0, 1.0, (n_vis, cfg.hidden_size)), dtype=torch.float32)
    ds = [torch.tensor(rng.normal(0, 1.0, (n_vis, cfg.hidden_size)), dtype=torch.float32) for _ in range(n_ds)]
    lm = model.model.language_model
    with torch.no_grad():
        x = lm.embed_tokens(torch.tensor(ids)[None]).clone()
        x[0, rows] = emb
        mask = torch.zeros(1, n, dtype=torch.bool)
        mask[0, rows] = True
        h = lm(inputs_embeds=x, position_ids=torch.tensor(pos)[:, None, :], visual_pos_masks=mask,
               deepstack_visual_embeds=ds).last_hidden_state
        ref = model.lm_head(h)[0].numpy()
    m = statekv.Model(tiny_gguf("qwen3vl", "f32"), threads=2)
    info = m.info()
    assert info["architecture"] == "qwen3vl" and info["n_deepstack"] == n_ds and info["n_position_axes"] == 3
    full = np.concatenate([emb.numpy()] + [d.numpy() for d in ds], axis=1)
    out = m.logits(ids, positions=pos, embeddings=full, embedding_rows=rows)
    assert rel_err(out, ref) <= 1e-4
    # Without DeepStack slices (width n_embd) the slices count as zero.
    with torch.no_grad():
        h0 = lm(inputs_embeds=x, position_ids=torch.tensor(pos)[:, None, :]).last_hidden_state
        ref0 = model.lm_head(h0)[0].numpy()
    out0 = m.logits(ids, positions=pos, embeddings=emb.numpy(), embedding_rows=rows)
    assert rel_err(out0, ref0) <= 1e-4
    # Text-only with default positions equals transformers' text forward.
    with torch.no_grad():
        ref_t = model(input_ids=torch.tensor(ids)[None]).logits[0].numpy()
    assert rel_err(m.logits(ids), ref_t) <= 1e-4


def test_qwen3vl_generate_continues_after_max_position(tiny_gguf, hf_models):
    # After a prompt with multi-axis positions, new tokens take max(position) + 1, + 2, ...
    # (transformers' rope_deltas): the first generated token's logits use position max+1.
    m = statekv.Model(tiny_gguf("qwen3vl", "f32"), threads=2)
    rng = np.random.default_rng(4)
    pos = qwen3vl_positions(6, 3, 3, 5)
    ids = rng.integers(0, 151000, pos.shape[1])
    first = m.generate(ids, 2, positions=pos, kv_type="f32", ignore_eos=True)
    nxt = int(pos.max()) + 1
    ext = np.concatenate([pos, np.full((3, 1), nxt)], axis=1)
    expected_second = int(m.logits(np.append(ids, first[0]), positions=ext)[-1].argmax())
    assert first[0] == int(m.logits(ids, positions=pos)[-1].argmax())
    assert first[1] == expected_second


def test_info_and_backends(tiny_gguf):
    m = statekv.Model(tiny_gguf("qwen2", "f32"), threads=1)
    info = m.info()
    assert info["architecture"] == "qwen2"
    assert (info["n_embd"], info["n_layer"], info["n_head"], info["n_head_kv"], info["head_dim"]) == (64, 3, 4, 2, 16)
    assert info["n_vocab"] == 151936 and info["threads"] == 1
    assert info["tensor_types"] == {"f32": sum(info["tensor_types"].values())}
    devs = statekv.backends()
    assert any(d["type"] == "cpu" for d in devs)
    assert info["device"] in {d["name"] for d in devs}


def test_bad_arguments_raise_value_error(tiny_gguf):
    m = statekv.Model(tiny_gguf("qwen2", "f32"), threads=1)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m.logits([1, 2, 10**7])
    with pytest.raises(ValueError, match="empty"):
        m.logits([])
    with pytest.raises(ValueError, match="embeddings must have shape"):
        m.logits([1, 2, 3], embeddings=np.zeros((1, 63), np.float32), embedding_rows=[0])
    with pytest.raises(ValueError, match="out of range"):
        m.logits([1, 2, 3], embeddings=np.zeros((1, 64), np.float32), embedding_rows=[3])
    with pytest.raises(ValueError, match="positions"):
        m.logits([1, 2, 3], positions=[0, 1])
    with pytest.raises(ValueError, match="kv_type"):
        m.generate([1, 2, 3], 2, kv_type="q3_k")
    with pytest.raises(ValueError, match="unknown device"):
        statekv.Model(tiny_gguf("qwen2", "f32"), device="NoSuchGPU")
    # Still usable.
    assert m.logits([1, 2, 3]).shape == (3, 151936)


def test_stored_weights_to_f32_roundoff(tmp_path, monkeypatch):
    """q8_0 and f16 files give transformers' logits with the weights as the file stores them
    (dequantized), to f32 round-off, over a 100-token prompt: statekv's CPU product of F16 and Q8_0
    weights keeps the activations in f32, where ggml's rounds them to F16 or to Q8_0 blocks first.
    Sizes against its blocking (graph/packed_matmul.h): widths 288, 144 and 608 (608 not a multiple
    of its 24-row panels), depths 288 and 608 (past one 256-deep block, with remainders), 100
    columns (not a multiple of its 4 or 8). Both kernel widths (STATEKV_GEMM_LANES): 8 lanes
    (24-row panels, 256 deep) and AVX-512's 16 (48 rows, 128 deep)."""
    import gguf

    import tiny
    from statekv.convert import convert

    hf_dir = tiny.make("qwen2", tmp_path / "hf", seed=4, hidden_size=288, intermediate_size=608,
                       num_attention_heads=4, num_key_value_heads=2, initializer_range=0.07)
    ids = np.random.default_rng(11).integers(0, 151000, 100)
    exact = hf_logits(load_hf(hf_dir), ids)
    per_layer = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                 "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                 "ffn_down": "mlp.down_proj"}
    for outtype in ("q8_0", "f16"):
        path = convert(hf_dir, tmp_path / f"m-{outtype}.gguf", outtype)
        stored = load_hf(hf_dir)
        params = dict(stored.named_parameters())
        types = set()
        with torch.no_grad():
            for t in gguf.GGUFReader(path).tensors:
                if t.tensor_type == gguf.GGMLQuantizationType.F32:
                    continue
                base, _ = t.name.rsplit(".", 1)
                parts = base.split(".")
                hf_name = {"token_embd": "model.embed_tokens", "output": "lm_head"}.get(base) or \
                    f"model.layers.{parts[1]}.{per_layer[parts[2]]}"
                p = params[hf_name + ".weight"]
                p.copy_(torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).reshape(p.shape)))
                types.add(t.tensor_type.name)
        assert types == {outtype.upper()}
        ref = hf_logits(stored, ids)
        for lanes in ("8", "16"):
            monkeypatch.setenv("STATEKV_GEMM_LANES", lanes)
            out = statekv.Model(str(path), threads=2).logits(ids)
            assert rel_err(out, ref) <= 1e-5, f"{outtype}, {lanes} lanes: rel {rel_err(out, ref):.3g}"
        # not vacuous: the file's rounding of the weights moves the logits by far more
        assert rel_err(exact, ref) > 1e-4
