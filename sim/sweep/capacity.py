"""Capacity search: the highest arrival rate at which a policy still meets the targets.

A base that replays a trace keeps replaying it, its times stretched to each rate tried
(its sizes and order kept; each replication its own window with `stride_s`); the search
starts at the trace's own mean rate unless `start_rate_per_s` is given.

Per policy and replication: bracket by doubling or halving from a start rate, then bisect
(geometrically) until the bracket is within the relative tolerance. Every evaluation of a
replication uses the same seed, so arrival times scale exactly with the rate (common random
numbers across rates) and the criterion is close to monotone. The CI comes from the spread
of the per-replication capacities.
"""

from __future__ import annotations

import gc
import math

from sim.errors import UserError
from sim.sweep.tasks import scenario_for


def _arrival_at(task: dict, rate: float) -> dict:
    """The arrival section offering `rate` (requests/s): Poisson at that rate, or, when the
    base replays a trace, the trace with its times stretched to that mean rate (its own
    sizes and order kept: `trace_rate_per_s` / rate as time_scale)."""
    ld = scenario_for(task)
    arrival = ld.scenario.workload.arrival
    if arrival.kind == "trace":
        return {**arrival.model_dump(), "time_scale": trace_rate_per_s(ld, task) / rate}
    return {"kind": "poisson", "rate_per_s": rate, "per_client_rate_per_s": None, "load": None}


def trace_rate_per_s(ld, task: dict) -> float:
    """The mean arrival rate of a trace's rows from start_s on, in trace time (rows over
    their span): what time_scale 1 offers."""
    arrival = ld.scenario.workload.arrival
    t = ld.arrival_trace["arrival_s"].to_numpy()  # type: ignore[index]
    t = t[t >= arrival.start_s]
    span = float(t[-1] - t[0]) if t.size > 1 else 0.0
    if not span > 0:
        raise UserError(f"{task['source']}: workload.arrival: capacity search needs a trace "
                        "whose rows span some time")  # fmt: skip
    return (t.size - 1) / span


def _evaluate(task: dict, rate: float) -> dict:
    from sim.runner import simulate

    arrival = _arrival_at(task, rate)
    ld = scenario_for(task, **{"workload.arrival": arrival, "policies": [task["policy"]]})
    try:
        row = simulate(ld, replications=[task["replication"]]).summary.iloc[0].to_dict()
    except UserError as err:  # e.g. the arrival bound, reached while doubling the rate
        raise UserError(f"capacity search of {task['policy']} at {rate:.4g}/s: {err}") from None
    finally:
        gc.collect()  # each evaluation's cyclic garbage before the next (`run_task`)
    if not row["requests"]:
        raise ValueError(
            f"no requests arrive after warmup_s at {rate:.4g}/s; use a duration_s stop rule "
            "or more requests so every rate leaves a measurement window"
        )
    return row


def meets(row: dict, cfg: dict) -> bool:
    """The targets: SLA violations at or below their limit, utilisation below its limit
    (a limit of 1 turns that target off: a batching server iterates all the time under
    load, so only its SLA misses tell its capacity)."""
    busy_ok = cfg["max_utilization"] >= 1 or row["server_utilization"] < cfg["max_utilization"]
    return row["sla_violation_rate"] <= cfg["max_sla_violation_rate"] and busy_ok


def start_rate(task: dict) -> float:
    """Half the server-only capacity (slots / mean server-only service time)."""
    from sim.runner import server_only_capacity

    cfg = task["capacity"]
    if cfg.get("start_rate_per_s"):
        return float(cfg["start_rate_per_s"])
    ld = scenario_for(task)
    if ld.scenario.workload.arrival.kind == "trace":
        return trace_rate_per_s(ld, task)  # the trace as recorded
    arrival = {"kind": "poisson", "rate_per_s": None, "per_client_rate_per_s": None, "load": 1.0}
    return 0.5 * server_only_capacity(scenario_for(task, **{"workload.arrival": arrival}))


def capacity_task(task: dict) -> dict:
    """Search one policy's capacity on one replication."""
    cfg = task["capacity"]
    evaluations = 0

    def ok(rate: float) -> bool:
        nonlocal evaluations
        evaluations += 1
        return meets(_evaluate(task, rate), cfg)

    rate = start_rate(task)
    lo, hi = None, None
    if ok(rate):
        lo = rate
        while hi is None and evaluations < cfg["max_evaluations"]:
            rate *= 2
            if ok(rate):
                lo = rate
            else:
                hi = rate
    else:
        hi = rate
        while lo is None and evaluations < cfg["max_evaluations"]:
            rate /= 2
            if ok(rate):
                lo = rate
            else:
                hi = rate
    if lo is None or hi is None:
        raise RuntimeError(f"no bracket after {evaluations} evaluations (last rate {rate:g}/s)")
    while (hi - lo) / lo > cfg["rel_tol"] and evaluations < cfg["max_evaluations"]:
        mid = math.sqrt(lo * hi)
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return {
        "policy": task["policy"],
        "replication": task["replication"],
        "capacity_rps": lo,
        "upper_rps": hi,
        "evaluations": evaluations,
    }
