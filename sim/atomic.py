"""Files that appear whole or not at all, and temporaries a later run can clean up.

One home for atomic writes (a temporary sibling, then a rename) used by result folders,
sweep stores, the paper reproduction and the figures. Temporaries carry the host name and
process id of their writer (`.NAME.tmp-HOST-PID-XXXX`), so a later run can tell a dead
writer's leftover from a live one's and remove only the former. Standard library only, so
`analysis/` may import it.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def owner_tag() -> str:
    """`HOST-PID` of this process, for the names of temporaries (host limited to safe chars)."""
    host = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}"


def temp_prefix(name: str, what: str = "tmp") -> str:
    """The name prefix of a temporary (`what` tmp) or old (`what` old) sibling of `name`."""
    return f".{name}.{what}-{owner_tag()}-"


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (a zombie counts as dead; unknown as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists but is not ours to signal
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


_TEMP_NAME = re.compile(
    r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<host>[A-Za-z0-9._]+)-(?P<pid>\d+)-[^-]+$"
)


def stale_owner(entry_name: str, name: str | None = None) -> bool | None:
    """For a PID-tagged temporary `entry_name` (of target `name`, when given): True when its
    process is dead and ran on this host, False when it lives or ran elsewhere; None when
    `entry_name` is not such a temporary."""
    match = _TEMP_NAME.match(entry_name)
    if match is None or (name is not None and match["name"] != name):
        return None
    same_host = match["host"] == owner_tag().rpartition("-")[0]
    return same_host and not _pid_alive(int(match["pid"]))


def glob_escape(name: str) -> str:
    """`name` with glob wildcards escaped, for `Path.glob`."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def atomic_write(path: Path, write: Callable[[IO], None], binary: bool = False) -> None:
    """Write `path` through `write(handle)` into a PID-tagged temporary sibling, then rename.

    Callers clean dead writers' leftovers once per folder (`remove_stale_temporaries`).
    """
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically (see `atomic_write`)."""
    atomic_write(path, lambda handle: handle.write(text))


def remove_stale_temporaries(folder: Path, untagged_too: bool = False) -> None:
    """Remove files of `folder` that are temporaries of dead writers; with `untagged_too`,
    also hidden files without an owner tag (temporaries of older versions, in tasks/)."""
    for entry in folder.glob(".*"):
        owner = stale_owner(entry.name)
        if (owner is True or (owner is None and untagged_too)) and entry.is_file():
            entry.unlink(missing_ok=True)
