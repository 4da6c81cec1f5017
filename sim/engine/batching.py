"""Iteration-level server costs: one roofline over a whole batch (continuous batching).

An iteration runs every scheduled request's server work at once. Per server unit used in
the iteration, the time is the roofline of the batch as a whole:

    max(sum of the requests' FLOPs / FLOP/s, (weight bytes once + sum of the requests'
        own bytes: KV-cache reads and writes, activations, gathered embeddings) / bytes/s)
    + the unit's fixed time once (`sim.costs.kernels.unit_overheads_s`: per kernel it launches)

so batching amortises weight reads, and offloading some requests' units removes only
their own FLOPs and KV bytes, not the weight reads the other requests still need. Units
of different models are separate kernels: their times add. With one request the time is
exactly the request-granularity unit time (the same RequestWork coefficients).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from sim.catalog.specs import ModelSpec
from sim.costs.roofline import bound_s
from sim.costs.units import Unit
from sim.costs.work import Pass, _unit_cost

_EPS_TOKENS = 1e-12  # a pass of (almost) no tokens reads exactly the shared weights


@cache
def weight_read_bytes(model: ModelSpec, units: tuple[Unit, ...]) -> np.ndarray:
    """Bytes of weights each unit reads once per pass, whatever the number of tokens.

    The limit of a pass's bytes as its tokens go to zero: full weight matrices of blocks and
    heads; a text embedding only gathers its tokens' rows, so it has no shared read.
    """
    p = Pass(tokens=_EPS_TOKENS, out_tokens=_EPS_TOKENS)
    out = np.array([_unit_cost(model, u, p)[1] for u in units])
    out = np.where(out < 1.0, 0.0, out)  # only the vanishing per-token part was left
    out.setflags(write=False)
    return out


class DecodeGroup:
    """Requests of one model whose decode-step coefficients agree (summed per unit)."""

    __slots__ = (
        "model", "f0", "f1", "b0", "b1", "n_diff", "c_diff", "active", "coef", "extra",
    )  # fmt: skip

    def __init__(self, model: int, f0, f1, b0_own, b1):
        self.model, self.f0, self.f1, self.b0, self.b1 = model, f0, f1, b0_own, b1
        # (per step, per token) x rows (FLOPs, own bytes, 0: the row of the fixed times)
        zero = np.zeros(len(f0))
        self.coef = np.array(((f0, b0_own, zero), (f1, b1, zero)))
        n = len(f0) + 1
        self.n_diff = [0.0] * n  # counts as floats: whole numbers, exact
        self.c_diff = [0.0] * n
        self.active = False
        # the decode cohort's steps (`sim.engine.cohort`), rows (n_diff, c_diff), or None
        self.extra: np.ndarray | None = None

    def summed(self) -> np.ndarray:
        """Rows (steps, summed context) per unit, cumulated from the difference lists and
        the cohort's rows: whole numbers, so exact in any order."""
        diff = np.array((self.n_diff, self.c_diff))
        if self.extra is not None:
            diff += self.extra
        return np.add.accumulate(diff, axis=1)


class BatchCost:
    """Accumulates one iteration's work per server unit and prices it by roofline."""

    def __init__(
        self, flops_per_s: float, bytes_per_s: float, overhead_s: float, non_overlap: float = 0.0
    ):
        self.flops_per_s, self.bytes_per_s, self.overhead_s = flops_per_s, bytes_per_s, overhead_s
        self.non_overlap = non_overlap  # the device's (sim.costs.roofline.bound_s)
        self.weights: list[np.ndarray] = []  # per model: shared weight bytes per unit
        self.overheads: list[np.ndarray] = []  # per model: fixed seconds per unit and run
        self.groups: list[DecodeGroup] = []
        self._group_of: dict[tuple, int] = {}
        self._flops: list[np.ndarray] = []
        self._bytes: list[np.ndarray] = []
        self._used: list[np.ndarray] = []
        self._touched: set[int] = set()
        self._rates = np.array([[flops_per_s], [bytes_per_s], [1.0]])  # divide the rows by them
        # per model: rows (0, weight bytes, fixed seconds) added to the summed steps' work
        self._zero_weights: list[np.ndarray] = []

    def add_model(self, weights: np.ndarray, overheads_s: np.ndarray | None = None) -> int:
        """A model's units: their shared weight bytes and fixed seconds per run (default:
        the accumulator's scalar `overhead_s` for every unit)."""
        self.weights.append(weights)
        n = len(weights)
        if overheads_s is None:
            overheads_s = np.full(n, self.overhead_s)
        self.overheads.append(np.asarray(overheads_s, float))
        self._zero_weights.append(np.array((np.zeros(n), weights, self.overheads[-1])))
        self._flops.append(np.zeros(n))
        self._bytes.append(np.zeros(n))
        self._used.append(np.zeros(n, bool))
        return len(self.weights) - 1

    def group(self, model: int, f0, f1, b0, b1) -> int:
        """The decode group of these coefficients (b0 includes the weights; they are split off)."""
        key = (model, f0.tobytes(), f1.tobytes(), b0.tobytes(), b1.tobytes())
        g = self._group_of.get(key)
        if g is None:
            own = np.maximum(b0 - self.weights[model], 0.0)
            self.groups.append(DecodeGroup(model, f0, f1, own, b1))
            g = self._group_of[key] = len(self.groups) - 1
        return g

    def add_pass(self, model: int, a: int, b: int, flops: np.ndarray, bytes_own: np.ndarray):
        """A prefill (or recompute) pass over units a..b-1 (bytes without the shared weights)."""
        self._flops[model][a:b] += flops[a:b]
        self._bytes[model][a:b] += bytes_own[a:b]
        self._used[model][a:b] = True
        self._touched.add(model)

    def add_step(self, group: int, a: int, b: int, context: float) -> None:
        """One decode step at `context` cached tokens over units a..b-1."""
        g = self.groups[group]
        g.n_diff[a] += 1
        g.n_diff[b] -= 1
        g.c_diff[a] += context
        g.c_diff[b] -= context
        g.active = True

    def close(self) -> float:
        """Seconds of the iteration; resets the accumulators."""
        if not self._touched:  # no pass: decode steps only, perhaps of a single group
            active = [g for g in self.groups if g.active]
            if len(active) == 1:
                return self._close_steps(active[0])
        return self._close_all()

    def _close_all(self) -> float:
        """`close` of any iteration: passes and every group's steps added per unit."""
        for g in self.groups:
            if not g.active:
                continue
            n, c = g.summed()[:, :-1]
            m = g.model
            self._flops[m] += n * g.f0 + c * g.f1
            self._bytes[m] += n * g.b0 + c * g.b1
            self._used[m] |= n > 0
            self._touched.add(m)
            k = len(g.n_diff)
            g.n_diff = [0.0] * k
            g.c_diff = [0.0] * k
            g.active = False
        total = 0.0
        for m in self._touched:
            used = self._used[m]
            f, b = self._flops[m][used], self._bytes[m][used] + self.weights[m][used]
            t = bound_s(f / self.flops_per_s, b / self.bytes_per_s, self.non_overlap)
            t = t + self.overheads[m][used]
            total += float(t.sum())
            self._flops[m][:] = 0.0
            self._bytes[m][:] = 0.0
            used[:] = False
        self._touched.clear()
        return total

    def _close_steps(self, g: DecodeGroup) -> float:
        """`close` of an iteration of one decode group's steps and nothing else: the same
        floats by the same elementwise operations (the model's zeroed accumulators added
        in as a row of zeros above the weights), with as few numpy calls as that allows:
        FLOPs, bytes and the units' fixed times are the three rows of one array (the last
        0 + 0 + fixed, divided by 1: the fixed times themselves), both products (per step
        and per cached token) one multiplication, both lines of `bound_s` one expression,
        and the sum numpy's reduction itself (what `ndarray.sum` calls)."""
        size = len(g.n_diff)
        nc = g.summed()
        used = nc[0, :-1] > 0
        p = nc[:, None, :-1] * g.coef  # [steps, context] x [FLOPs, bytes, 0] per unit
        work = (p[0] + p[1]) + self._zero_weights[g.model]
        x = work.compress(used, axis=1) / self._rates
        xy = x[:2]
        if self.non_overlap:  # x + g*y and y + g*x (`bound_s`)
            xy = xy + self.non_overlap * xy[::-1]
        t = np.maximum(xy[0], xy[1]) + x[2]
        g.n_diff = [0.0] * size
        g.c_diff = [0.0] * size
        g.active = False
        return float(np.add.reduce(t))

    def close_span(self, k: int) -> np.ndarray:
        """Seconds of `k` decode-only iterations (resets the accumulators, like `close`).

        The accumulated batch is the first iteration; in each following one every decode
        step's context is one token longer, so per unit the summed context grows by the
        number of steps on it. Each iteration's time is computed with the same operations,
        in the same order, as `close` would compute it, so the span's times equal the times
        of stepping the iterations one by one (bit for bit). Only decode steps may have
        been added (no passes).
        """
        j = np.arange(k, dtype=float)[:, None]
        steps = []  # (group, units on which it ran, summed context) of the active groups
        for g in self.groups:
            if not g.active:
                continue
            n, c = g.summed()[:, :-1]
            steps.append((g, n, c))
            self._used[g.model] |= n > 0
            self._touched.add(g.model)
            size = len(g.n_diff)
            g.n_diff = [0.0] * size
            g.c_diff = [0.0] * size
            g.active = False
        # Only the used units' columns: elementwise the same operations as `close`, so the
        # per-iteration sums over them are the same floats.
        per_model: dict[int, list[np.ndarray]] = {}
        for g, n, c in steps:
            used = self._used[g.model]
            n, c = n[used], c[used]
            cj = c + j * n  # summed context per iteration and unit (whole numbers)
            flops = n * g.f0[used] + cj * g.f1[used]
            nbytes = n * g.b0[used] + cj * g.b1[used]
            acc = per_model.get(g.model)
            if acc is None:
                per_model[g.model] = [0.0 + flops, 0.0 + nbytes]
            else:
                acc[0] += flops
                acc[1] += nbytes
        total = np.zeros(k)
        for m in self._touched:
            used = self._used[m]
            flops, nbytes = per_model[m]
            b = nbytes + self.weights[m][used]
            t = bound_s(flops / self.flops_per_s, b / self.bytes_per_s, self.non_overlap)
            t = t + self.overheads[m][used]
            total += t.sum(axis=1)
            used[:] = False
        self._touched.clear()
        return total
