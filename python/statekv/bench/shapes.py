"""LLM shapes of the models statekv benchmarks, as their published config.json files give them.

Only the text decoder matters here (vision towers are not part of these shapes). Every number
is the one llama.cpp's ``convert_hf_to_gguf.py`` would read from the model's ``config.json``
(``llm_config`` for InternVL3, ``text_config`` for Qwen3-VL). ``source`` says how each shape
was checked.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

__all__ = ["Shape", "SHAPES", "get_shape", "shape_from_dict", "format_table"]

# Token ids shared by the Qwen2 / Qwen2.5 / Qwen3 vocabulary (and so InternVL3 and Qwen3-VL).
ENDOFTEXT_ID = 151643  # <|endoftext|>: bos and pad in llama.cpp's files
IM_END_ID = 151645  # <|im_end|>: eos of every chat / instruct model here
GEMMA3_END_OF_TURN_ID = 151646 + 1  # <end_of_turn> in the Gemma 3 shapes' stand-in vocabulary

TEMPLATE_QWEN25 = "Qwen-Qwen2.5-7B-Instruct.jinja"
TEMPLATE_QWEN3 = "Qwen-Qwen3-0.6B.jinja"
TEMPLATE_GEMMA3 = "gemma3-statekv.jinja"


# What each llama.cpp text architecture's tensors have (a data table): q/k/v biases, q/k norms,
# M-RoPE sections + DeepStack (mrope), norms after attention and FFN (post_norms: Gemma 3), and
# the defaults of a custom shape of that architecture.
ARCH_FEATURES: dict[str, dict[str, Any]] = {
    "qwen2": dict(qkv_bias=True, qk_norm=False, mrope=False, defaults={}),
    # Gemma 3 shapes carry a stand-in vocabulary (the Qwen2 one with Gemma's special tokens added:
    # the benchmarks feed random ids) and statekv's Gemma 3 chat template.
    "gemma3": dict(qkv_bias=False, qk_norm=True, mrope=False, post_norms=True,
                   defaults=dict(chat_template=TEMPLATE_GEMMA3, added_tokens="gemma3", explicit_head_dim=True)),
    "qwen3": dict(qkv_bias=False, qk_norm=True, mrope=False,
                  defaults=dict(chat_template=TEMPLATE_QWEN3, added_tokens="qwen3")),
    "qwen3vl": dict(qkv_bias=False, qk_norm=True, mrope=True,
                    defaults=dict(chat_template=TEMPLATE_QWEN3, added_tokens="qwen3")),
}


@dataclasses.dataclass(frozen=True)
class Shape:
    """The LLM hyper-parameters that fix a model's tensors and its GGUF metadata."""

    name: str
    arch: str  # llama.cpp architecture string: qwen2, qwen3, qwen3vl
    hidden: int  # embedding_length
    layers: int  # block_count
    heads: int  # attention.head_count
    kv_heads: int  # attention.head_count_kv
    head_dim: int
    ffn: int  # feed_forward_length
    vocab: int
    tied: bool  # tie_word_embeddings: no output.weight when True
    rope_theta: float
    context_length: int
    rms_eps: float = 1e-6
    # qwen3vl only: M-RoPE sections in rotary pairs, padded to 4 as llama.cpp writes them
    mrope_sections: tuple[int, ...] | None = None
    n_deepstack: int | None = None
    # config.json has an explicit head_dim (Qwen3, Qwen3-VL): the converter then writes
    # attention.key_length / attention.value_length.
    explicit_head_dim: bool = False
    # which added (special) tokens the model's tokenizer has: qwen2.5, qwen3, internvl3 or gemma3
    added_tokens: str = "qwen2.5"
    # gemma3 only: the local layers' window (every 6th layer global) and the global layers'
    # linear rope scaling factor (llama.cpp writes rope.scaling.type = linear)
    sliding_window: int | None = None
    rope_linear_factor: float | None = None
    chat_template: str = TEMPLATE_QWEN25
    eos_id: int = IM_END_ID
    source: str = ""

    # derived -------------------------------------------------------------------------------
    @property
    def qkv_bias(self) -> bool:
        return ARCH_FEATURES[self.arch]["qkv_bias"]

    @property
    def qk_norm(self) -> bool:
        return ARCH_FEATURES[self.arch]["qk_norm"]

    @property
    def post_norms(self) -> bool:
        return ARCH_FEATURES[self.arch].get("post_norms", False)

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def tensor_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """(llama.cpp tensor name, numpy shape) in the order llama.cpp's converter writes them.

        Names come from gguf-py's TENSOR_NAMES. numpy shape is (rows, cols) = (ne1, ne0): a
        weight maps ``cols`` inputs to ``rows`` outputs.
        """
        from gguf.constants import MODEL_ARCH_NAMES, MODEL_TENSOR as T, MODEL_TENSORS, TENSOR_NAMES

        arch = next(a for a, n in MODEL_ARCH_NAMES.items() if n == self.arch)
        allowed = set(MODEL_TENSORS[arch])
        out: list[tuple[str, tuple[int, ...]]] = []

        def add(t: T, suffix: str, shape: tuple[int, ...], bid: int | None = None) -> None:
            if t not in allowed:
                raise ValueError(f"{TENSOR_NAMES[t]} is not a tensor of llama.cpp arch {self.arch}")
            name = TENSOR_NAMES[t].format(bid=bid) if bid is not None else TENSOR_NAMES[t]
            out.append((f"{name}.{suffix}", shape))

        add(T.TOKEN_EMBD, "weight", (self.vocab, self.hidden))
        for i in range(self.layers):
            add(T.ATTN_NORM, "weight", (self.hidden,), i)
            add(T.ATTN_Q, "weight", (self.q_dim, self.hidden), i)
            if self.qkv_bias:
                add(T.ATTN_Q, "bias", (self.q_dim,), i)
            add(T.ATTN_K, "weight", (self.kv_dim, self.hidden), i)
            if self.qkv_bias:
                add(T.ATTN_K, "bias", (self.kv_dim,), i)
            add(T.ATTN_V, "weight", (self.kv_dim, self.hidden), i)
            if self.qkv_bias:
                add(T.ATTN_V, "bias", (self.kv_dim,), i)
            if self.qk_norm:
                add(T.ATTN_Q_NORM, "weight", (self.head_dim,), i)
                add(T.ATTN_K_NORM, "weight", (self.head_dim,), i)
            add(T.ATTN_OUT, "weight", (self.hidden, self.q_dim), i)
            if self.post_norms:
                add(T.ATTN_POST_NORM, "weight", (self.hidden,), i)
            # the same "blk.N.ffn_norm": gguf-py calls it FFN_PRE_NORM for archs with post norms
            add(T.FFN_PRE_NORM if self.post_norms else T.FFN_NORM, "weight", (self.hidden,), i)
            add(T.FFN_GATE, "weight", (self.ffn, self.hidden), i)
            add(T.FFN_UP, "weight", (self.ffn, self.hidden), i)
            add(T.FFN_DOWN, "weight", (self.hidden, self.ffn), i)
            if self.post_norms:
                add(T.FFN_POST_NORM, "weight", (self.hidden,), i)
        add(T.OUTPUT_NORM, "weight", (self.hidden,))
        if not self.tied:
            add(T.OUTPUT, "weight", (self.vocab, self.hidden))
        return out

    def n_params(self) -> int:
        n = 0
        for _, shp in self.tensor_shapes():
            k = 1
            for d in shp:
                k *= d
            n += k
        return n

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name for f in dataclasses.fields(Shape)}


def shape_from_dict(d: Mapping[str, Any]) -> Shape:
    """Build a Shape from a dict (e.g. a tiny custom shape for tests). Unknown keys are errors."""
    unknown = set(d) - _FIELDS
    if unknown:
        raise ValueError(f"unknown shape keys: {sorted(unknown)} (known: {sorted(_FIELDS)})")
    d = dict(d)
    d.setdefault("name", "custom")
    if d.get("mrope_sections") is not None:
        d["mrope_sections"] = tuple(int(x) for x in d["mrope_sections"])
    arch = d.get("arch")
    if arch not in ARCH_FEATURES:
        raise ValueError(f"shape {d['name']!r}: arch must be {', '.join(list(ARCH_FEATURES)[:-1])} or "
                         f"{list(ARCH_FEATURES)[-1]}, got {arch!r}")
    for key, value in ARCH_FEATURES[arch]["defaults"].items():
        d.setdefault(key, value)
    shp = Shape(**d)
    _check(shp)
    return shp


def _check(s: Shape) -> None:
    if s.heads % s.kv_heads:
        raise ValueError(f"shape {s.name}: heads {s.heads} not a multiple of kv_heads {s.kv_heads}")
    if s.arch not in ARCH_FEATURES:
        raise ValueError(f"shape {s.name}: unknown arch {s.arch!r} (known: {', '.join(ARCH_FEATURES)})")
    if ARCH_FEATURES[s.arch]["mrope"]:
        if s.mrope_sections is None or len(s.mrope_sections) != 4 or s.n_deepstack is None:
            raise ValueError(f"shape {s.name}: {s.arch} needs 4 mrope_sections and n_deepstack")
        if sum(s.mrope_sections) != s.head_dim // 2:
            raise ValueError(
                f"shape {s.name}: mrope_sections {s.mrope_sections} must sum to head_dim/2 = {s.head_dim // 2}"
            )
    elif s.mrope_sections is not None or s.n_deepstack is not None:
        raise ValueError(f"shape {s.name}: mrope_sections / n_deepstack are for "
                         f"{', '.join(a for a, f in ARCH_FEATURES.items() if f['mrope'])} only")
    if s.arch == "gemma3":
        if s.sliding_window is None or not 1 <= s.sliding_window <= s.context_length:
            raise ValueError(f"shape {s.name}: gemma3 needs a sliding_window of 1 to context_length")
    elif s.sliding_window is not None or s.rope_linear_factor is not None:
        raise ValueError(f"shape {s.name}: sliding_window / rope_linear_factor are for gemma3 only")


def _qwen25(name, hidden, layers, heads, kv_heads, ffn, vocab, tied, source, added="qwen2.5"):
    return Shape(
        name=name, arch="qwen2", hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
        head_dim=hidden // heads, ffn=ffn, vocab=vocab, tied=tied, rope_theta=1e6,
        context_length=32768, rms_eps=1e-6, added_tokens=added, chat_template=TEMPLATE_QWEN25,
        source=source,
    )


def _qwen3(name, hidden, layers, heads, kv_heads, ffn, tied, source):
    return Shape(
        name=name, arch="qwen3", hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
        head_dim=128, ffn=ffn, vocab=151936, tied=tied, rope_theta=1e6, context_length=40960,
        rms_eps=1e-6, explicit_head_dim=True, added_tokens="qwen3", chat_template=TEMPLATE_QWEN3,
        source=source,
    )


def _qwen3vl(name, hidden, layers, heads, kv_heads, ffn, tied, source):
    # Qwen3-VL text_config: rope_scaling.mrope_section [24, 20, 20] (interleaved), rope_theta 5e6,
    # max_position_embeddings 262144; vision_config.deepstack_visual_indexes has 3 entries.
    return Shape(
        name=name, arch="qwen3vl", hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
        head_dim=128, ffn=ffn, vocab=151936, tied=tied, rope_theta=5e6, context_length=262144,
        rms_eps=1e-6, mrope_sections=(24, 20, 20, 0), n_deepstack=3, explicit_head_dim=True,
        added_tokens="qwen3", chat_template=TEMPLATE_QWEN3, source=source,
    )


def _gemma3(name, hidden, layers, heads, kv_heads, ffn, source):
    # Gemma 3 4B/12B text_config: head_dim 256, vocab 262208, tied, rope_theta 1e6 (global layers,
    # linear scaling 8), sliding_window 1024, max_position_embeddings 131072.
    return Shape(
        name=name, arch="gemma3", hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, head_dim=256,
        ffn=ffn, vocab=262208, tied=True, rope_theta=1e6, context_length=131072, rms_eps=1e-6,
        explicit_head_dim=True, added_tokens="gemma3", chat_template=TEMPLATE_GEMMA3, eos_id=GEMMA3_END_OF_TURN_ID,
        sliding_window=1024, rope_linear_factor=8.0, source=source,
    )


_ALL = [
    _qwen25("qwen2.5-0.5b", 896, 24, 14, 2, 4864, 151936, True,
            "Qwen2.5-0.5B(-Instruct) config.json: checked (896/24/14/2/4864, vocab 151936, tied)"),
    _qwen25("qwen2.5-1.5b", 1536, 28, 12, 2, 8960, 151936, True,
            "Qwen2.5-1.5B-Instruct config.json: checked (1536/28/12/2/8960, vocab 151936, tied)"),
    _qwen25("qwen2.5-7b", 3584, 28, 28, 4, 18944, 152064, False,
            "Qwen2.5-7B(-Instruct) config.json: checked dims and vocab 152064; untied from knowledge"),
    _qwen3("qwen3-1.7b", 2048, 28, 16, 8, 6144, True,
           "Qwen3-1.7B config.json: checked (2048/28/16/8/6144, tied, ctx 40960)"),
    _qwen3("qwen3-4b", 2560, 36, 32, 8, 9728, True,
           "Qwen3-4B config.json: checked (2560/36/32/8/9728, tied, ctx 40960)"),
    _qwen3("qwen3-8b", 4096, 36, 32, 8, 12288, False,
           "Qwen3-8B config.json: checked (4096/36/32/8/12288, untied, ctx 40960)"),
    # InternVL3 LLMs: Qwen2.5 instruct decoders with the vocabulary resized to 151674 (their
    # added <img> ... </box> tokens) and untied lm_head (llm_config has no tie_word_embeddings;
    # the 1B dump shows lm_head 896 -> 151674; the 0.94B / 2.09B / 7.94B totals need it untied).
    # llm_config also has rope_scaling {type: dynamic, factor: 2.0} (1B), which llama.cpp's
    # converter does not write.
    _qwen25("internvl3-1b", 896, 24, 14, 2, 4864, 151674, False,
            "InternVL3-1B llm_config: checked (Qwen2.5-0.5B dims, vocab 151674, untied lm_head)",
            added="internvl3"),
    _qwen25("internvl3-2b", 1536, 28, 12, 2, 8960, 151674, False,
            "InternVL3-2B llm_config: dims and vocab 151674 checked; untied from parameter count",
            added="internvl3"),
    _qwen25("internvl3-8b", 3584, 28, 28, 4, 18944, 151674, False,
            "InternVL3-8B(-hf) text config: vocab 151674 checked, Qwen2.5-7B dims; untied",
            added="internvl3"),
    _qwen3vl("qwen3-vl-2b", 2048, 28, 16, 8, 6144, True,
             "Qwen3-VL-2B-Instruct config.json text_config: checked; deepstack [5, 11, 17]"),
    _qwen3vl("qwen3-vl-4b", 2560, 36, 32, 8, 9728, True,
             "Qwen3-VL-4B-Instruct config.json text_config: checked; deepstack [5, 11, 17]"),
    _qwen3vl("qwen3-vl-8b", 4096, 36, 32, 8, 12288, False,
             "Qwen3-VL-8B-Instruct config.json text_config: checked; deepstack [8, 16, 24]"),
    # Eagle2.5-8B's LLM: Qwen2.5-7B-Instruct (NVlabs' code builds Qwen2ForCausalLM); its released
    # config.json could not be read here, so the vocabulary is Qwen2.5-7B's.
    _qwen25("eagle2.5-8b", 3584, 28, 28, 4, 18944, 152064, False,
            "Qwen2.5-7B-Instruct dims (Eagle2.5-8B's LLM per NVlabs' code); vocab as Qwen2.5-7B"),
    _gemma3("gemma3-4b", 2560, 34, 8, 4, 10240,
            "gemma-3-4b-it config.json text_config: 2560/34/8/4/10240, head_dim 256, window 1024, linear 8"),
    _gemma3("gemma3-12b", 3840, 48, 16, 8, 15360,
            "gemma-3-12b-it config.json text_config: 3840/48/16/8/15360, head_dim 256, window 1024, linear 8"),
]

for _s in _ALL:
    _check(_s)

SHAPES: dict[str, Shape] = {s.name: s for s in _ALL}


def get_shape(shape: str | Shape | Mapping[str, Any]) -> Shape:
    """A registered shape by name, a Shape, or a dict of Shape fields (custom / test shapes)."""
    if isinstance(shape, Shape):
        return shape
    if isinstance(shape, Mapping):
        return shape_from_dict(shape)
    key = str(shape).lower()
    if key not in SHAPES:
        raise KeyError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")
    return SHAPES[key]


def format_table(shapes: list[Shape] | None = None) -> str:
    shapes = list(SHAPES.values()) if shapes is None else shapes
    hdr = ("shape", "arch", "hidden", "layers", "heads", "kv", "hd", "ffn", "vocab", "tied",
           "theta", "ctx", "eps", "mrope", "deepstack", "params")
    rows = [hdr]
    for s in shapes:
        rows.append((
            s.name, s.arch, str(s.hidden), str(s.layers), str(s.heads), str(s.kv_heads),
            str(s.head_dim), str(s.ffn), str(s.vocab), "yes" if s.tied else "no",
            f"{s.rope_theta:g}", str(s.context_length), f"{s.rms_eps:g}",
            ",".join(map(str, s.mrope_sections)) if s.mrope_sections else "-",
            str(s.n_deepstack) if s.n_deepstack is not None else "-",
            f"{s.n_params() / 1e9:.2f}B",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(hdr))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
