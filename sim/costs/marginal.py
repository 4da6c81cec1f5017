"""What one request adds to a batching server: its units' marginal times in the iterations
it joins (continuous batching, `sim.engine.batching`).

An iteration prices each server unit as one roofline over the batch: the weights are read
once, the requests' own FLOPs and bytes (KV cache, activations) add up. A request joining
a batch of B others therefore adds to unit u

    bound(F_B + f, W + b_B + b) - bound(F_B, W + b_B)          (B >= 1)

with W the unit's shared weight bytes, F_B and b_B the batch's FLOPs and own bytes, and f, b
the request's own: little for a memory-bound decode step (its KV reads), nearly all of a
compute-bound prefill. The unit's fixed time (kernel launches) is paid once per iteration,
by the batch. With no batch (B = 0) the request pays everything: its batch-1 times
(`unit_times_s`). This is the server work a batching-aware planner weighs (`dp_batched`):
offloading a decode step saves its marginal time, not its batch-1 time.

The batch is represented by B requests like this one (its mean decode step; its pass for a
request without decode steps): the server's live batch size is known at arrival, its
exact composition not. Each decode step is priced at the request's mean context (exact
in the memory-bound regime, where the marginal time is affine in the context).
"""

from __future__ import annotations

import numpy as np

from sim.catalog.specs import DeviceSpec
from sim.costs.roofline import bound_s, unit_times_s
from sim.costs.work import RequestWork


def mean_step(work: RequestWork, shared_bytes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FLOPs and own bytes (the shared weights left out) of the request's mean decode step,
    per unit; its pass's when it has no decode steps."""
    if work.steps <= 0:
        return work.pass_flops, np.maximum(work.pass_bytes - shared_bytes, 0.0)
    ctx = work.ctx_first + (work.steps - 1) / 2
    flops = work.step_flops0 + ctx * work.step_flops1
    bytes_ = work.step_bytes0 + ctx * work.step_bytes1
    return flops, np.maximum(bytes_ - shared_bytes, 0.0)


def marginal_times_s(
    work: RequestWork,
    batch_like: RequestWork,
    shared_bytes: np.ndarray,
    device: DeviceSpec,
    compute_dtype: str,
    batch: int,
) -> np.ndarray:
    """Seconds per unit that `work` (its pass and every decode step) adds to iterations of
    `batch` other requests like `batch_like` (its mean step) on `device`; its batch-1
    times when `batch` is 0. `shared_bytes`: each unit's weight bytes read once per
    iteration (`sim.engine.batching.weight_read_bytes`). Units the batch does not run
    (an encoder's while the batch decodes) cost their batch-1 times too."""
    alone = unit_times_s(work, device, compute_dtype)
    if batch <= 0:
        return alone
    flops_per_s, bytes_per_s = device.flops_per_s(compute_dtype), device.bytes_per_s
    g = device.non_overlap

    def time_s(flops, bytes_):
        return bound_s(flops / flops_per_s, bytes_ / bytes_per_s, g)

    step_f, step_b = mean_step(batch_like, shared_bytes)
    base_f, base_b = batch * step_f, shared_bytes + batch * step_b
    base = time_s(base_f, base_b)
    own_pass = np.maximum(work.pass_bytes - shared_bytes, 0.0)
    out = time_s(base_f + work.pass_flops, base_b + own_pass) - base
    if work.steps > 0:
        f, b = mean_step(work, shared_bytes)
        out = out + work.steps * (time_s(base_f + f, base_b + b) - base)
    return np.where(_runs(batch_like), np.maximum(out, 0.0), alone)


def _runs(work: RequestWork) -> np.ndarray:
    """The units a request like `work` runs in each of its iterations (its decode steps',
    or its pass's when it has none)."""
    if work.steps <= 0:
        return (work.pass_flops > 0) | (work.pass_bytes > 0)
    return (work.step_flops0 > 0) | (work.step_bytes0 > 0) | (work.step_bytes1 > 0)
