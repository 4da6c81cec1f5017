"""The exact DP's fast search for one latency and no loop (`sim.split.meet`): the same
optimum as the forward label search (`sim.split.front`) and as exhaustive search, whatever
its block size, first guess (a guess that fails forces the search again) and size; its
Lagrangian bounds (`sim.split.lagrange`) equal the plain recurrences and never exceed the
optimum; among plans of equal work it returns one of least latency."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.split import SplitProblem, evaluate, front, lagrange, meet
from sim.split.dp import fastest_placement, solve_dp
from sim.split.labels import criteria_of
from sim.split.problem import evaluate_many, make_plan

_time = st.floats(0.0, 2.0, allow_nan=False)


def _random(rng: np.random.Generator, n: int, binding: float) -> SplitProblem:
    """Continuous times like the benchmark's, some units pinned to the server, waits per
    boundary on some; the deadline `binding` of the way from all-server to all-client."""
    server = rng.uniform(1e-3, 10e-3, n)
    wait = rng.choice([0.0, 2e-3]) * rng.random(n + 1) if rng.random() < 0.5 else 0.0
    p = SplitProblem(
        server * rng.uniform(2, 20, n), server, server * rng.uniform(0.5, 2, n),
        rng.uniform(1e-3, 20e-3, n + 1), rng.uniform(1e-3, 20e-3, n + 1), 1.0,
        rng.random(n) < 0.9, server_entry_time=wait,
    )  # fmt: skip
    fast = evaluate(p, np.zeros(n, bool))[0]
    slow = evaluate(p, p.client_allowed)[0]
    return p.with_deadline(max(fast + binding * (slow - fast), 1e-4))


def _search(p: SplitProblem, fn) -> SplitProblem:
    """(feasible, work, latency) of a search's answer (`make_plan` as the exact check)."""
    c = criteria_of([p], [p.deadline], p.server_work)
    found = fn(c, lambda oc: make_plan(p, oc, "dp").feasible)
    if found is None:
        return False, None, None
    plan = make_plan(p, found, "dp")
    return plan.feasible, plan.server_work, plan.latency


@pytest.mark.parametrize("block", [1, 2, 3, 4])
@pytest.mark.parametrize("gap", [0.0, 0.015, 1.0])
def test_meet_finds_the_forward_searchs_optimum(block, gap):
    """Random chains of 1-70 units, deadlines from below the fastest plan to loose: the
    same feasibility and least work (a first guess of the bound itself mostly fails and
    searches again, one 100 % above it cuts little)."""
    rng = np.random.default_rng(13 + block)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(meet, "MIN_UNITS", 1)
        mp.setattr(meet, "GAP", gap)
        mp.setattr(meet, "GAP_UNIT", 20 * gap)
        for _ in range(40):
            p = _random(rng, int(rng.integers(1, 71)), float(rng.uniform(-0.05, 1.1)))
            ok, work, latency = _search(p, lambda c, a: meet.search(c, a, block))
            ok_f, work_f, _ = _search(p, front.search)
            assert ok == ok_f
            if ok:
                assert latency <= p.deadline * (1 + 1e-12)
                assert abs(work - work_f) <= 1e-9 * max(work_f, 1e-12)


@st.composite
def chains(draw, max_units: int = 10):
    """A chain without a generation loop, continuous times, a deadline at or between the
    placements' latencies."""
    n = draw(st.integers(1, max_units))
    cc, cs, w = (np.array(draw(st.lists(_time, min_size=n, max_size=n))) for _ in range(3))
    up, dn = (np.array(draw(st.lists(_time, min_size=n + 1, max_size=n + 1))) for _ in "ud")
    allowed = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    p = SplitProblem(cc, cs, w, up, dn, 1.0, allowed, server_entry_time=draw(_time) / 4)
    latency, _ = evaluate_many(p, _placements(allowed))
    pick = draw(st.sampled_from(sorted(latency.tolist())))
    return p.with_deadline(max(pick * draw(st.sampled_from([1.0, 1.0001, 0.9999, 1.3])), 1e-6))


def _placements(allowed: np.ndarray) -> np.ndarray:
    rows = np.array(list(itertools.product([False, True], repeat=allowed.shape[0])), bool)
    return rows[(~rows | allowed).all(axis=1)]


@settings(max_examples=300, deadline=None)
@given(p=chains(), block=st.integers(1, 4), gap=st.sampled_from([0.0, 0.015]))
def test_meet_is_exact_on_small_chains(p, block, gap):
    """Against exhaustive search, through `solve_dp`, the fast search on every size."""
    latency, work = evaluate_many(p, _placements(p.client_allowed))
    fits = latency <= p.deadline * (1 + 1e-12)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(meet, "MIN_UNITS", 1)
        mp.setattr(meet, "BLOCK", block)
        mp.setattr(meet, "GAP", gap)
        mp.setattr(meet, "GAP_UNIT", 20 * gap)
        plan = solve_dp(p)
    assert plan.feasible == bool(fits.any())
    if fits.any():
        best = float(work[fits].min())
        assert plan.server_work <= best + 1e-9 * max(best, 1e-9)
        assert plan.latency <= p.deadline * (1 + 1e-12)
    assert not (plan.on_client & ~p.client_allowed).any()


def test_equal_work_the_least_latency():
    """No work anywhere: every plan ties on work (exactly, 0), so dp's plan is one of
    least latency, the fastest placement's."""
    rng = np.random.default_rng(7)
    for n in (5, 30, 60):
        p = _random(rng, n, 0.5)
        p = SplitProblem(p.client_time, p.server_time, np.zeros(n), p.uplink_time,
                         p.downlink_time, p.deadline, p.client_allowed)  # fmt: skip
        plan = solve_dp(p)
        assert plan.server_work == 0.0
        assert plan.latency == evaluate(p, fastest_placement(p))[0]


def _parts(p: SplitProblem, x: np.ndarray, u: int, lam: float) -> tuple[float, float]:
    """By hand, for placement x (True = client) and a price: the cost (lam x latency +
    work; latency alone when lam is None) of what comes after unit u (its units, the
    switches at boundaries u + 1..L, the return to the client) and of what comes before
    it (units 0..u - 1, the switches at boundaries 0..u)."""
    path = np.r_[True, x, True]  # the client at both ends
    unit = np.where(x, p.client_time, p.server_time)
    switch = np.where(path[:-1] & ~path[1:], p.entry_times, 0.0)
    switch = switch + np.where(~path[:-1] & path[1:], p.downlink_time, 0.0)
    work = np.where(x, 0.0, p.server_work)
    scale = 1.0 if lam is None else lam
    extra = (lambda s: 0.0) if lam is None else (lambda s: float(work[s].sum()))
    after = scale * (unit[u + 1 :].sum() + switch[u + 1 :].sum()) + extra(slice(u + 1, None))
    before = scale * (unit[:u].sum() + switch[: u + 1].sum()) + extra(slice(0, u))
    return after, before


def test_bounds_are_the_least_cost_of_the_rest():
    """`lagrange.bounds`' rows at each step's block end against exhaustive search: the
    least latency (and least lam x latency + work) of what follows each forward block and
    of what precedes each backward block, per location of the block's last unit."""
    rng = np.random.default_rng(3)
    for n in (1, 2, 5, 9, 10):
        p = _random(rng, n, 0.5)
        c = criteria_of([p], [p.deadline], p.server_work)
        units = meet._units(n, 3)
        table = meet._costs(c)
        blocks = meet._blocks(table, units)[..., 0]
        ref = lagrange.reference(table[0, :n, 0], table[0, :n, 1, 0], float(c.dn[0, n]), p.deadline)
        lam, _, rest = lagrange.bounds(blocks, meet._cross(c), p.deadline, ref)
        assert lam > 0
        xs = _placements(p.client_allowed)
        for k in range(units.shape[1]):
            for row, (chain, loc) in enumerate(itertools.product((0, 1), (0, 1))):
                u = int(units[chain, k, -1])
                if u == n:  # a step that keeps its labels: no bound asked
                    continue
                here = xs[xs[:, u] == (loc == 0)]
                if len(here) == 0:  # the unit cannot be there: no label needs the row
                    continue
                want = [min(_parts(p, x, u, price)[chain] for x in here) for price in (None, lam)]
                got = p.deadline - rest[k, row, 0], lam * p.deadline - rest[k, row, 1]
                np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_the_price_bounds_the_optimum_from_below():
    """The bound from the start at the chosen price never exceeds the least work (by
    exhaustive search), and is close to it on the benchmark's kind of chain."""

    def lower(p: SplitProblem) -> float:
        c = criteria_of([p], [p.deadline], p.server_work)
        n = p.n_units
        table = meet._costs(c)
        blocks = meet._blocks(table, meet._units(n, 3))[..., 0]
        ref = lagrange.reference(table[0, :n, 0], table[0, :n, 1, 0], float(c.dn[0, n]), p.deadline)
        return lagrange.bounds(blocks, meet._cross(c), p.deadline, ref)[1]

    rng = np.random.default_rng(11)
    for _ in range(40):
        p = _random(rng, int(rng.integers(2, 13)), float(rng.uniform(0.05, 0.95)))
        latency, work = evaluate_many(p, _placements(p.client_allowed))
        fits = latency <= p.deadline
        if fits.any():
            assert lower(p) <= float(work[fits].min()) * (1 + 1e-12)
    p = _random(np.random.default_rng(0), 50, 0.5)
    assert lower(p) >= 0.95 * solve_dp(p).server_work


def test_a_rejected_best_falls_back_to_the_forward_order():
    """When the caller's exact check rejects the best plan (float noise at the limit),
    the next best in the labels' order is returned, as the forward search does."""
    rng = np.random.default_rng(5)
    for n in (30, 50):
        p = _random(rng, n, 0.5)
        c = criteria_of([p], [p.deadline], p.server_work)
        fits = _fits(p)
        best = meet.search(c, fits)

        def all_but_best(oc: np.ndarray, fits=fits, best=best) -> bool:
            return fits(oc) and not np.array_equal(oc, best)

        second = meet.search(c, all_but_best)
        assert second is not None and not np.array_equal(second, best)
        assert np.array_equal(second, front.search(c, all_but_best))
        assert make_plan(p, second, "dp").server_work >= make_plan(p, best, "dp").server_work


def _fits(p: SplitProblem):
    """The exact check `dp` passes: the placement's plan meets the deadline."""
    return lambda oc: make_plan(p, oc, "dp").feasible
