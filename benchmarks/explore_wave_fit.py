"""Explore: does a tile / wave quantisation term in the compute time fit measured MLP halves?

Run: PYTHONPATH=$PWD python benchmarks/explore_wave_fit.py [--profiles ../shared/gpu_profiles]

The calibrated unit time (`sim.profile.gpu`) is `bound_s(FLOPs/F, bytes/B, g) + kernels x
kernel_overhead`, linear in tokens; the measured MLP halves (Vidur's A100 / H100 profiles)
are a staircase in tokens (cuBLAS tiles and waves). This script replaces the FLOPs of the
compute term by a quantised count and refits, with the fitting of `fit_factors` (log-ratio
least squares, each model weighted equally), leaving each model out in turn. Candidates:

- `linear`: the FLOPs the cost model counts (today's calibration; the reference);
- `round q`: tokens rounded up to a multiple of q in the compute term only (q fixed, or
  fitted among a few sizes on the models in the fit);
- `wave tm x tn`: per GEMM (M = tokens, N = outputs, K = inputs) tiles = ceil(M/tm) *
  ceil(N/tn), waves = ceil(tiles / SMs), compute FLOPs = waves * SMs * tm * tn * K * 2
  (a full wave of tiles, so F stays a whole-GPU rate), summed over the unit's GEMMs;
- `wave pick`: the same with the tile chosen per GEMM and token count among a few
  candidates as the one with the least quantised work (a crude cuBLAS heuristic; ties go
  to the larger tile);
- `pow2 then round q`: tokens to the next power of two (>= 16) up to q, to a multiple of q
  above (small batches get a small M tile, as cuBLAS picks one);
- `wave pow2-M<=tm x tn`: waves with tm the power of two (>= 16) covering M, at most tm,
  and tn fixed;
- `blend a*X + (1-a)*linear`: a share a (fitted) of the compute quantised by X.

Result (on the profiles in ../shared/gpu_profiles): no candidate meets median <= 5 % and worst
<= 25 % in every left-out case. The staircase is not a clean function of tokens (cuBLAS
switches kernels: e.g. A100 Llama-2-7B is faster at 192 than at 160 tokens, H100 phi-2
slower at 1024 than at 1536), the strict wave count over-penalises partly filled waves
(split-K / other tiles fill the SMs), and the A100 fit without phi-2 cannot separate
bandwidth from the per-kernel overhead (it puts the overhead at 0) whatever the compute
term: phi-2 left out stays at 5-6 % median.

The MLP half's GEMMs: gated (Llama) up+gate fused (N = 2 x mlp_size, K = hidden) as Vidur
times it (`mlp_up_proj`), or as two GEMMs (`split`), then down (N = hidden, K = mlp_size);
GELU (phi-2) fc1 (N = mlp_size, K = hidden) and fc2 (N = hidden, K = mlp_size).

Cases: A100 with each of its three models left out; H100 with each of its two models left
out, (a) kernel overhead and g held at the candidate's A100 fit of all three models (the
"prior", as the catalog's H100 is fitted), (b) held at the candidate's A100 fit without the
left-out model (strict), (c) nothing held. Fitted tile sizes (`round q*`) are fitted per
GPU on the models in the fit (not held), except in the `prior+p` mode (also held at the
A100's). Printed: the left-out model's median and worst
|error| over its MLP rows (1-4096 tokens) and the in-fit models' (fitted on them).
Nothing is written; sim/ and results/ are left as they are.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sim.catalog import get_device
from sim.catalog.specs import DeviceSpec, ModelSpec
from sim.profile.gpu import GpuFactors, fit_factors, measurements, predict_s
from sim.profile.vidur import read_profile

ROOT = Path(__file__).resolve().parents[1]
SMS = {"a100": 108, "h100": 132}  # streaming multiprocessors (datasheets: A100 SXM4, H100 SXM5)
DEVICES = {"a100": "a100-80gb", "h100": "h100-sxm"}
MAX_TOKENS = 4096
GOAL_MEDIAN, GOAL_WORST = 0.05, 0.25


def mlp_gemms(spec: ModelSpec, fused: bool = True) -> list[tuple[int, int]]:
    """(N, K) of each GEMM of the MLP half (M is the token count)."""
    h, i = spec.hidden_size, spec.mlp_size
    if spec.mlp_kind == "gated":
        up = [(2 * i, h)] if fused else [(i, h), (i, h)]
        return [*up, (h, i)]
    return [(i, h), (h, i)]


def wave_flops(m: np.ndarray, gemms, tiles, sms: int) -> np.ndarray:
    """Quantised FLOPs of the GEMMs at M = m tokens: per GEMM, the tile (tm, tn) among
    `tiles` with the least work waves x tm x tn (ties: the larger tile), times SMs x 2K."""
    out = np.zeros(len(m))
    for n, k in gemms:
        best = None
        for tm, tn in sorted(tiles, key=lambda t: -t[0] * t[1]):
            waves = np.ceil(np.ceil(m / tm) * np.ceil(n / tn) / sms)
            work = waves * sms * tm * tn
            best = work if best is None else np.minimum(best, work)
        out += best * 2.0 * k
    return out


@dataclass(frozen=True)
class Candidate:
    """A compute-FLOPs formula; `params` are its choices (one: fixed, several: fitted)."""

    name: str
    flops: Callable[[pd.DataFrame, dict, int, object], np.ndarray]  # (rows, specs, SMs, p)
    params: tuple = (None,)


def _linear(rows, specs, sms, p):
    return rows["flops"].to_numpy(float)


def _round(rows, specs, sms, q):
    n = rows["tokens"].to_numpy(float)
    return rows["flops"].to_numpy(float) * np.ceil(n / q) * q / n


def _pow2_round(rows, specs, sms, q):
    """Tokens to the next power of two (at least 16) below q, to a multiple of q above."""
    n = rows["tokens"].to_numpy(float)
    small = np.maximum(16.0, 2.0 ** np.ceil(np.log2(np.maximum(n, 1.0))))
    m = np.where(n <= q, np.minimum(small, q), np.ceil(n / q) * q)
    return rows["flops"].to_numpy(float) * m / n


def _blend(inner, share):
    """A share of the compute quantised by `inner` (parameter q), the rest linear."""

    def f(rows, specs, sms, p):
        q, a = p
        lin = rows["flops"].to_numpy(float)
        return (1 - a) * lin + a * inner(rows, specs, sms, q)

    return f


def _wave(tiles, fused=True):
    def f(rows, specs, sms, p):
        out = np.zeros(len(rows))
        for model, part in rows.groupby("model"):
            idx = rows.index.get_indexer(part.index)
            m = part["tokens"].to_numpy(float)
            out[idx] = wave_flops(m, mlp_gemms(specs[model], fused), tiles, sms)
        return out

    return f


def _wave_pow2(tm_max, tn, fused=True, sms_scale=1.0):
    """Waves with tm = the power of two (>= 16) covering M, at most tm_max; tn fixed."""

    def f(rows, specs, sms, p):
        out = np.zeros(len(rows))
        s = int(round(sms * sms_scale))
        for model, part in rows.groupby("model"):
            idx = rows.index.get_indexer(part.index)
            m = part["tokens"].to_numpy(float)
            tm = np.minimum(tm_max, np.maximum(16.0, 2.0 ** np.ceil(np.log2(m))))
            for n, k in mlp_gemms(specs[model], fused):
                waves = np.ceil(np.ceil(m / tm) * np.ceil(n / tn) / s)
                out[idx] += waves * s * tm * tn * 2.0 * k
        return out

    return f


T128 = [(128, 128)]
T128x256 = [(128, 256)]
T256x128 = [(256, 128)]
T64x128 = [(64, 128)]
PICK3 = [(64, 128), (128, 128), (128, 256)]
PICK5 = [(64, 64), (64, 128), (128, 64), (128, 128), (128, 256), (256, 128)]
PICK_SMALL = [(16, 128), (32, 128), (64, 128), (128, 128), (128, 256), (256, 128)]

CANDIDATES = [
    Candidate("linear (today)", _linear),
    Candidate("round q=64", _round, (64,)),
    Candidate("round q=128", _round, (128,)),
    Candidate("round q* (16..256 fitted)", _round, (16, 32, 64, 96, 128, 192, 256)),
    Candidate("pow2 then round q* (64..256 fitted)", _pow2_round, (64, 128, 256)),
    Candidate("pow2 then round q=128", _pow2_round, (128,)),
    Candidate(
        "blend a*round q + (1-a)*linear, q*,a* fitted",
        _blend(_round, None),
        tuple((q, a) for q in (64, 128, 256) for a in (0.25, 0.5, 0.75)),
    ),
    Candidate(
        "blend a*pow2-round q + (1-a)*linear, q*,a* fitted",
        _blend(_pow2_round, None),
        tuple((q, a) for q in (64, 128, 256) for a in (0.25, 0.5, 0.75)),
    ),
    Candidate("wave pow2-M<=128 x 128", _wave_pow2(128, 128)),
    Candidate("wave pow2-M<=128 x 256", _wave_pow2(128, 256)),
    Candidate("wave pow2-M<=256 x 128", _wave_pow2(256, 128)),
    Candidate("wave pow2-M<=128 x 128 split gate/up", _wave_pow2(128, 128, fused=False)),
    Candidate(
        "blend a*wave pow2-M<=128 x 128 + (1-a)*linear, a* fitted",
        _blend(lambda r, sp, sms, q: _wave_pow2(128, 128)(r, sp, sms, q), None),
        tuple((None, a) for a in (0.25, 0.5, 0.75)),
    ),
    Candidate(
        "blend a*wave pow2-M<=128 x 128 + (1-a)*linear, a* fitted (0.1 steps)",
        _blend(lambda r, sp, sms, q: _wave_pow2(128, 128)(r, sp, sms, q), None),
        tuple((None, a / 10) for a in range(1, 10)),
    ),
    Candidate("wave 128x128", _wave(T128)),
    Candidate("wave 128x256", _wave(T128x256)),
    Candidate("wave 256x128", _wave(T256x128)),
    Candidate("wave 64x128", _wave(T64x128)),
    Candidate("wave 128x128 split gate/up", _wave(T128, fused=False)),
    Candidate("wave pick {64x128,128x128,128x256}", _wave(PICK3)),
    Candidate("wave pick 6 tiles", _wave(PICK5)),
    Candidate("wave pick small-M tiles", _wave(PICK_SMALL)),
]


def _loss(rows: pd.DataFrame, device: DeviceSpec) -> float:
    """fit_factors' objective: squared log ratio, every model weighing the same."""
    w = 1.0 / rows.groupby("model")["model"].transform("size").to_numpy(float)
    return float((w * (np.log(predict_s(rows, device)) - np.log(rows["seconds"])) ** 2).sum())


def fit(cand: Candidate, rows, specs, sms, device, fixed=None, params=None):
    """(factors, param) fitted on `rows`: factors by fit_factors on the quantised FLOPs,
    the candidate's parameter (if several) by the least loss."""
    best = None
    for p in params or cand.params:
        q = rows.copy()
        q["flops"] = cand.flops(rows, specs, sms, p)
        factors = fit_factors(q, device, fixed)
        loss = _loss(q, factors.apply(device))
        if best is None or loss < best[0]:
            best = (loss, factors, p)
    return best[1], best[2]


def errors(cand, rows, specs, sms, device, factors: GpuFactors, p) -> pd.Series:
    q = rows.copy()
    q["flops"] = cand.flops(rows, specs, sms, p)
    return pd.Series(predict_s(q, factors.apply(device)) / q["seconds"].to_numpy() - 1,
                     index=rows.index)  # fmt: skip


def load(profiles: Path, gpu: str):
    profile = read_profile(profiles / gpu)
    data = measurements(profile, MAX_TOKENS)
    data = data[data["unit"] == "mlp"].reset_index(drop=True)
    specs = {m.spec.name: m.spec for m in profile.models}
    return data, specs, get_device(DEVICES[gpu])


HELD = ("kernel_overhead_us", "non_overlap")


def run_candidate(cand: Candidate, gpus) -> list[dict]:
    out = []
    a_data, a_specs, a_dev = gpus["a100"]
    a_all, a_p = fit(cand, a_data, a_specs, SMS["a100"], a_dev)
    a_loo = {}
    for gpu in ("a100", "h100"):
        data, specs, dev = gpus[gpu]
        sms = SMS[gpu]
        modes = [("", None)] if gpu == "a100" else [("prior", "all"), ("strict", "loo"),
                                                    ("no prior", None)]  # fmt: skip
        if gpu == "h100" and len(cand.params) > 1:
            modes.insert(1, ("prior+p", "all+p"))  # the tile / share held at the A100's too
        for name in specs:
            for mode, prior in modes:
                rest = data[data["model"] != name]
                if gpu == "a100":
                    factors, p = fit(cand, rest, specs, sms, dev)
                    a_loo[name] = factors
                else:
                    held = {"all": a_all, "all+p": a_all, "loo": a_loo.get(name),
                            None: None}[prior]  # fmt: skip
                    fixed = {k: getattr(held, k) for k in HELD} if held else None
                    if prior == "loo" and held is None:
                        continue
                    params = (a_p,) if prior == "all+p" else None
                    factors, p = fit(cand, rest, specs, sms, dev, fixed, params)
                e = errors(cand, data, specs, sms, dev, factors, p).abs()
                mine = data["model"] == name
                rec = {"candidate": cand.name, "gpu": gpu, "mode": mode, "left_out": name,
                       "param": p, "median": e[mine].median(), "worst": e[mine].max(),
                       "fit_median": e[~mine].median(), "fit_worst": e[~mine].max(),
                       "factors": factors}  # fmt: skip
                out.append(rec)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", default=str(ROOT.parent / "shared" / "gpu_profiles"))
    ap.add_argument("--only", default="", help="run candidates whose name contains this")
    args = ap.parse_args(argv)
    gpus = {g: load(Path(args.profiles), g) for g in ("a100", "h100")}
    print("|error| of the MLP half, 1-4096 tokens: left out median / worst (in fit "
          "median / worst); param = fitted or fixed tile; factors ce/be/o_us/g")  # fmt: skip
    summary = []
    for cand in CANDIDATES:
        if args.only and args.only not in cand.name:
            continue
        recs = run_candidate(cand, gpus)
        print(f"\n== {cand.name}")
        ok = True
        for r in recs:
            f = r["factors"]
            passed = r["median"] <= GOAL_MEDIAN and r["worst"] <= GOAL_WORST
            strict = r["gpu"] == "a100" or r["mode"].startswith("prior")  # the goal's cases
            ok &= passed or not strict
            print(f"  {r['gpu']} {r['mode']:8s} out {r['left_out']:11s} "
                  f"{r['median']:6.1%} / {r['worst']:6.1%}  (fit {r['fit_median']:5.1%} / "
                  f"{r['fit_worst']:5.1%})  p={r['param']}  {f.compute_efficiency}/"
                  f"{f.bandwidth_efficiency}/{f.kernel_overhead_us}/{f.non_overlap}"
                  f"{'' if passed else '  MISS'}")  # fmt: skip
        summary.append((cand.name, ok))
    print("\nMeets median <= 5 % and worst <= 25 % in every A100 and H100 prior case:")
    for name, ok in summary:
        print(f"  {'yes' if ok else 'no '}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
