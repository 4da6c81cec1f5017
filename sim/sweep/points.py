"""Expand a sweep into points; each point's seed derives from the sweep seed and the point."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.errors import UserError
from sim.sweep.spec import Factor, Range, SweepSpec, factor_values

# Bounds on what one sweep may expand to, checked before anything is created or run:
# grid points, and tasks (points x replications, x policies for a capacity search).
MAX_POINTS = 10_000
MAX_TASKS = 100_000


@dataclass(frozen=True)
class Point:
    """One grid point: its index, the varied values and its own seed."""

    index: int
    params: dict[str, Any]
    seed: int

    @property
    def key(self) -> str:
        return point_key(self.params)


def point_key(params: dict[str, Any]) -> str:
    """Content key of a point: the same values give the same key, whatever else is swept."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def point_seed(sweep_seed: int, params: dict[str, Any]) -> int:
    """A seed from the sweep seed and the point's values only (adding points changes nothing)."""
    digest = int(point_key(params), 16)
    seq = np.random.SeedSequence([sweep_seed, digest & 0xFFFFFFFF, digest >> 32])
    return int(seq.generate_state(1, np.uint32)[0])


def factor_length(factor: Factor) -> int:
    """How many values a factor has, without generating them."""
    return factor.num if isinstance(factor, Range) else len(factor)


def count_points(spec: SweepSpec, source: str = "sweep") -> int:
    """Points the sweep expands to: the product of the grid factors' lengths times the
    zip factors' common length (exact integers, so a huge grid cannot overflow)."""
    zip_lengths = {k: factor_length(v) for k, v in spec.zip.items()}
    if len(set(zip_lengths.values())) > 1:
        sizes = ", ".join(f"{k}: {n}" for k, n in zip_lengths.items())
        raise UserError(f"{source}: zip factors must have the same number of values ({sizes})")
    rows = next(iter(zip_lengths.values()), 1)
    return math.prod(factor_length(v) for v in spec.grid.values()) * rows


def check_size(spec: SweepSpec, source: str, tasks_per_point: int) -> tuple[int, int]:
    """(points, tasks) of the sweep, or a UserError when either exceeds its bound.

    Computed from the factors' lengths before expanding, so an oversized grid (say, from
    a YAML anchor bomb) fails at once instead of filling memory and disk.
    """
    points = count_points(spec, source)
    tasks = points * tasks_per_point
    if points > MAX_POINTS or tasks > MAX_TASKS:
        raise UserError(
            f"{source}: the sweep expands to {points:,} points and {tasks:,} tasks "
            f"({tasks_per_point:,} per point); at most {MAX_POINTS:,} points and "
            f"{MAX_TASKS:,} tasks per sweep: use fewer factor values or replications, "
            "or split the sweep"
        )
    return points, tasks


def expand(spec: SweepSpec, sweep_seed: int, source: str = "sweep") -> list[Point]:
    """Cartesian product of `grid` factors times the rows of `zip` factors (at most
    MAX_POINTS of them; `source` names the sweep in the error)."""
    check_size(spec, source, 1)
    grid_keys = list(spec.grid)
    grid_vals = [factor_values(spec.grid[k]) for k in grid_keys]
    zip_keys = list(spec.zip)
    zip_rows = list(zip(*(factor_values(spec.zip[k]) for k in zip_keys), strict=True))
    if not zip_rows:
        zip_rows = [()]
    points = []
    for combo in itertools.product(*grid_vals):
        for row in zip_rows:
            params = dict(zip(grid_keys, combo, strict=True)) | dict(
                zip(zip_keys, row, strict=True)
            )
            points.append(Point(len(points), params, point_seed(sweep_seed, params)))
    return points
