"""The scenario schema: every section typed, range-checked, with units in the key names."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from sim import limits as lim
from sim.catalog.specs import DeviceSpec, Dtype, ModelSpec
from sim.config.base import Distribution, Fixed, Section, as_distribution

Dist = Annotated[Distribution, BeforeValidator(as_distribution)]

# What each size distribution of a request class may produce (a draw is rounded for tokens).
SIZE_BOUNDS = {
    "prompt_tokens": lim.TOKENS,
    "output_tokens": lim.OUTPUT_TOKENS,
    "service_s": lim.SERVICE_S,
}


def _check_support(dist: Any, bound: lim.Bound, what: str) -> None:
    """A distribution's known lowest and highest draws must lie inside the field's bound."""
    for end in dist.support:
        if end is not None and not bound.contains(end):
            raise ValueError(f"{what} must be {bound.describe()}; this distribution gives {end:g}")


def _unique_names(items: list, what: str) -> list:
    """`items` unchanged if their names are unique (else the error pydantic reports)."""
    names = [x.name for x in items]
    if len(set(names)) != len(names):
        raise ValueError(f"{what} names must be unique, got {names}")
    return items


class ServerConfig(Section):
    """The GPU server: a catalog device (or an inline spec) with parallel slots."""

    device: str | dict = Field("a100-80gb", description="catalog name or inline device spec")
    slots: lim.SLOTS.type = Field(1, description="requests executed in parallel")
    discipline: Literal["fifo", "edf"] = Field("fifo", description="queue order")
    max_queue: lim.QUEUE.optional = Field(
        None, description="a request reaching a server queue with this many waiting is rejected"
    )


class ServerGroup(ServerConfig):
    """Identical GPU servers of a fleet (`servers:`) at one site: a device, how many, how
    each runs (slots, queue order, `max_queue`) and, optionally, the models they hold."""

    name: lim.NAME
    count: lim.SERVERS.type = Field(1, description="identical servers in this group")
    models: list[str] | None = Field(
        None, min_length=1, description="the models these servers hold (default: every model)"
    )
    # token granularity: this group's batching, where it differs from `simulation:`'s
    max_batch_requests: lim.BATCH_REQUESTS.optional = Field(
        None, description="token: requests running at once on each server (default simulation's)"
    )
    max_batch_tokens: lim.BATCH_TOKENS.optional = Field(
        None, description="token: new tokens per iteration (default simulation's)"
    )
    kv_memory_gb: lim.MEMORY_GB.optional = Field(
        None, description="token: each server's KV-cache memory (default simulation's)"
    )


# a server group's own batching settings (token granularity), overriding `simulation:`'s
GROUP_BATCHING = ("max_batch_requests", "max_batch_tokens", "kv_memory_gb")

ROUTING_POLICIES = (
    "round_robin",
    "random",
    "least_outstanding",
    "power_of_two",
    "shortest_expected_wait",
    "split_aware",
)


class RoutingConfig(Section):
    """How a fleet's router picks each request's server, from what it sees at arrival."""

    policy: Literal[ROUTING_POLICIES] = Field(  # type: ignore[valid-type]
        "round_robin",
        description="round_robin | random | least_outstanding | power_of_two (two random "
        "servers, fewer outstanding) | shortest_expected_wait (queued and in-service work per "
        "slot plus the request's own time there) | split_aware (each server's split plan at "
        "its live wait: least server work per slot that meets the SLA, else least latency)",
    )


class JitterConfig(Section):
    """Extra delay added to every transfer, drawn per transfer (milliseconds)."""

    delay_ms: Dist

    @field_validator("delay_ms")
    @classmethod
    def _delay_range(cls, v: Any) -> Any:
        _check_support(v, lim.DELAY_MS, "delay_ms")
        return v


class LinkConfig(Section):
    """A client's network link."""

    uplink_mbps: lim.BANDWIDTH_MBPS.type = 20.0
    downlink_mbps: lim.BANDWIDTH_MBPS.type = 100.0
    rtt_ms: lim.RTT_MS.type = 30.0
    jitter: JitterConfig | None = None
    trace: str | None = Field(None, description="CSV of time_s, uplink_mbps, downlink_mbps")
    shared: str | None = Field(None, description="name of a medium shared with other clients")


class SiteLink(Section):
    """A client group's link to one server site: the fields that differ from its `link`."""

    uplink_mbps: lim.BANDWIDTH_MBPS.optional = None
    downlink_mbps: lim.BANDWIDTH_MBPS.optional = None
    rtt_ms: lim.RTT_MS.optional = None


Resident = Literal["all", "none", "fit"] | dict


class ClientGroup(Section):
    """Identical clients: same device, resident units, weight precision and link."""

    name: str
    count: lim.CLIENTS.type = 1
    device: str | dict = "phone-flagship"
    resident: Resident = "all"
    weight_dtype: Dtype | None = Field(
        None,
        description="precision of the client's own copy of the weights (weight-only "
        "quantisation, e.g. int8 or int4): its unit times, resident: fit and energy use it; "
        "computation, KV cache and transfers stay at the model's activation_dtype, the "
        "server at the model's weight_dtype; default (null): the model's own weight_dtype",
    )
    link: LinkConfig = Field(default_factory=LinkConfig)
    sites: dict[str, SiteLink] = Field(
        default_factory=dict,
        description="per server group (servers: name): the link fields that differ there, "
        "e.g. {edge: {rtt_ms: 5}, cloud: {rtt_ms: 40}}",
    )

    @field_validator("resident")
    @classmethod
    def _resident(cls, v: Any) -> Any:
        if isinstance(v, dict) and not _is_first_k(v):
            raise ValueError(
                "resident must be all, none, fit or {first: K} with K "
                + lim.RESIDENT_UNITS.describe().removeprefix("an integer ")
            )
        return v


def _is_first_k(v: dict) -> bool:
    k = v.get("first")
    ok = isinstance(k, int) and not isinstance(k, bool) and lim.RESIDENT_UNITS.contains(k)
    return set(v) == {"first"} and ok


class ArrivalConfig(Section):
    """Poisson arrivals (total or per-client rate) or a trace replay."""

    kind: Literal["poisson", "trace"] = "poisson"
    rate_per_s: lim.RATE_PER_S.optional = Field(None, description="total Poisson rate")
    per_client_rate_per_s: lim.RATE_PER_S.optional = None
    load: lim.LOAD.optional = Field(
        None,
        description="total rate as a fraction of the server-only capacity (slots / mean service)",
    )
    path: str | None = Field(None, description="trace CSV (kind: trace)")
    time_scale: lim.TIME_SCALE.type = Field(1.0, description="trace times are multiplied by this")
    prompt_scale: lim.LENGTH_SCALE.type = Field(
        1.0,
        description="trace: replayed prompt lengths are multiplied by this (rounded, at "
        "least 1 token), to study the same arrivals with shorter or longer prompts",
    )
    start_s: lim.TRACE_TIME_S.type = Field(0.0, description="skip trace rows before this time")
    stride_s: lim.TRACE_TIME_S.optional = Field(
        None,
        description="trace: replication r replays from start_s + r x stride_s (trace time), "
        "so replications see different windows; default: every one from start_s",
    )

    @model_validator(mode="after")
    def _one_rate(self) -> ArrivalConfig:
        if self.kind == "poisson":
            given = [self.rate_per_s, self.per_client_rate_per_s, self.load]
            if sum(v is not None for v in given) != 1:
                raise ValueError(
                    "poisson arrivals need exactly one of rate_per_s, per_client_rate_per_s, load"
                )
            if self.prompt_scale != 1:
                raise ValueError(
                    "prompt_scale scales a trace's prompts; with poisson arrivals set the "
                    "mix's prompt_tokens instead"
                )
        elif self.path is None:
            raise ValueError("trace arrivals need path")
        return self


class PinnedUnits(Section):
    """Units a request class keeps on the client (privacy: raw tokens and early
    activations never leave the device): the first K of the model's chain, or named units
    (embed, block0, block1, ..., head; block0.attn and block0.mlp at sublayer granularity;
    enc. / dec. prefixes for encoder-decoder models)."""

    first: lim.PINNED_UNITS.optional = Field(None, description="the first K units")
    units: list[str] | None = Field(None, min_length=1, description="unit names, e.g. [embed]")

    @model_validator(mode="after")
    def _one_form(self) -> PinnedUnits:
        if (self.first is None) == (self.units is None):
            raise ValueError("give exactly one of first, units")
        if self.units is not None and len(set(self.units)) != len(self.units):
            raise ValueError("units must not repeat")
        return self


class RequestClass(Section):
    """One kind of request in the mix."""

    name: str
    model: str | None = Field(None, description="catalog or scenario model (not for synthetic)")
    task: Literal["forward", "generate", "synthetic"] = "forward"
    prompt_tokens: Dist = Field(default_factory=lambda: Fixed(value=128))
    output_tokens: Dist = Field(default_factory=lambda: Fixed(value=0))
    deadline_s: lim.DEADLINE_S.optional = None
    ttft_deadline_s: lim.DEADLINE_S.optional = Field(
        None, description="token granularity: SLA on time to first token (s)"
    )
    tpot_deadline_s: lim.DEADLINE_S.optional = Field(
        None, description="token granularity: SLA on mean time per output token after the first (s)"
    )
    deadline_factor: lim.DEADLINE_FACTOR.optional = Field(
        None, description="deadline = factor x the request's server-only nominal latency"
    )
    service_s: Dist | None = Field(
        None, description="synthetic task: server time per request, no model, no network"
    )
    weight: lim.WEIGHT.type = 1.0
    client_required: PinnedUnits | None = Field(
        None, description="units every policy must run on the client: {first: K} or {units: [...]}"
    )

    @field_validator("prompt_tokens", "output_tokens", "service_s")
    @classmethod
    def _size_range(cls, v: Any, info: Any) -> Any:
        if v is not None:
            _check_support(v, SIZE_BOUNDS[info.field_name], info.field_name)
        return v

    @model_validator(mode="after")
    def _one_deadline(self) -> RequestClass:
        both = self.deadline_s is not None and self.deadline_factor is not None
        token_sla = self.ttft_deadline_s is not None or self.tpot_deadline_s is not None
        if both or (self.deadline_s is None and self.deadline_factor is None and not token_sla):
            raise ValueError("give exactly one of deadline_s, deadline_factor")
        no_e2e = self.deadline_s is None and self.deadline_factor is None
        if no_e2e and (self.ttft_deadline_s is None or self.tpot_deadline_s is None):
            raise ValueError("without deadline_s or deadline_factor give both ttft_deadline_s "
                             "and tpot_deadline_s")  # fmt: skip
        if token_sla and self.task != "generate":
            raise ValueError("ttft_deadline_s and tpot_deadline_s are for task generate")
        if self.task == "synthetic" and self.service_s is None:
            raise ValueError("task synthetic needs service_s")
        if self.task != "synthetic" and self.model is None:
            raise ValueError("model is required (except for task synthetic)")
        if self.task != "synthetic" and self.service_s is not None:
            raise ValueError("service_s is only for task synthetic")
        if self.task == "synthetic" and self.client_required is not None:
            raise ValueError("client_required needs a model's units (not for task synthetic)")
        return self


class WorkloadConfig(Section):
    arrival: ArrivalConfig
    mix: list[RequestClass] = Field(min_length=1)

    @field_validator("mix")
    @classmethod
    def _unique(cls, v: list[RequestClass]) -> list[RequestClass]:
        return _unique_names(v, "request class")


class SplitConfig(Section):
    time_step_s: lim.TIME_STEP_S.optional = Field(
        None,
        description="grid of the dp_grid policy (the paper's discretised DP); default "
        "deadline/2000, at most 100,000 steps per deadline; dp is exact and has no grid",
    )
    objective: Literal["server_time", "server_flops"] = "server_time"
    granularity: Literal["block", "sublayer"] = "block"
    slack_fraction: lim.FRACTION_BELOW_ONE.type = Field(
        0.0, description="plans must fit (1 - slack) x SLA, leaving room for queueing"
    )
    link_estimate: Literal["nominal", "oracle", "ewma"] = Field(
        "nominal",
        description="bandwidth every policy plans with: the configured link (nominal), the "
        "trace's value at arrival (oracle), or an EWMA of the group's realised transfer rates",
    )
    link_ewma_alpha: lim.FRACTION_OPEN.type = Field(
        0.3, description="ewma link estimate: weight of the newest transfer's rate"
    )
    wait_ewma_alpha: lim.FRACTION_OPEN.type = Field(
        0.1, description="load-aware policies: weight of the newest server hold time"
    )
    busy_utilization: lim.FRACTION_OPEN.type = Field(
        0.9,
        description="dp_queue_aware: at or above this recent server utilisation a request may "
        "not take more server work than dp to fit the wait; it sheds to the client instead "
        "(1 = never)",
    )
    plan_bucket_fraction: lim.FRACTION_BELOW_ONE.type = Field(
        0.02,
        description="plans made at arrival are cached per bucket: bandwidth in steps of this "
        "relative size (log scale), server wait in steps of this fraction of the deadline; 0 = exact",
    )


class SimulationConfig(Section):
    """How the engine runs requests: whole server segments, or token by token with batching."""

    granularity: Literal["request", "token"] = Field(
        "request",
        description="request: each server segment holds a slot for its whole time; token: "
        "prefill and every decode step go through an iteration-level batching server",
    )
    max_batch_requests: lim.BATCH_REQUESTS.type = Field(
        256, description="token: most requests running on the server at once (vLLM max_num_seqs)"
    )
    max_batch_tokens: lim.BATCH_TOKENS.type = Field(
        8192, description="token: new tokens per server iteration (decode steps and prefills)"
    )
    chunked_prefill: bool = Field(
        False,
        description="token: split prefills into chunks that fill each iteration's token budget "
        "after the decode steps (vLLM enable_chunked_prefill); false = a prefill waits for an "
        "iteration with room for all of it",
    )
    kv_memory_gb: lim.MEMORY_GB.optional = Field(
        None, description="token: server KV-cache memory; default kv_memory_fraction of the rest"
    )
    kv_memory_fraction: lim.FRACTION_OPEN.type = Field(
        0.9,
        description="token: share of server memory left after the models' weights kept for KV",
    )  # fmt: skip
    on_kv_full: Literal["wait", "preempt"] = Field(
        "wait",
        description="token: wait = reserve a request's final KV at admission; preempt = grow KV "
        "per token and preempt (recompute) the newest request when memory runs out",
    )
    coalesce: bool = Field(
        True,
        description="token: advance runs of identical decode-only iterations as one event "
        "(exact: the same results as stepping them, faster); false = step every iteration",
    )
    max_in_flight: lim.IN_FLIGHT.optional = Field(
        100_000,
        description="memory-safe overload stop: when this many requests are in the system the "
        "run stops (no more arrivals, no drain), reports overload_stop_s and counts the "
        "in-flight requests as SLA misses (about 1.1 KB each); null = no limit",
    )


class OutputConfig(Section):
    format: Literal["csv", "parquet"] = "csv"
    timeseries_bins: lim.TIMESERIES_BINS.type = Field(
        200, description="bins of the utilisation time series"
    )


class Scenario(Section):
    """One experiment: a server, client groups, a workload and the policies to compare."""

    name: lim.NAME = Field(
        "scenario",
        description="letters, digits, '.', '_', '-' (names the default folder runs/<name>)",
    )
    seed: lim.SEED.type = 0
    requests: lim.REQUESTS.optional = Field(None, description="stop after this many arrivals")
    duration_s: lim.DURATION_S.optional = Field(None, description="stop arrivals at this time")
    drain_s: lim.TIME_S.optional = Field(
        None, description="time after the last arrival to finish in-flight requests (default: all)"
    )
    warmup_s: lim.TIME_S.type = 0.0
    replications: lim.REPLICATIONS.type = 1
    policies: list[str] = Field(
        default_factory=lambda: ["dp", "greedy", "server_only"], min_length=1
    )
    models: dict[str, dict] = Field(default_factory=dict, description="extra model specs")
    devices: dict[str, dict] = Field(default_factory=dict, description="extra device specs")
    server: ServerConfig = Field(default_factory=ServerConfig)
    servers: list[ServerGroup] | None = Field(
        None, min_length=1, description="a fleet: server groups (instead of server)"
    )
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    clients: list[ClientGroup] = Field(min_length=1)
    workload: WorkloadConfig
    split: SplitConfig = Field(default_factory=SplitConfig)
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @field_validator("clients")
    @classmethod
    def _unique_clients(cls, v: list[ClientGroup]) -> list[ClientGroup]:
        return _unique_names(v, "client group")

    @field_validator("servers")
    @classmethod
    def _unique_servers(cls, v: list[ServerGroup] | None) -> list[ServerGroup] | None:
        return v if v is None else _unique_names(v, "server group")

    @model_validator(mode="after")
    def _one_server_form(self) -> Scenario:
        # compared with the defaults, not by presence: a dumped scenario names every field
        if self.servers is None:
            if self.routing != RoutingConfig():
                raise ValueError("routing needs a fleet: give servers (a list of server groups)")
            return self
        if self.server != ServerConfig():
            raise ValueError("give server (one server) or servers (a fleet), not both")
        if self.simulation.granularity == "request":
            for g, group in enumerate(self.servers):
                for name in GROUP_BATCHING:
                    if getattr(group, name) is not None:
                        raise ValueError(
                            f"servers.{g}.{name} sets a batching server: it needs "
                            "simulation.granularity: token"
                        )
        return self

    @property
    def fleet_size(self) -> int:
        """Servers in the fleet (1 for `server:`)."""
        return 1 if self.servers is None else sum(g.count for g in self.servers)

    @model_validator(mode="after")
    def _stop_rule(self) -> Scenario:
        no_stop = self.requests is None and self.duration_s is None
        if no_stop and self.workload.arrival.kind != "trace":
            raise ValueError("give a stop rule: requests or duration_s")
        if self.duration_s is not None and self.warmup_s >= self.duration_s:
            raise ValueError("warmup_s must be shorter than duration_s")
        if len(set(self.policies)) != len(self.policies):
            raise ValueError("policies must not repeat")
        if self.simulation.granularity == "request":
            for c in self.workload.mix:
                if c.ttft_deadline_s is not None or c.tpot_deadline_s is not None:
                    raise ValueError(
                        f"request class '{c.name}': ttft_deadline_s / tpot_deadline_s need "
                        "simulation.granularity: token"
                    )
        else:
            if any(c.task == "synthetic" for c in self.workload.mix):
                raise ValueError("task synthetic is not supported with granularity token")
        return self

    @property
    def total_clients(self) -> int:
        return sum(g.count for g in self.clients)


def inline_model(name: str, spec: dict) -> ModelSpec:
    return ModelSpec(name=name, **spec)


def inline_device(name: str, spec: dict) -> DeviceSpec:
    return DeviceSpec(name=name, **spec)
