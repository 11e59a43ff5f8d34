"""Chat templates: statekv.text.ChatTemplate against transformers' apply_chat_template.

The real templates of ``python/statekv/data/templates`` (Qwen2.5-7B-Instruct, Qwen3-0.6B) and a
template exercising the Jinja environment are rendered by both on the same conversations and
must give exactly the same text; the tokenizer rebuilt from a GGUF must encode the rendered
prompt to the same ids as the transformers tokenizer.
"""
from __future__ import annotations

import datetime
import sys

import numpy as np
import pytest

pytest.importorskip("jinja2")
pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

import jinja2.exceptions  # noqa: E402

import tiny  # noqa: E402
from statekv.text.chat_template import ChatTemplate  # noqa: E402
from statekv.text.tokenizer import tokenizer_from_gguf  # noqa: E402

# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_qwen25(templates_dir, qwen2_vocab_gguf):
    """transformers tokenizer with the Qwen2 vocabulary and the Qwen2.5-7B-Instruct template."""
    return tiny.make_tokenizer("qwen2")


@pytest.fixture(scope="module")
def hf_qwen3(templates_dir, qwen2_vocab_gguf):
    """transformers tokenizer with the Qwen3 added tokens (<think>, ...) and the Qwen3 template."""
    return tiny.make_tokenizer("qwen3")


def mirror(hf, template=None) -> ChatTemplate:
    """A ChatTemplate with the template and the special-token variables of ``hf``."""
    m = dict(hf.special_tokens_map)
    bos, eos = m.pop("bos_token", None), m.pop("eos_token", None)
    return ChatTemplate(template or hf.chat_template, bos_token=bos, eos_token=eos, extra_context=m)


def write_gguf(path, tokens, types, merges, *, template=None, named=None, eos=None, pad=None, bos=None):
    import gguf

    w = gguf.GGUFWriter(str(path), "qwen3")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(list(tokens))
    w.add_token_types(list(types))
    w.add_token_merges(list(merges))
    if bos is not None:
        w.add_bos_token_id(bos)
    if eos is not None:
        w.add_eos_token_id(eos)
    if pad is not None:
        w.add_pad_token_id(pad)
    if template is not None:
        w.add_chat_template(template)
    for name, text in (named or {}).items():
        w.add_string(f"tokenizer.chat_template.{name}", text)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def qwen3_gguf(tmp_path_factory, hf_qwen3):
    """A GGUF holding the Qwen3 tokenizer (vocabulary + added tokens) and chat template, with the
    special ids llama.cpp's converter writes for Qwen3 (eos <|im_end|>, pad and bos <|endoftext|>)."""
    pytest.importorskip("gguf")
    tokens, types, merges = tiny._base_vocab()
    tokens, types = list(tokens), list(types)
    for i, content, special in tiny.QWEN3_EXTRA_TOKENS:
        assert i == len(tokens)
        tokens.append(content)
        types.append(3 if special else 4)
    path = tmp_path_factory.mktemp("gguf") / "qwen3-tokenizer.gguf"
    return write_gguf(path, tokens, types, merges, template=hf_qwen3.chat_template,
                      eos=tiny.EOS_ID, pad=tiny.PAD_ID, bos=tiny.BOS_ID)


# --------------------------------------------------------------------------------------------
# Conversations
# --------------------------------------------------------------------------------------------

SYSTEM = {"role": "system", "content": "You are a careful video analyst. Answer briefly."}
U1 = {"role": "user", "content": "What happens in the first minute of the video?"}
A1 = {"role": "assistant", "content": "A red square moves from left to right across a blue background."}
U2 = {"role": "user", "content": "And after that?\nList the colours."}
UNICODE = {"role": "user", "content": "Ünïcødé ✓ 日本語 <b>bold</b> & \"quotes\" 'single' \\ back\tslash  "}
EMPTY = {"role": "assistant", "content": ""}

CONVERSATIONS = {
    "system_multi_turn": [SYSTEM, U1, A1, U2],
    "no_system": [U1],
    "no_system_multi_turn": [U1, A1, U2],
    "system_one_turn": [SYSTEM, U1],
    "unicode_html": [SYSTEM, UNICODE, A1, UNICODE],
    "ends_with_assistant": [SYSTEM, U1, A1],
    "empty_assistant": [U1, EMPTY, U2],
    "none_values_dropped": [dict(U1, tool_calls=None, name=None), dict(A1, tool_calls=None), U2],
    "second_system_message": [SYSTEM, U1, A1, {"role": "system", "content": "Now answer in French."}, U2],
}

QWEN3_ONLY = {
    # earlier reasoning is dropped from history, the last assistant turn after the last query keeps it
    "inline_think_history": [U1, {"role": "assistant", "content": "<think>\nlooking at frames\n</think>\n\nA square."},
                             U2],
    "inline_think_last": [U1, {"role": "assistant", "content": "<think>\nframe 3 is red\n</think>\n\nRed."}],
    "reasoning_content": [U1, {"role": "assistant", "content": "Red.", "reasoning_content": "frame 3 is red"}],
    "reasoning_alias": [U1, {"role": "assistant", "content": "Red.", "reasoning": "counted the frames"}],
    "thinking_alias": [SYSTEM, U1, {"role": "assistant", "content": "Blue.", "thinking": "checked twice"}],
}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "find_scene",
        "description": "Find the time (s) at which a described scene appears. Accepts ünïcode & <tags>.",
        "parameters": {
            "type": "object",
            "properties": {"description": {"type": "string"}, "max_results": {"type": "integer"}},
            "required": ["description"],
        },
    },
}

TOOL_CONVERSATION = [
    SYSTEM,
    U1,
    {"role": "assistant", "content": "",
     "tool_calls": [{"type": "function", "function": {"name": "find_scene",
                                                      "arguments": {"description": "red square", "max_results": 2}}}]},
    {"role": "tool", "content": "[12.5, 48.0]"},
    {"role": "tool", "content": "[\"é\"]"},
    {"role": "assistant", "content": "At 12.5 s and 48 s."},
    U2,
]


def both(tmpl, hf, messages, **kwargs):
    ours = tmpl.render(messages, **kwargs)
    add = kwargs.pop("add_generation_prompt", True)
    theirs = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add, **kwargs)
    return ours, theirs


# --------------------------------------------------------------------------------------------
# Real templates vs transformers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["qwen25", "qwen3"])
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_real_templates_match_transformers(family, name, hf_qwen25, hf_qwen3):
    hf = hf_qwen25 if family == "qwen25" else hf_qwen3
    tmpl = mirror(hf)
    messages = CONVERSATIONS[name]
    for add in (True, False):
        ours, theirs = both(tmpl, hf, messages, add_generation_prompt=add)
        assert ours == theirs
    # the default adds the generation prompt
    assert tmpl.render(messages) == hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_real_templates_expected_text(hf_qwen25, hf_qwen3):
    """A fixed point, independent of transformers: the ChatML layout of both templates."""
    q25, q3 = mirror(hf_qwen25), mirror(hf_qwen3)
    assert q25.render([U1]) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat happens in the first minute of the video?<|im_end|>\n<|im_start|>assistant\n")
    assert q3.render([SYSTEM, U1], enable_thinking=False) == (
        "<|im_start|>system\nYou are a careful video analyst. Answer briefly.<|im_end|>\n"
        "<|im_start|>user\nWhat happens in the first minute of the video?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n")


@pytest.mark.parametrize("name", sorted(QWEN3_ONLY))
def test_qwen3_reasoning_matches_transformers(name, hf_qwen3):
    tmpl = mirror(hf_qwen3)
    for add in (True, False):
        for kw in ({}, {"enable_thinking": True}, {"enable_thinking": False}):
            ours, theirs = both(tmpl, hf_qwen3, QWEN3_ONLY[name], add_generation_prompt=add, **kw)
            assert ours == theirs, (add, kw)


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_qwen3_enable_thinking(name, hf_qwen3):
    tmpl = mirror(hf_qwen3)
    messages = CONVERSATIONS[name]
    for value in (True, False):
        ours, theirs = both(tmpl, hf_qwen3, messages, add_generation_prompt=True, enable_thinking=value)
        assert ours == theirs
    off = tmpl.render(messages, enable_thinking=False)
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert tmpl.render(messages, enable_thinking=True).endswith("<|im_start|>assistant\n")
    # a default given once, at construction
    preset = ChatTemplate(hf_qwen3.chat_template, eos_token="<|im_end|>", extra_context={"enable_thinking": False})
    assert preset.render(messages) == off


@pytest.mark.parametrize("family", ["qwen25", "qwen3"])
def test_tools_match_transformers(family, hf_qwen25, hf_qwen3):
    hf = hf_qwen25 if family == "qwen25" else hf_qwen3
    tmpl = mirror(hf)
    for messages in (TOOL_CONVERSATION, TOOL_CONVERSATION[1:], [U1]):
        for add in (True, False):
            ours, theirs = both(tmpl, hf, messages, add_generation_prompt=add, tools=[WEATHER_TOOL])
            assert ours == theirs
    assert "ünïcode & <tags>" in tmpl.render([U1], tools=[WEATHER_TOOL])  # tojson: no escaping


@pytest.mark.parametrize("family", ["qwen25", "qwen3"])
def test_continue_final_message_matches_transformers(family, hf_qwen25, hf_qwen3):
    hf = hf_qwen25 if family == "qwen25" else hf_qwen3
    tmpl = mirror(hf)
    messages = [SYSTEM, U1, {"role": "assistant", "content": "The square is"}]
    ours = tmpl.render(messages, add_generation_prompt=False, continue_final_message=True)
    theirs = hf.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    assert ours == theirs
    assert ours.endswith("The square is")
    with pytest.raises(ValueError, match="not compatible"):
        tmpl.render(messages, add_generation_prompt=True, continue_final_message=True)


# --------------------------------------------------------------------------------------------
# The Jinja environment
# --------------------------------------------------------------------------------------------

ENV_TEMPLATE = """\
{%- set ns = namespace(n=0, seen=[]) -%}
{%- for m in messages -%}
    {%- if m.role == 'skip' %}{% continue %}{% endif -%}
    {%- if loop.index > 4 %}{% break %}{% endif -%}
    {%- set ns.n = ns.n + 1 -%}
    [{{ loop.index0 }}/{{ loop.length }} {{ m.role }}|{{ m.content | tojson }}|{{ m | tojson(indent=2, sort_keys=true) }}]
    {% if m.content is string %}s{% else %}{{ m.content | length }} blocks{% endif %}
{% endfor -%}
n={{ ns.n }} {{ dict(a=1, b=[1, 2], c='é<>') | tojson }} {{ dict.fromkeys(['x', 'y'], 0) | tojson(separators=(',', ':')) }}
{% generation %}GEN {{ 1 + 1 }}{% endgeneration %}
bos:{{ bos_token is defined }}/{{ bos_token }} eos:{{ eos_token }} pad:{{ pad_token }} tools:{{ tools }} docs:{{ documents | tojson }}
year:{{ strftime_now('%Y') }} var:{{ custom_var | tojson }} flag:{{ flag }}
{%- if add_generation_prompt %}<gen>{% endif %}
"""


def test_environment_matches_transformers(hf_qwen25):
    tmpl = mirror(hf_qwen25, ENV_TEMPLATE)
    image = np.zeros((2, 2, 3), np.uint8)
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "skip", "content": "never shown"},
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": "A <b>thing</b> & \"more\" 日本", "tool_calls": None},
        {"role": "user", "content": "x", "score": np.float32(0.5), "n": np.int64(3)},
        {"role": "user", "content": "beyond the break"},
    ]
    docs = [{"title": "Notes", "text": "frame 1 is blue"}]
    for add in (True, False):
        kwargs = dict(custom_var={"k": [1, "ü", None, True]}, flag=np.bool_(False), documents=docs)
        ours = tmpl.render(messages, add_generation_prompt=add, **kwargs)
        theirs = hf_qwen25.apply_chat_template(messages, tokenize=False, add_generation_prompt=add,
                                               chat_template=ENV_TEMPLATE, **kwargs)
        if ours != theirs and str(datetime.date.today().year) not in ours:  # pragma: no cover - new year at midnight
            pytest.skip("the year changed while rendering")
        assert ours == theirs
    assert '"<ndarray>"' in ours and "flag:False" in ours and "GEN 2" in ours and "bos:False/" in ours


@pytest.mark.parametrize("source,error", [
    ("{{ raise_exception('no video given') }}", jinja2.exceptions.TemplateError),
    ("{% set ns = namespace() %}{% set ns._x = 1 %}", jinja2.exceptions.SecurityError),
    ("{{ namespace(_hidden=1) }}", jinja2.exceptions.SecurityError),
    ("{% set x = [] %}{{ x.append(1) }}", jinja2.exceptions.SecurityError),
    ("{{ messages.__class__.__mro__[1].__subclasses__() }}", jinja2.exceptions.SecurityError),
])
def test_environment_errors_match_transformers(source, error, hf_qwen25):
    tmpl = mirror(hf_qwen25, source)
    with pytest.raises(error) as ours:
        tmpl.render([U1])
    with pytest.raises(error) as theirs:
        hf_qwen25.apply_chat_template([U1], tokenize=False, chat_template=source)
    assert type(ours.value) is type(theirs.value)
    if "raise_exception" in source:  # the template's own message, unchanged
        assert str(ours.value) == str(theirs.value) == "no video given"


def test_render_argument_errors(hf_qwen25):
    tmpl = mirror(hf_qwen25)
    with pytest.raises(ValueError, match="empty conversation"):
        tmpl.render([])
    with pytest.raises(TypeError):
        tmpl.render(["hello"])
    with pytest.raises(TypeError):
        tmpl.render([U1], tools=[lambda x: x])
    with pytest.raises(ValueError, match="syntax error"):
        ChatTemplate("{% for m in messages %}")
    with pytest.raises(ValueError):
        ChatTemplate("")


# --------------------------------------------------------------------------------------------
# From GGUF, and tokenization
# --------------------------------------------------------------------------------------------


def test_from_gguf_vocab_file(qwen2_vocab_gguf):
    """The shipped Qwen2 vocabulary GGUF carries a ChatML template and special ids."""
    from transformers import PreTrainedTokenizerFast

    tmpl = ChatTemplate.from_gguf(qwen2_vocab_gguf)
    assert tmpl.bos_token == "<|endoftext|>" and tmpl.eos_token == "<|endoftext|>"
    assert tmpl.special_tokens == {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                                   "pad_token": "<|endoftext|>"}
    tok = tokenizer_from_gguf(qwen2_vocab_gguf)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                 pad_token="<|endoftext|>", clean_up_tokenization_spaces=False)
    hf.chat_template = tmpl.source
    for name, messages in CONVERSATIONS.items():
        for add in (True, False):
            assert tmpl.render(messages, add_generation_prompt=add) == hf.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add), name


def test_from_gguf_qwen3(qwen3_gguf, hf_qwen3):
    tmpl = ChatTemplate.from_gguf(qwen3_gguf)
    assert tmpl.source == hf_qwen3.chat_template
    assert (tmpl.bos_token, tmpl.eos_token) == ("<|endoftext|>", "<|im_end|>")
    assert tmpl.extra_context == {"pad_token": "<|endoftext|>"}
    for messages in list(CONVERSATIONS.values()) + list(QWEN3_ONLY.values()):
        for kw in ({}, {"enable_thinking": False}):
            assert tmpl.render(messages, **kw) == hf_qwen3.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, **kw)


def test_gguf_tokenizer_encodes_prompts_like_transformers(qwen2_vocab_gguf, qwen3_gguf, hf_qwen25, hf_qwen3):
    """The rendered prompt, encoded by the tokenizer rebuilt from the GGUF, gives the ids of the
    transformers tokenizer's apply_chat_template (control tokens matched whole)."""
    cases = [(qwen2_vocab_gguf, hf_qwen25, {}), (qwen3_gguf, hf_qwen3, {}),
             (qwen3_gguf, hf_qwen3, {"enable_thinking": False})]
    for gguf_path, hf, kw in cases:
        tok = tokenizer_from_gguf(gguf_path)
        tmpl = mirror(hf)
        convs = list(CONVERSATIONS.values()) + (list(QWEN3_ONLY.values()) if hf is hf_qwen3 else [])
        for messages in convs:
            prompt = tmpl.render(messages, **kw)
            want = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, **kw)["input_ids"]
            assert tok.encode(prompt, add_special_tokens=False).ids == want
            assert tok.decode(want, skip_special_tokens=False) == prompt


def test_gguf_tokenizer_known_ids(qwen3_gguf):
    """Ids of the released Qwen tokenizers: control and added tokens are single tokens."""
    tok = tokenizer_from_gguf(qwen3_gguf)
    prompt = "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert tok.encode(prompt).ids == [151644, 872, 198, 9707, 151645, 198, 151644, 77091, 198,
                                      151667, 271, 151668, 271]


def test_from_gguf_errors_and_named_templates(tmp_path):
    tokens = ["a", "b", "<|im_end|>"]
    plain = write_gguf(tmp_path / "no-template.gguf", tokens, [1, 1, 3], [], eos=2)
    with pytest.raises(ValueError, match=r"no-template\.gguf.*tokenizer\.chat_template"):
        ChatTemplate.from_gguf(plain)
    named = write_gguf(tmp_path / "named.gguf", tokens, [1, 1, 3], [], eos=2,
                       template="{{ messages[0].content }}{{ eos_token }}",
                       named={"tool_use": "T:{{ messages[0].content }}"})
    assert ChatTemplate.from_gguf(named).render([U1]) == U1["content"] + "<|im_end|>"
    assert ChatTemplate.from_gguf(named, name="tool_use").render([U1]) == "T:" + U1["content"]
    with pytest.raises(ValueError, match="named templates: tool_use"):
        ChatTemplate.from_gguf(named, name="rag")
    bad = write_gguf(tmp_path / "bad-id.gguf", tokens, [1, 1, 3], [], eos=7, template="x")
    with pytest.raises(ValueError, match=r"bad-id\.gguf.*eos_token_id"):
        ChatTemplate.from_gguf(bad)
    with pytest.raises(FileNotFoundError):
        ChatTemplate.from_gguf(tmp_path / "missing.gguf")


def test_chat_module_does_not_load_the_extension():
    """statekv.text (the chat template) and statekv.video import nothing compiled (beyond what the package does)."""
    import ast
    from pathlib import Path

    package = Path(tiny.REPO_ROOT) / "python" / "statekv"
    for mod in [p.relative_to(package).with_suffix("") for p in sorted((package / "text").glob("*.py"))
                + sorted((package / "video").glob("*.py"))]:
        src = (package / f"{mod}.py").read_text()
        names = set()
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.ImportFrom):
                names.add(node.module or "")
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        assert not any("_core" in n or "_native" in n for n in names), (mod, names)
    assert "statekv.text.chat_template" in sys.modules
