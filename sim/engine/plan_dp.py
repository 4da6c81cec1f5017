"""The DP's static plans for many request sizes at once (`sim.split.dp_batch`).

For a static `dp` planner, every size of a (class, group) that `Planner._solve` would
give to the DP (no token SLAs) or to the token-SLA bisection (phases, a client that holds
some unit) is planned together: the DP's sweeps run as rows of arrays and the bisection
round by round, each plan exactly the one-at-a-time plan. Sizes with one placement (no
unit on the client) are left to `sim.engine.plan_fixed` or the one-at-a-time path.

Off by default (`BATCHED_POLICIES` is empty): the one-at-a-time DP is already bound by
its elementwise work (two rows of ~2000 steps per call), and the batch's per-row gathers
of shifted views add copies, so on benchmarks/bench_token.py the batch is no faster
(sweeps 1.8 s against 1.5 s for 1,000 sizes). It is exact (tests/test_batched_dp.py) and
the base for a batch that sweeps fewer elements.
"""

from __future__ import annotations

import numpy as np

from sim.engine.plan_batch import Batch
from sim.engine.planner import Planner, _planned
from sim.split.dp_batch import solve_dp_many, solve_phased_many

BATCHED_POLICIES: frozenset[str] = frozenset()  # {"dp"} turns the batch on


def plan_dp(planner: Planner, b: Batch) -> None:
    """Store the static DP plan of every size of the batch that searches placements."""
    if planner.policy not in BATCHED_POLICIES or planner.dynamic:
        return
    plain, phased = [], []
    rows = b.ok & b.whole.allowed.any(axis=1)
    for i in np.flatnonzero(rows).tolist():
        key = (b.klass, b.group, b.prompts[i], b.outputs[i])
        if key in planner._plans:
            continue
        rp = planner.book.get(*key)
        (plain if rp.phases is None else phased).append((key, rp))
    if plain:
        plans = solve_dp_many([rp.problem for _, rp in plain], planner.time_step_s, "dp")
        for (key, rp), plan in zip(plain, plans, strict=True):
            planner._plans[key] = _planned(rp, plan)
    if phased:
        wholes = [rp.problem for _, rp in phased]
        plans = solve_phased_many(wholes, [rp.phases for _, rp in phased], "dp")
        for (key, rp), plan in zip(phased, plans, strict=True):
            planner._plans[key] = _planned(rp, plan)
