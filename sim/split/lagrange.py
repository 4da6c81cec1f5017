"""A lower bound on the server work a partial placement still needs: Lagrangian relaxation.

For any price lam >= 0 of latency, a completion of a label (latency t so far) that meets
the limit has work >= min over completions of (work + lam x latency) - lam x (limit - t):
its latency is at most limit - t. The minimum over completions is a shortest path over
two locations per unit, `least_after` with each unit's cost lam x time + work. A label
whose work plus this bound exceeds a guess G of the optimum cannot lead to a plan of work
<= G: `meet.search` drops it, and proves its answer optimal when the answer's work is
<= G (else it searches again with G = the answer's work, a plan that exists).

The price: the lam of a grid that maximises the bound from the start (the Lagrangian
dual), found for all lam of the grid at once by multiplying the units' 2 x 2 min-plus
matrices pairwise (log2 L numpy steps over (2, 2, lam, units)), the grid around the
knapsack ratio of `reference`.
"""

from __future__ import annotations

import numpy as np

_INF = np.inf
GRID = np.exp2(np.linspace(-1.25, 1.25, 21))  # the prices tried, relative to `reference`
_IDENTITY = np.array([[0.0, _INF], [_INF, 0.0]])[:, :, None, None]


def least_after(cc, cs, up, dn, allowed, work=None) -> np.ndarray:
    """(L + 1, 2): per boundary b and location of unit b - 1, the least cost of units b..
    and the way back to the client (`labels.remaining` for one latency, on lists): the
    latency, or with `work` (per unit, on the server) the cost of latencies + work."""
    L = len(cc)
    r_c, r_s = 0.0, dn[L]
    col = [(r_c, r_s)]
    for u in range(L - 1, -1, -1):
        on_s = cs[u] + r_s if work is None else cs[u] + work[u] + r_s
        if allowed[u]:
            on_c = cc[u] + r_c
            r_c, r_s = min(on_c, up[u] + on_s), min(dn[u] + on_c, on_s)
        else:
            r_c, r_s = up[u] + on_s, on_s
        col.append((r_c, r_s))
    return np.array(col[::-1])


def _min_plus(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Min-plus products of 2 x 2 matrices held as (2, 2, ...): the matrix axes first, so
    numpy's inner loops run over the long axes: (a x b)[i, k] = min_j a[i, j] + b[j, k]."""
    return np.minimum(a[:, :1] + b[None, 0], a[:, 1:] + b[None, 1])


def _bounds(lam: np.ndarray, t: np.ndarray, work: np.ndarray, end: float, limit: float):
    """The bound from the start for each price: the product of the units' matrices of cost
    lam x latency + work, by pairs (units padded with identities to a power of two)."""
    L = t.shape[2]
    size = 1 << max(L - 1, 1).bit_length()
    mats = np.empty((2, 2, lam.shape[0], size))
    mats[:, :, :, L:] = _IDENTITY
    np.add(lam[:, None] * t[:, :, None, :], work[:, :, None, :], out=mats[:, :, :, :L])
    while mats.shape[3] > 1:
        mats = _min_plus(mats[..., 0::2], mats[..., 1::2])
    return np.minimum(mats[0, 0, :, 0], mats[0, 1, :, 0] + lam * end) - lam * limit


def reference(t: np.ndarray, work: np.ndarray, end: float, limit: float) -> float:
    """A price near the best one, as for a knapsack without switches: units moved from the
    server to the client in order of work saved per second added, until the latency left
    over the all-server placement is spent; the ratio of the unit that does not fit (0
    when there is none)."""
    cc, cs, w = t[:, 0, 0], t[:, 1, 1], work[:, 1]
    extra = cc - cs
    movable = np.flatnonzero(np.isfinite(extra) & (extra > 0))
    if movable.shape[0] == 0:
        return 0.0
    ratio = w[movable] / extra[movable]
    order = np.argsort(-ratio)
    budget = limit - (t[0, 0, 1] - cs[0] + cs.sum() + end)
    k = int(np.searchsorted(np.cumsum(extra[movable][order]), budget))
    return float(ratio[order[min(k, order.shape[0] - 1)]])


def price(t: np.ndarray, work: np.ndarray, end: float, limit: float) -> tuple[float, float]:
    """The price with the best bound from the start, and that bound: `t` (L, 2, 2) the
    latency of each unit from a location to one (switch included), `work` (L, 2) its work
    at each location, `end` the way back from the server. A grid around `reference`
    (within a factor 2 of the best on random chains); (0, 0) when there is no scale."""
    ref = reference(t, work, end, limit)
    if not (ref > 0 and np.isfinite(ref)):
        return 0.0, 0.0  # a price of zero: a valid, weak bound, not used
    lam = ref * GRID
    bound = _bounds(lam, t.transpose(1, 2, 0), work.T[None, :, :], end, limit)
    i = int(np.argmax(bound))
    return float(lam[i]), float(bound[i])


def scans(t, work, up, dn, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """The least latency (layer 0) and the least lam x latency + work (layer 1) around
    each unit u, (2, L + 1, 2) each: `after[:, u, a]` of the units after u (u at a) and
    the way back to the client; `before[:, u, a]` of the units before u from the client
    and the switch into u (at a); row L is 0 (a step that keeps its labels).

    `t` (L, 2, 2): each unit's latency from a location to one, the switch included;
    `work` (L, 2); `up`, `dn` (L + 1,): the switches. All prefix and suffix min-plus
    products at once, by doubling (log2 L numpy steps): `least_after`'s values, summed in
    another order (equal up to float noise, which the callers' slack covers)."""
    L = t.shape[0]
    tm = t.transpose(1, 2, 0)  # (from, to, unit)
    mats = np.empty((2, 2, 4, L))
    mats[:, :, 0] = tm
    priced = lam * tm if lam > 0 else np.where(np.isinf(tm), _INF, 0.0)  # never 0 x inf
    np.add(priced, work.T[None], out=mats[:, :, 1])
    mats[:, :, 2:] = mats[:, :, :2, ::-1].transpose(1, 0, 2, 3)  # suffixes: reversed, transposed
    s = 1
    while s < L:
        mats[..., s:] = _min_plus(mats[..., :-s], mats[..., s:])
        s *= 2
    scale = np.array([[1.0], [lam]])  # (layer, 1)
    after = np.zeros((2, L + 1, 2))
    suffix = mats[:, :, 2:, L - 2 :: -1]  # (to, from, layer, u): units u + 1.. (L - 1 of them)
    back = scale * dn[L]
    np.minimum(suffix[0].transpose(1, 0, 2), suffix[1].transpose(1, 0, 2) + back[:, :, None],
               out=after[:, : L - 1].transpose(0, 2, 1))  # fmt: skip
    after[:, L - 1, 1] = back[:, 0]
    before = np.zeros((2, L + 1, 2))
    before[:, 0, 1] = scale[:, 0] * up[0]
    head_c, head_s = mats[0, 0, :2, : L - 1], mats[0, 1, :2, : L - 1]  # (layer, u - 1)
    np.minimum(head_c, head_s + scale * dn[1:L], out=before[:, 1:L, 0])
    np.minimum(head_c + scale * up[1:L], head_s, out=before[:, 1:L, 1])
    return after, before
