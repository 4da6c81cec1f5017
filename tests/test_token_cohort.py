"""The server-kept decode cohort gives the results of stepping its members one by one, bit
for bit.

`sim.engine.cohort` advances the requests whose decode steps stay on the server as one
block per iteration, brings each member's own state up to date only when it leaves or
the block is dissolved, and keeps the block through decode spans. Every run here is made
twice, with the cohort and with it switched off (everything else, decode spans included,
unchanged), and the requests, summary and timeseries tables must be equal exactly.
The scenarios cover the places where the block must stand where stepping would have its
members: visits due at the very end of an iteration (sequenced after the block), a token
budget the block does not fit in, admissions after it, decode spans with the block in
them, runs cut inside a span, split plans and a bounded queue.
"""

from __future__ import annotations

import random

import pandas as pd
import pytest
import yaml
from chat_scenario import chat_scenario
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sim.engine.token_server as token_server
from sim.config import load_scenario
from sim.engine.cohort import Cohort, _running_sum, _running_sum_of
from sim.runner import simulate

BASE = chat_scenario(
    "cohort",
    3,
    150,
    clients=5,
    max_batch_requests=24,
    rate_per_s=8.0,
    prompt_median=600,
    prompt_max=4000,
    output=(5, 80),
    policies=["server_only"],
)


def _tables(tmp_path, raw: dict, name: str) -> dict[str, pd.DataFrame]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    res = simulate(load_scenario(path))
    return {"requests": res.requests, "summary": res.summary, "timeseries": res.timeseries}


def _without_cohort(monkeypatch) -> None:
    monkeypatch.setattr(token_server, "Cohort", lambda enabled: Cohort(False))


def _both(tmp_path, raw: dict, name: str) -> tuple[dict, dict]:
    """The tables with the cohort and without it."""
    with_cohort = _tables(tmp_path, raw, name)
    with pytest.MonkeyPatch.context() as mp:
        _without_cohort(mp)
        stepped = _tables(tmp_path, raw, name)
    return with_cohort, stepped


def _assert_identical(a: dict, b: dict) -> None:
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True, obj=name)


def _variant(**simulation) -> dict:
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    raw["simulation"].update(simulation)
    return raw


class _Paths:
    """Counts of the cohort's paths taken in a run (so the tests cannot pass vacuously)."""

    def __init__(self, monkeypatch):
        self.joined = self.silent = self.dissolved = self.behind = 0
        join, silent, dissolve = Cohort.join, Cohort.end_silent, Cohort.dissolve
        take = token_server.TokenServer._take_ready

        def counting_join(c, carried):
            self.joined += len(carried)
            return join(c, carried)

        def counting_silent(c, busy_s, ends):
            self.silent += 1
            return silent(c, busy_s, ends)

        def counting_dissolve(c):
            self.dissolved += bool(c.members)
            return dissolve(c)

        def counting_take(server, budget, batch):
            pos = server._block_pos
            self.behind += 0 <= pos < len(server._ready)  # visits after the block
            return take(server, budget, batch)

        monkeypatch.setattr(Cohort, "join", counting_join)
        monkeypatch.setattr(Cohort, "end_silent", counting_silent)
        monkeypatch.setattr(Cohort, "dissolve", counting_dissolve)
        monkeypatch.setattr(token_server.TokenServer, "_take_ready", counting_take)


@pytest.mark.parametrize(
    "policy, simulation",
    [
        ("server_only", {}),
        ("dp", {}),
        ("dp_queue_aware", {}),
        ("server_only", {"max_batch_tokens": 1200}),  # admissions after the block
        ("server_only", {"max_batch_tokens": 16, "max_batch_requests": 64}),  # budgets the
        ("dp", {"max_batch_tokens": 24, "max_batch_requests": 64}),  # block does not fit
    ],
)
def test_cohort_equals_stepping(tmp_path, monkeypatch, policy, simulation):
    raw = _variant(**simulation)
    raw["policies"] = [policy]
    paths = _Paths(monkeypatch)
    a, b = _both(tmp_path, raw, f"{policy}")
    _assert_identical(a, b)
    assert paths.joined > 0


def test_every_path_is_taken(tmp_path, monkeypatch):
    """Across these runs the block is joined, kept through spans, dissolved (token budget,
    end of the run) and stands before visits due at an iteration's end."""
    paths = _Paths(monkeypatch)
    for policy, sim in [("server_only", {}),
                        ("server_only", {"max_batch_tokens": 16, "max_batch_requests": 64}),
                        ("dp", {})]:  # fmt: skip
        raw = _variant(**sim)
        raw["policies"] = [policy]
        _tables(tmp_path, raw, policy)
    raw = _variant()
    raw["drain_s"] = 0.5  # the run ends inside spans and iterations of the block
    _tables(tmp_path, raw, "cut")
    assert paths.joined > 0 and paths.silent > 0 and paths.dissolved > 0 and paths.behind > 0


@pytest.mark.parametrize("policy", ["server_only", "dp"])
def test_timeline_compaction(tmp_path, monkeypatch, policy):
    """The timeline's head is dropped often (every 8 entries here): the same tables."""
    import sim.engine.cohort as cohort

    monkeypatch.setattr(cohort, "_COMPACT_FROM", 8)
    dropped = []
    compact = Cohort._compact

    def counting(c):
        before = len(c._durations)
        compact(c)
        dropped.append(before - len(c._durations))

    monkeypatch.setattr(Cohort, "_compact", counting)
    raw = _variant()
    raw["policies"] = [policy]
    _assert_identical(*_both(tmp_path, raw, f"compact_{policy}"))
    assert sum(dropped) > 0


def test_cut_runs_and_bounded_queues(tmp_path):
    """A run cut by `drain_s` (in a span or an iteration of the block) and a bounded,
    EDF-ordered admission queue."""
    raw = _variant()
    raw["drain_s"] = 0.5
    raw["policies"] = ["server_only", "dp"]
    _assert_identical(*_both(tmp_path, raw, "drain"))
    raw = _variant(max_batch_requests=8)
    raw["server"] = {"device": "a100-80gb", "max_queue": 6, "discipline": "edf"}
    raw["workload"]["arrival"]["rate_per_s"] = 30.0
    raw["policies"] = ["server_only", "dp"]
    _assert_identical(*_both(tmp_path, raw, "queue"))


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 10_000),
    rate=st.sampled_from([2.0, 8.0, 20.0]),
    max_requests=st.sampled_from([4, 16, 64]),
    max_tokens=st.sampled_from([None, 12, 600, 2500]),
    policy=st.sampled_from(["server_only", "dp", "dp_queue_aware"]),
)
def test_random_scenarios(tmp_path, seed, rate, max_requests, max_tokens, policy):
    raw = _variant(max_batch_requests=max_requests)
    if max_tokens is not None:
        raw["simulation"]["max_batch_tokens"] = max_tokens
    raw["seed"] = seed
    raw["requests"] = 60
    raw["workload"]["arrival"]["rate_per_s"] = rate
    raw["policies"] = [policy]
    _assert_identical(*_both(tmp_path, raw, f"r{seed}"))


def test_running_sum_adds_from_the_left():
    """numpy's accumulate, used to bring long runs up to date, adds as a Python loop does."""
    rng = random.Random(7)
    for _ in range(2000):
        values = [rng.uniform(0, 1) * 10 ** rng.randint(-9, 3) for _ in range(rng.randint(1, 300))]
        start = rng.uniform(0, 1e3)
        total = start
        for v in values:
            total += v
        assert _running_sum(start, values) == total


def test_running_sum_of_a_constant_adds_from_the_left():
    rng = random.Random(8)
    for _ in range(2000):
        start, value = rng.uniform(0, 1e4), rng.uniform(0, 1) * 10 ** rng.randint(-6, 6)
        n = rng.randint(1, 400)
        total = start
        for _ in range(n):
            total += value
        assert _running_sum_of(start, value, n) == total
