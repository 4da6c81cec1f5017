"""User-facing errors: one clear line, exit status 2, no traceback (caught in `sim.cli`)."""

from __future__ import annotations

from collections.abc import Iterable


class UserError(Exception):
    """Bad input from the user: a file, a field or a name. The message is one line."""


def unknown_name(kind: str, name: str, known: Iterable[str], where: str = "") -> UserError:
    """An error for a name that is not in a registry, listing the known names."""
    prefix = f"{where}: " if where else ""
    names = ", ".join(sorted(known))
    return UserError(f"{prefix}unknown {kind} '{name}'; known: {names}")
