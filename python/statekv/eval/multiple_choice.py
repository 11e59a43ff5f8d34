"""Multiple-choice video questions as the benchmarks publish them, asked and scored as lmms-eval
asks and scores them (facts read from lmms-eval's `videomme`, `mlvu` and `ovobench` tasks and
from the benchmarks' releases; the code is statekv's own).

Example::

    from statekv.eval import multiple_choice as mc

    rows = mc.read_rows("videomme.parquet")               # json, jsonl, parquet or csv
    fmt = mc.detect_format(rows, "videomme.parquet")      # videomme, mlvu, ovobench or generic
    questions, skipped = mc.questions(rows, fmt, video_dir="videos/", where="videomme.parquet")
    prompt = mc.render(fmt.style, questions[0])             # the text asked after the video
    mc.parse(fmt.style, "The best answer is B.", questions[0])  # Parsed(letter='B', correct=...)

Published row layouts (column names as released; ``--columns`` overrides any of them):

- VideoMME (lmms-lab/Video-MME parquet): ``videoID`` (the file is ``<videoID>.mp4``, or ``.MP4``
  / ``.mkv`` as lmms-eval looks for it), ``question``, ``options`` (``"A. ..."`` strings),
  ``answer`` (a letter), ``question_id``, ``task_type``.
- MLVU: lmms-eval's ``MLVU_dev`` rows (``video_name``, ``question`` with the options appended as
  ``(A) ...`` lines, ``candidates``, ``answer`` a letter, ``task_type``) and the MLVU release's
  json (``video``, ``question``, ``candidates``, ``answer`` the right candidate's text,
  ``question_type``).
- OVO-Bench (its backward and real-time json): ``video``, ``question``, ``options``, ``gt`` (the
  right option's 0-based index), ``id``, ``task``, ``realtime`` (seconds: the question is asked
  at that moment, so the clip ends there). Forward tasks (no options) are skipped.
- generic: ``video``, ``question``, ``options``, ``answer``, optional ``id``, ``category``,
  ``start``, ``end``.

Options may be a list, an object keyed ``A``, ``B``, ... in order, a JSON list in a string (csv)
or one option per line; ``A. `` / ``(A) `` / ``A) `` / ``A: `` labels in order are removed (the
prompt style puts its own back). An answer is an option letter, an option's text, ``(A) text``,
or an integer index from 0.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["DataError", "Format", "FORMATS", "STYLES", "Question", "Skipped", "Parsed", "read_rows",
           "detect_format", "with_columns", "parse_columns", "questions", "render", "parse", "max_tokens",
           "letter_token_ids", "likelihood_choice"]

FIELDS = ("video", "question", "options", "answer", "id", "category", "start", "end")
REQUIRED = ("video", "question", "options", "answer")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
VIDEO_SUFFIXES = (".mp4", ".MP4", ".mkv", ".webm", ".avi", ".mov")


class DataError(ValueError):
    """The data file cannot be read as benchmark rows (names the file, and the row or column)."""


# ------------------------------------------------------------------------------ formats
@dataclass(frozen=True)
class Format:
    """A published row layout: for each field, the column names it is read from (the first one
    present wins), the columns that identify the layout, and the prompt style it is asked in."""

    name: str
    columns: dict
    signature: tuple[str, ...]
    style: str
    answer_is_index: bool = False  # the answer column holds a 0-based option index (OVO-Bench's gt)


FORMATS: dict[str, Format] = {
    "videomme": Format("videomme", {"video": ("videoID",), "question": ("question",), "options": ("options",),
                                    "answer": ("answer",), "id": ("question_id",), "category": ("task_type",)},
                       signature=("videoID", "options"), style="videomme"),
    "ovobench": Format("ovobench", {"video": ("video",), "question": ("question",), "options": ("options",),
                                    "answer": ("gt",), "id": ("id",), "category": ("task",), "end": ("realtime",)},
                       signature=("gt", "realtime"), style="ovobench", answer_is_index=True),
    "mlvu": Format("mlvu", {"video": ("video_name", "video"), "question": ("question",), "options": ("candidates",),
                            "answer": ("answer",), "id": ("question_id", "id"),
                            "category": ("task_type", "question_type")},
                   signature=("candidates",), style="mlvu"),
    "generic": Format("generic", {"video": ("video", "video_path"), "question": ("question",),
                                  "options": ("options", "choices"), "answer": ("answer",), "id": ("id",),
                                  "category": ("category", "task_type"), "start": ("start",), "end": ("end",)},
                      signature=(), style="videomme"),
}


def detect_format(rows: Sequence[dict], where: str) -> Format:
    """The published layout whose identifying columns the rows have (else ``generic``)."""
    names = _column_names(rows)
    for fmt in FORMATS.values():
        if fmt.signature and all(c in names for c in fmt.signature):
            return fmt
    return FORMATS["generic"]


def parse_columns(text: Optional[str]) -> dict[str, Optional[str]]:
    """``--columns video=vid,question=q,end=`` -> ``{"video": "vid", "question": "q", "end": None}``
    (an empty name: the field is not read)."""
    out: dict[str, Optional[str]] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in FIELDS:
            raise ValueError(f"--columns: {part.strip()!r} is not FIELD=COLUMN with FIELD one of {', '.join(FIELDS)}")
        if not value.strip() and key in REQUIRED:
            raise ValueError(f"--columns: the {key} field is required, give its column name")
        out[key] = value.strip() or None
    return out


def with_columns(fmt: Format, overrides: dict[str, Optional[str]]) -> Format:
    """``fmt`` with the fields of ``overrides`` read from the named columns (None: not read)."""
    columns = dict(fmt.columns)
    for key, name in overrides.items():
        columns[key] = (name,) if name else ()
    return replace(fmt, columns=columns)


def _column_names(rows: Sequence[dict]) -> set:
    names: set = set()
    for row in rows:
        names.update(row)
    return names


def resolve_columns(rows: Sequence[dict], fmt: Format, where: str) -> dict[str, Optional[str]]:
    """field -> the column it is read from in these rows (None for an absent optional field);
    a missing required column is a :class:`DataError` naming the file and the column."""
    names = _column_names(rows)
    out: dict[str, Optional[str]] = {}
    for key in FIELDS:
        candidates = fmt.columns.get(key, ())
        found = next((c for c in candidates if c in names), None)
        if found is None and key in REQUIRED:
            looked = " or ".join(repr(c) for c in candidates) or "(none)"
            raise DataError(f"{where}: no column {looked} for the {key} of the {fmt.name} format (columns: "
                            f"{', '.join(sorted(map(str, names)))}); name it with --columns {key}=COLUMN")
        out[key] = found
    return out


# ------------------------------------------------------------------------------ reading files
def read_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of a ``.json`` (an array of objects, or JSON lines), ``.jsonl``, ``.csv`` or
    ``.parquet`` file, as dicts. A file that cannot be read as rows is a :class:`DataError`."""
    where = os.fspath(path)
    suffix = Path(where).suffix.lower()
    readers = {".json": _read_json, ".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".csv": _read_csv,
               ".parquet": _read_parquet}
    if suffix not in readers:
        raise DataError(f"{where}: unknown data file type {suffix or '(no suffix)'!r} (expected .json, .jsonl, "
                        ".parquet or .csv)")
    rows = readers[suffix](where)
    if not rows:
        raise DataError(f"{where}: no rows")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{where}: row {i} is a {type(row).__name__}, expected an object of columns")
    return rows


def _read_text(where: str) -> str:
    try:
        with open(where, encoding="utf-8-sig") as f:
            return f.read()
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _read_json(where: str) -> list:
    text = _read_text(where)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # one object per line, in a .json file (as some releases ship them)
            return _json_lines(text, where)
        raise DataError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    if isinstance(data, dict):  # one object: a file of one row (JSON lines with one line)
        return [data]
    if not isinstance(data, list):
        raise DataError(f"{where}: expected a JSON array of rows, found a {type(data).__name__}")
    return data


def _read_jsonl(where: str) -> list:
    return _json_lines(_read_text(where), where)


def _json_lines(text: str, where: str) -> list:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: line {number} is not valid JSON ({exc.msg}, column {exc.colno})") from None
    return rows


def _read_csv(where: str) -> list:
    text = _read_text(where)
    try:
        return list(csv.DictReader(io.StringIO(text, newline="")))  # quoted fields may hold newlines
    except csv.Error as exc:
        raise DataError(f"{where}: not a readable CSV file ({exc})") from None


def _read_parquet(where: str) -> list:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        pq = None
    if pq is not None:
        try:
            return pq.read_table(where).to_pylist()
        except Exception as exc:  # pyarrow raises its own ArrowInvalid/OSError family for a bad file
            raise DataError(f"{where}: not a readable parquet file ({exc})") from None
    try:
        import pandas as pd
    except ImportError:
        raise DataError(f"{where}: reading parquet needs pyarrow: pip install pyarrow (or pip install "
                        "\"statekv[eval]\"; pandas with a parquet engine works too)") from None
    try:
        return pd.read_parquet(where).to_dict("records")
    except ImportError as exc:  # pandas without a parquet engine
        raise DataError(f"{where}: reading parquet needs pyarrow: pip install pyarrow ({exc})") from None
    except Exception as exc:
        raise DataError(f"{where}: not a readable parquet file ({exc})") from None


# ------------------------------------------------------------------------------ rows -> questions
@dataclass(frozen=True)
class Question:
    """One multiple-choice question: ``row`` (its index in the data file), ``id`` (the id column's
    value, if any), the ``video`` file, the clip (``start``/``end`` seconds, None: the whole video),
    the ``question`` text without options, the ``options`` without labels, the right ``answer``
    letter and the ``category`` (task type) if any."""

    row: int
    id: Optional[str]
    video: str
    question: str
    options: tuple[str, ...]
    answer: str
    category: Optional[str] = None
    start: Optional[float] = None
    end: Optional[float] = None

    @property
    def letters(self) -> str:
        return LETTERS[:len(self.options)]


@dataclass(frozen=True)
class Skipped:
    """A row that cannot be asked: its index, id, the ``kind`` of problem (a short fixed phrase,
    counted in the summary) and the ``detail``."""

    row: int
    id: Optional[str]
    kind: str
    detail: str


class _Bad(Exception):
    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def questions(rows: Sequence[dict], fmt: Format, video_dir: str | os.PathLike, where: str
              ) -> tuple[list[Question], list[Skipped]]:
    """The rows as questions, and the rows that cannot be asked (missing video file, no options,
    an answer that is not among the options, ...) with the reason."""
    columns = resolve_columns(rows, fmt, where)
    good: list[Question] = []
    bad: list[Skipped] = []
    for index, row in enumerate(rows):
        ident = _text(row.get(columns["id"])) if columns["id"] else None
        try:
            good.append(_question(index, ident, row, columns, fmt, os.fspath(video_dir)))
        except _Bad as exc:
            bad.append(Skipped(index, ident, exc.kind, exc.detail))
    return good, bad


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str)
                                                                                 and not value.strip())


def _text(value: Any) -> Optional[str]:
    return None if _missing(value) else str(value)


def _question(index: int, ident: Optional[str], row: dict, columns: dict, fmt: Format, video_dir: str) -> Question:
    question = row.get(columns["question"])
    if _missing(question) or not isinstance(question, str):
        raise _Bad("no question", f"no question text in column {columns['question']!r}")
    options = _options(row.get(columns["options"]))
    if len(options) < 2:
        raise _Bad("no options", f"{len(options)} option(s) in column {columns['options']!r}, expected at least 2")
    if len(options) > len(LETTERS):
        raise _Bad("no options", f"{len(options)} options, at most {len(LETTERS)} can be lettered")
    answer = _answer(row.get(columns["answer"]), options, fmt.answer_is_index)
    start, end = (_seconds(row, columns[k], k) for k in ("start", "end"))
    video = _video_path(row.get(columns["video"]), video_dir)
    category = _text(row.get(columns["category"])) if columns["category"] else None
    return Question(index, ident, video, _strip_option_lines(question, len(options)), tuple(options), answer,
                    category, start, end)


_LABEL = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])[.):])\s*(.*)$", re.S)


def _label(text: str) -> Optional[tuple[str, str]]:
    m = _LABEL.match(text)
    return None if m is None else (m.group(1) or m.group(2), m.group(3))


def _options(value: Any) -> list[str]:
    if _missing(value):
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise _Bad("no options", f"options {text[:60]!r} look like a JSON list but do not parse") from None
        else:
            value = [line for line in text.splitlines() if line.strip()]
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, dict) and list(value) == list(LETTERS[:len(value)]):  # {"A": "...", "B": "..."}
        value = list(value.values())
    if not isinstance(value, (list, tuple)) or any(isinstance(v, (list, dict)) or _missing(v) for v in value):
        raise _Bad("no options", f"options must be a list of texts, got {str(value)[:60]!r}")
    options = [str(v) for v in value]
    labels = [_label(o) for o in options]
    if all(lab is not None and lab[0] == LETTERS[i] for i, lab in enumerate(labels[:len(LETTERS)])):
        return [lab[1] for lab in labels]  # "A. text" in order: the style writes its own labels
    return options


def _strip_option_lines(question: str, n_options: int) -> str:
    """MLVU_dev's questions end with their options as ``(A) ...`` lines: the text before them."""
    lines = question.split("\n")
    if len(lines) <= n_options:
        return question
    tail = lines[-n_options:]
    if all((lab := _label(line)) is not None and lab[0] == LETTERS[i] for i, line in enumerate(tail)):
        return "\n".join(lines[:-n_options]).rstrip("\n")
    return question


def _answer(value: Any, options: list[str], as_index: bool) -> str:
    letters = LETTERS[:len(options)]
    span = f"{letters[0]}-{letters[-1]}"
    if _missing(value):
        raise _Bad("no answer", "no answer")
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) or (
            as_index and isinstance(value, str) and value.strip().isdigit()):
        i = int(value)
        if not 0 <= i < len(options):
            raise _Bad("answer not among the options", f"answer index {i} is not among the {len(options)} options")
        return letters[i]
    text = str(value).strip()
    m = re.fullmatch(r"\(?([A-Z])\)?[.:]?", text)
    if m:
        if m.group(1) not in letters:
            raise _Bad("answer not among the options", f"answer {m.group(1)!r} is not among the options ({span})")
        return m.group(1)
    if text in (o.strip() for o in options):
        return letters[[o.strip() for o in options].index(text)]
    lab = _label(text)
    if lab is not None:
        if lab[0] not in letters:
            raise _Bad("answer not among the options", f"answer {lab[0]!r} is not among the options ({span})")
        return lab[0]
    raise _Bad("answer not among the options", f"answer {text[:40]!r} is neither an option letter ({span}) "
                                               "nor one of the options")


def _seconds(row: dict, column: Optional[str], name: str) -> Optional[float]:
    if column is None or _missing(row.get(column)):
        return None
    try:
        value = float(row[column])
    except (TypeError, ValueError):
        raise _Bad(f"bad {name} time", f"{name} {row[column]!r} in column {column!r} is not a number of seconds") \
            from None
    if not math.isfinite(value) or value < 0:
        raise _Bad(f"bad {name} time", f"{name} {value} in column {column!r} is not a time in seconds")
    return value


def _video_path(value: Any, video_dir: str) -> str:
    if _missing(value):
        raise _Bad("missing video file", "no video name")
    name = str(value).strip()
    path = name if os.path.isabs(name) else os.path.join(video_dir, name)
    candidates = [path] if Path(name).suffix else [path] + [path + s for s in VIDEO_SUFFIXES]
    for c in candidates:
        if os.path.isfile(c):
            return c
    raise _Bad("missing video file", f"no video file {candidates[0]}" +
               (f" (nor {', '.join(VIDEO_SUFFIXES)})" if len(candidates) > 1 else ""))


# ------------------------------------------------------------------------------ asking
# lmms-eval's videomme task (no subtitles, no post_prompt given): its instruction mentions the
# subtitles even without them; the text is kept as lmms-eval sends it.
_VIDEOMME_INSTRUCTION = ("Select the best answer to the following multiple-choice question based on the video and "
                         "the subtitles. Respond with only the letter (A, B, C, or D) of the correct option.")
# lmms-eval's ovobench task (BR_PROMPT_TEMPLATE of the OVO-Bench release): options on one line.
_OVOBENCH_INSTRUCTION = ("Respond only with the letter corresponding to your chosen option (e.g., A, B, C). \n"
                         "Do not include any additional text or explanation in your response.")

STYLES = ("videomme", "mlvu", "ovobench")
# lmms-eval's generation_kwargs.max_new_tokens of each task (greedy)
_MAX_TOKENS = {"videomme": 16, "mlvu": 16, "ovobench": 128}


def max_tokens(style: str) -> int:
    """The answer length lmms-eval generates for the style's benchmark."""
    return _MAX_TOKENS[style]


def render(style: str, q: Question) -> str:
    """The text asked after the video, as lmms-eval's task for ``style`` writes it."""
    pairs = list(zip(q.letters, q.options))
    if style == "videomme":
        options = "\n".join(f"{k}. {t}" for k, t in pairs)
        return f"{_VIDEOMME_INSTRUCTION}\n{q.question}\n{options}\nThe best answer is:"
    if style == "mlvu":  # the question with its "(A) ..." lines, then the answer's opening parenthesis
        options = "\n".join(f"({k}) {t}" for k, t in pairs)
        return f"\n{q.question}\n{options}\nOnly give the best option.\n\nBest option: ("
    if style == "ovobench":
        options = "; ".join(f"{k}. {t}" for k, t in pairs) + ";"
        return f"\nQuestion: {q.question}\nOptions:\n{options}\n\n{_OVOBENCH_INSTRUCTION}\n"
    raise ValueError(f"unknown prompt style {style!r} (expected one of {', '.join(STYLES)})")


@dataclass(frozen=True)
class Parsed:
    """What the benchmark reads from an answer: the option ``letter`` (None when it reads none,
    or reads something that is not one of the options) and whether it counts as ``correct``."""

    letter: Optional[str]
    correct: bool


# lmms-eval's videomme list, including two pairs its source joins by a missing comma.
_VIDEOMME_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer",
                      "The best option isThe correct option is", "Best answer:Best option:")


def parse(style: str, text: str, q: Question) -> Parsed:
    """The letter read from a generated answer and its score, as lmms-eval reads it for the
    style's benchmark: videomme (its answer prefixes removed, the first option letter anywhere),
    mlvu (the character before the first ``)``, or the whole
    answer), ovobench (correct when the right letter occurs anywhere in the answer; the letter
    recorded is the first option letter that occurs). The letters are the row's (A-D for four
    options, as lmms-eval's ``[ABCD]``)."""
    s = text.strip()
    if style == "videomme":
        for prefix in _VIDEOMME_PREFIXES:
            s = s.replace(prefix, "")
        m = re.search(f"[{q.letters}]", s)  # (lmms-eval's "more than 10 words" rule reads the same)
        letter = None if m is None else m.group(0)
        return Parsed(letter, letter == q.answer)
    if style == "mlvu":
        read = s[s.index(")") - 1:s.index(")")] if ")" in s else s
        return Parsed(read if read and read in q.letters else None, read == q.answer)
    if style == "ovobench":
        m = re.search(f"[{q.letters}]", s)
        return Parsed(None if m is None else m.group(0), q.answer in s)
    raise ValueError(f"unknown prompt style {style!r} (expected one of {', '.join(STYLES)})")


# ------------------------------------------------------------------------------ option likelihood
def letter_token_ids(tokenizer: Any) -> dict[str, Optional[int]]:
    """Letter -> the token an answer starting with that letter begins with (the first token of
    the letter alone), None when two letters begin with the same token (they cannot be told apart)."""
    from ..families.base import encode

    first = {k: (encode(tokenizer, k) or [None])[0] for k in LETTERS}
    counts: dict = {}
    for t in first.values():
        counts[t] = counts.get(t, 0) + 1
    return {k: (t if t is not None and counts[t] == 1 else None) for k, t in first.items()}


def likelihood_choice(logits: np.ndarray, q: Question, token_ids: dict[str, Optional[int]]
                      ) -> Optional[tuple[str, dict[str, float]]]:
    """The option letter most likely to begin the answer, and each option letter's log-probability
    (over the whole vocabulary), from the logits that predict the answer's first token. None when
    some option letters share a first token."""
    ids = [token_ids.get(k) for k in q.letters]
    if any(i is None for i in ids):
        return None
    row = np.asarray(logits, dtype=np.float64).reshape(-1)
    top = row.max()
    log_z = top + math.log(float(np.exp(row - top).sum()))
    logprobs = {k: float(row[i] - log_z) for k, i in zip(q.letters, ids)}
    best = max(q.letters, key=lambda k: logprobs[k])  # ties: the earlier letter
    return best, logprobs
