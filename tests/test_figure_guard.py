"""The figure guard: every figure, drawn from realistic small tables (six policies, long
model and device names, close tick values), has no overlapping text, a visible line or bar
per policy of its data, a colour per policy and a paper width (`tests/figure_checks.py`)."""

from __future__ import annotations

from collections.abc import Callable
from itertools import combinations

import numpy as np
import pandas as pd
import pytest
from figure_checks import (
    figure_problems,
    legend_covers,
    missing_policies,
    render,
    shared_colours,
    size_problems,
    text_overlaps,
    too_close,
)
from matplotlib.figure import Figure
from test_analysis import (
    allocation_frame,
    batch_ci_frame,
    capacity_ci_frame,
    requests_frame,
    server_timeseries_frame,
    sweep_ci_frame,
    timeseries_frame,
    token_requests_frame,
    unit_cost_frame,
)

from analysis import batching, fleet
from analysis.figures import FIGURES
from analysis.style import POLICY_STYLES, policy_style

POLICIES = ["server_only", "greedy", "greedy_ratio", "best_cut", "dp", "dp_queue_aware"]
MODELS = {"bert-large": "meta-llama-3.1-8b-instruct", "gpt2-large": "mistral-7b-instruct-v0.3"}
DEVICES = {"laptop-m2": "apple-macbook-pro-m2-max", "phone-flagship": "samsung-galaxy-s24-ultra",
           "a100-80gb": "nvidia-a100-sxm4-80gb"}  # fmt: skip


# --- fixtures: test_analysis's frames with every policy and long names ------------------------


def _six_policies(frame: pd.DataFrame, copy_of: str = "dp", factor: float = 0.8) -> pd.DataFrame:
    """`frame` with dp_queue_aware rows (a copy of `copy_of`'s, numbers scaled by `factor`)."""
    extra = frame[frame["policy"] == copy_of].assign(policy="dp_queue_aware")
    for column in extra.select_dtypes("number").columns:
        scaled = ("_mean", "_s", "server_utilization", "queue_length")
        if column.endswith(scaled) and "deadline" not in column:
            extra[column] = extra[column] * factor
    return pd.concat([frame, extra], ignore_index=True)


def _long_names(frame: pd.DataFrame) -> pd.DataFrame:
    """Models and devices renamed to long, realistic names."""
    names = {**MODELS, **DEVICES}
    return frame.replace({c: names for c in ("model", "client_device", "server_device")
                          if c in frame})  # fmt: skip


def close_load_sweep() -> pd.DataFrame:
    """A load sweep at close loads (0.8 to 1.15 by 0.05) with every policy."""
    rows = []
    for point, load in enumerate(np.round(np.arange(0.8, 1.16, 0.05), 2)):
        for pi, policy in enumerate(POLICIES):
            wait = 0.02 * load**6 / (1 + 0.4 * pi)
            rows.append({"point": point, "workload.arrival.load": load, "policy": policy,
                         "replications": 5, "offered_rate_per_s_mean": 3.7 * load,
                         "offered_rate_per_s_ci95": 0.0, "wait_mean_s_mean": wait,
                         "wait_mean_s_ci95": 0.2 * wait, "wait_max_s_mean": 20 * wait,
                         "wait_max_s_ci95": 4 * wait,
                         "sla_violation_rate_mean": min(1.0, 0.3 * load**4 / (1 + 0.3 * pi)),
                         "sla_violation_rate_ci95": 0.02})  # fmt: skip
    return pd.DataFrame(rows)


def capacity_frame() -> pd.DataFrame:
    """Two capacity points with every policy; dp_queue_aware above dp (a negative gain of
    dp) and best_cut's gain crossing zero."""
    one = pd.concat([capacity_ci_frame(), pd.DataFrame([{
        "point": 0, "policy": "dp_queue_aware", "replications": 3, "capacity_rps_mean": 61.0,
        "capacity_rps_ci95": 3.0, "gain_of_dp_pct_mean": -26.0, "gain_of_dp_pct_ci95": 4.0}])],
        ignore_index=True)  # fmt: skip
    gain = ["gain_of_dp_pct_mean", "gain_of_dp_pct_ci95"]
    one.loc[one["policy"] == "best_cut", gain] = [1.0, 3.0]
    return pd.concat([one.assign(**{"clients.0.link.uplink_mbps": 10.0}),
                      one.assign(point=1, **{"clients.0.link.uplink_mbps": 100.0})],
                     ignore_index=True)  # fmt: skip


def batching_table() -> pd.DataFrame:
    """A batching capacity.csv: two traces, two KV sizes, five policies, three replications."""
    rows = []
    policies = {"server_only": 1.0, "greedy": 0.95, "dp": 1.1, "dp_batched": 1.15,
                "dp_batched_phases": 1.2}  # fmt: skip
    points = [(t, kv) for t in ("data/splitwise_conv.csv", "data/splitwise_code.csv")
              for kv in (None, 2.0)]  # fmt: skip
    for point, (path, kv) in enumerate(points):
        for count in (200, 800):  # laptops of 1000 clients
            for rep in range(3):
                for policy, factor in policies.items():
                    cap = (10.0 + rep) * factor * (1 + 0.1 * point)
                    rows.append({"point": 2 * point + (count > 500), "workload.arrival.path": path,
                                 "simulation.kv_memory_gb": kv, "clients.0.count": count,
                                 "clients.1.count": 1000 - count, "policy": policy,
                                 "replication": rep, "capacity_rps": cap, "upper_rps": cap * 1.05,
                                 "evaluations": 6, "error": np.nan})  # fmt: skip
    return pd.DataFrame(rows)


def fleet_table() -> pd.DataFrame:
    """A fleet capacity.csv: three routers, four policies, three replications."""
    rows = []
    for r, rf in {"random": 0.8, "least_outstanding": 1.0, "split_aware": 1.05}.items():
        for p, pf in {"server_only": 1.0, "greedy": 1.05, "dp": 1.1, "dp_queue_aware": 1.3}.items():
            for rep in range(3):
                cap = (100 + 20 * rep) * rf * pf
                rows.append({"point": 0, "routing.policy": r, "policy": p, "replication": rep,
                             "capacity_rps": cap, "upper_rps": cap * 1.03, "evaluations": 7,
                             "error": np.nan})  # fmt: skip
    return pd.DataFrame(rows)


def _server_timeseries() -> pd.DataFrame:
    """Three policies, three servers (long names) each loaded differently."""
    frame = _six_policies(server_timeseries_frame().replace({"dp": "greedy"}), "greedy")
    share = frame["server"].map({"edge": 1.0, "cloud-0": 0.6, "cloud-1": 0.3})
    frame = frame.assign(server_utilization=frame["server_utilization"] * share,
                         queue_length=frame["queue_length"] * share)  # fmt: skip
    return frame.replace({"server": {"cloud-0": "cloud-a100-eu-west-0", "edge": "edge-l4-0"}})


CASES: dict[str, Callable[[], tuple[Figure, list[str]]]] = {}


def case(name: str):
    """Register a figure case: a function returning the drawn figure and its table's policies."""

    def register(build: Callable[[], tuple]) -> Callable[[], tuple]:
        CASES[name] = build
        return build

    return register


# Figures that draw no artist per policy of their table, by contract: the placement map
# shows dp's placements; the fleet timeline a column per policy, a line per server.
NO_POLICY_ARTISTS = {"placement_map", "fleet_timeline"}


def _registered(name: str, *frames: pd.DataFrame) -> tuple[Figure, list[str]]:
    """FIGURES[name] on `frames`, with the policies of the first one it draws a line for."""
    first = frames[0]
    policies = list(dict.fromkeys(first["policy"])) if "policy" in first else []
    return FIGURES[name].function(*frames), [] if name in NO_POLICY_ARTISTS else policies


_FRAMES: dict[str, Callable[[], tuple[pd.DataFrame, ...]]] = {
    "unit_costs": lambda: (_long_names(unit_cost_frame()),),
    "workload_vs_sla": lambda: (_long_names(_six_policies(allocation_frame())),),
    "workload_vs_tokens": lambda: (_long_names(_six_policies(allocation_frame())),),
    "workload_vs_tokens_abs_sla": lambda: (_long_names(_six_policies(allocation_frame())),),
    "sensitivity": lambda: (_long_names(_six_policies(allocation_frame())),),
    "placement_map": lambda: (_long_names(_six_policies(allocation_frame())),),
    "queueing": lambda: (close_load_sweep(),),
    "capacity": lambda: (capacity_frame(),),
    "latency_cdf": lambda: (_six_policies(requests_frame()),),
    "token_latency_cdf": lambda: (_six_policies(token_requests_frame()),),
    "throughput_vs_batch": lambda: (_six_policies(batch_ci_frame()),),
    "sla_vs_load_queue_aware": lambda: (close_load_sweep(),),
    "server_timeline": lambda: (_six_policies(timeseries_frame()),),
    "fleet_timeline": lambda: (_server_timeseries(),),
}
for _name in FIGURES:
    case(_name)(lambda _name=_name: _registered(_name, *_FRAMES[_name]()))
case("queueing_wide_sweep")(lambda: _registered("queueing", _six_policies(sweep_ci_frame())))
case("latency_cdf_fixed_deadline")(
    lambda: _registered("latency_cdf", _six_policies(requests_frame(fixed_deadline=True)))
)
case("capacity_one_point")(
    lambda: _registered("capacity", capacity_frame().query("point == 0").drop(
        columns="clients.0.link.uplink_mbps"))
)  # fmt: skip
# the batching figure shows gains over server-only: every policy but the baseline has bars
case("batching.figure")(lambda: (batching.figure(batching_table()),
                                 [p for p in batching_table()["policy"].unique()
                                  if p != batching.BASE]))  # fmt: skip
case("fleet.figure")(lambda: (fleet.figure(fleet_table()),
                              list(fleet_table()["policy"].unique())))  # fmt: skip


# --- the guard ----------------------------------------------------------------------------


def test_every_registered_figure_is_guarded():
    assert set(FIGURES) <= set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_figure_passes_the_guard(name):
    fig, policies = CASES[name]()
    problems = figure_problems(fig, policies)
    assert not problems, f"{name}:\n  " + "\n  ".join(problems)


def test_the_fleet_timeline_has_a_titled_column_per_policy():
    fig, _ = CASES["fleet_timeline"]()
    titles = {ax.get_title() for ax in fig.axes}
    assert {policy_style(p).label for p in _server_timeseries()["policy"]} <= titles


def test_policy_colours_are_told_apart_with_colour_vision_deficiencies():
    colours = {p: s.color for p, s in POLICY_STYLES.items()}
    close = [(a, b, too_close(colours[a], colours[b])) for a, b in combinations(colours, 2)]
    assert [c for c in close if c[2]] == []


# --- the checks themselves catch what they should -----------------------------------------


def _figure(width: float = 3.4, height: float = 2.0) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def test_overlapping_texts_are_named():
    fig = _figure()
    ax = fig.subplots()
    ax.set_title("a long title here")
    ax.text(0.5, 1.02, "a text on the title", transform=ax.transAxes, ha="center")
    assert any("'a text on the title'" in p and "'a long title here'" in p
               for p in text_overlaps(fig))  # fmt: skip


def test_crowded_tick_labels_overlap():
    fig = _figure()
    ax = fig.subplots()
    ax.set_xticks(np.arange(10), [f"long-device-name-{i}" for i in range(10)])
    assert text_overlaps(fig)


def test_a_legend_over_another_panels_title_or_ticks_is_found():
    fig = Figure(figsize=(3.4, 2.0))  # no layout engine: nothing moves the legend away
    top, bottom = fig.subplots(2, 1)
    bottom.set_title("lower panel")
    top.plot([0, 1], [0, 1], label="a line with a long legend label")
    top.legend(
        loc="upper center", bbox_to_anchor=(0.5, -0.1), borderaxespad=0, ncols=1, borderpad=2.5
    )  # a tall frame: over the ticks and the title below
    problems = legend_covers(fig, render(fig))
    assert "legend frame covers x tick '0.4'" in problems
    assert "legend frame covers title 'lower panel'" in problems


def test_a_policy_without_a_line_and_shared_colours_are_found():
    fig = _figure()
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="C0", label="DP")
    ax.plot([0, 1], [1, 0], color="C0", label="greedy")
    ax.plot([0, 1], [np.nan, np.nan], color="C1", label="best-cut")  # nothing drawn
    assert missing_policies(fig, ["dp", "greedy", "best_cut"]) == [
        "policy 'best_cut' has no visible artist"]  # fmt: skip
    assert shared_colours(fig, ["dp", "greedy"]) == [
        "policies 'dp' (#1f77b4) and 'greedy' (#1f77b4) share a colour: the same"]  # fmt: skip


def test_two_blues_are_too_close():
    assert too_close("#0072B2", "#56B4E9")  # the old dp and dp_queue_aware
    assert too_close("#0072B2", "#D55E00") is None


def test_sizes_outside_the_width_family_or_too_tall_are_found():
    assert size_problems(_figure(3.4, 2.0)) == size_problems(_figure(7.0, 8.0)) == []
    assert len(size_problems(_figure(6.8, 2.0))) == 1
    assert len(size_problems(_figure(3.4, 9.0))) == 1
