"""The DP (`sim.split.dp`) and its token-SLA bisection (`sim.split.phased`) for many
problems at once, each plan exactly the one-at-a-time plan.

`solve_dp_many` groups the problems by what fixes the sweep's shape (units, loop start,
whether there is a loop, horizon) and sweeps the rows of a group together, a chunk at a
time: one row per (problem, loop-start location), as `_dp_sweeps` does for one problem.
Row r's shifted view buf[r, n - k_r : 2n - k_r] is gathered for every row at once from a
sliding-window view of the buffer (`buf_windows[rows, starts]`: a copy of the very same
elements), so per unit and location every row takes the same `less`, `minimum` and `+=`
on the same floats as in its own sweep; a unit the row's client cannot hold and the loop
start's forbidden location are reset to inf (choices false) per row, as the single sweep
does. Sweep ends, the pick between the two loop-start rows and the trace-back are per row
as in `_sweep_end`, `_search` and `_trace` (the trace-back is that function).

`solve_phased_many` runs `solve_phased`'s bisection for many sizes round by round: each
round solves the mixed problems of every size still searching with `solve_dp_many`, then
moves each size's theta as `solve_phased` does; sizes leave when their search ends.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from sim.split.dp import (
    DEFAULT_STEPS,
    MAX_STEPS,
    _grid,
    _server_only_plan,
    _trace,
    fastest_plan,
    grid_steps,
)
from sim.split.phased import _BISECTIONS, Phases, _start_theta, judge, meets, mixed
from sim.split.problem import Plan, SplitProblem, make_plan

# Sweep rows per chunk: the choice arrays are (units, rows, horizon + 1) booleans.
CHUNK_ROWS = 16


def solve_dp_many(
    problems: list[SplitProblem], time_step: float | None = None, name: str = "dp"
) -> list[Plan]:
    """`solve_dp(p, time_step, name)` for every problem, swept together."""
    out: list[Plan | None] = [None] * len(problems)
    groups: dict[tuple, list[tuple[int, dict, float]]] = {}
    for i, p in enumerate(problems):
        if not np.isfinite(p.deadline):
            raise ValueError("dp needs a finite deadline")
        step = max(time_step or p.deadline / DEFAULT_STEPS, p.deadline / MAX_STEPS)
        if not step > 0:
            raise ValueError("time_step must be > 0")
        horizon = int(grid_steps(p.deadline, step, up=False))
        g = _grid(p, step)
        if not p.client_allowed.any():
            out[i] = _server_only_plan(p, g, horizon, step, name)
            continue
        key = (p.n_units, p.loop_start, bool(p.has_loop), horizon)
        groups.setdefault(key, []).append((i, g, step))
    for (_, _, has_loop, horizon), items in groups.items():
        starts = (0, 1) if has_loop else (None,)
        per = max(1, CHUNK_ROWS // len(starts))
        for c in range(0, len(items), per):
            chunk = items[c : c + per]
            chosen = _search_many([problems[i] for i, _, _ in chunk],
                                  [g for _, g, _ in chunk], horizon, starts)  # fmt: skip
            for (i, g, step), best in zip(chunk, chosen, strict=True):
                p = problems[i]
                if best is None:
                    reason = "no placement fits the deadline on the grid"
                    out[i] = fastest_plan(p, name, reason=reason)
                    continue
                loc, t_last, from_s, from_c = best
                on_client = _trace(g, loc, t_last, from_s, from_c)
                out[i] = make_plan(p, on_client, name, time_step=step)
    return out  # type: ignore[return-value]


def _search_many(problems: list[SplitProblem], gs: list[dict], horizon: int, starts: tuple):
    """Per problem, `_search`'s best sweep end: (end location, last unit's time, choice
    arrays (L, n) of its row) or None when nothing fits."""
    S = len(starts)
    L = problems[0].n_units
    loop_start = problems[0].loop_start
    n = horizon + 1
    R = len(problems) * S
    inf = np.inf
    less, minimum = np.less, np.minimum

    def rows(key, cols=None):  # (R, ...) per row: each problem's array once per start
        a = np.stack([g[key] if cols is None else g[key][:cols] for g in gs])
        return np.repeat(a, S, axis=0)

    cc, cs, up, dn = rows("cc"), rows("cs"), rows("up", L), rows("dn")
    c_stay = (n - np.minimum(cc, n)).T.copy()
    c_switch = (n - np.minimum(cc + dn[:, :L], n)).T.copy()
    s_stay = (n - np.minimum(cs, n)).T.copy()
    s_switch = (n - np.minimum(cs + up, n)).T.copy()
    work = np.repeat(np.stack([p.server_work for p in problems]), S, axis=0)
    work_t = [work[:, u : u + 1] for u in range(L)]
    allowed = np.repeat(np.stack([p.client_allowed for p in problems]), S, axis=0)
    barred = [np.flatnonzero(~allowed[:, u]) for u in range(L)]
    start_of = list(starts) * len(problems)
    on_1 = np.flatnonzero([s == 1 for s in start_of])  # client forbidden at the loop start
    on_0 = np.flatnonzero([s == 0 for s in start_of])  # server forbidden there

    cur_c, new_c, cur_s, new_s = np.full((4, R, 2 * n), inf)
    cur_c[:, n] = 0.0
    win = {id(b): sliding_window_view(b, n, axis=1) for b in (cur_c, new_c, cur_s, new_s)}
    from_s = np.zeros((L, R, n), bool)
    from_c = np.zeros((L, R, n), bool)
    rr = np.arange(R)
    for u in range(L):
        at_start = u == loop_start
        wc, ws = win[id(cur_c)], win[id(cur_s)]
        out = new_c[:, n:]
        stay, switch = wc[rr, c_stay[u]], ws[rr, c_switch[u]]
        fs = from_s[u]
        less(switch, stay, out=fs)
        minimum(stay, switch, out=out)
        bar = barred[u]
        if bar.size:
            out[bar] = inf
            fs[bar] = False
        if at_start and on_1.size:
            out[on_1] = inf
            fs[on_1] = False
        out = new_s[:, n:]
        stay, switch = ws[rr, s_stay[u]], wc[rr, s_switch[u]]
        fc = from_c[u]
        less(switch, stay, out=fc)
        minimum(stay, switch, out=out)
        out += work_t[u]
        if at_start and on_0.size:
            out[on_0] = inf
            fc[on_0] = False
        cur_c, new_c = new_c, cur_c
        cur_s, new_s = new_s, cur_s

    # the ends (`_sweep_end`): back on the client, shifted by the row's end crossing
    start1 = np.array([s == 1 for s in start_of])
    dn_last = dn[:, L]
    loop_up = np.repeat([g["loop_up"] for g in gs], S)
    dn_end_loop = np.repeat([g["dn_end_loop"] for g in gs], S)
    end_c_shift = np.where(start1, loop_up, 0)
    end_s_shift = np.where(start1, dn_end_loop, dn_last)
    end_c = win[id(cur_c)][rr, n - np.minimum(end_c_shift, n)]
    end_s = win[id(cur_s)][rr, n - np.minimum(end_s_shift, n)]
    best_c, best_s = end_c.min(axis=1), end_s.min(axis=1)
    loc = best_s < best_c
    end = np.where(loc[:, None], end_s, end_c)
    value = end.min(axis=1)
    t_end = end.argmin(axis=1)
    t_last = t_end - np.where(loc, end_s_shift, end_c_shift)
    fits = np.isfinite(np.minimum(best_c, best_s))
    value_l, t_end_l, loc_l = value.tolist(), t_end.tolist(), loc.tolist()
    t_last_l, fits_l = t_last.tolist(), fits.tolist()
    chosen = []
    for k in range(len(problems)):
        best = None
        for r in range(k * S, k * S + S):
            if fits_l[r] and (best is None or (value_l[r], t_end_l[r]) < (best[0], best[1])):
                best = (value_l[r], t_end_l[r], r)
        if best is None:
            chosen.append(None)
        else:
            r = best[2]
            chosen.append((int(loc_l[r]), int(t_last_l[r]), from_s[:, r], from_c[:, r]))
    return chosen


def solve_phased_many(wholes: list[SplitProblem], phases: list[Phases], name: str = "dp"):
    """`solve_phased(whole, phases, run)` for every size, with `run` the DP on the mixed
    problem (its default grid; the DP reads no wait), bisected round by round."""
    K = len(wholes)
    lo, hi = [0.0] * K, [1.0] * K
    theta = [_start_theta(p) for p in phases]
    plan: list = [None] * K
    best: list = [None] * K
    last: list = [None] * K
    active = list(range(K))
    for _ in range(_BISECTIONS):
        if not active:
            break
        problems = []
        for i in active:
            last[i] = mixed(phases[i], theta[i])
            problems.append(last[i][0])
        searching = []
        for i, p in zip(active, solve_dp_many(problems, None, name), strict=True):
            plan[i] = p
            if not p.feasible:
                continue  # no placement meets the mix, so none meets both
            ttft_ok, tpot_ok = meets(phases[i], p.on_client)
            if ttft_ok and tpot_ok:
                best[i] = p
                continue
            if not (ttft_ok or tpot_ok):
                continue
            lo[i], hi[i] = (theta[i], hi[i]) if not ttft_ok else (lo[i], theta[i])
            theta[i] = (lo[i] + hi[i]) / 2
            searching.append(i)
        active = searching
    for i in active:  # the bisection ran out (`solve_phased`'s `else`)
        problem, wait = last[i]
        fast = fastest_plan(replace(problem, server_entry_time=wait), plan[i].policy)
        if all(meets(phases[i], fast.on_client)):
            best[i] = replace(fast, notes={})
    return [
        judge(wholes[i], phases[i], best[i] if best[i] is not None else plan[i]) for i in range(K)
    ]
