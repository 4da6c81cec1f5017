"""The resumable result store of a sweep: one small JSON file per finished task.

Each file is written to a temporary name and renamed, so a killed sweep leaves only whole
files; rerunning skips every task whose file exists. `sweep.json` marks the folder as this
tool's (package `splitsim`, kind `sweep`) and holds the content hash of what was swept; a
different hash means the results belong to another sweep.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sim.atomic import atomic_write_text, remove_stale_temporaries
from sim.errors import UserError
from sim.output import PACKAGE, check_parents, os_error_line

META = "sweep.json"
KIND_SWEEP = "sweep"


def is_sweep_meta(meta: object) -> bool:
    """Whether a parsed sweep.json is this tool's: package `splitsim`, kind `sweep`, or an
    older one that predates those fields but has the sweep fields."""
    if not isinstance(meta, dict):
        return False
    if "package" in meta or "kind" in meta:
        return meta.get("package") == PACKAGE and meta.get("kind") == KIND_SWEEP
    return {"content_hash", "points", "tasks"} <= meta.keys()


def read_meta(out_dir: Path) -> object:
    """The parsed sweep.json of `out_dir` (None when it is unreadable JSON)."""
    try:
        return json.loads((out_dir / META).read_text())
    except ValueError:
        return None


class SweepStore:
    """Finished tasks of one sweep under `out_dir/tasks/`.

    `out_dir` is taken only when it is new, empty or already this tool's sweep folder (its
    sweep.json says so); `fresh` discards the tasks of such a folder, never anything else.
    Output-path problems (not a folder, not writable, name too long) fail here in one line,
    before any task runs.
    """

    def __init__(self, out_dir: Path, content_hash: str, meta: dict, fresh: bool):
        self.out_dir = out_dir
        self.tasks_dir = out_dir / "tasks"
        try:
            self._claim(content_hash, fresh)
            if fresh and self.tasks_dir.exists():
                shutil.rmtree(self.tasks_dir)
            self.tasks_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(out_dir)
            remove_stale_temporaries(self.tasks_dir, untagged_too=True)
            marker = {"package": PACKAGE, "kind": KIND_SWEEP, **meta, "content_hash": content_hash}
            atomic_write_text(out_dir / META, json.dumps(marker, indent=2) + "\n")
        except OSError as err:
            raise os_error_line(out_dir, err) from None

    def _claim(self, content_hash: str, fresh: bool) -> None:
        """Refuse `out_dir` unless it is new, empty, or this sweep's folder (any sweep's with
        `fresh`)."""
        out_dir = self.out_dir
        check_parents(out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError(f"{out_dir}: exists and is not a folder; choose another -o")
        if (out_dir / META).exists():
            meta = read_meta(out_dir)
            if not is_sweep_meta(meta):
                raise UserError(
                    f"{out_dir}: its {META} is not a splitsim sweep's; choose another -o"
                )
            if not fresh and meta.get("content_hash") != content_hash:
                raise UserError(
                    f"{out_dir}: holds results of a different sweep (base scenario or factors "
                    "changed); use --fresh to discard them or choose another -o"
                )
        elif out_dir.is_dir() and any(out_dir.iterdir()):
            raise UserError(
                f"{out_dir}: folder exists and is not a splitsim sweep (no {META}); "
                "choose another -o"
            )

    def _path(self, task_id: str) -> Path:
        return self.tasks_dir / f"{task_id}.json"

    def done(self, task_id: str) -> bool:
        return self._path(task_id).is_file()

    def save(self, task_id: str, result: dict) -> None:
        atomic_write_text(self._path(task_id), json.dumps(result, default=str))

    def load(self, task_id: str) -> dict:
        return json.loads(self._path(task_id).read_text())
