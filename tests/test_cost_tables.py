"""Measured cost tables: format checks, the fitted curves, attaching a table to a device, and
`splitsim profile` (the profiling tests need the `profile` extra and are skipped without it)."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from sim.catalog import DeviceSpec, ModelSpec, get_device, get_model
from sim.cli import main
from sim.costs import model_units, request_work, unit_times_s
from sim.costs.tables import (
    COLUMNS,
    CostTableWarning,
    fit_curve,
    load_cost_table,
    read_cost_table,
    reset_warnings,
)
from sim.errors import UserError
from sim.split import Link, build_problem

LINK = Link(20.0, 100.0, 30.0)
TOKENS = [32, 64, 128, 256]


def _curve(kind: str, phase: str, n):
    """A known cost per unit kind: quadratic in n for passes, linear in c for decode."""
    n = np.asarray(n, float)
    base = {"embed": 1e-4, "block": 2e-3, "attn": 1e-3, "mlp": 1e-3, "head": 5e-3}[kind]
    if phase == "decode":
        return base / 10 + 1e-7 * n
    return base + 3e-5 * n + 2e-8 * n**2


def _write_table(path: Path, model: ModelSpec, tokens=TOKENS, phases=("forward", "decode")):
    rows = []
    for phase in phases:
        for n in tokens:
            for gran in ("block", "sublayer"):
                for u in model_units(model, gran):
                    if gran == "sublayer" and u.kind in ("embed", "head"):
                        continue
                    rows.append((model.name, u.kind, u.layer, "dev", phase, n, 1,
                                 float(_curve(u.kind, phase, n))))  # fmt: skip
    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(path, index=False)
    return path


@pytest.fixture
def table(tmp_path) -> Path:
    reset_warnings()
    return _write_table(tmp_path / "dev.csv", get_model("gpt2"))


def _client(path: Path | None) -> DeviceSpec:
    dev = get_device("phone-flagship")
    return dev.model_copy(update={"cost_table": str(path) if path else None})


# --- the CSV format ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.drop(columns=["seconds"]), "needs column 'seconds'"),
        (lambda f: f.assign(phase="backward"), "column 'phase': unknown value 'backward'"),
        (lambda f: f.assign(unit_kind="ffn"), "column 'unit_kind': unknown value 'ffn'"),
        (lambda f: f.assign(seconds=-1.0), "column 'seconds' must hold numbers > 0 and <= 3600"),
        (lambda f: f.assign(seconds=float("inf")), "column 'seconds' must hold numbers > 0"),
        (lambda f: f.assign(seconds=1e308), "column 'seconds' must hold numbers > 0"),
        (lambda f: f.assign(tokens="many"), "column 'tokens' must hold integers >= 1"),
        (lambda f: f.assign(batch=1.5), "column 'batch' must hold integers >= 1"),
        (lambda f: f.iloc[0:0], "has no rows"),
    ],
)
def test_bad_table_is_one_line_naming_file_and_column(table, tmp_path, edit, message):
    bad = tmp_path / "bad.csv"
    edit(pd.read_csv(table)).to_csv(bad, index=False)
    with pytest.raises(UserError) as err:
        read_cost_table(bad)
    text = str(err.value)
    assert message in text and "bad.csv" in text and "\n" not in text


def test_missing_table_file():
    with pytest.raises(UserError, match="cost table not found"):
        load_cost_table("/nonexistent/t.csv")


def test_optional_energy_column_is_accepted(table, tmp_path):
    f = pd.read_csv(table).assign(energy_j=0.5)
    f.to_csv(tmp_path / "e.csv", index=False)
    assert "energy_j" in read_cost_table(tmp_path / "e.csv").columns


# --- the fitted curves ------------------------------------------------------------------------


def test_fit_recovers_quadratic_curve():
    n = np.array([16, 32, 64, 128, 256, 512, 1024], float)
    a, b, c = 4e-4, 2.5e-6, 3e-9
    fit = fit_curve(n, a + b * n + c * n**2, degree=2)
    assert np.allclose(fit.coef, (a, b, c), rtol=1e-6)
    assert fit(300.0) == pytest.approx(a + b * 300 + c * 300**2, rel=1e-9)
    assert (fit.lo, fit.hi) == (16, 1024)


def test_fit_drops_degree_with_few_lengths():
    fit = fit_curve([10, 20], [1.0, 2.0], degree=2)
    assert len(fit.coef) == 2 and fit(15.0) == pytest.approx(1.5)


# --- attaching a table --------------------------------------------------------------------


def test_no_table_is_the_roofline_bit_for_bit():
    m = get_model("gpt2")
    server, client = get_device("a100-80gb"), get_device("phone-flagship")
    p = build_problem(m, "forward", 100, 0, client, server, LINK, 1.0)
    w = request_work(m, "forward", 100)
    assert np.array_equal(p.client_time, unit_times_s(w, client, m.activation_dtype))
    assert np.array_equal(p.server_time, unit_times_s(w, server, m.activation_dtype))


@pytest.mark.parametrize("granularity", ["block", "sublayer"])
def test_table_replaces_roofline_for_covered_units(table, granularity):
    m = get_model("gpt2")
    server = get_device("a100-80gb")
    plain = build_problem(m, "forward", 100, 0, _client(None), server, LINK, 1.0,
                          granularity=granularity)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", CostTableWarning)  # 100 is inside 32..256
        p = build_problem(m, "forward", 100, 0, _client(table), server, LINK, 1.0,
                          granularity=granularity)  # fmt: skip
    units = model_units(m, granularity)
    expect = [_curve(u.kind, "forward", 100) for u in units]
    assert np.allclose(p.client_time, expect, rtol=1e-6)
    assert np.array_equal(p.server_time, plain.server_time)  # the server has no table
    assert not np.allclose(p.client_time, plain.client_time)


def test_generate_uses_forward_prefill_and_decode_sum(table):
    m = get_model("gpt2")
    p = build_problem(m, "generate", 64, 10, _client(table), get_device("a100-80gb"), LINK, 5.0)
    cache = np.arange(64, 64 + 9)  # 9 decode steps after the prefill; KV-cache lengths
    block = _curve("block", "forward", 64) + _curve("block", "decode", cache).sum()
    head = _curve("head", "decode", 64) + _curve("head", "decode", cache).sum()
    assert p.client_time[1] == pytest.approx(block, rel=1e-6)
    assert p.client_time[-1] == pytest.approx(head, rel=1e-6)


def test_uncovered_model_keeps_roofline(table):
    m = get_model("bert-base")
    client = _client(table)
    p = build_problem(m, "forward", 100, 0, client, get_device("a100-80gb"), LINK, 1.0)
    w = request_work(m, "forward", 100)
    assert np.array_equal(p.client_time, unit_times_s(w, client, m.activation_dtype))


def test_extrapolation_warns_once_per_run(table):
    m = get_model("gpt2")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in (600, 700, 800):
            build_problem(m, "forward", n, 0, _client(table), get_device("a100-80gb"), LINK, 1.0)
    hits = [w for w in caught if issubclass(w.category, CostTableWarning)]
    assert len(hits) == 1
    assert "outside the measured 32..256" in str(hits[0].message)


def test_solve_command_uses_attached_table(table, capsys):
    argv = ["solve", "--model", "gpt2", "--tokens", "100", "--client", "phone-flagship",
            "--server", "a100-80gb", "--uplink-mbps", "20", "--downlink-mbps", "100",
            "--deadline-s", "1"]  # fmt: skip
    assert main(argv) == 0
    plain = capsys.readouterr().out
    assert main([*argv, "--client-cost-table", str(table)]) == 0
    with_table = capsys.readouterr().out
    assert plain != with_table
    block0 = next(line for line in with_table.splitlines() if line.startswith("block0"))
    assert float(block0.split()[2]) == pytest.approx(_curve("block", "forward", 100), rel=1e-3)
    assert main([*argv, "--client-cost-table", "/nope.csv"]) == 2
    assert "--client-cost-table" in capsys.readouterr().err


def _scenario(tmp_path: Path, table: Path) -> Path:
    sc = {
        "name": "tables",
        "requests": 30,
        "policies": ["dp", "server_only"],
        "devices": {"my-phone": {**get_device("phone-flagship").model_dump(
            exclude={"name"}, exclude_none=True), "cost_table": table.name}},
        "server": {"device": "a100-80gb"},
        "clients": [{"name": "p", "count": 2, "device": "my-phone"}],
        "workload": {"arrival": {"kind": "poisson", "rate_per_s": 20},
                     "mix": [{"name": "c", "model": "gpt2", "prompt_tokens": 100,
                              "deadline_factor": 3}]},
    }  # fmt: skip
    path = tmp_path / "sc.yaml"
    path.write_text(yaml.safe_dump(sc))
    return path


def test_scenario_device_table_is_relative_and_listed(table, tmp_path, capsys, monkeypatch):
    from sim.config import load_scenario

    path = _scenario(tmp_path, table)
    monkeypatch.chdir("/")  # the path is relative to the scenario, not the working directory
    ld = load_scenario(path)
    assert Path(ld.client_devices[0].cost_table) == table.resolve()
    assert main(["catalog", "devices", "--scenario", str(path)]) == 0
    out = capsys.readouterr().out
    my = next(line for line in out.splitlines() if line.startswith("my-phone"))
    assert my.rstrip().endswith("table dev.csv")
    a100 = next(line for line in out.splitlines() if line.startswith("a100-80gb"))
    assert a100.rstrip().endswith("roofline")
    assert main(["run", str(path), "-o", str(tmp_path / "out"), "--quiet"]) == 0


def test_scenario_with_missing_table_is_one_line(table, tmp_path, capsys):
    path = _scenario(tmp_path, tmp_path / "absent.csv")
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "devices.my-phone.cost_table" in err and "\n" not in err


def test_table_of_other_devices_is_rejected(table, tmp_path, capsys):
    f = pd.read_csv(table)
    f.loc[: len(f) // 2, "device"] = "other"
    f.to_csv(tmp_path / "dev.csv", index=False)
    path = _scenario(tmp_path, tmp_path / "dev.csv")
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no rows for device 'my-phone'" in err and "\n" not in err


def test_catalog_devices_are_roofline(capsys):
    assert main(["catalog", "devices"]) == 0
    lines = capsys.readouterr().out.splitlines()[2:]
    assert lines and all(line.rstrip().endswith("roofline") for line in lines)


# --- splitsim profile ------------------------------------------------------------------------


def test_profile_without_extra_says_how_to_install(monkeypatch, capsys, tmp_path):
    import sim.profile

    monkeypatch.setattr(sim.profile, "missing_extra", lambda: sim.profile.INSTALL_HINT)
    code = main(["profile", "--model", "gpt2", "--tokens", "8", "-o", str(tmp_path / "t.csv")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and 'pip install -e ".[profile]"' in err


TINY = {
    "architecture": "decoder", "layers": 2, "hidden_size": 32, "heads": 4, "mlp_size": 64,
    "mlp_kind": "gelu", "vocab_size": 128, "max_positions": 64,
}  # fmt: skip
TINY_LLAMA = {
    **TINY, "kv_heads": 2, "mlp_kind": "gated", "position": "rotary", "norm": "rmsnorm",
    "bias": False, "tied_embeddings": False,
}  # fmt: skip
needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None,
    reason="needs the profile extra (torch, transformers): pip install -e '.[profile]'",
)


@needs_torch
@pytest.mark.parametrize("fields", [TINY, TINY_LLAMA], ids=["gpt2-arch", "llama-arch"])
def test_profile_rows_cover_every_unit_and_length(fields):
    from sim.profile.measure import profile_model

    spec = ModelSpec(name="tiny", **fields)
    rows = profile_model(spec, [8, 16], batches=[1, 2], sublayer=True, repeats=1, warmup=1,
                         threads=1)  # fmt: skip
    got = {(r.unit_kind, r.unit_index, r.phase, r.tokens, r.batch) for r in rows}
    units = {(u.kind, u.layer) for g in ("block", "sublayer") for u in model_units(spec, g)}
    want = {(k, i, p, n, b) for k, i in units for p in ("forward", "decode")
            for n in (8, 16) for b in (1, 2)}  # fmt: skip
    assert got == want
    assert all(r.seconds > 0 for r in rows)


@needs_torch
def test_profile_command_table_drives_solve(tmp_path, capsys):
    model_file = tmp_path / "tiny.yaml"
    model_file.write_text(yaml.safe_dump({"tiny": TINY}))
    out = tmp_path / "mydevice.csv"
    argv = ["profile", "--model", str(model_file), "--tokens", "8,16,32", "--repeats", "2",
            "--threads", "1", "--quiet", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "rows ->" in capsys.readouterr().out
    table = read_cost_table(out)
    assert set(table["unit_kind"]) == {"embed", "block", "head"}
    assert set(table["tokens"]) == {8, 16, 32}
    spec_yaml = yaml.safe_load(out.with_suffix(".yaml").read_text())
    ((name, fields),) = spec_yaml.items()
    device = DeviceSpec(name=name, **fields)
    assert device.cost_table == "mydevice.csv"
    device = device.model_copy(update={"cost_table": str(out)})
    spec = ModelSpec(name="tiny", **TINY)
    reset_warnings()
    p = build_problem(spec, "forward", 16, 0, device, get_device("a100-80gb"), LINK, 1.0)
    roof = unit_times_s(request_work(spec, "forward", 16), device, spec.activation_dtype)
    assert not np.allclose(p.client_time, roof)
    measured = table[(table["phase"] == "forward") & (table["tokens"] == 16)]
    # the fitted curve stays close to the median measurements at a measured length
    block_med = measured[measured["unit_kind"] == "block"]["seconds"].median()
    assert p.client_time[1] == pytest.approx(block_med, rel=1.0)
