"""`dp`'s static plans under token SLAs for many request sizes at once.

The exact DP enumerates the structures of a model's runs of identical units
(`sim.split.structural`); they are the same for every size of a (class, group), so the
plans of all sizes are one numpy evaluation over (sizes, structures, criteria) instead of
one search each. Each size's chosen placement is then judged on its own problem exactly as
`solve_dp_phased` judges it (`judge`), and stored; a size whose structures are too many,
that no structure fits, or whose judged plan misses a limit (float noise at the edge) is
left to the one-at-a-time path, which stays the reference. A placement inside its TTFT and
TPOT limits by more than float noise is judged by its whole latency alone, evaluated for
all sizes at once (`evaluate_rows`: `evaluate`'s row sums and, per row, its (1, n) @ (n,)
products as one stacked matmul, so the same floats); the others one at a time.
"""

from __future__ import annotations

import numpy as np

from sim.engine.plan_batch import Batch
from sim.engine.plan_fixed import stacked_dot
from sim.engine.planner import (
    PlannedRequest,
    Planner,
    _planned,
    book_segment_facts,
    counted_plan,
)
from sim.split import Plan
from sim.split.labels import runs_from
from sim.split.phased import _FITS, judge
from sim.split.structural import (
    MAX_STRUCTURES,
    BatchCriteria,
    Structures,
    best,
    count,
    structures,
)


def plan_dp(planner: Planner, b: Batch) -> None:
    """Store the static `dp` plan of every size of the batch with token SLAs and units the
    client may hold, sizes grouped by the units they allow."""
    if planner.policy != "dp" or b.phased is None or b.prefill is None:
        return
    rows = b.ok & b.phased & b.whole.allowed.any(axis=1)
    if not rows.any():
        return
    for sizes in groups_of(b.whole.allowed, rows):
        _plan_group(planner, b, sizes)


def groups_of(allowed: np.ndarray, rows: np.ndarray) -> list[np.ndarray]:
    """The indices of `rows` (a mask) grouped by their row of `allowed` (equal rows
    together, in index order; groups in order of first appearance)."""
    index = np.flatnonzero(rows)
    packed = np.packbits(allowed[index], axis=1)
    groups: dict[bytes, list[int]] = {}
    for n, r in enumerate(packed):
        groups.setdefault(r.tobytes(), []).append(n)
    return [index[np.array(g)] for g in groups.values()]


def _criteria(b: Batch, rows: np.ndarray) -> BatchCriteria:
    """The sizes' criteria as `solve_dp_phased` builds them: prefill (TTFT), mean decode
    step (TPOT) and the whole request (end to end), one per finite limit."""
    pre, step, whole = b.prefill, b.step, b.whole
    assert pre is not None and step is not None
    sources = (
        (pre.client_t, pre.server_t, pre.up, pre.down, pre.loop_up, pre.loop_down),
        (step["client_t"], step["server_t"], step["up"], step["down"], step["loop_up"],
         step["loop_down"]),
        (whole.client_t, whole.server_t, whole.up, whole.down, whole.loop_up, whole.loop_down),
    )  # fmt: skip
    limits = [x if x else np.inf for x in b.limits]
    chosen = [c for c, lim in enumerate(limits) if np.isfinite(lim)] or [0]
    parts = [tuple(a[rows] for a in sources[c]) for c in chosen]
    cc, cs, up, dn, loop_up, loop_down = (np.stack(x, axis=1) for x in zip(*parts, strict=True))
    limit = np.broadcast_to(np.array([limits[c] for c in chosen], float), loop_up.shape)
    ls = whole.work.loop_start
    return BatchCriteria(
        cc, cs, up, dn, loop_up, loop_down, limit, whole.server_work[rows],
        whole.allowed[rows[0]], ls, bool((loop_up > 0).any() or (loop_down > 0).any()),
        tuple(chosen),
    )  # fmt: skip


def _structures_of(c: BatchCriteria) -> Structures | None:
    """The structures of the sizes' common runs, or None when they are too many."""
    S, K, L = c.cc.shape
    unit = np.concatenate(
        [c.cc.reshape(S * K, L), c.cs.reshape(S * K, L), c.work, c.allowed[None, :]]
    )
    bound = np.concatenate([c.up[:, :, :L].reshape(S * K, L), c.dn[:, :, :L].reshape(S * K, L)])
    spans = runs_from(unit, bound, c.loop_start)
    allowed = tuple(bool(c.allowed[s]) for s, _ in spans)
    if count(spans, allowed) > MAX_STRUCTURES:
        return None
    return structures(tuple(spans), allowed, c.loop_start, c.has_loop)


def _plan_group(planner: Planner, b: Batch, rows: np.ndarray) -> None:
    """Plan the sizes `rows` (all allowing the same units) together."""
    c = _criteria(b, rows)
    st = _structures_of(c)
    if st is None:
        return
    on_client, found, clear = best(c, st)
    on_client.setflags(write=False)
    book = planner.book
    e2e = b.limits[2] or np.inf
    # inside the TTFT and TPOT limits for sure: `judge` without `meets`, i.e. `evaluate`
    latency, work, units, switches = evaluate_rows(b, rows, on_client)
    feasible = (latency <= e2e * _FITS).tolist()
    columns = zip(
        rows.tolist(), found.tolist(), clear.tolist(), latency.tolist(), work.tolist(),
        feasible, units.tolist(), switches.tolist(), strict=True,
    )  # fmt: skip
    only = b.whole.server_work[rows].sum(axis=1).tolist()  # `_planned`'s row sums
    for n, (i, fnd, clr, lat, wk, feas, cu, sw) in enumerate(columns):
        key = (b.klass, b.group, b.prompts[i], b.outputs[i])
        if not fnd or key in planner._plans:
            continue
        oc = on_client[n]
        if clr:
            plan = counted_plan(oc, lat, wk, feas, planner.policy, cu, sw)
            if feas:
                planner._plans[key] = PlannedRequest.lazy(
                    plan, float(b.deadline_s[i]), only[n], book_segment_facts, (book, key, oc)
                )
            continue
        rp = book.get(*key)
        plan = judge(rp.problem, rp.phases, Plan(oc, 0.0, 0.0, False, planner.policy))
        if plan.feasible:
            planner._plans[key] = _planned(rp, plan)


def evaluate_rows(b: Batch, rows: np.ndarray, on_client: np.ndarray) -> tuple:
    """`evaluate` of each size's placement (`on_client` (S, L)) on its whole problem with
    no waits, for all sizes at once: the same row sums, each (1, n) @ (n,) product as a
    stack of them (`stacked_dot`), the loop terms elementwise; with each placement's client
    units and switches (S,) as `Plan` counts them."""
    w = b.whole
    path = np.ones((on_client.shape[0], on_client.shape[1] + 2), bool)  # the client at ends
    path[:, 1:-1] = on_client
    up = (path[:, :-1] & ~path[:, 1:]).astype(float)
    down = (~path[:, :-1] & path[:, 1:]).astype(float)
    compute = np.where(on_client, w.client_t[rows], w.server_t[rows]).sum(axis=1)
    links = stacked_dot(up, w.up[rows]) + stacked_dot(down, w.down[rows])
    latency = compute + links
    on_server = ~on_client
    loop_up, loop_down = w.loop_up[rows], w.loop_down[rows]
    looped = ((loop_up > 0) | (loop_down > 0)) & on_server[:, w.work.loop_start]
    last = on_server[:, -1]
    latency = np.where(looped & last, latency - loop_down, latency)
    latency = np.where(looped & ~last, latency + loop_up, latency)
    work = stacked_dot(on_server.astype(float), w.server_work[rows])
    switches = np.count_nonzero(path[:, 1:] != path[:, :-1], axis=1)
    return latency, work, on_client.sum(axis=1), switches
