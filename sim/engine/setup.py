"""What both engines build the same way for one policy over one replication's arrivals.

`RunSetup` holds the SimPy environment, the client links (with their shared media and
jitter streams), the planner, the plan index (which plan each request runs: a static plan
of its class, a plan made at its arrival, or a validation request's drawn service), the
client energy coefficients, and the arrival process with its overload stop. The engines
(`sim.engine.run`, `sim.engine.token`) turn plans into their own programs and run them;
every per-request column goes to the shared `RequestRecorder`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import simpy

from sim.config import LoadedScenario

# prefetch's planners, imported (compiled) with the engine rather than in the first run
from sim.engine import plan_dp, plan_fixed, plan_wait  # noqa: F401
from sim.engine.network import DOWN, UP, LinkModel, Medium
from sim.engine.plan_batch import collector_paused, prefetch
from sim.engine.planner import PlannedRequest, Planner
from sim.engine.recorder import RequestRecorder
from sim.engine.workload import Arrivals

# plan index of a request with no model: one server segment of its drawn service time
SYNTHETIC = -1
# plan index of a request planned at its arrival (load-aware policy or link estimate)
AT_ARRIVAL = -2


def build_links(
    env: simpy.Environment, ld: LoadedScenario, jitter_seed: np.random.SeedSequence
) -> list[LinkModel]:
    """One link per client group; groups naming the same `shared` medium share it, and
    each group draws its jitter from its own stream: the same streams for every policy of
    a replication (common random numbers; `SeedSequence.spawn` would hand each call new
    children, so the children are named here instead)."""
    groups = ld.scenario.clients
    media: dict[str, Medium] = {}
    jitter_rngs = [
        np.random.default_rng(
            np.random.SeedSequence(jitter_seed.entropy, spawn_key=(*jitter_seed.spawn_key, i))
        )
        for i in range(len(groups))
    ]
    links = []
    for i, g in enumerate(groups):
        medium = None
        if g.link.shared:
            medium = media.setdefault(g.link.shared, Medium(env, g.link.shared))
        links.append(LinkModel(g.link, ld.bandwidth_traces[i], medium, jitter_rngs[i]))
    return links


class RunSetup:
    """The environment, links, planner, plan index and arrival source of one run."""

    def __init__(
        self,
        ld: LoadedScenario,
        arrivals: Arrivals,
        jitter_seed: np.random.SeedSequence,
        planner: Planner,
        recorder: RequestRecorder,
        progress: Callable[[int], None] | None = None,
    ):
        """`planner` is the policy's planner (or a stand-in with `get` and `cached_plans`:
        stand-ins are static and not load-aware)."""
        sc = ld.scenario
        self.ld, self.arr, self.planner, self.rec = ld, arrivals, planner, recorder
        self.progress = progress
        self.env = simpy.Environment()
        self.links = build_links(self.env, ld, jitter_seed)
        self.load_aware = getattr(planner, "load_aware", False)
        self.dynamic = getattr(planner, "dynamic", False)
        self.link_estimate = sc.split.link_estimate
        self.link_alpha = sc.split.link_ewma_alpha
        self.observe = self.link_estimate == "ewma"  # links learn from finished transfers
        # client energy: device power (W; 0 when the spec has none) and radio J per byte
        devs = ld.client_devices
        self._power_w = [float(d.power_w or 0.0) for d in devs]
        self._radio_j_per_byte = [8e-9 * d.radio_nj_per_bit for d in devs]
        self.client = arrivals.client.tolist()
        self.group = arrivals.group.tolist()
        self.keys: list[tuple] = []  # per request (class, group, prompt, output), if kept
        self.plan_of: list[int] = []
        self.deadline: list[float] = []
        self.service = arrivals.service_s.tolist()
        # the arrival source's overload stop (`max_in_flight`)
        self.max_in_flight = sc.simulation.max_in_flight
        self.overload_stop_s = float("nan")
        self.arrived = len(arrivals)  # requests admitted (fewer after an overload stop)

    @property
    def overloaded(self) -> bool:
        """Whether `max_in_flight` stopped the arrivals (the run then ends without drain)."""
        return not np.isnan(self.overload_stop_s)

    def energy_j(self, group: int, client_busy_s: float, nbytes: float) -> float:
        """Client energy of a request: device power x busy time + radio energy per bit."""
        return self._power_w[group] * client_busy_s + self._radio_j_per_byte[group] * nbytes

    # --- planning ------------------------------------------------------------------------

    def index_plans(self, keep_keys: bool = False) -> list[tuple[int, PlannedRequest]]:
        """Plan every request before the run; the static plans as (client group, plan).

        Plans are built in order of first arrival, as the arrivals would ask for them;
        `plan_of[i]` is request i's index into them, `SYNTHETIC` or `AT_ARRIVAL`. When the
        planner is dynamic requests of a model are planned at arrival instead
        (`plan_at_arrival`); only their deadlines are filled here. Every other plan
        column goes to the recorder now. Each request's key (class, group, prompt, output)
        is kept in `keys` when asked, or when plans are made at arrival.
        """
        with collector_paused():  # tens of thousands of long-lived objects, no cycles
            return self._index_plans(keep_keys)

    def _index_plans(self, keep_keys: bool) -> list[tuple[int, PlannedRequest]]:
        """`index_plans`' body."""
        mix = self.ld.scenario.workload.mix
        arr = self.arr
        if keep_keys or self.dynamic:  # a list of n tuples: kept only when asked for
            self.keys = list(zip(
                arr.klass.tolist(), arr.group.tolist(),
                arr.prompt_tokens.tolist(), arr.output_tokens.tolist(), strict=True,
            ))  # fmt: skip
        distinct, first_order, of_request = self._distinct_keys()
        if isinstance(self.planner, Planner):  # all distinct sizes' problems at once
            prefetch(self.planner, distinct)
        plans: list[tuple[int, PlannedRequest]] = []
        plan_of_key = np.empty(len(distinct), np.intp)
        deadline_of_key = np.zeros(len(distinct))
        for d in first_order.tolist():  # as the arrivals would ask for them
            key = distinct[d]
            if mix[key[0]].task == "synthetic":
                plan_of_key[d] = SYNTHETIC
            elif self.dynamic:
                plan_of_key[d] = AT_ARRIVAL
                deadline_of_key[d] = self.planner.book.deadline_s(*key)
            else:
                plan_of_key[d] = len(plans)
                plans.append((key[1], self.planner.get(*key)))
        pid = plan_of_key[of_request]
        self.plan_of = pid.tolist()
        if self.dynamic:
            at_arrival = pid == AT_ARRIVAL
            self.rec.deadline_s[at_arrival] = deadline_of_key[of_request[at_arrival]]
        self._record_static(pid, [planned for _, planned in plans])
        self._record_synthetic(pid)
        self.deadline = self.rec.deadline_s.tolist()
        return plans

    def _distinct_keys(self) -> tuple[list[tuple], np.ndarray, np.ndarray]:
        """The distinct (class, group, prompt, output) of the arrivals (sorted as np.unique
        sorts them), their indices in order of first arrival, and each request's index."""
        arr = self.arr
        if len(arr) == 0:
            return [], np.zeros(0, np.intp), np.zeros(0, np.intp)
        cols = [np.asarray(c, np.int64) for c in (arr.klass, arr.group, arr.prompt_tokens,
                                                   arr.output_tokens)]  # fmt: skip
        order = np.lexsort(cols[::-1])  # by class, then group, prompt, output; stable
        rows = np.stack([c[order] for c in cols], axis=1)
        new = np.ones(len(rows), bool)
        new[1:] = (rows[1:] != rows[:-1]).any(axis=1)
        of_request = np.empty(len(rows), np.intp)
        of_request[order] = np.cumsum(new) - 1
        first_order = np.argsort(order[new], kind="stable")  # first arrivals: a group's first
        return [tuple(r) for r in rows[new].tolist()], first_order, of_request

    def _record_static(self, pid: np.ndarray, plans: list[PlannedRequest]) -> None:
        """Plan columns of the requests with a static plan."""
        if not plans:
            return
        rec = self.rec
        model = pid >= 0
        at = pid[model]
        rec.deadline_s[model] = np.array([p.deadline_s for p in plans])[at]
        rec.planned_latency_s[model] = np.array([p.plan.latency for p in plans])[at]
        rec.plan_feasible[model] = np.array([p.plan.feasible for p in plans])[at]
        rec.server_work[model] = np.array([p.plan.server_work for p in plans])[at]
        rec.server_only_work[model] = np.array([p.server_only_work for p in plans])[at]
        rec.client_units[model] = np.array([p.plan.client_units for p in plans])[at]
        rec.switches[model] = np.array([p.plan.switches for p in plans])[at]

    def _record_synthetic(self, pid: np.ndarray) -> None:
        """Plan columns of validation requests: one server segment of the drawn time."""
        if not (pid == SYNTHETIC).any():
            return
        rec, arr, mix = self.rec, self.arr, self.ld.scenario.workload.mix
        idx = np.flatnonzero(pid == SYNTHETIC)
        service = arr.service_s[idx]
        deadline = np.empty(idx.size)
        klass = arr.klass[idx]
        for k, cls in enumerate(mix):
            on = klass == k
            if on.any():
                deadline[on] = cls.deadline_s or cls.deadline_factor * service[on]  # type: ignore[operator]
        rec.deadline_s[idx], rec.planned_latency_s[idx], rec.plan_feasible[idx] = (
            deadline, service, True,
        )  # fmt: skip
        rec.server_work[idx] = rec.server_only_work[idx] = service
        rec.client_units[idx], rec.switches[idx] = 0, 2

    def plan_at_arrival(
        self,
        i: int,
        live_load: Callable[[], tuple],
        live_batch: Callable[[], tuple[int, float, float]] | None = None,
    ) -> PlannedRequest:
        """Plan request i now and record its plan columns. A load-aware planner sees
        `live_load()` (expected server wait s, whether the server is busy) and a
        batching-aware one `live_batch()` (requests in the server's running batch, the
        residual wait s for its iteration, its KV headroom in bytes); the
        link estimate is the oracle's current bandwidth, the EWMA's or the nominal one."""
        planner = self.planner
        wait, busy = live_load() if planner.load_aware else (0.0, False)
        batch = live_batch() if planner.batched and live_batch is not None else (0, 0.0, np.inf)
        up, down = self.link_mbps(self.links[self.group[i]])
        planned = planner.get_at(self.keys[i], wait, up, down, busy, batch)
        self.rec.plan(i, planned)
        return planned

    def link_mbps(self, link: LinkModel) -> tuple[float, float]:
        """A link's (uplink, downlink) Mb/s as planning sees it now: the oracle's current
        bandwidth, the EWMA's estimate or the nominal one (`split.link_estimate`)."""
        if self.link_estimate == "oracle":
            now = self.env.now
            return link.mbps(UP, now), link.mbps(DOWN, now)
        if self.link_estimate == "ewma":
            return link.estimate_mbps
        return link.nominal_mbps

    # --- arrivals ------------------------------------------------------------------------

    def arrival_process(self, admit: Callable[[int], None]) -> Iterator:
        """The SimPy process admitting every request at its arrival time, then waiting out
        `duration_s`; it stops early when `max_in_flight` requests are in the system (the
        overload stop)."""
        env, rec = self.env, self.rec
        times, duration = self.arr.time_s.tolist(), self.ld.scenario.duration_s
        timeout, progress = env.timeout, self.progress
        report_every = max(1, len(times) // 100)
        cap = self.max_in_flight or len(times) + 1  # in flight never exceeds the arrivals
        for i in range(len(times)):
            gap = times[i] - env.now
            if gap > 0:
                yield timeout(gap)
            admit(i)
            if progress and i % report_every == 0:
                progress(i)
            if rec.in_flight >= cap:
                self.overload_stop_s, self.arrived = env.now, i + 1
                return
        if duration is not None and env.now < duration:
            yield env.timeout(duration - env.now)
