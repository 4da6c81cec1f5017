"""A lower bound on the server work a partial placement still needs: Lagrangian relaxation.

For any price lam >= 0 of latency, a completion of a label (latency t so far) that meets
the limit has work >= min over completions of (work + lam x latency) - lam x (limit - t):
its latency is at most limit - t. The minimum over completions is a shortest path over
two locations per unit (a min-plus product of 2 x 2 matrices). A label whose work plus
this bound exceeds a guess G of the optimum cannot lead to a plan of work <= G:
`meet.search` drops it, and proves its answer optimal when the answer's work is <= G
(else it searches again with G = the answer's work, a plan that exists).

The chain is read as `meet` walks it, block by block: the forward half's blocks, the
switch at the middle boundary, the backward half's blocks (each block a 2 x 2 matrix, the
least cost over its options). The price: of 0 (the least work whatever the latency: a
deadline that does not bind) and a grid around a knapsack ratio (`reference`), the one
whose bound from the start is the largest (the Lagrangian dual). Prefix and suffix
products by doubling (log2 of the blocks numpy steps), for the latency and every price at
once, give both: the whole chain's product per price (the last prefix) and, for the price
chosen and for the latency alone, the least cost of what is left of the chain after each
step of each half.
"""

from __future__ import annotations

import numpy as np

_INF = np.inf
GRID = np.exp2(np.linspace(-1.25, 1.25, 21))  # the prices tried, relative to `reference`


def _min_plus(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Min-plus products of 2 x 2 matrices held as (2, 2, ...): the matrix axes first, so
    numpy's inner loops run over the long axes: (a x b)[i, k] = min_j a[i, j] + b[j, k]."""
    return np.minimum(a[:, :1] + b[None, 0], a[:, 1:] + b[None, 1])


def reference(t: np.ndarray, work: np.ndarray, end: float, limit: float) -> float:
    """A price near the best one, as for a knapsack without switches: units moved from the
    server to the client in order of work saved per second added, until the latency left
    over the all-server placement is spent; the ratio of the unit that does not fit (0
    when there is none). Units pinned to the client (infinite server time) start there."""
    cc, cs, w = t[:, 0, 0], t[:, 1, 1], work[:, 1]
    extra = cc - cs
    movable = np.flatnonzero(np.isfinite(extra) & (extra > 0))
    if movable.shape[0] == 0:
        return 0.0
    ratio = w[movable] / extra[movable]
    order = np.argsort(-ratio)
    pinned = np.isinf(cs)
    start = t[0, 0, 1] - cs[0] if not pinned[0] else 0.0  # the uplink into unit 0
    budget = limit - (start + np.where(pinned, cc, cs).sum() + end)
    k = int(np.searchsorted(np.cumsum(extra[movable][order]), budget))
    return float(ratio[order[min(k, order.shape[0] - 1)]])


def _sequence(blocks: np.ndarray, cross: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """The chain as min-plus matrices [entry location, exit location] in its order, per
    layer (2, 2, layers, 2S + 1): layer 0 the latency, one more per price in `lam` (lam x
    latency + work). `blocks` (S, latency / work, chain, to, from, options): `meet`'s
    steps; `cross` (from, to): the switch at the middle boundary."""
    # a copy with the options first and the rest flat: numpy's inner loops then run over
    # all of it (over the options last, or a few axes of 2, they are a few elements long)
    S, options = blocks.shape[0], blocks.shape[-1]
    tw = np.ascontiguousarray(np.moveaxis(blocks, -1, 0).swapaxes(1, 2))
    t, w = tw[:, 0].reshape(options, -1), tw[:, 1].reshape(options, -1)  # (option, rest)
    vals = np.empty((options, 1 + lam.shape[0], t.shape[1]))
    vals[:, 0] = t
    zero = int(np.count_nonzero(lam == 0))  # prices of 0 lead the grid
    vals[:, 1 : 1 + zero] = priced(t, w, 0.0)[:, None]
    np.multiply(lam[zero:, None], t[:, None], out=vals[:, 1 + zero :])
    vals[:, 1 + zero :] += w[:, None]
    vals = vals.min(axis=0).reshape((1 + lam.shape[0], S) + blocks.shape[2:5])
    seq = np.empty((2, 2, vals.shape[0], 2 * S + 1))
    seq[:, :, :, :S] = vals[:, :, 0].transpose(3, 2, 0, 1)  # forward blocks: from -> to
    seq[:, :, :, S] = cross[:, :, None] * np.concatenate(([1.0], lam))
    seq[:, :, :, S + 1 :] = vals[:, ::-1, 1].transpose(2, 3, 0, 1)  # backward, reversed
    return seq


def bounds(blocks: np.ndarray, cross: np.ndarray, limit: float, ref: float):
    """The price with the largest bound from the start (0, the least work whatever the
    latency, or one of the grid around `ref` when it gives a scale), that bound, and per
    step and row (chain, location), (steps, 4, 1): `limit` less the least latency of the
    rest of the chain, and lam x `limit` less its least lam x latency + work (forward half:
    what comes after the step's block; backward half: what comes before it, from the
    input)."""
    S = blocks.shape[0]
    grid = np.concatenate(([0.0], ref * GRID)) if ref > 0 and np.isfinite(ref) else np.zeros(1)
    seq = _sequence(blocks, cross, grid)
    layers, n = seq.shape[2], seq.shape[3]
    scan = np.concatenate([seq, seq[..., ::-1].transpose(1, 0, 2, 3)], axis=2)
    s = 1
    while s < n:  # prefixes (layers of seq) and suffixes (reversed, transposed) at once
        scan[..., s:] = _min_plus(scan[..., :-s], scan[..., s:])
        s *= 2
    full = scan[0, 0, 1:layers, n - 1]  # the whole chain per price, client to client
    i = int(np.argmax(full - grid * limit))
    lam, lower = float(grid[i]), float(full[i] - grid[i] * limit)
    from_client = scan[0]  # (to, layer, position): the latency and that price's layers
    after = from_client[:, [layers, layers + i + 1], n - 2 : n - 2 - S : -1]  # suffix k + 1
    before = from_client[:, [0, i + 1], 2 * S - 1 : S - 1 : -1]  # prefix 2S - k - 1
    top = np.array([limit, lam * limit])[None, :, None]
    rows = np.concatenate([top - after, top - before]).transpose(1, 2, 0)[..., None]
    return lam, lower, rows[0], rows[1]


def priced(t: np.ndarray, w: np.ndarray, lam: float) -> np.ndarray:
    """w + lam x t, infinite where t is (a location a unit may not take), also at lam 0."""
    if lam == 0:
        return np.where(np.isinf(t), _INF, w)
    return w + lam * t
