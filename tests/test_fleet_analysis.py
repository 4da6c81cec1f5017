"""The fleet study's report (`analysis.fleet`) on a synthetic capacity table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from analysis import fleet

ROUTERS = {"random": 0.8, "least_outstanding": 1.0, "split_aware": 1.0}
POLICIES = {"server_only": 1.0, "dp": 1.1, "dp_queue_aware": 1.3}


def _table() -> pd.DataFrame:
    rows = []
    for r, rf in ROUTERS.items():
        for p, pf in POLICIES.items():
            for rep in range(5):
                joint = 1.2 if (r, p) == ("split_aware", "dp_queue_aware") else 1.0
                cap = (100 + 20 * rep) * rf * pf * joint  # replications differ: pairing tells
                rows.append({"point": list(ROUTERS).index(r), "routing.policy": r,
                             "policy": p, "replication": rep, "capacity_rps": cap,
                             "upper_rps": cap * 1.03, "evaluations": 7, "error": np.nan})  # fmt: skip
    return pd.DataFrame(rows)


def test_gains_are_paired_and_routing_alone_is_the_best_server_only_router():
    cap = fleet.capacities(_table())
    m, h, n = fleet.paired_gain(cap, ("split_aware", "dp_queue_aware"), ("least_outstanding",
                                                                           "server_only"))  # fmt: skip
    assert n == 5 and abs(m - 56.0) < 1e-9 and h < 1e-9
    text = fleet.summary(_table())
    assert "Against routing alone (least_outstanding with server-only" in text
    assert "split_aware + DP queue-aware: +56.0 +/- 0.0 %" in text
    assert "random + server-only: -20.0 +/- 0.0 %" in text
    assert "(wins)" in text.split("## Headline")[1]
    same = text.split("same policy")[1].split("##")[0]
    assert "- DP queue-aware: +20.0 +/- 0.0 % over least_outstanding" in same
    assert "- DP: +0.0 +/- 0.0 % (tie) over least_outstanding" in same


def test_failed_searches_are_left_out():
    table = _table()
    table["error"] = table["error"].astype(object)
    table.loc[(table["routing.policy"] == "random") & (table["policy"] == "dp"), "error"] = "boom"
    text = fleet.summary(table)
    assert "random + DP: n/a (no search succeeded)" in text


def test_the_command_writes_report_and_figure(tmp_path):
    _table().to_csv(tmp_path / "capacity.csv", index=False)
    assert fleet.main([str(tmp_path)]) == 0
    assert (tmp_path / "summary.md").read_text().startswith("# Routing and splitting together")
    assert (tmp_path / "figures" / "capacity_by_routing.png").stat().st_size > 10_000
    assert fleet.main([str(tmp_path / "missing")]) == 2


def test_one_command_runs_the_sweep_then_writes_the_report(tmp_path):
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "cap.yaml").write_text(yaml.safe_dump({
        "name": "cap", "base": str(root / "scenarios" / "examples" / "edge_cloud.yaml"),
        "replications": 2, "set": {"requests": 300, "warmup_s": 0.1},
        "grid": {"routing.policy": ["least_outstanding", "split_aware"]},
        "capacity": {"policies": ["server_only"], "rel_tol": 0.3},
    }))  # fmt: skip
    out = tmp_path / "study"
    assert fleet.main([str(out), "--sweep", str(tmp_path / "cap.yaml")]) == 0
    assert (out / "capacity.csv").is_file() and (out / "summary.md").is_file()
    (tmp_path / "bad.yaml").write_text("name: bad\n")
    assert fleet.main([str(tmp_path / "other"), "--sweep", str(tmp_path / "bad.yaml")]) == 2
