"""`splitsim sweep` and `splitsim capacity`."""

from __future__ import annotations

import argparse
from pathlib import Path

from sim.commands.table import format_table
from sim.config import read_yaml
from sim.errors import UserError
from sim.sweep.execute import default_jobs
from sim.sweep.run import SweepOutcome, run_sweep, validate_base
from sim.sweep.spec import CapacityConfig, SweepSpec, load_sweep


def add_execution_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default=None, help="sweep folder (default: runs/<name>)")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default: cores)")
    p.add_argument("--dask", default=None, metavar="ADDRESS|local",
                   help="run on a Dask cluster (scheduler address) or a LocalCluster")  # fmt: skip
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base-scenario value")  # fmt: skip
    p.add_argument("--fresh", action="store_true", help="discard results of an earlier sweep")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _jobs(args: argparse.Namespace) -> int:
    if args.jobs is not None and args.jobs < 1:
        raise UserError("--jobs: must be >= 1")
    return args.jobs or default_jobs()


def _report(outcome: SweepOutcome, out: Path, kind: str) -> int:
    print(
        f"{kind}: {outcome.points} points, {outcome.tasks} tasks ({outcome.ran} run now, "
        f"{outcome.tasks - outcome.ran} already done); {outcome.failed_points} "
        f"point{'' if outcome.failed_points == 1 else 's'} failed; "
        f"results: {out}/"
    )
    return 1 if outcome.failed_points else 0


def run_sweep_cmd(args: argparse.Namespace) -> int:
    spec, base_raw, base_dir = load_sweep(args.sweep, args.overrides)
    out = Path(args.output) if args.output else Path("runs") / spec.name
    outcome = run_sweep(spec, base_raw, base_dir, args.sweep, out, _jobs(args), args.dask,
                        args.fresh, progress=not args.quiet)  # fmt: skip
    return _report(outcome, out, "sweep")


def run_capacity_cmd(args: argparse.Namespace) -> int:
    base_path = Path(args.scenario)
    base_raw = read_yaml(base_path)
    from sim.config import apply_overrides

    base_raw = apply_overrides(base_raw, args.overrides)
    validate_base(base_raw, base_path.parent, str(base_path))
    cfg = CapacityConfig(
        policies=args.policy or None,
        max_sla_violation_rate=args.max_sla_violation_rate,
        max_utilization=args.max_utilization,
        rel_tol=args.rel_tol,
    )
    spec = SweepSpec(name=f"{base_raw.get('name', 'scenario')}-capacity", base=str(base_path),
                     replications=args.replications or base_raw.get("replications", 1),
                     capacity=cfg)  # fmt: skip
    out = Path(args.output) if args.output else Path("runs") / spec.name
    outcome = run_sweep(spec, base_raw, base_path.parent, str(base_path), out, _jobs(args),
                        args.dask, args.fresh, progress=not args.quiet)  # fmt: skip
    shown = [c for c in ("policy", "replications", "capacity_rps_mean", "capacity_rps_ci95",
                         "gain_of_dp_pct_mean", "gain_of_dp_pct_ci95") if c in outcome.ci]  # fmt: skip
    if len(outcome.ci):
        print(format_table(shown, list(outcome.ci[shown].itertuples(index=False))))
    return _report(outcome, out, "capacity")


def add_sweep_parsers(sub) -> None:
    sw = sub.add_parser("sweep", help="run a parameter sweep (resumable; local processes or Dask)")
    sw.add_argument("sweep", help="sweep YAML file")
    add_execution_args(sw)
    cap = sub.add_parser("capacity", help="highest sustainable arrival rate per policy")
    cap.add_argument("scenario", help="scenario YAML file")
    cap.add_argument("--policy", action="append", default=[], help="policy (repeatable)")
    cap.add_argument("--max-sla-violation-rate", type=float, default=0.05)
    cap.add_argument("--max-utilization", type=float, default=0.95)
    cap.add_argument("--rel-tol", type=float, default=0.02)
    cap.add_argument("--replications", type=int, default=None)
    add_execution_args(cap)
