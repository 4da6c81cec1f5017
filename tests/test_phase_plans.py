"""Phase plans (`sim.split.phase_plans`): the prefill and the decode steps placed apart,
the prompt's KV handed over once. Exact over their families (exhaustive search), pinned
units respected, and run by the token engine as planned."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
from chat_scenario import chat_scenario

from sim.config.load import validate
from sim.engine.planner import Planner, ProblemBook
from sim.errors import UserError
from sim.runner import run_one
from sim.split.phase_plans import Handoff, phase_plan, solve_phase_plans
from sim.split.problem import evaluate

MID = {  # a 6-layer, Llama-sized decoder: slow prefill on a laptop, 8 units to enumerate
    "architecture": "decoder", "layers": 6, "hidden_size": 4096, "heads": 32, "kv_heads": 8,
    "mlp_size": 14336, "mlp_kind": "gelu", "vocab_size": 32000, "max_positions": 8192,
}  # fmt: skip


def _book(model: str = "mid", **mix) -> tuple:
    raw = chat_scenario("phases", 1, 10, clients=4, max_batch_requests=8, rate_per_s=1.0,
                        prompt_median=1000, prompt_max=4000, output=(5, 200),
                        policies=["dp_phases"])  # fmt: skip
    raw["models"] = {"mid": MID}
    for m in raw["workload"]["mix"]:
        m.update(model=model, **mix)
    ld = validate(raw)
    return ld, ProblemBook(ld)


def _placements(n: int, allowed: np.ndarray, required) -> np.ndarray:
    rows = np.array(list(itertools.product([False, True], repeat=n)), bool)
    ok = (~rows | allowed).all(axis=1)
    if required is not None:
        ok &= (rows | ~required).all(axis=1)
    return rows[ok]


def test_phase_plans_are_the_least_work_of_their_families():
    """Against an exhaustive search of the three families (one placement for both
    phases; the prefill on the server with every decode placement; every prefill
    placement with the decode steps on the server), random sizes, SLAs and pinned units:
    never more work than the best feasible plan, feasible whenever one is."""
    ld, book = _book()
    rng = np.random.default_rng(11)
    chosen = 0
    for trial in range(40):
        prompt, out = int(rng.integers(200, 4000)), int(rng.integers(5, 200))
        rp = book.get(0, 0, prompt, out)
        n = rp.problem.n_units
        pin = (np.arange(n) < int(rng.integers(0, 3))) & rp.problem.client_allowed
        whole = replace(rp.problem, client_required=pin)
        phases = replace(
            rp.phases, prefill=replace(rp.phases.prefill, client_required=pin),
            step=replace(rp.phases.step, client_required=pin),
            ttft_s=float(rng.uniform(0.02, 1.0)), tpot_s=float(rng.uniform(0.005, 0.05)),
            e2e_s=float(rng.choice([np.inf, rng.uniform(1.0, 8.0)])),
        )  # fmt: skip
        link = ld.scenario.clients[0].link
        hand = Handoff.of(book.work(0, prompt, 1).kv_bytes, link.uplink_mbps,
                          link.downlink_mbps, link.rtt_ms)  # fmt: skip
        plan = solve_phase_plans(whole, phases, hand, "dp_phases")
        fixed = whole.client_required if whole.client_required is not None else np.zeros(n, bool)
        best = None
        for r in _placements(n, whole.client_allowed, whole.client_required):
            for p, d in ((r, r), (fixed, r), (r, fixed)):
                cand = phase_plan(phases, hand, p, d, "dp_phases")
                if cand.feasible and (best is None or cand.server_work < best.server_work):
                    best = cand
        decode = plan.on_client if plan.decode_on_client is None else plan.decode_on_client
        assert plan.on_client[pin].all() and decode[pin].all()
        assert plan.feasible == (best is not None), trial
        if best is not None:
            assert plan.server_work <= best.server_work * (1 + 1e-9), trial
            again = phase_plan(phases, hand, plan.on_client, decode, "dp_phases")
            assert again.feasible and again.server_work == pytest.approx(plan.server_work)
        chosen += plan.decode_on_client is not None
    assert chosen >= 5  # phase plans do win on some of them


def test_the_handoff_moves_each_changed_units_prompt_kv_once():
    kv = np.array([0.0, 100.0, 200.0, 300.0])
    hand = Handoff.of(kv, up_mbps=8.0, down_mbps=16.0, rtt_ms=20.0)
    p = np.array([False, False, True, True])
    d = np.array([False, True, True, False])
    # unit 1 goes down (server prefilled it, client decodes), unit 3 goes up
    expect = 0.01 + 100 * 8 / 16e6 + 0.01 + 300 * 8 / 8e6
    assert hand.seconds(p, d) == pytest.approx(expect)
    assert hand.seconds(p, p) == 0.0


def _qwen_chat(policies: list[str]) -> dict:
    """Qwen2.5-0.5B chat from laptops with long prompts and a tight TTFT: the prefill is
    slow on a laptop, its decode steps fast; phones hold nothing."""
    raw = chat_scenario("phases", 3, 300, clients=20, max_batch_requests=32, rate_per_s=1.0,
                        prompt_median=2500, prompt_max=6000, output=(50, 300),
                        policies=policies)  # fmt: skip
    for m in raw["workload"]["mix"]:
        m.update(model="qwen2.5-0.5b", ttft_deadline_s=0.3, tpot_deadline_s=0.05)
    return raw


def test_phase_plans_run_as_planned_and_save_server_work():
    """In the token engine, requests planned with the prefill on the server and their
    decode steps on the laptop realise the planned TTFT and TPOT (median within 2 %),
    spend the handoff's time on the link, and the server's work falls below dp's."""
    ld = validate(_qwen_chat(["dp_phases", "dp"]))
    res = run_one(ld, "dp_phases")
    dp = run_one(ld, "dp")
    book = ProblemBook(ld)
    planner = Planner(book, "dp_phases")
    arr = res.arrivals
    ttft, tpot, kv_sent = [], [], []
    for i in range(len(arr)):
        key = (int(arr.klass[i]), int(arr.group[i]), int(arr.prompt_tokens[i]),
               int(arr.output_tokens[i]))  # fmt: skip
        plan = planner.get(*key).plan
        if plan.decode_on_client is None:
            continue
        ph = book.get(*key).phases
        step = evaluate(ph.step, plan.decode_on_client)[0]
        ttft.append(res.token.ttft_s[i] / evaluate(ph.prefill, plan.on_client)[0])
        tpot.append(res.token.tpot_s[i] / (step + plan.notes["handoff_s"] / ph.steps))
        link = ld.scenario.clients[key[1]].link
        hand = planner.handoff(key, link.uplink_mbps, link.downlink_mbps)
        kv_sent.append(res.transfer_s[i] >= hand.seconds(plan.on_client, plan.decode_on_client))
    assert len(ttft) >= 0.3 * len(arr)
    assert abs(np.median(ttft) - 1) < 0.02 and abs(np.median(tpot) - 1) < 0.02
    assert all(kv_sent)
    assert res.server_work.sum() < 0.8 * dp.server_work.sum()


@pytest.mark.parametrize("policy", ["dp_phases", "dp_batched_phases"])
def test_phase_plan_policies_need_the_token_engine(policy):
    raw = _qwen_chat([policy])
    raw["simulation"] = {"granularity": "request"}
    for m in raw["workload"]["mix"]:
        del m["ttft_deadline_s"], m["tpot_deadline_s"]
        m["deadline_s"] = 10.0
    with pytest.raises(UserError, match=f"policies.0: {policy} "):
        validate(raw, "s.yaml")
