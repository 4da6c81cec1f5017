"""The allocation policies and their registry; `solve()` is the one entry point.

Each policy takes a `SplitProblem` and returns a `Plan`. When nothing the policy considers
meets the deadline it returns the least-latency placement with `feasible=False`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sim.split.dp import fastest_plan, solve_dp
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


@POLICIES.register("dp")
def dp(problem: SplitProblem, time_step: float | None = None) -> Plan:
    """The SplitLLM dynamic program: least server work within the deadline."""
    return solve_dp(problem, time_step)


@POLICIES.register("server_only")
def server_only(problem: SplitProblem, **_) -> Plan:
    """Everything on the server: the baseline of conventional serving."""
    return _finish(problem, np.zeros(problem.n_units, bool), "server_only")


@POLICIES.register("client_only")
def client_only(problem: SplitProblem, **_) -> Plan:
    """Everything on the client (server-only units, if any, stay on the server)."""
    return _finish(problem, problem.client_allowed.copy(), "client_only")


def _prefixes(problem: SplitProblem) -> np.ndarray:
    """Placements with units [0, k) on the client, k = 0..K (K = first unit it cannot hold)."""
    allowed = problem.client_allowed
    k_max = problem.n_units if allowed.all() else int(np.argmin(allowed))
    ks = np.arange(k_max + 1)
    return np.arange(problem.n_units)[None, :] < ks[:, None]


@POLICIES.register("greedy")
def greedy(problem: SplitProblem, **_) -> Plan:
    """Prefix offload: move units to the client from the input side while the SLA holds.

    Stops at the first unit whose move would break the deadline (the reported greedy).
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
    """Repeatedly offload the unit with the most server work saved per second of latency added."""
    on_client = np.zeros(problem.n_units, bool)
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


def solve(problem: SplitProblem, policy: str = "dp", time_step: float | None = None) -> Plan:
    """Place the problem's units with the named policy."""
    fn = POLICIES.get(policy)
    return fn(problem, time_step=time_step)
