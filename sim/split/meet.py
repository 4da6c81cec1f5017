"""The exact DP's label search for one latency and no loop: both halves at once, cut.

Why: `sim.split.front` walks the units in order, a dozen numpy calls per unit; for 50
units the calls, not the labels, cost most of its time, and its front holds every
non-dominated label (~350 per location on the benchmark's chain).

Two fronts grow in the same numpy calls: one forward over the first half of the units
(from the input, on the client), one backward over the second half (from the output, back
on the client: the reversed chain, where an uplink becomes a downlink). Each step adds a
block of `BLOCK` units: a label extends by each placement of the block (the block's last
unit at the row's location, the others at either: 2^(BLOCK - 1) options). Rows are
(chain, location); per row one stable argsort by latency and a running minimum of the work
keep the labels with less work than every faster one. The halves meet at the middle
boundary: for each forward label (latency t) and location of the second half's first
unit, the backward front's best completion is its slowest label that fits (t_b <= limit -
t - switch), its work falling strictly with its latency: one `np.searchsorted` per location.
Least total work, then least latency, is the optimum, traced back through both halves.

Cut (`sim.split.lagrange`): a label also goes when its work plus a lower bound on the work
its completion needs exceeds a guess G of the optimum (the Lagrangian bound from the
start plus `GAP` of it, or `GAP_UNIT` x the mean work of a unit when more: the duality gap
is about a fraction of one unit's work, which matters where the optimum is little work). If the best plan found has work <= G, every plan of work <= G survived the
cut (its labels' bounds are at most its work), so it is the optimum; else the search runs
again with G = the work of the plan found (it exists, so nothing better is cut), or, when
none was found, without the cut. The first guess holds for 59 of 60 of the benchmark's
random chains (seeds 0-59).

Exact: times are summed in floating point, never rounded; labels are dropped only when
dominated, when they cannot meet the limit even with the least latency of the rest, or by
the cut (with a relative slack of 1e-9 for the bounds' float noise). Sums over the two
halves and blocks round differently from one forward sum, so among plans of equal work
(up to float noise) either may be returned. When the caller's exact check rejects the best
(float noise at the limit), the forward search takes over, which tries the next best in
the labels' order.

The cut passes hold the labels as one flat list (`_cut_fronts`): with the cut, the
dominance test drops few labels beyond it (on the benchmark's chains at most about half
as many again survive without it) and its sort costs more than they do, so a label goes
by its bounds only: each carries its slack to the latency room and to the cut of its row
(chain, location), which a step changes by a table of its own (`_steps`), and a step is
a handful of numpy calls. The best pair is found as below, the backward labels of each row
first thinned to their front. Without dominance a loose cut could keep exponentially many
labels: past `MAX_FLAT` after a step the pass runs again with the fronts below.

Speed: numpy's fixed cost per call (about a microsecond here) outweighs the arithmetic on
arrays of a few hundred elements, so the code counts calls and keeps inner loops long and
contiguous. A step's flat list holds its candidates first (candidate x labels + label),
so adding the labels to a candidate's additions is one contiguous loop; the first step
keeps every candidate from the client untested (the second step's test drops every
extension of one it would have dropped); one `maximum` tests both slacks. The blocks'
tables are gathered from the units' by fixed index arrays (`_paths`, cached per chain
length), and the bounds are two scans from the middle out (`sim.split.lagrange`). On the
benchmark's 50-unit chain a call takes ~0.28 ms (~0.39 ms before these changes).

Layout: a front is (plane, chain, location, M): planes latency, work and (with the cut)
work + lam x latency; M the widest row's labels, shorter rows padded with an infinite
latency (dropped at the next step).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from sim.split import front, lagrange
from sim.split.labels import _SLACK, Criteria, server_times

_INF = np.inf
BLOCK = 3  # units per step of each chain
GAP = 0.015  # the first guess of the optimum: the bound from the start + 1.5 % of it,
GAP_UNIT = 0.3  # or + 0.3 x the mean work of a unit if more (loose deadlines: little work)
_CUT_SLACK = 1e-9  # relative: float noise of the bounds never cuts a label of that work
_ROWS = np.arange(2)[None, :, None]  # (1, r, 1): each backward location's row
MIN_UNITS = 24  # below it the forward search is as fast (fewer fixed costs)
# the unit L of `_costs` (padding a chain's first block): a label stays where it is, as it is
_KEEP = np.array([[[0.0, _INF], [_INF, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])


@lru_cache(maxsize=32)
def _units(L: int, block: int) -> np.ndarray:
    """The units each chain adds at each step, (chain, steps, block): forward 0..mid-1,
    backward L-1..mid, each led by steps that keep the labels (unit index L) to a whole
    number of blocks of equal count. Cached (the same for every chain of L units): read
    only."""
    mid = L // 2
    steps = -(-(L - mid) // block)
    fwd = [L] * (steps * block - mid) + list(range(mid))
    bwd = [L] * (steps * block - (L - mid)) + list(range(L - 1, mid - 1, -1))
    units = np.array([fwd, bwd]).reshape(2, steps, block)
    units.flags.writeable = False
    return units


@lru_cache(maxsize=32)
def _paths(L: int, block: int) -> np.ndarray:
    """Per unit j of a block, where `_blocks` reads what it adds in `_costs`' table
    flattened, (block, steps, latency / work, chain, to, from, option): on an option's
    path, unit j is entered from unit j - 1's location (the block's `from` for the first)
    and runs at its own (the option's bit for j, the first unit's most significant, 1 =
    server; `to` for the last). Cached: read only."""
    units = _units(L, block)  # (chain, S, B)
    S, P = units.shape[1], 1 << (block - 1)
    step, plane, chain, to, src, opt = np.ix_(*(np.arange(k) for k in (S, 2, 2, 2, 2, P)))
    loc = [(opt >> (block - 2 - j)) & 1 for j in range(block - 1)] + [to]
    paths = np.empty((block, S, 2, 2, 2, 2, P), np.intp)
    for j in range(block):
        unit = chain * (L + 1) + units[chain, step, j]
        paths[j] = ((unit * 2 + plane) * 2 + (loc[j - 1] if j else src)) * 2 + loc[j]
    paths.flags.writeable = False
    return paths


def _costs(c: Criteria) -> np.ndarray:
    """Per unit (L + 1: the last keeps labels), what a label adds in each direction, (chain,
    unit, latency / work, from, to): forward the switch into unit u (at boundary u),
    backward the switch out of it (at boundary u + 1); the work of the unit on the server."""
    L = c.work.shape[0]
    cc = np.where(c.allowed, c.cc[0], _INF)
    cs, up, dn = server_times(c), c.up[0], c.dn[0]
    table = np.empty((2, L + 1, 2, 2, 2))
    t = table[:, :L, 0]
    t[:, :, 0, 0] = cc
    t[:, :, 1, 1] = cs
    np.add(dn[:L], cc, out=t[0, :, 1, 0])
    np.add(up[:L], cs, out=t[0, :, 0, 1])
    np.add(up[1:], cc, out=t[1, :, 1, 0])
    np.add(dn[1:], cs, out=t[1, :, 0, 1])
    table[:, :L, 1, :, 0] = 0.0
    table[:, :L, 1, :, 1] = c.work[:, None]
    table[:, L] = _KEEP
    return table


def _blocks(table: np.ndarray, units: np.ndarray) -> np.ndarray:
    """What a label adds over each step's block of units in each chain (steps, latency /
    work, chain, to, from, option, 1): an option is where the block's other units run
    (the first most significant bit, 1 = server), `to` where its last unit runs. `table`:
    per unit, as `_costs`; `units`: `_units(L, block)`. The units' values are summed in
    the block's order, each gathered by one `take` (`_paths`)."""
    flat = table.reshape(-1)
    paths = _paths(table.shape[1] - 1, units.shape[2])
    out = flat.take(paths[0])
    for path in paths[1:]:
        out += flat.take(path)
    return out[..., None]


def search(c: Criteria, accept, block: int = BLOCK) -> np.ndarray | None:
    """The least-work placement within the limit that `accept(on_client)` confirms, or None
    (as `front.search`, for criteria where `front.applies`)."""
    L = c.work.shape[0]
    if L < MIN_UNITS:
        return front.search(c, accept)
    limit = float(c.limit[0]) * (1 + _SLACK)
    units = _units(L, block)
    table = _costs(c)
    add = _blocks(table, units)
    ref = lagrange.reference(table[0, :L, 0], table[0, :L, 1, 0], float(c.dn[0, L]), limit)
    cross = _cross(c)
    lam, lower, rest = lagrange.bounds(add[..., 0], cross, limit, ref)
    total = float(c.work.sum())
    rest[..., 1] += _CUT_SLACK * (lam * limit + total)  # bounds' float noise never cuts
    room, cut = rest[..., :1], rest[..., 1:]
    guess = lower + max(GAP * abs(lower), GAP_UNIT * total / L)
    steps = _steps(add, lam, rest)

    def cut_pass(bound: float):
        """The best plan of work <= `bound` (None when there is none: the cut is tight)
        and how to finish it: flat labels while few, else the fronts with dominance."""
        found = _cut_fronts(steps, bound * (1 + _CUT_SLACK))
        if found is _TOO_MANY:
            key = lagrange.priced(add[:, :1], add[:, 1:], lam)  # + lam x latency + work
            with_key = np.concatenate([add, key], axis=1)
            found = _fronts(with_key, room, cut + bound * (1 + _CUT_SLACK))
            best = None if found is None else _best(cross, found[0], limit)
            return best, lambda: _finish(c, found, best, units, accept)
        best = None if found is None else _cut_best(cross, found[0], limit)
        return best, lambda: _cut_finish(c, found, best, units, accept)

    best, finish = cut_pass(guess)
    if best is not None and best[0] <= guess:
        return finish()
    if best is not None:  # a plan of that work exists: nothing better is cut
        best, finish = cut_pass(best[0])
        if best is not None:  # (always: the plan found survives its own cut)
            return finish()
    found = _fronts(add, room, None)  # no plan near the bound: every label
    best = None if found is None else _best(cross, found[0], limit)
    if best is None:
        return None
    return _finish(c, found, best, units, accept)


def _fronts(add, room, cut):
    """Both chains' fronts after the last step and each step's picks, or None when a
    chain has no label left. `add` (steps, planes, ...): what a label's latency, work and
    (with a `cut`, (steps, 4, 1)) its work + lam x latency gain, which must stay within
    the cut."""
    planes = add.shape[1]
    width = 2 * add.shape[5]  # a row's candidates per label: from either location, options
    state, picks = _start(add)
    less, minacc, copyto = np.less, np.minimum.accumulate, np.copyto
    offsets = np.arange(4)[:, None]
    for k in range(len(picks), add.shape[0]):
        m = state.shape[3]
        n = width * m
        rows = (state[:, :, None, :, None, :] + add[k]).reshape(planes, 4 * n)  # (chain, to)
        order = rows[0].reshape(4, n).argsort(axis=1, kind="stable")
        offset = offsets * n
        order += offset
        srt = rows.take(order, axis=1)  # (planes, 4, n): each row in latency order
        ts, ws = srt[0], srt[1]
        keep = ts <= room[k]
        if cut is not None:
            keep &= srt[2] <= cut[k]
        keep[:, 1:] &= less(ws[:, 1:], minacc(ws, axis=1)[:, :-1])
        count = keep.sum(axis=1).tolist()
        if not (count[0] or count[1]) or not (count[2] or count[3]):
            return None  # a half with no label left
        drop = ~keep
        copyto(ts, _INF, where=drop)
        pos = drop.argsort(axis=1, kind="stable")[:, : max(count)]  # kept first, in order
        pos += offset
        picks.append((order.take(pos), m))
        state = srt.reshape(planes, 4 * n).take(pos, axis=1).reshape(planes, 2, 2, -1)
    return state, picks


def _start(add: np.ndarray) -> tuple[np.ndarray, list]:
    """Both chains' fronts before the search's first step: one label on the client, or,
    when there is more than one step, every option of the first block from there (at most
    one label per option and row: nothing to prune but by the bounds, which the next step
    applies to their extensions; any label left is a real partial placement). Saves a
    step's dozen numpy calls."""
    planes, options = add.shape[1], add.shape[5]
    if add.shape[0] < 2:
        state = np.full((planes, 2, 2, 1), _INF)  # (plane, chain, location, label)
        state[:, :, 0, 0] = 0.0  # both chains start on the client
        return state, []
    state = np.ascontiguousarray(add[0, :, :, :, 0, :, 0])  # from the client, per option
    pick = np.broadcast_to(np.arange(options), (4, options))  # (from 0, option, label 0)
    return state, [(pick, 1)]


def _cross(c: Criteria) -> np.ndarray:
    """The switch at the middle boundary, (from, to) locations."""
    mid = c.work.shape[0] // 2
    cross = np.zeros((2, 2))
    cross[0, 1], cross[1, 0] = c.up[0, mid], c.dn[0, mid]
    return cross


def _best(cross: np.ndarray, state: np.ndarray, limit: float):
    """The best pair of a forward and a backward label within the limit (least work, then
    least latency) as (work, backward location, forward location, forward index, backward
    index), or None. `cross`: the switch at the middle boundary (`_cross`)."""
    (ft, bt), (fw, bw) = state[0], state[1]  # (2, m) each: per location
    head = ft[:, None, :] + cross[:, :, None]  # (a, r, m): to the second half's first unit
    room = limit - head
    partner = np.empty(head.shape, np.int64)
    for r in (0, 1):  # the backward label that fits with the least work: the slowest
        partner[:, r] = np.searchsorted(bt[r], room[:, r], "right")
    partner -= 1
    flat = partner + _ROWS * bt.shape[1]  # in the flat (r, m) backward front
    lat = head + bt.take(flat)
    work = fw[:, None, :] + bw.take(flat)
    work[(partner < 0) | ~(lat <= limit)] = _INF
    least = work.min()
    if not least < _INF:
        return None
    best = int(np.where(work == least, lat, _INF).argmin())  # ties: the least latency
    a, r, i = np.unravel_index(best, lat.shape)
    return float(least), int(r), int(a), int(i), int(partner.flat[best])


def _finish(c: Criteria, found, best, units, accept) -> np.ndarray | None:
    """The best pair's placement, traced back through both chains, if `accept` confirms
    it; else the forward search (which tries the next best in the labels' order)."""
    _, r, a, i, j = best
    picks = found[1]
    B = units.shape[2]
    cands = [_trace(picks, B, 0, a, i), _trace(picks, B, 1, r, j)]
    on_client = _place(units, cands, c.work.shape[0])
    if accept(on_client):
        return on_client
    return front.search(c, accept)


def _trace(picks: list, block: int, chain: int, loc: int, i: int) -> list[int]:
    """One chain's candidate at each step (`_block_places`' index) from its label
    (location, index) at the end: a pick is a flat position in its step's (chain x
    location) rows of (from, option, label) candidates."""
    P = 1 << (block - 1)
    cands = [0] * len(picks)
    for k in range(len(picks) - 1, -1, -1):
        pick, m = picks[k]
        src_opt, i = divmod(int(pick[2 * chain + loc, i]) % (2 * P * m), m)
        src, opt = divmod(src_opt, P)
        cands[k] = loc * P + opt
        loc = src
    return cands


def _place(units: np.ndarray, cands: list, L: int) -> np.ndarray:
    """The placement (L,) from both chains' candidates at each step (chain, step): each
    block's units as `_block_places` says; units L (the padding) are dropped."""
    places = np.zeros(L + 1, bool)
    places[units] = _block_places(units.shape[2])[cands]
    return places[:L]


@lru_cache(maxsize=8)
def _block_places(block: int) -> np.ndarray:
    """Per candidate (the last unit's location x 2^(block - 1) + option), whether each
    unit of the block runs on the client, (candidates, block): the last at the location,
    the others by the option's bits (the last bit the second-to-last unit's, 1 = server).
    A table, so a trace sets every block at once. Cached: read only."""
    P = 1 << (block - 1)
    table = np.empty((2 * P, block), bool)
    for cand in range(2 * P):
        loc, opt = divmod(cand, P)
        for j in range(block - 1, -1, -1):
            table[cand, j] = loc == 0
            loc, opt = opt & 1, opt >> 1
    table.flags.writeable = False
    return table


# The cut passes: labels as one flat list, dropped by the bounds only (no dominance test).
# With the cut, dominance drops few labels more (its sort costs more than they do), and
# the labels' columns carry their slack to the bounds, so a step is a few numpy calls.
_T, _W, _T_SLACK, _KEY_SLACK, _ROW = range(5)  # a label's columns
MAX_FLAT = 4096  # more labels than this after a step: the fronts with dominance take over
_TOO_MANY = object()
_ROW_CHANGE = np.subtract.outer(np.arange(2.0), np.arange(2.0))[:, :, None]  # (to, from, 1)


def _steps(add: np.ndarray, lam: float, rest: np.ndarray) -> np.ndarray:
    """What each step adds to a label, (steps, candidate, row, column): candidates (to
    location, option), rows (chain, from location), columns latency, work, the change of the
    label's slack to its room (latency) and to its cut (work + lam x latency: the cut less
    the guess of the optimum), and the change of its row. A label's slack is its value less
    the bound of its row; it changes by the value added plus the old row's bound less the
    new row's (the first step's old bounds are 0: the labels start at 0). `add`: as
    `_blocks`; `rest`: the room and the cut per step and row, as `lagrange.bounds`. The
    columns are made one by one in `add`'s order (contiguous, so numpy's inner loops are
    long) and put in place by one copy."""
    S, P = add.shape[0], add.shape[5]
    t, w = add[:, 0, ..., 0], add[:, 1, ..., 0]  # (S, chain, to, from, option)
    now = rest.reshape(S, 2, 2, 2).transpose(3, 0, 1, 2)  # (bound, S, chain, location)
    change = np.empty((2, S, 2, 2, 2))  # (bound, S, chain, to, from): before less now
    np.negative(now[:, 0, :, :, None], out=change[:, 0])
    np.subtract(now[:, :-1, :, None], now[:, 1:, :, :, None], out=change[:, 1:])
    cols = np.empty((5,) + t.shape)  # (column, S, chain, to, from, option)
    cols[_T] = t
    cols[_W] = w
    np.add(t, change[0, ..., None], out=cols[_T_SLACK])
    key = cols[_KEY_SLACK]
    if lam == 0:
        np.copyto(key, lagrange.priced(t, w, lam))
    else:
        np.multiply(t, lam, out=key)
        key += w
    key += change[1, ..., None]
    cols[_ROW] = _ROW_CHANGE
    out = np.empty((S, 2, P, 2, 2, 5))  # (S, to, option, chain, from, column)
    out[...] = cols.transpose(1, 3, 5, 2, 4, 0)
    return out.reshape(S, 2 * P, 4, 5)


def _cut_fronts(steps: np.ndarray, guess: float):
    """Both chains' labels after the last step (n, column), and each step's picks (the
    flat candidate each label came from: candidate x the labels before + label), or None
    when no label is left. A label stays while its latency slack is <= 0 and its work +
    lam x latency slack <= `guess` (that column starts at -`guess`: one `maximum` tests
    both). `_TOO_MANY` when a step keeps more than `MAX_FLAT` labels (a loose cut: without
    dominance they would grow exponentially). Candidates come first in a step's flat
    list, so adding the labels to them is one contiguous numpy loop per candidate.

    The first step keeps every candidate from the client, untested: the second step's
    test drops every extension of one it would have dropped (a row's bounds are the
    least of its extensions', so they only tighten; float noise can only keep a label
    longer), and it saves a step's numpy calls."""
    state = steps[0, :, ::2] + np.array([0.0, 0.0, 0.0, -guess, 0.0])  # rows 0, 2: client
    state[:, 1, _ROW] += 2.0  # chain 1 (backward)
    state = state.reshape(-1, 5)
    picks = [np.arange(state.shape[0])]
    for k in range(1, steps.shape[0]):
        cand = steps[k].take(state[:, _ROW].astype(np.intp), axis=1)
        cand += state
        cand = cand.reshape(-1, 5)
        idx = (np.maximum(cand[:, _T_SLACK], cand[:, _KEY_SLACK]) <= 0.0).nonzero()[0]
        if idx.shape[0] == 0:
            return None
        if idx.shape[0] > MAX_FLAT:
            return _TOO_MANY
        picks.append(idx)
        state = cand.take(idx, axis=0)
    return state, picks


def _cut_best(cross: np.ndarray, state: np.ndarray, limit: float):
    """`_best` for `_cut_fronts`'s flat labels: (work, -, -, forward label, backward label)
    or None. The labels sorted by row (forward 0, 1, backward 2, 3), then latency; per
    backward row, they are thinned to those with less work than every faster one, so the
    slowest that fits a forward label is its least work; ties: the least latency, then
    backward row 2 (the client), then the forward label first in that order."""
    order = np.lexsort((state[:, _T], state[:, _ROW]))
    srt = state.take(order, axis=0)
    t, w, rows = srt[:, _T], srt[:, _W], srt[:, _ROW]
    n = t.shape[0]
    nf, split = rows.searchsorted((2.0, 3.0)).tolist()  # forward labels, then rows 2, 3
    if not 0 < nf < n:
        return None  # a chain with no label left
    head = t[:nf] + cross.T.take(rows[:nf].astype(np.intp), axis=1)  # (row, forward label)
    fw = w[:nf]
    keep = np.empty(n, bool)
    keep[:nf] = False
    for lo, hi in ((nf, split), (split, n)):
        if hi > lo:
            keep[lo] = True
            keep[lo + 1 : hi] = w[lo + 1 : hi] < np.minimum.accumulate(w[lo:hi])[:-1]
    split = int(np.count_nonzero(keep[:split]))  # row 3's first among the thinned
    back, t, w = order[keep], t[keep], w[keep]
    room = limit - head
    partner = np.empty(head.shape, np.intp)  # per row, in its thinned labels
    partner[0] = t[:split].searchsorted(room[0], "right")
    partner[1] = t[split:].searchsorted(room[1], "right")
    partner -= 1
    ok = partner >= 0
    partner[1] += split  # in both rows' thinned labels (-1, none: any label, not ok)
    lat = head + t.take(partner)
    work = np.where(ok & (lat <= limit), fw + w.take(partner), _INF)
    least = work.min()
    if not least < _INF:
        return None
    r, i = divmod(int(np.where(work == least, lat, _INF).argmin()), nf)
    return float(least), None, None, int(order[i]), int(back[partner[r, i]])


def _cut_finish(c: Criteria, found, best, units, accept) -> np.ndarray | None:
    """`_finish` for `_cut_fronts`: both chains' units placed from their labels' picks."""
    _, _, _, i, j = best
    picks = found[1]
    labels = [2] + [p.shape[0] for p in picks[:-1]]  # before each step (2: the start)
    cands = [_cut_trace(picks, labels, i), _cut_trace(picks, labels, j)]
    on_client = _place(units, cands, c.work.shape[0])
    if accept(on_client):
        return on_client
    return front.search(c, accept)


def _cut_trace(picks: list, labels: list, i: int) -> list[int]:
    """One chain's candidate at each step (`_block_places`' index) from its label `i` of
    the last step: a pick is a flat candidate (the candidate x `labels` before the step +
    the label it extends)."""
    cands = [0] * len(picks)
    for k in range(len(picks) - 1, -1, -1):
        cands[k], i = divmod(picks[k].item(i), labels[k])
    return cands
