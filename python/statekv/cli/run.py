"""`statekv run`: a text prompt through a text-only model, prefilled at once or in steps.

The prompt (``-p TEXT`` or ``-f FILE``) is rendered with the model's chat template when the GGUF
has one (llama-cli's conversation mode, which it turns on by itself for such models; ``-no-cnv``
gives the raw prompt, ``--chat-template-file`` brings a template), tokenized once, and cut in
three: the template's head (BOS, turn start, system prompt), the user's text, and the template's
tail (end of turn, assistant header). Without ``--step-tokens`` the head and the text are one
prefill (the exact model, as llama-cli). With ``--step-tokens N`` the head is the session's
prefix and the text goes in steps of N tokens, exactly as video frames go in steps
(``--mode full|window|statekv``); either way the tail is the question the answer is generated
for, over the whole detailed cache. The answer streams to stdout; a summary (prompt tokens and
steps, per-step latency, cache sizes, time to first token, tokens/s, peak memory) goes to stderr.

examples:
  statekv run -m gemma-3-270m-q4_k_m.gguf -p "The capital of France is" -n 16
  statekv run -m Qwen2.5-0.5B-Instruct-Q8_0.gguf -f report.txt -sys "Answer briefly." \\
      --mode statekv --budget 1024 --step-tokens 256 -n 128
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional, TextIO

from ..progress import ProgressBar, format_bytes, format_duration, format_rate, format_summary, peak_memory_bytes
from .errors import UsageError
from .video import (Answer, _add_answer_arguments, _add_cache_mode_arguments, _answer_rows, _check_cache_mode, _mode_text,
                    _require_file, _sampling, _threads)

__all__ = ["add_arguments", "run", "PromptParts", "split_prompt", "prefill", "stream_text"]

# Marks where the user's text goes when the template is rendered to find its head and tail.
_SENTINEL = "\x00statekv-prompt\x00"


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and prompt (llama-cli's flags)")
    g.add_argument("-m", "--model", required=True, metavar="MODEL.gguf", help="text model GGUF (llama.cpp's)")
    g.add_argument("-p", "--prompt", default=None, metavar="TEXT", help="the prompt")
    g.add_argument("-f", "--file", default=None, metavar="FILE", help="read the prompt from FILE (UTF-8)")
    g.add_argument("-sys", "--system-prompt", dest="system", default=None, metavar="TEXT",
                   help="system prompt (needs a chat template)")
    g.add_argument("-no-cnv", "--no-conversation", dest="conversation", action="store_false",
                   help="do not apply the chat template: the prompt is the raw text (default: the template is "
                        "applied when the model has one, as llama-cli's conversation mode)")
    g.add_argument("--chat-template-file", default=None, metavar="FILE",
                   help="a Jinja chat template to use instead of the model's")
    g.add_argument("-c", "--ctx-size", type=int, default=0, metavar="N",
                   help="context size: prompt and answer must fit in N tokens; positions past the model's "
                        "trained context get NTK scaling planned for N (default 0: the prompt plus -n)")
    g.add_argument("-t", "--threads", type=int, default=None, metavar="N",
                   help="CPU threads (default, or 0: statekv's choice)")
    g.add_argument("-dev", "--device", default=None,
                   help="device name from `statekv info` (default: the best GPU, else the CPU)")
    g.add_argument("--mmproj", default=None, metavar="MMPROJ.gguf", help=argparse.SUPPRESS)
    s = p.add_argument_group("prefill in steps (text chunks as video steps)")
    s.add_argument("--step-tokens", type=int, default=0, metavar="N",
                   help="prefill the prompt's text in steps of N tokens (default 0: in one prefill)")
    _add_cache_mode_arguments(s, "full", "step")
    s.add_argument("-ctk", "--kv-type", default="f16", choices=["f32", "f16", "q8_0", "q4_0"], metavar="TYPE",
                   help="detailed-cache type: f32, f16, q8_0 or q4_0 (default: %(default)s)")
    _add_answer_arguments(p)
    out = p.add_argument_group("output")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary on stderr")


# ---- the prompt -------------------------------------------------------------------------------


@dataclass
class PromptParts:
    """A tokenized prompt cut in three: ``head`` (template's start: BOS, turn header, system
    prompt), ``body`` (the user's text) and ``tail`` (template's end: end of turn, assistant
    header; without a template, the text's last token). ``head + body + tail`` are the ids of
    the whole prompt tokenized at once."""

    head: list[int]
    body: list[int]
    tail: list[int]

    @property
    def ids(self) -> list[int]:
        return self.head + self.body + self.tail

    def steps(self, step_tokens: int) -> list[list[int]]:
        """The body in chunks of ``step_tokens`` (the last one may be shorter)."""
        return [self.body[i:i + step_tokens] for i in range(0, len(self.body), step_tokens)]


def split_prompt(tokenizer, text: str, template=None, system: Optional[str] = None) -> PromptParts:
    """``text`` as one user turn rendered by ``template`` (a :class:`statekv.text.ChatTemplate`;
    None: the raw text, BOS added as the vocabulary asks), tokenized once and cut at the user
    text's edges (by character offsets, so the pieces are exactly the whole prompt's ids).

    Example::

        parts = split_prompt(tokenizer_from_gguf(path), "Summarize: ...", ChatTemplate.from_gguf(path))
        session.prefill(parts.head)
        for chunk in parts.steps(256):
            session.add_step(chunk)
        answer = session.generate(parts.tail, 64)
    """
    if template is None:
        full, head_text, tail_text, special = text, "", "", True
    else:
        messages = [] if system is None else [{"role": "system", "content": system}]
        full = template.render(messages + [{"role": "user", "content": text}], add_generation_prompt=True)
        marked = template.render(messages + [{"role": "user", "content": _SENTINEL}], add_generation_prompt=True)
        if marked.count(_SENTINEL) != 1:
            raise ValueError("the chat template does not render the user's text exactly once")
        head_text, tail_text = marked.split(_SENTINEL)
        if not (full.startswith(head_text) and full.endswith(tail_text)):
            raise ValueError("the chat template changes the text around the user's message with its content")
        special = False  # the template writes BOS itself
    enc = tokenizer.encode(full, add_special_tokens=special)
    ids, offsets = [int(i) for i in enc.ids], enc.offsets
    if not ids:
        raise ValueError("the prompt is empty")
    body_start, body_end = len(head_text), len(full) - len(tail_text)
    n_head = 0
    while n_head < len(ids) and offsets[n_head][1] <= body_start:
        n_head += 1
    n_tail = 0
    while n_tail < len(ids) - n_head and offsets[len(ids) - 1 - n_tail][0] >= body_end:
        n_tail += 1
    if n_tail == 0 and len(ids) > n_head:  # raw text: its last token is what the answer follows
        n_tail = 1
    return PromptParts(ids[:n_head], ids[n_head:len(ids) - n_tail], ids[len(ids) - n_tail:])


def _template(args: argparse.Namespace, path: str):
    """The chat template the flags ask for (None: raw prompt)."""
    from ..text.chat_template import ChatTemplate

    if args.chat_template_file:
        with open(args.chat_template_file, encoding="utf-8") as f:
            source = f.read()
        vocab = ChatTemplate.from_gguf(path) if _has_template(path) else None
        special = vocab.special_tokens if vocab else _special_tokens(path)
        bos, eos = special.pop("bos_token", None), special.pop("eos_token", None)
        return ChatTemplate(source, bos_token=bos, eos_token=eos, extra_context=special)
    if not args.conversation or not _has_template(path):
        return None
    return ChatTemplate.from_gguf(path)


def _has_template(path: str) -> bool:
    from ..gguf_io import read_gguf_kv

    return bool(read_gguf_kv(path).get("tokenizer.chat_template"))


def _special_tokens(path: str) -> dict:
    """The special-token strings a template may use (bos_token, eos_token, ...), from the GGUF."""
    from ..gguf_io import read_gguf_kv
    from ..text.chat_template import SPECIAL_TOKEN_NAMES

    kv = read_gguf_kv(path)
    tokens = kv.get("tokenizer.ggml.tokens") or []
    out = {}
    for name, key in SPECIAL_TOKEN_NAMES.items():
        tid = kv.get(key)
        if tid is not None and 0 <= int(tid) < len(tokens):
            out[name] = tokens[int(tid)]
    return out


# ---- prefill and generation -------------------------------------------------------------------


def prefill(model, parts: PromptParts, step_tokens: int = 0, mode: str = "full", progress=None, **options):
    """A :class:`statekv.Session` holding ``parts.head + parts.body``: one prefill
    (``step_tokens`` 0), or the head as prefix and the body in steps of ``step_tokens``
    (``options``: budget, window, kv_type, expected_length). ``progress(done, total)`` sees the
    steps."""
    session = model.session(mode, **options)
    if step_tokens <= 0:
        if parts.head or parts.body:  # (a one-token raw prompt has only its tail)
            session.prefill(parts.head + parts.body)
        return session
    steps = parts.steps(step_tokens)
    if parts.head:
        session.prefill(parts.head)
    for i, chunk in enumerate(steps):
        session.add_step(chunk)
        if progress is not None:
            progress(i + 1, len(steps))
    return session


def stream_text(session, tokenizer, tail: list[int], max_tokens: int, end_ids: set, **sampling):
    """Text pieces of the answer to ``tail`` as they are decoded (an end-of-turn token ends it
    and is not shown; a piece is held back while it ends inside a multi-byte character); the
    answer's ids are collected in the list the generator yields first."""
    done: list[int] = []
    yield done
    shown = ""
    for tok in session.stream(tail, max_tokens, **sampling):
        if int(tok) in end_ids:
            break
        done.append(int(tok))
        text = tokenizer.decode(done, skip_special_tokens=True)
        if not text.endswith("\ufffd") and len(text) > len(shown):
            yield text[len(shown):]
            shown = text
    text = tokenizer.decode(done, skip_special_tokens=True)
    if len(text) > len(shown):
        yield text[len(shown):]


# ---- checks before the model is loaded --------------------------------------------------------


def _prompt_text(args: argparse.Namespace) -> str:
    if args.prompt is not None and args.file is not None:
        raise UsageError("give the prompt once: -p TEXT or -f FILE, not both")
    if args.file is not None:
        _require_file(args.file, "prompt file")
        try:
            with open(args.file, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as exc:
            raise ValueError(f"{args.file}: the prompt file is not UTF-8 text ({exc.reason} at byte {exc.start})") \
                from None
    elif args.prompt is not None:
        text = args.prompt
    else:
        raise UsageError("no prompt: statekv run -m MODEL.gguf -p TEXT (or -f FILE)")
    if not text:
        raise UsageError(f"the prompt is empty{f' ({args.file})' if args.file else ''}")
    return text


def _check_options(args: argparse.Namespace) -> None:
    """Usage problems that need no model: raised before the (slow) model load."""
    if args.mmproj is not None:
        raise UsageError("statekv run is for text-only models and takes no --mmproj; "
                         "for a video use `statekv ask -m TEXT.gguf --mmproj MMPROJ.gguf --video FILE`")
    if args.max_tokens < 1:
        raise UsageError(f"-n/--max-tokens must be at least 1, got {args.max_tokens}")
    if args.step_tokens < 0:
        raise UsageError(f"--step-tokens must be a positive number of tokens (or 0: one prefill), "
                         f"got {args.step_tokens}")
    if args.mode != "full" and args.step_tokens == 0:
        raise UsageError(f"--mode {args.mode} selects what steps attend to: give --step-tokens N too")
    _check_cache_mode(args)
    if args.ctx_size < 0:
        raise UsageError(f"-c/--ctx-size must be a positive number of tokens (or 0), got {args.ctx_size}")
    if args.system is not None and not args.conversation:
        raise UsageError("-sys/--system-prompt needs the chat template: drop -no-cnv")
    if args.chat_template_file is not None:
        if not args.conversation:
            raise UsageError("--chat-template-file and -no-cnv contradict each other")
        _require_file(args.chat_template_file, "chat template")
    _require_file(args.model, "text model GGUF")
    _refuse_vision_file(args.model)


def _refuse_vision_file(path: str) -> None:
    from ..gguf_io import read_gguf_kv

    if read_gguf_kv(path).get("general.architecture") == "clip":
        raise ValueError(f"{path}: is an mmproj (vision encoder) GGUF; statekv run needs the text model GGUF")


# ---- statekv run ------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from ..model import Model
    from ..text.tokenizer import tokenizer_from_gguf

    text = _prompt_text(args)
    _check_options(args)
    template = _template(args, args.model)
    if args.system is not None and template is None:
        raise UsageError(f"-sys/--system-prompt needs a chat template and {args.model} has none "
                         "(give --chat-template-file FILE)")
    tokenizer = tokenizer_from_gguf(args.model)
    parts = split_prompt(tokenizer, text, template, args.system)
    needed = len(parts.ids) + args.max_tokens
    if args.ctx_size and needed > args.ctx_size:
        raise ValueError(f"the prompt ({len(parts.ids)} tokens) and -n {args.max_tokens} need {needed} tokens, "
                         f"more than -c {args.ctx_size}")

    began = time.perf_counter()
    model = Model(args.model, device=args.device, threads=_threads(args.threads))
    load_seconds = time.perf_counter() - began
    options = dict(budget=args.budget, window=args.window, kv_type=args.kv_type,
                   expected_length=args.ctx_size or needed)
    began = time.perf_counter()
    with ProgressBar("prompt", unit="steps", enabled=not args.quiet and args.step_tokens > 0) as bar:
        session = prefill(model, parts, args.step_tokens, args.mode, progress=bar.update, **options)
    prefill_seconds = time.perf_counter() - began

    end_ids = {int(x) for x in str(model.info_cached.get("eos_ids", "")).split(",") if x.strip()}
    answer = _stream(session, tokenizer, parts, args, end_ids, sys.stdout)
    if not args.quiet:
        print(format_summary(_summary_rows(session, parts, args, load_seconds, prefill_seconds, answer)),
              file=sys.stderr)
    return 0


def _stream(session, tokenizer, parts: PromptParts, args: argparse.Namespace, end_ids: set, out: TextIO) -> Answer:
    began = time.perf_counter()
    first: Optional[float] = None
    pieces = stream_text(session, tokenizer, parts.tail, args.max_tokens, end_ids, **_sampling(args))
    ids = next(pieces)
    shown: list[str] = []
    try:
        for piece in pieces:
            if first is None:
                first = time.perf_counter() - began
            shown.append(piece)
            out.write(piece)
            out.flush()
    finally:
        out.write("\n")
        out.flush()
    return Answer("".join(shown), len(ids), first, time.perf_counter() - began)


def _summary_rows(session, parts: PromptParts, args: argparse.Namespace, load_seconds: float,
                  prefill_seconds: float, answer: Answer) -> list[tuple[str, str]]:
    st = session.stats()
    n_prompt = len(parts.head) + len(parts.body)
    how = (f"{len(parts.head)} prefix + {len(parts.steps(args.step_tokens))} steps of {args.step_tokens}"
           if args.step_tokens > 0 else "one prefill")
    rows = [("model", f"{os.path.basename(args.model)}, loaded in {format_duration(load_seconds)}"),
            ("mode", _mode_text(session.options())),
            ("prompt", f"{n_prompt} tokens ({how}) in {format_duration(prefill_seconds)}, "
                       f"{format_rate(n_prompt, prefill_seconds, 'tokens')}; question {len(parts.tail)} tokens")]
    steps = st.get("step_seconds") or []
    if args.step_tokens > 0 and steps:
        ordered = sorted(steps)
        rows.append(("per step", f"{format_duration(ordered[len(ordered) // 2])} median, "
                                 f"{format_duration(steps[-1])} last"))
    rows.append(("cache", f"{st.get('tokens_detailed', 0)} tokens detailed ({format_bytes(st.get('bytes_detailed'))}), "
                          f"{st.get('tokens_carried', 0)} carried ({format_bytes(st.get('bytes_carried'))})"))
    rows += _answer_rows(answer)
    rows.append(("peak memory", format_bytes(peak_memory_bytes())))
    return rows
