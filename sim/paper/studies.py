"""Static allocation studies: solve placement problems over a factor, no queueing.

These are the paper's "server workload per request" experiments: for each model, client,
and value of one factor (SLA, sequence length, client speed, uplink bandwidth), every
policy places the units and we record its server work against server-only.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field, PositiveFloat, PositiveInt

from sim.catalog import get_device, get_model
from sim.config.base import Section
from sim.costs import model_units, request_work, unit_times_s
from sim.records import ALLOCATION_COLUMNS, UNIT_COST_COLUMNS
from sim.split import POLICIES, Link, build_problem, solve


class LinkSpec(Section):
    uplink_mbps: PositiveFloat
    downlink_mbps: PositiveFloat
    rtt_ms: float = Field(ge=0)


class StudySpec(Section):
    """Defaults shared by every study and the values each study varies."""

    server: str
    clients: list[str] = Field(min_length=1)
    models: list[str] = Field(min_length=1)
    policies: list[str] = Field(min_length=1)
    link: LinkSpec
    tokens: PositiveInt = 256
    deadline_factor: PositiveFloat = 3.0
    sla_factors: list[PositiveFloat] = Field(min_length=1)
    token_values: list[PositiveInt] = Field(min_length=1)
    speed_clients: list[str] = Field(min_length=1)
    uplink_values_mbps: list[PositiveFloat] = Field(min_length=1)
    downlink_per_uplink: PositiveFloat = 2.0
    unit_cost_model: str = "gpt2-medium"
    unit_cost_tokens: list[PositiveInt] = Field(min_length=1)


def _point(model: str, client: str, server: str, tokens: int, link: Link, factor: float):
    """The problem of one request with a deadline of `factor` x its server-only latency."""
    m = get_model(model)
    problem = build_problem(
        m, "forward", tokens, 0, get_device(client), get_device(server), link, 1.0
    )
    server_only = solve(problem, "server_only").latency
    return replace(problem, deadline=factor * server_only), m


def _rows(spec: StudySpec, study: str, x_name: str, x: float, model: str, client: str,
          tokens: int, link: Link, factor: float) -> list[dict[str, Any]]:  # fmt: skip
    problem, m = _point(model, client, spec.server, tokens, link, factor)
    only = float(problem.server_work.sum())
    rows = []
    for policy in spec.policies:
        plan = solve(problem, policy)
        rows.append({
            "study": study, "model": model, "task": "forward", "policy": policy,
            "x_name": x_name, "x": x, "client_device": client,
            "prompt_tokens": m.image_tokens if m.input == "image" else tokens,
            "output_tokens": 0, "uplink_mbps": link.uplink_mbps,
            "deadline_s": problem.deadline, "server_work": plan.server_work,
            "server_only_work": only, "workload_ratio": plan.server_work / only,
            "latency_s": plan.latency, "feasible": plan.feasible,
            "client_units": plan.client_units, "n_units": problem.n_units,
            "placement": "".join("C" if c else "S" for c in plan.on_client),
        })  # fmt: skip
    return rows


def allocation_table(spec: StudySpec) -> pd.DataFrame:
    """All four studies as one table (columns: `sim.records.ALLOCATION_COLUMNS`)."""
    for name in spec.policies:
        POLICIES.get(name, "policies")
    base = Link(spec.link.uplink_mbps, spec.link.downlink_mbps, spec.link.rtt_ms)
    rows: list[dict] = []
    for model in spec.models:
        for client in spec.clients:
            for f in spec.sla_factors:
                rows += _rows(
                    spec, "sla", "deadline_factor", f, model, client, spec.tokens, base, f
                )
            for n in spec.token_values:
                if get_model(model).input == "image":
                    continue  # a ViT always sees 197 patch tokens
                rows += _rows(spec, "tokens", "prompt_tokens", n, model, client, n, base,
                              spec.deadline_factor)  # fmt: skip
            for up in spec.uplink_values_mbps:
                link = Link(up, up * spec.downlink_per_uplink, spec.link.rtt_ms)
                rows += _rows(spec, "bandwidth", "uplink_mbps", up, model, client, spec.tokens,
                              link, spec.deadline_factor)  # fmt: skip
        for client in spec.speed_clients:
            tflops = get_device(client).flops_per_s("fp16") / 1e12
            rows += _rows(spec, "client_speed", "client_tflops", tflops, model, client,
                          spec.tokens, base, spec.deadline_factor)  # fmt: skip
    return pd.DataFrame(rows, columns=list(ALLOCATION_COLUMNS))


def unit_cost_table(spec: StudySpec) -> pd.DataFrame:
    """Per-unit FLOPs, bytes and time on a client and the server against sequence length."""
    m = get_model(spec.unit_cost_model)
    client, server = get_device(spec.clients[0]), get_device(spec.server)
    units = model_units(m)
    rows = []
    for n in spec.unit_cost_tokens:
        work = request_work(m, "forward", n)
        t_client = unit_times_s(work, client, m.activation_dtype)
        t_server = unit_times_s(work, server, m.activation_dtype)
        for i, u in enumerate(units):
            rows.append({
                "model": m.name, "unit_index": i, "unit": u.name, "kind": u.kind, "tokens": n,
                "flops": float(work.pass_flops[i]), "bytes": float(work.pass_bytes[i]),
                "client_device": client.name, "client_s": float(t_client[i]),
                "server_device": server.name, "server_s": float(t_server[i]),
            })  # fmt: skip
    return pd.DataFrame(rows, columns=list(UNIT_COST_COLUMNS))


def mean_ratio(table: pd.DataFrame, policy: str) -> float:
    """Server work of a policy relative to server-only, over all rows (a request mix)."""
    rows = table[table["policy"] == policy]
    return float(np.sum(rows["server_work"]) / np.sum(rows["server_only_work"]))
