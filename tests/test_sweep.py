"""Sweeps and capacity search: expansion, seeds, executors, resuming, failures, statistics.

Every scenario here is a synthetic M/M/1-like server (a request is just a server time, no
model, no network), so a point runs in a fraction of a second and the capacity has a
closed form. The executor tests go through the real command line in fresh processes:
`--jobs 1`, `--jobs 2` and `--dask local` (a real LocalCluster) must give byte-identical
sweep files, and a sweep killed with SIGKILL must resume without recomputing anything.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import sim.runner
from sim.cli import main
from sim.errors import UserError
from sim.records import SUMMARY_COLUMNS
from sim.stats import mean_ci95, t975
from sim.sweep.points import expand, point_seed
from sim.sweep.spec import Range, load_sweep

REPO = Path(__file__).resolve().parents[1]
HAS_DASK = importlib.util.find_spec("dask") is not None and (
    importlib.util.find_spec("distributed") is not None
)

MU = 10.0  # service rate of the synthetic server (mean service time 0.1 s)

# M/M/1: Poisson arrivals, exponential service, one slot; `dp` has nothing to split in a
# synthetic request, so it serves exactly like `server_only` (same seeds, same numbers).
BASE: dict = {
    "name": "mm1",
    "seed": 7,
    "requests": 600,
    "warmup_s": 10,
    "policies": ["server_only", "dp"],
    "server": {"device": "a100-80gb", "slots": 1},
    "clients": [
        {"name": "c", "count": 1, "link": {"uplink_mbps": 1000, "downlink_mbps": 1000, "rtt_ms": 0}}
    ],
    "workload": {
        "arrival": {"kind": "poisson", "rate_per_s": 5.0},
        "mix": [
            {
                "name": "job",
                "task": "synthetic",
                "service_s": {"kind": "exponential", "mean": 1 / MU},
                "deadline_s": 1.0,
            }
        ],
    },
}

RATE = "workload.arrival.rate_per_s"
DEADLINE = "workload.mix.0.deadline_s"
SLOTS = "server.slots"


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def make_sweep(folder: Path, name: str = "sweep.yaml", base: dict | None = None, **body) -> Path:
    """A sweep file next to its base scenario `base.yaml` (referenced by relative path)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_yaml(folder / "base.yaml", base if base is not None else BASE)
    return write_yaml(folder / name, {"name": "t", "base": "base.yaml", **body})


def cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m sim ARGS` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "sim", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sweep_in_process(sweep: Path, out: Path, *extra: str) -> int:
    return main(["sweep", str(sweep), "-o", str(out), "--jobs", "1", "--quiet", *extra])


def summary_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.startswith(("sweep:", "capacity:"))]
    assert len(lines) == 1, text
    return lines[0]


def failed_points(text: str) -> int:
    import re

    m = re.search(r"(\d+) points? failed", summary_line(text))
    assert m, text
    return int(m.group(1))


def task_files(out: Path) -> dict[str, tuple[int, int]]:
    """Finished task files with (inode, mtime_ns): a rewrite changes at least one of them."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "tasks").glob("*.json")}


# --- statistics -------------------------------------------------------------------------


def test_t975_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, 201):
        exact = stats.t.ppf(0.975, df)
        assert t975(df) == pytest.approx(exact, rel=1e-3), df
    assert math.isnan(t975(0))


def test_mean_ci95_basics():
    mean, half, n = mean_ci95([])
    assert math.isnan(mean) and math.isnan(half) and n == 0
    mean, half, n = mean_ci95([3.0])
    assert mean == 3.0 and math.isnan(half) and n == 1
    mean, half, n = mean_ci95([1.0, 2.0, 3.0, float("nan")])  # NaN is ignored
    assert (mean, n) == (2.0, 3)
    assert half == pytest.approx(t975(2) * 1.0 / math.sqrt(3))
    assert mean_ci95([4.0, 4.0, 4.0])[1] == 0.0
    # The textbook interval covers the true mean ~95 % of the time.
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(2000):
        m, h, _ = mean_ci95(rng.normal(5.0, 2.0, size=6))
        hits += abs(m - 5.0) <= h
    assert 0.93 <= hits / 2000 <= 0.97


# --- expansion, ranges, seeds -------------------------------------------------------------


def test_log_and_linear_ranges():
    log = Range(start=2, stop=200, num=5, log=True).values()
    assert log[0] == 2 and log[-1] == 200
    assert np.allclose(np.diff(np.log(log)), math.log(10) / 2)
    assert Range(start=0, stop=1, num=5).values() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert Range(start=1, stop=1000, num=4, log=True, integer=True).values() == [1, 10, 100, 1000]
    with pytest.raises(ValueError, match="log"):
        Range(start=0, stop=10, num=3, log=True).values()


def test_log_range_in_a_sweep_file(tmp_path):
    sweep = make_sweep(tmp_path, grid={RATE: {"start": 1, "stop": 4, "num": 3, "log": True}})
    spec, _, _ = load_sweep(sweep)
    assert [p.params[RATE] for p in expand(spec, 0)] == pytest.approx([1, 2, 4])
    bad = make_sweep(
        tmp_path, "bad.yaml", grid={RATE: {"start": 0, "stop": 4, "num": 3, "log": True}}
    )
    with pytest.raises(UserError, match=r"bad\.yaml: workload\.arrival\.rate_per_s: log"):
        load_sweep(bad)


def test_grid_times_zip_expansion(tmp_path):
    sweep = make_sweep(
        tmp_path,
        grid={RATE: [2.0, 3.0], SLOTS: [1, 2, 3]},
        zip={DEADLINE: [0.5, 1.0], "warmup_s": [5, 10]},
    )
    spec, base_raw, _ = load_sweep(sweep)
    points = expand(spec, 7)
    assert len(points) == 2 * 3 * 2
    assert [p.index for p in points] == list(range(12))
    # zip factors move together; the grid is the full product
    assert {(p.params[DEADLINE], p.params["warmup_s"]) for p in points} == {(0.5, 5), (1.0, 10)}
    combos = {(p.params[RATE], p.params[SLOTS], p.params[DEADLINE]) for p in points}
    assert len(combos) == 12
    assert list(points[0].params) == [RATE, SLOTS, DEADLINE, "warmup_s"]
    assert len({p.seed for p in points}) == 12
    assert base_raw["workload"]["arrival"]["rate_per_s"] == 5.0  # the base is not touched
    # zipped factors of different lengths, and a factor in both, are refused
    uneven = make_sweep(tmp_path, "uneven.yaml", zip={DEADLINE: [0.5, 1.0], SLOTS: [1]})
    with pytest.raises(UserError, match="zip"):
        load_sweep(uneven)
    both = make_sweep(tmp_path, "both.yaml", grid={SLOTS: [1]}, zip={SLOTS: [2]})
    with pytest.raises(UserError, match="both grid and zip"):
        load_sweep(both)


def test_point_seed_depends_only_on_sweep_seed_and_point():
    a = point_seed(3, {RATE: 2.0, SLOTS: 1})
    assert a == point_seed(3, {SLOTS: 1, RATE: 2.0})  # key order does not matter
    assert a != point_seed(4, {RATE: 2.0, SLOTS: 1})
    assert a != point_seed(3, {RATE: 2.0, SLOTS: 2})


def test_sweep_csv_rows_and_columns(tmp_path):
    sweep = make_sweep(
        tmp_path,
        replications=2,
        grid={RATE: [3.0, 5.0]},
        zip={DEADLINE: [0.5, 2.0], SLOTS: [1, 2]},
    )
    out = tmp_path / "out"
    assert sweep_in_process(sweep, out) == 0
    table = pd.read_csv(out / "sweep.csv")
    factors = [RATE, DEADLINE, SLOTS]
    assert list(table.columns) == ["point", *factors, *SUMMARY_COLUMNS, "error"]
    assert len(table) == 4 * 2 * 2  # points x policies x replications
    assert table["error"].isna().all()
    assert list(table["policy"][:4]) == ["server_only", "server_only", "dp", "dp"]
    assert list(table["replication"][:4]) == [0, 1, 0, 1]
    assert table.groupby("point")[factors].nunique().eq(1).all().all()
    # replications of one point are independent draws, policies share them (CRN)
    p0 = table[table["point"] == 0]
    assert p0["latency_mean_s"].nunique() == 2
    so, dp = p0[p0["policy"] == "server_only"], p0[p0["policy"] == "dp"]
    assert list(so["latency_mean_s"]) == list(dp["latency_mean_s"])
    ci = pd.read_csv(out / "sweep_ci.csv")
    assert len(ci) == 4 * 2
    assert list(ci.columns[:6]) == ["point", *factors, "policy", "replications"]
    assert (ci["replications"] == 2).all()
    for metric in SUMMARY_COLUMNS[2:]:
        assert f"{metric}_mean" in ci and f"{metric}_ci95" in ci
    row = ci[(ci["point"] == 1) & (ci["policy"] == "server_only")].iloc[0]
    values = table[(table["point"] == 1) & (table["policy"] == "server_only")]["wait_mean_s"]
    mean, half, _ = mean_ci95(values)
    assert row["wait_mean_s_mean"] == pytest.approx(mean)
    assert row["wait_mean_s_ci95"] == pytest.approx(half)


def test_inline_base_and_set(tmp_path):
    body = {"name": "inline", "base": BASE, "set": {"requests": 300}, "grid": {RATE: [2.0]}}
    sweep = write_yaml(tmp_path / "inline.yaml", body)
    out = tmp_path / "out"
    assert sweep_in_process(sweep, out) == 0
    table = pd.read_csv(out / "sweep.csv")
    assert len(table) == 2 and (table["requests"] < 300).all()  # warm-up requests excluded


def test_adding_a_point_changes_no_other_point(tmp_path):
    small = make_sweep(tmp_path / "a", replications=2, grid={RATE: [3.0, 5.0]})
    large = make_sweep(tmp_path / "b", replications=2, grid={RATE: [5.0, 4.0, 3.0, 6.0]})
    assert sweep_in_process(small, tmp_path / "a" / "out") == 0
    assert sweep_in_process(large, tmp_path / "b" / "out") == 0
    a = pd.read_csv(tmp_path / "a" / "out" / "sweep.csv").drop(columns="point")
    b = pd.read_csv(tmp_path / "b" / "out" / "sweep.csv").drop(columns="point")
    keys = [RATE, "policy", "replication"]
    b_same = b[b[RATE].isin([3.0, 5.0])].sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(a.sort_values(keys).reset_index(drop=True), b_same)


# --- failures, hashes, resuming -----------------------------------------------------------


def test_failed_point_is_recorded_and_others_run(tmp_path, capsys):
    sweep = make_sweep(tmp_path, replications=2, grid={SLOTS: [1, 0, 2]})
    out = tmp_path / "out"
    assert sweep_in_process(sweep, out) == 1
    assert failed_points(capsys.readouterr().out) == 1
    table = pd.read_csv(out / "sweep.csv")
    bad = table[table["point"] == 1]
    assert len(bad) == 2 and bad["error"].str.contains("server.slots").all()
    assert bad["throughput_rps"].isna().all()
    good = table[table["point"] != 1]
    assert len(good) == 2 * 2 * 2 and good["error"].isna().all()
    assert good["throughput_rps"].notna().all()
    ci = pd.read_csv(out / "sweep_ci.csv")
    assert sorted(ci["point"].unique()) == [0, 2]


def test_error_raised_while_running_is_recorded(tmp_path, capsys, monkeypatch):
    real = sim.runner.simulate

    def flaky(ld, *args, **kwargs):
        if ld.scenario.workload.arrival.rate_per_s == 4.0:
            raise ZeroDivisionError("boom")
        return real(ld, *args, **kwargs)

    monkeypatch.setattr(sim.runner, "simulate", flaky)
    sweep = make_sweep(tmp_path, grid={RATE: [3.0, 4.0, 5.0]})
    out = tmp_path / "out"
    assert sweep_in_process(sweep, out) == 1
    assert failed_points(capsys.readouterr().out) == 1
    table = pd.read_csv(out / "sweep.csv")
    assert list(table.loc[table["point"] == 1, "error"]) == ["ZeroDivisionError: boom"]
    assert table.loc[table["point"] != 1, "error"].isna().all()


def test_failed_point_exit_status_through_the_cli(tmp_path):
    sweep = make_sweep(tmp_path, grid={SLOTS: [0, 1]})
    res = cli("sweep", str(sweep), "-o", "out", "--jobs", "2", "--quiet", cwd=tmp_path)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert failed_points(res.stdout) == 1


def test_rerun_recomputes_nothing(tmp_path, capsys):
    sweep = make_sweep(tmp_path, replications=2, grid={RATE: [3.0, 5.0]})
    out = tmp_path / "out"
    assert sweep_in_process(sweep, out) == 0
    first = summary_line(capsys.readouterr().out)
    assert "4 tasks (4 run now, 0 already done)" in first
    before, csv = task_files(out), (out / "sweep.csv").read_bytes()
    assert sweep_in_process(sweep, out) == 0
    assert "(0 run now, 4 already done)" in summary_line(capsys.readouterr().out)
    assert task_files(out) == before
    assert (out / "sweep.csv").read_bytes() == csv


def test_changed_sweep_is_refused_unless_fresh(tmp_path, capsys):
    sweep = make_sweep(tmp_path, grid={RATE: [3.0, 5.0]})
    out = tmp_path / "out"
    assert sweep_in_process(sweep, out) == 0
    capsys.readouterr()
    before, csv = task_files(out), (out / "sweep.csv").read_bytes()

    def refused() -> None:
        assert sweep_in_process(sweep, out) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "--fresh" in err, err
        assert task_files(out) == before and (out / "sweep.csv").read_bytes() == csv

    # a changed base scenario
    write_yaml(tmp_path / "base.yaml", {**BASE, "requests": 500})
    refused()
    # a changed factor list (a point added) with the original base
    write_yaml(tmp_path / "base.yaml", BASE)
    write_yaml(sweep, {"name": "t", "base": "base.yaml", "grid": {RATE: [3.0, 4.0, 5.0]}})
    refused()
    # a changed --set override of the base
    write_yaml(sweep, {"name": "t", "base": "base.yaml", "grid": {RATE: [3.0, 5.0]}})
    assert sweep_in_process(sweep, out, "--set", "warmup_s=20") == 2
    capsys.readouterr()
    # the unchanged sweep still resumes; --fresh replaces the old results
    assert sweep_in_process(sweep, out) == 0
    assert "(0 run now, 2 already done)" in summary_line(capsys.readouterr().out)
    assert task_files(out) == before
    write_yaml(sweep, {"name": "t", "base": "base.yaml", "grid": {RATE: [3.0, 4.0, 5.0]}})
    assert sweep_in_process(sweep, out, "--fresh") == 0
    assert "(3 run now, 0 already done)" in summary_line(capsys.readouterr().out)
    clean = tmp_path / "clean"
    assert sweep_in_process(sweep, clean) == 0
    assert (out / "sweep.csv").read_bytes() == (clean / "sweep.csv").read_bytes()
    # a folder that is not a sweep is never taken over
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert sweep_in_process(sweep, tmp_path / "other", "--fresh") == 2
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_sigkill_mid_sweep_resumes_losing_only_points_in_flight(tmp_path):
    # 12 points of ~0.3 s each (6000 synthetic requests), run in the main process
    base = {**BASE, "requests": 6000, "policies": ["server_only"]}
    rates = [2.0 + 0.5 * i for i in range(12)]
    sweep = make_sweep(tmp_path, base=base, grid={RATE: rates})
    args = ["sweep", str(sweep), "-o", "out", "--jobs", "1", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tasks = tmp_path / "out" / "tasks"
    deadline = time.monotonic() + 120
    try:
        while len(list(tasks.glob("*.json"))) < 3:
            assert proc.poll() is None, "the sweep ended before it could be killed"
            assert time.monotonic() < deadline, "no task finished in time"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    finished = task_files(tmp_path / "out")
    assert 3 <= len(finished) < 12, "the kill came too late to test anything"
    assert not (tmp_path / "out" / "sweep.csv").exists()
    for name in finished:  # whole files only: each one parses
        assert "rows" in json.loads((tasks / name).read_text())
    for other in tasks.iterdir():  # anything else is an unfinished temporary
        assert other.name.endswith(".json") or other.name.startswith("."), other

    res = cli(*args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    done_before = len(finished)
    assert f"({12 - done_before} run now, {done_before} already done)" in summary_line(res.stdout)
    after = task_files(tmp_path / "out")
    assert len(after) == 12 and not [p for p in tasks.iterdir() if p.name.startswith(".")]
    assert {name: after[name] for name in finished} == finished  # not rewritten

    res = cli("sweep", str(sweep), "-o", "clean", "--jobs", "2", "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    for name in ("sweep.csv", "sweep_ci.csv"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()


# --- executors give identical results -----------------------------------------------------


@pytest.fixture(scope="module")
def executor_sweep(tmp_path_factory) -> Path:
    """A 6-point, 2-replication sweep, run once with --jobs 1 in a fresh process."""
    folder = tmp_path_factory.mktemp("executors")
    make_sweep(
        folder,
        base={**BASE, "requests": 1500},
        replications=2,
        grid={RATE: [3.0, 6.0]},
        zip={DEADLINE: [0.3, 0.6, 1.2], SLOTS: [1, 2, 1]},
    )
    res = cli("sweep", "sweep.yaml", "-o", "jobs1", "--jobs", "1", "--quiet", cwd=folder)
    assert res.returncode == 0, res.stderr
    assert len(pd.read_csv(folder / "jobs1" / "sweep.csv")) == 6 * 2 * 2
    return folder


def assert_same_results(folder: Path, other: str) -> None:
    for name in ("sweep.csv", "sweep_ci.csv"):
        assert (folder / other / name).read_bytes() == (folder / "jobs1" / name).read_bytes(), name


def test_jobs2_equals_jobs1(executor_sweep):
    res = cli("sweep", "sweep.yaml", "-o", "jobs2", "--jobs", "2", "--quiet", cwd=executor_sweep)
    assert res.returncode == 0, res.stderr
    assert_same_results(executor_sweep, "jobs2")


@pytest.mark.skipif(not HAS_DASK, reason="dask[distributed] is not installed (extra: dask)")
def test_dask_local_cluster_equals_jobs1(executor_sweep):
    res = cli(
        "sweep", "sweep.yaml", "-o", "dask", "--dask", "local", "--jobs", "2", "--quiet",
        cwd=executor_sweep,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert_same_results(executor_sweep, "dask")


@pytest.mark.slow  # the client waits its 30 s connect timeout
def test_dask_unreachable_scheduler_is_one_line(tmp_path):
    if not HAS_DASK:
        pytest.skip("dask[distributed] is not installed (extra: dask)")
    sweep = make_sweep(tmp_path, grid={RATE: [3.0]})
    res = cli("sweep", str(sweep), "-o", "out", "--dask", "tcp://127.0.0.1:9", cwd=tmp_path)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


# --- capacity search -----------------------------------------------------------------------


def capacity_rows(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_csv(out / "capacity.csv"), pd.read_csv(out / "capacity_ci.csv")


def check_capacity(out: Path, truths: list[float], rel_tol: float, reps: int, slack: float) -> None:
    """Per point: bracket within rel_tol, the mean near the truth, the truth within its CI."""
    table, ci = capacity_rows(out)
    assert table["error"].isna().all(), table["error"]
    assert len(table) == len(truths) * reps and len(ci) == len(truths)
    # the bracket: `capacity_rps` met the targets, `upper_rps` did not, within rel_tol
    assert (table["upper_rps"] > table["capacity_rps"]).all()
    assert ((table["upper_rps"] - table["capacity_rps"]) / table["capacity_rps"] <= rel_tol).all()
    for point, truth in enumerate(truths):
        row = ci[ci["point"] == point].iloc[0]
        assert row["replications"] == reps
        mean, half = row["capacity_rps_mean"], row["capacity_rps_ci95"]
        assert mean == pytest.approx(table.loc[table["point"] == point, "capacity_rps"].mean())
        assert 0 < half < 0.25 * mean
        assert abs(mean - truth) <= half + rel_tol * truth, (point, mean, half, truth)
        assert abs(mean - truth) <= slack * truth, (point, mean, truth)


def test_capacity_at_a_utilisation_cap_is_half_the_service_rate(tmp_path):
    # Huge SLA, utilisation < 0.5: the capacity is 0.5 * mu, per point of a grid over the
    # mean service time. Every evaluation of one replication reuses its seed, so the
    # utilisation is (nearly) linear in the rate.
    base = {**BASE, "requests": 3000, "policies": ["server_only"]}
    base["workload"] = {
        **BASE["workload"],
        "mix": [{**BASE["workload"]["mix"][0], "deadline_s": 1e6}],
    }
    cap = {"max_utilization": 0.5, "max_sla_violation_rate": 1.0, "rel_tol": 0.02}
    means = [0.1, 0.25]
    sweep = make_sweep(
        tmp_path,
        base=base,
        replications=4,
        grid={"workload.mix.0.service_s.mean": means},
        capacity=cap,
    )
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "-o", str(out), "--jobs", "2", "--quiet"]) == 0
    check_capacity(out, [0.5 / m for m in means], rel_tol=0.02, reps=4, slack=0.05)
    table = pd.read_csv(out / "capacity.csv")
    assert list(table.columns[:2]) == ["point", "workload.mix.0.service_s.mean"]


@pytest.mark.slow  # ~1 min: the 5 % tail needs long runs to pin down
def test_capacity_under_a_latency_sla_matches_mm1_sojourn_tail(tmp_path):
    # FIFO M/M/1: the time in system is exponential with rate mu - lambda, so
    # P(latency > d) = exp(-(mu - lambda) d) <= 5 % holds up to lambda = mu - ln(20) / d.
    d = 1.0
    base = {**BASE, "requests": 20000, "warmup_s": 100, "policies": ["server_only"]}
    base["workload"] = {
        **BASE["workload"],
        "mix": [{**BASE["workload"]["mix"][0], "deadline_s": d}],
    }
    cap = {"max_utilization": 1.0, "max_sla_violation_rate": 0.05, "rel_tol": 0.02}
    sweep = make_sweep(tmp_path, base=base, replications=6, capacity=cap)
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "-o", str(out), "--jobs", "2", "--quiet"]) == 0
    check_capacity(out, [MU - math.log(20) / d], rel_tol=0.02, reps=6, slack=0.04)


def test_capacity_command_writes_per_policy_ci_and_gain(tmp_path, capsys):
    base = {**BASE, "requests": 1500}
    base["workload"] = {
        **BASE["workload"],
        "mix": [{**BASE["workload"]["mix"][0], "deadline_s": 1e6}],
    }
    scenario = write_yaml(tmp_path / "scenario.yaml", base)
    out = tmp_path / "cap"
    argv = ["capacity", str(scenario), "-o", str(out), "--policy", "dp", "--policy", "server_only",
            "--max-utilization", "0.5", "--rel-tol", "0.05", "--replications", "2",
            "--jobs", "2", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "capacity_rps_mean" in printed and failed_points(printed) == 0
    table, ci = capacity_rows(out)
    assert list(table.columns) == ["point", "policy", "replication", "capacity_rps", "upper_rps",
                                   "evaluations", "error"]  # fmt: skip
    assert list(table["policy"]) == ["dp", "dp", "server_only", "server_only"]
    assert list(ci["policy"]) == ["dp", "server_only"]
    for col in (
        "capacity_rps_mean",
        "capacity_rps_ci95",
        "gain_of_dp_pct_mean",
        "gain_of_dp_pct_ci95",
    ):
        assert col in ci.columns
    assert ci["capacity_rps_ci95"].notna().all()
    by = ci.set_index("policy")
    assert math.isnan(by.loc["dp", "gain_of_dp_pct_mean"])  # dp against itself: undefined
    # nothing to split in a synthetic request: dp's capacity is server_only's, gain exactly 0
    assert by.loc["server_only", "gain_of_dp_pct_mean"] == 0.0
    assert by.loc["dp", "capacity_rps_mean"] == by.loc["server_only", "capacity_rps_mean"]
    assert by.loc["dp", "capacity_rps_mean"] == pytest.approx(0.5 * MU, rel=0.1)
    # rerunning the same command recomputes nothing
    before = task_files(out)
    assert main(argv) == 0
    assert "(0 run now, 4 already done)" in summary_line(capsys.readouterr().out)
    assert task_files(out) == before
