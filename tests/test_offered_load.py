"""`workload.arrival.load` means what it says: the rate is load x slots / E[server-only time],
with E computed from the size distributions (exact for synthetic service, and for model
mixes against the per-size times enumerated over every size), and the summary reports the
offered utilisation."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from sim.config import load_scenario
from sim.config.base import Empirical, Exponential, Fixed, LogNormal, Uniform
from sim.engine.load import exact_mean_server_only_s, token_pmf
from sim.engine.planner import ProblemBook
from sim.engine.workload import offered_rate
from sim.runner import _server_only_time, simulate


def _scenario(tmp_path, mix: list, seed: int = 1, extra: dict | None = None):
    body = {
        "name": "load", "seed": seed, "requests": 200, "server": {"device": "a100-80gb", "slots": 2},
        "clients": [{"name": "c", "count": 4, "device": "laptop-m2",
                     "link": {"uplink_mbps": 50, "downlink_mbps": 100, "rtt_ms": 10}}],
        "workload": {"arrival": {"kind": "poisson", "load": 0.85}, "mix": mix},
        "policies": ["server_only"],
    }  # fmt: skip
    body.update(extra or {})
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(body))
    return load_scenario(path)


SYNTHETIC = {"name": "s", "task": "synthetic",
             "service_s": {"kind": "exponential", "mean": 0.05}, "deadline_s": 1.0}  # fmt: skip


@pytest.mark.parametrize("seed", [1, 2, 3, 7, 13])
def test_synthetic_rate_is_exact(tmp_path, seed):
    """Exponential service of mean 0.05 s, 2 slots, load 0.85: 34 req/s, whatever the seed
    (a 1,000-request sample gave 32.2-34.1)."""
    ld = _scenario(tmp_path, [SYNTHETIC], seed)
    rate = offered_rate(ld, _server_only_time(ld, ProblemBook(ld)))
    assert rate == pytest.approx(34.0, rel=1e-12)


def test_clipped_lognormal_mean_averages_the_clipped_distribution():
    d = LogNormal(kind="lognormal", median=0.05, sigma=1.0, min=0.01, max=0.2)
    x = d.sample(np.random.default_rng(0), 2_000_000)
    assert d.expected == pytest.approx(x.mean(), rel=2e-3)
    unclipped_clip = float(np.clip(0.05 * np.exp(0.5), 0.01, 0.2))
    assert abs(d.expected - unclipped_clip) > 0.005  # the old value was wrong by 13 %


DISTS = [
    Fixed(kind="fixed", value=37.4),
    Uniform(kind="uniform", low=3.2, high=40.7),
    Uniform(kind="uniform", low=5.0, high=5.0),
    LogNormal(kind="lognormal", median=30, sigma=0.8, min=2.0, max=200.0),
    LogNormal(kind="lognormal", median=3, sigma=1.2),
    Exponential(kind="exponential", mean=12.0),
]


@pytest.mark.parametrize("dist", DISTS, ids=lambda d: d.kind)
@pytest.mark.parametrize("low", [0, 1])
def test_token_pmf_matches_the_rounded_draws(dist, low):
    k, p = token_pmf(dist, low)
    assert p.sum() == pytest.approx(1.0, abs=1e-9) and (p > 0).all() and k.min() >= low
    x = np.maximum(np.rint(dist.sample(np.random.default_rng(1), 400_000)), low)
    freq = np.array([(x == v).mean() for v in k])
    assert np.abs(freq - p).max() < 4e-3
    assert (k * p).sum() == pytest.approx(x.mean(), rel=2e-2)


def test_empirical_pmf_counts_its_values():
    d = Empirical(kind="empirical", path="x.csv", column="t")
    d.bind(np.array([0.2, 1.4, 1.6, 2.0, 7.0]))
    k, p = token_pmf(d, 1)
    assert k.tolist() == [1, 2, 7] and p.tolist() == [0.4, 0.4, 0.2]


MODEL_MIX = [
    {"name": "gen", "model": "llama-3-8b", "task": "generate", "weight": 2,
     "prompt_tokens": {"kind": "uniform", "low": 20, "high": 60},
     "output_tokens": {"kind": "lognormal", "median": 8, "sigma": 0.7, "max": 30},
     "deadline_s": 5.0},
    {"name": "fwd", "model": "bert-base", "task": "forward", "weight": 1,
     "prompt_tokens": {"kind": "uniform", "low": 10, "high": 90}, "deadline_s": 1.0},
    SYNTHETIC,
]  # fmt: skip


def test_model_mix_mean_equals_the_enumerated_sizes(tmp_path):
    """The computed mean equals the probability-weighted server-only time of every size,
    each costed as a run would cost it (`ProblemBook`), to 1e-9."""
    ld = _scenario(tmp_path, MODEL_MIX)
    book = ProblemBook(ld)
    time_of = _server_only_time(ld, book)
    weights = np.array([2.0, 1.0, 1.0]) / 4.0
    mix = ld.scenario.workload.mix
    means = []
    for k, cls in enumerate(mix):
        if cls.task == "synthetic":
            means.append(0.05)
            continue
        pk, pp = token_pmf(cls.prompt_tokens, 1)
        if cls.task == "forward":
            ok, op = np.array([0]), np.ones(1)
        else:
            ok, op = token_pmf(cls.output_tokens, 1)
        means.append(sum(a * b * time_of(k, 0, int(p), int(o), 0.0)
                         for p, a in zip(pk, pp, strict=True)
                         for o, b in zip(ok, op, strict=True)))  # fmt: skip
    want = float(weights @ np.array(means))
    assert exact_mean_server_only_s(ld) == pytest.approx(want, rel=1e-9)


def test_model_mix_rate_within_a_tenth_of_a_percent_of_a_large_sample(tmp_path):
    ld = _scenario(tmp_path, MODEL_MIX[:2])
    rate = offered_rate(ld, _server_only_time(ld, ProblemBook(ld)))
    mean_s = exact_mean_server_only_s(ld)
    assert rate == pytest.approx(0.85 * 2 / mean_s, rel=1e-12)
    # a large sample of the workload's own draws agrees within its error
    from sim.engine.workload import Streams, generate_arrivals

    drawn = generate_arrivals(ld, Streams.spawn(np.random.SeedSequence(5)), 1.0, count=100_000)
    time_of = _server_only_time(ld, ProblemBook(ld))
    keys = list(zip(drawn.klass.tolist(), drawn.prompt_tokens.tolist(),
                    drawn.output_tokens.tolist(), strict=True))  # fmt: skip
    cache = {key: time_of(key[0], 0, key[1], key[2], 0.0) for key in set(keys)}
    sampled = np.array([cache[k] for k in keys])
    se = sampled.std() / np.sqrt(sampled.size)
    assert abs(sampled.mean() - mean_s) < 4 * se
    assert se / mean_s < 1e-3 * 4  # the comparison is tight enough to mean something


def test_summary_reports_the_offered_utilization(tmp_path):
    ld = _scenario(tmp_path, [SYNTHETIC], extra={"requests": 300})
    summary = simulate(ld).summary
    assert summary["offered_utilization"].tolist() == pytest.approx([0.85])
    assert summary["offered_rate_per_s"].tolist() == pytest.approx([34.0])
