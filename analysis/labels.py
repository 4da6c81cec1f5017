"""Axis labels with units, from column names and dotted sweep parameters."""

from __future__ import annotations

import math

# Exact names (the last part of a dotted name) with their label.
KNOWN_LABELS: dict[str, str] = {
    "deadline_factor": "SLA (deadline / server-only latency, ×)",
    "deadline_s": "SLA deadline (s)",
    "deadline_ms": "SLA deadline (ms)",
    "tokens": "Sequence length (tokens)",
    "prompt_tokens": "Sequence length (tokens)",
    "output_tokens": "Output length (tokens)",
    "uplink_mbps": "Uplink bandwidth (Mbit/s)",
    "downlink_mbps": "Downlink bandwidth (Mbit/s)",
    "rtt_ms": "Round-trip time (ms)",
    "client_tflops": "Client speed (TFLOP/s)",
    "tflops": "Client speed (TFLOP/s)",
    "load": "Offered load (× server-only capacity)",
    "rate_per_s": "Arrival rate (requests/s)",
    "offered_rate_per_s": "Offered arrival rate (requests/s)",
    "offered_utilization": "Offered utilisation (server-only)",
    "count": "Clients (count)",
    "slots": "Server slots (count)",
    "max_batch_requests": "Batch limit (requests)",
    "max_batch_tokens": "Prefill budget per batch (tokens)",
}

# Unit suffixes of the project's names (units live in names: `rtt_ms`, `uplink_mbps`).
SUFFIX_UNITS: tuple[tuple[str, str], ...] = (
    ("_per_s", "1/s"),
    ("_mbps", "Mbit/s"),
    ("_gbps", "Gbit/s"),
    ("_tflops", "TFLOP/s"),
    ("_ms", "ms"),
    ("_s", "s"),
    ("_pct", "%"),
    ("_tokens", "tokens"),
    ("_factor", "×"),
)


def axis_label(name: str) -> str:
    """A readable label with its unit for a column or dotted parameter name."""
    last = str(name).rsplit(".", 1)[-1]
    if last in KNOWN_LABELS:
        return KNOWN_LABELS[last]
    for suffix, unit in SUFFIX_UNITS:
        if last.endswith(suffix):
            words = last[: -len(suffix)].replace("_", " ").strip() or last
            return f"{words[0].upper()}{words[1:]} ({unit})"
    return last.replace("_", " ")


def time_unit(max_seconds: float) -> tuple[float, str]:
    """Scale and unit to show times whose largest value is `max_seconds`: ms below 1 s."""
    if math.isfinite(max_seconds) and 0 < max_seconds < 1.0:
        return 1e3, "ms"
    return 1.0, "s"


# The catalogue's encoder-decoder models (sim/catalog/models.yaml, architecture
# encoder_decoder). allocation.csv records a plan's unit count, not its unit names, and
# analysis/ may not import the catalogue: tests/test_analysis.py checks this set and
# `unit_names` against `sim.costs.model_units`.
ENCODER_DECODER_MODELS: frozenset[str] = frozenset({"transformer-base"})


def unit_names(model: str, n_units: int) -> list[str]:
    """The names of a model's `n_units` block-granularity units, input to output, as
    `sim.costs.model_units` gives them: embed, block0.., head; an encoder-decoder model has
    `enc.` and `dec.` stacks of equal depth, each with its own embedding."""
    if model in ENCODER_DECODER_MODELS and n_units >= 3 and (n_units - 3) % 2 == 0:
        depth = (n_units - 3) // 2
        enc = ["enc.embed", *(f"enc.block{i}" for i in range(depth))]
        return enc + ["dec.embed", *(f"dec.block{i}" for i in range(depth)), "head"]
    if n_units < 2:
        return [f"unit{i}" for i in range(n_units)]
    return ["embed", *(f"block{i}" for i in range(n_units - 2)), "head"]
