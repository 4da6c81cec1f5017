"""claims.md sections on the studies beyond the paper: sequence length under a relative and
an absolute SLA, and how many switches dp's placements use (`tokens_abs_sla`, `multi_switch`).

Every number is computed from `allocation.csv`; a section whose study or columns are absent
is left out (an older allocation.csv still gives the rest of claims.md).
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

PAPER_STUDIES = ("sla", "tokens", "client_speed", "bandwidth")
POINT = ["study", "model", "x", "client_device"]  # one placement problem
TIE_REL = 1e-9  # dp "beats" a policy when it needs less server work by more than this
KINDS = {
    "C": "client only",
    "S": "server only",
    "CS": "client prefix",
    "SC": "client suffix",
    "CSC": "client prefix and suffix",
}
MULTI_POLICIES = ("best_cut", "greedy", "greedy_ratio", "dp")


def _pct(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{100 * x:.1f} %"


def _has(alloc: pd.DataFrame, study: str, columns: tuple[str, ...]) -> bool:
    return set(columns) <= set(alloc.columns) and bool((alloc["study"] == study).any())


def placement_kind(placement: str) -> str:
    """What a placement string (C/S per unit) is: a client prefix, suffix, ... or, beyond
    those, its number of client-server alternations."""
    runs = "".join(k for k, _ in itertools.groupby(placement))
    path = "C" + placement + "C"  # the input starts and the output ends on the client
    switches = sum(a != b for a, b in itertools.pairwise(path))
    return KINDS.get(runs, f"placement with {switches} switches")


def dp_reduction(rows: pd.DataFrame) -> float:
    """dp's workload reduction against server-only over `rows` (summed server work)."""
    dp = rows[rows["policy"] == "dp"]
    only = float(dp["server_only_work"].sum())
    return 1 - float(dp["server_work"].sum()) / only if only > 0 else np.nan


def trend_words(values: pd.Series, unit: str = "tokens") -> str:
    """'falls from A at x0 to B at x1' (monotone), 'rises ...', or 'is not monotone ...'."""
    v = values.dropna()
    if len(v) < 2:
        return "has too few points for a trend"
    steps = np.diff(v.to_numpy())
    ends = (f"from {_pct(v.iloc[0])} at {v.index[0]:g} {unit} to {_pct(v.iloc[-1])} at "
            f"{v.index[-1]:g} {unit}")  # fmt: skip
    if (steps <= 0).all() and steps.sum() < 0:
        return f"falls {ends}"
    if (steps >= 0).all() and steps.sum() > 0:
        return f"rises {ends}"
    return f"is not monotone ({ends})"


# --- sequence length: relative and absolute SLA ---------------------------------------------


def _by_x(rows: pd.DataFrame) -> pd.Series:
    """dp's reduction at each value of the study's factor."""
    return pd.Series({x: dp_reduction(g) for x, g in rows.groupby("x")}, dtype=float)


def sequence_table(alloc: pd.DataFrame) -> pd.DataFrame:
    """Per token count: server compute's share of server-only latency (over both token
    studies' models and clients) and dp's reduction under the relative and absolute SLA."""
    dp = alloc[(alloc["policy"] == "dp") & alloc["study"].isin(("tokens", "tokens_abs_sla"))]
    share = dp["server_only_compute_s"] / dp["server_only_latency_s"]
    out = pd.DataFrame({
        "compute_min": share.groupby(dp["x"]).min(),
        "compute_max": share.groupby(dp["x"]).max(),
        "relative": _by_x(alloc[alloc["study"] == "tokens"]),
    })  # fmt: skip
    ab = alloc[alloc["study"] == "tokens_abs_sla"]
    if len(ab):
        out = out.join(_by_x(ab).rename("absolute"), how="outer")
        abs_dp = ab[ab["policy"] == "dp"]
        saved_ms = 1e3 * (abs_dp["server_only_work"] - abs_dp["server_work"])
        out["absolute_saved_ms"] = saved_ms.groupby(abs_dp["x"]).mean()
        out["absolute_models"] = abs_dp.groupby("x")["model"].unique().map(", ".join)
    return out.sort_index()


def _sequence_rows(table: pd.DataFrame) -> list[str]:
    lines = ["| prompt tokens | server compute / server-only latency (min–max) | network "
             "(min–max) | dp's reduction, relative SLA | dp's reduction, absolute SLA | "
             "dp's server time saved, absolute SLA (ms per request, mean) | models (absolute) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for n, r in table.iterrows():
        lo, hi = r.get("compute_min", np.nan), r.get("compute_max", np.nan)
        share = f"{_pct(lo)} – {_pct(hi)}" if np.isfinite(lo) else "—"
        net = f"{_pct(1 - hi)} – {_pct(1 - lo)}" if np.isfinite(lo) else "—"
        saved = r.get("absolute_saved_ms", np.nan)
        lines.append(f"| {n:g} | {share} | {net} | {_pct(r.get('relative', np.nan))} | "
                     f"{_pct(r.get('absolute', np.nan))} | "
                     f"{'—' if not np.isfinite(saved) else f'{saved:.2f}'} | "
                     f"{r.get('absolute_models', '—')} |")  # fmt: skip
    return lines


def sequence_lines(alloc: pd.DataFrame) -> list[str]:
    """The section on sequence length (the `tokens` and `tokens_abs_sla` studies)."""
    if not _has(alloc, "tokens", ("server_only_latency_s", "server_only_compute_s")):
        return []
    t = sequence_table(alloc)
    lo, hi = t["compute_min"].min(), t["compute_max"].max()
    lines = [
        "## Sequence length: the SLA's reference decides the deadline",
        "",
        "In `tokens` the SLA is a multiple of each point's own server-only latency, and much "
        f"of that latency is network: server compute is {_pct(lo)} to {_pct(hi)} of it over "
        f"the models, clients and lengths of both token studies ({_pct(1 - hi)} to {_pct(1 - lo)} network: the "
        "round trip and moving the input and output), its share growing with the sequence "
        "(an earlier estimate of 3–18 % is not what these data give). So a longer "
        "sequence adds to the deadline only the SLA factor times the server's extra "
        "compute, while the client, many times slower than the server, needs many times "
        f"more extra time for each unit it runs: dp's reduction "
        f"{trend_words(t['relative'].dropna())} under the relative SLA.",
        "",
    ]
    if "absolute" in t:
        lines += [
            "`tokens_abs_sla` keeps each model and client's deadline fixed in seconds as "
            "sequences grow (the SLA factor x its server-only latency at the reference "
            "length, see studies.yaml), so longer sequences get no extra time from their "
            f"larger transfers. dp's reduction {trend_words(t['absolute'].dropna())} under "
            "the absolute SLA: looser than the relative SLA below the reference length, "
            "tighter above it. The paper's 'especially for longer sequences' does not "
            "appear under either SLA with these costs, in share or in server time saved "
            "per request: the client's time for each unit grows with the sequence, so a "
            "fixed (or slowly growing) deadline fits fewer client units as sequences grow. "
            "Lengths run only on the models whose positions take them (the last column).",
            "",
        ]
    return [*lines, *_sequence_rows(t), ""]


# --- switches --------------------------------------------------------------------------------


def _dp_beats(alloc: pd.DataFrame, other: str) -> pd.DataFrame:
    """dp's rows at the points where it needs strictly less server work than `other`."""
    work = alloc.pivot_table(index=POINT, columns="policy", values="server_work")
    better = work.index[work["dp"] < work[other] * (1 - TIE_REL)]
    dp = alloc[alloc["policy"] == "dp"].set_index(POINT)
    return dp.loc[better].reset_index()


def _counts(series: pd.Series) -> str:
    counts = series.value_counts()
    return ", ".join(f"{k}: {v}" for k, v in counts.items())


def switch_lines(alloc: pd.DataFrame) -> list[str]:
    """Switch counts of dp's placements in the paper's studies, and what wins over best_cut."""
    if not _has(alloc, "sla", ("switches", "placement")):
        return []
    rows = alloc[alloc["study"].isin(PAPER_STUDIES + ("tokens_abs_sla",))]
    dp = rows[rows["policy"] == "dp"]
    beats = _dp_beats(rows, "best_cut")
    best = rows[rows["policy"] == "best_cut"].set_index(POINT).loc[beats.set_index(POINT).index]
    suffix = beats["n_units"] - beats["placement"].str.rfind("S") - 1
    return [
        "## How many switches dp's placements use",
        "",
        f"Over the paper's studies and `tokens_abs_sla` ({len(dp)} placement problems), dp's "
        f"placements have these switch counts: {_counts(dp['switches'])} (a switch is a "
        "location change along the chain, leaving and returning to the client included). "
        f"The most any has is {int(dp['switches'].max())}: the DP's ability to switch back "
        "and forth is never used in these settings.",
        "",
        f"dp needs less server work than best_cut (one cut: a client prefix) at {len(beats)} "
        f"of them. dp's placements there: {_counts(beats['placement'].map(placement_kind))}; "
        f"best_cut's: {_counts(best['placement'].map(placement_kind))}. So dp beats the "
        f"best single cut by also running a suffix of {int(suffix.min())} to "
        f"{int(suffix.max())} units on the client (the head, and often the last blocks), "
        "not by multiple switches.",
        "",
    ]


def _multi_table(ms: pd.DataFrame) -> tuple[list[str], pd.DataFrame]:
    work = ms.pivot_table(index="x", columns="policy", values="workload_ratio")
    sw = ms.pivot_table(index="x", columns="policy", values="switches")
    lines = ["| client attention speed-up | " + " | ".join(
        f"{p}: server work (switches)" for p in MULTI_POLICIES) + " | dp's saving over "
        "best_cut | over greedy |", "|---" * (len(MULTI_POLICIES) + 3) + "|"]  # fmt: skip
    for x in work.index:
        cells = [f"{_pct(work.at[x, p])} ({int(sw.at[x, p])})" for p in MULTI_POLICIES]
        over = [1 - work.at[x, "dp"] / work.at[x, b] for b in ("best_cut", "greedy")]
        lines.append(f"| {x:g} x | " + " | ".join(cells) + f" | {_pct(over[0])} | "
                     f"{_pct(over[1])} |")  # fmt: skip
    return lines, work


def multi_switch_lines(alloc: pd.DataFrame) -> list[str]:
    """The `multi_switch` study: dp's plans with many switches against the cut policies."""
    if not _has(alloc, "multi_switch", ("switches", "placement")):
        return []
    ms = alloc[alloc["study"] == "multi_switch"]
    table, work = _multi_table(ms)
    dp = ms[ms["policy"] == "dp"]
    wins = _dp_beats(ms, "best_cut")
    multi = wins[wins["switches"] > 2]
    saving = 1 - work["dp"] / work["best_cut"]
    same = np.allclose(work["dp"], work["greedy_ratio"], rtol=1e-9)
    greedy_cut = bool((work["greedy"] >= work["best_cut"] * (1 - TIE_REL)).all())
    first = ms.iloc[0]
    factor = first["deadline_s"] / first["server_only_latency_s"]
    return [
        "## A setting where more than two switches win (`multi_switch`)",
        "",
        f"{first['model']} split into attention and MLP halves ({int(first['n_units'])} "
        f"units), {int(first['prompt_tokens'])} tokens, a {first['client_device']} client "
        f"on a {first['uplink_mbps']:g} Mbit/s wired link, the SLA {factor:.3g} x server-only "
        "latency (studies.yaml), and the client's attention halves made faster than its "
        "roofline estimate by the factor in the first column (1: the roofline itself). "
        "This setting is constructed to demonstrate the DP's generality, not taken from a "
        "device: no spec sheet gives these speed-ups. What makes it plausible in kind: an "
        "MLP half holds two thirds of a block's weights, so a memory-bound client already "
        "runs attention halves faster than MLP halves (speed-up 1), while on the server "
        "both halves take about the same (per-kernel time dominates); and on a fast wired "
        "link a switch costs less than running one half on the client. Then the server's work per client-second is "
        "best spent by keeping attention halves on the client and MLP halves on the server.",
        "",
        f"dp's plans have {int(dp['switches'].min())} to {int(dp['switches'].max())} "
        f"switches; {len(multi)} of {len(dp)} beat best_cut with more than two switches, "
        f"needing {_pct(saving.min())} to {_pct(saving.max())} less server work than the "
        "best single cut"
        + (" (greedy, prefix offload, is no better than best_cut here). " if greedy_cut else ". ")
        + (
            "greedy_ratio, which also picks scattered units, finds the same server work as "
            "dp at every speed-up here, though nothing guarantees that in general."
            if same
            else "greedy_ratio, which also picks scattered units, does not always match dp."
        )
        + " Server work is relative to server-only.",
        "",
        *table,
        "",
    ]


def study_lines(alloc: pd.DataFrame) -> list[str]:
    """Every section of this module that `alloc` has the data for."""
    return [*sequence_lines(alloc), *switch_lines(alloc), *multi_switch_lines(alloc)]
