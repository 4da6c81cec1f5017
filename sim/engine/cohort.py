"""The server-kept decode cohort: requests whose decode steps stay on the server, advanced
as one aggregate per iteration instead of one by one.

A `span_ok` request past a decode step (not its last) is due on the server again at
once (`TokenServer._end_iteration` carries it). While such requests stay in consecutive
iterations, each of their iterations does the same thing: the step's work joins the
batch price (one more step over the request's units, its context one token longer than
in the last iteration), the iteration's duration is added to the request's server time,
and the token goes down the fixed link. The cohort keeps them as a *block* that every
iteration takes whole, at the place the carried requests would have in the batch (after
the other ready visits, or before the first visit sequenced after them in the last
iteration; before admissions), and:

- prices them as aggregate per-unit sums per decode group (steps and summed context, in
  the difference form `BatchCost` accumulates; whole numbers, so their float sums are
  exact in any order and the iteration's price is the same float as stepping them);
- records every iteration's duration and end on a shared timeline (a decode span's
  silent iterations as one entry, applied as `TokenServer._apply_silent` applies them),
  and brings a member's own state (server time, token times, transfer time and bytes,
  step, context) up to date only when it is needed: at its last step, which it leaves
  the server through as a stepped request does, or when the block is dissolved. The
  updates are the stepped ones, one addition at a time in the same order, so the results
  are the same floats. Entries no member still needs are dropped.

The block is dissolved (every member made explicit again, in block order) where stepping
would treat members apart: a token budget the block does not fit in whole, and the end of
the run. It is never used with KV preemption, chunked prefill, more than one activation
dtype or `coalesce: false` (the per-iteration stepper, which stays the reference).
"""

from __future__ import annotations

import numpy as np

from sim.engine.batching import BatchCost, DecodeGroup
from sim.engine.token_program import TokenRequest


class Cohort:
    """The block of server-kept decode requests of one `TokenServer` (see the module)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.members: dict[TokenRequest, None] = {}  # insertion order is not block order
        # the timeline, one entry per stepped iteration or decode span's silent part:
        self._durations: list[float] = []  # an iteration's duration (s), or a span's sum
        self._first: list[int] = [0]  # the entry's first iteration in `_ends` (then the next's)
        self._ends: list[float] = []  # every iteration's end (s)
        self._compact_at = _COMPACT_FROM  # entries from which the timeline's head is dropped
        self._iterations = 0  # iterations the block has run
        self._leaving: dict[int, list[TokenRequest]] = {}  # iteration -> last steps in it
        self._groups: dict[DecodeGroup, int] = {}  # decode group -> members in it
        self._joins = 0  # joinings so far: later ones stand earlier in the block
        self.seq0 = 0  # the sequence number before the block's carried steps (last iteration)
        self.cost: BatchCost | None = None  # the members' batch-cost accumulator

    def join(self, carried: list) -> None:
        """Carried requests (in their carry order) join at the front of the block: their
        next decode step runs in the coming iteration with their explicit state."""
        j, now = len(self._durations), self._iterations
        self._joins += 1
        tag = -self._joins
        for pos, r in enumerate(carried):
            r.c_from = j
            r.c_key = (tag, pos)
            self.members[r] = None
            self._leaving.setdefault(now + r.prog.steps - r.k, []).append(r)
            self.cost = r.prog.model[0]
            g, a, e, _ = r.prog.step_adds[0]
            extra = g.extra
            if extra is None:
                extra = g.extra = np.zeros((2, len(g.n_diff)))
                self._groups[g] = 0
            self._groups[g] += 1
            extra[0, a] += 1.0
            extra[0, e] -= 1.0
            extra[1, a] += r.ctx
            extra[1, e] -= r.ctx

    def activate(self) -> None:
        """Mark the members' decode groups active for the coming iteration's price."""
        for g in self._groups:
            g.active = True

    def min_steps_left(self) -> int:
        """Iterations until the first member's last step, that one included."""
        return min(self._leaving) - self._iterations + 1

    def end_iteration(self, dur_s: float, now: float) -> list:
        """Record a stepped iteration of the block; its members whose last step it ran, in
        block order, brought up to date (their server time includes this iteration) and
        out of the block (the caller ends their visits as stepping would)."""
        j = len(self._durations)
        self._durations.append(dur_s)
        self._ends.append(now)
        leavers = self._leaving.pop(self._iterations, None)
        self._iterations += 1
        self._first.append(len(self._ends))
        if leavers is None:
            leavers = []
        elif len(leavers) > 1:
            leavers.sort(key=_block_order)
        for r in leavers:
            self.bring_up_to_date(r, j)
            r.s_busy += dur_s
            self._remove(r)
        self._advance(1.0)
        if j >= self._compact_at:
            self._compact()
        return leavers

    def end_silent(self, busy_s: float, ends: np.ndarray) -> None:
        """Record a decode span's silent iterations (their summed duration and ends): no
        member's last step is among them (the span ends at the first one's)."""
        n = len(ends)
        self._durations.append(busy_s)
        self._ends.extend(ends.tolist())
        self._iterations += n
        self._first.append(len(self._ends))
        self._advance(float(n))

    def _compact(self) -> None:
        """Drop the timeline's entries that no member still needs (memory stays bounded by
        the oldest member's stay, not the run's length)."""
        done = min((r.c_from for r in self.members), default=len(self._durations))
        self._compact_at = len(self._durations) + _COMPACT_FROM
        if done < len(self._durations) // 2:
            return
        shift = self._first[done]
        self._durations = self._durations[done:]
        self._first = [f - shift for f in self._first[done:]]
        self._ends = self._ends[shift:]
        for r in self.members:
            r.c_from -= done
        self._compact_at = len(self._durations) + _COMPACT_FROM

    def _remove(self, r: TokenRequest) -> None:
        """Take r's step (at its current context) out of its group's sums."""
        del self.members[r]
        g, a, e, _ = r.prog.step_adds[0]
        extra = g.extra
        extra[0, a] -= 1.0
        extra[0, e] += 1.0
        extra[1, a] -= r.ctx
        extra[1, e] += r.ctx
        left = self._groups[g] - 1
        if left:
            self._groups[g] = left
        else:
            del self._groups[g]
            g.extra = None

    def _advance(self, tokens: float) -> None:
        """Every member's context grows by `tokens` (the tokens its steps made)."""
        for g in self._groups:
            extra = g.extra
            if tokens == 1.0:
                extra[1] += extra[0]
            else:
                extra[1] += tokens * extra[0]  # whole numbers: exact

    def bring_up_to_date(self, r: TokenRequest, upto: int) -> None:
        """Apply to r the carried-step updates of timeline entries [r.c_from, upto), as
        `TokenServer._end_iteration` (an iteration) and `_apply_silent` (a span's silent
        part: one addition of its summed duration, of its count times the transfer and
        the bytes) apply them, one addition at a time in their order."""
        a = r.c_from
        if upto <= a:
            return
        first = self._first
        i0, i1 = first[a], first[upto]
        n = i1 - i0  # iterations
        down_s, out = r.down_s, r.prog.step_out
        if n == upto - a and n < _NUMPY_FROM:  # a few stepped iterations: plain floats
            durations, ends = self._durations, self._ends
            busy, xfer, nbytes = r.s_busy, r.xfer, r.nbytes
            for j in range(a, upto):
                busy += durations[j]
                xfer += down_s
                nbytes += out
            r.s_busy, r.xfer, r.nbytes = busy, xfer, nbytes
            r.times.extend([ends[i] + down_s for i in range(i0, i1)])
        else:
            r.s_busy = _running_sum(r.s_busy, self._durations[a:upto])
            if n == upto - a:  # no span: one transfer and its bytes per iteration
                r.xfer = _running_sum_of(r.xfer, down_s, n)
                r.nbytes = _running_sum_of(r.nbytes, out, n)
            else:
                count = np.diff(first[a : upto + 1]).astype(float)  # iterations per entry
                r.xfer = _running_sum(r.xfer, down_s * count)
                r.nbytes = _running_sum(r.nbytes, out * count)
            r.times.frombytes((np.array(self._ends[i0:i1]) + down_s).tobytes())
        r.generated += n
        r.k += n
        r.ctx = r.prog.ctx_first + r.k - 1
        r.t_ready = self._ends[i1 - 1]
        r.c_from = upto

    def dissolve(self) -> list:
        """Every member, up to date and out of the block, in block order."""
        if not self.members:
            return []
        j = len(self._durations)
        block = sorted(self.members, key=_block_order)
        for r in block:
            self.bring_up_to_date(r, j)
        for g in self._groups:
            g.extra = None
        self.members.clear()
        self._groups.clear()
        self._leaving.clear()
        return block


_NUMPY_FROM = 24  # entries from which numpy brings a member up to date faster
_COMPACT_FROM = 4096  # timeline entries between two attempts to drop its head


def _running_sum(start: float, values) -> float:
    """start + values[0] + values[1] + ..., added one at a time from the left (numpy's
    accumulate adds so: the same float as a Python loop)."""
    terms = np.empty(len(values) + 1)
    terms[0] = start
    terms[1:] = values
    return float(np.add.accumulate(terms)[-1])


def _running_sum_of(start: float, value: float, n: int) -> float:
    """start + value + value + ... (n times), added one at a time (`_running_sum`)."""
    terms = np.full(n + 1, value)
    terms[0] = start
    return float(np.add.accumulate(terms)[-1])


def _block_order(r: TokenRequest) -> tuple:
    return r.c_key
