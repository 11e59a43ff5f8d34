"""Natural text for the long-context evaluation: the Python documentation's topic pages that ship
with every CPython (``pydoc_data.topics``, about 465k characters, Python Software Foundation
licence), so the evaluation needs no download.

Example::

    lines = natural_lines(seed=3)          # an endless, deterministic stream of text lines
    first = [next(lines) for _ in range(5)]
"""
from __future__ import annotations

import random
from typing import Iterator

__all__ = ["SOURCE", "topic_pages", "natural_lines"]

SOURCE = "pydoc_data.topics (the Python documentation's topic pages shipped with CPython; PSF licence)"


def topic_pages() -> list[str]:
    """The topic pages in key order (a fixed order: the dict's own order may change between releases)."""
    from pydoc_data.topics import topics

    pages = [topics[key].strip() for key in sorted(topics)]
    return [p for p in pages if p]


def natural_lines(seed: int) -> Iterator[str]:
    """Lines of the topic pages, each ending in ``\\n``: the pages in an order shuffled by ``seed``,
    each page's lines in their own order (so the text reads naturally within a page), endlessly
    (a new shuffle after each pass). Blank lines are kept (they separate paragraphs)."""
    rng = random.Random(seed)
    pages = topic_pages()
    while True:
        order = list(range(len(pages)))
        rng.shuffle(order)
        for i in order:
            for line in pages[i].split("\n"):
                yield line + "\n"
            yield "\n"
