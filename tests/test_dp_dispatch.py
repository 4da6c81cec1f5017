"""`sim.split.exact`'s shortcut to `sim.split.meet` (chains of distinct units, decided
without listing the runs) only where the runs-based dispatch sends the chain there too."""

from __future__ import annotations

import numpy as np

from sim.split import SplitProblem, exact, front, labels, structural
from sim.split.labels import criteria_of


def _chain(rng: np.random.Generator, n: int) -> SplitProblem:
    """Units drawn from a few kinds (runs of equal units are common) or all distinct, some
    pinned to the server."""
    kinds = int(rng.choice([2, 3, n]))
    server = rng.uniform(1e-3, 10e-3, kinds)[rng.integers(0, kinds, n)]
    link = rng.uniform(1e-3, 20e-3, n + 1)
    if rng.random() < 0.5:
        link[:] = link[0]
    allowed = rng.random(n) < rng.choice([0.2, 0.9, 1.0])
    return SplitProblem(server * 5, server, server, link, link, 1.0, allowed)


def _runs_send_to_meet(c) -> bool:
    """The dispatch over the runs: more structures than enumeration takes and runs of one
    unit in the majority."""
    spans = labels.runs_of(c)
    allowed = tuple(bool(c.allowed[s]) for s, _ in spans)
    many = structural.count(spans, allowed) > structural.MAX_STRUCTURES
    return many and front.applies(c) and 2 * len(spans) > c.work.shape[0]


def test_the_shortcut_agrees_with_the_runs():
    """Over random chains of 1-60 units: the shortcut never sends a chain the runs would
    not, and it takes every chain of distinct units with enough client-capable units."""
    rng = np.random.default_rng(4)
    taken = 0
    for _ in range(400):
        p = _chain(rng, int(rng.integers(1, 61)))
        c = criteria_of([p], [p.deadline], p.server_work)
        short = exact._all_distinct(c)
        if short:
            assert _runs_send_to_meet(c)
            taken += 1
        distinct = bool((c.cs[0, 1:] != c.cs[0, :-1]).all())
        if distinct and int(c.allowed.sum()) > 12:
            assert short
    assert taken > 20
