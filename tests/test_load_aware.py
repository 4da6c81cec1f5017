"""Load- and link-aware allocation: `dp_queue_aware`, `split.link_estimate`, client energy.

Split-layer properties run on random grid problems (see test_split_properties.py for the
exhaustive oracle of `server_entry_time`); the engine tests run small scenarios.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.config import load_scenario, validate
from sim.engine.network import UP
from sim.engine.planner import ProblemBook
from sim.engine.run import Simulation
from sim.engine.workload import Streams, generate_arrivals, offered_rate, replication_seeds
from sim.records import RequestStatus
from sim.runner import _server_only_time, run_one, simulate
from sim.split import POLICIES, SplitProblem, evaluate, solve

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "scenarios" / "examples" / "quickstart.yaml"
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw, all_allowed: bool = False) -> SplitProblem:
    n = draw(st.integers(1, 10))
    t = st.floats(0, 1, allow_nan=False)
    vec = lambda k: draw(st.lists(t, min_size=k, max_size=k))  # noqa: E731
    allowed = [True] * n if all_allowed else draw(st.lists(st.booleans(), min_size=n, max_size=n))
    p = SplitProblem(
        client_time=vec(n), server_time=vec(n), uplink_time=vec(n + 1),
        downlink_time=vec(n + 1), client_allowed=allowed, deadline=1.0,
    )  # fmt: skip
    lat = [evaluate(p, oc)[0] for oc in (np.zeros(n, bool), np.asarray(allowed))]
    return replace(p, deadline=max(1e-3, draw(st.floats(0.5, 1.5)) * max(lat)))


def test_registered():
    assert "dp_queue_aware" in POLICIES.names()


@SETTINGS
@given(problems())
def test_queue_aware_with_zero_wait_is_dp(p: SplitProblem):
    a, b = solve(p, "dp"), solve(p, "dp_queue_aware", server_wait_s=0.0)
    assert (a.on_client == b.on_client).all()
    assert (a.latency, a.server_work, a.feasible) == (b.latency, b.server_work, b.feasible)


@SETTINGS
@given(problems(), st.floats(0, 2))
def test_queue_aware_plans_fit_the_deadline_with_the_wait(p: SplitProblem, wait: float):
    """A feasible plan's latency counts one wait per server entry; it never beats dp's work."""
    plan = solve(p, "dp_queue_aware", server_wait_s=wait)
    base = solve(p, "dp")
    entries = int(np.count_nonzero(np.diff(np.r_[1, plan.on_client.astype(int)]) == -1))
    nominal, work = evaluate(p, plan.on_client)
    assert np.isclose(plan.latency, nominal + entries * wait, rtol=1e-9, atol=1e-12)
    if plan.feasible:
        assert plan.latency <= p.deadline * (1 + 1e-9)
        if base.feasible:  # less room for the server: at least dp's server work
            assert plan.server_work >= base.server_work - 1e-9


@SETTINGS
@given(problems(all_allowed=True))
def test_large_wait_offloads_at_least_as_much_as_dp(p: SplitProblem):
    """A wait beyond the SLA leaves only placements without the server: everything offloads."""
    plan = solve(p, "dp_queue_aware", server_wait_s=2 * p.deadline + 1)
    base = solve(p, "dp")
    assert plan.server_work <= base.server_work + 1e-12
    assert plan.client_units >= base.client_units


@SETTINGS
@given(problems(), st.floats(0.01, 2))
def test_busy_server_never_gets_more_work_than_dp(p: SplitProblem, wait: float):
    """On a busy server the request fits the wait only without extra server work, else sheds."""
    plan = solve(p, "dp_queue_aware", server_wait_s=wait, server_busy=True)
    base = solve(p, "dp")
    if plan.notes.get("fallback"):  # shed: the least server work the client can take
        least = evaluate(p, p.client_allowed)[1]
        assert plan.server_work == least
        assert (plan.on_client == p.client_allowed).all()
    else:
        assert plan.feasible and plan.server_work <= base.server_work * (1 + 1e-9)


@SETTINGS
@given(problems(), st.floats(0.01, 2))
def test_idle_server_fits_the_wait_whatever_the_work(p: SplitProblem, wait: float):
    """With headroom the waited DP's plan stands even when it needs more work than dp."""
    waited = replace(p, server_entry_time=wait)
    fit = solve(waited, "dp")
    plan = solve(p, "dp_queue_aware", server_wait_s=wait, server_busy=False)
    if fit.feasible:
        assert (plan.on_client == fit.on_client).all() and plan.feasible
    else:
        assert plan.notes.get("fallback") and (plan.on_client == p.client_allowed).all()


def _load(overrides: list[str], path: Path = QUICKSTART):
    return load_scenario(path, overrides)


def test_defaults_unchanged_with_explicit_nominal():
    small = ["requests=300", "warmup_s=0", "policies=[dp,greedy]"]
    a = simulate(_load(small)).requests
    b = simulate(_load([*small, "split.link_estimate=nominal"])).requests
    pd.testing.assert_frame_equal(a, b)


def test_queue_aware_fewer_sla_violations_at_high_load():
    ld = _load([
        "workload.arrival.rate_per_s=null", "workload.arrival.load=1.0", "requests=1500",
        "warmup_s=0", "policies=[dp,dp_queue_aware]",
    ])  # fmt: skip
    s = simulate(ld).summary.set_index("policy")["sla_violation_rate"]
    assert s["dp_queue_aware"] < s["dp"] - 0.05, s


LINK_ESTIMATORS = ROOT / "scenarios" / "examples" / "link_estimators.yaml"


def test_queue_aware_sheds_instead_of_feeding_a_saturated_server():
    """Near saturation (clients hold few units), fitting the wait with more server work feeds
    the queue; the busy-server rule keeps dp_queue_aware below dp's misses, without it the
    misses run away (the positive feedback the rule exists for)."""
    base = [
        "workload.arrival.per_client_rate_per_s=null", "workload.arrival.load=1.15",
        "duration_s=25", "warmup_s=5", "policies=[dp,dp_queue_aware]",
    ]  # fmt: skip
    miss = lambda extra: (  # noqa: E731
        simulate(_load([*base, *extra], LINK_ESTIMATORS)).summary.set_index("policy")
    )["sla_violation_rate"]
    guarded, unguarded = miss([]), miss(["split.busy_utilization=1.0"])
    assert guarded["dp_queue_aware"] < guarded["dp"] - 0.05, guarded
    assert unguarded["dp_queue_aware"] > guarded["dp_queue_aware"] + 0.2, unguarded


def test_fast_path_matches_logged_path_when_planning_at_arrival():
    ld = _load([
        "workload.arrival.rate_per_s=null", "workload.arrival.load=1.0", "requests=300",
        "warmup_s=0", "split.link_estimate=ewma",
    ])  # fmt: skip
    fast = run_one(ld, "dp_queue_aware")
    logged = run_one(ld, "dp_queue_aware", log=[])
    for name in ("finish_s", "planned_latency_s", "server_work", "client_energy_j"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(logged, name), err_msg=name)


def _dropping_link(tmp_path: Path, estimate: str, policies=("dp",)):
    """Phones whose uplink drops from the nominal 15 Mbit/s to 1 Mbit/s after 10 s."""
    (tmp_path / "bw.csv").write_text("time_s,uplink_mbps,downlink_mbps\n0,15,80\n10,1,80\n")
    raw = {
        "name": "drop", "seed": 3, "duration_s": 40, "policies": list(policies),
        "clients": [{
            "name": "moving", "count": 10, "device": "phone-flagship", "resident": {"first": 9},
            "link": {"uplink_mbps": 15, "downlink_mbps": 80, "rtt_ms": 40, "trace": "bw.csv"},
        }],
        "workload": {
            "arrival": {"kind": "poisson", "per_client_rate_per_s": 0.2},
            "mix": [{"name": "score", "model": "gpt2-large", "deadline_factor": 6}],
        },
        "split": {"link_estimate": estimate},
    }  # fmt: skip
    return validate(raw, source="drop", base_dir=tmp_path)


def test_oracle_link_estimate_misses_fewer_slas_on_a_dropping_link(tmp_path: Path):
    rates = {
        est: simulate(_dropping_link(tmp_path, est)).summary["sla_violation_rate"].iloc[0]
        for est in ("nominal", "oracle", "ewma")
    }
    assert rates["oracle"] < rates["nominal"], rates
    assert rates["ewma"] < rates["nominal"], rates


def _simulation(ld, policy: str) -> Simulation:
    seq = replication_seeds(ld.scenario.seed, 1)[0]
    book = ProblemBook(ld)
    streams = Streams.spawn(seq)
    arrivals = generate_arrivals(ld, streams, offered_rate(ld, _server_only_time(ld, book)))
    return Simulation(ld, policy, arrivals, streams.jitter_seed, book)


def test_ewma_converges_to_the_traced_bandwidth(tmp_path: Path):
    sim_ = _simulation(_dropping_link(tmp_path, "ewma"), "dp")
    assert sim_.links[0].estimate_mbps[UP] == 15  # starts from nominal
    res = sim_.run()
    assert (res.status != RequestStatus.IN_FLIGHT).all()
    est = sim_.links[0].estimate_mbps[UP]
    assert abs(est - 1.0) < 0.05, est  # the trace sits at 1 Mbit/s after t = 10 s


def test_client_energy_is_power_times_busy_plus_radio():
    ld = _load(["requests=80", "warmup_s=0", "policies=[dp]"])
    sim_ = _simulation(ld, "dp")
    res = sim_.run()
    arr = res.arrivals
    devices = ld.client_devices
    done = np.flatnonzero(res.status == RequestStatus.COMPLETED)
    assert done.size > 0
    for i in done:
        g = int(arr.group[i])
        key = (int(arr.klass[i]), g, int(arr.prompt_tokens[i]), int(arr.output_tokens[i]))
        planned = sim_.planner.get(*key)
        dev = devices[g]
        expected = dev.power_w * res.client_busy_s[i] + dev.radio_nj_per_bit * 1e-9 * 8 * (
            planned.transfer_bytes
        )
        assert np.isclose(res.client_energy_j[i], expected, rtol=1e-12, atol=0), i
    frame = simulate(ld).requests
    assert (frame["client_energy_j"] > 0).all()


def test_recent_utilization_follows_the_busy_share():
    """0 before any hold ends; near 1 after a long busy stretch; decays while idle."""
    import simpy

    from sim.engine.resources import UTIL_WINDOW_HOLDS, ServerPool

    env = simpy.Environment()
    pool = ServerPool(env, 1, False, None, hold_alpha=1.0)
    seen = {}

    def job(hold_s: float, times: int):
        for _ in range(times):
            req = pool.request(0)
            yield req
            pool.granted(hold_s)
            yield env.timeout(hold_s)
            pool.release(req, hold_s)
        seen["busy"] = pool.recent_utilization()
        yield env.timeout(UTIL_WINDOW_HOLDS * hold_s * 3)
        seen["idle"] = pool.recent_utilization()

    assert pool.recent_utilization() == 0.0
    env.process(job(0.01, 2000))
    env.run()
    assert seen["busy"] > 0.99
    assert abs(seen["idle"] - seen["busy"] * np.exp(-3)) < 1e-3


@SETTINGS
@given(problems(), st.floats(0.01, 2), st.booleans())
def test_without_shedding_the_waited_dp_stands(p: SplitProblem, wait: float, busy: bool):
    """shed=False (batching servers): the waited DP's plan, or its least-latency fallback."""
    fit = solve(replace(p, server_entry_time=wait), "dp")
    plan = solve(p, "dp_queue_aware", server_wait_s=wait, server_busy=busy, shed=False)
    assert (plan.on_client == fit.on_client).all() and plan.feasible == fit.feasible
