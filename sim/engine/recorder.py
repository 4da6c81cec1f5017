"""The per-request record of one run and the `RunResult` built from it.

Both engines fill one `RequestRecorder`: its plan columns when a request is planned, its
times when it completes, its status when it is rejected. The recorder also counts the
requests in the system (the arrival source's overload stop reads it) and builds the
`RunResult` by keyword, so a new column is named once, here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from sim.engine.levels import ServerLevels
from sim.engine.workload import Arrivals
from sim.records import RequestStatus

# status codes as plain ints: numpy stores them faster than enum members (hot path)
_COMPLETED, _REJECTED = int(RequestStatus.COMPLETED), int(RequestStatus.REJECTED)

# The per-request arrays of a `RunResult`, by field name (the recorder's attributes).
PER_REQUEST_ARRAYS: tuple[str, ...] = (
    "status",
    "finish_s",
    "deadline_s",
    "planned_latency_s",
    "plan_feasible",
    "server_wait_s",
    "server_busy_s",
    "client_wait_s",
    "client_busy_s",
    "transfer_s",
    "server_work",
    "server_only_work",
    "client_units",
    "switches",
    "client_energy_j",
)


@dataclass
class RunResult:
    """Per-request arrays and the server's monitored levels after one run."""

    policy: str
    arrivals: Arrivals
    status: np.ndarray  # `RequestStatus` codes (int8)
    finish_s: np.ndarray
    deadline_s: np.ndarray
    planned_latency_s: np.ndarray
    plan_feasible: np.ndarray
    server_wait_s: np.ndarray
    server_busy_s: np.ndarray
    client_wait_s: np.ndarray
    client_busy_s: np.ndarray
    transfer_s: np.ndarray
    server_work: np.ndarray
    server_only_work: np.ndarray
    client_units: np.ndarray
    switches: np.ndarray
    server: ServerLevels
    stop_s: float
    end_s: float
    backlog_at_stop: int
    cached_plans: int
    events: int
    client_energy_j: np.ndarray | None = None
    token: object | None = None  # token granularity: `sim.engine.token.TokenStats`
    overload_stop_s: float = float("nan")  # when `max_in_flight` stopped the run (NaN: never)
    server_of: np.ndarray | None = None  # a fleet: each request's server (index into fleet)
    # a fleet: each server's levels (`server`: their sum); at token granularity each
    # server's (tokens, batch, KV) series
    fleet: tuple[ServerLevels, ...] | None = None
    fleet_token: tuple | None = None


def _sliced(record, n_total: int, n: int):
    """A dataclass record with every per-request array or list cut to its first n entries."""
    cut = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if isinstance(value, np.ndarray | list) and len(value) == n_total:
            cut[f.name] = value[:n]
    return replace(record, **cut)


def truncated(res: RunResult, n: int) -> RunResult:
    """`res` restricted to its first n requests: those that arrived before an overload stop
    (the rest never arrived). Token statistics are cut the same way."""
    n_total = len(res.arrivals)
    if n >= n_total:
        return res
    out = _sliced(res, n_total, n)
    out.arrivals = _sliced(res.arrivals, n_total, n)
    if res.token is not None:
        out.token = _sliced(res.token, n_total, n)
    return out


class RequestRecorder:
    """The per-request arrays of one run (named as `RunResult`'s fields) and the count of
    requests in the system."""

    def __init__(self, n: int):
        nan = lambda: np.full(n, np.nan)  # noqa: E731
        self.status = np.zeros(n, np.int8)  # RequestStatus.IN_FLIGHT until decided
        self.finish_s, self.deadline_s, self.planned_latency_s = nan(), nan(), nan()
        self.plan_feasible = np.zeros(n, bool)
        self.server_wait_s, self.server_busy_s = np.zeros(n), np.zeros(n)
        self.client_wait_s, self.client_busy_s, self.transfer_s = (np.zeros(n) for _ in range(3))
        self.server_work, self.server_only_work = nan(), nan()
        self.client_units = np.zeros(n, np.int32)
        self.switches = np.zeros(n, np.int32)
        self.client_energy_j = np.zeros(n)
        self.in_flight = 0  # admitted, neither completed nor rejected

    def admitted(self) -> None:
        """A request entered the system."""
        self.in_flight += 1

    def plan(self, i: int, planned) -> None:
        """Request i's plan columns from a `PlannedRequest` made at its arrival."""
        plan = planned.plan
        self.planned_latency_s[i], self.plan_feasible[i] = plan.latency, plan.feasible
        self.server_work[i], self.server_only_work[i] = plan.server_work, planned.server_only_work
        self.client_units[i], self.switches[i] = plan.client_units, plan.switches

    def completed(
        self,
        i: int,
        finish_s: float,
        server_wait_s: float,
        server_busy_s: float,
        client_wait_s: float,
        client_busy_s: float,
        transfer_s: float,
        client_energy_j: float,
    ) -> None:
        """Request i's result reached its client at `finish_s`: record what it used."""
        self.finish_s[i] = finish_s
        self.status[i] = _COMPLETED
        self.server_wait_s[i], self.server_busy_s[i] = server_wait_s, server_busy_s
        self.client_wait_s[i], self.client_busy_s[i] = client_wait_s, client_busy_s
        self.transfer_s[i] = transfer_s
        self.client_energy_j[i] = client_energy_j
        self.in_flight -= 1

    def rejected(
        self,
        i: int,
        server_wait_s: float = 0.0,
        server_busy_s: float = 0.0,
        client_wait_s: float = 0.0,
        client_busy_s: float = 0.0,
        transfer_s: float = 0.0,
        client_energy_j: float = 0.0,
    ) -> None:
        """The server lost request i: recorded with what it used until then (a split
        request rejected at a later server segment held the server for its earlier ones)."""
        self.status[i] = _REJECTED
        self.server_wait_s[i], self.server_busy_s[i] = server_wait_s, server_busy_s
        self.client_wait_s[i], self.client_busy_s[i] = client_wait_s, client_busy_s
        self.transfer_s[i] = transfer_s
        self.client_energy_j[i] = client_energy_j
        self.in_flight -= 1

    def unfinished_at(self, end_s: float) -> None:
        """Requests finishing after the run's end (computed ahead of the clock) stay in
        flight: their status and finish time are cleared."""
        late = self.finish_s > end_s
        self.status[late] = RequestStatus.IN_FLIGHT
        self.finish_s[late] = np.nan

    def backlog(self, stop_s: float, arrived: int) -> int:
        """Requests among the first `arrived` neither finished by `stop_s` nor rejected."""
        n = slice(arrived)
        unfinished = ~(self.finish_s[n] <= stop_s)
        return int(np.sum(unfinished & (self.status[n] != RequestStatus.REJECTED)))

    def result(self, arrived: int, overload_stop_s: float, **run) -> RunResult:
        """The `RunResult` of these arrays and the run's other fields (`run`, by keyword),
        cut to the first `arrived` requests after an overload stop."""
        arrays = {name: getattr(self, name) for name in PER_REQUEST_ARRAYS}
        res = RunResult(**arrays, **run)
        if np.isnan(overload_stop_s):
            return res
        res.overload_stop_s = overload_stop_s
        return truncated(res, arrived)
