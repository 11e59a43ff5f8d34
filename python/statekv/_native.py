"""Import of the compiled core.

The extension's rpath points at the installed libggml-python libraries
(site-packages/libggml/lib64). Layouts where that relative path does not hold (editable installs,
a build tree) get the libraries preloaded from wherever Python finds the libggml package.
"""
from __future__ import annotations

import ctypes
import os


def _preload_libggml() -> None:
    import libggml

    root = os.path.dirname(libggml.__file__)
    for libdir in ("lib64", "lib", "bin"):
        folder = os.path.join(root, libdir)
        if not os.path.isdir(folder):
            continue
        for stem in ("ggml-base", "ggml-cpu", "ggml"):
            for name in (f"lib{stem}.so.0", f"lib{stem}.so", f"lib{stem}.dylib", f"{stem}.dll"):
                path = os.path.join(folder, name)
                if os.path.exists(path):
                    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                    break


try:
    from . import _core  # noqa: F401
except ImportError as exc:
    if "ggml" not in str(exc):
        raise
    _preload_libggml()
    from . import _core  # noqa: F401
