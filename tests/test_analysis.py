"""Figures from result folders: every figure on synthetic frames, `splitsim plot` end to end,
and the rule that analysis/ imports nothing from the simulator but records and stats."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

from analysis.figures import FIGURES
from analysis.io import MissingData, load_folder
from analysis.style import (
    POLICY_STYLES,
    ordered_policies,
    parse_formats,
    policy_style,
    save_figure,
)
from sim.cli import main
from sim.records import (
    ALLOCATION_COLUMNS,
    REQUEST_COLUMNS,
    TIMESERIES_COLUMNS,
    UNIT_COST_COLUMNS,
)

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ["server_only", "greedy", "greedy_ratio", "best_cut", "dp"]
LABELS = [POLICY_STYLES[p].label for p in POLICIES]


# --- synthetic frames, built from the record column names ---------------------------------


def unit_cost_frame() -> pd.DataFrame:
    rows = []
    hidden, params = 1024, 12.6e6
    units = [("embed", "embed")] + [(f"block{i}", "block") for i in range(4)] + [("head", "head")]
    for tokens in (64, 128, 256, 512, 1024, 2048, 4096):
        for i, (name, kind) in enumerate(units):
            flops = 2 * params * tokens + (4 * tokens**2 * hidden if kind == "block" else 0)
            rows.append(dict(model="gpt2-large", unit_index=i, unit=name, kind=kind, tokens=tokens,
                             flops=flops, bytes=2 * params, client_device="phone-flagship",
                             client_s=flops / 2e12, server_device="a100-80gb",
                             server_s=flops / 2e14))  # fmt: skip
    return pd.DataFrame(rows, columns=list(UNIT_COST_COLUMNS))


STUDIES = {  # study -> (x_name, x values)
    "sla": ("deadline_factor", [1.5, 2, 3, 5, 10, 20]),
    "tokens": ("prompt_tokens", [64, 128, 256, 512, 1024, 2048]),
    "client_speed": ("client_tflops", [0.1, 2.0, 5.0, 14.0, 40.0, 80.0]),
    "bandwidth": ("uplink_mbps", [2, 6.3, 20, 63, 200]),
    "tokens_abs_sla": ("prompt_tokens", [64, 128, 256, 512, 1024]),
}
DEVICES = ["rpi4", "phone-flagship", "jetson-orin-nano", "laptop-m2", "jetson-agx-orin", "rtx-4090"]


def allocation_frame() -> pd.DataFrame:
    rows = []
    n_units = 8
    for study, (x_name, xs) in STUDIES.items():
        for model in ("bert-large", "gpt2-large"):
            for pi, policy in enumerate(POLICIES):
                for xi, x in enumerate(xs):
                    ratio = 1.0 if policy == "server_only" else max(0.2, 1 - 0.05 * pi * (xi + 1))
                    on_client = round((1 - ratio) * n_units)
                    rows.append(dict(
                        study=study, model=model, task="forward", policy=policy, x_name=x_name,
                        x=x, client_device=DEVICES[xi] if study == "client_speed" else "laptop-m2",
                        prompt_tokens=x if study == "tokens" else 256, output_tokens=0,
                        uplink_mbps=x if study == "bandwidth" else 50, deadline_s=0.1,
                        server_work=ratio * 0.01, server_only_work=0.01, workload_ratio=ratio,
                        latency_s=0.09, feasible=xi > 0, client_units=on_client, n_units=n_units,
                        placement="C" * on_client + "S" * (n_units - on_client),
                    ))  # fmt: skip
    return pd.DataFrame(rows, columns=list(ALLOCATION_COLUMNS))


def sweep_ci_frame() -> pd.DataFrame:
    rows = []
    for point, load in enumerate((0.2, 0.6, 1.0, 1.4)):
        for pi, policy in enumerate(POLICIES):
            wait = load**3 / (1 + pi)
            rows.append({"point": point, "workload.arrival.load": load, "policy": policy,
                         "replications": 3, "offered_rate_per_s_mean": 100 * load,
                         "offered_rate_per_s_ci95": 0.0, "wait_mean_s_mean": wait,
                         "wait_mean_s_ci95": 0.1 * wait, "wait_max_s_mean": 4 * wait,
                         "wait_max_s_ci95": 0.4 * wait, "sla_violation_rate_mean": min(1, wait),
                         "sla_violation_rate_ci95": 0.05})  # fmt: skip
    return pd.DataFrame(rows)


def batch_ci_frame() -> pd.DataFrame:
    """A token-mode sweep of the batch limit: throughput grows with the batch, then levels."""
    rows = []
    for point, batch in enumerate((1, 4, 16, 64)):
        for pi, policy in enumerate(POLICIES):
            rps = 4 * (1 - np.exp(-batch / (4 + pi)))
            rows.append({"point": point, "simulation.max_batch_requests": batch, "policy": policy,
                         "replications": 2, "offered_rate_per_s_mean": 4.0,
                         "offered_rate_per_s_ci95": 0.0, "throughput_rps_mean": rps,
                         "throughput_rps_ci95": 0.1 * rps, "server_tokens_per_s_mean": 1200 * rps,
                         "server_tokens_per_s_ci95": 120 * rps})  # fmt: skip
    return pd.DataFrame(rows)


def queue_aware_ci_frame() -> pd.DataFrame:
    """The load sweep with dp_queue_aware, which violates fewer SLAs than dp at high load."""
    ci = sweep_ci_frame()
    aware = ci[ci["policy"] == "dp"].assign(policy="dp_queue_aware")
    aware["sla_violation_rate_mean"] *= 0.5
    return pd.concat([ci, aware], ignore_index=True)


def capacity_ci_frame() -> pd.DataFrame:
    caps = dict(zip(POLICIES, (30.0, 36.0, 38.0, 37.0, 45.0), strict=True))
    return pd.DataFrame([{"point": 0, "policy": p, "replications": 3, "capacity_rps_mean": c,
                          "capacity_rps_ci95": 1.5,
                          "gain_of_dp_pct_mean": np.nan if p == "dp" else (45 / c - 1) * 100,
                          "gain_of_dp_pct_ci95": np.nan if p == "dp" else 2.0}
                         for p, c in caps.items()])  # fmt: skip


def requests_frame(fixed_deadline: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 300
    frames = []
    for pi, policy in enumerate(POLICIES):
        deadline = np.full(n, 0.2) if fixed_deadline else rng.uniform(0.05, 0.5, n)
        latency = deadline * rng.uniform(0.2, 1.0 + 0.05 * pi, n)
        frame = pd.DataFrame({c: 0 for c in REQUEST_COLUMNS}, index=range(n))
        frame["policy"], frame["request_id"] = policy, np.arange(n)
        frame["status"] = np.where(np.arange(n) % 50 == 0, "rejected", "completed")
        frame["latency_s"], frame["deadline_s"] = latency, deadline
        frame["sla_met"] = latency <= deadline
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def token_requests_frame(deadlines: bool = True) -> pd.DataFrame:
    """requests_frame with token-mode latencies: TTFT around a second, TPOT tens of ms."""
    frame = requests_frame()
    rng = np.random.default_rng(1)
    frame["ttft_s"] = rng.lognormal(0.0, 0.6, len(frame))
    frame["tpot_s"] = rng.lognormal(np.log(0.04), 0.5, len(frame))
    frame["ttft_deadline_s"] = 2.0 if deadlines else np.nan
    frame["tpot_deadline_s"] = 0.1 if deadlines else np.nan
    return frame


def timeseries_frame() -> pd.DataFrame:
    t = np.arange(0.25, 20, 0.5)
    return pd.DataFrame(
        [dict(policy=p, replication=r, time_s=ti, server_busy_slots=u, server_utilization=u,
              queue_length=3 * u) for p in POLICIES for r in (0, 1)
         for ti, u in zip(t, 0.5 + 0.3 * np.sin(t + POLICIES.index(p)), strict=True)],
        columns=list(TIMESERIES_COLUMNS),
    )  # fmt: skip


# --- helpers ------------------------------------------------------------------------------


def policy_artists(ax) -> list[str]:
    """Policies drawn in a panel, from the gid each line or bar container carries."""
    gids = [a.get_gid() for a in ax.get_lines()]
    gids += [c.patches[0].get_gid() for c in ax.containers if isinstance(c, BarContainer)]
    return [g.split(":", 1)[1] for g in gids if g and g.startswith("policy:")]


def legend_texts(fig: Figure) -> list[str]:
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()]


def has_unit(label: str) -> bool:
    return "(" in label and label.rstrip().endswith(")")


def ylabel(ax) -> str:
    """The panel's y label, or the figure's shared one."""
    return ax.get_ylabel() or ax.figure.get_supylabel()


def visible_axes(fig: Figure):
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


# --- every figure on synthetic data -------------------------------------------------------


def test_registry_names_fourteen_figures_with_known_tables():
    from analysis.io import TABLES

    assert len(FIGURES) == 14
    for name, spec in FIGURES.items():
        assert callable(spec.function) and spec.about, name
        assert all(t in TABLES for t in spec.needs), name


def test_unit_costs_shows_flops_and_client_and_server_time_against_tokens():
    fig = FIGURES["unit_costs"].function(unit_cost_frame())
    top, bottom = fig.axes
    assert top.get_ylabel() == "Compute per unit (GFLOP)"
    assert bottom.get_ylabel() == "Time per transformer block (ms)"
    assert bottom.get_xlabel() == "Sequence length (tokens)"
    names = [line.get_label() for line in top.get_lines()]
    assert names == ["embedding", "transformer block", "head", "linear in tokens"]
    block, linear = top.get_lines()[1].get_ydata(), top.get_lines()[3].get_ydata()
    assert block[-1] > 1.5 * linear[-1]  # the quadratic attention term is visible
    assert [line.get_label() for line in bottom.get_lines()] == ["phone-flagship", "a100-80gb"]


def test_unit_costs_shows_one_client_device_at_a_time():
    costs = unit_cost_frame()
    rpi = costs.assign(client_device="rpi4", client_s=costs["client_s"] * 20)
    fig = FIGURES["unit_costs"].function(pd.concat([costs, rpi]), client_device="rpi4")
    labels = [line.get_label() for line in fig.axes[1].get_lines()]
    assert labels == ["rpi4", "a100-80gb"]


@pytest.mark.parametrize(
    ("name", "xlabel"),
    [("workload_vs_sla", "SLA (deadline / server-only latency, ×)"),
     ("workload_vs_tokens", "Sequence length (tokens)")],
)  # fmt: skip
def test_workload_figures_have_a_line_per_policy_and_a_panel_per_model(name, xlabel):
    fig = FIGURES[name].function(allocation_frame())
    axes = visible_axes(fig)
    assert [ax.get_title() for ax in axes] == ["bert-large", "gpt2-large"]
    for ax in axes:
        assert policy_artists(ax) == POLICIES
        assert ylabel(ax) == "Server workload (% of server-only)"
    assert axes[-1].get_xlabel() == xlabel
    assert legend_texts(fig) == LABELS


def test_workload_figure_can_show_absolute_server_work():
    fig = FIGURES["workload_vs_sla"].function(allocation_frame(), y="server_work")
    assert ylabel(visible_axes(fig)[0]) == "Server work per request (s)"


def test_sensitivity_has_a_client_speed_and_a_log_bandwidth_panel():
    alloc = allocation_frame()
    fig = FIGURES["sensitivity"].function(alloc[alloc["model"] == "gpt2-large"])
    speed, bandwidth = visible_axes(fig)
    # the client's speed is its peak scaled by an efficiency: the label says so
    assert speed.get_xlabel() == "Effective client speed (TFLOP/s = peak × efficiency)"
    assert bandwidth.get_xlabel() == "Uplink bandwidth (Mbit/s)"
    assert speed.get_xscale() == bandwidth.get_xscale() == "log"
    for ax in (speed, bandwidth):
        assert policy_artists(ax) == POLICIES
        assert has_unit(ylabel(ax))
    # the devices are named in the column heading, not as ticks that overprint
    heading = speed.figure.get_suptitle().replace("\\ ", " ")  # bold in mathtext
    assert all(d in heading for d in DEVICES) and "Client speed" in heading
    assert "Uplink bandwidth" in bandwidth.figure.get_suptitle().replace("\\ ", " ")


def test_workload_vs_tokens_names_the_model_it_leaves_out():
    alloc = allocation_frame()
    vit = alloc[alloc["model"] == "bert-large"].assign(model="vit-b16", prompt_tokens=197)
    fig = FIGURES["workload_vs_tokens"].function(
        pd.concat([alloc, vit[vit["study"] != "tokens"]], ignore_index=True)
    )
    note = fig.legends[0].get_title().get_text().replace("\n", " ")
    assert "vit-b16 not shown: its input is always 197 tokens" in note
    assert "Each point: client laptop-m2" in note


def test_unit_names_follow_the_cost_model():
    from analysis.labels import ENCODER_DECODER_MODELS, unit_names
    from sim.catalog import models
    from sim.costs import model_units

    enc_dec = set()
    for name, model in models().items():
        units = [u.name for u in model_units(model)]
        assert unit_names(name, len(units)) == units, name
        if model.architecture == "encoder_decoder":
            enc_dec.add(name)
    assert enc_dec == set(ENCODER_DECODER_MODELS)


def test_queueing_has_waits_and_violations_with_bands_per_policy():
    fig = FIGURES["queueing"].function(sweep_ci_frame())
    axes = visible_axes(fig)
    assert [ax.get_ylabel() for ax in axes] == ["Mean wait (s)", "Max. wait (s)",
                                                "SLA violations (%)"]  # fmt: skip
    # the sweep varies the normalised load: the axis claims.md uses too
    assert axes[-1].get_xlabel() == "Offered load (× server-only capacity)"
    for ax in axes:
        assert policy_artists(ax) == POLICIES
        assert len(ax.collections) == len(POLICIES)  # one confidence band per policy
    assert legend_texts(fig) == LABELS
    # waits spanning decades (wait ~ load^3 here: 0.008 to 2.7 s) are drawn on a log scale
    assert axes[0].get_yscale() == "symlog" and axes[-1].get_yscale() == "linear"


def test_queueing_plots_a_swept_rate_against_the_offered_rate():
    ci = sweep_ci_frame().drop(columns=["workload.arrival.load"])
    fig = FIGURES["queueing"].function(ci)
    assert visible_axes(fig)[-1].get_xlabel() == "Offered arrival rate (requests/s)"


def test_queueing_refuses_a_sweep_that_does_not_vary_the_rate():
    ci = sweep_ci_frame().assign(offered_rate_per_s_mean=100.0, **{"workload.arrival.load": 1.0})
    with pytest.raises(MissingData, match="arrival rate does not vary"):
        FIGURES["queueing"].function(ci)


def test_capacity_has_a_point_per_policy_and_a_signed_gain_panel():
    fig = FIGURES["capacity"].function(capacity_ci_frame())
    cap, gain = visible_axes(fig)
    assert policy_artists(cap) == POLICIES
    assert policy_artists(gain) == POLICIES[:-1]  # dp is the reference: no gain over itself
    assert cap.get_xlabel() == "Capacity (requests/s)"
    assert gain.get_xlabel() == "DP − policy\n(% of policy)"
    assert gain.get_title() == "> 0: DP sustains more"
    assert [t.get_text() for t in cap.get_yticklabels()] == LABELS
    assert [ln.get_xdata()[0] for ln in cap.get_lines() if ln.get_gid()] == [30, 36, 38, 37, 45]
    assert any(ln.get_xdata()[0] == 0 for ln in gain.get_lines())  # the zero line


def test_capacity_marks_a_gain_whose_interval_includes_zero_hollow():
    ci = capacity_ci_frame()
    ci.loc[ci["policy"] == "best_cut", ["gain_of_dp_pct_mean", "gain_of_dp_pct_ci95"]] = [1, 3]
    fig = FIGURES["capacity"].function(ci)
    gain = visible_axes(fig)[1]
    faces = {ln.get_gid(): ln.get_markerfacecolor() for ln in gain.get_lines() if ln.get_gid()}
    assert faces["policy:best_cut"] == "white"
    assert faces["policy:greedy"] != "white"
    assert legend_texts(fig) == ["gain's 95 % interval includes 0"]


def test_capacity_of_several_points_draws_a_row_per_point():
    one = capacity_ci_frame()
    both = pd.concat([one.assign(**{"clients.0.link.uplink_mbps": 10.0}),
                      one.assign(point=1, **{"clients.0.link.uplink_mbps": 100.0})])  # fmt: skip
    axes = visible_axes(FIGURES["capacity"].function(both))
    assert len(axes) == 4  # capacity and gain per point
    assert [ax.get_title(loc="left") for ax in axes[::2]] == ["uplink_mbps=10", "uplink_mbps=100"]
    for ax in axes[::2]:
        assert policy_artists(ax) == POLICIES


def test_placement_map_shows_client_units_per_sequence_length():
    fig = FIGURES["placement_map"].function(allocation_frame())
    axes = visible_axes(fig)
    assert len(axes) == 2
    image = axes[0].get_images()[0].get_array()
    assert image.shape == (len(STUDIES["tokens"][1]), 8)
    assert image[-1].sum() > image[0].sum()  # more units on the client for longer sequences
    assert ylabel(axes[0]) == "Sequence length (tokens)"
    assert axes[-1].get_xlabel() == "Unit (input → output)"
    assert legend_texts(fig) == ["client", "server", "* SLA infeasible"]
    assert fig.legends[0].get_title().get_text().startswith("DP's placement")
    names = [t.get_text() for t in axes[0].get_xticklabels()]
    assert names[0] == "embed" and names[-1] == "head"


def test_placement_map_marks_the_encoder_decoder_boundary():
    alloc = allocation_frame()
    tb = alloc[alloc["model"] == "bert-large"].assign(
        model="transformer-base", n_units=15, placement="CCC" + "S" * 12
    )
    fig = FIGURES["placement_map"].function(tb)
    (ax,) = visible_axes(fig)
    (line,) = [ln for ln in ax.get_lines() if ln.get_gid() == "encoder|decoder"]
    assert line.get_xdata()[0] == 6.5  # between the encoder's last block and dec.embed
    assert "encoder | decoder" in legend_texts(fig)


@pytest.mark.parametrize("fixed", [False, True])
def test_latency_cdf_has_a_line_per_policy_and_marks_the_sla(fixed):
    fig = FIGURES["latency_cdf"].function(requests_frame(fixed_deadline=fixed))
    (ax,) = fig.axes
    assert policy_artists(ax) == POLICIES
    assert ax.get_ylabel() == "Completed requests (%)"
    if fixed:
        assert ax.get_xlabel() == "Latency (ms)"
        assert "SLA (200 ms)" in legend_texts(fig)
    else:
        assert ax.get_xlabel() == "Latency / request's deadline (×)"
        assert "SLA (own deadline)" in legend_texts(fig)


def test_throughput_vs_batch_has_tokens_and_requests_per_second_per_policy():
    fig = FIGURES["throughput_vs_batch"].function(batch_ci_frame())
    tokens, rps = visible_axes(fig)
    assert tokens.get_ylabel() == "Server throughput\n(tokens/s)"
    assert rps.get_ylabel() == "Throughput\n(requests/s)"
    assert rps.get_xlabel() == "Batch limit (requests)" and rps.get_xscale() == "log"
    for ax in (tokens, rps):
        assert policy_artists(ax) == POLICIES
        assert len(ax.collections) == len(POLICIES)  # one confidence band per policy
    assert legend_texts(fig) == LABELS + ["offered rate"]


def test_throughput_vs_batch_skips_sweeps_without_a_varied_batch_limit():
    with pytest.raises(MissingData, match="does not vary simulation.max_batch_requests"):
        FIGURES["throughput_vs_batch"].function(sweep_ci_frame().assign(
            server_tokens_per_s_mean=1.0, server_tokens_per_s_ci95=0.0, throughput_rps_mean=1.0,
            throughput_rps_ci95=0.0))  # fmt: skip
    request_mode = batch_ci_frame().assign(server_tokens_per_s_mean=np.nan)
    with pytest.raises(MissingData, match="server_tokens_per_s is NaN"):
        FIGURES["throughput_vs_batch"].function(request_mode)
    two_loads = pd.concat([batch_ci_frame().assign(**{"workload.arrival.load": x}) for x in (1, 2)])
    with pytest.raises(MissingData, match=r"more than the batch limit \(workload.arrival.load\)"):
        FIGURES["throughput_vs_batch"].function(two_loads)


@pytest.mark.parametrize("deadlines", [True, False])
def test_token_latency_cdf_has_ttft_and_tpot_panels_per_policy(deadlines):
    fig = FIGURES["token_latency_cdf"].function(token_requests_frame(deadlines))
    ttft, tpot = visible_axes(fig)
    assert ttft.get_xlabel() == "Time to first token (s)"
    assert tpot.get_xlabel() == "Time per output token (ms)"
    for ax in (ttft, tpot):
        assert policy_artists(ax) == POLICIES
        assert ax.get_ylabel() == "Completed (%)"
    sla = ["SLA (TTFT 2 s; TPOT 100 ms)"] if deadlines else []
    assert legend_texts(fig) == LABELS + sla
    if deadlines:
        assert [ln.get_xdata()[0] for ax in (ttft, tpot) for ln in ax.get_lines()
                if ln.get_linestyle() == "--" and not ln.get_gid()] == [2.0, 100.0]  # fmt: skip


def test_token_latency_cdf_skips_request_mode_records():
    with pytest.raises(MissingData, match="ttft_s is NaN throughout"):
        FIGURES["token_latency_cdf"].function(token_requests_frame().assign(ttft_s=np.nan))


def test_sla_vs_load_queue_aware_puts_the_queue_aware_dp_beside_dp():
    fig = FIGURES["sla_vs_load_queue_aware"].function(queue_aware_ci_frame())
    (ax,) = visible_axes(fig)
    assert ax.get_ylabel() == "SLA violations (%)"
    assert ax.get_xlabel() == "Offered load (× server-only capacity)"
    assert policy_artists(ax) == POLICIES + ["dp_queue_aware"]
    assert len(ax.collections) == len(POLICIES) + 1
    assert legend_texts(fig) == LABELS + ["DP queue-aware"]


def test_sla_vs_load_queue_aware_skips_sweeps_without_it():
    with pytest.raises(MissingData, match="no dp_queue_aware rows \\(policies: server_only, "):
        FIGURES["sla_vs_load_queue_aware"].function(sweep_ci_frame())


def test_server_timeline_plots_one_replication():
    fig = FIGURES["server_timeline"].function(timeseries_frame())
    axes = visible_axes(fig)
    assert len(axes) == 2 * len(POLICIES)  # a row per policy: utilisation, queue
    assert axes[0].get_title() == "Server utilisation (%)"
    assert axes[1].get_title() == "Queue length (requests)"
    assert axes[-1].get_xlabel() == "Time (s)" and axes[-2].get_xlabel() == "Time (s)"
    for row, policy in enumerate(POLICIES):  # one line per panel: none hides another
        util, queue = axes[2 * row], axes[2 * row + 1]
        assert policy_artists(util) == policy_artists(queue) == [policy]
        assert len(util.get_lines()[0].get_xdata()) == 40  # replication 0 only


def test_every_axis_label_carries_a_unit():
    frames = {"unit_costs": unit_cost_frame(), "allocation": allocation_frame(),
              "sweep_ci": sweep_ci_frame(), "capacity_ci": capacity_ci_frame(),
              "requests": requests_frame(), "timeseries": timeseries_frame(),
              "server_timeseries": server_timeseries_frame()}  # fmt: skip
    own = {"throughput_vs_batch": [batch_ci_frame()], "token_latency_cdf": [token_requests_frame()],
           "sla_vs_load_queue_aware": [queue_aware_ci_frame()]}  # fmt: skip
    for name, spec in FIGURES.items():
        fig = spec.function(*own.get(name, [frames[t] for t in spec.needs]))
        for ax in visible_axes(fig):
            for label in (ax.get_xlabel(), ylabel(ax)):
                assert not label or has_unit(label) or label.startswith("Unit ("), (name, label)


def test_missing_rows_or_columns_are_reported_not_crashed():
    alloc = allocation_frame()
    with pytest.raises(MissingData, match="study 'sla'"):
        FIGURES["workload_vs_sla"].function(alloc[alloc["study"] != "sla"])
    with pytest.raises(MissingData, match="lacks column"):
        FIGURES["latency_cdf"].function(requests_frame().drop(columns="deadline_s"))


# --- style and files ----------------------------------------------------------------------


def test_each_policy_has_a_fixed_distinct_look():
    looks = [(s.color, s.marker) for s in POLICY_STYLES.values()]
    assert len(set(looks)) == len(looks)
    assert policy_style("dp") == POLICY_STYLES["dp"]
    assert policy_style("dp_queue_aware").label == "DP queue-aware"
    assert ordered_policies(["dp_queue_aware", "mine", "dp", "server_only"]) == [
        "server_only", "dp", "dp_queue_aware", "mine"]  # fmt: skip
    assert policy_style("my_policy").label == "my_policy"


def test_formats_are_checked():
    assert parse_formats("pdf, PNG,pdf") == ["pdf", "png"]
    with pytest.raises(ValueError, match="unknown format 'jpg'"):
        parse_formats("pdf,jpg")


def test_save_figure_writes_each_format_and_no_temporary_files(tmp_path):
    fig = FIGURES["server_timeline"].function(timeseries_frame())
    paths = save_figure(fig, tmp_path / "out" / "timeline", ["pdf", "png", "svg"])
    assert [p.name for p in paths] == ["timeline.pdf", "timeline.png", "timeline.svg"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)
    assert paths[0].read_bytes().startswith(b"%PDF")
    assert paths[1].read_bytes().startswith(b"\x89PNG")


# --- splitsim plot ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plot") / "run"
    scenario = str(ROOT / "scenarios/examples/quickstart.yaml")
    assert main(["run", scenario, "-o", str(out), "--set", "requests=200", "--quiet"]) == 0
    return out


def test_plot_writes_pdf_and_png_and_reports_skipped_figures(run_dir, capsys):
    assert main(["plot", str(run_dir)]) == 0
    out = capsys.readouterr().out
    for name in ("latency_cdf", "server_timeline"):
        for ext in ("pdf", "png"):
            path = run_dir / "figures" / f"{name}.{ext}"
            assert path.stat().st_size > 1000, path
        assert f"wrote {name}:" in out
    assert "skipped queueing: no sweep_ci.csv in the folder" in out
    assert "skipped unit_costs: no unit_costs.csv in the folder" in out
    assert "skipped token_latency_cdf: requests: ttft_s is NaN throughout" in out


def test_plot_reads_the_run_folder_by_record_names(run_dir):
    data = load_folder(run_dir)
    assert {"requests", "summary", "timeseries"} <= set(data.tables)
    assert list(data["requests"].columns[: len(REQUEST_COLUMNS)]) == list(REQUEST_COLUMNS)


def test_plot_draws_only_the_named_figures_in_the_named_format(run_dir, tmp_path, capsys):
    assert main(["plot", str(run_dir), "--figure", "latency_cdf", "--format", "svg"]) == 0
    assert (run_dir / "figures" / "latency_cdf.svg").stat().st_size > 1000
    assert "server_timeline" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [(["plot", "{tmp}/nowhere"], "no such folder"),
     (["plot", "{tmp}"], "no result files to plot (looked for requests.csv"),
     (["plot", "{run}/summary.csv"], "summary.csv: not a folder"),
     (["plot", "{run}", "--figure", "pie"], "unknown figure 'pie'; known: unit_costs,"),
     (["plot", "{run}", "--format", "pdf,gif"], "--format: unknown format 'gif'")],
)  # fmt: skip
def test_plot_bad_input_is_one_line_and_exit_2(run_dir, tmp_path, capsys, args, message):
    argv = [a.format(tmp=tmp_path, run=run_dir) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_plot_skips_the_figures_of_an_unreadable_table(tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    timeseries_frame().to_csv(folder / "timeseries.csv", index=False)
    (folder / "requests.csv").write_text("policy,latency\ndp,1\n")
    assert main(["plot", str(folder), "--format", "png"]) == 0
    out = capsys.readouterr().out
    assert "wrote server_timeline:" in out
    assert (
        "skipped latency_cdf: " in out and "not a requests table: lacks column(s) latency_s" in out
    )


def test_plot_with_no_usable_figure_lists_the_reasons(tmp_path, capsys):
    (tmp_path / "requests.csv").write_text("")
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "nothing to plot (latency_cdf: " in err and "requests.csv: file is empty)" in err


# --- the import rule ----------------------------------------------------------------------

ALLOWED_SIM = {"sim.records", "sim.stats", "sim.atomic"}


def test_analysis_imports_nothing_from_sim_but_records_stats_and_atomic_writes():
    for path in sorted((ROOT / "analysis").glob("**/*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
                if node.module == "sim":
                    modules = [f"sim.{a.name}" for a in node.names]
            else:
                continue
            for module in modules:
                if module == "sim" or module.startswith("sim."):
                    assert module in ALLOWED_SIM, f"{path.name} imports {module}"


def test_importing_analysis_loads_no_engine_module():
    code = (
        "import sys, analysis.plot, analysis.figures, analysis.io, analysis.style\n"
        "print(sorted(m for m in sys.modules if m == 'sim' or m.startswith('sim.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert set(ast.literal_eval(out.stdout.strip())) <= {"sim"} | ALLOWED_SIM


def server_timeseries_frame() -> pd.DataFrame:
    rows = []
    for policy in ("server_only", "dp"):
        for server in ("edge", "cloud-0", "cloud-1"):
            for rep in (0, 1):
                for t in range(5):
                    rows.append({"policy": policy, "replication": rep, "server": server,
                                 "time_s": t + 0.5, "server_busy_slots": 1.0,
                                 "server_utilization": 0.1 * t + rep, "queue_length": t})  # fmt: skip
    return pd.DataFrame(rows)


def test_fleet_timeline_draws_each_server_per_policy():
    fig = FIGURES["fleet_timeline"].function(server_timeseries_frame())
    axes = visible_axes(fig)
    assert len(axes) == 4  # utilisation and queue, a column per policy
    top_left = axes[0]
    assert [line.get_label() for line in top_left.get_lines()] == ["edge", "cloud-0", "cloud-1"]
    assert list(top_left.get_lines()[0].get_ydata()) == pytest.approx([0, 10, 20, 30, 40])


def test_capacity_labels_a_routing_factor_by_name():
    ci = pd.DataFrame({
        "point": [0, 0, 1, 1], "routing.policy": ["random", "random", "split_aware", "split_aware"],
        "policy": ["server_only", "dp"] * 2, "capacity_rps_mean": [10.0, 12.0, 11.0, 15.0],
        "capacity_rps_ci95": [1.0] * 4,
    })  # fmt: skip
    fig = FIGURES["capacity"].function(ci)
    titles = [ax.get_title(loc="left") for ax in visible_axes(fig)]
    assert titles == ["routing=random", "routing=split_aware"]
