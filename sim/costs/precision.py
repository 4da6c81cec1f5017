"""A client's own copy of a model at another weight precision (weight-only quantisation).

A client group may hold its copy of the weights at a lower precision than the server's
(`clients[].weight_dtype`: int8, int4, ...). The copy is the model with only its
`weight_dtype` changed: it still computes at the activation dtype (weights are dequantised
on the fly, as int8 / int4 weight-only kernels do), so its FLOPs are the model's, its
weight bytes (what a unit reads per pass and what `resident: fit` counts) shrink, and its
activations, KV cache and every boundary's transfer keep their sizes. The server keeps the
model's own precision.
"""

from __future__ import annotations

from sim.catalog.specs import ModelSpec

# (id(model), dtype) -> (model, its copy): one copy per model and precision, and the model
# kept alive with it, so an id is never reused and identity-keyed caches
# (`sim.costs.work._by_identity`) see one object per precision.
_COPIES: dict[tuple[int, str], tuple[ModelSpec, ModelSpec]] = {}


def own_precision(model: ModelSpec, weight_dtype: str | None) -> bool:
    """Whether a copy at `weight_dtype` (None: unset) is the model itself."""
    return weight_dtype is None or weight_dtype == model.weight_dtype


def weight_copy(model: ModelSpec, weight_dtype: str | None) -> ModelSpec:
    """`model` with its weights stored at `weight_dtype`; the model itself (the same
    object, so every result is as without a copy) when unset or at its own precision."""
    if own_precision(model, weight_dtype):
        return model
    key = (id(model), str(weight_dtype))
    found = _COPIES.get(key)
    if found is None:
        copy = model.model_copy(update={"weight_dtype": weight_dtype})
        found = _COPIES[key] = (model, copy)
    return found[1]
