"""Strict config base class and the distributions scenarios use for sizes and jitter."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PrivateAttr, model_validator


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
    value: float = Field(ge=0)

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
    low: float = Field(ge=0)
    high: float = Field(ge=0)

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
    median: PositiveFloat
    sigma: float = Field(ge=0)
    min: float = Field(0.0, ge=0)
    max: float = Field(np.inf, gt=0)

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
        return float(np.clip(self.median * np.exp(self.sigma**2 / 2), self.min, self.max))


class Exponential(Section):
    kind: Literal["exponential"]
    mean: PositiveFloat

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

    def bind(self, values: np.ndarray) -> None:
        """Attach the column's values (loaded by the scenario loader)."""
        self._values = values

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
