"""The arrival stream of one replication: times, clients, request classes and sizes.

Generated once per replication from its own random streams and shared by every policy
(common random numbers), so two policies differ by their decisions alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.config import LoadedScenario

# Poisson arrivals are drawn in blocks; a block is this many gaps.
_BLOCK = 4096


@dataclass(frozen=True)
class Arrivals:
    """Column arrays, one entry per request, in arrival order."""

    time_s: np.ndarray
    client: np.ndarray  # global client index
    group: np.ndarray  # client group index
    klass: np.ndarray  # request class index
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray

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
    jitter_seed: np.random.SeedSequence

    @classmethod
    def spawn(cls, seq: np.random.SeedSequence) -> Streams:
        kids = seq.spawn(6)
        gens = [np.random.default_rng(k) for k in kids[:5]]
        return cls(*gens, jitter_seed=kids[5])


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


def generate_arrivals(ld: LoadedScenario, streams: Streams) -> Arrivals:
    """Draw the replication's requests: when, from which client, what class and size."""
    sc = ld.scenario
    arrival = sc.workload.arrival
    if arrival.kind == "poisson":
        rate = arrival.rate_per_s or (arrival.per_client_rate_per_s or 0) * sc.total_clients
        times = _poisson_times(streams.arrivals, rate, sc.requests, sc.duration_s)
        prompt = output = None
    else:
        times, prompt, output = _trace_rows(ld)
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
    return Arrivals(times, client, group_of_client[client], klass, prompt, output)


def _sizes(mix, key: str, klass: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-request sizes: one draw per request from its class's distribution, in order."""
    out = np.zeros(klass.shape[0])
    for i, cls in enumerate(mix):
        idx = np.flatnonzero(klass == i)
        if idx.size:
            out[idx] = getattr(cls, key).sample(rng, idx.size)
    return out


def _trace_rows(ld: LoadedScenario):
    sc = ld.scenario
    arrival = sc.workload.arrival
    frame = ld.arrival_trace
    assert frame is not None
    t = frame["arrival_s"].to_numpy()
    keep = t >= arrival.start_s
    times = (t[keep] - arrival.start_s) * arrival.time_scale
    prompt = frame["prompt_tokens"].to_numpy()[keep]
    output = frame["output_tokens"].to_numpy()[keep]
    if sc.duration_s is not None:
        inside = times < sc.duration_s
        times, prompt, output = times[inside], prompt[inside], output[inside]
    if sc.requests is not None:
        times, prompt, output = times[: sc.requests], prompt[: sc.requests], output[: sc.requests]
    return times, prompt, output
