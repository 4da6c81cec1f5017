"""Fit a device's roofline factors to measured unit times, and score the roofline against them.

The roofline predicts `max(FLOPs / F, bytes / B) + overhead` per unit. Given a cost table
(measured seconds) and the FLOPs and bytes the cost model counts for the same units, the
fit finds the achievable FLOP/s F, bandwidth B and per-unit overhead that minimise the
squared relative error (a log-spaced grid on F and B, refined twice; the overhead has a
closed form for each pair). Needs numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sim.catalog.specs import DeviceSpec, ModelSpec
from sim.costs import model_units, request_work


def work_rows(spec: ModelSpec, table: pd.DataFrame) -> pd.DataFrame:
    """The table's batch-1 rows of `spec` with the FLOPs and bytes the cost model counts."""
    rows = table[(table["model"] == spec.name) & (table["batch"] == 1)].copy()
    flops, bytes_ = np.zeros(len(rows)), np.zeros(len(rows))
    works: dict = {}
    for j, r in enumerate(rows.itertuples(index=False)):
        gran = "sublayer" if r.unit_kind in ("attn", "mlp") else "block"
        units = model_units(spec, gran)
        i = next(k for k, u in enumerate(units) if u.kind == r.unit_kind)
        n = int(r.tokens)
        key = (r.phase, n, gran)
        if key not in works:
            if r.phase == "forward":
                works[key] = request_work(spec, "forward", n, 0, gran)
            else:  # prefill over n, then one decode step attending to n + 1 tokens
                works[key] = request_work(spec, "generate", n, 2, gran)
        w = works[key]
        if r.phase == "decode":
            c = w.ctx_first
            flops[j] = w.step_flops0[i] + w.step_flops1[i] * c
            bytes_[j] = w.step_bytes0[i] + w.step_bytes1[i] * c
        else:
            flops[j], bytes_[j] = w.pass_flops[i], w.pass_bytes[i]
    rows["flops"], rows["bytes"] = flops, bytes_
    return rows


def roofline_seconds(flops, bytes_, flops_per_s: float, bytes_per_s: float, overhead_s: float):
    return (
        np.maximum(np.asarray(flops) / flops_per_s, np.asarray(bytes_) / bytes_per_s) + overhead_s
    )


@dataclass(frozen=True)
class Factors:
    flops_per_s: float  # achievable
    bytes_per_s: float  # achievable
    overhead_s: float
    median_rel_error: float


def _best_overhead(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Overhead >= 0 minimising sum(((p + o - t) / t)^2), for each row of p."""
    w = 1.0 / t**2
    o = ((t - p) * w).sum(axis=-1) / w.sum()
    return np.maximum(o, 0.0)


def fit_factors(flops, bytes_, seconds, guess: tuple[float, float] = (1e10, 1e10)) -> Factors:
    """Achievable FLOP/s, bandwidth and overhead that best reproduce `seconds`."""
    f, b, t = (np.asarray(v, float) for v in (flops, bytes_, seconds))
    lf, lb = np.log10(guess[0]), np.log10(guess[1])
    span = 3.0
    for _ in range(4):
        gf = 10 ** np.linspace(lf - span, lf + span, 61)
        gb = 10 ** np.linspace(lb - span, lb + span, 61)
        p = np.maximum(f / gf[:, None, None], b / gb[None, :, None])  # (F, B, rows)
        o = _best_overhead(p, t)
        err = (((p + o[..., None] - t) / t) ** 2).sum(axis=-1)
        i, k = np.unravel_index(np.argmin(err), err.shape)
        lf, lb = np.log10(gf[i]), np.log10(gb[k])
        span /= 8
    F, B = 10**lf, 10**lb
    p = np.maximum(f / F, b / B)
    o = float(_best_overhead(p[None], t)[0])
    rel = np.abs(p + o - t) / t
    return Factors(F, B, o, float(np.median(rel)))


def fitted_device(
    name: str,
    factors: Factors,
    peak_flops: float,
    peak_bytes: float,
    memory_gb: float,
    cost_table: str | None,
    kind: str = "client",
    description: str = "",
) -> DeviceSpec:
    """A device spec with the fitted factors relative to the given peaks (peaks raised if exceeded)."""
    pf = float(f"{max(peak_flops, factors.flops_per_s) / 1e12:.4g}") * 1e12
    pb = float(f"{max(peak_bytes, factors.bytes_per_s) / 1e9:.4g}") * 1e9
    return DeviceSpec(
        name=name,
        kind=kind,  # type: ignore[arg-type]
        description=description,
        peak_tflops={"fp32": float(f"{pf / 1e12:.4g}")},
        memory_bandwidth_gb_s=float(f"{pb / 1e9:.4g}"),
        memory_gb=memory_gb,
        compute_efficiency=min(round(factors.flops_per_s / pf, 6), 1.0),
        bandwidth_efficiency=min(round(factors.bytes_per_s / pb, 6), 1.0),
        overhead_us=round(factors.overhead_s * 1e6, 3),
        cost_table=cost_table,
    )


def device_yaml(device: DeviceSpec, comment: str = "") -> str:
    """The device as a `devices:` entry a scenario can include."""
    import yaml

    fields = device.model_dump(exclude={"name"}, exclude_none=True)
    if not fields.get("source"):
        fields.pop("source", None)
    text = yaml.safe_dump({device.name: fields}, sort_keys=False)
    head = "".join(f"# {line}\n" for line in comment.splitlines())
    return head + text
