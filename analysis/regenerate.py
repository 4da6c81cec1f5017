"""Regenerate a study folder in one command: run its sweep (through the command line, so
analysis never imports the engine), then write its report.

Used by the studies' `--sweep FILE` option (`python -m analysis.fleet results/fleet
--sweep scenarios/fleet/capacity.yaml`) through `study_main`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd


def run_sweep(sweep_file: Path, folder: Path) -> int:
    """`splitsim sweep sweep_file -o folder --fresh` in a child process; its exit status."""
    command = [sys.executable, "-m", "sim", "sweep", str(sweep_file), "-o", str(folder),
               "--fresh", "--quiet"]  # fmt: skip
    return subprocess.run(command, check=False).returncode


def study_main(
    argv: list[str] | None,
    name: str,
    description: str,
    report: Callable[[pd.DataFrame, Path], str | None],
) -> int:
    """A study's command: `FOLDER [--sweep FILE]`: run the sweep into FOLDER when asked,
    then `report(capacity table, folder)` (which writes the summary and figures and
    returns None, or returns why the table cannot be reported). Exit status 2 on failure."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("folder", type=Path, help="the study's sweep folder")
    parser.add_argument("--sweep", type=Path, metavar="FILE",
                        help="run this sweep file into the folder first (--fresh)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.sweep is not None and run_sweep(args.sweep, args.folder) != 0:
        print(f"analysis.{name}: the sweep {args.sweep} failed", file=sys.stderr)
        return 2
    path = args.folder / "capacity.csv"
    if not path.is_file():
        print(f"analysis.{name}: {path}: not found; run the sweep first", file=sys.stderr)
        return 2
    problem = report(pd.read_csv(path), args.folder)
    if problem:
        print(f"analysis.{name}: {path}: {problem}", file=sys.stderr)
        return 2
    return 0
