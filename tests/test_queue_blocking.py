"""Finite server queue: `max_queue` makes the server an M/M/1/K loss system.

A request that reaches the server queue when `max_queue` requests already wait is lost
(counted as rejected). With one slot the system holds K = max_queue + 1 requests, and
the blocking probability is P_K = (1 - rho) rho^K / (1 - rho^(K + 1)) (PASTA: a Poisson
arrival sees the time-average state).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from sim.config import load_scenario
from sim.runner import simulate

MM1 = Path(__file__).resolve().parents[1] / "scenarios" / "validation" / "mm1.yaml"


def blocking_probability(rho: float, k: int) -> float:
    return (1 - rho) * rho**k / (1 - rho ** (k + 1))


@pytest.mark.parametrize("rho,max_queue", [(0.9, 2), (1.3, 4)])
def test_rejection_rate_matches_mm1k_blocking(rho, max_queue):
    mean_service_s = 0.1
    lam = rho / mean_service_s
    ld = load_scenario(
        MM1,
        overrides=[
            f"workload.arrival.rate_per_s={lam!r}",
            f"server.max_queue={max_queue}",
            "requests=6000",
            f"warmup_s={50 / lam!r}",
            "replications=10",
        ],
    )
    summary = simulate(ld).summary
    rate = (summary["rejected"] / summary["requests"]).to_numpy()
    lo, hi = stats.t.interval(0.99, len(rate) - 1, loc=rate.mean(), scale=stats.sem(rate))
    expected = blocking_probability(rho, max_queue + 1)
    assert lo <= expected <= hi, (rate.mean(), expected)
    assert np.all(summary["server_utilization"] <= 1.0)
