"""Documents and questions of the long-context evaluation, generated deterministically from a seed.

A document is natural text (:mod:`.text_source`) in the user turn of Gemma's chat format, with
facts inserted as lines at chosen token offsets. Its first ``contexts[-1] + ppl_tokens`` tokens
are fixed by the seed and the options, whatever the step size: the contexts (2K, 4K, ...) are
checkpoints at which the detailed cache holds exactly that many tokens, and one prefill asks
every checkpoint's questions, about facts placed before it (asking never changes the state).

Each span between two checkpoints (the first one starts after the prefix) gets:

- ``passkey``: one pass key, stated twice in one line at 20-80% of the span (the classic passkey
  prompt), asked by the name it is stored under;
- ``multikey``: ``keys`` secret codes of different names spread over 15-85% of the span, one of
  them asked; the state is selected before the question is known, so this tests what a
  query-agnostic state keeps of several similar facts;
- ``variable``: a number held by a named variable, defined at 2-12% of the span and referred to
  by name near its end (80-88%): the question names only the later line, whose answer lives in
  the early one (two hops, far beyond the local layers' window).

A question is asked at its own checkpoint and at every later one (the fact then lies further
back). Values are 5-digit numbers that occur nowhere in the natural text. Besides, each checkpoint
has two continuations of the document, scored as question logits over D:

- ``ppl``: the next ``ppl_tokens`` tokens of the document (perplexity; KL divergence to full);
- ``copy``: ``copy_tokens`` tokens repeated from 5-45% of the way into the document: a model
  that attends precisely to the earlier occurrence predicts them (top-1 accuracy, teacher
  forced); only the global layers reach that far back, so this separates the modes.

Example::

    doc = make_document(tokenizer, seed=0, contexts=[2048, 4096])
    for q in doc.questions_at(4096):
        print(q.task, q.question, q.value)
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

from ..families.base import encode
from ..families.gemma3.prompt import CHAT_TEMPLATE
from ..text.chat_template import ChatTemplate
from .text_source import natural_lines, topic_pages

__all__ = ["TASKS", "Fact", "Question", "Document", "make_document"]

TASKS = ("passkey", "multikey", "variable")
INSTRUCTION = "Read the following document carefully: questions about it follow.\n\n"
COLORS = ("red", "blue", "green", "amber", "violet", "silver", "golden", "black", "white", "crimson", "teal", "orange")
ANIMALS = ("fox", "owl", "heron", "otter", "lynx", "badger", "falcon", "moose", "raven", "tiger", "whale", "beetle")
OBJECTS = ("vault", "locker", "safe", "gate", "archive", "cabinet", "bunker", "drawer", "hangar", "cellar")
SYLLABLES = ("ka", "lo", "mi", "ze", "tor", "ban", "vi", "qu", "rel", "sa", "dun", "fe", "gri", "po", "nax", "wel")


@dataclass
class Fact:
    """A line inserted into the document: ``ids[start:end]`` are exactly the tokens of ``text``."""
    task: str
    text: str
    start: int
    end: int


@dataclass
class Question:
    """A question about ``facts`` (their lines lie before ``context``, its first checkpoint).

    ``prompt``: the question in Gemma's chat format, ending with the beginning of the model's answer
    (``primer``), so that the value is what comes next; ``candidates[0]`` is the right value."""
    task: str
    context: int
    question: str
    primer: str
    value: str
    candidates: list[str]
    facts: list[Fact]
    prompt: list[int] = field(default_factory=list)


@dataclass
class Document:
    """``ids``: the prefix (``prefix_len`` tokens) then the body; ``contexts``: the checkpoints."""
    seed: int
    ids: list[int]
    prefix_len: int
    contexts: list[int]
    questions: list[Question]
    ppl_tokens: int
    copy_starts: dict[int, int]
    copy_tokens: int

    def questions_at(self, context: int) -> list[Question]:
        """The questions asked at checkpoint ``context``: every fact they need lies before it."""
        return [q for q in self.questions if q.context <= context]

    def continuation(self, context: int) -> list[int]:
        """The ``ppl`` task's held-out tokens: the document's next tokens after the checkpoint."""
        return self.ids[context:context + self.ppl_tokens]

    def copy_passage(self, context: int) -> list[int]:
        """The ``copy`` task's tokens: a passage of the document before the checkpoint, repeated."""
        a = self.copy_starts[context]
        return self.ids[a:a + self.copy_tokens]


def _values_in_text() -> set[str]:
    return set(re.findall(r"\d{5}", "".join(topic_pages())))


class _Names:
    """Unique names, values and variables within one document."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()
        self.forbidden_values = _values_in_text()

    def _unique(self, make) -> str:
        for _ in range(10_000):
            x = make()
            if x not in self.used:
                self.used.add(x)
                return x
        raise ValueError("ran out of unique names: too many facts in one document (fewer --keys or contexts)")

    def name(self) -> str:
        return self._unique(lambda: f"the {self.rng.choice(COLORS)} {self.rng.choice(ANIMALS)}")

    def object(self) -> str:
        return self._unique(lambda: f"the {self.rng.choice(COLORS)} {self.rng.choice(OBJECTS)}")

    def variable(self) -> str:
        return self._unique(lambda: "".join(self.rng.choice(SYLLABLES) for _ in range(3)).capitalize())

    def clean_value(self) -> str:
        """A 5-digit number used nowhere else in the document, nor in the natural text."""
        self.used |= self.forbidden_values
        return self._unique(lambda: str(self.rng.randrange(10_000, 100_000)))


class GemmaChat:
    """Gemma's chat format (the template of :mod:`statekv.families.gemma3.prompt`), the document
    where that template puts a video: ``prefix()`` opens the user turn, ``question(q)`` ends it
    with the question and opens the model's turn."""

    def __init__(self, tokenizer: Any, bos: str = "<bos>"):
        self.tokenizer = tokenizer
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "\x00q\x00"}]}]
        rendered = ChatTemplate(CHAT_TEMPLATE, bos_token=bos).render(messages, add_generation_prompt=True)
        self._before, self._after = rendered.split("<video>")
        for token in ("<start_of_turn>", "<end_of_turn>", bos):
            if len(encode(tokenizer, token)) != 1:
                raise ValueError(f"the model's vocabulary has no single token {token!r}: "
                                 "the long-context evaluation asks in Gemma's chat format")

    def prefix(self) -> list[int]:
        return encode(self.tokenizer, self._before)

    def question(self, question: str) -> list[int]:
        return encode(self.tokenizer, self._after.replace("\x00q\x00", question.strip()))


@dataclass
class _Planned:
    target: int
    task: str
    text: str
    question: Question | None = None


def _plan_span(rng: random.Random, names: _Names, lo: int, hi: int, keys: int) -> tuple[list[_Planned], list[Question]]:
    """The facts of the span [lo, hi) and the questions first asked at checkpoint ``hi``."""
    at = lambda a, b: lo + int(rng.uniform(a, b) * (hi - lo))  # noqa: E731
    planned, questions = [], []

    name, v = names.name(), names.clean_value()
    line = f"The pass key of {name} is {v}. Remember it. {v} is the pass key of {name}.\n"
    q = Question("passkey", hi, f"What is the pass key of {name}?", f"The pass key of {name} is", v, [v], [])
    planned.append(_Planned(at(0.2, 0.8), "passkey", line, q))
    questions.append(q)

    codes = []
    for k in range(keys):
        name, v = names.name(), names.clean_value()
        q = Question("multikey", hi, f"What is the secret code of {name}?", f"The secret code of {name} is", v, [v], [])
        planned.append(_Planned(at(0.15 + 0.7 * k / keys, 0.15 + 0.7 * (k + 1) / keys), "multikey",
                                f"The secret code of {name} is {v}.\n", q))
        codes.append(q)
    asked = rng.choice(codes)
    asked.candidates += [c.value for c in codes if c is not asked]  # the confusable values first
    questions.append(asked)

    var, obj, v = names.variable(), names.object(), names.clean_value()
    q = Question("variable", hi, f"What is the code of {obj}?", f"The code of {obj} is", v, [v], [])
    planned.append(_Planned(at(0.02, 0.12), "variable", f"The variable {var} holds the number {v}.\n", q))
    planned.append(_Planned(at(0.80, 0.88), "variable",
                            f"The code of {obj} is the number held by the variable {var}.\n", q))
    questions.append(q)
    return planned, questions


def make_document(tokenizer: Any, seed: int, contexts: list[int], *, keys: int = 4, ppl_tokens: int = 64,
                  copy_tokens: int = 32, distractors: int = 7) -> Document:
    """The document of ``seed`` for checkpoints ``contexts`` (increasing token counts).

    ``tokenizer``: the model's (``statekv.text.tokenizer_from_gguf``), with Gemma's chat tokens.
    Raises ValueError when a context is too short for its facts."""
    contexts = sorted(int(c) for c in contexts)
    rng = random.Random(f"statekv-long-context-{seed}")
    names = _Names(rng)
    builder = GemmaChat(tokenizer)
    prefix = builder.prefix() + encode(tokenizer, INSTRUCTION)
    bounds = [len(prefix)] + contexts
    if contexts[0] <= len(prefix) + copy_tokens:
        raise ValueError(f"context {contexts[0]} is too short: the prefix alone has {len(prefix)} tokens")
    planned, questions = [], []
    for lo, hi in zip(bounds, bounds[1:]):
        p, q = _plan_span(rng, names, lo, hi, keys)
        planned += p
        questions += q
    planned.sort(key=lambda p: p.target)

    ids = list(prefix)
    lines = natural_lines(rng.randrange(2**31))
    want = contexts[-1] + ppl_tokens
    i = 0
    while len(ids) < want:
        while i < len(planned) and planned[i].target <= len(ids):
            p = planned[i]
            fact = Fact(p.task, p.text, len(ids), 0)
            ids += encode(tokenizer, p.text)
            fact.end = len(ids)
            p.question.facts.append(fact)
            i += 1
        ids += encode(tokenizer, next(lines))
    del ids[want:]

    for q in questions:
        last = max((f.end for f in q.facts), default=len(ids))
        if len(q.facts) != (2 if q.task == "variable" else 1) or last > q.context:
            raise ValueError(f"context {q.context} is too short for its facts (the {q.task} line ends at token {last}); "
                             f"use longer contexts or fewer --keys")
        _add_distractors(q, names, rng, [x.value for x in questions], distractors)
        q.prompt = encode(tokenizer, "\n\n") + builder.question(q.question) + encode(tokenizer, q.primer)

    copy_starts = {}
    for c in contexts:
        copy_starts[c] = len(prefix) + int(rng.uniform(0.05, 0.45) * (c - len(prefix)))
    return Document(seed, ids, len(prefix), contexts, questions, ppl_tokens, copy_starts, copy_tokens)


def _add_distractors(q: Question, names: _Names, rng: random.Random, others: list[str], n: int) -> None:
    """``n`` wrong values: the confusable ones already listed, then other values of the document,
    then fresh ones."""
    pool = [v for v in others if v not in q.candidates]
    rng.shuffle(pool)
    for v in pool:
        if len(q.candidates) > n:
            break
        q.candidates.append(v)
    while len(q.candidates) <= n:
        q.candidates.append(names.clean_value())
    del q.candidates[n + 1:]
