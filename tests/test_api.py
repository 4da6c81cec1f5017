"""The Python API (`sim.run`, `sim.run_sweep`, `sim.capacity`, `sim.solve`, `sim.figure`): the
README's example runs as written, and bad input is the command line's one-line error."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

import sim

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs(tmp_path, monkeypatch, capsys):
    (tmp_path / "scenarios" / "examples").mkdir(parents=True)
    shutil.copy(ROOT / "scenarios/examples/quickstart.yaml", tmp_path / "scenarios/examples")
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_example(), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "throughput_rps" in out and "capacity_rps_mean" in out
    assert "requests: must be an integer >= 1" in out  # the one-line error, printed
    import matplotlib.image

    height, width = matplotlib.image.imread(tmp_path / "capacity.png").shape[:2]
    assert width > 300 and height > 100  # a drawn figure (3.4 in at 100 dpi), not an empty file


def test_run_returns_the_folder_tables(tmp_path):
    res = sim.run(ROOT / "scenarios/examples/quickstart.yaml", output=tmp_path / "out",
                  requests=200, policies=["server_only", "dp"])  # fmt: skip
    on_disk = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert list(res.summary["policy"]) == list(on_disk["policy"]) == ["server_only", "dp"]
    assert res.summary["throughput_rps"].tolist() == pytest.approx(on_disk["throughput_rps"])
    assert len(res.requests) == 400 and res.effective["requests"] == 200


def test_a_scenario_mapping_and_a_sweep_mapping(tmp_path):
    raw = sim.load(ROOT / "scenarios/examples/quickstart.yaml").scenario.model_dump()
    res = sim.run({**raw, "requests": 100, "policies": ["server_only"]})
    assert len(res.requests) == 100
    spec = {"name": "s", "base": str(ROOT / "scenarios/examples/quickstart.yaml"),
            "set": {"requests": 100}, "grid": {"workload.arrival.rate_per_s": [10, 20]}}  # fmt: skip
    tables = sim.run_sweep(spec, output=tmp_path / "sw")
    assert set(tables.tables) == {"sweep", "sweep_ci"} and len(tables["sweep_ci"]) == 2 * 3


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (lambda: sim.run(ROOT / "scenarios/examples/quickstart.yaml", set={"seed": -1}), "seed"),
        (lambda: sim.run(ROOT / "nope.yaml"), "file not found"),
        (
            lambda: sim.solve(
                "gpt9", "laptop-m2", "a100-80gb", 8, uplink_mbps=1, downlink_mbps=1, deadline_s=1
            ),
            "gpt9",
        ),
        (
            lambda: sim.capacity(ROOT / "scenarios/examples/quickstart.yaml", policies=["nope"]),
            "nope",
        ),
        (lambda: sim.figure("capacity"), "needs the table(s) capacity_ci"),
    ],
)
def test_bad_input_is_the_one_line_error(call, says):
    with pytest.raises(sim.UserError) as err:
        call()
    assert "\n" not in str(err.value) and says in str(err.value)
