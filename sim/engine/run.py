"""One simulation: one policy over one replication's arrivals, as SimPy processes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import numpy as np
import simpy

from sim.config import LoadedScenario
from sim.engine.network import DOWN, UP, LinkModel, Medium
from sim.engine.planner import CLIENT, SERVER, Planner, ProblemBook
from sim.engine.resources import ServerPool
from sim.engine.workload import Arrivals

# request status codes in the record arrays
_PENDING, _DONE, _REJECTED = 0, 1, 2
# plan index of a request planned at its arrival (load-aware policy or link estimate)
_AT_ARRIVAL = -2
# a program op: a transfer on a fixed link, its time known in advance
_FIXED = 3


@dataclass
class RunResult:
    """Per-request arrays and the server's monitored state after one run."""

    policy: str
    arrivals: Arrivals
    status: np.ndarray
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
    server: ServerPool
    stop_s: float
    end_s: float
    backlog_at_stop: int
    cached_plans: int
    events: int
    client_energy_j: np.ndarray | None = None
    token: object | None = None  # token granularity: `sim.engine.token.TokenStats`
    overload_stop_s: float = float("nan")  # when `max_in_flight` stopped the run (NaN: never)


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


class Simulation:
    """Builds the environment for one policy and runs the arrivals through it."""

    def __init__(
        self,
        ld: LoadedScenario,
        policy: str,
        arrivals: Arrivals,
        jitter_seed: np.random.SeedSequence,
        book: ProblemBook,
        progress: Callable[[int], None] | None = None,
        log: list | None = None,
    ):
        sc = ld.scenario
        self.ld, self.policy, self.arr = ld, policy, arrivals
        self.env = simpy.Environment()
        self.server = ServerPool(
            self.env, sc.server.slots, sc.server.discipline == "edf", sc.server.max_queue,
            hold_alpha=sc.split.wait_ewma_alpha,
        )  # fmt: skip
        self.busy_utilization = sc.split.busy_utilization
        self.devices = [simpy.Resource(self.env, 1) for _ in range(sc.total_clients)]
        media: dict[str, Medium] = {}
        jitter_rngs = [np.random.default_rng(s) for s in jitter_seed.spawn(len(sc.clients))]
        self.links = []
        for i, g in enumerate(sc.clients):
            medium = None
            if g.link.shared:
                medium = media.setdefault(g.link.shared, Medium(self.env, g.link.shared))
            self.links.append(LinkModel(g.link, ld.bandwidth_traces[i], medium, jitter_rngs[i]))
        self.planner = Planner(book, policy)
        self.server.track_recent = self.planner.load_aware
        self.link_estimate = sc.split.link_estimate
        self.link_alpha = sc.split.link_ewma_alpha
        self._observe = self.link_estimate == "ewma"
        # client energy: device power (W; 0 when the spec has none) and radio J per byte
        devs = ld.client_devices
        self._power_w = [float(d.power_w or 0.0) for d in devs]
        self._radio_j_per_byte = [8e-9 * d.radio_nj_per_bit for d in devs]
        self.progress = progress
        self.log = log  # optional event log: (time_s, event, request_id), for exact-timeline tests
        mix = ld.scenario.workload.mix
        self.synthetic = np.array([c.task == "synthetic" for c in mix])
        n = len(arrivals)
        f = lambda: np.full(n, np.nan)  # noqa: E731
        self.status = np.zeros(n, np.int8)
        self.finish_s, self.deadline_s, self.planned = f(), f(), f()
        self.feasible = np.zeros(n, bool)
        self.s_wait, self.s_busy, self.c_wait, self.c_busy, self.xfer = (
            np.zeros(n) for _ in range(5)
        )
        self.work, self.only_work = f(), f()
        self.units = np.zeros(n, np.int32)
        self.switches = np.zeros(n, np.int32)
        self.energy = np.zeros(n)
        self.in_flight = 0
        self._deadline_of: dict[tuple, float] = {}
        self._dyn_programs: dict[int, tuple] = {}
        self.stop_s = 0.0
        self.backlog_at_stop = 0
        # memory-safe overload stop: arrivals end once this many requests are in the system
        self.max_in_flight = sc.simulation.max_in_flight
        self.overload_stop_s = float("nan")
        self.arrived = n  # requests admitted (fewer than n after an overload stop)

    @property
    def overloaded(self) -> bool:
        """Whether `max_in_flight` stopped the arrivals (the run then ends without drain)."""
        return not np.isnan(self.overload_stop_s)

    def run(self) -> RunResult:
        sc = self.ld.scenario
        self._prepare()
        source = self.env.process(self._arrivals())
        self.env.run(until=source)
        self.stop_s = self.env.now
        self.backlog_at_stop = self.in_flight
        if self.overloaded:
            pass  # stopped for memory: no drain, the in-flight requests stay in flight
        elif sc.drain_s is None:
            self.env.run()
        elif self.stop_s + sc.drain_s > self.env.now:  # SimPy refuses until <= now (drain_s 0)
            self.env.run(until=self.stop_s + sc.drain_s)
        self.server.finish()
        events = next(self.env._eid)  # events SimPy scheduled (ids are consecutive from 0)
        res = RunResult(
            self.policy, self.arr, self._status_codes(), self.finish_s, self.deadline_s,
            self.planned, self.feasible, self.s_wait, self.s_busy, self.c_wait, self.c_busy,
            self.xfer, self.work, self.only_work, self.units, self.switches, self.server,
            self.stop_s, float(self.env.now), self.backlog_at_stop,
            self.planner.cached_plans, events, self.energy,
        )  # fmt: skip
        return self._cut(res)

    def _cut(self, res: RunResult) -> RunResult:
        """After an overload stop: the result of the requests that arrived, and when."""
        if not self.overloaded:
            return res
        res.overload_stop_s = self.overload_stop_s
        return truncated(res, self.arrived)

    def _status_codes(self) -> np.ndarray:
        return self.status

    def _prepare(self) -> None:
        """Plan every request before the run and fill the per-request plan columns.

        Plans are built in order of first arrival, as the arrivals would ask for them.
        Each plan becomes a program for the engine: its segments with the transfers on
        fixed links (no trace, jitter or shared medium) turned into a wait of known length,
        computed exactly as `_transfer` would, and its busy times summed in segment order.
        When the planner is dynamic (a load-aware policy or a non-nominal link estimate)
        requests of a model are planned at arrival instead (`_plan_at_arrival`); only
        their deadlines are filled here.
        """
        arr, mix = self.arr, self.ld.scenario.workload.mix
        n = len(arr)
        synthetic = self.synthetic.tolist()
        index: dict[tuple, int] = {}
        plans: list = []
        plan_of = [0] * n
        keys = zip(
            arr.klass.tolist(), arr.group.tolist(),
            arr.prompt_tokens.tolist(), arr.output_tokens.tolist(), strict=True,
        )  # fmt: skip
        dynamic = getattr(self.planner, "dynamic", False)  # stand-in planners: static
        self._keys: list = []
        for i, key in enumerate(keys):
            p = index.get(key)
            if dynamic:
                self._keys.append(key)
            if p is None:
                if synthetic[key[0]]:
                    p = -1
                elif dynamic:
                    p = _AT_ARRIVAL
                    self._deadline_of[key] = self.planner.book.get(*key).deadline_s
                else:
                    p = len(plans)
                    plans.append((key[1], self.planner.get(*key)))
                index[key] = p
            plan_of[i] = p
        self._plan_of = plan_of
        self._client = arr.client.tolist()
        self._group = arr.group.tolist()
        self._programs = [self._program(g, planned) for g, planned in plans]

        pid = np.array(plan_of, np.intp)
        if dynamic:
            at_arrival = np.flatnonzero(pid == _AT_ARRIVAL)
            self.deadline_s[at_arrival] = [self._deadline_of[self._keys[i]] for i in at_arrival]
        model = pid >= 0
        if plans:
            at = pid[model]
            ps = [planned for _, planned in plans]
            self.deadline_s[model] = np.array([p.deadline_s for p in ps])[at]
            self.planned[model] = np.array([p.plan.latency for p in ps])[at]
            self.feasible[model] = np.array([p.plan.feasible for p in ps])[at]
            self.work[model] = np.array([p.plan.server_work for p in ps])[at]
            self.only_work[model] = np.array([p.server_only_work for p in ps])[at]
            self.units[model] = np.array([p.plan.client_units for p in ps])[at]
            self.switches[model] = np.array([p.plan.switches for p in ps])[at]
        if (pid == -1).any():  # synthetic requests: one server segment of the drawn time
            idx = np.flatnonzero(pid == -1)
            service = arr.service_s[idx]
            deadline = np.empty(idx.size)
            klass = arr.klass[idx]
            for k, cls in enumerate(mix):
                on = klass == k
                if on.any():
                    deadline[on] = cls.deadline_s or cls.deadline_factor * service[on]  # type: ignore[operator]
            self.deadline_s[idx], self.planned[idx], self.feasible[idx] = deadline, service, True
            self.work[idx] = self.only_work[idx] = service
            self.units[idx], self.switches[idx] = 0, 2
        self._service = arr.service_s.tolist()
        self._deadline = self.deadline_s.tolist()

    def _program(self, group: int, planned) -> tuple:
        """(ops, segments, has_server, server busy, client busy, client energy) of one plan
        on one client group's link."""
        link = self.links[group]
        ops = []
        s_busy = c_busy = nbytes = 0.0
        for seg in planned.segments:
            kind = seg[0]
            if kind == SERVER:
                s_busy += seg[1]
                ops.append(seg)
            elif kind == CLIENT:
                c_busy += seg[1]
                ops.append(seg)
            elif link.fixed:
                nbytes += seg[2]
                ops.append((_FIXED, link.fixed_s(seg[1], seg[2], seg[3])))
            else:
                nbytes += seg[2]
                ops.append(seg)
        energy = self._energy_j(group, c_busy, nbytes)
        return tuple(ops), planned.segments, planned.has_server, s_busy, c_busy, energy

    def _energy_j(self, group: int, client_busy_s: float, nbytes: float) -> float:
        """Client energy of a request: device power x busy time + radio energy per bit."""
        return self._power_w[group] * client_busy_s + self._radio_j_per_byte[group] * nbytes

    def _live_load(self) -> tuple[float, bool]:
        """(expected server wait per entry in s, whether the server is busy) right now."""
        server = self.server
        limit = self.busy_utilization
        return server.expected_wait_s(), limit < 1 and server.recent_utilization() >= limit

    def _planned_at_arrival(self, i: int):
        """Plan request i now, with the current server-load and link estimates, and fill
        its plan columns."""
        planner = self.planner
        wait, busy = self._live_load() if planner.load_aware else (0.0, False)
        link = self.links[self._group[i]]
        if self.link_estimate == "oracle":
            now = self.env.now
            up, down = link.mbps(UP, now), link.mbps(DOWN, now)
        elif self.link_estimate == "ewma":
            up, down = link.estimate_mbps
        else:
            up, down = link.nominal_mbps
        planned = planner.get_at(self._keys[i], wait, up, down, busy)
        plan = planned.plan
        self.planned[i], self.feasible[i] = plan.latency, plan.feasible
        self.work[i], self.only_work[i] = plan.server_work, planned.server_only_work
        self.units[i], self.switches[i] = plan.client_units, plan.switches
        return planned

    def _plan_at_arrival(self, i: int) -> tuple:
        """The engine program of request i's plan made at arrival (cached per plan)."""
        planned = self._planned_at_arrival(i)
        cache = self._dyn_programs
        program = cache.get(id(planned))
        if program is None:
            program = cache[id(planned)] = (self._program(self._group[i], planned), planned)
        return program[0]

    def _arrivals(self):
        """Admit every request at its arrival time, then wait out `duration_s`; stop early
        when `max_in_flight` requests are in the system (the overload stop)."""
        env = self.env
        times, duration = self.arr.time_s.tolist(), self.ld.scenario.duration_s
        timeout, admit, progress = env.timeout, self._admit, self.progress
        report_every = max(1, len(times) // 100)
        cap = self.max_in_flight or len(times) + 1  # in flight never exceeds the arrivals
        for i in range(len(times)):
            gap = times[i] - env.now
            if gap > 0:
                yield timeout(gap)
            admit(i)
            if progress and i % report_every == 0:
                progress(i)
            if self.in_flight >= cap:
                self.overload_stop_s, self.arrived = env.now, i + 1
                return
        if duration is not None and env.now < duration:
            yield env.timeout(duration - env.now)

    def _admit(self, i: int) -> None:
        env, log = self.env, self.log
        if log is not None:
            log.append((env.now, "arrive", i))
        p = self._plan_of[i]
        if p == -1:  # a validation request: one server segment of its drawn time, no network
            service = self._service[i]
            segments = ((SERVER, service),)
            program = (segments, segments, True, service, 0.0, 0.0)
        elif p == _AT_ARRIVAL:
            program = self._plan_at_arrival(i)
        else:
            program = self._programs[p]
        self.in_flight += 1
        if log is None:
            env.process(self._run_program(i, program))
        else:
            env.process(self._request(i, program[1], self._deadline[i]))

    def _run_program(self, i: int, program: tuple):
        """A request without the event log: the same events as `_request`, less overhead."""
        env, server = self.env, self.server
        timeout = env.timeout
        ops, _, _, s_busy, c_busy, energy = program
        priority = env.now + self._deadline[i] if server.edf else 0.0
        device = self.devices[self._client[i]]
        s_wait = c_wait = xfer = 0.0
        for op in ops:
            kind = op[0]
            t0 = env.now
            if kind == _FIXED:
                yield timeout(op[1])
                xfer += env.now - t0
            elif kind == SERVER:
                if server.full():
                    self._reject(i)
                    return
                req = server.request(priority)
                yield req
                server.granted(op[1])
                s_wait += env.now - t0
                yield timeout(op[1])
                server.release(req, op[1])
            elif kind == CLIENT:
                req = device.request()
                yield req
                c_wait += env.now - t0
                yield timeout(op[1])
                device.release(req)
            else:
                yield from self._transfer(self.links[self.arr.group[i]], op[1], op[2], op[3])
                xfer += env.now - t0
        self.finish_s[i] = env.now
        self.status[i] = _DONE
        self.s_wait[i], self.s_busy[i], self.c_wait[i] = s_wait, s_busy, c_wait
        self.c_busy[i], self.xfer[i] = c_busy, xfer
        self.energy[i] = energy
        self.in_flight -= 1

    def _request(self, i: int, segments: tuple, deadline_s: float):
        """A request with the event log (the reference the fast path must match)."""
        env, server = self.env, self.server
        arr = self.arr
        t_arrival = env.now
        priority = t_arrival + deadline_s if server.edf else 0.0
        device = self.devices[arr.client[i]]
        link = self.links[arr.group[i]]
        log = self.log
        s_wait = s_busy = c_wait = c_busy = xfer = nbytes = 0.0
        for seg in segments:
            kind = seg[0]
            t0 = env.now
            if kind == SERVER:
                if server.full():
                    self._reject(i)
                    return
                req = server.request(priority)
                yield req
                server.granted(seg[1])
                if log is not None:
                    log.append((t0, "server_queue", i))
                    log.append((env.now, "server_start", i))
                s_wait += env.now - t0
                yield env.timeout(seg[1])
                server.release(req, seg[1])
                s_busy += seg[1]
            elif kind == CLIENT:
                req = device.request()
                yield req
                if log is not None:
                    log.append((env.now, "client_start", i))
                c_wait += env.now - t0
                yield env.timeout(seg[1])
                device.release(req)
                c_busy += seg[1]
            else:
                if log is not None:
                    log.append((t0, "uplink_start" if seg[1] == UP else "downlink_start", i))
                yield from self._transfer(link, seg[1], seg[2], seg[3])
                xfer += env.now - t0
                nbytes += seg[2]
            if log is not None:
                log.append((env.now, ("client_end", "server_end", "transfer_end")[kind], i))
        if log is not None:
            log.append((env.now, "done", i))
        self.finish_s[i] = env.now
        self.status[i] = _DONE
        self.s_wait[i], self.s_busy[i], self.c_wait[i] = s_wait, s_busy, c_wait
        self.c_busy[i], self.xfer[i] = c_busy, xfer
        self.energy[i] = self._energy_j(self._group[i], c_busy, nbytes)
        self.in_flight -= 1

    def _reject(self, i: int) -> None:
        """The server queue is full when the request reaches it: the request is lost."""
        self.status[i] = _REJECTED
        self.in_flight -= 1
        if self.log is not None:
            self.log.append((self.env.now, "reject", i))

    def _transfer(self, link: LinkModel, direction: int, nbytes: float, crossings: float):
        env = self.env
        serial = link.serialisation_s(direction, nbytes, env.now)
        delay = link.delay_s(crossings)
        if link.medium is None:
            yield env.timeout(serial + delay)
            if self._observe:  # the estimate learns a transfer's rate when it completes
                link.observe(direction, nbytes, serial, self.link_alpha)
            return
        channel = link.medium.channels[direction]
        t0 = env.now
        req = channel.request()
        yield req
        yield env.timeout(serial)
        channel.release(req)
        if self._observe:
            link.observe(direction, nbytes, env.now - t0, self.link_alpha)
        yield env.timeout(delay)
