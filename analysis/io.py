"""Read a result folder or sweep folder into DataFrames, by the column names in `sim.records`.

A folder may hold any of the tables below; `load_folder()` reads those present and checks
each has its key columns. Figures check the columns they use with `require_columns()`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sim.records import (
    ALLOCATION_COLUMNS,
    CAPACITY_COLUMNS,
    REQUEST_COLUMNS,
    SERVER_TIMESERIES_COLUMNS,
    SUMMARY_COLUMNS,
    TIMESERIES_COLUMNS,
    UNIT_COST_COLUMNS,
)


class AnalysisError(Exception):
    """Input that analysis cannot use; the message is one line naming the file or table."""


class MissingData(AnalysisError):
    """A table lacks the rows or columns one figure needs (the figure is skipped)."""


@dataclass(frozen=True)
class Table:
    """A table a folder may hold: its file names (first found wins) and its key columns."""

    files: tuple[str, ...]
    key_columns: tuple[str, ...]
    about: str


def _ci_columns(metrics: Iterable[str]) -> tuple[str, ...]:
    return tuple(c for m in metrics for c in (f"{m}_mean", f"{m}_ci95"))


TABLES: dict[str, Table] = {
    "requests": Table(("requests.csv", "requests.parquet"), ("policy", "latency_s"),
                      "one row per request and policy (splitsim run)"),
    "summary": Table(("summary.csv",), ("policy",), "one row per policy (splitsim run)"),
    "timeseries": Table(("timeseries.csv",), ("policy", "time_s"),
                        "server state over time (splitsim run)"),
    "server_timeseries": Table(("timeseries_servers.csv",), ("policy", "server", "time_s"),
                               "each fleet server's state over time (splitsim run, servers:)"),
    "sweep": Table(("sweep.csv",), ("point", "policy"), "one row per point, policy, replication"),
    "sweep_ci": Table(("sweep_ci.csv",), ("point", "policy"),
                      "per point and policy: <metric>_mean and <metric>_ci95 (splitsim sweep)"),
    "capacity": Table(("capacity.csv",), ("policy", "capacity_rps"),
                      "capacity per policy and replication"),
    "capacity_ci": Table(("capacity_ci.csv",), ("point", "policy", "capacity_rps_mean"),
                         "capacity per policy with 95 % CI (splitsim capacity)"),
    "allocation": Table(("allocation.csv",), ("study", "policy", "x"),
                        "static allocation studies (no queueing)"),
    "unit_costs": Table(("unit_costs.csv",), ("model", "tokens", "flops"),
                        "per-unit FLOPs and time against sequence length"),
}  # fmt: skip

# Every column a table may have, for messages and checks in tests.
KNOWN_COLUMNS: dict[str, tuple[str, ...]] = {
    "requests": REQUEST_COLUMNS,
    "summary": SUMMARY_COLUMNS,
    "timeseries": TIMESERIES_COLUMNS,
    "server_timeseries": SERVER_TIMESERIES_COLUMNS,
    "capacity": CAPACITY_COLUMNS,
    "allocation": ALLOCATION_COLUMNS,
    "unit_costs": UNIT_COST_COLUMNS,
    "sweep_ci": _ci_columns(c for c in SUMMARY_COLUMNS if c not in ("policy", "replication")),
    "capacity_ci": _ci_columns(("capacity_rps", "upper_rps", "evaluations", "gain_of_dp_pct")),
}


@dataclass
class FolderData:
    """The tables found in one folder, by table name (see `TABLES`)."""

    folder: Path
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    sources: dict[str, Path] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # table name -> why it is unusable

    def __contains__(self, name: str) -> bool:
        return name in self.tables

    def __getitem__(self, name: str) -> pd.DataFrame:
        return self.tables[name]


def require_columns(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """Raise `MissingData` naming the columns of `frame` (called `what`) that are absent."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise MissingData(f"{what} lacks column(s) {', '.join(missing)}")


def require_rows(frame: pd.DataFrame, what: str) -> None:
    """Raise `MissingData` when `frame` has no rows."""
    if frame.empty:
        raise MissingData(f"{what} has no rows")


def read_table(path: Path, name: str) -> pd.DataFrame:
    """Read one table file and check its key columns; errors name the file."""
    try:
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise AnalysisError(f"{path}: file is empty") from None
    except (OSError, ValueError, ImportError, pd.errors.ParserError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AnalysisError(f"{path}: cannot read: {first}") from None
    missing = [c for c in TABLES[name].key_columns if c not in frame.columns]
    if missing:
        raise AnalysisError(
            f"{path}: not a {name} table: lacks column(s) {', '.join(missing)} "
            f"(expected {TABLES[name].about})"
        )
    return frame


def load_folder(folder: str | Path) -> FolderData:
    """Every known table in `folder` (a run, sweep or capacity folder) as a DataFrame.

    A table file that cannot be used is recorded in `errors` (its figures are skipped);
    a missing folder raises `AnalysisError`.
    """
    folder = Path(folder)
    if not folder.exists():
        raise AnalysisError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise AnalysisError(f"{folder}: not a folder")
    data = FolderData(folder)
    for name, table in TABLES.items():
        for file_name in table.files:
            path = folder / file_name
            if path.is_file():
                data.sources[name] = path
                try:
                    data.tables[name] = read_table(path, name)
                except AnalysisError as err:
                    data.errors[name] = str(err)
                break
    return data
