"""Figures of the static allocation studies: server workload and dp's placement per factor.

Drawn from `allocation.csv` (`splitsim paper`): one row per study, model, policy, client and
value of the study's factor (SLA, sequence length, client speed or uplink bandwidth).
"""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from analysis.draw import (
    LEGEND_PAD,
    NOTE_FONTSIZE,
    figure_legend,
    log_axis_if_wide,
    nest_markers,
    panel_figure,
    plain_ticks,
    policy_lines,
    set_xlabels,
    set_ylabels,
)
from analysis.io import MissingData, require_columns
from analysis.labels import ENCODER_DECODER_MODELS, axis_label, unit_names
from analysis.style import CLIENT_COLOR, COLUMN_WIDTH_IN, DOUBLE_WIDTH_IN, SERVER_COLOR, styled

WORKLOAD_LABELS = {
    "workload_ratio": "Server workload (% of server-only)",
    "server_work": "Server work per request (s)",
}
SPEED_LABEL = "Effective client speed (TFLOP/s = peak × efficiency)"
NOTE_CHARS_PER_IN = 19  # characters of a note line per inch of figure width
TOKEN_NAMES = ("prompt_tokens", "tokens")


# --- notes: what each point averages and what a figure leaves out, read from the rows ------


def _wrap(text: str, width_in: float) -> str:
    """`text` in lines that fit a figure `width_in` wide at the note's font size."""
    width = int(width_in * NOTE_CHARS_PER_IN)
    return "\n".join(textwrap.wrap(text, width, break_on_hyphens=False))


def _sla_factor(rows: pd.DataFrame) -> float | None:
    """The deadline as a multiple of server-only latency, if one factor holds for all rows."""
    only = rows[rows["policy"] == "server_only"]
    if only.empty or "deadline_s" not in only or "latency_s" not in only:
        return None
    factors = (only["deadline_s"] / only["latency_s"]).round(3).unique()
    return float(factors[0]) if len(factors) == 1 else None


def _token_text(rows: pd.DataFrame) -> str | None:
    """'256 tokens (vit-b16: 197)': the usual prompt length and each model's exception."""
    if "prompt_tokens" not in rows:
        return None
    per_model = rows.groupby("model", sort=False)["prompt_tokens"].agg(lambda s: set(s))
    if any(len(v) > 1 for v in per_model):
        return None
    values = per_model.map(lambda v: next(iter(v)))
    usual = values.mode().iloc[0]
    odd = [f"{m}: {v:g}" for m, v in values.items() if v != usual]
    return f"{usual:g} tokens" + (f" ({', '.join(odd)})" if odd else "")


def _client_text(rows: pd.DataFrame) -> str | None:
    """'mean of 3 clients (a, b, c)' when every point averages the same clients."""
    if "client_device" not in rows:
        return None
    per_point = rows.groupby(["model", "policy", "x"])["client_device"].nunique()
    if per_point.nunique() != 1:
        return None
    names = list(dict.fromkeys(rows["client_device"].astype(str)))
    n = int(per_point.iloc[0])
    if n == 1:  # one client per point: the same throughout, or the factor itself
        return f"client {names[0]}" if len(names) == 1 else None
    return f"mean of {n} clients ({', '.join(names)})"


def _fixed_parts(rows: pd.DataFrame, clients: bool = True) -> list[str]:
    """What each point of a study averages (`clients`) and holds fixed: tokens, SLA, link."""
    x_name = str(rows["x_name"].iloc[0])
    parts = [_client_text(rows) if clients else None]
    if x_name not in TOKEN_NAMES:
        parts.append(_token_text(rows))
    factor = _sla_factor(rows) if x_name != "deadline_factor" else None
    if factor is not None:
        parts.append(f"SLA {factor:g}× server-only latency")
    if x_name != "uplink_mbps" and "uplink_mbps" in rows and rows["uplink_mbps"].nunique() == 1:
        parts.append(f"{rows['uplink_mbps'].iloc[0]:g} Mbit/s uplink")
    return [p for p in parts if p]


def _point_note(rows: pd.DataFrame) -> str:
    """What each point of a study averages and holds fixed, e.g. 'Each point: mean of 3
    clients (...), 256 tokens, SLA 3× server-only latency, 500 Mbit/s uplink.'"""
    parts = _fixed_parts(rows)
    return "Each point: " + ", ".join(parts) + "." if parts else ""


def _left_out_note(alloc: pd.DataFrame, rows: pd.DataFrame) -> str:
    """Models of the other studies that this study has no rows for, and why if it shows:
    an input of fixed length (a ViT's 197 patch tokens) has no sequence-length study."""
    missing = [m for m in dict.fromkeys(alloc["model"]) if m not in set(rows["model"])]
    notes = []
    for model in missing:
        tokens = alloc.loc[alloc["model"] == model, "prompt_tokens"].unique()
        why = f": its input is always {tokens[0]:g} tokens" if len(tokens) == 1 else ""
        notes.append(f"{model} not shown{why}.")
    return " ".join(notes)


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
    """A line per policy from zero, hollow nested markers so coinciding policies all show;
    x on a log scale (always with `log_x`, else when the values are wide)."""
    policy_lines(ax, rows, "x", "_y")
    nest_markers(ax)
    ax.set_ylim(bottom=0)
    log_axis_if_wide(ax, rows["x"], "x", ratio=1.0 if log_x else 8)
    if ax.get_xscale() == "log":
        plain_ticks(ax, rows["x"])


def _workload_figure(
    alloc: pd.DataFrame, study: str, y: str, log_x: bool = False, note: str = ""
) -> Figure:
    """Server workload against the study's factor, a line per policy, a panel per model;
    the legend's note says what each point averages and which models are left out."""
    rows = _study(alloc, study, y)
    models = list(dict.fromkeys(rows["model"]))
    fig, axes = panel_figure(len(models), sharex=True, sharey=True)
    for ax, model in zip(axes, models, strict=True):
        _workload_panel(ax, rows[rows["model"] == model], log_x)
        ax.set_title(str(model))
    set_ylabels(fig, axes, WORKLOAD_LABELS[y])
    set_xlabels(axes, axis_label(str(rows["x_name"].iloc[0])))
    text = " ".join(t for t in (_point_note(rows), note) if t)
    figure_legend(fig, axes, note=_wrap(text, fig.get_figwidth()) or None)
    return fig


@styled
def workload_vs_sla(alloc: pd.DataFrame, y: str = "workload_ratio") -> Figure:
    """Server workload per request against the SLA, per policy, a panel per model."""
    return _workload_figure(alloc, "sla", y)


@styled
def workload_vs_tokens(alloc: pd.DataFrame, y: str = "workload_ratio") -> Figure:
    """Server workload per request against sequence length, per policy, a panel per model;
    a model without a sequence-length study (a ViT) is named in the legend's note."""
    rows = _study(alloc, "tokens", y)
    return _workload_figure(alloc, "tokens", y, note=_left_out_note(alloc, rows))


# --- sensitivity: client speed and uplink bandwidth ------------------------------------------

SENSITIVITY_HEADINGS = {"client_speed": "(a) Client speed", "bandwidth": "(b) Uplink bandwidth"}
SENSITIVITY_ROW_IN = 1.3  # height of one model's row of panels
HEADING_IN = 0.75  # column headings with their notes


def _decade_ticks(ax: Axes, values: pd.Series) -> None:
    """Log-axis ticks at the powers of ten around `values`, labelled as plain numbers."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v) & (v > 0)]
    decades = 10.0 ** np.arange(np.floor(np.log10(v.min())), np.ceil(np.log10(v.max())) + 1)
    ax.xaxis.set_major_locator(FixedLocator(decades))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda val, _pos: f"{val:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(v.min() / 1.6, v.max() * 1.6)


def _speed_note(rows: pd.DataFrame) -> str:
    """The client devices and their effective speeds, slowest first."""
    if "client_device" not in rows:
        return ""
    devices = rows.drop_duplicates("x").sort_values("x")
    pairs = [f"{d} {x:.3g}" for d, x in zip(devices["client_device"], devices["x"], strict=True)]
    return f"Clients (TFLOP/s): {', '.join(pairs)}."


def _bandwidth_note(rows: pd.DataFrame) -> str:
    """Why server load can rise with bandwidth: the SLA is a multiple of server-only latency,
    which a faster link shortens; names the models whose dp load rises anywhere."""
    factor = _sla_factor(rows)
    if factor is None:
        return ""
    dp = rows[rows["policy"] == "dp"].groupby(["model", "x"], sort=True)["_y"].mean()
    rising = [m for m, s in dp.groupby(level="model", sort=False) if (s.diff() > 1e-9).any()]
    where = f" ({', '.join(rising)})" if rising else ""
    return (f"The SLA is {factor:g}× server-only latency, which a faster link shortens: the "
            f"SLA tightens, so server load can rise with bandwidth{where}.")  # fmt: skip


def _heading(study: str, rows: pd.DataFrame, width_in: float) -> str:
    """A sensitivity column's heading: the study, then its notes wrapped to the column."""
    extra = _speed_note(rows) if study == "client_speed" else _bandwidth_note(rows)
    parts = [p for p in _fixed_parts(rows) if not (p.startswith("SLA") and "SLA" in extra)]
    point = "Each point: " + ", ".join(parts) + "." if parts else ""
    note = " ".join(t for t in (extra, point) if t)
    heading = SENSITIVITY_HEADINGS.get(study, study).replace(" ", r"\ ")
    return rf"$\bf{{{heading}}}$" + ("\n" + _wrap(note, width_in) if note else "")


def _sensitivity_column(fig: Figure, study: str, rows: pd.DataFrame, heading: str,
                        ylabel: str) -> list[Axes]:  # fmt: skip
    """One study's column (a subfigure): a log-x panel per model, headed by the study, with
    its own y label (so each column reads on its own)."""
    models = list(dict.fromkeys(rows["model"]))
    axes = fig.subplots(len(models), 1, sharex=True, sharey=True, squeeze=False).ravel()
    for ax, model in zip(axes, models, strict=True):
        _workload_panel(ax, rows[rows["model"] == model], log_x=True)
        if study == "client_speed":
            _decade_ticks(ax, rows["x"])
        if len(models) > 1:
            ax.set_title(str(model))
    x_name = str(rows["x_name"].iloc[0])
    axes[-1].set_xlabel(SPEED_LABEL if study == "client_speed" else axis_label(x_name))
    fig.suptitle(heading, fontsize=NOTE_FONTSIZE, linespacing=1.3)
    set_ylabels(fig, list(axes), ylabel)
    return list(axes)


@styled
def sensitivity(alloc: pd.DataFrame, y: str = "workload_ratio") -> Figure:
    """Server workload against effective client speed and against uplink bandwidth (both
    log), per policy: a column per study with a heading and notes, a row per model."""
    require_columns(alloc, ("study",), "allocation")
    studies = [s for s in SENSITIVITY_HEADINGS if (alloc["study"] == s).any()]
    if not studies:
        raise MissingData("allocation has no rows with study 'client_speed' or 'bandwidth'")
    frames = {s: _study(alloc, s, y) for s in studies}
    n_rows = max(f["model"].nunique() for f in frames.values())
    width = DOUBLE_WIDTH_IN if len(studies) > 1 else COLUMN_WIDTH_IN
    fig = Figure(figsize=(width, 0.45 + HEADING_IN + SENSITIVITY_ROW_IN * n_rows),
                 layout="constrained")  # fmt: skip
    columns = fig.subfigures(1, len(studies), squeeze=False).ravel()
    headings = [_heading(s, frames[s], sub.bbox.width / sub.dpi)
                for sub, s in zip(columns, studies, strict=True)]  # fmt: skip
    lines = max(h.count("\n") for h in headings)  # as many lines each: panels stay aligned
    headings = [h + "\n " * (lines - h.count("\n")) for h in headings]
    axes = [ax for sub, s, h in zip(columns, studies, headings, strict=True)
            for ax in _sensitivity_column(sub, s, frames[s], h, WORKLOAD_LABELS[y])]  # fmt: skip
    figure_legend(fig, axes, ncols=5 if len(studies) > 1 else 3)
    return fig


# --- placement map ------------------------------------------------------------------------

PLACEMENT_ROW_IN = 1.45  # one model's row of maps, with its rotated unit names
TICK_GAP_PT = 9.0  # least space between two rotated unit names


@styled
def placement_map(alloc: pd.DataFrame, study: str | None = None) -> Figure:
    """Which units dp runs on the client, per sequence length (or bandwidth): a map per model
    (rows) and client (columns), units named, an encoder-decoder model's halves split."""
    require_columns(alloc, ("study", "model", "policy", "x_name", "x", "placement"), "allocation")
    dp = alloc[alloc["policy"] == "dp"]
    studies = [study] if study else [s for s in ("tokens", "bandwidth") if (dp["study"] == s).any()]
    if not studies or not (dp["study"] == studies[0]).any():
        raise MissingData("allocation has no dp rows with study 'tokens' or 'bandwidth'")
    rows = dp[dp["study"] == studies[0]]
    if "client_device" not in rows:
        rows = rows.assign(client_device="client")
    models = list(dict.fromkeys(rows["model"]))
    clients = list(dict.fromkeys(rows["client_device"].astype(str)))
    width = COLUMN_WIDTH_IN if len(clients) == 1 else DOUBLE_WIDTH_IN
    fig = Figure(figsize=(width, 0.6 + PLACEMENT_ROW_IN * len(models)), layout="constrained")
    grid = fig.subplots(len(models), len(clients), squeeze=False)
    axes = []
    for (model, client), ax in zip(
        [(m, c) for m in models for c in clients], grid.ravel(), strict=True
    ):
        group = rows[(rows["model"] == model) & (rows["client_device"].astype(str) == client)]
        if group.empty:
            ax.set_visible(False)
            continue
        _placement_panel(ax, group.drop_duplicates("x", keep="last").sort_values("x"))
        _unit_ticks(ax, str(model), int(group["placement"].astype(str).str.len().max()))
        ax.set_title(f"{model} · {client}" if len(clients) > 1 else str(model))
        axes.append(ax)
    set_ylabels(fig, axes, axis_label(str(rows["x_name"].iloc[0])))
    set_xlabels(axes, "Unit (input → output)")
    _placement_legend(fig, axes, _placement_title(alloc[alloc["study"] == studies[0]]))
    return fig


def _placement_title(rows: pd.DataFrame) -> str:
    """The map's title: the policy and what each map holds fixed (from all of the study's
    rows: its SLA factor needs the server-only ones)."""
    fixed = ", ".join(_fixed_parts(rows, clients=False))
    what = axis_label(str(rows["x_name"].iloc[0])).split(" (")[0].lower()
    title = f"DP's placement of each unit, per {what}"
    return title + (f" ({fixed})" if fixed else "")


def _placement_legend(fig: Figure, axes: list[Axes], title: str) -> None:
    """Client and server cells, the SLA-infeasible mark and the encoder/decoder boundary."""
    handles = [Patch(color=CLIENT_COLOR, label="client"), Patch(color=SERVER_COLOR, label="server")]
    if any("*" in t.get_text() for ax in axes for t in ax.get_yticklabels()):
        handles.append(Patch(color="none", label="* SLA infeasible"))
    if any(ln.get_gid() == "encoder|decoder" for ax in axes for ln in ax.get_lines()):
        handles.append(Line2D([], [], color="black", linewidth=1.5, label="encoder | decoder"))
    fig.legend(handles=handles, loc="outside upper center", ncols=len(handles),
               title=_wrap(title, fig.get_figwidth()), title_fontsize=NOTE_FONTSIZE + 0.5,
               borderpad=LEGEND_PAD)  # fmt: skip


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


def _unit_label(name: str) -> str:
    """'enc.block0' -> 'enc block 1': a unit's name for a tick, blocks counted from 1."""
    stack, _, unit = name.rpartition(".")
    if unit.startswith("block") and unit[5:].isdigit():
        unit = f"block {int(unit[5:]) + 1}"
    return f"{stack} {unit}".strip()


def _unit_ticks(ax: Axes, model: str, n_units: int) -> None:
    """Rotated unit names under a map (embeddings and head always, blocks thinned to fit);
    a line between an encoder-decoder model's encoder and decoder."""
    names = unit_names(model, n_units)
    width_pt = ax.get_position().width * ax.figure.get_figwidth() * 72 or 100.0
    gap = max(1, int(np.ceil(TICK_GAP_PT / (width_pt / max(n_units, 1)))))
    must = [i for i, n in enumerate(names) if not n.rsplit(".", 1)[-1].startswith("block")]
    chosen = list(must)
    for i in range(n_units):
        if i not in chosen and all(abs(i - j) >= gap for j in chosen):
            chosen.append(i)
    chosen.sort()
    ax.set_xticks(chosen, [_unit_label(names[i]) for i in chosen], rotation=90, fontsize=6)
    if model in ENCODER_DECODER_MODELS and "dec.embed" in names:
        ax.axvline(names.index("dec.embed") - 0.5, color="black", linewidth=1.5,
                   gid="encoder|decoder")  # fmt: skip
