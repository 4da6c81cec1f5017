"""`dp_queue_aware`'s plans at arrival under token SLAs, prepared for every size at once.

A load-aware plan adds the server's expected wait w (s per pass) to every entry onto the
server, so each structure of the exact DP (`sim.split.structural`) has latencies
T0 + w x A: T0 without waits, A the entries it pays for in each criterion (the prefill
pays once per entry, the mean decode step for entries from the loop start on, the whole
request once per pass through them). A structure stays feasible while w is at most its
`wmax`. Before the run, for every size, the structures that are the least-work feasible
one at some wait are kept (a "staircase", a handful per size); at arrival the plan for
the wait is read off it and judged on the waited problems exactly as the search's plan
would be. A wait the staircase cannot decide (float noise at a limit) goes to the search.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.engine.plan_batch import Batch
from sim.engine.plan_dp import _criteria, _structures_of
from sim.engine.planner import Planner
from sim.split.labels import patterns
from sim.split.structural import (
    _CLEAR,
    _SLACK,
    BatchCriteria,
    Structures,
    latencies,
    placements,
)

_CHUNK = 256


@dataclass(frozen=True)
class Stairs:
    """One size's candidate structures, least work first: their work, the largest wait
    each fits, latencies without waits and entries paid per criterion (n, K), placements."""

    work: list[float]
    wmax: list[float]
    t0: list[list[float]]  # per candidate, K latencies without waits (s)
    entries: list[list[float]]  # per candidate, K entries paid per second of wait
    on_client: np.ndarray
    limit: list[float]  # the K criteria's limits (s)

    def placement(self, wait_s: float) -> tuple[np.ndarray, bool] | None:
        """The least-work placement that fits at `wait_s` (ties: the least latency at that
        wait, criterion by criterion, then the first) and whether its latencies are inside
        every limit by more than float noise (then the exact check cannot disagree), or
        None. Plain floats: a handful of candidates, each t0 + wait x entries."""
        work, wmax = self.work, self.wmax
        for i, w in enumerate(work):
            if wmax[i] < wait_s:
                continue
            best = None
            for k in range(i, len(work)):
                if work[k] != w:
                    break
                if wmax[k] < wait_s:
                    continue
                t = tuple(a + wait_s * b for a, b in zip(self.t0[k], self.entries[k], strict=True))
                if best is None or t < best[0]:
                    best = (t, k)
            assert best is not None
            scale = 1 - _CLEAR
            clear = all(x <= lim * scale for x, lim in zip(best[0], self.limit, strict=True))
            return self.on_client[best[1]], clear
        return None


def prepare_waits(planner: Planner, b: Batch) -> None:
    """Build the staircase of every size of the batch with token SLAs (dp_queue_aware
    planning per pass on a batching server, which never sheds load); a client holding no
    unit has one structure, all on the server, and its staircase is when it fits."""
    if planner.policy != "dp_queue_aware" or planner.shed or not planner.wait_per_pass:
        return
    if b.phased is None or b.prefill is None:
        return
    rows = b.ok & b.phased  # clients holding no unit too: their one placement's waits
    if not rows.any():
        return
    _, group_of = np.unique(b.whole.allowed[rows], axis=0, return_inverse=True)
    index = np.flatnonzero(rows)
    for g in range(int(group_of.max()) + 1):
        sizes = index[group_of.reshape(-1) == g]
        c = _criteria(b, sizes)
        st = _structures_of(c)
        if st is None:
            continue
        for a in range(0, sizes.shape[0], _CHUNK):
            part = sizes[a : a + _CHUNK]
            _store(planner, b, part, c, st, slice(a, a + part.shape[0]))


def _entries(b: Batch, c: BatchCriteria, st: Structures, sizes: np.ndarray) -> np.ndarray:
    """(S, Q, K) entries onto the server each structure pays per criterion for a wait of
    one per pass: prefill every entry, step from the loop start on, whole once per pass."""
    ls = c.loop_start
    after = np.zeros(st.pattern.shape[0])
    before = np.zeros(st.pattern.shape[0])
    for r, (s, e) in enumerate(st.spans):
        ups = st.hop_up[:, r] + patterns(e - s, st.allowed[r]).n_up[st.pattern[:, r]]
        if s >= ls:
            after += ups
        else:
            before += ups
    steps = b.whole.work.steps[sizes].astype(float)[:, None]
    per = {0: np.broadcast_to(before + after, (steps.shape[0], after.shape[0])),
           1: np.broadcast_to(after, (steps.shape[0], after.shape[0])),
           2: before + after * (1 + steps)}  # fmt: skip
    return np.stack([per[k] for k in c.kinds], axis=2)


def _store(planner: Planner, b: Batch, sizes, c: BatchCriteria, st: Structures, rows) -> None:
    """Keep, per size of `rows`, the structures that are least-work feasible at some wait."""
    t0, work = latencies(c, st, rows)
    a = _entries(b, c, st, sizes)
    limit = c.limit[rows, None, :] * (1 + _SLACK)
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(a > 0, (limit - t0) / a, np.where(t0 <= limit, np.inf, -np.inf))
    wmax = room.min(axis=2)  # (S, Q)
    keys = [t0[:, :, k] for k in range(t0.shape[2] - 1, -1, -1)]
    order = np.lexsort((*keys, work), axis=-1)  # per size: least work, then latency
    w_sorted = np.take_along_axis(work, order, axis=1)
    m_sorted = np.take_along_axis(wmax, order, axis=1)
    S, Q = order.shape
    new_group = np.ones((S, Q), bool)
    new_group[:, 1:] = w_sorted[:, 1:] != w_sorted[:, :-1]
    best_before = np.full((S, Q), -np.inf)  # the largest wmax of any earlier structure
    best_before[:, 1:] = np.maximum.accumulate(m_sorted[:, :-1], axis=1)
    start = np.maximum.accumulate(np.where(new_group, np.arange(Q), 0), axis=1)
    # kept: it fits at some wait where nothing of less work does
    keep = (m_sorted >= 0) & (m_sorted > np.take_along_axis(best_before, start, axis=1))
    L = c.work.shape[1]
    for n, i in enumerate(sizes.tolist()):
        chosen = order[n, keep[n]]
        key = (b.klass, b.group, b.prompts[i], b.outputs[i])
        on_client = placements(st, chosen, L)
        on_client.setflags(write=False)
        planner.stairs[key] = Stairs(
            work[n, chosen].tolist(), wmax[n, chosen].tolist(), t0[n, chosen].tolist(),
            a[n, chosen].tolist(), on_client, c.limit[rows][n].tolist(),
        )  # fmt: skip
