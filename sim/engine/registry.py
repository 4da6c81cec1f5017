"""The engines, by `simulation.granularity`: the runner picks one here.

Every engine is built as `Engine(ld, policy, arrivals, jitter_seed, book, progress, log=...)`
and returns a `RunResult` from `run()`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from sim.config import LoadedScenario
from sim.engine.planner import ProblemBook
from sim.engine.recorder import RunResult
from sim.engine.run import Simulation
from sim.engine.token import TokenSimulation
from sim.engine.workload import Arrivals


class Engine(Protocol):
    """What the runner needs of an engine: built for one policy and replication, run once."""

    def __init__(
        self,
        ld: LoadedScenario,
        policy: str,
        arrivals: Arrivals,
        jitter_seed: np.random.SeedSequence,
        book: ProblemBook,
        progress: Callable[[int], None] | None = None,
        log: list | None = None,
    ) -> None: ...

    def run(self) -> RunResult: ...


ENGINES: dict[str, type[Engine]] = {}


def register(granularity: str, engine: type[Engine]) -> None:
    """Name `engine` as the engine of `granularity` (a name may be taken once)."""
    if granularity in ENGINES:
        raise ValueError(f"an engine is already registered for granularity {granularity!r}")
    ENGINES[granularity] = engine


def engine_for(granularity: str) -> type[Engine]:
    """The engine of `granularity`; an unknown one names the known granularities."""
    try:
        return ENGINES[granularity]
    except KeyError:
        known = ", ".join(sorted(ENGINES))
        raise ValueError(f"no engine for granularity {granularity!r} (known: {known})") from None


register("request", Simulation)
register("token", TokenSimulation)
