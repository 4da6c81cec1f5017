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

Arrival is cheap: a candidate whose latencies are inside the TTFT and TPOT limits for sure
is judged by its whole latency alone, computed from terms prepared per candidate (`_fast`:
`evaluate`'s sums, whose wait-dependent part adds at most two non-zero terms, in plain
floats) and its work prepared before the run; no problem object is built, and the plan's
segments are derived only if read (`PlannedRequest.lazy`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.engine.plan_batch import Batch
from sim.engine.plan_dp import _criteria, _structures_of, groups_of
from sim.engine.plan_fixed import stacked_dot
from sim.engine.planner import (
    PlannedRequest,
    Planner,
    ProblemBook,
    book_segment_facts,
    counted_plan,
)
from sim.split.labels import patterns
from sim.split.phased import _FITS
from sim.split.structural import (
    _CLEAR,
    _SLACK,
    BatchCriteria,
    Structures,
    chunk_sizes,
    latencies,
    placements,
)


@dataclass(frozen=True)
class Shared:
    """What the sizes of one batch and one set of allowed units share: every structure's
    placement, and per structure the 0/1 rows `evaluate` multiplies by (entries onto the
    server and returns from it per boundary, units on the server), its client units and
    switches; per size of the batch its passes through each boundary (`pass_waits`'s)
    and its server-only work."""

    batch: Batch
    on_client: np.ndarray  # (Q, L) read-only
    up: np.ndarray  # (Q, L + 1) 1.0 where the placement enters the server
    down: np.ndarray  # (Q, L + 1) 1.0 where it returns to the client
    on_server: np.ndarray  # (Q, L) 1.0 on the server
    client_units: list[int]
    switches: list[int]
    ups: np.ndarray  # (Q, 2) the first two boundaries where it enters the server
    n_up: np.ndarray  # (Q,) how many boundaries it enters the server at
    downs: np.ndarray  # (Q, 2) the first two where it returns to the client
    n_down: np.ndarray  # (Q,)
    passes: np.ndarray  # (K, L + 1) per size of the batch
    server_only_work: list[float]  # per size of the batch
    views: list[np.ndarray]  # each structure's placement (rows of `on_client`), made once
    e2e_fits: float  # the end-to-end limit with `judge`'s slack (inf: none)


def _shared(b: Batch, st: Structures, passes: np.ndarray, only: list[float]) -> Shared:
    """The structures' placements and `evaluate`'s rows of them (the same 0/1 floats)."""
    L = b.whole.server_t.shape[1]
    oc = placements(st, np.arange(st.pattern.shape[0]), L)
    oc.setflags(write=False)
    path = np.ones((oc.shape[0], L + 2), bool)  # the client at both ends
    path[:, 1:-1] = oc
    up = (path[:, :-1] & ~path[:, 1:]).astype(float)
    down = (~path[:, :-1] & path[:, 1:]).astype(float)
    switches = np.count_nonzero(path[:, 1:] != path[:, :-1], axis=1)
    first_up = np.argsort(up == 0, axis=1, kind="stable")[:, :2]  # the ones first, in order
    first_down = np.argsort(down == 0, axis=1, kind="stable")[:, :2]
    return Shared(
        b, oc, up, down, (~oc).astype(float), oc.sum(axis=1).tolist(), switches.tolist(),
        first_up, (up > 0).sum(axis=1), first_down, (down > 0).sum(axis=1), passes, only,
        list(oc), (b.limits[2] or np.inf) * _FITS,
    )  # fmt: skip


def _fast(sh: Shared, rows: np.ndarray, q: np.ndarray) -> list:
    """Per candidate (size `rows[n]`, structure `q[n]`) the terms of its `evaluate`
    latency at any wait: (units' sum, downlink sum, the entries' uplink times and passes
    (two, 0 when fewer), loop sign (+1 tokens go up, -1 refunded, 0 none), loop s); None
    when it enters the server or leaves it more than twice. Each of `evaluate`'s dot
    products of a 0/1 row then adds at most two non-zero terms, which every summation
    order adds alike (x + 0 is x), so the latency is a + (e1 + e2 + down) in plain floats,
    bit for bit; the units' sum is the same row sum as `evaluate`'s."""
    w = sh.batch.whole
    compute = np.where(sh.on_client[q], w.client_t[rows], w.server_t[rows]).sum(axis=1)
    n_up, n_down = sh.n_up[q], sh.n_down[q]
    ups, downs = sh.ups[q], sh.downs[q]
    u = [np.where(n_up > j, w.up[rows, ups[:, j]], 0.0) for j in (0, 1)]
    p = [np.where(n_up > j, sh.passes[rows, ups[:, j]], 0.0) for j in (0, 1)]
    down = np.where(n_down > 0, w.down[rows, downs[:, 0]], 0.0)
    down = down + np.where(n_down > 1, w.down[rows, downs[:, 1]], 0.0)
    ls = w.work.loop_start
    has_loop = (w.loop_up[rows] > 0) | (w.loop_down[rows] > 0)
    last = sh.on_server[q, -1] > 0
    sign = np.where(has_loop & (sh.on_server[q, ls] > 0), np.where(last, -1, 1), 0)
    loop = np.where(last, w.loop_down[rows], w.loop_up[rows])
    terms = zip(
        compute.tolist(), down.tolist(), u[0].tolist(), p[0].tolist(), u[1].tolist(),
        p[1].tolist(), sign.tolist(), loop.tolist(), strict=True,
    )  # fmt: skip
    fits = ((n_up <= 2) & (n_down <= 2)).tolist()
    return [t if f else None for t, f in zip(terms, fits, strict=True)]


class Stairs:
    """One size's candidate structures, least work first: their work, the largest wait
    each fits, latencies without waits and entries paid per criterion (K each), their
    structure indices into the shared placements, the K criteria's limits (s)."""

    __slots__ = (
        "work", "wmax", "t0", "entries", "structure", "fast", "server_work", "limit", "shared",
        "row", "deadline_s", "quantum_s",
    )  # fmt: skip

    def __init__(
        self, work, wmax, t0, entries, structure, fast, server_work, limit, shared: Shared,
        row: int, deadline_s: float, quantum_s: float,
    ):  # fmt: skip
        self.work, self.wmax, self.t0, self.entries = work, wmax, t0, entries
        self.structure, self.fast, self.limit = structure, fast, limit
        self.server_work = server_work  # `evaluate`'s work of each candidate
        self.shared, self.row = shared, row
        self.deadline_s = deadline_s  # the size's SLA (s)
        self.quantum_s = quantum_s  # `Planner.get_at`'s wait bucket for the size (s)

    def placement(self, wait_s: float) -> tuple[np.ndarray, bool] | None:
        """The least-work placement that fits at `wait_s` and whether its latencies are
        inside every limit by more than float noise, or None (`pick`)."""
        found = self.pick(wait_s)
        if found is None:
            return None
        return self.shared.on_client[self.structure[found[0]]], found[1]

    def pick(self, wait_s: float) -> tuple[int, bool] | None:
        """The candidate (its index here) of least work that fits at `wait_s` (ties: the
        least latency at that wait, criterion by criterion, then the first) and whether
        its latencies are inside every limit by more than float noise (then the exact
        check cannot disagree), or None. Plain floats: a handful of candidates, each
        t0 + wait x entries."""
        work, wmax = self.work, self.wmax
        n = len(work)
        for i in range(n):
            if wmax[i] < wait_s:
                continue
            best_k, best = (
                i,
                [a + wait_s * b for a, b in zip(self.t0[i], self.entries[i], strict=True)],
            )
            w = work[i]
            for k in range(i + 1, n):  # ties of work: the least latency
                if work[k] != w:
                    break
                if wmax[k] < wait_s:
                    continue
                t = [a + wait_s * b for a, b in zip(self.t0[k], self.entries[k], strict=True)]
                if t < best:
                    best_k, best = k, t
            scale = 1 - _CLEAR
            for x, lim in zip(best, self.limit, strict=True):
                if not x <= lim * scale:
                    return best_k, False
            return best_k, True
        return None

    def evaluate(self, q: int, wait_s: float) -> tuple[float, float]:
        """`evaluate` of structure q's placement on the size's whole problem with a wait
        `wait_s` per pass (`pass_waits`), without the problem: the same operations on the
        same rows, so the same floats."""
        sh, i = self.shared, self.row
        w = sh.batch.whole
        compute = np.where(sh.on_client[q], w.client_t[i], w.server_t[i]).sum()
        entry = w.up[i] + wait_s * sh.passes[i]
        links = sh.up[q][None, :] @ entry + (sh.down[q][None, :] @ w.down[i])
        latency = float((compute + links)[0])
        loop_up, loop_down = float(w.loop_up[i]), float(w.loop_down[i])
        on_server = sh.on_server[q]
        if (loop_up > 0 or loop_down > 0) and on_server[w.work.loop_start]:
            if on_server[-1]:
                latency = float(np.float64(latency) - loop_down)
            else:
                latency = float(np.float64(latency) + loop_up)
        work = on_server[None, :] @ w.server_work[i]
        return latency, float(work[0])

    def planned(self, book: ProblemBook, key: tuple, wait_s: float, policy: str):
        """The plan at `wait_s` when the staircase decides it alone (its latencies inside
        the TTFT and TPOT limits for sure: judged by its whole latency), else None."""
        wait_s = float(wait_s)  # the engine's wait may be a numpy float: the same value
        found = self.pick(wait_s)
        if found is None or not found[1]:
            return None
        k = found[0]
        q = self.structure[k]
        sh, i = self.shared, self.row
        fast = self.fast[k]
        if fast is None:
            latency, work = self.evaluate(q, wait_s)
        else:
            latency, work = fast_latency(fast, wait_s), self.server_work[k]
        on_client = sh.views[q]
        feasible = latency <= sh.e2e_fits
        plan = counted_plan(
            on_client, latency, work, feasible, policy, sh.client_units[q], sh.switches[q]
        )
        return PlannedRequest.lazy(
            plan, self.deadline_s, sh.server_only_work[i], book_segment_facts,
            (book, key, on_client),
        )  # fmt: skip


def fast_latency(terms: tuple, wait_s: float) -> float:
    """`evaluate`'s latency at a wait per pass from a candidate's terms (`_fast`), in
    plain floats: the units' sum plus (the two entries' uplink and waits, plus the
    downlink sum), then the loop's term, in `evaluate`'s order."""
    compute, down, u1, p1, u2, p2, sign, loop = terms
    latency = compute + (((u1 + wait_s * p1) + (u2 + wait_s * p2)) + down)
    if sign:
        latency = latency + loop if sign > 0 else latency - loop
    return latency


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
    w = b.whole
    after = np.arange(w.server_t.shape[1] + 1) >= w.work.loop_start  # `after_loop`
    passes = np.where(after[None, :], 1 + w.work.steps[:, None], 1).astype(float)
    only = w.server_work.sum(axis=1).tolist()  # as `_planned`'s row sum
    for sizes in groups_of(w.allowed, rows):
        c = _criteria(b, sizes)
        st = _structures_of(c)
        if st is None:
            continue
        sh = _shared(b, st, passes, only)
        chunk = chunk_sizes(st)
        for a in range(0, sizes.shape[0], chunk):
            part = sizes[a : a + chunk]
            _store(planner, b, part, c, st, slice(a, a + part.shape[0]), sh)


def _entries(b: Batch, c: BatchCriteria, st: Structures, sizes: np.ndarray) -> np.ndarray:
    """(K, S, Q) entries onto the server each structure pays per criterion for a wait of
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
    return np.stack([per[k] for k in c.kinds], axis=0)


def _store(
    planner: Planner, b: Batch, sizes, c: BatchCriteria, st: Structures, rows, sh: Shared
) -> None:
    """Keep, per size of `rows`, the structures that are least-work feasible at some wait."""
    t0, work = latencies(c, st, rows)  # (K, S, Q), (S, Q)
    a = _entries(b, c, st, sizes)
    limit = c.limit[rows].T[:, :, None] * (1 + _SLACK)
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(a > 0, (limit - t0) / a, np.where(t0 <= limit, np.inf, -np.inf))
    wmax = room.min(axis=0)  # (S, Q)
    order = np.argsort(work, axis=1, kind="stable")  # per size by work: what keeping needs
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
    n_of, at = np.nonzero(keep)
    chosen = order[n_of, at]
    # per size, its kept structures least work first, then least latency criterion by
    # criterion, then in structure order
    latency_keys = [t0[k, n_of, chosen] for k in range(t0.shape[0] - 1, -1, -1)]
    ranked = np.lexsort((chosen, *latency_keys, work[n_of, chosen], n_of))
    n_of, chosen = n_of[ranked], chosen[ranked]
    works, wmaxs = work[n_of, chosen].tolist(), wmax[n_of, chosen].tolist()
    t0s, entries = t0[:, n_of, chosen].T.tolist(), a[:, n_of, chosen].T.tolist()
    qs = chosen.tolist()
    fast = _fast(sh, sizes[n_of], chosen)
    works_exact = stacked_dot(sh.on_server[chosen], b.whole.server_work[sizes[n_of]]).tolist()
    ends = np.cumsum(keep.sum(axis=1)).tolist()
    limits = c.limit[rows].tolist()
    deadline = b.deadline_s[sizes]
    # `Planner.get_at`'s bucket: the same float operations, elementwise
    quantum = (planner.bucket * deadline / (1 + np.maximum(b.whole.work.steps[sizes], 0))).tolist()
    deadline = deadline.tolist()
    first = 0
    for n, i in enumerate(sizes.tolist()):
        end = ends[n]
        key = (b.klass, b.group, b.prompts[i], b.outputs[i])
        planner.stairs[key] = Stairs(
            works[first:end], wmaxs[first:end], t0s[first:end], entries[first:end],
            qs[first:end], fast[first:end], works_exact[first:end], limits[n], sh, i,
            deadline[n], quantum[n],
        )  # fmt: skip
        first = end
