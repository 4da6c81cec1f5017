"""The SplitLLM dynamic program, and the exact least-latency placement used as fallback.

Two DPs. `dp` (`solve_dp`) is exact on continuous times: the least server work within the
deadline, ties broken by the least latency, no grid. Its search (`sim.split.exact`) is
one of three over the same non-dominated (latency, work) labels, times summed in floating
point and the chosen plan confirmed by the exact `evaluate` (never over the deadline):
enumeration of the structures of runs of identical units when they are few (transformer
layers, `sim.split.structural`); for one latency, no generation loop and mostly distinct
units, both halves of the chain at once with a Lagrangian cut (`sim.split.meet`, the
method and its proof of optimality there; `sim.split.front` below 24 units); else the
label front over runs (`sim.split.labels`: generation loops, token SLAs). On a random
50-unit chain with continuous times (`benchmarks/bench_dp.py`) it takes ~0.28 ms on
one core, against ~7 ms for the label front alone and ~170 ms for a MILP (HiGHS).

`dp_grid` (`solve_dp_grid`) is the paper's: it runs over units in order; for each unit,
location (client or server) and latency used so far (on a grid of `time_step`), it keeps
the least server work. Every time is rounded *up* to the grid, so a placement that fits
the discretised deadline also fits the real one (and may lose to the exact optimum). Work
is vectorised over the latency axis. With a generation loop (see `problem.py`) the DP
runs once per location of the loop's start unit, so the loop's refund or extra crossing
is known at the end.

Units pinned to the client (`client_required`) have no server state: the exact searches
read them as `CLIENT_ONLY` (`SplitProblem.locations`), the grid DP and the least-latency
search forbid their server location.

Nothing is searched where there is nothing to choose: when no unit may run on the client
(`client_allowed` all false, e.g. `resident: none`) the only placement is all on the
server, and `solve_dp` and `fastest_placement` return it directly (the DP's grid check of
that one placement is a sum of integer steps, so the plan, its notes included, is the
DP's).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from sim.split import exact, labels
from sim.split.problem import Plan, SplitProblem, evaluate, make_plan

_NO_FIT = "no placement fits the deadline"

DEFAULT_STEPS = 2000
# The grid never has more steps than this per deadline: a finer `time_step` is coarsened to
# deadline / MAX_STEPS (memory and time grow with the steps; 100,000 is 50x the default).
MAX_STEPS = 100_000
# Unit times beyond the horizon are infeasible whatever their exact step count; capping the
# count keeps huge ratios (a tiny deadline) from overflowing int64.
_STEP_CAP = 2.0**62
_REL_TOL = 1e-13  # below make_plan's 1e-12 deadline slack: snapping must not hide overruns


def grid_steps(times, step: float, up: bool = True) -> np.ndarray:
    """Times in whole steps, rounded up (or down); exact multiples stay exact despite float error."""
    ratio = np.minimum(np.asarray(times, float) / step, _STEP_CAP)
    nearest = np.rint(ratio)
    exact = np.abs(ratio - nearest) <= _REL_TOL * np.maximum(1.0, np.abs(nearest))
    rounded = np.ceil(ratio) if up else np.floor(ratio)
    return np.where(exact, nearest, rounded).astype(np.int64)


def _shift(dst: np.ndarray, src: np.ndarray, k: int) -> None:
    """dst[t] = src[t-k] (inf before k)."""
    n = dst.shape[0]
    dst[: min(k, n)] = np.inf
    if k < n:
        dst[k:] = src[: n - k]


def _dp_pass(problem: SplitProblem, g: dict, horizon: int, start_on: int | None):
    """One DP sweep. start_on forces the loop-start unit to 0 (client) or 1 (server).

    Returns (best work, end time, end location, choice arrays) or None if nothing fits.
    """
    return _dp_sweeps(problem, g, horizon, (start_on,))[0]


def _dp_sweeps(problem: SplitProblem, g: dict, horizon: int, starts: tuple) -> list:
    """The DP sweeps of every start location at once, one row each; per row as `_dp_pass`.

    Per unit and location: new[t] = min(stay[t - run], switch[t - run - link]), marking in
    the choice array where the switch strictly won. Each state array is the upper half of
    a buffer whose lower half stays inf, so a shift by k is the view buf[n-k : 2n-k] and a
    location costs one `less` and one `minimum` (per-call overhead dominates at ~2000 steps).
    The sweeps differ only at the loop's start unit, where a row's forbidden location is
    reset to inf (and its choices to false), so sweeping the rows together halves the
    calls with every element computed as in its own sweep.
    """
    L = problem.n_units
    n = horizon + 1
    rows = len(starts)
    inf = np.inf
    less, minimum = np.less, np.minimum
    cur_c, new_c, cur_s, new_s = np.full((4, rows, 2 * n), inf)
    cur_c[:, n] = 0.0  # time 0 on the client
    from_s = np.zeros((L, rows, n), bool)  # client entry came from the server
    from_c = np.zeros((L, rows, n), bool)  # server entry came from the client
    cc, cs, up, dn = g["cc"], g["cs"], g["up"][:L], g["dn"]
    # Where each shifted view starts: buffer index n - min(shift, n).
    c_stay, c_switch = (n - np.minimum(cc, n)).tolist(), (n - np.minimum(cc + dn[:L], n)).tolist()
    s_stay, s_switch = (n - np.minimum(cs, n)).tolist(), (n - np.minimum(cs + up, n)).tolist()
    work = problem.server_work.tolist()
    allowed = problem.client_allowed.tolist()
    pinned = [False] * L if problem.client_required is None else problem.client_required.tolist()
    loop_start = problem.loop_start
    for u in range(L):
        at_start = u == loop_start
        out = new_c[:, n:]
        if allowed[u]:
            a, b = c_stay[u], c_switch[u]
            stay, switch = cur_c[:, a : a + n], cur_s[:, b : b + n]
            less(switch, stay, out=from_s[u])
            minimum(stay, switch, out=out)
            if at_start:
                _forbid(out, from_s[u], starts, 1)
        else:
            out.fill(inf)
        out = new_s[:, n:]
        if pinned[u]:  # no state on the server after a unit pinned to the client
            out.fill(inf)
            from_c[u].fill(False)
        else:
            a, b = s_stay[u], s_switch[u]
            stay, switch = cur_s[:, a : a + n], cur_c[:, b : b + n]
            less(switch, stay, out=from_c[u])
            minimum(stay, switch, out=out)
            out += work[u]
            if at_start:
                _forbid(out, from_c[u], starts, 0)
        cur_c, new_c = new_c, cur_c
        cur_s, new_s = new_s, cur_s
    return [
        _sweep_end(g, cur_c[r, n:], cur_s[r, n:], from_s[:, r], from_c[:, r], start_on, L)
        for r, start_on in enumerate(starts)
    ]


def _forbid(out: np.ndarray, choice: np.ndarray, starts: tuple, start_on: int) -> None:
    """Rows whose loop start is forced to `start_on` have no state at the other location."""
    for r, s in enumerate(starts):
        if s == start_on:
            out[r].fill(np.inf)
            choice[r].fill(False)


def _sweep_end(g: dict, cur_c, cur_s, from_s, from_c, start_on, L: int):
    """A sweep's best end: back on the client with the least work (then the least time)."""
    n = cur_c.shape[0]
    dn = g["dn"]
    end_c_shift = g["loop_up"] if start_on == 1 else 0
    end_s_shift = g["dn_end_loop"] if start_on == 1 else int(dn[L])
    end_c = np.full(n, np.inf)
    end_s = np.full(n, np.inf)
    _shift(end_c, cur_c, end_c_shift)
    _shift(end_s, cur_s, end_s_shift)
    best_c, best_s = end_c.min(), end_s.min()
    if not np.isfinite(min(best_c, best_s)):
        return None
    loc = 1 if best_s < best_c else 0
    end = end_s if loc else end_c
    t_end = int(np.flatnonzero(end == end.min())[0])
    t_last = t_end - (end_s_shift if loc else end_c_shift)
    return float(end.min()), t_end, loc, t_last, from_s, from_c


def _trace(g: dict, loc: int, t: int, from_s, from_c) -> np.ndarray:
    """Walk the choices back from the last unit to get the placement."""
    L = from_s.shape[0]
    cc, cs = g["cc"].tolist(), g["cs"].tolist()
    up, dn = g["up"].tolist(), g["dn"].tolist()
    on_client = [False] * L
    for u in range(L - 1, -1, -1):
        on_client[u] = loc == 0
        if loc == 0:
            came_from_server = bool(from_s[u, t])
            t -= cc[u] + (dn[u] if came_from_server else 0)
            loc = 1 if came_from_server else 0
        else:
            came_from_client = bool(from_c[u, t])
            t -= cs[u] + (up[u] if came_from_client else 0)
            loc = 0 if came_from_client else 1
    assert t == 0 and loc == 0, "trace-back must end at the client at time 0"
    return np.array(on_client, bool)


def _grid(problem: SplitProblem, step: float) -> dict:
    L = problem.n_units
    dn_end_loop = problem.downlink_time[L] - problem.loop_downlink_time
    return {
        "cc": grid_steps(problem.client_time, step),
        "cs": grid_steps(problem.server_time, step),
        "up": grid_steps(problem.entry_times, step),
        "dn": grid_steps(problem.downlink_time, step),
        "loop_up": int(grid_steps(problem.loop_uplink_time, step)),
        "dn_end_loop": int(grid_steps(max(dn_end_loop, 0.0), step)),
    }


def solve_dp(
    problem: SplitProblem, time_step: float | None = None, name: str = "dp", within: tuple = ()
) -> Plan:
    """Least server work within the deadline, exactly (`sim.split.labels`); ties: the least
    latency. `time_step` is accepted for the callers of the grid DP and not used.

    `within`: more problems over the same units whose own "latency" must stay within their
    own deadline too: any resource additive along the chain, e.g. the server KV bytes of
    the units on the server (their `server_time`, the free memory their `deadline`). A plan
    that meets the deadline but not those is a fallback (`feasible` false)."""
    if not math.isfinite(problem.deadline):
        raise ValueError("dp needs a finite deadline")
    if not problem.client_allowed.any():
        on_server = np.zeros(problem.n_units, bool)
        plan = make_plan(problem, on_server, name)
        if plan.feasible and within_all(within, on_server):
            return plan
        return make_plan(problem, on_server, name, fallback=True, reason=_NO_FIT)
    return exact_search(problem, name, within)


def within_all(within: tuple, on_client: np.ndarray) -> bool:
    """Whether a placement keeps every problem of `within` inside its deadline."""
    return all(evaluate(p, on_client)[0] <= p.deadline * (1 + 1e-12) for p in within)


def exact_search(problem: SplitProblem, name: str = "dp", within: tuple = ()) -> Plan:
    """`solve_dp`'s search proper (no shortcut): the labels' least-work placement that
    `make_plan` confirms within the deadline (and `within`'s), else the least-latency
    fallback."""
    confirmed = []  # the plan `make_plan` confirmed, kept rather than made again

    def accept(on_client: np.ndarray) -> bool:
        plan = make_plan(problem, on_client, name)
        confirmed.append(plan)
        return plan.feasible and within_all(within, on_client)

    problems = [problem, *within]
    limits = [p.deadline for p in problems]
    found = exact.search(labels.criteria_of(problems, limits, problem.server_work), accept)
    if found is None:
        plan = fastest_plan(problem, name, reason=_NO_FIT)
        return replace(plan, feasible=False) if within else plan
    return confirmed[-1]


def solve_dp_grid(
    problem: SplitProblem, time_step: float | None = None, name: str = "dp_grid"
) -> Plan:
    """The SplitLLM paper's DP: least server work within the deadline on a latency grid of
    `time_step` seconds (default deadline / 2000), every time rounded up to the grid."""
    if not np.isfinite(problem.deadline):
        raise ValueError("dp needs a finite deadline")
    step = max(time_step or problem.deadline / DEFAULT_STEPS, problem.deadline / MAX_STEPS)
    if not step > 0:
        raise ValueError("time_step must be > 0")
    horizon = int(grid_steps(problem.deadline, step, up=False))
    g = _grid(problem, step)
    if not problem.client_allowed.any():
        return _server_only_plan(problem, g, horizon, step, name)
    return _search(problem, g, horizon, step, name)


def _search(problem: SplitProblem, g: dict, horizon: int, step: float, name: str) -> Plan:
    """The DP proper: sweeps (one per location of the loop's start) and the trace-back."""
    starts = (0, 1) if problem.has_loop else (None,)
    best = None
    for found in _dp_sweeps(problem, g, horizon, starts):
        if found and (best is None or (found[0], found[1]) < (best[0], best[1])):
            best = found
    if best is None:
        return fastest_plan(problem, name, reason="no placement fits the deadline on the grid")
    _, _, loc, t_last, from_s, from_c = best
    on_client = _trace(g, loc, t_last, from_s, from_c)
    return make_plan(problem, on_client, name, time_step=step)


def _server_only_plan(problem: SplitProblem, g: dict, horizon: int, step: float, name: str):
    """The DP's answer when no unit may run on the client: the one placement, all on the
    server, found without a search. Its grid latency (the steps the DP would sum: entry,
    every unit, the way back) decides, as in the DP, whether it fits on the grid or is
    the fallback (the same placement, noted as a fallback)."""
    L = problem.n_units
    end = g["dn_end_loop"] if problem.has_loop else int(g["dn"][L])
    steps = int(g["up"][0]) + sum(g["cs"].tolist()) + end
    on_server = np.zeros(L, bool)
    if steps <= horizon:
        return make_plan(problem, on_server, name, time_step=step)
    reason = "no placement fits the deadline on the grid"
    return make_plan(problem, on_server, name, fallback=True, reason=reason)


def fastest_placement(problem: SplitProblem) -> np.ndarray:
    """The exact least-latency placement (ties: least server work); exact, no grid.

    With no unit allowed on the client the only placement (all on the server) is returned
    without a search.
    """
    if not problem.client_allowed.any():
        return np.zeros(problem.n_units, bool)
    return _fastest_search(problem)


def _fastest_search(problem: SplitProblem) -> np.ndarray:
    """`fastest_placement`'s exact search over both locations of every unit."""
    L = problem.n_units
    entry = problem.entry_times
    required = problem.client_required
    best_key, best_oc = None, None
    starts = (0, 1) if problem.has_loop else (None,)
    for start_on in starts:
        # state per location: (latency, work, placement list)
        INF = (np.inf, np.inf)
        prev = {0: (0.0, 0.0, []), 1: (*INF, [])}
        for u in range(L):
            cur = {}
            for loc in (0, 1):
                forbidden = (
                    (loc == 0 and not problem.client_allowed[u])
                    or (loc == 1 and required is not None and required[u])
                    or (u == problem.loop_start and start_on is not None and loc != start_on)
                )
                if forbidden:
                    cur[loc] = (*INF, [])
                    continue
                run = problem.client_time[u] if loc == 0 else problem.server_time[u]
                w = problem.server_work[u] if loc == 1 else 0.0
                options = []
                for p in (0, 1):
                    lat, wk, path = prev[p]
                    hop = 0.0 if p == loc else (entry[u] if loc else problem.downlink_time[u])
                    options.append((lat + hop + run, wk + w, path))
                lat, wk, path = min(options, key=lambda o: (o[0], o[1]))
                cur[loc] = (lat, wk, path + [loc == 0])
            prev = cur
        for loc in (0, 1):
            lat, wk, path = prev[loc]
            if not np.isfinite(lat):
                continue
            if loc == 1:
                lat += problem.downlink_time[L] - (
                    problem.loop_downlink_time if start_on == 1 else 0
                )
            elif start_on == 1:
                lat += problem.loop_uplink_time
            if best_key is None or (lat, wk) < best_key:
                best_key, best_oc = (lat, wk), path
    assert best_oc is not None
    return np.array(best_oc, bool)


def fastest_plan(problem: SplitProblem, policy: str, **notes) -> Plan:
    """Every policy's answer when nothing it considers fits: the least-latency placement."""
    return make_plan(problem, fastest_placement(problem), policy, fallback=True, **notes)
