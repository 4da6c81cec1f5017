"""The server's slots (SimPy) and the live load estimates load-aware policies read."""

from __future__ import annotations

import math

import simpy

from sim.engine.levels import ServerLevels

# Recent utilisation is averaged over this many mean hold times (exponential window): long
# enough to smooth single segments, short enough to follow a load change within a second of
# simulated time at typical hold times of a few milliseconds.
UTIL_WINDOW_HOLDS = 50


class ServerPool:
    """Server slots (a SimPy resource; a priority resource for EDF) whose busy slots and
    queue length are kept, time-weighted, in `levels` (a `ServerLevels`).

    Levels change at every request, grant and release, so utilisation and mean queue
    length are exact time averages, not samples. The pool also keeps the live state of
    load-aware planning: the expected wait of a new segment and the recent utilisation.
    """

    def __init__(
        self,
        env: simpy.Environment,
        slots: int,
        edf: bool,
        max_queue: int | None,
        hold_alpha: float = 0.1,
        track_recent: bool = True,
    ):
        """`track_recent`: keep `recent_utilization` (off when no policy reads it)."""
        self.env = env
        self.slots = slots
        self.edf = edf
        self.max_queue = max_queue
        # FIFO needs no sorting: SimPy's priority queue re-sorts on every request, which
        # is quadratic in the queue length under overload
        self.resource = (
            simpy.PriorityResource(env, capacity=slots) if edf else simpy.Resource(env, slots)
        )
        self.levels = ServerLevels(slots)
        self._levels_change = self.levels.change
        # live state for load-aware planning (no effect on the simulation itself)
        self.hold_alpha = hold_alpha
        self.hold_ewma_s: float | None = None  # EWMA of finished hold times, seeded by the first
        self._ends_sum = 0.0  # sum of the end times of the segments in service
        self._util_ewma = 0.0  # busy share, exponentially weighted over UTIL_WINDOW_HOLDS holds
        self._util_t = 0.0  # when `_util_ewma` was last advanced
        self.track_recent = track_recent

    @property
    def queue_length(self) -> int:
        return self.levels.queue_length

    @property
    def busy_slots(self) -> int:
        return self.levels.busy_slots

    def full(self) -> bool:
        """True when `max_queue` requests already wait for a slot (a new one would be lost)."""
        return self.max_queue is not None and len(self.resource.queue) >= self.max_queue

    def _change(self, d_queue: int, d_busy: int) -> None:
        """Advance the recent-utilisation EWMA to now, then change the levels."""
        now = self.env.now
        if self.track_recent:
            dt = now - self._util_t
            if dt:
                self._util_t = now
                if self.hold_ewma_s is not None:
                    self._util_ewma = self._decayed(dt)
        self._levels_change(now, d_queue, d_busy)

    def request(self, priority: float):
        """Ask for a slot; the caller yields the returned event, then calls `granted`."""
        self._change(1, 0)
        if self.edf:
            return self.resource.request(priority=priority)
        return self.resource.request()

    def granted(self, hold_s: float = 0.0) -> None:
        """A slot is granted for `hold_s` seconds (kept for the residual of busy slots)."""
        self._change(-1, 1)
        self._ends_sum += self.env.now + hold_s

    def release(self, req, held_s: float) -> None:
        self._change(0, -1)
        self.levels.held(held_s)
        self._ends_sum = self._ends_sum - self.env.now if self.levels.busy_slots else 0.0
        ewma = self.hold_ewma_s
        a = self.hold_alpha
        self.hold_ewma_s = held_s if ewma is None else a * held_s + (1 - a) * ewma
        self.resource.release(req)

    def expected_wait_s(self) -> float:
        """Expected wait of a segment joining the queue now (FIFO, all slots alike).

        Zero while a slot is free and nobody waits; otherwise (residual hold time of the busy
        slots + queue length x EWMA of recent hold times) / slots. Before the first hold has
        finished, the mean residual of the segments in service stands in for the EWMA.
        """
        busy, queue = self.levels.busy_slots, self.levels.queue_length
        if busy < self.slots and queue == 0:
            return 0.0
        now = self.env.now
        residual = max(self._ends_sum - busy * now, 0.0)
        mean_hold = self.hold_ewma_s
        if mean_hold is None:
            mean_hold = residual / busy if busy else 0.0
        return (residual + queue * mean_hold) / self.slots

    def _decayed(self, dt: float) -> float:
        """The recent-utilisation EWMA advanced by `dt` seconds at the current busy level."""
        weight = math.exp(-dt / (UTIL_WINDOW_HOLDS * self.hold_ewma_s))
        return self._util_ewma * weight + (self.levels.busy_slots / self.slots) * (1 - weight)

    def recent_utilization(self) -> float:
        """Share of slots busy, exponentially weighted over the last `UTIL_WINDOW_HOLDS`
        mean hold times (0 until the first hold has finished): the live load signal of
        load-aware policies."""
        if self.hold_ewma_s is None:
            return 0.0
        return self._decayed(self.env.now - self._util_t)

    def finish(self) -> None:
        """Close the levels at the current time."""
        self._change(0, 0)
