"""Request work and its times for many request sizes of one model at once, as array rows.

`request_work` costs one request size; planning a trace asks for thousands of sizes. The
costs are closed-form in the token counts, so the same formulas (`sim.costs.work`'s
`_unit_cost` and `_entry_bytes`, `sim.costs.roofline`'s) run here on passes whose token
fields are arrays with one entry per size: every element is computed by the same
operations in the same order as the one-size path, so each row equals `request_work`'s
arrays exactly (tests/test_batched_planning.py). `WorkBatch.row(i)` is size i's
`RequestWork`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

import numpy as np

from sim.catalog.specs import DeviceSpec, ModelSpec
from sim.costs.kernels import overheads_s
from sim.costs.roofline import crossing_s, overlap_lines, roofline_s, summed_roofline_s
from sim.costs.units import Granularity, Unit
from sim.costs.work import (
    TOKEN_ID_BYTES,
    Pass,
    RequestWork,
    Task,
    _entry_bytes,
    _idle,
    _is_dec,
    _kernels,
    _kinds,
    _kv_per_token,
    _unit_cost,
    _units,
    _weight_bytes,
    _with_context,
)


@dataclass(frozen=True)
class WorkBatch:
    """`RequestWork` of K sizes of one model: per-unit arrays (K, L), per-boundary arrays
    (K, L + 1), `ctx_first` and `steps` (K,); size-free fields as in `RequestWork`."""

    units: tuple[Unit, ...]
    pass_flops: np.ndarray
    pass_bytes: np.ndarray
    pass_runs: np.ndarray
    step_flops0: np.ndarray
    step_flops1: np.ndarray
    step_bytes0: np.ndarray
    step_bytes1: np.ndarray
    step_runs: np.ndarray
    ctx_first: np.ndarray
    steps: np.ndarray
    act_pass: np.ndarray
    act_step: np.ndarray
    loop_start: int
    loop_bytes: float
    weight_bytes: np.ndarray
    kv_bytes: np.ndarray
    kernels: np.ndarray  # (L,) kernels per unit, as `RequestWork.kernels`
    # each unit's (kind, stack) representative (`sim.costs.work._kinds`): units of one kind
    # have equal columns in every per-unit cost array (FLOPs, bytes, runs), so their times
    # are computed once per kind
    kind_of: np.ndarray | None = None

    @property
    def size(self) -> int:
        return self.steps.shape[0]

    def row(self, i: int) -> RequestWork:
        """Size i's `RequestWork` (its arrays are views of the batch's rows)."""
        return RequestWork(
            units=self.units, pass_flops=self.pass_flops[i], pass_bytes=self.pass_bytes[i],
            pass_runs=self.pass_runs[i], step_flops0=self.step_flops0[i],
            step_flops1=self.step_flops1[i], step_bytes0=self.step_bytes0[i],
            step_bytes1=self.step_bytes1[i], step_runs=self.step_runs[i],
            ctx_first=int(self.ctx_first[i]), steps=int(self.steps[i]),
            act_pass=self.act_pass[i], act_step=self.act_step[i], loop_start=self.loop_start,
            loop_bytes=self.loop_bytes, weight_bytes=self.weight_bytes, kv_bytes=self.kv_bytes[i],
            kernels=self.kernels,
        )  # fmt: skip


def _costs(model: ModelSpec, units, passes: dict[str, Pass], k: int) -> tuple:
    """(K, L) FLOPs and bytes: each (kind, stack) representative costed once on array passes."""
    reps, index = _kinds(units)
    flops, bytes_ = np.empty((k, len(reps))), np.empty((k, len(reps)))
    for j, u in enumerate(reps):
        flops[:, j], bytes_[:, j] = _unit_cost(model, u, passes[u.stack])
    # rows C-contiguous, as the one-size arrays: row sums then add in the same order
    return np.ascontiguousarray(flops[:, index]), np.ascontiguousarray(bytes_[:, index])


def _boundary_bytes(model: ModelSpec, units, passes: dict[str, Pass], memory, k: int):
    """(K, L + 1) bytes crossing each boundary, as `sim.costs.work._boundary_bytes`."""
    reps, index = _kinds(units)
    per_kind = np.empty((k, len(reps)))
    for j, u in enumerate(reps):
        per_kind[:, j] = _entry_bytes(model, u, passes[u.stack], memory)
    out = np.zeros((k, len(units) + 1))
    out[:, :-1] = per_kind[:, index]
    last = passes[units[-1].stack]
    if model.head == "lm":
        out[:, -1] = last.out_tokens * TOKEN_ID_BYTES
    elif not _idle(last):
        out[:, -1] = model.num_labels * model.act_bytes
    return out


def work_batch(
    model: ModelSpec,
    task: Task,
    prompts: np.ndarray,
    outputs: np.ndarray,
    granularity: Granularity = "block",
) -> WorkBatch:
    """The work of every (prompt, output) size; raises ValueError where `request_work`
    would for any size (the caller then plans those sizes one at a time)."""
    units = _units(model, sys.intern(granularity) if isinstance(granularity, str) else granularity)
    p = np.asarray(prompts, np.int64).copy()
    o = np.asarray(outputs, np.int64)
    if model.input == "image":
        p[:] = model.image_tokens
    if p.size == 0 or p.min() < 1:
        raise ValueError("prompt_tokens must be >= 1")
    if task == "generate":
        if model.architecture == "encoder" or model.head != "lm" or o.min() < 1:
            raise ValueError("cannot batch this generation")
        return _generate(model, units, p, o)
    if task != "forward":
        raise ValueError(f"unknown task '{task}'")
    return _forward(model, units, p)


def _forward(model: ModelSpec, units, n: np.ndarray) -> WorkBatch:
    k, L = n.shape[0], len(units)
    causal = model.architecture != "encoder"
    span = n * (n + 1) / 2 if causal else (n * n).astype(float)
    out = n if model.head == "lm" else 0
    if model.architecture == "encoder_decoder":
        passes = {
            "enc": Pass(tokens=n, attn_span=(n * n).astype(float)),
            "dec": Pass(tokens=n, attn_span=span, cross_tokens=n, cross_project=True, out_tokens=n),
        }
        memory = n * model.hidden_size * model.act_bytes
    else:
        one = Pass(tokens=n, attn_span=span, out_tokens=out)
        passes, memory = {"enc": one, "dec": one}, 0.0
    flops, bytes_ = _costs(model, units, passes, k)
    zeros = np.zeros((k, L))
    return WorkBatch(
        units=units, pass_flops=flops, pass_bytes=bytes_, pass_runs=np.ones((k, L), bool),
        step_flops0=zeros, step_flops1=zeros, step_bytes0=zeros, step_bytes1=zeros,
        step_runs=np.zeros((k, L), bool), ctx_first=np.zeros(k, np.int64),
        steps=np.zeros(k, np.int64), act_pass=_boundary_bytes(model, units, passes, memory, k),
        act_step=np.zeros((k, L + 1)), loop_start=0, loop_bytes=0.0,
        weight_bytes=_weight_bytes(model, units),
        kv_bytes=np.broadcast_to(_kv_per_token(model, units) * 0.0, (k, L)).copy(),
        kernels=_kernels(model, units),
        kind_of=_kinds(units)[1],
    )  # fmt: skip


def _generate(model: ModelSpec, units, p: np.ndarray, o: np.ndarray) -> WorkBatch:
    k, L = p.shape[0], len(units)
    kv_tok = _kv_per_token(model, units)
    is_dec = _is_dec(units)
    if model.architecture == "encoder_decoder":
        prefill = {
            "enc": Pass(tokens=p, attn_span=(p * p).astype(float)),
            "dec": Pass(1, 1, 0, 1, cross_tokens=p, cross_project=True, out_tokens=1),
        }
        step = {"enc": Pass(), "dec": Pass(1, 0, 0, 1, cross_tokens=p, out_tokens=1)}
        memory = p * model.hidden_size * model.act_bytes
        ctx_first, dec_tokens = np.full(k, 2, np.int64), o
        loop_start = next(i for i, u in enumerate(units) if u.name == "dec.embed")
        cross_kv = np.where(is_dec, kv_tok * p[:, None], 0.0)
    else:
        prefill = {s: Pass(p, p * (p + 1) / 2, 0, p, out_tokens=1) for s in ("enc", "dec")}
        step = {s: Pass(1, 0, 0, 1, out_tokens=1) for s in ("enc", "dec")}
        memory, ctx_first, dec_tokens, loop_start = 0.0, p + 1, p + o, 0
        cross_kv = np.zeros((k, L))
    pass_flops, pass_bytes = _costs(model, units, prefill, k)
    # a decode step of a decoder costs the same for every size: one row, shared (read-only)
    n = 1 if _scalar(step) else k
    f0, b0 = _costs(model, units, step, n)
    f1, b1 = _costs(model, units, _with_context(step, 1), n)
    act_step = _boundary_bytes(model, units, step, 0.0, n)
    act_step[:, loop_start] = 0.0  # the generated token arrives through the loop
    return WorkBatch(
        units=units, pass_flops=pass_flops, pass_bytes=pass_bytes,
        pass_runs=np.ones((k, L), bool), step_flops0=_spread(f0, k),
        step_flops1=_spread(f1 - f0, k), step_bytes0=_spread(b0, k),
        step_bytes1=_spread(b1 - b0, k), step_runs=np.broadcast_to(is_dec, (k, L)),
        ctx_first=ctx_first, steps=o - 1,
        act_pass=_boundary_bytes(model, units, prefill, memory, k), act_step=_spread(act_step, k),
        loop_start=loop_start, loop_bytes=float(TOKEN_ID_BYTES),
        weight_bytes=_weight_bytes(model, units),
        kv_bytes=kv_tok * np.where(is_dec, dec_tokens[:, None], 0) + cross_kv,
        kernels=_kernels(model, units),
        kind_of=_kinds(units)[1],
    )  # fmt: skip


def _spread(x: np.ndarray, k: int) -> np.ndarray:
    """`x` as k rows: itself, or its one row shared by all k (a read-only broadcast)."""
    return x if x.shape[0] == k else np.broadcast_to(x, (k, x.shape[1]))


def _scalar(passes: dict[str, Pass]) -> bool:
    """Whether no field of the passes is an array (every size's costs are then the same)."""
    return not any(isinstance(v, np.ndarray) for p in passes.values() for v in vars(p).values())


def _shared_rows(a: np.ndarray) -> bool:
    """Whether every row of `a` is one shared row (a read-only broadcast)."""
    return a.ndim == 2 and a.shape[0] > 0 and a.strides[0] == 0


def unit_times_many(w: WorkBatch, device: DeviceSpec, compute_dtype: str) -> np.ndarray:
    """(K, L) seconds of each unit on `device`, as `sim.costs.roofline.unit_times_s` row by
    row (sizes without decode steps skip the step terms, as there). Computed once per unit
    kind (`WorkBatch.kind_of`) and spread: elementwise, so every element is the same."""
    if w.kind_of is None:
        return _unit_times(w, device, compute_dtype)
    kinds = w.kind_of
    first = np.unique(kinds, return_index=True)[1]  # a column of each kind, in kind order
    cols = {
        name: getattr(w, name)[:, first]
        for name in ("pass_flops", "pass_bytes", "pass_runs", "step_flops0", "step_flops1",
                     "step_bytes0", "step_bytes1", "step_runs")
    }  # fmt: skip
    cols["kernels"] = w.kernels[first]
    per_kind = _unit_times(replace(w, **cols, kind_of=None), device, compute_dtype)
    return np.ascontiguousarray(per_kind[:, kinds])


def _unit_times(w: WorkBatch, device: DeviceSpec, compute_dtype: str) -> np.ndarray:
    """`unit_times_many` on every column."""
    f, b = device.flops_per_s(compute_dtype), device.bytes_per_s
    g = device.non_overlap
    overhead_s = overheads_s(w.kernels, device)
    t = roofline_s(w.pass_flops, w.pass_bytes, f, b, g) + overhead_s * w.pass_runs
    rows = np.flatnonzero(w.steps > 0)
    if rows.size:
        count = w.steps[rows, None]
        lines = overlap_lines(
            w.step_flops0[rows] / f, w.step_flops1[rows] / f, w.step_bytes0[rows] / b,
            w.step_bytes1[rows] / b, g,
        )  # fmt: skip
        steps_s = summed_roofline_s(*lines, w.ctx_first[rows, None], count)
        t[rows] = (t[rows] + steps_s) + overhead_s * count * w.step_runs[rows]
    return t


def transfer_times_many(w: WorkBatch, mbps: float, rtt_ms: float) -> np.ndarray:
    """(K, L + 1) seconds per boundary, as `sim.costs.roofline.transfer_times_s` per row."""
    t = crossing_s(w.act_pass, mbps, rtt_ms) * (w.act_pass > 0)
    rows = np.flatnonzero(w.steps > 0)
    if rows.size:
        act = w.act_step[:1] if _shared_rows(w.act_step) else w.act_step[rows]
        per_step = crossing_s(act, mbps, rtt_ms) * (act > 0)  # elementwise: one row will do
        t[rows] = t[rows] + w.steps[rows, None] * per_step
    return t


def loop_times_many(w: WorkBatch, mbps: float, rtt_ms: float) -> np.ndarray:
    """(K,) seconds of the generated tokens fed back over a link, as `loop_time_s`."""
    one = crossing_s(w.loop_bytes, mbps, rtt_ms)
    return np.where(w.steps > 0, w.steps * one, 0.0)


def resident_many(w: WorkBatch, resident, client: DeviceSpec) -> np.ndarray:
    """(K, L) units the client holds, as `sim.split.build.resident_units` per row."""
    k, L = w.kv_bytes.shape
    if resident in (None, "all"):
        return np.ones((k, L), bool)
    if resident == "none":
        return np.zeros((k, L), bool)
    if resident == "fit":
        return np.cumsum(w.weight_bytes + w.kv_bytes, axis=1) <= client.memory_bytes
    if isinstance(resident, dict) and set(resident) == {"first"}:
        return np.broadcast_to(np.arange(L) < int(resident["first"]), (k, L)).copy()
    raise ValueError(f"resident must be all, none, fit or {{first: K}}, got {resident!r}")


def total_flops_many(w: WorkBatch) -> np.ndarray:
    """(K, L) FLOPs of the pass and every decode step, as `RequestWork.total_flops`."""
    k = w.steps[:, None]
    ctx_sum = k * w.ctx_first[:, None] + k * (k - 1) / 2
    return w.pass_flops + (k * w.step_flops0 + ctx_sum * w.step_flops1)
