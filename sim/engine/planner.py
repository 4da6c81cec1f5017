"""Plans per request class, cached, and the segments the engine executes for a plan.

A plan's segments alternate between client compute, transfers and server compute. By
default plans use nominal link values and are cached per request class; the engine
realises them against queues and the actual link. Plans that depend on time (a load-aware
policy's expected server wait, a non-nominal link estimate) are made at arrival by
`Planner.get_at`, cached per quantised (wait, bandwidth) bucket.

Planning cost: a run asks for one problem per distinct (class, group, prompt, output), so
the book shares what does not depend on all four: unit times per (class, sizes, device,
weight precision) (the server's serve every client group; a group holding its own copy
of the weights at another precision, `sim.costs.precision`, has its own client times and
work), the prefill-only problem of token SLAs per
(class, group, prompt) (every output length of a prompt), and request work keeps its
size-free parts per model (`sim.costs.work`). Nothing is searched where nothing can be
chosen: fixed policies (`server_only`, `client_only`) evaluate their placement once, and
a problem with no unit allowed on the client (`resident: none`) takes its one placement
without the DP or the token-SLA bisection. Every shortcut gives the general path's plan
exactly (tests/test_planning_speed_paths.py).

Before a run the distinct sizes are built as a batch (`sim.engine.plan_batch`): their
problems are registered in `ProblemBook.pending` and made into objects when first asked
for; fixed placements are planned there without objects (`sim.engine.plan_fixed`). A
plan's segments are only read by the request engine: plans made in bulk derive them on
first use (`PlannedRequest.lazy`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from sim.catalog.specs import DeviceSpec
from sim.config import LoadedScenario
from sim.costs import RequestWork, request_work
from sim.costs.marginal import marginal_times_s
from sim.costs.precision import own_precision, weight_copy
from sim.engine.batching import weight_read_bytes
from sim.engine.network import DOWN, UP
from sim.split import Link, Plan, SplitProblem, build_problem, solve
from sim.split.build import device_unit_times_s
from sim.split.dp import solve_dp
from sim.split.phase_plans import Handoff, solve_phase_plans
from sim.split.phased import (
    _FITS,
    DEADLINE_POLICIES,
    Phases,
    judge,
    solve_dp_phased,
    solve_phased,
    split_phases,
    with_waits,
)
from sim.split.policies import BATCHING_AWARE, LOAD_AWARE, PHASE_PLANS
from sim.split.problem import evaluate

CLIENT, SERVER, XFER = 0, 1, 2


class PlannedRequest:
    """What the engine needs to run one request class on one client group.

    The segments (and whether one is on the server, and the bytes the client moves) are
    only read by the request engine: a plan made by `lazy` derives them on first use
    (`derive(*args)` gives the three), so token-mode planning never builds them.
    """

    __slots__ = ("plan", "deadline_s", "server_only_work", "_segments", "_derive", "_args")

    def __init__(
        self,
        plan: Plan,
        segments: tuple[tuple, ...],
        deadline_s: float,
        server_only_work: float,
        has_server: bool,
        transfer_bytes: float = 0.0,  # bytes sent and received by the client over the request
    ):
        self.plan, self.deadline_s, self.server_only_work = plan, deadline_s, server_only_work
        self._segments = (segments, has_server, transfer_bytes)
        self._derive = self._args = None

    @classmethod
    def lazy(
        cls, plan: Plan, deadline_s: float, server_only_work: float, derive: Callable, args: tuple
    ) -> PlannedRequest:
        """A plan whose segments `derive(*args)` builds when first asked for."""
        out = cls.__new__(cls)
        out.plan, out.deadline_s, out.server_only_work = plan, deadline_s, server_only_work
        out._segments, out._derive, out._args = None, derive, args
        return out

    def _derived(self) -> tuple:
        if self._segments is None:
            self._segments = self._derive(*self._args)  # type: ignore[misc]
            self._derive = self._args = None
        return self._segments

    @property
    def segments(self) -> tuple[tuple, ...]:
        return self._derived()[0]

    @property
    def has_server(self) -> bool:
        return self._derived()[1]

    @property
    def transfer_bytes(self) -> float:
        return self._derived()[2]


def _crossing(work: RequestWork, b: int) -> tuple[float, float]:
    """Bytes and crossings of boundary b over the whole request (pass plus decode steps)."""
    steps = work.steps
    nbytes = work.act_pass[b] + steps * work.act_step[b]
    crossings = float(work.act_pass[b] > 0) + steps * float(work.act_step[b] > 0)
    return float(nbytes), crossings


def plan_segments(problem: SplitProblem, work: RequestWork, on_client: np.ndarray) -> tuple:
    """Client, server and transfer segments of a placement, consecutive units merged."""
    segs: list[tuple] = []
    L = work.n_units
    prev_client = True
    # plain lists: the same floats, without numpy's per-element indexing cost
    oc, ct, st = on_client.tolist(), problem.client_time.tolist(), problem.server_time.tolist()
    for u in range(L):
        here_client = oc[u]
        if here_client != prev_client:
            segs.append((XFER, DOWN if here_client else UP, *_crossing(work, u)))
        t = ct[u] if here_client else st[u]
        kind = CLIENT if here_client else SERVER
        if segs and segs[-1][0] == kind:
            segs[-1] = (kind, segs[-1][1] + t)
        else:
            segs.append((kind, t))
        prev_client = here_client
    loop_server = not on_client[work.loop_start] and work.steps > 0
    if not prev_client:
        nbytes, crossings = _crossing(work, L)
        if loop_server:  # tokens loop on the server; only the final delivery waits
            nbytes -= work.steps * work.loop_bytes
            crossings -= work.steps
        segs.append((XFER, DOWN, nbytes, crossings))
    elif loop_server:  # each token made on the client goes back up to the loop start
        segs.append((XFER, UP, work.steps * work.loop_bytes, float(work.steps)))
    return tuple(s for s in segs if not (s[0] != XFER and s[1] == 0.0))


@dataclass(frozen=True)
class RequestProblem:
    """A request class's placement problem on one client group, with its deadline."""

    problem: SplitProblem
    work: RequestWork
    deadline_s: float
    phases: Phases | None = None  # generation with TTFT/TPOT SLAs (token granularity)


class ProblemBook:
    """Placement problems per (request class, client group, sizes), shared by all policies."""

    def __init__(self, ld: LoadedScenario):
        self.ld = ld
        self.split = ld.scenario.split
        self._work: dict[tuple, RequestWork] = {}
        self._problems: dict[tuple, RequestProblem] = {}
        self._linked: dict[tuple, RequestProblem] = {}
        # (class, prompt, output, device id, weight dtype or None for the model's) -> s
        self._times: dict[tuple, np.ndarray] = {}
        # the client copies' work at another precision: (class, dtype, prompt, output) -> work
        self._client_work: dict[tuple, RequestWork] = {}
        self._prefill: dict[tuple, SplitProblem] = {}  # (class, group, prompt, link) -> problem
        self._batched: dict[tuple, RequestProblem] = {}  # `at_batch`
        # built by a batch (`sim.engine.plan_batch`), made into objects when first asked:
        # key -> (maker, row); the maker's `problem(row)`, `work(row)`, `deadline_s(row)`
        # and `steps(row)` give the size's
        self.pending: dict[tuple, tuple] = {}
        self.pending_work: dict[tuple, tuple] = {}
        # a fleet's other sites (`sim.engine.fleet.FleetBooks`): a relative SLA
        # (deadline_factor) multiplies the least server-only latency over every site
        self.peers: list[ProblemBook] = []
        self.models_held: frozenset[str] | None = None  # a fleet site's models (None: all)
        self._server_only_s: dict[tuple, float] = {}

    def holds(self, klass: int) -> bool:
        """Whether this book's server holds the class's model (a fleet's group may not)."""
        held = self.models_held
        return held is None or self.ld.scenario.workload.mix[klass].model in held

    def nominal_link(self, group: int) -> Link:
        """A client group's nominal link (to this book's server)."""
        cfg = self.ld.scenario.clients[group].link
        return Link(cfg.uplink_mbps, cfg.downlink_mbps, cfg.rtt_ms)

    def server_only_latency_s(self, klass: int, group: int, prompt: int, output: int) -> float:
        """A size's server-only latency (s) on this book's server over the group's nominal
        link (cached)."""
        key = (klass, group, prompt, output)
        found = self._server_only_s.get(key)
        if found is None:
            problem = self._problem(klass, group, prompt, output, self.nominal_link(group), 1.0)
            found = self._server_only_s[key] = solve(problem, "server_only").latency
        return found

    def reference_latency_s(self, own_s: float, klass: int, group: int, prompt: int,
                            output: int) -> float:  # fmt: skip
        """What a relative SLA multiplies: `own_s` (this server's server-only latency), or
        for a fleet the least over every site that holds the model."""
        for peer in self.peers:
            if peer.holds(klass):
                own_s = min(own_s, peer.server_only_latency_s(klass, group, prompt, output))
        return own_s

    def unit_times_s(
        self, klass: int, prompt: int, output: int, device: DeviceSpec, weight_dtype=None
    ) -> np.ndarray:
        """Seconds of each unit of a request size on a device holding the weights at
        `weight_dtype` (None: the model's own, as `client_dtype` gives), cached per
        (device, precision): the server's times serve every client group, a prefill's
        every output length, and two groups of one device at two precisions never share."""
        key = (klass, prompt, output, id(device), weight_dtype)
        found = self._times.get(key)
        if found is None:
            cls = self.ld.scenario.workload.mix[klass]
            model = weight_copy(self.ld.models[cls.model], weight_dtype)
            work = self.precision_work(klass, weight_dtype, prompt, output)
            found = device_unit_times_s(work, model, device, cls.task, prompt)
            self._times[key] = found
        return found

    def client_dtype(self, klass: int, group: int) -> str | None:
        """The precision of a client group's copy of a class's model, or None when it is
        the model's own (set or unset alike: both share the model's work and times)."""
        dtype = self.ld.scenario.clients[group].weight_dtype
        model = self.ld.models[self.ld.scenario.workload.mix[klass].model]
        return None if own_precision(model, dtype) else dtype

    def client_work(self, klass: int, group: int, prompt: int, output: int) -> RequestWork:
        """A size's work on a client group's copy of the weights (`sim.costs.precision`):
        `work`'s own object at the model's precision."""
        return self.precision_work(klass, self.client_dtype(klass, group), prompt, output)

    def precision_work(
        self, klass: int, weight_dtype: str | None, prompt: int, output: int
    ) -> RequestWork:
        """A size's work with the weights at `weight_dtype` (None: `work`'s), cached."""
        if weight_dtype is None:
            return self.work(klass, prompt, output)
        key = (klass, weight_dtype, prompt, output)
        found = self._client_work.get(key)
        if found is None:
            cls = self.ld.scenario.workload.mix[klass]
            model = weight_copy(self.ld.models[cls.model], weight_dtype)
            found = request_work(model, cls.task, prompt, output, self.split.granularity)
            self._client_work[key] = found
        return found

    def _problem(
        self, klass: int, group: int, prompt: int, output: int, link: Link, deadline_s: float
    ) -> SplitProblem:
        """`build_problem` for a request size on a client group, with cached unit times."""
        sc = self.ld.scenario
        cls, grp = sc.workload.mix[klass], sc.clients[group]
        client, server = self.ld.client_devices[group], self.ld.server_device
        dtype = self.client_dtype(klass, group)
        times = (
            self.unit_times_s(klass, prompt, output, server),
            self.unit_times_s(klass, prompt, output, client, dtype),
        )
        return build_problem(
            self.ld.models[cls.model], cls.task, prompt, output, client, server, link,
            deadline_s, resident=grp.resident, objective=self.split.objective,
            granularity=self.split.granularity, work=self.work(klass, prompt, output),
            times_s=times, client_weight_dtype=dtype,
            client_work=self.precision_work(klass, dtype, prompt, output),
            client_required=self.ld.pinned[klass] if self.ld.pinned else None,
        )  # fmt: skip

    def _prefill_problem(self, klass: int, group: int, prompt: int, link: Link) -> SplitProblem:
        """The prefill-only problem (one output token) of a prompt, shared by every output
        length of that prompt (it depends on neither)."""
        key = (klass, group, prompt, link)
        found = self._prefill.get(key)
        if found is None:
            found = self._problem(klass, group, prompt, 1, link, 1.0)
            self._prefill[key] = found
        return found

    def work(self, klass: int, prompt: int, output: int) -> RequestWork:
        key = (klass, prompt, output)
        w = self._work.get(key)
        if w is None:
            batched = self.pending_work.pop(key, None)
            if batched is not None:
                w = batched[0].work(batched[1])
            else:
                cls = self.ld.scenario.workload.mix[klass]
                model = self.ld.models[cls.model]
                w = request_work(model, cls.task, prompt, output, self.split.granularity)
            self._work[key] = w
        return w

    def get(self, klass: int, group: int, prompt: int, output: int) -> RequestProblem:
        key = (klass, group, prompt, output)
        found = self._problems.get(key)
        if found is None:
            batched = self.pending.pop(key, None)
            if batched is not None:
                found = batched[0].problem(batched[1])
            else:
                found = self._build(klass, group, prompt, output)
            self._problems[key] = found
        return found

    def deadline_s(self, klass: int, group: int, prompt: int, output: int) -> float:
        """A size's SLA (s), read off its batch when its problem is not built yet."""
        key = (klass, group, prompt, output)
        batched = self.pending.get(key)
        if batched is not None:
            return batched[0].deadline_s(batched[1])
        return self.get(*key).deadline_s

    def steps(self, klass: int, prompt: int, output: int) -> int:
        """A size's decode steps, read off its batch when its work is not built yet."""
        batched = self.pending_work.get((klass, prompt, output))
        if batched is not None:
            return batched[0].steps(batched[1])
        return self.work(klass, prompt, output).steps

    def get_link(
        self, klass: int, group: int, prompt: int, output: int, up_mbps: float, down_mbps: float
    ) -> RequestProblem:
        """The problem planned with other link bandwidths; deadline as with the nominal link."""
        cfg = self.ld.scenario.clients[group].link
        if up_mbps == cfg.uplink_mbps and down_mbps == cfg.downlink_mbps:
            return self.get(klass, group, prompt, output)
        key = (klass, group, prompt, output, up_mbps, down_mbps)
        found = self._linked.get(key)
        if found is None:
            nominal = self.get(klass, group, prompt, output)
            built = self._build(klass, group, prompt, output, Link(up_mbps, down_mbps, cfg.rtt_ms))
            problem = built.problem.with_deadline(nominal.problem.deadline)
            found = RequestProblem(problem, built.work, nominal.deadline_s, built.phases)
            self._linked[key] = found
        return found

    def at_batch(
        self, rp: RequestProblem, klass: int, group: int, prompt: int, up_mbps: float,
        down_mbps: float, batch: int,
    ) -> RequestProblem:  # fmt: skip
        """`rp` (a size's problem on a link) with its server times, and its server work when
        that is time, at a batching server's marginal costs for a running batch of `batch`
        requests like it (`sim.costs.marginal`); cached. Deadline and limits stay."""
        key = (id(rp), batch)  # problems on links are cached for the run: ids stay unique
        found = self._batched.get(key)
        if found is None:
            work = rp.work
            whole = self._marginal(rp.problem, klass, work, work, batch)
            phases = rp.phases
            if phases is not None:
                rtt = self.ld.scenario.clients[group].link.rtt_ms
                first = self._prefill_problem(klass, group, prompt, Link(up_mbps, down_mbps, rtt))
                first = self._marginal(first, klass, self.work(klass, prompt, 1), work, batch)
                phases = split_phases(
                    whole, first, work.steps, phases.ttft_s, phases.tpot_s, phases.e2e_s
                )
            found = RequestProblem(whole, work, rp.deadline_s, phases)
            self._batched[key] = found
        return found

    def _marginal(
        self, problem: SplitProblem, klass: int, work: RequestWork, batch_like: RequestWork,
        batch: int,
    ) -> SplitProblem:  # fmt: skip
        """`problem` of `work` with its server times (and time work) marginal at `batch`."""
        model = self.ld.models[self.ld.scenario.workload.mix[klass].model]
        shared = weight_read_bytes(model, tuple(work.units))
        server = self.ld.server_device
        t = marginal_times_s(work, batch_like, shared, server, model.activation_dtype, batch)
        if self.split.objective == "server_time":
            return replace(problem, server_time=t, server_work=t)
        return replace(problem, server_time=t)

    def _build(
        self, klass: int, group: int, prompt: int, output: int, link: Link | None = None
    ) -> RequestProblem:
        sc = self.ld.scenario
        cls = sc.workload.mix[klass]
        work = self.work(klass, prompt, output)
        if link is None:
            link = self.nominal_link(group)
        problem = self._problem(klass, group, prompt, output, link, cls.deadline_s or 1.0)
        deadline = cls.deadline_s
        if deadline is None and cls.deadline_factor is None:
            # token SLAs only: plan for the end-to-end time they allow together
            deadline = (cls.ttft_deadline_s or 0.0) + (cls.tpot_deadline_s or 0.0) * max(
                output - 1, 0
            )
        if deadline is None:  # relative SLA: a multiple of the server-only nominal latency
            server_only = solve(problem, "server_only")
            reference = self.reference_latency_s(server_only.latency, klass, group, prompt, output)
            deadline = cls.deadline_factor * reference  # type: ignore[operator]
        # plans aim at the SLA less the slack kept for queueing and link variation
        keep = 1 - self.split.slack_fraction
        problem = problem.with_deadline(deadline * keep)
        phases = None
        if (cls.ttft_deadline_s or cls.tpot_deadline_s) and work.steps > 0:
            first = self._prefill_problem(klass, group, prompt, link)
            phases = split_phases(
                problem, first, work.steps, (cls.ttft_deadline_s or 0) * keep,
                (cls.tpot_deadline_s or 0) * keep, (cls.deadline_s or 0) * keep,
            )  # fmt: skip
        return RequestProblem(problem, work, float(deadline), phases)


def segment_facts(problem: SplitProblem, work: RequestWork, on_client: np.ndarray) -> tuple:
    """(segments, whether one is on the server, bytes the client moves) of a placement."""
    segments = plan_segments(problem, work, on_client)
    has_server = any(s[0] == SERVER for s in segments)
    return segments, has_server, float(sum(s[2] for s in segments if s[0] == XFER))


def counted_plan(
    on_client: np.ndarray,
    latency: float,
    work: float,
    feasible: bool,
    policy: str,
    client_units: int,
    switches: int,
) -> Plan:
    """A `Plan` whose client units and switches are counted already (for a batch): its
    fields set in one go, as its constructor and cached properties would set them."""
    plan = object.__new__(Plan)
    plan.__dict__.update(
        on_client=on_client, latency=latency, server_work=work, feasible=feasible,
        policy=policy, notes={}, client_units=client_units, switches=switches,
    )  # fmt: skip
    return plan


def book_segment_facts(book: ProblemBook, key: tuple, on_client: np.ndarray) -> tuple:
    """`segment_facts` of a placement on a size's nominal problem, built when asked."""
    rp = book.get(*key)
    return segment_facts(rp.problem, rp.work, on_client)


def _planned(rp: RequestProblem, plan: Plan) -> PlannedRequest:
    """The plan with its request's deadline and server-only work; segments when asked."""
    work = float(rp.problem.server_work.sum())
    return PlannedRequest.lazy(
        plan, rp.deadline_s, work, segment_facts, (rp.problem, rp.work, plan.on_client)
    )


def bucket_log(value: float, nominal: float, width: float) -> float:
    """`value` snapped to the nearest of nominal x (1 + width)^k (unchanged when width is 0)."""
    if width <= 0 or value == nominal:
        return value
    k = round(np.log(value / nominal) / np.log1p(width))
    return nominal * (1 + width) ** k if k else nominal


def bucket_linear(value: float, quantum: float) -> float:
    """`value` snapped to the nearest multiple of `quantum` (unchanged when quantum is 0)."""
    if quantum <= 0:
        return value
    return round(value / quantum) * quantum


def pass_waits(work: RequestWork, wait_per_pass_s: float) -> np.ndarray:
    """Wait per entry at each boundary for a batching server: one wait per pass that enters
    there, i.e. once for the prefill and again for every decode step from the loop start on
    (every pass is a separate visit to the server's next iteration)."""
    passes = np.where(after_loop(work), 1 + work.steps, 1) if work.steps > 0 else 1.0
    return wait_per_pass_s * np.broadcast_to(passes, work.n_units + 1)


def batch_waits(work: RequestWork, iteration_s: float, residual_s: float) -> tuple:
    """`dp_batched`'s waits per entry at each boundary (L + 1) for a server iterating every
    `iteration_s` (recent mean): (the whole request, its prefill, its mean decode step). A
    visit from the client joins the next iteration: it waits out the running one
    (`residual_s`, `TokenServer.live_batch`), then lasts one; so do the prefill and every
    entry from the client. A decode step entering at the loop's start (the token looping
    on the server: the request stays in the batch) waits one iteration."""
    n = work.n_units + 1
    joins = iteration_s + residual_s
    prefill = np.full(n, joins)
    if work.steps <= 0:
        return prefill, prefill, np.zeros(n)
    step = np.where(after_loop(work), joins, 0.0)
    step[work.loop_start] = iteration_s
    return prefill + work.steps * step, prefill, step


def kv_problem(problem: SplitProblem, work: RequestWork, limit_bytes: float) -> SplitProblem:
    """The server KV a placement holds as a split problem over the same units: each unit's
    final KV bytes its "server time", no client time or crossings, the limit its deadline
    (a limit of 0 admits placements holding no KV on the server)."""
    n = problem.n_units
    zero = np.zeros(n + 1)
    return SplitProblem(
        np.zeros(n), np.asarray(work.kv_bytes, float), problem.server_work, zero, zero,
        max(limit_bytes, np.finfo(float).tiny), problem.client_allowed, problem.loop_start,
        client_required=problem.client_required,
    )  # fmt: skip


def nominal_work(plan: Plan, nominal: SplitProblem) -> Plan:
    """A plan made on marginal costs with its server work as every policy's is reported:
    the placement's batch-1 work on the `nominal` problem (the marginal work in notes)."""
    work = float(evaluate(nominal, plan.on_client)[1])
    notes = {**plan.notes, "marginal_work": plan.server_work}
    return Plan(plan.on_client, plan.latency, work, plan.feasible, plan.policy, notes)


def after_loop(work: RequestWork) -> np.ndarray:
    """Boundaries every decode step enters too (from the loop start on)."""
    return np.arange(work.n_units + 1) >= work.loop_start


class Planner:
    """One policy's plans, cached per (request class, client group, sizes).

    `dynamic` is true when plans depend on the time of arrival: a load-aware policy (it
    plans with the server's expected wait) or a non-nominal `split.link_estimate`.
    """

    def __init__(
        self, book: ProblemBook, policy: str, *, wait_per_pass: bool = False, shed: bool = True
    ):
        self.book = book
        self.policy = policy
        self.time_step_s = book.split.time_step_s
        self.load_aware = policy in LOAD_AWARE
        self.batched = policy in BATCHING_AWARE  # plans at the live batch's marginal costs
        self.phase_plans = policy in PHASE_PLANS  # may place prefill and decode apart
        self.dynamic = self.load_aware or book.split.link_estimate != "nominal"
        self.bucket = book.split.plan_bucket_fraction
        # each client group's nominal link (uplink, downlink Mb/s)
        self._nominal = [
            (g.link.uplink_mbps, g.link.downlink_mbps) for g in book.ld.scenario.clients
        ]
        self._plans: dict[tuple, PlannedRequest] = {}
        self._dynamic: dict[tuple, PlannedRequest] = {}
        # per size: dp_queue_aware's plans by wait, prepared before the run
        # (`sim.engine.plan_wait`); key -> Stairs
        self.stairs: dict[tuple, object] = {}
        # token granularity: the server's wait recurs on every pass through an entry, and
        # a load-aware policy does not shed load to the client (see dp_queue_aware)
        self.wait_per_pass = wait_per_pass
        self.shed = shed

    def get(self, klass: int, group: int, prompt: int, output: int) -> PlannedRequest:
        key = (klass, group, prompt, output)
        planned = self._plans.get(key)
        if planned is None:
            rp = self.book.get(klass, group, prompt, output)
            handoff = self.handoff(key, *self._nominal[group]) if self.phase_plans else None
            planned = _planned(rp, self._solve(rp, handoff=handoff))
            self._plans[key] = planned
        return planned

    def get_at(
        self,
        key: tuple,
        server_wait_s: float,
        up_mbps: float,
        down_mbps: float,
        server_busy: bool = False,
        batch: tuple[int, float, float] = (0, 0.0, float("inf")),
    ) -> PlannedRequest:
        """A plan made at arrival with the current estimates, cached per quantised bucket.

        The wait is snapped to multiples of `plan_bucket_fraction` x the request's
        deadline (divided by its passes when the wait recurs per pass), each bandwidth to
        steps of (1 + `plan_bucket_fraction`) around nominal. A batching-aware policy's
        plan also depends on the live `batch`: (its size, exact; the residual wait s for
        its iteration, snapped as the wait; the server's KV headroom in bytes, snapped
        down to steps of `plan_bucket_fraction` x the request's KV: `kv_limit`).
        """
        klass, group = key[0], key[1]
        nominal_up, nominal_down = self._nominal[group]
        up = up_mbps if up_mbps == nominal_up else bucket_log(up_mbps, nominal_up, self.bucket)
        down = (
            down_mbps
            if down_mbps == nominal_down
            else bucket_log(down_mbps, nominal_down, self.bucket)
        )
        stairs = self.stairs.get(key)
        if self.load_aware and server_wait_s > 0:
            if stairs is not None:  # prepared with the size's staircase
                quantum = stairs.quantum_s
            else:
                quantum = self.bucket * self.book.deadline_s(*key)
                if self.wait_per_pass:  # the wait recurs on up to 1 + steps passes
                    quantum /= 1 + max(self.book.steps(klass, key[2], key[3]), 0)
            wait = bucket_linear(server_wait_s, quantum)
            residual = bucket_linear(batch[1], quantum) if self.batched else 0.0
        else:
            wait = residual = 0.0
        busy = bool(server_busy and wait)
        size = batch[0] if self.batched else 0
        kv = self.kv_limit(key, batch[2]) if self.batched else np.inf
        full = (*key, wait, up, down, busy, size, residual, kv)
        planned = self._dynamic.get(full)
        if planned is None:
            nominal = up == nominal_up and down == nominal_down
            if wait == 0.0 and nominal and size == 0 and kv == np.inf:
                planned = self.get(*key)  # exactly the static plan
            else:
                # the staircase's plan when it decides alone: what `_solve` would return
                if stairs is not None and nominal and not self.shed:
                    planned = stairs.planned(self.book, key, wait, self.policy)
                if planned is None:
                    rp = self.book.get_link(klass, group, key[2], key[3], up, down)
                    handoff = self.handoff(key, up, down) if self.phase_plans else None
                    if self.batched:  # on the marginal costs, its work reported at batch 1
                        at = self.book.at_batch(rp, klass, group, key[2], up, down, size)
                        plan = self._solve(at, wait, busy, residual=residual, kv_limit=kv,
                                           handoff=handoff)  # fmt: skip
                        plan = nominal_work(plan, rp.problem)
                    else:
                        plan = self._solve(rp, wait, busy, key if nominal else None,
                                           handoff=handoff)  # fmt: skip
                    planned = _planned(rp, plan)
            self._dynamic[full] = planned
        return planned

    def _solve(
        self, rp: RequestProblem, wait: float = 0.0, busy: bool = False, key: tuple | None = None,
        residual: float = 0.0, kv_limit: float = np.inf, handoff: Handoff | None = None,
    ) -> Plan:  # fmt: skip
        """The policy's plan for a request problem with an expected server wait per entry
        (per pass at token granularity); TTFT/TPOT SLAs go through `solve_phased`, or
        the exact DP, or the size's staircase of waits (`key`'s, on the nominal link)."""
        per_pass = self.wait_per_pass and wait
        if self.batched and (wait or kv_limit < np.inf):
            return self._solve_batched(rp, wait, residual, kv_limit, handoff)
        if rp.phases is None:
            waits = pass_waits(rp.work, wait) if per_pass else wait
            return solve(rp.problem, self.policy, self.time_step_s, waits, busy, self.shed)
        whole, phases = rp.problem, rp.phases
        stairs = self.stairs.get(key) if wait and key is not None else None
        if stairs is not None and not self.shed:  # dp_queue_aware's prepared staircase
            plan = self._from_stairs(stairs, rp, wait)
            if plan is not None:
                return plan
        if wait:
            phases = with_waits(phases, wait, np.where(after_loop(rp.work), wait, 0.0))
            whole = whole.with_entry(pass_waits(rp.work, wait))
        if self.policy not in DEADLINE_POLICIES:  # a plan made on `whole`: evaluated there
            plan = solve(whole, self.policy)
            return judge(whole, phases, plan, (plan.latency, plan.server_work))
        if not whole.client_allowed.any():
            # one placement (all on the server): every mix's search would return it
            on_client = np.zeros(whole.n_units, bool)
            on_client.setflags(write=False)
            return judge(whole, phases, Plan(on_client, 0.0, 0.0, False, self.policy))
        if handoff is not None:
            return solve_phase_plans(whole, phases, handoff, self.policy)
        exact = self.policy in ("dp", "dp_batched", "dp_phases", "dp_batched_phases")
        if exact or (self.policy == "dp_queue_aware" and not (self.shed and wait)):
            return solve_dp_phased(whole, phases, self.policy)  # exact: no mixes searched
        # mixed problems are in units of the limits: the DP's default relative grid
        run = lambda p, w: solve(p, self.policy, None, w, busy, self.shed)  # noqa: E731
        return solve_phased(whole, phases, run)

    def _solve_batched(
        self, rp: RequestProblem, wait: float, residual: float, kv_limit: float,
        handoff: Handoff | None = None,
    ) -> Plan:  # fmt: skip
        """`dp_batched`'s plan: the waits of the iterations a visit joins (`batch_waits`)
        and, when the server's KV headroom is below the request's all-server KV, the least
        work within that headroom (admitted at once: `kv_problem`); when nothing meets the
        SLA within it, the plan without it (which waits for memory)."""
        whole_w, prefill_w, step_w = batch_waits(rp.work, wait, residual)
        whole = rp.problem.with_entry(whole_w)
        phases = None if rp.phases is None else with_waits(rp.phases, prefill_w, step_w)

        def plan(within: tuple) -> Plan:
            if phases is None:
                return solve_dp(whole, name=self.policy, within=within)
            if handoff is not None and not within:  # phase plans (not within a KV limit)
                return solve_phase_plans(whole, phases, handoff, self.policy)
            return solve_dp_phased(whole, phases, self.policy, within)

        if kv_limit < np.inf:
            found = plan((kv_problem(rp.problem, rp.work, kv_limit),))
            if found.feasible:
                return replace(found, notes={**found.notes, "kv_limit": kv_limit})
        return plan(())

    def handoff(self, key: tuple, up_mbps: float, down_mbps: float) -> Handoff:
        """A phase plan's KV handoff for `key` over a link of these bandwidths (the group's
        round trip): the prompt's KV of each unit."""
        klass, group, prompt = key[0], key[1], key[2]
        kv = self.book.work(klass, prompt, 1).kv_bytes
        return Handoff.of(kv, up_mbps, down_mbps, self.book.ld.scenario.clients[group].link.rtt_ms)

    def kv_limit(self, key: tuple, headroom_bytes: float) -> float:
        """The KV limit a batching-aware plan of `key` keeps to: inf when the server's
        headroom holds the request's KV with every unit on the server (or it keeps none:
        no decode steps), else the headroom snapped down to steps of
        `plan_bucket_fraction` x that KV (never looser than the headroom)."""
        if not headroom_bytes < np.inf:
            return np.inf
        work = self.book.work(key[0], key[2], key[3])
        need = float(work.kv_bytes.sum())
        if work.steps <= 0 or headroom_bytes >= need:
            return np.inf
        quantum = self.bucket * need
        room = max(headroom_bytes, 0.0)
        return float(np.floor(room / quantum) * quantum) if quantum > 0 else room

    def _from_stairs(self, stairs, rp: RequestProblem, wait: float) -> Plan | None:
        """The plan read off a size's staircase at `wait` (s per pass), judged exactly on
        the waited problems (by its whole latency alone when its TTFT and TPOT are inside
        their limits for sure), or None when the search must decide."""
        found = stairs.placement(wait)
        if found is None:
            return None
        on_client, clear = found
        whole = rp.problem.with_entry(pass_waits(rp.work, wait))
        phases = rp.phases
        assert phases is not None
        if clear:
            latency, work = evaluate(whole, on_client)
            return Plan(on_client, latency, work, latency <= phases.e2e_s * _FITS, self.policy)
        phases = with_waits(phases, wait, np.where(after_loop(rp.work), wait, 0.0))
        plan = judge(whole, phases, Plan(on_client, 0.0, 0.0, False, self.policy))
        return plan if plan.feasible else None

    @property
    def cached_plans(self) -> int:
        return len(self._plans) + len(self._dynamic)
