"""`statekv eval video`: a multiple-choice video benchmark you bring (VideoMME, MLVU, OVO-Bench
rows, or your own), run in several cache modes in one pass over each video.

Each video is decoded, preprocessed and run through the vision encoder once; the encoder's rows
feed one chat per mode (`--modes`). Every question about that video is then asked in every mode
(asking never changes a chat, so a video's questions share its indexing), the way lmms-eval asks
the benchmark's questions (its prompt; greedy answer; the letter read from the answer as
lmms-eval reads it), and scored a second way from the same prompt without generating: the option
whose letter is most likely to begin the answer.

Results go to a JSONL file (--out), one record per question and mode, written as they come: a
rerun with the same --out skips what is done, and refuses a file written with other options.
The accuracy table per mode (with counts and 95% Wilson intervals) is printed and written as
JSON (--summary, default OUT.summary.json). Rows that cannot be asked (missing video file, no
options, an answer not among the options, an unreadable video) are skipped with their reason
and counted in the summary.

--modes: a comma-separated list of full | window[:R=STEPS] | statekv[:B=TOKENS]
(default full,window:R=16,statekv:B=4096; a bare window/statekv takes --window/--budget).

examples:
  statekv eval video --data videomme.parquet --video-dir videomme/data -m InternVL3-1B-Q8_0.gguf \\
      --mmproj mmproj-InternVL3-1B-Q8_0.gguf --out videomme-internvl3-1b.jsonl
  statekv eval video --data ovo_bench.json --video-dir ovo --format ovobench -m M.gguf --mmproj MM.gguf \\
      --modes full,statekv:B=1024,statekv:B=4096 --out ovo.jsonl
  statekv eval video --data mine.csv --columns video=clip,answer=correct -m M.gguf --mmproj MM.gguf --out mine.jsonl
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

from ..cli.errors import UsageError
from ..progress import ProgressBar, format_summary
from . import multiple_choice as mc
from .stats import accuracy, format_accuracy

__all__ = ["Mode", "parse_modes", "add_arguments", "run"]

RESULTS_FORMAT = "statekv.eval.video.v1"
DEFAULT_MODES = "full,window:R=16,statekv:B=4096"


# ------------------------------------------------------------------------------ modes
@dataclass(frozen=True)
class Mode:
    """One cache mode of the run: ``label`` (as in the table and the records), the session's
    ``mode``, ``budget`` (statekv) and ``window`` (steps, window)."""

    label: str
    mode: str
    budget: int
    window: int


def parse_modes(text: str, budget: int = 4096, window: int = 16) -> list[Mode]:
    """``full,window:R=16,statekv:B=4096`` -> modes (a bare ``window``/``statekv`` takes
    ``window``/``budget``). A malformed list raises ``ValueError``."""
    modes: list[Mode] = []
    for part in text.split(","):
        part = part.strip()
        name, _, params = part.partition(":")
        keys = {"window": "R", "statekv": "B"}
        if name not in ("full", *keys):
            raise ValueError(f"--modes: unknown mode {part!r} (expected full, window[:R=STEPS] or statekv[:B=TOKENS])")
        value = {"window": window, "statekv": budget}.get(name)
        if params:
            key, sep, number = params.partition("=")
            if name == "full" or key != keys[name] or not sep or not number.isdigit() or int(number) <= 0:
                raise ValueError(f"--modes: {part!r}: expected {name}" +
                                 ("" if name == "full" else f":{keys[name]}=N with N a positive integer"))
            value = int(number)
        if value is not None and value <= 0:
            raise ValueError(f"--modes: {part!r}: the {'window' if name == 'window' else 'budget'} must be positive")
        label = name if name == "full" else f"{name}:{keys[name]}={value}"
        if any(m.label == label for m in modes):
            raise ValueError(f"--modes: {label} is given twice")
        modes.append(Mode(label, name, value if name == "statekv" else budget, value if name == "window" else window))
    return modes


# ------------------------------------------------------------------------------ arguments
def add_arguments(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("data")
    d.add_argument("--data", required=True, metavar="FILE", help="the rows: .json, .jsonl, .parquet (needs pyarrow) "
                                                                 "or .csv")
    d.add_argument("--video-dir", metavar="DIR", help="where the videos named by the rows are (default: the data "
                                                      "file's folder)")
    d.add_argument("--format", default="auto", choices=["auto", *mc.FORMATS],
                   help="the rows' published layout (default: recognised by its columns, else generic)")
    d.add_argument("--columns", metavar="FIELD=COLUMN,...",
                   help=f"read a field from another column; fields: {', '.join(mc.FIELDS)} (empty COLUMN: not read, "
                        "e.g. end= for pre-cut OVO-Bench clips)")
    d.add_argument("--prompt", choices=mc.STYLES, default=None,
                   help="ask in this benchmark's lmms-eval wording (default: the format's; generic: videomme)")
    d.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N rows")
    m = p.add_argument_group("model")
    m.add_argument("-m", "--model", required=True, metavar="TEXT.gguf", help="text model GGUF (llama.cpp's)")
    m.add_argument("--mmproj", required=True, metavar="MMPROJ.gguf", help="vision encoder + projector GGUF")
    m.add_argument("-t", "--threads", type=int, default=None, metavar="N", help="CPU threads (default: statekv's choice)")
    m.add_argument("-dev", "--device", default=None, help="device name from `statekv info`")
    s = p.add_argument_group("modes and sampling")
    s.add_argument("--modes", default=DEFAULT_MODES, metavar="LIST",
                   help="full | window[:R=STEPS] | statekv[:B=TOKENS], comma-separated (default: %(default)s)")
    s.add_argument("--budget", type=int, default=4096, metavar="TOKENS", help="budget of a bare statekv (default: "
                                                                              "%(default)s)")
    s.add_argument("--window", type=int, default=16, metavar="STEPS", help="steps of a bare window (default: "
                                                                           "%(default)s)")
    s.add_argument("--fps", type=float, default=1.0, help="at most this many frames per second; 0: exactly "
                                                          "--max-frames (default: %(default)s)")
    s.add_argument("--max-frames", type=int, default=512, metavar="N", help="at most N frames per video (default: "
                                                                            "%(default)s)")
    s.add_argument("-ctk", "--kv-type", default="f16", choices=["f32", "f16", "q8_0", "q4_0"],
                   help="detailed-cache type (default: %(default)s)")
    s.add_argument("--system", default=None, metavar="TEXT", help="system prompt")
    s.add_argument("-n", "--max-tokens", type=int, default=None, metavar="N",
                   help="answer tokens (greedy; default: lmms-eval's for the prompt style: 16, ovobench 128)")
    o = p.add_argument_group("output")
    o.add_argument("-o", "--out", required=True, metavar="FILE.jsonl",
                   help="results, one record per question and mode; a rerun continues it")
    o.add_argument("--summary", metavar="FILE.json", help="the accuracy table as JSON (default: OUT.summary.json)")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


# ------------------------------------------------------------------------------ the run
def run(args: argparse.Namespace) -> int:
    modes = _check_arguments(args)
    rows = mc.read_rows(args.data)
    if args.limit is not None:
        rows = rows[:args.limit]
    fmt = mc.FORMATS[args.format] if args.format != "auto" else mc.detect_format(rows, args.data)
    fmt = mc.with_columns(fmt, _columns(args))
    style = args.prompt or fmt.style
    video_dir = args.video_dir if args.video_dir is not None else os.path.dirname(os.path.abspath(args.data))
    questions, skipped = mc.questions(rows, fmt, video_dir, args.data)
    options = _run_options(args, fmt, style, video_dir)
    results = Results(args.out, options)
    todo = [q for q in questions if any((q.row, m.label) not in results.done for m in modes)]

    bar = ProgressBar(os.path.basename(args.data), unit="questions", enabled=not args.quiet)
    with bar:
        bar.update(0, len(todo))
        if todo:
            evaluation = _Evaluation(args, modes, style, results, bar)
            for group in _by_video(todo):
                skipped += evaluation.run_group(group)
    summary = _summary(len(rows), questions, skipped, results.records(), modes, options)
    summary_path = args.summary or args.out + ".summary.json"
    with open(summary_path, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    print(_table(summary))
    print(f"results: {args.out}; summary: {summary_path}", file=sys.stderr)
    return 0


def _check_arguments(args: argparse.Namespace) -> list[Mode]:
    try:
        modes = parse_modes(args.modes, args.budget, args.window)
        _columns(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for value, flag in ((args.max_frames, "--max-frames"), (args.max_tokens, "-n/--max-tokens"),
                        (args.limit, "--limit")):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if args.fps < 0:
        raise UsageError(f"--fps must be positive (or 0 for exactly --max-frames frames), got {args.fps}")
    for path, what in ((args.data, "data file"), (args.model, "text model GGUF"), (args.mmproj, "mmproj GGUF")):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file ({what})")
    if args.video_dir is not None and not os.path.isdir(args.video_dir):
        raise FileNotFoundError(f"{args.video_dir}: no such folder (--video-dir)")
    return modes


def _columns(args: argparse.Namespace) -> dict:
    return mc.parse_columns(args.columns)


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _run_options(args: argparse.Namespace, fmt: mc.Format, style: str, video_dir: str) -> dict:
    """What the records depend on (a rerun with other values would mix answers): checked on resume.
    The modes are not among them (each record names its mode), nor --limit."""
    return {
        "data": os.path.abspath(args.data), "data_sha256": _file_digest(args.data),
        "video_dir": os.path.abspath(video_dir), "format": fmt.name,
        "columns": {k: list(v) for k, v in sorted(fmt.columns.items())}, "prompt": style,
        "model": os.path.abspath(args.model), "model_bytes": os.path.getsize(args.model),
        "mmproj": os.path.abspath(args.mmproj), "mmproj_bytes": os.path.getsize(args.mmproj),
        "fps": args.fps, "max_frames": args.max_frames, "kv_type": args.kv_type, "system": args.system,
        "max_tokens": args.max_tokens or mc.max_tokens(style),
    }


def _by_video(questions: list[mc.Question]) -> list[list[mc.Question]]:
    """Questions grouped by clip (video file, start, end), in the order of first appearance."""
    groups: dict[tuple, list[mc.Question]] = {}
    for q in questions:
        groups.setdefault((q.video, q.start, q.end), []).append(q)
    return list(groups.values())


class _Evaluation:
    """The model, and what it takes to run one video's questions in every mode."""

    def __init__(self, args: argparse.Namespace, modes: list[Mode], style: str, results: "Results", bar: ProgressBar):
        import statekv

        self.vlm = statekv.load(args.model, args.mmproj, device=args.device, threads=args.threads or None)
        self.args = args
        self.modes = modes
        self.style = style
        self.results = results
        self.bar = bar
        self.max_tokens = args.max_tokens or mc.max_tokens(style)
        self.letter_ids = mc.letter_token_ids(self.vlm.tokenizer)
        self.done_questions = 0

    def run_group(self, group: list[mc.Question]) -> list[mc.Skipped]:
        """Index the group's clip once for the modes that still have questions, ask them; the
        rows skipped (an unreadable video, a question that cannot be asked) with the reason."""
        import statekv

        modes = [m for m in self.modes if any((q.row, m.label) not in self.results.done for q in group)]
        first = group[0]
        began = time.perf_counter()
        try:
            chats = [self._chat(m) for m in modes]
            frames = chats[0].add_video(first.video, start=first.start, end=first.end, others=chats[1:])
        except statekv.VideoError as exc:
            return self._skip_all(group, "unreadable video", str(exc))
        except (ValueError, statekv.ModelError) as exc:  # e.g. a video beyond the model's context
            return self._skip_all(group, "could not be indexed", str(exc))
        index_seconds = time.perf_counter() - began
        skipped = []
        for q in group:
            try:
                for mode, chat in zip(modes, chats):
                    if (q.row, mode.label) not in self.results.done:
                        self.results.add(self._ask(q, mode, chat, frames, index_seconds, [m.label for m in modes]))
            except (ValueError, statekv.ModelError) as exc:  # e.g. a question beyond the context
                skipped.append(mc.Skipped(q.row, q.id, "could not be asked", str(exc)))
            self._advance()
        return skipped

    def _chat(self, mode: Mode):
        a = self.args
        return self.vlm.video_chat(mode=mode.mode, budget=mode.budget, window=mode.window,
                                   fps=None if a.fps == 0 else a.fps, max_frames=a.max_frames, kv_type=a.kv_type,
                                   system=a.system)

    def _skip_all(self, group: list[mc.Question], kind: str, detail: str) -> list[mc.Skipped]:
        for _ in group:
            self._advance()
        return [mc.Skipped(q.row, q.id, kind, detail) for q in group]

    def _advance(self) -> None:
        self.done_questions += 1
        self.bar.update(self.done_questions)

    def _ask(self, q: mc.Question, mode: Mode, chat, frames: int, index_seconds: float, shared: list[str]) -> dict:
        prompt = mc.render(self.style, q)
        began = time.perf_counter()
        prediction = self.vlm.tokenizer.decode(chat.answer_tokens(prompt, self.max_tokens), skip_special_tokens=True)
        answered = time.perf_counter()
        choice = mc.likelihood_choice(chat.question_logits(prompt, last=1)[-1], q, self.letter_ids)
        scored = time.perf_counter()
        parsed = mc.parse(self.style, prediction, q)
        st = chat.stats()
        return {
            "row": q.row, "id": q.id, "mode": mode.label, "video": q.video, "category": q.category,
            "answer": q.answer, "prediction": prediction, "letter": parsed.letter, "correct": parsed.correct,
            "likelihood": None if choice is None else {"letter": choice[0], "correct": choice[0] == q.answer,
                                                       "logprobs": choice[1]},
            "frames": frames, "tokens_detailed": st.get("tokens_detailed"), "tokens_carried": st.get("tokens_carried"),
            "timing": {"index_seconds": index_seconds, "indexed_with": shared,
                       "frame_seconds_median": st["frame_seconds_median"], "answer_seconds": answered - began,
                       "likelihood_seconds": scored - answered},
        }


# ------------------------------------------------------------------------------ results file
class Results:
    """The JSONL results: a header line with the run's options, then one record per (row, mode).
    An existing file is continued when its options are these (else a ``ValueError`` naming the
    first option that differs); a last line cut short by an interruption is dropped."""

    def __init__(self, path: str, options: dict):
        self.path = path
        self._records: list[dict] = []
        if os.path.exists(path) and os.path.getsize(path) > 0:
            self._load(options)
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(json.dumps({"format": RESULTS_FORMAT, "options": options}) + "\n")
        self.done = {(r["row"], r["mode"]) for r in self._records}

    def _load(self, options: dict) -> None:
        with open(self.path, encoding="utf-8") as f:
            text = f.read()
        complete = text.endswith("\n")
        kept = text.split("\n")[:-1]  # what follows the last newline was cut short (or is empty): dropped
        try:
            header = json.loads(kept[0]) if kept else None
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or header.get("format") != RESULTS_FORMAT:
            raise ValueError(f"{self.path}: not a results file of `statekv eval video` (choose another --out)")
        old = header.get("options", {})
        for key in sorted(set(old) | set(options)):
            if old.get(key) != options.get(key):
                raise ValueError(f"{self.path}: written with other options ({key}: {old.get(key)!r:.80} there, "
                                 f"{options.get(key)!r:.80} now); use another --out, or delete it to start over")
        for number, line in enumerate(kept[1:], 2):
            try:
                record = json.loads(line)
                record["row"], record["mode"]  # noqa: B018 (a record has both)
            except (json.JSONDecodeError, TypeError, KeyError):
                raise ValueError(f"{self.path}: line {number} is not a result record") from None
            self._records.append(record)
        if not complete:
            with open(self.path, "w", encoding="utf-8") as f:
                f.write("\n".join(kept) + "\n")

    def add(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self._records.append(record)
        self.done.add((record["row"], record["mode"]))

    def records(self) -> list[dict]:
        return list(self._records)


# ------------------------------------------------------------------------------ summary
def _summary(n_rows: int, questions: list[mc.Question], skipped: list[mc.Skipped], records: list[dict],
             modes: list[Mode], options: dict) -> dict:
    """Per mode: generation and likelihood accuracy (counts, 95% Wilson interval) over the rows
    asked (this run's ``n_rows`` rows but the skipped ones); the skipped rows by reason."""
    rows = {q.row for q in questions} - {s.row for s in skipped}
    table = {}
    for m in modes:
        mine = [r for r in records if r["mode"] == m.label and r["row"] in rows]
        liked = [r["likelihood"] for r in mine if r.get("likelihood") is not None]
        categories = sorted({r["category"] for r in mine if r.get("category")})
        table[m.label] = {"mode": m.mode, "budget": m.budget if m.mode == "statekv" else None,
                          "window": m.window if m.mode == "window" else None, "questions": len(mine),
                          "generation": accuracy(r["correct"] for r in mine),
                          "likelihood": accuracy(lk["correct"] for lk in liked),
                          "by_category": {c: {"generation": accuracy(r["correct"] for r in mine if r.get("category") == c),
                                              "likelihood": accuracy(r["likelihood"]["correct"] for r in mine
                                                                     if r.get("category") == c and r.get("likelihood"))}
                                          for c in categories}}
    by_kind: dict[str, int] = {}
    for s in skipped:
        by_kind[s.kind] = by_kind.get(s.kind, 0) + 1
    return {"rows": n_rows, "asked": len(rows), "modes": table,
            "skipped": {"count": len(skipped), "by_reason": by_kind,
                        "rows": [{"row": s.row, "id": s.id, "reason": s.kind, "detail": s.detail}
                                 for s in sorted(skipped, key=lambda s: s.row)]},
            "options": options}


def _table(summary: dict) -> str:
    header = ("mode", "questions", "generation (lmms-eval letter)", "option likelihood")
    lines = [(label, str(t["questions"]), _with_counts(t["generation"]), _with_counts(t["likelihood"]))
             for label, t in summary["modes"].items()]
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(4)]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    out = [fmt(header), "  ".join("-" * w for w in widths), *map(fmt, lines)]
    out += _category_table(summary)
    sk = summary["skipped"]
    out.append(f"{summary['rows']} rows: {summary['asked']} asked, {sk['count']} skipped" +
               (": " + ", ".join(f"{n} {k}" for k, n in sorted(sk["by_reason"].items())) if sk["count"] else ""))
    for s in sk["rows"][:10]:
        out.append(format_summary([(f"row {s['row']}" + (f" ({s['id']})" if s["id"] else ""),
                                    f"{s['reason']}: {s['detail']}")]))
    if sk["count"] > 10:
        out.append(f"  ... {sk['count'] - 10} more in the summary JSON")
    return "\n".join(out)


def _category_table(summary: dict) -> list[str]:
    """Generation accuracy per category (the benchmark's task type) and mode, when rows have one."""
    modes = summary["modes"]
    categories = sorted({c for t in modes.values() for c in t.get("by_category", {})})
    if not categories:
        return []
    header = ("category", *modes)
    lines = [(c, *(_with_counts(t["by_category"][c]["generation"]) if c in t["by_category"] else "-"
                   for t in modes.values())) for c in categories]
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return ["", "generation accuracy by category:", fmt(header), "  ".join("-" * w for w in widths), *map(fmt, lines)]


def _with_counts(acc: dict) -> str:
    return f"{acc['correct']}/{acc['n']}  {format_accuracy(acc)}" if acc["n"] else "-"
