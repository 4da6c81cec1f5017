"""The engine's fast paths for split decode steps give the general walk's results bit for bit.

A decode step of a request whose plan runs a client leg, then a server leg that makes the
token, leaves the server every token: the token goes down the link, the client runs its
leg on its (FIFO) device and the activation comes back up. On a fixed link the engine
walks it with the transfer times fixed per request (`TokenSimulation._split_step`) and
the client leg's times tabled per step (`TokenProgram.step_times`); an iteration of one
decode group's steps only is priced by `BatchCost._close_steps`. Each is checked against
the general code it stands for: the same floats, not merely close ones.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from chat_scenario import chat_scenario
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.config import load_scenario
from sim.engine.batching import BatchCost
from sim.engine.token import TokenSimulation
from sim.engine.token_program import (
    client_step_s,
    client_step_table,
    numpy_sum,
    numpy_sum_columns,
)
from sim.runner import simulate

CHAT = chat_scenario(
    "split_steps",
    5,
    120,
    clients=6,
    max_batch_requests=32,
    rate_per_s=6.0,
    prompt_median=1000,
    prompt_max=6000,
    output=(10, 60),
    policies=["dp", "dp_queue_aware"],
)


def _tables(tmp_path, raw: dict, name: str) -> dict[str, pd.DataFrame]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    res = simulate(load_scenario(path))
    return {"requests": res.requests, "summary": res.summary, "timeseries": res.timeseries}


def _assert_identical(a: dict, b: dict) -> None:
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True, obj=name)


def _count_split_steps(monkeypatch) -> list[int]:
    """Count the engine's `_split_step` calls (one list item per call)."""
    calls: list[int] = []
    inner = TokenSimulation._split_step

    def counting(self, r, now):
        calls.append(1)
        return inner(self, r, now)

    monkeypatch.setattr(TokenSimulation, "_split_step", counting)
    return calls


@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "chunked"])
def test_split_steps_equal_the_general_walk_bit_for_bit(tmp_path, monkeypatch, chunked):
    """Laptops run split plans (client legs every decode step): the tables with the fast
    split steps are byte-for-byte those of the general walk, and the fast path is taken."""
    raw = {**CHAT, "simulation": {**CHAT["simulation"], "chunked_prefill": chunked}}
    calls = _count_split_steps(monkeypatch)
    fast = _tables(tmp_path, raw, "fast")
    assert len(calls) > 1000
    monkeypatch.setattr(TokenSimulation, "split_steps", False)
    calls.clear()
    general = _tables(tmp_path, raw, "general")
    assert not calls
    _assert_identical(fast, general)


def test_split_steps_under_preemption_equal_the_general_walk(tmp_path, monkeypatch):
    """Scarce KV memory with preemption (recomputes, readmissions) and EDF: identical."""
    busy = {"kind": "poisson", "rate_per_s": 20.0}
    raw = {**CHAT, "server": {"device": "a100-80gb", "discipline": "edf"},
           "simulation": {**CHAT["simulation"], "on_kv_full": "preempt", "kv_memory_gb": 1.5},
           "workload": {**CHAT["workload"], "arrival": busy}}  # fmt: skip
    calls = _count_split_steps(monkeypatch)
    fast = _tables(tmp_path, raw, "fast")
    assert calls and (fast["summary"]["preemptions"] > 0).all()
    monkeypatch.setattr(TokenSimulation, "split_steps", False)
    _assert_identical(fast, _tables(tmp_path, raw, "general"))


def test_split_steps_are_not_taken_on_links_that_vary(tmp_path, monkeypatch):
    """Jitter, a shared medium or learnt link estimates: the general walk only."""
    groups = [dict(g, link=dict(g["link"])) for g in CHAT["clients"]]
    groups[0]["link"]["jitter"] = {"delay_ms": {"kind": "exponential", "mean": 2}}
    calls = _count_split_steps(monkeypatch)
    _tables(tmp_path, {**CHAT, "clients": groups}, "jitter")
    assert not calls


@settings(max_examples=200, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31))
def test_client_step_table_is_client_step_s_bit_for_bit(seed):
    """The tabled client leg times equal `client_step_s` at every context."""
    rng = np.random.default_rng(seed)
    units = int(rng.choice([1, 3, 7, 8, 9, 16, 17, 33, 64, 130]))
    scale = 10.0 ** rng.integers(-9, -2, size=4)
    coeffs = [tuple(float(x) for x in rng.random(4) * scale) for _ in range(units)]
    leg = (coeffs, float(rng.random() * 1e-4))
    first, steps = int(rng.integers(1, 9000)), int(rng.integers(1, 300))
    table = client_step_table(leg, first, steps)
    assert table == [client_step_s(leg, first + j) for j in range(steps)]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(n=st.integers(1, 128), size=st.integers(1, 5), seed=st.integers(0, 2**31))
def test_numpy_sum_columns_is_numpy_sum_per_column(n, size, seed):
    values = [np.random.default_rng(seed + i).random(size) * 1e3 for i in range(n)]
    before = [v.copy() for v in values]
    out = numpy_sum_columns(values, size)
    assert out.tolist() == [numpy_sum([float(v[j]) for v in values]) for j in range(size)]
    assert all(np.array_equal(a, b) for a, b in zip(values, before, strict=True))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31))
def test_decode_only_price_is_the_general_price_bit_for_bit(seed):
    """`close` of one group's decode steps (`_close_steps`) equals the general `_close_all`,
    with and without a device's non_overlap."""
    rng = np.random.default_rng(seed)
    units = int(rng.integers(2, 40))
    g = float(rng.choice([0.0, rng.random()]))
    fast = BatchCost(1e12 + 1e14 * rng.random(), 1e11 + 1e12 * rng.random(), 1e-5, g)
    ref = BatchCost(fast.flops_per_s, fast.bytes_per_s, fast.overhead_s, g)
    weights = rng.random(units) * 10.0 ** rng.uniform(6, 10) * (rng.random(units) < 0.8)
    m = fast.add_model(weights)
    ref.add_model(weights)
    # magnitudes over decades: the weights and the requests' own bytes as often alike as not
    coeffs = (rng.random(units) * 10.0 ** rng.uniform(2, 9) for _ in range(4))
    c = [x * (rng.random(units) < 0.9) for x in coeffs]
    g_fast, g_ref = fast.group(m, *c), ref.group(m, *c)
    for _ in range(int(rng.integers(1, 6))):  # several iterations: the resets too
        for _ in range(int(rng.integers(1, 70))):
            a = int(rng.integers(0, units))
            e = int(rng.integers(a + 1, units + 1))
            ctx = int(rng.integers(1, 10000))
            fast.add_step(g_fast, a, e, ctx)
            ref.add_step(g_ref, a, e, ctx)
        assert fast.close() == ref._close_all()
