"""Per-policy summary metrics from request records (pure pandas; no engine imports)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sim.records import STATUS_COMPLETED, STATUS_IN_FLIGHT, STATUS_REJECTED


def summarize(
    frame: pd.DataFrame,
    warmup_s: float,
    end_s: float,
    server_utilization: float,
    queue_length_mean: float,
    backlog_at_stop: int,
) -> dict:
    """Summary of one policy and replication; requests arriving during warm-up are left out."""
    df = frame[frame["arrival_s"] >= warmup_s]
    done = df[df["status"] == STATUS_COMPLETED]
    n = len(df)
    window_s = max(end_s - warmup_s, 0.0)
    lat = done["latency_s"].to_numpy()
    admitted = df[df["status"] != STATUS_REJECTED]
    only = admitted["server_only_work"].sum()  # rejected requests are not offloaded work

    def pct(q: float) -> float:
        return float(np.percentile(lat, q)) if lat.size else float("nan")

    def mean(col: str, rows: pd.DataFrame = done) -> float:
        return float(rows[col].mean()) if len(rows) else float("nan")

    return {
        "requests": n,
        "completed": len(done),
        "rejected": int((df["status"] == STATUS_REJECTED).sum()),
        "backlog_at_stop": int(backlog_at_stop),
        "in_flight_at_end": int((frame["status"] == STATUS_IN_FLIGHT).sum()),
        "duration_s": window_s,
        "throughput_rps": len(done) / window_s if window_s > 0 else float("nan"),
        "server_utilization": server_utilization,
        "queue_length_mean": queue_length_mean,
        "server_work_per_request": mean("server_work", admitted),
        "server_only_work_per_request": mean("server_only_work", admitted),
        "offload_fraction": float(1 - admitted["server_work"].sum() / only) if only > 0 else 0.0,
        "sla_violation_rate": float(1 - done["sla_met"].sum() / n) if n else float("nan"),
        "infeasible_plan_rate": float(1 - df["plan_feasible"].mean()) if n else float("nan"),
        "latency_mean_s": float(lat.mean()) if lat.size else float("nan"),
        "latency_p50_s": pct(50),
        "latency_p95_s": pct(95),
        "latency_p99_s": pct(99),
        "wait_mean_s": mean("server_wait_s"),
        "wait_max_s": float(done["server_wait_s"].max()) if len(done) else float("nan"),
        "client_units_mean": mean("client_units", admitted),
        "switches_mean": mean("switches", admitted),
        "client_energy_j_mean": mean("client_energy_j"),
    }


TOKEN_SUMMARY_KEYS = (
    "ttft_mean_s", "ttft_p50_s", "ttft_p99_s", "tpot_mean_s", "tpot_p50_s", "tpot_p99_s",
    "itl_p50_s", "itl_p95_s", "itl_p99_s", "output_tokens_per_s", "server_tokens_per_s",
    "batch_size_mean", "batch_size_max", "kv_memory_gb_mean", "kv_memory_gb_max",
    "kv_memory_gb_capacity", "preemptions",
)  # fmt: skip


def token_summary(frame: pd.DataFrame, warmup_s: float, end_s: float, gaps: list) -> dict:
    """vLLM-style metrics from the request records of a token-granularity run.

    `gaps` holds each request's inter-token gaps (None when it made fewer than two tokens
    or did not finish); the ITL percentiles pool the gaps of completed requests that
    arrived after warm-up. Server-state metrics are filled in by the runner.
    """
    keep = (frame["arrival_s"] >= warmup_s).to_numpy()
    done = keep & (frame["status"] == STATUS_COMPLETED).to_numpy()
    window_s = max(end_s - warmup_s, 0.0)

    def stats(col: str) -> tuple[float, float, float]:
        v = frame[col].to_numpy()[done]
        v = v[np.isfinite(v)]
        if not v.size:
            return (float("nan"),) * 3
        return float(v.mean()), float(np.percentile(v, 50)), float(np.percentile(v, 99))

    pooled = [g for g, d in zip(gaps, done, strict=True) if d and g is not None]
    all_gaps = np.concatenate(pooled) if pooled else np.zeros(0)
    # the pooled copy is ours: percentile may partition it in place (no second copy of
    # every gap of the run, the largest array a long token-mode run builds)
    itl = (np.percentile(all_gaps, [50, 95, 99], overwrite_input=True) if all_gaps.size
           else [float("nan")] * 3)  # fmt: skip
    out_tokens = float(frame["output_tokens"].to_numpy()[done].sum())
    ttft, tpot = stats("ttft_s"), stats("tpot_s")
    return {
        "ttft_mean_s": ttft[0], "ttft_p50_s": ttft[1], "ttft_p99_s": ttft[2],
        "tpot_mean_s": tpot[0], "tpot_p50_s": tpot[1], "tpot_p99_s": tpot[2],
        "itl_p50_s": float(itl[0]), "itl_p95_s": float(itl[1]), "itl_p99_s": float(itl[2]),
        "output_tokens_per_s": out_tokens / window_s if window_s > 0 else float("nan"),
    }  # fmt: skip
