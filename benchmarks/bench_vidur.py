"""The Vidur-equivalent token-mode workload: `splitsim run` wall time and peak memory.

`../shared/benchmarks/vidur_equiv/` holds the workload the reference simulator Vidur was
timed on (Llama-2-7B on one A100-80GB, vLLM batching with 128 requests and 4096 tokens per
iteration, conversation-trace lengths, Poisson 2 req/s, server_only) and Vidur's figures
on this machine class (10,000 requests: median 61.7 s, 0.9 GB). This script writes the
trace with the folder's `make_trace.py`, runs `splitsim run` on the folder's scenario as a
user would (a fresh process per run), and reports the median wall time, the peak RSS and
the ratio to Vidur. Targets (issue 12): 10,000 requests in at most 6 s and 500 MB; 100,000
in under 60 s and 1 GB.

    python benchmarks/bench_vidur.py [--requests 10000] [--runs 3] [--stepped]

`--stepped` also times `simulation.coalesce: false` (every iteration stepped, the
reference) and checks that both give the same tables (to 1e-9 relative).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT.parent / "shared" / "benchmarks" / "vidur_equiv"
VIDUR_MEDIAN_S = {1_000: 10.4, 10_000: 61.7}
VIDUR_RSS_GB = 0.9


def _run(work: Path, out: str, sets: list[str]) -> tuple[float, float]:
    """(wall s, peak RSS MB) of one `splitsim run` in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    cmd = [sys.executable, "-m", "sim", "run", "scenario.yaml", "-o", out, "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=work, check=True)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(peak, before) / 1024  # Linux: kB (the max over children so far)


def _same_tables(a: Path, b: Path) -> bool:
    import numpy as np
    import pandas as pd

    for name in ("requests.csv", "summary.csv", "timeseries.csv"):
        x, y = pd.read_csv(a / name), pd.read_csv(b / name)
        if list(x.columns) != list(y.columns) or len(x) != len(y):
            return False
        for col in x.columns:
            if x[col].dtype.kind in "fi":
                if not np.allclose(x[col], y[col], rtol=1e-9, atol=1e-12, equal_nan=True):
                    return False
            elif not (x[col].astype(str) == y[col].astype(str)).all():
                return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--stepped", action="store_true", help="also time coalesce: false")
    args = ap.parse_args()
    if not (FOLDER / "scenario.yaml").is_file():
        print(f"skipped: {FOLDER} is not here (it ships beside the project, not with it)")
        return 0
    work = Path(tempfile.mkdtemp(prefix="bench-vidur-"))
    try:
        shutil.copy(FOLDER / "scenario.yaml", work)
        subprocess.run([sys.executable, str(FOLDER / "make_trace.py"), "trace.csv",
                        "--requests", str(args.requests)], cwd=work, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        print(f"Vidur-equivalent workload: {args.requests:,} requests, server_only, preempt")
        modes = [("coalesced", [])] + ([("stepped", ["simulation.coalesce=false"])]
                                       if args.stepped else [])  # fmt: skip
        medians = {}
        for label, sets in modes:
            walls, rss = [], 0.0
            for i in range(args.runs):
                wall, peak = _run(work, f"out_{label}", sets)
                walls.append(wall)
                rss = max(rss, peak)
                print(f"  {label:9s} run {i + 1}: {wall:6.2f} s")
            medians[label] = statistics.median(walls)
            print(f"  {label:9s} median {medians[label]:6.2f} s  peak RSS {rss:5.0f} MB")
        vidur = VIDUR_MEDIAN_S.get(args.requests)
        if vidur:
            ratio = vidur / medians["coalesced"]
            print(f"Vidur median {vidur:.1f} s, {VIDUR_RSS_GB:.1f} GB: splitsim is {ratio:.1f}x "
                  "faster (target >= 10x)")  # fmt: skip
        if args.stepped:
            same = _same_tables(work / "out_coalesced", work / "out_stepped")
            speedup = medians["stepped"] / medians["coalesced"]
            print(f"coalesced vs stepped: {speedup:.1f}x faster; tables equal: {same}")
            return 0 if same else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.exit(main())
