"""The token engine over a fleet (`servers:` at `simulation.granularity: token`).

Every fleet server is a batching server of its own (`TokenServer`: its group's device and
KV memory, the scenario's batching settings, its group's queue order and `max_queue`),
each site with its own placement problems, planner and links (`sim.engine.fleet`). A
router picks each request's server at arrival (`sim.engine.routing`); the request is
planned then, for that server's site at its live state (a load-aware policy with its
iteration wait, a batching-aware one with its running batch), and all its passes and
decode steps run there. Routers read a token server's expected wait as the wait of a
pass through it now (`TokenServer.wait_per_pass_s`: the recent iteration time while it
iterates) and count each server as one slot (one iteration at a time).

The summary's batch size and KV memory are the fleet's sums (requests in running
iterations, KV held, over all servers); `servers.csv` has each server's.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import numpy as np

from sim.config import LoadedScenario
from sim.config.fleet import site_view
from sim.engine.fleet import FleetBase, FleetBooks
from sim.engine.levels import ServerLevels, merged_levels, summed_series
from sim.engine.planner import Planner
from sim.engine.recorder import RunResult
from sim.engine.token import TokenSimulation, TokenStats
from sim.engine.token_server import TokenServer
from sim.engine.workload import Arrivals


class TokenPool:
    """What a router reads of a token server: one slot, the wait of a pass through it."""

    slots = 1

    def __init__(self, ts: TokenServer):
        self.ts = ts

    def expected_wait_s(self) -> float:
        return self.ts.wait_per_pass_s()


class TokenFleetSimulation(FleetBase, TokenSimulation):
    """`TokenSimulation` with one batching server per fleet server and a router."""

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
        """`book`: the sites' problem books (`FleetBooks`); each site plans for itself."""
        if planner is not None:
            raise ValueError("a fleet plans per site; pass no planner")
        self.planners = [Planner(b, policy, wait_per_pass=True, shed=False) for b in book]
        super().__init__(ld, policy, arrivals, jitter_seed, book[0], progress, log,
                         self.planners[0])  # fmt: skip
        self.token_servers = [self._token_server(ld, book, site.group) for site in ld.fleet]
        self.token_server = self.token_servers[0]
        self.server = self.token_server.levels
        self._init_fleet(ld, arrivals, jitter_seed, [TokenPool(ts) for ts in self.token_servers])
        self.links = self.site_links[0]
        self._site_programs: dict[tuple[int, int], object] = {}

    def _token_server(self, ld: LoadedScenario, book: FleetBooks, g: int) -> TokenServer:
        """A batching server of group g: its site's device, book and queue settings."""
        view = site_view(ld, g)
        return TokenServer(self.env, view, book[g], ServerLevels(1), view.scenario.server.max_queue,
                           self._after_server, self._reject, self._split_step)  # fmt: skip

    # --- set-up --------------------------------------------------------------------------

    def prepare(self) -> None:
        """Requests are planned at arrival, for the server they are routed to."""
        setup = self.setup
        setup.keys = list(zip(
            self.arr.klass.tolist(), self.arr.group.tolist(),
            self.arr.prompt_tokens.tolist(), self.arr.output_tokens.tolist(), strict=True,
        ))  # fmt: skip
        setup.deadline = [0.0] * len(self.arr)

    # --- routing and planning ------------------------------------------------------------

    plans_at_arrival = True  # the plan a router makes is the one the request runs

    def is_synthetic(self, i: int) -> bool:
        return False  # token granularity has no validation requests

    def plan_for(self, i: int, s: int):
        """Request i's plan for server s (its site's planner, at that server's live state)."""
        g = self.sites[s].group
        planner = self.planners[g]
        key = self.setup.keys[i]
        if not planner.dynamic:
            return planner.get(*key)
        ts = self.token_servers[s]
        wait = ts.wait_per_pass_s() if planner.load_aware else 0.0
        batch = ts.live_batch() if planner.batched else (0, 0.0, float("inf"))
        up, down = self.setup.link_mbps(self.site_links[g][key[1]])
        return planner.get_at(key, wait, up, down, False, batch)

    def server_only_s(self, i: int, s: int) -> float:
        """Request i's server-only time (batch 1) on server s's device."""
        book = self.planners[self.sites[s].group].book
        return float(book.get(*self.setup.keys[i]).problem.server_time.sum())

    def _route(self, i: int) -> tuple:
        """Route request i, plan it for its server and record the plan."""
        s = self.router.route(i)
        self._server_of[i] = s
        self.outstanding[s] += 1
        planned = self.router.chosen.pop(i, None) or self.plan_for(i, s)
        self.rec.plan(i, planned)
        self.rec.deadline_s[i] = self.setup.deadline[i] = planned.deadline_s
        g = self.sites[s].group
        found = self._site_programs.get((g, id(planned)))
        if found is None:
            found = self._site_programs[(g, id(planned))] = self.build_token_program(
                self.planners[g].book, self.token_servers[s], self.setup.keys[i], planned
            )
        return found, self.site_links[g][self.setup.group[i]], self.token_servers[s]

    # --- result --------------------------------------------------------------------------

    def token_stats(self, ts) -> TokenStats:
        """The fleet's token metrics: its servers' series and counts summed."""
        parts = self.token_servers
        fleet = SimpleNamespace(
            **{name: summed_series([getattr(p, name) for p in parts])
               for name in ("series_tokens", "series_batch", "series_kv")},
            **{name: sum(getattr(p, name) for p in parts)
               for name in ("kv_capacity", "iterations", "preemptions", "visits",
                            "span_events", "step_events")},
        )  # fmt: skip
        return super().token_stats(fleet)

    def server_levels(self) -> ServerLevels:
        return merged_levels([ts.levels for ts in self.token_servers], float(self.env.now))

    def _run(self) -> RunResult:
        res = super()._run()
        n = len(res.arrivals)
        res.fleet = tuple(ts.levels for ts in self.token_servers)
        res.fleet_token = tuple(
            (ts.series_tokens, ts.series_batch, ts.series_kv) for ts in self.token_servers
        )
        res.server_of = np.array(self._server_of[:n], np.int32)
        return res
