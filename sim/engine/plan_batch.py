"""Placement problems of many request sizes built at once, one (class, group) at a time.

A run plans every distinct (class, group, prompt, output) before it starts
(`RunSetup.index_plans`); one at a time, each size costs its request work, its unit times
on both devices, its problem and its token-SLA phases. `prefetch` builds them for all
sizes of a (class, group) together from `sim.costs.batched`'s rows (the same formulas,
element by element, so every array equals the one-at-a-time path's), checks in one go
what `SplitProblem` would validate, and registers each size's work, problem and phases
in the `ProblemBook`, made from the rows (without validating again) when first asked for.
Fixed placements are planned as a batch too (`sim.engine.plan_fixed`), and so are `dp`'s
plans under token SLAs (`sim.engine.plan_dp`). A size the batch cannot take (a device
with a cost table, a relative SLA whose server-only plan falls back, a problem that would
fail validation) is left to the one-at-a-time path, which stays the reference.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from sim.costs.batched import (
    WorkBatch,
    loop_times_many,
    resident_many,
    total_flops_many,
    transfer_times_many,
    unit_times_many,
    work_batch,
)
from sim.costs.precision import weight_copy
from sim.engine.heap import freeze_now
from sim.engine.planner import Planner, ProblemBook, RequestProblem
from sim.split import Link, SplitProblem
from sim.split.phased import Phases


@dataclass
class Arrays:
    """The arrays of K problems of one (class, group): rows as `build_problem`'s."""

    work: WorkBatch
    server_t: np.ndarray
    client_t: np.ndarray
    server_work: np.ndarray
    up: np.ndarray
    down: np.ndarray
    allowed: np.ndarray
    loop_up: np.ndarray
    loop_down: np.ndarray

    def valid(self) -> np.ndarray:
        """Rows `SplitProblem` would accept: finite non-negative arrays, loop within down."""
        ok = self.loop_down <= self.down[:, -1] + 1e-12
        for a in (self.server_t, self.client_t, self.server_work, self.up, self.down):
            if not (a.size and a.min() >= 0 and a.max() < np.inf):  # else all rows pass
                ok &= (a.min(axis=1) >= 0) & (a.max(axis=1) < np.inf)
        return ok

    def problem(self, i: int, deadline: float) -> SplitProblem:
        return fast_problem(
            client_time=self.client_t[i], server_time=self.server_t[i],
            server_work=self.server_work[i], uplink_time=self.up[i], downlink_time=self.down[i],
            deadline=deadline, client_allowed=self.allowed[i], loop_start=self.work.loop_start,
            loop_uplink_time=float(self.loop_up[i]), loop_downlink_time=float(self.loop_down[i]),
        )  # fmt: skip


def fast_problem(**fields) -> SplitProblem:
    """A `SplitProblem` from arrays already checked as its constructor would (no copies)."""
    sp = object.__new__(SplitProblem)
    fields.setdefault("server_entry_time", 0.0)
    for name, value in fields.items():
        object.__setattr__(sp, name, value)
    return sp


def build_arrays(book: ProblemBook, klass: int, group: int, prompts, outputs, link: Link):
    """The problem arrays of every size, or None when the batch cannot take the group."""
    ld, sc = book.ld, book.ld.scenario
    cls, grp = sc.workload.mix[klass], sc.clients[group]
    client, server = ld.client_devices[group], ld.server_device
    if client.cost_table is not None or server.cost_table is not None:
        return None
    if ld.pinned and ld.pinned[klass] is not None:
        return None  # pinned units: the one-at-a-time path (its searches read the pinning)
    model = ld.models[cls.model]
    # the client's copy of the weights (`sim.costs.precision`): the model itself, or the
    # model at the group's weight_dtype, whose work times the client and decides `fit`
    client_model = weight_copy(model, book.client_dtype(klass, group))
    try:
        w = work_batch(model, cls.task, prompts, outputs, book.split.granularity)
        cw = w
        if client_model is not model:
            cw = work_batch(client_model, cls.task, prompts, outputs, book.split.granularity)
        allowed = resident_many(cw, grp.resident, client)
    except ValueError:
        return None  # the one-at-a-time path raises it where the run asks
    server_t = unit_times_many(w, server, model.activation_dtype)
    client_t = unit_times_many(cw, client, model.activation_dtype)
    objective = book.split.objective
    server_work = server_t if objective == "server_time" else total_flops_many(w)
    return Arrays(
        w, server_t, client_t, server_work,
        transfer_times_many(w, link.uplink_mbps, link.rtt_ms),
        transfer_times_many(w, link.downlink_mbps, link.rtt_ms), allowed,
        loop_times_many(w, link.uplink_mbps, link.rtt_ms),
        loop_times_many(w, link.downlink_mbps, link.rtt_ms),
    )  # fmt: skip


def server_only_latency(a: Arrays) -> np.ndarray:
    """(K,) latency of the all-server placement, as `evaluate` computes it: the units'
    sum, the entry at boundary 0 and the exit at L (each link term has one non-zero
    product, so its dot product is that term), the loop's refund (0 without a loop)."""
    latency = a.server_t.sum(axis=1) + (a.up[:, 0] + a.down[:, -1])
    return latency - a.loop_down


@dataclass
class Batch:
    """The problems of K sizes of one (class, group) and their phases, ready to store."""

    klass: int
    group: int
    prompts: list
    outputs: list
    whole: Arrays
    deadline_s: np.ndarray  # (K,) the SLA (s)
    plan_deadline: np.ndarray  # (K,) the deadline planned for (less the slack)
    ok: np.ndarray  # (K,) rows the batch built
    prefill: Arrays | None = None  # rows per size (prompt, 1 output token)
    phased: np.ndarray | None = None  # (K,) rows with TTFT/TPOT phases
    step: dict | None = None  # step problem arrays
    limits: tuple = ()  # (ttft, tpot, e2e) s after the slack, 0 = none


def build_batch(book: ProblemBook, klass: int, group: int, sizes: list[tuple[int, int]]):
    """Every size's problem and phases of a (class, group), or None (one at a time then)."""
    sc = book.ld.scenario
    cls = sc.workload.mix[klass]
    link = book.nominal_link(group)
    prompts = np.array([s[0] for s in sizes], np.int64)
    outputs = np.array([s[1] for s in sizes], np.int64)
    whole = build_arrays(book, klass, group, prompts, outputs, link)
    if whole is None:
        return None
    ok = whole.valid()
    if cls.deadline_s is not None:
        deadline = np.full(len(sizes), float(cls.deadline_s))
    elif cls.deadline_factor is None:
        ttft, tpot = cls.ttft_deadline_s or 0.0, cls.tpot_deadline_s or 0.0
        deadline = ttft + tpot * np.maximum(outputs - 1, 0)
    else:  # relative SLA: the server-only plan must fit the provisional deadline 1.0
        latency = server_only_latency(whole)
        ok &= latency <= 1.0 * (1 + 1e-12)
        for peer in book.peers:  # a fleet: the least server-only latency over its sites
            if not peer.holds(klass):
                continue
            other = build_arrays(peer, klass, group, prompts, outputs, peer.nominal_link(group))
            if other is None:
                return None
            latency = np.minimum(latency, server_only_latency(other))
        deadline = cls.deadline_factor * latency
    keep = 1 - book.split.slack_fraction
    plan_deadline = deadline * keep
    ok &= plan_deadline > 0
    batch = Batch(klass, group, prompts.tolist(), outputs.tolist(), whole, deadline,
                  plan_deadline, ok)  # fmt: skip
    if (cls.ttft_deadline_s or cls.tpot_deadline_s) and (whole.work.steps > 0).any():
        _add_phases(book, batch, link, keep)
    return batch


class _StepArrays(dict):
    """The mean decode step's arrays by name (`client_t`, `server_t`, `server_work`, `up`,
    `down`, `loop_up`, `loop_down`): the whole request's less the prefill's, per step,
    never below 0 (as `split_phases`), each computed when first asked for (a fixed
    placement reads only a few of them)."""

    def __init__(self, whole: Arrays, prefill: Arrays):
        super().__init__()
        self.whole, self.prefill = whole, prefill
        self.k = np.maximum(whole.work.steps, 1).astype(float)

    def __missing__(self, name: str) -> np.ndarray:
        x, y = getattr(self.whole, name), getattr(self.prefill, name)
        value = self[name] = np.maximum((x - y) / (self.k[:, None] if x.ndim == 2 else self.k), 0.0)
        return value


def _add_phases(book: ProblemBook, b: Batch, link: Link, keep: float) -> None:
    """The prefill problems (one output token) and mean decode step problems, as
    `split_phases` builds them from the whole and the prefill problem."""
    cls = book.ld.scenario.workload.mix[b.klass]
    w = b.whole
    pre = build_arrays(book, b.klass, b.group, np.array(b.prompts), np.ones(len(b.prompts)), link)
    if pre is None:
        b.ok[:] = False
        return
    b.prefill = pre
    b.phased = w.work.steps > 0
    b.ok &= ~b.phased | pre.valid()
    step = _StepArrays(w, pre)
    b.ok &= ~b.phased | (step["loop_down"] <= step["down"][:, -1] + 1e-12)
    b.step = step
    b.limits = tuple(
        (x or 0) * keep for x in (cls.ttft_deadline_s, cls.tpot_deadline_s, cls.deadline_s)
    )


def register(book: ProblemBook, b: Batch) -> None:
    """Register every built size in the book: its work and problem (with phases) are made
    from the batch's rows when first asked for (`ProblemBook.get`, `.work`), so sizes
    planned by the batch alone (`sim.engine.plan_fixed`) never build objects."""
    maker = _Maker(book, b)
    rows = np.flatnonzero(b.ok).tolist()
    k, g, prompts, outputs = b.klass, b.group, b.prompts, b.outputs
    problems = {(k, g, prompts[i], outputs[i]): (maker, i) for i in rows}
    works = {(k, prompts[i], outputs[i]): (maker, i) for i in rows}
    # the first registration of a key stands, and nothing made already is replaced
    for new, made, pending in ((problems, book._problems, book.pending),
                               (works, book._work, book.pending_work)):  # fmt: skip
        for key in made.keys() & new.keys():
            del new[key]
        new.update(pending)  # earlier registrations win, as setdefault would
        pending.update(new)


class _Maker:
    """Makes one size's `RequestWork` and `RequestProblem` from a batch's rows."""

    def __init__(self, book: ProblemBook, b: Batch):
        self.book, self.b = book, b
        self.link = book.nominal_link(b.group)

    def work(self, i: int):
        return self.b.whole.work.row(i)

    def steps(self, i: int) -> int:
        return int(self.b.whole.work.steps[i])

    def deadline_s(self, i: int) -> float:
        return float(self.b.deadline_s[i])

    def problem(self, i: int) -> RequestProblem:
        """Size i's problem with its deadline (and phases), sharing the book's work."""
        b, book = self.b, self.book
        work = book.work(b.klass, b.prompts[i], b.outputs[i])
        problem = b.whole.problem(i, float(b.plan_deadline[i]))
        phases = None
        if b.phased is not None and b.phased[i]:
            phases = _phases(book, b, i, self.link, problem, work.steps)
        return RequestProblem(problem, work, float(b.deadline_s[i]), phases)


def _phases(book, b: Batch, i: int, link: Link, whole: SplitProblem, steps: int) -> Phases:
    """Size i's phases: its prompt's prefill problem (shared, as the book's) and its step."""
    pre_key = (b.klass, b.group, b.prompts[i], link)
    prefill = book._prefill.get(pre_key)
    if prefill is None:
        prefill = book._prefill[pre_key] = b.prefill.problem(i, 1.0)  # type: ignore[union-attr]
    s = b.step
    step = fast_problem(
        client_time=s["client_t"][i], server_time=s["server_t"][i],
        server_work=s["server_work"][i], uplink_time=s["up"][i], downlink_time=s["down"][i],
        deadline=np.inf, client_allowed=whole.client_allowed, loop_start=whole.loop_start,
        loop_uplink_time=s["loop_up"][i], loop_downlink_time=s["loop_down"][i],
        client_required=whole.client_required,
    )  # type: ignore[index]  # fmt: skip
    ttft, tpot, e2e = b.limits
    inf = float("inf")
    return Phases(prefill.with_deadline(np.inf), step, steps, ttft or inf, tpot or inf, e2e or inf)


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cycle collector paused while a run's plans are built (restored after, if it
    was on). Planning makes tens of thousands of long-lived objects and no garbage cycles;
    with the collector on, each of its collections scans the objects made so far again,
    which costs about as much as building them. Inside a `frozen_heap` block (a run) the
    plans are frozen when the block ends, as the run freezes them before it starts
    (`freeze_now`), so re-enabling the collector does not scan them all at once."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        freeze_now()
        if was_on:
            gc.enable()


def prefetch(planner: Planner, keys: Iterable[tuple]) -> None:
    """Build the problems of every distinct key at once per (class, group), and the plans
    of a fixed placement (`sim.engine.plan_fixed`); the rest is planned one at a time."""
    from sim.engine.plan_dp import plan_dp
    from sim.engine.plan_fixed import plan_fixed
    from sim.engine.plan_wait import prepare_waits

    book = planner.book
    mix = book.ld.scenario.workload.mix
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for k in keys:
        known = tuple(k) in book._problems or tuple(k) in book.pending
        if mix[k[0]].task != "synthetic" and not known:
            groups.setdefault((k[0], k[1]), []).append((k[2], k[3]))
    for (klass, group), sizes in groups.items():
        batch = build_batch(book, klass, group, sizes)
        if batch is None:
            continue
        register(book, batch)
        if not planner.dynamic:
            plan_fixed(planner, batch)
            plan_dp(planner, batch)
        else:
            prepare_waits(planner, batch)
