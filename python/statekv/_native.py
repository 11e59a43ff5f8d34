"""Import of the compiled core.

The extension and the ggml libraries it was built with lie in this package's folder; the
extension's RUNPATH ($ORIGIN) finds them, and the backend modules (CPU variants, GPU backends)
are loaded from the same folder by the core itself (cpp/src/backend.cpp).
"""
from __future__ import annotations

from . import _core  # noqa: F401
