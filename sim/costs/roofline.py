"""Time of work on a device (roofline) and of activations on a link."""

from __future__ import annotations

import numpy as np

from sim.catalog.specs import DeviceSpec
from sim.costs.kernels import overheads_s
from sim.costs.work import RequestWork


def bound_s(compute_s, memory_s, non_overlap: float = 0.0):
    """Seconds of work whose compute takes `compute_s` and memory traffic `memory_s`.

    The roofline: the slower of the two. With `non_overlap` g > 0 (a device's
    `non_overlap`, fitted to measured GPU kernels), a share g of the faster one is not
    hidden behind the slower: max(x, y) + g * min(x, y) = max(x + g*y, y + g*x). That is
    the small-batch regime of real GEMMs near the ridge point, where neither bound holds.
    Both lines stay affine, so sums over decode steps keep their closed form
    (`summed_roofline_s`). With g = 0 the result is the plain maximum, bit for bit.
    """
    x, y = np.asarray(compute_s), np.asarray(memory_s)
    if not non_overlap:
        return np.maximum(x, y)
    return np.maximum(x + non_overlap * y, y + non_overlap * x)


def roofline_s(flops, bytes_, flops_per_s: float, bytes_per_s: float, non_overlap: float = 0.0):
    """Seconds for work that is either compute- or memory-bound, whichever is slower
    (plus the unhidden share `non_overlap` of the other: `bound_s`)."""
    return bound_s(np.asarray(flops) / flops_per_s, np.asarray(bytes_) / bytes_per_s, non_overlap)


def overlap_lines(x0, x1, y0, y1, non_overlap: float = 0.0):
    """The two affine lines of `bound_s` for per-step coefficients (x0 + x1*c, y0 + y1*c):
    the lines themselves when `non_overlap` is 0 (same objects), else x + g*y and y + g*x."""
    if not non_overlap:
        return x0, x1, y0, y1
    g = non_overlap
    return x0 + g * y0, x1 + g * y1, y0 + g * x0, y1 + g * x1


def summed_roofline_s(x0, x1, y0, y1, first: int, count: int) -> np.ndarray:
    """Sum over c = first .. first+count-1 of max(x0 + x1*c, y0 + y1*c), in closed form.

    Each decode step is compute-bound or memory-bound; both terms are affine in the
    context length c, so the two lines cross at most once and each side is an
    arithmetic series. Vectorised over units.
    """
    x0, x1, y0, y1 = (np.asarray(v, float) for v in (x0, x1, y0, y1))
    # `first` and `count` may be columns, one row per request size (`sim.costs.batched`,
    # which passes positive counts only)
    if not isinstance(count, np.ndarray) and count <= 0:
        return np.zeros(np.broadcast(x0, x1, y0, y1).shape)
    last = first + count - 1

    def series(a, b, lo, hi):
        n = np.maximum(hi - lo + 1, 0)
        return n * a + b * n * (lo + hi) / 2

    slope = x1 - y1
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        cross = np.where(slope != 0, (y0 - x0) / np.where(slope != 0, slope, 1), np.inf)
    # k: first context where x >= y when x grows faster; last where x >= y otherwise.
    split = np.clip(np.ceil(cross), first, last + 1)
    grows = slope > 0
    x_all = (slope == 0) & (x0 >= y0)
    low_x = series(x0, x1, first, split - 1)
    low_y = series(y0, y1, first, split - 1)
    high_x = series(x0, x1, split, last)
    high_y = series(y0, y1, split, last)
    total = np.where(grows, low_y + high_x, low_x + high_y)
    full_x = series(x0, x1, first, last)
    full_y = series(y0, y1, first, last)
    return np.where(slope == 0, np.where(x_all, full_x, full_y), total)


def unit_times_s(work: RequestWork, device: DeviceSpec, compute_dtype: str) -> np.ndarray:
    """Seconds each unit takes on `device` with nothing else running (prefill plus decode)."""
    f, b = device.flops_per_s(compute_dtype), device.bytes_per_s
    g = device.non_overlap
    overhead_s = overheads_s(work.kernels, device)  # per unit: `sim.costs.kernels`
    t = roofline_s(work.pass_flops, work.pass_bytes, f, b, g) + overhead_s * work.pass_runs
    if work.steps > 0:
        lines = overlap_lines(
            work.step_flops0 / f, work.step_flops1 / f, work.step_bytes0 / b,
            work.step_bytes1 / b, g,
        )  # fmt: skip
        t = t + summed_roofline_s(*lines, work.ctx_first, work.steps)
        t = t + overhead_s * work.steps * work.step_runs
    return t


def crossing_s(bytes_, mbps: float, rtt_ms: float) -> np.ndarray:
    """One crossing of a link: serialisation plus half the round trip (one-way latency)."""
    return np.asarray(bytes_) * 8.0 / (mbps * 1e6) + rtt_ms * 1e-3 / 2


def transfer_times_s(work: RequestWork, mbps: float, rtt_ms: float) -> np.ndarray:
    """Seconds to move each boundary's activations across a link in one direction.

    The pass crosses once; every decode step crosses again with one token's activation,
    which is what makes split decoding expensive.
    """
    t = crossing_s(work.act_pass, mbps, rtt_ms) * (work.act_pass > 0)
    if work.steps > 0:
        per_step = crossing_s(work.act_step, mbps, rtt_ms) * (work.act_step > 0)
        t = t + work.steps * per_step
    return t


def loop_time_s(work: RequestWork, mbps: float, rtt_ms: float) -> float:
    """Seconds the generated tokens spend crossing a link if fed back across it."""
    if work.steps <= 0:
        return 0.0
    return float(work.steps * crossing_s(work.loop_bytes, mbps, rtt_ms))
