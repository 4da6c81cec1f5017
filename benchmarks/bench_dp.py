"""Speed of the split DP, and its optimum checked against an exact MILP (HiGHS).

Run: python benchmarks/bench_dp.py [--profile]

A random 50-unit instance where the deadline binds (half-way between the server-only and
client-only latencies, so some units run on each side), with continuous times (no two
units alike: the exact DP's worst case, no runs to compress). `solve(p, 'dp')` (exact) is
timed end to end (median of many calls after warm-up) and checked against
scipy.optimize.milp on the same continuous instance; `dp_grid` (the paper's DP, default
grid of 2000 steps) is timed beside it and checked against the MILP on its discretised
instance (every time rounded up, the deadline down). A 34-unit layered model (embedding,
32 equal layers, head), where runs compress, is timed too, and llama-3-8b at sublayer
granularity (66 alternating units) on a laptop against an A100, for a forward pass (one
latency, no loop: `sim.split.meet`) and generation (a loop: `sim.split.labels`).
Targets (issue 13): dp median <= 0.3 ms and >= 20x faster than the MILP. The process is
pinned to one core and BLAS/OpenMP to one thread.
"""

from __future__ import annotations

import os
import sys

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import cProfile  # noqa: E402
import pstats  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from scipy import sparse  # noqa: E402
from scipy.optimize import Bounds, LinearConstraint, milp  # noqa: E402

from sim.split import SplitProblem, evaluate, grid_steps, solve  # noqa: E402
from sim.split.dp import DEFAULT_STEPS  # noqa: E402

DP_REPEATS = 200
MILP_REPEATS = 20
SIZES = (14, 50, 100)


def make_instance(n_units: int, seed: int = 0) -> SplitProblem:
    """Server 1-10 ms a unit, client 2-20x slower, links 1-20 ms; the deadline binds."""
    rng = np.random.default_rng(seed)
    server = rng.uniform(1e-3, 10e-3, n_units)
    client = server * rng.uniform(2, 20, n_units)
    up = rng.uniform(1e-3, 20e-3, n_units + 1)
    down = rng.uniform(1e-3, 20e-3, n_units + 1)
    probe = SplitProblem(client, server, server, up, down, deadline=1.0)
    all_server, _ = evaluate(probe, np.zeros(n_units, bool))
    all_client, _ = evaluate(probe, np.ones(n_units, bool))
    deadline = 0.5 * (all_server + all_client)
    return SplitProblem(client, server, server, up, down, deadline=deadline)


def timings_ms(fn, repeats: int, warmup: int = 10) -> tuple[float, float]:
    """(median, min) wall time of fn() in ms; min shows the cost without contention."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times)), 1e3 * float(np.min(times))


def discretised(p: SplitProblem, step: float) -> dict:
    """The instance on the DP's grid: whole steps, times rounded up, deadline down."""
    return {
        "cc": grid_steps(p.client_time, step),
        "cs": grid_steps(p.server_time, step),
        "up": grid_steps(p.uplink_time, step),
        "dn": grid_steps(p.downlink_time, step),
        "horizon": int(grid_steps(p.deadline, step, up=False)),
    }


def continuous(p: SplitProblem) -> dict:
    """The instance as it is: times in seconds (the MILP's coefficients unrounded)."""
    return {"cc": p.client_time, "cs": p.server_time, "up": p.uplink_time,
            "dn": p.downlink_time, "horizon": p.deadline}  # fmt: skip


def grid_latency(d: dict, on_client: np.ndarray) -> int:
    """A placement's latency in whole steps (no loop in this benchmark)."""
    path = np.concatenate(([True], on_client, [True]))
    up = path[:-1] & ~path[1:]
    down = ~path[:-1] & path[1:]
    run = np.where(on_client, d["cc"], d["cs"]).sum()
    return int(run + d["up"][up].sum() + d["dn"][down].sum())


def milp_model(p: SplitProblem, d: dict) -> dict:
    """x_u = unit u on the server; yu_b / yd_b = an up / down crossing at boundary b.

    yu_b >= x_b - x_{b-1} and yd_b >= x_{b-1} - x_b with x_{-1} = x_L = 0 (client at both
    ends); latency sum_u cc_u + (cs_u - cc_u) x_u + up . yu + dn . yd <= horizon.
    """
    L = p.n_units
    nx, nb = L, L + 1
    n = nx + 2 * nb
    xi = np.arange(L)
    yu = nx + np.arange(nb)
    yd = nx + nb + np.arange(nb)
    rows, cols, vals = [], [], []
    for b in range(nb):
        # up: yu_b - x_b + x_{b-1} >= 0 ; down: yd_b - x_{b-1} + x_b >= 0
        for r, (y, sign) in enumerate(((yu[b], 1.0), (yd[b], -1.0))):
            row = 2 * b + r
            rows.append(row), cols.append(y), vals.append(1.0)
            if b < L:
                rows.append(row), cols.append(xi[b]), vals.append(-sign)
            if b > 0:
                rows.append(row), cols.append(xi[b - 1]), vals.append(sign)
    link = sparse.csr_array((vals, (rows, cols)), shape=(2 * nb, n))
    lat = np.concatenate([d["cs"] - d["cc"], d["up"], d["dn"]]).astype(float)
    budget = float(d["horizon"] - d["cc"].sum())
    constraints = [
        LinearConstraint(link, lb=0.0, ub=np.inf),
        LinearConstraint(lat[None, :], lb=-np.inf, ub=budget),
    ]
    c = np.concatenate([p.server_work, np.zeros(2 * nb)])
    return {
        "c": c,
        "constraints": constraints,
        "integrality": np.ones(n),
        "bounds": Bounds(0, 1),
        "options": {"mip_rel_gap": 0.0},
    }


def layered_instance() -> SplitProblem:
    """A 34-unit chain like a 32-layer decoder: embedding, equal layers, head."""
    n = 34
    client = np.r_[0.004, [0.97] * 32, 0.3]
    server = np.r_[0.0007, [0.037] * 32, 0.01]
    link = np.r_[0.01, [0.23] * 34]
    probe = SplitProblem(client, server, server, link, link, deadline=1.0)
    all_server, _ = evaluate(probe, np.zeros(n, bool))
    return SplitProblem(client, server, server, link, link, deadline=4 * all_server)


def sublayer_llama(task: str, output_tokens: int) -> SplitProblem:
    """llama-3-8b at sublayer granularity, 512 prompt tokens, laptop-m2 and a100-80gb over
    100 Mbit/s with 20 ms RTT; the deadline 1.5x the all-server latency."""
    from sim.catalog import get_device, get_model
    from sim.split.build import Link, build_problem

    p = build_problem(
        get_model("llama-3-8b"), task, 512, output_tokens, get_device("laptop-m2"),
        get_device("a100-80gb"), Link(100.0, 100.0, 20.0), 1.0, granularity="sublayer",
    )  # fmt: skip
    return p.with_deadline(1.5 * evaluate(p, np.zeros(p.n_units, bool))[0])


def main() -> int:
    profile = "--profile" in sys.argv
    p = make_instance(50)
    step = p.deadline / DEFAULT_STEPS
    plan = solve(p, "dp")
    grid_plan = solve(p, "dp_grid")
    print(
        f"instance: 50 units, deadline {p.deadline * 1e3:.1f} ms; dp: {plan.client_units} "
        f"units on the client, {plan.switches} switches, latency {plan.latency * 1e3:.2f} ms, "
        f"feasible {plan.feasible}"
    )
    dp_ms, dp_min = timings_ms(lambda: solve(p, "dp"), DP_REPEATS)
    grid_ms, grid_min = timings_ms(lambda: solve(p, "dp_grid"), DP_REPEATS)
    exact = milp_model(p, continuous(p))
    res = milp(**exact)
    d = discretised(p, step)
    res_grid = milp(**milp_model(p, d))
    if not (res.success and res_grid.success):
        print(f"milp failed: {res.message} / {res_grid.message}")
        return 1
    milp_ms, milp_min = timings_ms(lambda: milp(**exact), MILP_REPEATS, warmup=2)
    agree = plan.server_work <= res.fun * (1 + 1e-6)
    agree_grid = abs(res_grid.fun - grid_plan.server_work) <= 1e-9 * max(1.0, abs(res_grid.fun))
    lay = layered_instance()
    lay_ms, lay_min = timings_ms(lambda: solve(lay, "dp"), DP_REPEATS)
    print(f"dp      median {dp_ms:8.3f} ms (min {dp_min:.3f}) exact, continuous times")
    print(f"dp_grid median {grid_ms:8.3f} ms (min {grid_min:.3f}) {DEFAULT_STEPS} steps")
    print(
        f"milp    median {milp_ms:8.3f} ms (min {milp_min:.3f}) over {MILP_REPEATS} calls (HiGHS)"
    )
    print(f"dp on a layered 34-unit model: median {lay_ms:.3f} ms (min {lay_min:.3f})")
    for task, out in (("forward", 0), ("generate", 32)):
        q = sublayer_llama(task, out)
        ms, ms_min = timings_ms(lambda q=q: solve(q, "dp"), DP_REPEATS // 2)
        print(f"dp on sublayer llama-3-8b ({q.n_units} units, {task}): median {ms:.3f} ms "
              f"(min {ms_min:.3f})")  # fmt: skip
    print(f"ratio milp / dp: {milp_ms / dp_ms:.1f}x")
    print(f"objective: dp {plan.server_work:.9f}, milp {res.fun:.9f}; dp optimal: {agree}")
    print(f"dp_grid {grid_plan.server_work:.9f} (+{grid_plan.server_work / plan.server_work - 1:.2%}"
          f" over dp), milp on its grid {res_grid.fun:.9f}; agree: {agree_grid}")  # fmt: skip
    print("dp median by size (continuous times):")
    for n_units in SIZES:
        q = make_instance(n_units, seed=n_units)
        ms, ms_min = timings_ms(lambda q=q: solve(q, "dp"), DP_REPEATS // 4)
        print(f"  {n_units:4d} units: median {ms:7.3f} ms (min {ms_min:.3f})")
    target = dp_ms <= 0.3 and milp_ms >= 20 * dp_ms
    print(
        f"targets (dp median <= 0.3 ms, >= 20x faster than milp): {'met' if target else 'NOT met'}"
    )
    print(f"load average {os.getloadavg()[0]:.1f} (timings are noisy when others share the CPU)")
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(DP_REPEATS):
            solve(p, "dp")
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(8)
    return 0 if agree and agree_grid else 1


if __name__ == "__main__":
    sys.exit(main())
