"""The mean server-only time of a workload, computed from its size distributions.

`workload.arrival.load: x` offers x times the server-only capacity, slots / E[T] with T a
request's server-only time. E[T] is an expectation over the request mix and the sizes'
distributions, computed here rather than sampled:

- a size is an integer, `max(rint(X), 1)` of a draw X, so each distribution gives a
  probability per token count (fixed, uniform, clipped log-normal and exponential from
  their CDFs, the tails beyond 1e-13 dropped; empirical from its values);
- a forward pass's time is a function of the prompt: one batched evaluation per count;
- a generation's time is its prefill plus one decode step per further token, each step's
  time a function of its context alone (decoder-only models), so
  E[T] = E[prefill(P)] + sum over contexts c of step(c) x P(a step runs at context c),
  where P(a step at p + j) = sum over p of P(prompt p) P(output >= j + 1);
- synthetic service times use their distribution's mean.

Where that does not apply (a device with a measured cost table, encoder-decoder
generation, a size distribution with more than `MAX_SUPPORT` token counts) the mean is
estimated on `SAMPLE` requests drawn from a stream of their own.
"""

from __future__ import annotations

import math

import numpy as np

from sim.config import LoadedScenario
from sim.config.base import Empirical, Exponential, Fixed, LogNormal, Uniform
from sim.costs.batched import unit_times_many, work_batch
from sim.costs.kernels import overheads_s
from sim.costs.roofline import overlap_lines

MAX_SUPPORT = 200_000  # token counts of one size distribution computed exactly
SAMPLE = 20_000  # requests drawn where the mean cannot be computed
_TAIL = 1e-13  # probability left out beyond a distribution's computed range
_ROWS = 2048  # prompt counts per block of the decode-step sums


def _phi(z: np.ndarray) -> np.ndarray:
    """The standard normal CDF (no scipy: erf per element)."""
    erf = np.frompyfunc(math.erf, 1, 1)
    return 0.5 * (1.0 + erf(np.asarray(z, float) / math.sqrt(2.0)).astype(float))


def _lognormal_cdf(d: LogNormal, x: np.ndarray) -> np.ndarray:
    """P(median x e^(sigma Z) <= x), before the clip."""
    x = np.asarray(x, float)
    with np.errstate(divide="ignore"):
        z = (np.log(np.maximum(x, 0.0)) - math.log(d.median)) / d.sigma
    return _phi(z)


def token_pmf(dist, low: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The token counts `max(rint(X), low)` of a draw X and their probabilities, or None
    when there are more than `MAX_SUPPORT` of them."""
    if isinstance(dist, Fixed):
        return np.array([max(int(np.rint(dist.value)), low)]), np.ones(1)
    if isinstance(dist, Empirical):
        values = np.maximum(np.rint(dist.values), low).astype(np.int64)
        k, counts = np.unique(values, return_counts=True)
        return k, counts / counts.sum()
    cdf, atoms, lo, hi = _continuous(dist)
    if hi is None or hi - lo + 1 > MAX_SUPPORT:
        return None
    k = np.arange(lo, hi + 1)
    mass = np.maximum(cdf(k + 0.5) - cdf(k - 0.5), 0.0)
    for x, p in atoms:
        mass[int(np.rint(x)) - lo] += p
    return _floor(k, mass / mass.sum(), low)


def _continuous(dist):
    """(CDF without atoms, atoms [(value, probability)], lowest and highest count or None)."""
    if isinstance(dist, Uniform):
        if dist.high == dist.low:  # one value: all of it an atom
            return (lambda x: np.zeros(np.shape(x))), [(dist.low, 1.0)], *_range(dist.low, dist.low)
        width = dist.high - dist.low

        def cdf(x):
            return np.clip((np.asarray(x, float) - dist.low) / width, 0.0, 1.0)

        return cdf, [], *_range(dist.low, dist.high)
    if isinstance(dist, Exponential):

        def cdf(x):
            return 1.0 - np.exp(-np.maximum(np.asarray(x, float), 0.0) / dist.mean)

        return cdf, [], *_range(0.0, -dist.mean * math.log(_TAIL))
    if isinstance(dist, LogNormal):
        lo_x, hi_x = dist.min, dist.max
        below = float(_lognormal_cdf(dist, np.array([lo_x]))[0]) if lo_x > 0 else 0.0
        above = 1.0 - float(_lognormal_cdf(dist, np.array([hi_x]))[0]) if np.isfinite(hi_x) else 0.0
        top = hi_x if np.isfinite(hi_x) else dist.median * math.exp(dist.sigma * 7.5)

        def cdf(x):
            x = np.clip(np.asarray(x, float), lo_x, top)
            return _lognormal_cdf(dist, x) - below

        atoms = [(lo_x, below)] if below else []
        atoms += [(hi_x, above)] if above else []
        return cdf, atoms, *_range(lo_x, top)
    raise TypeError(f"no token distribution for {type(dist).__name__}")


def _range(lo: float, hi: float) -> tuple[int, int | None]:
    """The token counts from rint(lo) to rint(hi) (None: too many to list)."""
    a = int(np.rint(lo))
    if not np.isfinite(hi) or hi - lo > MAX_SUPPORT:
        return a, None
    return a, int(np.rint(hi))


def _floor(k: np.ndarray, p: np.ndarray, low: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts below `low` become `low` (their mass added to it)."""
    if k[0] >= low:
        keep = p > 0
        return k[keep], p[keep]
    under = k < low
    k2 = np.concatenate([[low], k[~under & (k > low)]])
    p2 = np.concatenate([[p[under].sum() + p[k == low].sum()], p[~under & (k > low)]])
    keep = p2 > 0
    return k2[keep], p2[keep]


def class_mean_s(ld: LoadedScenario, klass: int, granularity: str) -> float | None:
    """A request class's mean server-only time (s), or None where it cannot be computed."""
    cls = ld.scenario.workload.mix[klass]
    if cls.task == "synthetic":
        d = cls.service_s
        return float(d.expected)
    server = ld.server_device
    model = ld.models[cls.model]
    if server.cost_table is not None:
        return None
    prompts = token_pmf(cls.prompt_tokens, 1)
    if prompts is None:
        return None
    p, pp = prompts
    dtype = model.activation_dtype
    if cls.task == "forward":
        w = work_batch(model, "forward", p, np.zeros_like(p), granularity)
        return float(pp @ unit_times_many(w, server, dtype).sum(axis=1))
    if model.architecture == "encoder_decoder":
        return None
    outputs = token_pmf(cls.output_tokens, 1)
    if outputs is None:
        return None
    return _generate_mean(ld, klass, granularity, (p, pp), outputs)


def _generate_mean(ld: LoadedScenario, klass: int, granularity: str, prompts, outputs) -> float:
    """E[prefill(P)] + sum over contexts of step(c) x P(a step at c) (module doc)."""
    cls = ld.scenario.workload.mix[klass]
    model, server = ld.models[cls.model], ld.server_device
    dtype = model.activation_dtype
    (p, pp), (o, po) = prompts, outputs
    prefill = unit_times_many(work_batch(model, "generate", p, np.ones_like(p), granularity),
                              server, dtype).sum(axis=1)  # fmt: skip
    mean = float(pp @ prefill)
    steps_max = int(o.max()) - 1
    if steps_max < 1:
        return mean
    # P(output >= j + 1), j = 1 .. steps_max: a request makes its j-th decode step
    survive = np.array([po[o >= j + 1].sum() for j in range(1, steps_max + 1)])
    one = work_batch(model, "generate", p[:1], np.array([2]), granularity)
    f, b = server.flops_per_s(dtype), server.bytes_per_s
    overhead = overheads_s(one.kernels, server) * one.step_runs[0]
    x0, x1, y0, y1 = overlap_lines(one.step_flops0[0] / f, one.step_flops1[0] / f,
                                   one.step_bytes0[0] / b, one.step_bytes1[0] / b,
                                   server.non_overlap)  # fmt: skip
    c = np.arange(int(p.min()) + 1, int(p.max()) + steps_max + 1, dtype=float)[:, None]
    step = (np.maximum(x0 + c * x1, y0 + c * y1) + overhead).sum(axis=1)
    windows = np.lib.stride_tricks.sliding_window_view(step, steps_max)
    start = p - int(p.min())  # step p + 1 is at index p - min(p)
    for a in range(0, p.shape[0], _ROWS):  # blocks of prompts: (rows, steps) at a time
        rows = slice(a, a + _ROWS)
        mean += float(pp[rows] @ (windows[start[rows]] @ survive))
    return mean


def exact_mean_server_only_s(ld: LoadedScenario) -> float | None:
    """The workload's mean server-only time (s), classes by weight, or None when some
    class's mean cannot be computed (see the module doc)."""
    mix = ld.scenario.workload.mix
    granularity = ld.scenario.split.granularity
    weights = np.array([c.weight for c in mix], float)
    means = []
    for k in range(len(mix)):
        try:
            m = class_mean_s(ld, k, granularity)
        except ValueError:  # a size the cost model refuses: the sample will say so
            m = None
        if m is None:
            return None
        means.append(m)
    return float(weights @ np.array(means) / weights.sum())
