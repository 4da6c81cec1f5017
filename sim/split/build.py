"""Build a `SplitProblem` from a model, a request, two devices and a link."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from sim.catalog.specs import DeviceSpec, Dtype, ModelSpec
from sim.costs import (
    RequestWork,
    Task,
    loop_time_s,
    request_work,
    transfer_times_s,
    unit_times_s,
)
from sim.costs.precision import weight_copy
from sim.costs.units import Granularity, model_units
from sim.split.problem import SplitProblem

Objective = Literal["server_time", "server_flops"]


@dataclass(frozen=True)
class Link:
    """A client's network link: bandwidth each way and round-trip time."""

    uplink_mbps: float
    downlink_mbps: float
    rtt_ms: float = 0.0


def resident_units(work: RequestWork, resident, client: DeviceSpec) -> np.ndarray:
    """Which units the client holds: `all`, `none`, `{'first': K}` or `fit` (device memory).

    `fit` keeps as many units as the client's memory holds, in order, counting each unit's
    weights and the KV cache it would keep for this request (`work` is the client's: its
    weights at the precision of the client's copy, `sim.costs.precision`).
    """
    L = work.n_units
    if resident in (None, "all"):
        return np.ones(L, bool)
    if resident == "none":
        return np.zeros(L, bool)
    if resident == "fit":
        need = np.cumsum(work.weight_bytes + work.kv_bytes)
        return need <= client.memory_bytes
    if isinstance(resident, dict) and set(resident) == {"first"}:
        return np.arange(L) < int(resident["first"])
    raise ValueError(f"resident must be all, none, fit or {{first: K}}, got {resident!r}")


def pinned_units(model: ModelSpec, granularity: Granularity, first=None, names=None) -> np.ndarray:
    """The units pinned to the client (`client_required`) as bools over the model's chain:
    the first `first`, or those named. ValueError (one line, for the user) when the model
    has fewer units or no unit of a name."""
    units = [u.name for u in model_units(model, granularity)]
    L = len(units)
    if first is not None:
        if first > L:
            raise ValueError(
                f"first: {first} units pinned but model '{model.name}' has {L} at "
                f"{granularity} granularity"
            )
        return np.arange(L) < first
    index = {name: i for i, name in enumerate(units)}
    unknown = [n for n in names if n not in index]
    if unknown:
        shown = ", ".join(units) if L <= 8 else f"{', '.join(units[:4])}, ..., {units[-1]}"
        raise ValueError(
            f"units: model '{model.name}' has no unit '{unknown[0]}' at {granularity} "
            f"granularity (its units: {shown})"
        )
    mask = np.zeros(L, bool)
    mask[[index[n] for n in names]] = True
    return mask


def client_allowed(work: RequestWork, resident, client: DeviceSpec, pinned=None) -> np.ndarray:
    """The units the client may run: those it holds (`resident_units`), and under `fit`
    the pinned ones too (the user keeps them on the device whatever else fits)."""
    allowed = resident_units(work, resident, client)
    return allowed if pinned is None else allowed | pinned


def device_unit_times_s(
    work: RequestWork, model: ModelSpec, device: DeviceSpec, task: Task, prompt_tokens: int
) -> np.ndarray:
    """Seconds of each unit of `work` on `device`: its cost table where it covers the unit,
    the roofline elsewhere."""
    seconds = unit_times_s(work, device, model.activation_dtype)
    if device.cost_table is None:
        return seconds
    from sim.costs.tables import table_unit_times_s

    return table_unit_times_s(work, model, device, task, prompt_tokens, seconds)


def build_problem(
    model: ModelSpec,
    task: Task,
    prompt_tokens: int,
    output_tokens: int,
    client: DeviceSpec,
    server: DeviceSpec,
    link: Link,
    deadline_s: float,
    resident="all",
    objective: Objective = "server_time",
    granularity: Granularity = "block",
    work: RequestWork | None = None,
    times_s: tuple[np.ndarray, np.ndarray] | None = None,
    client_required: np.ndarray | None = None,
    client_weight_dtype: Dtype | None = None,
    client_work: RequestWork | None = None,
) -> SplitProblem:
    """The placement problem of one request, times from the roofline (or a device's cost table).

    `times_s` (server, client seconds per unit, from `device_unit_times_s`) skips timing
    the work again: a caller planning many sizes shares a device's times between the
    client groups and problems that use them. `client_required`: the units pinned to the
    client (`pinned_units`), held by it whatever `resident` says. `client_weight_dtype` is
    the precision of the client's copy of the weights (`sim.costs.precision`; None: the
    model's), which times the client's units and decides `resident: fit`; `client_work`
    is that copy's work when the caller has it (`work` itself at the model's precision).
    """
    if work is None:
        work = request_work(model, task, prompt_tokens, output_tokens, granularity)
    client_model = weight_copy(model, client_weight_dtype)
    if client_work is None:
        client_work = work
        if client_model is not model:
            client_work = request_work(client_model, task, prompt_tokens, output_tokens,
                                       granularity)  # fmt: skip
    if times_s is None:
        server_time = device_unit_times_s(work, model, server, task, prompt_tokens)
        client_time = device_unit_times_s(client_work, client_model, client, task, prompt_tokens)
    else:
        server_time, client_time = times_s
    server_work = server_time if objective == "server_time" else work.total_flops()
    return SplitProblem(
        client_time=client_time,
        server_time=server_time,
        server_work=server_work,
        uplink_time=transfer_times_s(work, link.uplink_mbps, link.rtt_ms),
        downlink_time=transfer_times_s(work, link.downlink_mbps, link.rtt_ms),
        deadline=deadline_s,
        client_allowed=client_allowed(client_work, resident, client, client_required),
        client_required=client_required,
        loop_start=work.loop_start,
        loop_uplink_time=loop_time_s(work, link.uplink_mbps, link.rtt_ms),
        loop_downlink_time=loop_time_s(work, link.downlink_mbps, link.rtt_ms),
    )
