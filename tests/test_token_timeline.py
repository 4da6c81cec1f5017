"""An exact, hand-worked timeline of a three-request batch at token granularity.

Three requests with the same prompt and 2, 3 and 5 output tokens reach the server at the
same moment, served wholly on the server. Worked by hand from the model's own per-unit
arrays (not from the engine): the prompts cross the link, one iteration runs the three
prefills, then decode iterations run the steps still due (3, then 2, then 1 request), each
priced as one roofline over the batch:

    per server unit: with x = sum of FLOPs / FLOP/s, y = (weights once + sum of own
                     bytes) / bytes/s: max(x + g*y, y + g*x) (g the device's non_overlap)
                     + the unit's kernels x the per-kernel overhead, summed over units;

each token reaches the client one downlink transfer after its iteration ends. The engine
must reproduce every token time, TTFT, TPOT, finish time and server busy time exactly (to
rounding), with and without coalesced decode spans.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from sim.config import load_scenario
from sim.engine.batching import weight_read_bytes
from sim.engine.planner import ProblemBook
from sim.runner import simulate

PROMPT, OUTPUTS = 16, (2, 3, 5)
UP_MBPS, DOWN_MBPS, RTT_MS = 80.0, 40.0, 6.0

SCENARIO = {
    "name": "three",
    "seed": 1,
    "policies": ["server_only"],
    "server": {"device": "a100-80gb"},
    "simulation": {"granularity": "token"},
    "clients": [
        {
            "name": "c",
            "count": 3,
            "device": "laptop-m2",
            "link": {"uplink_mbps": UP_MBPS, "downlink_mbps": DOWN_MBPS, "rtt_ms": RTT_MS},
        }
    ],
    "workload": {
        "arrival": {"kind": "trace", "path": "trace.csv"},
        "mix": [{"name": "chat", "model": "gpt2", "task": "generate", "deadline_s": 10}],
    },
}


def _load(tmp_path, coalesce: bool):
    rows = "".join(f"0.0,{PROMPT},{o}\n" for o in OUTPUTS)
    (tmp_path / "trace.csv").write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n" + rows)
    raw = {**SCENARIO, "simulation": {"granularity": "token", "coalesce": coalesce}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_scenario(path)


def _transfer_s(nbytes: float, mbps: float) -> float:
    return nbytes * 8 / (mbps * 1e6) + RTT_MS * 1e-3 / 2


def hand_worked_timeline(ld) -> dict[int, list[float]]:
    """Every request's token times at the client (s), from the cost arrays alone."""
    book = ProblemBook(ld)
    model = ld.models["gpt2"]
    server = ld.server_device
    dtype = model.activation_dtype
    flops_s, bytes_s, g = server.flops_per_s(dtype), server.bytes_per_s, server.non_overlap
    works = [book.work(0, PROMPT, o) for o in OUTPUTS]
    weights = weight_read_bytes(model, works[0].units)
    # per unit: its kernels x the A100's fitted 6.498 us (embed 3, blocks 11, head 2)
    kernels = np.array([3] + [11] * model.layers + [2])
    overhead_s = server.overhead_us * 1e-6 + server.kernel_overhead_us * 1e-6 * kernels
    assert server.kernel_overhead_us == 6.498

    def iteration_s(flops: np.ndarray, own_bytes: np.ndarray, used: np.ndarray) -> float:
        x, y = flops / flops_s, (weights + own_bytes) / bytes_s
        t = np.maximum(x + g * y, y + g * x) + overhead_s
        return float(t[used].sum())

    # All three prompts go up together (same size) and meet in the first iteration.
    w0 = works[0]
    ready = _transfer_s(w0.act_pass[0], UP_MBPS)
    own_pass = sum(np.maximum(w.pass_bytes - weights, 0.0) for w in works)
    prefill_s = iteration_s(sum(w.pass_flops for w in works), own_pass, np.ones(len(weights), bool))
    t = ready + prefill_s
    down_first = _transfer_s(w0.act_pass[-1], DOWN_MBPS)
    down_step = _transfer_s(w0.act_step[-1], DOWN_MBPS)
    tokens = {i: [t + down_first] for i in range(3)}
    step = 1
    while True:
        due = [i for i, w in enumerate(works) if w.steps >= step]
        if not due:
            break
        ctx = [works[i].ctx_first + step - 1 for i in due]
        flops = sum(
            works[i].step_flops0 + c * works[i].step_flops1 for i, c in zip(due, ctx, strict=True)
        )
        own = sum(
            np.maximum(works[i].step_bytes0 - weights, 0.0) + c * works[i].step_bytes1
            for i, c in zip(due, ctx, strict=True)
        )
        used = np.zeros(len(weights), bool)
        used[w0.loop_start :] = True
        t += iteration_s(flops, own, used)
        for i in due:
            tokens[i].append(t + down_step)
        step += 1
    return tokens


@pytest.mark.parametrize("coalesce", [True, False], ids=["spans", "stepped"])
def test_three_request_batch_follows_the_hand_worked_timeline(tmp_path, coalesce):
    ld = _load(tmp_path, coalesce)
    expected = hand_worked_timeline(ld)
    assert [len(expected[i]) for i in range(3)] == list(OUTPUTS)
    req = simulate(ld).requests.sort_values("request_id")
    finish = req["finish_s"].to_numpy()
    ttft = req["ttft_s"].to_numpy()
    tpot = req["tpot_s"].to_numpy()
    for i, times in expected.items():
        assert finish[i] == pytest.approx(times[-1], rel=1e-12)
        assert ttft[i] == pytest.approx(times[0], rel=1e-12)  # they arrived at 0
        assert tpot[i] == pytest.approx((times[-1] - times[0]) / (len(times) - 1), rel=1e-12)
    # The batch shrinks as requests finish: the longest request waited for no one.
    assert finish[0] < finish[1] < finish[2]


def test_hand_worked_server_busy_time(tmp_path):
    """Each request's server busy time is the sum of the iterations it was in."""
    ld = _load(tmp_path, True)
    expected = hand_worked_timeline(ld)
    ready = _transfer_s(ProblemBook(ld).work(0, PROMPT, 2).act_pass[0], UP_MBPS)
    down_first = _transfer_s(ProblemBook(ld).work(0, PROMPT, 2).act_pass[-1], DOWN_MBPS)
    req = simulate(ld).requests.sort_values("request_id")
    busy = req["server_busy_s"].to_numpy()
    down_step = _transfer_s(ProblemBook(ld).work(0, PROMPT, 2).act_step[-1], DOWN_MBPS)
    for i, times in expected.items():
        last_iteration_end = times[-1] - (down_step if len(times) > 1 else down_first)
        assert busy[i] == pytest.approx(last_iteration_end - ready, rel=1e-12)
