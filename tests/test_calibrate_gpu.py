"""`splitsim calibrate`: reading Vidur's GPU profiles, fitting a server device to them, the
non_overlap term of the unit time model, and the command's bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sim.catalog import get_device, get_model
from sim.cli import main
from sim.costs import request_work, unit_overheads_s, unit_times_s
from sim.costs.batched import unit_times_many, work_batch
from sim.costs.roofline import bound_s, summed_roofline_s
from sim.costs.tables import read_cost_table
from sim.engine.batching import BatchCost
from sim.profile.gpu import GpuFactors, calibrate, fit_factors, measurements, summary
from sim.profile.vidur import read_profile

PROFILES = Path(__file__).resolve().parents[2] / "shared" / "gpu_profiles"
if not PROFILES.is_dir():
    PROFILES = Path("/work/shared/gpu_profiles")
OPS = ("emb", "input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj",
       "post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")  # fmt: skip
LLAMA = {"n_head": 32, "n_kv_head": 32, "n_embd": 4096, "n_expanded_embd": 11008,
         "vocab_size": 32768, "use_gated_mlp": True}  # fmt: skip


def _vidur_csv(path: Path, tokens, ms_of, tp=(1,), shape=LLAMA, drop=()) -> Path:
    """A Vidur-format mlp.csv: every op's stats in ms (`ms_of(op, n)`), per TP degree."""
    rows = []
    for k in tp:
        for n in tokens:
            row = {}
            for op in OPS:
                if op in drop:
                    continue
                v = ms_of(op, n) / k
                for stat in ("min", "max", "mean", "median", "std"):
                    row[f"time_stats.{op}.{stat}"] = v if stat != "std" else 0.0
            rows.append({**row, **shape, "num_tokens": n, "num_tensor_parallel_workers": k})
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _flat(op, n):
    return 0.01 + 1e-5 * n


# --- the reader --------------------------------------------------------------------------


def test_reader_keeps_tp1_rows_and_says_what_it_skipped(tmp_path):
    _vidur_csv(tmp_path / "gpu" / "Llama-2-7b-hf" / "mlp.csv", [1, 8, 64], _flat, tp=(1, 2, 4))
    prof = read_profile(tmp_path / "gpu")
    (m,) = prof.models
    assert m.spec.name == "llama-2-7b" and m.in_catalog
    mlp = m.times[m.times["unit"] == "mlp"].set_index("tokens")["seconds"]
    # post-attention norm, up, act, down, add: five ops of the TP1 rows (ms -> s)
    assert mlp.to_dict() == pytest.approx({n: 5 * _flat("", n) * 1e-3 for n in (1, 8, 64)})
    assert any("3 rows at TP2, 3 rows at TP4" in s for s in prof.skipped)


PHI2 = {"n_head": 32, "n_kv_head": 32, "n_embd": 2560, "n_expanded_embd": 10240,
        "vocab_size": 51200, "use_gated_mlp": False}  # fmt: skip


def test_reader_takes_vidurs_own_tree_and_refuses_several_gpus(tmp_path):
    """Vidur's tree is compute/<gpu>/<organisation>/<model>/mlp.csv: one GPU's folder reads
    every organisation's models; the compute folder, or a folder of <gpu>/<model>, is
    several GPUs (the same model under two tops) and is refused in one line."""
    from sim.errors import UserError

    compute = tmp_path / "compute"
    for gpu in ("a100", "h100"):
        _vidur_csv(compute / gpu / "meta-llama" / "Llama-2-7b-hf" / "mlp.csv", [1, 8], _flat)
        _vidur_csv(compute / gpu / "microsoft" / "phi-2" / "mlp.csv", [1, 8], _flat, shape=PHI2)
    prof = read_profile(compute / "a100")
    assert prof.gpu == "a100"
    assert sorted(m.folder for m in prof.models) == ["Llama-2-7b-hf", "phi-2"]
    with pytest.raises(UserError, match=r"several GPUs \(a100, h100\)"):
        read_profile(compute)
    flat = tmp_path / "flat"  # this project's copy: <gpu>/<model>/mlp.csv
    for gpu in ("a100", "h100"):
        _vidur_csv(flat / gpu / "phi-2" / "mlp.csv", [1, 8], _flat, shape=PHI2)
    with pytest.raises(UserError, match=r"several GPUs \(a100, h100\)"):
        read_profile(flat)


def test_reader_skips_a_unit_whose_operator_is_missing(tmp_path):
    _vidur_csv(tmp_path / "gpu" / "mystery" / "mlp.csv", [1, 2, 4], _flat, drop=("attn_pre_proj",),
               shape={**LLAMA, "n_embd": 1024, "n_head": 8, "n_kv_head": 8})  # fmt: skip
    (m,) = read_profile(tmp_path / "gpu").models
    assert not m.in_catalog and m.spec.name == "mystery" and m.spec.hidden_size == 1024
    assert set(m.times["unit"]) == {"mlp", "embed"}
    assert any(
        "attn_proj skipped: no column time_stats.attn_pre_proj.median" in s for s in m.skipped
    )


def test_reader_on_the_real_profiles():
    prof = read_profile(PROFILES / "a100")
    names = {m.spec.name for m in prof.models}
    assert names == {"llama-2-7b", "llama-3-8b", "phi-2"}
    phi = next(m for m in prof.models if m.spec.name == "phi-2")
    assert phi.spec.mlp_kind == "gelu" and not phi.in_catalog


# --- the time model's non_overlap term ---------------------------------------------------


def test_non_overlap_zero_is_the_plain_roofline_bit_for_bit():
    rng = np.random.default_rng(1)
    x, y = rng.random(50), rng.random(50)
    assert np.array_equal(bound_s(x, y, 0.0), np.maximum(x, y))
    g = 0.3
    assert np.allclose(bound_s(x, y, g), np.maximum(x, y) + g * np.minimum(x, y))


def test_non_overlap_applies_alike_to_units_sizes_steps_and_batches():
    model = get_model("llama-2-7b")
    dev = GpuFactors(0.6884, 0.8438, 4.69, 0.5007).apply(get_device("a100-80gb"))
    work = request_work(model, "generate", 300, 40, "sublayer")
    t = unit_times_s(work, dev, model.activation_dtype)
    # decode steps summed one by one with the same formula
    f, b = dev.flops_per_s(model.activation_dtype), dev.bytes_per_s
    ov = unit_overheads_s(model, work.units, dev)  # 4.69 us per kernel of each unit
    assert dev.overhead_us == 0 and ov[1] == pytest.approx(7 * 4.69e-6)  # an attention half
    ref = bound_s(work.pass_flops / f, work.pass_bytes / b, dev.non_overlap) + ov
    for c in range(work.ctx_first, work.ctx_first + work.steps):
        fl = work.step_flops0 + work.step_flops1 * c
        by = work.step_bytes0 + work.step_bytes1 * c
        ref = ref + (bound_s(fl / f, by / b, dev.non_overlap) + ov) * work.step_runs
    assert np.allclose(t, ref, rtol=1e-12)
    many = unit_times_many(work_batch(model, "generate", np.array([300]), np.array([40]),
                                      "sublayer"), dev, model.activation_dtype)  # fmt: skip
    assert np.array_equal(many[0], t)
    # one request in a batch is priced as its unit times (the prefill pass); units of a
    # uniform per-unit overhead, which is all the engine's scalar `overhead_s` can price
    # (the per-kernel overhead reaches it with the per-unit array: see the calibration notes)
    dev = dev.model_copy(update={"overhead_us": 23.45, "kernel_overhead_us": 0.0})
    cost = BatchCost(f, b, dev.overhead_us * 1e-6, dev.non_overlap)
    w = request_work(model, "forward", 300, 0, "sublayer")
    m = cost.add_model(np.zeros(w.n_units))
    cost.add_pass(m, 0, w.n_units, w.pass_flops, w.pass_bytes)
    assert cost.close() == pytest.approx(float(unit_times_s(w, dev, "bf16").sum()), rel=1e-12)


def test_summed_roofline_keeps_its_closed_form_with_non_overlap():
    from sim.costs.roofline import overlap_lines

    x0, x1, y0, y1 = (
        np.array([1.0, 5.0]),
        np.array([0.5, 0.01]),
        np.array([3.0, 1.0]),
        np.array([0.1, 0.2]),
    )
    g = 0.4
    got = summed_roofline_s(*overlap_lines(x0, x1, y0, y1, g), 2, 30)
    c = np.arange(2, 32)[:, None]
    want = bound_s(x0 + x1 * c, y0 + y1 * c, g).sum(axis=0)
    assert np.allclose(got, want)


# --- the fit -----------------------------------------------------------------------------


def test_fit_recovers_known_factors_from_data_the_model_made():
    prof = read_profile(PROFILES / "a100")
    base = get_device("a100-80gb").model_copy(
        update={"compute_efficiency": 0.6, "bandwidth_efficiency": 0.8, "overhead_us": 5,
                "non_overlap": 0.0}
    )  # fmt: skip
    truth = GpuFactors(0.62, 0.71, 3.4, 0.35)
    data = measurements(prof, 4096)
    data = data[data["unit"] == "mlp"].copy()
    from sim.profile.gpu import predict_s

    data["seconds"] = predict_s(data, truth.apply(base))
    got = fit_factors(data, base)
    assert got.compute_efficiency == pytest.approx(0.62, rel=0.01)
    assert got.bandwidth_efficiency == pytest.approx(0.71, rel=0.01)
    assert got.kernel_overhead_us == pytest.approx(3.4, abs=0.1)
    assert got.non_overlap == pytest.approx(0.35, abs=0.01)


def test_a_model_left_out_meets_the_goal_on_the_a100():
    """Median <= 5 % and worst <= 25 % on the MLP half over 1-4096 tokens, for Llama-2-7B
    and Llama-3-8B each left out of the A100 fit (phi-2 left out misses: see the report)."""
    spec_sheet = get_device("a100-80gb").model_copy(
        update={
            "compute_efficiency": 0.6,
            "bandwidth_efficiency": 0.8,
            "overhead_us": 5,
            "non_overlap": 0.0,
        }
    )  # fmt: skip  (the assumptions before the fit)
    cal = calibrate(read_profile(PROFILES / "a100"), spec_sheet)
    table = summary(cal).set_index(["model", "unit"])
    for model in ("llama-2-7b", "llama-3-8b"):
        row = table.loc[(model, "mlp")]
        assert row["tokens"] == "1-4096"
        assert row["loo_median"] <= 0.05 and row["loo_worst"] <= 0.25, row
        assert row["after_median"] < row["before_median"]


FITTED = ("compute_efficiency", "bandwidth_efficiency", "overhead_us", "kernel_overhead_us",
          "non_overlap")  # fmt: skip
RESULTS = Path(__file__).resolve().parents[1] / "results/calibration/gpu"


def _committed(gpu: str, name: str) -> dict:
    import yaml

    return yaml.safe_load((RESULTS / gpu / "device.yaml").read_text())[name]


def test_the_committed_reports_hold_this_fit_and_the_catalog_adopts_it():
    a100 = calibrate(read_profile(PROFILES / "a100"), get_device("a100-80gb")).fitted
    spec = _committed("a100", "a100-80gb")
    assert tuple(spec[k] for k in FITTED) == (
        a100.compute_efficiency, a100.bandwidth_efficiency, 0, a100.kernel_overhead_us,
        a100.non_overlap,
    )  # fmt: skip
    # the H100 holds the A100's kernel overhead and non_overlap (--fix), fits the rest
    prior = {"kernel_overhead_us": a100.kernel_overhead_us, "non_overlap": a100.non_overlap}
    h100 = calibrate(read_profile(PROFILES / "h100"), get_device("h100-sxm"), fixed=prior)
    assert (h100.fitted.kernel_overhead_us, h100.fitted.non_overlap) == tuple(prior.values())
    h_spec = _committed("h100", "h100-sxm")
    assert h_spec["compute_efficiency"] == h100.fitted.compute_efficiency
    assert h_spec["bandwidth_efficiency"] == h100.fitted.bandwidth_efficiency
    # the catalog's defaults are the fitted factors; the 40 GB A100 takes the 80 GB's
    for name, fitted in (("a100-80gb", spec), ("a100-40gb", spec), ("h100-sxm", h_spec)):
        dev = get_device(name)
        assert tuple(getattr(dev, k) for k in FITTED) == tuple(fitted[k] for k in FITTED)
    assert get_device("a100-40gb").memory_bandwidth_gb_s == 1555  # its own HBM2 peak


def test_h100_with_the_a100_prior_and_a_model_left_out():
    """The H100 goal with the A100's kernel overhead and non_overlap held (report figures):
    phi-2 left out meets it (4.8 % / 24.4 %); Llama-2-7B left out misses the median by a
    hair (5.01 %, worst 23.4 %). Without the prior both miss (median 8-9 %, worst 30-36 %)."""
    a100 = calibrate(read_profile(PROFILES / "a100"), get_device("a100-80gb")).fitted
    prior = {"kernel_overhead_us": a100.kernel_overhead_us, "non_overlap": a100.non_overlap}
    before = get_device("h100-sxm")
    table = summary(calibrate(read_profile(PROFILES / "h100"), before, fixed=prior))
    loo = table[table["unit"] == "mlp"].set_index("model")
    assert loo.loc["phi-2", "loo_median"] <= 0.05 and loo.loc["phi-2", "loo_worst"] <= 0.25
    assert loo.loc["llama-2-7b", "loo_median"] == pytest.approx(0.0501, abs=0.0005)
    assert loo.loc["llama-2-7b", "loo_worst"] <= 0.25
    free = summary(calibrate(read_profile(PROFILES / "h100"), before))
    free = free[free["unit"] == "mlp"].set_index("model")
    assert (free["loo_median"] > 0.075).all() and (free["loo_worst"] > 0.29).all()


# --- the command -------------------------------------------------------------------------


def test_calibrate_writes_a_report_and_a_usable_cost_table(tmp_path, capsys):
    gpu = tmp_path / "gpu"
    _vidur_csv(gpu / "Llama-2-7b-hf" / "mlp.csv", [1, 16, 64, 256, 1024], _flat, tp=(1, 2))
    assert main(["calibrate", str(gpu), "--device", "a100-80gb", "-o", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "TP2" in out
    for name in ("errors.csv", "summary.csv", "device.yaml", "cost_table.csv", "README.md"):
        assert (tmp_path / "r" / name).is_file()
    assert "kernel_overhead_us" in (tmp_path / "r" / "device.yaml").read_text()
    table = read_cost_table(tmp_path / "r" / "cost_table.csv")
    assert set(table["unit_kind"]) == {"mlp", "embed"}
    assert set(table["model"]) == {"llama-2-7b"}


def test_calibrate_holds_fixed_factors_and_reports_the_before_file(tmp_path, capsys):
    gpu = tmp_path / "gpu"
    _vidur_csv(gpu / "Llama-2-7b-hf" / "mlp.csv", [1, 16, 64, 256, 1024], _flat)
    before = tmp_path / "before.yaml"
    before.write_text("a100-80gb: {kind: server, peak_tflops: {bf16: 312}, memory_gb: 80,\n"
                      "  memory_bandwidth_gb_s: 2039, compute_efficiency: 0.4321}\n")  # fmt: skip
    out = tmp_path / "r"
    argv = ["calibrate", str(gpu), "--device", "a100-80gb", "--fix", "non_overlap=0.3",
            "--before", str(before), "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "non_overlap 0.3;" in capsys.readouterr().out
    assert (
        "non_overlap: 0.3  # held at 0.3 (--fix), not fitted" in (out / "device.yaml").read_text()
    )
    report = (out / "README.md").read_text()
    assert "| compute_efficiency | 0.4321 |" in report and "--before" in report


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["{gpu}", "--device", "nope"], "unknown device 'nope'"),
        (["{gpu}", "--device", "laptop-m2"], "is a client"),
        (["{gpu}", "--device", "a100-80gb", "--fit-units", "head"], "--fit-units"),
        (["{gpu}", "--device", "a100-80gb", "--max-tokens", "0"], "--max-tokens"),
        (["{tmp}/none", "--device", "a100-80gb"], "profile directory not found"),
        (["{tmp}", "--device", "a100-80gb"], "holds the profiles of several GPUs"),
        (["{bad}", "--device", "a100-80gb"], "needs column 'n_head'"),
        (["{tp}", "--device", "a100-80gb"], "no rows with num_tensor_parallel_workers = 1"),
        (["{neg}", "--device", "a100-80gb"], "column 'n_embd' must hold"),
        (["{gpu}", "--device", "a100-80gb", "--fix", "overhead_us=3"], "--fix: expected"),
        (["{gpu}", "--device", "a100-80gb", "--fix", "non_overlap"], "--fix: expected"),
        (["{gpu}", "--device", "a100-80gb", "--fix", "non_overlap=2"], "--fix non_overlap"),
        (["{gpu}", "--device", "a100-80gb", "--fix", "kernel_overhead_us=nan"], "<= 40"),
        (["{gpu}", "--device", "a100-80gb", "--before", "{tmp}/none.yaml"], "cannot read"),
        (["{gpu}", "--device", "a100-80gb", "--before", "{yaml}"], "no entry 'a100-80gb"),
        (["{gpu}", "--device", "h100-sxm", "--before", "{yaml}"], "h100-sxm.compute_efficiency"),
        (["{gpu}", "--device", "a100-80gb", "--before", "{junk}"], "not valid YAML"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, fragment):
    gpu = tmp_path / "gpu"
    _vidur_csv(gpu / "Llama-2-7b-hf" / "mlp.csv", [1, 16], _flat)
    bad = tmp_path / "bad" / "m" / "mlp.csv"
    bad.parent.mkdir(parents=True)
    bad.write_text("a,b\n1,2\n")
    tp = _vidur_csv(tmp_path / "tp" / "m" / "mlp.csv", [1, 16], _flat, tp=(2,))
    neg = _vidur_csv(tmp_path / "neg" / "m" / "mlp.csv", [1], _flat, shape={**LLAMA, "n_embd": -4})
    yml = tmp_path / "before.yaml"
    yml.write_text("h100-sxm: {kind: server, peak_tflops: {fp16: 989}, memory_gb: 80,\n"
                   "  memory_bandwidth_gb_s: 3350, compute_efficiency: 1.5}\n")  # fmt: skip
    junk = tmp_path / "junk.yaml"
    junk.write_text("a100-80gb: [unclosed\n")
    subs = {"gpu": gpu, "tmp": tmp_path, "bad": bad.parent.parent, "tp": tp.parent.parent,
            "neg": neg.parent.parent, "yaml": yml, "junk": junk}  # fmt: skip
    argv = ["calibrate", *(a.format(**subs) for a in args), "-o", str(tmp_path / "out")]
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and fragment in err, err
    assert not (tmp_path / "out").exists()
