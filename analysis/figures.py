"""The paper's figures: one function per figure, DataFrame(s) in, matplotlib Figure out.

No file I/O here: `analysis.io` reads folders, `analysis.style.save_figure` writes files.
A function raises `analysis.io.MissingData` when its table lacks the rows or columns it
needs; `FIGURES` names each figure with its function and the tables it takes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import NullLocator

from analysis.draw import (
    figure_legend,
    log_axis_if_wide,
    panel_figure,
    plain_ticks,
    policy_bars,
    policy_line,
    policy_lines,
    set_xlabels,
    set_ylabels,
)
from analysis.io import MissingData, require_columns, require_rows
from analysis.labels import axis_label, time_unit
from analysis.style import (
    CLIENT_COLOR,
    COLUMN_WIDTH_IN,
    OKABE_ITO,
    SERVER_COLOR,
    ordered_policies,
    policy_style,
    styled,
)
from sim.records import STATUS_COMPLETED

WORKLOAD_LABELS = {
    "workload_ratio": "Server workload (% of server-only)",
    "server_work": "Server work per request (s)",
}
KIND_STYLE = {  # unit kind -> (label, colour, marker)
    "embed": ("embedding", OKABE_ITO["bluish_green"], "s"),
    "block": ("transformer block", OKABE_ITO["blue"], "o"),
    "attn": ("attention", OKABE_ITO["vermillion"], "^"),
    "mlp": ("MLP", OKABE_ITO["orange"], "v"),
    "head": ("head", OKABE_ITO["reddish_purple"], "D"),
}


# --- 1. per-unit costs --------------------------------------------------------------------


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
    fig = Figure(figsize=(COLUMN_WIDTH_IN, 4.3), layout="constrained")
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
    ax_f.legend(ncols=2, loc="upper left")
    _unit_times(ax_t, rows, per_kind, [k for k in ("block", "attn", "mlp") if k in kinds])
    for ax in (ax_f, ax_t):
        log_axis_if_wide(ax, per_kind.index.get_level_values(1), "x")
        ax.set_yscale("log")
    ax_t.set_xlabel(axis_label("tokens"))
    return fig


def _unit_times(ax, rows: pd.DataFrame, per_kind: pd.DataFrame, kinds: list[str]) -> None:
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
    ax.legend(loc="upper left")


def _names(rows: pd.DataFrame, column: str, fallback: str) -> str:
    if column not in rows:
        return fallback
    names = rows[column].dropna().astype(str).unique()
    return " / ".join(names) if len(names) else fallback


# --- 2-4. server workload from the static allocation studies ------------------------------


def _study(alloc: pd.DataFrame, study: str, y: str) -> pd.DataFrame:
    if y not in WORKLOAD_LABELS:
        raise ValueError(f"y must be one of {', '.join(WORKLOAD_LABELS)}")
    require_columns(alloc, ("study", "model", "policy", "x_name", "x", y), "allocation")
    rows = alloc[alloc["study"] == study]
    if rows.empty:
        raise MissingData(f"allocation has no rows with study '{study}'")
    rows = rows.copy()
    rows["_y"] = rows[y] * (100.0 if y == "workload_ratio" else 1.0)
    return rows


def _workload_panel(ax, rows: pd.DataFrame, log_x: bool) -> None:
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


def _device_names(ax, rows: pd.DataFrame) -> None:
    """Client device names along the top of a client-speed panel."""
    names = rows.drop_duplicates("x").sort_values("x")
    top = ax.secondary_xaxis("top")
    top.set_xticks(names["x"].to_numpy(float), list(names["client_device"].astype(str)))
    top.xaxis.set_minor_locator(NullLocator())
    top.tick_params(axis="x", labelsize=6, rotation=30, pad=1)
    for label in top.get_xticklabels():
        label.set_horizontalalignment("left")
        label.set_rotation_mode("anchor")


# --- 5. queueing against arrival rate -----------------------------------------------------


def _load_axis(ci: pd.DataFrame) -> str:
    """The column to plot against: the offered rate when it varies, else a varied load/rate."""
    col = "offered_rate_per_s_mean"
    if col in ci and ci[col].round(9).nunique() > 1:
        return col
    varied = [c for c in ci.columns if "." in c and ci[c].nunique() > 1]
    rate = [c for c in varied if c.rsplit(".", 1)[-1] in ("load", "rate_per_s")]
    if rate and pd.api.types.is_numeric_dtype(ci[rate[0]]):
        return rate[0]
    raise MissingData("sweep_ci: the arrival rate does not vary across the sweep's points")


def _ci_names(metrics) -> list[str]:
    return [f"{m}_{s}" for m in metrics for s in ("mean", "ci95")]


def _one_factor(ci: pd.DataFrame, x: str, what: str) -> None:
    """Refuse a sweep_ci with more than one row per policy and `x` (another factor varies)."""
    if ci.assign(_x=ci[x].round(9)).duplicated(["policy", "_x"]).any():
        others = [c for c in ci.columns if "." in c and c != x and ci[c].nunique() > 1]
        extra = f" ({', '.join(others)})" if others else ""
        raise MissingData(f"sweep_ci varies more than {what}{extra}; plot one slice")


def _ci_panels(
    ci: pd.DataFrame, x: str, panels: list[tuple], panel_height: float = 1.45, legend: bool = True
):
    """A panel per (metric, y label, scale, clip): a line per policy with its 95 % band."""
    fig, axes = panel_figure(len(panels), sharex=True, panel_height=panel_height)
    for ax, (metric, label, scale, clip) in zip(axes, panels, strict=True):
        policy_lines(ax, ci, x, f"{metric}_mean", scale, ci=f"{metric}_ci95", clip=clip)
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
    set_xlabels(axes, axis_label(x.removesuffix("_mean")))
    if legend:
        figure_legend(fig, axes)
    return fig, axes


POSITIVE = (0.0, np.inf)
PERCENT = (0.0, 100.0)


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
    return _ci_panels(ci, x, panels)[0]


@styled
def sla_vs_load_queue_aware(ci: pd.DataFrame) -> Figure:
    """SLA violation rate against offered load, dp_queue_aware beside dp and the other
    policies of the sweep, 95 % bands: what planning with the server's wait buys."""
    require_columns(ci, ["policy", *_ci_names(["sla_violation_rate"])], "sweep_ci")
    if not (ci["policy"] == "dp_queue_aware").any():
        known = ", ".join(ordered_policies(ci["policy"])) or "none"
        raise MissingData(f"sweep_ci has no dp_queue_aware rows (policies: {known})")
    x = _load_axis(ci)
    _one_factor(ci, x, "the arrival rate")
    panel = ("sla_violation_rate", "SLA violations (%)", 100.0, PERCENT)
    return _ci_panels(ci, x, [panel], panel_height=2.0)[0]


# --- 5b. batching (token granularity) -----------------------------------------------------


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
    panels = [("server_tokens_per_s", "Server throughput (tokens/s)", 1.0, POSITIVE),
              ("throughput_rps", "Throughput (requests/s)", 1.0, POSITIVE)]  # fmt: skip
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


# --- 6. capacity --------------------------------------------------------------------------


@styled
def capacity(ci: pd.DataFrame) -> Figure:
    """Highest sustainable arrival rate per policy (95 % CI) and dp's gain over each baseline."""
    require_columns(ci, ("policy", "capacity_rps_mean", "capacity_rps_ci95"), "capacity_ci")
    require_rows(ci, "capacity_ci")
    policies = ordered_policies(ci["policy"])
    ci = ci.reset_index(drop=True)
    if "point" not in ci:
        ci = ci.assign(point=0)
    points = list(dict.fromkeys(ci["point"]))
    groups = [_point_label(ci[ci["point"] == p]) for p in points]
    keyed = ci.drop_duplicates(["point", "policy"]).set_index(["point", "policy"])

    def by_policy(column: str, names: list[str]) -> dict[str, list[float]]:
        return {n: [float(keyed[column].get((p, n), np.nan)) for p in points] for n in names}

    has_gain = "gain_of_dp_pct_mean" in ci and ci["gain_of_dp_pct_mean"].notna().any()
    fig, axes = panel_figure(2 if has_gain else 1, sharex=False)
    policy_bars(axes[0], groups, policies, by_policy("capacity_rps_mean", policies),
                by_policy("capacity_rps_ci95", policies))  # fmt: skip
    axes[0].set_ylabel("Capacity (requests/s)")
    if has_gain:
        baselines = [p for p in policies if p != "dp"]
        gain_ci = (
            by_policy("gain_of_dp_pct_ci95", baselines) if "gain_of_dp_pct_ci95" in ci else None
        )
        policy_bars(
            axes[1], groups, baselines, by_policy("gain_of_dp_pct_mean", baselines), gain_ci
        )
        axes[1].set_ylabel("Capacity gain of DP (%)")
        axes[1].axhline(0, color="black", linewidth=0.6)
        low, high = axes[1].get_ylim()
        axes[1].set_ylim(min(low, -2.0), max(high, 10.0))  # a zero gain still reads as zero
    if len(groups) > 1:
        figure_legend(fig, axes)
    return fig


def _point_label(rows: pd.DataFrame) -> str:
    factors = [c for c in rows.columns if "." in c]
    return ", ".join(f"{c.rsplit('.', 1)[-1]}={rows[c].iloc[0]:g}" for c in factors) or "all"


# --- 7. placement map ---------------------------------------------------------------------


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


def _placement_panel(ax, rows: pd.DataFrame) -> None:
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


# --- 8. latency CDF -----------------------------------------------------------------------


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
    fig = Figure(figsize=(COLUMN_WIDTH_IN, 2.5), layout="constrained")
    ax = fig.subplots()
    for policy in ordered_policies(done["policy"]):
        v = value[done["policy"] == policy].to_numpy(float)
        _cdf(ax, v, policy, f"{policy_style(policy).label} ({100.0 * np.mean(v > sla):.1f} % late)")
    ax.axvline(sla, color="#555555", linewidth=1.0, linestyle="--", label=sla_label)
    right = max(float(np.quantile(value, 0.995)), sla) * 1.08
    ax.set_xlim(0, right)
    ax.set_ylim(0, 100)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Completed requests (%)")
    figure_legend(fig, [ax], ncols=2)
    return fig


def _completed(requests: pd.DataFrame) -> pd.DataFrame:
    if "status" not in requests:
        return requests
    return requests[requests["status"] == STATUS_COMPLETED]


def _cdf(ax, values, policy: str, label: str) -> None:
    """One policy's empirical CDF, in % of its values."""
    v = np.sort(np.asarray(values, float))
    ax.step(v, 100.0 * np.arange(1, v.size + 1) / max(v.size, 1), where="post",
            **_line_kwargs(policy, label))  # fmt: skip


TOKEN_LATENCIES = {  # column -> (axis name, short name, deadline column)
    "ttft_s": ("Time to first token", "TTFT", "ttft_deadline_s"),
    "tpot_s": ("Time per output token", "TPOT", "tpot_deadline_s"),
}


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
        slas += [f"{short} {d * scale:g} {unit}" for d in marks]
        ax.set_xlim(0, max(top * scale * 1.08, 1e-9))
        ax.set_ylim(0, 100)
        ax.set_xlabel(f"{name} ({unit})")
        ax.set_ylabel("Completed (%)")
    sla_lines = [line for ax in axes for line in ax.get_lines() if line.get_label() == "_sla"]
    if sla_lines:
        sla_lines[0].set_label(f"SLA ({', '.join(slas)})")
    figure_legend(fig, axes)
    return fig


def _line_kwargs(policy: str, label: str) -> dict:
    st = policy_style(policy)
    return {"color": st.color, "linestyle": st.linestyle, "label": label,
            "gid": f"policy:{policy}", "linewidth": 1.6 if policy == "dp" else 1.3}  # fmt: skip


# --- 9. server over time ------------------------------------------------------------------


@styled
def server_timeline(timeseries: pd.DataFrame, replication: int | None = None) -> Figure:
    """Server utilisation and queue length over time for one run (one replication)."""
    need = ("policy", "time_s", "server_utilization", "queue_length")
    require_columns(timeseries, need, "timeseries")
    require_rows(timeseries, "timeseries")
    rows = timeseries
    if "replication" in rows:
        rep = rows["replication"].min() if replication is None else replication
        rows = rows[rows["replication"] == rep]
        if rows.empty:
            raise MissingData(f"timeseries has no replication {replication}")
    fig, axes = panel_figure(2, sharex=True, panel_height=1.45)
    for policy in ordered_policies(rows["policy"]):
        r = rows[rows["policy"] == policy].sort_values("time_s")
        policy_line(axes[0], policy, r["time_s"], r["server_utilization"] * 100, markers=False)
        policy_line(axes[1], policy, r["time_s"], r["queue_length"], markers=False)
    axes[0].set_ylabel("Server utilisation (%)")
    axes[0].set_ylim(0, min(105.0, max(5.0, 115.0 * float(rows["server_utilization"].max()))))
    axes[1].set_ylabel("Queue length (requests)")
    axes[1].set_ylim(bottom=0)
    set_xlabels(axes, "Time (s)")
    figure_legend(fig, axes)
    return fig


# --- registry -----------------------------------------------------------------------------


class FigureSpec(NamedTuple):
    """A figure: its function, the tables it takes (in order) and what in them it uses."""

    function: Callable[..., Figure]
    needs: tuple[str, ...]
    about: str


FIGURES: dict[str, FigureSpec] = {
    "unit_costs": FigureSpec(unit_costs, ("unit_costs",),
                             "unit_costs.csv: FLOPs and client/server time per unit vs tokens"),
    "workload_vs_sla": FigureSpec(workload_vs_sla, ("allocation",),
                                  "allocation.csv rows with study 'sla'"),
    "workload_vs_tokens": FigureSpec(workload_vs_tokens, ("allocation",),
                                     "allocation.csv rows with study 'tokens'"),
    "sensitivity": FigureSpec(sensitivity, ("allocation",),
                              "allocation.csv rows with study 'client_speed' or 'bandwidth'"),
    "queueing": FigureSpec(queueing, ("sweep_ci",),
                           "sweep_ci.csv of a sweep that varies the arrival rate"),
    "capacity": FigureSpec(capacity, ("capacity_ci",), "capacity_ci.csv (splitsim capacity)"),
    "placement_map": FigureSpec(placement_map, ("allocation",),
                                "allocation.csv dp rows with study 'tokens' or 'bandwidth'"),
    "latency_cdf": FigureSpec(latency_cdf, ("requests",),
                              "requests.csv: latency_s and deadline_s of completed requests"),
    "token_latency_cdf": FigureSpec(token_latency_cdf, ("requests",),
                                    "requests.csv of a token-granularity run: ttft_s, tpot_s"),
    "throughput_vs_batch": FigureSpec(throughput_vs_batch, ("sweep_ci",),
                                      "sweep_ci.csv of a sweep that varies max_batch_requests"),
    "sla_vs_load_queue_aware": FigureSpec(sla_vs_load_queue_aware, ("sweep_ci",),
                                          "sweep_ci.csv of a load sweep with dp_queue_aware"),
    "server_timeline": FigureSpec(server_timeline, ("timeseries",),
                                  "timeseries.csv: server utilisation and queue length"),
}  # fmt: skip
