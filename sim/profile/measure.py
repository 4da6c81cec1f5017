"""Per-unit wall time of a Hugging Face model built from a catalog spec with random weights.

The model is instantiated from its configuration (`AutoModelForCausalLM.from_config`), so
nothing is downloaded. One forward pass is timed unit by unit with forward hooks that stamp
the clock at unit boundaries: embedding = model entry to the first block, block i = its own
call (with `sublayer`, also its attention half = block entry to the second norm and its MLP
half = the rest, so one table serves both granularities), head = the last
block's exit to the model's exit (final norm and LM head). Decode steps are timed the same
way: a prefill builds the KV cache (untimed), then one new token runs against a fresh copy
of it per repeat. Each measurement is the median of `repeats` runs after `warmup` runs;
the repeats cycle over all points (round-robin) so load bursts from other processes spread
evenly.
"""

from __future__ import annotations

import copy
import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from sim.catalog.specs import ModelSpec
from sim.errors import UserError


@dataclass(frozen=True)
class Row:
    model: str
    unit_kind: str
    unit_index: int
    device: str
    phase: str
    tokens: int
    batch: int
    seconds: float


def hf_config(spec: ModelSpec):
    """A transformers configuration with the spec's shape (decoder LMs only)."""
    if spec.architecture != "decoder" or spec.head != "lm" or spec.input != "tokens":
        raise UserError(
            f"--model: profiling supports decoder language models (GPT-2, Llama-style); "
            f"'{spec.name}' is {spec.architecture}"
        )
    if spec.position == "learned" and spec.norm == "layernorm" and spec.mlp_kind == "gelu":
        from transformers import GPT2Config

        return GPT2Config(
            vocab_size=spec.vocab_size,
            n_positions=spec.max_positions,
            n_embd=spec.hidden_size,
            n_layer=spec.layers,
            n_head=spec.heads,
            n_inner=spec.mlp_size,
            tie_word_embeddings=spec.tied_embeddings,
        )
    if spec.position == "rotary" and spec.mlp_kind == "gated":
        common = dict(
            vocab_size=spec.vocab_size,
            hidden_size=spec.hidden_size,
            intermediate_size=spec.mlp_size,
            num_hidden_layers=spec.layers,
            num_attention_heads=spec.heads,
            num_key_value_heads=spec.n_kv_heads,
            head_dim=spec.dim_head,
            max_position_embeddings=spec.max_positions,
            tie_word_embeddings=spec.tied_embeddings,
        )
        if spec.bias == "qkv":
            from transformers import Qwen2Config

            return Qwen2Config(**common)
        from transformers import LlamaConfig

        return LlamaConfig(**common, attention_bias=spec.bias is True)
    raise UserError(
        f"--model: no transformers class matches '{spec.name}' (learned positions + GELU "
        "= GPT-2, rotary + gated MLP = Llama/Qwen2)"
    )


def _parts(model):
    """(blocks, second-norm attribute name) of a GPT-2 or Llama-style causal LM."""
    base = getattr(model, "transformer", None) or model.model
    blocks = base.h if hasattr(base, "h") else base.layers
    norm2 = "ln_2" if hasattr(blocks[0], "ln_2") else "post_attention_layernorm"
    return list(blocks), norm2


class _Stamps:
    """Clock stamps at unit boundaries, set by forward hooks."""

    def __init__(self, model, sync: Callable[[], None]):
        self.t: dict[str, float] = {}
        self.blocks, norm2 = _parts(model)
        self.handles = []

        def mark(label):
            def hook(*_args, **_kw):
                sync()
                self.t[label] = time.perf_counter()

            return hook

        reg = self.handles.append
        reg(model.register_forward_pre_hook(mark("start")))
        reg(model.register_forward_hook(mark("end")))
        for i, block in enumerate(self.blocks):
            reg(block.register_forward_pre_hook(mark(f"{i}.start")))
            reg(getattr(block, norm2).register_forward_pre_hook(mark(f"{i}.mid")))
            reg(block.register_forward_hook(mark(f"{i}.end")))

    def units(self, sublayer: bool) -> list[tuple[str, int, float]]:
        t, n = self.t, len(self.blocks)
        out = [("embed", -1, t["0.start"] - t["start"])]
        for i in range(n):
            out.append(("block", i, t[f"{i}.end"] - t[f"{i}.start"]))
            if sublayer:
                out.append(("attn", i, t[f"{i}.mid"] - t[f"{i}.start"]))
                out.append(("mlp", i, t[f"{i}.end"] - t[f"{i}.mid"]))
        out.append(("head", -1, t["end"] - t[f"{n - 1}.end"]))
        return out

    def remove(self):
        for h in self.handles:
            h.remove()


def build_model(spec: ModelSpec, device: str = "cpu", seed: int = 0):
    """The spec's transformers model with random weights, in eval mode (fp32)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(spec), attn_implementation="sdpa")
    return model.to(device).eval()


def profile_model(
    spec: ModelSpec,
    tokens: Sequence[int],
    batches: Sequence[int] = (1,),
    phases: Sequence[str] = ("forward", "decode"),
    sublayer: bool = False,
    repeats: int = 5,
    warmup: int = 1,
    device: str = "cpu",
    device_name: str = "local-cpu",
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Row]:
    """Median seconds of every unit for every phase, token count and batch size."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    too_long = [n for n in tokens if n + 1 > spec.max_positions]
    if too_long:
        raise UserError(
            f"--tokens: {too_long[0]} exceeds {spec.name}'s {spec.max_positions} positions"
        )
    model = build_model(spec, device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    cache_kw = "past_key_values"
    if "cache" in inspect.signature(model.forward).parameters:
        cache_kw = "cache"
    gen = torch.Generator().manual_seed(0)
    points: list[tuple[str, int, int, Callable[[], None]]] = []
    stamps = _Stamps(model, sync)
    try:
        with torch.inference_mode():
            for phase in phases:
                for batch in batches:
                    for n in tokens:
                        ids = torch.randint(spec.vocab_size, (batch, n), generator=gen)
                        ids = ids.to(device)
                        if phase == "decode":
                            out = model(input_ids=ids, use_cache=True)  # the cache, untimed
                            past = out.get("cache") or out.get("past_key_values")
                            step = torch.randint(spec.vocab_size, (batch, 1), generator=gen)
                            step = step.to(device)

                            def run(past=past, step=step):
                                kw = {cache_kw: copy.deepcopy(past)}
                                stamps.t.clear()
                                model(input_ids=step, use_cache=True, **kw)
                        else:
                            keep = 1 if phase == "prefill" else 0

                            def run(ids=ids, keep=keep):
                                stamps.t.clear()
                                model(input_ids=ids, use_cache=False, logits_to_keep=keep)

                        points.append((phase, batch, n, run))
            for phase, batch, n, run in points:
                if progress:
                    progress(f"{spec.name} warm-up {phase} tokens={n} batch={batch}")
                for _ in range(warmup):
                    run()
            # repeats go round-robin over the points, so a burst of load from other
            # processes spreads over all points instead of spoiling one
            samples: list[list[list[tuple[str, int, float]]]] = [[] for _ in points]
            for r in range(repeats):
                if progress:
                    progress(f"{spec.name} repeat {r + 1}/{repeats} of {len(points)} points")
                for i, (*_, run) in enumerate(points):
                    run()
                    samples[i].append(stamps.units(sublayer))
    finally:
        stamps.remove()
    rows: list[Row] = []
    for (phase, batch, n, _), runs in zip(points, samples, strict=True):
        for j, (kind, index, _) in enumerate(runs[0]):
            sec = float(np.median([s[j][2] for s in runs]))
            rows.append(Row(spec.name, kind, index, device_name, phase, n, batch, sec))
    return rows


def peak_rates(threads: int | None = None, seconds: float = 0.5) -> tuple[float, float]:
    """Microbenchmarked fp32 FLOP/s (a large matmul) and copy bandwidth (bytes/s, read+write)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    a = torch.randn(1024, 1024)
    b = torch.randn(1024, 1024)
    best_f = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        torch.mm(a, b)
        best_f = max(best_f, 2 * 1024**3 / (time.perf_counter() - t0))
    x = torch.empty(64 * 2**20 // 4)
    y = torch.empty_like(x)
    best_b = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        y.copy_(x)
        best_b = max(best_b, 2 * x.numel() * 4 / (time.perf_counter() - t0))
    return best_f, best_b
