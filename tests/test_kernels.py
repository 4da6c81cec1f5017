"""Per-kernel overhead: each unit's kernel count (sim.costs.kernels) and the fixed time the
cost model adds per unit, `overhead_us + kernels x kernel_overhead_us`."""

from __future__ import annotations

import numpy as np
import pytest

from sim.catalog import get_device, get_model
from sim.costs import kernel_counts, model_units, request_work, unit_overheads_s, unit_times_s
from sim.costs.batched import unit_times_many, work_batch
from sim.costs.roofline import bound_s


def _counts(name: str, granularity: str = "block") -> dict[str, int]:
    m = get_model(name)
    units = model_units(m, granularity)
    return {u.name: int(k) for u, k in zip(units, kernel_counts(m, units), strict=True)}


def test_llama_kernels_match_the_operators_vidur_times():
    # MLP half: post-attention norm, up+gate, act, down, add (Vidur's five MLP operators);
    # attention half: norm, QKV, rope, attention, KV write, output projection, add.
    c = _counts("llama-2-7b", "sublayer")
    assert (c["embed"], c["block0.attn"], c["block0.mlp"], c["head"]) == (1, 7, 5, 2)
    assert _counts("llama-2-7b")["block31"] == 12


def test_gpt2_bert_and_encoder_decoder_kernels_by_hand():
    gpt2 = _counts("gpt2")  # learned positions: gather + add; no rope; decoder caches
    assert (gpt2["embed"], gpt2["block0"], gpt2["head"]) == (3, 6 + 5, 2)
    bert = get_model("bert-base")
    b = _counts("bert-base")
    # token + position + segment tables and the embedding norm; no KV write (encoder)
    assert b["embed"] == 1 + 2 + 2 + 1 and b["block0"] == 5 + 5
    assert b["head"] == int(bert.final_norm) + int(bert.pooler) + 1
    t = _counts("transformer-base")
    # sinusoidal positions: a gather and an add; the decoder's blocks add cross-attention
    # (6) to self-attention with a KV write (6)
    assert t["enc.embed"] == t["dec.embed"] == 3
    assert t["enc.block0"] == 5 + 5 and t["dec.block0"] == 6 + 6 + 5


def test_overhead_is_per_kernel_and_unchanged_without_a_kernel_overhead():
    m = get_model("llama-2-7b")
    units = model_units(m, "sublayer")
    base = get_device("rpi4")  # kernel_overhead_us 0: the per-unit overhead, bit for bit
    assert base.kernel_overhead_us == 0
    assert np.array_equal(
        unit_overheads_s(m, units, base), np.full(len(units), base.overhead_us * 1e-6)
    )
    dev = base.model_copy(update={"overhead_us": 2.0, "kernel_overhead_us": 3.0})
    want = np.array([(2.0 + 3.0 * k) * 1e-6 for k in kernel_counts(m, units)])
    assert np.allclose(unit_overheads_s(m, units, dev), want, rtol=1e-15)


@pytest.mark.parametrize("device", ["a100-80gb", "h100-sxm", "a100-40gb"])
def test_unit_times_add_each_units_kernels_per_pass_and_step(device):
    m = get_model("llama-2-7b")
    d = get_device(device)
    assert d.kernel_overhead_us > 0 and d.overhead_us == 0
    w = request_work(m, "generate", 100, 5, "sublayer")
    f, b = d.flops_per_s("bf16"), d.bytes_per_s
    per_run = d.kernel_overhead_us * 1e-6 * np.array([1, 7, 5] + [7, 5] * 31 + [2])
    want = bound_s(w.pass_flops / f, w.pass_bytes / b, d.non_overlap) + per_run
    for c in range(w.ctx_first, w.ctx_first + w.steps):
        fl, by = w.step_flops0 + w.step_flops1 * c, w.step_bytes0 + w.step_bytes1 * c
        want = want + bound_s(fl / f, by / b, d.non_overlap) + per_run
    got = unit_times_s(w, d, "bf16")
    assert np.allclose(got, want, rtol=1e-12)
    many = unit_times_many(work_batch(m, "generate", np.array([100]), np.array([5]), "sublayer"),
                           d, "bf16")  # fmt: skip
    assert np.array_equal(many[0], got)


def test_catalog_lists_each_devices_kernel_overhead(capsys):
    from sim.cli import main

    assert main(["catalog", "devices"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line.split() for line in lines if line.split()[:1] == ["device"])
    col = header.index("kernel_overhead_us")
    row = next(line.split() for line in lines if line.split()[:1] == ["a100-80gb"])
    assert float(row[col]) == get_device("a100-80gb").kernel_overhead_us == 6.498
