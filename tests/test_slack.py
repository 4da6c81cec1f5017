"""`split.slack_fraction`: plans leave headroom below the SLA for queueing and the link."""

from __future__ import annotations

from pathlib import Path

from sim.config import load_scenario
from sim.runner import simulate

QUICKSTART = Path(__file__).resolve().parents[1] / "scenarios" / "examples" / "quickstart.yaml"


def _summary(slack: float):
    ld = load_scenario(
        QUICKSTART, ["requests=400", "warmup_s=0", "policies=[dp]", f"split.slack_fraction={slack}"]
    )
    result = simulate(ld)
    return result.summary.iloc[0], result.requests


def test_slack_trades_server_work_for_fewer_sla_misses():
    tight, tight_req = _summary(0.0)
    loose, loose_req = _summary(0.4)
    # the recorded SLA is the same; the plans aim at 60 % of it
    assert (tight_req["deadline_s"] == loose_req["deadline_s"]).all()
    assert (loose_req["planned_latency_s"] <= 0.6 * loose_req["deadline_s"] * (1 + 1e-9)).all()
    assert loose["server_work_per_request"] >= tight["server_work_per_request"]
    assert loose["sla_violation_rate"] < tight["sla_violation_rate"]
