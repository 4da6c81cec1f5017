"""Client links: bandwidth (constant or a piecewise-constant trace), RTT, jitter, sharing."""

from __future__ import annotations

from bisect import bisect_right

import numpy as np
import simpy

from sim.config.scenario import LinkConfig

UP, DOWN = 0, 1


class Medium:
    """A medium several clients share: one transfer at a time per direction.

    Request granularity queues transfers FIFO on a SimPy resource per direction (`channels`).
    Token granularity computes transfers as delays when a request reaches them, possibly a
    little ahead of the simulation clock, so it books them instead (`reserve`): each takes
    the earliest gap in the direction's calendar that starts at or after its ready time.
    """

    def __init__(self, env: simpy.Environment, name: str):
        self.name = name
        self.channels = (simpy.Resource(env, 1), simpy.Resource(env, 1))
        self._booked: tuple[list, list] = ([], [])  # (start, end) per direction, by start

    def reserve(self, direction: int, ready_s: float, duration_s: float, now_s: float) -> float:
        """Book `duration_s` of the medium in `direction` at the earliest gap from `ready_s`
        on, and return its start. Bookings that ended by `now_s` are forgotten (no transfer
        asks for time before the clock)."""
        booked = self._booked[direction]
        del booked[: bisect_right(booked, now_s, key=_end)]
        start = ready_s
        i = bisect_right(booked, ready_s, key=_end)  # bookings ending after ready_s
        while i < len(booked) and booked[i][0] < start + duration_s:
            start = max(start, booked[i][1])
            i += 1
        booked.insert(i, (start, start + duration_s))
        return start


def _end(booking: tuple[float, float]) -> float:
    return booking[1]


class LinkModel:
    """One client group's link as seen by the simulation.

    A transfer's serialisation time uses the bandwidth in force when it starts; half the
    RTT per crossing is propagation (it does not occupy a shared medium); jitter adds a
    random delay per transfer.
    """

    def __init__(
        self,
        cfg: LinkConfig,
        trace: np.ndarray | None,
        medium: Medium | None,
        jitter_rng: np.random.Generator | None,
    ):
        self.nominal_mbps = (cfg.uplink_mbps, cfg.downlink_mbps)
        self.half_rtt_s = cfg.rtt_ms * 1e-3 / 2
        self.trace = trace
        self.medium = medium
        self.jitter = cfg.jitter.delay_ms if cfg.jitter else None
        self.jitter_rng = jitter_rng
        # `split.link_estimate: ewma`: the group's estimated bandwidth per direction (Mbit/s)
        self.estimate_mbps = list(self.nominal_mbps)

    def observe(self, direction: int, bytes_: float, seconds: float, alpha: float) -> None:
        """Fold a transfer's realised serialisation rate into the EWMA estimate.

        The rate is bytes over the time from asking for the medium to releasing it (just the
        serialisation time on an unshared link). Fixed links realise their nominal rate, so
        they are not observed (the estimate stays nominal exactly).
        """
        if bytes_ <= 0 or seconds <= 0 or self.fixed:
            return
        rate = bytes_ * 8.0 / seconds / 1e6
        est = self.estimate_mbps
        est[direction] = alpha * rate + (1 - alpha) * est[direction]

    def mbps(self, direction: int, now_s: float) -> float:
        """Bandwidth in force at `now_s` (the configured value when there is no trace)."""
        if self.trace is None:
            return self.nominal_mbps[direction]
        i = int(np.searchsorted(self.trace[:, 0], now_s, side="right")) - 1
        return float(self.trace[max(i, 0), 1 + direction])

    def serialisation_s(self, direction: int, bytes_: float, now_s: float) -> float:
        return bytes_ * 8.0 / (self.mbps(direction, now_s) * 1e6)

    @property
    def fixed(self) -> bool:
        """True when every transfer of given size takes the same time (no trace, jitter or
        shared medium), so the engine can compute it once per plan."""
        return self.trace is None and self.jitter is None and self.medium is None

    def fixed_s(self, direction: int, bytes_: float, crossings: float) -> float:
        """A transfer's time on a `fixed` link: exactly what `_transfer` would wait."""
        return self.serialisation_s(direction, bytes_, 0.0) + self.delay_s(crossings)

    def delay_s(self, crossings: float) -> float:
        """Propagation plus jitter of one transfer."""
        extra = 0.0
        if self.jitter is not None:
            extra = float(self.jitter.sample(self.jitter_rng, 1)[0]) * 1e-3
        return crossings * self.half_rtt_s + extra
