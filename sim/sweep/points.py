"""Expand a sweep into points; each point's seed derives from the sweep seed and the point."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.sweep.spec import SweepSpec, factor_values


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


def expand(spec: SweepSpec, sweep_seed: int) -> list[Point]:
    """Cartesian product of `grid` factors times the rows of `zip` factors."""
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
