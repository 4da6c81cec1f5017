"""The parts both engines are built from: status enum, recorder, level series, registry."""

from __future__ import annotations

import math
from dataclasses import MISSING, fields
from pathlib import Path

import numpy as np
import pytest

from sim.engine.levels import LevelSeries, ServerLevels, bin_centres
from sim.engine.recorder import PER_REQUEST_ARRAYS, RequestRecorder, RunResult
from sim.engine.registry import ENGINES, engine_for, register
from sim.engine.run import Simulation
from sim.engine.token import TokenSimulation
from sim.records import (
    STATUS_COMPLETED,
    STATUS_IN_FLIGHT,
    STATUS_REJECTED,
    RequestStatus,
    status_labels,
)

# --- status ------------------------------------------------------------------------------


def test_status_codes_map_to_the_csv_strings():
    assert RequestStatus.IN_FLIGHT.label == STATUS_IN_FLIGHT == "in_flight"
    assert RequestStatus.COMPLETED.label == STATUS_COMPLETED == "completed"
    assert RequestStatus.REJECTED.label == STATUS_REJECTED == "rejected"
    codes = np.array([s.value for s in RequestStatus], np.int8)
    assert status_labels(codes).tolist() == [s.label for s in RequestStatus]


# --- recorder ----------------------------------------------------------------------------


def _run_fields(**over) -> dict:
    run = dict(policy="p", arrivals=np.arange(3.0), server=ServerLevels(1), stop_s=1.0,
               end_s=2.0, backlog_at_stop=0, cached_plans=1, events=5)  # fmt: skip
    run.update(over)
    return run


def test_recorder_arrays_are_every_per_request_field_of_the_result():
    rec = RequestRecorder(3)
    res = rec.result(3, float("nan"), **_run_fields())
    for name in PER_REQUEST_ARRAYS:
        assert getattr(res, name) is getattr(rec, name), name
        assert len(getattr(rec, name)) == 3
    # the recorder's arrays and the run's fields are all of RunResult's required fields
    required = {f.name for f in fields(RunResult) if f.default is MISSING}
    assert required <= set(PER_REQUEST_ARRAYS) | set(_run_fields())


def test_recorder_counts_requests_in_the_system_and_their_status():
    rec = RequestRecorder(3)
    for _ in range(3):
        rec.admitted()
    rec.completed(0, 2.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
    rec.rejected(1)
    assert rec.in_flight == 1
    assert rec.status.tolist() == [RequestStatus.COMPLETED, RequestStatus.REJECTED, 0]
    assert (rec.server_wait_s[0], rec.server_busy_s[0], rec.client_wait_s[0]) == (0.1, 0.2, 0.3)
    assert (rec.client_busy_s[0], rec.transfer_s[0], rec.client_energy_j[0]) == (0.4, 0.5, 0.6)
    assert rec.backlog(stop_s=1.0, arrived=3) == 2  # 0 finished after the stop, 2 unfinished
    rec.unfinished_at(1.5)  # request 0's result would arrive after the end
    assert rec.status[0] == RequestStatus.IN_FLIGHT and math.isnan(rec.finish_s[0])


def test_recorder_result_after_an_overload_stop_keeps_the_arrived_requests():
    from sim.engine.workload import Arrivals

    n = 4
    arr = Arrivals(*(np.arange(n) for _ in fields(Arrivals)))
    rec = RequestRecorder(n)
    res = rec.result(2, 0.5, **_run_fields(arrivals=arr))
    assert res.overload_stop_s == 0.5
    assert len(res.arrivals) == 2
    assert all(len(getattr(res, name)) == 2 for name in PER_REQUEST_ARRAYS)


# --- level series ------------------------------------------------------------------------


def _steps() -> LevelSeries:
    """0 on [0, 1), 2 on [1, 3), 1 from 3 on."""
    s = LevelSeries()
    s.set(1.0, 2)
    s.set(2.0, 2)  # unchanged: no point
    s.set(3.0, 1)
    return s


def test_level_series_mean_max_and_bins():
    s = _steps()
    assert list(s.t) == [0.0, 1.0, 3.0]
    assert s.mean(0.0, 4.0) == pytest.approx((0 + 2 * 2 + 1) / 4)
    assert s.mean(1.5, 2.5) == 2.0
    assert s.max(0.0, 0.5) == 0.0 and s.max(0.0, 4.0) == 2.0 and s.max(3.5, 4.0) == 1.0
    assert s.binned(4.0, 4).tolist() == [0.0, 2.0, 2.0, 1.0]
    assert bin_centres(4.0, 4).tolist() == [0.5, 1.5, 2.5, 3.5]
    assert s.at(0.5) == 0.0 and s.at(1.0) == 2.0 and s.at(10.0) == 1.0


def test_level_series_empty_windows_have_no_mean_and_no_bins():
    s = _steps()
    assert math.isnan(s.mean(2.0, 2.0)) and math.isnan(s.mean(3.0, 1.0))
    assert math.isnan(s.max(3.0, 1.0))
    assert s.binned(0.0, 5).size == 0 and bin_centres(0.0, 5).size == 0


def test_record_keeps_equal_levels_so_series_share_change_times():
    s = LevelSeries()
    s.record(1.0, 0)
    s.record(1.0, 1)  # same instant: replaced
    s.record(2.0, 1)  # equal level: kept
    assert list(s.t) == [0.0, 1.0, 2.0] and list(s.level) == [0.0, 1.0, 1.0]


def test_extend_equals_set_point_by_point():
    times, values = np.array([1.0, 2.0, 2.5, 4.0]), np.array([3.0, 3.0, 1.0, 0.0])
    bulk, one = LevelSeries(), LevelSeries()
    bulk.extend(times, values)
    for t, v in zip(times, values, strict=True):
        one.set(t, v)
    assert list(bulk.t) == list(one.t) and list(bulk.level) == list(one.level)


def test_server_levels_integrals_match_their_series():
    server = ServerLevels(2)
    server.change(0.0, 1, 0)  # one waits
    server.change(1.0, -1, 1)  # served
    server.change(2.0, 1, 1)  # another served at once, a third waits
    server.change(4.0, 0, -1)
    server.held(3.0)
    server.finish(5.0)
    assert server.busy_integral == pytest.approx(server.busy.mean(0.0, 5.0) * 5.0)
    assert server.queue_integral == pytest.approx(server.mean_queue(0.0, 5.0) * 5.0)
    assert server.utilization(0.0, 5.0) == pytest.approx((1 + 2 * 2 + 1) / (2 * 5))
    assert list(server.busy.t) == list(server.queue.t)  # one change point per change
    assert server.busy_time_total == 3.0
    assert math.isnan(server.utilization(5.0, 5.0)) and math.isnan(server.mean_queue(6.0, 5.0))
    t, busy, queue = server.binned(5.0, 5)
    assert t.tolist() == [0.5, 1.5, 2.5, 3.5, 4.5]
    assert busy.tolist() == [0, 1, 2, 2, 1] and queue.tolist() == [1, 0, 1, 1, 1]


# --- engines -----------------------------------------------------------------------------


def test_registry_picks_the_engine_by_granularity():
    assert engine_for("request") is Simulation
    assert engine_for("token") is TokenSimulation
    with pytest.raises(ValueError, match=r"'frame'.*known: request, token"):
        engine_for("frame")
    with pytest.raises(ValueError, match="already registered"):
        register("token", Simulation)
    assert set(ENGINES) == {"request", "token"}


def test_the_engines_are_siblings():
    assert not issubclass(TokenSimulation, Simulation)
    assert not issubclass(Simulation, TokenSimulation)


def test_planner_flags_are_given_at_construction():
    """Token mode plans a wait per pass and sheds no load; request mode the opposite."""
    from sim.config import load_scenario
    from sim.engine.planner import ProblemBook
    from sim.runner import _replication_arrivals

    chat = Path(__file__).parent.parent / "scenarios/examples/batching_chat.yaml"
    ld = load_scenario(chat, ["requests=5"])
    arrivals, jitter = _replication_arrivals(ld, 0, 2.0)
    token = TokenSimulation(ld, "dp", arrivals, jitter, ProblemBook(ld))
    assert token.planner.wait_per_pass and not token.planner.shed
    request = Simulation(ld, "dp", arrivals, jitter, ProblemBook(ld))
    assert not request.planner.wait_per_pass and request.planner.shed
