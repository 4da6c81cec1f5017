"""The exact DP's answer by enumeration, for many request sizes at once.

A transformer is a few runs of identical units (embedding, N layers, head: see
`sim.split.labels`). Every placement worth trying is then one of the runs' patterns per
run: a few hundred "structures" (about 4N x 4 for a 32-layer model), the same for every
size of a request class. Evaluating them all for every size is a handful of numpy
operations over (sizes, structures, criteria), so the exact plans of thousands of sizes
cost about as much as a few one-at-a-time searches. Latencies are summed run by run in the
order the labels sum them, so a structure's latency is the label's bit for bit; the least
work among the structures that meet every limit (then the least latency, criterion by
criterion) is the labels' optimum. Used when the structures are few (`MAX_STRUCTURES`);
the labels search otherwise.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from sim.split.labels import CLIENT, SERVER, Criteria, patterns

MAX_STRUCTURES = 4096  # above it the label search is cheaper
_SLACK = 1e-9  # as the labels': candidates within it of a limit go to the exact check
_CLEAR = 1e-12  # latencies this far inside a limit meet it however they are summed
_BLOCK = 40_000  # sizes x structures per block: (criteria, sizes, structures) floats stay a few MB


@dataclass(frozen=True)
class BatchCriteria(Criteria):
    """`Criteria` of S sizes sharing units, spans and allowed units: a leading size axis
    on every array (cc, cs (S, K, L); up, dn (S, K, L + 1); loop terms and limits (S, K);
    work (S, L)); `allowed`, `loop_start` and `has_loop` as there."""

    kinds: tuple[int, ...] = ()  # which latency each criterion is, when the caller says

    @classmethod
    def of(cls, c: Criteria) -> BatchCriteria:
        """One size's criteria as a batch of one."""
        return cls(
            c.cc[None], c.cs[None], c.up[None], c.dn[None], c.loop_up[None],
            c.loop_down[None], c.limit[None], c.work[None], c.allowed, c.loop_start,
            c.has_loop,
        )  # fmt: skip


@dataclass(frozen=True)
class Structures:
    """Every structure of a chain of runs: the pattern of each run (Q, R), whether each
    run is entered by a switch up or down (Q, R), where the chain ends, and the tag (the
    loop start on the server)."""

    spans: tuple[tuple[int, int], ...]
    allowed: tuple[bool, ...]
    pattern: np.ndarray
    hop_up: np.ndarray
    hop_down: np.ndarray
    ends_server: np.ndarray
    tag: np.ndarray


def count(spans, allowed_of_run) -> int:
    """How many structures a chain of runs has."""
    total = 1
    for (s, e), allowed in zip(spans, allowed_of_run, strict=True):
        total *= patterns(e - s, allowed).j.shape[0]
        if total > MAX_STRUCTURES:
            break
    return total


@lru_cache(maxsize=64)
def structures(spans: tuple, allowed: tuple, loop_start: int, has_loop: bool) -> Structures:
    """All structures of the runs (at most `MAX_STRUCTURES`), in a fixed order."""
    pats = [patterns(e - s, a) for (s, e), a in zip(spans, allowed, strict=True)]
    pattern = np.array(list(itertools.product(*(range(p.j.shape[0]) for p in pats))), np.int64)
    pattern = pattern.reshape(-1, len(pats))
    first = np.stack([p.first[pattern[:, r]] for r, p in enumerate(pats)], axis=1)
    last = np.stack([p.last[pattern[:, r]] for r, p in enumerate(pats)], axis=1)
    before = np.concatenate([np.full((pattern.shape[0], 1), CLIENT), last[:, :-1]], axis=1)
    tag = np.zeros(pattern.shape[0], bool)
    if has_loop:
        r0 = next(r for r, (s, _) in enumerate(spans) if s == loop_start)
        tag = first[:, r0] == SERVER
    hop_up, hop_down = (
        (before == CLIENT) & (first == SERVER),
        (before == SERVER) & (first == CLIENT),
    )
    ends = last[:, -1] == SERVER
    keep = _undominated(pats, pattern, hop_up, hop_down, ends, tag)
    return Structures(
        spans, allowed, pattern[keep], hop_up[keep], hop_down[keep], ends[keep], tag[keep]
    )


def _undominated(pats, pattern, hop_up, hop_down, ends, tag) -> np.ndarray:
    """Structures no other beats for every size: among those with the same client units
    per run and the same end (so the same work and the same loop terms), one that crosses
    every boundary at least as often as another (switch costs are never negative) can
    only tie it; it goes (of equals, the first stays). Indices, in the original order."""
    j = np.stack([p.j[pattern[:, r]] for r, p in enumerate(pats)], axis=1)
    inner = [np.stack([p.n_up[pattern[:, r]], p.n_down[pattern[:, r]]], axis=1)
             for r, p in enumerate(pats)]  # fmt: skip
    hops = np.concatenate([hop_up, hop_down, *inner], axis=1).astype(np.int64)
    groups: dict[tuple, list[int]] = {}
    for q, key in enumerate(zip(map(tuple, j.tolist()), ends.tolist(), tag.tolist(),
                                strict=True)):  # fmt: skip
        groups.setdefault(key, []).append(q)
    keep = np.ones(pattern.shape[0], bool)
    for members in groups.values():
        for a in members:
            for b in members:
                if (
                    b != a
                    and keep[b]
                    and (hops[b] <= hops[a]).all()
                    and ((hops[b] < hops[a]).any() or b < a)
                ):
                    keep[a] = False
                    break
    return np.flatnonzero(keep)


def latencies(b: BatchCriteria, st: Structures, rows: slice) -> tuple[np.ndarray, np.ndarray]:
    """End latencies (K, S, Q) and work (S, Q) of every structure for the sizes `rows`,
    summed run by run as the labels sum them. Criteria first: every elementwise step
    then runs over the structures (the last axis), not over a handful of criteria."""
    t = w = 0.0
    for r, (s, e) in enumerate(st.spans):
        pat = patterns(e - s, st.allowed[r])
        k = e - s
        j = pat.j[None, None, :].astype(float)
        cc, cs = _column(b.cc, rows, s), _column(b.cs, rows, s)  # (K, S, 1)
        run_t = j * cc + (k - j) * cs  # (K, S, P)
        if k > 1:
            run_t = (run_t + pat.n_up[None, None, :] * _column(b.up, rows, s + 1)
                     + pat.n_down[None, None, :] * _column(b.dn, rows, s + 1))  # fmt: skip
        idx = st.pattern[:, r]
        # the switch into the run: its uplink or downlink at s, or none (+ 0.0 is exact)
        hop = np.where(
            st.hop_up[None, None, :, r], _column(b.up, rows, s),
            np.where(st.hop_down[None, None, :, r], _column(b.dn, rows, s), 0.0),
        )  # fmt: skip
        part = run_t[:, :, idx] + hop
        t = part if r == 0 else t + part  # 0.0 + x is x: times are never -0.0
        w = w + ((k - pat.j) * b.work[rows, None, s])[:, idx]
    tag = st.tag[None, None, :].astype(float)
    L = b.work.shape[1]
    loop_up, loop_down = b.loop_up[rows].T[:, :, None], b.loop_down[rows].T[:, :, None]
    on_client_end = t + tag * loop_up
    on_server_end = t + _column(b.dn, rows, L) - tag * loop_down
    return np.where(st.ends_server[None, None, :], on_server_end, on_client_end), w


def _column(a: np.ndarray, rows: slice, u: int) -> np.ndarray:
    """(K, S, 1) the sizes' values at unit or boundary u of an (S, K, n) criteria array."""
    return np.ascontiguousarray(a[rows, :, u].T)[:, :, None]


def ranked(b: BatchCriteria, st: Structures) -> np.ndarray:
    """One size's structures that meet every limit, best first: least work, then least
    latency criterion by criterion, then structure order (as `best` picks)."""
    t, w = latencies(b, st, slice(0, 1))
    t, w = t[:, 0, :], w[0]  # (K, Q), (Q,)
    ok = np.flatnonzero((t <= b.limit[0][:, None] * (1 + _SLACK)).all(axis=0))
    keys = [t[c, ok] for c in range(t.shape[0] - 1, -1, -1)]
    return ok[np.lexsort((ok, *keys, w[ok]))]


def best(b: BatchCriteria, st: Structures) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per size the best feasible structure's placement (S, L), whether one exists (S,)
    and whether its latencies are inside every limit by more than float noise (S,): then
    the exact check cannot disagree."""
    S, L = b.work.shape
    chosen = np.zeros(S, np.int64)
    found = np.zeros(S, bool)
    clear = np.zeros(S, bool)
    chunk = chunk_sizes(st)
    for a in range(0, S, chunk):
        rows = slice(a, min(a + chunk, S))
        t, w = latencies(b, st, rows)  # (K, S, Q), (S, Q)
        limit = b.limit[rows].T[:, :, None]  # (K, S, 1)
        ok = (t <= limit * (1 + _SLACK)).all(axis=0)
        cand = ok & (np.where(ok, w, np.inf) == np.where(ok, w, np.inf).min(axis=1)[:, None])
        for c in range(t.shape[0]):
            tc = np.where(cand, t[c], np.inf)
            cand &= tc == tc.min(axis=1)[:, None]
        pick = cand.argmax(axis=1)
        chosen[rows] = pick
        found[rows] = ok.any(axis=1)
        t_pick = t[:, np.arange(pick.shape[0]), pick].T  # (rows, K)
        clear[rows] = (t_pick <= b.limit[rows] * (1 - _CLEAR)).all(axis=1)
    return placements(st, chosen, L), found, clear


def chunk_sizes(st: Structures) -> int:
    """How many sizes to evaluate at once: blocks of about `_BLOCK` (size, structure) pairs
    (the results are elementwise per size, so any blocking gives the same floats)."""
    return max(1, _BLOCK // st.pattern.shape[0])


def placements(st: Structures, chosen: np.ndarray, n_units: int) -> np.ndarray:
    """The placements (len(chosen), L) of the given structures."""
    out = np.zeros((chosen.shape[0], n_units), bool)
    for r, (s, e) in enumerate(st.spans):
        out[:, s:e] = patterns(e - s, st.allowed[r]).on_client[st.pattern[chosen, r]]
    return out
