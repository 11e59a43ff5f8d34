"""Tiny seeded random-weight transformers checkpoints for tests.

Each ``make_*`` function builds a small model of a supported family with transformers, gives it
non-degenerate random weights (seeded), and saves it with ``save_pretrained`` into a directory,
together with a real Qwen tokenizer and chat template, so that the directory looks like a
checkpoint downloaded from the Hub.

Tokenizer: the Qwen2 byte-level BPE vocabulary of ``python/statekv/data/vocab/ggml-vocab-qwen2.gguf``
(151643 normal tokens + ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``), wrapped in a
``PreTrainedTokenizerFast`` with eos ``<|im_end|>`` (151645), pad ``<|endoftext|>`` (151643), no
BOS, ``add_bos_token: false`` and the family's chat template.  ``make_qwen3``/``make_qwen3vl``
also carry the added tokens of the real Qwen2.5/Qwen3 tokenizers (ids 151646..151668:
``<|vision_start|>`` 151652, ``<|image_pad|>`` 151655, ``<|video_pad|>`` 151656, ``<think>``
151667, ...), with the same special/non-special flags as the released tokenizers.  The models'
``vocab_size`` is 151936 (the real Qwen config value), larger than the tokenizer, so converters
pad the GGUF vocabulary with ``[PAD{id}]`` entries as they do for real checkpoints.

Weights: float32, initialized by the model's own init under ``torch.manual_seed(seed)`` with
``initializer_range`` 0.15 (text) / 0.05 (vision) instead of 0.02, then every norm weight is
redrawn around 1 (N(1, 0.1^2)) and every bias as N(0, 0.1^2), so that layers, norms and biases
all matter and logits differ by O(1) between tokens.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """The project's data (vocab/, templates/), shipped in the package: python/statekv/data."""
    return REPO_ROOT / "python" / "statekv" / "data"


def qwen2_vocab_path() -> Path:
    return data_dir() / "vocab" / "ggml-vocab-qwen2.gguf"


def template_path(family: str) -> Path:
    names = {
        "qwen2": "Qwen-Qwen2.5-7B-Instruct.jinja",
        "qwen3": "Qwen-Qwen3-0.6B.jinja",
        "qwen3vl": "Qwen-Qwen3-0.6B.jinja",
    }
    return data_dir() / "templates" / names[family]


VOCAB_SIZE = 151936       # config.vocab_size of the real Qwen2/Qwen2.5(<=7B)/Qwen3/Qwen3-VL models
N_BASE_TOKENS = 151646    # tokens of the Qwen2 tokenizer (151643 BPE + 3 control)
BOS_ID = 151643           # config.json bos_token_id of the real checkpoints (<|endoftext|>)
EOS_ID = 151645           # <|im_end|>
PAD_ID = 151643           # <|endoftext|>

# Added tokens of the released Qwen2.5 (up to 151664) and Qwen3 (up to 151668) tokenizers:
# (id, content, special) as in their tokenizer_config.json.
QWEN3_EXTRA_TOKENS = [
    (151646, "<|object_ref_start|>", True),
    (151647, "<|object_ref_end|>", True),
    (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False),
    (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
    (151665, "<tool_response>", False),
    (151666, "</tool_response>", False),
    (151667, "<think>", False),
    (151668, "</think>", False),
]


@functools.lru_cache(maxsize=None)
def _base_vocab():
    from statekv.text.tokenizer import read_tokenizer_metadata

    meta = read_tokenizer_metadata(qwen2_vocab_path())
    tokens = meta["tokens"][:N_BASE_TOKENS]
    types = meta["token_type"][:N_BASE_TOKENS]
    assert tokens[EOS_ID] == "<|im_end|>" and tokens[PAD_ID] == "<|endoftext|>", "unexpected Qwen2 vocab"
    return tuple(tokens), tuple(types), tuple(meta["merges"])


def make_tokenizer(family: str = "qwen2", extra_tokens=None):
    """A ``PreTrainedTokenizerFast`` with the Qwen vocabulary and ``family``'s chat template."""
    from transformers import PreTrainedTokenizerFast

    from statekv.text.tokenizer import TokenType, build_tokenizer

    if extra_tokens is None:
        extra_tokens = [] if family == "qwen2" else QWEN3_EXTRA_TOKENS
    tokens, types, merges = _base_vocab()
    tokens, types = list(tokens), list(types)
    for i, content, special in extra_tokens:
        assert i == len(tokens), f"extra token {content!r}: id {i}, expected {len(tokens)}"
        tokens.append(content)
        types.append(TokenType.CONTROL if special else TokenType.USER_DEFINED)
    tok = build_tokenizer(tokens, types, merges, pre="qwen2", where=str(qwen2_vocab_path()))
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=131072,
    )
    hf.chat_template = template_path(family).read_text(encoding="utf-8")
    return hf


@functools.lru_cache(maxsize=None)
def _shared_tokenizer(with_qwen3_tokens: bool):
    return make_tokenizer("qwen3" if with_qwen3_tokens else "qwen2")


def save_tokenizer(out_dir: str | os.PathLike, family: str, extra_tokens=None):
    """Save the family's tokenizer (with ``add_bos_token: false``) into ``out_dir``."""
    out_dir = Path(out_dir)
    if extra_tokens is None:  # reuse the tokenizer built for the same vocabulary
        hf = _shared_tokenizer(family != "qwen2")
        hf.chat_template = template_path(family).read_text(encoding="utf-8")
    else:
        hf = make_tokenizer(family, extra_tokens)
    hf.save_pretrained(out_dir)
    # transformers 5 drops add_bos_token when saving; the released Qwen files state it
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg.setdefault("add_bos_token", False)
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")
    return hf


def _randomize_(model, seed: int) -> None:
    """Norm weights ~ N(1, 0.1^2), biases ~ N(0, 0.1^2) (the HF init makes them 1 and 0)."""
    import torch

    g = torch.Generator().manual_seed(seed + 7919)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim != 1:
                continue
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith(".bias"):
                p.copy_(0.1 * noise)
            else:  # 1-D weights are RMSNorm/LayerNorm scales
                p.copy_(1.0 + 0.1 * noise)


def _text_kwargs(tied: bool, **over):
    kw = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        initializer_range=0.15,
        tie_word_embeddings=tied,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )
    kw.update(over)
    return kw


def _build(model_cls, config, seed: int):
    import torch

    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32).eval()
    _randomize_(model, seed)
    return model


def _save(model, out_dir: Path, family: str):
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    save_tokenizer(out_dir, family)
    return out_dir


def make_qwen2(out_dir: str | os.PathLike, seed: int = 0, tied: bool = False, **overrides) -> Path:
    """``Qwen2ForCausalLM``: hidden 64, 3 layers, 4 heads / 2 kv heads (head_dim 16), ffn 128,
    rope_theta 1e6, q/k/v biases; untied by default (``output.weight`` exists).
    ``overrides`` replace config fields (e.g. ``hidden_size=48``)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**_text_kwargs(tied, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                                     **overrides))
    model = _build(Qwen2ForCausalLM, cfg, seed)
    return _save(model, Path(out_dir), "qwen2")


def make_qwen3(out_dir: str | os.PathLike, seed: int = 0, tied: bool = True, **overrides) -> Path:
    """``Qwen3ForCausalLM``: as qwen2 but head_dim 16 explicit, q/k RMSNorm, no biases, tied."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    kw = dict(head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    kw.update(overrides)
    cfg = Qwen3Config(**_text_kwargs(tied, **kw))
    model = _build(Qwen3ForCausalLM, cfg, seed)
    return _save(model, Path(out_dir), "qwen3")


QWEN3VL_VISION = dict(
    depth=3,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    in_channels=3,
    patch_size=16,
    temporal_patch_size=2,
    spatial_merge_size=2,
    out_hidden_size=64,          # = text hidden size
    num_position_embeddings=144,  # a 12x12 learned grid (the real models: 48x48)
    deepstack_visual_indexes=[0, 1],
    initializer_range=0.05,
)


def make_qwen3vl(out_dir: str | os.PathLike, seed: int = 0, tied: bool = True,
                 vision_overrides: dict | None = None, **overrides) -> Path:
    """``Qwen3VLForConditionalGeneration``: the qwen3 text model above with interleaved M-RoPE
    (mrope_section [4, 2, 2] rotary pairs, rope_theta 5e6) and a 3-layer vision tower (width 32,
    real patch 16 / temporal patch 2 / merge 2, DeepStack after vision layers 0 and 1)."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    kw = dict(head_dim=16, rope_parameters={
        "rope_type": "default", "rope_theta": 5e6, "mrope_section": [4, 2, 2], "mrope_interleaved": True})
    kw.update(overrides)
    vision = dict(QWEN3VL_VISION, **(vision_overrides or {}))
    cfg = Qwen3VLConfig(text_config=_text_kwargs(tied, **kw), vision_config=vision, tie_word_embeddings=tied)
    model = _build(Qwen3VLForConditionalGeneration, cfg, seed)
    return _save(model, Path(out_dir), "qwen3vl")


def make_gemma3(out_dir: str | os.PathLike, seed: int = 0, tied: bool = True, **overrides) -> Path:
    """``Gemma3ForCausalLM``: hidden 64, 7 layers (Gemma 3's pattern: layer 5 global, the others
    sliding), 4 heads / 2 kv heads, head_dim 16 (query_pre_attn_scalar 16, as llama.cpp's format
    implies), a sliding window of 8 tokens so that windows cross steps, q/k norms, post-attention
    and post-FFN norms, tied; with the Qwen2 tokenizer (the converter's tokenizer.json path)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    kw = dict(num_hidden_layers=7, head_dim=16, query_pre_attn_scalar=16, sliding_window=8)
    kw.update(overrides)
    cfg = Gemma3TextConfig(**_text_kwargs(tied, **kw))
    model = _build(Gemma3ForCausalLM, cfg, seed)
    return _save(model, Path(out_dir), "qwen2")


GEMMA3_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                     image_size=896, patch_size=14, initializer_range=0.05)
# Gemma 3's special tokens, added after the Qwen vocabulary of the tiny checkpoints (so that a
# chat renders Gemma 3's prompt with them), and its image token ids in the config.
GEMMA3_EXTRA_TOKENS = [(151646, "<start_of_image>", True), (151647, "<end_of_image>", True),
                       (151648, "<image_soft_token>", True), (151649, "<bos>", True),
                       (151650, "<start_of_turn>", True), (151651, "<end_of_turn>", True)]
GEMMA3_IMAGE_TOKENS = dict(boi_token_index=151646, eoi_token_index=151647, image_token_index=151648)


def make_gemma3vl(out_dir: str | os.PathLike, seed: int = 0, tied: bool = True,
                  vision_overrides: dict | None = None, **overrides) -> Path:
    """``Gemma3ForConditionalGeneration``: the gemma3 text model above with a 2-layer SigLIP tower
    (width 32) at the real geometry (896 px, patch 14, 4 x 4 average pooling to 256 tokens), the
    soft-embedding RMSNorm and the input projection; the tokenizer is Qwen's with Gemma 3's special
    tokens added (:data:`GEMMA3_EXTRA_TOKENS`)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    kw = dict(num_hidden_layers=7, head_dim=16, query_pre_attn_scalar=16, sliding_window=8)
    kw.update(overrides)
    vision = dict(GEMMA3_VISION, **(vision_overrides or {}))
    cfg = Gemma3Config(text_config=_text_kwargs(tied, **kw), vision_config=vision, mm_tokens_per_image=256,
                       tie_word_embeddings=tied, **GEMMA3_IMAGE_TOKENS)
    model = _build(Gemma3ForConditionalGeneration, cfg, seed)
    import torch

    with torch.no_grad():   # transformers initializes the input projection to zeros
        proj = model.model.multi_modal_projector.mm_input_projection_weight
        proj.copy_(0.15 * torch.randn(proj.shape, generator=torch.Generator().manual_seed(seed + 13)))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    save_tokenizer(out_dir, "qwen2", extra_tokens=GEMMA3_EXTRA_TOKENS)
    return out_dir


EAGLE_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=448,
                    patch_size=14, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh", vision_use_head=False,
                    model_type="siglip_vision_model")
# Eagle 2.5's image tokens after the Qwen2.5 added tokens (151646..151664), as its tokenizer adds them
EAGLE_EXTRA_TOKENS = QWEN3_EXTRA_TOKENS[:19] + [(151665, "<img>", True), (151666, "</img>", True),
                                                (151667, "<IMG_CONTEXT>", True)]
EAGLE_IMAGE_TOKEN = 151667


class EagleParts:
    """Eagle2_5_VLForConditionalGeneration as NVlabs composes it, from transformers' own blocks:
    ``vision_model`` (SiglipVisionModel, features from ``hidden_states[select_layer]``, the
    post-norm only for -1), ``pixel_shuffle`` (NVlabs' function, ratio 0.5), ``mlp1``
    (LayerNorm -> Linear -> GELU -> Linear) and ``language_model`` (Qwen2ForCausalLM)."""

    def __init__(self, config: dict):
        import torch
        from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

        self.config = config
        vc = SiglipVisionConfig(**{k: v for k, v in config["vision_config"].items() if k != "model_type"})
        self.vision_model = SiglipVisionModel(vc).eval()
        C, E = vc.hidden_size, config["text_config"]["hidden_size"]
        self.mlp1 = torch.nn.Sequential(torch.nn.LayerNorm(C * 4), torch.nn.Linear(C * 4, E), torch.nn.GELU(),
                                        torch.nn.Linear(E, E)).eval()
        tc = {k: v for k, v in config["text_config"].items() if k not in ("architectures", "model_type")}
        self.language_model = Qwen2ForCausalLM(Qwen2Config(**tc)).eval()
        self.select_layer = config["select_layer"]

    def modules(self):
        return {"vision_model": self.vision_model, "mlp1": self.mlp1, "language_model": self.language_model}

    def state_dict(self):
        """NVlabs' tensor names: vision_model.vision_model.* (SiglipVisionModel as older
        transformers nest it), mlp1.{0,1,3}.*, language_model.*."""
        out = {}
        for prefix, m in self.modules().items():
            for k, v in m.state_dict().items():
                if prefix == "vision_model" and not k.startswith("vision_model."):
                    k = "vision_model." + k
                out[f"{prefix}.{k}"] = v
        return out

    @staticmethod
    def pixel_shuffle(x, scale_factor=0.5):
        n, w, h, c = x.size()
        x = x.view(n, w, int(h * scale_factor), int(c / scale_factor))
        x = x.permute(0, 2, 1, 3).contiguous()
        x = x.view(n, int(h * scale_factor), int(w * scale_factor), int(c / (scale_factor * scale_factor)))
        return x.permute(0, 2, 1, 3).contiguous()

    def image_features(self, pixels):
        """(n, 3, 448, 448) -> (n, 256, E), as extract_feature computes them."""
        import torch

        with torch.no_grad():
            out = self.vision_model(pixel_values=torch.as_tensor(pixels), output_hidden_states=True)
            x = out.last_hidden_state if self.select_layer == -1 else out.hidden_states[self.select_layer]
            h = w = int(x.shape[1] ** 0.5)
            x = self.pixel_shuffle(x.contiguous().reshape(x.shape[0], h, w, -1), self.config["downsample_ratio"])
            x = x.reshape(x.shape[0], -1, x.shape[-1])
            return self.mlp1(x).numpy()


def make_eagle2_5(out_dir: str | os.PathLike, seed: int = 0, tied: bool = False, select_layer: int = -1,
                  **overrides) -> Path:
    """An Eagle 2.5 checkpoint saved as NVlabs saves it (config.json with vision_config /
    text_config / select_layer / downsample_ratio, NVlabs' tensor names) from :class:`EagleParts`:
    a 3-layer SigLIP (width 32) at 448 px / patch 14, the qwen2 text model above, the Qwen2.5
    tokenizer with <img>, </img>, <IMG_CONTEXT>."""
    import torch
    from safetensors.torch import save_file

    text = _text_kwargs(tied, **overrides)
    text.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2",
                rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    config = dict(architectures=["Eagle2_5_VLForConditionalGeneration"], model_type="eagle_2_5_vl",
                  vision_config=dict(EAGLE_VISION), text_config=text, select_layer=select_layer,
                  downsample_ratio=0.5, force_image_size=448, mlp_connector_layers=2, use_thumbnail=True,
                  image_token_index=EAGLE_IMAGE_TOKEN)
    torch.manual_seed(seed)
    parts = EagleParts(config)
    for m in parts.modules().values():
        _randomize_(m, seed)
    with torch.no_grad():   # the vision tower's default init is tiny: give it weights that matter
        for name, p in parts.vision_model.named_parameters():
            if p.ndim > 1:
                p.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(seed + len(name)))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in parts.state_dict().items()}, str(out_dir / "model.safetensors"))
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    save_tokenizer(out_dir, "qwen2", extra_tokens=EAGLE_EXTRA_TOKENS)
    return out_dir


def load_eagle2_5(hf_dir: str | os.PathLike) -> EagleParts:
    """:class:`EagleParts` with the weights of a saved checkpoint (strict: every NVlabs name)."""
    from safetensors.torch import load_file

    hf_dir = Path(hf_dir)
    parts = EagleParts(json.loads((hf_dir / "config.json").read_text()))
    state = load_file(str(hf_dir / "model.safetensors"))
    for prefix, m in parts.modules().items():
        sub = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
        if prefix == "vision_model" and not any(k.startswith("vision_model.") for k in m.state_dict()):
            sub = {k[len("vision_model."):]: v for k, v in sub.items()}
        m.load_state_dict(sub, strict=True)
    return parts


BUILDERS = {"qwen2": make_qwen2, "qwen3": make_qwen3, "qwen3vl": make_qwen3vl, "gemma3": make_gemma3,
            "gemma3vl": make_gemma3vl,
            "eagle2_5": make_eagle2_5}


def make(arch: str, out_dir: str | os.PathLike, seed: int = 0, tied: bool | None = None, **overrides) -> Path:
    """``make_<arch>(out_dir, seed, tied, **overrides)`` with the family's default ``tied`` when None."""
    kw = {} if tied is None else {"tied": tied}
    return BUILDERS[arch](out_dir, seed=seed, **kw, **overrides)
