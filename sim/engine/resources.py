"""The server's slots with time-weighted utilisation and queue length kept inside."""

from __future__ import annotations

from array import array

import numpy as np
import simpy


class ServerPool:
    """Server slots (a SimPy priority resource) that integrate busy slots and queue length.

    Integrals advance at every change, so utilisation and mean queue length are exact
    time averages, not samples. Change points are kept (times and levels) for the time
    series; they grow with the number of server segments, two entries each.
    """

    def __init__(self, env: simpy.Environment, slots: int, edf: bool, max_queue: int | None):
        self.env = env
        self.slots = slots
        self.edf = edf
        self.max_queue = max_queue
        self.resource = simpy.PriorityResource(env, capacity=slots)
        self._last_t = 0.0
        self._busy = 0
        self._queue = 0
        self.busy_integral = 0.0
        self.queue_integral = 0.0
        self.busy_time_total = 0.0  # sum of hold times, for the cross-check
        self.change_t = array("d", [0.0])  # compact: 8 bytes per change point
        self.change_busy = array("l", [0])
        self.change_queue = array("l", [0])

    @property
    def queue_length(self) -> int:
        return self._queue

    @property
    def busy_slots(self) -> int:
        return self._busy

    def full(self) -> bool:
        """True when `max_queue` requests already wait for a slot (a new one would be lost)."""
        return self.max_queue is not None and len(self.resource.queue) >= self.max_queue

    def _advance(self) -> None:
        now = self.env.now
        dt = now - self._last_t
        if dt:
            self.busy_integral += self._busy * dt
            self.queue_integral += self._queue * dt
            self._last_t = now

    def _record(self) -> None:
        t = self.env.now
        if self.change_t[-1] == t:
            self.change_busy[-1] = self._busy
            self.change_queue[-1] = self._queue
        else:
            self.change_t.append(t)
            self.change_busy.append(self._busy)
            self.change_queue.append(self._queue)

    # request/granted/release are the engine's hot path: they inline `_advance` and
    # `_record` (same arithmetic, same order) to save the calls.

    def request(self, priority: float):
        """Ask for a slot; the caller yields the returned event, then calls `granted`."""
        now = self.env.now
        dt = now - self._last_t
        if dt:
            self.busy_integral += self._busy * dt
            self.queue_integral += self._queue * dt
            self._last_t = now
        self._queue = queue = self._queue + 1
        if self.change_t[-1] == now:
            self.change_busy[-1] = self._busy
            self.change_queue[-1] = queue
        else:
            self.change_t.append(now)
            self.change_busy.append(self._busy)
            self.change_queue.append(queue)
        return self.resource.request(priority=priority)

    def granted(self) -> None:
        now = self.env.now
        dt = now - self._last_t
        if dt:
            self.busy_integral += self._busy * dt
            self.queue_integral += self._queue * dt
            self._last_t = now
        self._queue = queue = self._queue - 1
        self._busy = busy = self._busy + 1
        if self.change_t[-1] == now:
            self.change_busy[-1] = busy
            self.change_queue[-1] = queue
        else:
            self.change_t.append(now)
            self.change_busy.append(busy)
            self.change_queue.append(queue)

    def release(self, req, held_s: float) -> None:
        now = self.env.now
        dt = now - self._last_t
        if dt:
            self.busy_integral += self._busy * dt
            self.queue_integral += self._queue * dt
            self._last_t = now
        self._busy = busy = self._busy - 1
        self.busy_time_total += held_s
        if self.change_t[-1] == now:
            self.change_busy[-1] = busy
            self.change_queue[-1] = self._queue
        else:
            self.change_t.append(now)
            self.change_busy.append(busy)
            self.change_queue.append(self._queue)
        self.resource.release(req)

    def finish(self) -> None:
        """Close the integrals at the current time."""
        self._advance()

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
        t = np.append(np.asarray(self.change_t), end_s)
        busy, queue = (np.asarray(x, float) for x in (self.change_busy, self.change_queue))
        cum_t = t
        area_b = np.concatenate([[0.0], np.cumsum(busy * np.diff(cum_t))])
        area_q = np.concatenate([[0.0], np.cumsum(queue * np.diff(cum_t))])

        def area(cum, x):
            i = np.clip(np.searchsorted(cum_t, x, side="right") - 1, 0, len(busy) - 1)
            level = (busy if cum is area_b else queue)[i]
            return cum[i] + level * (x - cum_t[i])

        width = np.diff(edges)
        mean_b = (area(area_b, edges[1:]) - area(area_b, edges[:-1])) / width
        mean_q = (area(area_q, edges[1:]) - area(area_q, edges[:-1])) / width
        return (edges[:-1] + edges[1:]) / 2, mean_b, mean_q
