"""The shipped scenarios: all valid, every example runs end to end, trace replay is faithful.

The examples run at a reduced size (fewer requests or a shorter duration) so the whole
file stays within a few seconds per example; their default sizes are for users.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from sim.cli import main
from sim.config import load_scenario
from sim.runner import run_scenario

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "scenarios" / "examples").glob("*.yaml"))
VALIDATION = sorted((ROOT / "scenarios" / "validation").glob("*.yaml"))
DATA = ROOT / "scenarios" / "examples" / "data"
TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"

RESULT_FILES = {
    "scenario.yaml",
    "requests.csv",
    "summary.csv",
    "summary.json",
    "timeseries.csv",
    "manifest.json",
}
EXPECTED_EXAMPLES = {
    "quickstart",
    "edge_cloud",
    "fleet",
    "long_context",
    "shared_cell",
    "bandwidth_trace",
    "trace_replay",
}


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def reduced(path: Path) -> list[str]:
    """Overrides that shrink a scenario to a test-sized run, whatever its stop rule."""
    raw = yaml.safe_load(path.read_text())
    if raw.get("duration_s") is not None:
        return ["duration_s=20", "warmup_s=0"]
    if raw["workload"]["arrival"].get("kind") == "trace":
        return ["requests=40", "warmup_s=0"]
    return ["requests=60", "warmup_s=0"]


def test_examples_present():
    assert {p.stem for p in EXAMPLES} >= EXPECTED_EXAMPLES
    assert VALIDATION, "no validation scenarios found"


@pytest.mark.parametrize("path", EXAMPLES + VALIDATION, ids=_ids(EXAMPLES + VALIDATION))
def test_check_passes(path: Path, capsys):
    assert main(["check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert f"{path}: valid" in err
    effective = yaml.safe_load(out)
    assert effective["name"] and effective["clients"]


@pytest.mark.parametrize("path", EXAMPLES, ids=_ids(EXAMPLES))
def test_example_runs(path: Path, tmp_path):
    ld = load_scenario(path, reduced(path))
    out = tmp_path / path.stem
    result = run_scenario(ld, out, command=["test"])

    fleet = {"servers.csv", "timeseries_servers.csv"} if ld.scenario.servers else set()
    assert {p.name for p in out.iterdir()} == RESULT_FILES | fleet
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "ok"
    assert manifest["seed"] == ld.scenario.seed

    policies = ld.scenario.policies
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["policy"]) == policies * ld.scenario.replications
    assert (summary["completed"] > 0).all()
    assert len(json.loads((out / "summary.json").read_text())) == len(summary)

    requests = pd.read_csv(out / "requests.csv")
    per_policy = requests.groupby("policy").size()
    assert set(per_policy.index) == set(policies)
    assert per_policy.nunique() == 1  # every policy saw the same arrivals
    assert len(requests) == len(result.requests)
    assert not pd.read_csv(out / "timeseries.csv").empty
    assert yaml.safe_load((out / "scenario.yaml").read_text())["name"] == ld.scenario.name


def test_bandwidth_trace_data():
    bw = pd.read_csv(DATA / "cell_bandwidth.csv")
    assert list(bw.columns) == ["time_s", "uplink_mbps", "downlink_mbps"]
    assert 90 <= len(bw) <= 120
    assert bw["time_s"].iloc[0] == 0 and (np.diff(bw["time_s"]) > 0).all()
    assert (bw[["uplink_mbps", "downlink_mbps"]] > 0).all().all()
    assert (bw["downlink_mbps"] > bw["uplink_mbps"]).all()


def test_sample_trace_data():
    trace = pd.read_csv(DATA / "sample_trace.csv")
    assert list(trace.columns) == ["arrived_at", "num_prefill_tokens", "num_decode_tokens"]
    assert len(trace) == 200
    assert (np.diff(trace["arrived_at"]) >= 0).all()
    # Shaped like the Azure conversation trace: median prompt ~1020, median output ~129.
    assert 800 <= trace["num_prefill_tokens"].median() <= 1250
    assert 95 <= trace["num_decode_tokens"].median() <= 165


@pytest.mark.skipif(not TRACES.is_dir(), reason=f"real traces not available ({TRACES})")
def test_replays_real_trace(tmp_path):
    trace_file = TRACES / "splitwise_code.csv"
    n = 300
    ld = load_scenario(
        ROOT / "scenarios" / "examples" / "trace_replay.yaml",
        [
            f"workload.arrival.path={trace_file}",
            f"requests={n}",
            "workload.arrival.time_scale=1",
            "policies=[dp, server_only]",
        ],
    )
    out = tmp_path / "replay"
    run_scenario(ld, out, command=["test"])
    assert json.loads((out / "manifest.json").read_text())["status"] == "ok"

    trace = pd.read_csv(trace_file).sort_values("arrived_at", kind="stable").head(n)
    requests = pd.read_csv(out / "requests.csv")
    for policy, rows in requests.groupby("policy"):
        rows = rows.sort_values("request_id")
        assert len(rows) == n, policy
        np.testing.assert_array_equal(rows["prompt_tokens"], trace["num_prefill_tokens"])
        np.testing.assert_array_equal(rows["output_tokens"], trace["num_decode_tokens"])
        np.testing.assert_allclose(rows["arrival_s"], trace["arrived_at"], atol=1e-9)


SWEEPS = sorted((ROOT / "scenarios" / "examples" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_shipped_sweep_point_is_a_valid_scenario(path: Path):
    """Each example sweep loads and every one of its points validates (no run)."""
    from sim.sweep.points import expand
    from sim.sweep.run import _precheck, _tasks
    from sim.sweep.spec import load_sweep

    spec, base_raw, base_dir = load_sweep(path)
    seed = spec.seed if spec.seed is not None else base_raw.get("seed", 0)
    tasks = _tasks(spec, expand(spec, seed), base_raw, base_dir, str(path))
    assert tasks
    assert [t["id"] for t in tasks if _precheck(t) is not None] == []
