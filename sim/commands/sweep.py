"""`splitsim sweep` and `splitsim capacity`."""

from __future__ import annotations

import argparse
from pathlib import Path

from sim import limits as lim
from sim.commands.table import format_table
from sim.config import read_yaml
from sim.errors import UserError, unknown_name
from sim.output import default_output
from sim.sweep.execute import (
    DEFAULT_DASK_TIMEOUT_S,
    check_dask_args,
    default_jobs,
)
from sim.sweep.run import (
    SweepOutcome,
    check_some_point_valid,
    check_sweep_size,
    run_sweep,
    validate_base,
)
from sim.sweep.spec import CapacityConfig, SweepSpec, load_sweep

# `--oversubscribe` allows up to this many worker processes per core.
OVERSUBSCRIBE_FACTOR = 32


def add_execution_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default=None, help="sweep folder (default: runs/<name>)")
    add_jobs_args(p)
    p.add_argument("--dask", default=None, metavar="ADDRESS|local",
                   help="run on a Dask cluster (scheduler address) or a LocalCluster")  # fmt: skip
    p.add_argument("--dask-timeout-s", type=lim.DASK_TIMEOUT_S.arg("--dask-timeout-s"),
                   default=DEFAULT_DASK_TIMEOUT_S,
                   help=f"seconds to wait for the Dask scheduler (default "
                        f"{DEFAULT_DASK_TIMEOUT_S:g}, at most {lim.DASK_TIMEOUT_S.hi:g})")  # fmt: skip
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base-scenario value")  # fmt: skip
    p.add_argument("--fresh", action="store_true", help="discard results of an earlier sweep")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_jobs_args(p: argparse.ArgumentParser) -> None:
    """`--jobs` and `--oversubscribe`, shared by sweep, capacity and paper."""
    p.add_argument("--jobs", type=lim.JOBS.arg("--jobs"), default=None,
                   help="worker processes (default: cores)")  # fmt: skip
    p.add_argument("--oversubscribe", action="store_true",
                   help=f"allow --jobs above the cores (up to {OVERSUBSCRIBE_FACTOR} x cores)")  # fmt: skip


def checked_jobs(jobs: int | None, oversubscribe: bool = False) -> int:
    """Worker processes to start: `jobs` (default the cores), bounded so a typo such as
    `--jobs 100000` cannot fork the machine to a halt.

    At most the cores; with `oversubscribe`, at most OVERSUBSCRIBE_FACTOR x the cores.
    """
    cores = default_jobs()
    if jobs is None:
        return cores
    cap = OVERSUBSCRIBE_FACTOR * cores
    if jobs < 1:
        raise UserError(f"--jobs: must be >= 1 (at most {cores}, this machine's cores)")
    if jobs > cap:
        raise UserError(
            f"--jobs: {jobs} is too many; at most {cores} (this machine's cores), "
            f"or {cap} with --oversubscribe"
        )
    if jobs > cores and not oversubscribe:
        raise UserError(
            f"--jobs: at most {cores} (this machine's cores); "
            f"add --oversubscribe to use up to {cap}"
        )
    return jobs


def _jobs(args: argparse.Namespace) -> int:
    return checked_jobs(args.jobs, getattr(args, "oversubscribe", False))


def _report(outcome: SweepOutcome, out: Path, kind: str) -> int:
    print(
        f"{kind}: {outcome.points} points, {outcome.tasks} tasks ({outcome.ran} run now, "
        f"{outcome.tasks - outcome.ran} already done); {outcome.failed_points} "
        f"point{'' if outcome.failed_points == 1 else 's'} failed; "
        f"results: {out}/"
    )
    return 1 if outcome.failed_points else 0


def check_policy_names(names: list[str], where: str) -> None:
    """Unknown policy names fail in one line (with the known ones), before any folder."""
    from sim.split import POLICIES

    for name in names:
        if name not in POLICIES:
            raise unknown_name("policy", name, POLICIES.names(), where)


def run_sweep_cmd(args: argparse.Namespace) -> int:
    jobs = _jobs(args)
    check_dask_args(args.dask, args.dask_timeout_s)
    spec, base_raw, base_dir = load_sweep(args.sweep, args.overrides)
    check_sweep_size(spec, base_raw, args.sweep)  # before expanding anything
    check_some_point_valid(spec, base_raw, base_dir, args.sweep)  # before any folder
    if spec.capacity is not None:
        check_policy_names(spec.capacity.policies or [], f"{args.sweep}: capacity.policies")
    out = Path(args.output) if args.output else default_output(spec.name, args.sweep)
    outcome = run_sweep(spec, base_raw, base_dir, args.sweep, out, jobs, args.dask,
                        args.fresh, progress=not args.quiet,
                        dask_timeout_s=args.dask_timeout_s)  # fmt: skip
    return _report(outcome, out, "sweep")


def run_capacity_cmd(args: argparse.Namespace) -> int:
    jobs = _jobs(args)
    check_dask_args(args.dask, args.dask_timeout_s)
    base_path = Path(args.scenario)
    base_raw = read_yaml(base_path)
    from sim.config import apply_overrides

    base_raw = apply_overrides(base_raw, args.overrides)
    validate_base(base_raw, base_path.parent, str(base_path))
    check_policy_names(args.policy, "--policy")
    cfg = CapacityConfig(
        policies=args.policy or None,
        max_sla_violation_rate=args.max_sla_violation_rate,
        max_utilization=args.max_utilization,
        rel_tol=args.rel_tol,
    )
    spec = SweepSpec(name=f"{base_raw.get('name', 'scenario')}-capacity", base=str(base_path),
                     replications=args.replications or base_raw.get("replications", 1),
                     capacity=cfg)  # fmt: skip
    out = Path(args.output) if args.output else default_output(spec.name, str(base_path))
    outcome = run_sweep(spec, base_raw, base_path.parent, str(base_path), out, jobs,
                        args.dask, args.fresh, progress=not args.quiet,
                        dask_timeout_s=args.dask_timeout_s)  # fmt: skip
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
    cap.add_argument(
        "--max-sla-violation-rate",
        type=lim.FRACTION.arg("--max-sla-violation-rate"),
        default=0.05,
        help="target: SLA misses at most this share (default 0.05)",
    )
    cap.add_argument(
        "--max-utilization",
        type=lim.FRACTION_OPEN.arg("--max-utilization"),
        default=0.95,
        help="target: server utilisation below this (default 0.95)",
    )
    cap.add_argument(
        "--rel-tol",
        type=lim.REL_TOL.arg("--rel-tol"),
        default=0.02,
        help="stop when (hi - lo) / lo <= this (default 0.02)",
    )
    cap.add_argument("--replications", type=lim.REPLICATIONS.arg("--replications"),
                     default=None, help="default: the scenario's replications")  # fmt: skip
    add_execution_args(cap)
