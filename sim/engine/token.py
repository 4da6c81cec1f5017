"""Token granularity: prefill and every decode step through the plan, a batching server.

A generation request runs its prefill through its plan's units, then each decode step
through them again (from the loop start to the head): client units on the client's
device, every switch a transfer of the pass's (or one token's) activation over the link,
server units in the server's next iteration. Requests are plain state records
(`sim.engine.token_program`), not SimPy processes: their client work and transfers are
computed as delays (the client device is FIFO by reservation), and their server visits go
to the batching server (`sim.engine.token_server`), one SimPy process that runs
iterations and holds the KV cache. This module is the engine around them: arrivals, plans
turned into token programs, client legs and transfers, finishing, metrics. It is the
request engine's sibling (`sim.engine.run`), built from the same parts: the run's set-up
(`sim.engine.setup`), the per-request recorder (`sim.engine.recorder`) and the server's
time-weighted levels (`sim.engine.levels`).

Plans made at arrival (a load-aware policy or a non-nominal `split.link_estimate`) see the
link estimate (the `ewma` estimate learns each transfer's rate when the transfer is
computed) and, for `dp_queue_aware`, a wait per pass through each server entry equal to
the recent iteration time (EWMA, weight `split.wait_ewma_alpha`; 0 while the server is
idle), without shedding load to the client (`Planner.shed`).

Transfers on a shared medium book its calendar (`Medium.reserve`): the earliest gap from
the moment the request reaches the transfer, at the bandwidth in force then.

Decode steps run once per token, so two common shapes skip the general walk over legs
when the link is fixed (no trace, jitter or shared medium) and not observed, with
`simulation.coalesce`: steps wholly on the server (kept by the server:
`TokenServer._end_iteration`, and decode spans)
and split steps of one client leg then one server leg (`_split_step`). Both use transfer
times fixed per request and compute the same floats, in the same order, as the walk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sim.config import LoadedScenario
from sim.engine.heap import freeze_now, frozen_heap
from sim.engine.levels import LevelSeries, ServerLevels
from sim.engine.network import DOWN, UP
from sim.engine.planner import Planner, ProblemBook
from sim.engine.recorder import RequestRecorder, RunResult
from sim.engine.setup import AT_ARRIVAL, RunSetup
from sim.engine.token_program import SERVER_LEG, TokenProgram, TokenRequest, build_program
from sim.engine.token_server import TokenServer
from sim.engine.workload import Arrivals
from sim.stats import linear_percentiles


@dataclass
class TokenStats:
    """Per-request token metrics and the server's batch state over time."""

    ttft_s: np.ndarray
    tpot_s: np.ndarray
    itl_p50_s: np.ndarray
    itl_p99_s: np.ndarray
    itl_max_s: np.ndarray
    gaps: list  # per request: inter-token gaps at the client (array of s)
    server_tokens: LevelSeries  # cumulative tokens processed by the server
    batch: LevelSeries  # requests in the running iteration (0 when idle)
    kv_bytes: LevelSeries  # KV-cache bytes held on the server
    kv_capacity_bytes: float
    iterations: int
    preemptions: int
    request_events: int


class TokenSimulation:
    """One policy over one replication's arrivals at token granularity."""

    # Split requests on fixed links take `_split_step` (with `simulation.coalesce`); off:
    # the general walk over legs, which tests compare it with
    split_steps: bool = True

    def __init__(
        self,
        ld: LoadedScenario,
        policy: str,
        arrivals: Arrivals,
        jitter_seed: np.random.SeedSequence,
        book: ProblemBook,
        progress: Callable[[int], None] | None = None,
        log: list | None = None,
        planner: Planner | None = None,
    ):
        """`planner`: plans already built (benchmarks); by default the policy's planner
        over `book`, each pass waiting for the next iteration and no load shed to clients
        (one request's work barely moves the iteration time)."""
        if log is not None:
            raise ValueError("the event log is kept at request granularity only")
        sc = ld.scenario
        self.ld, self.policy, self.arr = ld, policy, arrivals
        self.rec = RequestRecorder(len(arrivals))
        if planner is None:
            planner = Planner(book, policy, wait_per_pass=True, shed=False)
        self.setup = RunSetup(ld, arrivals, jitter_seed, planner, self.rec, progress)
        self.env = self.setup.env
        self.server = ServerLevels(1)  # one iteration at a time: one busy slot
        self.token_server = TokenServer(
            self.env, ld, planner.book, self.server, sc.server.max_queue,
            self._after_server, self._reject, self._split_step,
        )  # fmt: skip
        self.token_servers = [self.token_server]  # a fleet's: one per server
        self.links = self.setup.links
        self._observe, self._link_alpha = self.setup.observe, self.setup.link_alpha
        self.request_events = 0  # client legs and transfers of all requests
        n = len(arrivals)
        self.ttft, self.tpot = np.full(n, np.nan), np.full(n, np.nan)
        self.itl50, self.itl99, self.itlmax = (np.full(n, np.nan) for _ in range(3))
        self.gaps: list = [None] * n
        self._tp_programs: dict[int, TokenProgram] = {}
        self._dev_free = [0.0] * sc.total_clients  # per client: when its device is free (s)
        self._last_finish = 0.0
        self._coalesce = sc.simulation.coalesce

    # --- set-up --------------------------------------------------------------------------

    @property
    def planner(self) -> Planner:
        return self.setup.planner

    @property
    def book(self) -> ProblemBook:
        return self.setup.planner.book

    def prepare(self) -> None:
        """Plan every request before the run (`RunSetup.index_plans`); token programs are
        built from the plans when requests arrive."""
        with frozen_heap():
            self.setup.index_plans(keep_keys=True)

    def _live_load(self) -> tuple[float, bool]:
        """(wait per pass through a server entry, busy): the recent iteration time while the
        server iterates (a visit waits for the next iteration, then lasts one); never busy,
        as load-aware policies do not shed load at token granularity."""
        return self.token_server.wait_per_pass_s(), False

    def _token_program(self, key: tuple, planned=None) -> TokenProgram:
        """The token program of a plan: the static plan of `key`, or `planned` (made at
        arrival), cached per plan (the planner keeps every plan, so ids stay unique)."""
        if planned is None:
            planned = self.planner.get(*key)
        found = self._tp_programs.get(id(planned))
        if found is not None:
            return found
        p = self._tp_programs[id(planned)] = self.build_token_program(
            self.book, self.token_server, key, planned
        )
        return p

    def build_token_program(self, book: ProblemBook, ts: TokenServer, key: tuple, planned):
        """The token program of `planned` for `key` on server `ts` (its cost model) with
        `book`'s work (the server's site)."""
        klass, group, prompt, output = key
        work = book.work(klass, prompt, output)
        model = ts.cost_model(klass)
        dtype = self.ld.models[self.ld.scenario.workload.mix[klass].model].activation_dtype
        dev = self.ld.client_devices[group]
        on_client = planned.plan.on_client
        client_work = book.client_work(klass, group, prompt, output)  # its precision
        decode = planned.plan.decode_on_client  # a phase plan's decode placement, or None
        kv = None if decode is None else book.work(klass, prompt, 1).kv_bytes
        return build_program(work, on_client, (klass, prompt, output), model, dev, dtype,
                             client_work, decode, kv)  # fmt: skip

    # --- run -----------------------------------------------------------------------------

    def run(self) -> RunResult:
        """Plan, admit every arrival, drain (unless an overload stop ended the arrivals);
        requests whose last token would reach the client after the end stay in flight.
        Long-lived objects stay out of the cycle collector's scans meanwhile
        (`sim.engine.heap`)."""
        with frozen_heap():
            return self._run()

    def _run(self) -> RunResult:
        """`run`'s body."""
        setup, rec = self.setup, self.rec
        self.prepare()
        freeze_now()  # the plans live as long as the run
        for ts in self.token_servers:
            self.env.process(ts.run())
        source = self.env.process(setup.arrival_process(self._admit))
        self.env.run(until=source)
        stop_s = self.env.now
        backlog_at_stop = rec.backlog(stop_s, setup.arrived)  # not those kept out
        if setup.overloaded:  # overload stop: no drain
            end_s = stop_s
            for ts in self.token_servers:
                ts.flush(end_s)
        else:
            end_s = self._drain(stop_s)
        rec.unfinished_at(end_s)
        for ts in self.token_servers:
            ts.levels.finish(self.env.now)
            ts.levels.queue_from_waits(*ts.waits())
        token = self.token_stats(self.token_server)
        return rec.result(
            setup.arrived, setup.overload_stop_s,
            policy=self.policy, arrivals=self.arr, server=self.server_levels(), stop_s=stop_s,
            end_s=float(end_s), backlog_at_stop=backlog_at_stop,
            cached_plans=self.planner.cached_plans, events=next(self.env._eid), token=token,
        )  # fmt: skip

    def token_stats(self, ts) -> TokenStats:
        """The run's token metrics with `ts`'s batch state (a fleet passes its sum)."""
        return TokenStats(
            self.ttft, self.tpot, self.itl50, self.itl99, self.itlmax, self.gaps,
            ts.series_tokens, ts.series_batch, ts.series_kv, ts.kv_capacity,
            ts.iterations, ts.preemptions, self.request_events + ts.visits + ts.span_events + ts.step_events,
        )  # fmt: skip

    def server_levels(self) -> ServerLevels:
        """The levels the result reports (a fleet's: its servers' summed)."""
        return self.server

    def _drain(self, stop_s: float) -> float:
        """Run past the last arrival (to the end, or for `drain_s`); the run's end (s)."""
        drain_s = self.ld.scenario.drain_s
        if drain_s is None:
            self.env.run()
            return max(self.env.now, self._last_finish)
        until = stop_s + drain_s
        if until > self.env.now:
            self.env.run(until=until)
        for ts in self.token_servers:
            ts.flush(until)
        return until

    # --- requests ------------------------------------------------------------------------

    def _route(self, i: int) -> tuple:
        """Request i's (token program, link, batching server): its plan on the one server."""
        setup = self.setup
        key = setup.keys[i]
        if setup.plan_of[i] == AT_ARRIVAL:
            planned = setup.plan_at_arrival(i, self._live_load, self.token_server.live_batch)
            prog = self._token_program(key, planned)
        else:
            prog = self._token_program(key)
        return prog, self.links[setup.group[i]], self.token_server

    def _admit(self, i: int) -> None:
        setup = self.setup
        prog, link, ts = self._route(i)
        r = TokenRequest(i, prog, setup.client[i], link, self.env.now)
        r.ts = ts
        if self._coalesce and link.fixed and not self._observe:
            if prog.span_ok:
                r.span_ok = prog.step_out > 0  # as `_xfer` computes a token's way down:
                r.down_s = link.serialisation_s(DOWN, prog.step_out, 0.0) + link.delay_s(1.0)
            elif prog.split_ok and self.split_steps:
                self._fix_split_step(r, prog, link)
        if ts.edf:
            r.priority = self.env.now + setup.deadline[i]
        self.rec.admitted()
        t = self.env.now
        if prog.pass_legs and prog.pass_legs[0][0] == SERVER_LEG:  # the input goes up first
            t += self._xfer(r, UP, prog.pass_in[0], t)
        self._advance(r, t)

    @staticmethod
    def _fix_split_step(r: TokenRequest, prog: TokenProgram, link) -> None:
        """Let r's decode steps take `_split_step`: its transfers' times on the fixed link,
        each as `_xfer` computes it (no transfer, no time and no event, for no bytes)."""
        down_b, up_b = prog.step_out, prog.step_in[1]
        r.split_ok = True
        if down_b > 0:
            r.down_s = link.serialisation_s(DOWN, down_b, 0.0) + link.delay_s(1.0)
        if up_b > 0:
            r.up_s = link.serialisation_s(UP, up_b, 0.0) + link.delay_s(1.0)
        r.step_events = (down_b > 0) + 1 + (up_b > 0)
        r.step_times = prog.step_times(0)

    def _xfer(self, r: TokenRequest, direction: int, nbytes: float, t: float) -> float:
        """Transfer `nbytes` for r from time t (s); its duration (s), waits included."""
        if nbytes <= 0:
            return 0.0
        self.request_events += 1
        link = r.link
        serial = link.serialisation_s(direction, nbytes, t)
        start = t
        if link.medium is not None:  # a shared medium: the earliest free gap from t on
            start = link.medium.reserve(direction, t, serial, self.env.now)
        if self._observe:  # learnt when the transfer is computed
            link.observe(direction, nbytes, start - t + serial, self._link_alpha)
        dt = start - t + serial + link.delay_s(1.0)
        r.xfer += dt
        r.nbytes += nbytes
        return dt

    def _advance(self, r: TokenRequest, t: float) -> None:
        """Run request r from time t through client legs and transfers to its next server
        visit (queued for the server) or to its end."""
        prog = r.prog
        while True:
            legs = prog.pass_legs if r.k == 0 else prog.step_legs
            if r.leg < len(legs):
                if legs[r.leg][0] == SERVER_LEG:
                    r.ts.push(t, r)
                    return
                t = self._client_leg(r, t)
                r.leg += 1
                if r.leg < len(legs):
                    nb = prog.pass_in[r.leg] if r.k == 0 else prog.step_in[r.leg]
                    t += self._xfer(r, UP, nb, t)
                continue
            # the head has made a token at time t (on its side)
            first = r.k == 0
            out = prog.pass_out if first else prog.step_out
            head_server = prog.pass_head_server if first else prog.head_server
            at_client = t + self._xfer(r, DOWN, out, t) if head_server else t
            r.token(at_client)
            if r.k >= prog.steps:
                self._finish(r, at_client)
                return
            r.k += 1
            r.leg = 0
            r.ctx = prog.ctx_first + r.k - 1
            made = t
            if not prog.loop_server:
                t = at_client
            elif not head_server:
                t += self._xfer(r, UP, prog.loop_bytes, t)
            if first and (prog.handoff_down or prog.handoff_up):
                t = max(t, self._handoff(r, made))

    def _handoff(self, r: TokenRequest, t: float) -> float:
        """A phase plan's KV handoff from the pass's end at t (s): the prompt's KV of the
        units changing sides, down then up; when it has arrived (s)."""
        prog = r.prog
        t += self._xfer(r, DOWN, prog.handoff_down, t)
        return t + self._xfer(r, UP, prog.handoff_up, t)

    def _client_leg(self, r: TokenRequest, t: float) -> float:
        """Run r's current client leg from time t on its (FIFO) device; when it ends (s)."""
        self.request_events += 1
        start = max(t, self._dev_free[r.client])
        r.c_wait += start - t
        prog = r.prog  # a decode step's leg: `client_step_s` at r.ctx, tabled per step
        dur = prog.client_pass_s[r.leg] if r.k == 0 else prog.step_times(r.leg)[r.k - 1]
        t = start + dur
        r.c_busy += dur
        self._dev_free[r.client] = t
        return t

    def _after_server(self, r: TokenRequest, now: float) -> None:
        """Request r left its server leg at `now`: send the result down, continue its path."""
        r.leg += 1
        prog = r.prog
        legs = prog.pass_legs if r.k == 0 else prog.step_legs
        t = now
        if r.leg < len(legs):
            nb = prog.pass_in[r.leg] if r.k == 0 else prog.step_in[r.leg]
            t += self._xfer(r, DOWN, nb, t)
        self._advance(r, t)

    def _split_step(self, r: TokenRequest, now: float) -> float:
        """A `split_ok` request's decode step (not its last) left the server at `now`: the
        token goes down, the next step runs its client leg on the (FIFO) device and its
        activation goes up; when it is ready for the server (s). What `_after_server`,
        `_advance`, `_xfer` and `_client_leg` do for it, in the same float operations and
        order, without their walk over legs and with the transfer times fixed per request
        (`_fix_split_step`): this runs once per token of every split request."""
        self.request_events += r.step_events
        down_s = r.down_s
        at_client = now + down_s
        r.xfer += down_s
        prog = r.prog
        r.nbytes += prog.step_out
        r.times.append(at_client)  # `r.token`
        r.generated += 1
        k = r.k = r.k + 1
        r.ctx = prog.ctx_first + k - 1
        dev_free = self._dev_free
        client = r.client
        start = dev_free[client]
        if not start > at_client:  # max(at_client, device free)
            start = at_client
        r.c_wait += start - at_client
        dur = r.step_times[k - 1]
        t = start + dur
        r.c_busy += dur
        dev_free[client] = t
        r.leg = 1
        up_s = r.up_s
        r.xfer += up_s
        r.nbytes += prog.step_in[1]
        return t + up_s

    def _finish(self, r: TokenRequest, t: float) -> None:
        """Request r's last token reached the client at t (s): record its metrics."""
        i = r.i
        self._last_finish = max(self._last_finish, t)
        energy = self.setup.energy_j(self.setup.group[i], r.c_busy, r.nbytes)
        self.rec.completed(i, t, r.s_wait, r.s_busy, r.c_wait, r.c_busy, r.xfer, energy)
        times = np.frombuffer(r.times, float)
        self.ttft[i] = times[0] - r.arrival
        if times.size > 1:
            gaps = np.diff(times)
            self.tpot[i] = (times[-1] - times[0]) / (times.size - 1)
            self.itl50[i], self.itl99[i] = linear_percentiles(gaps, (50, 99))
            self.itlmax[i] = gaps.max()
            self.gaps[i] = gaps

    def _reject(self, r: TokenRequest) -> None:
        """The server lost request r (admission queue full, or KV larger than memory):
        recorded with what it used until then (client legs and transfers before its first
        server visit, its wait for admission)."""
        energy = self.setup.energy_j(self.setup.group[r.i], r.c_busy, r.nbytes)
        self.rec.rejected(r.i, r.s_wait, r.s_busy, r.c_wait, r.c_busy, r.xfer, energy)
