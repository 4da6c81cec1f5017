"""The resumable result store of a sweep: one small JSON file per finished task.

Each file is written to a temporary name and renamed, so a killed sweep leaves only whole
files; rerunning skips every task whose file exists. `sweep.json` holds the content hash
of what was swept; a different hash means the results belong to another sweep.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from sim.errors import UserError

META = "sweep.json"


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file via a temporary sibling and an atomic rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class SweepStore:
    """Finished tasks of one sweep under `out_dir/tasks/`."""

    def __init__(self, out_dir: Path, content_hash: str, meta: dict, fresh: bool):
        self.out_dir = out_dir
        self.tasks_dir = out_dir / "tasks"
        meta_path = out_dir / META
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError(f"{out_dir}: exists and is not a folder")
        if meta_path.is_file() and not fresh:
            try:
                old = json.loads(meta_path.read_text()).get("content_hash")
            except (ValueError, AttributeError):
                old = None  # unreadable: treat as another sweep's, never mix
            if old != content_hash:
                raise UserError(
                    f"{out_dir}: holds results of a different sweep (base scenario or factors "
                    "changed); use --fresh to discard them or choose another -o"
                )
        elif out_dir.is_dir() and any(out_dir.iterdir()) and not meta_path.is_file():
            raise UserError(
                f"{out_dir}: folder exists and is not a splitsim sweep; choose another -o"
            )
        if fresh and self.tasks_dir.exists():
            shutil.rmtree(self.tasks_dir)
        self.tasks_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.tasks_dir.glob(".*"):  # temporaries of a killed run, never complete
            stale.unlink(missing_ok=True)
        atomic_write_text(
            meta_path, json.dumps({**meta, "content_hash": content_hash}, indent=2) + "\n"
        )

    def _path(self, task_id: str) -> Path:
        return self.tasks_dir / f"{task_id}.json"

    def done(self, task_id: str) -> bool:
        return self._path(task_id).is_file()

    def save(self, task_id: str, result: dict) -> None:
        atomic_write_text(self._path(task_id), json.dumps(result, default=str))

    def load(self, task_id: str) -> dict:
        return json.loads(self._path(task_id).read_text())
