"""Byte-identity check of result folders: the guard of a pure restructuring.

`record` runs every scenario in scenarios/examples/*.yaml and scenarios/validation/*.yaml
(with small stop rules, so the whole set takes a minute or two) plus token-mode variants
of batching_chat (preemption, chunked prefill, EDF, a bounded queue), each through the
same entry point as `splitsim run`, into one folder per case. `compare` then checks two
such recordings file by file: requests.csv, summary.csv, summary.json, timeseries.csv and
scenario.yaml byte for byte, manifest.json field by field except `wall_time_s`.

    python benchmarks/check_identical.py record /tmp/before
    ... restructure ...
    python benchmarks/check_identical.py record /tmp/after
    python benchmarks/check_identical.py compare /tmp/before /tmp/after
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from sim.config import load_scenario
from sim.runner import run_scenario

ROOT = Path(__file__).resolve().parent.parent
BYTE_FILES = ("requests.csv", "summary.csv", "summary.json", "timeseries.csv", "scenario.yaml")
VOLATILE_MANIFEST_KEYS = ("wall_time_s",)

# stop rules small enough for a quick check (trace scenarios end with their trace)
SMALL = {
    "bandwidth_trace": ["duration_s=60"],
    "batching_chat": ["requests=600"],
    "fleet": ["requests=600"],
    "link_estimators": ["duration_s=60"],
    "long_context": ["requests=60"],
    "quickstart": ["requests=1000"],
    "shared_cell": ["duration_s=60"],
    "trace_replay": [],
    "md1": ["requests=2000"],
    "mm1": ["requests=2000"],
    "mmc": ["requests=2000"],
}

# token-mode variants of batching_chat: every server path the engine has
CHAT = "scenarios/examples/batching_chat.yaml"
TOKEN_VARIANTS = {
    "chat_preempt": ["requests=300", "simulation.on_kv_full=preempt",
                     "simulation.kv_memory_gb=2"],
    "chat_chunked": ["requests=300", "simulation.chunked_prefill=true"],
    "chat_edf_queue": ["requests=300", "server.discipline=edf", "server.max_queue=5",
                       "workload.arrival.rate_per_s=12"],
    "chat_no_coalesce": ["requests=200", "simulation.coalesce=false"],
    "chat_estimate": ["requests=200", "split.link_estimate=ewma", "policies=[dp_queue_aware]"],
}  # fmt: skip


def cases() -> dict[str, tuple[str, list[str]]]:
    """Name -> (scenario path relative to the repo, overrides) of every recorded case."""
    out: dict[str, tuple[str, list[str]]] = {}
    for folder in ("scenarios/examples", "scenarios/validation"):
        for path in sorted((ROOT / folder).glob("*.yaml")):
            out[path.stem] = (f"{folder}/{path.name}", SMALL.get(path.stem, ["requests=300"]))
    for name, overrides in TOKEN_VARIANTS.items():
        out[name] = (CHAT, overrides)
    return out


def record(dest: Path, only: list[str] | None = None) -> None:
    """Run every case into `dest/<case>/`. Scenarios are loaded by their path relative to
    the repository, so the manifest is the same from any checkout (e.g. a git worktree of
    the commit before a change), as is the command line recorded."""
    dest = dest.resolve()
    dest.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)
    for name, (rel, overrides) in cases().items():
        if only and name not in only:
            continue
        command = ["splitsim", "run", rel, *(f"--set={o}" for o in overrides)]
        ld = load_scenario(rel, overrides)
        run_scenario(ld, dest / name, command=command)
        print(f"recorded {name}", flush=True)


def _manifest(path: Path) -> dict:
    data = json.loads(path.read_text())
    for key in VOLATILE_MANIFEST_KEYS:
        data.pop(key, None)
    return data


def compare(a: Path, b: Path) -> list[str]:
    """Every difference between two recordings, one line each (empty: identical)."""
    diffs: list[str] = []
    names = sorted({p.name for p in a.iterdir()} | {p.name for p in b.iterdir()})
    for name in names:
        da, db = a / name, b / name
        if not (da.is_dir() and db.is_dir()):
            diffs.append(f"{name}: only in one recording")
            continue
        for f in BYTE_FILES:
            fa, fb = da / f, db / f
            if fa.exists() != fb.exists():
                diffs.append(f"{name}/{f}: only in one recording")
            elif fa.exists() and fa.read_bytes() != fb.read_bytes():
                diffs.append(f"{name}/{f}: bytes differ")
        if _manifest(da / "manifest.json") != _manifest(db / "manifest.json"):
            diffs.append(f"{name}/manifest.json: fields differ")
    return diffs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("dest", type=Path)
    r.add_argument("--only", nargs="*")
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "record":
        record(args.dest, args.only)
        return 0
    diffs = compare(args.a, args.b)
    for line in diffs:
        print(line)
    n = len(list(args.a.iterdir()))
    print(f"{n} cases: " + ("identical" if not diffs else f"{len(diffs)} differences"))
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
