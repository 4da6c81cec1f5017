"""Strict config base class and the distributions scenarios use for sizes and jitter."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from sim import limits as lim


class Section(BaseModel):
    """A config section: unknown keys are errors that list the valid keys."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            valid = set(cls.model_fields)
            for key in data:
                if key not in valid:
                    names = ", ".join(sorted(valid))
                    raise ValueError(f"unknown key '{key}'; valid keys: {names}")
        return data


class Fixed(Section):
    kind: Literal["fixed"] = "fixed"
    value: lim.DIST_VALUE.type

    @property
    def support(self) -> tuple[float | None, float | None]:
        """Lowest and highest value a draw can take, where known before sampling."""
        return self.value, self.value

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.full(n, self.value)

    @property
    def upper(self) -> float:
        return self.value

    @property
    def expected(self) -> float:
        return self.value


class Uniform(Section):
    kind: Literal["uniform"]
    low: lim.DIST_VALUE.type
    high: lim.DIST_VALUE.type

    @property
    def support(self) -> tuple[float | None, float | None]:
        return self.low, self.high

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if self.high < self.low:
            raise ValueError("high must be >= low")
        return self

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.uniform(self.low, self.high, n)

    @property
    def upper(self) -> float:
        return self.high

    @property
    def expected(self) -> float:
        return (self.low + self.high) / 2


class LogNormal(Section):
    """Log-normal with the given median and log-space sigma, clipped to [min, max]."""

    kind: Literal["lognormal"]
    median: lim.DIST_SCALE.type
    sigma: lim.LOG_SIGMA.type
    min: lim.DIST_VALUE.type = 0.0
    max: lim.DIST_MAX.type = Field(np.inf, description=".inf: no upper clip")

    @property
    def support(self) -> tuple[float | None, float | None]:
        return (self.min if self.min > 0 else None), (self.max if self.max < np.inf else None)

    @model_validator(mode="after")
    def _ordered(self) -> LogNormal:
        if self.max < self.min:
            raise ValueError("max must be >= min")
        return self

    @property
    def upper(self) -> float:
        return self.max

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.clip(
            self.median * np.exp(self.sigma * rng.standard_normal(n)), self.min, self.max
        )

    @property
    def expected(self) -> float:
        """The mean of the clipped distribution: the clipped tails' masses at min and max
        and the partial expectation between them (not the clip of the unclipped mean)."""
        lo, hi, m, s = self.min, self.max, self.median, self.sigma
        if s == 0:
            return float(np.clip(m, lo, hi))

        def phi(x: float) -> float:  # the standard normal CDF at log-space point x
            return 0.5 * (1.0 + math.erf((math.log(x / m) / s) / math.sqrt(2.0)))

        def phi_shift(x: float) -> float:  # the same, shifted by sigma (partial mean)
            return 0.5 * (1.0 + math.erf((math.log(x / m) / s - s) / math.sqrt(2.0)))

        below = phi(lo) if lo > 0 else 0.0
        above = 1.0 - phi(hi) if np.isfinite(hi) else 0.0
        inner = (phi_shift(hi) if np.isfinite(hi) else 1.0) - (phi_shift(lo) if lo > 0 else 0.0)
        tails = lo * below + (hi * above if above else 0.0)
        return tails + m * math.exp(s * s / 2) * inner


class Exponential(Section):
    kind: Literal["exponential"]
    mean: lim.DIST_SCALE.type

    @property
    def support(self) -> tuple[float | None, float | None]:
        return None, None

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.exponential(self.mean, n)

    @property
    def upper(self) -> float:
        return float("inf")

    @property
    def expected(self) -> float:
        return self.mean


class Empirical(Section):
    """Values drawn with replacement from a CSV column (path relative to the scenario)."""

    kind: Literal["empirical"]
    path: str
    column: str
    _values: np.ndarray | None = PrivateAttr(default=None)

    @property
    def support(self) -> tuple[float | None, float | None]:
        return None, None  # the file's values are checked when it is read

    def bind(self, values: np.ndarray) -> None:
        """Attach the column's values (loaded by the scenario loader)."""
        self._values = values

    @property
    def values(self) -> np.ndarray:
        """The column's values (each drawn with equal probability)."""
        assert self._values is not None, "empirical values not loaded"
        return np.asarray(self._values, float)

    @property
    def upper(self) -> float:
        assert self._values is not None, "empirical values not loaded"
        return float(np.max(self._values))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        assert self._values is not None, "empirical values not loaded"
        return rng.choice(self._values, n)

    @property
    def expected(self) -> float:
        assert self._values is not None, "empirical values not loaded"
        return float(np.mean(self._values))


Distribution = Annotated[
    Fixed | Uniform | LogNormal | Exponential | Empirical, Field(discriminator="kind")
]


def as_distribution(value: Any) -> Any:
    """Let a bare number stand for a fixed distribution."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {"kind": "fixed", "value": value}
    if isinstance(value, dict) and "kind" not in value and set(value) == {"value"}:
        return {"kind": "fixed", **value}
    return value
