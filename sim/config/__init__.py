"""Typed scenario schema, YAML loading, `--set` overrides and strict validation."""

from sim.config.load import (
    LoadedScenario,
    apply_overrides,
    effective_dict,
    load_scenario,
    read_yaml,
    set_path,
    validate,
)
from sim.config.scenario import Scenario

__all__ = [
    "LoadedScenario",
    "Scenario",
    "apply_overrides",
    "effective_dict",
    "load_scenario",
    "read_yaml",
    "set_path",
    "validate",
]
