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
    same feasibility and least work (a first guess of 0 % always fails and searches again,
    one of 100 % cuts little)."""
    rng = np.random.default_rng(13 + block)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(meet, "MIN_UNITS", 1)
        mp.setattr(meet, "GAP", gap)
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


def test_bounds_by_doubling_equal_the_recurrences():
    """`lagrange.scans` (prefix and suffix products) against `least_after` unit by unit,
    for the latency and for a price's cost, in both directions."""
    rng = np.random.default_rng(3)
    for n in (1, 2, 3, 9, 50, 64, 65):
        p = _random(rng, n, 0.5)
        c = criteria_of([p], [p.deadline], p.server_work)
        t, work = meet._costs(c)
        lam = float(rng.uniform(0.01, 1.0))
        after, before = lagrange.scans(t[0, :n], work[:n], c.up[0], c.dn[0], lam)
        cc, cs, up, dn = (x.tolist() for x in (c.cc[0], c.cs[0], c.up[0], c.dn[0]))
        allowed, w = c.allowed.tolist(), c.work.tolist()
        for layer, scale, wk in ((0, 1.0, None), (1, lam, w)):
            v = [[scale * x for x in arr] for arr in (cc, cs, up, dn)]
            rest = lagrange.least_after(*v, allowed, wk)
            rev = [x[::-1] for x in (v[0], v[1], v[3], v[2], allowed)]
            ahead = lagrange.least_after(*rev, None if wk is None else wk[::-1])
            np.testing.assert_allclose(after[layer, :n], rest[1:], rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(before[layer, :n], ahead[::-1][:n], rtol=1e-12, atol=1e-15)


def test_the_price_bounds_the_optimum_from_below():
    """The bound from the start at the chosen price never exceeds the least work (by
    exhaustive search), and is close to it on the benchmark's kind of chain."""
    rng = np.random.default_rng(11)
    for _ in range(40):
        n = int(rng.integers(2, 13))
        p = _random(rng, n, float(rng.uniform(0.05, 0.95)))
        latency, work = evaluate_many(p, _placements(p.client_allowed))
        fits = latency <= p.deadline
        if not fits.any():
            continue
        c = criteria_of([p], [p.deadline], p.server_work)
        t, w = meet._costs(c)
        lam, lower = lagrange.price(t[0, :n], w[:n], float(c.dn[0, n]), p.deadline)
        assert lam >= 0
        assert lower <= float(work[fits].min()) * (1 + 1e-12)
    p = _random(np.random.default_rng(0), 50, 0.5)
    c = criteria_of([p], [p.deadline], p.server_work)
    t, w = meet._costs(c)
    _, lower = lagrange.price(t[0, :50], w[:50], float(c.dn[0, 50]), p.deadline)
    assert lower >= 0.95 * solve_dp(p).server_work
