"""The exact DP: non-dominated (latencies, server work) labels over runs of identical units.

`dp`'s general search (token SLAs, generation loops, runs of identical units; for one
latency without a loop over distinct units `sim.split.meet` is faster). Units are walked in order; at each location (client or server) after a unit
it keeps every partial placement that no other beats on every latency criterion *and* on
server work (a Pareto front of labels). A placement that meets the limits with the least
work extends a label of that front, so the front's best feasible end is the optimum, with
no grid: times are summed in floating point, never rounded.

Criteria: one latency for a request (K = 1), or the prefill, the mean decode step and the
whole request for token SLAs (TTFT, TPOT, end-to-end: K = 2 or 3), each with its limit.
A generation loop makes the end depend on where the loop's start unit ran (a refund or an
extra crossing, see `problem.py`): labels carry that location as a tag from the loop start
on, and only labels of the same tag are compared.

Speed: transformer layers are identical units. A run of k identical units with identical
boundaries between them is crossed in one step: given where the run is entered and left and
how many of its units run on the client (j), the fewest switches inside the run are never
worse (a switch adds link time and no work, and only the count of client units matters when
units are equal), so the run has about 4k placements to try instead of 2^k, and a 32-layer
model is three runs. Units that differ are runs of one.

Tolerance: labels whose latencies differ only by float noise (relative 1e-12) count as
equal, so the front does not fill with copies of one placement summed in another order;
candidates are pruned at their limit with a relative slack of 1e-9, and the caller checks
the chosen placement exactly (`make_plan`), taking the next best when float noise put the
DP's best a hair over its limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from sim.split.problem import CLIENT_ONLY

CLIENT, SERVER = 0, 1
_TOL = 1e-12  # relative: latencies this close are one (float noise of the summation order)
_SLACK = 1e-9  # relative: candidates within it of a limit are kept for the exact check
TRIES = 16  # best candidates checked exactly before giving up (float noise only needs 2)
SMALL = 48  # candidates of a step up to which it runs in plain floats


@dataclass(frozen=True)
class Criteria:
    """K latency criteria over one chain of L units, with limits and the server work.

    Per criterion: unit times on the client (`cc`) and the server (`cs`), (K, L); the cost
    of a switch onto the server (`up`, uplink plus expected wait) and back (`dn`) at each
    boundary, (K, L + 1); the loop's extra crossing and refund, (K,); the limit (K,).
    """

    cc: np.ndarray
    cs: np.ndarray
    up: np.ndarray
    dn: np.ndarray
    loop_up: np.ndarray
    loop_down: np.ndarray
    limit: np.ndarray
    work: np.ndarray  # (L,) server work per unit
    allowed: np.ndarray  # (L,) where it may run: 0 server, 1 either, 2 client (`locations`)
    loop_start: int
    has_loop: bool


def criteria_of(problems: list, limits: list[float], work: np.ndarray) -> Criteria:
    """`Criteria` from split problems over the same units (one per latency criterion)."""
    n = problems[0].n_units

    def rows(name: str, width: int) -> np.ndarray:
        if len(problems) == 1:  # a view of the problem's array (read only here), no copy
            return np.asarray(getattr(problems[0], name), float).reshape(1, width)
        out = np.empty((len(problems), width))
        for k, p in enumerate(problems):
            out[k] = getattr(p, name)  # broadcast: a scalar wait fills its row
        return out

    return Criteria(
        cc=rows("client_time", n), cs=rows("server_time", n), up=rows("entry_times", n + 1),
        dn=rows("downlink_time", n + 1),
        loop_up=np.array([p.loop_uplink_time for p in problems], float),
        loop_down=np.array([p.loop_downlink_time for p in problems], float),
        limit=np.asarray(limits, float), work=np.asarray(work, float),
        allowed=problems[0].locations, loop_start=problems[0].loop_start,
        has_loop=any(p.has_loop for p in problems),
    )  # fmt: skip


def server_times(c: Criteria) -> np.ndarray:
    """The first criterion's server times, infinite where a unit is pinned to the client
    (for the searches that sum a unit's time as it is, never j x time over a run)."""
    if c.allowed.dtype == bool:
        return c.cs[0]
    return np.where(c.allowed == CLIENT_ONLY, np.inf, c.cs[0])


def same_units(c: Criteria) -> np.ndarray:
    """Per unit after the first, whether it equals its predecessor in every parameter (its
    times, work and whether the client may hold it): (L - 1,) bools."""
    unit = np.concatenate([c.cc, c.cs, c.work[None, :], c.allowed[None, :]])  # (rows, L)
    return (unit[:, 1:] == unit[:, :-1]).all(axis=0)


def runs_of(c: Criteria) -> list[tuple[int, int]]:
    """Maximal runs [s, e) of identical units whose inner boundaries are identical too;
    the loop's start unit is a run of its own (its location sets the tag)."""
    n = c.work.shape[0]
    same = same_units(c)
    bound = np.concatenate([c.up[:, :n], c.dn[:, :n]])
    same_bound = (bound[:, 1:] == bound[:, :-1]).all(axis=0)
    return _runs(same.tolist(), same_bound.tolist(), c.loop_start, n)


def runs_from(unit: np.ndarray, bound: np.ndarray, loop_start: int) -> list[tuple[int, int]]:
    """`runs_of` from the units' parameters (rows, L) and the boundaries' (rows, L): a
    unit joins its predecessor's run when every row is equal at both."""
    same_unit = (unit[:, 1:] == unit[:, :-1]).all(axis=0).tolist()
    same_bound = (bound[:, 1:] == bound[:, :-1]).all(axis=0).tolist()
    return _runs(same_unit, same_bound, loop_start, unit.shape[1])


def _runs(same_unit: list, same_bound: list, loop_start: int, n: int) -> list[tuple[int, int]]:
    """The runs of n units from whether each unit and each inner boundary equals its
    predecessor (`runs_from`)."""
    out, s = [], 0
    for u in range(1, n):
        joins = same_unit[u - 1] and loop_start not in (u, u - 1)
        if not (joins and (u - 1 == s or same_bound[u - 1])):
            out.append((s, u))
            s = u
    out.append((s, n))
    return out


@dataclass(frozen=True)
class Patterns:
    """The placements of a run of k identical units worth trying: for each, its first and
    last location, client units j, switches inside the run (up, down), and the placement."""

    first: np.ndarray
    last: np.ndarray
    j: np.ndarray
    n_up: np.ndarray
    n_down: np.ndarray
    on_client: np.ndarray  # (P, k) bool


@lru_cache(maxsize=256)
def patterns(k: int, allowed: int) -> Patterns:
    """Per (first, last, j) the placement with the fewest switches inside the run: one
    block, two blocks (one switch), or client-server-client / server-client-server.
    `allowed`: where the run's units may be (`SplitProblem.locations`): 0 (False) the
    server only, 1 (True) either, `CLIENT_ONLY` the client only (one pattern)."""
    rows: list[tuple[int, int, int, int, int, list[bool]]] = [
        (SERVER, SERVER, 0, 0, 0, [False] * k)
    ]
    if allowed == CLIENT_ONLY:
        rows = [(CLIENT, CLIENT, k, 0, 0, [True] * k)]
    elif allowed:
        rows.append((CLIENT, CLIENT, k, 0, 0, [True] * k))
        for j in range(1, k):
            rows.append((CLIENT, SERVER, j, 1, 0, [True] * j + [False] * (k - j)))
            rows.append((SERVER, CLIENT, j, 0, 1, [False] * (k - j) + [True] * j))
            if j >= 2:  # client j-1, server k-j, client 1
                rows.append(
                    (CLIENT, CLIENT, j, 1, 1, [True] * (j - 1) + [False] * (k - j) + [True])
                )
            if j <= k - 2:  # server 1, client j, server k-j-1
                rows.append((SERVER, SERVER, j, 1, 1, [False] + [True] * j + [False] * (k - j - 1)))
    cols = list(zip(*rows, strict=True))
    first, last, j, n_up, n_down = (np.array(x, np.int64) for x in cols[:5])
    on_client = np.array(cols[5], bool).reshape(len(rows), k)
    for a in (first, last, j, n_up, n_down, on_client):
        a.setflags(write=False)
    return Patterns(first, last, j, n_up, n_down, on_client)


@dataclass
class Front:
    """Labels at one location: latencies (n, K), work (n,), tag (n,), and where each came
    from (location and index in the previous run's front, pattern of this run)."""

    t: np.ndarray
    w: np.ndarray
    tag: np.ndarray
    parent_loc: np.ndarray
    parent: np.ndarray
    pattern: np.ndarray


def _empty(k: int) -> Front:
    z = np.zeros(0, np.int64)
    return Front(np.zeros((0, k)), np.zeros(0), z, z, z, z)


def _run_costs(c: Criteria, s: int, e: int, pat: Patterns) -> tuple[np.ndarray, np.ndarray]:
    """Latency (P, K) and work (P,) of each pattern of run [s, e), switches inside it
    included, the switch into it not."""
    k = e - s
    j = pat.j[:, None].astype(float)
    t = j * c.cc[:, s] + (k - j) * c.cs[:, s]
    if k > 1:  # the inner boundaries are equal: boundary s + 1 stands for them
        t = t + pat.n_up[:, None] * c.up[:, s + 1] + pat.n_down[:, None] * c.dn[:, s + 1]
    return t, (k - pat.j) * c.work[s]


def remaining(c: Criteria) -> np.ndarray:
    """(L + 1, 2, K): per boundary b and location of unit b - 1, the least latency of each
    criterion from there to the end (units b.., the way back to the client; the loop's
    refund is in the limits' bound), a lower bound that prunes labels which cannot fit."""
    L, K = c.work.shape[0], c.limit.shape[0]
    out = np.zeros((L + 1, 2, K))
    allowed = c.allowed.tolist()
    for k in range(K):
        cc, cs = c.cc[k].tolist(), c.cs[k].tolist()
        up, dn = c.up[k].tolist(), c.dn[k].tolist()
        r_c, r_s = 0.0, dn[L]
        col = [(r_c, r_s)]
        for u in range(L - 1, -1, -1):
            on_s = cs[u] + r_s
            if allowed[u] == CLIENT_ONLY:
                on_c = cc[u] + r_c
                r_c, r_s = on_c, dn[u] + on_c
            elif allowed[u]:
                on_c = cc[u] + r_c
                r_c, r_s = min(on_c, up[u] + on_s), min(dn[u] + on_c, on_s)
            else:
                r_c, r_s = up[u] + on_s, on_s
            col.append((r_c, r_s))
        out[:, :, k] = col[::-1]
    return out


def _step(
    c: Criteria, fronts: list[Front], s: int, e: int, bound: np.ndarray, rest: np.ndarray
) -> list[Front]:
    """Cross run [s, e) from both locations' fronts; the new front at each location, less
    the labels that cannot fit even with the least latency `rest` (K,) after it."""
    where = int(c.allowed[s])
    pat = patterns(e - s, where)
    n_in = sum(f.w.shape[0] for f in fronts)
    if e - s == 1 and n_in * pat.j.shape[0] <= SMALL:  # one unit: its times as they are
        cc, cs = c.cc[:, s].tolist(), c.cs[:, s].tolist()
        if where == CLIENT_ONLY:
            run = ([cc], [0.0])
        elif where:
            run = ([cs, cc], [float(c.work[s]), 0.0])
        else:
            run = ([cs], [float(c.work[s])])
        return _step_small(c, fronts, s, e, bound, rest, pat, *run)
    run_t, run_w = _run_costs(c, s, e, pat)
    if n_in * run_w.shape[0] <= SMALL:
        return _step_small(c, fronts, s, e, bound, rest, pat, run_t.tolist(), run_w.tolist())
    parts = []
    for loc, f in enumerate(fronts):
        n = f.w.shape[0]
        if n == 0:
            continue
        switch = pat.first != loc
        if loc == CLIENT:
            hop = np.where(switch[:, None], c.up[:, s], 0.0)
        else:
            hop = np.where(switch[:, None], c.dn[:, s], 0.0)
        t = (f.t[:, None, :] + (run_t + hop)[None, :, :]).reshape(-1, run_t.shape[1])
        w = (f.w[:, None] + run_w[None, :]).reshape(-1)
        P = run_w.shape[0]
        idx = np.repeat(np.arange(n), P)
        pid = np.tile(np.arange(P), n)
        if c.has_loop and s == c.loop_start:
            tag = (pat.first[pid] == SERVER).astype(np.int64)
        else:
            tag = f.tag[idx]
        parts.append((t, w, tag, np.full(idx.shape, loc), idx, pid))
    if not parts:  # nothing met the limits so far
        return [_empty(c.limit.shape[0]), _empty(c.limit.shape[0])]
    t, w, tag, ploc, idx, pid = (np.concatenate(x) for x in zip(*parts, strict=True))
    last = pat.last[pid]
    # before the loop's start the tag is not known yet: the looser bound (with the refund)
    limit = bound[tag] if e > c.loop_start else bound[1]
    ok = (t + rest[last] <= limit).all(axis=1)
    out = []
    for loc in (CLIENT, SERVER):
        sel = np.flatnonzero(ok & (last == loc))
        keep = sel[_pareto(t[sel], w[sel], tag[sel])]
        out.append(Front(t[keep], w[keep], tag[keep], ploc[keep], idx[keep], pid[keep]))
    return out


def _step_small(c, fronts, s, e, bound, rest, pat, rt: list, rw: list) -> list[Front]:
    """`_step` in plain floats for a few candidates (numpy's per-call cost dominates
    there): the same operations on each element, the same order, the same front. `rt`,
    `rw`: the patterns' latencies and work (for one unit, its times: j x cc + (1 - j) x
    cs is exactly cs or cc)."""
    K = c.limit.shape[0]
    first, last = pat.first.tolist(), pat.last.tolist()
    hops = (c.up[:, s].tolist(), c.dn[:, s].tolist())  # entering from the client / server
    at_loop = c.has_loop and s == c.loop_start
    limits = bound.tolist()
    tagless = not e > c.loop_start  # before the loop's start: the looser bound
    rest_l = rest.tolist()
    cands: tuple[list, list] = ([], [])
    for loc, f in enumerate(fronts):
        hop = hops[loc]
        steps = [
            rt[p] if first[p] == loc else [rt[p][k] + hop[k] for k in range(K)]
            for p in range(len(rw))
        ]
        for i, (ft, fw, ftag) in enumerate(zip(f.t.tolist(), f.w.tolist(), f.tag.tolist(),
                                               strict=True)):  # fmt: skip
            for p, add in enumerate(steps):
                t = [ft[k] + add[k] for k in range(K)]
                tag = int(first[p] == SERVER) if at_loop else ftag
                lim, after = limits[1 if tagless else tag], rest_l[last[p]]
                if all(t[k] + after[k] <= lim[k] for k in range(K)):
                    cands[last[p]].append((tag, fw + rw[p], *t, loc, i, p))
    out = []
    for found in cands:
        found.sort(key=lambda x: x[: 2 + K])  # stable: as the lexsort of `_pareto`
        kept = _pareto_small(found, K)
        if not kept:
            out.append(_empty(K))
            continue
        cols = list(zip(*kept, strict=True))
        out.append(Front(
            np.array(cols[2 : 2 + K], float).T.reshape(-1, K), np.array(cols[1], float),
            np.array(cols[0], np.int64), np.array(cols[2 + K], np.int64),
            np.array(cols[3 + K], np.int64), np.array(cols[4 + K], np.int64),
        ))  # fmt: skip
    return out


def _pareto_small(found: list, K: int) -> list:
    """`_pareto` on candidates already sorted (tag, work, latencies), in plain floats."""
    kept = []
    scale = 1 + _TOL
    if K == 1:
        best, tag_of = 0.0, None
        for x in found:
            if x[0] != tag_of:
                tag_of, best = x[0], x[2]
                kept.append(x)
                continue
            if x[2] * scale < best:
                kept.append(x)
            best = min(best, x[2])
        return kept
    for i, x in enumerate(found):
        lim = [v * scale for v in x[2 : 2 + K]]
        if not any(y[0] == x[0] and all(y[2 + k] <= lim[k] for k in range(K))
                   for y in found[:i]):  # fmt: skip
            kept.append(x)
    return kept


def _pareto(t: np.ndarray, w: np.ndarray, tag: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated labels (least work first): a label goes when one of the
    same tag with no more work has every latency no more than its own (within noise)."""
    n = w.shape[0]
    if n <= 1:
        return np.arange(n)
    order = np.lexsort((*t.T[::-1], w, tag))
    ts, tg = t[order], tag[order]
    if t.shape[1] == 1:  # one latency: sorted by work, keep strictly faster labels
        x = ts[:, 0] * (1 + _TOL)
        keep = np.empty(n, bool)
        start = 0
        for stop in (*np.flatnonzero(tg[1:] != tg[:-1]) + 1, n):
            seg = x[start:stop]
            prev = np.minimum.accumulate(ts[start:stop, 0])
            keep[start] = True
            keep[start + 1 : stop] = seg[1:] < prev[:-1]
            start = stop
        return order[keep]
    le = (ts[None, :, :] <= ts[:, None, :] * (1 + _TOL)).all(axis=2)  # le[i, j]: j <= i
    le &= tg[None, :] == tg[:, None]
    dominated = np.tril(le, -1).any(axis=1)
    return order[~dominated]


def _ends(c: Criteria, fronts: list[Front]) -> list[tuple[float, tuple, int, int]]:
    """Every label that meets the limits at the end, as (work, latencies, location, index),
    best first: the way back to the client (and the loop's refund or crossing) added."""
    L = c.work.shape[0]
    found = []
    for loc, f in enumerate(fronts):
        if f.w.shape[0] == 0:
            continue
        tag = f.tag[:, None].astype(float)
        end = f.t + tag * c.loop_up if loc == CLIENT else f.t + c.dn[:, L] - tag * c.loop_down
        ok = (end <= c.limit * (1 + _SLACK)).all(axis=1)
        for i in np.flatnonzero(ok).tolist():
            found.append((float(f.w[i]), tuple(end[i].tolist()), loc, i))
    found.sort()
    return found


def _trace(c: Criteria, spans: list[tuple[int, int]], history: list, loc: int, i: int):
    """The placement of the label at (location, index) of the last run's front."""
    on_client = np.zeros(c.work.shape[0], bool)
    for (s, e), fronts in zip(reversed(spans), reversed(history), strict=True):
        f = fronts[loc]
        p = int(f.pattern[i])
        on_client[s:e] = patterns(e - s, int(c.allowed[s])).on_client[p]
        loc, i = int(f.parent_loc[i]), int(f.parent[i])
    return on_client


def search(c: Criteria, accept, spans: list[tuple[int, int]] | None = None) -> np.ndarray | None:
    """The least-work placement meeting every limit that `accept(on_client)` confirms
    (the exact check), or None when no label meets the limits; `spans` are `runs_of(c)`."""
    K = c.limit.shape[0]
    bound = (c.limit + np.vstack([np.zeros(K), c.loop_down])) * (1 + _SLACK)
    start = Front(
        np.zeros((1, K)), np.zeros(1), np.zeros(1, np.int64), *([np.zeros(1, np.int64)] * 3)
    )
    fronts = [start, _empty(K)]
    spans = runs_of(c) if spans is None else spans
    history = []
    rest = remaining(c)
    for s, e in spans:
        fronts = _step(c, fronts, s, e, bound, rest[e])
        history.append(fronts)
    for _, _, loc, i in _ends(c, fronts)[:TRIES]:
        on_client = _trace(c, spans, history, loc, i)
        if accept(on_client):
            return on_client
    return None
