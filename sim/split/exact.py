"""The exact DP's entry point: structures when they are few, else the fastest label search.

All find the least-work placement meeting every limit over the same candidates (the
minimal-switch patterns of each run of identical units, `sim.split.labels`); enumeration
(`sim.split.structural`) is fastest for real models (a few runs); for one latency, no
generation loop and mostly distinct units (runs of one), the two-ended search with a
Lagrangian cut (`sim.split.meet`); else the label front over runs. `accept(on_client)` is
the caller's exact check of a candidate (float noise can put the DP's best a hair over a
limit): the next best is tried.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sim.split import front, labels, meet, structural
from sim.split.labels import Criteria


def search(c: Criteria, accept: Callable[[np.ndarray], bool]) -> np.ndarray | None:
    """The least-work placement meeting every limit that `accept` confirms, or None."""
    if front.applies(c) and _all_distinct(c):
        return meet.search(c, accept)
    spans = labels.runs_of(c)
    allowed = tuple(int(c.allowed[s]) for s, _ in spans)
    if structural.count(spans, allowed) > structural.MAX_STRUCTURES:
        if front.applies(c) and 2 * len(spans) > c.work.shape[0]:
            return meet.search(c, accept)
        return labels.search(c, accept, spans)
    st = structural.structures(tuple(spans), allowed, c.loop_start, c.has_loop)
    order = structural.ranked(structural.BatchCriteria.of(c), st)[: labels.TRIES]
    for on_client in structural.placements(st, order, c.work.shape[0]):
        if accept(on_client):
            return on_client
    return None


def _all_distinct(c: Criteria) -> bool:
    """Whether every unit is a run of its own with more structures than enumeration takes
    (`search`'s test for `meet`, decided without listing the runs): each unit's server
    time differs from its predecessor's (one latency), and more than
    log2(`structural.MAX_STRUCTURES`) units may run on the client (2 structures each)."""
    cs = c.cs[0]  # one latency (`front.applies`)
    if not (cs[1:] != cs[:-1]).all():
        return False
    return int(np.count_nonzero(c.allowed)) > structural.MAX_STRUCTURES.bit_length() - 1
