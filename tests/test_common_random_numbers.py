"""Common random numbers: every policy of a replication sees the same random draws, the
link jitter included, so two policies with the same plans give the same requests."""

from __future__ import annotations

import numpy as np
import pytest

from sim.config import validate
from sim.runner import simulate


@pytest.mark.parametrize("granularity", ["request", "token"])
def test_policies_with_the_same_plans_see_the_same_jitter(granularity):
    # clients hold no units (resident: none): dp's plan is server-only's, so with common
    # jitter streams the two runs are the same event for event
    generate = granularity == "token"
    raw = {
        "name": "crn", "seed": 9, "requests": 200, "replications": 2,
        "policies": ["server_only", "dp"],
        "simulation": {"granularity": granularity},
        "clients": [{
            "name": "phones", "count": 20, "device": "phone-flagship", "resident": "none",
            "link": {"uplink_mbps": 20, "downlink_mbps": 80, "rtt_ms": 30,
                     "jitter": {"delay_ms": {"kind": "exponential", "mean": 15}}},
        }],
        "workload": {"arrival": {"kind": "poisson", "rate_per_s": 20}, "mix": [{
            "name": "q", "model": "gpt2", "task": "generate" if generate else "forward",
            "prompt_tokens": {"kind": "uniform", "low": 32, "high": 256},
            **({"output_tokens": 8} if generate else {}), "deadline_s": 5,
        }]},
    }  # fmt: skip
    requests = simulate(validate(raw)).requests  # as `splitsim run` runs the policies
    for _, rows in requests.groupby("replication"):
        a, b = (rows[rows["policy"] == p].reset_index(drop=True) for p in ("server_only", "dp"))
        assert np.array_equal(a["finish_s"], b["finish_s"], equal_nan=True)
        assert np.array_equal(a["transfer_s"], b["transfer_s"])
        assert a["transfer_s"].std() > 0  # the jitter is there
