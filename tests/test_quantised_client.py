"""Quantised clients: a client group's own copy of the weights at another precision.

`clients[].weight_dtype` (`sim.costs.precision`) changes the client's side only: its unit
times (weight bytes at its precision, FLOPs and compute rate at the activation dtype),
what `resident: fit` holds and, through its busy time, its energy. The server's times and
every transfer stay as with the model's own precision. Checked here: dp on problems built
with a quantised client equals an exhaustive search over all 2^L placements; int4 lowers
memory-bound decode times and leaves compute-bound pass times alone; `fit` holds more at
int4 on a memory-limited phone; groups sharing a device at two precisions keep their own
times; the batch planner agrees with the one-at-a-time path; both engines run a quantised
group end to end, its requests.csv showing the lower client times and the larger offload;
an unknown precision is one line.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.catalog import get_device, get_model
from sim.catalog.specs import ModelSpec
from sim.cli import main
from sim.config import load_scenario
from sim.costs import request_work
from sim.costs.precision import weight_copy
from sim.engine.plan_batch import prefetch
from sim.engine.planner import Planner, ProblemBook
from sim.runner import run_scenario
from sim.split import Link, SplitProblem, build_problem, solve
from sim.split.problem import evaluate_many

FITS = 1 + 1e-12  # the library's own slack for float error against the deadline
REL = 1e-9
SERVER = get_device("a100-80gb")
CLIENTS = ["phone-flagship", "laptop-m2", "rpi4", "jetson-orin-nano"]


# ---- (a) dp against exhaustive search on problems with a quantised client ------------------


@st.composite
def tiny_models(draw) -> ModelSpec:
    """A small decoder (or encoder) whose chain has at most 10 units at sublayer granularity."""
    heads = draw(st.sampled_from([2, 4]))
    return ModelSpec(
        name="tiny",
        architecture=draw(st.sampled_from(["decoder", "encoder"])),
        layers=draw(st.integers(1, 4)),
        hidden_size=heads * draw(st.sampled_from([16, 32, 64])),
        heads=heads,
        kv_heads=draw(st.sampled_from([1, heads])),
        mlp_size=draw(st.sampled_from([64, 256, 1024])),
        mlp_kind=draw(st.sampled_from(["gelu", "gated"])),
        vocab_size=draw(st.integers(100, 50_000)),
        max_positions=1024,
        weight_dtype=draw(st.sampled_from(["fp32", "fp16", "bf16"])),
    )


@st.composite
def quantised_cases(draw) -> tuple[SplitProblem, SplitProblem]:
    """(the problem with a quantised client, the same at the model's own precision), with
    a deadline among the quantised problem's placement latencies (ties on purpose) or
    just beside one."""
    model = draw(tiny_models())
    task = "generate" if model.architecture == "decoder" and draw(st.booleans()) else "forward"
    prompt = draw(st.integers(1, 256))
    output = draw(st.integers(1, 32)) if task == "generate" else 0
    granularity = draw(st.sampled_from(["block", "sublayer"]))
    client = get_device(draw(st.sampled_from(CLIENTS)))
    resident = draw(st.sampled_from(["all", "fit"]))
    if resident == "fit":  # memory for a share of the model at its own precision
        own = request_work(model, task, prompt, output, granularity)
        need = float((own.weight_bytes + own.kv_bytes).sum())
        client = client.model_copy(update={"memory_gb": draw(st.floats(0.05, 1.0)) * need / 1e9})
    link = Link(draw(st.floats(0.5, 1000)), draw(st.floats(0.5, 1000)), draw(st.floats(0, 100)))
    common = dict(
        model=model, task=task, prompt_tokens=prompt, output_tokens=output, client=client,
        server=SERVER, link=link, deadline_s=1.0, resident=resident, granularity=granularity,
        objective=draw(st.sampled_from(["server_time", "server_flops"])),
    )  # fmt: skip
    dtype = draw(st.sampled_from(["int8", "int4"]))
    quantised = build_problem(**common, client_weight_dtype=dtype)
    own = build_problem(**common)
    latency, _ = evaluate_many(quantised, placements(quantised.client_allowed))
    pick = draw(st.sampled_from(sorted(latency.tolist())))
    deadline = max(pick * draw(st.sampled_from([1.0, 1.0001, 0.9999, 1.5])), 1e-9)
    return quantised.with_deadline(deadline), own.with_deadline(deadline)


def placements(allowed: np.ndarray) -> np.ndarray:
    """Every on_client vector the client's resident units allow, one per row."""
    rows = np.array(list(itertools.product([False, True], repeat=allowed.shape[0])), bool)
    return rows[(~rows | allowed).all(axis=1)]


def oracle(p: SplitProblem) -> tuple[float, float] | None:
    """(server work, latency) of the exhaustive optimum: the least server work within the
    deadline, ties by the least latency; None when no placement meets the deadline."""
    latency, work = evaluate_many(p, placements(p.client_allowed))
    fits = latency <= p.deadline * FITS
    if not fits.any():
        return None
    least = work[fits].min()
    tied = fits & (work <= least + REL * max(abs(least), 1e-300))
    return float(least), float(latency[tied].min())


def close(a: float, b: float) -> bool:
    return abs(a - b) <= REL * max(abs(a), abs(b), 1e-300)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)  # fmt: skip
@given(case=quantised_cases())
def test_dp_equals_exhaustive_search_with_a_quantised_client(case):
    quantised, own = case
    plan = solve(quantised, "dp")
    best = oracle(quantised)
    assert plan.feasible == (best is not None)
    assert not (plan.on_client & ~quantised.client_allowed).any()
    if best is None:  # the least-latency fallback
        latency, _ = evaluate_many(quantised, placements(quantised.client_allowed))
        assert close(plan.latency, float(latency.min()))
        return
    assert plan.latency <= quantised.deadline * FITS
    assert close(plan.server_work, best[0]), (plan.server_work, best)
    assert close(plan.latency, best[1]), (plan.latency, best)


@settings(max_examples=60, deadline=None)
@given(case=quantised_cases())
def test_only_the_client_side_changes_with_its_precision(case):
    """The server's times and work, every transfer and the loop are the model's; the
    client is never slower and holds at least the units it holds at its own precision."""
    quantised, own = case
    for name in ("server_time", "server_work", "uplink_time", "downlink_time"):
        assert np.array_equal(getattr(quantised, name), getattr(own, name)), name
    assert (quantised.loop_uplink_time, quantised.loop_downlink_time) == (
        own.loop_uplink_time, own.loop_downlink_time,
    )  # fmt: skip
    assert (quantised.client_time <= own.client_time).all()
    assert (quantised.client_allowed | ~own.client_allowed).all()


def test_the_models_own_precision_is_the_model_itself():
    """Unset, or set to the model's own weight_dtype: the same object and the same problem,
    so scenarios that do not use the field are unchanged bit for bit."""
    model = get_model("llama-3-8b")
    assert weight_copy(model, None) is model and weight_copy(model, "bf16") is model
    assert weight_copy(model, "int4") is weight_copy(model, "int4")
    assert weight_copy(model, "int4").activation_dtype == model.activation_dtype
    args = (model, "generate", 300, 20, get_device("phone-flagship"), SERVER, Link(20, 100, 30),
            5.0)  # fmt: skip
    a, b = build_problem(*args, resident="fit"), build_problem(*args, resident="fit",
                                                               client_weight_dtype="bf16")  # fmt: skip
    for name in ("client_time", "server_time", "uplink_time", "downlink_time", "client_allowed"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


# ---- (b) unit times ---------------------------------------------------------------------------


def test_int4_lowers_memory_bound_decode_times():
    """A decode step reads every weight of a block for one token: memory-bound on a phone,
    so the client's block and head times fall with the weight bytes (int4 < int8 < the
    model's bf16), while the server's stay."""
    model, phone = get_model("llama-3-8b"), get_device("phone-flagship")
    link = Link(20, 100, 30)
    problems = {
        dt: build_problem(model, "generate", 128, 64, phone, SERVER, link, 10.0,
                          client_weight_dtype=dt)
        for dt in (None, "int8", "int4")
    }  # fmt: skip
    own, int8, int4 = (problems[d].client_time for d in (None, "int8", "int4"))
    blocks = slice(1, None)  # the blocks and the head (the embedding gathers rows only)
    assert (int4[blocks] < int8[blocks]).all() and (int8[blocks] < own[blocks]).all()
    assert int4[1] < 0.4 * own[1]  # a block: a quarter of the bytes, plus its KV and overhead
    assert np.array_equal(problems["int4"].server_time, problems[None].server_time)


def test_int4_keeps_compute_bound_times():
    """A forward pass of 2048 tokens through a GPT-2-medium block does ~50 GFLOP against
    ~34 MB on a phone: compute-bound by far (checked), so the roofline's time is the FLOP
    time, which weight-only quantisation does not change (compute stays at the activation
    dtype): the blocks' and head's times are equal bit for bit. The embedding, a gather of
    rows, reads fewer bytes and gets faster."""
    model, phone = get_model("gpt2-medium"), get_device("phone-flagship")
    assert phone.non_overlap == 0.0  # the plain roofline: max(FLOP time, byte time)
    work = request_work(model, "forward", 2048)
    compute_s = work.pass_flops / phone.flops_per_s(model.activation_dtype)
    memory_s = work.pass_bytes / phone.bytes_per_s
    assert (compute_s[1:] > 5 * memory_s[1:]).all()  # compute-bound at fp16 already
    link = Link(20, 100, 30)
    own, int4 = (
        build_problem(model, "forward", 2048, 0, phone, SERVER, link, 1.0, client_weight_dtype=dt)
        for dt in (None, "int4")
    )
    assert np.array_equal(int4.client_time[1:], own.client_time[1:])
    assert int4.client_time[0] < own.client_time[0]


# ---- (c) resident: fit --------------------------------------------------------------------------


def test_fit_holds_more_units_at_int4_on_a_memory_limited_phone():
    """Llama-3-8B's 16 GB of bf16 weights do not fit a 12 GB phone; at int8 (8 GB) and
    int4 (4 GB) every unit does, with the request's KV cache (kept at the activation
    precision) counted too."""
    model, phone = get_model("llama-3-8b"), get_device("phone-flagship")
    held = {
        dt: int(build_problem(model, "generate", 1000, 200, phone, SERVER, Link(20, 100, 30),
                              10.0, resident="fit", client_weight_dtype=dt).client_allowed.sum())
        for dt in (None, "fp16", "int8", "int4")
    }  # fmt: skip
    units = model.layers + 2
    assert held[None] == held["fp16"] < units  # bf16 and fp16: 2 bytes a weight
    assert held["int8"] == held["int4"] == units
    # on the 4 GB Raspberry Pi only int4 changes anything: bf16 and int8 hold few units
    pi = get_device("rpi4")
    pi_held = [
        int(build_problem(model, "generate", 1000, 200, pi, SERVER, Link(20, 100, 30), 10.0,
                          resident="fit", client_weight_dtype=dt).client_allowed.sum())
        for dt in (None, "int8", "int4")
    ]  # fmt: skip
    assert pi_held[0] < pi_held[1] < pi_held[2] < units


# ---- scenarios: planner caches, batch path, both engines ---------------------------------------

L_QWEN = 26  # qwen2.5-0.5b: embedding, 24 blocks, head


def scenario(tmp_path, granularity: str = "request", **overrides) -> dict:
    """Two groups on the same phone and link, one at the model's own precision (bf16) and
    one at int4; a relaxed class (both run on the client) and a tight one (only int4 fits
    its deadline on the client)."""
    link = {"uplink_mbps": 20, "downlink_mbps": 100, "rtt_ms": 30}
    body = {
        "name": "quantised", "seed": 5, "requests": 60,
        "policies": ["dp", "server_only"],
        "server": {"device": "a100-80gb"},
        "clients": [
            {"name": "own", "count": 30, "device": "phone-flagship", "resident": "fit",
             "link": link},
            {"name": "int4", "count": 30, "device": "phone-flagship", "resident": "fit",
             "weight_dtype": "int4", "link": link},
        ],
        "workload": {"arrival": {"kind": "poisson", "rate_per_s": 2}, "mix": [
            {"name": "relaxed", "model": "qwen2.5-0.5b", "task": "generate",
             "prompt_tokens": 256, "output_tokens": 64, "deadline_s": 3.0},
            {"name": "tight", "model": "qwen2.5-0.5b", "task": "generate",
             "prompt_tokens": 256, "output_tokens": 64, "deadline_s": 1.2},
        ]},
        "simulation": {"granularity": granularity},
        **overrides,
    }  # fmt: skip
    path = tmp_path / "quantised.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def test_groups_sharing_a_device_keep_their_own_precision(tmp_path):
    """The book's unit times are cached per (device, precision): the int4 group's client
    times are its own, not the bf16 group's, and the server's are shared."""
    book = ProblemBook(load_scenario(scenario(tmp_path)))
    own, int4 = book.get(0, 0, 256, 64).problem, book.get(0, 1, 256, 64).problem
    assert (int4.client_time < own.client_time).all()
    assert np.array_equal(int4.server_time, own.server_time)
    assert np.array_equal(int4.uplink_time, own.uplink_time)
    model = get_model("qwen2.5-0.5b")
    expected = build_problem(weight_copy(model, "int4"), "generate", 256, 64,
                             get_device("phone-flagship"), SERVER, Link(20, 100, 30), 3.0)  # fmt: skip
    assert np.array_equal(int4.client_time, expected.client_time)


@pytest.mark.parametrize("policy", ["dp", "greedy", "client_only", "dp_queue_aware"])
def test_batch_planner_equals_one_at_a_time_with_a_quantised_group(tmp_path, policy):
    """`prefetch`'s arrays (`sim.engine.plan_batch`) use the group's precision as the
    one-at-a-time path does: the same plans, bit for bit."""
    ld = load_scenario(scenario(tmp_path))
    keys = [(k, g, p, o) for k in (0, 1) for g in (0, 1) for p, o in ((256, 64), (40, 7))]
    batched = Planner(ProblemBook(ld), policy)
    prefetch(batched, keys)
    ref = Planner(ProblemBook(ld), policy)
    for key in keys:
        a, b = ref.get(*key), batched.get(*key)
        assert np.array_equal(a.plan.on_client, b.plan.on_client), key
        assert (a.plan.latency, a.plan.server_work) == (b.plan.latency, b.plan.server_work)
        pa, pb = ref.book.get(*key).problem, batched.book.get(*key).problem
        assert np.array_equal(pa.client_time, pb.client_time)
        assert np.array_equal(pa.client_allowed, pb.client_allowed)


@pytest.mark.parametrize("granularity", ["request", "token"])
def test_a_quantised_group_runs_end_to_end(tmp_path, granularity):
    """requests.csv of dp: in the relaxed class both groups run every unit on the client,
    the int4 group busy for exactly its lower client time (and using less energy); in the
    tight class only the int4 group fits the deadline on the client, so it offloads every
    unit while the bf16 group runs on the server."""
    ld = load_scenario(scenario(tmp_path, granularity))
    run_scenario(ld, tmp_path / "out", command=["test"])
    rows = pd.read_csv(tmp_path / "out" / "requests.csv")
    dp = rows[(rows.policy == "dp") & (rows.status == "completed")]
    model, phone = get_model("qwen2.5-0.5b"), get_device("phone-flagship")
    busy = {
        dt: build_problem(model, "generate", 256, 64, phone, SERVER, Link(20, 100, 30), 3.0,
                          client_weight_dtype=dt).client_time.sum()
        for dt in (None, "int4")
    }  # fmt: skip
    relaxed, tight = dp[dp.request_class == "relaxed"], dp[dp.request_class == "tight"]
    for group, dt in (("own", None), ("int4", "int4")):
        mine = relaxed[relaxed.client_class == group]
        assert len(mine) >= 5
        assert (mine.client_units == L_QWEN).all()
        assert np.allclose(mine.client_busy_s, busy[dt], rtol=1e-9, atol=0)
    assert busy["int4"] < 0.5 * busy[None]
    energy = relaxed.groupby("client_class").client_energy_j.mean()
    assert energy["int4"] < 0.5 * energy["own"]
    units = tight.groupby("client_class").client_units
    assert (units.min()["int4"], units.max()["own"]) == (L_QWEN, 0)
    assert tight[tight.client_class == "int4"].server_busy_s.max() == 0.0
    assert (tight[tight.client_class == "own"].server_busy_s > 0).all()


# ---- (e) bad input ------------------------------------------------------------------------------


def test_unknown_precision_is_one_line(tmp_path, capsys):
    path = scenario(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace("weight_dtype: int4", "weight_dtype: int3"))
    assert main(["run", str(bad), "-o", str(tmp_path / "bad_out"), "--quiet"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert f"{bad}: clients.1.weight_dtype: " in err and "'int8' or 'int4'" in err
    assert not (tmp_path / "bad_out").exists()
