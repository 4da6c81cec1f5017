"""The paper reproduction: static studies, the claims table, and the command end to end."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.claims import claims_markdown, headline_table, reductions
from sim.cli import main
from sim.paper.studies import StudySpec, allocation_table, mean_ratio, unit_cost_table
from sim.records import ALLOCATION_COLUMNS, UNIT_COST_COLUMNS

TINY = {
    "server": "a100-80gb",
    "clients": ["jetson-orin-nano"],
    "models": ["bert-base", "vit-b16"],
    "policies": ["server_only", "greedy", "greedy_ratio", "best_cut", "dp"],
    "link": {"uplink_mbps": 500, "downlink_mbps": 1000, "rtt_ms": 5},
    "tokens": 128,
    "deadline_factor": 3,
    "sla_factors": [1.5, 3, 10],
    "token_values": [64, 256],
    "speed_clients": ["rpi4", "rtx-4090"],
    "uplink_values_mbps": [10, 1000],
    "unit_cost_model": "gpt2",
    "unit_cost_tokens": [64, 128],
}


def test_allocation_table_covers_every_study_model_and_policy():
    table = allocation_table(StudySpec.model_validate(TINY))
    assert list(table.columns) == list(ALLOCATION_COLUMNS)
    assert set(table["study"]) == {"sla", "tokens", "client_speed", "bandwidth"}
    # ViT always sees 197 tokens, so it has no sequence-length study
    assert set(table.loc[table["study"] == "tokens", "model"]) == {"bert-base"}
    per_point = table.groupby(["study", "model", "x", "client_device"])["policy"].nunique()
    assert (per_point == len(TINY["policies"])).all()
    assert (table["placement"].str.len() == table["n_units"]).all()
    assert (table["client_units"] == table["placement"].str.count("C")).all()
    # dp never does worse than any other feasible policy at the same point
    key = ["study", "model", "x", "client_device"]
    for _, g in table[table["feasible"]].groupby(key):
        dp = g[g["policy"] == "dp"]
        if len(dp):
            assert dp["server_work"].iloc[0] <= g["server_work"].min() + 1e-12
    assert 0 <= mean_ratio(table, "dp") <= mean_ratio(table, "server_only")
    assert mean_ratio(table, "server_only") == pytest.approx(1.0)


def test_unit_cost_table_shows_quadratic_attention():
    table = unit_cost_table(StudySpec.model_validate(TINY))
    assert list(table.columns) == list(UNIT_COST_COLUMNS)
    block = table[table["unit"] == "block0"].set_index("tokens")["flops"]
    # doubling the tokens more than doubles a block's FLOPs (the n^2 term)
    assert block[128] > 2 * block[64]


def _rows(policy: str, work: float, only: float = 10.0, model: str = "m", x: float = 3.0):
    return {"study": "sla", "model": model, "policy": policy, "x": x,
            "server_work": work, "server_only_work": only}  # fmt: skip


def test_reductions_use_summed_work_over_the_mix():
    frame = pd.DataFrame(
        [_rows("server_only", 10), _rows("dp", 6), _rows("greedy", 8), _rows("greedy_ratio", 7),
         _rows("best_cut", 6), _rows("server_only", 10, model="n"), _rows("dp", 4, model="n"),
         _rows("greedy", 10, model="n"), _rows("greedy_ratio", 5, model="n"),
         _rows("best_cut", 4, model="n")]
    )  # fmt: skip
    r = reductions(frame)
    assert r["dp_vs_server_only"] == pytest.approx(1 - 10 / 20)
    assert r["dp_over_greedy"] == pytest.approx(1 - 10 / 18)
    head = headline_table(frame, 3.0)
    assert list(head["model"]) == ["m", "n", "all (mix)", "all (models weighted equally)"]
    assert head.loc[0, "dp_vs_server_only"] == pytest.approx(0.4)
    # equal weights: the mean of m's 40 % and n's 60 %; over greedy the mean of 25 % and 60 %
    assert head.loc[3, "dp_vs_server_only"] == pytest.approx(0.5)
    assert head.loc[3, "dp_over_greedy"] == pytest.approx((0.25 + 0.6) / 2)
    text = claims_markdown(frame, 3.0)
    assert "roughly 1/3 | 50.0 % | 50.0 %" in text
    assert "(its greedy is not published) | 44.4 % | 42.5 %" in text
    assert "m 50 %, n 50 %" in text  # each model's share of the mix's server-only work


@pytest.mark.slow
def test_paper_quick_writes_figures_and_claims(tmp_path):
    out = tmp_path / "paper"
    assert main(["paper", "-o", str(out), "--quick", "--quiet", "--jobs", "1"]) == 0
    assert (out / "claims.md").read_text().startswith("# SplitLLM")
    assert any((out / "figures").glob("*.png"))
    assert (out / "capacity" / "capacity_ci.csv").is_file()


def test_claims_read_a_real_load_sweep(tmp_path):
    """The queueing part of claims.md from a small real sweep (synthetic server, 2 loads)."""
    from sim.sweep.run import run_sweep
    from sim.sweep.spec import SweepSpec

    base = {
        "seed": 3, "duration_s": 30, "warmup_s": 2, "policies": ["server_only", "dp"],
        "clients": [{"name": "c", "link": {"rtt_ms": 0}}],
        "workload": {"arrival": {"kind": "poisson", "load": 0.5}, "mix": [
            {"name": "job", "task": "synthetic", "deadline_s": 1.0,
             "service_s": {"kind": "exponential", "mean": 0.1}}]},
    }  # fmt: skip
    spec = SweepSpec(base=base, replications=2, grid={"workload.arrival.load": [0.3, 0.8]})
    out = run_sweep(spec, base, tmp_path, "inline", tmp_path / "q", jobs=1, progress=False)
    alloc = pd.DataFrame([_rows("server_only", 10), _rows("dp", 5), _rows("greedy", 8),
                          _rows("greedy_ratio", 6), _rows("best_cut", 5)])  # fmt: skip
    text = claims_markdown(alloc, 3.0, queueing_ci=out.ci, queueing_runs=out.table)
    rows = [line for line in text.splitlines() if line.startswith("| 0.")]
    assert [r.split("|")[1].strip() for r in rows] == ["0.3", "0.8"]
    # a synthetic request cannot be split: dp waits exactly as long as server_only, in
    # every replication, so the paired change is 0 with a zero-width interval
    assert all(r.split("|")[4].strip() == "0 ± 0 %" for r in rows)
    assert "removes 0 ± 0 % of the server's work" in text


def test_capacity_lines_mark_a_gain_whose_interval_crosses_zero():
    """A paired gain whose interval holds zero is called a tie; one that excludes it is not."""
    from analysis.claims import capacity_lines

    ci = pd.DataFrame(
        [
            {"policy": "server_only", "replications": 10, "capacity_rps_mean": 500.0,
             "capacity_rps_ci95": 7.0, "gain_of_dp_pct_mean": 78.6, "gain_of_dp_pct_ci95": 4.8},
            {"policy": "best_cut", "replications": 10, "capacity_rps_mean": 900.0,
             "capacity_rps_ci95": 25.0, "gain_of_dp_pct_mean": 2.9, "gain_of_dp_pct_ci95": 3.3},
            {"policy": "dp", "replications": 10, "capacity_rps_mean": 928.0,
             "capacity_rps_ci95": 25.0, "gain_of_dp_pct_mean": float("nan"),
             "gain_of_dp_pct_ci95": float("nan")},
        ]
    )  # fmt: skip
    lines = capacity_lines(ci)
    assert "10 replications" in lines[0]
    so, bc = (
        next(x for x in lines if x.startswith(f"| {p} ")) for p in ("server_only", "best_cut")
    )
    assert "crosses zero" in bc and "+2.9 % ± 3.3" in bc
    assert "crosses zero" not in so and "+78.6 % ± 4.8" in so
