"""Long-lived objects kept out of the cycle collector's scans while a run plans and runs.

A run holds tens of thousands of objects for its whole length (the scenario, arrivals,
problems, plans, token programs); every full collection of Python's cycle collector walks
all of them, which costs up to a third of the planning time. `frozen_heap()` moves the
objects alive when it is entered (and again at each `freeze_now()`) to the collector's
permanent generation for the block, and returns them when the outermost block ends, so a
process that runs many scenarios (a sweep) still frees them. Garbage made inside the block
is collected as usual.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Freeze the objects alive now for the block (blocks nest: the outermost unfreezes)."""
    global _depth
    with _lock:
        _depth += 1
        gc.freeze()
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                gc.unfreeze()


def freeze_now() -> None:
    """Inside a block: freeze the objects made since (e.g. the plans, before the run)."""
    with _lock:
        if _depth:
            gc.freeze()
