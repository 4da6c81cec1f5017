"""Token granularity: continuous batching server, consistency with request granularity."""

from __future__ import annotations

import numpy as np
import pytest

from sim.config import load_scenario
from sim.config.load import effective_dict
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
            "link": {"uplink_mbps": 1e9, "downlink_mbps": 1e9, "rtt_ms": 0},
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
    assert (res.status == 1).all()
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
