"""Measured cost tables: per-unit seconds from a profiler, in place of the roofline estimate.

A cost table is a CSV file with one row per measurement (`splitsim profile` writes them):

| column | meaning |
|---|---|
| `model` | model name as the scenario / catalog knows it (`gpt2`) |
| `unit_kind` | `embed`, `block`, `attn`, `mlp` or `head` (see `sim.costs.units`) |
| `unit_index` | layer index for `block`/`attn`/`mlp`; -1 for `embed` and `head` |
| `device` | the device the measurement was taken on (free text) |
| `phase` | `forward` (one pass over `tokens` tokens, logits for every position), `prefill` (the same, logits for the last position only) or `decode` (one new token attending to `tokens` cached tokens) |
| `tokens` | sequence length of the pass, or KV-cache length of the decode step |
| `batch` | sequences per pass (the simulator reads batch 1; other sizes are kept for reference) |
| `seconds` | wall time of the unit for the whole batch (a median of repeats) |
| `energy_j` | optional: energy of the unit for the whole batch |

How a table is used: it is attached to a device (`cost_table:` in a device spec, a path
relative to the scenario file). For every (model, unit kind, phase, batch) the rows of all
layers are pooled and fitted by least squares on relative error: `[1, n, n^2]` for
`forward`/`prefill` (attention's quadratic term) and `[1, c]` for `decode` (fewer distinct
lengths give a lower degree). A unit of a request is timed from the table if the table has
fits for the model and unit kind at batch 1 for every phase the request needs; otherwise
the roofline times it. A generate request's prefill uses `prefill` rows, or `forward` rows
for units other than the head, whose prefill cost is the one-token `decode` head cost.
Table times include every overhead, so the device's `overhead_us` is not added. Lengths
outside the measured range are extrapolated from the fit and warned about once per run
(per table, model and phase). Encoder-decoder models are always timed by the roofline.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sim import limits as lim
from sim.errors import UserError

COLUMNS: tuple[str, ...] = (
    "model",
    "unit_kind",
    "unit_index",
    "device",
    "phase",
    "tokens",
    "batch",
    "seconds",
)
OPTIONAL_COLUMNS: tuple[str, ...] = ("energy_j",)
UNIT_KINDS: tuple[str, ...] = ("embed", "block", "attn", "mlp", "head")
PHASES: tuple[str, ...] = ("forward", "prefill", "decode")


class CostTableWarning(UserWarning):
    """A request falls outside the lengths a cost table measured (the fit is extrapolated)."""


@dataclass(frozen=True)
class Fit:
    """seconds(n) = sum(coef[k] * n**k), fitted on lengths lo..hi."""

    coef: tuple[float, ...]
    lo: float
    hi: float
    points: int

    def __call__(self, n) -> np.ndarray:
        n = np.asarray(n, float)
        out = sum(c * n**k for k, c in enumerate(self.coef))
        return np.maximum(out, 0.0)


def fit_curve(n, seconds, degree: int) -> Fit:
    """Least squares on relative error with basis 1, n, ..., n^degree.

    The degree drops to (distinct lengths - 1) when there are too few distinct lengths.
    """
    n = np.asarray(n, float)
    y = np.asarray(seconds, float)
    degree = min(degree, len(np.unique(n)) - 1)
    # scale n so the normal equations stay well conditioned
    scale = float(np.max(n)) or 1.0
    basis = np.vander(n / scale, degree + 1, increasing=True)
    w = 1.0 / np.maximum(y, 1e-12)
    coef, *_ = np.linalg.lstsq(basis * w[:, None], y * w, rcond=None)
    coef = tuple(float(c) / scale**k for k, c in enumerate(coef))
    return Fit(coef, float(n.min()), float(n.max()), len(n))


def _fail(path: Path, msg: str) -> UserError:
    return UserError(f"{path}: {msg}")


def read_cost_table(path: str | Path) -> pd.DataFrame:
    """The rows of a cost table, checked; any problem is a one-line `UserError`."""
    path = Path(path)
    if path.is_dir():
        raise _fail(path, "is a folder; expected a cost table (CSV)")
    if not path.is_file():
        raise _fail(path, "cost table not found")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        reason = str(err).splitlines()[0] if str(err) else "unreadable"
        raise _fail(path, f"not a readable CSV file: {reason}") from None
    except OSError as err:
        raise _fail(path, f"cannot read the file ({err.strerror or err})") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise _fail(
            path,
            f"cost table needs column '{missing[0]}'; required: {', '.join(COLUMNS)} "
            f"(optional: {', '.join(OPTIONAL_COLUMNS)})",
        )
    if frame.empty:
        raise _fail(path, "cost table has no rows")
    for col in ("model", "device"):
        frame[col] = frame[col].astype(str)
    for col, allowed in (("unit_kind", UNIT_KINDS), ("phase", PHASES)):
        frame[col] = frame[col].astype(str)
        bad = sorted(set(frame[col]) - set(allowed))
        if bad:
            raise _fail(
                path, f"column '{col}': unknown value '{bad[0]}'; allowed: {', '.join(allowed)}"
            )
    numeric = {
        "unit_index": lim.UNIT_INDEX,
        "tokens": lim.TOKENS,
        "batch": lim.BATCH,
        "seconds": lim.UNIT_SECONDS,
    }
    if "energy_j" in frame.columns:
        numeric["energy_j"] = lim.ENERGY_J
    for col, bound in numeric.items():
        frame[col] = lim.column_in_bound(frame, col, str(path), bound)
    for col in ("unit_index", "tokens", "batch"):
        frame[col] = frame[col].astype(int)
    return frame


@dataclass
class CostTable:
    """Fitted curves of one table, by (device, model, unit kind, phase, batch)."""

    path: Path
    fits: dict[tuple[str, str, str, str, int], Fit]
    devices: tuple[str, ...]
    _warned: set = field(default_factory=set)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, path: Path) -> CostTable:
        fits = {}
        keys = ["device", "model", "unit_kind", "phase", "batch"]
        for key, rows in frame.groupby(keys, sort=True):
            degree = 1 if key[3] == "decode" else 2
            fits[(key[0], key[1], key[2], key[3], int(key[4]))] = fit_curve(
                rows["tokens"], rows["seconds"], degree
            )
        return cls(path, fits, tuple(sorted(frame["device"].unique())))

    def device_for(self, device_name: str) -> str:
        """Which of the table's devices serves `device_name`: its own rows, or the only one."""
        if device_name in self.devices:
            return device_name
        if len(self.devices) == 1:
            return self.devices[0]
        raise UserError(
            f"{self.path}: no rows for device '{device_name}'; the table holds "
            f"{', '.join(self.devices)} (attach a table with one device, or name it the same)"
        )

    def fit(self, device: str, model: str, kind: str, phase: str, batch: int = 1) -> Fit | None:
        return self.fits.get((device, model, kind, phase, batch))

    def _warn(self, model: str, kind: str, phase: str, n: float, fit: Fit) -> None:
        key = (model, phase)
        if key in self._warned:
            return
        self._warned.add(key)
        # explicit location: the message is about the table, not a line of this package
        warnings.warn_explicit(
            f"cost table {self.path.name}: {model} {phase} at {n:g} tokens is outside the "
            f"measured {fit.lo:g}..{fit.hi:g} ({kind}); extrapolating the fitted curve "
            "(warned once per run)",
            CostTableWarning,
            "splitsim",
            0,
        )

    def _at(self, dev, model, kind, phase, n: float) -> float:
        fit = self.fits[(dev, model, kind, phase, 1)]
        if n < fit.lo or n > fit.hi:
            self._warn(model, kind, phase, n, fit)
        return float(fit(n))

    def unit_seconds(self, work, model, device_name: str, task: str, prompt_tokens: int):
        """Seconds of each unit of `work` from the table; NaN where the table does not cover it."""
        out = np.full(work.n_units, np.nan)
        if model.architecture == "encoder_decoder":
            return out
        dev = self.device_for(device_name)
        name = model.name
        n = model.image_tokens if model.input == "image" else prompt_tokens
        cache: dict[str, float] = {}
        for i, unit in enumerate(work.units):
            kind = unit.kind
            if kind not in cache:
                cache[kind] = self._kind_seconds(dev, name, kind, task, n, work)
            out[i] = cache[kind]
        return out

    def _kind_seconds(self, dev, name, kind, task, n, work) -> float:
        def has(phase):
            return (dev, name, kind, phase, 1) in self.fits

        if task != "generate":
            return self._at(dev, name, kind, "forward", n) if has("forward") else math.nan
        prefill = self._prefill(dev, name, kind, n, has)
        if work.steps <= 0:
            return prefill
        if math.isnan(prefill) or not has("decode"):
            return math.nan
        fit = self.fits[(dev, name, kind, "decode", 1)]
        # a step at context c (tokens attended, the new one included) has c - 1 cached
        first = work.ctx_first - 1
        last = first + work.steps - 1
        for c in (first, last):
            if c < fit.lo or c > fit.hi:
                self._warn(name, kind, "decode", c, fit)
        ctx = np.arange(first, last + 1, dtype=float)
        return prefill + float(fit(ctx).sum())

    def _prefill(self, dev, name, kind, n, has) -> float:
        if has("prefill"):
            return self._at(dev, name, kind, "prefill", n)
        if kind == "head":
            return self._at(dev, name, kind, "decode", n) if has("decode") else math.nan
        return self._at(dev, name, kind, "forward", n) if has("forward") else math.nan


_TABLES: dict[tuple[str, float], CostTable] = {}


def load_cost_table(path: str | Path) -> CostTable:
    """A table's fits, cached per file (reloaded if the file changes)."""
    p = Path(path).resolve()
    if not p.is_file():
        raise _fail(Path(path), "cost table not found")
    key = (str(p), p.stat().st_mtime)
    if key not in _TABLES:
        _TABLES[key] = CostTable.from_frame(read_cost_table(p), p)
    return _TABLES[key]


def reset_warnings() -> None:
    """Warn again about extrapolation (a new run)."""
    for table in _TABLES.values():
        table._warned.clear()


def table_unit_times_s(work, model, device, task: str, prompt_tokens: int, roofline_times):
    """`roofline_times` with every unit the device's cost table covers replaced by the table's."""
    if device.cost_table is None:
        return roofline_times
    table = load_cost_table(device.cost_table)
    measured = table.unit_seconds(work, model, device.name, task, prompt_tokens)
    return np.where(np.isnan(measured), roofline_times, measured)
