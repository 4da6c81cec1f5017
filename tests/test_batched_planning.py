"""Batched planning (`sim.costs.batched`, `sim.engine.plan_batch`, `sim.engine.plan_fixed`)
gives exactly the one-at-a-time plans.

- `work_batch`'s rows equal `request_work`, and the batched unit, transfer and loop times
  equal the one-size functions, bit for bit, for decoders, encoders and encoder-decoders.
- A planner that prefetched every distinct size returns, for every policy, the plans a
  fresh planner makes one at a time: placement, latency, server work, feasibility, notes,
  segments, deadline, server-only work and transfer bytes; with absolute, relative and
  token (TTFT/TPOT) SLAs, at request and token granularity, with every `resident` kind.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.catalog import get_device, get_model
from sim.config import load_scenario
from sim.costs import loop_time_s, request_work, transfer_times_s, unit_times_s
from sim.costs.batched import (
    loop_times_many,
    total_flops_many,
    transfer_times_many,
    unit_times_many,
    work_batch,
)
from sim.engine.plan_batch import prefetch
from sim.engine.planner import Planner, ProblemBook

ARRAYS = (
    "pass_flops", "pass_bytes", "pass_runs", "step_flops0", "step_flops1", "step_bytes0",
    "step_bytes1", "step_runs", "act_pass", "act_step", "weight_bytes", "kv_bytes",
)  # fmt: skip
MODELS = [
    ("llama-2-7b", "generate"),
    ("gpt2", "generate"),
    ("bert-base", "forward"),
    ("transformer-base", "generate"),
    ("transformer-base", "forward"),
]


@settings(max_examples=15, deadline=None)
@given(
    which=st.sampled_from(MODELS),
    granularity=st.sampled_from(["block", "sublayer"]),
    sizes=st.lists(st.tuples(st.integers(1, 900), st.integers(1, 120)), min_size=1, max_size=40),
)
def test_work_batch_rows_equal_request_work(which, granularity, sizes):
    model, task = get_model(which[0]), which[1]
    prompts, outputs = np.array(sizes).T
    batch = work_batch(model, task, prompts, outputs, granularity)
    dev = get_device("a100-80gb")
    times = unit_times_many(batch, dev, model.activation_dtype)
    up, loop = transfer_times_many(batch, 37.0, 15.0), loop_times_many(batch, 37.0, 15.0)
    flops = total_flops_many(batch)
    for i, (p, o) in enumerate(sizes):
        one = request_work(model, task, p, o, granularity)
        row = batch.row(i)
        for name in ARRAYS:
            assert np.array_equal(getattr(one, name), getattr(row, name)), name
        for name in ("ctx_first", "steps", "loop_start", "loop_bytes"):
            assert getattr(one, name) == getattr(row, name), name
        assert np.array_equal(unit_times_s(one, dev, model.activation_dtype), times[i])
        assert np.array_equal(transfer_times_s(one, 37.0, 15.0), up[i])
        assert loop_time_s(one, 37.0, 15.0) == loop[i]
        assert np.array_equal(one.total_flops(), flops[i])
    assert times.flags.c_contiguous and batch.pass_flops.flags.c_contiguous


def _scenario(tmp_path: Path, model: str, task: str, sla: dict, token: bool) -> ProblemBook:
    groups = [
        ("laptops", "laptop-m2", "fit", 50, 200, 20),
        ("phones", "phone-flagship", "none", 20, 100, 40),
        ("desktops", "laptop-m2", "all", 100, 100, 5),
        ("tablets", "phone-flagship", {"first": 3}, 30, 60, 30),
    ]
    clients = [
        {"name": n, "count": 2, "device": d, "resident": r,
         "link": {"uplink_mbps": u, "downlink_mbps": dn, "rtt_ms": rtt}}
        for n, d, r, u, dn, rtt in groups
    ]  # fmt: skip
    cls = {"name": "c", "model": model, "task": task, "prompt_tokens": 100, **sla}
    if task == "generate":
        cls["output_tokens"] = 20
    body = {
        "name": "batched", "seed": 3, "requests": 10, "server": {"device": "a100-80gb"},
        "clients": clients,
        "workload": {"arrival": {"kind": "poisson", "rate_per_s": 1.0}, "mix": [cls]},
    }  # fmt: skip
    if token:
        body["simulation"] = {"granularity": "token"}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(body))
    return ProblemBook(load_scenario(path))


def _same(a, b) -> None:
    pa, pb = a.plan, b.plan
    assert np.array_equal(pa.on_client, pb.on_client)
    assert (pa.latency, pa.server_work, pa.feasible, pa.policy, pa.notes) == (
        pb.latency, pb.server_work, pb.feasible, pb.policy, pb.notes,
    )  # fmt: skip
    assert a.segments == b.segments
    assert (a.deadline_s, a.server_only_work, a.has_server, a.transfer_bytes) == (
        b.deadline_s, b.server_only_work, b.has_server, b.transfer_bytes,
    )  # fmt: skip


POLICIES = ["server_only", "client_only", "greedy", "best_cut", "dp", "dp_grid", "dp_queue_aware"]
SLAS = {
    "e2e": {"deadline_s": 3.0},
    "relative": {"deadline_factor": 2.0},
    "token": {"ttft_deadline_s": 1.0, "tpot_deadline_s": 0.08},
    "ttft_e2e": {"ttft_deadline_s": 0.5, "deadline_s": 4.0},
}


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("sla", list(SLAS))
@pytest.mark.parametrize("which", MODELS)
def test_prefetched_plans_equal_one_at_a_time(tmp_path, policy, sla, which):
    model, task = which
    token = task == "generate" and sla.startswith("t")
    if task == "forward" and sla in ("token", "ttft_e2e"):
        pytest.skip("token SLAs apply to generation")
    book = _scenario(tmp_path, model, task, SLAS[sla], token)
    rng = np.random.default_rng(zlib.crc32(repr((policy, sla, which)).encode()))  # not hash()
    count = 6 if policy.startswith("dp") else 14
    high = 500 if model in ("gpt2", "bert-base", "transformer-base") else 3000
    keys = [
        (0, g, int(p), int(o) if task == "generate" else 0)
        for g in range(4)
        for p, o in zip(rng.integers(1, high, count), rng.integers(1, 120, count), strict=True)
    ]
    keys += [(0, 0, 1, 1), (0, 1, 1, 1)] if task == "generate" else []
    batched = Planner(book, policy, wait_per_pass=token, shed=not token)
    prefetch(batched, keys)
    ref = Planner(ProblemBook(book.ld), policy, wait_per_pass=token, shed=not token)
    for key in keys:
        _same(ref.get(*key), batched.get(*key))
        assert ref.book.get(*key).deadline_s == batched.book.get(*key).deadline_s


def test_prefetch_plans_fixed_placements_without_solving(tmp_path):
    """server_only's plans come from the batch: the planner holds them after prefetch."""
    book = _scenario(tmp_path, "llama-2-7b", "generate", SLAS["token"], True)
    planner = Planner(book, "server_only", wait_per_pass=True, shed=False)
    keys = [(0, g, p, 50) for g in range(4) for p in (10, 200, 900)]
    prefetch(planner, keys)
    assert set(keys) <= set(planner._plans)


def test_prefetch_plans_dp_under_token_slas_as_a_batch(tmp_path):
    """dp's plans under TTFT/TPOT come from the batch (`plan_dp`) for groups whose client
    holds units too, and equal the one-at-a-time search's."""
    book = _scenario(tmp_path, "llama-2-7b", "generate", SLAS["token"], True)
    planner = Planner(book, "dp", wait_per_pass=True, shed=False)
    keys = [(0, g, p, o) for g in range(4) for p in (10, 200, 900, 2500) for o in (2, 40, 300)]
    prefetch(planner, keys)
    assert set(keys) <= set(planner._plans)
    ref = Planner(ProblemBook(book.ld), "dp", wait_per_pass=True, shed=False)
    split = 0
    for key in keys:
        _same(ref.get(*key), planner.get(*key))
        split += planner.get(*key).plan.client_units > 0
    assert split >= 6


@pytest.mark.parametrize("sla", ["token", "ttft_e2e"])
def test_queue_aware_staircase_equals_the_search(tmp_path, sla):
    """dp_queue_aware's plans at arrival read off the prepared staircase of waits are the
    exact search's on the waited problems (the same least work, feasibility and latency;
    of two placements that tie exactly either may be taken), for waits from none fitting
    to all."""
    book = _scenario(tmp_path, "llama-2-7b", "generate", SLAS[sla], True)
    planner = Planner(book, "dp_queue_aware", wait_per_pass=True, shed=False)
    keys = [(0, g, p, o) for g in (0, 2, 3) for p in (10, 300, 2500) for o in (2, 60, 400)]
    prefetch(planner, keys)
    assert set(keys) <= set(planner.stairs)
    ref = Planner(ProblemBook(book.ld), "dp_queue_aware", wait_per_pass=True, shed=False)
    changed = 0
    for key in keys:
        plans = []
        for wait in (1e-4, 3e-3, 0.01, 0.03, 0.1, 1.0):
            got = planner._solve(planner.book.get(*key), wait, False, key)
            want = ref._solve(ref.book.get(*key), wait, False)
            assert got.feasible == want.feasible, (key, wait)
            assert got.server_work == pytest.approx(want.server_work, rel=1e-12, abs=0)
            assert got.latency == pytest.approx(want.latency, rel=1e-12, abs=0)
            plans.append(got.client_units)
        changed += len(set(plans)) > 1
    assert changed >= 3  # the waits move placements
