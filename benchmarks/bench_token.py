"""Token-granularity speed: a 10,000-request chat scenario, ~200 output tokens on average.

Llama-3-8B on an A100-80GB with continuous batching (max 64 running requests), Poisson
arrivals at about 70 % of the batching server's capacity, prompts ~1000 tokens, outputs
uniform in 100..300 (mean 200), server_only, dp and dp_queue_aware. Prints, per policy,
the wall time of the simulation, the SimPy events and the request events (client legs,
transfers and server visits, one per request and iteration) per second, and the planning
time with its share of the whole (planning plus simulation). Target: under 2 minutes per
policy on one core; planning under 10 % of the whole for every policy.

Planning is timed apart from the simulation: each policy starts from a fresh
`ProblemBook` (so its planning includes building the placement problems), static plans
are built before the timed run (`prepare`), and plans made at arrival (dp_queue_aware)
are timed inside the run (every `Planner.get_at` call) and counted as planning, not
simulation.

    python benchmarks/bench_token.py [--requests 10000] [--rate 6] [--policy server_only]
        [--assumed-a100]

`--assumed-a100` runs the server on the A100 as the catalog assumed it before its fit to
measured kernels (`results/calibration/gpu/before.yaml`: 0.6 / 0.8 of peak, 5 us per
unit), the device this benchmark's earlier figures were measured on, so that speed-ups
compare the same simulated work (the fitted A100 charges a fixed time per kernel, which
changes the iterations' lengths and so how many there are).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from sim.config import load_scenario
from sim.engine.planner import ProblemBook
from sim.engine.token import TokenSimulation
from sim.engine.workload import Streams, generate_arrivals, replication_seeds
from sim.records import RequestStatus

SCENARIO = {
    "name": "bench_token",
    "seed": 11,
    "requests": 10000,
    "server": {"device": "a100-80gb"},
    "simulation": {"granularity": "token", "max_batch_requests": 64},
    "clients": [
        {
            "name": "laptops",
            "count": 50,
            "device": "laptop-m2",
            "resident": "fit",
            "link": {"uplink_mbps": 50, "downlink_mbps": 200, "rtt_ms": 20},
        },
        {
            "name": "phones",
            "count": 50,
            "device": "phone-flagship",
            "resident": "none",
            "link": {"uplink_mbps": 20, "downlink_mbps": 100, "rtt_ms": 40},
        },
    ],  # fmt: skip
    "workload": {
        "arrival": {"kind": "poisson", "rate_per_s": 6.0},
        "mix": [
            {
                "name": "chat",
                "model": "llama-3-8b",
                "task": "generate",
                "prompt_tokens": {"kind": "lognormal", "median": 1000, "sigma": 0.6, "max": 6000},
                "output_tokens": {"kind": "uniform", "low": 100, "high": 300},
                "ttft_deadline_s": 2.0,
                "tpot_deadline_s": 0.1,
            },
        ],  # fmt: skip
    },
}


def _time_calls(obj: object, name: str) -> list[float]:
    """Wrap `obj.name` so every call's wall time (s) is added to the returned one-item list."""
    total_s = [0.0]
    inner = getattr(obj, name)

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            total_s[0] += time.perf_counter() - t0

    setattr(obj, name, timed)
    return total_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--rate", type=float, default=6.0)
    ap.add_argument("--policy", action="append", default=None)
    ap.add_argument("--assumed-a100", action="store_true", help="the pre-fit A100 (see above)")
    args = ap.parse_args()
    body = {**SCENARIO, "requests": args.requests}
    if args.assumed_a100:
        before = Path(__file__).resolve().parent.parent / "results/calibration/gpu/before.yaml"
        body["devices"] = {"a100-80gb-assumed": yaml.safe_load(before.read_text())["a100-80gb"]}
        body["server"] = {"device": "a100-80gb-assumed"}
    body["workload"]["arrival"]["rate_per_s"] = args.rate
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bench.yaml"
        path.write_text(yaml.safe_dump(body))
        ld = load_scenario(path)
    seq = replication_seeds(ld.scenario.seed, 1)[0]
    streams = Streams.spawn(seq)
    arrivals = generate_arrivals(ld, streams, args.rate)
    out_tokens = int(arrivals.output_tokens.sum())
    print(f"{len(arrivals)} requests, {out_tokens} output tokens "
          f"(mean {out_tokens / len(arrivals):.0f})")  # fmt: skip
    for policy in args.policy or ["server_only", "dp", "dp_queue_aware"]:
        book = ProblemBook(ld)  # fresh: planning includes building the problems
        t0 = time.perf_counter()
        warm = TokenSimulation(ld, policy, arrivals, streams.jitter_seed, book)
        warm.prepare()  # builds every static plan once (cached in the book and planner)
        planner = warm.planner
        prepare_s = time.perf_counter() - t0
        sim_ = TokenSimulation(ld, policy, arrivals, streams.jitter_seed, book, planner=planner)
        at_arrival = _time_calls(planner, "get_at")
        t0 = time.perf_counter()
        res = sim_.run()
        wall = time.perf_counter() - t0 - at_arrival[0]
        plan_s = prepare_s + at_arrival[0]
        share = plan_s / (plan_s + wall)
        tok = res.token
        done = int((res.status == RequestStatus.COMPLETED).sum())
        print(
            f"{policy:14s} wall {wall:6.1f} s  planning {plan_s:5.2f} s ({share:5.1%} of "
            f"{plan_s + wall:.1f} s)  plans {planner.cached_plans}  completed {done}  "
            f"simulated {res.end_s:.0f} s  iterations {tok.iterations}  "
            f"SimPy events {res.events} ({res.events / wall:,.0f}/s)  "
            f"request events {tok.request_events} ({tok.request_events / wall:,.0f}/s)  "
            f"mean batch {tok.batch.mean(0, res.end_s):.1f}  preemptions {tok.preemptions}"
        )


if __name__ == "__main__":
    main()
