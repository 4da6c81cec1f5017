"""The batching study's report (`results/batching/`): where splitting pays on a batching server.

Run: python -m analysis.batching results/batching [--sweep scenarios/batching/capacity.yaml]

Reads the capacity search's `capacity.csv` (`scenarios/batching/capacity.yaml`: one row per
point, policy and replication) and writes, in the same folder, `summary.md` (capacity of
server-only per point; every other policy's capacity gain over server-only, paired by
replication, with its 95 % interval; which gains are positive, negative or not told apart
from zero; the headline) and `figures/capacity_gain.{pdf,png}`.

A gain is (capacity of the policy / capacity of server-only - 1) per replication: the two
searches of a replication replay the same window of the trace (common random numbers), so
the interval is the paired one (Student t over the replications).
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from analysis.regenerate import study_main  # noqa: E402
from analysis.style import (  # noqa: E402
    DOUBLE_WIDTH_IN,
    MAX_FIGURE_HEIGHT_IN,
    ordered_policies,
    paper_style,
    policy_style,
    save_figure,  # noqa: E402
)
from sim.atomic import atomic_write_text  # noqa: E402
from sim.stats import mean_ci95  # noqa: E402

BASE = "server_only"
FACTORS = {
    "workload.arrival.path": "trace",
    "workload.arrival.prompt_scale": "prompts",
    "clients.0.link": "link",
    "simulation.kv_memory_gb": "kv",
    "clients.0.count": "laptops",
    "clients.1.count": "phones",
}


def points(table: pd.DataFrame) -> pd.DataFrame:
    """One row per point: its readable factors (trace, prompt lengths, laptop share, link, KV
    memory); a factor the sweep does not vary reads as the base scenario's ("base" link,
    "full" KV, prompts as recorded)."""
    first = table.groupby("point", sort=True).first().reset_index()
    for column in ("clients.0.link", "simulation.kv_memory_gb", "workload.arrival.prompt_scale"):
        if column not in first:
            first[column] = None
    out = pd.DataFrame({"point": first["point"]})
    out["trace"] = first["workload.arrival.path"].map(lambda p: Path(str(p)).stem.split("_")[-1])
    out["prompts"] = first["workload.arrival.prompt_scale"].map(_prompts)
    laptops, phones = first["clients.0.count"].astype(float), first["clients.1.count"].astype(float)
    out["laptop_share"] = laptops / (laptops + phones)
    out["link"] = first["clients.0.link"].map(_link)
    out["kv"] = first["simulation.kv_memory_gb"].map(
        lambda v: "full" if pd.isna(v) or v in ("None", "") else f"{float(v):g} GB"
    )
    return out


def _prompts(value) -> str:
    """Prompt lengths' label from the trace's prompt_scale ("as recorded" if unset or 1)."""
    if value is None or pd.isna(value) or value in ("None", "") or float(value) == 1:
        return "as recorded"
    return f"x{float(value):g}"


def _link(value) -> str:
    """A link's label from its mapping (as stored: a dict or its text); "base" if unset."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "base"
    link = ast.literal_eval(value) if isinstance(value, str) else value
    return f"{link['uplink_mbps']:g}/{link['downlink_mbps']:g} Mb/s, {link['rtt_ms']:g} ms"


def gains(table: pd.DataFrame) -> pd.DataFrame:
    """Per point and policy: mean capacity (req/s, CI) and the paired gain over server-only
    (% , CI, replications)."""
    ok = table[table["error"].isna()]
    rows = []
    for point, group in ok.groupby("point", sort=True):
        base = group[group["policy"] == BASE].set_index("replication")["capacity_rps"]
        for policy, rows_p in group.groupby("policy", sort=False):
            cap = rows_p.set_index("replication")["capacity_rps"]
            mean, half, n = mean_ci95(cap.to_numpy())
            paired = (cap / base.reindex(cap.index) - 1).dropna() * 100
            g_mean, g_half, g_n = mean_ci95(paired.to_numpy())
            rows.append({"point": point, "policy": policy, "capacity_rps": mean,
                         "capacity_ci95": half, "replications": n, "gain_pct": g_mean,
                         "gain_ci95": g_half, "paired": g_n})  # fmt: skip
    return pd.DataFrame(rows)


def verdict(row) -> str:
    """'wins' / 'loses' when the gain's interval excludes zero, else 'tie' (crosses it)."""
    lo, hi = row["gain_pct"] - row["gain_ci95"], row["gain_pct"] + row["gain_ci95"]
    if not np.isfinite(lo):
        return "n/a"
    return "wins" if lo > 0 else ("loses" if hi < 0 else "tie")


def summary(table: pd.DataFrame, folder: Path) -> str:
    """The markdown report (see the module doc)."""
    pts, g = points(table), gains(table)
    g = g.merge(pts, on="point")
    g["verdict"] = g.apply(verdict, axis=1)
    policies = [p for p in ordered_policies(g["policy"]) if p != BASE]
    lines = [
        "# Where splitting pays on a batching server (issue 14)",
        "",
        f"Generated by `python -m analysis.batching {_shown(folder)}` from `capacity.csv`",
        f"(sweep `{_sweep_name(folder)}`; the sweep files are in scenarios/batching/).",
        "Capacity: the highest rate (req/s) at which at most 5 % of requests miss their TTFT",
        "(2 s) or TPOT (0.1 s) SLA; the trace's times stretched to each rate. Gains are over",
        f"server-only, paired by replication ({int(g['paired'].max())} replications, each its",
        "own window of the trace), mean +/- 95 % CI; 'tie' marks an interval crossing zero.",
        "",
        "| trace | prompts | laptops | laptop link | KV | server-only (req/s) | "
        + " | ".join(policy_style(p).label for p in policies)
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(policies),
    ]
    for _, pt in pts.iterrows():
        rows = g[g["point"] == pt["point"]].set_index("policy")
        if BASE not in rows.index:
            continue
        base = rows.loc[BASE]
        cells = [
            f"{rows.loc[p, 'gain_pct']:+.0f} +/- {rows.loc[p, 'gain_ci95']:.0f} %"
            + ("" if rows.loc[p, "verdict"] != "tie" else " (tie)")
            if p in rows.index else "-"
            for p in policies
        ]  # fmt: skip
        lines.append(
            f"| {pt['trace']} | {pt['prompts']} | {pt['laptop_share']:.0%} | {pt['link']} | {pt['kv']} | "
            f"{base['capacity_rps']:.2f} +/- {base['capacity_ci95']:.2f} | "
            + " | ".join(cells)
            + " |"
        )
    lines += ["", "## Verdicts", ""]
    for p in policies:
        rows = g[g["policy"] == p]
        counts = rows["verdict"].value_counts()
        best = rows.loc[rows["gain_pct"].idxmax()]
        worst = rows.loc[rows["gain_pct"].idxmin()]
        lines.append(
            f"- {policy_style(p).label}: beats server-only at {counts.get('wins', 0)} of "
            f"{len(rows)} points, loses at {counts.get('loses', 0)}, ties at "
            f"{counts.get('tie', 0)}; best {_where(best)} ({best['gain_pct']:+.1f} +/- "
            f"{best['gain_ci95']:.1f} %), worst {_where(worst)} ({worst['gain_pct']:+.1f} +/- "
            f"{worst['gain_ci95']:.1f} %)."
        )
    lines += ["", "## Where splitting beats server-only", ""] + _wins(g[g["policy"] != BASE])
    lines += ["", "## Headline", "", *_headline(g[g["policy"] != BASE]), ""]
    return "\n".join(lines)


def _shown(folder: Path | None) -> str:
    """The result folder as the report names it: relative to results/ when inside one."""
    if folder is None:
        return "results/batching"
    parts = Path(folder).resolve().parts
    return "/".join(parts[parts.index("results") :]) if "results" in parts else str(folder)


def _sweep_name(folder: Path | None) -> str:
    """The sweep's name from its sweep.json (the study's file names it)."""
    try:
        return json.loads((Path(folder) / "sweep.json").read_text())["name"]  # type: ignore[arg-type]
    except (TypeError, OSError, ValueError, KeyError):
        return "batching_capacity"


def _headline(g: pd.DataFrame) -> list[str]:
    """Measured statements: at how many points some policy wins and the largest gain whose
    interval excludes zero; at how many every policy loses; the largest mean gain."""
    n = g["point"].nunique()
    won = g[g["verdict"] == "wins"]
    lost = g.groupby("point")["verdict"].agg(lambda v: (v == "loses").all())
    out = []
    if won.empty:
        out.append(f"No policy raises capacity over server-only at any of the {n} points "
                   "(no gain interval lies above zero).")  # fmt: skip
    else:
        top = won.sort_values("gain_pct").iloc[-1]
        out.append(
            f"Splitting raises capacity over server-only at {won['point'].nunique()} of {n} "
            f"points; the largest gain whose interval excludes zero: "
            f"{policy_style(top['policy']).label} at {_where(top)}, "
            f"{top['gain_pct']:+.1f} +/- {top['gain_ci95']:.1f} %."
        )
    out.append(f"Every split policy loses at {int(lost.sum())} of {n} points.")
    top = g.sort_values("gain_pct").iloc[-1]
    out.append(
        f"The largest mean gain: {policy_style(top['policy']).label} at {_where(top)}, "
        f"{top['gain_pct']:+.1f} +/- {top['gain_ci95']:.1f} % ({top['verdict']})."
    )
    return out


def _wins(g: pd.DataFrame) -> list[str]:
    """One line per point where some policy's gain interval lies above zero: its policies
    that win, largest gain first; or a line saying there is none."""
    won = g[g["verdict"] == "wins"].sort_values("gain_pct", ascending=False)
    if won.empty:
        return ["Nowhere: no policy's gain interval lies above zero at any point."]
    lines = []
    for _, rows in won.groupby("point", sort=False):
        gains_ = ", ".join(
            f"{policy_style(r['policy']).label} {r['gain_pct']:+.0f} +/- {r['gain_ci95']:.0f} %"
            for _, r in rows.iterrows()
        )
        lines.append(f"- {_where(rows.iloc[0])}: {gains_}")
    return lines


def _where(row) -> str:
    return (f"{row['trace']} trace, prompts {row['prompts']}, {row['laptop_share']:.0%} "
            f"laptops, {row['link']}, KV {row['kv']}")  # fmt: skip


def figure(table: pd.DataFrame):
    """Capacity gain over server-only (%, 95 % CI): a panel per trace, prompt lengths and KV
    memory, bars per policy, groups by laptop share and link."""
    pts, g = points(table), gains(table)
    g = g.merge(pts, on="point")
    policies = [p for p in ordered_policies(g["policy"]) if p != BASE]
    rows_ = list(pts[["trace", "prompts"]].drop_duplicates().sort_values(["trace", "prompts"])
                 .itertuples(index=False, name=None))  # fmt: skip
    kvs = list(dict.fromkeys(pts["kv"]))
    with paper_style():
        fig, axes = plt.subplots(len(rows_), len(kvs), figsize=(DOUBLE_WIDTH_IN, min(MAX_FIGURE_HEIGHT_IN, 2.3 * len(rows_))),
                                 sharey=True, squeeze=False, layout="constrained")  # fmt: skip
        width = 0.8 / len(policies)
        for i, (trace, prompts) in enumerate(rows_):
            for j, kv in enumerate(kvs):
                ax = axes[i][j]
                sub = g[(g["trace"] == trace) & (g["prompts"] == prompts) & (g["kv"] == kv)]
                groups = (
                    sub[["laptop_share", "link"]]
                    .drop_duplicates()
                    .sort_values(["link", "laptop_share"])
                )
                x = np.arange(len(groups))
                for k, p in enumerate(policies):
                    rows = sub[sub["policy"] == p].set_index(["laptop_share", "link"])
                    keys = list(groups.itertuples(index=False, name=None))
                    y = [rows["gain_pct"].get(key, np.nan) for key in keys]
                    e = [rows["gain_ci95"].get(key, np.nan) for key in keys]
                    st = policy_style(p)
                    ax.bar(x + (k - (len(policies) - 1) / 2) * width, y, width, yerr=e,
                           color=st.color, label=st.label, error_kw={"elinewidth": 0.6})  # fmt: skip
                ax.axhline(0, color="black", linewidth=0.6)
                one_link = pts["link"].nunique() == 1
                ax.set_xticks(x, [f"{s:.0%}" if one_link else f"{s:.0%}\n" + (
                                      link if link == "base" else f"{link.split('/')[0]} up")
                                  for s, link in groups.itertuples(index=False, name=None)])  # fmt: skip
                if i == len(rows_) - 1:
                    ax.set_xlabel("laptop share" if one_link else
                                  "laptop share, laptop uplink (Mb/s)")  # fmt: skip
                ax.set_title(f"{trace} trace, prompts {prompts}, KV {kv}")
                if j == 0:
                    ax.set_ylabel("capacity vs server-only (%)")
        handles = [Patch(color=policy_style(p).color, label=policy_style(p).label)
                   for p in policies]  # fmt: skip
        fig.legend(handles=handles, loc="outside lower center", ncol=len(policies))
    return fig


def write_report(table: pd.DataFrame, folder: Path) -> None:
    """summary.md and figures/capacity_gain in `folder`."""
    atomic_write_text(folder / "summary.md", summary(table, folder))
    fig = figure(table)
    save_figure(fig, folder / "figures" / "capacity_gain")
    plt.close(fig)
    print(f"analysis.batching: {folder / 'summary.md'}, figures/capacity_gain.(pdf|png)")


def main(argv: list[str] | None = None) -> int:
    return study_main(argv, "batching", __doc__.splitlines()[0], write_report)


if __name__ == "__main__":
    sys.exit(main())
