"""The video families statekv runs, one folder each (:mod:`.internvl`, :mod:`.qwen3vl`, :mod:`.gemma3`, :mod:`.eagle2_5`), and their
registry. A family declares, in its folder, everything the rest of statekv asks of it (see
:mod:`.base`): projector types and the decoders they pair with, wrap tokens and prompt, frame
preprocessing, the step layout (used by the chat, the benchmarks and the tests), the converter
and the random-weight mmproj. Adding a family adds a folder and one line here.

Example::

    from statekv import families

    family = families.for_projector(model.info()["vision.projector"])   # or families.get("internvl")
    layout = family.layout(tokenizer, model.info())                      # a chat's step layout
"""
from __future__ import annotations

from .base import Family, Layout, PlannedStep, StepLayout
from .eagle2_5 import FAMILY as _EAGLE2_5
from .gemma3 import FAMILY as _GEMMA3
from .internvl import FAMILY as _INTERNVL
from .qwen3vl import FAMILY as _QWEN3VL

__all__ = ["Family", "Layout", "PlannedStep", "StepLayout", "FAMILIES", "PROJECTORS", "get", "for_projector"]

FAMILIES: dict[str, Family] = {f.name: f for f in (_INTERNVL, _QWEN3VL, _GEMMA3, _EAGLE2_5)}

# clip.projector_type -> its family
PROJECTORS: dict[str, Family] = {p: f for f in FAMILIES.values() for p in f.projectors}


def get(name: str) -> Family:
    """The family called ``name``; ValueError naming the known ones otherwise."""
    family = FAMILIES.get(name)
    if family is None:
        raise ValueError(f"unknown video family {name!r} (known: {', '.join(FAMILIES)})")
    return family


def for_projector(projector: str | None) -> Family | None:
    """The family of an mmproj's ``clip.projector_type`` (``Model.info()["vision.projector"]``),
    or None."""
    return PROJECTORS.get(projector) if projector is not None else None
