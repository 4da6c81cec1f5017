"""Conservation and consistency properties of the engine on random small scenarios.

Hypothesis draws scenarios with random rates, slots, queue limits, disciplines, policies,
client groups, links (jitter, a shared medium, a bandwidth trace), request mixes
(synthetic, gpt2 forward and generate) and sometimes a short `drain_s`, so some requests
are still in flight at the end. Every run must conserve requests and time. Fixed
scenarios then check determinism, common random numbers, EDF order and `max_queue`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.config import LoadedScenario, validate
from sim.records import STATUS_COMPLETED, STATUS_IN_FLIGHT, STATUS_REJECTED, RequestStatus
from sim.runner import run_one, run_scenario, simulate

POLICIES = ["dp", "greedy", "greedy_ratio", "best_cut", "server_only", "client_only"]
STATUSES = {STATUS_COMPLETED, STATUS_REJECTED, STATUS_IN_FLIGHT}
PROPERTY_SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.fixture(scope="module")
def bandwidth_trace(tmp_path_factory) -> Path:
    """A link whose bandwidth drops to a tenth for a while, then recovers."""
    path = tmp_path_factory.mktemp("links") / "bandwidth.csv"
    pd.DataFrame(
        {"time_s": [0.0, 0.05, 0.3], "uplink_mbps": [20.0, 2.0, 20.0], "downlink_mbps": [80, 8, 80]}
    ).to_csv(path, index=False)
    return path


# --- random scenarios --------------------------------------------------------------------

JITTER = [{"kind": "exponential", "mean": 2.0}, {"kind": "uniform", "low": 0.0, "high": 8.0}]
REQUEST_CLASSES = {
    "synthetic": {"task": "synthetic", "service_s": {"kind": "exponential", "mean": 0.01}},
    "forward": {
        "model": "gpt2",
        "task": "forward",
        "prompt_tokens": {"kind": "uniform", "low": 16, "high": 96},
    },
    "generate": {"model": "gpt2", "task": "generate", "prompt_tokens": 32, "output_tokens": 4},
}


@st.composite
def links(draw, shared: bool, trace: str | None) -> dict:
    link = {
        "uplink_mbps": draw(st.sampled_from([5.0, 20.0, 100.0])),
        "downlink_mbps": draw(st.sampled_from([20.0, 100.0])),
        "rtt_ms": draw(st.sampled_from([0.0, 4.0, 30.0])),
    }
    jitter = draw(st.sampled_from([None, *JITTER]))
    if jitter is not None:
        link["jitter"] = {"delay_ms": jitter}
    if shared and draw(st.sampled_from([True, False])):
        link["shared"] = "wifi"
    if trace and draw(st.sampled_from([False, False, True])):
        link["trace"] = trace
    return link


@st.composite
def raw_scenarios(draw, trace: str | None = None) -> dict:
    shared = draw(st.sampled_from([False, True]))
    clients = [
        {
            "name": f"g{g}",
            "count": draw(st.integers(1, 3)),
            "device": draw(st.sampled_from(["phone-flagship", "laptop-m2", "rpi4"])),
            "link": draw(links(shared, trace)),
        }
        for g in range(draw(st.integers(1, 2)))
    ]
    kinds = draw(
        st.lists(st.sampled_from(sorted(REQUEST_CLASSES)), min_size=1, max_size=3, unique=True)
    )
    mix = []
    for kind in kinds:
        deadline = (
            {"deadline_s": draw(st.sampled_from([0.05, 0.3, 2.0]))}
            if draw(st.booleans())
            else {"deadline_factor": draw(st.sampled_from([1.0, 1.5, 4.0]))}
        )
        mix.append({"name": kind, **REQUEST_CLASSES[kind], **deadline})
    raw = {
        "name": "random",
        "seed": draw(st.integers(0, 2**16)),
        "requests": draw(st.integers(5, 40)),
        "replications": draw(st.integers(1, 2)),
        "policies": draw(st.lists(st.sampled_from(POLICIES), min_size=1, max_size=3, unique=True)),
        "server": {
            "slots": draw(st.integers(1, 3)),
            "discipline": draw(st.sampled_from(["fifo", "edf"])),
            "max_queue": draw(st.sampled_from([None, 1, 2, 4])),
        },
        "clients": clients,
        "workload": {
            "arrival": {
                "kind": "poisson",
                "rate_per_s": draw(st.sampled_from([20.0, 300.0, 2000.0])),
            },
            "mix": mix,
        },
    }
    drain_s = draw(st.sampled_from([None, None, 0.0, 0.0005, 0.003, 0.02]))
    if drain_s is not None:
        raw["drain_s"] = drain_s
    return raw


def loaded(raw: dict) -> LoadedScenario:
    return validate(raw, source="property")


# --- conservation ------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(data=st.data())
def test_requests_and_time_are_conserved(data, bandwidth_trace):
    raw = data.draw(raw_scenarios(str(bandwidth_trace)), label="scenario")
    ld = loaded(raw)
    result = simulate(ld)
    req, summary = result.requests, result.summary
    drains_fully = ld.scenario.drain_s is None
    assert set(req["status"]) <= STATUSES
    for (policy, rep), rows in req.groupby(["policy", "replication"], sort=False):
        status = rows["status"]
        done = rows[status == STATUS_COMPLETED]
        not_done = rows[status != STATUS_COMPLETED]
        counts = status.value_counts()
        arrivals = len(rows)
        assert arrivals == counts.sum()
        assert rows["request_id"].tolist() == list(range(arrivals))
        # arrivals = completed + rejected + in flight, also in the summary (no warm-up)
        row = summary[(summary["policy"] == policy) & (summary["replication"] == rep)].iloc[0]
        assert row["requests"] == arrivals
        assert row["completed"] + row["rejected"] + row["in_flight_at_end"] == arrivals
        assert row["completed"] == counts.get(STATUS_COMPLETED, 0)
        assert row["rejected"] == counts.get(STATUS_REJECTED, 0)
        if drains_fully:
            assert row["in_flight_at_end"] == 0
        if ld.scenario.server.max_queue is None:
            assert row["rejected"] == 0
        # timestamps: arrivals start at >= 0 in order; nothing finishes before it arrives
        arrival = rows["arrival_s"].to_numpy()
        assert arrival.min() >= 0 and np.all(np.diff(arrival) >= 0)
        assert (done["finish_s"] >= done["arrival_s"]).all()
        assert (done["latency_s"] >= 0).all()
        assert not_done["finish_s"].isna().all() and not_done["latency_s"].isna().all()
        # a completed request's latency is exactly its waits, busy times and transfers
        parts = done[
            ["server_wait_s", "server_busy_s", "client_wait_s", "client_busy_s", "transfer_s"]
        ]
        assert (parts >= 0).all().all()
        scale = 1e-9 * max(1.0, float(done["finish_s"].max()) if len(done) else 1.0)
        np.testing.assert_allclose(parts.sum(axis=1), done["latency_s"], rtol=0, atol=scale)
        # only requests that need the server are turned away
        rejected = rows[status == STATUS_REJECTED]
        assert (rejected["server_work"] > 0).all()
        # a rejected request keeps what it used before (earlier segments of a split plan)
        used = rejected[["server_wait_s", "server_busy_s", "client_busy_s", "transfer_s"]]
        assert (used >= 0).all().all()
        # utilisation and queue length are time averages of sane levels
        assert 0.0 <= row["server_utilization"] <= 1.0 + 1e-12
        assert row["queue_length_mean"] >= 0.0
    ts = result.timeseries
    assert ts["server_utilization"].between(0.0, 1.0 + 1e-12).all()
    assert (ts["queue_length"] >= -1e-12).all()
    assert_common_random_numbers(req)


def assert_common_random_numbers(req: pd.DataFrame) -> None:
    """Every policy saw the same arrivals, clients and sizes in each replication."""
    cols = [
        "request_id",
        "arrival_s",
        "client_id",
        "prompt_tokens",
        "output_tokens",
        "request_class",
    ]
    for _, rows in req.groupby("replication"):
        frames = [g[cols].reset_index(drop=True) for _, g in rows.groupby("policy")]
        for other in frames[1:]:
            pd.testing.assert_frame_equal(frames[0], other)


@PROPERTY_SETTINGS
@given(data=st.data())
def test_server_busy_time_matches_its_integral(data, bandwidth_trace):
    raw = data.draw(raw_scenarios(str(bandwidth_trace)), label="scenario")
    ld = loaded(raw)
    sc = ld.scenario
    for policy in sc.policies:
        res = run_one(ld, policy, 0)
        pool = res.server
        done = res.status == RequestStatus.COMPLETED
        tol = 1e-9 * max(1.0, pool.busy_time_total)
        recorded = float(res.server_busy_s[done].sum())
        # the time-weighted average over the whole run is the integral over its length
        if res.end_s > 0:
            mean_busy = pool.utilization(0.0, res.end_s) * pool.slots * res.end_s
            assert mean_busy == pytest.approx(pool.busy_integral, rel=1e-9, abs=1e-12)
        if sc.drain_s is None:
            assert pool.busy_slots == 0 and pool.queue_length == 0
            assert pool.busy_time_total == pytest.approx(pool.busy_integral, rel=1e-9, abs=1e-12)
            assert recorded == pytest.approx(pool.busy_time_total, rel=1e-9, abs=1e-12)
        else:  # holds still running at the end count in the integral, not in the total
            assert pool.busy_integral >= pool.busy_time_total - tol
            assert recorded <= pool.busy_time_total + tol
        if all(c.task == "synthetic" for c in sc.workload.mix) and sc.server.max_queue:
            assert max(pool.queue.level) <= sc.server.max_queue


RECORD_ARRAYS = (
    "status",
    "finish_s",
    "server_wait_s",
    "server_busy_s",
    "client_wait_s",
    "client_busy_s",
    "transfer_s",
)


@PROPERTY_SETTINGS
@given(data=st.data())
def test_logged_run_matches_the_fast_path_and_its_log_is_ordered(data, bandwidth_trace):
    raw = data.draw(raw_scenarios(str(bandwidth_trace)), label="scenario")
    ld = loaded(raw)
    policy = ld.scenario.policies[0]
    log: list = []
    fast, logged = run_one(ld, policy, 0), run_one(ld, policy, 0, log)
    for name in RECORD_ARRAYS:
        np.testing.assert_allclose(
            getattr(logged, name), getattr(fast, name), rtol=1e-12, err_msg=name
        )
    assert logged.end_s == pytest.approx(fast.end_s, rel=1e-12)
    # the log is in time order, except server_queue (written at the grant, with the time
    # the request joined the queue); each request's own events are in time order
    times = [t for t, event, _ in log if event != "server_queue"]
    assert all(a <= b for a, b in zip(times, times[1:], strict=False))
    per_request: dict[int, list] = {}
    for t, event, i in log:
        per_request.setdefault(i, []).append((t, event))
    n = len(fast.status)
    assert sorted(per_request) == list(range(n))
    for i, events in per_request.items():
        ts = [t for t, _ in events]
        assert ts == sorted(ts)
        assert events[0] == (fast.arrivals.time_s[i], "arrive")
        last = events[-1][1]
        final = {RequestStatus.COMPLETED: "done", RequestStatus.REJECTED: "reject"}
        expected_last = final.get(RequestStatus(fast.status[i]))
        if expected_last:
            assert last == expected_last
        else:
            assert last not in ("done", "reject")


# --- determinism and common random numbers -----------------------------------------------


def fixed_raw(trace: Path, seed: int = 3) -> dict:
    """A busy little scenario using every random source: sizes, clients, jitter, sharing."""
    return {
        "name": "fixed",
        "seed": seed,
        "requests": 150,
        "replications": 2,
        "policies": ["dp", "greedy", "server_only", "client_only"],
        "server": {"slots": 2, "max_queue": 2},
        "clients": [
            {
                "name": "phones",
                "count": 3,
                "device": "phone-flagship",
                "link": {
                    "uplink_mbps": 10,
                    "rtt_ms": 20,
                    "shared": "cell",
                    "jitter": {"delay_ms": {"kind": "exponential", "mean": 3}},
                },
            },
            {
                "name": "pis",
                "count": 2,
                "device": "rpi4",
                "link": {"uplink_mbps": 50, "trace": str(trace), "shared": "cell"},
            },
        ],
        "workload": {
            "arrival": {"kind": "poisson", "rate_per_s": 300},
            "mix": [
                {
                    "name": "fwd",
                    "model": "gpt2",
                    "prompt_tokens": {
                        "kind": "lognormal",
                        "median": 48,
                        "sigma": 0.5,
                        "min": 8,
                        "max": 256,
                    },
                    "deadline_factor": 2,
                },
                {
                    "name": "gen",
                    "model": "gpt2",
                    "task": "generate",
                    "prompt_tokens": 24,
                    "output_tokens": {"kind": "uniform", "low": 2, "high": 6},
                    "deadline_s": 0.5,
                },
                {
                    "name": "syn",
                    "task": "synthetic",
                    "service_s": {"kind": "exponential", "mean": 0.012},
                    "deadline_s": 0.05,
                },
            ],
        },
    }


def test_same_seed_gives_byte_identical_result_files(tmp_path, bandwidth_trace):
    ld = loaded(fixed_raw(bandwidth_trace))
    run_scenario(ld, tmp_path / "a", command=["test"])
    run_scenario(loaded(fixed_raw(bandwidth_trace)), tmp_path / "b", command=["test"])
    for name in ("requests.csv", "summary.csv", "timeseries.csv", "scenario.yaml"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    run_scenario(loaded(fixed_raw(bandwidth_trace, seed=4)), tmp_path / "c", command=["test"])
    for name in ("requests.csv", "summary.csv"):
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes(), name
    first = pd.read_csv(tmp_path / "a" / "requests.csv")
    assert first["status"].nunique() >= 2, "the fixed scenario should reject some requests"
    assert first["transfer_s"].gt(0).any() and first["client_busy_s"].gt(0).any()


def test_all_policies_see_the_same_requests(bandwidth_trace):
    result = simulate(loaded(fixed_raw(bandwidth_trace)))
    req = result.requests
    assert_common_random_numbers(req)
    # ... and the policies do differ, so the check compares different runs
    by_policy = req[req["replication"] == 0].groupby("policy")["server_work"].sum()
    assert by_policy.nunique() > 1
    reps = [
        rows["arrival_s"].to_numpy()
        for _, rows in req[req["policy"] == "dp"].groupby("replication")
    ]
    assert not np.array_equal(reps[0], reps[1]), "replications draw independent arrivals"


# --- queue discipline and admission ------------------------------------------------------


def synthetic_raw(**server) -> dict:
    """One slot; ten jobs arrive within ~0.2 s while the first, about a second long, runs."""
    return {
        "name": "queue",
        "seed": 5,
        "requests": 10,
        "policies": ["server_only"],
        "server": {"slots": 1, **server},
        "clients": [{"name": "c"}],
        "workload": {
            "arrival": {"kind": "poisson", "rate_per_s": 50.0},
            "mix": [
                {
                    "name": "job",
                    "task": "synthetic",
                    "service_s": {"kind": "uniform", "low": 0.2, "high": 1.0},
                    "deadline_factor": 1.0,  # deadline = own service time: EDF favours short jobs
                }
            ],
        },
    }


def service_order(ld: LoadedScenario) -> tuple[list[int], object]:
    log: list = []
    res = run_one(ld, "server_only", 0, log)
    return [i for _, event, i in sorted(log, key=lambda e: e[0]) if event == "server_start"], res


def edf_reference(arrival_s, deadline_s, service_s) -> list[int]:
    """Non-preemptive earliest-deadline-first on one slot; ties by arrival order."""
    order, pending, t = [], list(range(len(arrival_s))), 0.0
    while pending:
        t = max(t, min(arrival_s[i] for i in pending))
        ready = [i for i in pending if arrival_s[i] <= t]
        nxt = min(ready, key=lambda i: (arrival_s[i] + deadline_s[i], i))
        order.append(nxt)
        pending.remove(nxt)
        t += service_s[nxt]
    return order


def test_edf_serves_earliest_deadline_first_where_fifo_does_not():
    fifo_order, _ = service_order(loaded(synthetic_raw(discipline="fifo")))
    edf_order, res = service_order(loaded(synthetic_raw(discipline="edf")))
    arr = res.arrivals
    assert arr.time_s[-1] < arr.service_s[0], "all jobs queue behind the first"
    assert fifo_order == list(range(10))
    expected = edf_reference(arr.time_s, res.deadline_s, arr.service_s)
    assert edf_order == expected
    assert edf_order != fifo_order
    # the queued jobs run shortest-deadline first: arrival + service, increasing
    due = [arr.time_s[i] + arr.service_s[i] for i in edf_order[1:]]
    assert due == sorted(due)


def test_requests_beyond_max_queue_are_rejected_and_counted():
    ld = loaded(synthetic_raw(max_queue=3))
    log: list = []
    res = run_one(ld, "server_only", 0, log)
    assert res.arrivals.time_s[-1] < res.arrivals.service_s[0]
    # job 0 holds the slot, jobs 1-3 fill the queue, the other six find it full
    done, lost = RequestStatus.COMPLETED, RequestStatus.REJECTED
    assert res.status.tolist() == [done] * 4 + [lost] * 6
    assert [i for _, event, i in log if event == "reject"] == list(range(4, 10))
    assert max(res.server.queue.level) == 3
    row = simulate(ld).summary.iloc[0]
    assert (row["requests"], row["completed"], row["rejected"]) == (10, 4, 6)


def test_max_queue_counts_requests_arriving_at_the_same_instant(tmp_path):
    trace = tmp_path / "burst.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n" + "0.0,1,0\n" * 5)
    raw = synthetic_raw(max_queue=1)
    del raw["requests"]
    raw["workload"]["arrival"] = {"kind": "trace", "path": str(trace)}
    res = run_one(loaded(raw), "server_only", 0)
    done, lost = RequestStatus.COMPLETED, RequestStatus.REJECTED
    assert res.status.tolist() == [done, done, lost, lost, lost]


def test_short_drain_leaves_requests_in_flight_and_counts_them():
    raw = synthetic_raw()
    raw["drain_s"] = 0.5  # the ten jobs need several seconds
    ld = loaded(raw)
    res = run_one(ld, "server_only", 0)
    assert res.end_s == pytest.approx(res.stop_s + 0.5)
    in_flight = int((res.status == RequestStatus.IN_FLIGHT).sum())
    assert in_flight > 0 and res.backlog_at_stop >= in_flight
    result = simulate(ld)
    row = result.summary.iloc[0]
    assert row["in_flight_at_end"] == in_flight
    assert row["completed"] + row["in_flight_at_end"] == row["requests"] == 10
    # a slot still busy at the end counts in utilisation but not in the finished busy time
    assert res.server.busy_integral > res.server.busy_time_total


def test_zero_drain_stops_at_the_last_arrival():
    # drain_s: 0 is valid; SimPy refuses run(until=now), which the engine must avoid.
    raw = synthetic_raw()
    raw["drain_s"] = 0.0
    res = run_one(loaded(raw), "server_only", 0)
    assert res.end_s == res.stop_s
    assert (res.status == RequestStatus.IN_FLIGHT).sum() == res.backlog_at_stop


def test_rejections_are_not_counted_as_offload():
    summary = simulate(loaded(synthetic_raw(max_queue=3))).summary.iloc[0]
    assert summary["rejected"] == 6
    assert summary["offload_fraction"] == 0.0  # server_only moves nothing to the client
