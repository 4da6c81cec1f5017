"""Plans of fixed placements for many request sizes at once (static plans, no wait).

`server_only` puts every unit on the server, and so does every deadline policy when the
client holds no unit and the request has token SLAs (`Planner._solve`'s one placement).
Their plans need no search: latency, server work, feasibility and segments are the
placement's, computed here for all sizes of a (class, group) with numpy, each element as
the one-at-a-time path computes it (`evaluate`: the units' row sum, one entry and one exit
term; the work as the same (1, L) @ (L,) product per row, run as one stacked matmul
(`stacked_dot`); segments' sums in unit order, built only if read). A size whose
placement misses its own deadline (the policy would fall back to the least-latency
search) is left to the one-at-a-time path.
"""

from __future__ import annotations

import numpy as np

from sim.engine.network import DOWN, UP
from sim.engine.plan_batch import Batch, server_only_latency
from sim.engine.planner import SERVER, XFER, PlannedRequest, Planner, counted_plan
from sim.split.phased import DEADLINE_POLICIES

_PLAN_FITS = 1 + 1e-12  # make_plan's slack
_PHASE_FITS = 1 + 1e-9  # judge's and meets' slack


def _rows(planner: Planner, b: Batch) -> np.ndarray:
    """Rows whose plan is all on the server and needs no search."""
    if planner.policy == "server_only":
        return b.ok.copy()
    if planner.policy in DEADLINE_POLICIES and b.phased is not None:
        return b.ok & b.phased & ~b.whole.allowed.any(axis=1)
    return np.zeros_like(b.ok)


def plan_fixed(planner: Planner, b: Batch) -> None:
    """Store the static plan of every size of the batch whose placement is all-server."""
    rows = _rows(planner, b)
    w = b.whole
    latency = server_only_latency(w)
    feasible = latency <= b.plan_deadline * _PLAN_FITS
    if planner.policy == "server_only":  # the placement itself must fit, else a search
        rows &= feasible
    index = np.flatnonzero(rows)
    if not index.size:
        return
    ok = _judged(b, latency, feasible)
    server_only_work = w.server_work.sum(axis=1)
    L = w.server_t.shape[1]
    # `evaluate`'s (1, L) @ (L,) product per row: a stack of them runs the same kernel
    work = stacked_dot(np.ones((index.size, L)), w.server_work[index])
    on_client = np.zeros(L, bool)
    on_client.setflags(write=False)
    facts = _Facts(b)
    columns = zip(
        index.tolist(), latency[index].tolist(), work.tolist(), ok[index].tolist(),
        b.deadline_s[index].tolist(), server_only_work[index].tolist(), strict=True,
    )  # fmt: skip
    plans, policy = planner._plans, planner.policy
    for i, lat, wk, feas, dl, only in columns:
        key = (b.klass, b.group, b.prompts[i], b.outputs[i])
        if key in plans:
            continue
        plan = counted_plan(on_client, lat, wk, feas, policy, 0, 2)  # all on the server
        plans[key] = PlannedRequest.lazy(plan, dl, only, facts, (i,))


def stacked_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(K,) row-by-row products of two (K, n) arrays as `a[k][None, :] @ b[k]` computes
    each (`evaluate`'s products): one matmul over the stack runs the same (1, n) @ (n, 1)
    kernel per row, unlike `(a * b).sum(axis=1)`, whose summation order differs."""
    return np.matmul(a[:, None, :], b[:, :, None])[:, 0, 0]


class _Facts:
    """Each size's all-server segments, built for the whole batch when first asked for
    (`PlannedRequest.lazy`: only the request engine reads them)."""

    def __init__(self, b: Batch):
        self.b, self.made = b, None

    def __call__(self, i: int) -> tuple:
        if self.made is None:
            self.made = _server_segments(self.b)
        segments, has_server, nbytes = self.made
        return segments[i], has_server[i], nbytes[i]


def _judged(b: Batch, latency: np.ndarray, feasible: np.ndarray) -> np.ndarray:
    """Feasibility as planned: the deadline's without phases, else `judge`'s (TTFT, TPOT
    and any end-to-end limit, each on its own phase problem)."""
    if b.phased is None:
        return feasible
    ttft_s, tpot_s, e2e_s = (x or np.inf for x in b.limits)
    pre, s = b.prefill, b.step
    ttft = server_only_latency(pre)  # type: ignore[arg-type]
    tpot = (s["server_t"].sum(axis=1) + (s["up"][:, 0] + s["down"][:, -1])) - s["loop_down"]
    met = (ttft <= ttft_s * _PHASE_FITS) & (tpot <= tpot_s * _PHASE_FITS)
    return np.where(b.phased, met & (latency <= e2e_s * _PHASE_FITS), feasible)


def _server_segments(b: Batch) -> tuple[list, list, list]:
    """Each size's all-server segments as `plan_segments` builds them (up at boundary 0,
    the server's units summed in order, down at L less the tokens that loop there), whether
    a server segment is left (one of no time is dropped) and the bytes moved (the two
    transfers' sum, as `_planned` adds them from 0)."""
    w = b.whole.work
    steps = w.steps
    n0 = w.act_pass[:, 0] + steps * w.act_step[:, 0]
    c0 = (w.act_pass[:, 0] > 0).astype(float) + steps * (w.act_step[:, 0] > 0).astype(float)
    nl = w.act_pass[:, -1] + steps * w.act_step[:, -1]
    cl = (w.act_pass[:, -1] > 0).astype(float) + steps * (w.act_step[:, -1] > 0).astype(float)
    loops = steps > 0
    nl = np.where(loops, nl - steps * w.loop_bytes, nl)
    cl = np.where(loops, cl - steps, cl)
    total = np.cumsum(b.whole.server_t, axis=1)[:, -1]
    out = []
    for a, ca, t, z, cz in zip(n0.tolist(), c0.tolist(), total.tolist(), nl.tolist(),
                               cl.tolist(), strict=True):  # fmt: skip
        segs = [(XFER, UP, a, ca), (SERVER, t), (XFER, DOWN, z, cz)]
        out.append(tuple(s for s in segs if not (s[0] != XFER and s[1] == 0.0)))
    return out, (total != 0.0).tolist(), (0 + n0 + nl).tolist()
