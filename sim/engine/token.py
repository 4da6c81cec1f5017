"""Token granularity: prefill and every decode step through the plan, a batching server.

A generation request runs its prefill through its plan's units, then each decode step
through them again (from the loop start to the head): client units on the client's
device, every switch a transfer of the pass's (or one token's) activation over the link,
server units in the server's next iteration. Requests are plain state records, not SimPy
processes: their client work and transfers are computed as delays (the client device is
FIFO by reservation), and their server visits wait in a time-ordered heap. One SimPy
process is the server: each iteration takes every admitted request waiting for server
work (decode steps and prefills up to the token budget; with `chunked_prefill` the
decode steps first and prefills in chunks that fill the budget) and lasts the batch
roofline of `sim.engine.batching`.

Server KV cache: a request is admitted at its first server visit and holds KV for its
server units until its last server visit. `on_kv_full: wait` reserves the KV of the
request's final context at admission (admission waits, FIFO or EDF, for memory and for a
seat among `max_batch_requests`); `preempt` grows each request's KV per generated token
and, when memory runs out, preempts the newest admitted request of the iteration: its KV
is freed and, readmitted, it first recomputes its server units' KV over its context
(vLLM's recompute preemption). A request whose KV cannot fit in empty memory is rejected.

Plans made at arrival (a load-aware policy or a non-nominal `split.link_estimate`) see the
link estimate (the `ewma` estimate learns each transfer's rate when the transfer is
computed) and, for `dp_queue_aware`, a wait per pass through each server entry equal to
the recent iteration time (EWMA, weight `split.wait_ewma_alpha`; 0 while the server is
idle), without shedding load to the client (`Planner.shed`).

Transfers on a shared medium book its calendar (`Medium.reserve`): the earliest gap from
the moment the request reaches the transfer, at the bandwidth in force then.
"""

from __future__ import annotations

import heapq
from array import array
from collections import deque
from dataclasses import dataclass

import numpy as np
import simpy

from sim.engine.batching import BatchCost, LevelSeries, weight_read_bytes
from sim.engine.network import DOWN, UP
from sim.engine.resources import ServerPool
from sim.engine.run import _AT_ARRIVAL, _DONE, _REJECTED, RunResult, Simulation
from sim.errors import UserError

_CLIENT, _SERVER = 0, 1


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


class _Program:
    """A plan realised for token mode: legs of the pass and of a decode step, and costs."""

    __slots__ = (
        "pass_legs", "step_legs", "pass_in", "step_in", "pass_out", "step_out",
        "head_server", "loop_server", "steps", "ctx_first", "klass", "prompt", "output",
        "model", "pass_flops", "pass_own", "group", "client_pass_s", "client_step",
        "kv_final", "has_server", "pass_last_server", "step_last_server", "step_has_server",
        "loop_bytes", "server_units", "pass_first_server", "step_first_server",
    )  # fmt: skip


def _legs(on_client: np.ndarray, lo: int, hi: int) -> list[tuple[int, int, int]]:
    """Runs of consecutive units on one side: (side, first unit, end unit)."""
    legs: list[tuple[int, int, int]] = []
    for u in range(lo, hi):
        side = _CLIENT if on_client[u] else _SERVER
        if legs and legs[-1][0] == side:
            legs[-1] = (side, legs[-1][1], u + 1)
        else:
            legs.append((side, u, u + 1))
    return legs


class TokenSimulation(Simulation):
    """One policy over one replication's arrivals at token granularity."""

    def __init__(self, ld, policy, arrivals, jitter_seed, book, progress=None, log=None):
        super().__init__(ld, policy, arrivals, jitter_seed, book, progress, None)
        sc = ld.scenario
        self.planner.wait_per_pass = True  # each pass waits for the next iteration
        self.planner.shed = False  # one request's work barely moves the iteration time
        self._iteration_ewma_s = 0.0  # recent iteration time: the load-aware wait per pass
        self._iteration_alpha = sc.split.wait_ewma_alpha
        cfg = sc.simulation
        self.cfg = cfg
        self.max_batch = cfg.max_batch_requests
        self.max_tokens = cfg.max_batch_tokens
        self.chunked = cfg.chunked_prefill
        self.preempt = cfg.on_kv_full == "preempt"
        dev = ld.server_device
        self.server = ServerPool(self.env, 1, False, sc.server.max_queue)
        self.edf = sc.server.discipline == "edf"
        self._dtype_of = {c.model: ld.models[c.model].activation_dtype for c in sc.workload.mix}
        self._cost_by_dtype: dict[str, BatchCost] = {}
        self._dev = dev
        self._model_index: dict[tuple, tuple[BatchCost, int]] = {}
        self.kv_capacity = self._kv_capacity()
        self.request_events = 0  # client legs, transfers and server visits of all requests
        n = len(arrivals)
        self.ttft, self.tpot = np.full(n, np.nan), np.full(n, np.nan)
        self.itl50, self.itl99, self.itlmax = (np.full(n, np.nan) for _ in range(3))
        self.gaps: list = [None] * n
        self._tp_programs: dict = {}
        self._tp_keep: list = []
        self._heap: list = []
        self._seq = 0
        self._ready: deque = deque()
        self._waiting: list = []  # heap of (priority, seq, request) waiting for admission
        self._running = 0
        self._kv_used = 0.0
        self._dev_free = [0.0] * sc.total_clients
        self._wake: simpy.Event | None = None
        self._sleep_until = float("inf")
        self._admit_seq = 0
        self.series_tokens, self.series_batch, self.series_kv = (LevelSeries() for _ in range(3))
        self._tokens_done = 0.0
        self.iterations = 0
        self.preemptions = 0
        self._last_finish = 0.0

    # --- set-up --------------------------------------------------------------------------

    def _kv_capacity(self) -> float:
        """KV bytes the server may hold: given, or a share of the memory the weights leave."""
        ld, cfg = self.ld, self.cfg
        if cfg.kv_memory_gb is not None:
            return cfg.kv_memory_gb * 1e9
        mix = ld.scenario.workload.mix
        weights = 0.0
        for name in {c.model for c in mix}:
            k = next(i for i, c in enumerate(mix) if c.model == name)
            work = self.book.work(k, 1, 1 if mix[k].task == "generate" else 0)
            weights += float(work.weight_bytes.sum())
        free = ld.server_device.memory_bytes - weights
        if free <= 0:
            raise UserError("the models' weights do not fit in the server's memory")
        return cfg.kv_memory_fraction * free

    @property
    def book(self):
        return self.planner.book

    def _cost_model(self, klass: int) -> tuple[BatchCost, int]:
        """The batch-cost accumulator of a class's dtype and the model's index in it."""
        mix = self.ld.scenario.workload.mix
        name = mix[klass].model
        dtype = self._dtype_of[name]
        cost = self._cost_by_dtype.get(dtype)
        if cost is None:
            dev = self._dev
            cost = BatchCost(dev.flops_per_s(dtype), dev.bytes_per_s, dev.overhead_us * 1e-6)
            self._cost_by_dtype[dtype] = cost
        key = (dtype, name)
        found = self._model_index.get(key)
        if found is None:
            work = self.book.work(klass, 1, 1 if mix[klass].task == "generate" else 0)
            model = self.ld.models[name]
            found = (cost, cost.add_model(weight_read_bytes(model, work.units)))
            self._model_index[key] = found
        return found

    def _live_load(self) -> tuple[float, bool]:
        """(wait per pass through a server entry, busy): the recent iteration time while the
        server iterates (a visit waits for the next iteration, then lasts one); never busy,
        as load-aware policies do not shed load at token granularity."""
        wait = 0.0 if self._wake is not None else self._iteration_ewma_s  # asleep: idle
        return wait, False

    def _token_program(self, key: tuple, planned=None) -> _Program:
        """The token program of a plan: the static plan of `key`, or `planned` (made at
        arrival), cached per plan."""
        cache_key = key if planned is None else id(planned)
        found = self._tp_programs.get(cache_key)
        if found is not None:
            return found
        klass, group, prompt, output = key
        if planned is None:
            planned = self.planner.get(*key)
        else:
            self._tp_keep.append(planned)  # keeps id(planned) unique while cached
        work = self.book.work(klass, prompt, output)
        oc = np.asarray(planned.plan.on_client, bool)
        L = work.n_units
        p = _Program()
        p.klass, p.prompt, p.output = klass, prompt, output
        p.steps, p.ctx_first = work.steps, work.ctx_first
        p.pass_legs = _legs(oc, 0, L)
        p.step_legs = _legs(oc, work.loop_start, L) if work.steps > 0 else []
        p.pass_in = [float(work.act_pass[a]) for _, a, _ in p.pass_legs]
        p.step_in = [float(work.act_step[a]) for _, a, _ in p.step_legs]
        p.pass_out, p.step_out = float(work.act_pass[L]), float(work.act_step[L])
        p.loop_bytes = work.loop_bytes
        p.head_server = not oc[L - 1]
        p.loop_server = not oc[work.loop_start]
        cost, m = self._cost_model(klass)
        p.model = (cost, m)
        weights = cost.weights[m]
        p.pass_flops = work.pass_flops
        p.pass_own = np.maximum(work.pass_bytes - weights, 0.0)
        p.group = cost.group(m, work.step_flops0, work.step_flops1, work.step_bytes0,
                             work.step_bytes1) if work.steps > 0 else -1  # fmt: skip
        dev = self.ld.client_devices[group]
        dtype = self.ld.models[self.ld.scenario.workload.mix[klass].model].activation_dtype
        f, b, ov = dev.flops_per_s(dtype), dev.bytes_per_s, dev.overhead_us * 1e-6
        t_pass = np.maximum(work.pass_flops / f, work.pass_bytes / b) + ov * work.pass_runs
        p.client_pass_s = [float(t_pass[a:e].sum()) for _, a, e in p.pass_legs]
        p.client_step = [
            (work.step_flops0[a:e] / f, work.step_flops1[a:e] / f, work.step_bytes0[a:e] / b,
             work.step_bytes1[a:e] / b, ov * float(work.step_runs[a:e].sum()))
            for _, a, e in p.step_legs
        ]  # fmt: skip
        server = ~oc
        p.server_units = np.flatnonzero(server)
        p.kv_final = float(work.kv_bytes[server].sum())
        p.has_server = bool(server.any())
        p.pass_last_server = max((j for j, s in enumerate(p.pass_legs) if s[0]), default=-1)
        p.step_last_server = max((j for j, s in enumerate(p.step_legs) if s[0]), default=-1)
        p.pass_first_server = min((j for j, s in enumerate(p.pass_legs) if s[0]), default=-1)
        p.step_first_server = min((j for j, s in enumerate(p.step_legs) if s[0]), default=-1)
        p.step_has_server = p.step_last_server >= 0
        self._tp_programs[cache_key] = p
        return p

    # --- run -----------------------------------------------------------------------------

    def run(self) -> RunResult:
        sc = self.ld.scenario
        self._prepare()
        self._keys_all = list(
            zip(
                self.arr.klass.tolist(), self.arr.group.tolist(),
                self.arr.prompt_tokens.tolist(), self.arr.output_tokens.tolist(), strict=True,
            )
        )  # fmt: skip
        self.env.process(self._server_loop())
        source = self.env.process(self._arrivals())
        self.env.run(until=source)
        self.stop_s = self.env.now
        self.backlog_at_stop = int(
            np.sum(~(self.finish_s <= self.stop_s) & (self.status != _REJECTED))
        )
        if sc.drain_s is None:
            self.env.run()
            end = max(self.env.now, self._last_finish)
        else:
            until = self.stop_s + sc.drain_s
            if until > self.env.now:
                self.env.run(until=until)
            end = until
        late = self.finish_s > end
        self.status[late] = 0
        self.finish_s[late] = np.nan
        self.server.finish()
        events = next(self.env._eid)
        res = RunResult(
            self.policy, self.arr, self.status, self.finish_s, self.deadline_s,
            self.planned, self.feasible, self.s_wait, self.s_busy, self.c_wait, self.c_busy,
            self.xfer, self.work, self.only_work, self.units, self.switches, self.server,
            self.stop_s, float(end), self.backlog_at_stop, self.planner.cached_plans,
            events, self.energy,
        )  # fmt: skip
        res.token = TokenStats(
            self.ttft, self.tpot, self.itl50, self.itl99, self.itlmax, self.gaps,
            self.series_tokens, self.series_batch, self.series_kv, self.kv_capacity,
            self.iterations, self.preemptions, self.request_events,
        )  # fmt: skip
        return res

    def _admit(self, i: int) -> None:
        key = self._keys_all[i]
        if self._plan_of[i] == _AT_ARRIVAL:
            prog = self._token_program(key, self._planned_at_arrival(i))
        else:
            prog = self._token_program(key)
        r = _Req(i, prog, self._client[i], self.links[self._group[i]], self.env.now)
        if self.edf:
            r.priority = self.env.now + self._deadline[i]
        self.in_flight += 1
        t = self.env.now
        if prog.pass_legs and prog.pass_legs[0][0] == _SERVER:  # the input goes up first
            t += self._xfer(r, UP, prog.pass_in[0], t)
        self._advance(r, t)

    def _xfer(self, r: _Req, direction: int, nbytes: float, t: float) -> float:
        if nbytes <= 0:
            return 0.0
        self.request_events += 1
        link = r.link
        serial = link.serialisation_s(direction, nbytes, t)
        start = t
        if link.medium is not None:  # a shared medium: the earliest free gap from t on
            start = link.medium.reserve(direction, t, serial, self.env.now)
        if self._observe:  # learnt when the transfer is computed
            link.observe(direction, nbytes, start - t + serial, self.link_alpha)
        dt = start - t + serial + link.delay_s(1.0)
        r.xfer += dt
        r.nbytes += nbytes
        return dt

    def _advance(self, r: _Req, t: float) -> None:
        """Run request r from time t through client legs and transfers to its next server
        visit (queued for the server) or to its end."""
        prog = r.prog
        while True:
            legs = prog.pass_legs if r.k == 0 else prog.step_legs
            if r.leg < len(legs):
                side, a, e = legs[r.leg]
                if side == _SERVER:
                    self._push(t, r)
                    return
                self.request_events += 1
                start = max(t, self._dev_free[r.client])
                r.c_wait += start - t
                if r.k == 0:
                    dur = prog.client_pass_s[r.leg]
                else:
                    x0, x1, y0, y1, ov = prog.client_step[r.leg]
                    c = r.ctx
                    dur = float(np.maximum(x0 + x1 * c, y0 + y1 * c).sum()) + ov
                t = start + dur
                r.c_busy += dur
                self._dev_free[r.client] = t
                r.leg += 1
                if r.leg < len(legs):
                    nb = prog.pass_in[r.leg] if r.k == 0 else prog.step_in[r.leg]
                    t += self._xfer(r, UP, nb, t)
                continue
            # the head has made a token at time t (on its side)
            out = prog.pass_out if r.k == 0 else prog.step_out
            at_client = t + self._xfer(r, DOWN, out, t) if prog.head_server else t
            r.token(at_client)
            if r.k >= prog.steps:
                self._finish(r, at_client)
                return
            r.k += 1
            r.leg = 0
            r.ctx = prog.ctx_first + r.k - 1
            if not prog.loop_server:
                t = at_client
            elif not prog.head_server:
                t += self._xfer(r, UP, prog.loop_bytes, t)

    def _finish(self, r: _Req, t: float) -> None:
        i = r.i
        self.finish_s[i] = t
        self.status[i] = _DONE
        self._last_finish = max(self._last_finish, t)
        self.s_wait[i], self.s_busy[i], self.c_wait[i] = r.s_wait, r.s_busy, r.c_wait
        self.c_busy[i], self.xfer[i] = r.c_busy, r.xfer
        self.energy[i] = self._energy_j(self._group[i], r.c_busy, r.nbytes)
        times = np.frombuffer(r.times, float)
        self.ttft[i] = times[0] - r.arrival
        if times.size > 1:
            gaps = np.diff(times)
            self.tpot[i] = (times[-1] - times[0]) / (times.size - 1)
            self.itl50[i], self.itl99[i] = np.percentile(gaps, [50, 99])
            self.itlmax[i] = gaps.max()
            self.gaps[i] = gaps
        self.in_flight -= 1

    # --- server --------------------------------------------------------------------------

    def _push(self, t: float, r: _Req) -> None:
        r.t_ready = t
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, r))
        wake = self._wake
        if wake is not None and t < self._sleep_until:
            self._sleep_until = t
            tm = self.env.timeout(t - self.env.now)
            tm.callbacks.append(lambda _e, ev=wake: ev.triggered or ev.succeed())

    def _pull(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, seq, r = heapq.heappop(heap)
            if r.admitted:
                self._ready.append(r)
            else:
                limit = self.server.max_queue
                if limit is not None and len(self._waiting) >= limit:
                    self._reject(r)
                    continue
                prio = r.priority if self.edf else 0.0
                key = (-1.0 if r.recompute and not self.edf else prio, seq, r)
                heapq.heappush(self._waiting, key)
                self.server._change(1, 0)

    def _reject(self, r: _Req) -> None:
        self.status[r.i] = _REJECTED
        self.in_flight -= 1

    def _kv_need(self, r: _Req) -> float:
        prog = r.prog
        if not self.preempt:
            return prog.kv_final
        total = prog.prompt + prog.output
        return prog.kv_final * (prog.prompt + r.generated) / total if total else 0.0

    def _server_loop(self):
        env = self.env
        while True:
            now = env.now
            self._pull(now)
            batch = self._form_batch()
            if not batch:
                self.series_batch.set(now, 0)
                self._wake = env.event()
                self._sleep_until = float("inf")
                if self._heap:
                    t = self._heap[0][0]
                    self._sleep_until = t
                    tm = env.timeout(t - now)
                    tm.callbacks.append(lambda _e, ev=self._wake: ev.triggered or ev.succeed())
                yield self._wake
                self._wake = None
                continue
            dur, tokens = self._price(batch)
            a = self._iteration_alpha
            ewma = self._iteration_ewma_s
            self._iteration_ewma_s = dur if not self.iterations else a * dur + (1 - a) * ewma
            self.iterations += 1
            self.series_batch.set(now, len(batch))
            self.server._change(0, 1)
            yield env.timeout(dur)
            self.server._change(0, -1)
            self.server.busy_time_total += dur
            now = env.now
            self._tokens_done += tokens
            self.series_tokens.set(now, self._tokens_done)
            self.request_events += len(batch)
            for r in batch:
                r.s_busy += dur
                self._visited(r, now)
            self.series_kv.set(now, self._kv_used)

    def _form_batch(self) -> list:
        """The next iteration's requests: ready visits (with chunked prefill, decode steps
        first), then admissions while seats, KV memory and the token budget allow."""
        batch: list = []
        budget = self.max_tokens
        ready = self._ready
        order = list(ready)
        ready.clear()
        if self.chunked:  # decode steps first, prefills fill what is left (vLLM's order)
            order.sort(key=lambda q: q.k == 0 or q.recompute)
        for r in order:
            take = self._take(r, budget, batch)
            if take is None:
                ready.append(r)
                continue
            budget -= take
            batch.append(r)
        waiting = self._waiting
        while waiting and self._running < self.max_batch:
            r = waiting[0][2]
            need_kv = self._kv_need(r)
            if need_kv > self.kv_capacity:
                heapq.heappop(waiting)
                self.server._change(-1, 0)
                self._reject(r)
                continue
            if self._kv_used + need_kv > self.kv_capacity:
                break
            tokens = self._take(r, budget, batch)
            if tokens is None:
                break
            heapq.heappop(waiting)
            self.server._change(-1, 0)
            budget -= tokens
            r.admitted = True
            self._admit_seq += 1
            r.admit_seq = self._admit_seq
            r.kv = need_kv
            self._kv_used += need_kv
            self._running += 1
            batch.append(r)
        if self.preempt and batch:
            batch = self._grow_kv(batch)
        now = self.env.now
        for r in batch:
            r.s_wait += now - r.t_ready
        self.series_kv.set(now, self._kv_used)
        return batch

    def _take(self, r: _Req, budget: int, batch: list) -> int | None:
        """Tokens r processes in the coming iteration (kept in `r.chunk`), or None when it
        must wait for another iteration. A visit larger than the budget runs alone; with
        chunked prefill a prefill takes what the budget has left instead."""
        need = r.visit_tokens() - r.done
        if need <= budget or not batch:
            take = need
            if self.chunked and r.k == 0 and not r.recompute and budget > 0:
                take = min(need, budget)
        elif self.chunked and r.k == 0 and not r.recompute and budget > 0:
            take = budget
        else:
            return None
        r.chunk = take
        return take

    def _chunk_cost(self, r: _Req, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-unit FLOPs and own bytes of a prefill chunk: prompt tokens [done, done +
        chunk) attending to everything before them. Cumulative pass costs differ by the
        chunk's work; the chunk also reads the KV cache of the tokens already done."""
        prog, done, end = r.prog, r.done, r.done + r.chunk
        hi = self.book.work(prog.klass, end, prog.output)
        if not done:
            return hi.pass_flops, np.maximum(hi.pass_bytes - weights, 0.0)
        lo = self.book.work(prog.klass, done, prog.output)
        kv_read = hi.kv_bytes * done / (end + prog.output)
        own = np.maximum(hi.pass_bytes - lo.pass_bytes, 0.0) + kv_read
        return np.maximum(hi.pass_flops - lo.pass_flops, 0.0), own

    def _grow_kv(self, batch: list) -> list:
        """Decode steps add one token of KV each; preempt the newest while it does not fit."""
        growing = [r for r in batch if r.k > 0 and not r.recompute and r.is_first_visit()]
        total = 0.0
        for r in growing:
            prog = r.prog
            r.grow = prog.kv_final / (prog.prompt + prog.output)
            total += r.grow
        while self._kv_used + total > self.kv_capacity and batch:
            victim = max(batch, key=lambda q: q.admit_seq)
            batch.remove(victim)
            if victim in growing:
                total -= victim.grow
                growing.remove(victim)
            self._kv_used -= victim.kv
            victim.kv = 0.0
            victim.admitted = False
            prog = victim.prog
            victim.recompute = not (victim.k == 0 and victim.leg == prog.pass_first_server)
            self._running -= 1
            self.preemptions += 1
            self._seq += 1
            heapq.heappush(self._waiting, (-1.0 if not self.edf else victim.priority, self._seq,
                                           victim))  # fmt: skip
            self.server._change(1, 0)
        for r in growing:
            r.kv += r.grow
            self._kv_used += r.grow
        return batch

    def _price(self, batch: list) -> tuple[float, float]:
        costs = set()
        tokens = 0.0
        for r in batch:
            prog = r.prog
            cost, m = prog.model
            costs.add(cost)
            if r.recompute:
                work = self.book.work(prog.klass, prog.prompt + r.generated, prog.output)
                own = np.maximum(work.pass_bytes - cost.weights[m], 0.0)
                for a in prog.server_units:
                    cost.add_pass(m, a, a + 1, work.pass_flops, own)
                tokens += prog.prompt + r.generated
                continue
            legs = prog.pass_legs if r.k == 0 else prog.step_legs
            _, a, e = legs[r.leg]
            if r.k == 0:
                if r.chunk == prog.prompt:
                    cost.add_pass(m, a, e, prog.pass_flops, prog.pass_own)
                else:
                    cost.add_pass(m, a, e, *self._chunk_cost(r, cost.weights[m]))
                if r.leg == prog.pass_first_server:
                    tokens += r.chunk
            else:
                cost.add_step(prog.group, a, e, r.ctx)
                if r.leg == prog.step_first_server:
                    tokens += 1
        return sum(c.close() for c in costs), tokens

    def _visited(self, r: _Req, now: float) -> None:
        """Request r's server visit ended at `now`: continue its path."""
        if r.recompute:
            r.recompute = False
            self._push(now, r)
            return
        prog = r.prog
        if r.k == 0 and r.done + r.chunk < prog.prompt:  # a prefill chunk: more to come
            r.done += r.chunk
            self._push(now, r)
            return
        r.done = 0
        legs = prog.pass_legs if r.k == 0 else prog.step_legs
        last = prog.pass_last_server if r.k == 0 else prog.step_last_server
        leaving = r.leg == last and (r.k == prog.steps or (r.k == 0 and not prog.step_has_server))
        if leaving:
            self._kv_used -= r.kv
            r.kv = 0.0
            self._running -= 1
            r.admitted = False
        r.leg += 1
        t = now
        if r.leg < len(legs):
            nb = prog.pass_in[r.leg] if r.k == 0 else prog.step_in[r.leg]
            t += self._xfer(r, DOWN, nb, t)
        self._advance(r, t)


class _Req:
    """A request's state in token mode."""

    __slots__ = (
        "i", "prog", "client", "link", "arrival", "k", "leg", "ctx", "generated", "times",
        "admitted", "recompute", "kv", "grow", "admit_seq", "priority", "t_ready",
        "s_wait", "s_busy", "c_wait", "c_busy", "xfer", "nbytes", "done", "chunk",
    )  # fmt: skip

    def __init__(self, i, prog, client, link, arrival):
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

    def token(self, t: float) -> None:
        self.times.append(t)
        self.generated += 1

    def visit_tokens(self) -> int:
        if self.recompute:
            return self.prog.prompt + self.generated
        return self.prog.prompt if self.k == 0 else 1

    def is_first_visit(self) -> bool:
        return self.leg == self.prog.step_first_server
