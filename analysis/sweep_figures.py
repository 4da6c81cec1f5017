"""Figures of sweeps and capacity searches: policies against offered load or batch limit.

Drawn from `sweep_ci.csv` (a line per policy with its 95 % band, one factor varied) and
`capacity_ci.csv` (bars per policy); a sweep that varies more than the plotted factor is
refused rather than averaged.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.draw import (
    figure_legend,
    log_axis_if_wide,
    panel_figure,
    plain_ticks,
    policy_lines,
    set_xlabels,
)
from analysis.io import MissingData, require_columns, require_rows
from analysis.labels import axis_label, time_unit
from analysis.style import (
    COLUMN_WIDTH_IN,
    MAX_FIGURE_HEIGHT_IN,
    ordered_policies,
    policy_style,
    styled,
)

POSITIVE = (0.0, np.inf)
PERCENT = (0.0, 100.0)


# --- sweep_ci helpers ---------------------------------------------------------------------


def _load_axis(ci: pd.DataFrame) -> str:
    """The column to plot against: a varied `load` (the normalised load the sweep set, as
    claims.md reports it), else the offered rate when it varies, else a varied rate."""
    varied = [c for c in ci.columns if "." in c and ci[c].nunique() > 1]
    numeric = [c for c in varied if pd.api.types.is_numeric_dtype(ci[c])]
    load = [c for c in numeric if c.rsplit(".", 1)[-1] == "load"]
    if load:
        return load[0]
    col = "offered_rate_per_s_mean"
    if col in ci and ci[col].round(9).nunique() > 1:
        return col
    rate = [c for c in numeric if c.rsplit(".", 1)[-1] == "rate_per_s"]
    if rate:
        return rate[0]
    raise MissingData("sweep_ci: the arrival rate does not vary across the sweep's points")


def _ci_names(metrics: Iterable[str]) -> list[str]:
    """The sweep_ci columns of `metrics`: each one's mean and 95 % half-width."""
    return [f"{m}_{s}" for m in metrics for s in ("mean", "ci95")]


def _one_factor(ci: pd.DataFrame, x: str, what: str) -> None:
    """Refuse a sweep_ci with more than one row per policy and `x` (another factor varies)."""
    if ci.assign(_x=ci[x].round(9)).duplicated(["policy", "_x"]).any():
        others = [c for c in ci.columns if "." in c and c != x and ci[c].nunique() > 1]
        extra = f" ({', '.join(others)})" if others else ""
        raise MissingData(f"sweep_ci varies more than {what}{extra}; plot one slice")


def _ci_panels(
    ci: pd.DataFrame,
    x: str,
    panels: list[tuple],
    panel_height: float = 1.45,
    legend: bool = True,
    bars: bool = False,
) -> tuple[Figure, list[Axes]]:
    """A panel per (metric, y label, scale, clip): a line per policy with its 95 % band
    (error bars at every point when `bars`); ticks at the swept values when they are few."""
    fig, axes = panel_figure(len(panels), sharex=True, panel_height=panel_height)
    for ax, (metric, label, scale, clip) in zip(axes, panels, strict=True):
        policy_lines(ax, ci, x, f"{metric}_mean", scale, ci=f"{metric}_ci95", clip=clip,
                     bars=bars)  # fmt: skip
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
    set_xlabels(axes, axis_label(x.removesuffix("_mean")))
    _swept_ticks(axes[-1], ci[x])
    if legend:
        figure_legend(fig, axes)
    return fig, axes


def _swept_ticks(ax: Axes, values: pd.Series, most: int = 10) -> None:
    """x ticks at the swept values when there are at most `most` of them on a linear axis,
    so every point sits on a tick."""
    distinct = np.unique(values.to_numpy(float).round(9))
    if ax.get_xscale() == "linear" and 1 < distinct.size <= most:
        plain_ticks(ax, distinct, most=most)


# --- against arrival rate -----------------------------------------------------------------


@styled
def queueing(ci: pd.DataFrame) -> Figure:
    """Mean and maximum server wait and SLA violation rate against arrival rate, 95 % bands."""
    metrics = ("wait_mean_s", "wait_max_s", "sla_violation_rate")
    require_columns(ci, ["policy", *_ci_names(metrics)], "sweep_ci")
    require_rows(ci, "sweep_ci")
    x = _load_axis(ci)
    _one_factor(ci, x, "the arrival rate")
    scale, unit = time_unit(float(ci["wait_max_s_mean"].max()))
    panels = [("wait_mean_s", f"Mean wait ({unit})", scale, POSITIVE),
              ("wait_max_s", f"Max. wait ({unit})", scale, POSITIVE),
              ("sla_violation_rate", "SLA violations (%)", 100.0, PERCENT)]  # fmt: skip
    fig, axes = _ci_panels(ci, x, panels)
    for ax, metric in zip(axes[:2], ("wait_mean_s", "wait_max_s"), strict=True):
        _log_waits(ax, ci[f"{metric}_mean"].to_numpy(float) * scale)
    return fig


def _log_waits(ax: Axes, values: np.ndarray) -> None:
    """A wait axis spanning decades (one policy overloaded, another near zero): log above
    the smallest positive wait's decade, linear below it, so zero waits stay on the axis."""
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size and positive.max() / positive.min() > 20:
        # the linear part (zero to the smallest decade) 0.6 of a decade high, and room
        # above the largest wait for its band and marker
        ax.set_yscale("symlog", linthresh=10 ** np.floor(np.log10(positive.min())), linscale=0.6)
        ax.set_ylim(0, positive.max() * 2)


@styled
def sla_vs_load_queue_aware(ci: pd.DataFrame) -> Figure:
    """SLA violation rate against offered load, dp_queue_aware beside dp and the other
    policies of the sweep: a marker and a 95 % error bar at every point of the sweep, a
    tick at every swept load: what planning with the server's wait buys."""
    require_columns(ci, ["policy", *_ci_names(["sla_violation_rate"])], "sweep_ci")
    if not (ci["policy"] == "dp_queue_aware").any():
        known = ", ".join(ordered_policies(ci["policy"])) or "none"
        raise MissingData(f"sweep_ci has no dp_queue_aware rows (policies: {known})")
    x = _load_axis(ci)
    _one_factor(ci, x, "the arrival rate")
    panel = ("sla_violation_rate", "SLA violations (%)", 100.0, PERCENT)
    return _ci_panels(ci, x, [panel], panel_height=2.0, bars=True)[0]


# --- against batch limit (token granularity) ----------------------------------------------


@styled
def throughput_vs_batch(ci: pd.DataFrame) -> Figure:
    """Server throughput in tokens/s and requests/s against the batch limit
    (simulation.max_batch_requests), per policy with 95 % bands; the offered rate dashed."""
    require_columns(ci, ["policy", *_ci_names(("server_tokens_per_s", "throughput_rps"))],
                    "sweep_ci")  # fmt: skip
    x = next((c for c in ci.columns if c.rsplit(".", 1)[-1] == "max_batch_requests"), None)
    if x is None or ci[x].nunique() < 2:
        raise MissingData("sweep_ci does not vary simulation.max_batch_requests")
    if ci["server_tokens_per_s_mean"].isna().all():
        raise MissingData("sweep_ci: server_tokens_per_s is NaN (needs granularity: token)")
    _one_factor(ci, x, "the batch limit")
    # two-line y labels: on one line they are longer than their panel and reach the legend
    panels = [("server_tokens_per_s", "Server throughput\n(tokens/s)", 1.0, POSITIVE),
              ("throughput_rps", "Throughput\n(requests/s)", 1.0, POSITIVE)]  # fmt: skip
    fig, axes = _ci_panels(ci, x, panels, legend=False)
    offered = ci["offered_rate_per_s_mean"] if "offered_rate_per_s_mean" in ci else pd.Series()
    if offered.notna().any() and offered.round(9).nunique() == 1:
        axes[1].axhline(offered.iloc[0], color="#555555", linewidth=1.0, linestyle="--",
                        label="offered rate", zorder=0)  # fmt: skip
    figure_legend(fig, axes)
    log_axis_if_wide(axes[-1], ci[x], "x", ratio=4)
    if axes[-1].get_xscale() == "log":
        plain_ticks(axes[-1], ci[x])
    return fig


# --- capacity -----------------------------------------------------------------------------


@styled
def capacity(ci: pd.DataFrame) -> Figure:
    """Highest sustainable arrival rate per policy with its 95 % interval; beside it, when
    the table has them, dp's paired gain over each other policy (signed, zero marked, a gain
    whose interval includes zero hollow). A row of panels per point of the search."""
    require_columns(ci, ("policy", "capacity_rps_mean", "capacity_rps_ci95"), "capacity_ci")
    require_rows(ci, "capacity_ci")
    ci = ci.reset_index(drop=True)
    if "point" not in ci:
        ci = ci.assign(point=0)
    policies = ordered_policies(ci["policy"])
    points = list(dict.fromkeys(ci["point"]))
    has_gain = "gain_of_dp_pct_mean" in ci and ci["gain_of_dp_pct_mean"].notna().any()
    fig, axes = _capacity_grid(len(points), len(policies), has_gain)
    for row, point in zip(axes, points, strict=True):
        rows = ci[ci["point"] == point].drop_duplicates("policy").set_index("policy")
        _dot_rows(row[0], policies, rows, "capacity_rps")
        if has_gain:
            _gain_rows(row[1], policies, rows)
        if len(points) > 1:
            row[0].set_title(_point_label(ci[ci["point"] == point]), loc="left")
    axes[-1][0].set_xlabel("Capacity (requests/s)")
    axes[0][0].set_xlim(left=0)
    if has_gain:
        axes[0][1].set_title("> 0: DP sustains more", fontsize="small")
        axes[-1][1].set_xlabel("DP − policy\n(% of policy)")
        _hollow_legend(fig, ci)
    return fig


def _capacity_grid(n_points: int, n_policies: int, gain: bool) -> tuple[Figure, list[list[Axes]]]:
    """A row per point (a line per policy), capacity left and dp's gain right; the panels
    share their policy axis along a row and their value axis down a column."""
    row_height = 0.3 + 0.2 * n_policies
    height = min(MAX_FIGURE_HEIGHT_IN, 0.9 + row_height * n_points)
    fig = Figure(figsize=(COLUMN_WIDTH_IN, height), layout="constrained")
    axes = fig.subplots(n_points, 2 if gain else 1, sharex="col", sharey="row", squeeze=False)
    return fig, [list(row) for row in axes]


def _dot_rows(
    ax: Axes, policies: list[str], rows: pd.DataFrame, metric: str, hollow: bool = False
) -> None:
    """A marker per policy on its own line of the axis (first on top), with its 95 %
    interval as an error bar; a missing value is left out; `hollow` empties the markers of
    values whose interval includes zero."""
    for y, policy in enumerate(policies):
        if policy not in rows.index or not np.isfinite(rows.at[policy, f"{metric}_mean"]):
            continue
        mean, half = rows.at[policy, f"{metric}_mean"], rows.at[policy, f"{metric}_ci95"]
        half = half if np.isfinite(half) else None
        st = policy_style(policy)
        empty = hollow and half is not None and abs(mean) <= half
        bars = ax.errorbar([mean], [y], xerr=None if half is None else [half], fmt=st.marker,
                           color=st.color, markerfacecolor="white" if empty else st.color,
                           markersize=5, capsize=2.5, elinewidth=1.0, label=st.label)  # fmt: skip
        bars.lines[0].set_gid(f"policy:{policy}")
    ax.set_yticks(range(len(policies)), [policy_style(p).label for p in policies])
    ax.set_ylim(len(policies) - 0.5, -0.5)
    ax.grid(axis="y", visible=False)


def _gain_rows(ax: Axes, policies: list[str], rows: pd.DataFrame) -> None:
    """dp's gain over each policy (dp's own line empty), with the zero line."""
    ax.axvline(0, color="black", linewidth=0.7, zorder=0)
    gains = rows.rename(columns=lambda c: c.replace("gain_of_dp_pct", "gain"))
    if "gain_ci95" not in gains:
        gains = gains.assign(gain_ci95=np.nan)
    _dot_rows(ax, policies, gains, "gain", hollow=True)
    if "dp" in policies:
        ax.annotate("reference", (0, policies.index("dp")), xytext=(3, 0),
                    textcoords="offset points", va="center", fontsize="x-small",
                    color="#555555")  # fmt: skip
    low, high = ax.get_xlim()
    ax.set_xlim(min(low, -5.0), max(high, 5.0))  # zero never on the panel's edge


def _hollow_legend(fig: Figure, ci: pd.DataFrame) -> None:
    """Explain hollow gain markers above the panels, when some gain's interval includes 0."""
    mean, half = ci["gain_of_dp_pct_mean"], ci.get("gain_of_dp_pct_ci95", np.nan)
    if (mean.abs() <= half).any():
        marker = Line2D([], [], marker="o", linestyle="none", color="#555555",
                        markerfacecolor="white", markersize=5)  # fmt: skip
        fig.legend([marker], ["gain's 95 % interval includes 0"], loc="outside upper right")


def _point_label(rows: pd.DataFrame) -> str:
    """A capacity point's bar-group label from its factor values: "load=0.5, slots=2"."""
    factors = [c for c in rows.columns if "." in c]
    return (
        ", ".join(f"{_factor_name(c)}={_factor_value(rows[c].iloc[0])}" for c in factors) or "all"
    )


def _factor_name(column: str) -> str:
    """A factor's short name: its last part, or the part before a generic last part
    (`routing.policy` -> routing)."""
    parts = column.split(".")
    return parts[-2] if parts[-1] in ("policy", "kind", "path") and len(parts) > 1 else parts[-1]


def _factor_value(value) -> str:
    """A factor value as a label: numbers compact (%g), anything else as written."""
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)
