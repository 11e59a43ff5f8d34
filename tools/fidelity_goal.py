"""The goal table of docs/fidelity.md from `statekv eval long-context`'s report.json: at each
context c, StateKV at B = c/8 and the window holding the same number of tokens (R = B / step
steps; it also keeps the prefix), each as its difference to full with the 95% paired-bootstrap
interval, for the pooled retrieval questions (exact and choice), the copy task and KL.

    python tools/fidelity_goal.py OUT/report.json [--step 128] [--fraction 8]
    python tools/fidelity_goal.py OUT/results.jsonl --by-distance [--step 128]

It only picks rows out of the report (every number is computed by the eval); a mode the run did
not include is shown as "-". ``--by-distance`` reads the results file instead: the pooled
retrieval questions of every checkpoint, by how far back their fact was (tokens from the fact's
first token to the end of the context), as hits / questions per mode.
"""
from __future__ import annotations

import argparse
import json

METRICS = (("retrieval", "exact", "retrieval exact (pts)"), ("retrieval", "choice", "retrieval choice (pts)"),
           ("copy", "top1", "copy top-1 (pts)"), ("ppl", "kl", "KL to full (nats/token)"))


def cell(row: dict | None, digits: int) -> str:
    if row is None:
        return "-"
    lo, hi = row["ci95"]
    interval = f" [{lo:+.{digits}f}, {hi:+.{digits}f}]" if lo == lo else ""
    return f"{row['delta']:+.{digits}f}{interval}"


BUCKETS = ((0, 512), (512, 2048), (2048, 8192), (8192, 1 << 40))


def by_distance(path: str, step: int, score: str) -> None:
    hits: dict[str, list[list[int]]] = {}
    for line in open(path, encoding="utf-8"):
        r = json.loads(line)
        if r.get("kind") != "run" or r["step_tokens"] != step:
            continue
        counts = hits.setdefault(r["mode"], [[0, 0] for _ in BUCKETS])
        for cp in r["checkpoints"]:
            for q in cp["questions"]:
                k = next(i for i, (lo, hi) in enumerate(BUCKETS) if lo <= q["distance"] < hi)
                counts[k][0] += int(q[score])
                counts[k][1] += 1
    names = [f"{lo}-{hi}" if hi < 1 << 40 else f">= {lo}" for lo, hi in BUCKETS]
    print(f"| mode | " + " | ".join(f"{n} tokens back" for n in names) + " |")
    print("| --- |" + " ---: |" * len(BUCKETS))
    for mode, counts in hits.items():
        print(f"| {mode} | " + " | ".join(f"{h}/{n} ({100 * h / n:.0f}%)" if n else "-" for h, n in counts) + " |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report")
    p.add_argument("--step", type=int, default=128)
    p.add_argument("--fraction", type=int, default=8, help="B = context / fraction")
    p.add_argument("--by-distance", action="store_true", help="REPORT is a results.jsonl: retrieval by distance")
    p.add_argument("--score", default="exact", choices=("exact", "choice"))
    a = p.parse_args()
    if a.by_distance:
        by_distance(a.report, a.step, a.score)
        return 0
    rows = json.load(open(a.report, encoding="utf-8"))["rows"]
    at = {(r["task"], r["score"], r["step_tokens"], r["context"], r["mode"]): r for r in rows}
    contexts = sorted({r["context"] for r in rows if r["step_tokens"] == a.step})
    print(f"| context | mode | " + " | ".join(label for _, _, label in METRICS) + " | documents |")
    print("| ---: | --- |" + " ---: |" * (len(METRICS) + 1))
    for c in contexts:
        budget = c // a.fraction
        for mode in (f"statekv:B={budget}", f"window:R={budget // a.step}"):
            cells = [cell(at.get((t, s, a.step, c, mode)), 3 if s == "kl" else 1) for t, s, _ in METRICS]
            docs = at.get(("ppl", "kl", a.step, c, mode), {}).get("paired_docs", "-")
            print(f"| {c} | {mode} | " + " | ".join(cells) + f" | {docs} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
