"""Safe result folders: recognised before replaced, built in a temporary sibling, then renamed.

A result folder is replaced only when its `manifest.json` says it is this tool's (package
`splitsim`, kind `run`), so a web app's or another tool's folder is never lost. The
temporary sibling is made before the simulation starts: it is the writability probe, so a
bad output path fails in one line before any work. Temporary and old siblings carry the
host name and process id of their owner (`.NAME.tmp-HOST-PID-XXXX`), so the next run into
the same target can tell a dead run's leftovers from a live run's and remove only those.
A failed run never replaces a finished result: its record goes to the sibling `NAME.failed/`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sim.atomic import glob_escape, stale_owner, temp_prefix
from sim.errors import UserError

MARKER = "manifest.json"
PACKAGE = "splitsim"
KIND_RUN = "run"
FAILED_SUFFIX = ".failed"
_TEMP_KINDS = ("tmp", "old")


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


def remove_stale_siblings(out_dir: Path) -> None:
    """Remove temporaries of `out_dir` left by dead runs; put back an old result that a run
    killed between its two renames left aside (then `out_dir` itself is missing)."""
    parent = out_dir.parent
    if not parent.is_dir():
        return
    for entry in sorted(parent.glob(f".{glob_escape(out_dir.name)}.*-*")):
        if stale_owner(entry.name, out_dir.name) is not True:
            continue
        if entry.name.startswith(f".{out_dir.name}.old-") and not out_dir.exists():
            entry.rename(out_dir)  # the finished result the dead run had moved aside
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


# --- what a folder is


def read_manifest(folder: Path) -> dict | None:
    """The folder's manifest.json as a mapping, or None when absent or unreadable."""
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_run_manifest(manifest: dict | None) -> bool:
    """Whether a manifest is this tool's run manifest (kind `run`, or an older one that
    predates `kind` but has the run fields)."""
    if not manifest or manifest.get("package") != PACKAGE:
        return False
    if "kind" in manifest:
        return manifest["kind"] == KIND_RUN
    return "scenario_hash" in manifest and "status" in manifest


def is_finished_result(folder: Path) -> bool:
    """Whether `folder` holds a finished (status ok) run result of this tool."""
    manifest = read_manifest(folder)
    return is_run_manifest(manifest) and manifest.get("status") == "ok"


def os_error_line(path: Path, err: OSError) -> UserError:
    """One line for an operating-system error on an output path."""
    if err.errno == errno.ENAMETOOLONG:
        why = "file name too long; choose a shorter -o or scenario name"
    else:
        why = f"{err.strerror or err}; choose a writable -o"
    return UserError(f"{path}: cannot write the results here: {why}")


def check_parents(out_dir: Path) -> None:
    """Refuse an output path below something that is not a folder (e.g. FILE/sub)."""
    for parent in out_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{out_dir}: cannot create the folder: {parent} is not a folder")
            return


def check_output_file(path: Path) -> None:
    """Refuse, before any work, an output file that could not be written: a folder in its
    place, a file on its way (FILE/x.csv), or a nearest existing folder that takes no files
    (probed with a temporary file, removed at once). Nothing is left behind."""
    try:
        check_parents(path)
        if path.is_dir():
            raise UserError(f"{path}: is a folder; give a file name")
        folder = next(p for p in path.parents if p.exists())
        fd, probe = tempfile.mkstemp(prefix=temp_prefix(path.name), dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise os_error_line(path, err) from None


def check_target(out_dir: Path) -> None:
    """Refuse to replace anything that is not this tool's run folder (nothing else is lost).

    An empty folder is fine; a folder whose manifest.json belongs to something else is not.
    """
    try:
        check_parents(out_dir)
        if out_dir.is_symlink():
            raise UserError(f"{out_dir}: is a symbolic link; give the folder it points to")
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError(f"{out_dir}: exists and is not a folder; choose another -o")
        in_use = out_dir.is_dir() and any(out_dir.iterdir())
        if in_use and not is_run_manifest(read_manifest(out_dir)):
            raise UserError(
                f"{out_dir}: folder exists and is not a splitsim result (no manifest.json "
                "of kind run); choose another -o"
            )
    except OSError as err:
        raise os_error_line(out_dir, err) from None


def replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move a finished temporary folder into place, replacing an older result of ours.

    The older result is first renamed to a PID-tagged `.NAME.old-*` sibling: if this process
    dies between the two renames, the next run puts that result back.
    """
    old = None
    if out_dir.exists():
        old = out_dir.with_name(temp_prefix(out_dir.name, "old") + secrets.token_hex(4))
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@dataclass
class PendingResult:
    """A run's result folder in the making: a temporary sibling of `out_dir`, made up front."""

    out_dir: Path
    tmp: Path

    @classmethod
    def open(cls, out_dir: Path) -> PendingResult:
        """Check the target, clear dead runs' leftovers and make the temporary folder.

        Fails with one line (UserError) before any simulation when the path is unusable.
        """
        check_target(out_dir)
        missing = [p for p in out_dir.parents if not p.exists()]
        try:
            remove_stale_siblings(out_dir)
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(out_dir.name), dir=out_dir.parent))
        except OSError as err:
            for parent in missing:  # innermost first: leave no empty folders behind
                with contextlib.suppress(OSError):
                    parent.rmdir()
            raise os_error_line(out_dir, err) from None
        return cls(out_dir, tmp)

    @property
    def failed_dir(self) -> Path:
        """Where a failed run's record goes when `out_dir` holds a finished result."""
        return self.out_dir.with_name(self.out_dir.name + FAILED_SUFFIX)

    def discard(self) -> None:
        """Remove the temporary folder (the run was interrupted)."""
        shutil.rmtree(self.tmp, ignore_errors=True)

    def commit(self, effective: dict, manifest: dict, result, fmt: str) -> Path:
        """Fill the temporary folder and rename it into `out_dir`; returns `out_dir`.

        A successful run also removes this target's earlier failure record, now outdated.
        """
        self._fill(effective, manifest, result, fmt)
        self._move(self.out_dir)
        failed = self.failed_dir
        if is_run_manifest(read_manifest(failed)) and not failed.is_symlink():
            shutil.rmtree(failed, ignore_errors=True)
        return self.out_dir

    def commit_failure(self, effective: dict, manifest: dict) -> Path | None:
        """Record a failed run: in `out_dir` when that holds no finished result, else in
        `out_dir.failed/`, so a finished result is never lost. Returns the folder written, or
        None when neither place may be used (the temporary is then removed)."""
        target = self.failed_dir if is_finished_result(self.out_dir) else self.out_dir
        try:
            check_target(target)
            self._fill(effective, manifest, None, "csv")
            self._move(target)
        except (UserError, OSError):
            self.discard()
            return None
        return target

    def _fill(self, effective: dict, manifest: dict, result, fmt: str) -> None:
        """scenario.yaml, the result tables (when `result` is given), manifest.json last."""
        try:
            (self.tmp / "scenario.yaml").write_text(yaml.safe_dump(effective, sort_keys=False))
            if result is not None:
                if fmt == "parquet":
                    result.requests.to_parquet(self.tmp / "requests.parquet", index=False)
                else:
                    result.requests.to_csv(self.tmp / "requests.csv", index=False)
                result.summary.to_csv(self.tmp / "summary.csv", index=False)
                write_json(self.tmp / "summary.json", result.summary.to_dict(orient="records"))
                result.timeseries.to_csv(self.tmp / "timeseries.csv", index=False)
                if getattr(result, "servers", None) is not None:  # a fleet
                    result.servers.to_csv(self.tmp / "servers.csv", index=False)
                    result.server_timeseries.to_csv(
                        self.tmp / "timeseries_servers.csv", index=False
                    )
            write_json(self.tmp / MARKER, manifest)  # last: its presence marks a whole folder
        except BaseException:
            self.discard()
            raise

    def _move(self, target: Path) -> None:
        """Rename the filled temporary folder into `target`, replacing an older one of ours."""
        try:
            replace_dir(self.tmp, target)
        except BaseException:
            self.discard()
            raise


def default_output(name: str, source: str, root: Path = Path("runs")) -> Path:
    """`root/name`, the default output folder of a scenario or sweep named `name` in file
    `source`; refused when the name would lead outside `root` (e.g. `../x` or `/x`)."""
    out = root / name
    inside = not Path(name).is_absolute() and ".." not in Path(name).parts
    try:
        inside = inside and out.resolve().is_relative_to(root.resolve())
        inside = inside and out.resolve() != root.resolve()
    except (OSError, RuntimeError) as err:
        raise UserError(f"{source}: name: cannot use '{name}' as a folder name: {err}") from None
    if not inside:
        raise UserError(
            f"{source}: name: '{name}' would write outside {root}/; "
            "use a plain name (letters, digits, -, _) or give -o DIR"
        )
    return out


def failure_error(err: Exception, where: Path | None, out_dir: Path) -> Exception:
    """The exception to raise for a run that failed with `err` after its record went to
    `where` (None: nowhere). A UserError gets the place in its one line; any other error
    (a bug) gets `splitsim_note` and `splitsim_traceback` for the CLI's internal-error line."""
    if where is None:
        note = f"the failure was not recorded: {out_dir}{FAILED_SUFFIX} is not ours to replace"
    else:
        note = f"failed run recorded in {where}/"
    if where != out_dir and out_dir.exists():
        note += f"; the earlier result in {out_dir}/ is kept"
    if isinstance(err, UserError):
        return UserError(f"{err} ({note})")
    err.splitsim_note = note  # type: ignore[attr-defined]
    if where is not None:
        err.splitsim_traceback = where / MARKER  # type: ignore[attr-defined]
    return err
