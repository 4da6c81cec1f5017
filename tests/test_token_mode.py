"""Token granularity: continuous batching server, consistency with request granularity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sim.config import load_scenario
from sim.config.load import effective_dict
from sim.records import RequestStatus
from sim.runner import run_one, simulate

BASE = {
    "name": "tok",
    "seed": 5,
    "requests": 120,
    "policies": ["server_only", "dp"],
    "server": {"device": "a100-80gb"},
    "clients": [
        {
            "name": "laptops",
            "count": 6,
            "device": "laptop-m2",
            "link": {"uplink_mbps": 1e6, "downlink_mbps": 1e6, "rtt_ms": 0},
        }
    ],
    "workload": {
        "arrival": {"kind": "poisson", "rate_per_s": 20.0},
        "mix": [
            {
                "name": "chat",
                "model": "gpt2-medium",
                "task": "generate",
                "prompt_tokens": {"kind": "uniform", "low": 50, "high": 400},
                "output_tokens": {"kind": "uniform", "low": 5, "high": 60},
                "deadline_s": 0.1,
            }
        ],
    },
}


def _load(tmp_path, sets: list[str], base: dict = BASE):
    import yaml

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(base))
    return load_scenario(path, sets)


def test_batch_one_zero_network_matches_request_mode(tmp_path):
    req = simulate(_load(tmp_path, [])).requests
    tok = simulate(
        _load(tmp_path, ["simulation.granularity=token", "simulation.max_batch_requests=1"])
    ).requests
    for policy in ("server_only", "dp"):
        a = req[req["policy"] == policy]["server_busy_s"].to_numpy()
        b = tok[tok["policy"] == policy]["server_busy_s"].to_numpy()
        assert (a > 0).any()
        assert np.allclose(b, a, rtol=0.01, atol=1e-9), policy
    dp = tok[tok["policy"] == "dp"]
    assert (dp["client_units"] > 0).any(), "the test should cover split plans"


def test_throughput_rises_with_batch_limit(tmp_path):
    sets = ["simulation.granularity=token", "workload.arrival.rate_per_s=200", "requests=300",
            "policies=[server_only]"]  # fmt: skip
    rates = []
    for limit in (1, 4, 16):
        res = simulate(_load(tmp_path, [*sets, f"simulation.max_batch_requests={limit}"]))
        row = res.summary.iloc[0]
        rates.append(row["server_tokens_per_s"])
        assert row["batch_size_max"] <= limit
    assert rates[0] < rates[1] < rates[2]
    assert rates[2] > 3 * rates[0]  # weight reads amortised on a memory-bound server


@pytest.mark.parametrize("mode", ["wait", "preempt"])
def test_kv_memory_limit_respected(tmp_path, mode):
    sets = ["simulation.granularity=token", "workload.arrival.rate_per_s=200",
            "simulation.kv_memory_gb=0.2", f"simulation.on_kv_full={mode}",
            "policies=[server_only]"]  # fmt: skip
    ld = _load(tmp_path, sets)
    res = run_one(ld, "server_only")
    kv = np.asarray(res.token.kv_bytes.level)
    assert kv.max() <= 0.2e9 * (1 + 1e-9)
    assert kv.max() > 0.1e9  # memory was the bottleneck
    assert (res.status == RequestStatus.COMPLETED).all()
    if mode == "preempt":
        assert res.token.preemptions > 0  # the limit forced preemptions (and recomputation)


def test_ttft_within_latency_and_metrics(tmp_path):
    res = simulate(_load(tmp_path, ["simulation.granularity=token"]))
    df = res.requests
    done = df[df["status"] == "completed"]
    assert (done["ttft_s"] <= done["latency_s"] + 1e-12).all()
    assert (done["ttft_s"] > 0).all()
    multi = done[done["output_tokens"] > 1]
    assert multi["tpot_s"].notna().all()
    assert (multi["itl_p50_s"] <= multi["itl_p99_s"] + 1e-15).all()
    s = res.summary
    assert s["ttft_p50_s"].notna().all() and s["server_tokens_per_s"].gt(0).all()
    assert res.timeseries["batch_size"].notna().all()


def test_request_mode_token_columns_are_nan_and_effective_unchanged(tmp_path):
    ld = _load(tmp_path, [])
    assert "simulation" not in effective_dict(ld)
    res = simulate(ld)
    assert res.requests["ttft_s"].isna().all()
    assert res.summary["ttft_p50_s"].isna().all()


def test_token_mode_is_deterministic(tmp_path):
    sets = ["simulation.granularity=token", "simulation.on_kv_full=preempt"]
    a = simulate(_load(tmp_path, sets)).requests
    b = simulate(_load(tmp_path, sets)).requests
    assert a.equals(b)


def test_ttft_tpot_sla(tmp_path):
    base = {**BASE}
    mix = dict(base["workload"]["mix"][0])
    del mix["deadline_s"]
    mix.update(ttft_deadline_s=0.05, tpot_deadline_s=0.02)
    base["workload"] = {**base["workload"], "mix": [mix]}
    res = simulate(_load(tmp_path, ["simulation.granularity=token"], base)).requests
    expect = (res["ttft_s"] <= 0.05) & (res["tpot_s"].isna() | (res["tpot_s"] <= 0.02))
    assert (res["sla_met"] == (expect & (res["status"] == "completed"))).all()
    with pytest.raises(Exception, match="granularity: token"):
        _load(tmp_path, [], base)


def test_queue_aware_on_an_idle_batching_server_is_dp(tmp_path):
    """Requests far apart find the server asleep: no wait, so dp_queue_aware plans as dp."""
    sets = ["simulation.granularity=token", "workload.arrival.rate_per_s=0.01", "requests=40",
            "policies=[dp,dp_queue_aware]"]  # fmt: skip
    df = simulate(_load(tmp_path, sets)).requests
    a, b = (df[df["policy"] == p].reset_index(drop=True) for p in ("dp", "dp_queue_aware"))
    cols = ["client_units", "planned_latency_s", "latency_s", "server_busy_s"]
    pd.testing.assert_frame_equal(a[cols], b[cols])


def test_queue_aware_plans_with_the_iteration_time_per_pass(tmp_path):
    """Under load each pass through a server entry costs the recent iteration time, so the
    plans made at arrival see other latencies than dp's idle-server plans, and (dp being
    exact, the waits only shrinking what fits) need at least dp's server work, more on
    average."""
    sets = ["simulation.granularity=token", "workload.arrival.rate_per_s=3000", "requests=400",
            "policies=[dp,dp_queue_aware]"]  # fmt: skip
    df = simulate(_load(tmp_path, sets)).requests
    dp, qa = (df[df["policy"] == p].reset_index(drop=True) for p in ("dp", "dp_queue_aware"))
    seen_wait = (qa["planned_latency_s"] - dp["planned_latency_s"]).abs() > 1e-6
    assert seen_wait.mean() > 0.3
    both = qa["plan_feasible"] & dp["plan_feasible"]
    assert both.sum() >= 40
    assert (qa["server_work"][both] >= dp["server_work"][both] * (1 - 1e-9)).all()
    assert qa["server_work"][both].mean() > dp["server_work"][both].mean()


def test_link_estimates_plan_at_arrival_in_token_mode(tmp_path):
    """On a traced link oracle and ewma plan with other bandwidths than nominal, and the
    ewma estimate learns from token-mode transfers."""
    from sim.engine.token import TokenSimulation

    base = {**BASE, "clients": [dict(BASE["clients"][0])]}
    trace = tmp_path / "bw.csv"
    trace.write_text("time_s,uplink_mbps,downlink_mbps\n0,5,20\n2,40,160\n4,5,20\n")
    base["clients"][0]["link"] = {"uplink_mbps": 20, "downlink_mbps": 80, "rtt_ms": 10,
                                  "trace": str(trace)}  # fmt: skip
    sets = ["simulation.granularity=token", "policies=[dp]", "workload.mix.0.deadline_s=0.5"]
    plans = {}
    for est in ("nominal", "oracle", "ewma"):
        ld = _load(tmp_path, [*sets, f"split.link_estimate={est}"], base)
        plans[est] = simulate(ld).requests["planned_latency_s"].to_numpy()
    assert not np.allclose(plans["oracle"], plans["nominal"])
    assert not np.allclose(plans["ewma"], plans["nominal"])
    ld = _load(tmp_path, [*sets, "split.link_estimate=ewma"], base)
    from sim.engine.planner import ProblemBook
    from sim.runner import _replication_arrivals

    arrivals, jitter = _replication_arrivals(ld, 0, 20.0)
    sim = TokenSimulation(ld, "dp", arrivals, jitter, ProblemBook(ld))
    sim.run()
    assert sim.links[0].estimate_mbps != sim.links[0].nominal_mbps


def test_pass_waits_count_prefill_and_every_decode_step():
    """A batching server's wait recurs per pass: boundaries from the loop start on are
    entered by the prefill and by every decode step; a forward pass enters once."""
    from sim.catalog import get_model
    from sim.costs import request_work
    from sim.engine.planner import pass_waits

    model = get_model("gpt2-medium")
    gen = request_work(model, "generate", 100, 20)
    waits = pass_waits(gen, 0.01)
    assert waits.shape == (gen.n_units + 1,) and gen.steps > 0
    assert np.allclose(waits[gen.loop_start :], 0.01 * (1 + gen.steps))
    assert np.allclose(waits[: gen.loop_start], 0.01)
    fwd = request_work(model, "forward", 100, 0)
    assert np.allclose(pass_waits(fwd, 0.01), 0.01)


def _long_prompts(tmp_path, sets: list[str]):
    base = {**BASE, "requests": 150}
    mix = dict(BASE["workload"]["mix"][0])
    mix.update(model="qwen2.5-0.5b", prompt_tokens={"kind": "uniform", "low": 200, "high": 3000},
               output_tokens={"kind": "uniform", "low": 20, "high": 60})  # fmt: skip
    base["workload"] = {"arrival": {"kind": "poisson", "rate_per_s": 60.0}, "mix": [mix]}
    sets = ["simulation.granularity=token", "simulation.max_batch_tokens=512",
            "policies=[server_only]", *sets]  # fmt: skip
    return run_one(_load(tmp_path, sets, base), "server_only")


def test_chunked_prefill_respects_the_budget_and_cuts_the_ttft_tail(tmp_path):
    """Chunks never exceed the token budget, every prompt token is processed once, and long
    prompts no longer wait for a batch with room for all of them (far lower TTFT tail)."""
    whole = _long_prompts(tmp_path, [])
    chunked = _long_prompts(tmp_path, ["simulation.chunked_prefill=true"])
    done = RequestStatus.COMPLETED
    assert (chunked.status == done).all() and (whole.status == done).all()
    levels = np.asarray(chunked.token.server_tokens.level)
    assert np.diff(levels).max() <= 512 + 1e-9
    assert levels[-1] == np.asarray(whole.token.server_tokens.level)[-1]
    p99 = lambda res: np.nanpercentile(res.token.ttft_s, 99)  # noqa: E731
    assert p99(chunked) < 0.5 * p99(whole)


def test_medium_calendar_books_the_earliest_gap_without_overlap():
    """Bookings never overlap, never start before they are ready, and fill earlier gaps."""
    import simpy

    from sim.engine.network import UP, Medium

    m = Medium(simpy.Environment(), "cell")
    assert m.reserve(UP, 1.0, 0.5, 0.0) == 1.0  # [1.0, 1.5)
    assert m.reserve(UP, 1.2, 0.5, 0.0) == 1.5  # busy until 1.5
    assert m.reserve(UP, 0.2, 0.5, 0.0) == 0.2  # the gap before 1.0 holds it
    assert m.reserve(UP, 0.6, 0.5, 0.0) == 2.0  # 0.7..1.0 too short: after 1.5..2.0
    rng = np.random.default_rng(1)
    m2 = Medium(simpy.Environment(), "cell")
    got = []
    for _ in range(300):
        ready, dur = float(rng.uniform(0, 10)), float(rng.uniform(0.001, 0.2))
        start = m2.reserve(UP, ready, dur, 0.0)
        assert start >= ready
        got.append((start, start + dur))
    got.sort()
    assert all(a[1] <= b[0] + 1e-12 for a, b in zip(got, got[1:], strict=False))


def test_shared_medium_contends_in_token_mode(tmp_path):
    """Clients on one medium wait for each other's transfers in token mode too."""
    base = {**BASE, "clients": [dict(BASE["clients"][0])]}
    base["clients"][0]["link"] = {"uplink_mbps": 20, "downlink_mbps": 80, "rtt_ms": 10}
    # 400 req/s (150 before the A100's fit to measured kernels: a slower server spreads
    # the requests, so a higher rate keeps their uploads overlapping)
    sets = ["simulation.granularity=token", "policies=[dp]", "workload.mix.0.deadline_s=0.2",
            "workload.arrival.rate_per_s=400"]  # fmt: skip
    alone = simulate(_load(tmp_path, sets, base)).requests
    base["clients"][0]["link"]["shared"] = "cell"
    shared = simulate(_load(tmp_path, sets, base)).requests
    assert (alone["client_units"] == shared["client_units"]).all()  # same plans
    assert shared["transfer_s"].sum() > alone["transfer_s"].sum() * 1.5


def test_event_log_is_refused_in_token_mode(tmp_path):
    with pytest.raises(ValueError, match="request granularity only"):
        run_one(_load(tmp_path, ["simulation.granularity=token"]), "dp", log=[])
