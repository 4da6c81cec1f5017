"""The token-mode chat scenario the engine's equality tests share: Llama-3-8B chat on one
A100 with continuous batching, laptops that hold what fits and phones that hold nothing,
so `dp` makes split plans (client legs in every decode step) beside all-server ones."""

from __future__ import annotations


def chat_scenario(
    name: str, seed: int, requests: int, *, clients: int, max_batch_requests: int,
    rate_per_s: float, prompt_median: int, prompt_max: int, output: tuple[int, int],
    policies: list[str],
) -> dict:  # fmt: skip
    """A fresh raw scenario (nested dicts the caller may change)."""
    low, high = output
    return {
        "name": name,
        "seed": seed,
        "requests": requests,
        "policies": list(policies),
        "server": {"device": "a100-80gb"},
        "simulation": {"granularity": "token", "max_batch_requests": max_batch_requests},
        "clients": [
            {"name": "laptops", "count": clients, "device": "laptop-m2", "resident": "fit",
             "link": {"uplink_mbps": 50, "downlink_mbps": 200, "rtt_ms": 20}},
            {"name": "phones", "count": clients, "device": "phone-flagship", "resident": "none",
             "link": {"uplink_mbps": 20, "downlink_mbps": 100, "rtt_ms": 40}},
        ],
        "workload": {
            "arrival": {"kind": "poisson", "rate_per_s": rate_per_s},
            "mix": [{"name": "chat", "model": "llama-3-8b", "task": "generate",
                     "prompt_tokens": {"kind": "lognormal", "median": prompt_median,
                                       "sigma": 0.6, "max": prompt_max},
                     "output_tokens": {"kind": "uniform", "low": low, "high": high},
                     "ttft_deadline_s": 2.0, "tpot_deadline_s": 0.1}],
        },
    }  # fmt: skip
