"""Sweep tasks: plain dicts in, plain dicts out, so any executor can run them anywhere."""

from __future__ import annotations

import copy
import gc
from pathlib import Path
from typing import Any

from sim.config import LoadedScenario, set_path, validate
from sim.errors import UserError


def scenario_for(task: dict, **extra: Any) -> LoadedScenario:
    """The validated scenario of a task: base, point values, seed, replications, extras."""
    raw = copy.deepcopy(task["base"])
    for key, value in task["params"].items():
        set_path(raw, key, value, where=f"{task['source']}: {key}")
    raw["seed"] = task["seed"]
    raw["replications"] = task["replications"]
    for key, value in extra.items():
        set_path(raw, key, value, where=key)
    return validate(raw, task["source"], Path(task["base_dir"]))


def run_task(task: dict) -> dict:
    """Run one task; failures come back as an `error` message, never as an exception.

    A worker runs task after task: the cyclic garbage of each task's runs is collected
    before the next (left to the collector's thresholds, it built up to gigabytes per
    worker over a long capacity sweep of token-mode runs)."""
    try:
        return _run_task(task)
    finally:
        gc.collect()


def _run_task(task: dict) -> dict:
    """`run_task`'s body."""
    try:
        if task["kind"] == "capacity":
            from sim.sweep.capacity import capacity_task

            return {"rows": [capacity_task(task)]}
        from sim.runner import simulate

        ld = scenario_for(task)
        result = simulate(ld, replications=[task["replication"]])
        return {"rows": result.summary.to_dict(orient="records")}
    except UserError as err:
        return {"error": str(err)}
    except Exception as err:  # a bad parameter combination must not stop the sweep
        return {"error": f"{type(err).__name__}: {err}"}
