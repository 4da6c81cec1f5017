"""Trace replays for studies: each replication its own window (`stride_s`), and the
capacity search stretching a trace's times to each rate it tries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from sim.cli import main
from sim.config import load_scenario
from sim.errors import UserError
from sim.runner import _replication_arrivals
from sim.sweep.capacity import _arrival_at, trace_rate_per_s
from sim.sweep.tasks import scenario_for


def _trace(tmp_path, n: int = 1200, gap_s: float = 0.5) -> None:
    rng = np.random.default_rng(3)
    t = np.cumsum(rng.exponential(gap_s, n))
    pd.DataFrame({"arrived_at": t, "num_prefill_tokens": rng.integers(16, 400, n),
                  "num_decode_tokens": 0}).to_csv(tmp_path / "trace.csv", index=False)  # fmt: skip


def _scenario(tmp_path, **arrival) -> dict:
    _trace(tmp_path)
    raw = {
        "name": "windows", "seed": 2, "requests": 150, "replications": 3,
        "policies": ["server_only", "dp"], "server": {"device": "a100-80gb"},
        "clients": [{"name": "laptops", "count": 5, "device": "laptop-m2"}],
        "workload": {"arrival": {"kind": "trace", "path": "trace.csv", **arrival},
                     "mix": [{"name": "score", "model": "gpt2-large", "deadline_factor": 2}]},
    }  # fmt: skip
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    return raw


def test_each_replication_replays_its_own_window(tmp_path):
    _scenario(tmp_path, start_s=5.0, stride_s=40.0)
    ld = load_scenario(tmp_path / "s.yaml")
    rows = pd.read_csv(tmp_path / "trace.csv")
    for rep in range(3):
        arr, _ = _replication_arrivals(ld, rep, float("nan"))
        start = 5.0 + 40.0 * rep
        window = rows[rows.arrived_at >= start].head(150)
        assert np.allclose(arr.time_s, window.arrived_at - start)
        assert (arr.prompt_tokens == window.num_prefill_tokens).all()


def test_a_window_past_the_trace_is_one_line(tmp_path):
    _scenario(tmp_path, stride_s=1e6)
    with pytest.raises(UserError) as err:
        load_scenario(tmp_path / "s.yaml")
    text = str(err.value)
    assert "\n" not in text and "replication 2 from start_s + 2 x stride_s" in text


def test_capacity_search_stretches_the_trace_to_each_rate(tmp_path):
    raw = _scenario(tmp_path, stride_s=20.0)
    task = {"base": raw, "params": {}, "seed": 2, "replications": 3,
            "base_dir": str(tmp_path), "source": "s.yaml"}  # fmt: skip
    ld = scenario_for(task)
    rows = pd.read_csv(tmp_path / "trace.csv").arrived_at.to_numpy()
    native = (rows.size - 1) / (rows[-1] - rows[0])
    assert trace_rate_per_s(ld, task) == pytest.approx(native)
    arrival = _arrival_at(task, 4 * native)
    assert arrival["kind"] == "trace" and arrival["stride_s"] == 20.0
    assert arrival["time_scale"] == pytest.approx(0.25)


def test_a_trace_capacity_sweep_runs(tmp_path, capsys):
    _scenario(tmp_path, stride_s=20.0)
    (tmp_path / "cap.yaml").write_text(yaml.safe_dump({
        "name": "cap", "base": "s.yaml", "replications": 3,
        "capacity": {"policies": ["server_only"], "rel_tol": 0.1},
    }))  # fmt: skip
    assert main(["sweep", str(tmp_path / "cap.yaml"), "-o", str(tmp_path / "out")]) == 0
    table = pd.read_csv(tmp_path / "out" / "capacity.csv")
    assert table["error"].isna().all()
    assert (table["capacity_rps"] > 0).all() and (table["upper_rps"] > table["capacity_rps"]).all()


def test_a_utilisation_target_of_one_is_off():
    """A batching server iterates all the time under load: with max_utilization 1 only
    the SLA misses decide the capacity."""
    from sim.sweep.capacity import meets

    busy = {"sla_violation_rate": 0.01, "server_utilization": 1.0}
    assert meets(busy, {"max_sla_violation_rate": 0.05, "max_utilization": 1.0})
    assert not meets(busy, {"max_sla_violation_rate": 0.05, "max_utilization": 0.95})
    missing = {"sla_violation_rate": 0.2, "server_utilization": 0.5}
    assert not meets(missing, {"max_sla_violation_rate": 0.05, "max_utilization": 1.0})


def test_sweep_workers_collect_each_tasks_garbage(monkeypatch):
    """`run_task` collects the cyclic garbage its runs left (a long sweep's workers grew
    to gigabytes without it)."""
    import gc

    from sim.sweep import tasks

    class Cycle:
        def __init__(self):
            self.me = self

    def leaves_cycles(task):
        for _ in range(1000):
            Cycle()
        return {"rows": []}

    monkeypatch.setattr(tasks, "_run_task", leaves_cycles)
    gc.collect()
    gc.disable()  # only the explicit collection may free them
    try:
        tasks.run_task({})
        assert not any(type(o) is Cycle for o in gc.get_objects())
    finally:
        gc.enable()


@pytest.mark.parametrize("scale", [0.25, 1.0, 2.5])
def test_prompt_scale_multiplies_the_replayed_prompts(tmp_path, scale):
    _scenario(tmp_path, prompt_scale=scale)
    ld = load_scenario(tmp_path / "s.yaml")
    arr, _ = _replication_arrivals(ld, 0, float("nan"))
    rows = pd.read_csv(tmp_path / "trace.csv").head(150)
    expect = np.maximum(np.rint(rows.num_prefill_tokens * scale), 1)
    assert (arr.prompt_tokens == expect).all()
    assert np.allclose(arr.time_s, rows.arrived_at)  # the arrival times are kept


def test_a_tiny_prompt_scale_keeps_one_token(tmp_path):
    _scenario(tmp_path, prompt_scale=1e-6)
    arr, _ = _replication_arrivals(load_scenario(tmp_path / "s.yaml"), 0, float("nan"))
    assert (arr.prompt_tokens == 1).all()


def test_prompt_scale_past_the_context_is_one_line(tmp_path, capsys):
    _scenario(tmp_path, prompt_scale=50)  # prompts up to 400 x 50 > gpt2-large's 1024
    assert main(["check", str(tmp_path / "s.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "workload.arrival.prompt_scale" in err and "context" in err


def test_prompt_scale_needs_a_trace(tmp_path, capsys):
    raw = _scenario(tmp_path)
    raw["workload"]["arrival"] = {"kind": "poisson", "rate_per_s": 2, "prompt_scale": 0.5}
    raw["workload"]["mix"][0]["prompt_tokens"] = 64
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    assert main(["check", str(tmp_path / "s.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "prompt_scale" in err and "trace" in err
