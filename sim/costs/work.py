"""FLOPs, bytes moved and activation sizes of every unit for one request.

Two tasks: `forward` (one pass over n tokens: classification, encoding, scoring — the
SplitLLM paper's setting) and `generate` (a prefill over the prompt, then one decode step
per further output token, each reading the KV cache). A decode step's cost is affine in its
context length c, so the work keeps the two coefficients per unit and the range of c, and
the time model sums the steps in closed form.

Simplifications, stated once:
- Attention is fused (FlashAttention-style): the score matrix is never written to memory,
  so the n^2 term appears in FLOPs, not in bytes. Causal prefill counts n(n+1)/2 query-key
  pairs, a bidirectional encoder n^2.
- Elementwise work (norms, softmax, activations, residual adds) costs no FLOPs; each unit
  reads its input and writes its output activation once, and reads all its weights once
  per pass. The prefill head produces logits for the last position only.
- Encoder-decoder models: the encoder output ("memory") travels with the decoder's
  activation across every boundary inside the decoder stack during the pass in which it
  is first needed, so a decoder block on the other side from the encoder always receives
  it. If the decoder switches sides several times the memory is paid for each switch (an
  over-estimate; a real system would keep one copy per side). In decode steps, cross-
  attention K/V are cached where each decoder block runs, so only the token's activation
  crosses.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache, wraps
from typing import Literal, TypeVar

import numpy as np

from sim.catalog.specs import ModelSpec
from sim.costs.kernels import kernel_counts
from sim.costs.units import (
    Granularity,
    Unit,
    attention_params,
    embed_params,
    head_params,
    mlp_params,
    model_units,
    unit_params,
)

Task = Literal["forward", "generate"]
T = TypeVar("T")
TOKEN_ID_BYTES = 4  # int32 token ids on the wire
PIXEL_BYTES = 1  # uint8 image pixels on the wire


@dataclass(frozen=True)
class Pass:
    """What one pass feeds one stack: new tokens, attention span and KV-cache traffic."""

    tokens: float = 0.0  # new tokens through the stack; 0 means the stack does not run
    attn_span: float = 0.0  # query-key pairs of self-attention summed over new tokens
    kv_read: float = 0.0  # cached self-attention tokens read
    kv_write: float = 0.0  # tokens appended to the self-attention cache
    cross_tokens: float = 0.0  # encoder tokens cross-attended (encoder-decoder only)
    cross_project: bool = False  # compute the cross-attention K/V in this pass
    out_tokens: float = 0.0  # positions the LM head produces logits for


@dataclass(frozen=True)
class RequestWork:
    """Per-unit work of one request, enough to time it on any device and link.

    Arrays have one entry per unit (L) or per boundary (L + 1).
    """

    units: tuple[Unit, ...]
    pass_flops: np.ndarray
    pass_bytes: np.ndarray
    pass_runs: np.ndarray
    step_flops0: np.ndarray  # decode step FLOPs at context c are step_flops0 + step_flops1 * c
    step_flops1: np.ndarray
    step_bytes0: np.ndarray
    step_bytes1: np.ndarray
    step_runs: np.ndarray
    ctx_first: int  # context length of the first decode step
    steps: int  # decode steps after the pass
    act_pass: np.ndarray  # bytes crossing each boundary during the pass
    act_step: np.ndarray  # bytes crossing each boundary in every decode step
    loop_start: int  # unit fed by each generated token
    loop_bytes: float  # bytes of one generated token fed back
    weight_bytes: np.ndarray  # bytes a device must hold to run each unit
    kv_bytes: np.ndarray  # KV-cache bytes each unit holds at the end of the request
    kernels: np.ndarray  # kernels each unit launches per pass or step (`sim.costs.kernels`)

    @property
    def n_units(self) -> int:
        return len(self.units)

    def step_totals(self) -> tuple[np.ndarray, np.ndarray]:
        """FLOPs and bytes of all decode steps together, per unit."""
        k = self.steps
        ctx_sum = k * self.ctx_first + k * (k - 1) / 2
        flops = k * self.step_flops0 + ctx_sum * self.step_flops1
        bytes_ = k * self.step_bytes0 + ctx_sum * self.step_bytes1
        return flops, bytes_

    def total_flops(self) -> np.ndarray:
        return self.pass_flops + self.step_totals()[0]


def _idle(p: Pass) -> bool:
    """Whether a pass leaves its stack idle. A pass whose fields are arrays (one entry per
    request size, `sim.costs.batched`) runs its stack for every size: the batch builds
    array passes only for stacks that run."""
    return not isinstance(p.tokens, np.ndarray) and p.tokens <= 0


def _unit_cost(model: ModelSpec, unit: Unit, p: Pass) -> tuple[float, float]:
    """FLOPs and bytes of one unit in one pass (fields may be arrays: `sim.costs.batched`)."""
    if _idle(p):
        return 0.0, 0.0
    h, wb, ab = model.hidden_size, model.weight_bytes, model.act_bytes
    n = p.tokens
    if unit.kind == "embed":
        if model.input == "image":
            pixels = model.channels * model.image_size**2  # type: ignore[operator]
            patches = model.image_tokens - 1
            flops = 2 * patches * model.channels * model.patch_size**2 * h  # type: ignore[operator]
            return flops, embed_params(model) * wb + pixels * PIXEL_BYTES + n * h * ab
        gathered = 2 if model.position == "learned" else 1
        return n * h, n * h * (gathered * wb + ab)
    if unit.kind == "head":
        if model.head == "lm":
            out = p.out_tokens
            flops = 2 * out * h * model.vocab_size
            bytes_ = head_params(model) * wb + out * (h + model.vocab_size) * ab
            return flops, bytes_
        pool = h * h if model.pooler else 0
        flops = 2 * (pool + h * model.num_labels)
        return flops, head_params(model) * wb + h * ab
    flops, bytes_ = 0.0, 2 * n * h * ab  # read input, write output activation
    if unit.has_attention:
        flops_a, bytes_a = _attention_cost(model, unit, p)
        flops, bytes_ = flops + flops_a, bytes_ + bytes_a
    if unit.has_mlp:
        mats = 3 if model.mlp_kind == "gated" else 2
        flops += 2 * n * h * model.mlp_size * mats
        bytes_ += mlp_params(model) * wb
    return flops, bytes_


def _attention_cost(model: ModelSpec, unit: Unit, p: Pass) -> tuple[float, float]:
    h, ab = model.hidden_size, model.act_bytes
    dq = model.heads * model.dim_head
    dkv = model.n_kv_heads * model.dim_head
    n = p.tokens
    cross = model.architecture == "encoder_decoder" and unit.stack == "dec"
    flops = 2 * n * h * (dq + 2 * dkv) + 4 * dq * p.attn_span + 2 * n * dq * h
    bytes_ = attention_params(model, cross) * model.weight_bytes
    bytes_ += (p.kv_read + p.kv_write) * 2 * dkv * ab
    if cross:
        x = p.cross_tokens
        flops += 2 * n * h * dq + 4 * dq * n * x + 2 * n * dq * h
        if p.cross_project:
            flops += 2 * x * h * 2 * dkv
            bytes_ += x * h * ab + x * 2 * dkv * ab  # read memory, write cross K/V
        else:
            bytes_ += x * 2 * dkv * ab  # read cached cross K/V
    return flops, bytes_


def _by_identity(fn: Callable[..., T]) -> Callable[..., T]:
    """`fn` memoised on the identity of its arguments (models, unit chains, strings).

    Request work is built per request size, so its size-free parts (the unit chain, the
    per-kind index, weights, KV bytes per token) are built once per model; hashing a
    model or a chain of units on every call would cost more than the work itself. The
    arguments are kept alive with the result, so an identity is never reused.
    """
    memo: dict[tuple[int, ...], tuple[tuple, T]] = {}

    @wraps(fn)
    def cached(*args):
        key = tuple(map(id, args))
        hit = memo.get(key)
        if hit is None:
            hit = memo[key] = (args, fn(*args))
        return hit[1]

    return cached


@_by_identity
def _kinds(units: tuple[Unit, ...]) -> tuple[tuple[Unit, ...], np.ndarray]:
    """One representative unit per (kind, stack), and each unit's representative index.

    Units of one kind and stack cost the same in every pass, so a request's per-unit
    arrays are its few representatives' values spread by this index (cached per chain).
    """
    first: dict[tuple[str, str], int] = {}
    reps: list[Unit] = []
    index = np.empty(len(units), np.intp)
    for i, u in enumerate(units):
        key = (u.kind, u.stack)
        if key not in first:
            first[key] = len(reps)
            reps.append(u)
        index[i] = first[key]
    index.setflags(write=False)
    return tuple(reps), index


def _costs(model: ModelSpec, units: tuple[Unit, ...], passes: dict[str, Pass]) -> np.ndarray:
    """(L, 2) FLOPs and bytes; units of one kind and stack cost the same, so each is costed once."""
    reps, index = _kinds(units)
    per_kind = np.array([_unit_cost(model, u, passes[u.stack]) for u in reps], float)
    return per_kind.reshape(len(reps), 2)[index]


def _boundary_bytes(
    model: ModelSpec, units: tuple[Unit, ...], passes: dict[str, Pass], memory: float
) -> np.ndarray:
    """Bytes crossing each boundary: input, hidden states (plus encoder memory), output."""
    reps, index = _kinds(units)
    out = np.zeros(len(units) + 1)
    out[:-1] = np.array([_entry_bytes(model, u, passes[u.stack], memory) for u in reps])[index]
    last = passes[units[-1].stack]
    if model.head == "lm":
        out[-1] = last.out_tokens * TOKEN_ID_BYTES
    elif last.tokens > 0:
        out[-1] = model.num_labels * model.act_bytes
    return out


def _entry_bytes(model: ModelSpec, unit: Unit, p: Pass, memory: float) -> float:
    """Bytes entering `unit` in a pass: its input (token ids, pixels or hidden states)."""
    if _idle(p):
        return 0.0
    # Only decoder blocks cross-attend: the memory need not reach the head.
    mem = memory if unit.stack == "dec" and unit.kind != "head" else 0.0
    if unit.kind == "embed":
        if model.input == "image":
            return model.channels * model.image_size**2 * PIXEL_BYTES  # type: ignore[operator]
        return p.tokens * TOKEN_ID_BYTES + mem
    return p.tokens * model.hidden_size * model.act_bytes + mem


@_by_identity
def _weight_bytes(model: ModelSpec, units: tuple[Unit, ...]) -> np.ndarray:
    """Bytes of each unit's weights (read-only: shared by every request of the model)."""
    out = _cached_params(model, units) * model.weight_bytes
    out.setflags(write=False)
    return out


@cache
def _cached_params(model: ModelSpec, units: tuple[Unit, ...]) -> np.ndarray:
    params = unit_params(model, list(units))
    params.setflags(write=False)
    return params


@_by_identity
def _kernels(model: ModelSpec, units: tuple[Unit, ...]) -> np.ndarray:
    """Kernels each unit launches per pass (read-only, cached per model and chain)."""
    out = kernel_counts(model, units)
    out.setflags(write=False)
    return out


@_by_identity
def _kv_per_token(model: ModelSpec, units: tuple[Unit, ...]) -> np.ndarray:
    """KV-cache bytes per token of each unit (read-only, cached per model and chain)."""
    dkv = model.n_kv_heads * model.dim_head
    out = np.array([2 * dkv * model.act_bytes if u.has_attention else 0.0 for u in units])
    out.setflags(write=False)
    return out


@_by_identity
def _units(model: ModelSpec, granularity: Granularity) -> tuple[Unit, ...]:
    """The model's chain of units, built once per (model, granularity)."""
    return tuple(model_units(model, granularity))


@_by_identity
def _is_dec(units: tuple[Unit, ...]) -> np.ndarray:
    out = np.array([u.stack == "dec" for u in units])
    out.setflags(write=False)
    return out


def request_work(
    model: ModelSpec,
    task: Task,
    prompt_tokens: int,
    output_tokens: int = 0,
    granularity: Granularity = "block",
) -> RequestWork:
    """Work of one request: `forward` over `prompt_tokens`, or `generate` `output_tokens`."""
    units = _units(model, sys.intern(granularity) if isinstance(granularity, str) else granularity)
    if model.input == "image":
        prompt_tokens = model.image_tokens
    if prompt_tokens < 1:
        raise ValueError("prompt_tokens must be >= 1")
    if task == "generate":
        if model.architecture == "encoder" or model.head != "lm":
            raise ValueError(f"model '{model.name}' cannot generate (no decoder LM head)")
        if output_tokens < 1:
            raise ValueError("generate needs output_tokens >= 1")
        return _generate(model, units, prompt_tokens, output_tokens)
    if task != "forward":
        raise ValueError(f"unknown task '{task}'; known: forward, generate")
    return _forward(model, units, prompt_tokens)


def _empty_steps(n: int) -> dict:
    z = np.zeros(n)
    return dict(
        step_flops0=z,
        step_flops1=z,
        step_bytes0=z,
        step_bytes1=z,
        step_runs=np.zeros(n, bool),
        ctx_first=0,
        steps=0,
        act_step=np.zeros(n + 1),
        loop_start=0,
        loop_bytes=0.0,
    )


def _forward(model: ModelSpec, units: tuple[Unit, ...], n: int) -> RequestWork:
    causal = model.architecture != "encoder"
    span = n * (n + 1) / 2 if causal else float(n * n)
    out = n if model.head == "lm" else 0
    if model.architecture == "encoder_decoder":
        passes = {
            "enc": Pass(tokens=n, attn_span=float(n * n)),
            "dec": Pass(tokens=n, attn_span=span, cross_tokens=n, cross_project=True, out_tokens=n),
        }
        memory = n * model.hidden_size * model.act_bytes
    else:
        p = Pass(tokens=n, attn_span=span, out_tokens=out)
        passes, memory = {"enc": p, "dec": p}, 0.0
    costs = _costs(model, units, passes)
    kv = _kv_per_token(model, units) * 0.0  # a forward pass keeps no cache
    return RequestWork(
        units=units,
        pass_flops=costs[:, 0],
        pass_bytes=costs[:, 1],
        pass_runs=np.ones(len(units), bool),
        act_pass=_boundary_bytes(model, units, passes, memory),
        weight_bytes=_weight_bytes(model, units),
        kv_bytes=kv,
        kernels=_kernels(model, units),
        **_empty_steps(len(units)),
    )


def _generate(model: ModelSpec, units: tuple[Unit, ...], p: int, o: int) -> RequestWork:
    L = len(units)
    enc_dec = model.architecture == "encoder_decoder"
    kv_tok = _kv_per_token(model, units)
    if enc_dec:
        # Encoder reads the prompt once; the decoder starts from one start token.
        prefill = {
            "enc": Pass(tokens=p, attn_span=float(p * p)),
            "dec": Pass(1, 1, 0, 1, cross_tokens=p, cross_project=True, out_tokens=1),
        }
        step = {"enc": Pass(), "dec": Pass(1, 0, 0, 1, cross_tokens=p, out_tokens=1)}
        memory = p * model.hidden_size * model.act_bytes
        ctx_first, dec_tokens = 2, o
        loop_start = next(i for i, u in enumerate(units) if u.name == "dec.embed")
        cross_kv = np.where(_is_dec(units), kv_tok * p, 0.0)
    else:
        prefill = {s: Pass(p, p * (p + 1) / 2, 0, p, out_tokens=1) for s in ("enc", "dec")}
        step = {s: Pass(1, 0, 0, 1, out_tokens=1) for s in ("enc", "dec")}
        memory, ctx_first, dec_tokens, loop_start = 0.0, p + 1, p + o, 0
        cross_kv = np.zeros(L)
    pass_costs = _costs(model, units, prefill)
    c0 = _costs(model, units, step)
    c1 = _costs(model, units, _with_context(step, 1))
    act_step = _boundary_bytes(model, units, step, 0.0)
    act_step[loop_start] = 0.0  # the generated token arrives through the loop
    is_dec = _is_dec(units)
    return RequestWork(
        units=units,
        pass_flops=pass_costs[:, 0],
        pass_bytes=pass_costs[:, 1],
        pass_runs=np.ones(L, bool),
        step_flops0=c0[:, 0],
        step_flops1=c1[:, 0] - c0[:, 0],
        step_bytes0=c0[:, 1],
        step_bytes1=c1[:, 1] - c0[:, 1],
        step_runs=is_dec,
        ctx_first=ctx_first,
        steps=o - 1,
        act_pass=_boundary_bytes(model, units, prefill, memory),
        act_step=act_step,
        loop_start=loop_start,
        loop_bytes=float(TOKEN_ID_BYTES),
        weight_bytes=_weight_bytes(model, units),
        kv_bytes=kv_tok * np.where(is_dec, dec_tokens, 0) + cross_kv,
        kernels=_kernels(model, units),
    )


def _with_context(step: dict[str, Pass], c: float) -> dict[str, Pass]:
    """A decode step whose self-attention spans and reads `c` cached tokens."""
    return {s: replace(p, attn_span=c, kv_read=c) if p.tokens > 0 else p for s, p in step.items()}
