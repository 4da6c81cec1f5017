"""Bit-identity of bench_token's plans and results: the guard of a planning speed-up.

`benchmarks/check_identical.py` runs small scenarios; planning shortcuts show on many
distinct sizes. `record` runs `bench_token.py`'s scenario (10,000 requests, about 5,000
distinct sizes per client group) for each policy and stores every static plan and every
plan made at arrival (placement, latency, work, feasibility, counts, segments, deadline,
server-only work) with the run's per-request arrays and token metrics; `compare` checks
two recordings value by value (floats bit for bit).

    python benchmarks/check_plans_identical.py record /tmp/plans_before
    ... change the planners ...
    python benchmarks/check_plans_identical.py record /tmp/plans_after
    python benchmarks/check_plans_identical.py compare /tmp/plans_before /tmp/plans_after
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_token import SCENARIO  # noqa: E402

from sim.config import load_scenario  # noqa: E402
from sim.engine.planner import ProblemBook  # noqa: E402
from sim.engine.token import TokenSimulation  # noqa: E402
from sim.engine.workload import Streams, generate_arrivals, replication_seeds  # noqa: E402

POLICIES = ("server_only", "dp", "dp_queue_aware")


def _planned(p) -> tuple:
    """Everything a `PlannedRequest` holds, as plain values (its segments derived)."""
    pl = p.plan
    return (pl.on_client.tobytes(), pl.latency, pl.server_work, pl.feasible, pl.policy,
            repr(pl.notes), pl.client_units, pl.switches, p.segments, p.deadline_s,
            p.server_only_work, p.has_server, p.transfer_bytes)  # fmt: skip


def record(out: Path, requests: int) -> None:
    """Run every policy on bench_token's scenario and store its plans and results."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bench.yaml"
        path.write_text(yaml.safe_dump({**SCENARIO, "requests": requests}))
        ld = load_scenario(path)
    streams = Streams.spawn(replication_seeds(ld.scenario.seed, 1)[0])
    arrivals = generate_arrivals(ld, streams, SCENARIO["workload"]["arrival"]["rate_per_s"])
    out.mkdir(parents=True, exist_ok=True)
    for policy in POLICIES:
        sim = TokenSimulation(ld, policy, arrivals, streams.jitter_seed, ProblemBook(ld))
        res = sim.run()
        got = {k: v for k, v in vars(res).items() if isinstance(v, np.ndarray | int | float)}
        got |= {f"token.{k}": v for k, v in vars(res.token).items()
                if isinstance(v, np.ndarray | int | float)}  # fmt: skip
        got["token.gaps"] = [np.asarray(g).tobytes() for g in res.token.gaps]
        got["plans"] = {k: _planned(v) for k, v in sim.planner._plans.items()}
        got["at_arrival"] = {k: _planned(v) for k, v in sim.planner._dynamic.items()}
        (out / f"{policy}.pkl").write_bytes(pickle.dumps(got))
        print(f"recorded {policy}: {len(got['plans'])} static, {len(got['at_arrival'])} "
              "at arrival")  # fmt: skip


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, float) and np.isnan(a):
        return isinstance(b, float) and np.isnan(b)
    return a == b


def compare(before: Path, after: Path) -> int:
    """Report every field that differs; the number of policies that differ."""
    bad = 0
    for policy in POLICIES:
        a = pickle.loads((before / f"{policy}.pkl").read_bytes())
        b = pickle.loads((after / f"{policy}.pkl").read_bytes())
        diff = [k for k in a.keys() | b.keys() if k not in a or k not in b or not _same(a[k], b[k])]
        bad += bool(diff)
        print(f"{policy}: " + ("identical" if not diff else f"differs in {sorted(diff)}"))
    return bad


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("out", type=Path)
    rec.add_argument("--requests", type=int, default=SCENARIO["requests"])
    cmp = sub.add_parser("compare")
    cmp.add_argument("before", type=Path)
    cmp.add_argument("after", type=Path)
    args = ap.parse_args()
    if args.cmd == "record":
        record(args.out, args.requests)
    else:
        sys.exit(1 if compare(args.before, args.after) else 0)


if __name__ == "__main__":
    main()
