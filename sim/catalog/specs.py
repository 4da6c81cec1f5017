"""Typed model and device specifications: the fields that determine cost, nothing else."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sim import limits as lim

Dtype = Literal["fp32", "fp16", "bf16", "fp8", "int8", "int4"]

DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0,
    "fp16": 2.0,
    "bf16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    """A transformer's shape, from its published configuration.

    `layers` counts encoder blocks for `encoder` models, decoder blocks for `decoder` models
    and encoder blocks for `encoder_decoder` models (whose decoder blocks are
    `decoder_layers`). Vision models are encoders with `input: image`.
    """

    name: str
    architecture: Literal["decoder", "encoder", "encoder_decoder"]
    input: Literal["tokens", "image"] = "tokens"
    layers: lim.LAYERS.type
    decoder_layers: lim.DECODER_LAYERS.type = 0
    hidden_size: lim.HIDDEN_SIZE.type
    heads: lim.HEADS.type
    kv_heads: lim.HEADS.optional = None
    head_dim: lim.HEAD_DIM.optional = None
    mlp_size: lim.MLP_SIZE.type
    mlp_kind: Literal["gelu", "gated"]
    vocab_size: lim.VOCAB_SIZE.type
    max_positions: lim.POSITIONS.type
    position: Literal["learned", "rotary", "sinusoidal"] = "learned"
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    embedding_norm: bool = Field(False, description="a norm after the embeddings (BERT)")
    final_norm: bool = Field(True, description="a norm before the head (pre-LN models)")
    bias: bool | Literal["qkv"] = Field(True, description="linear biases: all, none, or q/k/v only")
    tied_embeddings: bool = True
    token_types: lim.TOKEN_TYPES.type = Field(0, description="BERT segment embeddings")
    head: Literal["lm", "classifier"] = "lm"
    num_labels: lim.LABELS.type = 2
    pooler: bool = False
    image_size: lim.IMAGE_PIXELS.optional = None
    patch_size: lim.IMAGE_PIXELS.optional = None
    channels: lim.CHANNELS.type = 3
    weight_dtype: Dtype = "fp16"
    activation_dtype: Dtype = "fp16"
    source: str = ""

    @model_validator(mode="after")
    def _check_shape(self) -> ModelSpec:
        kv = self.n_kv_heads
        if self.heads % kv:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({kv})")
        if self.architecture == "encoder_decoder" and self.decoder_layers < 1:
            raise ValueError("encoder_decoder models need decoder_layers >= 1")
        if self.architecture != "encoder_decoder" and self.decoder_layers:
            raise ValueError("decoder_layers is only for encoder_decoder models")
        if self.input == "image" and not (self.image_size and self.patch_size):
            raise ValueError("image models need image_size and patch_size")
        if self.input == "image" and self.patch_size > self.image_size:  # type: ignore[operator]
            raise ValueError("patch_size must be at most image_size")
        if self.input == "image" and self.image_tokens > self.max_positions:
            raise ValueError(
                f"image_size / patch_size gives {self.image_tokens} tokens; max_positions is "
                f"{self.max_positions}"
            )
        return self

    def context_error(self, tokens: float, generate: bool) -> str | None:
        """Why `tokens` (prompt, plus output when generating) do not fit this model, if so."""
        if self.input == "image" or tokens <= self.max_positions:
            return None
        what = "prompt plus output tokens" if generate else "prompt tokens"
        return (
            f"{what} can reach {tokens:.0f} but model '{self.name}' takes at most "
            f"{self.max_positions} positions"
        )

    @property
    def n_kv_heads(self) -> int:
        return self.kv_heads or self.heads

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.hidden_size // self.heads

    @property
    def weight_bytes(self) -> float:
        return DTYPE_BYTES[self.weight_dtype]

    @property
    def act_bytes(self) -> float:
        return DTYPE_BYTES[self.activation_dtype]

    @property
    def image_tokens(self) -> int:
        """Patch tokens plus the class token for an image model."""
        assert self.image_size and self.patch_size
        return (self.image_size // self.patch_size) ** 2 + 1


class DeviceSpec(_Strict):
    """A compute device as the roofline model sees it, from its spec sheet."""

    name: str
    kind: Literal["server", "client"]
    description: str = ""
    peak_tflops: dict[Dtype, lim.PEAK_TFLOPS.type] = Field(
        min_length=1, description="dense peak TFLOP/s per data type (no sparsity)"
    )
    memory_bandwidth_gb_s: lim.MEMORY_BANDWIDTH_GB_S.type
    memory_gb: lim.MEMORY_GB.type
    compute_efficiency: lim.EFFICIENCY.type = Field(0.6, description="achievable share of peak")
    bandwidth_efficiency: lim.EFFICIENCY.type = Field(0.8, description="achievable share of peak")
    overhead_us: lim.OVERHEAD_US.type = Field(10.0, description="fixed time per unit per pass")
    kernel_overhead_us: lim.KERNEL_OVERHEAD_US.type = Field(
        0.0,
        description="fixed time per kernel a unit launches, added to overhead_us once per "
        "kernel per pass (kernel counts: sim.costs.kernels; fitted to GPU kernels by "
        "splitsim calibrate)",
    )
    non_overlap: lim.NON_OVERLAP.type = Field(
        0.0,
        description="share of the shorter of compute and memory time not hidden behind the "
        "longer (0: the plain roofline max; fitted to GPU kernels by splitsim calibrate)",
    )
    power_w: lim.POWER_W.optional = None
    radio_nj_per_bit: lim.RADIO_NJ_PER_BIT.type = Field(
        100.0,
        description="client radio energy per bit sent or received (nJ); default 100, an order "
        "of magnitude between LTE/Wi-Fi downlink (~50-140) and uplink (~280-440) nJ/bit",
    )
    cost_table: str | None = Field(
        None,
        description="CSV of measured per-unit seconds (splitsim profile); units it covers are "
        "timed from it instead of the roofline (path relative to the scenario file)",
    )
    source: str = ""

    def flops_per_s(self, dtype: str) -> float:
        """Achievable FLOP/s at `dtype`, falling back to the widest listed type."""
        peak = self.peak_tflops.get(dtype)
        if peak is None:
            for fallback in ("fp16", "bf16", "fp32"):
                if fallback in self.peak_tflops:
                    peak = self.peak_tflops[fallback]
                    break
        if peak is None:
            peak = max(self.peak_tflops.values())
        return peak * 1e12 * self.compute_efficiency

    @property
    def bytes_per_s(self) -> float:
        return self.memory_bandwidth_gb_s * 1e9 * self.bandwidth_efficiency

    @property
    def memory_bytes(self) -> float:
        return self.memory_gb * 1e9
