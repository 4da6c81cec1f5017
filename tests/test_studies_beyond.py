"""The static studies beyond the paper: `tokens_abs_sla` (a deadline fixed in seconds as
sequences grow) and `multi_switch` (a setting where dp's many-switch plans win), and the
claims.md sections computed from them."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.claims import claims_markdown
from analysis.study_claims import placement_kind, trend_words
from sim.paper.reproduce import PAPER_DIR
from sim.paper.studies import allocation_table, load_study_spec
from sim.records import ALLOCATION_COLUMNS

NEW = ("tokens_abs_sla", "multi_switch")
POINT = ["study", "model", "x", "client_device"]


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    """allocation.csv's rows from the committed studies.yaml (well under a second)."""
    return allocation_table(load_study_spec(PAPER_DIR / "studies.yaml"))


def test_new_studies_produce_rows(table):
    assert list(table.columns) == list(ALLOCATION_COLUMNS)
    for study in NEW:
        rows = table[table["study"] == study]
        assert len(rows) > 0, study
        per_point = rows.groupby(POINT)["policy"].nunique()
        assert (per_point == table["policy"].nunique()).all()
    assert (table["switches"] >= 0).all()
    assert (table["server_only_compute_s"] < table["server_only_latency_s"]).all()


def test_abs_sla_deadline_is_fixed_and_lengths_fit_the_model(table):
    rows = table[table["study"] == "tokens_abs_sla"]
    assert (rows.groupby(["model", "client_device"])["deadline_s"].nunique() == 1).all()
    assert rows.loc[rows["model"] == "bert-large", "x"].max() == 512  # 512 positions
    assert rows.loc[rows["model"] == "gpt2-medium", "x"].max() == 1024
    assert "vit-b16" not in set(rows["model"])


@pytest.mark.parametrize("study", NEW)
def test_dp_needs_no_more_work_than_any_feasible_plan(table, study):
    rows = table[table["study"] == study]
    for _, g in rows.groupby(POINT):
        dp = g[g["policy"] == "dp"].iloc[0]
        feasible = g[g["feasible"]]
        if len(feasible):
            assert dp["feasible"]
            assert dp["server_work"] <= feasible["server_work"].min() * (1 + 1e-9) + 1e-15


def test_multi_switch_plans_beat_the_best_cut(table):
    rows = table[table["study"] == "multi_switch"]
    work = rows.pivot_table(index="x", columns="policy", values="server_work")
    dp = rows[rows["policy"] == "dp"].set_index("x")
    wins = dp[(dp["switches"] > 2) & (work["dp"] < work["best_cut"] * (1 - 1e-6))]
    assert len(wins) >= 1
    assert (rows.loc[rows["policy"] == "best_cut", "switches"] <= 2).all()


def test_claims_mention_both_studies(table):
    text = claims_markdown(table, 3.0)
    assert "`tokens_abs_sla`" in text and "under the absolute SLA" in text
    assert "## A setting where more than two switches win (`multi_switch`)" in text
    assert "server compute is" in text and "## How many switches dp's placements use" in text
    assert "The most any has is 2" in text  # the paper's settings never need more


def test_placement_kinds_and_trends():
    assert placement_kind("CCSS") == "client prefix"
    assert placement_kind("SSCC") == "client suffix"
    assert placement_kind("CSSC") == "client prefix and suffix"
    assert placement_kind("CSCS") == "placement with 4 switches"
    assert placement_kind("SSSS") == "server only"
    assert trend_words(pd.Series([0.9, 0.5, 0.1], index=[32, 64, 128])).startswith("falls")
    assert trend_words(pd.Series([0.1, 0.5], index=[32, 64])).startswith("rises")
    assert trend_words(pd.Series([0.1, 0.5, 0.2], index=[1, 2, 3])).startswith("is not")


def test_abs_sla_figure_has_a_panel_per_model_and_labelled_axes(table):
    from analysis.figures import FIGURES

    fig = FIGURES["workload_vs_tokens_abs_sla"].function(table)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["transformer-base", "bert-large", "gpt2-medium"]
    assert axes[-1].get_xlabel() == "Sequence length (tokens)"
    assert fig.get_size_inches()[1] <= 8.0
