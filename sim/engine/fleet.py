"""The request engine over a fleet of servers (`servers:`): a router picks each request's
server at arrival, and the request runs its plan for that server's site there (the token
engine's fleet: `sim.engine.token_fleet`, sharing `FleetBase`).

Each server group is a site (`sim.config.fleet.site_view`): its own placement problems
(its device's unit times, the client groups' links to it), its own planner for the policy
and its own link models (jitter from streams of their own). Every server is a
`ServerPool` with its group's slots, queue order and `max_queue`. A request's plan is the
policy's plan for its routed site, made at arrival (a load-aware policy plans with that
server's expected wait); a split request uses one server for all its server segments.

Routers see only what a real router could see at arrival (`sim.engine.routing`): the
requests each server has outstanding (routed, not yet finished or rejected), its
queue and the hold times of its recent segments, and, for `split_aware`, the plans the
allocation policy makes for each site.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sim.config import LoadedScenario
from sim.config.fleet import holds, site_view
from sim.engine.heap import frozen_heap
from sim.engine.levels import merged_levels
from sim.engine.plan_batch import prefetch
from sim.engine.planner import SERVER, Planner, ProblemBook
from sim.engine.recorder import RequestRecorder, RunResult
from sim.engine.resources import ServerPool
from sim.engine.routing import Router, make_router
from sim.engine.run import Simulation
from sim.engine.setup import SYNTHETIC, build_links
from sim.engine.workload import Arrivals

# spawn keys of the fleet's own streams under the replication's jitter seed (far from the
# keys `SeedSequence.spawn` hands out, so no stream is shared)
_ROUTING_KEY, _SITE_KEY = 1_000_000, 1_000_001


class FleetBooks(list):
    """One `ProblemBook` per server group (site), shared by every policy of a run."""

    @classmethod
    def of(cls, ld: LoadedScenario) -> FleetBooks:
        """The books of every site; each knows the others (`ProblemBook.peers`), so a
        relative SLA is a multiple of the least server-only latency over the fleet."""
        books = cls(ProblemBook(site_view(ld, g)) for g in range(len(ld.group_devices)))
        for book, group in zip(books, ld.scenario.servers or [], strict=True):
            book.peers = [b for b in books if b is not book]
            book.models_held = None if group.models is None else frozenset(group.models)
        return books


def child_seed(seed: np.random.SeedSequence, *key: int) -> np.random.SeedSequence:
    """A stream of its own under `seed`, named by `key` (does not advance `seed.spawn`)."""
    return np.random.SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, *key))


class FleetRecorder(RequestRecorder):
    """The run's record, counting each server's outstanding requests down as they end."""

    def __init__(self, n: int, fleet: FleetBase):
        super().__init__(n)
        self._fleet = fleet

    def completed(self, i: int, *args: float) -> None:
        super().completed(i, *args)
        self._fleet.outstanding[self._fleet._server_of[i]] -= 1

    def rejected(self, i: int, *args: float) -> None:
        super().rejected(i, *args)
        self._fleet.outstanding[self._fleet._server_of[i]] -= 1


class FleetBase:
    """What both engines' fleets share: the servers, the sites' links, the router and
    what it reads (outstanding requests, eligible servers, plans per site)."""

    planners: list[Planner]

    def _init_fleet(self, ld: LoadedScenario, arrivals: Arrivals, jitter_seed, servers) -> None:
        """The fleet's state over `servers` (one per fleet server, in fleet order)."""
        sc, env = ld.scenario, self.env  # type: ignore[attr-defined]
        self.groups = sc.servers
        self.sites = ld.fleet
        self.servers = servers
        self.site_links = [
            build_links(env, site_view(ld, g), child_seed(jitter_seed, _SITE_KEY, g))
            for g in range(len(self.groups))
        ]
        self.outstanding = [0] * len(self.sites)  # routed, neither finished nor rejected
        self._group_of = [site.group for site in self.sites]
        self.rec = self.setup.rec = FleetRecorder(len(arrivals), self)  # type: ignore[attr-defined]
        self._server_of = [-1] * len(arrivals)  # per request: its server (a list: hot path)
        self._entries: dict[int, int] = {}
        rng = np.random.default_rng(child_seed(jitter_seed, _ROUTING_KEY))
        self.router: Router = make_router(sc.routing.policy, self, rng)
        mix = sc.workload.mix
        self._eligible = [
            [s for s, site in enumerate(self.sites)
             if holds(self.groups[site.group], None if c.task == "synthetic" else c.model)]
            for c in mix
        ]  # fmt: skip
        self._eligible_groups = [
            [servers for servers in ([s for s in eligible if self._group_of[s] == g]
                                     for g in range(len(self.groups))) if servers]
            for eligible in self._eligible
        ]  # fmt: skip

    def eligible_by_group(self, i: int) -> list[list[int]]:
        """The servers that hold request i's model, per server group (in fleet order)."""
        return self._eligible_groups[int(self.arr.klass[i])]  # type: ignore[attr-defined]

    def eligible(self, i: int) -> list[int]:
        """The servers that hold request i's model."""
        return self._eligible[int(self.arr.klass[i])]  # type: ignore[attr-defined]

    def entries(self, planned) -> int:
        """Server segments of a plan (each waits for the server once)."""
        found = self._entries.get(id(planned))
        if found is None:
            found = self._entries[id(planned)] = sum(seg[0] == SERVER for seg in planned.segments)
        return found


class FleetSimulation(FleetBase, Simulation):
    """`Simulation` with one server pool per fleet server and a router (see module doc)."""

    def __init__(
        self,
        ld: LoadedScenario,
        policy: str,
        arrivals: Arrivals,
        jitter_seed: np.random.SeedSequence,
        book: FleetBooks,
        progress: Callable[[int], None] | None = None,
        log: list | None = None,
        planner: Planner | None = None,
    ):
        """`book`: the sites' problem books (`FleetBooks`); `planner` is not supported
        (each site plans for itself)."""
        if planner is not None:
            raise ValueError("a fleet plans per site; pass no planner")
        self.planners = [Planner(b, policy) for b in book]
        super().__init__(ld, policy, arrivals, jitter_seed, book[0], progress, log,
                         self.planners[0])  # fmt: skip
        servers = [
            ServerPool(
                self.env,
                ld.scenario.servers[s.group].slots,
                ld.scenario.servers[s.group].discipline == "edf",
                ld.scenario.servers[s.group].max_queue,
                hold_alpha=ld.scenario.split.wait_ewma_alpha,
                track_recent=self.setup.load_aware,
            )  # fmt: skip
            for s in ld.fleet
        ]
        self._init_fleet(ld, arrivals, jitter_seed, servers)
        self._links = self.site_links[0]  # `links` (e.g. tests reading link state)
        self.server = self.servers[0]  # the base class's one pool: finished with the rest
        self._site_programs: dict[tuple[int, int], tuple] = {}

    # --- set-up --------------------------------------------------------------------------

    def prepare(self) -> None:
        """A request's server is known at its arrival only. A static policy's plans are
        made before the run for every distinct size at every site that holds its model
        (the request takes its site's at arrival; its plan columns are recorded in bulk
        after the run); a dynamic one's at arrival, for the server routed to. Validation
        requests keep their drawn service time (`RunSetup.index_plans` for their columns)."""
        setup = self.setup
        setup.keys = list(zip(
            self.arr.klass.tolist(), self.arr.group.tolist(),
            self.arr.prompt_tokens.tolist(), self.arr.output_tokens.tolist(), strict=True,
        ))  # fmt: skip
        mix = self.ld.scenario.workload.mix
        synthetic = np.array([c.task == "synthetic" for c in mix])[self.arr.klass]
        setup.plan_of = np.where(synthetic, SYNTHETIC, 0).tolist()
        setup._record_synthetic(np.asarray(setup.plan_of))
        self._plan_of = setup.plan_of
        self._service = setup.service
        self._deadline = self.rec.deadline_s.tolist()  # filled per request at arrival
        distinct, _, of_request = setup._distinct_keys()
        self._of_request = of_request
        self._of_request_list = of_request.tolist()
        self._static = None
        if not self.planners[0].dynamic:
            with frozen_heap():
                self._static = [self._site_plans(g, distinct) for g in range(len(self.groups))]

    def _site_plans(self, g: int, distinct: list[tuple]) -> list[tuple | None]:
        """Per distinct size: (program, plan) at site g, or None where g cannot serve it."""
        mix = self.ld.scenario.workload.mix
        group = self.groups[g]
        servable = [
            k for k in distinct if mix[k[0]].task != "synthetic" and holds(group, mix[k[0]].model)
        ]
        planner, links = self.planners[g], self.site_links[g]
        prefetch(planner, servable)
        out: list[tuple | None] = []
        for key in distinct:
            if mix[key[0]].task == "synthetic" or not holds(group, mix[key[0]].model):
                out.append(None)
                continue
            planned = planner.get(*key)
            out.append((self._program(key[1], planned, links), planned))
        return out

    # --- routing and planning ------------------------------------------------------------

    @property
    def plans_at_arrival(self) -> bool:
        """Whether requests are planned at arrival (a dynamic policy), not before the run."""
        return self._static is None

    def is_synthetic(self, i: int) -> bool:
        """Whether request i is a validation request (a drawn service time, no model)."""
        return self._plan_of[i] == SYNTHETIC

    def plan_for(self, i: int, s: int):
        """Request i's plan for server s (its site's planner, at that server's live load)."""
        g = self.sites[s].group
        if self._static is not None:
            return self._static[g][self._of_request_list[i]][1]
        planner = self.planners[g]
        key = self.setup.keys[i]
        server = self.servers[s]
        wait, busy = server.expected_wait_s(), False
        limit = self.busy_utilization
        if planner.load_aware and limit < 1:
            busy = server.recent_utilization() >= limit
        link = self.site_links[g][key[1]]
        up, down = self.setup.link_mbps(link)
        return planner.get_at(key, wait if planner.load_aware else 0.0, up, down, busy)

    def server_only_s(self, i: int, s: int) -> float:
        """Request i's server-only time on server s (its drawn time for a validation one)."""
        if self.is_synthetic(i):
            return self._service[i]
        g = self.sites[s].group
        return float(self.planners[g].book.get(*self.setup.keys[i]).problem.server_time.sum())

    # --- requests ------------------------------------------------------------------------

    def _admit(self, i: int) -> None:
        env, log = self.env, self.log
        if log is not None:
            log.append((env.now, "arrive", i))
        s = self.router.route(i)
        self._server_of[i] = s
        self.outstanding[s] += 1
        g = self._group_of[s]
        if self._plan_of[i] == SYNTHETIC:
            service = self._service[i]
            segments = ((SERVER, service),)
            program = (segments, segments, True, service, 0.0, 0.0)
        elif self._static is not None:
            program, planned = self._static[g][self._of_request_list[i]]
            self._deadline[i] = planned.deadline_s
        else:
            program = self._site_program(i, s, g)
        self.rec.admitted()
        server, links = self.servers[s], self.site_links[g]
        if log is None:
            env.process(self._run_program(i, program, server, links))
        else:
            env.process(self._request(i, program[1], self._deadline[i], server, links))

    def _site_program(self, i: int, s: int, g: int) -> tuple:
        """Request i's program for server s (of group g), planned now and recorded."""
        planned = self.router.chosen.pop(i, None) or self.plan_for(i, s)
        self.rec.plan(i, planned)
        self.rec.deadline_s[i] = self._deadline[i] = planned.deadline_s
        key = (g, id(planned))
        found = self._site_programs.get(key)
        if found is None:
            group = self.setup.group[i]
            found = self._site_programs[key] = (
                self._program(group, planned, self.site_links[g]), planned,
            )  # fmt: skip
        return found[0]

    def _before_result(self) -> None:
        """Every server closed at the end; a static policy's plan columns in bulk, each
        request's from its server's site."""
        for pool in self.servers[1:]:
            pool.finish()
        self.server_of = np.array(self._server_of, np.int32)
        if self._static is None:
            return
        # each routed request's plan: its (site, size) in one flat list, as `_record_static`
        # takes the plans of a single server
        flat: list = []
        table = np.full((len(self._static), len(self._static[0])), -1, np.intp)
        for g, plans in enumerate(self._static):
            for d, found in enumerate(plans):
                if found is not None:
                    table[g, d] = len(flat)
                    flat.append(found[1])
        groups = np.array(self._group_of)[np.maximum(self.server_of, 0)]
        pid = np.where(self.server_of >= 0, table[groups, self._of_request], -1)
        pid[np.asarray(self._plan_of) == SYNTHETIC] = -1  # recorded before the run
        self.setup._record_static(pid, flat)

    # --- result --------------------------------------------------------------------------

    def _run(self) -> RunResult:
        res = super()._run()
        levels = [pool.levels for pool in self.servers]
        res.server = merged_levels(levels, float(self.env.now))
        res.fleet = tuple(levels)  # a tuple: never cut as a per-request list
        res.server_of = self.server_of[: len(res.arrivals)]  # cut as the arrivals were
        return res
