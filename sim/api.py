"""The Python API for notebooks: run a scenario, a sweep or a capacity search, solve one
split problem and draw a figure, getting DataFrames and figures back. (The sweep function is
`run_sweep`: `sim.sweep` is the sweep package.)

Every function goes through the same validation as the command line and raises the same
one-line `sim.errors.UserError` on bad input (`str(err)` is the line `splitsim` prints).
Sweeps and capacity searches run through the command's own code into a result folder
(a temporary one unless `output` is given) and return its tables.

    import sim
    res = sim.run("scenarios/examples/quickstart.yaml", requests=500,
                  set={"workload.arrival.rate_per_s": 30})
    res.summary[["policy", "throughput_rps", "sla_violation_rate"]]
"""

from __future__ import annotations

import contextlib
import copy
import io
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from sim.errors import UserError

Scenario = str | Path | dict


@dataclass
class Result:
    """A scenario's results as DataFrames (the tables of its result folder)."""

    requests: pd.DataFrame
    summary: pd.DataFrame
    timeseries: pd.DataFrame
    effective: dict  # the scenario with every default filled in
    servers: pd.DataFrame | None = None  # a fleet: one row per policy, replication, server
    server_timeseries: pd.DataFrame | None = None
    folder: Path | None = None  # where it was written, if it was


@dataclass
class Tables:
    """A sweep's or capacity search's tables by name (sweep, sweep_ci, capacity,
    capacity_ci: whichever it wrote) and its folder."""

    folder: Path
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    def __getitem__(self, name: str) -> pd.DataFrame:
        return self.tables[name]


def _raw_scenario(scenario: Scenario, fields: dict, dotted: dict | None) -> tuple[dict, Path, str]:
    """The scenario mapping with `fields` (top-level keys) and `dotted` (a.b.c: value) set,
    the folder its relative paths are relative to, and its name in messages."""
    from sim.config import read_yaml
    from sim.config.load import set_path

    if isinstance(scenario, dict):
        raw, base_dir, source = copy.deepcopy(scenario), Path.cwd(), "<scenario dict>"
    else:
        path = Path(scenario)
        raw, base_dir, source = read_yaml(path), path.parent, str(path)
    raw.update(copy.deepcopy(fields))
    for key, value in (dotted or {}).items():
        set_path(raw, key, value, where=f"{source}: {key}")
    return raw, base_dir, source


def load(scenario: Scenario, set: dict | None = None, **fields: Any):
    """The validated scenario (`LoadedScenario`), with overrides as `run` takes them."""
    from sim.config import validate

    raw, base_dir, source = _raw_scenario(scenario, fields, set)
    return validate(raw, source, base_dir)


def run(
    scenario: Scenario, output: str | Path | None = None, set: dict | None = None, **fields: Any
) -> Result:
    """Run a scenario (a YAML path or a mapping) and return its tables.

    `fields` set top-level keys (`requests=500`, `policies=[...]`), `set` dotted paths
    (`{"workload.arrival.rate_per_s": 30}`). With `output` the result folder is written
    too, as `splitsim run -o` writes it."""
    from sim.runner import run_scenario, simulate

    ld = load(scenario, set, **fields)
    res = run_scenario(ld, output, command=["sim.run"]) if output else simulate(ld)
    return Result(res.requests, res.summary, res.timeseries, res.effective, res.servers,
                  res.server_timeseries, Path(output) if output else None)  # fmt: skip


def _parse(argv: list[str]):
    """`splitsim`'s parsed arguments; a usage error becomes a `UserError` (its one line)."""
    from sim.cli import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return build_parser().parse_args(argv)
    except SystemExit:
        raise UserError(err.getvalue().strip().splitlines()[-1]) from None


def _command(argv: list[str]) -> None:
    """Run a `splitsim` command in this process (its printed report discarded)."""
    import importlib

    from sim.cli import _COMMANDS

    args = _parse(argv)
    module, function = _COMMANDS[args.command]
    with contextlib.redirect_stdout(io.StringIO()):
        getattr(importlib.import_module(module), function)(args)


def _tables(folder: Path) -> Tables:
    out = Tables(folder)
    for name in ("sweep", "sweep_ci", "capacity", "capacity_ci"):
        path = folder / f"{name}.csv"
        if path.is_file():
            out.tables[name] = pd.read_csv(path)
    return out


def _folder(output: str | Path | None) -> Path:
    return Path(output) if output is not None else Path(tempfile.mkdtemp(prefix="splitsim-"))


def run_sweep(spec: str | Path | dict, output: str | Path | None = None, jobs: int = 1) -> Tables:
    """Run a sweep file (or mapping: its relative `base` is relative to the working folder)
    into `output` (default: a new temporary folder), from scratch; return its tables."""
    out = _folder(output)
    path = spec
    if isinstance(spec, dict):
        path = out.parent / f".{out.name}.sweep.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
    try:
        _command(["sweep", str(path), "-o", str(out), "--fresh", "--quiet", "--jobs", str(jobs)])
    finally:
        if isinstance(spec, dict):
            Path(path).unlink(missing_ok=True)
    return _tables(out)


def capacity(
    scenario: str | Path,
    policies: list[str] | None = None,
    output: str | Path | None = None,
    jobs: int = 1,
    **options: Any,
) -> Tables:
    """The capacity search of `splitsim capacity` on a scenario file: `options` are its
    flags (`max_sla_violation_rate=0.05`, `rel_tol=0.05`, `replications=5`)."""
    out = _folder(output)
    argv = ["capacity", str(scenario), "-o", str(out), "--fresh", "--quiet", "--jobs", str(jobs)]
    for name in policies or []:
        argv += ["--policy", name]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    _command(argv)
    return _tables(out)


def solve(
    model: str, client: str, server: str, tokens: int, policy: str = "dp", **options: Any
) -> dict:
    """Place one request's units (as `splitsim solve`): `options` are its flags
    (`deadline_s`, `uplink_mbps`, `output_tokens`, `granularity`, ...). Returns
    {"problem": SplitProblem, "units": unit names, "plans": {policy: Plan}} for the policy,
    server_only and greedy."""
    from sim.commands.solve import solve_request

    argv = ["solve", "--model", model, "--client", client, "--server", server,
            "--tokens", str(tokens), "--policy", policy]  # fmt: skip
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    problem, units, plans = solve_request(_parse(argv))
    return {"problem": problem, "units": [u.name for u in units], "plans": plans}


def figure(name: str, **tables: pd.DataFrame):
    """Draw a figure of `splitsim plot` by name from DataFrames named as its tables
    (`requests=`, `timeseries=`, `capacity_ci=`, ...); returns the matplotlib Figure."""
    from analysis.figures import FIGURES
    from analysis.io import AnalysisError

    spec = FIGURES.get(name)
    if spec is None:
        raise UserError(f"figure: unknown name '{name}' (known: {', '.join(FIGURES)})")
    missing = [t for t in spec.needs if t not in tables]
    if missing:
        raise UserError(f"figure {name}: needs the table(s) {', '.join(missing)} ({spec.about})")
    try:
        return spec.function(*[tables[t] for t in spec.needs])
    except AnalysisError as err:
        raise UserError(f"figure {name}: {err}") from None
