"""Plans for generation under token SLAs: time to first token and time per output token.

A placement serves the prefill and every decode step alike, so with a TTFT and a TPOT SLA
it must meet two latency limits at once: the prefill's (`prefill`, the request with one
output token) and the mean decode step's (`step`: the whole request less its prefill,
divided by the steps; every problem vector enters the latency linearly, so this is exact
for the mean, which is what TPOT measures).

The DP handles one additive latency. Every placement that meets both limits also meets
any weighted mix of them, `theta x prefill / TTFT + (1 - theta) x step / TPOT <= 1`, so a
policy run on the mixed problem never loses a placement that meets both. `solve_phased`
starts from the mix equivalent to the end-to-end budget TTFT + steps x TPOT and bisects
theta (towards the prefill when the plan misses the TTFT, towards the step when it misses
the TPOT) until a plan meets both. When the mix has no placement within its limit, none
meets both: the policy's own answer to that mix (dp: the least mixed latency) is returned
with `feasible=False`. A policy's pick among placements of equal work can miss a limit
that another meets (real problems rarely tie: every unit has server work), so when the
bisection runs out the last mix's least-latency placement is the fallback candidate. The
first plan that meets both ends the search; another theta could need less server work,
so this is a sound but not always optimal search.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from sim.split import exact, labels
from sim.split.dp import fastest_plan, within_all
from sim.split.problem import Plan, SplitProblem, evaluate

_FITS = 1 + 1e-9  # relative slack for float error when comparing with a limit
_BISECTIONS = 8

# Policies whose placement depends on the deadline; the others are only re-judged.
DEADLINE_POLICIES = frozenset(
    {
        "dp",
        "dp_grid",
        "dp_queue_aware",
        "dp_batched",
        "dp_phases",
        "dp_batched_phases",
        "greedy",
        "greedy_ratio",
        "best_cut",
    }
)


@dataclass(frozen=True)
class Phases:
    """The prefill problem, the mean decode step problem (each with its expected server
    waits as `server_entry_time`), the number of steps and the limits in s (inf = none)."""

    prefill: SplitProblem
    step: SplitProblem
    steps: int
    ttft_s: float
    tpot_s: float
    e2e_s: float = float("inf")


# The fields of a split problem that are times (each enters the latency linearly).
_TIMES = (
    "client_time", "server_time", "uplink_time", "downlink_time",
    "loop_uplink_time", "loop_downlink_time",
)  # fmt: skip


def _combine(p: SplitProblem, q: SplitProblem, f: Callable, **fields) -> SplitProblem:
    """`p` with every time f(p's, q's) (never below 0) and the given fields replaced."""
    times = {n: np.maximum(f(getattr(p, n), getattr(q, n)), 0.0) for n in _TIMES}
    return replace(p, **times, **fields)


def split_phases(
    whole: SplitProblem, prefill: SplitProblem, steps: int, ttft_s, tpot_s, e2e_s=None
) -> Phases:
    """Phases of a generation request from its whole problem and its prefill-only problem."""
    k = float(steps)
    per_step_work = np.maximum((whole.server_work - prefill.server_work) / k, 0.0)
    step = _combine(
        whole, prefill, lambda w, f: (w - f) / k, server_work=per_step_work, deadline=np.inf
    )
    inf = float("inf")
    return Phases(
        prefill.with_deadline(np.inf), step, steps, ttft_s or inf, tpot_s or inf, e2e_s or inf
    )


def with_waits(phases: Phases, prefill_wait, step_wait) -> Phases:
    """The phases with an expected server wait per entry (scalar or per boundary)."""
    return replace(
        phases,
        prefill=phases.prefill.with_entry(prefill_wait),
        step=phases.step.with_entry(step_wait),
    )


def meets(phases: Phases, on_client: np.ndarray) -> tuple[bool, bool]:
    """Whether a placement meets the TTFT and the TPOT limit (planned times with waits)."""
    ttft = evaluate(phases.prefill, on_client)[0]
    tpot = evaluate(phases.step, on_client)[0]
    return ttft <= phases.ttft_s * _FITS, tpot <= phases.tpot_s * _FITS


def _weights(phases: Phases, theta: float) -> tuple[float, float]:
    a = theta / phases.ttft_s if np.isfinite(phases.ttft_s) else 0.0
    b = (1 - theta) / phases.tpot_s if np.isfinite(phases.tpot_s) else 0.0
    return a, b


def mixed(phases: Phases, theta: float) -> tuple[SplitProblem, np.ndarray]:
    """The problem theta x prefill / TTFT + (1 - theta) x step / TPOT with limit 1, and its
    server wait per boundary (kept apart so a load-aware policy sees it as a wait)."""
    a, b = _weights(phases, theta)
    pre, st = phases.prefill, phases.step
    n = pre.n_units + 1
    work = pre.server_work + phases.steps * st.server_work
    problem = _combine(
        st, pre, lambda s, p: a * p + b * s, server_work=work, server_entry_time=0.0, deadline=1.0
    )
    wait = a * np.broadcast_to(pre.server_entry_time, n) + b * np.broadcast_to(
        st.server_entry_time, n
    )
    return problem, wait


def _start_theta(phases: Phases) -> float:
    """The mix whose limit is the end-to-end budget TTFT + steps x TPOT."""
    ttft, tpot = phases.ttft_s, phases.tpot_s
    if not np.isfinite(tpot):
        return 1.0
    if not np.isfinite(ttft):
        return 0.0
    return ttft / (ttft + phases.steps * tpot)


def judge(
    whole: SplitProblem, phases: Phases, plan: Plan, on_whole: tuple[float, float] | None = None
) -> Plan:
    """`plan` on the whole request: its latency and work, feasible when it meets the TTFT,
    the TPOT and any end-to-end limit. `on_whole` is the placement's (latency s, work) on
    `whole` when the caller has it already (a plan made on `whole`): not evaluated again."""
    latency, work = evaluate(whole, plan.on_client) if on_whole is None else on_whole
    ok = all(meets(phases, plan.on_client)) and latency <= phases.e2e_s * _FITS
    return Plan(plan.on_client, latency, work, bool(ok), plan.policy, plan.notes)


def solve_phased(
    whole: SplitProblem, phases: Phases, run: Callable[[SplitProblem, np.ndarray], Plan]
) -> Plan:
    """Least server work meeting TTFT and TPOT, searched over mixes (see the module doc).

    `run(problem, wait)` runs the policy on a mixed problem with its server wait per
    boundary; `whole` (with its waits) gives the returned plan's latency and work.
    """
    lo, hi = 0.0, 1.0
    theta = _start_theta(phases)
    plan = best = None
    for _ in range(_BISECTIONS):
        problem, wait = mixed(phases, theta)
        plan = run(problem, wait)
        if not plan.feasible:
            break  # no placement meets the mix, so none meets both
        ttft_ok, tpot_ok = meets(phases, plan.on_client)
        if ttft_ok and tpot_ok:
            best = plan
            break
        if not (ttft_ok or tpot_ok):
            break  # both missed: no mix helps
        lo, hi = (theta, hi) if not ttft_ok else (lo, theta)
        theta = (lo + hi) / 2
    else:
        # the policy's picks among equal work kept missing a limit another placement may
        # meet: the last mix's least-latency placement is the fallback candidate
        fast = fastest_plan(replace(problem, server_entry_time=wait), plan.policy)
        if all(meets(phases, fast.on_client)):
            best = replace(fast, notes={})
    return judge(whole, phases, best if best is not None else plan)


def solve_dp_phased(
    whole: SplitProblem, phases: Phases, policy: str = "dp", within: tuple = ()
) -> Plan:
    """`dp` under token SLAs, exactly: the least server work (of `whole`) meeting the TTFT,
    the TPOT and any end-to-end limit, one latency criterion per finite limit in the
    exact DP (`sim.split.labels`), no mixes searched. When nothing meets them all, the
    start mix's least-latency placement, judged (`feasible=False`), as `solve_phased`.
    `within`: more additive limits, as `solve_dp`'s (a plan meeting the SLAs but not
    those is judged infeasible)."""
    problems, limits = [], []
    for problem, limit in ((phases.prefill, phases.ttft_s), (phases.step, phases.tpot_s),
                           (whole, phases.e2e_s)):  # fmt: skip
        if np.isfinite(limit):
            problems.append(problem)
            limits.append(limit)
    if not problems:  # no limit at all: every placement meets them
        problems, limits = [phases.prefill], [np.inf]
    problems += within
    limits += [p.deadline for p in within]
    judged: list[Plan] = []

    def accept(on_client: np.ndarray) -> bool:
        on_client.setflags(write=False)
        plan = judge(whole, phases, Plan(on_client, 0.0, 0.0, False, policy))
        if plan.feasible and not within_all(within, on_client):
            plan = replace(plan, feasible=False)
        judged.append(plan)
        return plan.feasible

    crit = labels.criteria_of(problems, limits, whole.server_work)
    if exact.search(crit, accept) is not None:
        return judged[-1]
    problem, wait = mixed(phases, _start_theta(phases))
    fast = judge(whole, phases, fastest_plan(replace(problem, server_entry_time=wait), policy))
    return replace(fast, feasible=False) if within else fast
