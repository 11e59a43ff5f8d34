"""Chat templates stored in GGUF files, rendered the way transformers' ``apply_chat_template`` does.

llama.cpp's converter copies a model's Jinja chat template into ``tokenizer.chat_template`` (and
named variants into ``tokenizer.chat_template.<name>``).  :class:`ChatTemplate` renders such a
template with the same Jinja environment transformers uses, so the prompt text is identical:

* a sandboxed, immutable environment with ``trim_blocks`` and ``lstrip_blocks`` on and the
  ``loopcontrols`` extension (``{% break %}``, ``{% continue %}``);
* the ``{% generation %}`` ... ``{% endgeneration %}`` block (rendered as its body);
* ``tojson`` as ``json.dumps`` (no HTML escaping, ``ensure_ascii=False``; ``indent``,
  ``separators`` and ``sort_keys`` accepted), the globals ``raise_exception(message)`` (raises
  ``jinja2.exceptions.TemplateError``), ``strftime_now(format)``, a restricted ``dict`` and a
  ``namespace`` that refuses underscore-prefixed names;
* the same inputs: message keys whose value is None are dropped; messages, tools, documents and
  extra variables are rebuilt from plain JSON types (other objects become ``"<TypeName>"``); a
  message's reasoning given as ``reasoning_content``, ``thinking`` or ``reasoning`` is exposed
  under ``thinking`` and ``reasoning_content``; the special tokens (``bos_token``,
  ``eos_token``, ...) are template variables; ``tools`` and ``documents`` are always defined
  (None when not given).

``ChatTemplate(...).render(messages)`` equals ``tokenizer.apply_chat_template(messages,
tokenize=False, add_generation_prompt=True)`` for a tokenizer with the same template and special
tokens.  Note the default ``add_generation_prompt=True`` here (transformers defaults to False):
statekv renders prompts in order to answer them.

Nothing here imports the compiled extension.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any, Sequence

__all__ = ["ChatTemplate", "SPECIAL_TOKEN_NAMES"]

# The named special tokens a transformers tokenizer passes to its chat template, with the GGUF
# keys holding their ids.
SPECIAL_TOKEN_NAMES = {
    "bos_token": "tokenizer.ggml.bos_token_id",
    "eos_token": "tokenizer.ggml.eos_token_id",
    "unk_token": "tokenizer.ggml.unknown_token_id",
    "sep_token": "tokenizer.ggml.seperator_token_id",  # sic: llama.cpp's key spelling
    "pad_token": "tokenizer.ggml.padding_token_id",
    "cls_token": "tokenizer.ggml.cls_token_id",
    "mask_token": "tokenizer.ggml.mask_token_id",
}

_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
_MIN_JINJA = (3, 1, 6)


# --------------------------------------------------------------------------------------------
# The Jinja environment
# --------------------------------------------------------------------------------------------


def _jinja_version_ok(version: str) -> bool:
    parts = []
    for p in version.split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    while len(parts) < 3:
        parts.append(0)
    return tuple(parts) >= _MIN_JINJA


@lru_cache(maxsize=1)
def _environment():
    try:
        import jinja2
    except ImportError as e:  # pragma: no cover - environment problem
        raise ImportError("statekv needs jinja2 to render chat templates: pip install 'jinja2>=3.1.6'") from e
    import jinja2.exceptions
    import jinja2.ext
    import jinja2.nodes
    import jinja2.sandbox
    import jinja2.utils

    if not _jinja_version_ok(jinja2.__version__):
        # Chat templates are untrusted code; older versions have known sandbox escapes.
        raise ImportError(f"statekv needs jinja2>=3.1.6 to render chat templates (found {jinja2.__version__})")

    class GenerationBlock(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}``: transformers uses it to find the assistant
        tokens; for rendering it is its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    class SafeDict:
        """``dict(...)`` and ``dict.fromkeys(...)`` without exposing the dict type itself."""

        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    def _check_attr(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot set underscore-prefixed namespace attributes (got {name!r})")

    class SafeNamespace(jinja2.utils.Namespace):
        def __init__(*args, **kwargs):  # noqa: N805 - same calling convention as jinja2's Namespace
            self, rest = args[0], args[1:]
            attrs = dict(*rest, **kwargs)
            for key in attrs:
                _check_attr(key)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            _check_attr(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = SafeDict()
    env.globals["namespace"] = SafeNamespace
    return env


@lru_cache(maxsize=32)
def _compile(template: str):
    import jinja2.exceptions

    try:
        return _environment().from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ValueError(f"chat template: syntax error at line {e.lineno}: {e.message}") from None


# --------------------------------------------------------------------------------------------
# Inputs as the template sees them
# --------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """``value`` rebuilt from plain JSON-like types; anything else becomes ``"<TypeName>"``.

    (Rich objects such as images or arrays carry methods the sandbox cannot vet; templates only
    test whether such keys exist.)"""
    t = type(value)
    if value is None or t in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    if np is not None and isinstance(value, np.generic):
        return _plain(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    dump = getattr(value, "model_dump", None)
    if callable(dump):  # pydantic
        return _plain(dump())
    return f"<{t.__name__}>"


def _with_reasoning_aliases(messages: list) -> list:
    out = []
    for m in messages:
        if isinstance(m, dict):
            reasoning = next((m[k] for k in _REASONING_KEYS if m.get(k) is not None), None)
            if reasoning is not None:
                m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        out.append(m)
    return out


# --------------------------------------------------------------------------------------------
# ChatTemplate
# --------------------------------------------------------------------------------------------


class ChatTemplate:
    """A Jinja chat template with the special tokens it may refer to.

    ``bos_token``/``eos_token``: the token strings exposed to the template as ``bos_token`` and
    ``eos_token`` (None: the variable is not defined, as for a transformers tokenizer without
    that token); ``extra_context``: more template variables (other special tokens such as
    ``pad_token``, or defaults such as ``enable_thinking``).  Raises ``ValueError`` if the
    template does not compile.
    """

    def __init__(self, template_str: str, bos_token: str | None = None, eos_token: str | None = None,
                 extra_context: Mapping[str, Any] | None = None):
        if not isinstance(template_str, str) or not template_str:
            raise ValueError("chat template must be a non-empty string")
        self.source = template_str
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.extra_context = dict(extra_context or {})
        self._template = _compile(template_str)

    # ---- construction from GGUF -----------------------------------------------------------

    @classmethod
    def from_gguf(cls, path: str | os.PathLike, name: str | None = None) -> "ChatTemplate":
        """The chat template of a GGUF file (``tokenizer.chat_template``, or
        ``tokenizer.chat_template.<name>``), with the special-token strings named by its
        ``tokenizer.ggml.*_token_id`` keys (bos, eos, unk, sep, pad, cls, mask), as llama.cpp
        passes them.  Raises ``ValueError`` naming the file and key if there is no template."""
        from ..gguf_io import read_gguf_kv

        path = os.fspath(path)
        kv = read_gguf_kv(path)
        key = "tokenizer.chat_template" + ("" if name is None else f".{name}")
        template = kv.get(key)
        if not template:
            names = sorted(k[len("tokenizer.chat_template."):] for k in kv
                           if k.startswith("tokenizer.chat_template."))
            extra = f" (named templates: {', '.join(names)})" if names else ""
            raise ValueError(f"{path}: no chat template (key '{key}' missing){extra}")
        tokens = kv.get("tokenizer.ggml.tokens") or []
        special: dict[str, str] = {}
        for tname, tkey in SPECIAL_TOKEN_NAMES.items():
            tid = kv.get(tkey)
            if tid is None:
                continue
            tid = int(tid)
            if not 0 <= tid < len(tokens):
                raise ValueError(f"{path}: '{tkey}' = {tid} is outside the vocabulary ({len(tokens)} tokens)")
            special[tname] = tokens[tid]
        bos = special.pop("bos_token", None)
        eos = special.pop("eos_token", None)
        tmpl = cls(template, bos_token=bos, eos_token=eos, extra_context=special)
        tmpl.path = path
        return tmpl

    # ---- rendering --------------------------------------------------------------------------

    @property
    def special_tokens(self) -> dict[str, str]:
        """The special-token variables given to the template."""
        out = {}
        if self.bos_token is not None:
            out["bos_token"] = self.bos_token
        if self.eos_token is not None:
            out["eos_token"] = self.eos_token
        for k in SPECIAL_TOKEN_NAMES:
            if k in self.extra_context and self.extra_context[k] is not None:
                out[k] = self.extra_context[k]
        return out

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, *,
               tools: Sequence[Mapping[str, Any]] | None = None,
               documents: Sequence[Mapping[str, Any]] | None = None,
               continue_final_message: bool | str = False, **kwargs: Any) -> str:
        """The prompt text for ``messages`` (a list of ``{"role": ..., "content": ...}`` dicts).

        ``add_generation_prompt``: end with the assistant header; ``tools``: JSON schemas of
        functions; ``documents``: dicts for retrieval templates; ``continue_final_message``:
        leave the last message open for the model to continue (True: its ``content``; a string:
        that field); ``**kwargs``: more template variables (e.g. ``enable_thinking=False``),
        overriding the special tokens and ``extra_context``.
        """
        if isinstance(messages, Mapping) or isinstance(messages, (str, bytes)):
            raise TypeError("messages must be a list of message dicts")
        messages = list(messages)
        if not messages:
            raise ValueError("cannot render an empty conversation: give at least one message")
        if continue_final_message and add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt are not compatible: "
                             "pass add_generation_prompt=False to continue the final message")
        if tools is not None:
            tools = list(tools)
            for t in tools:
                if not isinstance(t, Mapping):
                    raise TypeError(f"tools must be JSON schemas (dicts), got {type(t).__name__}")
        if documents is not None:
            documents = list(documents)
            for d in documents:
                if not isinstance(d, Mapping):
                    raise TypeError("documents must be a list of dicts with 'title' and 'text' keys")

        chat = []
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping):
                if dataclasses.is_dataclass(m) or callable(getattr(m, "model_dump", None)):
                    chat.append(m)
                    continue
                raise TypeError(f"message {i} must be a dict, got {type(m).__name__}")
            chat.append({k: v for k, v in m.items() if v is not None})
        chat = _plain(chat)
        for i, m in enumerate(chat):
            if not isinstance(m, dict):
                raise TypeError(f"message {i} must be a dict, got {m!r}")
        chat = _with_reasoning_aliases(chat)

        context = {**self.special_tokens, **self.extra_context, **kwargs}
        context = _plain(context)
        tools = _plain(tools)
        documents = _plain(documents)

        final_text = None
        if continue_final_message:
            final_text = self._tag_final_message(chat, continue_final_message)

        text = self._template.render(messages=chat, tools=tools, documents=documents,
                                     add_generation_prompt=bool(add_generation_prompt), **context)

        if final_text is not None:
            tag = _CONTINUE_TAG.strip()
            if final_text.strip() not in text or tag not in text:
                raise ValueError("continue_final_message: the final message does not appear in the rendered "
                                 "prompt (the template changes or drops it)")
            at = text.rindex(tag)
            if text[at:at + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
                text = text[:at]
            else:  # the template stripped the trailing space after the tag
                text = text[:at].rstrip()
        return text

    def _tag_final_message(self, chat: list, field: bool | str) -> str:
        field = field if isinstance(field, str) else "content"
        last = chat[-1]
        final = last.get(field)
        if final is None:
            raise ValueError(f"continue_final_message: the final message has no {field!r} to continue")
        fields = [field]
        if field in _REASONING_KEYS:
            fields = [k for k in _REASONING_KEYS if last.get(k) == final]
        if not any(f in self.source for f in fields):
            raise ValueError(f"continue_final_message: the chat template does not use the field {field!r}")
        if isinstance(final, (list, tuple)):
            for block in reversed(final):
                if isinstance(block, dict) and "text" in block:
                    text = block["text"]
                    block["text"] = text + _CONTINUE_TAG
                    return text
            raise ValueError("continue_final_message: no text block to continue in the final message")
        for f in fields:
            last[f] = last[f] + _CONTINUE_TAG
        return final

    def __repr__(self) -> str:
        where = getattr(self, "path", None)
        return f"ChatTemplate({len(self.source)} chars{', from ' + where if where else ''})"
