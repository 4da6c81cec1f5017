"""Exact event timelines of tiny deterministic scenarios, and zero-load latency = plan latency.

One client (a Raspberry Pi 4) on one link to one server slot; requests come from a trace
CSV, so every time is known. Expected times are built from the split problem's own arrays
(`build_problem` + `solve`/`evaluate`), not from the engine's segment list, so a change in
the engine's timing, event order or same-time tie order fails here.

The engine's log holds (time_s, event, request_id). It writes `server_queue` when the slot
is granted, stamped with the time the request joined the queue, so the raw log is not in
time order; the tests compare the log stably sorted by time, which keeps the engine's
order among same-time events.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sim.catalog import devices, models
from sim.config import LoadedScenario, validate
from sim.engine.planner import PlannedRequest, ProblemBook, plan_segments
from sim.engine.run import Simulation
from sim.engine.workload import Streams, generate_arrivals, replication_seeds
from sim.records import RequestStatus
from sim.runner import run_one
from sim.split import Link, Plan, SplitProblem, build_problem, evaluate, solve

CLIENT_DEVICE, SERVER_DEVICE = "rpi4", "a100-80gb"
LINK = Link(uplink_mbps=50.0, downlink_mbps=100.0, rtt_ms=20.0)
PROMPT = 64
ALL_POLICIES = ["dp", "greedy", "greedy_ratio", "best_cut", "server_only", "client_only"]


def write_trace(tmp_path: Path, arrivals_s, prompt: int = PROMPT, output: int = 0) -> Path:
    path = tmp_path / "trace.csv"
    rows = [(repr(float(t)), prompt, output) for t in arrivals_s]
    pd.DataFrame(rows, columns=["arrival_s", "prompt_tokens", "output_tokens"]).to_csv(
        path, index=False
    )
    return path


def scenario(trace: Path, policy: str, deadline_s: float, task: str = "forward") -> LoadedScenario:
    """One rpi4 client, one link, one server slot, gpt2 requests from `trace`."""
    raw = {
        "name": "timeline",
        "policies": [policy],
        "server": {"device": SERVER_DEVICE, "slots": 1},
        "clients": [
            {
                "name": "pi",
                "device": CLIENT_DEVICE,
                "link": {
                    "uplink_mbps": LINK.uplink_mbps,
                    "downlink_mbps": LINK.downlink_mbps,
                    "rtt_ms": LINK.rtt_ms,
                },
            }
        ],
        "workload": {
            "arrival": {"kind": "trace", "path": trace.name},
            "mix": [{"name": "r", "model": "gpt2", "task": task, "deadline_s": deadline_s}],
        },
    }
    return validate(raw, source="timeline", base_dir=trace.parent)


def problem(deadline_s: float, task: str = "forward", output: int = 0) -> SplitProblem:
    """The request's split problem, built directly from the catalog (not via the engine)."""
    return build_problem(
        models()["gpt2"], task, PROMPT, output, devices()[CLIENT_DEVICE],
        devices()[SERVER_DEVICE], LINK, deadline_s,
    )  # fmt: skip


def forward_segments(p: SplitProblem, on_client) -> list[tuple[str, float]]:
    """(kind, seconds) runs of a forward pass: 'client', 'server', 'up', 'down'."""
    segs: list[tuple[str, float]] = []
    where = "client"  # the input starts on the client
    for u in range(p.n_units):
        here = "client" if on_client[u] else "server"
        if here != where:
            segs.append(
                ("up", p.uplink_time[u]) if here == "server" else ("down", p.downlink_time[u])
            )
        t = float(p.client_time[u] if on_client[u] else p.server_time[u])
        if segs and segs[-1][0] == here:
            segs[-1] = (here, segs[-1][1] + t)
        else:
            segs.append((here, t))
        where = here
    if where == "server":
        segs.append(("down", p.downlink_time[p.n_units]))
    return [(kind, float(t)) for kind, t in segs]


def timeline(i: int, arrival_s: float, segs, waits: dict[int, float] | None = None) -> list:
    """Events of request i running `segs` in order; `waits[k]` delays the start of segment k.

    A waiting segment starts at the given absolute time (when its resource frees); its
    `server_queue` event keeps the time the request got there.
    """
    waits = waits or {}
    t = arrival_s
    out = [(t, "arrive", i)]
    for k, (kind, d) in enumerate(segs):
        start = waits.get(k, t)
        if kind == "server":
            out += [(t, "server_queue", i), (start, "server_start", i)]
            out.append((start + d, "server_end", i))
        elif kind == "client":
            out += [(start, "client_start", i), (start + d, "client_end", i)]
        else:
            out.append((start, f"{kind}link_start", i))
            out.append((start + d, "transfer_end", i))
        t = out[-1][0]
    out.append((t, "done", i))
    return out


def chronological(events) -> list:
    """Stable sort by time: same-time events keep their order."""
    return sorted(events, key=lambda e: e[0])


def assert_same_timeline(log, expected) -> None:
    got = chronological(log)
    assert [(e, i) for _, e, i in got] == [(e, i) for _, e, i in expected]
    np.testing.assert_allclose([t for t, _, _ in got], [t for t, _, _ in expected], rtol=1e-12)


def run_logged(ld: LoadedScenario, policy: str):
    log: list = []
    res = run_one(ld, policy, 0, log)
    assert (res.status == RequestStatus.COMPLETED).all(), "every request completes"
    return res, log


def test_server_only_second_request_queues_behind_the_first(tmp_path):
    p = problem(deadline_s=0.2)
    plan = solve(p, "server_only")
    segs = forward_segments(p, plan.on_client)
    assert [k for k, _ in segs] == ["up", "server", "down"]
    (_, up), (_, serve), (_, down) = segs
    # r1 leaves 0.5 serve after r0, so it reaches the server while r0 holds it (the link
    # is not shared: both uploads run at once). r2 comes when the system is empty.
    ld = scenario(write_trace(tmp_path, [0.0, 0.5 * serve, 1.0]), "server_only", 0.2)
    a0, a1, a2 = ld.arrival_trace["arrival_s"]
    assert up < a1 + up < up + serve
    r0 = timeline(0, a0, segs)
    free_s = r0[5][0]  # r0's server_end
    r1 = timeline(1, a1, segs, waits={1: free_s})
    r2 = timeline(2, a2, segs)
    expected = chronological(r0 + r1 + r2)
    # the hand-over: r0 ends and starts its download, then r1 gets the slot, same instant
    assert expected[9:12] == [
        (free_s, "server_end", 0),
        (free_s, "downlink_start", 0),
        (free_s, "server_start", 1),
    ]
    res, log = run_logged(ld, "server_only")
    assert_same_timeline(log, expected)
    assert res.server_wait_s.tolist() == pytest.approx([0.0, serve - a1, 0.0], abs=1e-15)
    assert res.finish_s[1] - a1 == pytest.approx(plan.latency + serve - a1, rel=1e-12)


def test_client_only_second_request_waits_for_the_device(tmp_path):
    p = problem(deadline_s=2.0)  # loose: the Pi runs all of gpt2 (about 1.1 s)
    plan = solve(p, "client_only")
    segs = forward_segments(p, plan.on_client)
    assert plan.feasible and [k for k, _ in segs] == ["client"]
    ((_, compute),) = segs
    ld = scenario(write_trace(tmp_path, [0.0, 0.25 * compute, 3.0]), "client_only", 2.0)
    a0, a1, a2 = ld.arrival_trace["arrival_s"]
    r0 = timeline(0, a0, segs)
    r1 = timeline(1, a1, segs, waits={0: r0[2][0]})  # the device frees at r0's client_end
    r2 = timeline(2, a2, segs)
    expected = chronological(r0 + r1 + r2)
    assert expected[:6] == [
        (a0, "arrive", 0),
        (a0, "client_start", 0),
        (a1, "arrive", 1),
        (compute, "client_end", 0),
        (compute, "done", 0),
        (compute, "client_start", 1),
    ]
    res, log = run_logged(ld, "client_only")
    assert_same_timeline(log, expected)
    assert res.client_wait_s.tolist() == pytest.approx([0.0, compute - a1, 0.0], abs=1e-15)
    assert res.server_busy_s.tolist() == [0.0, 0.0, 0.0]


def test_dp_split_runs_client_server_client_and_queues_on_the_device(tmp_path):
    # A tight deadline makes the DP keep a prefix on the slow client and send the rest up.
    p = problem(deadline_s=0.2)
    plan = solve(p, "dp")
    segs = forward_segments(p, plan.on_client)
    assert plan.feasible and 0 < plan.client_units < p.n_units
    assert [k for k, _ in segs] == ["client", "up", "server", "down"]
    (_, compute), (_, up), (_, serve), (_, down) = segs
    ld = scenario(write_trace(tmp_path, [0.0, 0.5 * compute, 2.0]), "dp", 0.2)
    a0, a1, a2 = ld.arrival_trace["arrival_s"]
    r0 = timeline(0, a0, segs)
    r1 = timeline(1, a1, segs, waits={0: r0[2][0]})
    r2 = timeline(2, a2, segs)
    # r0 is back on the client before r1 finishes its client part: no server queueing
    assert r0[-1][0] < r1[2][0]
    expected = chronological(r0 + r1 + r2)
    assert [e for _, e, i in expected if i == 0] == [
        "arrive", "client_start", "client_end", "uplink_start", "transfer_end",
        "server_queue", "server_start", "server_end", "downlink_start", "transfer_end", "done",
    ]  # fmt: skip
    res, log = run_logged(ld, "dp")
    assert_same_timeline(log, expected)
    assert res.client_wait_s[1] == pytest.approx(compute - a1, rel=1e-12)
    assert res.server_wait_s.tolist() == [0.0, 0.0, 0.0]
    latency = res.finish_s - ld.arrival_trace["arrival_s"].to_numpy()
    assert latency[[0, 2]] == pytest.approx([plan.latency] * 2, rel=1e-12)
    assert res.transfer_s[0] == pytest.approx(up + down, rel=1e-12)


def test_simultaneous_requests_are_served_in_trace_row_order(tmp_path):
    # Two requests at the same instant: the first row gets the slot, the second waits for it.
    # (Only the service order is pinned: how the two arrivals' events interleave at that
    # instant is what the max_queue fix in test_engine_properties changes.)
    p = problem(deadline_s=0.2)
    segs = forward_segments(p, solve(p, "server_only").on_client)
    ld = scenario(write_trace(tmp_path, [0.5, 0.5]), "server_only", 0.2)
    res, log = run_logged(ld, "server_only")
    starts = [(t, i) for t, e, i in chronological(log) if e == "server_start"]
    assert [i for _, i in starts] == [0, 1]
    assert res.server_wait_s.tolist() == pytest.approx([0.0, segs[1][1]], rel=1e-12)


# --- zero load: the simulated latency is the plan's latency ------------------------------


def one_request_latency(ld: LoadedScenario, planner=None) -> float:
    """Latency of the single request of `ld`, optionally with a stand-in planner."""
    sc = ld.scenario
    streams = Streams.spawn(replication_seeds(sc.seed, sc.replications)[0])
    arrivals = generate_arrivals(ld, streams)
    assert len(arrivals) == 1
    # test seam: a stand-in planner runs a placement no policy would choose
    sim = Simulation(
        ld, sc.policies[0], arrivals, streams.jitter_seed, ProblemBook(ld), planner=planner
    )
    res = sim.run()
    assert res.status[0] == RequestStatus.COMPLETED
    return float(res.finish_s[0] - arrivals.time_s[0])


class FixedPlacement:
    """Stands in for the engine's `Planner`: every request gets one given placement."""

    cached_plans = 1

    def __init__(self, book: ProblemBook, on_client: np.ndarray):
        self.book, self.on_client = book, np.asarray(on_client, bool)

    def get(self, klass: int, group: int, prompt: int, output: int) -> PlannedRequest:
        rp = self.book.get(klass, group, prompt, output)
        latency, work = evaluate(rp.problem, self.on_client)
        plan = Plan(self.on_client, latency, work, latency <= rp.deadline_s, "fixed")
        segs = plan_segments(rp.problem, rp.work, self.on_client)
        has_server = bool((~self.on_client).any())
        return PlannedRequest(
            plan, segs, rp.deadline_s, float(rp.problem.server_work.sum()), has_server
        )


GENERATE = {"task": "generate", "output": 16}
FORWARD = {"task": "forward", "output": 0}


@pytest.mark.parametrize("request_kind", [FORWARD, GENERATE], ids=["forward", "generate"])
@pytest.mark.parametrize("deadline_s", [0.1, 0.3, 5.0])
@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_zero_load_latency_is_the_plan_latency(tmp_path, policy, deadline_s, request_kind):
    task, output = request_kind["task"], request_kind["output"]
    ld = scenario(write_trace(tmp_path, [0.25], output=output), policy, deadline_s, task)
    plan = solve(problem(deadline_s, task, output), policy)
    assert one_request_latency(ld) == pytest.approx(plan.latency, rel=1e-9)


def random_placements(n_units: int, loop_start: int, count: int, seed: int) -> list[np.ndarray]:
    """All-client, all-server, the generation loop's four cases, then random ones."""
    rng = np.random.default_rng(seed)
    fixed = [np.ones(n_units, bool), np.zeros(n_units, bool)]
    for start_client in (True, False):
        for last_client in (True, False):
            oc = rng.random(n_units) < 0.5
            oc[loop_start], oc[-1] = start_client, last_client
            fixed.append(oc)
    return fixed + [rng.random(n_units) < 0.5 for _ in range(count)]


@pytest.mark.parametrize("request_kind", [FORWARD, GENERATE], ids=["forward", "generate"])
def test_zero_load_latency_is_evaluate_for_any_placement(tmp_path, request_kind):
    task, output = request_kind["task"], request_kind["output"]
    ld = scenario(write_trace(tmp_path, [0.25], output=output), "dp", 1.0, task)
    book = ProblemBook(ld)
    rp = book.get(0, 0, PROMPT, output)
    direct = problem(1.0, task, output)  # the engine's problem is the catalog's problem
    np.testing.assert_array_equal(rp.problem.server_time, direct.server_time)
    assert rp.problem.loop_downlink_time == direct.loop_downlink_time
    if task == "generate":
        assert rp.work.steps == output - 1 and rp.problem.has_loop
    for oc in random_placements(rp.problem.n_units, rp.problem.loop_start, count=6, seed=5):
        latency, _ = evaluate(direct, oc)
        simulated = one_request_latency(ld, FixedPlacement(book, oc))
        where = "".join("C" if c else "S" for c in oc)
        assert simulated == pytest.approx(latency, rel=1e-9), where
