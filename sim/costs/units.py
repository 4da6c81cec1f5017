"""The chain of units a model is split into, and each unit's parameters.

A model is a chain: embedding, transformer blocks (or each block's attention and MLP
halves at `sublayer` granularity), head. Encoder-decoder models chain the encoder stack,
then the decoder embedding and decoder stack, then the head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from sim.catalog.specs import ModelSpec

Granularity = Literal["block", "sublayer"]
UnitKind = Literal["embed", "block", "attn", "mlp", "head"]


@dataclass(frozen=True)
class Unit:
    """One schedulable piece of a model: its name, kind and the stack it belongs to."""

    name: str
    kind: UnitKind
    stack: Literal["enc", "dec"]
    layer: int = -1

    @property
    def has_attention(self) -> bool:
        return self.kind in ("block", "attn")

    @property
    def has_mlp(self) -> bool:
        return self.kind in ("block", "mlp")


def _stack_units(prefix: str, stack: str, layers: int, granularity: Granularity) -> list[Unit]:
    units: list[Unit] = []
    for i in range(layers):
        if granularity == "block":
            units.append(Unit(f"{prefix}block{i}", "block", stack, i))
        else:
            units.append(Unit(f"{prefix}block{i}.attn", "attn", stack, i))
            units.append(Unit(f"{prefix}block{i}.mlp", "mlp", stack, i))
    return units


def model_units(model: ModelSpec, granularity: Granularity = "block") -> list[Unit]:
    """The model's units in execution order."""
    if model.architecture == "encoder_decoder":
        return [
            Unit("enc.embed", "embed", "enc"),
            *_stack_units("enc.", "enc", model.layers, granularity),
            Unit("dec.embed", "embed", "dec"),
            *_stack_units("dec.", "dec", model.decoder_layers, granularity),
            Unit("head", "head", "dec"),
        ]
    stack = "dec" if model.architecture == "decoder" else "enc"
    return [
        Unit("embed", "embed", stack),
        *_stack_units("", stack, model.layers, granularity),
        Unit("head", "head", stack),
    ]


def _norm_params(model: ModelSpec) -> int:
    return (2 if model.norm == "layernorm" else 1) * model.hidden_size


def _linear(model: ModelSpec, n_in: int, n_out: int, qkv: bool = False) -> int:
    has_bias = model.bias is True or (model.bias == "qkv" and qkv)
    return n_in * n_out + (n_out if has_bias else 0)


def attention_params(model: ModelSpec, cross: bool = False) -> int:
    """Q, K, V and output projections plus the pre-attention norm (twice with cross-attention)."""
    h, dq = model.hidden_size, model.heads * model.dim_head
    dkv = model.n_kv_heads * model.dim_head
    proj = _linear(model, h, dq, True) + 2 * _linear(model, h, dkv, True) + _linear(model, dq, h)
    return (proj + _norm_params(model)) * (2 if cross else 1)


def mlp_params(model: ModelSpec) -> int:
    """The MLP's matrices (2 for GELU, 3 for gated) plus its norm."""
    h, ff = model.hidden_size, model.mlp_size
    if model.mlp_kind == "gated":
        mats = 2 * _linear(model, h, ff) + _linear(model, ff, h)
    else:
        mats = _linear(model, h, ff) + _linear(model, ff, h)
    return mats + _norm_params(model)


def embed_params(model: ModelSpec) -> int:
    """Token (or patch) embedding, positions, token types and the embedding norm."""
    h = model.hidden_size
    if model.input == "image":
        assert model.patch_size
        patch = model.channels * model.patch_size**2 * h + h
        params = patch + h + model.image_tokens * h  # conv, class token, positions
    else:
        params = model.vocab_size * h
        if model.position == "learned":
            params += model.max_positions * h
        params += model.token_types * h
    if model.embedding_norm:
        params += _norm_params(model)
    return params


def head_params(model: ModelSpec, count_tied: bool = True) -> int:
    """Final norm plus LM head or pooler and classifier.

    With `count_tied`, a tied LM head counts the embedding matrix it reads, which is what a
    device holding the head must store; without it, shared weights count once.
    """
    h = model.hidden_size
    params = _norm_params(model) if model.final_norm else 0
    if model.head == "lm":
        if count_tied or not model.tied_embeddings:
            params += model.vocab_size * h
    else:
        if model.pooler:
            params += h * h + h
        params += h * model.num_labels + model.num_labels
    return params


def unit_params(model: ModelSpec, units: list[Unit]) -> np.ndarray:
    """Parameters a device must hold to run each unit (a tied head counts its matrix)."""
    out = np.zeros(len(units))
    for i, unit in enumerate(units):
        cross = model.architecture == "encoder_decoder" and unit.stack == "dec"
        if unit.kind == "embed":
            out[i] = embed_params(model)
        elif unit.kind == "head":
            out[i] = head_params(model)
        else:
            out[i] = (attention_params(model, cross) if unit.has_attention else 0) + (
                mlp_params(model) if unit.has_mlp else 0
            )
    return out


def param_count(model: ModelSpec) -> int:
    """Distinct parameters of the whole model, shared embeddings counted once."""
    units = model_units(model)
    total = int(unit_params(model, units).sum())
    if model.head == "lm" and model.tied_embeddings:
        total -= model.vocab_size * model.hidden_size
    if model.architecture == "encoder_decoder" and model.tied_embeddings:
        total -= embed_params(model)  # decoder embedding shares the encoder's
    return total
