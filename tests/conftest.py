"""Shared pytest fixtures: paths to the project data, tiny checkpoints and their GGUF files.

Tiny models are built once per test session (see tests/tiny.py) and converted once per
(arch, outtype, tied, seed); every test that asks for the same one gets the same path, so treat
the files as read-only.

Data (the real Qwen2-family vocabulary with its test vectors, real chat templates) is the
project's own, in python/statekv/data.
"""
from __future__ import annotations

from pathlib import Path

import pytest

import tiny

REPO_ROOT = tiny.REPO_ROOT


def _require(path: Path) -> Path:
    # The data is part of the repository: a missing file is a broken checkout, not a skip.
    if not path.exists():
        raise FileNotFoundError(f"project data missing: {path}")
    return path


@pytest.fixture(scope="session")
def qwen2_vocab_gguf() -> Path:
    """``python/statekv/data/vocab/ggml-vocab-qwen2.gguf`` (its ``.inp``/``.out`` test vectors sit next to it)."""
    return _require(tiny.qwen2_vocab_path())


@pytest.fixture(scope="session")
def templates_dir() -> Path:
    """``python/statekv/data/templates`` (real chat templates, .jinja)."""
    return _require(tiny.data_dir() / "templates")


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory, qwen2_vocab_gguf, templates_dir):
    """Factory ``tiny_hf_dir(arch, tied=None, seed=0) -> Path``: a saved tiny HF checkpoint.

    ``arch`` is ``"qwen2"``, ``"qwen3"`` or ``"qwen3vl"``; ``tied=None`` takes the family default
    (qwen2 untied, qwen3/qwen3vl tied).  Built once per session per (arch, tied, seed).
    """
    cache: dict[tuple, Path] = {}

    def make(arch: str, tied: bool | None = None, seed: int = 0) -> Path:
        if tied is None:
            tied = arch != "qwen2"
        key = (arch, bool(tied), seed)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"hf-{arch}-{'tied' if tied else 'untied'}-s{seed}")
            cache[key] = tiny.make(arch, out, seed=seed, tied=tied)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory, tiny_hf_dir):
    """Factory ``tiny_gguf(arch, outtype="f32", tied=None, seed=0) -> Path``: the tiny checkpoint
    converted by ``statekv.convert.convert``.  Built once per session per (arch, outtype, tied, seed)."""
    from statekv.convert import convert

    cache: dict[tuple, Path] = {}

    def make(arch: str, outtype: str = "f32", tied: bool | None = None, seed: int = 0) -> Path:
        if tied is None:
            tied = arch != "qwen2"
        key = (arch, outtype, bool(tied), seed)
        if key not in cache:
            hf = tiny_hf_dir(arch, tied=tied, seed=seed)
            out = tmp_path_factory.mktemp("gguf") / f"{arch}-{'tied' if tied else 'untied'}-s{seed}-{outtype}.gguf"
            cache[key] = convert(hf, out, outtype)
        return cache[key]

    return make
