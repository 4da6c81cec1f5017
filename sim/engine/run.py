"""The request-granularity engine: one policy over one replication's arrivals, each
request a SimPy process running its plan's segments (DESIGN §4).

Built from the parts it shares with the token engine (`sim.engine.token`): the run's
set-up (`sim.engine.setup`: environment, links, planner, plan index, planning at arrival,
arrivals), the per-request recorder (`sim.engine.recorder`) and the server's time-weighted
levels, kept by its `ServerPool`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import simpy

from sim.config import LoadedScenario
from sim.engine.heap import freeze_now, frozen_heap
from sim.engine.network import UP, LinkModel
from sim.engine.planner import CLIENT, SERVER, Planner, ProblemBook
from sim.engine.recorder import RequestRecorder, RunResult
from sim.engine.resources import ServerPool
from sim.engine.setup import AT_ARRIVAL, SYNTHETIC, RunSetup
from sim.engine.workload import Arrivals

# a program op: a transfer on a fixed link, its time known in advance
_FIXED = 3


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
        planner: Planner | None = None,
    ):
        """`planner`: plans already built (benchmarks), or a stand-in (tests); by default
        the policy's planner over `book`. `log` collects (time_s, event, request_id)."""
        sc = ld.scenario
        self.ld, self.policy, self.arr = ld, policy, arrivals
        self.rec = RequestRecorder(len(arrivals))
        planner = planner if planner is not None else Planner(book, policy)
        self.setup = RunSetup(ld, arrivals, jitter_seed, planner, self.rec, progress)
        self.env = self.setup.env
        self.server = ServerPool(
            self.env, sc.server.slots, sc.server.discipline == "edf", sc.server.max_queue,
            hold_alpha=sc.split.wait_ewma_alpha, track_recent=self.setup.load_aware,
        )  # fmt: skip
        self.busy_utilization = sc.split.busy_utilization
        self.devices = [simpy.Resource(self.env, 1) for _ in range(sc.total_clients)]
        self._links = self.setup.links
        self._client, self._group = self.setup.client, self.setup.group
        self._energy_j = self.setup.energy_j
        self._observe, self._link_alpha = self.setup.observe, self.setup.link_alpha
        self.log = log  # optional event log, for exact-timeline tests
        self._programs: list[tuple] = []
        self._dyn_programs: dict[int, tuple] = {}

    @property
    def planner(self) -> Planner:
        return self.setup.planner

    @property
    def links(self) -> list[LinkModel]:
        return self._links

    def run(self) -> RunResult:
        """Plan, admit every arrival, drain (unless an overload stop ended the arrivals).
        Long-lived objects stay out of the cycle collector's scans meanwhile
        (`sim.engine.heap`)."""
        with frozen_heap():
            return self._run()

    def _run(self) -> RunResult:
        """`run`'s body."""
        sc, setup = self.ld.scenario, self.setup
        self.prepare()
        freeze_now()  # the plans live as long as the run
        source = self.env.process(setup.arrival_process(self._admit))
        self.env.run(until=source)
        stop_s = self.env.now
        backlog_at_stop = self.rec.in_flight
        if setup.overloaded:
            pass  # stopped for memory: no drain, the in-flight requests stay in flight
        elif sc.drain_s is None:
            self.env.run()
        elif stop_s + sc.drain_s > self.env.now:  # SimPy refuses until <= now (drain_s 0)
            self.env.run(until=stop_s + sc.drain_s)
        self.server.finish()
        self._before_result()
        return self.rec.result(
            setup.arrived, setup.overload_stop_s,
            policy=self.policy, arrivals=self.arr, server=self.server.levels, stop_s=stop_s,
            end_s=float(self.env.now), backlog_at_stop=backlog_at_stop,
            cached_plans=self.planner.cached_plans,
            events=next(self.env._eid),  # events SimPy scheduled (ids are consecutive from 0)
        )  # fmt: skip

    def _before_result(self) -> None:
        """Called when the run has ended, before its result is built (a fleet records its
        servers' plan columns here)."""

    def prepare(self) -> None:
        """Plan every request before the run (`RunSetup.index_plans`) and turn each static
        plan into a program: its segments with the transfers on fixed links (no trace,
        jitter or shared medium) turned into a wait of known length, computed exactly as
        `_transfer` would, and its busy times summed in segment order."""
        with frozen_heap():
            plans = self.setup.index_plans()
            self._programs = [self._program(g, planned) for g, planned in plans]
        self._plan_of, self._deadline = self.setup.plan_of, self.setup.deadline
        self._service = self.setup.service

    def _program(self, group: int, planned, links: list[LinkModel] | None = None) -> tuple:
        """(ops, segments, has_server, server busy, client busy, client energy) of one plan
        on one client group's link (of `links`: a fleet site's; default the server's)."""
        link = (links or self._links)[group]
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
                ops.append((_FIXED, link.fixed_s(seg[1], seg[2], seg[3]), seg[2]))
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

    def _plan_at_arrival(self, i: int) -> tuple:
        """The engine program of request i's plan made at arrival (cached per plan)."""
        planned = self.setup.plan_at_arrival(i, self._live_load)
        cache = self._dyn_programs
        program = cache.get(id(planned))
        if program is None:
            group = self.setup.group[i]
            program = cache[id(planned)] = (self._program(group, planned), planned)
        return program[0]

    def _admit(self, i: int) -> None:
        env, log = self.env, self.log
        if log is not None:
            log.append((env.now, "arrive", i))
        p = self._plan_of[i]
        if p == SYNTHETIC:  # a validation request: one server segment of its drawn time
            service = self._service[i]
            segments = ((SERVER, service),)
            program = (segments, segments, True, service, 0.0, 0.0)
        elif p == AT_ARRIVAL:
            program = self._plan_at_arrival(i)
        else:
            program = self._programs[p]
        self.rec.admitted()
        if log is None:
            env.process(self._run_program(i, program, self.server, self._links))
        else:
            env.process(self._request(i, program[1], self._deadline[i], self.server, self._links))

    def _run_program(self, i: int, program: tuple, server: ServerPool, links: list[LinkModel]):
        """A request without the event log: the same events as `_request`, less overhead.
        `server` serves it; `links` are the client groups' links to that server."""
        env = self.env
        timeout = env.timeout
        ops, _, _, s_busy, c_busy, energy = program
        priority = env.now + self._deadline[i] if server.edf else 0.0
        device = self.devices[self._client[i]]
        s_wait = c_wait = xfer = 0.0
        s_used = c_used = sent = 0.0  # so far: what a request rejected midway had used
        for op in ops:
            kind = op[0]
            t0 = env.now
            if kind == _FIXED:
                yield timeout(op[1])
                xfer += env.now - t0
                sent += op[2]
            elif kind == SERVER:
                if server.full():
                    used = self._energy_j(self._group[i], c_used, sent)
                    self._reject(i, s_wait, s_used, c_wait, c_used, xfer, used)
                    return
                req = server.request(priority)
                yield req
                server.granted(op[1])
                s_wait += env.now - t0
                yield timeout(op[1])
                server.release(req, op[1])
                s_used += op[1]
            elif kind == CLIENT:
                req = device.request()
                yield req
                c_wait += env.now - t0
                yield timeout(op[1])
                device.release(req)
                c_used += op[1]
            else:
                yield from self._transfer(links[self._group[i]], op[1], op[2], op[3])
                xfer += env.now - t0
                sent += op[2]
        self.rec.completed(i, env.now, s_wait, s_busy, c_wait, c_busy, xfer, energy)

    def _request(
        self, i: int, segments: tuple, deadline_s: float, server: ServerPool, links: list[LinkModel]
    ):
        """A request with the event log (the reference the fast path must match)."""
        env = self.env
        t_arrival = env.now
        priority = t_arrival + deadline_s if server.edf else 0.0
        device = self.devices[self._client[i]]
        link = links[self._group[i]]
        log = self.log
        s_wait = s_busy = c_wait = c_busy = xfer = nbytes = 0.0
        for seg in segments:
            kind = seg[0]
            t0 = env.now
            if kind == SERVER:
                if server.full():
                    energy = self._energy_j(self._group[i], c_busy, nbytes)
                    self._reject(i, s_wait, s_busy, c_wait, c_busy, xfer, energy)
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
        energy = self._energy_j(self._group[i], c_busy, nbytes)
        self.rec.completed(i, env.now, s_wait, s_busy, c_wait, c_busy, xfer, energy)

    def _reject(self, i: int, *used: float) -> None:
        """The server queue is full when the request reaches it: the request is lost, with
        what it used until then (`RequestRecorder.rejected`'s fields)."""
        self.rec.rejected(i, *used)
        if self.log is not None:
            self.log.append((self.env.now, "reject", i))

    def _transfer(self, link: LinkModel, direction: int, nbytes: float, crossings: float):
        env = self.env
        serial = link.serialisation_s(direction, nbytes, env.now)
        delay = link.delay_s(crossings)
        if link.medium is None:
            yield env.timeout(serial + delay)
            if self._observe:  # the estimate learns a transfer's rate when it completes
                link.observe(direction, nbytes, serial, self._link_alpha)
            return
        channel = link.medium.channels[direction]
        t0 = env.now
        req = channel.request()
        yield req
        yield env.timeout(serial)
        channel.release(req)
        if self._observe:
            link.observe(direction, nbytes, env.now - t0, self._link_alpha)
        yield env.timeout(delay)
