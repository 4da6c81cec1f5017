"""The cost-model figure: what each unit of a model costs on the client and on the server.

Drawn from `unit_costs.csv` (`splitsim paper`), apart from the allocation studies because it
shows the per-unit inputs of the planner, not its decisions.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from analysis.draw import figure_legend, log_axis_if_wide, plain_ticks
from analysis.io import MissingData, require_columns, require_rows
from analysis.labels import axis_label
from analysis.style import CLIENT_COLOR, COLUMN_WIDTH_IN, OKABE_ITO, SERVER_COLOR, styled

KIND_STYLE = {  # unit kind -> (label, colour, marker)
    "embed": ("embedding", OKABE_ITO["bluish_green"], "s"),
    "block": ("transformer block", OKABE_ITO["blue"], "o"),
    "attn": ("attention", OKABE_ITO["vermillion"], "^"),
    "mlp": ("MLP", OKABE_ITO["orange"], "v"),
    "head": ("head", OKABE_ITO["reddish_purple"], "D"),
}


@styled
def unit_costs(
    costs: pd.DataFrame, model: str | None = None, client_device: str | None = None
) -> Figure:
    """Per-unit GFLOP and time on client and server against sequence length, for one model
    (default: the first) and one client device (default: the first).

    The dotted line grows linearly from the shortest length: where a block bends away from
    it, attention's quadratic term dominates.
    """
    need = ("model", "kind", "tokens", "flops", "client_s", "server_s")
    require_columns(costs, need, "unit_costs")
    require_rows(costs, "unit_costs")
    model = model if model is not None else str(costs["model"].iloc[0])
    rows = costs[costs["model"] == model]
    if rows.empty:
        known = ", ".join(map(str, costs["model"].unique()))
        raise MissingData(f"unit_costs has no rows for model '{model}'; models: {known}")
    if "client_device" in rows and rows["client_device"].nunique() > 1:
        device = client_device or str(rows["client_device"].iloc[0])
        rows = rows[rows["client_device"] == device]
        if rows.empty:
            raise MissingData(f"unit_costs has no rows for client device '{device}'")
    per_kind = rows.groupby(["kind", "tokens"])[["flops", "client_s", "server_s"]].median()
    kinds = [k for k in KIND_STYLE if k in per_kind.index.get_level_values(0)]
    kinds += [k for k in per_kind.index.get_level_values(0).unique() if k not in kinds]
    fig = Figure(figsize=(COLUMN_WIDTH_IN, 4.9), layout="constrained")
    ax_f, ax_t = fig.subplots(2, 1, sharex=True)
    for kind in kinds:
        label, color, marker = KIND_STYLE.get(kind, (kind, "#777777", "P"))
        k = per_kind.loc[kind]
        ax_f.plot(k.index, k["flops"] / 1e9, color=color, marker=marker, label=label)
    compute = [k for k in ("block", "attn") if k in kinds]
    if compute:
        k = per_kind.loc[compute[0]]
        t = k.index.to_numpy(float)
        ref = k["flops"].iloc[0] / 1e9 * t / t[0]
        ax_f.plot(t, ref, color="#777777", linestyle=":", label="linear in tokens")
    ax_f.set_ylabel("Compute per unit (GFLOP)")
    ax_f.set_title(model)
    _unit_times(ax_t, rows, per_kind, [k for k in ("block", "attn", "mlp") if k in kinds])
    tokens = per_kind.index.get_level_values(1)
    for ax in (ax_f, ax_t):
        log_axis_if_wide(ax, tokens, "x")
        if ax.get_xscale() == "log":
            plain_ticks(ax, tokens, most=len(set(tokens)))
        ax.set_yscale("log")
    ax_t.set_xlabel(axis_label("tokens"))
    figure_legend(fig, [ax_f, ax_t], ncols=2)  # above the panels: no curve hidden
    return fig


def _unit_times(ax: Axes, rows: pd.DataFrame, per_kind: pd.DataFrame, kinds: list[str]) -> None:
    """Time of the compute units on the client (device named) and on the server, in ms."""
    kinds = kinds or list(per_kind.index.get_level_values(0).unique())
    client = _names(rows, "client_device", "client")
    server = _names(rows, "server_device", "server")
    styles = {"block": "-", "attn": "--", "mlp": ":"}
    for kind in kinds:
        k = per_kind.loc[kind]
        name = KIND_STYLE.get(kind, (kind,))[0]
        suffix = f", {name}" if len(kinds) > 1 else ""
        ls = styles.get(kind, "-.")
        ax.plot(k.index, k["client_s"] * 1e3, color=CLIENT_COLOR, linestyle=ls, marker="o",
                label=f"{client}{suffix}")  # fmt: skip
        ax.plot(k.index, k["server_s"] * 1e3, color=SERVER_COLOR, linestyle=ls, marker="s",
                label=f"{server}{suffix}")  # fmt: skip
    what = KIND_STYLE.get(kinds[0], (kinds[0],))[0] if len(kinds) == 1 else "unit"
    ax.set_ylabel(f"Time per {what} (ms)")


def _names(rows: pd.DataFrame, column: str, fallback: str) -> str:
    """The distinct device names in `column` for a legend label, or `fallback` if none."""
    if column not in rows:
        return fallback
    names = rows[column].dropna().astype(str).unique()
    return " / ".join(names) if len(names) else fallback
