"""Small statistics without SciPy: Student-t quantiles and confidence intervals."""

from __future__ import annotations

import math

import numpy as np

# Two-sided 95 % Student-t quantiles t_{0.975, df} for df = 1..30 (standard tables).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_Z975 = 1.959963984540054


def t975(df: int) -> float:
    """t quantile for a two-sided 95 % interval; Cornish–Fisher expansion beyond the table."""
    if df < 1:
        return float("nan")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci95(values) -> tuple[float, float, int]:
    """Mean, half-width of the 95 % confidence interval (NaN with < 2 values), count."""
    x = np.asarray(values, float)
    x = x[np.isfinite(x)]
    n = x.size
    if n == 0:
        return float("nan"), float("nan"), 0
    mean = float(x.mean())
    if n < 2:
        return mean, float("nan"), n
    half = t975(n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return mean, half, n


def linear_percentiles(values: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """`np.percentile(values, qs)` (its default linear method), bit for bit, without its
    per-call overhead: the token engine takes two percentiles of every request's gaps."""
    v = np.sort(values)
    last = v.shape[0] - 1
    out = []
    for q in qs:
        at = (q / 100) * last
        i = int(at // 1)
        frac = at - i
        lo, hi = v[i], v[min(i + 1, last)]
        diff = hi - lo
        out.append(float(hi - diff * (1 - frac) if frac >= 0.5 else lo + diff * frac))
    return out
