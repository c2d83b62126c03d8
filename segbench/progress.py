"""Progress bars for long waits (loading data, checking masks, benchmarks), on a terminal only.

A bar goes to stderr, where errors go too; off a terminal (logs, pipes, tests) it stays silent
so an error is still the one line on stderr, and on a terminal it is cleared when it ends.
"""

from __future__ import annotations

import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterable[T]:
    """Iterate ``items`` with a transient tqdm bar when stderr is a terminal."""
    if not sys.stderr.isatty():
        yield from items
        return
    from tqdm import tqdm

    with tqdm(items, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True) as bar:
        yield from bar
