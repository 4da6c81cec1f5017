"""Routers of a fleet (`routing.policy`): which server takes a request, decided at arrival.

Each router sees what a real one could: the servers that hold the request's model, the
requests each has outstanding (routed there, not finished or rejected), a server's
expected wait (`ServerPool.expected_wait_s`: its busy slots' residual and its queue times
the mean of its recent holds, per slot), the request's own server-only time on each
device, and (`split_aware`) the allocation policy's plan for each site. Ties go to the
server listed first, so identical servers fill in order.
"""

from __future__ import annotations

import numpy as np

# random draws are made in blocks of this many (one numpy call per block, not per request)
_BLOCK = 4096


class Router:
    """Picks a server per request; `chosen` keeps a plan a router already made for it."""

    def __init__(self, fleet, rng: np.random.Generator):
        self.fleet = fleet
        self.rng = rng
        self.chosen: dict[int, object] = {}
        self._uniform: list[float] = []  # a block of U[0, 1) draws, used from the end
        slots = [pool.slots for pool in fleet.servers]
        self.equal_slots = len(set(slots)) == 1

    def route(self, i: int) -> int:
        raise NotImplementedError

    def below(self, n: int) -> int:
        """A uniform integer in [0, n), from the router's stream."""
        if not self._uniform:
            self._uniform = self.rng.random(_BLOCK).tolist()
        return int(self._uniform.pop() * n)

    def fewest_outstanding(self, servers: list[int]) -> int:
        """The first of `servers` with the fewest outstanding requests per slot."""
        out = self.fleet.outstanding
        if self.equal_slots:
            return min(servers, key=out.__getitem__)
        pools = self.fleet.servers
        return min(servers, key=lambda s: out[s] / pools[s].slots)


class RoundRobin(Router):
    """Servers in turn (among those holding the model)."""

    def __init__(self, fleet, rng):
        super().__init__(fleet, rng)
        self._next = 0

    def route(self, i: int) -> int:
        servers = self.fleet.eligible(i)
        s = servers[self._next % len(servers)]
        self._next += 1
        return s


class Random(Router):
    """A server drawn uniformly (among those holding the model)."""

    def route(self, i: int) -> int:
        servers = self.fleet.eligible(i)
        return servers[self.below(len(servers))]


class LeastOutstanding(Router):
    """The server with the fewest outstanding requests per slot (join the shortest queue)."""

    def route(self, i: int) -> int:
        return self.fewest_outstanding(self.fleet.eligible(i))


class PowerOfTwo(Router):
    """Two distinct servers drawn at random, the one with fewer outstanding per slot (the
    supermarket model's d = 2); the first drawn on a tie."""

    def route(self, i: int) -> int:
        servers = self.fleet.eligible(i)
        n = len(servers)
        if n == 1:
            return servers[0]
        a = self.below(n)
        b = self.below(n - 1)
        b += b >= a  # two distinct servers, uniformly
        return self.fewest_outstanding([servers[a], servers[b]])


class ShortestExpectedWait(Router):
    """The server where the request would finish its server work first: the expected wait
    there plus its own server-only time on that device."""

    def route(self, i: int) -> int:
        return shortest_expected_wait(self.fleet, i)


def shortest_expected_wait(fleet, i: int) -> int:
    """The eligible server with the least expected wait plus request i's own time there."""
    return min(
        fleet.eligible(i),
        key=lambda s: fleet.servers[s].expected_wait_s() + fleet.server_only_s(i, s),
    )


class SplitAware(Router):
    """Routing and splitting chosen together: for each server the allocation policy's
    plan for its site (at that server's live wait, for a load-aware policy), its latency
    with that wait at every server segment, and its server work per slot. The least work
    per slot among the plans that meet the SLA; if none does, the least latency."""

    def route(self, i: int) -> int:
        fleet = self.fleet
        if fleet.is_synthetic(i):  # nothing to split: the shortest expected wait
            return shortest_expected_wait(fleet, i)
        if not fleet.plans_at_arrival:
            return self._route_static(i)
        best = None
        for s in fleet.eligible(i):
            planned = fleet.plan_for(i, s)
            score = self._score(planned, fleet.servers[s], fleet.servers[s].expected_wait_s())
            if best is None or score < best[0]:
                best = (score, s, planned)
        _, s, planned = best  # type: ignore[misc]
        self.chosen[i] = planned  # the plan made now is the one the request runs
        return s

    def _route_static(self, i: int) -> int:
        """As `route` for plans made before the run: the servers of a group share one plan
        and one number of slots, so within a group only the least expected wait can win
        (the first such server); one plan per group is scored."""
        fleet = self.fleet
        best = None
        for servers in fleet.eligible_by_group(i):
            waits = [fleet.servers[s].expected_wait_s() for s in servers]
            k = min(range(len(servers)), key=waits.__getitem__)
            s = servers[k]
            planned = fleet.plan_for(i, s)
            score = self._score(planned, fleet.servers[s], waits[k])
            if best is None or score < best[0]:
                best = (score, s)
        return best[1]  # type: ignore[index]

    def _score(self, planned, pool, wait_s: float) -> tuple:
        """(0, work per slot, latency) for a plan that meets the SLA at `wait_s` per server
        segment, else (1, latency, work per slot): smaller is better."""
        latency = planned.plan.latency + wait_s * self.fleet.entries(planned)
        work = planned.plan.server_work / pool.slots
        meets = planned.plan.feasible and latency <= planned.deadline_s
        return (0, work, latency) if meets else (1, latency, work)


ROUTERS = {
    "round_robin": RoundRobin,
    "random": Random,
    "least_outstanding": LeastOutstanding,
    "power_of_two": PowerOfTwo,
    "shortest_expected_wait": ShortestExpectedWait,
    "split_aware": SplitAware,
}


def make_router(policy: str, fleet, rng: np.random.Generator) -> Router:
    """The router named by `routing.policy` over `fleet` (a `FleetSimulation`)."""
    return ROUTERS[policy](fleet, rng)
