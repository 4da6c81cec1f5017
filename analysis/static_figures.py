"""Figures of the static allocation studies: server workload and dp's placement per factor.

Drawn from `allocation.csv` (`splitsim paper`): one row per study, model, policy and value of
the study's factor (SLA, sequence length, client speed or uplink bandwidth).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import NullLocator

from analysis.draw import (
    figure_legend,
    log_axis_if_wide,
    panel_figure,
    plain_ticks,
    policy_lines,
    set_xlabels,
    set_ylabels,
)
from analysis.io import MissingData, require_columns
from analysis.labels import axis_label
from analysis.style import CLIENT_COLOR, SERVER_COLOR, styled

WORKLOAD_LABELS = {
    "workload_ratio": "Server workload (% of server-only)",
    "server_work": "Server work per request (s)",
}


# --- server workload per study ------------------------------------------------------------


def _study(alloc: pd.DataFrame, study: str, y: str) -> pd.DataFrame:
    """The rows of one study with the plotted value in `_y` (a ratio shown in %)."""
    if y not in WORKLOAD_LABELS:
        raise ValueError(f"y must be one of {', '.join(WORKLOAD_LABELS)}")
    require_columns(alloc, ("study", "model", "policy", "x_name", "x", y), "allocation")
    rows = alloc[alloc["study"] == study]
    if rows.empty:
        raise MissingData(f"allocation has no rows with study '{study}'")
    rows = rows.copy()
    rows["_y"] = rows[y] * (100.0 if y == "workload_ratio" else 1.0)
    return rows


def _workload_panel(ax: Axes, rows: pd.DataFrame, log_x: bool) -> None:
    """A line per policy from zero; x on a log scale (always with `log_x`, else when wide)."""
    policy_lines(ax, rows, "x", "_y")
    ax.set_ylim(bottom=0)
    if log_x:
        log_axis_if_wide(ax, rows["x"], "x", ratio=1.0)
    else:
        log_axis_if_wide(ax, rows["x"], "x")
    if ax.get_xscale() == "log":
        plain_ticks(ax, rows["x"])


def _workload_figure(alloc: pd.DataFrame, study: str, y: str, log_x: bool = False) -> Figure:
    """Server workload against the study's factor, a line per policy, a panel per model."""
    rows = _study(alloc, study, y)
    models = list(dict.fromkeys(rows["model"]))
    fig, axes = panel_figure(len(models), sharex=True, sharey=True)
    for ax, model in zip(axes, models, strict=True):
        _workload_panel(ax, rows[rows["model"] == model], log_x)
        ax.set_title(str(model))
    set_ylabels(fig, axes, WORKLOAD_LABELS[y])
    set_xlabels(axes, axis_label(str(rows["x_name"].iloc[0])))
    figure_legend(fig, axes)
    return fig


@styled
def workload_vs_sla(alloc: pd.DataFrame, y: str = "workload_ratio") -> Figure:
    """Server workload per request against the SLA, per policy, a panel per model."""
    return _workload_figure(alloc, "sla", y)


@styled
def workload_vs_tokens(alloc: pd.DataFrame, y: str = "workload_ratio") -> Figure:
    """Server workload per request against sequence length, per policy, a panel per model."""
    return _workload_figure(alloc, "tokens", y)


@styled
def sensitivity(alloc: pd.DataFrame, y: str = "workload_ratio") -> Figure:
    """Server workload against client speed and against uplink bandwidth (log), per policy."""
    require_columns(alloc, ("study",), "allocation")
    studies = [s for s in ("client_speed", "bandwidth") if (alloc["study"] == s).any()]
    if not studies:
        raise MissingData("allocation has no rows with study 'client_speed' or 'bandwidth'")
    panels = []
    for study in studies:
        rows = _study(alloc, study, y)
        panels += [(study, m, rows[rows["model"] == m]) for m in dict.fromkeys(rows["model"])]
    fig, axes = panel_figure(len(panels), sharex=False, sharey=True)
    several_models = len({m for _, m, _ in panels}) > 1
    for ax, (study, model, rows) in zip(axes, panels, strict=True):
        _workload_panel(ax, rows, log_x=study == "bandwidth")
        ax.set_xlabel(axis_label(str(rows["x_name"].iloc[0])))
        if several_models:
            ax.set_title(str(model))
        if study == "client_speed" and "client_device" in rows:
            _device_names(ax, rows)
    set_ylabels(fig, axes, WORKLOAD_LABELS[y])
    figure_legend(fig, axes)
    return fig


def _device_names(ax: Axes, rows: pd.DataFrame) -> None:
    """Client device names along the top of a client-speed panel."""
    names = rows.drop_duplicates("x").sort_values("x")
    top = ax.secondary_xaxis("top")
    top.set_xticks(names["x"].to_numpy(float), list(names["client_device"].astype(str)))
    top.xaxis.set_minor_locator(NullLocator())
    top.tick_params(axis="x", labelsize=6, rotation=30, pad=1)
    for label in top.get_xticklabels():
        label.set_horizontalalignment("left")
        label.set_rotation_mode("anchor")


# --- placement map ------------------------------------------------------------------------


@styled
def placement_map(alloc: pd.DataFrame, study: str | None = None) -> Figure:
    """Which units dp runs on the client, per sequence length (or bandwidth): a heat map."""
    require_columns(alloc, ("study", "model", "policy", "x_name", "x", "placement"), "allocation")
    dp = alloc[alloc["policy"] == "dp"]
    studies = [study] if study else [s for s in ("tokens", "bandwidth") if (dp["study"] == s).any()]
    if not studies or not (dp["study"] == studies[0]).any():
        raise MissingData("allocation has no dp rows with study 'tokens' or 'bandwidth'")
    rows = dp[dp["study"] == studies[0]]
    keys = ["model"] + (["client_device"] if "client_device" in rows else [])
    panels = list(rows.groupby(keys, sort=False))
    fig, axes = panel_figure(len(panels), sharex=False, panel_height=1.9)
    for ax, (key, group) in zip(axes, panels, strict=True):
        _placement_panel(ax, group.drop_duplicates("x", keep="last").sort_values("x"))
        key = key if isinstance(key, tuple) else (key,)
        ax.set_title(" on ".join(str(k) for k in key if pd.notna(k)))
    set_ylabels(fig, axes, axis_label(str(rows["x_name"].iloc[0])))
    set_xlabels(axes, "Unit (input → output)")
    handles = [Patch(color=CLIENT_COLOR, label="client"), Patch(color=SERVER_COLOR, label="server")]
    if any("*" in t.get_text() for ax in axes for t in ax.get_yticklabels()):
        handles.append(Patch(color="none", label="* SLA infeasible"))
    fig.legend(handles=handles, loc="outside upper center", ncols=len(handles))
    return fig


def _placement_panel(ax: Axes, rows: pd.DataFrame) -> None:
    """A row of client/server cells per x value; an SLA-infeasible row's label gets a *."""
    from matplotlib.colors import ListedColormap

    strings = rows["placement"].astype(str).tolist()
    width = max(len(s) for s in strings)
    grid = np.full((len(strings), width), np.nan)
    for i, s in enumerate(strings):
        grid[i, : len(s)] = [1.0 if c == "C" else 0.0 for c in s.upper()]
    cmap = ListedColormap([SERVER_COLOR, CLIENT_COLOR])
    ax.imshow(grid, aspect="auto", cmap=cmap, vmin=0, vmax=1, interpolation="nearest",
              origin="lower")  # fmt: skip
    infeasible = ~rows["feasible"].astype(bool) if "feasible" in rows else pd.Series(False)
    labels = [f"{x:g}" + (" *" if bad else "") for x, bad in
              zip(rows["x"], infeasible.reindex(rows.index, fill_value=False), strict=True)]  # fmt: skip
    step = max(1, int(np.ceil(len(labels) / 10)))
    ax.set_yticks(range(0, len(labels), step), labels[::step])
    ax.grid(False)
    for row in range(1, len(strings)):  # thin gaps between rows
        ax.axhline(row - 0.5, color="white", linewidth=0.8)
    for spine in ax.spines.values():
        spine.set_visible(False)
