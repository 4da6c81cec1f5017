"""The vectorised planning paths give the one-at-a-time path's plans bit for bit.

- dp_queue_aware's plans at arrival read off a staircase without building the size's
  problem (`Stairs.planned`) equal the staircase's plans judged on the waited problem
  (`Planner._from_stairs`): placement, latency, work, feasibility, client units,
  switches, deadline, server-only work and segments, for waits from none fitting to all.
- Plans whose segments are derived on first use equal plans built with them.
"""

from __future__ import annotations

import gc
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from test_batched_planning import SLAS, _same, _scenario

from sim.engine.heap import frozen_heap
from sim.engine.plan_batch import Arrays, collector_paused, prefetch
from sim.engine.plan_dp import _criteria, _structures_of, groups_of
from sim.engine.plan_fixed import stacked_dot
from sim.engine.plan_wait import _entries, _fast, fast_latency
from sim.engine.planner import (
    PlannedRequest,
    Planner,
    ProblemBook,
    _planned,
    pass_waits,
    plan_segments,
)
from sim.engine.setup import RunSetup
from sim.split.problem import SplitProblem, evaluate
from sim.split.structural import latencies

WAITS = (1e-5, 1e-4, 7e-4, 3e-3, 0.01, 0.03, 0.1, 0.4, 1.0)


def _keys(rng: np.random.Generator, groups: tuple[int, ...], count: int) -> list[tuple]:
    """Random sizes on the given client groups, with one-token and one-step edge cases."""
    keys = [
        (0, g, int(p), int(o))
        for g in groups
        for p, o in zip(rng.integers(1, 3000, count), rng.integers(2, 400, count), strict=True)
    ]
    return keys + [(0, g, 1, 2) for g in groups] + [(0, g, 2999, 2) for g in groups]


@pytest.mark.parametrize("sla", ["token", "ttft_e2e"])
def test_staircase_plan_at_arrival_equals_the_judged_plan(tmp_path, sla):
    book = _scenario(tmp_path, "llama-2-7b", "generate", SLAS[sla], True)
    planner = Planner(book, "dp_queue_aware", wait_per_pass=True, shed=False)
    keys = _keys(np.random.default_rng(5), (0, 1, 2, 3), 25)
    prefetch(planner, keys)
    fast = slow = 0
    for key in keys:
        stairs = planner.stairs[key]
        for wait in WAITS:
            got = stairs.planned(book, key, np.float64(wait), planner.policy)
            rp = book.get(*key)
            want = planner._from_stairs(stairs, rp, wait)
            if got is None:  # the staircase does not decide alone: judged or searched
                found = stairs.pick(wait)
                assert found is None or not found[1]
                slow += 1
                continue
            fast += 1
            assert want is not None and type(got.plan.latency) is float
            ref = _planned(rp, want)
            _same(got, ref)
            assert (got.plan.client_units, got.plan.switches) == (
                int(want.on_client.sum()), want.switches,
            )  # fmt: skip
    assert fast > slow and fast > 500


def test_lazy_segments_equal_eager_ones(tmp_path):
    book = _scenario(tmp_path, "gpt2", "generate", SLAS["e2e"], False)
    planner = Planner(book, "dp")
    for key in [(0, g, p, 30) for g in range(4) for p in (5, 300)]:
        planned = planner.get(*key)
        rp = book.get(*key)
        segments = plan_segments(rp.problem, rp.work, planned.plan.on_client)
        eager = PlannedRequest(
            planned.plan, segments, planned.deadline_s, planned.server_only_work,
            any(s[0] == 1 for s in segments), float(sum(s[2] for s in segments if s[0] == 2)),
        )  # fmt: skip
        _same(planned, eager)


@pytest.mark.parametrize("model", ["llama-2-7b", "transformer-base"])
def test_staircase_terms_give_evaluate_for_every_structure(tmp_path, model):
    """Every structure's latency from its plain-float terms (at most two entries onto the
    server and returns) or from `Stairs.evaluate` (any placement) equals `evaluate` on
    the size's problem with the waits per pass, bit for bit."""
    book = _scenario(tmp_path, model, "generate", SLAS["token"], True)
    planner = Planner(book, "dp_queue_aware", wait_per_pass=True, shed=False)
    keys = _keys(np.random.default_rng(9), (0, 2, 3), 6)
    prefetch(planner, keys)
    kinds = set()
    for key in keys:
        stairs = planner.stairs[key]
        sh = stairs.shared
        rp = book.get(*key)
        q = np.arange(sh.on_client.shape[0])
        terms = _fast(sh, np.full(q.shape[0], stairs.row), q)
        for wait in (0.0, 1e-4, 0.02, 0.5):
            whole = rp.problem.with_entry(pass_waits(rp.work, wait))
            for n, t in enumerate(terms):
                want = evaluate(whole, sh.on_client[n])
                assert stairs.evaluate(n, wait) == want
                if t is not None:
                    assert fast_latency(t, wait) == want[0]
                    kinds.add((t[6], t[4] > 0))
                else:
                    kinds.add("numpy")
    assert (0, True) in kinds and {(1, False), (-1, False)} & kinds


def test_stacked_dot_equals_one_product_per_row():
    """The stack of (1, n) @ (n,) products is each row's product bit for bit (an
    elementwise sum is not: its summation order differs), for lengths around the kernels'
    unrolling and 0/1 rows as `evaluate` has them."""
    rng = np.random.default_rng(3)
    for n in (1, 3, 8, 9, 16, 33, 34, 35, 67, 130):
        a = (rng.random((400, n)) < 0.6).astype(float)
        b = rng.random((400, n)) * 10.0 ** rng.uniform(-6, 3, (400, n))
        want = [float((a[i][None, :] @ b[i])[0]) for i in range(400)]
        assert stacked_dot(a, b).tolist() == want


SIZES = {"e2e": (2, 400), "relative": (2, 400), "token": (2, 500), "ttft_e2e": (2, 500)}


@pytest.mark.parametrize("policy", ["server_only", "dp"])
@pytest.mark.parametrize("sla", list(SLAS))
def test_batched_plans_equal_one_at_a_time_on_many_random_sizes(tmp_path, policy, sla):
    """Plans of many random sizes (with one output token, so no loop, and one decode step)
    from the batch (`plan_fixed`, `plan_dp`: vectorised evaluation) equal a fresh
    planner's one at a time: placement, latency, work, feasibility, counts, segments;
    sizes the batch leaves (a fixed placement missing its deadline, a plan near a limit)
    are planned one at a time and equal too."""
    token = sla.startswith("t")
    book = _scenario(tmp_path, "llama-2-7b", "generate", SLAS[sla], token)
    rng = np.random.default_rng(zlib.crc32(f"{policy}/{sla}".encode()))  # not hash(): salted
    low, high = SIZES[sla]
    keys = [
        (0, g, int(p), int(o))
        for g in range(4)
        for p, o in zip(rng.integers(1, 4000, 40), rng.integers(low - 1, high, 40), strict=True)
    ] + [(0, g, p, o) for g in range(4) for p, o in ((1, 1), (1, 2), (3999, 1), (3999, 2))]
    batched = Planner(book, policy, wait_per_pass=token, shed=not token)
    prefetch(batched, keys)
    from_batch = sum(key in batched._plans for key in set(keys))
    ref = Planner(ProblemBook(book.ld), policy, wait_per_pass=token, shed=not token)
    for key in keys:
        got, want = batched.get(*key), ref.get(*key)
        _same(got, want)
        assert (got.plan.client_units, got.plan.switches) == (
            int(want.plan.on_client.sum()), want.plan.switches,
        )  # fmt: skip
    if sla == "relative" and policy == "server_only":
        # a relative SLA's batch takes the sizes whose server-only latency fits 1 s
        fits = {key for key in set(keys) if ref.get(*key).plan.latency <= 0.999}
        assert fits and all(key in batched._plans for key in fits)
    elif policy == "server_only" or token:  # dp plans a batch under token SLAs only
        assert from_batch >= len(set(keys)) // 2


def test_index_plans_maps_requests_to_plans_in_order_of_first_arrival():
    """The distinct keys (sorted), their order of first arrival and each request's key, as
    a dictionary walk over the arrivals finds them."""
    rng = np.random.default_rng(4)
    n = 500
    cols = {
        "klass": rng.integers(0, 2, n), "group": rng.integers(0, 3, n),
        "prompt_tokens": rng.integers(1, 6, n), "output_tokens": rng.integers(1, 4, n),
    }  # fmt: skip
    arrivals = type("Arrivals", (), {"__len__": lambda self: n, **cols})()
    distinct, first_order, of_request = RunSetup._distinct_keys(SimpleNamespace(arr=arrivals))
    keys = list(zip(*(c.tolist() for c in cols.values()), strict=True))
    assert distinct == sorted(set(keys))
    seen: dict[tuple, int] = {}
    for key in keys:
        seen.setdefault(key, len(seen))
    assert [distinct[d] for d in first_order] == list(seen)
    assert [distinct[d] for d in of_request] == keys


def test_collector_paused_restores_the_collector_and_freezes_only_inside_a_run():
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        made = [[] for _ in range(50)]
    assert gc.isenabled() and gc.get_freeze_count() == 0  # outside a run: nothing frozen
    with frozen_heap():
        before = gc.get_freeze_count()
        with collector_paused():
            made += [[] for _ in range(50)]
        assert gc.isenabled() and gc.get_freeze_count() >= before + 50
    assert gc.get_freeze_count() == 0
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # left as it was
    finally:
        gc.enable()


def test_staircase_keeps_what_fits_where_less_work_does_not_in_rank_order(tmp_path):
    """Each size's staircase, from first principles: the structures that fit at some wait
    (largest wait >= 0) larger than any structure of less work fits, least work first,
    then least latency criterion by criterion, then structure order."""
    book = _scenario(tmp_path, "llama-2-7b", "generate", SLAS["ttft_e2e"], True)
    planner = Planner(book, "dp_queue_aware", wait_per_pass=True, shed=False)
    keys = _keys(np.random.default_rng(8), (0, 2, 3), 8)
    prefetch(planner, keys)
    for key in keys:
        stairs = planner.stairs[key]
        sh = stairs.shared
        b = sh.batch
        group = next(g for g in groups_of(b.whole.allowed, b.ok & b.phased) if stairs.row in g)
        n = int(np.flatnonzero(group == stairs.row)[0])  # the size's place in its group
        c = _criteria(b, group)
        st = _structures_of(c)
        t0, work = latencies(c, st, slice(n, n + 1))
        t0, work = t0[:, 0, :].T, work[0]  # (Q, K), (Q,)
        entries = _entries(b, c, st, group[n : n + 1])[:, 0, :].T
        limit = c.limit[n] * (1 + 1e-9)
        with np.errstate(divide="ignore", invalid="ignore"):
            room = np.where(entries > 0, (limit - t0) / entries,
                            np.where(t0 <= limit, np.inf, -np.inf))  # fmt: skip
        wmax = room.min(axis=1)
        kept = [
            q for q in range(work.shape[0])
            if wmax[q] >= 0 and all(wmax[q] > wmax[p] for p in range(work.shape[0])
                                    if work[p] < work[q])
        ]  # fmt: skip
        kept.sort(key=lambda q: (work[q], *t0[q], q))
        assert stairs.structure == kept
        assert stairs.work == work[kept].tolist() and stairs.wmax == wmax[kept].tolist()
        assert stairs.t0 == t0[kept].tolist() and stairs.entries == entries[kept].tolist()


def test_batch_rows_valid_as_split_problem_would_accept_them():
    """`Arrays.valid` with every row fine (checked at once) and with bad rows (NaN, inf, a
    negative time, a loop beyond the downlink: checked row by row) agrees with
    constructing each row's `SplitProblem`."""
    rng = np.random.default_rng(6)
    K, L = 40, 7
    fields = {n: rng.random((K, L)) for n in ("server_t", "client_t", "server_work")}
    fields |= {n: rng.random((K, L + 1)) + 0.5 for n in ("up", "down")}
    loop_up, loop_down = rng.random(K) * 0.4, rng.random(K) * 0.4
    allowed = np.ones((K, L), bool)

    def rows_ok(f) -> list[bool]:
        out = []
        for i in range(K):
            try:
                SplitProblem(f["client_t"][i], f["server_t"][i], f["server_work"][i],
                             f["up"][i], f["down"][i], 1.0, allowed[i], 0,
                             float(loop_up[i]), float(loop_down[i]))  # fmt: skip
                out.append(True)
            except ValueError:
                out.append(False)
        return out

    a = Arrays(None, **fields, allowed=allowed, loop_up=loop_up, loop_down=loop_down)
    assert a.valid().tolist() == rows_ok(fields) == [True] * K
    fields["client_t"][3, 2] = np.nan
    fields["up"][7, 0] = np.inf
    fields["server_work"][9, 5] = -1e-9
    loop_down[11] = fields["down"][11, -1] + 1e-6
    a = Arrays(None, **fields, allowed=allowed, loop_up=loop_up, loop_down=loop_down)
    want = rows_ok(fields)
    assert a.valid().tolist() == want and want.count(False) == 4
