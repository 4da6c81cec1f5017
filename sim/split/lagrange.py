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
whose bound from the start is the largest (the Lagrangian dual). Each half's products
from the middle out, by doubling (`_halves`: log2(S + 1) numpy steps for S blocks a half,
both halves, the latency and every price at once), give both: the whole chain per price
(the first half's row from the input met with the second half's column to the output)
and, for the price chosen and for the latency alone, the least cost of what is left of
the chain after each step of each half (one half's product from the middle met with the
other half whole). The arrays hold positions first and the layers (latency, prices) last,
so numpy's inner loops run over the layers, contiguous.
"""

from __future__ import annotations

import numpy as np

_INF = np.inf
GRID = np.exp2(np.linspace(-1.25, 1.25, 21))  # the prices tried, relative to `reference`
_ZERO = np.zeros(1)  # the only price when `reference` gives no scale
_IDENTITY = np.array([[0.0, _INF], [_INF, 0.0]])[:, :, None]  # min-plus, per layer


def _min_plus(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """Min-plus products of 2 x 2 matrices held as (position, 2, 2, layer), into `out`
    (which may be `b`: both sums are made before it is written): the layers last, so
    numpy's inner loops run over them, contiguous. (a x b)[i, k] = min_j a[i, j] + b[j, k]."""
    np.minimum(a[:, :, :1] + b[:, None, 0], a[:, :, 1:] + b[:, None, 1], out=out)


def reference(t: np.ndarray, work: np.ndarray, end: float, limit: float) -> float:
    """A price near the best one, as for a knapsack without switches: units moved from the
    server to the client in order of work saved per second added, until the latency left
    over the all-server placement is spent; the ratio of the unit that does not fit (0
    when there is none). Units pinned to the client (infinite server time) start there.
    `t` (unit, from, to): what each unit adds to the latency (its forward table in
    `meet._costs`), `work` (unit, location): its work."""
    cc, cs, w = t[:, 0, 0], t[:, 1, 1], work[:, 1]
    extra = cc - cs
    movable = (extra > 0) & (extra < _INF)
    gain = extra[movable]
    if gain.shape[0] == 0:
        return 0.0
    ratio = w[movable] / gain
    order = (-ratio).argsort()
    pinned = cs == _INF
    start = t[0, 0, 1] - cs[0] if cs[0] < _INF else 0.0  # the uplink into unit 0
    budget = limit - (start + np.where(pinned, cc, cs).sum() + end)
    k = int(gain[order].cumsum().searchsorted(budget))
    return float(ratio[order[min(k, order.shape[0] - 1)]])


def _halves(blocks: np.ndarray, cross: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """The chain's two halves as min-plus matrices [entry location, exit location], each
    from the middle out, (S + 1, 2, 2, 2 x layers): per position, the first `layers` (= 1
    + len(lam)) the second half's blocks in order after an identity (position j: the
    block at chain position S + j), the others the first half's, from the switch at the
    middle boundary back to the input, transposed (position j: chain position S - j).
    Layer 0 is the latency, one more per price in `lam` (lam x latency + work; `lam[0]`
    is 0, the others > 0). `blocks` (S, latency / work, chain, to, from, options):
    `meet`'s steps; `cross` (from, to): the switch at the middle boundary."""
    # the layers first and the options next, the rest flat: numpy's inner loops then run
    # over the rest, contiguous (over the layers or a few axes of 2 they would be short)
    S, options = blocks.shape[0], blocks.shape[-1]
    t, w = blocks.transpose(1, 5, 0, 2, 3, 4).reshape(2, options, -1)  # (option, rest)
    layers = 1 + lam.shape[0]
    vals = np.empty((layers, options, t.shape[1]))
    vals[0] = t
    vals[1] = priced(t, w, 0.0)
    np.multiply(lam[1:, None, None], t, out=vals[2:])
    vals[2:] += w
    # (layer, S, chain, to, from); the backward chain's blocks run from the output, so
    # both chains' blocks, last first, are from the middle out, transposed for the first
    vals = vals.min(axis=1).reshape((layers, S) + blocks.shape[2:5])
    seq = np.empty((S + 1, 2, 2, 2, layers))  # (position, entry, exit, half, layer)
    seq[1:] = vals[:, ::-1, ::-1].transpose(1, 3, 4, 2, 0)
    seq[0, :, :, 0] = _IDENTITY
    prices = np.concatenate(([1.0], lam))  # the latency's layer, then each price's
    np.multiply(cross.T[:, :, None], prices, out=seq[0, :, :, 1])
    return seq.reshape(S + 1, 2, 2, 2 * layers)


def bounds(blocks: np.ndarray, cross: np.ndarray, limit: float, ref: float):
    """The price with the largest bound from the start (0, the least work whatever the
    latency, or one of the grid around `ref` when it gives a scale), that bound, and per
    step, row (chain, location) and bound, (steps, 4, 2): `limit` less the least latency
    of the rest of the chain (the room), and lam x `limit` less its least lam x latency +
    work (the cut) (forward half: what comes after the step's block; backward half: what
    comes before it, from the input).

    Each half is scanned from the middle out (`_halves`: S + 1 positions, both halves in
    the same numpy calls); a rest of the chain is then one half's product from the
    middle, met with the other half whole: the input's row of the first half (with the
    switch at the middle) or the second half's column to the output."""
    S = blocks.shape[0]
    scaled = ref * GRID
    # prices past the first are > 0 (`_halves`: lam x an infinite time is infinite)
    grid = np.concatenate(([0.0], scaled)) if scaled[0] > 0 and scaled[-1] < _INF else _ZERO
    scan = _halves(blocks, cross, grid)
    layers = scan.shape[3] // 2
    s = 1
    while s <= S:
        _min_plus(scan[:-s], scan[s:], scan[s:])
        s *= 2
    second, first = scan[..., :layers], scan[..., layers:]  # per position j, from the middle
    tail = second[S, :, 0]  # (location, layer): the second half, to the output's client
    head = first[S, :, 0]  # the first half with the switch, from the input's client
    full = np.minimum(head[0, 1:] + tail[0, 1:], head[1, 1:] + tail[1, 1:])  # per price
    i = int((full - grid * limit).argmax())
    lam, lower = float(grid[i]), float(full[i] - grid[i] * limit)
    chosen = slice(0, i + 2, i + 1)  # the latency's layer and the price's: 0 and i + 1
    head, tail = head[:, chosen], tail[:, chosen]
    part = first[S - 1 :: -1, :, :, chosen]  # forward step k: chain positions k + 1..S
    rest = np.empty((S, 4, 2))  # (step, chain x location, latency / price)
    np.minimum(part[:, 0] + tail[0], part[:, 1] + tail[1], out=rest[:, :2])
    part = second[S - 1 :: -1, :, :, chosen]  # backward step k: positions S + 1..2S - 1 - k
    np.minimum(head[0] + part[:, 0], head[1] + part[:, 1], out=rest[:, 2:])
    return lam, lower, np.subtract((limit, lam * limit), rest, out=rest)


def priced(t: np.ndarray, w: np.ndarray, lam: float) -> np.ndarray:
    """w + lam x t, infinite where t is (a location a unit may not take), also at lam 0."""
    if lam == 0:
        return np.where(np.isinf(t), _INF, w)
    return w + lam * t
