"""Planning's fast paths give exactly what the general paths give.

- A problem with no unit allowed on the client has one placement: `solve_dp` and
  `fastest_placement` return it without searching, and must equal the search (`_search`,
  `_fastest_search`) in placement, latency, server work, feasibility and notes.
- `server_only` and `client_only` (`FIXED_PLACEMENTS`) equal evaluating their placement.
- The planner's shortcut for token-SLA problems with one placement equals `solve_phased`.
- Request work built from cached unit chains and per-kind costs equals costing every unit
  one by one; the book's cached unit times equal `build_problem`'s own, bit for bit.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.catalog import devices, models
from sim.config import load_scenario
from sim.costs import request_work
from sim.costs.work import Pass, _unit_cost
from sim.engine.planner import Planner, ProblemBook
from sim.split import SplitProblem, build_problem, evaluate, solve
from sim.split.build import Link
from sim.split.dp import (
    DEFAULT_STEPS,
    _dp_sweeps,
    _fastest_search,
    _grid,
    exact_search,
    grid_steps,
    solve_dp,
)
from sim.split.phased import judge, solve_phased
from sim.split.policies import FIXED_PLACEMENTS, searches

_time = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def problems(draw, forced: bool | None = None) -> SplitProblem:
    """Random split problems; `forced` true: no unit may run on the client."""
    n = draw(st.integers(1, 7))
    vec = lambda k: np.array(draw(st.lists(_time, min_size=k, max_size=k)))  # noqa: E731
    allowed = (
        np.zeros(n, bool)
        if forced
        else np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    )
    down = vec(n + 1)
    loop = draw(st.booleans())
    return SplitProblem(
        client_time=vec(n), server_time=vec(n), server_work=vec(n), uplink_time=vec(n + 1),
        downlink_time=down, deadline=draw(st.floats(0.01, 5.0)), client_allowed=allowed,
        loop_start=draw(st.integers(0, n - 1)),
        loop_uplink_time=draw(_time) if loop else 0.0,
        loop_downlink_time=down[n] * draw(st.floats(0.0, 1.0)) if loop else 0.0,
        server_entry_time=draw(st.sampled_from([0.0, 0.05])),
    )  # fmt: skip


def _same(a, b) -> None:
    assert np.array_equal(a.on_client, b.on_client)
    assert (a.latency, a.server_work, a.feasible, a.policy) == (
        b.latency, b.server_work, b.feasible, b.policy,
    )  # fmt: skip


def _general_dp(problem: SplitProblem, name: str = "dp"):
    """`solve_dp` without its one-placement shortcut."""
    return exact_search(problem, name)


@settings(max_examples=300, deadline=None)
@given(problems(forced=True))
def test_forced_dp_equals_the_search(problem):
    fast, general = solve_dp(problem), _general_dp(problem)
    _same(fast, general)
    assert fast.notes == general.notes
    assert not fast.on_client.any()


@settings(max_examples=300, deadline=None)
@given(problems(forced=True), st.floats(0.0, 0.5), st.booleans(), st.booleans())
def test_forced_load_aware_equals_server_only_placement(problem, wait, busy, shed):
    plan = solve(problem, "dp_queue_aware", None, wait, busy, shed)
    waited = replace(problem, server_entry_time=problem.server_entry_time + wait)
    assert not plan.on_client.any()
    assert (plan.latency, plan.server_work) == evaluate(waited, plan.on_client)


@settings(max_examples=300, deadline=None)
@given(problems())
def test_fastest_placement_equals_the_search(problem):
    from sim.split import fastest_placement

    if problem.client_allowed.any():
        return
    assert np.array_equal(fastest_placement(problem), _fastest_search(problem))


@settings(max_examples=300, deadline=None)
@given(problems())
def test_fixed_placements_equal_their_evaluation(problem):
    for policy, placement in FIXED_PLACEMENTS.items():
        assert not searches(policy)
        plan = solve(problem, policy)
        on_client = placement(problem)
        latency, work = evaluate(problem, on_client)
        if latency <= problem.deadline * (1 + 1e-12):
            assert np.array_equal(plan.on_client, on_client)
            assert (plan.latency, plan.server_work, plan.feasible) == (latency, work, True)
        else:  # the least-latency placement, judged the same way
            assert plan.latency <= latency * (1 + 1e-12)  # the search sums in its own order
            assert (plan.latency, plan.server_work) == evaluate(problem, plan.on_client)
    assert searches("dp") and searches("dp_queue_aware")


# benchmarks/bench_token.py's chat scenario: laptops hold what fits, phones hold nothing
SCENARIO = {
    "name": "planning_paths",
    "seed": 11,
    "requests": 100,
    "server": {"device": "a100-80gb"},
    "simulation": {"granularity": "token", "max_batch_requests": 64},
    "clients": [
        {"name": "laptops", "count": 5, "device": "laptop-m2", "resident": "fit",
         "link": {"uplink_mbps": 50, "downlink_mbps": 200, "rtt_ms": 20}},
        {"name": "phones", "count": 5, "device": "phone-flagship", "resident": "none",
         "link": {"uplink_mbps": 20, "downlink_mbps": 100, "rtt_ms": 40}},
    ],
    "workload": {
        "arrival": {"kind": "poisson", "rate_per_s": 6.0},
        "mix": [
            {"name": "chat", "model": "llama-3-8b", "task": "generate",
             "prompt_tokens": {"kind": "lognormal", "median": 1000, "sigma": 0.6, "max": 6000},
             "output_tokens": {"kind": "uniform", "low": 100, "high": 300},
             "ttft_deadline_s": 2.0, "tpot_deadline_s": 0.1},
        ],
    },
}  # fmt: skip


def _bench_book(tmp_path: Path) -> ProblemBook:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(SCENARIO))
    return ProblemBook(load_scenario(path))


@pytest.mark.parametrize("policy", ["dp", "dp_queue_aware", "greedy", "server_only"])
def test_planner_shortcut_equals_solve_phased(tmp_path, policy):
    """Phones hold no unit (`resident: none`): the planner's plan equals the bisection's."""
    book = _bench_book(tmp_path)
    planner = Planner(book, policy)
    planner.wait_per_pass, planner.shed = True, False
    rng = np.random.default_rng(3)
    for prompt, output in zip(rng.integers(1, 6000, 25), rng.integers(2, 300, 25), strict=True):
        rp = book.get(0, 1, int(prompt), int(output))
        assert rp.phases is not None and not rp.problem.client_allowed.any()
        plan = planner._solve(rp)
        run = lambda p, w: solve(p, policy, None, w, False, False)  # noqa: E731, B023
        if policy == "server_only":
            general = judge(rp.problem, rp.phases, solve(rp.problem, policy))
        else:
            general = solve_phased(rp.problem, rp.phases, run)
        _same(plan, general)


def _per_unit_costs(model, units, passes: dict[str, Pass]) -> np.ndarray:
    return np.array([_unit_cost(model, u, passes[u.stack]) for u in units], float)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(sorted(models())), st.sampled_from(["block", "sublayer"]),
    st.integers(1, 8000), st.integers(1, 500),
)  # fmt: skip
def test_cached_work_equals_costing_every_unit(name, granularity, prompt, output):
    """Per-kind costs spread over the chain equal each unit costed on its own (forward:
    the pass; generate: the first decode step's constant term), for many sizes."""
    model = models()[name]
    w = request_work(model, "forward", prompt, 0, granularity)
    n = model.image_tokens if model.input == "image" else prompt
    causal = model.architecture != "encoder"
    if model.architecture != "encoder_decoder":
        span = n * (n + 1) / 2 if causal else float(n * n)
        p = Pass(tokens=n, attn_span=span, out_tokens=n if model.head == "lm" else 0)
        ref = _per_unit_costs(model, w.units, {"enc": p, "dec": p})
        assert np.array_equal(w.pass_flops, ref[:, 0]) and np.array_equal(w.pass_bytes, ref[:, 1])
    if model.head == "lm" and model.architecture == "decoder":
        g = request_work(model, "generate", prompt, output, granularity)
        step = Pass(1, 0, 0, 1, out_tokens=1)
        ref = _per_unit_costs(model, g.units, {"enc": step, "dec": step})
        assert np.array_equal(g.step_flops0, ref[:, 0]) and np.array_equal(g.step_bytes0, ref[:, 1])
        # the work is the same whatever sizes were asked before (caches hold no size)
        again = request_work(model, "generate", prompt, output, granularity)
        assert np.array_equal(again.pass_flops, g.pass_flops)
        assert np.array_equal(again.kv_bytes, g.kv_bytes)


def test_book_times_equal_build_problem(tmp_path):
    """The book's problems (unit times shared across groups and output lengths) equal
    problems built from scratch, bit for bit, for many sizes."""
    book = _bench_book(tmp_path)
    ld = book.ld
    cls = ld.scenario.workload.mix[0]
    model = ld.models[cls.model]
    rng = np.random.default_rng(5)
    for prompt, output in zip(rng.integers(1, 6000, 40), rng.integers(1, 300, 40), strict=True):
        for group, grp in enumerate(ld.scenario.clients):
            link = Link(grp.link.uplink_mbps, grp.link.downlink_mbps, grp.link.rtt_ms)
            for out in (int(output), 1):
                ref = build_problem(
                    model, cls.task, int(prompt), out, ld.client_devices[group],
                    ld.server_device, link, 1.0, resident=grp.resident,
                    objective=book.split.objective, granularity=book.split.granularity,
                )  # fmt: skip
                got = book._problem(0, group, int(prompt), out, link, 1.0)
                for field in ("client_time", "server_time", "server_work", "uplink_time",
                              "downlink_time", "client_allowed"):  # fmt: skip
                    assert np.array_equal(getattr(got, field), getattr(ref, field)), field
                assert got.loop_uplink_time == ref.loop_uplink_time
    assert devices()  # the catalog loaded


@settings(max_examples=300, deadline=None)
@given(problems())
def test_sweeping_both_loop_starts_together_equals_each_alone(problem):
    """`_dp_sweeps` of both loop-start locations at once equals each location's own sweep
    (best work, end, location, choices), so `solve_dp` is the DP it was."""
    step = problem.deadline / DEFAULT_STEPS
    horizon = int(grid_steps(problem.deadline, step, up=False))
    g = _grid(problem, step)
    starts = (0, 1) if problem.has_loop else (None,)
    together = _dp_sweeps(problem, g, horizon, starts)
    for start_on, got in zip(starts, together, strict=True):
        alone = _dp_sweeps(problem, g, horizon, (start_on,))[0]
        assert (got is None) == (alone is None)
        if got is not None:
            assert got[:4] == alone[:4]
            assert np.array_equal(got[4], alone[4]) and np.array_equal(got[5], alone[5])
