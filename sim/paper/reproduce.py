"""The SplitLLM reproduction: static studies, one run, a load sweep and a capacity search.

Everything lands in one folder (default `results/paper/`), marked as a reproduction by
`paper.json` (package `splitsim`, kind `paper`) so a rerun may replace its parts:
- `allocation.csv`, `unit_costs.csv`: static studies (no queueing), from `studies.yaml`;
- `run/`: one run of the queueing setting (`setting.yaml`), for latency CDFs and timelines;
- `queueing/`: the load sweep (offered load 0.2-1.6 of the server-only capacity);
- `capacity/`: the highest sustainable arrival rate per policy.
Figures and `claims.md` are made from these files by `analysis` (see `sim.commands.paper`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import sim
from sim.atomic import atomic_write_text, remove_stale_temporaries
from sim.config import load_scenario, read_yaml
from sim.errors import UserError
from sim.output import PACKAGE, check_parents, os_error_line
from sim.paper.studies import allocation_table, load_study_spec, unit_cost_table
from sim.runner import run_scenario
from sim.sweep.run import run_sweep
from sim.sweep.spec import CapacityConfig, SweepSpec

PAPER_DIR = Path(__file__).resolve().parents[2] / "scenarios" / "paper"
PAPER_MARKER = "paper.json"
KIND_PAPER = "paper"
LOADS = [0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6]


@dataclass(frozen=True)
class PaperPlan:
    """How much to run: the full reproduction or a quick smoke version."""

    run_duration_s: float
    sweep_duration_s: float
    replications: int  # of the load sweep
    loads: tuple[float, ...]
    rel_tol: float
    capacity_replications: int  # capacities differ by a few per cent: paired, they need more

    @classmethod
    def full(cls) -> PaperPlan:
        return cls(5.0, 10.0, 5, tuple(LOADS), 0.02, 10)

    @classmethod
    def quick(cls) -> PaperPlan:
        return cls(1.0, 2.0, 2, (0.4, 1.2), 0.1, 2)


def is_paper_folder(out: Path) -> bool:
    """Whether `out` holds an earlier reproduction: its paper.json says package `splitsim`,
    kind `paper` (claims.md or allocation.csv alone prove nothing: any folder may have them)."""
    try:
        marker = json.loads((out / PAPER_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("package") == PACKAGE
        and marker.get("kind") == KIND_PAPER
    )


def claim_out(out: Path) -> None:
    """Take `out` for a reproduction before any work: it must be new, empty or an earlier
    reproduction. Writing its paper.json marker is also the writability probe."""
    try:
        check_parents(out)
        if out.exists() and not out.is_dir():
            raise UserError(f"{out}: exists and is not a folder; choose another -o")
        if out.is_dir() and any(out.iterdir()) and not is_paper_folder(out):
            raise UserError(
                f"{out}: folder exists and is not a paper reproduction (no {PAPER_MARKER} of "
                "kind paper); choose another -o"
            )
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)  # files a killed reproduction was writing
        marker = {"package": PACKAGE, "kind": KIND_PAPER, "version": sim.__version__}
        atomic_write_text(out / PAPER_MARKER, json.dumps(marker, indent=2) + "\n")
    except OSError as err:
        raise os_error_line(out, err) from None


def _display_path(path: Path) -> Path:
    """The path relative to the working folder when it lies below it (for manifests)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def static_studies(out: Path, scenario_dir: Path = PAPER_DIR) -> None:
    """allocation.csv and unit_costs.csv from the study definitions."""
    spec = load_study_spec(scenario_dir / "studies.yaml")
    atomic_write_text(out / "allocation.csv", allocation_table(spec).to_csv(index=False))
    atomic_write_text(out / "unit_costs.csv", unit_cost_table(spec).to_csv(index=False))


def reproduce(
    out: Path, plan: PaperPlan, jobs: int, scenario_dir: Path = PAPER_DIR, progress: bool = True
) -> dict[str, Path]:
    """Run every part of the reproduction into `out`; returns the folders written."""
    claim_out(out)
    static_studies(out, scenario_dir)
    setting = _display_path(scenario_dir / "setting.yaml")
    duration = f"duration_s={plan.run_duration_s}"
    run_dir = out / "run"
    ld = load_scenario(setting, [duration, "replications=1", "warmup_s=0.5"])
    run_scenario(ld, run_dir, command=["splitsim", "paper"])
    base = read_yaml(setting)
    sweep_set = {"duration_s": plan.sweep_duration_s, "warmup_s": 1.0}
    common = {"base": str(setting), "replications": plan.replications, "set": sweep_set}
    load_spec = SweepSpec(
        name="paper-queueing", grid={"workload.arrival.load": list(plan.loads)}, **common
    )
    cap = CapacityConfig(max_sla_violation_rate=0.05, max_utilization=0.95, rel_tol=plan.rel_tol)
    cap_common = {**common, "replications": plan.capacity_replications}
    cap_spec = SweepSpec(name="paper-capacity", capacity=cap, **cap_common)
    for spec, sub in ((load_spec, "queueing"), (cap_spec, "capacity")):
        raw = dict(base)
        for key, value in sweep_set.items():
            raw[key] = value
        run_sweep(spec, raw, setting.parent, str(setting), out / sub, jobs, None, fresh=True,
                  progress=progress)  # fmt: skip
    return {
        "static": out,
        "run": run_dir,
        "queueing": out / "queueing",
        "capacity": out / "capacity",
    }
