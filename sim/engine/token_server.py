"""The batching server of token mode: iterations, admission, KV cache, iteration prices.

One SimPy process runs the server. Requests' server visits wait in a time-ordered heap
until they are ready; each iteration takes every admitted request waiting for server
work (decode steps and prefills up to the token budget; with `chunked_prefill` the decode
steps first and prefills in chunks that fill the budget), admits waiting requests while
seats, KV memory and the budget allow, and lasts the batch roofline of
`sim.engine.batching` (priced in `sim.engine.iteration_cost`). Runs of decode-only
iterations are advanced as one event (decode spans, `sim.engine.spans`) unless
`simulation.coalesce` is false. Kept apart from the engine (`sim.engine.token`), which moves
requests through their client legs and transfers: the two meet at `TokenServer.push`
(a visit is ready) and the `visit_ended` callback (a visit is over).

Server KV cache: a request is admitted at its first server visit and holds KV for its
server units until its last server visit. `on_kv_full: wait` reserves the KV of the
request's final context at admission (admission waits, FIFO or EDF, for memory and for a
seat among `max_batch_requests`); `preempt` grows each request's KV per generated token
and, when memory runs out, preempts the newest admitted request of the iteration: its KV
is freed and, readmitted, it first recomputes its server units' KV over its context
(vLLM's recompute preemption). A request whose KV cannot fit in empty memory is rejected.
"""

from __future__ import annotations

import bisect
import heapq
from array import array
from collections import deque
from collections.abc import Callable

import numpy as np
import simpy

from sim.config import LoadedScenario
from sim.costs.kernels import unit_overheads_s
from sim.engine.batching import BatchCost, weight_read_bytes
from sim.engine.cohort import Cohort
from sim.engine.iteration_cost import price, price_span
from sim.engine.levels import LevelSeries, ServerLevels
from sim.engine.planner import ProblemBook
from sim.engine.spans import DecodeSpan, span_length
from sim.engine.token_program import TokenRequest
from sim.errors import UserError


def kv_capacity_bytes(ld: LoadedScenario, book: ProblemBook) -> float:
    """KV bytes the server may hold: given, or a share of the memory the weights leave."""
    cfg = ld.scenario.simulation
    if cfg.kv_memory_gb is not None:
        return cfg.kv_memory_gb * 1e9
    mix = ld.scenario.workload.mix
    weights = 0.0
    for name in {c.model for c in mix}:
        k = next(i for i, c in enumerate(mix) if c.model == name)
        if not book.holds(k):  # a fleet site that does not hold this model
            continue
        work = book.work(k, 1, 1 if mix[k].task == "generate" else 0)
        weights += float(work.weight_bytes.sum())
    free = ld.server_device.memory_bytes - weights
    if free <= 0:
        raise UserError(
            f"{ld.source}: server.device: the models' weights ({weights / 1e9:.4g} GB) do not "
            f"fit in its memory ({ld.server_device.memory_bytes / 1e9:.4g} GB, memory_gb)"
        )
    return cfg.kv_memory_fraction * free


class TokenServer:
    """The batching server: its iteration loop (`run`, a SimPy process), admission, KV
    memory and the batch-cost accumulators pricing its iterations."""

    def __init__(
        self,
        env: simpy.Environment,
        ld: LoadedScenario,
        book: ProblemBook,
        levels: ServerLevels,
        max_queue: int | None,
        visit_ended: Callable[[TokenRequest, float], None],
        reject: Callable[[TokenRequest], None],
        split_step: Callable[[TokenRequest, float], float] | None = None,
    ):
        """`levels` keeps the monitored queue (requests waiting for admission) and busy
        (an iteration running) levels; `max_queue` bounds the admission queue;
        `visit_ended(r, t_s)` continues a request past a server visit, `reject(r)` loses it
        (queue full, KV too large), and `split_step(r, t_s)` advances a `split_ok` request
        past a decode step (not its last) to its next server visit, returning when that is
        ready (s). A `span_ok` request past a decode step whose successor is due on the
        server at once is advanced here (`_end_iteration`, `_apply_silent`)."""
        sc = ld.scenario
        cfg = sc.simulation
        self.env, self.ld, self.book, self.levels = env, ld, book, levels
        self.max_queue = max_queue
        self._visit_ended, self._reject = visit_ended, reject
        self._split_step = split_step
        self._carry: list = []  # decode steps (requests) due at the last iteration's end,
        self._carry_seq: list = []  # and their sequence numbers (in the heap's order)
        self._iteration_ewma_s = 0.0  # recent iteration time: the load-aware wait per pass
        self._iteration_sq_ewma = 0.0  # and of its square (s^2): the residual wait
        self._iteration_alpha = sc.split.wait_ewma_alpha
        self.max_batch = cfg.max_batch_requests
        self.max_tokens = cfg.max_batch_tokens
        self.chunked = cfg.chunked_prefill
        self.preempt = cfg.on_kv_full == "preempt"
        self.edf = sc.server.discipline == "edf"
        self._dtype_of = {c.model: ld.models[c.model].activation_dtype for c in sc.workload.mix}
        self._cost_by_dtype: dict[str, BatchCost] = {}
        self._dev = ld.server_device
        self._model_index: dict[tuple, tuple[BatchCost, int]] = {}
        self.kv_capacity = kv_capacity_bytes(ld, book)
        self.visits = 0  # server visits of all requests (one per request and iteration)
        self._heap: list = []  # (ready time s, seq, request): visits not yet ready
        self._seq = 0
        self._ready: deque = deque()  # admitted requests ready for server work
        self._waiting: list = []  # heap of (priority, seq, request) waiting for admission
        self._running = 0
        self._kv_used = 0.0
        self._wake: simpy.Event | None = None
        self._sleep_until = float("inf")
        self._admit_seq = 0
        self.series_tokens, self.series_batch, self.series_kv = (LevelSeries() for _ in range(3))
        self._tokens_done = 0.0
        self.iterations = 0
        self._last_batch = 0  # requests in the last iteration begun
        self.preemptions = 0
        self.coalesce = cfg.coalesce
        self._span: DecodeSpan | None = None  # the decode span running, if any
        self.span_events = 0  # token transfers of coalesced iterations (request events)
        self.step_events = 0  # tokens of server-kept decode steps sent down (request events)
        # server-kept decode steps advanced as one block (`sim.engine.cohort`), where
        # stepping them one by one could not differ: coalescing, no preemption, no chunked
        # prefill, one activation dtype (one batch-cost accumulator)
        one_dtype = len(set(self._dtype_of.values())) == 1
        self._cohort = Cohort(self.coalesce and not self.preempt and not self.chunked
                              and one_dtype)  # fmt: skip
        self._block_at = -1  # where the block stands in the formed batch (-1: not in it)
        self._block_pos = -1  # and in the ready visits (-1: no block)
        # every wait a request's `s_wait` counts: its start (s), and the ends (s) with
        # the number of waits ending there (`waits`)
        self._wait_starts = array("d")
        self._wait_ends = array("d")
        self._wait_counts = array("q")

    def waits(self) -> tuple[np.ndarray, np.ndarray]:
        """Start and end times (s) of every wait for the server that the requests' records
        count (`server_wait_s`): from a visit's ready time to the iteration it joins (or its
        rejection for KV larger than the memory)."""
        ends = np.repeat(np.frombuffer(self._wait_ends, float),
                         np.frombuffer(self._wait_counts, np.int64))  # fmt: skip
        return np.frombuffer(self._wait_starts, float), ends

    # --- set-up --------------------------------------------------------------------------

    def cost_model(self, klass: int) -> tuple[BatchCost, int]:
        """The batch-cost accumulator of a class's dtype and the model's index in it."""
        mix = self.ld.scenario.workload.mix
        name = mix[klass].model
        dtype = self._dtype_of[name]
        cost = self._cost_by_dtype.get(dtype)
        if cost is None:
            dev = self._dev
            cost = BatchCost(dev.flops_per_s(dtype), dev.bytes_per_s, dev.overhead_us * 1e-6,
                             dev.non_overlap)  # fmt: skip
            self._cost_by_dtype[dtype] = cost
        key = (dtype, name)
        found = self._model_index.get(key)
        if found is None:
            work = self.book.work(klass, 1, 1 if mix[klass].task == "generate" else 0)
            model = self.ld.models[name]
            overheads_s = unit_overheads_s(model, work.units, self._dev)
            found = (cost, cost.add_model(weight_read_bytes(model, work.units), overheads_s))
            self._model_index[key] = found
        return found

    def live_batch(self) -> tuple[int, float, float]:
        """(requests in the running iteration, the mean wait s of a visit for the running
        iteration to end, the KV headroom in bytes: `kv_headroom_bytes`); (0, 0, headroom)
        while idle. What a batching-aware plan prices its marginal costs
        (`sim.costs.marginal`), its waits (`batch_waits`) and its KV limit at. The wait
        is the residual of iterations of recent durations T, E[T^2] / (2 E[T]) (EWMAs of
        the iterations begun; the span's later ones folded in when it ends): half an
        iteration when they are equal, more when long prefill iterations mix with short
        decode ones (a visit arrives more likely during a long one)."""
        if self._wake is not None:  # asleep: idle
            return 0, 0.0, self.kv_headroom_bytes()
        mean = self._iteration_ewma_s
        residual = self._iteration_sq_ewma / (2 * mean) if mean > 0 else 0.0
        return self._last_batch, residual, self.kv_headroom_bytes()

    def kv_headroom_bytes(self) -> float:
        """KV memory a request arriving now could be admitted into without waiting: the
        capacity less the KV in use; infinite when its KV cannot decide that: every seat
        taken, or requests already waiting for admission (they go first: a new request
        with server units waits its turn whatever its KV)."""
        if self._running >= self.max_batch or self._waiting:
            return float("inf")
        return self.kv_capacity - self._kv_used

    def wait_per_pass_s(self) -> float:
        """The load-aware wait per pass through a server entry: the recent iteration time
        while the server iterates (a visit waits for the next iteration, then lasts one)."""
        if self._wake is not None:  # asleep: idle
            return 0.0
        span = self._span
        if span is None:
            return self._iteration_ewma_s
        started = bisect.bisect_right(span.t, self.env.now, 0, span.k)  # iterations begun
        return self._ewma_through(span.ewma0, span.d[1:started])

    # --- visits and the iteration loop ---------------------------------------------------

    def push(self, t: float, r: TokenRequest) -> None:
        """Request r is ready for server work at time t (s)."""
        r.t_ready = t
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, r))
        span = self._span
        if span is not None and t < span.t[span.k]:
            self._cut_span(span, t)
        wake = self._wake
        if wake is not None and t < self._sleep_until:
            self._sleep_until = t
            tm = self.env.timeout(t - self.env.now)
            tm.callbacks.append(lambda _e, ev=wake: ev.triggered or ev.succeed())

    def _pull(self, now: float) -> None:
        """Visits ready by `now`: admitted requests to the ready queue, the others to the
        admission queue (or rejected when it is full). Decode steps kept from the iteration
        that just ended (`_carry`, due now) join in the order a heap of (time, sequence)
        would have given them: before a visit due now with a later sequence number."""
        heap, ready, carry, carry_seq = self._heap, self._ready, self._carry, self._carry_seq
        if carry:
            self._carry, self._carry_seq = [], []
        cohort = self._cohort
        # the block's steps were sequenced after every kept step and before anything
        # pushed later in the last iteration: it stands where the first of those would
        block_last = cohort.seq0 + len(cohort.members) if cohort.members else None
        self._block_pos = -1
        i = 0
        while heap and heap[0][0] <= now:
            t, seq, r = heapq.heappop(heap)
            if t == now:  # kept steps (due now) sequenced before it go first
                while i < len(carry) and carry_seq[i] < seq:
                    ready.append(carry[i])
                    i += 1
                if block_last is not None and seq > block_last:
                    self._block_pos = len(ready)
                    block_last = None
            if r.admitted:
                ready.append(r)
            else:
                self._queue_for_admission(r, seq, now)
        rest = carry[i:] if i else carry
        if cohort.enabled and (rest or cohort.members) and self._block_pos < 0:
            cohort.join(rest)  # at the end of the ready visits: the front of the block
            self._block_pos = len(ready)
        elif rest:
            ready.extend(rest)

    def _queue_for_admission(self, r: TokenRequest, seq: int, now: float) -> None:
        """A visit of a request not admitted is ready: to the admission queue (or rejected
        when it is full)."""
        limit = self.max_queue
        if limit is not None and len(self._waiting) >= limit:
            self._reject(r)
            return
        prio = r.priority if self.edf else 0.0
        key = (-1.0 if r.recompute and not self.edf else prio, seq, r)
        heapq.heappush(self._waiting, key)
        self.levels.change(now, 1, 0)

    def run(self):
        """The server's SimPy process: an iteration while a batch forms, else sleep until
        the next visit is ready."""
        env = self.env
        while True:
            now = env.now
            self._pull(now)
            batch = self._form_batch()
            if not batch and self._block_at < 0:
                self.series_batch.set(now, 0)
                yield self._sleep(now)
                self._wake = None
                continue
            k = self._span_length(batch) if self.coalesce else 1
            if self._block_at >= 0 and k > 1:  # the block's members take part
                k = min(k, self._cohort.min_steps_left())
            if k > 1:
                yield from self._run_span(batch, now, k)
                continue
            dur_s, tokens = self._start_iteration(batch, now)
            yield env.timeout(dur_s)
            self._end_iteration(batch, dur_s, tokens)

    def _sleep(self, now: float) -> simpy.Event:
        """The event that wakes the idle server: a push, or the next visit's ready time."""
        env = self.env
        self._wake = env.event()
        self._sleep_until = float("inf")
        if self._heap:
            t = self._heap[0][0]
            self._sleep_until = t
            tm = env.timeout(t - now)
            tm.callbacks.append(lambda _e, ev=self._wake: ev.triggered or ev.succeed())
        return self._wake

    def _start_iteration(self, batch: list, now: float) -> tuple[float, float]:
        """Price the batch and record the iteration's start: (duration s, tokens)."""
        if self._block_at >= 0:
            dur, tokens = price(batch, self.book, self._cohort)
            self._begin(len(batch) + len(self._cohort.members), now, dur)
        else:
            dur, tokens = price(batch, self.book)
            self._begin(len(batch), now, dur)
        return dur, tokens

    def _begin(self, size: int, now: float, dur_s: float) -> None:
        """Record an iteration's start: the iteration-time EWMA, counts, batch size (requests)
        and busy."""
        a = self._iteration_alpha
        ewma = self._iteration_ewma_s
        self._iteration_ewma_s = dur_s if not self.iterations else a * dur_s + (1 - a) * ewma
        sq = dur_s * dur_s
        self._iteration_sq_ewma = (
            sq if not self.iterations else a * sq + (1 - a) * self._iteration_sq_ewma
        )
        self.iterations += 1
        self._last_batch = size
        self.series_batch.set(now, size)
        self.levels.change(self.env.now, 0, 1)

    def _ewma_through(self, ewma: float, durations) -> float:
        """The iteration-time EWMA after iterations of `durations` began (as `_begin` folds)."""
        a = self._iteration_alpha
        for d in durations:
            ewma = a * d + (1 - a) * ewma
        return ewma

    def _end_iteration(self, batch: list, dur_s: float, tokens: float) -> None:
        """Record the iteration's end and continue each of its requests (and the block's,
        where it stood in the batch)."""
        now = self.env.now
        self.levels.change(now, 0, -1)
        self.levels.held(dur_s)
        self._tokens_done += tokens
        self.series_tokens.set(now, self._tokens_done)
        self.visits += len(batch)
        n_carried = len(self._carry)
        at = self._block_at
        if at < 0:
            self._continue(batch, dur_s, now)
        elif at == len(batch):  # the block last (no admissions)
            self._continue(batch, dur_s, now)
            self._end_block(dur_s, now)
        else:
            self._continue(batch[:at], dur_s, now)
            self._end_block(dur_s, now)
            self._continue(batch[at:], dur_s, now)
        self.step_events += len(self._carry) - n_carried
        self.series_kv.set(now, self._kv_used)

    def _end_block(self, dur_s: float, now: float) -> None:
        """The block's part of an iteration's end: members past their last step leave the
        server (in block order, as stepping ends them), the others' steps are carried with
        the next sequence numbers (their own state brought up to date later)."""
        cohort = self._cohort
        n = len(cohort.members)
        seq0 = cohort.seq0 = self._seq
        leavers = cohort.end_iteration(dur_s, now)
        for r in leavers:
            self._visit_done(r, now)
        if self._seq != seq0:  # a visit ended here was sequenced between carried steps
            raise AssertionError("a decode cohort member's last visit was sequenced")
        carried = n - len(leavers)
        self._seq = seq0 + carried
        self.visits += n
        self.step_events += carried

    def _continue(self, batch: list, dur_s: float, now: float) -> None:
        """Continue each request of (a part of) the iteration's batch past its visit."""
        carry, carry_seq, heap = self._carry, self._carry_seq, self._heap
        split = self._split_step
        seq = self._seq
        for r in batch:
            r.s_busy += dur_s
            prog = r.prog
            if r.recompute or not 0 < r.k < prog.steps:
                self._seq = seq
                self._visit_done(r, now)
                seq = self._seq
            elif r.span_ok:
                # its next step is due now: kept here, not in the heap. What the engine's
                # `_after_server` and `_advance` do for it, without their walk over legs
                # (once per request and iteration): the token goes down the fixed link
                # (`down_s`, as `_xfer` computes it), the next step begins (on its only
                # leg, 0, where it already is)
                down_s = r.down_s
                r.xfer += down_s
                r.nbytes += prog.step_out
                r.times.append(now + down_s)
                r.generated += 1
                k = r.k = r.k + 1
                r.ctx = prog.ctx_first + k - 1
                r.t_ready = now
                seq += 1
                carry.append(r)
                carry_seq.append(seq)
            elif r.split_ok:  # `_visit_done` of a decode step that stays admitted, then
                r.done = 0  # `push` (no span runs and the server is awake: no cut, no wake)
                t = r.t_ready = split(r, now)
                seq += 1
                heapq.heappush(heap, (t, seq, r))
            else:
                self._seq = seq
                self._visit_done(r, now)
                seq = self._seq
        self._seq = seq

    def _visit_done(self, r: TokenRequest, now: float) -> None:
        """Request r's server visit ended at `now`: visit again (recomputed KV, more prefill
        chunks), or free its KV if it leaves the server for good, and let it go on."""
        if r.recompute:
            r.recompute = False
            self.push(now, r)
            return
        prog = r.prog
        if r.k == 0 and r.done + r.chunk < prog.prompt:  # a prefill chunk: more to come
            r.done += r.chunk
            self.push(now, r)
            return
        r.done = 0
        last = prog.pass_last_server if r.k == 0 else prog.step_last_server
        leaving = r.leg == last and (r.k == prog.steps or (r.k == 0 and not prog.step_has_server))
        if leaving:
            self._kv_used -= r.kv
            r.kv = 0.0
            self._running -= 1
            r.admitted = False
        self._visit_ended(r, now)

    # --- forming an iteration ------------------------------------------------------------

    def _form_batch(self) -> list:
        """The next iteration's requests: ready visits (with chunked prefill, decode steps
        first), then admissions while seats, KV memory and the token budget allow."""
        batch: list = []
        budget = self._take_ready(self.max_tokens, batch)
        self._admit_waiting(budget, batch)
        if self.preempt and batch:
            batch = self._grow_kv(batch)
        now = self.env.now
        starts = self._wait_starts
        waits = len(starts)
        for r in batch:
            t = r.t_ready
            if t != now:  # (adding a zero wait changes nothing)
                r.s_wait += now - t
                starts.append(t)
        if len(starts) != waits:
            self._wait_ends.append(now)
            self._wait_counts.append(len(starts) - waits)
        self.series_kv.set(now, self._kv_used)
        return batch

    def _take_ready(self, budget: int, batch: list) -> int:
        """Add the ready visits that fit to `batch` (the block where it stands among them);
        the token budget left."""
        ready = self._ready
        order = list(ready)
        ready.clear()
        if self.chunked:  # decode steps first, prefills fill what is left (vLLM's order)
            order.sort(key=lambda q: q.k == 0 or q.recompute)
        self._block_at = -1
        pos = self._block_pos
        if pos < 0 or not self._cohort.members:
            return self._take_each(order, budget, batch)
        self._block_pos = -1
        if pos == len(order):  # the block after every ready visit
            return self._take_block(self._take_each(order, budget, batch), batch)
        budget = self._take_each(order[:pos], budget, batch)
        budget = self._take_block(budget, batch)
        return self._take_each(order[pos:], budget, batch)

    def _take_block(self, budget: int, batch: list) -> int:
        """The block: in whole when its steps fit in the budget (then at `_block_at`), else
        dissolved and taken as ready visits are; the budget left."""
        cohort = self._cohort
        n = len(cohort.members)
        if n <= budget:
            self._block_at = len(batch)
            return budget - n
        block = cohort.dissolve()
        return self._take_each(block, budget, batch)

    def _take_each(self, order: list, budget: int, batch: list) -> int:
        """Add the visits of `order` that fit to `batch` (the others back to the ready
        queue, in order); the token budget left."""
        ready = self._ready
        for r in order:
            if r.k and not r.recompute:  # a decode step: one token (`_take`'s answer)
                if budget < 1 and (batch or self._block_at >= 0):
                    ready.append(r)
                    continue
                r.chunk = 1
                budget -= 1
                batch.append(r)
                continue
            take = self._take(r, budget, not batch and self._block_at < 0)
            if take is None:
                ready.append(r)
                continue
            budget -= take
            batch.append(r)
        return budget

    def _admit_waiting(self, budget: int, batch: list) -> None:
        """Admit waiting requests into `batch` while seats, KV memory and the budget allow;
        reject those whose KV exceeds the whole memory."""
        waiting = self._waiting
        while waiting and self._running < self.max_batch:
            r = waiting[0][2]
            need_kv = self._kv_need(r)
            if need_kv > self.kv_capacity:
                heapq.heappop(waiting)
                self.levels.change(self.env.now, -1, 0)
                r.s_wait += self.env.now - r.t_ready  # it waited in the admission queue
                self._wait_starts.append(r.t_ready)
                self._wait_ends.append(self.env.now)
                self._wait_counts.append(1)
                self._reject(r)
                continue
            if self._kv_used + need_kv > self.kv_capacity:
                break
            tokens = self._take(r, budget, not batch and self._block_at < 0)
            if tokens is None:
                break
            heapq.heappop(waiting)
            self.levels.change(self.env.now, -1, 0)
            budget -= tokens
            r.admitted = True
            self._admit_seq += 1
            r.admit_seq = self._admit_seq
            r.kv = need_kv
            self._kv_used += need_kv
            self._running += 1
            batch.append(r)

    def _take(self, r: TokenRequest, budget: int, alone: bool) -> int | None:
        """Tokens r processes in the coming iteration (kept in `r.chunk`), or None when it
        must wait for another iteration. A visit larger than the budget runs alone (when
        the batch has nothing yet); with chunked prefill a prefill takes what the budget
        has left instead."""
        need = r.visit_tokens() - r.done
        if need <= budget or alone:
            take = need
            if self.chunked and r.k == 0 and not r.recompute and budget > 0:
                take = min(need, budget)
        elif self.chunked and r.k == 0 and not r.recompute and budget > 0:
            take = budget
        else:
            return None
        r.chunk = take
        return take

    # --- KV memory -----------------------------------------------------------------------

    def _kv_need(self, r: TokenRequest) -> float:
        """KV bytes r needs at admission: its final context's (`wait`), or its current
        context's (`preempt`, grown per token from there)."""
        prog = r.prog
        if not self.preempt:
            return prog.kv_final
        total = prog.prompt + prog.output
        return prog.kv_final * (prog.prompt + r.generated) / total if total else 0.0

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
            self._preempt(victim)
        for r in growing:
            r.kv += r.grow
            self._kv_used += r.grow
        return batch

    def _preempt(self, victim: TokenRequest) -> None:
        """Free the victim's KV and queue it for readmission (first, unless EDF), to
        recompute its KV unless it had not started its prefill."""
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
        self.levels.change(self.env.now, 1, 0)

    # --- decode spans ----------------------------------------------------------------------

    def _span_length(self, batch: list) -> int:
        """Iterations the formed batch repeats as a decode span (1: step it)."""
        return span_length(batch, self.preempt, self._kv_used, self.kv_capacity)

    def _run_span(self, batch: list, now: float, k: int):
        """Run `k` decode-only iterations of `batch` as one SimPy wait (a generator to
        `yield from`): their times in closed form, then every iteration but the last applied
        in bulk (`_apply_silent`) and the last ended as a stepped one would end. A visit
        that becomes ready meanwhile cuts the span at the first iteration it could join."""
        block = self._cohort if self._block_at >= 0 else None
        d = price_span(batch, k, self.book, block)
        t = np.cumsum(np.concatenate(([now], d)))  # iteration starts (then the last end)
        heap = self._heap
        if heap:  # a visit already waiting for its ready time joins the iteration after it
            k = min(k, self._first_start_at_or_after(t, heap[0][0], k))
        size = len(batch) + (len(block.members) if block is not None else 0)
        self._begin(size, now, float(d[0]))
        span = DecodeSpan(batch, d, t, k, self._iteration_ewma_s, self.env.event())
        self._span = span
        self._schedule_span_end(span)
        yield span.done
        self._span = None
        k = span.k
        self._apply_silent(span, k)
        self._end_iteration(batch, float(d[k - 1]), float(size))

    def _first_start_at_or_after(self, t: np.ndarray, ready_s: float, k: int) -> int:
        """The first iteration j >= 1 of the span starting at or after `ready_s` (else k)."""
        j = int(np.searchsorted(t[1:k], ready_s, side="left")) + 1
        return min(j, k)

    def _schedule_span_end(self, span: DecodeSpan) -> None:
        """Wake the server at the span's end (a later cut schedules an earlier wake-up)."""
        tag = span.tag = object()
        tm = self.env.timeout(float(span.t[span.k]) - self.env.now)
        tm.callbacks.append(lambda _e: self._span_end_reached(span, tag))

    @staticmethod
    def _span_end_reached(span: DecodeSpan, tag: object) -> None:
        """A scheduled end fired: it ends the span unless a cut superseded it."""
        if span.tag is tag and not span.done.triggered:
            span.done.succeed()

    def _cut_span(self, span: DecodeSpan, ready_s: float) -> None:
        """A visit is ready at `ready_s` inside the span: end it at the first iteration the
        visit can join (an iteration already begun cannot take it)."""
        j = self._first_start_at_or_after(span.t, ready_s, span.k)
        if j < span.k:
            span.k = j
            self._schedule_span_end(span)

    def flush(self, now: float) -> None:
        """The run ends at `now` inside a span: apply the iterations ended by then (for the
        server's series and counts; requests in flight keep no results). The block's
        members are brought up to date (what stepping would have left in them)."""
        span = self._span
        if span is not None:
            begun = bisect.bisect_right(span.t, now, 0, span.k)
            self._apply_silent(span, begun)
            self._span = None
        self._cohort.dissolve()

    def _apply_silent(self, span: DecodeSpan, k: int) -> None:
        """Apply iterations 0..k-2 of the span (their ends) and the starts of 1..k-1: what
        stepping them does, in bulk. Token times and KV sums are computed as stepping
        computes them; per-request busy and transfer sums agree to rounding."""
        if k < 2:
            return
        batch, d, t = span.batch, span.d, span.t
        n = k - 1
        ends = t[1:k]
        b = len(batch)
        busy = float(np.sum(d[:n]))
        if self._block_at >= 0:  # the block's members: on the cohort's timeline
            b += len(self._cohort.members)
            self._cohort.end_silent(busy, ends)
        self.levels.held(busy)
        self.visits += b * n
        self.span_events += b * n
        self._seq += b * n
        last_end = float(ends[-1])
        for r in batch:
            r.s_busy += busy
            r.times.frombytes((ends + r.down_s).tobytes())
            r.generated += n
            r.xfer += r.down_s * n
            r.nbytes += r.prog.step_out * n
            r.k += n
            r.ctx = r.prog.ctx_first + r.k - 1
            r.t_ready = last_end
        tokens = self._tokens_done + b * np.arange(1, n + 1, dtype=float)  # whole numbers
        self.series_tokens.extend(ends, tokens)
        self._tokens_done = float(tokens[-1])
        self._iteration_ewma_s = self._ewma_through(span.ewma0, d[1:k].tolist())
        self._iteration_sq_ewma = self._ewma_through(
            self._iteration_sq_ewma, (d[1:k] ** 2).tolist()
        )
        self.iterations += n
        if self.preempt:
            self._grow_kv_silently(batch, ends)

    def _grow_kv_silently(self, batch: list, ends: np.ndarray) -> None:
        """KV growth of the span's silent iterations, summed request by request in
        `_grow_kv`'s order (the same floats as stepping), and its series points."""
        n, b = len(ends), len(batch)
        grows = np.array([r.grow for r in batch])
        # np.cumsum adds one element at a time, left to right: the sums stepping makes
        sums = np.cumsum(np.concatenate(([self._kv_used], np.tile(grows, n))))
        trajectory = sums[b::b]
        self._kv_used = float(trajectory[-1])
        for r in batch:
            held, g = r.kv, r.grow
            for _ in range(len(ends)):
                held += g
            r.kv = held
        self.series_kv.extend(ends, trajectory)
