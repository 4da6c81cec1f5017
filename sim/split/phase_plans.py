"""Phase plans: a generation's prefill and its decode steps placed apart.

Prefill is compute-bound and batches well; decode is memory-bound and pays the link on
every token when split. A phase plan runs the prefill with one placement P and every
decode step with another, D; where they differ, a unit's KV cache of the prompt moves
once between the phases (down for a unit the client decodes after the server prefilled
it, up for the converse): disaggregated serving (Splitwise, DistServe) across the
client/server boundary. With the phases of a request (`sim.split.phased.Phases`: the
prefill problem, the mean decode step's, k steps) and its handoff times (`Handoff`):

    TTFT = prefill(P),  e2e = prefill(P) + handoff(P, D) + k x step(D),
    TPOT = step(D) + handoff(P, D) / k  (the handoff delays the second token),
    server work = prefill work(P) + k x step work(D).

`solve_phase_plans` searches, exactly, three families and keeps the least work meeting
every limit: one placement for both phases (`solve_dp_phased`); the prefill on the server
(the pinned units on the client) and any decode placement, the KV of the units the
client decodes sent down once; any prefill placement and every decode step on the server,
the KV of the units the client prefilled sent up once. The handoff's per-unit transfer
times are additive along the chain, so each family is the exact DP over one phase's
placement with the other phase fixed (its latency a constant taken off the limits); the
link's delay of a handoff is taken off too (a plan without a handoff is judged without
it). Not searched: two different split placements (both P and D with client and server
units), which would need four locations per unit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from sim.split import exact, labels
from sim.split.phased import _FITS, Phases, solve_dp_phased
from sim.split.problem import Plan, SplitProblem, evaluate


@dataclass(frozen=True)
class Handoff:
    """The time to move each unit's prompt KV between the phases: serialisation down and
    up (s, per unit) and the link's delay once per direction used (s)."""

    down_s: np.ndarray
    up_s: np.ndarray
    delay_down_s: float
    delay_up_s: float

    @staticmethod
    def of(kv_bytes: np.ndarray, up_mbps: float, down_mbps: float, rtt_ms: float) -> Handoff:
        """The handoff of units holding `kv_bytes` of prompt KV over a link (half the round
        trip each way, as every crossing: `sim.costs.roofline.crossing_s`)."""
        bits = np.asarray(kv_bytes, float) * 8.0
        delay = rtt_ms / 2e3
        return Handoff(bits / (down_mbps * 1e6), bits / (up_mbps * 1e6), delay, delay)

    def seconds(self, prefill_on_client: np.ndarray, decode_on_client: np.ndarray) -> float:
        """The handoff's time between placements P and D (each direction in turn)."""
        down = ~prefill_on_client & decode_on_client
        up = prefill_on_client & ~decode_on_client
        total = 0.0
        if down.any():
            total += self.delay_down_s + float(self.down_s[down].sum())
        if up.any():
            total += self.delay_up_s + float(self.up_s[up].sum())
        return total


def phase_plan(
    phases: Phases, handoff: Handoff, prefill: np.ndarray, decode: np.ndarray, policy: str
) -> Plan:
    """The plan of placements P (`prefill`) and D (`decode`): its end-to-end latency and
    server work, feasible when it meets the TTFT, the TPOT and the end-to-end limit;
    `decode_on_client` set when D differs from P."""
    ttft, w_pre = evaluate(phases.prefill, prefill)
    step, w_step = evaluate(phases.step, decode)
    k = phases.steps
    hand = handoff.seconds(prefill, decode)
    latency = ttft + hand + k * step
    tpot = step + hand / k if k else 0.0
    ok = (
        ttft <= phases.ttft_s * _FITS
        and tpot <= phases.tpot_s * _FITS
        and latency <= phases.e2e_s * _FITS
    )
    same = bool((prefill == decode).all())
    oc = np.asarray(prefill, bool).copy()
    oc.setflags(write=False)
    plan = Plan(oc, latency, w_pre + k * w_step, bool(ok), policy, {})
    if not same:
        dec = np.asarray(decode, bool).copy()
        dec.setflags(write=False)
        plan = replace(plan, decode_on_client=dec, notes={"handoff_s": hand})
    return plan


def solve_phase_plans(
    whole: SplitProblem, phases: Phases, handoff: Handoff, policy: str = "dp"
) -> Plan:
    """The least server work meeting every limit over the three families (module doc);
    ties: the least latency, then one placement for both phases. When none meets them,
    the one-placement search's fallback."""
    same = solve_dp_phased(whole, phases, policy)
    if phases.steps <= 0:
        return same
    best = same if same.feasible else None
    for found in (_decode_apart(phases, handoff, policy), _prefill_apart(phases, handoff, policy)):
        if found is not None and (
            best is None or (found.server_work, found.latency) < (best.server_work, best.latency)
        ):
            best = found
    return same if best is None else best


def _fixed(problem: SplitProblem) -> np.ndarray:
    """The placement of every unit on the server but those pinned to the client."""
    req = problem.client_required
    return np.zeros(problem.n_units, bool) if req is None else req.copy()


def _search(problems: list, limits: list, work: np.ndarray, accept) -> None:
    """The exact DP over one phase's placement: the least `work` within every limit that
    `accept` confirms (it keeps the plan)."""
    if min(limits) <= 0:
        return
    problems = [p.with_deadline(lim) for p, lim in zip(problems, limits, strict=True)]
    exact.search(labels.criteria_of(problems, limits, work), accept)


def _decode_apart(phases: Phases, handoff: Handoff, policy: str) -> Plan | None:
    """The prefill on the server, the least-work decode placement D meeting the limits;
    the KV of D's client units (not pinned) goes down once."""
    pre, step, k = phases.prefill, phases.step, phases.steps
    prefill = _fixed(pre)
    ttft = evaluate(pre, prefill)[0]
    if not ttft <= phases.ttft_s * _FITS:
        return None
    moved = np.where(prefill, 0.0, handoff.down_s)  # a pinned unit is on the client already
    tpot = replace(step, client_time=step.client_time + moved / k)
    e2e = replace(step, client_time=k * step.client_time + moved, server_time=k * step.server_time,
                  uplink_time=k * step.uplink_time, downlink_time=k * step.downlink_time,
                  loop_uplink_time=k * step.loop_uplink_time,
                  loop_downlink_time=k * step.loop_downlink_time,
                  server_entry_time=k * np.asarray(step.server_entry_time))  # fmt: skip
    limits = [phases.tpot_s - handoff.delay_down_s / k, phases.e2e_s - ttft - handoff.delay_down_s]
    return _best(phases, handoff, policy, [tpot, e2e], limits, step.server_work,
                 lambda d: (prefill, d))  # fmt: skip


def _prefill_apart(phases: Phases, handoff: Handoff, policy: str) -> Plan | None:
    """Every decode step on the server, the least-work prefill placement P meeting the
    limits; the KV of P's client units (not pinned) goes up once."""
    pre, step, k = phases.prefill, phases.step, phases.steps
    decode = _fixed(step)
    step_s = evaluate(step, decode)[0]
    moved = np.where(decode, 0.0, handoff.up_s)
    zero = np.zeros(pre.n_units + 1)
    up = replace(pre, client_time=moved, server_time=np.zeros(pre.n_units), uplink_time=zero,
                 downlink_time=zero, loop_uplink_time=0.0, loop_downlink_time=0.0,
                 server_entry_time=0.0)  # fmt: skip
    e2e = replace(pre, client_time=pre.client_time + moved)
    limits = [
        phases.ttft_s,
        k * (phases.tpot_s - step_s) - handoff.delay_up_s,
        phases.e2e_s - k * step_s - handoff.delay_up_s,
    ]
    return _best(phases, handoff, policy, [pre, up, e2e], limits, pre.server_work,
                 lambda p: (p, decode))  # fmt: skip


def _best(phases, handoff, policy, problems, limits, work, placements) -> Plan | None:
    """The family's exact search: criteria with finite limits, each candidate judged as a
    phase plan; its best feasible plan or None."""
    kept = [(p, lim) for p, lim in zip(problems, limits, strict=True) if np.isfinite(lim)]
    if not kept:
        kept = [(problems[0], np.inf)]
    found: list[Plan] = []

    def accept(on_client: np.ndarray) -> bool:
        prefill, decode = placements(on_client)
        plan = phase_plan(phases, handoff, prefill, decode, policy)
        found.append(plan)
        return plan.feasible

    _search([p for p, _ in kept], [lim for _, lim in kept], work, accept)
    return found[-1] if found and found[-1].feasible else None
