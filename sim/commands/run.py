"""`splitsim run` and `splitsim check`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from sim.commands.progress import RunProgress
from sim.commands.table import format_table
from sim.config import effective_dict, load_scenario
from sim.output import default_output

SHOWN = (
    "policy", "replication", "completed", "throughput_rps", "server_utilization",
    "server_work_per_request", "offload_fraction", "sla_violation_rate", "latency_p50_s",
    "latency_p95_s", "wait_mean_s",
)  # fmt: skip


def run_check(args: argparse.Namespace) -> int:
    ld = load_scenario(args.scenario, args.overrides)
    print(yaml.safe_dump(effective_dict(ld), sort_keys=False), end="")
    print(f"# {args.scenario}: valid", file=sys.stderr)
    return 0


def run_run(args: argparse.Namespace) -> int:
    from sim.runner import run_scenario

    ld = load_scenario(args.scenario, args.overrides)
    out = Path(args.output) if args.output else default_output(ld.scenario.name, ld.source)
    progress = None if args.quiet else RunProgress(ld)
    try:
        result = run_scenario(ld, out, command=["splitsim", *sys.argv[1:]], progress=progress)
    finally:
        if progress:
            progress.close()
    if not args.quiet:
        rows = result.summary[list(SHOWN)].itertuples(index=False)
        print(format_table(SHOWN, list(rows)))
        print(f"results: {out}/ ({result.manifest['wall_time_s']:.1f} s)")
    return 0
