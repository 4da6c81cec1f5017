"""The server's slots with time-weighted utilisation and queue length kept inside."""

from __future__ import annotations

import math
from array import array

import numpy as np
import simpy

# Recent utilisation is averaged over this many mean hold times (exponential window): long
# enough to smooth single segments, short enough to follow a load change within a second of
# simulated time at typical hold times of a few milliseconds.
UTIL_WINDOW_HOLDS = 50


class ServerPool:
    """Server slots (a SimPy resource; a priority resource for EDF) that integrate busy
    slots and queue length.

    Integrals advance at every change, so utilisation and mean queue length are exact
    time averages, not samples. Change points are kept (times and levels) for the time
    series; they grow with the number of server segments, two entries each.
    """

    def __init__(
        self,
        env: simpy.Environment,
        slots: int,
        edf: bool,
        max_queue: int | None,
        hold_alpha: float = 0.1,
    ):
        self.env = env
        self.slots = slots
        self.edf = edf
        self.max_queue = max_queue
        # FIFO needs no sorting: SimPy's priority queue re-sorts on every request, which
        # is quadratic in the queue length under overload
        self.resource = (
            simpy.PriorityResource(env, capacity=slots) if edf else simpy.Resource(env, slots)
        )
        self._last_t = 0.0
        self._busy = 0
        self._queue = 0
        self.busy_integral = 0.0
        self.queue_integral = 0.0
        self.busy_time_total = 0.0  # sum of hold times, for the cross-check
        self.change_t = array("d", [0.0])  # compact: 8 bytes per change point
        self.change_busy = array("l", [0])
        self.change_queue = array("l", [0])
        # live state for load-aware planning (no effect on the simulation itself)
        self.hold_alpha = hold_alpha
        self.hold_ewma_s: float | None = None  # EWMA of finished hold times, seeded by the first
        self._ends_sum = 0.0  # sum of the end times of the segments in service
        self._util_ewma = 0.0  # busy share, exponentially weighted over UTIL_WINDOW_HOLDS holds
        self.track_recent = True  # keep `recent_utilization` (off when no policy reads it)

    @property
    def queue_length(self) -> int:
        return self._queue

    @property
    def busy_slots(self) -> int:
        return self._busy

    def full(self) -> bool:
        """True when `max_queue` requests already wait for a slot (a new one would be lost)."""
        return self.max_queue is not None and len(self.resource.queue) >= self.max_queue

    def _change(self, d_queue: int, d_busy: int) -> None:
        """Advance the integrals to now, then change the levels and record the change point."""
        now = self.env.now
        dt = now - self._last_t
        if dt:
            self.busy_integral += self._busy * dt
            self.queue_integral += self._queue * dt
            self._last_t = now
            if self.track_recent and self.hold_ewma_s is not None:
                self._util_ewma = self._decayed(dt)
        self._queue = queue = self._queue + d_queue
        self._busy = busy = self._busy + d_busy
        if self.change_t[-1] == now:
            self.change_busy[-1] = busy
            self.change_queue[-1] = queue
        else:
            self.change_t.append(now)
            self.change_busy.append(busy)
            self.change_queue.append(queue)

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
        self.busy_time_total += held_s
        self._ends_sum = self._ends_sum - self.env.now if self._busy else 0.0
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
        busy, queue = self._busy, self._queue
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
        return self._util_ewma * weight + (self._busy / self.slots) * (1 - weight)

    def recent_utilization(self) -> float:
        """Share of slots busy, exponentially weighted over the last `UTIL_WINDOW_HOLDS`
        mean hold times (0 until the first hold has finished): the live load signal of
        load-aware policies."""
        if self.hold_ewma_s is None:
            return 0.0
        return self._decayed(self.env.now - self._last_t)

    def finish(self) -> None:
        """Close the integrals at the current time."""
        self._change(0, 0)

    def utilization(self, start_s: float, end_s: float) -> float:
        """Time-weighted share of slots busy over [start_s, end_s]."""
        return self._mean(self.change_busy, start_s, end_s) / self.slots

    def mean_queue(self, start_s: float, end_s: float) -> float:
        return self._mean(self.change_queue, start_s, end_s)

    def _mean(self, levels, start_s: float, end_s: float) -> float:
        if end_s <= start_s:
            return 0.0
        t = np.asarray(self.change_t)
        lv = np.asarray(levels, float)
        edges = np.clip(np.append(t, end_s), start_s, end_s)
        return float(np.sum(lv * np.diff(edges)) / (end_s - start_s))

    def binned(self, end_s: float, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bin centres and time-weighted mean busy slots and queue length per bin."""
        if end_s <= 0:
            return np.zeros(0), np.zeros(0), np.zeros(0)
        edges = np.linspace(0.0, end_s, bins + 1)
        t = np.asarray(self.change_t)
        width = np.diff(edges)

        def bin_means(levels) -> np.ndarray:
            lv = np.asarray(levels, float)
            area = np.concatenate([[0.0], np.cumsum(lv * np.diff(np.append(t, end_s)))])
            i = np.clip(np.searchsorted(t, edges, side="right") - 1, 0, len(lv) - 1)
            at_edges = area[i] + lv[i] * (edges - t[i])  # area under the step curve up to each edge
            return np.diff(at_edges) / width

        centres = (edges[:-1] + edges[1:]) / 2
        return centres, bin_means(self.change_busy), bin_means(self.change_queue)
