"""The exact DP's label search for one latency and no generation loop, in a few numpy calls
per unit (`sim.split.meet` for chains of `meet.MIN_UNITS` units or more; this search below
that, and where the caller's exact check rejects meet's best).

The labels of `sim.split.labels` for the common case (K = 1, no loop tag): after each unit,
the non-dominated (latency, server work) partial placements at the client and at the server,
held as one array, the client's labels first, each location's sorted by latency (so its work
falls strictly). A unit extends every label to both locations at once, a (2, n) array (row 0:
the unit on the client, row 1: on the server; columns in the labels' order); one stable
argsort per row (two sorted runs: timsort merges them in linear time) puts each row in
latency order, and a running minimum of the work (`np.minimum.accumulate`) keeps the labels
with less work than every faster one. Latencies are summed in the order the labels sum them
(label + (run + switch)), never rounded, so the front is the exact one; labels that cannot
meet the deadline even with the least latency after them (`labels.remaining`) are dropped.

Ties: a label with the same latency and more work than a later one of its row may stay (a
harmless extra label); the end is chosen as in `labels`: least work, then least latency,
each candidate confirmed by the caller's exact check.
"""

from __future__ import annotations

import numpy as np

from sim.split.labels import _SLACK, TRIES, Criteria, remaining, server_times


def applies(c: Criteria) -> bool:
    """Whether this search handles the criteria: one latency and no generation loop."""
    return c.limit.shape[0] == 1 and not c.has_loop


def _columns(c: Criteria) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per unit, what a label adds when extended (L, 2, 1): from the client (to the client:
    its client time; to the server: uplink + server time) and from the server (downlink +
    client time; server time), and the work (0; the unit's work). A unit the client may
    not hold has an infinite client time."""
    cc = np.where(c.allowed, c.cc[0], np.inf)
    cs, up, dn = server_times(c), c.up[0, :-1], c.dn[0, :-1]
    from_c = np.stack([cc, up + cs], axis=1)[:, :, None]
    from_s = np.stack([dn + cc, cs], axis=1)[:, :, None]
    work = np.stack([np.zeros_like(c.work), c.work], axis=1)[:, :, None]
    return from_c, from_s, work


def search(c: Criteria, accept) -> np.ndarray | None:
    """The least-work placement within the limit that `accept(on_client)` confirms, or None
    (as `labels.search`, for criteria where `applies`)."""
    L = c.work.shape[0]
    limit = float(c.limit[0]) * (1 + _SLACK)
    rest = remaining(c)[1:, :, 0]  # (L, 2): least latency after unit u at each location
    room = (limit - rest)[:, :, None]  # a label's latency must stay within it
    from_c, from_s, work = _columns(c)
    state = np.zeros((2, 1))  # rows: latency, work; the client's labels first
    n_client = 1
    picks = []
    add, less, minacc = np.add, np.less, np.minimum.accumulate
    for u in range(L):
        n = state.shape[1]
        cand = np.empty((2, 2, n))  # (latency / work, unit on the client / server, label)
        add(state[0, :n_client], from_c[u], out=cand[0, :, :n_client])
        add(state[0, n_client:], from_s[u], out=cand[0, :, n_client:])
        add(state[1], work[u], out=cand[1])
        order = cand[0].argsort(axis=1, kind="stable")
        order[1] += n
        srt = cand.reshape(2, 2 * n).take(order, axis=1)  # each row in latency order
        ws = srt[1]
        keep = srt[0] <= room[u]
        keep[:, 1:] &= less(ws[:, 1:], minacc(ws, axis=1)[:, :-1])
        sel = np.flatnonzero(keep)
        picks.append(order.take(sel))
        state = srt.reshape(2, 2 * n).take(sel, axis=1)
        n_client = int(np.count_nonzero(keep[0]))
    return _choose(c, state[0], state[1], n_client, picks, limit, accept)


def _choose(c, t, w, n_client, picks, limit, accept) -> np.ndarray | None:
    """The best ends (least work, then least latency) within the limit, traced back and
    checked by `accept` in that order (at most `TRIES`)."""
    L = c.work.shape[0]
    end = t.copy()
    end[n_client:] += c.dn[0, L]
    ok = np.flatnonzero(end <= limit)
    if ok.shape[0] == 0:
        return None
    ranked = ok[np.lexsort((end[ok], w[ok]))][:TRIES]
    for i in ranked.tolist():
        on_client = _trace(i, picks)
        if accept(on_client):
            return on_client
    return None


def _trace(i: int, picks: list) -> np.ndarray:
    """The placement of label i of the last front: walk the picks back, unit by unit (a
    pick is a position in the unit's (2, n) candidates: row = the unit's location, column =
    the label extended)."""
    L = len(picks)
    on_client = np.zeros(L, bool)
    for u in range(L - 1, -1, -1):
        n = picks[u - 1].shape[0] if u else 1
        row, i = divmod(int(picks[u][i]), n)
        on_client[u] = row == 0
    return on_client
