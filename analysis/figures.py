"""The paper's figures: one function per figure, DataFrame(s) in, matplotlib Figure out.

No file I/O here: `analysis.io` reads folders, `analysis.style.save_figure` writes files.
A function raises `analysis.io.MissingData` when its table lacks the rows or columns it
needs; `FIGURES` names each figure with its function and the tables it takes.

The functions live by the tables they draw from: `cost_figures` (unit_costs.csv),
`static_figures` (allocation.csv), `sweep_figures` (sweep_ci.csv, capacity_ci.csv) and
`run_figures` (requests.csv, timeseries.csv). They, their constants and their helpers are
re-exported here, so `analysis.figures` stays the one place to import a figure from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from matplotlib.figure import Figure

from analysis.abs_sla_figures import workload_vs_tokens_abs_sla
from analysis.cost_figures import KIND_STYLE, unit_costs
from analysis.cost_figures import _names as _names
from analysis.cost_figures import _unit_times as _unit_times
from analysis.run_figures import (
    TOKEN_LATENCIES,
    fleet_timeline,
    latency_cdf,
    server_timeline,
    token_latency_cdf,
)
from analysis.run_figures import _cdf as _cdf
from analysis.run_figures import _completed as _completed
from analysis.run_figures import _line_kwargs as _line_kwargs
from analysis.static_figures import (
    WORKLOAD_LABELS,
    placement_map,
    sensitivity,
    workload_vs_sla,
    workload_vs_tokens,
)
from analysis.static_figures import _placement_panel as _placement_panel
from analysis.static_figures import _study as _study
from analysis.static_figures import _workload_figure as _workload_figure
from analysis.static_figures import _workload_panel as _workload_panel
from analysis.sweep_figures import (
    PERCENT,
    POSITIVE,
    capacity,
    queueing,
    sla_vs_load_queue_aware,
    throughput_vs_batch,
)
from analysis.sweep_figures import _ci_names as _ci_names
from analysis.sweep_figures import _ci_panels as _ci_panels
from analysis.sweep_figures import _load_axis as _load_axis
from analysis.sweep_figures import _one_factor as _one_factor
from analysis.sweep_figures import _point_label as _point_label

__all__ = [
    "FIGURES",
    "KIND_STYLE",
    "PERCENT",
    "POSITIVE",
    "TOKEN_LATENCIES",
    "WORKLOAD_LABELS",
    "FigureSpec",
    "capacity",
    "latency_cdf",
    "placement_map",
    "queueing",
    "sensitivity",
    "server_timeline",
    "fleet_timeline",
    "sla_vs_load_queue_aware",
    "throughput_vs_batch",
    "token_latency_cdf",
    "unit_costs",
    "workload_vs_sla",
    "workload_vs_tokens",
    "workload_vs_tokens_abs_sla",
]


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
    "workload_vs_tokens_abs_sla": FigureSpec(
        workload_vs_tokens_abs_sla, ("allocation",),
        "allocation.csv rows with study 'tokens_abs_sla'"),
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
    "fleet_timeline": FigureSpec(fleet_timeline, ("server_timeseries",),
                                 "timeseries_servers.csv of a fleet run: each server over time"),
}  # fmt: skip
