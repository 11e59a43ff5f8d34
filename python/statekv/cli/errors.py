"""The command line's error convention: one ``statekv: error:`` line on stderr, exit code 2 for a
usage error (:class:`UsageError`), 1 for any other error."""
from __future__ import annotations

__all__ = ["UsageError", "error_line"]


class UsageError(Exception):
    """The command line is wrong (a missing or contradicting option): exit code 2."""


def error_line(exc: BaseException) -> str:
    """``statekv: error: <message>`` on one line, whatever the exception's text."""
    message = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return f"statekv: error: {message or type(exc).__name__}"
