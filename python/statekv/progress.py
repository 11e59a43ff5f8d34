"""Terminal progress and summaries for the command line (stdlib only, reusable by any command).

Example::

    bar = ProgressBar("clip.mp4", unit="frames")
    for done in range(1, 41):
        ...                                   # work
        bar.update(done, 40)
    bar.close()
    print(format_summary([("frames", "40"), ("peak memory", format_bytes(peak_memory_bytes()))]),
          file=sys.stderr)

On a terminal the bar is redrawn in place (at most ``redraw_hz`` times a second). Anywhere else
(a log file, a pipe, a test's captured stderr) carriage returns would leave a mess, so it prints
a plain line only at each tenth of the work, and only once the job has run for
``quiet_seconds``: a short job prints nothing, a long one a few lines.
"""
from __future__ import annotations

import math
import shutil
import sys
import time
from typing import Optional, Sequence, TextIO

__all__ = ["ProgressBar", "format_bytes", "format_duration", "format_rate", "format_summary", "peak_memory_bytes"]


def format_duration(seconds: Optional[float]) -> str:
    """``850 ms``, ``12.3 s``, ``4:05``, ``1:02:03``; ``-`` for unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 1.0:
        return f"{seconds * 1000:.0f} ms" if seconds >= 0.0095 else f"{seconds * 1000:.1f} ms"
    if seconds < 60.0:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_bytes(n: Optional[float]) -> str:
    """``512 B``, ``24.0 MiB``, ...; ``-`` for unknown."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024.0 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024.0
    raise AssertionError("unreachable")


def format_rate(count: float, seconds: Optional[float], unit: str) -> str:
    """``3.2 frames/s`` (``-`` when no time has passed yet)."""
    if not seconds or seconds <= 0:
        return f"- {unit}/s"
    rate = count / seconds
    return f"{rate:.1f} {unit}/s" if rate >= 0.95 else f"{rate:.2f} {unit}/s"


def peak_memory_bytes() -> Optional[int]:
    """Peak resident memory of this process so far (``None`` where ``resource`` is missing, e.g. Windows).
    Host memory only: a GPU's memory is not counted."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def format_summary(rows: Sequence[tuple[str, str]], indent: str = "  ") -> str:
    """Rows of (name, value) as aligned ``name  value`` lines (no trailing newline)."""
    if not rows:
        return ""
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{indent}{name:<{width}}  {value}" for name, value in rows)


class ProgressBar:
    """Progress of ``done`` out of ``total`` units (``total`` may be unknown) on ``stream``.

    ``label`` names the job (e.g. the video file); ``unit`` the things counted. ``enabled=False``
    makes every call a no-op, so callers need no ``if quiet`` of their own.
    """

    def __init__(self, label: str, unit: str = "frames", *, stream: Optional[TextIO] = None, enabled: bool = True,
                 redraw_hz: float = 10.0, quiet_seconds: float = 5.0, clock=time.perf_counter):
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.interactive = enabled and _is_terminal(self.stream)
        self.min_redraw_interval = 1.0 / redraw_hz
        self.quiet_seconds = quiet_seconds
        self._clock = clock
        self._start = clock()
        self._last_draw = -math.inf
        self._last_tenth = 0
        self._drawn = False  # something is on the current terminal line
        self._closed = False
        self.done = 0
        self.total: Optional[int] = None

    @property
    def elapsed(self) -> float:
        return self._clock() - self._start

    def update(self, done: int, total: Optional[int] = None) -> None:
        """Record that ``done`` units are finished (of ``total``, if known)."""
        self.done = int(done)
        if total is not None:
            self.total = int(total)
        if not self.enabled or self._closed:
            return
        now = self._clock()
        if self.interactive:
            finished = self.total is not None and self.done >= self.total
            if finished or now - self._last_draw >= self.min_redraw_interval:
                self._draw_in_place(now)
        else:
            self._maybe_print_line(now)

    def close(self) -> None:
        """Finish the bar: the terminal line is drawn a last time and ended; idempotent."""
        if not self.enabled or self._closed:
            return
        self._closed = True
        if self.interactive:
            self._draw_in_place(self._clock())
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def clear(self) -> None:
        """Erase the terminal line (before printing something else mid-job, e.g. an error)."""
        if self.interactive and self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.clear()  # leave the line free for the error message
            self._closed = True

    # ---- rendering -----------------------------------------------------------------------------

    def status(self, now: Optional[float] = None) -> str:
        """``12/40 frames  3.2 frames/s  ETA 9.0 s`` (count, rate and time left when known)."""
        elapsed = (self._clock() if now is None else now) - self._start
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        if self.done == 0:  # nothing to measure yet
            return f"{count} {self.unit}"
        parts = [f"{count} {self.unit}", format_rate(self.done, elapsed, self.unit)]
        if self.total is not None and self.done < self.total:
            eta = (self.total - self.done) * elapsed / self.done if self.done and elapsed > 0 else None
            parts.append(f"ETA {format_duration(eta)}")
        else:
            parts.append(f"in {format_duration(elapsed)}")
        return "  ".join(parts)

    def _draw_in_place(self, now: float) -> None:
        status = self.status(now)
        columns = shutil.get_terminal_size((80, 24)).columns
        label = self.label
        bar = ""
        if self.total:
            bar_width = max(0, min(30, columns - len(label) - len(status) - 8))
            if bar_width >= 5:
                filled = int(bar_width * min(self.done, self.total) / self.total)
                bar = "[" + "#" * filled + "." * (bar_width - filled) + "] "
        line = f"{label} {bar}{status}"
        if len(line) > columns - 1:  # never wrap: a wrapped line cannot be redrawn with \r
            line = line[: max(0, columns - 1)]
        self.stream.write("\r\x1b[K" + line)
        self.stream.flush()
        self._last_draw = now
        self._drawn = True

    def _maybe_print_line(self, now: float) -> None:
        if now - self._start < self.quiet_seconds:
            return
        if self.total:
            tenth = min(10, self.done * 10 // self.total)
            if tenth <= self._last_tenth:
                return
            self._last_tenth = tenth
        elif now - self._last_draw < 60.0:  # unknown length: one line a minute
            return
        self.stream.write(f"{self.label}: {self.status(now)}\n")
        self.stream.flush()
        self._last_draw = now


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
