"""Privacy pinning (`client_required`): every policy keeps pinned units on the client, and
the exact DP stays exact under it (exhaustive search up to 9 units, a MILP on 24-60)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_dp_exact import SEARCHES, _milp_optimum, problems, using

from sim.split import POLICIES, SplitProblem, evaluate, solve
from sim.split.dp import fastest_placement, solve_dp
from sim.split.problem import evaluate_many


def _placements(p: SplitProblem) -> np.ndarray:
    """Every placement the problem allows: allowed units anywhere, pinned on the client."""
    n = p.n_units
    rows = np.array(list(itertools.product([False, True], repeat=n)), bool)
    ok = (~rows | p.client_allowed).all(axis=1)
    if p.client_required is not None:
        ok &= (rows | ~p.client_required).all(axis=1)
    return rows[ok]


@st.composite
def pinned(draw, max_units: int = 9, repeat: bool = False):
    """A problem of `problems` with some units the client holds pinned to it, and a
    deadline among the latencies of the placements that respect the pinning."""
    p = draw(problems(max_units=max_units, repeat=repeat))
    allowed = p.client_allowed
    mask = np.array(draw(st.lists(st.booleans(), min_size=p.n_units, max_size=p.n_units)))
    if repeat and draw(st.booleans()):  # pin a prefix: runs stay whole or split in two
        mask = np.arange(p.n_units) < draw(st.integers(0, p.n_units))
    p = replace(p, client_required=mask & allowed)
    latency, _ = evaluate_many(p, _placements(p))
    pick = draw(st.sampled_from(sorted(latency.tolist())))
    return p.with_deadline(max(pick * draw(st.sampled_from([1.0, 1.0001, 0.9999, 1.3])), 1e-6))


def _respects(p: SplitProblem, on_client: np.ndarray) -> bool:
    required = p.client_required
    pinned_ok = required is None or bool(on_client[required].all())
    return pinned_ok and not (on_client & ~p.client_allowed).any()


def _check_exact(p: SplitProblem) -> None:
    plan = solve_dp(p)
    latency, work = evaluate_many(p, _placements(p))
    fits = latency <= p.deadline * (1 + 1e-12)
    assert _respects(p, plan.on_client)
    assert plan.feasible == bool(fits.any())
    if fits.any():
        best = float(work[fits].min())
        assert plan.server_work <= best + 1e-9 * max(best, 1e-9)
    else:  # the fallback: the least latency among the placements that respect the pinning
        assert plan.latency <= latency.min() * (1 + 1e-12) + 1e-15


@SEARCHES
@settings(max_examples=250, deadline=None)
@given(p=pinned())
def test_dp_is_exact_with_pinned_units(search, p):
    with using(search):
        _check_exact(p)


@SEARCHES
@settings(max_examples=150, deadline=None)
@given(p=pinned(max_units=12, repeat=True))
def test_dp_is_exact_with_pinned_runs(search, p):
    with using(search):
        _check_exact(p)


@settings(max_examples=200, deadline=None)
@given(p=pinned())
def test_every_policy_keeps_pinned_units_on_the_client(p):
    """Fallbacks included; a feasible plan meets the deadline and dp needs no more work
    than any other policy's feasible plan."""
    best = solve(p, "dp")
    for name in POLICIES.names():
        plan = solve(p, name)
        assert _respects(p, plan.on_client), name
        assert (plan.latency, plan.server_work) == evaluate(p, plan.on_client)
        if plan.feasible:
            assert plan.latency <= p.deadline * (1 + 1e-12)
            assert best.server_work <= plan.server_work * (1 + 1e-9) + 1e-12, name


@settings(max_examples=150, deadline=None)
@given(p=pinned())
def test_fastest_placement_respects_pinning(p):
    latency, _ = evaluate_many(p, _placements(p))
    fast = fastest_placement(p)
    assert _respects(p, fast)
    assert evaluate(p, fast)[0] <= latency.min() * (1 + 1e-12) + 1e-15


def test_server_only_runs_the_pinned_units_on_the_client():
    p = SplitProblem(np.full(5, 2.0), np.ones(5), deadline=100.0,
                     client_required=[True, True, False, False, False])  # fmt: skip
    plan = solve(p, "server_only")
    assert plan.on_client.tolist() == [True, True, False, False, False]
    assert plan.server_work == 3.0


def test_pinning_a_unit_the_client_does_not_hold_is_an_error():
    with pytest.raises(ValueError, match="client_required units must be allowed"):
        SplitProblem(np.ones(3), np.ones(3), client_allowed=[True, False, True],
                     client_required=[False, True, False])  # fmt: skip


def test_dp_against_a_milp_with_pinned_units_on_24_to_60_units():
    """The two-ended search (`sim.split.meet`: many distinct units) with 10 % of the units
    pinned: dp respects them and matches a MILP with the pinned units fixed on the client
    (within 0.1 %, never infeasible where the MILP finds a plan)."""
    rng = np.random.default_rng(14)
    compared = close = 0
    for _ in range(60):
        n = int(rng.integers(24, 61))
        server = rng.uniform(1e-3, 10e-3, n)
        required = rng.random(n) < 0.1
        p = SplitProblem(
            server * rng.uniform(2, 20, n), server, server * rng.uniform(0.5, 2, n),
            rng.uniform(1e-3, 20e-3, n + 1), rng.uniform(1e-3, 20e-3, n + 1), 1.0,
            client_required=required,
        )  # fmt: skip
        fast = evaluate(p, fastest_placement(p))[0]
        slow = evaluate(p, np.ones(n, bool))[0]
        p = p.with_deadline(fast + rng.uniform(0.05, 0.95) * max(slow - fast, 1e-3))
        plan = solve_dp(p)
        assert _respects(p, plan.on_client)
        best = _milp_optimum(p)
        if best is None:
            continue
        compared += 1
        assert plan.feasible
        close += plan.server_work <= best * 1.001
    assert compared >= 50
    assert close >= 0.99 * compared


# ---- scenarios: the schema, the load-time checks, both engines -----------------------------


def _scenario(pin: dict | None, granularity: str = "request") -> dict:
    """gpt2 forward passes from laptops (that hold what fits) and phones (that hold all),
    one private class (pinned when `pin`) and one public."""
    from chat_scenario import chat_scenario

    if granularity == "token":
        raw = chat_scenario("pinned", 3, 60, clients=4, max_batch_requests=8, rate_per_s=4.0,
                            prompt_median=128, prompt_max=512, output=(4, 12),
                            policies=["dp", "server_only", "greedy"])  # fmt: skip
        raw["clients"][1]["resident"] = "all"
        private = dict(raw["workload"]["mix"][0], name="private")
        raw["workload"]["mix"].append(private)
    else:
        raw = {
            "name": "pinned", "seed": 2, "requests": 200, "policies": ["dp", "server_only", "greedy"],
            "server": {"device": "a100-80gb"},
            "clients": [
                {"name": "laptops", "count": 4, "device": "laptop-m2", "resident": "fit"},
                {"name": "phones", "count": 4, "device": "phone-flagship"},
            ],
            "workload": {"arrival": {"kind": "poisson", "rate_per_s": 20}, "mix": [
                {"name": "chat", "model": "gpt2", "prompt_tokens": 128, "deadline_factor": 3},
                {"name": "private", "model": "gpt2", "prompt_tokens": 128, "deadline_factor": 3},
            ]},
        }  # fmt: skip
    if pin is not None:
        raw["workload"]["mix"][1]["client_required"] = pin
    return raw


@pytest.mark.parametrize("granularity", ["request", "token"])
def test_a_pinned_class_runs_its_units_on_the_client_in_both_engines(granularity):
    from sim.config.load import validate
    from sim.runner import run_one

    ld = validate(_scenario({"first": 2}, granularity))
    assert ld.pinned[0] is None and ld.pinned[1][:2].all() and not ld.pinned[1][2:].any()
    for policy in ("dp", "server_only", "greedy"):
        res = run_one(ld, policy)
        klass = res.arrivals.klass
        units = res.client_units
        assert (units[klass == 1] >= 2).all(), policy
        assert (res.client_busy_s[klass == 1] > 0).all(), policy
        if policy == "server_only":
            assert (units[klass == 0] == 0).all()
            assert (units[klass == 1] == 2).all()


@pytest.mark.parametrize(
    ("pin", "edit", "words"),
    [
        ({"first": 99}, None, ["workload.mix.1.client_required.first", "99 units", "has 14"]),
        ({"units": ["embed", "block99"]}, None, ["client_required.units", "no unit 'block99'"]),
        ({"first": 2}, ("phones", "none"), ["client group 'phones'", "clients.1.resident: none"]),
        ({"first": 3}, ("phones", {"first": 2}), ["client group 'phones'", "the first 2"]),
    ],
)
def test_pinning_that_cannot_be_satisfied_is_one_line(pin, edit, words):
    from sim.config.load import validate
    from sim.errors import UserError

    raw = _scenario(pin)
    if edit is not None:
        next(g for g in raw["clients"] if g["name"] == edit[0])["resident"] = edit[1]
    with pytest.raises(UserError) as err:
        validate(raw, "s.yaml")
    text = str(err.value)
    assert "\n" not in text and text.startswith("s.yaml: ")
    for word in words:
        assert word in text, text
