"""`dp_batched`: planning on a batching server's marginal costs (`sim.costs.marginal`), its
exactness on the problems it builds, and its planned latencies against the token engine."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
from chat_scenario import chat_scenario

from sim.catalog import get_device, get_model
from sim.config.load import validate
from sim.costs import request_work
from sim.costs.kernels import unit_overheads_s
from sim.costs.marginal import marginal_times_s, mean_step
from sim.costs.roofline import unit_times_s
from sim.engine.batching import BatchCost, weight_read_bytes
from sim.engine.planner import ProblemBook, batch_waits
from sim.errors import UserError
from sim.runner import run_one
from sim.split import evaluate, evaluate_many, solve

A100 = get_device("a100-80gb")


def _cost(model, work) -> tuple[BatchCost, int, np.ndarray]:
    """A batch-cost accumulator as the token server builds it, its model index, W."""
    dtype = model.activation_dtype
    cost = BatchCost(A100.flops_per_s(dtype), A100.bytes_per_s, A100.overhead_us * 1e-6,
                     A100.non_overlap)  # fmt: skip
    shared = weight_read_bytes(model, work.units)
    return cost, cost.add_model(shared, unit_overheads_s(model, work.units, A100)), shared


@pytest.mark.parametrize("batch", [1, 4, 32])
def test_marginal_times_are_what_the_iteration_price_adds(batch):
    """A request of one prefill and one decode step joining `batch` requests in their
    decode steps adds, over its two iterations, exactly the marginal times summed over
    units: the token server's own pricing (`BatchCost`) with and without it."""
    model = get_model("llama-3-8b")
    work = request_work(model, "generate", 512, 2)  # the pass and one decode step
    assert work.steps == 1
    cost, m, shared = _cost(model, work)
    L = work.n_units
    f, b = mean_step(work, shared)
    g = cost.group(m, work.step_flops0, work.step_flops1, work.step_bytes0, work.step_bytes1)

    def iteration(steps: int, with_pass: bool) -> float:
        for _ in range(steps):
            cost.add_step(g, 0, L, work.ctx_first)
        if with_pass:
            own = np.maximum(work.pass_bytes - shared, 0.0)
            cost.add_pass(m, 0, L, work.pass_flops, own)
        return cost.close()

    base = iteration(batch, False)
    added = (iteration(batch, True) - base) + (iteration(batch + 1, False) - base)
    marginal = marginal_times_s(work, work, shared, A100, model.activation_dtype, batch)
    assert marginal.sum() == pytest.approx(added, rel=1e-9)
    assert f.shape == b.shape == (L,)


def test_alone_the_request_pays_its_batch_one_times():
    model = get_model("llama-3-8b")
    work = request_work(model, "generate", 256, 64)
    shared = weight_read_bytes(model, work.units)
    alone = marginal_times_s(work, work, shared, A100, "bf16", 0)
    assert np.array_equal(alone, unit_times_s(work, A100, "bf16"))


def test_decode_costs_little_and_prefill_nearly_all_in_a_large_batch():
    """At 32 requests in the batch a decode step's marginal time is a small share of its
    batch-1 time (the weights are read for the batch anyway); a long prefill, compute
    bound, keeps most of its time."""
    model = get_model("llama-3-8b")
    dec = request_work(model, "generate", 64, 129)
    pre = request_work(model, "forward", 2048)
    shared = weight_read_bytes(model, dec.units)
    dtype = model.activation_dtype
    blocks = slice(1, -1)
    d_marg = marginal_times_s(dec, dec, shared, A100, dtype, 32)[blocks].sum()
    d_alone = unit_times_s(dec, A100, dtype)[blocks].sum()
    p_marg = marginal_times_s(pre, dec, shared, A100, dtype, 32)[blocks].sum()
    p_alone = unit_times_s(pre, A100, dtype)[blocks].sum()
    assert d_marg < 0.2 * d_alone
    assert p_marg > 0.8 * p_alone


def _chat(policies: list[str], rate_per_s: float, requests: int, seed: int = 5) -> dict:
    raw = chat_scenario("batched", seed, requests, clients=30, max_batch_requests=64,
                        rate_per_s=rate_per_s, prompt_median=800, prompt_max=4000,
                        output=(40, 240), policies=policies)  # fmt: skip
    raw["warmup_s"] = 20
    return raw


def _placements(n: int, allowed: np.ndarray) -> np.ndarray:
    rows = np.array(list(itertools.product([False, True], repeat=n)), bool)
    return rows[(~rows | allowed).all(axis=1)]


@pytest.mark.parametrize("batch", [1, 8, 48])
def test_dp_batched_is_exact_on_the_problems_it_builds(batch):
    """gpt2 chat (14 units: 2^14 placements searched exhaustively) at a live batch: the
    plan's marginal work is the least of every placement within the deadline."""
    raw = _chat(["dp_batched"], 1.0, 10)
    for mix in raw["workload"]["mix"]:
        mix.update(model="gpt2", prompt_tokens=300, output_tokens=40, deadline_s=30.0)
        del mix["ttft_deadline_s"], mix["tpot_deadline_s"]
    ld = validate(raw)
    book = ProblemBook(ld)
    rng = np.random.default_rng(batch)
    for group in (0, 1):
        rp = book.get(0, group, 300, 40)
        up, down = (
            ld.scenario.clients[group].link.uplink_mbps,
            ld.scenario.clients[group].link.downlink_mbps,
        )
        at = book.at_batch(rp, 0, group, 300, up, down, batch)
        wait = float(rng.uniform(0.01, 0.05))
        whole, _, _ = batch_waits(at.work, wait, wait / 2)
        problem = at.problem.with_entry(whole)
        latency, work = evaluate_many(problem, _placements(problem.n_units, problem.client_allowed))
        for deadline in np.quantile(latency, [0.05, 0.3, 0.7]):
            p = problem.with_deadline(float(deadline))
            plan = solve(p, "dp")
            fits = latency <= deadline * (1 + 1e-12)
            assert plan.feasible
            assert plan.server_work <= work[fits].min() * (1 + 1e-9) + 1e-15
            batched = solve(at.problem.with_deadline(float(deadline)), "dp_batched",
                            server_wait_s=whole)  # fmt: skip
            assert batched.server_work == pytest.approx(plan.server_work, rel=1e-12)


def test_planned_latency_meets_the_token_engine_at_moderate_load():
    """Llama-3-8B chat at 1 request/s: dp_batched's planned latency is unbiased against the
    realised one (mean realised / planned within 10 %, median per-request error under
    15 %), where dp_queue_aware, which waits a whole iteration per pass on top of batch-1
    unit times, overestimates its all-server requests' latency by far."""
    ld = validate(_chat(["dp_batched", "dp_queue_aware"], 1.0, 500))
    ratios = {}
    for policy in ("dp_batched", "dp_queue_aware"):
        res = run_one(ld, policy)
        done = (res.status == 1) & (res.arrivals.time_s > 20)
        ratios[policy] = res.finish_s[done] - res.arrivals.time_s[done]
        ratios[policy] = ratios[policy] / res.planned_latency_s[done]
    batched = ratios["dp_batched"]
    assert abs(batched.mean() - 1) < 0.10
    assert np.median(np.abs(batched - 1)) < 0.15
    assert abs(batched.mean() - 1) < abs(ratios["dp_queue_aware"].mean() - 1)


def test_dp_batched_reports_batch_one_server_work():
    """Its plans' server work is the placement's batch-1 work, as every policy reports it
    (comparable), the marginal work it minimised kept in the plan's notes."""
    from sim.engine.planner import Planner

    ld = validate(_chat(["dp_batched"], 2.0, 10))
    book = ProblemBook(ld)
    planner = Planner(book, "dp_batched", wait_per_pass=True, shed=False)
    offloaded = 0
    for group, prompt, output, batch in itertools.product((0, 1), (200, 1500), (40, 200), (0, 16)):
        link = ld.scenario.clients[group].link
        planned = planner.get_at((0, group, prompt, output), 0.03, link.uplink_mbps,
                                 link.downlink_mbps, False, (batch, 0.02, np.inf))  # fmt: skip
        plan, nominal = planned.plan, book.get(0, group, prompt, output).problem
        assert plan.server_work == evaluate(nominal, plan.on_client)[1]
        if batch:
            at = book.at_batch(book.get(0, group, prompt, output), 0, group, prompt,
                               link.uplink_mbps, link.downlink_mbps, batch)  # fmt: skip
            assert plan.notes["marginal_work"] == pytest.approx(
                evaluate(at.problem, plan.on_client)[1], rel=1e-12
            )
        offloaded += plan.on_client.any()
    assert offloaded  # some plans split: the two works differ there


def test_dp_batched_needs_a_batching_server():
    raw = _chat(["dp_batched"], 1.0, 10)
    raw["simulation"] = {"granularity": "request"}
    for mix in raw["workload"]["mix"]:
        del mix["ttft_deadline_s"], mix["tpot_deadline_s"]
        mix["deadline_s"] = 30.0
    with pytest.raises(UserError, match="policies.0: dp_batched plans for a batching server"):
        validate(copy.deepcopy(raw), "s.yaml")


def test_under_kv_pressure_the_plan_fits_the_headroom_exactly():
    """With less KV headroom than the request's all-server KV, dp_batched's plan is the
    least marginal work among the placements that meet the SLA and hold at most the
    headroom on the server (exhaustive search over gpt2's 14 units); with no such
    placement it is the plan without the limit (which waits for memory)."""
    from sim.engine.planner import Planner, kv_problem

    raw = _chat(["dp_batched"], 1.0, 10)
    for mix in raw["workload"]["mix"]:
        mix.update(model="gpt2", prompt_tokens=300, output_tokens=40, deadline_s=30.0)
        del mix["ttft_deadline_s"], mix["tpot_deadline_s"]
    raw["split"] = {"plan_bucket_fraction": 0.0}
    ld = validate(raw)
    book = ProblemBook(ld)
    planner = Planner(book, "dp_batched", wait_per_pass=True, shed=False)
    link = ld.scenario.clients[0].link
    rp = book.get(0, 0, 300, 40)
    need = float(rp.work.kv_bytes.sum())
    kept = 0
    for share in (0.0, 0.2, 0.5, 0.8, 0.99, 1.5):
        plan = planner.get_at((0, 0, 300, 40), 0.02, link.uplink_mbps, link.downlink_mbps,
                              False, (8, 0.01, share * need)).plan  # fmt: skip
        if share >= 1:
            assert "kv_limit" not in plan.notes
            continue
        at = book.at_batch(rp, 0, 0, 300, link.uplink_mbps, link.downlink_mbps, 8)
        whole, _, _ = batch_waits(at.work, 0.02, 0.01)
        problem = at.problem.with_entry(whole)
        kv = kv_problem(at.problem, at.work, share * need)
        rows = _placements(problem.n_units, problem.client_allowed)
        latency, work = evaluate_many(problem, rows)
        held, _ = evaluate_many(kv, rows)
        fits = (latency <= problem.deadline * (1 + 1e-12)) & (held <= share * need)
        if fits.any():
            kept += 1
            assert plan.notes["kv_limit"] == share * need
            assert evaluate(kv, plan.on_client)[0] <= share * need
            best = work[fits].min()
            assert plan.notes["marginal_work"] <= best * (1 + 1e-9) + 1e-15
        else:
            assert "kv_limit" not in plan.notes
    assert kept >= 2


def test_under_kv_pressure_token_slas_and_the_limit_hold_together():
    """Llama-3-8B chat with TTFT and TPOT limits on a laptop: a plan made within a KV
    limit meets both SLAs as planned and holds at most the limit on the server."""
    from sim.engine.planner import Planner, kv_problem

    ld = validate(_chat(["dp_batched"], 1.0, 10))
    book = ProblemBook(ld)
    planner = Planner(book, "dp_batched", wait_per_pass=True, shed=False)
    link = ld.scenario.clients[0].link
    limited = 0
    for prompt, output, share in itertools.product((300, 1200), (60, 200), (0.3, 0.8, 0.95)):
        key = (0, 0, prompt, output)
        need = float(book.get(*key).work.kv_bytes.sum())
        plan = planner.get_at(key, 0.02, link.uplink_mbps, link.downlink_mbps, False,
                              (16, 0.01, share * need)).plan  # fmt: skip
        if "kv_limit" in plan.notes:
            limited += 1
            rp = book.get(*key)
            kv = kv_problem(rp.problem, rp.work, plan.notes["kv_limit"])
            assert plan.feasible
            assert evaluate(kv, plan.on_client)[0] <= share * need * (1 + 1e-12)
    assert limited >= 2
