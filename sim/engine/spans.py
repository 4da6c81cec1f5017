"""Decode spans: runs of decode-only iterations the token server advances as one event.

Between two events that change a batch, iterations of a batch of decode steps differ only
in every context growing by a token, so their times follow in closed form
(`BatchCost.close_span`). These are the span's record and the rules for how long a span
may be; `TokenServer` runs spans (`_run_span`), cuts them when a visit becomes ready
(`_cut_span`) and applies their iterations in bulk (`_apply_silent`).
"""

from __future__ import annotations

import numpy as np
import simpy


class DecodeSpan:
    """A run of decode-only iterations of one batch, advanced as one SimPy wait.

    `d` holds the iterations' durations (s), `t` their start times and, at `t[k]`, the end
    of the last; `k` shrinks when a visit becomes ready inside the span; `done` is the
    event the server waits on (succeeded with the `tag` of the current end);
    `ewma0` is the iteration-time EWMA after the first iteration began."""

    __slots__ = ("batch", "d", "t", "k", "ewma0", "done", "tag")

    def __init__(self, batch: list, d: np.ndarray, t: np.ndarray, k: int, ewma0: float,
                 done: simpy.Event):  # fmt: skip
        self.batch, self.d, self.t, self.k, self.ewma0 = batch, d, t, k, ewma0
        self.done = done
        self.tag: object | None = None


def span_length(batch: list, preempt: bool, kv_used: float, kv_capacity: float) -> int:
    """How many iterations, from this one, the formed batch repeats unchanged but for every
    context growing by a token: 1 unless it is all decode steps of requests whose steps stay
    on the server (`span_ok`); then up to the first request's last step and, with `preempt`,
    up to the iteration whose KV growth could preempt."""
    k = 1 << 62
    for r in batch:
        if not r.span_ok or r.k == 0 or r.recompute:
            return 1
        k = min(k, r.prog.steps - r.k + 1)
    if preempt and k > 1:
        k = kv_span_limit(batch, k, kv_used, kv_capacity)
    return k


def kv_span_limit(batch: list, k: int, kv_used: float, kv_capacity: float) -> int:
    """With `preempt`, the iterations that surely grow KV without preempting.

    Stepping checks, at each iteration, the KV in use (a float sum, request by request)
    plus the batch's growth against the capacity. The span stops while that check is
    still clear by a margin far above the sums' rounding (1e-9 of the capacity), so the
    iterations near the boundary are stepped and decided exactly as stepping decides.
    """
    total = 0.0
    for r in batch:
        total += r.grow
    if total <= 0:
        return k
    margin = kv_capacity * (1 - 1e-9) - total - kv_used
    clear = int(margin // total) if margin > 0 else -1  # later iterations surely clear
    return max(1, min(k, clear + 1))
