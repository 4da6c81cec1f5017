"""`dp` is exact on continuous (non-grid) times: checked against exhaustive search.

Its searches are checked, the enumeration of run structures (`structural`, taken when the
structures are few) and the label searches (forced here by allowing no structures: the
label front of `labels`, or for one latency without a loop `meet`, which is `front` below
its `MIN_UNITS`; `tests/test_dp_meet.py` checks `meet` on small chains too), on random
problems with generation loops, units the client may not hold, server waits per boundary,
and chains of identical units (where runs are compressed); and
under token SLAs (TTFT, TPOT, end to end) against the exhaustive least work meeting all.
dp never needs more server work than another policy's feasible plan, on random problems
and on every problem of the paper's static studies; the batch planner's plans equal the
one-at-a-time ones.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.config import read_yaml
from sim.paper.studies import StudySpec, allocation_table
from sim.split import POLICIES, SplitProblem, evaluate, solve, structural
from sim.split.dp import solve_dp
from sim.split.labels import runs_of
from sim.split.phased import meets, solve_dp_phased, split_phases
from sim.split.problem import evaluate_many

ROOT = Path(__file__).resolve().parents[1]
_time = st.floats(0.0, 2.0, allow_nan=False)


SEARCHES = pytest.mark.parametrize("search", ["structures", "labels"])


@contextmanager
def using(search: str):
    """The exact DP with one of its two kinds of search (labels: no structures allowed)."""
    with pytest.MonkeyPatch.context() as mp:
        if search == "labels":
            mp.setattr(structural, "MAX_STRUCTURES", 0)
        yield


def _placements(allowed: np.ndarray) -> np.ndarray:
    rows = np.array(list(itertools.product([False, True], repeat=allowed.shape[0])), bool)
    return rows[(~rows | allowed).all(axis=1)]


@st.composite
def problems(draw, max_units: int = 9, repeat: bool = False):
    """A problem with continuous times; `repeat`: a chain of runs of identical units."""
    n = draw(st.integers(1, max_units))
    if repeat:  # a few distinct units, each repeated, with equal inner boundaries
        kinds = draw(st.lists(st.tuples(_time, _time, _time, _time, st.booleans()),
                              min_size=1, max_size=3))  # fmt: skip
        lengths = draw(st.lists(st.integers(1, 6), min_size=len(kinds), max_size=len(kinds)))
        units = [k for k, m in zip(kinds, lengths, strict=True) for _ in range(m)]
        n = len(units)
        cc, cs, w, b, allowed = (np.array(x) for x in zip(*units, strict=True))
        up = np.r_[draw(_time), b]
        down = np.r_[draw(_time), b * draw(st.floats(0.5, 2.0))]
    else:
        cc, cs, w = (np.array(draw(st.lists(_time, min_size=n, max_size=n))) for _ in range(3))
        up, down = (np.array(draw(st.lists(_time, min_size=n + 1, max_size=n + 1))) for _ in "ud")
        allowed = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    loop = draw(st.booleans())
    wait = draw(st.sampled_from(["none", "scalar", "vector"]))
    entry = {"none": 0.0, "scalar": draw(_time) / 4}.get(wait)
    if entry is None:
        entry = np.array(draw(st.lists(_time, min_size=n + 1, max_size=n + 1))) / 4
    p = SplitProblem(
        client_time=cc, server_time=cs, server_work=w, uplink_time=up, downlink_time=down,
        deadline=1.0, client_allowed=allowed, loop_start=draw(st.integers(0, n - 1)),
        loop_uplink_time=draw(_time) if loop else 0.0,
        loop_downlink_time=down[n] * draw(st.floats(0.0, 1.0)) if loop else 0.0,
        server_entry_time=entry,
    )  # fmt: skip
    latency, _ = evaluate_many(p, _placements(allowed))
    # a deadline among the placements' latencies (ties on purpose) or between two
    pick = draw(st.sampled_from(sorted(latency.tolist())))
    deadline = max(pick * draw(st.sampled_from([1.0, 1.0001, 0.9999, 1.3])), 1e-6)
    return p.with_deadline(deadline)


def _optimum(p: SplitProblem) -> float | None:
    """The least server work of a placement within the deadline, by exhaustive search."""
    latency, work = evaluate_many(p, _placements(p.client_allowed))
    fits = latency <= p.deadline * (1 + 1e-12)
    return float(work[fits].min()) if fits.any() else None


def _check(p: SplitProblem) -> None:
    plan = solve_dp(p)
    best = _optimum(p)
    assert plan.feasible == (best is not None)
    if best is not None:
        assert plan.server_work <= best + 1e-9 * max(best, 1e-9)
        assert plan.latency <= p.deadline * (1 + 1e-12)
        assert (plan.latency, plan.server_work) == evaluate(p, plan.on_client)
    assert not (plan.on_client & ~p.client_allowed).any()


@SEARCHES
@settings(max_examples=300, deadline=None)
@given(p=problems())
def test_dp_is_exact_on_continuous_times(search, p):
    with using(search):
        _check(p)


@SEARCHES
@settings(max_examples=200, deadline=None)
@given(p=problems(max_units=12, repeat=True))
def test_dp_is_exact_on_runs_of_identical_units(search, p):
    with using(search):
        _check(p)


@settings(max_examples=100, deadline=None)
@given(problems(max_units=12, repeat=True))
def test_compressed_runs_equal_unit_by_unit(p):
    """The runs' patterns lose nothing: the label front over runs and over single units
    (no compression) find the same least work."""
    import sim.split.labels as labels

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(structural, "MAX_STRUCTURES", 0)
        runs = solve_dp(p)
        mp.setattr(labels, "runs_of", lambda c: [(u, u + 1) for u in range(c.work.shape[0])])
        single = solve_dp(p)
    assert runs.feasible == single.feasible
    assert abs(runs.server_work - single.server_work) <= 1e-9 * max(single.server_work, 1e-9)


def test_runs_are_found_in_a_layered_chain():
    """Embedding, 32 equal layers, head: three runs (the loop start alone)."""
    n = 34
    cc = np.r_[0.004, [0.97] * 32, 0.3]
    cs = np.r_[0.0007, [0.037] * 32, 0.01]
    up = np.r_[0.01, [2.3] * 34]
    p = SplitProblem(cc, cs, None, up, up, 20.0, np.ones(n, bool), loop_start=0,
                     loop_uplink_time=0.01, loop_downlink_time=0.01)  # fmt: skip
    from sim.split.labels import criteria_of

    assert runs_of(criteria_of([p], [20.0], p.server_work)) == [(0, 1), (1, 33), (33, 34)]


@st.composite
def phased(draw):
    """A generation request's whole, prefill and step problems with TTFT/TPOT(/e2e)."""
    n = draw(st.integers(1, 8))

    def vec(k: int, scale: float) -> np.ndarray:
        return np.array(draw(st.lists(_time, min_size=k, max_size=k))) * scale

    allowed = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    steps = draw(st.integers(1, 40))
    loop_start = draw(st.integers(0, n - 1))
    pre = SplitProblem(vec(n, 1), vec(n, 0.2), vec(n, 1), vec(n + 1, 0.5), vec(n + 1, 0.5),
                       np.inf, allowed, loop_start)  # fmt: skip
    per = [vec(n, 0.1), vec(n, 0.02), vec(n, 0.1), vec(n + 1, 0.05), vec(n + 1, 0.05)]
    down = pre.downlink_time + steps * per[4]
    whole = SplitProblem(
        pre.client_time + steps * per[0], pre.server_time + steps * per[1],
        pre.server_work + steps * per[2], pre.uplink_time + steps * per[3], down, np.inf,
        allowed, loop_start, loop_uplink_time=steps * draw(_time) / 20,
        loop_downlink_time=steps * per[4][n] * draw(st.floats(0, 1)),
    )  # fmt: skip
    on_server = np.zeros(n, bool)
    ttft = evaluate(pre, on_server)[0] * draw(st.floats(0.6, 3.0)) + 1e-6
    tpot_base = evaluate(split_phases(whole, pre, steps, ttft, None).step, on_server)[0]
    tpot = tpot_base * draw(st.floats(0.6, 3.0)) + 1e-6
    e2e = draw(st.sampled_from([None, evaluate(whole, on_server)[0] * 1.5]))
    return whole, split_phases(whole, pre, steps, ttft, tpot, e2e)


@SEARCHES
@settings(max_examples=300, deadline=None)
@given(case=phased())
def test_dp_under_token_slas_is_exact(search, case):
    whole, ph = case
    best = None
    for oc in _placements(whole.client_allowed):
        latency, work = evaluate(whole, oc)
        if all(meets(ph, oc)) and latency <= ph.e2e_s * (1 + 1e-9):
            best = work if best is None else min(best, work)
    with using(search):
        plan = solve_dp_phased(whole, ph)
    assert plan.feasible == (best is not None)
    if best is not None:
        assert plan.server_work <= best + 1e-9 * max(best, 1e-9)
        assert all(meets(ph, plan.on_client))


OTHERS = [p for p in POLICIES.names() if p not in ("dp", "dp_queue_aware")]


@settings(max_examples=200, deadline=None)
@given(problems(max_units=10))
def test_dp_never_needs_more_work_than_another_policy(p):
    dp = solve_dp(p)
    for name in OTHERS:
        other = solve(p, name)
        if other.feasible:
            assert dp.feasible
            assert dp.server_work <= other.server_work * (1 + 1e-9) + 1e-12, name


def test_dp_wins_on_every_problem_of_the_paper_studies():
    """The paper's static studies (`scenarios/paper/studies.yaml`): no policy's feasible
    plan needs less server work than dp's (the grid DP lost in 6 of 261 rows)."""
    spec = StudySpec.model_validate(read_yaml(ROOT / "scenarios/paper/studies.yaml"))
    spec = spec.model_copy(update={"policies": ["dp", *OTHERS]})
    table = allocation_table(spec)
    keys = ["study", "model", "x", "client_device"]
    compared = 0
    for _, rows in table.groupby(keys):
        dp = rows[rows["policy"] == "dp"].iloc[0]
        feasible = rows[rows["feasible"]]
        if len(feasible):
            assert dp["feasible"]
            assert dp["server_work"] <= feasible["server_work"].min() * (1 + 1e-9)
            compared += 1
    assert compared >= 30


def _milp_optimum(p: SplitProblem) -> float | None:
    """The least server work within the deadline by a MILP (HiGHS): x_u unit u on the
    server, y_b / z_b a switch up / down at boundary b (the client at both ends)."""
    from scipy import sparse
    from scipy.optimize import Bounds, LinearConstraint, milp

    L = p.n_units
    n = L + 2 * (L + 1)
    rows, cols, vals = [], [], []
    for b in range(L + 1):  # y_b >= x_b - x_{b-1},  z_b >= x_{b-1} - x_b
        for r, (y, sign) in enumerate(((L + b, 1.0), (2 * L + 1 + b, -1.0))):
            row = 2 * b + r
            rows.append(row), cols.append(y), vals.append(1.0)
            if b < L:
                rows.append(row), cols.append(b), vals.append(-sign)
            if b > 0:
                rows.append(row), cols.append(b - 1), vals.append(sign)
    link = sparse.csr_array((vals, (rows, cols)), shape=(2 * (L + 1), n))
    lat = np.concatenate([p.server_time - p.client_time, p.entry_times, p.downlink_time])
    budget = p.deadline - p.client_time.sum()
    lower = np.zeros(n)
    lower[:L] = ~p.client_allowed  # units the client may not hold are on the server
    upper = np.ones(n)
    if p.client_required is not None:
        upper[:L] = ~p.client_required  # units pinned to the client are on it
    res = milp(
        np.concatenate([p.server_work, np.zeros(2 * (L + 1))]),
        constraints=[LinearConstraint(link, lb=0.0), LinearConstraint(lat[None], ub=budget)],
        integrality=np.ones(n), bounds=Bounds(lower, upper), options={"mip_rel_gap": 0.0},
    )  # fmt: skip
    if res.x is None:
        return None
    on_client = np.rint(res.x[:L]) < 0.5
    latency, work = evaluate(p, on_client)
    assert latency <= p.deadline * (1 + 1e-6)  # HiGHS's feasibility tolerance only
    return work


def test_dp_against_a_milp_on_20_to_60_units():
    """500 random continuous instances of 20-60 units (no generation loop, some units
    pinned to the server): dp is never infeasible where the MILP finds a plan, and within
    0.1 % of its optimum in at least 99 % of them (the MILP may accept a plan a hair over
    the deadline, so dp can be slightly above it)."""
    rng = np.random.default_rng(20261130)
    compared = close = 0
    for _ in range(500):
        n = int(rng.integers(20, 61))
        server = rng.uniform(1e-3, 10e-3, n)
        p = SplitProblem(
            server * rng.uniform(2, 20, n), server, server * rng.uniform(0.5, 2, n),
            rng.uniform(1e-3, 20e-3, n + 1), rng.uniform(1e-3, 20e-3, n + 1), 1.0,
            rng.random(n) < 0.9,
        )  # fmt: skip
        fast = evaluate(p, np.zeros(n, bool))[0]
        slow = evaluate(p, p.client_allowed)[0]
        p = p.with_deadline(fast + rng.uniform(0.05, 0.95) * max(slow - fast, 1e-3))
        best = _milp_optimum(p)
        plan = solve_dp(p)
        if best is None:
            continue
        compared += 1
        assert plan.feasible
        close += plan.server_work <= best * 1.001
    assert compared >= 450
    assert close >= 0.99 * compared


@settings(max_examples=150, deadline=None)
@given(p=problems(max_units=12, repeat=True), phases=phased())
def test_label_steps_in_plain_floats_equal_numpy(p, phases):
    """The label search's step in plain floats (few candidates) and in numpy give the
    same plans, for one latency and for token SLAs (two or three)."""
    import sim.split.labels as labels

    whole, ph = phases
    plans = []
    for small in (0, 10**9):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(structural, "MAX_STRUCTURES", 0)
            mp.setattr(labels, "SMALL", small)
            plans.append((solve_dp(p), solve_dp_phased(whole, ph)))
    for a, b in zip(*plans, strict=True):
        assert np.array_equal(a.on_client, b.on_client)
        assert (a.latency, a.server_work, a.feasible) == (b.latency, b.server_work, b.feasible)
