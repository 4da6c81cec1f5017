"""splitsim: a discrete-event simulator for split (collaborative) LLM inference.

The Python API (`sim.api`): `run`, `run_sweep`, `capacity`, `solve`, `figure`, `load`; bad input
raises `UserError` with the command line's one-line message.
"""

__version__ = "0.1.0"

from sim.api import Result, Tables, capacity, figure, load, run, run_sweep, solve  # noqa: E402
from sim.errors import UserError  # noqa: E402

__all__ = [
    "Result",
    "Tables",
    "UserError",
    "capacity",
    "figure",
    "load",
    "run",
    "run_sweep",
    "solve",
]
