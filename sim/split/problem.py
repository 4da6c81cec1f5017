"""The split problem as pure numbers, a placement's latency and server work, and `Plan`.

Units u = 0..L-1 run in order; boundary b is the activation entering unit b, boundary L the
output. The input starts on the client and the output must end on the client. A switch of
location between consecutive units costs the boundary's uplink (client -> server) or
downlink (server -> client) time.

Generation adds a feedback loop: every decode step's token, made by the last unit, feeds
unit `loop_start`. `downlink_time[L]` includes streaming those tokens to the client; when
`loop_start` and the last unit both run on the server the tokens loop there and only the
final token's delivery waits (`loop_downlink_time` is refunded). When `loop_start` runs on
the server but the last unit on the client, each token must go up again
(`loop_uplink_time` is added).

`server_entry_time` (default 0) is added once per entry onto the server, i.e. per
client -> server switch, including the start when unit 0 runs on the server: the expected
queueing delay of each server segment, which load-aware policies set from the live server
state (each server segment queues separately in the engine). It is one number for every
boundary, or one per boundary (L + 1 values; a batching server's wait depends on how many
passes cross the boundary: once for a forward pass, once per decode step after the loop).

`client_allowed` (default all) marks the units the client may run (those it holds);
`client_required` (default none) the units it must run: privacy pinning, e.g. the first K
units so raw tokens and early activations never leave the device. Every policy respects
both; a placement that puts a pinned unit on the server is an error (`make_plan`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np


def _vec(x, n: int, name: str, dtype=float) -> np.ndarray:
    """`x` as a flat array of n entries; float entries must be finite and >= 0.

    The check is two reductions (min >= 0 fails on NaN and -inf, max < inf on +inf):
    problems are built per request size, so validation is on the planning path.
    """
    a = np.asarray(x, dtype=dtype).reshape(-1)
    if a.shape != (n,):
        raise ValueError(f"{name} must have {n} entries, got {a.shape[0]}")
    if dtype is float and not (a.min() >= 0 and a.max() < np.inf):
        raise ValueError(f"{name} must be finite and >= 0")
    return a


def _required(required, allowed: np.ndarray) -> np.ndarray | None:
    """The units pinned to the client as flat bools, or None when none is (the common
    case, which the searches skip); pinned units must be allowed on the client."""
    if required is None:
        return None
    req = _vec(required, allowed.shape[0], "client_required", dtype=bool)
    if not req.any():
        return None
    if (req & ~allowed).any():
        raise ValueError("client_required units must be allowed on the client (client_allowed)")
    return req


@dataclass(frozen=True, eq=False)
class SplitProblem:
    """One request's placement problem: times in seconds, work in objective units."""

    client_time: np.ndarray
    server_time: np.ndarray
    server_work: np.ndarray | None = None
    uplink_time: np.ndarray | None = None
    downlink_time: np.ndarray | None = None
    deadline: float = np.inf
    client_allowed: np.ndarray | None = None
    loop_start: int = 0
    loop_uplink_time: float = 0.0
    loop_downlink_time: float = 0.0
    server_entry_time: float | np.ndarray = 0.0
    client_required: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = np.asarray(self.client_time).reshape(-1).shape[0]
        if n < 1:
            raise ValueError("a split problem needs at least one unit")
        set_ = object.__setattr__
        set_(self, "client_time", _vec(self.client_time, n, "client_time"))
        set_(self, "server_time", _vec(self.server_time, n, "server_time"))
        work = self.server_time if self.server_work is None else self.server_work
        set_(self, "server_work", _vec(work, n, "server_work"))
        for name in ("uplink_time", "downlink_time"):
            value = getattr(self, name)
            set_(self, name, _vec(np.zeros(n + 1) if value is None else value, n + 1, name))
        allowed = np.ones(n, bool) if self.client_allowed is None else self.client_allowed
        set_(self, "client_allowed", _vec(allowed, n, "client_allowed", dtype=bool))
        set_(self, "client_required", _required(self.client_required, self.client_allowed))
        if not (self.deadline > 0):
            raise ValueError("deadline must be > 0")
        if not 0 <= self.loop_start < n:
            raise ValueError(f"loop_start must be in 0..{n - 1}")
        entry = self.server_entry_time
        if np.ndim(entry):
            set_(self, "server_entry_time", _vec(entry, n + 1, "server_entry_time"))
        elif not (np.isfinite(entry) and entry >= 0):
            raise ValueError("server_entry_time must be finite and >= 0")
        if self.loop_downlink_time > self.downlink_time[n] + 1e-12:
            raise ValueError("loop_downlink_time is part of downlink_time[L] and cannot exceed it")

    def with_deadline(self, deadline: float) -> SplitProblem:
        """This problem with another deadline (s; > 0, may be inf): `replace` without
        validating the unchanged arrays again (planning re-targets one problem per size)."""
        if not (deadline > 0):
            raise ValueError("deadline must be > 0")
        out = object.__new__(SplitProblem)  # a shallow copy, without copy's generic path
        out.__dict__.update(self.__dict__)
        object.__setattr__(out, "deadline", deadline)
        return out

    def with_entry(self, server_entry_time: float | np.ndarray) -> SplitProblem:
        """This problem with another expected wait per server entry (s; one number or one
        per boundary), validated as the constructor does, the other arrays not again
        (load-aware planning re-targets one problem per arrival)."""
        out = object.__new__(SplitProblem)  # a shallow copy, without copy's generic path
        out.__dict__.update(self.__dict__)
        entry = server_entry_time
        if np.ndim(entry):
            entry = _vec(entry, self.n_units + 1, "server_entry_time")
        elif not (np.isfinite(entry) and entry >= 0):
            raise ValueError("server_entry_time must be finite and >= 0")
        object.__setattr__(out, "server_entry_time", entry)
        return out

    @property
    def n_units(self) -> int:
        return self.client_time.shape[0]

    @property
    def entry_times(self) -> np.ndarray | float:
        """Cost of a client -> server switch at each boundary: uplink plus expected wait."""
        entry = self.server_entry_time
        if entry.any() if isinstance(entry, np.ndarray) else entry != 0:
            return self.uplink_time + entry
        return self.uplink_time

    @property
    def has_loop(self) -> bool:
        return self.loop_uplink_time > 0 or self.loop_downlink_time > 0

    @property
    def locations(self) -> np.ndarray:
        """Per unit where it may run, as the searches read it: 0 the server only, 1 either,
        `CLIENT_ONLY` (2) the client only (pinned); bools when nothing is pinned."""
        if self.client_required is None:
            return self.client_allowed
        return self.client_allowed.astype(np.int8) + self.client_required


CLIENT_ONLY = 2  # `SplitProblem.locations`: a unit pinned to the client


@dataclass(frozen=True, eq=False)
class Plan:
    """A placement and what it costs: the answer of every policy."""

    on_client: np.ndarray
    latency: float
    server_work: float
    feasible: bool
    policy: str = ""
    notes: dict = field(default_factory=dict)
    # a phase plan's decode placement when it differs from the prefill's (`on_client`):
    # `sim.split.phase_plans`; None: every pass runs `on_client`
    decode_on_client: np.ndarray | None = None

    @cached_property
    def client_units(self) -> int:
        return int(self.on_client.sum())

    @cached_property
    def switches(self) -> int:
        """Location changes along the chain, including leaving and returning to the client."""
        path = np.concatenate(([True], self.on_client, [True]))
        return int(np.count_nonzero(path[1:] != path[:-1]))


def evaluate_many(problem: SplitProblem, on_client: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Latency and server work of each placement (rows of a (K, L) bool array)."""
    oc = np.asarray(on_client, bool)
    if oc.ndim == 1:
        oc = oc[None, :]
    on_server = ~oc
    compute = np.where(oc, problem.client_time, problem.server_time).sum(axis=1)
    path = np.ones((oc.shape[0], oc.shape[1] + 2), bool)  # the client at both ends
    path[:, 1:-1] = oc
    off = ~path
    up = path[:, :-1] & off[:, 1:]  # client before boundary b, server after
    down = off[:, :-1] & path[:, 1:]
    links = up.astype(float) @ problem.entry_times + down.astype(float) @ problem.downlink_time
    latency = compute + links
    if problem.has_loop:
        start_server = on_server[:, problem.loop_start]
        last_server = on_server[:, -1]
        latency = latency + np.where(start_server & ~last_server, problem.loop_uplink_time, 0.0)
        latency = latency - np.where(start_server & last_server, problem.loop_downlink_time, 0.0)
    work = on_server.astype(float) @ problem.server_work
    return latency, work


def evaluate(problem: SplitProblem, on_client) -> tuple[float, float]:
    """(latency in s, server work) of one placement: `evaluate_many`'s arithmetic for one
    row (the same sums and (1, n) @ (n,) products), with fewer calls (planning judges one
    placement per request)."""
    oc = np.asarray(on_client, bool)
    on_server = ~oc
    compute = np.where(oc, problem.client_time, problem.server_time).sum()
    path = np.ones(oc.shape[0] + 2, bool)  # the client at both ends
    path[1:-1] = oc
    up = path[:-1] > path[1:]  # client before boundary b, server after
    down = path[:-1] < path[1:]
    links = up[None, :].astype(float) @ problem.entry_times + (
        down[None, :].astype(float) @ problem.downlink_time
    )
    latency = float((compute + links)[0])
    if problem.has_loop and on_server[problem.loop_start]:
        if on_server[-1]:
            latency = float(np.float64(latency) - problem.loop_downlink_time)
        else:
            latency = float(np.float64(latency) + problem.loop_uplink_time)
    work = on_server[None, :].astype(float) @ problem.server_work
    return latency, float(work[0])


def make_plan(problem: SplitProblem, on_client, policy: str, **notes) -> Plan:
    """A `Plan` for a placement, with its latency, work and feasibility evaluated exactly."""
    oc = np.asarray(on_client, bool).copy()
    oc.setflags(write=False)
    required = problem.client_required
    if required is not None and not oc[required].all():
        raise ValueError(f"policy {policy!r} placed a client_required unit on the server")
    latency, work = evaluate(problem, oc)
    feasible = latency <= problem.deadline * (1 + 1e-12)
    return Plan(oc, latency, work, bool(feasible), policy, dict(notes))
