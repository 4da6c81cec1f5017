"""The arrival stream of one replication: times, clients, request classes and sizes.

Generated once per replication from its own random streams and shared by every policy
(common random numbers), so two policies differ by their decisions alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sim.config import LoadedScenario
from sim.engine.load import SAMPLE, exact_mean_server_only_s
from sim.errors import UserError

# Poisson arrivals are drawn in blocks; a block is this many gaps.
_BLOCK = 4096
# The stream's key of the requests sampled where the server-only capacity for `load`
# cannot be computed (`sim.engine.load.SAMPLE` of them).
_LOAD_SAMPLE_KEY = 0x10AD
# At most this many Poisson arrivals per replication (the expected count, rate x duration).
MAX_ARRIVALS = 10_000_000


@dataclass(frozen=True)
class Arrivals:
    """Column arrays, one entry per request, in arrival order."""

    time_s: np.ndarray
    client: np.ndarray  # global client index
    group: np.ndarray  # client group index
    klass: np.ndarray  # request class index
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    service_s: np.ndarray  # synthetic requests' server time; NaN for model requests

    def __len__(self) -> int:
        return self.time_s.shape[0]


@dataclass(frozen=True)
class Streams:
    """One generator per source of randomness, spawned from a replication's seed."""

    arrivals: np.random.Generator
    clients: np.random.Generator
    classes: np.random.Generator
    prompt: np.random.Generator
    output: np.random.Generator
    service: np.random.Generator
    jitter_seed: np.random.SeedSequence

    @classmethod
    def spawn(cls, seq: np.random.SeedSequence) -> Streams:
        kids = seq.spawn(7)
        gens = [np.random.default_rng(k) for k in kids[:6]]
        return cls(*gens, jitter_seed=kids[6])


def replication_seeds(seed: int, replications: int) -> list[np.random.SeedSequence]:
    """Independent seed sequences, one per replication, from the scenario seed."""
    return np.random.SeedSequence(seed).spawn(replications)


def _poisson_times(rng: np.random.Generator, rate: float, count: int | None, until: float | None):
    """Exact Poisson arrival times: exponential gaps, no cap, until a count or a time."""
    if count is not None and until is None:
        return np.cumsum(rng.exponential(1.0 / rate, count))
    chunks, t = [], 0.0
    while True:
        gaps = rng.exponential(1.0 / rate, _BLOCK)
        times = t + np.cumsum(gaps)
        chunks.append(times)
        t = float(times[-1])
        total = sum(c.shape[0] for c in chunks)
        if t >= until or (count is not None and total >= count):
            break
    times = np.concatenate(chunks)
    times = times[times < until]
    return times[:count] if count is not None else times


def _short(x: float) -> str:
    """A rate or duration in 6 significant digits without '+' or zero-padded exponents."""
    return f"{x:.6g}".replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")


def _sci(x: float) -> str:
    """A count in short scientific form: 3.6e10, 1e7."""
    if not np.isfinite(x):
        return str(x)
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def _rate_fields(arrival) -> str:
    """The scenario fields that set the Poisson rate, for error messages."""
    if arrival.rate_per_s is not None:
        return "workload.arrival.rate_per_s"
    if arrival.per_client_rate_per_s is not None:
        return "workload.arrival.per_client_rate_per_s x clients"
    return "workload.arrival.load x the server-only capacity"


def check_arrivals(ld: LoadedScenario, rate_per_s: float) -> None:
    """Refuse a Poisson workload expected to bring more than MAX_ARRIVALS per replication.

    Checked once the rate is known and before anything is drawn or simulated: a finite
    but huge rate x duration_s would otherwise run for days or exhaust memory.
    """
    sc = ld.scenario
    if sc.workload.arrival.kind != "poisson":
        return  # a trace replays its own (finite) rows
    expected = float("inf") if sc.requests is None else float(sc.requests)
    if sc.duration_s is not None:
        expected = min(expected, rate_per_s * sc.duration_s)
    if expected <= MAX_ARRIVALS:  # false for NaN
        return
    if sc.duration_s is not None and rate_per_s * sc.duration_s == expected:
        what = (
            f"{_rate_fields(sc.workload.arrival)} x duration_s "
            f"({_short(rate_per_s)}/s x {_short(sc.duration_s)} s)"
        )
    else:
        what = "requests"
    raise UserError(
        f"{ld.source}: {what} gives about {_sci(expected)} arrivals; at most "
        f"{_sci(MAX_ARRIVALS)} per replication: lower the rate or duration_s"
    )


def generate_arrivals(
    ld: LoadedScenario,
    streams: Streams,
    rate_per_s: float = 0.0,
    count: int | None = None,
    replication: int = 0,
) -> Arrivals:
    """Draw the replication's requests: when, from which client, what class and size.

    `rate_per_s` is the total Poisson rate (see `offered_rate`); traces ignore it and
    replay the `replication`'s window (`workload.arrival.stride_s`).
    """
    sc = ld.scenario
    arrival = sc.workload.arrival
    if arrival.kind == "poisson":
        if count is not None:
            times = _poisson_times(streams.arrivals, rate_per_s, count, None)
        else:
            check_arrivals(ld, rate_per_s)
            times = _poisson_times(streams.arrivals, rate_per_s, sc.requests, sc.duration_s)
        prompt = output = None
    else:
        times, prompt, output = _trace_rows(ld, replication)
    n = times.shape[0]
    group_of_client = np.repeat(np.arange(len(sc.clients)), [g.count for g in sc.clients])
    client = streams.clients.integers(0, sc.total_clients, n)
    weights = np.array([c.weight for c in sc.workload.mix])
    klass = streams.classes.choice(len(weights), n, p=weights / weights.sum())
    if prompt is None:
        prompt = _sizes(sc.workload.mix, "prompt_tokens", klass, streams.prompt)
        output = _sizes(sc.workload.mix, "output_tokens", klass, streams.output)
    prompt = np.maximum(np.rint(prompt), 1).astype(np.int64)
    output = np.rint(output).astype(np.int64)
    generate = np.array([c.task == "generate" for c in sc.workload.mix])[klass]
    output = np.where(generate, np.maximum(output, 1), 0)
    service = _sizes(sc.workload.mix, "service_s", klass, streams.service)
    synthetic = np.array([c.task == "synthetic" for c in sc.workload.mix])[klass]
    service = np.where(synthetic, service, np.nan)
    return Arrivals(times, client, group_of_client[client], klass, prompt, output, service)


def offered_rate(
    ld: LoadedScenario,
    server_only_s: Callable[[int, int, int, int, float], float],
    check: bool = True,
) -> float:
    """Total Poisson arrival rate of the scenario (NaN for trace replay).

    With `load`, the rate is that fraction of the server-only capacity: slots divided by
    the mean server-only service time (`mean_server_only_s`), summed over a fleet
    (`server_capacity_per_s`), the same for every policy and replication. `server_only_s(klass, group, prompt, output, service)` is a
    request's server-only time. With `check`, a rate bringing more than MAX_ARRIVALS per
    replication is refused (`check_arrivals`); without, it is only computed (e.g. as a
    capacity estimate).
    """
    sc = ld.scenario
    arrival = sc.workload.arrival
    if arrival.kind != "poisson":
        return float("nan")
    if arrival.rate_per_s is not None:
        return _checked(ld, arrival.rate_per_s, check)
    if arrival.per_client_rate_per_s is not None:
        return _checked(ld, arrival.per_client_rate_per_s * sc.total_clients, check)
    return _checked(ld, float(arrival.load * server_capacity_per_s(ld, server_only_s)), check)


def server_capacity_per_s(ld: LoadedScenario, server_only_s) -> float:
    """Requests per second the server completes serving everything itself: its slots over
    the mean server-only time; a fleet's, summed over its servers, each at its own
    device's mean (`server_only_s` is then one callable per server group)."""
    sc = ld.scenario
    if sc.servers is None:
        return sc.server.slots / mean_server_only_s(ld, server_only_s)
    from sim.config.fleet import site_view

    return sum(
        g.count * g.slots / mean_server_only_s(site_view(ld, k), server_only_s[k])
        for k, g in enumerate(sc.servers)
    )


def mean_server_only_s(
    ld: LoadedScenario,
    server_only_s: Callable[[int, int, int, int, float], float],
    sample: bool = True,
) -> float:
    """The workload's mean server-only time (s): computed from the size distributions
    (`sim.engine.load`), else (with `sample`) the mean over `SAMPLE` requests drawn from a
    stream of their own; NaN when neither."""
    exact = exact_mean_server_only_s(ld)
    if exact is not None:
        return exact
    if not sample:
        return float("nan")
    rng_seq = np.random.SeedSequence([ld.scenario.seed, _LOAD_SAMPLE_KEY])
    drawn = generate_arrivals(ld, Streams.spawn(rng_seq), rate_per_s=1.0, count=SAMPLE)
    times = [
        server_only_s(int(k), int(g), int(p), int(o), float(s))
        for k, g, p, o, s in zip(
            drawn.klass, drawn.group, drawn.prompt_tokens, drawn.output_tokens,
            drawn.service_s, strict=True,
        )
    ]  # fmt: skip
    return float(np.mean(times))


def _checked(ld: LoadedScenario, rate_per_s: float, check: bool) -> float:
    """`rate_per_s`, once `check_arrivals` has accepted it (when asked to check)."""
    if check:
        check_arrivals(ld, rate_per_s)
    return rate_per_s


def _sizes(mix, key: str, klass: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-request sizes: one draw per request from its class's distribution, in order."""
    out = np.zeros(klass.shape[0])
    for i, cls in enumerate(mix):
        idx = np.flatnonzero(klass == i)
        dist = getattr(cls, key)
        if idx.size and dist is not None:
            out[idx] = dist.sample(rng, idx.size)
    return out


def _trace_rows(ld: LoadedScenario, replication: int = 0):
    """The trace rows a replication replays: from start_s (+ replication x stride_s),
    times from there scaled by time_scale, cut by the stop rules."""
    sc = ld.scenario
    arrival = sc.workload.arrival
    frame = ld.arrival_trace
    assert frame is not None
    t = frame["arrival_s"].to_numpy()
    start = arrival.start_s + replication * (arrival.stride_s or 0.0)
    keep = t >= start
    times = (t[keep] - start) * arrival.time_scale
    prompt = frame["prompt_tokens"].to_numpy()[keep]
    output = frame["output_tokens"].to_numpy()[keep]
    if sc.duration_s is not None:
        inside = times < sc.duration_s
        times, prompt, output = times[inside], prompt[inside], output[inside]
    if sc.requests is not None:
        times, prompt, output = times[: sc.requests], prompt[: sc.requests], output[: sc.requests]
    return times, prompt, output
