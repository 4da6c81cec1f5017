"""The sweep file: a base scenario times factors, replications, and an optional capacity search."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BeforeValidator, Field, ValidationError, field_validator

from sim import limits as lim
from sim.config.base import Section
from sim.config.load import _format_validation, apply_overrides, read_yaml, set_path
from sim.errors import UserError


class Range(Section):
    """`num` values from `start` to `stop` inclusive, linear or log-spaced."""

    start: lim.RANGE_ENDPOINT.type
    stop: lim.RANGE_ENDPOINT.type
    num: lim.RANGE_NUM.type
    log: bool = False
    integer: bool = Field(False, description="round values to integers")

    def values(self) -> list:
        if self.log:
            if self.start <= 0 or self.stop <= 0:
                raise ValueError("log-spaced ranges need start and stop > 0")
            vals = np.geomspace(self.start, self.stop, self.num)
        else:
            vals = np.linspace(self.start, self.stop, self.num)
        if self.integer:
            return [int(round(v)) for v in vals]
        return [float(round(v, 12)) for v in vals]


def _factor(value: Any) -> Any:
    """A factor is a list of values or a range mapping; say so instead of a union's errors."""
    if isinstance(value, dict):
        return Range.model_validate(value)
    if isinstance(value, list):
        return value
    raise ValueError(
        "a factor is a list of values or a range {start, stop, num[, log, integer]}, "
        f"got {value!r}"
    )


Factor = Annotated[list[Any] | Range, BeforeValidator(_factor)]


class CapacityConfig(Section):
    """Highest arrival rate at which the server still meets the targets, per policy."""

    policies: list[str] | None = Field(None, description="default: the scenario's policies")
    max_sla_violation_rate: lim.FRACTION.type = 0.05
    max_utilization: lim.FRACTION_OPEN.type = Field(
        0.95, description="utilisation must stay below this; 1: no utilisation target"
    )
    rel_tol: lim.REL_TOL.type = Field(
        0.02, description="bisection stops at (hi - lo) / lo <= rel_tol"
    )
    start_rate_per_s: lim.RATE_PER_S.optional = Field(
        None, description="first rate tried (default: half the server-only capacity)"
    )
    max_evaluations: lim.EVALUATIONS.type = 40


class SweepSpec(Section):
    name: lim.NAME = Field(
        "sweep",
        description="letters, digits, '.', '_', '-' (names the default folder runs/<name>)",
    )
    base: str | dict = Field(description="scenario file (relative to the sweep file) or mapping")
    seed: lim.SEED.optional = Field(None, description="default: the base scenario's seed")
    replications: lim.REPLICATIONS.type = 1
    set: dict[str, Any] = Field(default_factory=dict, description="fixed overrides of the base")
    grid: dict[str, Factor] = Field(default_factory=dict, description="Cartesian product")
    zip: dict[str, Factor] = Field(default_factory=dict, description="varied together")
    capacity: CapacityConfig | None = None

    @field_validator("grid", "zip")
    @classmethod
    def _non_empty(cls, v: dict) -> dict:
        for key, factor in v.items():
            if isinstance(factor, list) and not factor:
                raise ValueError(f"factor '{key}' has no values")
        return v


def factor_values(factor: Factor) -> list:
    return factor.values() if isinstance(factor, Range) else list(factor)


def load_sweep(
    path: str | Path, overrides: list[str] | None = None
) -> tuple[SweepSpec, dict, Path]:
    """The sweep spec, the base scenario's raw mapping (with `set` and overrides), its folder."""
    p = Path(path)
    raw = read_yaml(p)
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as err:
        raise UserError(_format_validation(str(p), err)) from None
    for section in (spec.grid, spec.zip):
        for key, factor in section.items():
            try:
                factor_values(factor)
            except ValueError as err:
                raise UserError(f"{p}: {key}: {err}") from None
    zip_lengths = {len(factor_values(f)) for f in spec.zip.values()}
    if len(zip_lengths) > 1:
        raise UserError(f"{p}: zip: all zipped factors need the same number of values")
    both = set(spec.grid) & set(spec.zip)
    if both:
        raise UserError(f"{p}: {sorted(both)[0]}: a factor cannot be in both grid and zip")
    if isinstance(spec.base, dict):
        base_raw, base_dir = dict(spec.base), p.parent
    else:
        base_path = (p.parent / spec.base) if not Path(spec.base).is_absolute() else Path(spec.base)
        base_raw, base_dir = read_yaml(base_path), base_path.parent
    for key, value in spec.set.items():
        set_path(base_raw, key, value, where=f"{p}: set.{key}")
    base_raw = apply_overrides(base_raw, overrides or [])
    return spec, base_raw, base_dir
