"""Drawing helpers shared by the figures: panel grids, policy lines and bars, legends."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter, NullLocator

from analysis.style import COLUMN_WIDTH_IN, DOUBLE_WIDTH_IN, ordered_policies, policy_style

PANEL_HEIGHT_IN = 1.75
LEGEND_HEIGHT_IN = 0.45
MAX_MARKERS = 15  # more points than this: lines without markers
NOTE_FONTSIZE = 6.5  # notes under a figure's legend: what a point is, what is left out
LEGEND_PAD = 0.9  # a figure legend's padding (font sizes): clear of the titles below it


def panel_figure(
    n: int, sharex: bool = True, sharey: bool = False, panel_height: float = PANEL_HEIGHT_IN
) -> tuple[Figure, list[Axes]]:
    """A figure with `n` panels: stacked at column width up to 3, else two columns."""
    ncols = 1 if n <= 3 else 2
    nrows = math.ceil(n / ncols)
    width = COLUMN_WIDTH_IN if ncols == 1 else DOUBLE_WIDTH_IN
    fig = Figure(figsize=(width, LEGEND_HEIGHT_IN + panel_height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=sharex, sharey=sharey, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    if sharex:  # a panel above an empty slot is the lowest of its column: show its ticks
        for ax in axes[max(0, n - ncols) : n]:
            ax.tick_params(labelbottom=True)
    return fig, list(axes[:n])


def set_xlabels(axes: Sequence[Axes], label: str) -> None:
    """The x label on the lowest panel of each column only."""
    lowest: dict[int, Axes] = {}
    for ax in axes:
        spec = ax.get_subplotspec()
        col, row = spec.colspan.start, spec.rowspan.start
        if col not in lowest or row > lowest[col].get_subplotspec().rowspan.start:
            lowest[col] = ax
    for ax in lowest.values():
        ax.set_xlabel(label)


def policy_line(
    ax: Axes,
    policy: str,
    x: Sequence[float],
    y: Sequence[float],
    ci: Sequence[float] | None = None,
    markers: bool | None = None,
    clip: tuple[float, float] = (-np.inf, np.inf),
    bars: bool = False,
) -> None:
    """One policy's line in its fixed style, with its 95 % interval (within `clip`) as a
    shaded band, or as an error bar at each marker when `bars`."""
    st = policy_style(policy)
    x, y = np.asarray(x, float), np.asarray(y, float)
    if markers is None:
        markers = len(x) <= MAX_MARKERS
    ax.plot(x, y, color=st.color, linestyle=st.linestyle, marker=st.marker if markers else None,
            label=st.label, gid=f"policy:{policy}",
            linewidth=1.6 if policy == "dp" else None, zorder=3 if policy == "dp" else 2)  # fmt: skip
    if ci is not None:
        half = np.asarray(ci, float)
        ok = np.isfinite(half) & np.isfinite(y)
        if ok.any():
            low, high = np.clip(y - half, *clip), np.clip(y + half, *clip)
            if bars:
                ax.errorbar(x[ok], y[ok], yerr=[y[ok] - low[ok], high[ok] - y[ok]], fmt="none",
                            ecolor=st.color, elinewidth=0.9, capsize=2.5, zorder=2)  # fmt: skip
            else:
                ax.fill_between(x[ok], low[ok], high[ok], color=st.color, alpha=0.18,
                                linewidth=0, zorder=1)  # fmt: skip


def policy_lines(
    ax: Axes,
    frame: pd.DataFrame,
    x: str,
    y: str,
    scale: float = 1.0,
    ci: str | None = None,
    clip: tuple[float, float] = (-np.inf, np.inf),
    bars: bool = False,
) -> None:
    """A line per policy of `frame` (x sorted; duplicate x averaged), in the fixed order;
    with `bars` every point gets its marker and error bar (see `policy_line`)."""
    for policy in ordered_policies(frame["policy"]):
        rows = frame[frame["policy"] == policy]
        cols = [y] + ([ci] if ci else [])
        agg = rows.groupby(x, sort=True)[cols].mean(numeric_only=True)
        err = agg[ci].to_numpy() * scale if ci else None
        policy_line(ax, policy, agg.index.to_numpy(float), agg[y].to_numpy() * scale, err,
                    markers=True if bars else None, clip=clip, bars=bars)  # fmt: skip


def set_ylabels(fig: Figure, axes: Sequence[Axes], label: str) -> None:
    """One y label: on the panel, or once for the figure when panels are stacked."""
    if len(axes) == 1:
        axes[0].set_ylabel(label)
    else:
        fig.supylabel(label)


def figure_legend(
    fig: Figure, axes: Sequence[Axes], ncols: int | None = None, note: str | None = None
) -> None:
    """One legend above all panels, entries from every panel without repeats; a `note`
    (what each point is, what is left out) goes above the entries, in the legend's box, so
    the layout keeps it clear of the panels."""
    handles, labels = [], []
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels and not label.startswith("_"):
                handles.append(h)
                labels.append(label)
    if handles:
        n = ncols or min(len(labels), 3)
        fig.legend(handles, labels, loc="outside upper center", ncols=n, title=note,
                   title_fontsize=NOTE_FONTSIZE, borderpad=LEGEND_PAD)  # fmt: skip


def nest_markers(ax: Axes, largest: float = 6.5, step: float = 0.9) -> None:
    """Hollow policy markers, each smaller than the one drawn before it, so a policy whose
    points coincide with a later one's still shows its marker ring around them."""
    lines = [ln for ln in ax.get_lines() if str(ln.get_gid()).startswith("policy:")]
    for i, line in enumerate(lines):
        if line.get_marker() not in (None, "None", ""):
            line.set_markerfacecolor("none")
            line.set_markeredgewidth(1.0)
            line.set_markersize(max(2.5, largest - step * i))


def log_axis_if_wide(ax: Axes, values: Sequence[float], axis: str = "x", ratio: float = 8) -> None:
    """Log scale when positive values span more than `ratio`, with plain-number tick labels."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size == 0 or v.min() <= 0 or v.max() / v.min() < ratio:
        return
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target.set_major_formatter(FuncFormatter(lambda val, _pos: f"{val:g}"))
    target.set_minor_formatter(NullFormatter())


def plain_ticks(ax: Axes, values: Sequence[float], axis: str = "x", most: int = 8) -> None:
    """Ticks at the data's own values (thinned to at most `most`), labelled as numbers."""
    v = np.unique(np.asarray(values, float))
    if v.size > most:
        v = v[:: math.ceil(v.size / most)]
    setter = ax.set_xticks if axis == "x" else ax.set_yticks
    setter(v, [f"{t:g}" for t in v])
    (ax.xaxis if axis == "x" else ax.yaxis).set_minor_locator(NullLocator())


def policy_bars(
    ax: Axes,
    groups: Sequence[str],
    policies: Sequence[str],
    values: dict[str, Sequence[float]],
    errors: dict[str, Sequence[float]] | None = None,
) -> None:
    """Bars per policy in each group, with 95 % error bars; one bar container per policy."""
    width = 0.8 / max(len(policies), 1)
    base = np.arange(len(groups), dtype=float)
    for i, policy in enumerate(policies):
        st = policy_style(policy)
        pos = base - 0.4 + width * (i + 0.5) if len(groups) > 1 else np.array([float(i)])
        err = np.asarray(errors[policy], float) if errors else None
        if err is not None and not np.isfinite(err).any():
            err = None
        ax.bar(pos, np.asarray(values[policy], float), width=0.8 if len(groups) == 1 else width,
               color=st.color, edgecolor="black", linewidth=0.4, label=st.label,
               gid=f"policy:{policy}", yerr=err, capsize=2,
               error_kw={"elinewidth": 0.8, "capthick": 0.8})  # fmt: skip
    if len(groups) > 1:
        ax.set_xticks(base, list(groups))
    else:
        ax.set_xticks(range(len(policies)), [policy_style(p).label for p in policies])
    if len(ax.get_xticks()) > 4:  # long names side by side at column width: tilt them
        ax.tick_params(axis="x", labelrotation=25)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")
    ax.grid(axis="x", visible=False)
