"""How close each cache mode stays to full attention on a trained text model, text chunks as steps.

Documents of natural text with facts inserted (statekv/eval/tasks.py; text: the Python
documentation's topic pages shipped with CPython, PSF licence) are prefilled as a video is: a
prefix (Gemma's user-turn header), then steps of N tokens, in each mode. At each context (2K, 4K,
... tokens in the detailed cache D) the same session answers, over D, every question about facts
placed before that point, and scores two continuations of the document; asking never changes the
state, so one prefill per (document, mode, step size) serves every context.

Tasks and scores:
  passkey, multikey, variable  exact match of the greedy answer's first number (``exact``), and
                               whether the right value has the highest log-likelihood among it and
                               7 distractors (``choice``; multikey: the other codes first)
  ppl                          perplexity of the document's next 64 tokens, and the mean KL
                               divergence of each mode's next-token distribution from full's
  copy                         top-1 accuracy on a 32-token passage repeated from far back

Modes (--modes, ';'-separated): full; window:R=<steps>; statekv:B=<tokens>; any other key=value is
passed to Model.session as a keyword (e.g. "statekv:B=512,score_decay=0.5").

Results are appended to OUT/results.jsonl per (document, mode, step size): a rerun skips what is
done and refuses a file made with other options. Then OUT/report.json, OUT/tables.md (a table per
task: mean over documents, and the difference to full with a 95% paired-bootstrap interval over
documents) and OUT/pareto.png (accuracy against per-step GFLOPs and ms; matplotlib).

Example:
  statekv eval long-context -m gemma-3-270m-q4_k_m.gguf --docs 4 --contexts 2048,4096,8192 --steps 128
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..cli.errors import UsageError
from .tasks import TASKS, Document, Question, make_document
from .text_source import SOURCE

__all__ = ["ModeSpec", "parse_modes", "add_arguments", "run", "evaluate", "aggregate", "ModelShape"]

DEFAULT_MODES = ("full;window:R=1;window:R=2;window:R=4;window:R=8;"
                 "statekv:B=128;statekv:B=256;statekv:B=512;statekv:B=1024;statekv:B=2048")
FORMAT_VERSION = 1
BOOTSTRAP_RESAMPLES = 2000
# "retrieval": every question of the three question tasks pooled (more questions per cell, so a
# tighter interval than any one task's)
RETRIEVAL = "retrieval"
METRICS = [(t, s) for t in (*TASKS, RETRIEVAL) for s in ("exact", "choice")] + [("copy", "top1"),
                                                                                ("ppl", "perplexity"), ("ppl", "kl")]


# ---- modes ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModeSpec:
    """One column of the grid: a cache mode, its budget B or window R, and extra session keywords."""
    label: str
    mode: str
    budget: int = 4096
    window: int = 16
    extra: tuple = ()

    def session_kwargs(self) -> dict:
        return dict(mode=self.mode, budget=self.budget, window=self.window, **dict(self.extra))


def _value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_modes(text: str) -> list[ModeSpec]:
    """``"full;window:R=2;statekv:B=512,score_decay=0.5"`` -> mode specs (UsageError if malformed)."""
    specs = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        mode, _, params = part.partition(":")
        mode = mode.strip()
        if mode not in ("full", "window", "statekv"):
            raise UsageError(f"--modes: unknown mode {mode!r} in {part!r} (expected full, window:R=<steps> or "
                             f"statekv:B=<tokens>, with optional key=value session options)")
        kw: dict[str, Any] = {}
        for item in (x.strip() for x in params.split(",") if x.strip()):
            key, eq, val = item.partition("=")
            if not eq or not key.strip() or not val.strip():
                raise UsageError(f"--modes: {item!r} in {part!r} is not key=value")
            kw[key.strip()] = _value(val.strip())
        needs = {"window": "R", "statekv": "B"}.get(mode)
        if needs and needs not in kw:
            raise UsageError(f"--modes: {part!r} needs {needs}=<{'steps' if needs == 'R' else 'tokens'}>")
        budget, window = kw.pop("B", 4096), kw.pop("R", 16)
        for name, v in (("B", budget), ("R", window)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise UsageError(f"--modes: {name} in {part!r} must be a positive integer, got {v!r}")
        specs.append(ModeSpec(part.replace(" ", ""), mode, budget, window, tuple(sorted(kw.items()))))
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise UsageError(f"--modes names a mode twice: {labels}")
    return sorted(specs, key=lambda s: s.mode != "full")  # full first: it is the KL reference


def open_session(model, spec: ModeSpec, kv_type: str, expected_length: int):
    """``model.session`` with the spec's options; an option the session refuses is a clear error."""
    try:
        return model.session(kv_type=kv_type, expected_length=expected_length, **spec.session_kwargs())
    except TypeError as exc:
        raise ValueError(f"--modes {spec.label}: the session does not take these options ({exc})") from None
    except ValueError as exc:
        raise ValueError(f"--modes {spec.label}: {exc}") from None


# ---- cost of a step ------------------------------------------------------------------------------

@dataclass
class ModelShape:
    """What the per-step FLOPs need: the model's info and which layers see a sliding window."""
    info: dict
    sliding_window: int  # 0: no sliding layers
    n_sliding: int

    @classmethod
    def of(cls, model) -> "ModelShape":
        from ..gguf_io import read_gguf_kv

        info = model.info()
        kv = read_gguf_kv(model.path)
        arch = kv.get("general.architecture", info["architecture"])
        window = int(kv.get(f"{arch}.attention.sliding_window", 0) or 0)
        pattern = int(kv.get(f"{arch}.attention.sliding_window_pattern", 6) or 6)
        n_sliding = sum(1 for il in range(info["n_layer"]) if il % pattern < pattern - 1) if window else 0
        return cls(info, window, n_sliding)

    def step_flops(self, n: int, past: int, visible_global: int) -> float:
        """FLOPs of a step of ``n`` tokens after ``past`` tokens whose global layers see
        ``visible_global`` earlier keys (the mode's carried state); sliding layers see their window
        in every mode (statekv.bench.frames.step_flops for each kind of layer)."""
        from ..bench.frames import step_flops

        n_global = self.info["n_layer"] - self.n_sliding
        total = step_flops(dict(self.info, n_layer=n_global), n, visible_global) if n_global else 0.0
        if self.n_sliding:
            w = self.sliding_window
            keys = sum(min(w, past + i + 1) for i in range(n))  # query at past + i sees (past + i - w, past + i]
            causal = n * (n + 1) / 2
            total += step_flops(dict(self.info, n_layer=self.n_sliding), n, 0)
            total += self.n_sliding * 2 * 2 * self.info["n_head"] * self.info["head_dim"] * (keys - causal)
        return total


def visible_global(spec: ModeSpec, past: int, prefix: int, step_tokens: int) -> int:
    """Earlier keys a global layer of this mode attends to, for a step starting after ``past``
    tokens (steps end at multiples of ``step_tokens``; the first one holds what follows the prefix)."""
    if spec.mode == "full":
        return past
    if spec.mode == "window":
        return past if past // step_tokens <= spec.window else prefix + spec.window * step_tokens
    return min(spec.budget, past)


# ---- one run -------------------------------------------------------------------------------------

def _log_softmax(rows: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.float64)
    m = rows.max(axis=1, keepdims=True)
    return rows - m - np.log(np.exp(rows - m).sum(axis=1, keepdims=True))


def kl_divergence(reference: np.ndarray, logp: np.ndarray) -> np.ndarray:
    """KL(P_ref || P) per row, in nats, from log-probabilities."""
    return (np.exp(reference) * (reference - logp)).sum(axis=1)


def first_number(text: str) -> Optional[str]:
    m = re.search(r"\d+", text)
    return m.group(0) if m else None


def answer(session, tokenizer, q: Question, max_new_tokens: int) -> dict:
    """Both scores of one question: the greedy answer's first number, and the candidates' log-likelihoods."""
    from ..families.base import encode

    generated = tokenizer.decode(list(session.generate(q.prompt, max_new_tokens)), skip_special_tokens=True)
    scores = []
    for cand in q.candidates:
        ids = encode(tokenizer, " " + cand)
        # the rows that predict the candidate's tokens: the prompt's last and the candidate's but last
        rows = _log_softmax(np.asarray(session.question_logits(q.prompt + ids, last=len(ids) + 1))[:-1])
        scores.append(float(rows[np.arange(len(ids)), ids].sum()))
    return {"task": q.task, "asked_from": q.context, "value": q.value, "answer": generated,
            "exact": first_number(generated) == q.value, "choice": int(np.argmax(scores)) == 0}


def evaluate_checkpoint(session, tokenizer, doc: Document, context: int, reference: Optional[np.ndarray],
                        max_new_tokens: int) -> tuple[dict, np.ndarray]:
    """Every score at checkpoint ``context``; returns the record and this run's log-probabilities of
    the continuation (full's are the KL reference of the other modes)."""
    cont = doc.continuation(context)
    logp = _log_softmax(np.asarray(session.question_logits(cont))[:-1])
    nll = -logp[np.arange(len(cont) - 1), cont[1:]]
    kl = kl_divergence(reference if reference is not None else logp, logp)
    passage = doc.copy_passage(context)
    top1 = np.asarray(session.question_logits(passage))[:-1].argmax(axis=1)
    questions = []
    for q in doc.questions_at(context):
        a = answer(session, tokenizer, q, max_new_tokens)
        a["distance"] = context - min(f.start for f in q.facts)
        questions.append(a)
    rec = {"context": context, "ppl": {"nll": float(nll.mean()), "n": int(nll.size), "kl": float(kl.mean())},
           "copy": {"top1": float((top1 == np.asarray(passage[1:])).mean()), "n": len(passage) - 1},
           "questions": questions}
    return rec, logp


def evaluate(model, tokenizer, shape: ModelShape, doc: Document, step_tokens: int, spec: ModeSpec, *,
             kv_type: str = "f16", reference: Optional[dict] = None, max_new_tokens: int = 8,
             on_step: Callable[[], None] = lambda: None) -> tuple[dict, dict]:
    """Prefill ``doc`` in steps of ``step_tokens`` in mode ``spec`` and score every checkpoint.

    ``reference``: full mode's continuation log-probabilities per context (None for full itself).
    Returns the record (JSON-ready) and this run's log-probabilities per context."""
    prefix = doc.prefix_len
    if prefix >= step_tokens:
        raise ValueError(f"a step of {step_tokens} tokens must be longer than the prefix ({prefix} tokens)")
    session = open_session(model, spec, kv_type, len(doc.ids) + 64)
    session.prefill(doc.ids[:prefix])
    checkpoints, logps, start = [], {}, prefix
    for end in range(step_tokens, doc.contexts[-1] + 1, step_tokens):
        session.add_step(doc.ids[start:end])
        on_step()
        if end in doc.contexts:
            rec, logps[end] = evaluate_checkpoint(session, tokenizer, doc, end,
                                                  None if reference is None else reference[end], max_new_tokens)
            stats = session.stats()
            previous = max((c for c in doc.contexts if c < end), default=0)
            span = stats["step_seconds"][previous // step_tokens:end // step_tokens]  # the steps since the last checkpoint
            rec.update(step_ms=1e3 * statistics.median(span),
                       gflops=shape.step_flops(step_tokens, end - step_tokens,
                                               visible_global(spec, end - step_tokens, prefix, step_tokens)) / 1e9,
                       tokens_carried=stats["tokens_carried"], bytes_carried=stats["bytes_carried"],
                       bytes_detailed=stats["bytes_detailed"])
            checkpoints.append(rec)
        start = end
    return {"kind": "run", "doc": doc.seed, "mode": spec.label, "step_tokens": step_tokens,
            "checkpoints": checkpoints}, logps


# ---- the results file ----------------------------------------------------------------------------

class Results:
    """OUT/results.jsonl: a header with the options that define a record, then one line per run.

    A file made with other options is refused (naming what differs); a last line cut short by an
    interrupted run is dropped."""

    def __init__(self, path: Path, options: dict):
        self.path = path
        self.records: list[dict] = []
        if path.exists() and path.stat().st_size:
            self._load(options)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._write({"kind": "header", "options": options}, mode="w")

    def _load(self, options: dict) -> None:
        lines = self.path.read_text(encoding="utf-8").split("\n")
        parsed = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                parsed.append(json.loads(line))
            except json.JSONDecodeError:
                if i == len(lines) - 1:  # cut short while writing: that run is done again
                    break
                raise ValueError(f"{self.path}, line {i + 1}: not a JSON record") from None
        if not parsed or parsed[0].get("kind") != "header":
            raise ValueError(f"{self.path}: not a results file of `statekv eval long-context` (no header line)")
        theirs = parsed[0].get("options", {})
        differ = sorted(k for k in set(theirs) | set(options) if theirs.get(k) != options.get(k))
        if differ:
            what = "; ".join(f"{k}: {theirs.get(k)!r} there, {options.get(k)!r} now" for k in differ)
            raise UsageError(f"{self.path} holds results made with other options ({what}): "
                             f"pass another --out, or the same options")
        self.records = [r for r in parsed[1:] if r.get("kind") == "run"]
        # rewrite without a cut line, so that appending starts on a line of its own
        self._write_all(parsed[0])

    def _write_all(self, header: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in [header] + self.records), encoding="utf-8")
        os.replace(tmp, self.path)

    def _write(self, record: dict, mode: str = "a") -> None:
        with open(self.path, mode, encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()

    def done(self) -> set:
        return {(r["doc"], r["mode"], r["step_tokens"]) for r in self.records}

    def append(self, record: dict) -> None:
        self._write(record)
        self.records.append(record)


# ---- aggregation ---------------------------------------------------------------------------------

def per_document(checkpoint: dict, task: str, score: str) -> Optional[float]:
    """One document's value of a metric at one checkpoint (None if it has no such question)."""
    if task == "ppl":
        return checkpoint["ppl"]["nll" if score == "perplexity" else "kl"]
    if task == "copy":
        return 100.0 * checkpoint["copy"]["top1"]
    hits = [q[score] for q in checkpoint["questions"] if _asks(q, task)]
    return 100.0 * sum(hits) / len(hits) if hits else None


def _asks(question: dict, task: str) -> bool:
    return task == RETRIEVAL or question["task"] == task


def paired_bootstrap(diffs: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of paired per-document differences (resampling documents)."""
    if diffs.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, diffs.size, (BOOTSTRAP_RESAMPLES, diffs.size))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _shown(task: str, score: str, value: float) -> float:
    """Perplexity is averaged as mean NLL over documents and shown as exp(mean NLL)."""
    return float(np.exp(value)) if score == "perplexity" else value


def aggregate(records: list[dict]) -> list[dict]:
    """Rows of (task, score, step_tokens, context, mode): mean over documents, n, the paired
    difference to full over the documents both have, its 95% bootstrap interval, and the costs.
    Perplexity's difference is relative (exp of the mean NLL difference, minus 1, in %)."""
    by_key: dict[tuple, dict] = {}
    for r in records:
        for cp in r["checkpoints"]:
            by_key.setdefault((r["step_tokens"], cp["context"], r["mode"]), {})[r["doc"]] = cp
    rows = []
    for (step, context, mode), docs in sorted(by_key.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] != "full")):
        full = by_key.get((step, context, "full"), {})
        cost = {k: statistics.median(cp[k] for cp in docs.values())
                for k in ("step_ms", "gflops", "tokens_carried", "bytes_carried", "bytes_detailed")}
        for task, score in METRICS:
            vals = {d: per_document(cp, task, score) for d, cp in docs.items()}
            vals = {d: v for d, v in vals.items() if v is not None}
            if not vals:
                continue
            n_questions = sum(1 for cp in docs.values() for q in cp["questions"] if _asks(q, task))
            paired = [d for d in vals if d in full and per_document(full[d], task, score) is not None]
            diffs = np.array([vals[d] - per_document(full[d], task, score) for d in paired])
            lo, hi = paired_bootstrap(diffs)
            delta = float(diffs.mean()) if diffs.size else float("nan")
            if score == "perplexity":
                delta, lo, hi = (100.0 * (np.exp(x) - 1.0) for x in (delta, lo, hi))
            rows.append({"task": task, "score": score, "step_tokens": step, "context": context, "mode": mode,
                         "docs": len(vals), "questions": n_questions,
                         "value": _shown(task, score, float(np.mean(list(vals.values())))),
                         "delta": float(delta), "ci95": [float(lo), float(hi)], "paired_docs": len(paired), **cost})
    return rows


def _cell(row: dict) -> str:
    digits = 3 if row["score"] == "kl" else (2 if row["score"] == "perplexity" else 1)
    value = f"{row['value']:.{digits}f}"
    if row["mode"] == "full":
        return value
    lo, hi = row["ci95"]
    if not np.isfinite(row["delta"]):
        return value
    interval = f" [{lo:+.{digits}f}, {hi:+.{digits}f}]" if np.isfinite(lo) else ""
    return f"{value} ({row['delta']:+.{digits}f}{interval})"


UNITS = {"exact": "accuracy %, exact match of the greedy answer",
         "choice": "accuracy %, the right value the most likely of the candidates",
         "top1": "top-1 accuracy % on the repeated passage", "perplexity": "perplexity (difference: % of full's)",
         "kl": "mean KL(full || mode), nats per token"}


def format_tables(rows: list[dict]) -> str:
    """A markdown table per task, score and step size: modes as rows, contexts as columns; each
    cell ``value (difference to full [95% interval])``."""
    out = []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["score"], r["step_tokens"]), []).append(r)
    for (task, score, step), rs in groups.items():
        contexts = sorted({r["context"] for r in rs})
        modes = list(dict.fromkeys(r["mode"] for r in rs))
        cell = {(r["mode"], r["context"]): r for r in rs}
        docs = sorted({r["docs"] for r in rs})
        out.append(f"\n### {task} ({UNITS[score]}), steps of {step} tokens, "
                   f"{'/'.join(map(str, docs))} documents\n")
        out.append("| mode | " + " | ".join(f"{c} tokens" for c in contexts) + " |")
        out.append("| --- |" + " ---: |" * len(contexts))
        for m in modes:
            out.append(f"| {m} | " + " | ".join(_cell(cell[(m, c)]) if (m, c) in cell else "-" for c in contexts) + " |")
    costs: dict[tuple, dict] = {}
    for r in rows:
        costs.setdefault((r["step_tokens"], r["mode"]), {})[r["context"]] = r
    contexts = sorted({r["context"] for r in rows})
    out.append("\n### cost per step (median ms measured, GFLOPs computed from the shapes; C = carried tokens)\n")
    out.append("| step | mode | " + " | ".join(f"{c}: ms / GFLOP / C" for c in contexts) + " |")
    out.append("| ---: | --- |" + " ---: |" * len(contexts))
    for (step, mode), by_c in costs.items():
        out.append(f"| {step} | {mode} | " + " | ".join(
            f"{by_c[c]['step_ms']:.0f} / {by_c[c]['gflops']:.1f} / {by_c[c]['tokens_carried']:.0f}" if c in by_c else "-"
            for c in contexts) + " |")
    return "\n".join(out).lstrip("\n") + "\n"


def plot_pareto(rows: list[dict], path: str) -> None:
    """Accuracy against per-step cost (GFLOPs and measured ms) at the largest context of the
    smallest step size measured, one panel row per accuracy metric; the Pareto front is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step = min(r["step_tokens"] for r in rows)
    context = max(r["context"] for r in rows if r["step_tokens"] == step)
    metrics = [(t, s) for t, s in METRICS if s in ("exact", "top1")]
    fig, axes = plt.subplots(len(metrics), 2, figsize=(10, 3.2 * len(metrics)), dpi=110, squeeze=False)
    for i, (task, score) in enumerate(metrics):
        pts = [r for r in rows if (r["task"], r["score"], r["step_tokens"], r["context"]) == (task, score, step, context)]
        for j, (cost, xlabel) in enumerate((("gflops", "GFLOPs per step (computed)"), ("step_ms", "ms per step (measured)"))):
            ax = axes[i][j]
            for kind, color in (("full", "black"), ("window", "tab:orange"), ("statekv", "tab:blue")):
                sel = [r for r in pts if r["mode"].split(":")[0] == kind]
                ax.scatter([r[cost] for r in sel], [r["value"] for r in sel], color=color, label=kind, zorder=3)
                for r in sel:
                    ax.annotate(r["mode"].split(":", 1)[-1], (r[cost], r["value"]), fontsize=7,
                                xytext=(3, 3), textcoords="offset points")
            front, best = [], -np.inf
            for r in sorted(pts, key=lambda r: (r[cost], -r["value"])):
                if r["value"] > best:
                    front.append(r)
                    best = r["value"]
            ax.plot([r[cost] for r in front], [r["value"] for r in front], color="gray", lw=0.8, zorder=2)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{task} {score} %")
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=8)
    fig.suptitle(f"{context} tokens of context, steps of {step} tokens")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---- command line --------------------------------------------------------------------------------

def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", required=True, help="text GGUF with Gemma's chat tokens (e.g. Gemma 3 270M)")
    p.add_argument("--modes", default=DEFAULT_MODES,
                   help="';'-separated modes: full, window:R=<steps>, statekv:B=<tokens>, plus key=value options "
                        "passed to Model.session (default: %(default)s)")
    p.add_argument("--contexts", type=_int_list, default=[2048, 4096, 8192, 16384],
                   help="checkpoints, tokens in the detailed cache; multiples of every step size (default 2048,4096,8192,16384)")
    p.add_argument("--steps", type=_int_list, default=[128, 256], help="tokens per step (default 128,256)")
    p.add_argument("--docs", type=int, default=8, help="documents (default 8)")
    p.add_argument("--seed", type=int, default=0, help="document d is generated from (seed + d)")
    p.add_argument("--keys", type=int, default=4, help="secret codes per span of the multikey task (default 4)")
    p.add_argument("--ppl-tokens", type=int, default=64, help="held-out tokens scored per checkpoint (default 64)")
    p.add_argument("--copy-tokens", type=int, default=32, help="tokens of the repeated passage (default 32)")
    p.add_argument("--distractors", type=int, default=7, help="wrong values the right one competes with (default 7)")
    p.add_argument("--max-new-tokens", type=int, default=8, help="greedy answer length (default 8)")
    p.add_argument("-ctk", "--kv-type", default="f16", help="detailed-cache type: f32, f16, q8_0 (default f16)")
    p.add_argument("-t", "--threads", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("-o", "--out", default="eval-long-context", help="output folder (default %(default)s)")
    p.add_argument("--no-plot", action="store_true", help="skip the Pareto plot (needs matplotlib)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _check(args: argparse.Namespace) -> list[ModeSpec]:
    specs = parse_modes(args.modes)
    if not any(s.mode == "full" for s in specs):
        raise UsageError("--modes must include full: every score is compared with it")
    for name in ("docs", "keys", "ppl_tokens", "copy_tokens", "distractors", "max_new_tokens"):
        if getattr(args, name) < (2 if name in ("ppl_tokens", "copy_tokens") else 1):
            raise UsageError(f"--{name.replace('_', '-')} must be at least "
                             f"{2 if name in ('ppl_tokens', 'copy_tokens') else 1}, got {getattr(args, name)}")
    bad = [(c, n) for c in args.contexts for n in args.steps if c % n]
    if bad:
        raise UsageError(f"--contexts must be multiples of every step size (--steps): {bad[0][0]} is not a multiple "
                         f"of {bad[0][1]}")
    if len(set(args.contexts)) != len(args.contexts):
        raise UsageError(f"--contexts repeats a value: {args.contexts}")
    if not os.path.isfile(args.model):
        raise UsageError(f"-m {args.model}: no such file")
    return specs


def identity(args: argparse.Namespace) -> dict:
    """What a record's meaning depends on (a resumed file must match); --docs, --modes and --steps
    only select which records to make."""
    return {"version": FORMAT_VERSION, "model": os.path.basename(args.model), "model_bytes": os.path.getsize(args.model),
            "text": SOURCE, "seed": args.seed, "contexts": sorted(args.contexts), "keys": args.keys,
            "ppl_tokens": args.ppl_tokens, "copy_tokens": args.copy_tokens, "distractors": args.distractors,
            "max_new_tokens": args.max_new_tokens, "kv_type": args.kv_type}


def run(args: argparse.Namespace) -> int:
    from ..model import Model
    from ..progress import ProgressBar
    from ..text import tokenizer_from_gguf

    specs = _check(args)
    out = Path(args.out)
    results = Results(out / "results.jsonl", identity(args))
    model = Model(args.model, device=args.device, threads=args.threads)
    tokenizer = tokenizer_from_gguf(args.model)
    shape = ModelShape.of(model)
    for spec in specs:  # an option the session refuses fails now, not after hours of other modes
        open_session(model, spec, args.kv_type, 1024)
    done = results.done()
    work = [(d, n, s) for d in range(args.docs) for n in args.steps for s in specs
            if (args.seed + d, s.label, n) not in done]
    steps_of = {n: max(args.contexts) // n for n in args.steps}
    bar = ProgressBar("long-context", unit="steps", enabled=not args.quiet)
    total, finished = sum(steps_of[n] for _, n, _ in work), 0
    if done:
        print(f"{out / 'results.jsonl'}: {len(results.records)} runs done, {len(work)} to go", file=sys.stderr)
    with bar:
        docs: dict[int, Document] = {}
        references: dict[tuple, dict] = {}
        for d, n, spec in work:
            seed = args.seed + d
            if seed not in docs:
                docs = {seed: make_document(tokenizer, seed, args.contexts, keys=args.keys, ppl_tokens=args.ppl_tokens,
                                            copy_tokens=args.copy_tokens, distractors=args.distractors)}
                references = {}
            doc = docs[seed]

            def tick():
                nonlocal finished
                finished += 1
                bar.update(finished, total)

            common = dict(kv_type=args.kv_type, max_new_tokens=args.max_new_tokens)
            if spec.mode != "full" and (seed, n) not in references:
                # resumed after full was recorded: its continuation log-probabilities again, not recorded twice
                full = next(s for s in specs if s.mode == "full")
                references[(seed, n)] = evaluate(model, tokenizer, shape, doc, n, full, **common)[1]
            record, logps = evaluate(model, tokenizer, shape, doc, n, spec, on_step=tick,
                                     reference=None if spec.mode == "full" else references[(seed, n)], **common)
            if spec.mode == "full":
                references[(seed, n)] = logps
            results.append(record)
    rows = aggregate(results.records)
    tables = format_tables(rows)
    (out / "tables.md").write_text(tables, encoding="utf-8")
    with open(out / "report.json", "w", encoding="utf-8") as fh:
        json.dump({"options": identity(args), "modes": [s.label for s in specs], "rows": rows}, fh, indent=1)
    print(tables)
    print(f"wrote {out / 'report.json'}, {out / 'tables.md'}", file=sys.stderr)
    if not args.no_plot and rows:
        try:
            plot_pareto(rows, str(out / "pareto.png"))
            print(f"wrote {out / 'pareto.png'}", file=sys.stderr)
        except ImportError:
            print("statekv: note: matplotlib is not installed: no Pareto plot (pip install matplotlib)", file=sys.stderr)
    return 0
