"""Fit a server device's cost factors to measured GPU operator times (`splitsim calibrate`).

The unit time model is `bound_s(FLOPs / F, bytes / B, g) + kernels x kernel_overhead`
(`sim.costs.roofline`, `sim.costs.kernels`): F = peak FLOP/s x compute_efficiency, B = peak
bandwidth x bandwidth_efficiency, g = non_overlap (the share of the shorter of compute and
memory time not hidden behind the longer: the small-batch regime near the ridge point,
where neither bound holds) and a fixed time per kernel (launch, tail, the floor of small
elementwise kernels), times the unit's kernels: the operators the profile sums into it (5
for a Llama MLP half, as the cost model counts). FLOPs and bytes are the cost model's own
(`sim.costs.work`) for the measured units, so the fitted factors are what the simulator
needs to reproduce the measurements.

The fit minimises the squared log ratio of predicted to measured time over all rows of the
fitted units, each model weighing the same: a grid over compute and bandwidth efficiency
(0.02-1), the kernel overhead (0-40 us) and g (0-1), refined twelve times around the best
point. Factors may be held fixed (`fixed`): where the models of one GPU cannot separate
bandwidth from overhead (two similar models), another GPU's fit of the same software's
kernels serves as a prior. Needs numpy only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from sim.catalog.specs import DeviceSpec, ModelSpec
from sim.costs.kernels import overheads_s
from sim.costs.roofline import roofline_s
from sim.costs.units import model_units
from sim.costs.work import Pass, _unit_cost
from sim.profile.vidur import VidurProfile

FIT_UNITS = ("mlp", "attn_proj", "embed")


def unit_work(spec: ModelSpec, unit: str, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FLOPs and bytes the cost model counts for a measured unit over `tokens` tokens.

    `attn_proj` is the attention half without the attention kernel: its projections, norm
    and activations (a pass with no query-key pairs and no KV-cache traffic).
    """
    kind = {"mlp": "mlp", "attn_proj": "attn", "embed": "embed"}[unit]
    u = next(x for x in model_units(spec, "sublayer") if x.kind == kind)
    n = np.asarray(tokens, float)
    flops, bytes_ = _unit_cost(spec, u, Pass(tokens=n, out_tokens=n))
    return np.broadcast_to(flops, n.shape).astype(float), np.broadcast_to(bytes_, n.shape) + 0.0


def measurements(profile: VidurProfile, max_tokens: int) -> pd.DataFrame:
    """Every measured unit time up to `max_tokens`, with its FLOPs and bytes."""
    parts = []
    for m in profile.models:
        t = m.times[m.times["tokens"] <= max_tokens].copy()
        t.insert(0, "model", m.spec.name)
        flops, bytes_ = np.zeros(len(t)), np.zeros(len(t))
        for unit, rows in t.groupby("unit"):
            idx = t.index.get_indexer(rows.index)
            flops[idx], bytes_[idx] = unit_work(m.spec, str(unit), rows["tokens"].to_numpy())
        t["flops"], t["bytes"] = flops, bytes_
        t["dtype"] = m.spec.activation_dtype
        parts.append(t)
    return pd.concat(parts, ignore_index=True)


FACTORS = ("compute_efficiency", "bandwidth_efficiency", "kernel_overhead_us", "non_overlap")


@dataclass(frozen=True)
class GpuFactors:
    """A server GPU's fitted factors: efficiencies, the fixed time per kernel and g."""

    compute_efficiency: float
    bandwidth_efficiency: float
    kernel_overhead_us: float
    non_overlap: float

    def apply(self, device: DeviceSpec) -> DeviceSpec:
        """`device` with these factors; its per-unit `overhead_us` is then 0 (all of a
        unit's fixed time is counted per kernel)."""
        return device.model_copy(
            update={
                "compute_efficiency": self.compute_efficiency,
                "bandwidth_efficiency": self.bandwidth_efficiency,
                "overhead_us": 0.0,
                "kernel_overhead_us": self.kernel_overhead_us,
                "non_overlap": self.non_overlap,
            }
        )


def predict_s(frame: pd.DataFrame, device: DeviceSpec) -> np.ndarray:
    """The simulator's time of each measured row on `device` (roofline, not cost tables):
    `bound_s` plus `overhead_us` and `kernel_overhead_us` per kernel of the row."""
    out = np.empty(len(frame))
    fixed_s = overheads_s(frame["kernels"].to_numpy(float), device)
    for dtype, rows in frame.groupby("dtype"):
        idx = frame.index.get_indexer(rows.index)
        out[idx] = roofline_s(
            rows["flops"], rows["bytes"], device.flops_per_s(str(dtype)), device.bytes_per_s,
            device.non_overlap,
        ) + fixed_s[idx]  # fmt: skip
    return out


# search box of each factor: compute eff., bandwidth eff., kernel overhead (s), g
_LO = np.array([0.02, 0.02, 0.0, 0.0])
_HI = np.array([1.0, 1.0, 40e-6, 1.0])


def fit_factors(
    frame: pd.DataFrame, device: DeviceSpec, fixed: dict[str, float] | None = None
) -> GpuFactors:
    """The factors of `device` that best reproduce `frame`'s seconds (see the module doc).

    `fixed` holds factors taken as given (e.g. from another GPU's fit) instead of fitted:
    `{name: value}` with names from `FACTORS` (`kernel_overhead_us` in microseconds)."""
    per_model = frame.groupby("model")["model"].transform("size").to_numpy(float)
    w = 1.0 / per_model  # every model counts the same, whatever its number of rows
    return grid_fit(frame, device, lambda r, o: (w * r**2).sum(axis=-1), fixed)


def grid_fit(
    frame: pd.DataFrame,
    device: DeviceSpec,
    objective: Callable[[np.ndarray, np.ndarray], np.ndarray],
    fixed: dict[str, float] | None = None,
) -> GpuFactors:
    """The factors minimising `objective(r, o)` by a grid search that shrinks round by round:
    `r` is log(predicted / measured) on a (compute, bandwidth, overhead, non_overlap, row)
    grid, `o` the overhead values (s); the objective returns one value per grid point."""
    if frame.empty:
        raise ValueError("no measurements to fit")
    peak_f = np.array(
        [device.flops_per_s(str(d)) / device.compute_efficiency for d in frame["dtype"]]
    )
    x1 = frame["flops"].to_numpy(float) / peak_f  # seconds at full peak
    y1 = frame["bytes"].to_numpy(float) / (device.memory_bandwidth_gb_s * 1e9)
    kernels = frame["kernels"].to_numpy(float)
    log_t = np.log(frame["seconds"].to_numpy(float))
    lo, hi = _LO.copy(), _HI.copy()
    for name, value in (fixed or {}).items():
        i = FACTORS.index(name)
        lo[i] = hi[i] = value * 1e-6 if name == "kernel_overhead_us" else value
    centre, span = (lo + hi) / 2, (hi - lo) / 2
    best = centre
    for _ in range(12):
        ce, be, o, g = (
            np.unique(np.clip(np.linspace(c - s, c + s, 11), a, b))
            for c, s, a, b in zip(centre, span, lo, hi, strict=True)
        )
        x = x1 / ce[:, None, None, None, None]
        y = y1 / be[None, :, None, None, None]
        gg = g[None, None, None, :, None]
        oo = o[None, None, :, None, None] * kernels
        p = np.maximum(x + gg * y, y + gg * x) + oo
        with np.errstate(divide="ignore"):
            err = objective(np.log(p) - log_t, o)
        i, k, m, j = np.unravel_index(np.argmin(err), err.shape)
        best = np.array([ce[i], be[k], o[m], g[j]])
        centre, span = best, span / 2.5
    ce_, be_, o_, g_ = best
    return GpuFactors(round(float(ce_), 4), round(float(be_), 4), round(float(o_) * 1e6, 3),
                      round(float(g_), 4))  # fmt: skip


@dataclass
class Calibration:
    """Errors of the device before and after fitting, and with each model left out."""

    device: DeviceSpec
    fitted: GpuFactors
    left_out: dict[str, GpuFactors]
    rows: pd.DataFrame  # one row per measurement: predictions and relative errors
    fit_units: tuple[str, ...]
    max_tokens: int
    fixed: dict[str, float] = field(default_factory=dict)  # factors held, not fitted


def calibrate(profile: VidurProfile, device: DeviceSpec, fit_units=("mlp",),
              max_tokens: int = 4096, fixed: dict[str, float] | None = None) -> Calibration:  # fmt: skip
    """Fit `device` to the profile (all models), and once per model with that model left out
    (`fixed` factors, e.g. another GPU's fit as a prior, are held in every fit)."""
    data = measurements(profile, max_tokens)
    train = data["unit"].isin(fit_units)
    if not train.any():
        raise ValueError(
            f"the profile has no {', '.join(fit_units)} rows up to {max_tokens} tokens"
        )
    fitted = fit_factors(data[train], device, fixed)
    data["before_s"] = predict_s(data, device)
    data["after_s"] = predict_s(data, fitted.apply(device))
    data["loo_s"] = np.nan
    left_out = {}
    names = data["model"].unique()
    for name in names if len(names) > 1 else []:
        rest = train & (data["model"] != name)
        factors = left_out[name] = fit_factors(data[rest], device, fixed)
        mine = data["model"] == name
        data.loc[mine, "loo_s"] = predict_s(data[mine], factors.apply(device))
    for col in ("before", "after", "loo"):
        data[f"err_{col}"] = data[f"{col}_s"] / data["seconds"] - 1
    return Calibration(device, fitted, left_out, data, tuple(fit_units), max_tokens,
                       dict(fixed or {}))  # fmt: skip


def summary(cal: Calibration) -> pd.DataFrame:
    """Median and worst |relative error| per model and unit: before, after, model left out."""
    out = []
    for (model, unit), rows in cal.rows.groupby(["model", "unit"], sort=True):
        rec = {"model": model, "unit": unit, "rows": len(rows),
               "tokens": f"{rows['tokens'].min()}-{rows['tokens'].max()}"}  # fmt: skip
        for col in ("before", "after", "loo"):
            e = rows[f"err_{col}"].abs()
            rec[f"{col}_median"] = float(e.median()) if e.notna().any() else np.nan
            rec[f"{col}_worst"] = float(e.max()) if e.notna().any() else np.nan
        out.append(rec)
    return pd.DataFrame(out)


def cost_table(profile: VidurProfile, device_name: str, max_tokens: int) -> pd.DataFrame:
    """The measured units as a cost table (`sim.costs.tables`): the MLP half (`mlp`, read
    at sublayer granularity) and the embedding, `forward` rows per token count and `decode`
    rows (one new token: the one-token time, at every context the file's token counts
    span). Attention is not covered (its kernel is not measured): it stays roofline."""
    rows = []
    for m in profile.models:
        t = m.times[(m.times["tokens"] <= max_tokens) & m.times["unit"].isin(["mlp", "embed"])]
        for unit, part in t.groupby("unit"):
            one = part[part["tokens"] == part["tokens"].min()]["seconds"].iloc[0]
            for n, s in zip(part["tokens"], part["seconds"], strict=True):
                rows.append((m.spec.name, unit, -1 if unit == "embed" else 0, device_name,
                             "forward", int(n), 1, float(f"{s:.6g}")))  # fmt: skip
                rows.append((m.spec.name, unit, -1 if unit == "embed" else 0, device_name,
                             "decode", int(n), 1, float(f"{one:.6g}")))  # fmt: skip
    from sim.costs.tables import COLUMNS

    return pd.DataFrame(rows, columns=list(COLUMNS))
