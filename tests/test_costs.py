"""The cost model (sim.costs) against published figures and against brute force.

Every test that checks a published number cites where the number comes from. The other
tests check the closed forms of the cost model against direct re-computation.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.catalog import get_device, get_model
from sim.costs import (
    crossing_s,
    loop_time_s,
    model_units,
    param_count,
    request_work,
    roofline_s,
    summed_roofline_s,
    transfer_times_s,
    unit_overheads_s,
    unit_params,
    unit_times_s,
)
from sim.costs.roofline import bound_s
from sim.costs.work import Pass, _costs
from sim.split.build import Link, build_problem, resident_units

DECODERS = ["gpt2", "gpt2-medium", "llama-2-7b", "llama-3-8b", "mistral-7b", "qwen2.5-0.5b"]


def _blocks(work) -> np.ndarray:
    return np.array([u.kind == "block" for u in work.units])


def _d_attn(model) -> int:
    return model.heads * model.dim_head


def _matmul_weights_per_block(model) -> int:
    """Weights of one block's matrices (no biases, no norms), from the published config."""
    h, dq = model.hidden_size, _d_attn(model)
    dkv = model.n_kv_heads * model.dim_head
    attn = h * dq + 2 * h * dkv + dq * h
    mlp = (3 if model.mlp_kind == "gated" else 2) * h * model.mlp_size
    return attn + mlp


# ------------------------------------------------- 1. forward FLOPs: 2N + attention (Kaplan)
#
# Kaplan et al. 2020, "Scaling Laws for Neural Language Models" (arXiv:2001.08361), Table 1
# and Section 2.1: C_forward ~= 2N + 2 n_layer n_ctx d_attn FLOPs per token, N the
# non-embedding parameters. The n_ctx term is the attention over the context. Counting
# both products (Q.K^T and scores.V, 2 FLOPs per multiply-add each, as Hoffmann et al.
# 2022 "Chinchilla", Appendix F, do) over a causal pass of n tokens gives
# 4 d_attn * n(n+1)/2 per layer, i.e. 2 d_attn (n+1) per token: Kaplan's term with
# n_ctx = n + 1 (the diagonal), since the causal average halves the span.


@pytest.mark.parametrize("name", ["gpt2", "llama-2-7b"])
@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_forward_flops_per_token_is_twice_block_params(name, n):
    """Kaplan 2020 (arXiv:2001.08361) Table 1: C_forward ~= 2N at short context."""
    m = get_model(name)
    w = request_work(m, "forward", n)
    blocks = _blocks(w)
    per_token = w.pass_flops[blocks].sum() / n
    block_params = unit_params(m, list(w.units))[blocks].sum()
    assert per_token == pytest.approx(2 * block_params, rel=0.01)
    # Kaplan's N is the non-embedding count: blocks plus the final norm.
    non_embedding = block_params + (2 if m.norm == "layernorm" else 1) * m.hidden_size
    assert per_token == pytest.approx(2 * non_embedding, rel=0.01)


@pytest.mark.parametrize("name", ["gpt2", "llama-2-7b", "llama-3-8b"])
@pytest.mark.parametrize("n", [1, 3, 8, 64, 1024])
def test_forward_block_flops_split_exactly_into_weights_and_causal_attention(name, n):
    """Weight matmuls 2 W n plus attention 4 d_attn * pairs, pairs = n(n+1)/2 (causal)."""
    m = get_model(name)
    w = request_work(m, "forward", n)
    flops = w.pass_flops[_blocks(w)].sum()
    weights = m.layers * _matmul_weights_per_block(m)
    attention = m.layers * 4 * _d_attn(m) * n * (n + 1) / 2
    assert flops == pytest.approx(2 * weights * n + attention, rel=1e-12)
    # Per token: Kaplan's 2 n_layer n_ctx d_attn with n_ctx = n + 1 (causal average).
    kaplan_term = 2 * m.layers * (n + 1) * _d_attn(m)
    assert flops / n - 2 * weights == pytest.approx(kaplan_term, rel=1e-12)


@pytest.mark.parametrize("name,pairs", [("gpt2", "causal"), ("bert-base", "full")])
@pytest.mark.parametrize("n", [1, 5, 32, 512])
def test_attention_term_is_quadratic(name, pairs, n):
    """FLOPs(2n) - 2 FLOPs(n) leaves only the n^2 attention term, 4 d_attn per pair.

    Causal: pairs(n) = n(n+1)/2, so pairs(2n) - 2 pairs(n) = n^2.
    Bidirectional (BERT): pairs(n) = n^2, so the difference is 2 n^2.
    """
    m = get_model(name)

    def block_flops(k):
        w = request_work(m, "forward", k)
        return w.pass_flops[_blocks(w)]

    extra = block_flops(2 * n) - 2 * block_flops(n)
    pair_excess = n * n if pairs == "causal" else 2 * n * n
    np.testing.assert_allclose(extra, 4 * _d_attn(m) * pair_excess, rtol=1e-12)


# ------------------------------------------------- 2. parameter counts and weight bytes


# Parameter counts against the published totals: tests/test_catalog.py.


def test_llama_2_7b_weight_bytes_are_13_48_gb_in_bf16():
    """6,738,415,616 params x 2 bytes = 13.48 GB; Llama 2 is untied, so nothing is doubled."""
    m = get_model("llama-2-7b")
    assert m.weight_bytes == 2
    for task, p, o in [("forward", 16, 0), ("generate", 16, 4)]:
        w = request_work(m, task, p, o)
        assert w.weight_bytes.sum() == 2 * 6_738_415_616
        assert w.weight_bytes.sum() / 1e9 == pytest.approx(13.48, abs=0.005)


def test_tied_head_counts_its_matrix_on_the_head_unit():
    """GPT-2's LM head reads the embedding matrix: a device holding it must store it too."""
    m = get_model("gpt2")
    w = request_work(m, "forward", 4)
    shared = m.vocab_size * m.hidden_size * m.weight_bytes
    assert w.weight_bytes.sum() == pytest.approx(param_count(m) * m.weight_bytes + shared)
    assert w.weight_bytes[-1] == (m.vocab_size * m.hidden_size + 2 * m.hidden_size) * 2


# ------------------------------------------------- 3. roofline on an A100: decode vs prefill
#
# NVIDIA A100 datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf): BF16 Tensor
# Core 312 TFLOPS dense; A100 80GB SXM HBM2e 2,039 GB/s. With the catalog's assumed
# efficiencies (0.6 compute, 0.8 bandwidth) the ridge point is ~115 FLOP/byte; batch-1
# decoding does ~1 FLOP per weight byte, prefill of thousands of tokens far more.


def _a100():
    d = get_device("a100-80gb")
    assert d.peak_tflops["bf16"] == 312 and d.memory_bandwidth_gb_s == 2039
    return d, d.flops_per_s("bf16"), d.bytes_per_s


def test_llama_decode_steps_are_memory_bound_on_a100():
    m = get_model("llama-2-7b")
    _, f, b = _a100()
    w = request_work(m, "generate", 128, 257)
    blocks = _blocks(w)
    # Affine in the context, so checking the first and last step covers every step.
    for c in (w.ctx_first, w.ctx_first + w.steps - 1):
        flops = w.step_flops0 + w.step_flops1 * c
        bytes_ = w.step_bytes0 + w.step_bytes1 * c
        assert np.all(bytes_[blocks] / b > flops[blocks] / f)
        assert np.all(bytes_[blocks] / b > 50 * flops[blocks] / f)  # deep in the memory roof


def test_llama_decode_step_takes_weight_bytes_over_bandwidth_on_a100():
    """One decode step ~= 13.48 GB / (2039 GB/s x 0.8801) ~= 7.51 ms (memory-bound), plus
    387 kernels (1 + 32 x 12 + 2) x 6.498 us ~= 2.51 ms of fixed time: ~10.0 ms."""
    m = get_model("llama-2-7b")
    d, _, b = _a100()
    one = request_work(m, "generate", 128, 1)
    two = request_work(m, "generate", 128, 2)
    step_s = (unit_times_s(two, d, "bf16") - unit_times_s(one, d, "bf16")).sum()
    memory_s = 2 * 6_738_415_616 / (2039e9 * d.bandwidth_efficiency)
    fixed_s = (1 + 32 * 12 + 2) * d.kernel_overhead_us * 1e-6
    assert memory_s == pytest.approx(7.51e-3, rel=0.001)  # the fitted 0.8801
    assert fixed_s == pytest.approx(2.515e-3, rel=0.001)  # the fitted 6.498 us per kernel
    # Differences from the ideal: the embedding table is gathered, not streamed (-2% of
    # the memory time), the KV cache is read (+0.5%), the unhidden compute (non_overlap
    # x ~65 us, +0.3%).
    assert step_s == pytest.approx(memory_s + fixed_s, rel=0.03)
    assert (two.step_bytes0 + two.step_bytes1 * two.ctx_first).sum() / b == pytest.approx(
        memory_s, rel=0.03
    )


def test_llama_prefill_of_2048_tokens_is_compute_bound_on_a100():
    m = get_model("llama-2-7b")
    _, f, b = _a100()
    w = request_work(m, "generate", 2048, 1)
    blocks = _blocks(w)
    assert np.all(w.pass_flops[blocks] / f > 10 * w.pass_bytes[blocks] / b)


# ------------------------------------------------- 4. summed_roofline_s against brute force


def _brute_summed(x0, x1, y0, y1, first, count):
    total = np.zeros(np.broadcast(x0, x1, y0, y1).shape)
    for c in range(first, first + count):
        total = total + np.maximum(x0 + x1 * c, y0 + y1 * c)
    return total


# Subnormals are excluded: a crossing at (5e-324 - 0) / 2 underflows to 0, which is no
# concern for times in seconds.
_coef = st.one_of(
    st.just(0.0),
    st.integers(0, 20).map(float),  # small integers: equal slopes, integer crossings
    st.floats(0, 1e3, allow_subnormal=False),
    st.floats(0, 1e-3, allow_subnormal=False),
)


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(st.tuples(_coef, _coef, _coef, _coef), min_size=1, max_size=8),
    first=st.integers(0, 5000),
    count=st.integers(0, 40),
    scale=st.sampled_from([1.0, 1e-9]),  # 1e-9: coefficients the size of step seconds
)
def test_summed_roofline_matches_brute_force(data, first, count, scale):
    x0, x1, y0, y1 = (np.array(col) * scale for col in zip(*data, strict=True))
    got = summed_roofline_s(x0, x1, y0, y1, first, count)
    want = _brute_summed(x0, x1, y0, y1, first, count)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=0)


@settings(max_examples=200, deadline=None)
@given(
    first=st.integers(1, 100),
    count=st.integers(1, 60),
    cross_at=st.integers(-10, 170),
    slope=st.integers(-5, 5),
    x1=st.integers(0, 10),
)
def test_summed_roofline_with_a_crossing_inside_the_range(first, count, cross_at, slope, x1):
    """Lines that meet exactly at an integer context (possibly inside the range)."""
    y1 = x1 - slope
    x0 = 1000.0
    y0 = x0 + slope * cross_at  # x - y = slope * (c - cross_at)
    got = summed_roofline_s(x0, x1, y0, y1, first, count)
    want = _brute_summed(np.float64(x0), x1, y0, y1, first, count)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_summed_roofline_small_cases():
    # count 0: nothing, with the broadcast shape.
    assert summed_roofline_s(np.ones(3), 1, 0, 0, 5, 0).tolist() == [0, 0, 0]
    # count 1: a single max.
    assert summed_roofline_s(1.0, 2.0, 10.0, 0.0, 3, 1) == pytest.approx(10.0)
    assert summed_roofline_s(1.0, 2.0, 10.0, 0.0, 5, 1) == pytest.approx(11.0)
    # equal slopes: the higher line throughout.
    assert summed_roofline_s(5.0, 1.0, 3.0, 1.0, 0, 4) == pytest.approx(4 * 5 + 6)
    assert summed_roofline_s(3.0, 1.0, 5.0, 1.0, 0, 4) == pytest.approx(4 * 5 + 6)
    # crossing in the middle: x = c, y = 4 over c = 0..9 -> 4*5 + (5+6+7+8+9).
    assert summed_roofline_s(0.0, 1.0, 4.0, 0.0, 0, 10) == pytest.approx(20 + 35)
    assert summed_roofline_s(4.0, 0.0, 0.0, 1.0, 0, 10) == pytest.approx(20 + 35)


# ------------------------------------------------- 5. generate: closed form vs per-step sums


def _decode_pass(model, c, prompt):
    if model.architecture == "encoder_decoder":
        return {"enc": Pass(), "dec": Pass(1, c, c, 1, cross_tokens=prompt, out_tokens=1)}
    p = Pass(1, c, c, 1, out_tokens=1)
    return {"enc": p, "dec": p}


@pytest.mark.parametrize("name", ["gpt2", "llama-2-7b", "llama-3-8b", "transformer-base"])
@pytest.mark.parametrize("p,o", [(1, 2), (16, 10), (100, 33)])
def test_generate_step_totals_equal_per_step_brute_force(name, p, o):
    m = get_model(name)
    w = request_work(m, "generate", p, o)
    units = list(w.units)
    assert w.steps == o - 1
    brute = np.zeros((len(units), 2))
    for k in range(w.steps):
        brute += _costs(m, units, _decode_pass(m, w.ctx_first + k, p))
    flops, bytes_ = w.step_totals()
    np.testing.assert_allclose(flops, brute[:, 0], rtol=1e-12)
    np.testing.assert_allclose(bytes_, brute[:, 1], rtol=1e-12)
    # and via the affine coefficients, as the brief spells it out
    contexts = w.ctx_first + np.arange(w.steps)
    by_coeff = (w.step_flops0[:, None] + w.step_flops1[:, None] * contexts).sum(axis=1)
    np.testing.assert_allclose(flops, by_coeff, rtol=1e-12)
    np.testing.assert_allclose(w.total_flops(), w.pass_flops + flops, rtol=1e-12)


@pytest.mark.parametrize("name", ["gpt2", "llama-2-7b"])
@pytest.mark.parametrize("p,o", [(1, 1), (7, 5), (128, 64)])
def test_generate_block_flops_equal_a_forward_pass_over_all_tokens(name, p, o):
    """A KV cache saves no FLOPs: prefill(p) + decode steps == forward over p + o - 1 tokens."""
    m = get_model(name)
    g = request_work(m, "generate", p, o)
    f = request_work(m, "forward", p + o - 1)
    blocks = _blocks(g)
    np.testing.assert_allclose(g.total_flops()[blocks], f.pass_flops[blocks], rtol=1e-12)


def test_generate_one_output_token_has_no_decode_steps():
    m = get_model("llama-2-7b")
    w = request_work(m, "generate", 32, 1)
    assert w.steps == 0
    assert not np.any(w.step_totals()[0]) and not np.any(w.step_totals()[1])
    np.testing.assert_array_equal(w.total_flops(), w.pass_flops)
    np.testing.assert_allclose(
        transfer_times_s(w, 100, 10), crossing_s(w.act_pass, 100, 10) * (w.act_pass > 0)
    )
    assert loop_time_s(w, 100, 10) == 0.0
    d = get_device("a100-80gb")
    kernels = np.array([1] + [12] * 32 + [2])  # embed, blocks, head (tests/test_kernels.py)
    overhead = d.overhead_us * 1e-6 + d.kernel_overhead_us * 1e-6 * kernels
    f, b = d.flops_per_s("bf16"), d.bytes_per_s
    np.testing.assert_allclose(
        unit_times_s(w, d, "bf16"),
        roofline_s(w.pass_flops, w.pass_bytes, f, b, d.non_overlap) + overhead,
    )


@pytest.mark.parametrize(
    "name,per_token",
    [
        # Llama 3 8B config.json: 8 KV heads x head_dim 128 (GQA): 2 (K,V) x 8 x 128 x 2 B.
        ("llama-3-8b", 2 * 8 * 128 * 2),
        # Llama 2 7B config.json: 32 KV heads (MHA): 2 x 32 x 128 x 2 B.
        ("llama-2-7b", 2 * 32 * 128 * 2),
    ],
)
def test_kv_cache_bytes_per_token_per_block(name, per_token):
    assert per_token in (4096, 16384)
    m = get_model(name)
    p, o = 100, 20
    w = request_work(m, "generate", p, o)
    blocks = _blocks(w)
    np.testing.assert_allclose(w.kv_bytes[blocks], per_token * (p + o))
    assert not np.any(w.kv_bytes[~blocks])
    # Each decode step reads the cache: the context coefficient of a block's bytes.
    np.testing.assert_allclose(w.step_bytes1[blocks], per_token)


# ------------------------------------------------- 6. activation sizes and link times


@pytest.mark.parametrize("n", [1, 7, 512])
def test_gpt2_forward_boundary_bytes(n):
    m = get_model("gpt2")
    w = request_work(m, "forward", n)
    assert w.act_pass[0] == n * 4  # int32 token ids
    np.testing.assert_array_equal(w.act_pass[1:-1], n * 768 * 2)  # fp16 hidden states
    assert w.act_pass[-1] == n * 4  # one token id per position out


def test_gpt2_generate_boundary_bytes_and_link_times_exact():
    m = get_model("gpt2")
    p, o, mbps, rtt_ms = 10, 5, 100.0, 20.0
    w = request_work(m, "generate", p, o)
    L = w.n_units
    assert w.steps == 4 and w.loop_start == 0 and w.loop_bytes == 4
    assert w.act_pass[0] == p * 4
    np.testing.assert_array_equal(w.act_pass[1:L], p * 768 * 2)
    assert w.act_pass[L] == 4  # prefill produces the first token
    assert w.act_step[0] == 0  # the generated token arrives through the loop
    np.testing.assert_array_equal(w.act_step[1:L], 768 * 2)
    assert w.act_step[L] == 4

    t = transfer_times_s(w, mbps, rtt_ms)
    one_way = rtt_ms / 2 * 1e-3
    bit_s = 1 / (mbps * 1e6)
    assert t[0] == pytest.approx(40 * 8 * bit_s + one_way, rel=1e-12)  # 0.0100032
    assert t[0] == pytest.approx(0.0100032, rel=1e-12)
    inner = (15360 * 8 * bit_s + one_way) + 4 * (1536 * 8 * bit_s + one_way)
    assert inner == pytest.approx(0.05172032, rel=1e-12)
    np.testing.assert_allclose(t[1:L], inner, rtol=1e-12)
    assert t[L] == pytest.approx(5 * (4 * 8 * bit_s + one_way), rel=1e-12)  # 0.0500016
    assert loop_time_s(w, mbps, rtt_ms) == pytest.approx(4 * (32 * bit_s + one_way), rel=1e-12)


def test_zero_byte_boundaries_cost_no_latency():
    """A boundary with nothing to send (the loop start in decode steps) pays no RTT."""
    w = request_work(get_model("gpt2"), "generate", 10, 5)
    t = transfer_times_s(w, 100.0, 20.0)
    assert t[0] == pytest.approx(crossing_s(w.act_pass[0], 100.0, 20.0))


# ------------------------------------------------- 7. encoder-decoder (Transformer base)
#
# Vaswani et al. 2017 (arXiv:1706.03762) Table 3 "base": d_model 512, 6+6 layers.


def test_transformer_base_forward_boundaries_carry_encoder_memory():
    m = get_model("transformer-base")
    n, h = 20, 512
    w = request_work(m, "forward", n)
    names = [u.name for u in w.units]
    mem = n * h * 2
    dec_embed = names.index("dec.embed")
    head = names.index("head")
    assert w.act_pass[0] == n * 4
    np.testing.assert_array_equal(w.act_pass[1:dec_embed], n * h * 2)  # encoder: no memory
    assert w.act_pass[dec_embed] == n * 4 + mem
    np.testing.assert_array_equal(w.act_pass[dec_embed + 1 : head], n * h * 2 + mem)
    # The head has no cross-attention: the memory is not needed past the last decoder block.
    assert w.act_pass[head] == n * h * 2
    assert w.act_pass[-1] == n * 4


def test_transformer_base_generate_encoder_idle_in_decode_steps():
    m = get_model("transformer-base")
    p, o = 24, 8
    w = request_work(m, "generate", p, o)
    enc = np.array([u.stack == "enc" for u in w.units])
    assert w.loop_start == [u.name for u in w.units].index("dec.embed") == 7
    assert w.units[w.loop_start].name == "dec.embed"
    np.testing.assert_array_equal(w.step_runs, ~enc)
    for arr in (w.step_flops0, w.step_flops1, w.step_bytes0, w.step_bytes1):
        assert not np.any(arr[enc])
    assert not np.any(w.act_step[: w.loop_start + 1])  # encoder side and the loop start
    np.testing.assert_array_equal(w.act_step[w.loop_start + 1 : -1], 512 * 2)
    # Prefill: the decoder starts from one token, and the memory crosses with it, as far
    # as the last decoder block (not into the head).
    assert w.act_pass[w.loop_start] == 4 + p * 512 * 2
    np.testing.assert_array_equal(w.act_pass[w.loop_start + 1 : -2], 512 * 2 + p * 512 * 2)
    assert w.act_pass[-2] == 512 * 2
    assert w.ctx_first == 2 and w.steps == o - 1
    # The encoder's units run once, so they pay their fixed time once: the embedding's
    # gathers and add (3 kernels), each encoder block's 5 + 5.
    d = get_device("a100-80gb")
    t = unit_times_s(w, d, "fp16")
    f, b = d.flops_per_s("fp16"), d.bytes_per_s
    once = d.kernel_overhead_us * 1e-6 * np.array([3] + [10] * 6)
    assert enc.sum() == 7
    np.testing.assert_allclose(
        t[enc], roofline_s(w.pass_flops, w.pass_bytes, f, b, d.non_overlap)[enc] + once
    )


# ------------------------------------------------- 8. sublayer granularity


@pytest.mark.parametrize("name", DECODERS)
def test_sublayer_units_split_blocks_exactly(name):
    m = get_model(name)
    assert len(model_units(m, "sublayer")) == 2 + 2 * m.layers
    assert len(model_units(m, "block")) == 2 + m.layers
    for task, p, o in [("forward", 33, 0), ("generate", 33, 9)]:
        blk = request_work(m, task, p, o, "block")
        sub = request_work(m, task, p, o, "sublayer")
        for field in ("pass_flops", "step_flops0", "step_flops1"):
            b, s = getattr(blk, field), getattr(sub, field)
            halves = s[1:-1].reshape(-1, 2)  # (attn, mlp) per layer
            np.testing.assert_allclose(halves.sum(axis=1), b[1:-1], rtol=1e-12)
            assert [s[0], s[-1]] == [b[0], b[-1]]
        np.testing.assert_allclose(
            sub.weight_bytes[1:-1].reshape(-1, 2).sum(axis=1), blk.weight_bytes[1:-1]
        )
        np.testing.assert_allclose(
            sub.kv_bytes[1:-1].reshape(-1, 2).sum(axis=1), blk.kv_bytes[1:-1]
        )


def test_sublayer_units_for_encoder_decoder():
    m = get_model("transformer-base")
    units = model_units(m, "sublayer")
    assert len(units) == 3 + 2 * (m.layers + m.decoder_layers)
    w = request_work(m, "generate", 10, 4, "sublayer")
    assert w.units[w.loop_start].name == "dec.embed"


# ------------------------------------------------- 9. ViT-B/16
#
# torchvision ViT_B_16_Weights.IMAGENET1K_V1: num_params 86567656, "GFLOPS 17.56"
# (https://pytorch.org/vision/stable/models/generated/torchvision.models.vit_b_16.html).
# torchvision's "GFLOPS" count multiply-accumulates (its ResNet-50 entry is 4.09, the
# well-known ~4.1 GMACs), as timm's "GMACs: 17.6" for vit_base_patch16_224 does. In the
# 2-FLOPs-per-MAC convention the cost model uses, that is ~35.1 GFLOPs per image.


@pytest.mark.parametrize("prompt_tokens", [1, 16, 500])
def test_vit_b16_has_197_tokens_whatever_the_prompt(prompt_tokens):
    m = get_model("vit-b16")
    w = request_work(m, "forward", prompt_tokens)
    assert w.act_pass[0] == 3 * 224 * 224  # uint8 pixels in
    np.testing.assert_array_equal(w.act_pass[1:-1], 197 * 768 * 2)
    assert w.act_pass[-1] == 1000 * 2  # fp16 logits out


def test_vit_b16_forward_flops_match_torchvision():
    w = request_work(get_model("vit-b16"), "forward", 1)
    gmacs = w.pass_flops.sum() / 2 / 1e9
    assert gmacs == pytest.approx(17.56, rel=0.01)


# ------------------------------------------------- 10. BERT-base at 128 tokens
#
# Mohammadzadeh, "Details of the BERT Model" (https://hivam.org/blog/posts/03-bert-model.html):
# "A single transformer block runs about 1.86 billion FLOPs" for BERT-base at 128 tokens,
# 768 hidden, 3072 FFN. Twelve blocks: ~22.3 GFLOPs (~11 GMACs), plus a negligible
# embedding and classifier.


def test_bert_base_forward_flops_at_128_tokens():
    w = request_work(get_model("bert-base"), "forward", 128)
    blocks = _blocks(w)
    np.testing.assert_allclose(w.pass_flops[blocks], 1.86e9, rtol=0.01)
    assert w.pass_flops.sum() == pytest.approx(12 * 1.86e9, rel=0.05)
    # 2 x 85M block params x 128 tokens, plus bidirectional attention 4 d n^2 per layer.
    block_params = unit_params(get_model("bert-base"), list(w.units))[blocks].sum()
    attention = 12 * 4 * 768 * 128**2
    assert w.pass_flops[blocks].sum() == pytest.approx(2 * block_params * 128 + attention, rel=0.01)


# ------------------------------------------------- 11. unit times on a device


@pytest.mark.parametrize("device", ["a100-80gb", "rpi4", "laptop-m2"])
def test_forward_unit_time_is_roofline_plus_one_overhead(device):
    d = get_device(device)
    m = get_model("gpt2")
    w = request_work(m, "forward", 64)
    f, b = d.flops_per_s("fp16"), d.bytes_per_s
    expected = bound_s(w.pass_flops / f, w.pass_bytes / b, d.non_overlap) + unit_overheads_s(
        m, w.units, d
    )
    np.testing.assert_allclose(unit_times_s(w, d, "fp16"), expected, rtol=1e-12)


@pytest.mark.parametrize("device", ["a100-80gb", "rpi4"])
def test_generate_unit_time_is_brute_force_step_sum_plus_overheads(device):
    d = get_device(device)
    m = get_model("llama-3-8b")
    w = request_work(m, "generate", 50, 12)
    f, b = d.flops_per_s("bf16"), d.bytes_per_s
    overhead = unit_overheads_s(m, w.units, d)
    g = d.non_overlap
    expected = bound_s(w.pass_flops / f, w.pass_bytes / b, g) + overhead
    for k in range(w.steps):
        c = w.ctx_first + k
        step_f = w.step_flops0 + w.step_flops1 * c
        step_b = w.step_bytes0 + w.step_bytes1 * c
        expected = expected + bound_s(step_f / f, step_b / b, g) + overhead * w.step_runs
    np.testing.assert_allclose(unit_times_s(w, d, "bf16"), expected, rtol=1e-12)


# ------------------------------------------------- 12. build_problem


def _problem(resident, objective="server_time", model="llama-2-7b", client="rpi4"):
    m = get_model(model)
    return build_problem(
        m,
        "generate",
        128,
        32,
        get_device(client),
        get_device("a100-80gb"),
        Link(uplink_mbps=20, downlink_mbps=100, rtt_ms=30),
        deadline_s=60,
        resident=resident,
        objective=objective,
    )


def test_resident_fit_keeps_the_prefix_that_fits_in_client_memory():
    """Raspberry Pi 4 (4 GB, raspberrypi.com spec page) cannot hold Llama 2 7B (13.5 GB)."""
    m = get_model("llama-2-7b")
    rpi = get_device("rpi4")
    w = request_work(m, "generate", 128, 32)
    allowed = _problem("fit").client_allowed
    k = int(allowed.sum())
    assert 0 < k < w.n_units
    np.testing.assert_array_equal(allowed, np.arange(w.n_units) < k)  # a prefix
    need = w.weight_bytes + w.kv_bytes
    assert need[:k].sum() <= rpi.memory_bytes < need[: k + 1].sum()
    # embed (262 MB) + 9 blocks of 405 MB (+ KV) fit in 4 GB; a 10th does not.
    assert k == 1 + 9
    np.testing.assert_array_equal(resident_units(w, "fit", rpi), allowed)


def test_resident_first_k_none_and_all():
    assert _problem({"first": 5}).client_allowed.tolist() == [True] * 5 + [False] * 29
    assert not _problem("none").client_allowed.any()
    assert _problem("all").client_allowed.all()
    with pytest.raises(ValueError):
        _problem("some")


def test_objective_server_flops_puts_flops_in_server_work():
    m = get_model("llama-2-7b")
    w = request_work(m, "generate", 128, 32)
    flops = _problem("all", objective="server_flops")
    timed = _problem("all", objective="server_time")
    np.testing.assert_allclose(flops.server_work, w.total_flops())
    np.testing.assert_allclose(timed.server_work, timed.server_time)
    np.testing.assert_allclose(flops.server_time, timed.server_time)
    assert flops.loop_start == 0
    assert flops.loop_uplink_time == pytest.approx(loop_time_s(w, 20, 30))
    assert flops.loop_downlink_time == pytest.approx(loop_time_s(w, 100, 30))
