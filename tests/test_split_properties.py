"""Property tests of the split policies against an exhaustive oracle over all 2^L placements.

Grid problems have every time an integer multiple of a step (including steps such as 0.1 and
1/3 that binary floats cannot hold exactly); the oracle evaluates an integer copy of the
problem, so its latencies and the deadline test are exact. With `time_step` equal to that
step the DP must be exactly optimal.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sim.split import POLICIES, SplitProblem, evaluate, evaluate_many, solve

STEPS = [1.0, 0.5, 0.1, 0.01, 0.07, 0.3, 1 / 3, 1 / 7, 0.001]
OTHER_POLICIES = ["greedy", "greedy_ratio", "best_cut", "server_only", "client_only"]
ALL_POLICIES = ["dp", *OTHER_POLICIES]
REL = 1e-9
FITS = 1 + 1e-12  # the library's own slack for float error against the deadline

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def close(a: float, b: float, rel: float = REL) -> bool:
    return abs(a - b) <= rel * max(1.0, abs(a), abs(b))


def all_placements(n: int) -> np.ndarray:
    """Every on_client vector of n units, as rows of a (2^n, n) bool array."""
    return ((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1).astype(bool)


@dataclass
class Oracle:
    """All placements the problem allows, with exact (integer-step) latency and work."""

    placements: np.ndarray
    latency: np.ndarray
    work: np.ndarray

    @classmethod
    def of(cls, problem: SplitProblem) -> Oracle:
        oc = all_placements(problem.n_units)
        oc = oc[~(oc & ~problem.client_allowed).any(axis=1)]
        latency, work = evaluate_many(problem, oc)
        return cls(oc, latency, work)

    def best_work(self, limit: float) -> float:
        ok = self.latency <= limit
        return float(self.work[ok].min()) if ok.any() else np.inf


@dataclass
class GridCase:
    problem: SplitProblem  # times in seconds: whole multiples of `step`
    exact: SplitProblem  # the same problem in whole steps (exact float arithmetic)
    step: float

    @property
    def deadline_steps(self) -> float:
        return self.exact.deadline


def _grid_parts(draw, n: int):
    ints = st.integers(0, 20)
    links = st.integers(0, 10)
    parts = {
        "client_time": draw(st.lists(ints, min_size=n, max_size=n)),
        "server_time": draw(st.lists(ints, min_size=n, max_size=n)),
        "uplink_time": draw(st.lists(links, min_size=n + 1, max_size=n + 1)),
        "downlink_time": draw(st.lists(links, min_size=n + 1, max_size=n + 1)),
    }
    if draw(st.booleans()):
        parts["loop_start"] = draw(st.integers(0, n - 1))
        parts["loop_uplink_time"] = draw(links)
        parts["loop_downlink_time"] = draw(st.integers(0, parts["downlink_time"][n]))
    return parts


@st.composite
def grid_cases(draw, deadline_mode: str = "binding", max_units: int = 14) -> GridCase:
    """A problem on a time grid; `deadline_mode` is binding, infeasible or loose."""
    n = draw(st.integers(1, max_units))
    step = draw(st.sampled_from(STEPS))
    parts = _grid_parts(draw, n)
    work = draw(
        st.lists(
            st.floats(0, 10, allow_nan=False, allow_infinity=False).map(lambda w: round(w, 3)),
            min_size=n,
            max_size=n,
        )
    )
    if draw(st.booleans()):
        allowed = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    else:
        allowed = [True] * n
    common = {"server_work": work, "client_allowed": allowed}

    exact = SplitProblem(**parts, **common, deadline=1.0)
    oracle = Oracle.of(exact)
    lo, hi = float(oracle.latency.min()), float(oracle.latency.max())
    if deadline_mode == "binding":
        frac = draw(st.floats(0, 1.1))
        deadline = max(1.0, float(np.round(lo + frac * (hi - lo))))
    elif deadline_mode == "infeasible":
        assume(lo >= 1)
        deadline = lo - 0.5  # between grid points: the grid floors it
    else:  # loose: above every placement's latency
        deadline = hi + draw(st.integers(0, 3))
        deadline = max(deadline, 1.0)

    def scaled(v):
        return [k * step for k in v] if isinstance(v, list) else v * step

    exact = SplitProblem(**parts, **common, deadline=deadline)
    times = {k: (scaled(v) if k != "loop_start" else v) for k, v in parts.items()}
    problem = SplitProblem(**times, **common, deadline=deadline * step)
    return GridCase(problem, exact, step)


def check_plan_basics(problem: SplitProblem, plan) -> None:
    """Every plan: consistent numbers, client_allowed respected, feasible means within SLA."""
    assert plan.on_client.shape == (problem.n_units,)
    assert not (plan.on_client & ~problem.client_allowed).any(), plan.policy
    latency, work = evaluate(problem, plan.on_client)
    assert close(plan.latency, latency) and close(plan.server_work, work)
    if plan.feasible:
        assert plan.latency <= problem.deadline * FITS, (plan.policy, plan.latency)


@SETTINGS
@given(grid_cases())
def test_dp_is_exactly_optimal_on_the_grid(case: GridCase):
    p, exact = case.problem, case.exact
    # evaluate() on the seconds problem agrees with the whole-step copy.
    oracle = Oracle.of(exact)
    lat_s, work_s = evaluate_many(p, oracle.placements)
    np.testing.assert_allclose(lat_s, oracle.latency * case.step, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(work_s, oracle.work, rtol=1e-12, atol=1e-12)

    best = oracle.best_work(case.deadline_steps)
    plan = solve(p, "dp", time_step=case.step)
    check_plan_basics(p, plan)
    plan_steps, _ = evaluate(exact, plan.on_client)
    if np.isfinite(best):
        assert plan.feasible
        assert plan_steps <= case.deadline_steps  # exact, in whole steps
        assert plan.latency <= p.deadline * FITS
        assert close(plan.server_work, best), (plan.server_work, best)
        assert not plan.notes.get("fallback")
    else:
        assert not plan.feasible


@SETTINGS
@given(grid_cases())
def test_every_policy_is_sound_and_dp_is_best(case: GridCase):
    p = case.problem
    plans = {name: solve(p, name, time_step=case.step) for name in ALL_POLICIES}
    for plan in plans.values():
        check_plan_basics(p, plan)
        if plan.feasible:
            steps, _ = evaluate(case.exact, plan.on_client)
            assert steps <= case.deadline_steps, plan.policy
    dp_plan = plans["dp"]
    for name in OTHER_POLICIES:
        if plans[name].feasible:
            assert dp_plan.feasible
            assert dp_plan.server_work <= plans[name].server_work + REL * max(
                1.0, plans[name].server_work
            ), name


@SETTINGS
@given(grid_cases(deadline_mode="infeasible"))
def test_infeasible_problems_fall_back_to_the_fastest_placement(case: GridCase):
    p = case.problem
    oracle = Oracle.of(case.exact)
    fastest = float(oracle.latency.min()) * case.step
    for name in ALL_POLICIES:
        plan = solve(p, name, time_step=case.step)
        check_plan_basics(p, plan)
        assert not plan.feasible, name
        assert plan.notes.get("fallback") is True, name
        assert close(plan.latency, fastest, 1e-12), (name, plan.latency, fastest)
    # The default grid (deadline / 2000) too.
    assert not solve(p, "dp").feasible


@SETTINGS
@given(grid_cases(deadline_mode="loose", max_units=10))
def test_loose_deadline_dp_matches_client_only(case: GridCase):
    p = case.problem
    dp_plan = solve(p, "dp", time_step=case.step)
    client = solve(p, "client_only", time_step=case.step)
    assert dp_plan.feasible and client.feasible
    assert close(dp_plan.server_work, client.server_work)
    # client_only's work is that of the units the client cannot hold (0 if it holds all).
    forced = float(p.server_work[~p.client_allowed].sum())
    assert close(client.server_work, forced)
    if p.client_allowed.all():
        assert dp_plan.server_work == 0.0


def reference_latency(p: SplitProblem, on_client) -> float:
    """The latency of one placement, written out step by step from problem.py's docstring."""
    L = p.n_units
    total = 0.0
    where = "client"  # the input starts on the client
    for u in range(L):
        here = "client" if on_client[u] else "server"
        if here != where:
            total += p.uplink_time[u] if here == "server" else p.downlink_time[u]
        total += p.client_time[u] if here == "client" else p.server_time[u]
        where = here
    if where == "server":  # the output must end on the client
        total += p.downlink_time[L]
    start_on_server = not on_client[p.loop_start]
    last_on_server = not on_client[L - 1]
    if start_on_server and last_on_server:
        total -= p.loop_downlink_time  # tokens loop on the server
    elif start_on_server and not last_on_server:
        total += p.loop_uplink_time  # every token goes up again
    return total


@st.composite
def real_problems(draw, max_units: int = 12, loop: bool | None = None) -> SplitProblem:
    """Real-valued (off-grid) times; the deadline is set by the caller's fraction."""
    n = draw(st.integers(1, max_units))
    t = st.floats(0, 1, allow_nan=False, allow_infinity=False)
    lk = st.floats(0, 0.5, allow_nan=False, allow_infinity=False)
    kw = {
        "client_time": draw(st.lists(t, min_size=n, max_size=n)),
        "server_time": draw(st.lists(t, min_size=n, max_size=n)),
        "server_work": draw(st.lists(t, min_size=n, max_size=n)),
        "uplink_time": draw(st.lists(lk, min_size=n + 1, max_size=n + 1)),
        "downlink_time": draw(st.lists(lk, min_size=n + 1, max_size=n + 1)),
    }
    if draw(st.booleans()):
        kw["client_allowed"] = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    if draw(st.booleans()) if loop is None else loop:
        kw["loop_start"] = draw(st.integers(0, n - 1))
        kw["loop_uplink_time"] = draw(lk)
        kw["loop_downlink_time"] = draw(st.floats(0, 1)) * kw["downlink_time"][n]
    return SplitProblem(**kw, deadline=1.0)


@settings(max_examples=150, deadline=None)
@given(real_problems(loop=True), st.data())
def test_evaluate_matches_a_straightforward_reimplementation(p: SplitProblem, data):
    oc = all_placements(p.n_units)
    if oc.shape[0] > 256:
        idx = data.draw(st.lists(st.integers(0, oc.shape[0] - 1), min_size=1, max_size=64))
        oc = oc[idx]
    latency, work = evaluate_many(p, oc)
    for row, lat, wk in zip(oc, latency, work, strict=True):
        assert close(lat, reference_latency(p, row), 1e-12)
        assert close(wk, float(p.server_work[~row].sum()), 1e-12)
        one_lat, one_work = evaluate(p, row)  # may sum in another order than the batch
        assert close(one_lat, lat, 1e-12) and close(one_work, wk, 1e-12)


def with_deadline(p: SplitProblem, deadline: float) -> SplitProblem:
    return SplitProblem(
        p.client_time,
        p.server_time,
        p.server_work,
        p.uplink_time,
        p.downlink_time,
        deadline,
        p.client_allowed,
        p.loop_start,
        p.loop_uplink_time,
        p.loop_downlink_time,
    )


@settings(max_examples=150, deadline=None)
@given(real_problems(), st.floats(0, 1.1))
def test_dp_default_grid_on_real_times_is_safe_and_near_optimal(p: SplitProblem, frac: float):
    base = Oracle.of(p)
    lo, hi = float(base.latency.min()), float(base.latency.max())
    deadline = lo + frac * (hi - lo)
    assume(deadline > 1e-6)
    p = with_deadline(p, deadline)
    oracle = Oracle.of(p)
    plan = solve(p, "dp")
    check_plan_basics(p, plan)
    step = plan.notes.get("time_step", deadline / 2000)
    if not plan.notes.get("fallback"):
        # Rounding every time up means a placement the grid accepts truly fits.
        assert plan.feasible and plan.latency <= deadline * FITS
    best = oracle.best_work(deadline * FITS)
    if plan.feasible:
        assert plan.server_work >= best - REL * max(1.0, best)
    # A placement with room for one step of rounding per term (L units, <= L+1 link
    # crossings, one loop term) always fits the grid, so dp does at least as well.
    margin = (2 * p.n_units + 3) * step
    safe = oracle.best_work(deadline - margin)
    if np.isfinite(safe):
        assert plan.feasible and not plan.notes.get("fallback")
        assert plan.server_work <= safe + REL * max(1.0, safe)


def test_registry_holds_the_policies_under_test():
    assert set(ALL_POLICIES) <= set(POLICIES.names())


@st.composite
def entry_cases(draw) -> GridCase:
    """A grid case with a server entry time (a whole number of steps) and a deadline that
    leaves room for a few entries."""
    case = draw(grid_cases())
    k = draw(st.integers(0, 6))
    extra = draw(st.integers(0, 2 * k))
    exact = replace(case.exact, server_entry_time=float(k), deadline=case.exact.deadline + extra)
    problem = replace(
        case.problem,
        server_entry_time=k * case.step,
        deadline=(case.exact.deadline + extra) * case.step,
    )
    return GridCase(problem, exact, case.step)


@SETTINGS
@given(entry_cases())
def test_server_entry_time_dp_is_exactly_optimal(case: GridCase):
    """evaluate() adds one entry time per client -> server switch; dp and dp_queue_aware
    (its wait moved into server_entry_time) are exactly optimal against the oracle."""
    p, exact = case.problem, case.exact
    oracle = Oracle.of(exact)
    no_entry = Oracle.of(replace(exact, server_entry_time=0.0))
    path = np.concatenate([np.ones((len(oracle.placements), 1), bool), oracle.placements], axis=1)
    entries = (path[:, :-1] & ~path[:, 1:]).sum(axis=1)
    np.testing.assert_array_equal(
        oracle.latency, no_entry.latency + entries * exact.server_entry_time
    )
    lat_s, _ = evaluate_many(p, oracle.placements)
    np.testing.assert_allclose(lat_s, oracle.latency * case.step, rtol=1e-12, atol=1e-12)
    best = oracle.best_work(case.deadline_steps)
    wait_moved = replace(p, server_entry_time=0.0)
    for plan in (
        solve(p, "dp", time_step=case.step),
        solve(wait_moved, "dp_queue_aware", case.step, server_wait_s=p.server_entry_time),
    ):
        check_plan_basics(p, plan)
        steps, _ = evaluate(exact, plan.on_client)
        if np.isfinite(best):
            assert plan.feasible and steps <= case.deadline_steps
            assert close(plan.server_work, best), (plan.server_work, best)
        elif plan.policy == "dp":
            assert not plan.feasible
            fastest = float(oracle.latency.min()) * case.step
            assert close(plan.latency, fastest, 1e-12), (plan.latency, fastest)
        else:  # dp_queue_aware falls back to the least server work: all the client holds
            assert not plan.feasible
            assert (plan.on_client == p.client_allowed).all()


@st.composite
def entry_vector_cases(draw) -> GridCase:
    """A grid case with a server entry time per boundary (whole numbers of steps)."""
    case = draw(grid_cases())
    n = case.exact.n_units
    ks = np.array(draw(st.lists(st.integers(0, 4), min_size=n + 1, max_size=n + 1)), float)
    extra = draw(st.integers(0, 8))
    deadline = case.exact.deadline + extra
    exact = replace(case.exact, server_entry_time=ks, deadline=deadline)
    problem = replace(case.problem, server_entry_time=ks * case.step, deadline=deadline * case.step)
    return GridCase(problem, exact, case.step)


@SETTINGS
@given(entry_vector_cases())
def test_per_boundary_entry_times_dp_is_exactly_optimal(case: GridCase):
    """A per-boundary entry time (a batching server's wait per pass) is charged at the
    boundary where the placement enters the server; dp stays exactly optimal."""
    p, exact = case.problem, case.exact
    oracle = Oracle.of(exact)
    no_entry = Oracle.of(replace(exact, server_entry_time=0.0))
    ones = np.ones((len(oracle.placements), 1), bool)
    path = np.concatenate([ones, oracle.placements, ones], axis=1)
    up = (path[:, :-1] & ~path[:, 1:]).astype(float)
    np.testing.assert_array_equal(oracle.latency, no_entry.latency + up @ exact.server_entry_time)
    best = oracle.best_work(case.deadline_steps)
    plan = solve(p, "dp", time_step=case.step)
    check_plan_basics(p, plan)
    if np.isfinite(best):
        steps, _ = evaluate(exact, plan.on_client)
        assert plan.feasible and steps <= case.deadline_steps
        assert close(plan.server_work, best), (plan.server_work, best)
    else:
        assert not plan.feasible
