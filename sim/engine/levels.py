"""Time-weighted levels: one piecewise-constant series type for every monitored quantity.

The server's busy slots and queue length (both engines), and at token granularity the
batch size, the KV memory in use and the cumulative tokens processed, are all kept as a
`LevelSeries`: its change points (time, level from then on) and the time-weighted mean,
maximum and binned means computed from them.

An empty window (end at or before start) has no mean and no maximum: both are NaN, as the
summary's other per-window metrics (throughput, latency) are for an empty window.
"""

from __future__ import annotations

from array import array

import numpy as np


class LevelSeries:
    """A piecewise-constant level over time, starting at 0 at time 0.

    Change points are compact arrays (8 bytes per time and per level). `set` keeps a point
    only where the level changes; `record` keeps one at every call, so several series fed
    at the same instants share their change times (the server's busy and queue levels), and
    the means are the same sums over the same intervals whichever way they were fed.
    """

    __slots__ = ("t", "level")

    def __init__(self) -> None:
        self.t = array("d", [0.0])
        self.level = array("d", [0.0])

    def set(self, now: float, value: float) -> None:
        """The level is `value` from `now` on (no point kept when it does not change)."""
        if self.t[-1] == now:
            self.level[-1] = value
        elif self.level[-1] != value:
            self.t.append(now)
            self.level.append(value)

    def record(self, now: float, value: float) -> None:
        """The level is `value` from `now` on; a change point is kept even when it is equal."""
        if self.t[-1] == now:
            self.level[-1] = value
        else:
            self.t.append(now)
            self.level.append(value)

    def extend(self, times: np.ndarray, values: np.ndarray) -> None:
        """`set` at each of the increasing `times` (all at or after the last change) in bulk."""
        if not len(times):
            return
        if self.t[-1] == times[0]:
            self.level[-1] = float(values[0])
            times, values = times[1:], values[1:]
        prev = np.concatenate(([self.level[-1]], values[:-1]))
        keep = values != prev
        self.t.frombytes(np.ascontiguousarray(times[keep], float).tobytes())
        self.level.frombytes(np.ascontiguousarray(values[keep], float).tobytes())

    @property
    def last(self) -> float:
        """The current level."""
        return self.level[-1]

    def at(self, time_s: float) -> float:
        """The level in force at `time_s` (the last change at or before it)."""
        return float(np.asarray(self.level)[np.asarray(self.t) <= time_s][-1])

    def mean(self, start_s: float, end_s: float) -> float:
        """Time-weighted mean level over [start_s, end_s] (NaN for an empty window)."""
        if end_s <= start_s:
            return float("nan")
        t, lv = np.asarray(self.t), np.asarray(self.level)
        edges = np.clip(np.append(t, end_s), start_s, end_s)
        return float(np.sum(lv * np.diff(edges)) / (end_s - start_s))

    def max(self, start_s: float, end_s: float) -> float:
        """Highest level in force at some time of [start_s, end_s] (NaN for an empty window)."""
        t, lv = np.asarray(self.t), np.asarray(self.level)
        nxt = np.append(t[1:], np.inf)
        on = (nxt > start_s) & (t <= end_s)
        return float(lv[on].max()) if on.any() else float("nan")

    def binned(self, end_s: float, bins: int) -> np.ndarray:
        """Time-weighted mean level in each of `bins` equal bins over [0, end_s] (no bins
        when end_s <= 0); `bin_centres` gives their times."""
        if end_s <= 0:
            return np.zeros(0)
        edges = np.linspace(0.0, end_s, bins + 1)
        t, lv = np.asarray(self.t), np.asarray(self.level)
        area = np.concatenate([[0.0], np.cumsum(lv * np.diff(np.append(t, end_s)))])
        i = np.clip(np.searchsorted(t, edges, side="right") - 1, 0, len(lv) - 1)
        at_edges = area[i] + lv[i] * (edges - t[i])  # area under the step curve up to each edge
        return np.diff(at_edges) / np.diff(edges)


def bin_centres(end_s: float, bins: int) -> np.ndarray:
    """Centre times of `LevelSeries.binned`'s bins (none when end_s <= 0)."""
    if end_s <= 0:
        return np.zeros(0)
    edges = np.linspace(0.0, end_s, bins + 1)
    return (edges[:-1] + edges[1:]) / 2


class ServerLevels:
    """A server's busy slots and queue length over time, with their running integrals.

    Both engines keep their server's state here: the request engine through `ServerPool`
    (SimPy slots), the token engine's batching server directly (one iteration is one busy
    slot). `busy_integral` and `busy_time_total` (the sum of finished holds) cross-check
    each other in tests.
    """

    def __init__(self, slots: int):
        self.slots = slots
        self.busy = LevelSeries()
        self.queue = LevelSeries()
        self.busy_slots = 0
        self.queue_length = 0
        self.busy_integral = 0.0
        self.queue_integral = 0.0
        self.busy_time_total = 0.0  # sum of finished hold times (s)
        self._last_t = 0.0

    def change(self, now: float, d_queue: int, d_busy: int) -> None:
        """Advance the integrals to `now`, then change the levels (a change point each)."""
        dt = now - self._last_t
        if dt:
            self.busy_integral += self.busy_slots * dt
            self.queue_integral += self.queue_length * dt
            self._last_t = now
        self.queue_length = queue = self.queue_length + d_queue
        self.busy_slots = busy = self.busy_slots + d_busy
        # `LevelSeries.record` on both, inlined: this runs three times per server segment
        busy_series, queue_series = self.busy, self.queue
        if busy_series.t[-1] == now:
            busy_series.level[-1] = busy
            queue_series.level[-1] = queue
        else:
            busy_series.t.append(now)
            busy_series.level.append(busy)
            queue_series.t.append(now)
            queue_series.level.append(queue)

    def queue_from_waits(self, starts: np.ndarray, ends: np.ndarray) -> None:
        """Make the queue length the number of waits in progress, each wait [start, end)
        counting one, with its integral: at token granularity a visit waits for the server
        from its ready time to the iteration it joins, whether or not it was admitted, so
        that the waits the requests record add up to the queue's integral."""
        series = LevelSeries()
        if len(starts):
            self._fill_queue(series, starts, ends)
        self.queue = series
        self.queue_length = int(series.last)
        self.queue_integral = float(np.sum(ends - starts))

    @staticmethod
    def _fill_queue(series: LevelSeries, starts: np.ndarray, ends: np.ndarray) -> None:
        """`series` from 0 to the count of waits [start, end) in progress."""
        times = np.concatenate((starts, ends))
        steps = np.concatenate((np.ones(len(starts)), -np.ones(len(ends))))
        order = np.argsort(times, kind="stable")
        times, level = times[order], np.cumsum(steps[order])
        last = np.append(times[1:] != times[:-1], True)  # the level after each instant
        series.extend(times[last], level[last])

    def held(self, seconds: float) -> None:
        """A slot was held for `seconds` (added to `busy_time_total`)."""
        self.busy_time_total += seconds

    def finish(self, now: float) -> None:
        """Close the integrals and the series at `now` (the end of the run)."""
        self.change(now, 0, 0)

    def utilization(self, start_s: float, end_s: float) -> float:
        """Time-weighted share of slots busy over [start_s, end_s] (NaN for an empty window)."""
        return self.busy.mean(start_s, end_s) / self.slots

    def mean_queue(self, start_s: float, end_s: float) -> float:
        """Time-weighted mean queue length over [start_s, end_s] (NaN for an empty window)."""
        return self.queue.mean(start_s, end_s)

    def binned(self, end_s: float, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bin centres and time-weighted mean busy slots and queue length per bin."""
        return (
            bin_centres(end_s, bins),
            self.busy.binned(end_s, bins),
            self.queue.binned(end_s, bins),
        )


def merged_levels(parts: list[ServerLevels], now: float) -> ServerLevels:
    """The fleet's levels: busy slots and queue lengths of `parts` summed over time (their
    slots, integrals and finished holds summed), closed at `now`."""
    out = ServerLevels(sum(p.slots for p in parts))
    out.busy, out.queue = (
        summed_series([getattr(p, name) for p in parts]) for name in ("busy", "queue")
    )
    out.busy_slots = sum(p.busy_slots for p in parts)
    out.queue_length = sum(p.queue_length for p in parts)
    out.busy_integral = sum(p.busy_integral for p in parts)
    out.queue_integral = sum(p.queue_integral for p in parts)
    out.busy_time_total = sum(p.busy_time_total for p in parts)
    out._last_t = now
    return out


def summed_series(series: list[LevelSeries]) -> LevelSeries:
    """The sum of piecewise-constant levels: each part's steps merged in time order."""
    times = np.concatenate([np.asarray(s.t) for s in series])
    steps = np.concatenate([np.diff(np.asarray(s.level), prepend=0.0) for s in series])
    order = np.argsort(times, kind="stable")
    times, level = times[order], np.cumsum(steps[order])
    last = np.append(times[1:] != times[:-1], True)  # the level after each instant
    out = LevelSeries()
    out.extend(times[last], level[last])
    return out
