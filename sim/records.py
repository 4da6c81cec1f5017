"""Column names of the per-request record and of the summaries, defined once.

The engine writes these columns; `analysis/` reads result folders through these names.
This module imports nothing from the engine so analysis code may import it.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

# Per-request record (requests.csv): one row per request and policy.
REQUEST_COLUMNS: tuple[str, ...] = (
    "policy",
    "replication",
    "request_id",
    "client_id",
    "client_class",
    "request_class",
    "model",
    "task",
    "prompt_tokens",
    "output_tokens",
    "status",  # completed | rejected | in_flight
    "arrival_s",
    "finish_s",
    "latency_s",
    "deadline_s",
    "sla_met",
    "planned_latency_s",
    "plan_feasible",
    "server_wait_s",
    "server_busy_s",
    "client_wait_s",
    "client_busy_s",
    "transfer_s",
    "server_work",
    "server_only_work",
    "client_units",
    "switches",
    "client_energy_j",  # client power_w x client_busy_s + radio energy of its transfers
    # token granularity only (NaN with simulation.granularity: request), vLLM's terms:
    "ttft_s",  # time to first token: arrival to the first output token at the client
    "tpot_s",  # time per output token after the first: (last - first token) / (tokens - 1)
    "itl_p50_s",  # inter-token latency at the client, median over the request's gaps
    "itl_p99_s",
    "itl_max_s",
    "ttft_deadline_s",  # the request class's SLAs on TTFT and TPOT (NaN when not given)
    "tpot_deadline_s",
)

STATUS_COMPLETED = "completed"
STATUS_REJECTED = "rejected"
STATUS_IN_FLIGHT = "in_flight"


class RequestStatus(IntEnum):
    """Where a request ended: the engines' status codes (int8 per-request arrays) and the
    strings the `status` column writes for them."""

    IN_FLIGHT = 0  # still in the system when the run ended (or never finished)
    COMPLETED = 1
    REJECTED = 2  # lost: the server queue was full, or its KV cache can never fit

    @property
    def label(self) -> str:
        """The `status` column's string for this code."""
        return _STATUS_LABELS[self]


_STATUS_LABELS = {
    RequestStatus.IN_FLIGHT: STATUS_IN_FLIGHT,
    RequestStatus.COMPLETED: STATUS_COMPLETED,
    RequestStatus.REJECTED: STATUS_REJECTED,
}


def status_labels(codes: np.ndarray) -> np.ndarray:
    """The `status` column of an array of `RequestStatus` codes."""
    return np.where(
        codes == RequestStatus.COMPLETED,
        STATUS_COMPLETED,
        np.where(codes == RequestStatus.REJECTED, STATUS_REJECTED, STATUS_IN_FLIGHT),
    )


# Per-policy summary (summary.csv / summary.json): one row per policy and replication.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "policy",
    "replication",
    "requests",
    "completed",
    "rejected",
    "backlog_at_stop",
    "in_flight_at_end",
    "overload_stop_s",  # when simulation.max_in_flight stopped the run (NaN: it did not)
    "duration_s",
    "offered_rate_per_s",
    "offered_utilization",  # offered rate x mean server-only time / slots
    "throughput_rps",
    "server_utilization",
    "queue_length_mean",
    "server_work_per_request",
    "server_only_work_per_request",
    "offload_fraction",
    "sla_violation_rate",
    "infeasible_plan_rate",
    "latency_mean_s",
    "latency_p50_s",
    "latency_p95_s",
    "latency_p99_s",
    "wait_mean_s",
    "wait_max_s",
    "client_units_mean",
    "switches_mean",
    "client_energy_j_mean",
    # token granularity only (NaN with simulation.granularity: request)
    "ttft_mean_s",
    "ttft_p50_s",
    "ttft_p99_s",
    "tpot_mean_s",
    "tpot_p50_s",
    "tpot_p99_s",
    "itl_p50_s",  # over every inter-token gap of the completed requests
    "itl_p95_s",
    "itl_p99_s",
    "output_tokens_per_s",  # output tokens of completed requests per second of the window
    "server_tokens_per_s",  # prefill + decode tokens the server processed per second
    "batch_size_mean",  # requests per iteration, time-weighted (0 while idle)
    "batch_size_max",
    "kv_memory_gb_mean",  # server KV cache in use, time-weighted
    "kv_memory_gb_max",
    "kv_memory_gb_capacity",
    "preemptions",
)

# Server state over time (timeseries.csv): time-weighted means over equal bins.
TIMESERIES_COLUMNS: tuple[str, ...] = (
    "policy",
    "replication",
    "time_s",
    "server_busy_slots",
    "server_utilization",
    "queue_length",
    "batch_size",  # token granularity only (NaN otherwise): requests per iteration
    "kv_memory_gb",  # token granularity only: server KV cache in use
)

# A fleet (`servers:`): requests.csv gains the server that served each request after this
# column; servers.csv has one row per policy, replication and server (its window after
# warm-up, as the summary); timeseries_servers.csv the server state per server.
FLEET_REQUEST_COLUMN, FLEET_AFTER = "server", "client_class"
SERVER_COLUMNS: tuple[str, ...] = (
    "policy",
    "replication",
    "server",
    "server_group",
    "device",
    "slots",
    "requests",  # routed there, arriving after warm-up
    "completed",
    "rejected",
    "throughput_rps",
    "server_utilization",
    "queue_length_mean",
    "server_wait_mean_s",
    "server_busy_mean_s",
    "sla_violation_rate",
    "server_work_per_request",
    "server_tokens_per_s",  # token granularity only (NaN otherwise)
    "batch_size_mean",  # token granularity only: requests per iteration of this server
    "kv_memory_gb_mean",  # token granularity only: this server's KV cache in use
)
SERVER_TIMESERIES_COLUMNS: tuple[str, ...] = (
    "policy",
    "replication",
    "server",
    "time_s",
    "server_busy_slots",
    "server_utilization",
    "queue_length",
)

# Static allocation studies (allocation.csv): one row per study point, model and policy,
# from solving placement problems directly (no queueing). `study` names the varied factor
# (sla | tokens | client_speed | bandwidth | tokens_abs_sla | multi_switch) and `x` its value
# in `x_name` units.
ALLOCATION_COLUMNS: tuple[str, ...] = (
    "study",
    "model",
    "task",
    "policy",
    "x_name",
    "x",
    "client_device",
    "prompt_tokens",
    "output_tokens",
    "uplink_mbps",
    "deadline_s",
    "server_work",
    "server_only_work",
    "workload_ratio",  # server_work / server_only_work
    "latency_s",
    "feasible",
    "client_units",
    "n_units",
    "placement",  # one character per unit: C (client) or S (server)
    "switches",  # location changes along the chain, leaving and returning to the client included
    "server_only_latency_s",  # the point's server-only latency (network included)
    "server_only_compute_s",  # of which server compute (the rest is network)
)

# Per-unit costs (unit_costs.csv): FLOPs and time of each unit against sequence length.
UNIT_COST_COLUMNS: tuple[str, ...] = (
    "model",
    "unit_index",
    "unit",
    "kind",
    "tokens",
    "flops",
    "bytes",
    "client_device",
    "client_s",
    "server_device",
    "server_s",
)

# Capacity search (capacity.csv / capacity_ci.csv in a sweep folder).
CAPACITY_COLUMNS: tuple[str, ...] = (
    "policy",
    "replication",
    "capacity_rps",
    "upper_rps",
    "evaluations",
)

# Fixed policy order and names used by figures and tables.
POLICY_ORDER: tuple[str, ...] = (
    "server_only",
    "greedy",
    "greedy_ratio",
    "best_cut",
    "dp",
    "client_only",
)
