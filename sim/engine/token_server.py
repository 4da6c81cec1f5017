"""The batching server of token mode: iterations, admission, KV cache, iteration prices.

One SimPy process runs the server. Requests' server visits wait in a time-ordered heap
until they are ready; each iteration takes every admitted request waiting for server
work (decode steps and prefills up to the token budget; with `chunked_prefill` the decode
steps first and prefills in chunks that fill the budget), admits waiting requests while
seats, KV memory and the budget allow, and lasts the batch roofline of
`sim.engine.batching`. Kept apart from the engine (`sim.engine.token`), which moves
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
from collections import deque
from collections.abc import Callable

import numpy as np
import simpy

from sim.config import LoadedScenario
from sim.engine.batching import BatchCost, weight_read_bytes
from sim.engine.levels import LevelSeries, ServerLevels
from sim.engine.planner import ProblemBook
from sim.engine.token_program import TokenRequest
from sim.errors import UserError


class DecodeSpan:
    """A run of decode-only iterations of one batch, advanced as one SimPy wait.

    `d` holds the iterations' durations (s), `t` their start times and, at `t[k]`, the end
    of the last; `k` shrinks when a visit becomes ready inside the span; `done` is the
    event the server waits on (succeeded with the `tag` of the current end);
    `ewma0` is the iteration-time EWMA after the first iteration began."""

    __slots__ = ("batch", "d", "t", "k", "ewma0", "done", "tag")

    def __init__(self, batch: list, d: np.ndarray, t: np.ndarray, k: int, ewma0: float,
                 done: simpy.Event):  # fmt: skip
        self.batch, self.d, self.t, self.k, self.ewma0 = batch, d, t, k, ewma0
        self.done = done
        self.tag: object | None = None


def kv_capacity_bytes(ld: LoadedScenario, book: ProblemBook) -> float:
    """KV bytes the server may hold: given, or a share of the memory the weights leave."""
    cfg = ld.scenario.simulation
    if cfg.kv_memory_gb is not None:
        return cfg.kv_memory_gb * 1e9
    mix = ld.scenario.workload.mix
    weights = 0.0
    for name in {c.model for c in mix}:
        k = next(i for i, c in enumerate(mix) if c.model == name)
        work = book.work(k, 1, 1 if mix[k].task == "generate" else 0)
        weights += float(work.weight_bytes.sum())
    free = ld.server_device.memory_bytes - weights
    if free <= 0:
        raise UserError("the models' weights do not fit in the server's memory")
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
    ):
        """`levels` keeps the monitored queue (requests waiting for admission) and busy
        (an iteration running) levels; `max_queue` bounds the admission queue;
        `visit_ended(r, t_s)` continues a request past a server visit, `reject(r)` loses it
        (queue full, KV too large)."""
        sc = ld.scenario
        cfg = sc.simulation
        self.env, self.ld, self.book, self.levels = env, ld, book, levels
        self.max_queue = max_queue
        self._visit_ended, self._reject = visit_ended, reject
        self._iteration_ewma_s = 0.0  # recent iteration time: the load-aware wait per pass
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
        self.preemptions = 0
        self.coalesce = cfg.coalesce
        self._span: DecodeSpan | None = None  # the decode span running, if any
        self.span_events = 0  # token transfers of coalesced iterations (request events)

    # --- set-up --------------------------------------------------------------------------

    def cost_model(self, klass: int) -> tuple[BatchCost, int]:
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
        admission queue (or rejected when it is full)."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, seq, r = heapq.heappop(heap)
            if r.admitted:
                self._ready.append(r)
            else:
                limit = self.max_queue
                if limit is not None and len(self._waiting) >= limit:
                    self._reject(r)
                    continue
                prio = r.priority if self.edf else 0.0
                key = (-1.0 if r.recompute and not self.edf else prio, seq, r)
                heapq.heappush(self._waiting, key)
                self.levels.change(self.env.now, 1, 0)

    def run(self):
        """The server's SimPy process: an iteration while a batch forms, else sleep until
        the next visit is ready."""
        env = self.env
        while True:
            now = env.now
            self._pull(now)
            batch = self._form_batch()
            if not batch:
                self.series_batch.set(now, 0)
                yield self._sleep(now)
                self._wake = None
                continue
            k = self._span_length(batch) if self.coalesce else 1
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
        dur, tokens = self._price(batch)
        self._begin(batch, now, dur)
        return dur, tokens

    def _begin(self, batch: list, now: float, dur_s: float) -> None:
        """Record an iteration's start: the iteration-time EWMA, counts, batch and busy."""
        a = self._iteration_alpha
        ewma = self._iteration_ewma_s
        self._iteration_ewma_s = dur_s if not self.iterations else a * dur_s + (1 - a) * ewma
        self.iterations += 1
        self.series_batch.set(now, len(batch))
        self.levels.change(self.env.now, 0, 1)

    def _ewma_through(self, ewma: float, durations) -> float:
        """The iteration-time EWMA after iterations of `durations` began (as `_begin` folds)."""
        a = self._iteration_alpha
        for d in durations:
            ewma = a * d + (1 - a) * ewma
        return ewma

    def _end_iteration(self, batch: list, dur_s: float, tokens: float) -> None:
        """Record the iteration's end and continue each of its requests."""
        now = self.env.now
        self.levels.change(now, 0, -1)
        self.levels.held(dur_s)
        self._tokens_done += tokens
        self.series_tokens.set(now, self._tokens_done)
        self.visits += len(batch)
        for r in batch:
            r.s_busy += dur_s
            self._visit_done(r, now)
        self.series_kv.set(now, self._kv_used)

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
        for r in batch:
            r.s_wait += now - r.t_ready
        self.series_kv.set(now, self._kv_used)
        return batch

    def _take_ready(self, budget: int, batch: list) -> int:
        """Add the ready visits that fit to `batch`; the token budget left."""
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
                self._reject(r)
                continue
            if self._kv_used + need_kv > self.kv_capacity:
                break
            tokens = self._take(r, budget, batch)
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

    def _take(self, r: TokenRequest, budget: int, batch: list) -> int | None:
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
        """How many iterations, from this one, the formed batch repeats unchanged but for
        every context growing by a token: 1 unless it is all decode steps of requests whose
        steps stay on the server (`span_ok`); then up to the first request's last step and,
        with `preempt`, up to the iteration whose KV growth would preempt."""
        k = 1 << 62
        for r in batch:
            if not r.span_ok or r.k == 0 or r.recompute:
                return 1
            k = min(k, r.prog.steps - r.k + 1)
        if self.preempt and k > 1:
            k = self._kv_span_limit(batch, k)
        return k

    def _kv_span_limit(self, batch: list, k: int) -> int:
        """With `preempt`, the iterations that surely grow KV without preempting.

        Stepping checks, at each iteration, the KV in use (a float sum, request by request)
        plus the batch's growth against the capacity. The span stops while that check is
        still clear by a margin far above the sums' rounding (1e-9 of the capacity), so the
        iterations near the boundary are stepped and decided exactly as stepping decides.
        """
        total = 0.0
        for r in batch:
            total += r.grow
        if total <= 0:
            return k
        margin = self.kv_capacity * (1 - 1e-9) - total - self._kv_used
        clear = int(margin // total) if margin > 0 else -1  # later iterations surely clear
        return max(1, min(k, clear + 1))

    def _run_span(self, batch: list, now: float, k: int):
        """Run `k` decode-only iterations of `batch` as one SimPy wait (a generator to
        `yield from`): their times in closed form, then every iteration but the last applied
        in bulk (`_apply_silent`) and the last ended as a stepped one would end. A visit
        that becomes ready meanwhile cuts the span at the first iteration it could join."""
        d = self._price_span(batch, k)
        t = np.cumsum(np.concatenate(([now], d)))  # iteration starts (then the last end)
        heap = self._heap
        if heap:  # a visit already waiting for its ready time joins the iteration after it
            k = min(k, self._first_start_at_or_after(t, heap[0][0], k))
        self._begin(batch, now, float(d[0]))
        span = DecodeSpan(batch, d, t, k, self._iteration_ewma_s, self.env.event())
        self._span = span
        self._schedule_span_end(span)
        yield span.done
        self._span = None
        k = span.k
        self._apply_silent(span, k)
        self._end_iteration(batch, float(d[k - 1]), float(len(batch)))

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
        server's series and counts; requests in flight keep no results)."""
        span = self._span
        if span is not None:
            begun = bisect.bisect_right(span.t, now, 0, span.k)
            self._apply_silent(span, begun)
            self._span = None

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
        self.iterations += n
        if self.preempt:
            self._grow_kv_silently(batch, ends)

    def _grow_kv_silently(self, batch: list, ends: np.ndarray) -> None:
        """KV growth of the span's silent iterations, summed request by request in
        `_grow_kv`'s order (the same floats as stepping), and its series points."""
        kv = self._kv_used
        grows = [r.grow for r in batch]
        trajectory = np.empty(len(ends))
        for j in range(len(ends)):
            for g in grows:
                kv += g
            trajectory[j] = kv
        self._kv_used = kv
        for r in batch:
            held, g = r.kv, r.grow
            for _ in range(len(ends)):
                held += g
            r.kv = held
        self.series_kv.extend(ends, trajectory)

    def _price_span(self, batch: list, k: int) -> np.ndarray:
        """Durations (s) of the span's k iterations (see `BatchCost.close_span`)."""
        costs: dict[BatchCost, None] = {}
        for r in batch:
            cost, m = r.prog.model
            costs[cost] = None
            self._add_visit(r, cost, m)
        total = None
        for c in costs:
            d = c.close_span(k)
            total = d if total is None else total + d
        return total

    # --- pricing -------------------------------------------------------------------------

    def _price(self, batch: list) -> tuple[float, float]:
        """The iteration's duration (s) and the tokens it processes (first server legs)."""
        costs: dict[BatchCost, None] = {}  # insertion-ordered: a deterministic float sum
        tokens = 0.0
        for r in batch:
            cost, m = r.prog.model
            costs[cost] = None
            if r.recompute:
                tokens += self._add_recompute(r, cost, m)
            else:
                tokens += self._add_visit(r, cost, m)
        return sum(c.close() for c in costs), tokens

    def _add_recompute(self, r: TokenRequest, cost: BatchCost, m: int) -> int:
        """Add the pass recomputing r's KV over its context on every server unit; its tokens."""
        prog = r.prog
        work = self.book.work(prog.klass, prog.prompt + r.generated, prog.output)
        own = np.maximum(work.pass_bytes - cost.weights[m], 0.0)
        for a in prog.server_units:
            cost.add_pass(m, a, a + 1, work.pass_flops, own)
        return prog.prompt + r.generated

    def _add_visit(self, r: TokenRequest, cost: BatchCost, m: int) -> int:
        """Add r's current server leg (a prefill pass or chunk, or a decode step); the
        tokens it counts (on the pass's or step's first server leg only)."""
        prog = r.prog
        legs = prog.pass_legs if r.k == 0 else prog.step_legs
        _, a, e = legs[r.leg]
        if r.k == 0:
            if r.chunk == prog.prompt:
                cost.add_pass(m, a, e, prog.pass_flops, prog.pass_own)
            else:
                cost.add_pass(m, a, e, *self._chunk_cost(r, cost.weights[m]))
            return r.chunk if r.leg == prog.pass_first_server else 0
        cost.add_step(prog.group, a, e, r.ctx)
        return 1 if r.leg == prog.step_first_server else 0

    def _chunk_cost(self, r: TokenRequest, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
