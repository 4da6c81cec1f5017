"""GPU kernels each unit launches per pass, and the fixed time they add (per-unit overhead).

A unit's fixed time per pass (or decode step) is `overhead_us + kernels x kernel_overhead_us`
(the device's fields): launch, tail and the floor of the small elementwise kernels that
take a few microseconds whatever their size. Counting kernels rather than units lets an
overhead fitted on the measured MLP halves (`splitsim calibrate`, five kernels each) price
a whole block, an embedding or a head by what they launch.

Kernel counts, from each unit's structure as the cost model prices it (the operator split
of an eager PyTorch or vLLM layer, as Vidur's profiles time it; biases are fused into their
GEMM):

- embedding, text: 1 gather of the token rows; each further table (learned or sinusoidal
  positions, token types) 2 (its gather and the add); an embedding norm 1. Image: the patch
  convolution, the class-token concatenation and the position add (3), a norm 1.
- attention half: its norm 1, the fused QKV projection 1, the rotary embedding 1 (rotary
  models), the attention kernel 1, the KV-cache write 1 (decoder stacks, which cache),
  the output projection 1 and the residual add 1: 7 for a Llama, 5 for an encoder.
  Cross-attention (encoder-decoder decoders) adds its norm, Q projection, K/V projection,
  attention, output projection and add: 6.
- MLP half: its norm, the up (and gate, fused) projection, the activation (fused with the
  gate product), the down projection and the residual add: 5.
- block: its attention and MLP halves.
- head: the final norm 1 (pre-LN models), then the LM projection 1, or the pooler 1 (if
  any) and the classifier 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sim.catalog.specs import DeviceSpec, ModelSpec
from sim.costs.units import Unit

MLP_KERNELS = 5  # norm, up(+gate), activation, down, residual add
CROSS_ATTENTION_KERNELS = 6  # norm, Q, K/V, attention, output projection, residual add


def _embed_kernels(model: ModelSpec) -> int:
    if model.input == "image":
        base = 3  # patch convolution, class-token concatenation, position add
    else:
        tables = model.position in ("learned", "sinusoidal")  # a position table to add
        extra = tables + (model.token_types > 0)
        base = 1 + 2 * extra  # token gather, then a gather and an add per further table
    return base + int(model.embedding_norm)


def _attention_kernels(model: ModelSpec, unit: Unit) -> int:
    rotary = model.position == "rotary"
    caches = unit.stack == "dec"  # decoder stacks keep a KV cache
    own = 5 + int(rotary) + int(caches)  # norm, QKV, [rope], attention, [KV write], out, add
    cross = model.architecture == "encoder_decoder" and unit.stack == "dec"
    return own + (CROSS_ATTENTION_KERNELS if cross else 0)


def _head_kernels(model: ModelSpec) -> int:
    norm = int(model.final_norm)
    if model.head == "lm":
        return norm + 1
    return norm + int(model.pooler) + 1


def unit_kernels(model: ModelSpec, unit: Unit) -> int:
    """Kernels `unit` launches in one pass or decode step (see the module doc)."""
    if unit.kind == "embed":
        return _embed_kernels(model)
    if unit.kind == "head":
        return _head_kernels(model)
    attn = _attention_kernels(model, unit) if unit.has_attention else 0
    return attn + (MLP_KERNELS if unit.has_mlp else 0)


def kernel_counts(model: ModelSpec, units: Sequence[Unit]) -> np.ndarray:
    """Kernels of each unit (float array, one entry per unit)."""
    return np.array([float(unit_kernels(model, u)) for u in units])


def overheads_s(kernels: np.ndarray, device: DeviceSpec) -> np.ndarray:
    """Fixed seconds per pass of units launching `kernels` kernels each on `device`.

    With `kernel_overhead_us` 0 this is `overhead_us` for every unit, the same float as the
    scalar `overhead_us * 1e-6` (so devices without a per-kernel overhead cost as before)."""
    return (device.overhead_us + device.kernel_overhead_us * np.asarray(kernels)) * 1e-6


def unit_overheads_s(model: ModelSpec, units: Sequence[Unit], device: DeviceSpec) -> np.ndarray:
    """Fixed seconds each of `model`'s `units` adds per pass (and per decode step) on `device`:
    `overhead_us + kernels x kernel_overhead_us`. What every pricing of a unit adds once per
    run (request-mode costs here; the token engine's iterations)."""
    return overheads_s(kernel_counts(model, units), device)
