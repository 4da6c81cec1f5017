"""One simulation: one policy over one replication's arrivals, as SimPy processes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import simpy

from sim.config import LoadedScenario
from sim.engine.network import LinkModel, Medium
from sim.engine.planner import CLIENT, SERVER, Planner, ProblemBook
from sim.engine.resources import ServerPool
from sim.engine.workload import Arrivals

# request status codes in the record arrays
_PENDING, _DONE, _REJECTED = 0, 1, 2


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
    ):
        sc = ld.scenario
        self.ld, self.policy, self.arr = ld, policy, arrivals
        self.env = simpy.Environment()
        self.server = ServerPool(
            self.env, sc.server.slots, sc.server.discipline == "edf", sc.server.max_queue
        )
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
        self.progress = progress
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
        self.in_flight = 0
        self.stop_s = 0.0
        self.backlog_at_stop = 0

    def run(self) -> RunResult:
        sc = self.ld.scenario
        source = self.env.process(self._arrivals())
        self.env.run(until=source)
        self.stop_s = self.env.now
        self.backlog_at_stop = self.in_flight
        if sc.drain_s is None:
            self.env.run()
        else:
            self.env.run(until=self.stop_s + sc.drain_s)
        self.server.finish()
        return RunResult(
            self.policy, self.arr, self._status_codes(), self.finish_s, self.deadline_s,
            self.planned, self.feasible, self.s_wait, self.s_busy, self.c_wait, self.c_busy,
            self.xfer, self.work, self.only_work, self.units, self.switches, self.server,
            self.stop_s, float(self.env.now), self.backlog_at_stop,
            self.planner.cached_plans, 0,
        )  # fmt: skip

    def _status_codes(self) -> np.ndarray:
        return self.status

    def _arrivals(self):
        env, arr = self.env, self.arr
        times, duration = arr.time_s, self.ld.scenario.duration_s
        report_every = max(1, len(times) // 100)
        for i in range(len(times)):
            gap = times[i] - env.now
            if gap > 0:
                yield env.timeout(gap)
            self._admit(i)
            if self.progress and i % report_every == 0:
                self.progress(i)
        if duration is not None and env.now < duration:
            yield env.timeout(duration - env.now)

    def _admit(self, i: int) -> None:
        arr = self.arr
        planned = self.planner.get(
            int(arr.klass[i]),
            int(arr.group[i]),
            int(arr.prompt_tokens[i]),
            int(arr.output_tokens[i]),
        )
        plan = planned.plan
        self.deadline_s[i] = planned.deadline_s
        self.planned[i] = plan.latency
        self.feasible[i] = plan.feasible
        self.work[i] = plan.server_work
        self.only_work[i] = planned.server_only_work
        self.units[i] = plan.client_units
        self.switches[i] = plan.switches
        if planned.has_server and self.server.full():
            self.status[i] = _REJECTED
            return
        self.in_flight += 1
        self.env.process(self._request(i, planned.segments, planned.deadline_s))

    def _request(self, i: int, segments: tuple, deadline_s: float):
        env, server = self.env, self.server
        arr = self.arr
        t_arrival = env.now
        priority = t_arrival + deadline_s if server.edf else 0.0
        device = self.devices[arr.client[i]]
        link = self.links[arr.group[i]]
        s_wait = s_busy = c_wait = c_busy = xfer = 0.0
        for seg in segments:
            kind = seg[0]
            t0 = env.now
            if kind == SERVER:
                req = server.request(priority)
                yield req
                server.granted()
                s_wait += env.now - t0
                yield env.timeout(seg[1])
                server.release(req, seg[1])
                s_busy += seg[1]
            elif kind == CLIENT:
                req = device.request()
                yield req
                c_wait += env.now - t0
                yield env.timeout(seg[1])
                device.release(req)
                c_busy += seg[1]
            else:
                yield from self._transfer(link, seg[1], seg[2], seg[3])
                xfer += env.now - t0
        self.finish_s[i] = env.now
        self.status[i] = _DONE
        self.s_wait[i], self.s_busy[i], self.c_wait[i] = s_wait, s_busy, c_wait
        self.c_busy[i], self.xfer[i] = c_busy, xfer
        self.in_flight -= 1

    def _transfer(self, link: LinkModel, direction: int, nbytes: float, crossings: float):
        env = self.env
        serial = link.serialisation_s(direction, nbytes, env.now)
        delay = link.delay_s(crossings)
        if link.medium is None:
            yield env.timeout(serial + delay)
            return
        channel = link.medium.channels[direction]
        req = channel.request()
        yield req
        yield env.timeout(serial)
        channel.release(req)
        yield env.timeout(delay)
