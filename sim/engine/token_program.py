"""What a generation request runs at token granularity, and where it is in that run.

A plan (which units run on the client) becomes a `TokenProgram`: the runs of consecutive
units on one side ("legs") of the prefill pass and of a decode step (from the loop start
to the head), the activation bytes crossing the link between legs, the client's time per
leg and the server's batch-cost coefficients. Programs are built once per plan and
shared by every request of that plan.

A `TokenRequest` is a request's plain state record (not a SimPy process): the token and
leg it is at, its server KV and admission state, and its accumulated times. The engine
(`sim.engine.token`) moves it through client legs and transfers; the batching server
(`sim.engine.token_server`) through server visits.
"""

from __future__ import annotations

from array import array
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from sim.catalog.specs import DeviceSpec
from sim.costs.kernels import overheads_s
from sim.costs.roofline import overlap_lines, roofline_s
from sim.costs.work import RequestWork
from sim.engine.batching import BatchCost
from sim.engine.network import LinkModel

CLIENT_LEG, SERVER_LEG = 0, 1  # the side of a leg: legs are (side, first unit, end unit)


class TokenProgram:
    """A plan realised for token mode: legs of the pass and of a decode step, and costs."""

    __slots__ = (
        "pass_legs", "step_legs", "pass_in", "step_in", "pass_out", "step_out",
        "head_server", "loop_server", "steps", "ctx_first", "klass", "prompt", "output",
        "model", "pass_flops", "pass_own", "group", "client_pass_s", "client_step",
        "kv_final", "has_server", "pass_last_server", "step_last_server", "step_has_server",
        "loop_bytes", "server_units", "pass_first_server", "step_first_server", "span_ok",
        "split_ok", "client_step_times", "step_adds", "pass_head_server", "handoff_down",
        "handoff_up",
    )  # fmt: skip

    def step_times(self, leg: int) -> list[float]:
        """Client step leg `leg`'s time (s) per decode step k >= 1 at index k - 1 (context
        `ctx_first + k - 1`): `client_step_s` for every step, tabled on first use."""
        table = self.client_step_times[leg]
        if table is None:
            table = client_step_table(self.client_step[leg], self.ctx_first, self.steps)
            self.client_step_times[leg] = table
        return table


def legs_of(on_client: np.ndarray, lo: int, hi: int) -> list[tuple[int, int, int]]:
    """Runs of consecutive units on one side: (side, first unit, end unit)."""
    legs: list[tuple[int, int, int]] = []
    for u in range(lo, hi):
        side = CLIENT_LEG if on_client[u] else SERVER_LEG
        if legs and legs[-1][0] == side:
            legs[-1] = (side, legs[-1][1], u + 1)
        else:
            legs.append((side, u, u + 1))
    return legs


class Shape(NamedTuple):
    """What a program takes from its placement alone: its legs and server marks (see
    `_set_server_marks`). Shared, read-only, by the programs of one placement."""

    pass_legs: tuple[tuple[int, int, int], ...]
    step_legs: tuple[tuple[int, int, int], ...]
    server: np.ndarray  # per unit: on the server
    server_units: np.ndarray
    has_server: bool
    pass_first_server: int
    pass_last_server: int
    step_first_server: int
    step_last_server: int
    head_server: bool
    loop_server: bool
    span_ok: bool
    split_ok: bool


@lru_cache(maxsize=4096)
def placement_shape(on_client: bytes, loop_start: int, decode: bool) -> Shape:
    """The `Shape` of a placement (one byte per unit, true on the client), of a request
    whose decode steps (if `decode`) start at unit `loop_start`. Placements recur across
    requests of different sizes, so each is worked out once."""
    oc = np.frombuffer(on_client, bool)
    n = len(oc)
    pass_legs = tuple(legs_of(oc, 0, n))
    step_legs = tuple(legs_of(oc, loop_start, n)) if decode else ()
    server = ~oc
    server.setflags(write=False)
    server_units = np.flatnonzero(server)
    server_units.setflags(write=False)
    pass_on = [j for j, leg in enumerate(pass_legs) if leg[0] == SERVER_LEG]
    step_on = [j for j, leg in enumerate(step_legs) if leg[0] == SERVER_LEG]
    head_server, loop_server = not oc[n - 1], not oc[loop_start]
    sides = [leg[0] for leg in step_legs]
    return Shape(
        pass_legs, step_legs, server, server_units, bool(server.any()),
        pass_on[0] if pass_on else -1, pass_on[-1] if pass_on else -1,
        step_on[0] if step_on else -1, step_on[-1] if step_on else -1,
        head_server, loop_server,
        # A decode step wholly on the server, the token sent down and the next step
        # started on the server at once: its iterations can be coalesced (decode spans).
        decode and sides == [SERVER_LEG] and head_server and loop_server,
        # One client leg then one server leg that makes the token: the engine may walk
        # it with fixed transfer times (`TokenSimulation._split_step`).
        decode and sides == [CLIENT_LEG, SERVER_LEG] and head_server and not loop_server,
    )  # fmt: skip


def phase_shape(prefill: Shape, decode: Shape) -> Shape:
    """The `Shape` of a phase plan: the pass's legs and marks from the prefill placement,
    the decode steps' from the decode placement; the server units (whose KV it reserves)
    those of either."""
    server = prefill.server | decode.server
    server.setflags(write=False)
    units = np.flatnonzero(server)
    units.setflags(write=False)
    return decode._replace(
        pass_legs=prefill.pass_legs, server=server, server_units=units,
        has_server=prefill.has_server or decode.has_server,
        pass_first_server=prefill.pass_first_server, pass_last_server=prefill.pass_last_server,
    )  # fmt: skip


def build_program(
    work: RequestWork,
    on_client: np.ndarray,
    key: tuple[int, int, int],
    model: tuple[BatchCost, int],
    client_device: DeviceSpec,
    dtype: str,
    client_work: RequestWork | None = None,
    decode_on_client: np.ndarray | None = None,
    prompt_kv_bytes: np.ndarray | None = None,
) -> TokenProgram:
    """The token program of one plan: `on_client` per unit of `work`, `key` = (class,
    prompt tokens, output tokens), `model` = the server's batch-cost accumulator and the
    model's index in it, the client's device and the activation dtype it computes in;
    `client_work` times the client legs (the work on the client's copy of the weights,
    `sim.costs.precision`; default `work`). A phase plan (`sim.split.phase_plans`) runs
    its decode steps on `decode_on_client`: the prompt's KV of the units that change sides
    (`prompt_kv_bytes` per unit) moves between the phases (`handoff_down`, `handoff_up`)."""
    oc = np.asarray(on_client, bool)
    decode = work.steps > 0
    shape = placement_shape(oc.tobytes(), work.loop_start, decode)
    pass_head_server = shape.head_server
    down = up = 0.0
    if decode_on_client is not None and decode:
        dec = np.asarray(decode_on_client, bool)
        shape = phase_shape(shape, placement_shape(dec.tobytes(), work.loop_start, decode))
        kv = np.asarray(prompt_kv_bytes, float)
        down, up = float(kv[~oc & dec].sum()), float(kv[oc & ~dec].sum())
    p = TokenProgram()
    p.klass, p.prompt, p.output = key
    p.pass_head_server, p.handoff_down, p.handoff_up = pass_head_server, down, up
    _set_legs(p, work, shape)
    _set_server_costs(p, work, model)
    on_client_somewhere = oc.any() or (decode_on_client is not None and decode_on_client.any())
    if on_client_somewhere:  # a client leg somewhere: its times
        _set_client_costs(p, work if client_work is None else client_work, client_device, dtype)
    else:  # all on the server: no client leg ever asks
        p.client_pass_s = p.client_step = p.client_step_times = None
    _set_server_marks(p, work, shape)
    # per decode-step leg on the server: what pricing adds (its decode group, units a..e,
    # whether the leg counts the token), looked up once here instead of per iteration
    group = model[0].groups[p.group] if p.group >= 0 else None
    p.step_adds = [
        (group, a, e, j == p.step_first_server) if side == SERVER_LEG else None
        for j, (side, a, e) in enumerate(p.step_legs)
    ]
    return p


def _set_legs(p: TokenProgram, work: RequestWork, shape: Shape) -> None:
    """Legs of the pass and of a decode step, and the activation bytes between them."""
    L = work.n_units
    p.steps, p.ctx_first = work.steps, work.ctx_first
    p.pass_legs, p.step_legs = list(shape.pass_legs), list(shape.step_legs)
    act_pass = np.asarray(work.act_pass, float).tolist()  # as float() of each: exact
    act_step = np.asarray(work.act_step, float).tolist()
    p.pass_in = [act_pass[a] for _, a, _ in p.pass_legs]
    p.step_in = [act_step[a] for _, a, _ in p.step_legs]
    p.pass_out, p.step_out = act_pass[L], act_step[L]
    p.loop_bytes = work.loop_bytes
    p.head_server, p.loop_server = shape.head_server, shape.loop_server


def _set_server_costs(p: TokenProgram, work: RequestWork, model: tuple[BatchCost, int]) -> None:
    """The pass's FLOPs and own bytes (weights apart) and the decode group of its steps."""
    cost, m = model
    p.model = (cost, m)
    weights = cost.weights[m]
    p.pass_flops = work.pass_flops
    p.pass_own = np.maximum(work.pass_bytes - weights, 0.0)
    p.group = cost.group(m, work.step_flops0, work.step_flops1, work.step_bytes0,
                         work.step_bytes1) if work.steps > 0 else -1  # fmt: skip


def _set_client_costs(p: TokenProgram, work: RequestWork, dev: DeviceSpec, dtype: str) -> None:
    """Client time per pass leg (s), and per step leg its coefficients in the context:
    (FLOP s at 0, FLOP s per token, byte s at 0, byte s per token, overhead s)."""
    f, b, ov = dev.flops_per_s(dtype), dev.bytes_per_s, overheads_s(work.kernels, dev)
    g = dev.non_overlap  # 0: the plain roofline (the same arrays, bit for bit)
    t_pass = roofline_s(work.pass_flops, work.pass_bytes, f, b, g) + ov * work.pass_runs
    p.client_pass_s = [float(t_pass[a:e].sum()) for _, a, e in p.pass_legs]
    lines = overlap_lines(work.step_flops0 / f, work.step_flops1 / f, work.step_bytes0 / b,
                          work.step_bytes1 / b, g)  # fmt: skip
    p.client_step = [
        (list(zip(*(x[a:e].tolist() for x in lines), strict=True)),
         float((ov * work.step_runs)[a:e].sum()))
        if side == CLIENT_LEG else None  # server legs are priced by the batch
        for side, a, e in p.step_legs
    ]  # fmt: skip
    p.client_step_times = [None] * len(p.step_legs)  # per leg: `step_times`, once asked


def client_step_s(leg: tuple[list, float], context: int) -> float:
    """A client step leg's time (s) at `context` cached tokens: per unit the roofline
    max(FLOP time, byte time), summed, plus the leg's overhead. Plain floats in numpy's
    order (`numpy_sum`): a decode step is too small for numpy's per-call cost."""
    coeffs, overhead_s = leg
    times = [max(x0 + x1 * context, y0 + y1 * context) for x0, x1, y0, y1 in coeffs]
    return numpy_sum(times) + overhead_s


def client_step_table(leg: tuple[list, float], ctx_first: int, steps: int) -> list[float]:
    """`client_step_s(leg, ctx)` for ctx = ctx_first .. ctx_first + steps - 1, bit for bit:
    the same float operations in the same order, each over every context at once (a few
    numpy calls per unit instead of a Python loop per decode step)."""
    coeffs, overhead_s = leg
    if len(coeffs) > 128:  # numpy's own blocked summation: not replicated column-wise
        return [client_step_s(leg, ctx_first + j) for j in range(steps)]
    ctx = np.arange(ctx_first, ctx_first + steps, dtype=float)
    x0, x1, y0, y1 = np.array(coeffs).T[:, :, None]  # per unit (rows), every context
    times = np.maximum(x0 + x1 * ctx, y0 + y1 * ctx)  # elementwise as per unit
    return (numpy_sum_columns(list(times), steps) + overhead_s).tolist()


def numpy_sum_columns(values: list[np.ndarray], size: int) -> np.ndarray:
    """`numpy_sum` of each column: element j is `numpy_sum([v[j] for v in values])` (up to
    128 arrays of `size` elements), by the same additions in the same order."""
    return _pairwise(values, np.zeros(size))


def numpy_sum(values: list[float]) -> float:
    """`float(np.array(values).sum())` bit for bit: numpy's pairwise summation (eight
    running sums for 8 to 128 values; a plain loop below 8; numpy itself beyond)."""
    if len(values) > 128:
        return float(np.sum(values))
    return _pairwise(values, 0.0)


def _pairwise(values: list, zero):
    """numpy's pairwise sum of up to 128 floats, or of arrays element by element (`zero`:
    0.0, or a new array of zeros that becomes the sum): a plain loop below 8 values, else
    eight running sums combined as numpy combines them. The inputs are never changed."""
    n = len(values)
    if n < 8:
        total = zero
        for v in values:
            total += v
        return total
    r = [v + zero for v in values[:8]]  # new running sums (v + 0 is v)
    whole = n - n % 8
    for i in range(8, whole, 8):
        for j in range(8):
            r[j] += values[i + j]
    total = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    for i in range(whole, n):
        total += values[i]
    return total


def _set_server_marks(p: TokenProgram, work: RequestWork, shape: Shape) -> None:
    """The server units, their final KV bytes, the first and last server legs and which
    fast paths the decode steps may take (`Shape`)."""
    p.server_units = shape.server_units
    p.kv_final = float(work.kv_bytes[shape.server].sum())
    p.has_server = shape.has_server
    p.pass_first_server, p.pass_last_server = shape.pass_first_server, shape.pass_last_server
    p.step_first_server, p.step_last_server = shape.step_first_server, shape.step_last_server
    p.step_has_server = p.step_last_server >= 0
    p.span_ok, p.split_ok = shape.span_ok, shape.split_ok


class TokenRequest:
    """A request's state in token mode: at token k (0: the prefill pass) and leg `leg` of
    it, its context `ctx` (tokens), `kv` bytes held on the server, times in s."""

    __slots__ = (
        "i", "prog", "client", "link", "arrival", "k", "leg", "ctx", "generated", "times",
        "admitted", "recompute", "kv", "grow", "admit_seq", "priority", "t_ready",
        "s_wait", "s_busy", "c_wait", "c_busy", "xfer", "nbytes", "done", "chunk",
        "span_ok", "down_s", "split_ok", "up_s", "step_events", "step_times", "c_from",
        "c_key", "ts",
    )  # fmt: skip

    def __init__(self, i: int, prog: TokenProgram, client: int, link: LinkModel, arrival: float):
        self.i, self.prog, self.client, self.link, self.arrival = i, prog, client, link, arrival
        self.k = self.leg = 0
        self.ctx = 0
        self.generated = 0
        self.times = array("d")
        self.admitted = self.recompute = False
        self.kv = self.grow = 0.0
        self.admit_seq = 0
        self.priority = 0.0
        self.t_ready = arrival
        self.s_wait = self.s_busy = self.c_wait = self.c_busy = self.xfer = self.nbytes = 0.0
        self.done = self.chunk = 0  # prompt tokens of the current prefill visit done, taking
        self.span_ok = False  # its decode iterations may be coalesced (set by the engine)
        self.down_s = 0.0  # then: the fixed time of a token's transfer to the client (s)
        self.split_ok = False  # its decode steps take the engine's split-step walk; then:
        self.up_s = 0.0  # the fixed time of the activation's transfer to the server (s),
        self.step_events = 0  # request events per step (transfers and the client leg)
        self.step_times: list[float] | None = None  # and its client leg's time per step
        self.ts = None  # the batching server that serves it (`TokenServer`)
        self.c_from = 0  # in the server's decode cohort: its first iteration not applied,
        self.c_key: tuple = ()  # and its place in the block (`sim.engine.cohort`)

    def token(self, t: float) -> None:
        """A token reached the client at time t."""
        self.times.append(t)
        self.generated += 1

    def visit_tokens(self) -> int:
        """Tokens of the current server visit: the prompt (or, recomputing, the whole
        context), else one decode token."""
        if self.recompute:
            return self.prog.prompt + self.generated
        return self.prog.prompt if self.k == 0 else 1

    def is_first_visit(self) -> bool:
        """Whether the current decode-step visit is the step's first server leg."""
        return self.leg == self.prog.step_first_server
