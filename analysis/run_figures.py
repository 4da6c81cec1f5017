"""Figures of one run: latency CDFs per policy and the server's load over time.

Drawn from a run folder's `requests.csv` (completed requests only) and `timeseries.csv`;
the TTFT/TPOT CDF needs a run at token granularity.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, MultipleLocator

from analysis.draw import figure_legend, panel_figure, policy_line
from analysis.io import MissingData, require_columns, require_rows
from analysis.labels import time_unit
from analysis.style import (
    COLUMN_WIDTH_IN,
    DOUBLE_WIDTH_IN,
    OKABE_ITO,
    ordered_policies,
    policy_style,
    styled,
)
from sim.records import STATUS_COMPLETED

# a fleet's servers: colour-blind-safe colours in turn (servers are not policies)
SERVER_COLORS = tuple(OKABE_ITO.values())

TOKEN_LATENCIES = {  # column -> (axis name, short name, deadline column)
    "ttft_s": ("Time to first token", "TTFT", "ttft_deadline_s"),
    "tpot_s": ("Time per output token", "TPOT", "tpot_deadline_s"),
}


# --- latency CDFs -------------------------------------------------------------------------


@styled
def latency_cdf(requests: pd.DataFrame) -> Figure:
    """CDF of completed requests' latency per policy, with the SLA marked.

    With one deadline for every request the x axis is latency and the SLA that deadline;
    when deadlines vary it is latency / the request's own deadline, with the SLA at 1.
    """
    require_columns(requests, ("policy", "latency_s", "deadline_s"), "requests")
    done = _completed(requests)
    done = done[np.isfinite(done["latency_s"].astype(float))]
    require_rows(done, "requests (completed)")
    deadline = done["deadline_s"].astype(float)
    fixed = deadline.max() <= deadline.min() * (1 + 1e-9)
    if fixed:
        scale, unit = time_unit(float(deadline.iloc[0]) * 2)
        value = done["latency_s"] * scale
        sla, xlabel = float(deadline.iloc[0]) * scale, f"Latency ({unit})"
        sla_label = f"SLA ({sla:g} {unit})"
    else:
        value = done["latency_s"] / deadline
        sla, xlabel, sla_label = 1.0, "Latency / request's deadline (×)", "SLA (own deadline)"
    fig = Figure(figsize=(COLUMN_WIDTH_IN, 3.0), layout="constrained")  # legend: 4 rows
    ax = fig.subplots()
    for policy in ordered_policies(done["policy"]):
        v = value[done["policy"] == policy].to_numpy(float)
        _cdf(ax, v, policy, f"{policy_style(policy).label} ({100.0 * np.mean(v > sla):.1f} %)")
    ax.axvline(sla, color="#555555", linewidth=1.0, linestyle="--", label=sla_label)
    right = max(float(np.quantile(value, 0.995)), sla) * 1.08
    _ticks_inside(ax, right)
    ax.set_ylim(0, 100)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Completed requests (%)")
    figure_legend(fig, [ax], ncols=2, note="Policy (late requests)")
    return fig


def _ticks_inside(ax: Axes, right: float) -> None:
    """x from 0 to at least `right`, ending half a tick step past the last tick, so no tick
    label hangs over the figure's right edge."""
    ticks = MaxNLocator(5).tick_values(0, right)
    step = float(ticks[1] - ticks[0])
    last = float(ticks[ticks <= right][-1])
    ax.xaxis.set_major_locator(MultipleLocator(step))
    ax.set_xlim(0, last + step / 2 if last + step / 2 >= right else last + 1.5 * step)


def _completed(requests: pd.DataFrame) -> pd.DataFrame:
    """The completed requests (all rows when the table has no status column)."""
    if "status" not in requests:
        return requests
    return requests[requests["status"] == STATUS_COMPLETED]


def _cdf(ax: Axes, values: Iterable[float], policy: str, label: str) -> None:
    """One policy's empirical CDF, in % of its values."""
    v = np.sort(np.asarray(values, float))
    ax.step(v, 100.0 * np.arange(1, v.size + 1) / max(v.size, 1), where="post",
            **_line_kwargs(policy, label))  # fmt: skip


@styled
def token_latency_cdf(requests: pd.DataFrame) -> Figure:
    """CDFs of completed requests' time to first token and time per output token, per
    policy, with the request classes' TTFT and TPOT deadlines marked when they set them."""
    require_columns(requests, ("policy", *TOKEN_LATENCIES), "requests")
    done = _completed(requests)
    if not np.isfinite(done["ttft_s"].astype(float)).any():
        raise MissingData("requests: ttft_s is NaN throughout (needs granularity: token)")
    fig, axes = panel_figure(2, sharex=False, panel_height=1.5)
    slas = []
    for ax, (column, (name, short, deadline)) in zip(axes, TOKEN_LATENCIES.items(), strict=True):
        value = done[column].astype(float)
        ok = np.isfinite(value)
        marks = np.unique(done.loc[ok, deadline].dropna()) if deadline in done else []
        marks = [float(d) for d in marks[:3]]
        top = max([float(np.quantile(value[ok], 0.995)) if ok.any() else 0.0, *marks])
        scale, unit = time_unit(top)
        for policy in ordered_policies(done["policy"]):
            _cdf(ax, value[ok & (done["policy"] == policy)] * scale, policy,
                 policy_style(policy).label)  # fmt: skip
        for d in marks:
            ax.axvline(d * scale, color="#555555", linewidth=1.0, linestyle="--", label="_sla")
        if marks:
            slas.append(f"{short} {', '.join(f'{d * scale:g}' for d in marks)} {unit}")
        ax.set_xlim(0, max(top * scale * 1.08, 1e-9))
        ax.set_ylim(0, 100)
        ax.set_xlabel(f"{name} ({unit})")
        ax.set_ylabel("Completed (%)")
    sla_lines = [line for ax in axes for line in ax.get_lines() if line.get_label() == "_sla"]
    if sla_lines:
        sla_lines[0].set_label(f"SLA ({'; '.join(slas)})")
    figure_legend(fig, axes, ncols=2)
    return fig


def _line_kwargs(policy: str, label: str) -> dict:
    """The policy's fixed colour and line style, without markers (a CDF has a point per value)."""
    st = policy_style(policy)
    return {"color": st.color, "linestyle": st.linestyle, "label": label,
            "gid": f"policy:{policy}", "linewidth": 1.6 if policy == "dp" else 1.3}  # fmt: skip


# --- server over time ---------------------------------------------------------------------


@styled
def server_timeline(timeseries: pd.DataFrame, replication: int | None = None) -> Figure:
    """Server utilisation and queue length over time for one run (one replication): a row
    per policy (small multiples sharing their axes, so no line hides another), utilisation
    on the left, queue on the right."""
    need = ("policy", "time_s", "server_utilization", "queue_length")
    require_columns(timeseries, need, "timeseries")
    require_rows(timeseries, "timeseries")
    rows = timeseries
    if "replication" in rows:
        rep = rows["replication"].min() if replication is None else replication
        rows = rows[rows["replication"] == rep]
        if rows.empty:
            raise MissingData(f"timeseries has no replication {replication}")
    policies = ordered_policies(rows["policy"])
    fig = Figure(figsize=(DOUBLE_WIDTH_IN, 0.35 + 0.95 * len(policies)), layout="constrained")
    axes = fig.subplots(len(policies), 2, sharex=True, sharey="col", squeeze=False)
    top = min(105.0, max(5.0, 115.0 * float(rows["server_utilization"].max())))
    for (util, queue), policy in zip(axes, policies, strict=True):
        r = rows[rows["policy"] == policy].sort_values("time_s")
        policy_line(util, policy, r["time_s"], r["server_utilization"] * 100, markers=False)
        policy_line(queue, policy, r["time_s"], r["queue_length"], markers=False)
        util.set_title(policy_style(policy).label, loc="left", fontsize="small")
        util.set_ylim(0, top)
        queue.set_ylim(bottom=0)
    axes[0][0].set_title("Server utilisation (%)", fontsize="medium")
    axes[0][1].set_title("Queue length (requests)", fontsize="medium")
    for ax in axes[-1]:
        ax.set_xlabel("Time (s)")
    return fig


@styled
def fleet_timeline(server_timeseries: pd.DataFrame, replication: int | None = None) -> Figure:
    """Each fleet server's utilisation and queue length over time: a column per policy,
    a line per server (one replication)."""
    need = ("policy", "server", "time_s", "server_utilization", "queue_length")
    require_columns(server_timeseries, need, "timeseries_servers")
    require_rows(server_timeseries, "timeseries_servers")
    rows = server_timeseries
    rep = rows["replication"].min() if replication is None else replication
    rows = rows[rows["replication"] == rep]
    if rows.empty:
        raise MissingData(f"timeseries_servers has no replication {replication}")
    policies = ordered_policies(rows["policy"])
    servers = list(dict.fromkeys(rows["server"]))
    fig = Figure(figsize=(DOUBLE_WIDTH_IN, 3.6), layout="constrained")
    axes = fig.subplots(2, len(policies), sharex=True, sharey="row", squeeze=False)
    colors = SERVER_COLORS
    for j, policy in enumerate(policies):
        for k, server in enumerate(servers):
            r = rows[(rows["policy"] == policy) & (rows["server"] == server)].sort_values("time_s")
            style = {"color": colors[k % len(colors)], "linewidth": 1.1, "label": server}
            axes[0][j].plot(r["time_s"], r["server_utilization"] * 100, **style)
            axes[1][j].plot(r["time_s"], r["queue_length"], **style)
        axes[0][j].set_title(policy_style(policy).label)
        axes[1][j].set_xlabel("Time (s)")
    axes[0][0].set_ylabel("Utilisation (%)")
    axes[0][0].set_ylim(0, 105)
    axes[1][0].set_ylabel("Queue (requests)")
    axes[1][0].set_ylim(bottom=0)
    figure_legend(fig, [axes[0][0]], ncols=min(len(servers), 6))
    return fig
