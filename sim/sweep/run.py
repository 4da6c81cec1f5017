"""`run_sweep()`: points times replications (times policies, for capacity), stored and joined."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

import sim
from sim.atomic import atomic_write_text
from sim.config import validate
from sim.errors import UserError
from sim.records import CAPACITY_COLUMNS, SUMMARY_COLUMNS
from sim.stats import mean_ci95
from sim.sweep.execute import (
    DEFAULT_DASK_TIMEOUT_S,
    check_dask_args,
    probe_scheduler,
    run_dask,
    run_local,
)
from sim.sweep.points import Point, check_size, expand
from sim.sweep.spec import SweepSpec
from sim.sweep.store import SweepStore


@dataclass
class SweepOutcome:
    table: pd.DataFrame
    ci: pd.DataFrame
    tasks: int
    ran: int
    failed_points: int
    points: int


def _content_hash(spec: SweepSpec, base_raw: dict, seed: int) -> str:
    content = {
        "base": base_raw,
        "seed": seed,
        "replications": spec.replications,
        "grid": {k: v if isinstance(v, list) else v.model_dump() for k, v in spec.grid.items()},
        "zip": {k: v if isinstance(v, list) else v.model_dump() for k, v in spec.zip.items()},
        "capacity": spec.capacity.model_dump() if spec.capacity else None,
    }
    text = json.dumps(content, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _capacity_policies(spec: SweepSpec, base_raw: dict) -> list:
    """The policies a capacity search covers (each is a task per point and replication)."""
    assert spec.capacity is not None
    return spec.capacity.policies or base_raw.get("policies") or ["dp", "greedy", "server_only"]


def _tasks_per_point(spec: SweepSpec, base_raw: dict) -> int:
    """Tasks one point makes: its replications, times the policies for a capacity search."""
    policies = 1 if spec.capacity is None else len(_capacity_policies(spec, base_raw))
    return spec.replications * policies


def check_sweep_size(spec: SweepSpec, base_raw: dict, source: str) -> tuple[int, int]:
    """(points, tasks) of the sweep, or a UserError naming `source` when over the bounds;
    computed from the factors' lengths, before anything is expanded, created or run."""
    return check_size(spec, source, _tasks_per_point(spec, base_raw))


def _tasks(spec: SweepSpec, points: list[Point], base_raw: dict, base_dir: Path, source: str):
    """One task per point and replication (and policy, for a capacity search)."""
    common = {"base": base_raw, "base_dir": str(base_dir), "source": source}
    tasks = []
    for p in points:
        head = {**common, "params": p.params, "seed": p.seed, "replications": spec.replications}
        if spec.capacity is None:
            for rep in range(spec.replications):
                tasks.append({**head, "kind": "run", "replication": rep, "id": f"{p.key}-r{rep}"})
            continue
        for policy in _capacity_policies(spec, base_raw):
            for rep in range(spec.replications):
                tid = f"{p.key}-{policy}-r{rep}"
                tasks.append({**head, "kind": "capacity", "policy": policy, "replication": rep,
                              "capacity": spec.capacity.model_dump(), "id": tid})  # fmt: skip
    return tasks


def _precheck(task: dict) -> str | None:
    """Validate a point's scenario here, so a bad combination fails fast and is recorded."""
    from sim.sweep.tasks import scenario_for

    try:
        scenario_for(task)
    except UserError as err:
        return str(err)
    return None


def run_sweep(
    spec: SweepSpec,
    base_raw: dict,
    base_dir: Path,
    source: str,
    out_dir: Path,
    jobs: int = 1,
    dask: str | None = None,
    fresh: bool = False,
    progress: bool = True,
    dask_timeout_s: float = DEFAULT_DASK_TIMEOUT_S,
) -> SweepOutcome:
    """Run (or resume) a sweep into `out_dir`; write sweep.csv and sweep_ci.csv (or capacity)."""
    check_sweep_size(spec, base_raw, source)
    if dask:  # a wrong scheduler fails here, before the sweep folder is touched
        check_dask_args(dask, dask_timeout_s)
        if dask != "local":
            probe_scheduler(dask, dask_timeout_s)
    seed = spec.seed if spec.seed is not None else int(base_raw.get("seed", 0))
    points = expand(spec, seed, source)
    tasks = _tasks(spec, points, base_raw, base_dir, source)
    meta = {
        "name": spec.name,
        "version": sim.__version__,
        "points": len(points),
        "tasks": len(tasks),
    }
    store = SweepStore(out_dir, _content_hash(spec, base_raw, seed), meta, fresh)
    pending = []
    for task in tasks:
        if store.done(task["id"]):
            continue
        error = _precheck(task)
        if error is not None:
            store.save(task["id"], {"error": error})
        else:
            pending.append(task)

    def on_done(task: dict, result: dict) -> None:
        store.save(task["id"], result)

    if dask:
        run_dask(pending, dask, jobs, on_done, progress, dask_timeout_s)
    else:
        run_local(pending, jobs, on_done, progress)
    table = _join(spec, points, tasks, store)
    ci = _ci(spec, table)
    name = "capacity" if spec.capacity else "sweep"
    atomic_write_text(out_dir / f"{name}.csv", table.to_csv(index=False))
    atomic_write_text(out_dir / f"{name}_ci.csv", ci.to_csv(index=False))
    failed = table.loc[table["error"].notna(), "point"].nunique()
    return SweepOutcome(table, ci, len(tasks), len(pending), int(failed), len(points))


def _join(
    spec: SweepSpec, points: list[Point], tasks: list[dict], store: SweepStore
) -> pd.DataFrame:
    """All stored results as one table, in point, policy, replication order."""
    by_key = {p.key: p for p in points}
    factor_cols = list(spec.grid) + list(spec.zip)
    columns = CAPACITY_COLUMNS if spec.capacity else SUMMARY_COLUMNS
    rows = []
    for task in tasks:
        result = store.load(task["id"])
        point = by_key[task["id"].split("-")[0]]
        head = {"point": point.index, **point.params}
        if "error" in result:
            rows.append({**head, "policy": task.get("policy"), "replication": task["replication"],
                         "error": result["error"]})  # fmt: skip
            continue
        for row in result["rows"]:
            rows.append({**head, **row, "error": None})
    table = pd.DataFrame(rows, columns=["point", *factor_cols, *columns, "error"])
    order = {p: i for i, p in enumerate(_policy_order(spec, tasks, table))}
    table["_order"] = table["policy"].map(order)
    table = table.sort_values(["point", "_order", "replication"], kind="stable")
    return table.drop(columns="_order").reset_index(drop=True)


def _policy_order(spec: SweepSpec, tasks: list[dict], table: pd.DataFrame) -> list:
    seen = []
    for p in list(table["policy"]):
        if p not in seen:
            seen.append(p)
    if spec.capacity is not None and spec.capacity.policies:
        base_policies = list(spec.capacity.policies)  # the order the user asked for
    else:
        base_policies = tasks[0]["base"].get("policies", []) if tasks else []
    return [p for p in base_policies if p in seen] + [p for p in seen if p not in base_policies]


def _ci(spec: SweepSpec, table: pd.DataFrame) -> pd.DataFrame:
    """Per point and policy: mean and 95 % CI half-width of every metric over replications."""
    factor_cols = list(spec.grid) + list(spec.zip)
    ok = table[table["error"].isna()]
    metrics = [c for c in (CAPACITY_COLUMNS if spec.capacity else SUMMARY_COLUMNS)
               if c not in ("policy", "replication")]  # fmt: skip
    out = []
    for (point, policy), group in ok.groupby(["point", "policy"], sort=False):
        row = {"point": point, **group.iloc[0][factor_cols].to_dict(), "policy": policy}
        row["replications"] = len(group)
        for m in metrics:
            mean, half, _ = mean_ci95(pd.to_numeric(group[m], errors="coerce"))
            row[f"{m}_mean"], row[f"{m}_ci95"] = mean, half
        if spec.capacity is not None:
            row.update(_gain_of_dp(ok[ok["point"] == point], policy))
        out.append(row)
    return pd.DataFrame(out)


def _gain_of_dp(point_rows: pd.DataFrame, policy: str) -> dict:
    """dp's capacity over this policy's, in percent, paired by replication (same seeds)."""
    dp = point_rows[point_rows["policy"] == "dp"].set_index("replication")["capacity_rps"]
    other = point_rows[point_rows["policy"] == policy].set_index("replication")["capacity_rps"]
    both = dp.index.intersection(other.index)
    if policy == "dp" or both.empty:
        return {"gain_of_dp_pct_mean": float("nan"), "gain_of_dp_pct_ci95": float("nan")}
    gains = (dp[both] / other[both] - 1) * 100
    mean, half, _ = mean_ci95(gains)
    return {"gain_of_dp_pct_mean": mean, "gain_of_dp_pct_ci95": half}


def check_some_point_valid(spec: SweepSpec, base_raw: dict, base_dir: Path, source: str) -> None:
    """Fail in one line, before any folder is made, when no point of the sweep validates
    (a broken base scenario); a sweep with only some bad points runs and records them.

    The base alone may be incomplete (a grid factor can supply a required value), so the
    points are checked, stopping at the first good one; run_sweep prechecks them all anyway.
    """
    from sim.sweep.tasks import scenario_for

    first_error = None
    for task in _tasks(spec, expand(spec, 0), base_raw, base_dir, source):
        try:
            scenario_for(task)
            return
        except UserError as err:
            first_error = first_error or err
    if first_error is not None:
        raise first_error


def validate_base(base_raw: dict, base_dir: Path, source: str) -> None:
    """Fail early, with one line, when the base scenario itself is broken."""
    validate(base_raw, source, base_dir)
