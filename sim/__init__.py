"""splitsim: a discrete-event simulator for split (collaborative) LLM inference.

The Python API (`sim.api`): `run`, `run_sweep`, `capacity`, `solve`, `figure`, `load`; bad
input raises `UserError` with the command line's one-line message. They are loaded on first
use, so importing a part of the package (e.g. `sim.records` from analysis code) loads
nothing else.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("Result", "Tables", "capacity", "figure", "load", "run", "run_sweep", "solve")
__all__ = [*_API, "UserError"]


def __getattr__(name: str) -> Any:
    """The API's names, imported when first asked for (PEP 562)."""
    if name in _API:
        from sim import api

        return getattr(api, name)
    if name == "UserError":
        from sim.errors import UserError

        return UserError
    raise AttributeError(f"module 'sim' has no attribute {name!r}")
