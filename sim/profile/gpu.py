"""Fit a server device's cost factors to measured GPU operator times (`splitsim calibrate`).

The unit time model is `bound_s(FLOPs / F, bytes / B, g) + overhead`
(`sim.costs.roofline`): F = peak FLOP/s x compute_efficiency, B = peak bandwidth x
bandwidth_efficiency, g = non_overlap (the share of the shorter of compute and memory time
not hidden behind the longer: the small-batch regime near the ridge point, where neither
bound holds) and a per-unit overhead (the unit's kernels' launch and tail). FLOPs and
bytes are the cost model's own (`sim.costs.work`) for the measured units, so the fitted
factors are what the simulator needs to reproduce the measurements.

The fit minimises the squared log ratio of predicted to measured time over all rows of the
fitted units, each model weighing the same: a grid over compute and bandwidth efficiency
(0.02-1), g (0-1) and the overhead (0-200 us), refined twelve times around the best point.
Needs numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sim.catalog.specs import DeviceSpec, ModelSpec
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


@dataclass(frozen=True)
class GpuFactors:
    compute_efficiency: float
    bandwidth_efficiency: float
    overhead_us: float
    non_overlap: float

    def apply(self, device: DeviceSpec) -> DeviceSpec:
        return device.model_copy(
            update={
                "compute_efficiency": self.compute_efficiency,
                "bandwidth_efficiency": self.bandwidth_efficiency,
                "overhead_us": self.overhead_us,
                "non_overlap": self.non_overlap,
            }
        )


def predict_s(frame: pd.DataFrame, device: DeviceSpec) -> np.ndarray:
    """The simulator's time of each measured row on `device` (roofline, not cost tables)."""
    out = np.empty(len(frame))
    for dtype, rows in frame.groupby("dtype"):
        idx = frame.index.get_indexer(rows.index)
        out[idx] = roofline_s(
            rows["flops"], rows["bytes"], device.flops_per_s(str(dtype)), device.bytes_per_s,
            device.non_overlap,
        ) + device.overhead_us * 1e-6  # fmt: skip
    return out


def fit_factors(frame: pd.DataFrame, device: DeviceSpec) -> GpuFactors:
    """The factors of `device` that best reproduce `frame`'s seconds (see the module doc)."""
    if frame.empty:
        raise ValueError("no measurements to fit")
    peak_f = np.array(
        [device.flops_per_s(str(d)) / device.compute_efficiency for d in frame["dtype"]]
    )
    x1 = frame["flops"].to_numpy(float) / peak_f  # seconds at full peak
    y1 = frame["bytes"].to_numpy(float) / (device.memory_bandwidth_gb_s * 1e9)
    log_t = np.log(frame["seconds"].to_numpy(float))
    per_model = frame.groupby("model")["model"].transform("size").to_numpy(float)
    w = 1.0 / per_model  # every model counts the same, whatever its number of rows
    lo = np.array([0.02, 0.02, 0.0, 0.0])  # compute eff., bandwidth eff., g, overhead (s)
    hi = np.array([1.0, 1.0, 1.0, 200e-6])
    centre, span = (lo + hi) / 2, (hi - lo) / 2
    best = centre
    for _ in range(12):
        ce, be, g, o = (
            np.unique(np.clip(np.linspace(c - s, c + s, 11), a, b))
            for c, s, a, b in zip(centre, span, lo, hi, strict=True)
        )
        x = x1 / ce[:, None, None, None, None]
        y = y1 / be[None, :, None, None, None]
        gg = g[None, None, :, None, None]
        p = np.maximum(x + gg * y, y + gg * x) + o[None, None, None, :, None]
        err = (w * (np.log(p) - log_t) ** 2).sum(axis=-1)
        i, k, j, m = np.unravel_index(np.argmin(err), err.shape)
        best = np.array([ce[i], be[k], g[j], o[m]])
        centre, span = best, span / 2.5
    ce_, be_, g_, o_ = best
    return GpuFactors(round(float(ce_), 4), round(float(be_), 4), round(float(o_) * 1e6, 2),
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


def calibrate(profile: VidurProfile, device: DeviceSpec, fit_units=("mlp",),
              max_tokens: int = 4096) -> Calibration:  # fmt: skip
    """Fit `device` to the profile (all models), and once per model with that model left out."""
    data = measurements(profile, max_tokens)
    train = data["unit"].isin(fit_units)
    if not train.any():
        raise ValueError(
            f"the profile has no {', '.join(fit_units)} rows up to {max_tokens} tokens"
        )
    fitted = fit_factors(data[train], device)
    data["before_s"] = predict_s(data, device)
    data["after_s"] = predict_s(data, fitted.apply(device))
    data["loo_s"] = np.nan
    left_out = {}
    names = data["model"].unique()
    for name in names if len(names) > 1 else []:
        rest = train & (data["model"] != name)
        factors = left_out[name] = fit_factors(data[rest], device)
        mine = data["model"] == name
        data.loc[mine, "loo_s"] = predict_s(data[mine], factors.apply(device))
    for col in ("before", "after", "loo"):
        data[f"err_{col}"] = data[f"{col}_s"] / data["seconds"] - 1
    return Calibration(device, fitted, left_out, data, tuple(fit_units), max_tokens)


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
