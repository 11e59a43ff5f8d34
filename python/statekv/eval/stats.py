"""Accuracy with a confidence interval, for evaluation tables.

Example::

    from statekv.eval.stats import accuracy, wilson_interval

    wilson_interval(45, 100)        # (0.3561, 0.5476): 95% interval of 45 correct out of 100
    accuracy([True, False, True])   # {"n": 3, "correct": 2, "accuracy": 0.667, "ci95": [0.208, 0.939]}
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

__all__ = ["Z95", "wilson_interval", "accuracy", "format_accuracy"]

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(correct: int, n: int, z: float = Z95) -> Optional[tuple[float, float]]:
    """Wilson's score interval for a proportion of ``correct`` out of ``n`` (None when ``n`` is 0).
    Unlike the normal approximation it stays inside [0, 1] and is usable at 0 or ``n`` correct
    and for the small counts of a subset of a benchmark."""
    if not 0 <= correct <= n:
        raise ValueError(f"correct must be between 0 and n, got {correct} of {n}")
    if n == 0:
        return None
    p = correct / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy(outcomes: Iterable[bool]) -> dict:
    """``n``, ``correct``, ``accuracy`` (None when n is 0) and ``ci95`` (Wilson) of a list of outcomes."""
    values = [bool(v) for v in outcomes]
    n, k = len(values), sum(values)
    ci = wilson_interval(k, n)
    return {"n": n, "correct": k, "accuracy": k / n if n else None, "ci95": list(ci) if ci else None}


def format_accuracy(acc: dict) -> str:
    """``45.0% [35.6, 54.8]`` (percent, with the 95% interval); ``-`` without outcomes."""
    if not acc["n"]:
        return "-"
    lo, hi = acc["ci95"]
    return f"{100 * acc['accuracy']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
