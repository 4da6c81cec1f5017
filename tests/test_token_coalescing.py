"""Coalesced decode spans are exact: the same tables as stepping every iteration.

`simulation.coalesce: true` (the default) advances runs of decode-only iterations as one
event; `false` steps every iteration and is the reference. On random token-mode scenarios
covering preemption, KV waits, chunked prefill, split plans with client decode loops,
shared media, jitter, EDF, rejections, trace arrivals, load-aware planning, early ends
(drain_s, the overload stop) the requests, summary and timeseries tables of both agree to
1e-9 relative.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.config import load_scenario
from sim.runner import simulate

TINY_LLAMA = {
    "architecture": "decoder",
    "layers": 3,
    "hidden_size": 256,
    "heads": 8,
    "kv_heads": 2,
    "mlp_size": 512,
    "mlp_kind": "gated",
    "vocab_size": 2000,
    "max_positions": 4096,
    "position": "rotary",
    "norm": "rmsnorm",
    "bias": False,
    "tied_embeddings": False,
}


@st.composite
def token_scenarios(draw) -> dict:
    """A small random token-mode scenario (a few dozen requests)."""
    shared = draw(st.booleans())
    jitter = draw(st.booleans())
    link = {
        "uplink_mbps": draw(st.sampled_from([20.0, 100.0, 1e5])),
        "downlink_mbps": draw(st.sampled_from([50.0, 300.0, 1000.0])),
        "rtt_ms": draw(st.sampled_from([0.0, 5.0, 30.0])),
    }
    groups = [
        {"name": "laptops", "count": 3, "device": "laptop-m2",
         "resident": draw(st.sampled_from(["all", "none", "fit"])), "link": dict(link)},
        {"name": "phones", "count": 3, "device": "phone-flagship", "resident": "none",
         "link": dict(link)},
    ]  # fmt: skip
    if shared:
        groups[0]["link"]["shared"] = "cell"
        groups[1]["link"]["shared"] = "cell"
    if jitter:
        groups[1]["link"]["jitter"] = {"delay_ms": {"kind": "exponential", "mean": 2}}
    policies = draw(
        st.lists(st.sampled_from(["server_only", "dp", "dp_queue_aware", "client_only"]),
                 min_size=1, max_size=2, unique=True)
    )  # fmt: skip
    preempt = draw(st.booleans())
    sim = {
        "granularity": "token",
        "max_batch_requests": draw(st.sampled_from([2, 4, 16, 64])),
        "max_batch_tokens": draw(st.sampled_from([64, 512, 4096])),
        "chunked_prefill": draw(st.booleans()),
        "on_kv_full": "preempt" if preempt else "wait",
        "kv_memory_gb": draw(st.sampled_from([None, 0.0006, 0.001, 0.003, 0.05])),
    }
    mix = [
        {
            "name": "chat",
            "model": "tiny",
            "task": "generate",
            "prompt_tokens": {"kind": "uniform", "low": 8, "high": 300},
            "output_tokens": {"kind": "uniform", "low": 1, "high": 150},
            "deadline_s": 2.0,
        }
    ]
    if draw(st.booleans()):
        mix[0]["ttft_deadline_s"] = 0.5
        mix[0]["tpot_deadline_s"] = 0.05
    raw = {
        "name": "coalesce",
        "seed": draw(st.integers(0, 10_000)),
        "requests": draw(st.integers(10, 80)),
        "policies": policies,
        "models": {"tiny": TINY_LLAMA},
        "server": {
            "device": draw(st.sampled_from(["a100-80gb", "l4"])),
            "discipline": draw(st.sampled_from(["fifo", "edf"])),
            "max_queue": draw(st.sampled_from([None, 3, 50])),
        },
        "simulation": sim,
        "clients": groups,
        "workload": {
            "arrival": {"kind": "poisson", "rate_per_s": draw(st.sampled_from([2.0, 20.0, 300.0]))},
            "mix": mix,
        },
        "split": {"link_estimate": draw(st.sampled_from(["nominal", "nominal", "ewma"]))},
    }
    if draw(st.booleans()):
        raw["drain_s"] = draw(st.sampled_from([0.0, 0.5, 3.0]))
    if draw(st.booleans()):
        raw["simulation"]["max_in_flight"] = draw(st.integers(3, 30))
    return raw


def _tables(tmp_path, raw: dict, coalesce: bool, trace: str | None = None) -> dict:
    raw = {**raw, "simulation": {**raw["simulation"], "coalesce": coalesce}}
    if trace is not None:
        (tmp_path / "trace.csv").write_text(trace)
        raw = {**raw, "workload": {**raw["workload"],
                                   "arrival": {"kind": "trace", "path": "trace.csv"}}}  # fmt: skip
    path = tmp_path / f"s_{coalesce}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    res = simulate(load_scenario(path))
    return {"requests": res.requests, "summary": res.summary, "timeseries": res.timeseries}


def assert_same_tables(a: dict, b: dict) -> None:
    for name in ("requests", "summary", "timeseries"):
        x, y = a[name], b[name]
        assert list(x.columns) == list(y.columns) and len(x) == len(y), name
        for col in x.columns:
            if pd.api.types.is_numeric_dtype(x[col]) and not pd.api.types.is_bool_dtype(x[col]):
                u, v = x[col].to_numpy(float), y[col].to_numpy(float)
                ok = np.isclose(u, v, rtol=1e-9, atol=1e-12, equal_nan=True)
                assert ok.all(), (name, col, u[~ok][:3], v[~ok][:3])
            else:
                assert (x[col].astype(str) == y[col].astype(str)).all(), (name, col)


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(raw=token_scenarios())
def test_coalesced_spans_equal_stepping(raw, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("coalesce")
    assert_same_tables(_tables(tmp, raw, True), _tables(tmp, raw, False))


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(raw=token_scenarios(), data=st.data())
def test_coalesced_spans_equal_stepping_on_trace_arrivals(raw, data, tmp_path_factory):
    times = np.cumsum(data.draw(st.lists(st.floats(0.001, 0.5), min_size=5, max_size=30)))
    rows = "".join(
        f"{t:.6f},{int(20 + 7 * i % 200)},{1 + 5 * i % 40}\n" for i, t in enumerate(times)
    )
    trace = "arrived_at,num_prefill_tokens,num_decode_tokens\n" + rows
    raw = {k: v for k, v in raw.items() if k != "requests"}
    tmp = tmp_path_factory.mktemp("coalesce_trace")
    assert_same_tables(_tables(tmp, raw, True, trace), _tables(tmp, raw, False, trace))


def test_spans_form_are_cut_and_preempt(tmp_path):
    """The equality tests must not pass vacuously: on a loaded server with scarce KV memory
    spans form (many iterations each), arrivals cut them, and requests are preempted."""
    from sim.engine.planner import ProblemBook
    from sim.engine.token import TokenSimulation
    from sim.engine.workload import Streams, generate_arrivals, replication_seeds

    base = {
        "name": "spans", "seed": 3, "requests": 200, "policies": ["server_only"],
        "models": {"tiny": TINY_LLAMA}, "server": {"device": "a100-80gb"},
        "simulation": {"granularity": "token", "max_batch_requests": 16, "on_kv_full": "preempt",
                       "kv_memory_gb": 0.0006},
        "clients": [{"name": "c", "count": 4, "device": "laptop-m2",
                     "link": {"uplink_mbps": 1e5, "downlink_mbps": 1e5, "rtt_ms": 0}}],
        "workload": {"arrival": {"kind": "poisson", "rate_per_s": 300.0},
                     "mix": [{"name": "chat", "model": "tiny", "task": "generate",
                              "prompt_tokens": {"kind": "uniform", "low": 8, "high": 300},
                              "output_tokens": {"kind": "uniform", "low": 20, "high": 400},
                              "deadline_s": 5.0}]},
    }  # fmt: skip
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(base))
    ld = load_scenario(path)
    book = ProblemBook(ld)
    arrivals = generate_arrivals(ld, Streams.spawn(replication_seeds(3, 1)[0]), 300.0)
    sim = TokenSimulation(ld, "server_only", arrivals, np.random.SeedSequence(1), book)
    spans, cuts = [], []
    server = sim.token_server
    run_span, cut_span = server._run_span, server._cut_span

    def counting_run_span(batch, now, k):
        spans.append(k)
        return run_span(batch, now, k)

    def counting_cut(span, ready_s):
        before = span.k
        cut_span(span, ready_s)
        if span.k < before:
            cuts.append(before - span.k)

    server._run_span, server._cut_span = counting_run_span, counting_cut
    res = sim.run()
    assert len(spans) > 20 and max(spans) > 10
    assert cuts, "arrivals must cut spans"
    assert res.token.preemptions > 0
    assert sim.token_server.iterations > 2 * len(spans)


@pytest.mark.parametrize("policy", ["server_only", "dp"])
def test_vidur_like_run_equal_with_and_without_spans(policy, tmp_path):
    """A longer run at a realistic load, preemption on: identical tables."""
    raw = {
        "name": "long", "seed": 9, "requests": 150, "policies": [policy],
        "models": {"tiny": TINY_LLAMA}, "server": {"device": "a100-80gb"},
        "simulation": {"granularity": "token", "max_batch_requests": 32,
                       "max_batch_tokens": 1024, "on_kv_full": "preempt", "kv_memory_gb": 0.02},
        "clients": [{"name": "c", "count": 10, "device": "laptop-m2", "resident": "fit",
                     "link": {"uplink_mbps": 200, "downlink_mbps": 500, "rtt_ms": 10}}],
        "workload": {"arrival": {"kind": "poisson", "rate_per_s": 40.0},
                     "mix": [{"name": "chat", "model": "tiny", "task": "generate",
                              "prompt_tokens": {"kind": "lognormal", "median": 200, "sigma": 0.8,
                                                "max": 2000},
                              "output_tokens": {"kind": "uniform", "low": 10, "high": 300},
                              "deadline_s": 3.0}]},
    }  # fmt: skip
    assert_same_tables(_tables(tmp_path, raw, True), _tables(tmp_path, raw, False))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31))
def test_span_prices_equal_stepped_prices_bit_for_bit(seed):
    """`BatchCost.close_span(k)` gives, for random decode batches over random models, the
    same floats as `close()` after each of k iterations with every context one longer."""
    from sim.engine.batching import BatchCost

    rng = np.random.default_rng(seed)
    units = int(rng.integers(2, 40))
    fast = BatchCost(1e12 + 1e14 * rng.random(), 1e11 + 1e12 * rng.random(), 1e-5)
    ref = BatchCost(fast.flops_per_s, fast.bytes_per_s, fast.overhead_s)
    for _ in range(int(rng.integers(1, 3))):
        weights = rng.random(units) * 1e8
        fast.add_model(weights)
        ref.add_model(weights)
    coeffs = [
        (int(rng.integers(0, len(fast.weights))), *(rng.random(units) * 1e9 for _ in range(4)))
        for _ in range(int(rng.integers(1, 4)))
    ]
    steps = []
    for _ in range(int(rng.integers(1, 30))):
        first = int(rng.integers(0, units))
        steps.append((int(rng.integers(0, len(coeffs))), first,
                      int(rng.integers(first + 1, units + 1)), int(rng.integers(1, 5000))))  # fmt: skip
    k = int(rng.integers(1, 60))
    g_fast = [fast.group(*c) for c in coeffs]
    g_ref = [ref.group(*c) for c in coeffs]
    for g, a, e, ctx in steps:
        fast.add_step(g_fast[g], a, e, ctx)
    span = fast.close_span(k)
    stepped = []
    for j in range(k):
        for g, a, e, ctx in steps:
            ref.add_step(g_ref[g], a, e, ctx + j)
        stepped.append(ref.close())
    assert np.array_equal(span, np.array(stepped))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(values=st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=200))
def test_numpy_sum_is_numpys_sum_bit_for_bit(values):
    """The client's decode-leg time sums its units in plain floats, in numpy's order."""
    from sim.engine.token_program import numpy_sum

    assert numpy_sum(list(values)) == float(np.array(values).sum())
