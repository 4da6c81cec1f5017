"""Atomic result folders: everything is written to a temporary sibling, then renamed."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from sim.errors import UserError

MARKER = "manifest.json"


def _clean(value: Any) -> Any:
    """JSON-safe values: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item"):
        return _clean(value.item())
    return value


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(_clean(data), indent=2, sort_keys=False) + "\n")


def check_target(out_dir: Path) -> None:
    """Refuse to replace a folder that is not a splitsim result (nothing else gets lost)."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise UserError(f"{out_dir}: exists and is not a folder")
        if any(out_dir.iterdir()) and not (out_dir / MARKER).is_file():
            raise UserError(
                f"{out_dir}: folder exists and is not a splitsim result; choose another -o"
            )


def replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move a finished temporary folder into place, replacing an older result."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{tmp.name}")
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_result_folder(out_dir: Path, effective: dict, manifest: dict, result, fmt: str) -> None:
    """Write scenario.yaml, results (when `result` is given) and manifest.json atomically."""
    check_target(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        (tmp / "scenario.yaml").write_text(yaml.safe_dump(effective, sort_keys=False))
        if result is not None:
            if fmt == "parquet":
                result.requests.to_parquet(tmp / "requests.parquet", index=False)
            else:
                result.requests.to_csv(tmp / "requests.csv", index=False)
            result.summary.to_csv(tmp / "summary.csv", index=False)
            write_json(tmp / "summary.json", result.summary.to_dict(orient="records"))
            result.timeseries.to_csv(tmp / "timeseries.csv", index=False)
        write_json(tmp / MARKER, manifest)  # last: its presence marks a complete folder
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
