"""The batching study's report (`analysis.batching`) on a synthetic capacity table: paired
gains with their intervals, verdicts, headline, figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import batching


def _table() -> pd.DataFrame:
    rows = []
    rng = np.random.default_rng(1)
    for point, (path, kv) in enumerate((("data/splitwise_conv.csv", None),
                                         ("data/splitwise_code.csv", 2.0))):  # fmt: skip
        for rep in range(5):
            base = 10.0 + rep  # replications differ a lot: only the pairing tells gains
            for policy, factor in (("server_only", 1.0), ("dp_batched_phases", 1.2 if point else 0.7),
                                   ("dp", 1.0 + rng.normal(0, 0.02))):  # fmt: skip
                rows.append({
                    "point": point, "workload.arrival.path": path,
                    "clients.0.link": "{'uplink_mbps': 50, 'downlink_mbps': 200, 'rtt_ms': 20}",
                    "simulation.kv_memory_gb": kv, "clients.0.count": 800,
                    "clients.1.count": 200, "policy": policy, "replication": rep,
                    "capacity_rps": base * factor, "upper_rps": base * factor * 1.05,
                    "evaluations": 6, "error": np.nan,
                })  # fmt: skip
    return pd.DataFrame(rows)


def test_gains_are_paired_by_replication():
    g = batching.gains(_table()).set_index(["point", "policy"])
    assert g.loc[(0, "dp_batched_phases"), "gain_pct"] == pytest.approx(-30.0)
    assert g.loc[(0, "dp_batched_phases"), "gain_ci95"] == pytest.approx(0.0, abs=1e-9)
    assert g.loc[(1, "dp_batched_phases"), "gain_pct"] == pytest.approx(20.0)
    # unpaired, the capacities' own spread (10-14 req/s) would hide a 2 % effect
    assert g.loc[(0, "dp"), "gain_ci95"] < 5


def test_summary_states_wins_losses_and_ties():
    text = batching.summary(_table(), None)
    assert "beats server-only at 1 of 2 points, loses at 1" in text
    assert "80% laptops" in text and "KV 2 GB" in text and "KV full" in text
    headline = text.split("## Headline")[1]
    assert "raises capacity over server-only at 1 of 2 points" in headline
    assert "code trace" in headline and "+20.0 +/- 0.0 %." in headline
    assert "Every split policy loses at 0 of 2 points" in headline  # dp ties at point 0


def test_factors_the_sweep_does_not_vary_read_as_the_base():
    table = _table().drop(columns=["clients.0.link", "simulation.kv_memory_gb"])
    pts = batching.points(table)
    assert set(pts["link"]) == {"base"} and set(pts["kv"]) == {"full"}
    assert "base" in batching.summary(table, None)


def test_the_command_writes_the_report_and_figure(tmp_path):
    _table().to_csv(tmp_path / "capacity.csv", index=False)
    assert batching.main([str(tmp_path)]) == 0
    assert (tmp_path / "summary.md").read_text().startswith("# Where splitting pays")
    assert (tmp_path / "figures" / "capacity_gain.png").stat().st_size > 10_000
    assert batching.main([str(tmp_path / "missing")]) == 2


def test_prompt_scale_is_a_factor_and_wins_are_listed():
    table = _table()
    table["workload.arrival.prompt_scale"] = np.where(table["point"] == 1, 0.25, 1.0)
    pts = batching.points(table).set_index("point")
    assert pts.loc[0, "prompts"] == "as recorded" and pts.loc[1, "prompts"] == "x0.25"
    text = batching.summary(table, None)
    wins = text.split("## Where splitting beats server-only")[1].split("##")[0]
    assert "code trace, prompts x0.25" in wins and "+20 +/- 0 %" in wins
    assert "conv trace" not in wins  # point 0 loses


def test_no_wins_says_so():
    table = _table()
    table.loc[table["policy"] == "dp_batched_phases", "capacity_rps"] *= 0.5
    text = batching.summary(table, None)
    assert "Nowhere: no policy's gain interval lies above zero" in text
    assert "No policy raises capacity over server-only at any of the 2 points" in text
