"""Regenerate a study folder in one command: run its sweep (through the command line, so
analysis never imports the engine), then write its report.

Used by the studies' `--sweep FILE` option (`python -m analysis.fleet results/fleet
--sweep scenarios/fleet/capacity.yaml`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_sweep(sweep_file: Path, folder: Path) -> int:
    """`splitsim sweep sweep_file -o folder --fresh` in a child process; its exit status."""
    command = [sys.executable, "-m", "sim", "sweep", str(sweep_file), "-o", str(folder),
               "--fresh", "--quiet"]  # fmt: skip
    return subprocess.run(command, check=False).returncode
