"""What one iteration of the batching server costs: its requests' work added to the
batch-cost accumulators (`sim.engine.batching.BatchCost`) and priced by roofline.

A prefill pass (or a chunk of one), a decode step, or the pass recomputing a preempted
request's KV each add their per-unit FLOPs and own bytes; an iteration's time sums, over
the accumulators (one per activation dtype), the roofline of every server unit used.
A decode span (`price_span`) prices a run of decode-only iterations at once.
"""

from __future__ import annotations

import numpy as np

from sim.engine.batching import BatchCost
from sim.engine.cohort import Cohort
from sim.engine.planner import ProblemBook
from sim.engine.token_program import TokenRequest


def price_span(batch: list, k: int, book: ProblemBook, cohort: Cohort | None = None) -> np.ndarray:
    """Durations (s) of the span's k iterations (see `BatchCost.close_span`), with the
    server's decode `cohort` in them if given (as `price`)."""
    costs: dict[BatchCost, None] = {}
    if cohort is not None:
        cohort.activate()
        costs[cohort.cost] = None
    for r in batch:
        cost, m = r.prog.model
        costs[cost] = None
        add_visit(r, cost, m, book)
    total = None
    for c in costs:
        d = c.close_span(k)
        total = d if total is None else total + d
    return total


def price(batch: list, book: ProblemBook, cohort: Cohort | None = None) -> tuple[float, float]:
    """The iteration's duration (s) and the tokens it processes (first server legs); with
    the server's decode `cohort` in the iteration, its steps too (its one accumulator:
    a cohort runs only with one, so the order of the costs' sum is not at stake)."""
    costs: dict[BatchCost, None] = {}  # insertion-ordered: a deterministic float sum
    tokens = 0.0
    if cohort is not None:
        cohort.activate()
        costs[cohort.cost] = None
    for r in batch:
        prog = r.prog
        cost, m = prog.model
        costs[cost] = None
        if r.recompute:
            tokens += add_recompute(r, cost, m, book)
        elif r.k:  # a decode step: `add_visit` and `BatchCost.add_step`, inline (once
            g, a, e, counts = prog.step_adds[r.leg]  # per request and iteration)
            ctx = r.ctx
            n_diff, c_diff = g.n_diff, g.c_diff
            n_diff[a] += 1
            n_diff[e] -= 1
            c_diff[a] += ctx
            c_diff[e] -= ctx
            g.active = True
            if counts:
                tokens += 1
        else:
            tokens += add_visit(r, cost, m, book)
    if cohort is not None:
        tokens += len(cohort.members)  # each member's step makes a token (whole numbers: exact)
    if len(costs) == 1:  # `sum` of one: 0 + x is x
        (cost,) = costs
        return cost.close(), tokens
    return sum(c.close() for c in costs), tokens


def add_recompute(r: TokenRequest, cost: BatchCost, m: int, book: ProblemBook) -> int:
    """Add the pass recomputing r's KV over its context on every server unit; its tokens."""
    prog = r.prog
    work = book.work(prog.klass, prog.prompt + r.generated, prog.output)
    own = np.maximum(work.pass_bytes - cost.weights[m], 0.0)
    for a in prog.server_units:
        cost.add_pass(m, a, a + 1, work.pass_flops, own)
    return prog.prompt + r.generated


def add_visit(r: TokenRequest, cost: BatchCost, m: int, book: ProblemBook) -> int:
    """Add r's current server leg (a prefill pass or chunk, or a decode step); the
    tokens it counts (on the pass's or step's first server leg only)."""
    prog = r.prog
    legs = prog.pass_legs if r.k == 0 else prog.step_legs
    _, a, e = legs[r.leg]
    if r.k == 0:
        if r.chunk == prog.prompt:
            cost.add_pass(m, a, e, prog.pass_flops, prog.pass_own)
        else:
            cost.add_pass(m, a, e, *chunk_cost(r, cost.weights[m], book))
        return r.chunk if r.leg == prog.pass_first_server else 0
    cost.add_step(prog.group, a, e, r.ctx)
    return 1 if r.leg == prog.step_first_server else 0


def chunk_cost(
    r: TokenRequest, weights: np.ndarray, book: ProblemBook
) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit FLOPs and own bytes of a prefill chunk: prompt tokens [done, done +
    chunk) attending to everything before them. Cumulative pass costs differ by the
    chunk's work; the chunk also reads the KV cache of the tokens already done."""
    prog, done, end = r.prog, r.done, r.done + r.chunk
    hi = book.work(prog.klass, end, prog.output)
    if not done:
        return hi.pass_flops, np.maximum(hi.pass_bytes - weights, 0.0)
    lo = book.work(prog.klass, done, prog.output)
    kv_read = hi.kv_bytes * done / (end + prog.output)
    own = np.maximum(hi.pass_bytes - lo.pass_bytes, 0.0) + kv_read
    return np.maximum(hi.pass_flops - lo.pass_flops, 0.0), own
