"""Fleet speed: the per-request cost of 16 servers and 5,000 clients against one server.

The workload of `bench_engine.py` (policy dp, three client groups, three forward tasks)
with 5,000 clients runs once on one A100 slot at 60 % load and once on a fleet of 16 such
servers (`servers:`, a router per request) at 16 times the rate, so every server sees the
one server's load. Both run through the engines the runner uses (`Simulation`,
`FleetSimulation`) with their placement problems already built (a second run over the same
books, as every policy after the first and every replication runs); the fleet plans each
request at arrival for its server, the single server before the run.

Target (issue 15): the fleet's wall time per request at most 1.5x the single server's
(median of --repeats runs each, measured in one process).

    python benchmarks/bench_fleet.py [--requests 100000] [--repeats 3] [--routing least_outstanding]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import scenario  # noqa: E402

from sim.config import validate  # noqa: E402
from sim.runner import (  # noqa: E402
    _book,
    _engine,
    _replication_arrivals,
    _server_only_time,  # noqa: E402
    offered_rate,
)

TARGET_RATIO = 1.5
SERVERS = 16
CLIENTS = 5000


def _scenarios(requests: int, routing: str) -> tuple[dict, dict]:
    """(one server at 60 % load, 16 servers at the same load each), 5,000 clients."""
    one = scenario(requests, 1.0)
    share = [60, 30, 60]
    for group, n in zip(one["clients"], share, strict=True):
        group["count"] = CLIENTS * n // sum(share)
    one["workload"]["arrival"] = {"kind": "poisson", "load": 0.6}
    fleet = copy.deepcopy(one)
    del fleet["server"]
    fleet["servers"] = [{"name": "gpu", "device": "a100-80gb", "count": SERVERS}]
    fleet["routing"] = {"policy": routing}
    return one, fleet


def per_request_s(raw: dict, repeats: int) -> tuple[float, int, float]:
    """Median wall seconds per request over `repeats` runs (books warm), the requests, and
    the offered rate."""
    ld = validate(raw, "bench")
    book = _book(ld)
    rate = offered_rate(ld, _server_only_time(ld, book))
    arrivals, seed = _replication_arrivals(ld, 0, rate)
    engine = _engine(ld)
    engine(ld, "dp", arrivals, seed, book).run()  # fills the books' problems
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        engine(ld, "dp", arrivals, seed, book).run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / len(arrivals), len(arrivals), rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--routing", default="least_outstanding")
    args = parser.parse_args(argv)
    one, fleet = _scenarios(args.requests, args.routing)
    t_one, n, rate_one = per_request_s(one, args.repeats)
    t_fleet, _, rate_fleet = per_request_s(fleet, args.repeats)
    ratio = t_fleet / t_one
    print(f"requests {n}, clients {CLIENTS}, routing {args.routing}")
    print(f"one server:  {rate_one:8.1f} req/s offered, {t_one * 1e6:6.1f} us per request")
    print(
        f"{SERVERS} servers: {rate_fleet:8.1f} req/s offered, {t_fleet * 1e6:6.1f} us per request"
    )
    verdict = "meets" if ratio <= TARGET_RATIO else "misses"
    print(f"fleet / one server: {ratio:.2f}x ({verdict} the {TARGET_RATIO}x target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
