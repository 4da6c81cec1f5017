"""The allocation policies and their registry; `solve()` is the one entry point.

Each policy takes a `SplitProblem` and returns a `Plan`. When nothing the policy considers
meets the deadline it returns the least-latency placement with `feasible=False`.

Planning costs nothing where nothing is searched: `server_only` and `client_only` declare
their fixed placement (`FIXED_PLACEMENTS`) and evaluate it once, no DP; the searching
policies skip their search when the problem leaves one placement (no unit allowed on the
client: `solve_dp` and `fastest_placement` return all-on-the-server directly).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from sim.split.dp import fastest_plan, solve_dp, solve_dp_grid
from sim.split.problem import Plan, SplitProblem, evaluate_many, make_plan
from sim.split.registry import Registry

PolicyFn = Callable[..., Plan]
POLICIES: Registry[PolicyFn] = Registry("policy")

_FITS = 1 + 1e-12  # relative slack for float error when comparing with the deadline


def _fits(latency, deadline: float):
    return latency <= deadline * _FITS


def _finish(problem: SplitProblem, on_client: np.ndarray, name: str) -> Plan:
    plan = make_plan(problem, on_client, name)
    return plan if plan.feasible else fastest_plan(problem, name)


# Policies whose plan depends on the server's live state: the engine plans their requests
# at arrival with the current expected server wait (`solve(..., server_wait_s=...)`).
LOAD_AWARE: frozenset[str] = frozenset({"dp_queue_aware", "dp_batched", "dp_batched_phases"})
# Policies that plan for a batching server (token granularity only): the engine gives
# them the problem of the request's marginal costs at the live batch size.
BATCHING_AWARE: frozenset[str] = frozenset({"dp_batched", "dp_batched_phases"})
# Policies that may place a generation's prefill and decode steps apart (token granularity
# only, with TTFT/TPOT SLAs: `sim.split.phase_plans`); else they are dp and dp_batched.
PHASE_PLANS: frozenset[str] = frozenset({"dp_phases", "dp_batched_phases"})
# Policies the token engine alone can run (one-line error at request granularity).
TOKEN_ONLY: frozenset[str] = BATCHING_AWARE | PHASE_PLANS


@POLICIES.register("dp")
def dp(problem: SplitProblem, time_step: float | None = None, **_) -> Plan:
    """The SplitLLM dynamic program, exact: least server work within the deadline."""
    return solve_dp(problem, time_step)


@POLICIES.register("dp_grid")
def dp_grid(problem: SplitProblem, time_step: float | None = None, **_) -> Plan:
    """The paper's discretised DP: least server work with every time rounded up to a grid
    (`split.time_step_s`, default deadline/2000); can need more work than `dp`."""
    return solve_dp_grid(problem, time_step)


@POLICIES.register("dp_queue_aware")
def dp_queue_aware(
    problem: SplitProblem,
    time_step: float | None = None,
    server_wait_s: float | np.ndarray = 0.0,
    server_busy: bool = False,
    shed: bool = True,
    **_,
) -> Plan:
    """The DP with the server's expected wait added to every entry onto the server.

    `server_wait_s` (s) is added to the problem's `server_entry_time`: each client -> server
    switch (and the start, if unit 0 runs on the server) costs the uplink plus that wait
    (one number, or one per boundary, see `SplitProblem`). With no wait it is exactly `dp`.
    The plan's latency includes the waits.

    Fitting a wait can need *more* server work than `dp`'s plan (fewer slow client units),
    which lengthens the queue for everyone: positive feedback near saturation. So:
    - the waited DP's plan is taken when it needs no more server work than `dp`'s, or when
      the server has headroom (`server_busy` false: recent utilisation below the limit);
    - otherwise (a busy server, or no placement fits the wait) the request sheds load: it
      takes the placement with the least server work (every unit the client holds on the
      client; `fallback`, usually `feasible=False`), relieving the queue for the others.

    With `shed=False` (a batching server, where one request's work barely moves the
    iteration time but a slow client stretches the request) the waited plan is always
    taken, and when nothing fits, the least-latency placement.
    """
    if not np.any(server_wait_s):
        return solve_dp(problem, time_step, name="dp_queue_aware")
    entry = problem.server_entry_time + np.asarray(server_wait_s, float)
    waited = replace(problem, server_entry_time=entry)
    plan = solve_dp(waited, time_step, name="dp_queue_aware")
    if not shed:
        return plan  # solve_dp falls back to the least-latency placement
    if plan.feasible:
        if not server_busy:
            return plan
        base = solve_dp(problem, time_step)
        if plan.server_work <= base.server_work * _FITS:
            return plan
    return make_plan(waited, problem.client_allowed, "dp_queue_aware", fallback=True, wait=True)


@POLICIES.register("dp_batched")
def dp_batched(
    problem: SplitProblem,
    time_step: float | None = None,
    server_wait_s: float | np.ndarray = 0.0,
    **_,
) -> Plan:
    """The exact DP for a continuous-batching server: least *marginal* server work within
    the deadline, every entry onto the server waiting for the iteration it joins.

    The token engine gives it the problem of the request's marginal costs at the server's
    live batch size (`sim.costs.marginal`: a decode step offloaded saves its own FLOPs
    and KV reads, not the weights the batch reads anyway) and the recent iteration time as
    `server_wait_s` (per pass through each entry, as `dp_queue_aware` at token
    granularity); it never sheds load. On a problem of batch-1 costs with no wait it is
    exactly `dp`.
    """
    if np.any(server_wait_s):
        entry = problem.server_entry_time + np.asarray(server_wait_s, float)
        problem = replace(problem, server_entry_time=entry)
    return solve_dp(problem, time_step, name="dp_batched")


@POLICIES.register("dp_phases")
def dp_phases(problem: SplitProblem, time_step: float | None = None, **_) -> Plan:
    """`dp` choosing among phase plans (`sim.split.phase_plans`: the prefill and the decode
    steps placed apart, the prompt's KV handed over once) where the token engine plans a
    generation under TTFT/TPOT SLAs; on one problem (no phases) exactly `dp`."""
    return solve_dp(problem, time_step, name="dp_phases")


@POLICIES.register("dp_batched_phases")
def dp_batched_phases(
    problem: SplitProblem, time_step: float | None = None, server_wait_s=0.0, **_
) -> Plan:
    """`dp_batched` choosing among phase plans (as `dp_phases`)."""
    plan = dp_batched(problem, time_step, server_wait_s)
    return replace(plan, policy="dp_batched_phases")


def _all_server(problem: SplitProblem) -> np.ndarray:
    """Every unit on the server but those pinned to the client."""
    if problem.client_required is not None:
        return problem.client_required.copy()
    return np.zeros(problem.n_units, bool)


def _all_allowed_client(problem: SplitProblem) -> np.ndarray:
    return problem.client_allowed.copy()


# Policies that search nothing: their placement is read off the problem's arrays (and
# evaluated once); only when it misses the deadline is the least-latency placement sought.
FIXED_PLACEMENTS: dict[str, Callable[[SplitProblem], np.ndarray]] = {
    "server_only": _all_server,
    "client_only": _all_allowed_client,
}


def searches(policy: str) -> bool:
    """Whether a policy searches placements (false: its placement is fixed by the problem)."""
    return policy not in FIXED_PLACEMENTS


@POLICIES.register("server_only")
def server_only(problem: SplitProblem, **_) -> Plan:
    """Everything on the server (units pinned to the client stay there): the baseline of
    conventional serving."""
    return _finish(problem, _all_server(problem), "server_only")


@POLICIES.register("client_only")
def client_only(problem: SplitProblem, **_) -> Plan:
    """Everything on the client (server-only units, if any, stay on the server)."""
    return _finish(problem, _all_allowed_client(problem), "client_only")


def _prefixes(problem: SplitProblem) -> np.ndarray:
    """Placements with units [0, k) on the client, k = 0..K (K = first unit it cannot
    hold), and the units pinned to the client on it in every one."""
    allowed = problem.client_allowed
    k_max = problem.n_units if allowed.all() else int(np.argmin(allowed))
    ks = np.arange(k_max + 1)
    out = np.arange(problem.n_units)[None, :] < ks[:, None]
    if problem.client_required is not None:
        out |= problem.client_required
    return out


@POLICIES.register("greedy")
def greedy(problem: SplitProblem, **_) -> Plan:
    """Prefix offload: move units to the client from the input side while the SLA holds.

    Stops at the first unit whose move would break the deadline (our greedy: prefix offload;
    the paper does not publish its rule).
    """
    candidates = _prefixes(problem)
    latency, _ = evaluate_many(problem, candidates)
    fits = _fits(latency, problem.deadline)
    if not fits[0]:
        return fastest_plan(problem, "greedy")
    k = int(np.argmin(fits)) - 1 if not fits.all() else len(fits) - 1
    return make_plan(problem, candidates[k], "greedy")


@POLICIES.register("best_cut")
def best_cut(problem: SplitProblem, **_) -> Plan:
    """The best single split point: client runs a prefix, the server the rest."""
    candidates = _prefixes(problem)
    latency, work = evaluate_many(problem, candidates)
    fits = _fits(latency, problem.deadline)
    if not fits.any():
        return fastest_plan(problem, "best_cut")
    order = np.lexsort((latency, np.where(fits, work, np.inf)))
    return make_plan(problem, candidates[order[0]], "best_cut")


@POLICIES.register("greedy_ratio")
def greedy_ratio(problem: SplitProblem, **_) -> Plan:
    """Repeatedly offload the unit with the most server work saved per second of latency
    added, from everything on the server (but the units pinned to the client)."""
    on_client = _all_server(problem)
    latency, _ = evaluate_many(problem, on_client)
    if not _fits(latency[0], problem.deadline):
        return fastest_plan(problem, "greedy_ratio")
    current = float(latency[0])
    while True:
        movable = np.flatnonzero(~on_client & problem.client_allowed & (problem.server_work > 0))
        if movable.size == 0:
            break
        trial = np.repeat(on_client[None, :], movable.size, axis=0)
        trial[np.arange(movable.size), movable] = True
        lat, _ = evaluate_many(problem, trial)
        ok = _fits(lat, problem.deadline)
        if not ok.any():
            break
        added = np.maximum(lat - current, 1e-15)
        ratio = np.where(ok, problem.server_work[movable] / added, -np.inf)
        pick = int(np.argmax(ratio))
        on_client[movable[pick]] = True
        current = float(lat[pick])
    return make_plan(problem, on_client, "greedy_ratio")


def solve(
    problem: SplitProblem,
    policy: str = "dp",
    time_step: float | None = None,
    server_wait_s: float | np.ndarray = 0.0,
    server_busy: bool = False,
    shed: bool = True,
) -> Plan:
    """Place the problem's units with the named policy.

    `server_wait_s` is the expected server wait per entry, `server_busy` whether the
    server's recent utilisation is at its limit and `shed` whether a load-aware policy may
    shed load to the client; only load-aware policies (`LOAD_AWARE`) use them.
    """
    fn = POLICIES.get(policy)
    if policy in LOAD_AWARE:
        return fn(
            problem, time_step=time_step, server_wait_s=server_wait_s, server_busy=server_busy,
            shed=shed,
        )  # fmt: skip
    return fn(problem, time_step=time_step)
