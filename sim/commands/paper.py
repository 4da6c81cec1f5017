"""`splitsim paper`: regenerate the SplitLLM reproduction (data, figures, claims.md)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from sim.commands.sweep import add_jobs_args, checked_jobs
from sim.errors import UserError


def add_paper_parser(sub) -> None:
    p = sub.add_parser("paper", help="reproduce the SplitLLM paper's experiments into a folder")
    p.add_argument("-o", "--output", default="results/paper", help="default: results/paper")
    add_jobs_args(p)
    p.add_argument("--quick", action="store_true", help="a small smoke version (seconds)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run_paper(args: argparse.Namespace) -> int:
    os.environ.setdefault("MPLBACKEND", "Agg")
    from analysis.claims import write_claims
    from analysis.io import AnalysisError
    from analysis.plot import plot_folder
    from sim.config import read_yaml
    from sim.paper.reproduce import PAPER_DIR, PaperPlan, reproduce

    jobs = checked_jobs(args.jobs, args.oversubscribe)
    started = time.perf_counter()
    out = Path(args.output)
    plan = PaperPlan.quick() if args.quick else PaperPlan.full()
    folders = reproduce(out, plan, jobs, progress=not args.quiet)
    for name, folder in folders.items():
        try:
            report = plot_folder(folder)
        except AnalysisError as err:
            raise UserError(str(err)) from None
        print(f"{name}: {len(report.written)} figures in {report.out_dir}/")
    factor = float(read_yaml(PAPER_DIR / "studies.yaml").get("deadline_factor", 3))
    claims = write_claims(out, factor)
    print(f"claims: {claims} ({time.perf_counter() - started:.0f} s)")
    return 0
