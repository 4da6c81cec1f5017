"""Static allocation studies: solve placement problems over a factor, no queueing.

These are the paper's "server workload per request" experiments: for each model, client,
and value of one factor (SLA, sequence length, client speed, uplink bandwidth), every
policy places the units and we record its server work against server-only. Two studies go
beyond the paper: `tokens_abs_sla` (sequence length under a deadline fixed in seconds) and
`multi_switch` (a setting where placements with more than two switches win).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, ValidationError

from sim import limits as lim
from sim.catalog import get_device, get_model
from sim.catalog.specs import ModelSpec
from sim.config.base import Section
from sim.config.load import _format_validation, read_yaml
from sim.costs import model_units, request_work, unit_times_s
from sim.errors import UserError
from sim.records import ALLOCATION_COLUMNS, UNIT_COST_COLUMNS
from sim.split import POLICIES, Link, SplitProblem, build_problem, solve

MAX_STUDY_VALUES = 64  # values of one factor a new study may list (bounded work)


class BoundedLinkSpec(Section):
    """A study's link, its numbers bounded (`sim.limits`)."""

    uplink_mbps: lim.BANDWIDTH_MBPS.type
    downlink_mbps: lim.BANDWIDTH_MBPS.type
    rtt_ms: lim.RTT_MS.type


class MultiSwitchSpec(Section):
    """The `multi_switch` study: one model and client at a granularity, the client's
    attention units `attention_speedups` x faster than its roofline estimate (as a cost table
    measuring them would say), a deadline of `deadline_factor` x server-only latency."""

    model: str
    client: str
    granularity: Literal["block", "sublayer"] = "sublayer"
    tokens: lim.TOKENS.type
    link: BoundedLinkSpec
    deadline_factor: lim.DEADLINE_FACTOR.type
    attention_speedups: list[lim.SPEEDUP.type] = Field(min_length=1, max_length=MAX_STUDY_VALUES)


class StudySpec(Section):
    """Defaults shared by every study and the values each study varies."""

    server: str
    clients: list[str] = Field(min_length=1)
    models: list[str] = Field(min_length=1)
    policies: list[str] = Field(min_length=1)
    link: BoundedLinkSpec
    tokens: lim.TOKENS.type = 256  # checked against each text model's positions
    deadline_factor: lim.DEADLINE_FACTOR.type = 3.0
    sla_factors: list[lim.DEADLINE_FACTOR.type] = Field(min_length=1, max_length=MAX_STUDY_VALUES)
    # lengths a model's positions do not take are skipped for that model
    token_values: list[lim.TOKENS.type] = Field(min_length=1, max_length=MAX_STUDY_VALUES)
    speed_clients: list[str] = Field(min_length=1)
    uplink_values_mbps: list[lim.BANDWIDTH_MBPS.type] = Field(
        min_length=1, max_length=MAX_STUDY_VALUES
    )
    downlink_per_uplink: lim.LINK_RATIO.type = 2.0
    unit_cost_model: str = "gpt2-medium"
    # checked against unit_cost_model's positions
    unit_cost_tokens: list[lim.TOKENS.type] = Field(min_length=1, max_length=MAX_STUDY_VALUES)
    # tokens_abs_sla (None: not run): the deadline of each model and client is fixed in
    # seconds, deadline_factor x its server-only latency at abs_sla_reference_tokens
    abs_sla_reference_tokens: lim.TOKENS.type = 256
    abs_sla_token_values: list[lim.TOKENS.type] | None = Field(
        None, min_length=1, max_length=MAX_STUDY_VALUES
    )
    multi_switch: MultiSwitchSpec | None = None  # None: not run


def _context_check(model: str, tokens: int, where: str) -> None:
    """One line naming `where` when `tokens` do not fit `model`'s positions."""
    problem = get_model(model, where).context_error(tokens, generate=False)
    if problem:
        raise UserError(f"{where}: {problem}")


def check_spec(spec: StudySpec, source: str) -> None:
    """What the schema cannot see: names and lengths fit the catalog."""
    for model in spec.models:
        if get_model(model, f"{source}: models").input != "image":
            _context_check(model, spec.tokens, f"{source}: tokens")
    for n in spec.unit_cost_tokens:
        _context_check(spec.unit_cost_model, n, f"{source}: unit_cost_tokens")
    if spec.abs_sla_token_values is not None:
        for model in spec.models:
            _context_check(model, spec.abs_sla_reference_tokens,
                           f"{source}: abs_sla_reference_tokens")  # fmt: skip
    ms = spec.multi_switch
    if ms is not None:
        get_device(ms.client, f"{source}: multi_switch.client")
        _context_check(ms.model, ms.tokens, f"{source}: multi_switch.tokens")


def load_study_spec(path: Path) -> StudySpec:
    """`studies.yaml` validated; any problem is one line naming the file and the field."""
    try:
        spec = StudySpec.model_validate(read_yaml(path))
    except ValidationError as err:
        raise UserError(_format_validation(str(path), err)) from None
    check_spec(spec, str(path))
    return spec


def _fits(m: ModelSpec, tokens: int) -> bool:
    """Whether a text model takes `tokens` positions (a ViT's studies skip token values)."""
    return m.input != "image" and m.context_error(tokens, generate=False) is None


def _problem(model: str, client: str, server: str, tokens: int, link: Link,
             granularity: str = "block") -> SplitProblem:  # fmt: skip
    """The placement problem of one forward request (its deadline set later)."""
    m = get_model(model)
    return build_problem(m, "forward", tokens, 0, get_device(client), get_device(server),
                         link, 1.0, granularity=granularity)  # fmt: skip


def _server_only_s(problem: SplitProblem) -> float:
    return solve(problem, "server_only").latency


def _rows(policies: list[str], meta: dict[str, Any], problem: SplitProblem,
          m: ModelSpec, tokens: int, server_only_s: float) -> list[dict[str, Any]]:  # fmt: skip
    """One row per policy of one point; `meta` holds study, model, x and the link,
    `server_only_s` the point's server-only latency (its deadline's reference)."""
    only = float(problem.server_work.sum())
    point = {**meta, "task": "forward", "output_tokens": 0, "deadline_s": problem.deadline,
             "prompt_tokens": m.image_tokens if m.input == "image" else tokens,
             "server_only_work": only, "server_only_latency_s": server_only_s,
             "server_only_compute_s": float(problem.server_time.sum()),
             "n_units": problem.n_units}  # fmt: skip
    rows = []
    for policy in policies:
        plan = solve(problem, policy)
        rows.append({**point, "policy": policy, "server_work": plan.server_work,
                     "workload_ratio": plan.server_work / only, "latency_s": plan.latency,
                     "feasible": plan.feasible, "client_units": plan.client_units,
                     "switches": plan.switches,
                     "placement": "".join("C" if c else "S" for c in plan.on_client)})  # fmt: skip
    return rows


def _relative(spec: StudySpec, study: str, x_name: str, x: float, model: str, client: str,
              tokens: int, link: Link, factor: float) -> list[dict[str, Any]]:  # fmt: skip
    """A point whose deadline is `factor` x its own server-only latency."""
    problem = _problem(model, client, spec.server, tokens, link)
    only_s = _server_only_s(problem)
    meta = {"study": study, "model": model, "x_name": x_name, "x": x,
            "client_device": client, "uplink_mbps": link.uplink_mbps}  # fmt: skip
    return _rows(spec.policies, meta, problem.with_deadline(factor * only_s), get_model(model),
                 tokens, only_s)  # fmt: skip


def _paper_rows(spec: StudySpec, model: str, base: Link) -> list[dict[str, Any]]:
    """The paper's four studies for one model."""
    m, rows = get_model(model), []
    for client in spec.clients:
        for f in spec.sla_factors:
            rows += _relative(spec, "sla", "deadline_factor", f, model, client, spec.tokens,
                              base, f)  # fmt: skip
        for n in (n for n in spec.token_values if _fits(m, n)):
            rows += _relative(spec, "tokens", "prompt_tokens", n, model, client, n, base,
                              spec.deadline_factor)  # fmt: skip
        for up in spec.uplink_values_mbps:
            link = Link(up, up * spec.downlink_per_uplink, spec.link.rtt_ms)
            rows += _relative(spec, "bandwidth", "uplink_mbps", up, model, client, spec.tokens,
                              link, spec.deadline_factor)  # fmt: skip
    for client in spec.speed_clients:
        tflops = get_device(client).flops_per_s("fp16") / 1e12
        rows += _relative(spec, "client_speed", "client_tflops", tflops, model, client,
                          spec.tokens, base, spec.deadline_factor)  # fmt: skip
    return rows


def abs_sla_rows(spec: StudySpec, model: str, base: Link) -> list[dict[str, Any]]:
    """`tokens_abs_sla`: the token study with each model and client's deadline fixed in
    seconds (deadline_factor x server-only latency at abs_sla_reference_tokens), token
    values beyond the model's positions skipped."""
    m, rows = get_model(model), []
    if spec.abs_sla_token_values is None or m.input == "image":
        return rows
    for client in spec.clients:
        ref = _problem(model, client, spec.server, spec.abs_sla_reference_tokens, base)
        deadline_s = spec.deadline_factor * _server_only_s(ref)
        for n in (n for n in spec.abs_sla_token_values if _fits(m, n)):
            problem = _problem(model, client, spec.server, n, base)
            meta = {"study": "tokens_abs_sla", "model": model, "x_name": "prompt_tokens",
                    "x": n, "client_device": client, "uplink_mbps": base.uplink_mbps}  # fmt: skip
            rows += _rows(spec.policies, meta, problem.with_deadline(deadline_s), m, n,
                          _server_only_s(problem))  # fmt: skip
    return rows


def attention_faster(problem: SplitProblem, kinds: np.ndarray, speedup: float) -> SplitProblem:
    """`problem` with the client's attention units (kind `attn`) `speedup` x faster."""
    client_s = np.where(kinds == "attn", problem.client_time / speedup, problem.client_time)
    return replace(problem, client_time=client_s)


def multi_switch_rows(spec: StudySpec) -> list[dict[str, Any]]:
    """`multi_switch`: every policy against the client's attention speed-up (x)."""
    ms = spec.multi_switch
    if ms is None:
        return []
    m = get_model(ms.model)
    link = Link(ms.link.uplink_mbps, ms.link.downlink_mbps, ms.link.rtt_ms)
    base = _problem(ms.model, ms.client, spec.server, ms.tokens, link, ms.granularity)
    only_s = _server_only_s(base)  # the server side is the same at every speed-up
    base = base.with_deadline(ms.deadline_factor * only_s)
    kinds = np.array([u.kind for u in model_units(m, ms.granularity)])
    rows = []
    for speedup in ms.attention_speedups:
        meta = {"study": "multi_switch", "model": ms.model, "x_name": "client_attention_speedup",
                "x": speedup, "client_device": ms.client, "uplink_mbps": link.uplink_mbps}  # fmt: skip
        rows += _rows(spec.policies, meta, attention_faster(base, kinds, speedup), m, ms.tokens,
                      only_s)  # fmt: skip
    return rows


def allocation_table(spec: StudySpec) -> pd.DataFrame:
    """Every study as one table (columns: `sim.records.ALLOCATION_COLUMNS`)."""
    for name in spec.policies:
        POLICIES.get(name, "policies")
    base = Link(spec.link.uplink_mbps, spec.link.downlink_mbps, spec.link.rtt_ms)
    rows: list[dict] = []
    for model in spec.models:
        rows += _paper_rows(spec, model, base)
    for model in spec.models:
        rows += abs_sla_rows(spec, model, base)
    rows += multi_switch_rows(spec)
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
