"""A snapshot of a folder tree, for tests that assert nothing on disk changed."""

from __future__ import annotations

from pathlib import Path


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file and folder under `root` (hidden ones too), with file contents (folders map
    to None): two snapshots are equal when nothing was added, removed or changed."""
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }
