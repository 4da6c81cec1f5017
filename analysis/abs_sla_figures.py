"""Figures of the studies beyond the paper drawn from `allocation.csv`: server workload
against sequence length under an absolute (fixed-in-seconds) SLA (`tokens_abs_sla`).

Kept apart from `static_figures` (the paper's figures) and drawn with its helpers, so the
two token figures look alike and read side by side.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from analysis.static_figures import _workload_figure
from analysis.style import styled


@styled
def workload_vs_tokens_abs_sla(alloc: pd.DataFrame, y: str = "workload_ratio") -> Figure:
    """Server workload per request against sequence length with each model and client's
    deadline fixed in seconds, per policy, a panel per model (compare workload_vs_tokens)."""
    note = (
        "Deadline fixed in seconds per model and client as the sequence grows (the SLA "
        "factor x its server-only latency at the reference length, studies.yaml)."
    )
    return _workload_figure(alloc, "tokens_abs_sla", y, note=note)
