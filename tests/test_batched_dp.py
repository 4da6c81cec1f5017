"""The batched DP and token-SLA bisection (`sim.split.dp_batch`, `sim.engine.plan_dp`)
give exactly the one-at-a-time plans: placement, latency, server work, feasibility,
policy and notes, for random problems (loops, units the client cannot hold, fallbacks,
coarse and fine grids) and for catalog problems with and without token SLAs."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_batched_planning import SLAS, _same, _scenario

import sim.engine.plan_dp as plan_dp
from sim.engine.plan_batch import prefetch
from sim.engine.planner import Planner, ProblemBook
from sim.split.dp import solve_dp
from sim.split.dp_batch import solve_dp_many, solve_phased_many
from sim.split.phased import solve_phased
from sim.split.policies import solve
from sim.split.problem import SplitProblem


def _equal(a, b) -> None:
    assert np.array_equal(a.on_client, b.on_client)
    assert (a.latency, a.server_work, a.feasible, a.policy, a.notes) == (
        b.latency, b.server_work, b.feasible, b.policy, b.notes,
    )  # fmt: skip


def _problem(rng: np.random.Generator, L: int, loop: bool, deadline: float) -> SplitProblem:
    down = rng.uniform(0, 0.1, L + 1) * (rng.random(L + 1) < 0.9)
    kw = {}
    if loop:
        kw = {
            "loop_start": int(rng.integers(0, L)),
            "loop_uplink_time": float(rng.uniform(0, 0.05)),
            "loop_downlink_time": float(down[L] * rng.uniform(0, 1)),
        }
    return SplitProblem(
        rng.uniform(0, 0.3, L), rng.uniform(0, 0.05, L), rng.uniform(0, 1, L) * (rng.random(L) < 0.9),
        rng.uniform(0, 0.1, L + 1), down, deadline=deadline,
        client_allowed=rng.random(L) < rng.uniform(0, 1.2),
        server_entry_time=float(rng.uniform(0, 0.02)) * (rng.random() < 0.3), **kw,
    )  # fmt: skip


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(1, 40),
    step=st.sampled_from([None, 0.01, 0.0013]),
    name=st.sampled_from(["dp", "dp_queue_aware"]),
)
def test_batched_dp_equals_one_at_a_time(seed, count, step, name):
    rng = np.random.default_rng(seed)
    problems = [
        _problem(rng, int(rng.integers(1, 9)), bool(rng.random() < 0.5), float(rng.uniform(0.05, 3)))
        for _ in range(count)
    ]  # fmt: skip
    for one, many in zip(
        [solve_dp(p, step, name) for p in problems],
        solve_dp_many(problems, step, name),
        strict=True,
    ):
        _equal(one, many)


def test_batched_dp_chunks_and_groups(monkeypatch):
    """Problems of several shapes across chunk boundaries, every chunk size."""
    rng = np.random.default_rng(5)
    problems = [
        _problem(rng, L, loop, 1.0) for L in (3, 7) for loop in (False, True) for _ in range(9)
    ]
    rng.shuffle(problems)
    ref = [solve_dp(p) for p in problems]
    for rows in (1, 2, 5, 64):
        monkeypatch.setattr("sim.split.dp_batch.CHUNK_ROWS", rows)
        for one, many in zip(ref, solve_dp_many(problems), strict=True):
            _equal(one, many)


@pytest.mark.parametrize("sla", ["e2e", "relative", "token", "ttft_e2e"])
@pytest.mark.parametrize("which", [("llama-2-7b", "generate"), ("gpt2", "generate")])
def test_batched_dp_plans_in_prefetch_equal_one_at_a_time(tmp_path, monkeypatch, sla, which):
    """The planner's batch (on for the test) gives each size the one-at-a-time plan."""
    monkeypatch.setattr(plan_dp, "BATCHED_POLICIES", frozenset({"dp"}))
    model, task = which
    token = sla.startswith("t")
    book = _scenario(tmp_path, model, task, SLAS[sla], token)
    rng = np.random.default_rng(17)
    high = 500 if model == "gpt2" else 3000
    keys = [
        (0, g, int(p), int(o))
        for g in range(4)
        for p, o in zip(rng.integers(1, high, 8), rng.integers(1, 120, 8), strict=True)
    ] + [(0, 0, 1, 1), (0, 3, 1, 2)]
    batched = Planner(book, "dp", wait_per_pass=token, shed=not token)
    prefetch(batched, keys)
    assert any(k[1] != 1 for k in batched._plans)  # searched in the batch (group 1: none)
    ref = Planner(ProblemBook(book.ld), "dp", wait_per_pass=token, shed=not token)
    for key in keys:
        _same(ref.get(*key), batched.get(*key))


def test_batched_bisection_equals_solve_phased(tmp_path):
    """`solve_phased_many` against `solve_phased` on catalog token-SLA problems, with
    limits from loose to tight (bisection rounds, misses, exhausted searches)."""
    book = _scenario(tmp_path, "llama-2-7b", "generate", SLAS["token"], True)
    rng = np.random.default_rng(3)
    wholes, phases = [], []
    for g in (0, 2, 3):
        for p, o in zip(rng.integers(1, 3000, 6), rng.integers(2, 120, 6), strict=True):
            rp = book.get(0, g, int(p), int(o))
            for scale in (0.2, 1.0, 5.0):
                ph = replace(rp.phases, ttft_s=rp.phases.ttft_s * scale,
                             tpot_s=rp.phases.tpot_s * scale / 2)  # fmt: skip
                wholes.append(rp.problem)
                phases.append(ph)
    run = lambda p, w: solve(p, "dp", None, w)  # noqa: E731
    ref = [solve_phased(w, ph, run) for w, ph in zip(wholes, phases, strict=True)]
    for one, many in zip(ref, solve_phased_many(wholes, phases, "dp"), strict=True):
        _equal(one, many)
