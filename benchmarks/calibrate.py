"""Fidelity of the roofline cost model against real per-unit timings on this machine's CPU.

Run: /work/venv/bin/python benchmarks/calibrate.py [-o results/calibration] [--repeats 7]
(needs the profile extra: pip install -e ".[profile]")

Profiles GPT-2 small and a small Llama-architecture model (4 layers, hidden 512, 8 heads,
2 KV heads (GQA), gated MLP 1408, vocab 32000) with random weights, fp32, batch 1, at
sequence / context lengths 32..512, forward passes and decode steps, each unit (embedding,
block, attention and MLP halves, head) the median of several repeats after warm-up, the
repeats cycling over all points. Torch runs on one thread and the process is pinned to the
idlest core: the machine is shared with other busy processes, so medians, not means.

Then compares, per measured row, three predictions:
- roofline before fitting: the device's peaks microbenchmarked here (a 1024^2 fp32 matmul,
  a 64 MiB copy) with the catalog's default efficiencies (compute 0.6, bandwidth 0.8,
  overhead 10 us), i.e. what a spec sheet would give;
- roofline after fitting: achievable FLOP/s, bandwidth and per-unit overhead fitted to both
  models' timings together (one device), and, as a check against over-fitting, fitted to the
  other model only ("cross");
- the cost table's own fitted curve (least squares on 1, n, n^2 / on 1, c), i.e. what a
  scenario with the table attached uses.

Writes <out>/gpt2.csv and llama-small.csv (cost tables), errors.csv (one row per
measurement), device.yaml (the fitted device spec) and README.md (tables and headline).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")


def _idlest_core() -> int:
    """The allowed core with the most idle time over half a second (Linux), else the last."""
    import time as _time

    cores = sorted(os.sched_getaffinity(0))

    def idle() -> dict[int, int]:
        out = {}
        with open("/proc/stat") as f:
            for line in f:
                name, *vals = line.split()
                if name.startswith("cpu") and name[3:].isdigit():
                    out[int(name[3:])] = int(vals[3])
        return out

    try:
        a = idle()
        _time.sleep(0.5)
        b = idle()
        return max(cores, key=lambda c: b.get(c, 0) - a.get(c, 0))
    except OSError:
        return cores[-1]


if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {_idlest_core()})

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from sim.catalog import ModelSpec, get_model  # noqa: E402
from sim.costs.tables import CostTable, read_cost_table  # noqa: E402
from sim.profile.factors import (  # noqa: E402
    device_yaml,
    fit_factors,
    fitted_device,
    roofline_seconds,
    work_rows,
)

TOKENS = [32, 64, 128, 256, 512]
LLAMA_SMALL = ModelSpec(
    name="llama-small",
    architecture="decoder",
    layers=4,
    hidden_size=512,
    heads=8,
    kv_heads=2,
    mlp_size=1408,
    mlp_kind="gated",
    vocab_size=32000,
    max_positions=2048,
    position="rotary",
    norm="rmsnorm",
    bias=False,
    tied_embeddings=False,
    source="a small Llama-architecture configuration for calibration (GQA 8/2)",
)


def _fp32(spec: ModelSpec) -> ModelSpec:
    return spec.model_copy(update={"weight_dtype": "fp32", "activation_dtype": "fp32"})


def _rel(pred, meas) -> np.ndarray:
    return np.abs(np.asarray(pred) - np.asarray(meas)) / np.asarray(meas)


def _table_md(frame: pd.DataFrame, cols: list[str], index: list[str]) -> str:
    lines = ["| " + " | ".join(index + cols) + " |", "|" + "---|" * (len(index) + len(cols))]
    for key, row in frame.iterrows():
        key = key if isinstance(key, tuple) else (key,)
        cells = [str(k) for k in key] + [
            f"{row[c]:.0%}" if isinstance(row[c], float) else str(row[c]) for c in cols
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default="results/calibration")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    args = ap.parse_args()
    import torch

    from sim.profile.measure import peak_rates, profile_model

    torch.set_num_threads(1)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    tokens = [int(t) for t in args.tokens.split(",")]
    specs = [get_model("gpt2"), LLAMA_SMALL]
    started = time.time()
    peak_f, peak_b = peak_rates(threads=1, seconds=1.0)
    measured = []
    for spec in specs:
        print(f"profiling {spec.name} ...", file=sys.stderr, flush=True)
        rows = profile_model(
            spec,
            tokens,
            phases=("forward", "decode"),
            sublayer=True,
            repeats=args.repeats,
            warmup=args.warmup,
            device_name="calibration-cpu",
            threads=1,
        )
        frame = pd.DataFrame([r.__dict__ for r in rows])
        frame["seconds"] = frame["seconds"].map(lambda s: float(f"{s:.6g}"))
        path = out / f"{spec.name}.csv"
        frame.to_csv(path, index=False)
        table = read_cost_table(path)
        w = work_rows(_fp32(spec), table)
        fits = CostTable.from_frame(table, path)
        w["table_s"] = [
            float(fits.fit(r.device, r.model, r.unit_kind, r.phase, 1)(r.tokens))
            for r in w.itertuples()
        ]
        # interpolation check: fit on every other length, predict the lengths left out
        held = sorted(set(table["tokens"]))[1::2]
        part = CostTable.from_frame(table[~table["tokens"].isin(held)], path)
        w["table_heldout_s"] = [
            float(part.fit(r.device, r.model, r.unit_kind, r.phase, 1)(r.tokens))
            if r.tokens in held
            else np.nan
            for r in w.itertuples()
        ]
        measured.append(w)
    data = pd.concat(measured, ignore_index=True)
    # before: microbenchmarked peaks with the catalog defaults
    data["roofline_before_s"] = roofline_seconds(
        data["flops"], data["bytes"], peak_f * 0.6, peak_b * 0.8, 10e-6
    )
    joint = fit_factors(data["flops"], data["bytes"], data["seconds"], (peak_f, peak_b))
    data["roofline_after_s"] = roofline_seconds(
        data["flops"], data["bytes"], joint.flops_per_s, joint.bytes_per_s, joint.overhead_s
    )
    data["roofline_cross_s"] = np.nan
    cross = {}
    for spec in specs:
        other = data["model"] != spec.name
        fx = fit_factors(
            data.loc[other, "flops"], data.loc[other, "bytes"], data.loc[other, "seconds"],
            (peak_f, peak_b),
        )  # fmt: skip
        cross[spec.name] = fx
        mine = ~other
        data.loc[mine, "roofline_cross_s"] = roofline_seconds(
            data.loc[mine, "flops"], data.loc[mine, "bytes"], fx.flops_per_s, fx.bytes_per_s,
            fx.overhead_s,
        )  # fmt: skip
    for col in ("before", "after", "cross"):
        data[f"err_{col}"] = _rel(data[f"roofline_{col}_s"], data["seconds"])
    data["err_table"] = _rel(data["table_s"], data["seconds"])
    data["err_table_heldout"] = _rel(data["table_heldout_s"], data["seconds"])
    data["err_signed_before"] = data["roofline_before_s"] / data["seconds"] - 1
    keep = ["model", "unit_kind", "unit_index", "phase", "tokens", "seconds", "flops", "bytes",
            "roofline_before_s", "roofline_after_s", "roofline_cross_s", "table_s",
            "table_heldout_s", "err_before", "err_after", "err_cross", "err_table",
            "err_table_heldout"]  # fmt: skip
    data[keep].to_csv(out / "errors.csv", index=False, float_format="%.6g")
    device = fitted_device(
        "calibration-cpu", joint, peak_f, peak_b, 8.0, None,
        description="this machine's CPU, one torch thread, fp32; fitted by benchmarks/calibrate.py",
    )  # fmt: skip
    (out / "device.yaml").write_text(
        device_yaml(device, "roofline factors fitted to results/calibration/errors.csv")
    )
    elapsed = time.time() - started
    (out / "README.md").write_text(
        _report(data, joint, cross, peak_f, peak_b, tokens, args, elapsed)
    )
    print((out / "README.md").read_text())
    return 0


def _headline(data: pd.DataFrame) -> pd.DataFrame:
    rows = {}
    for col, label in (("err_before", "roofline, spec-sheet factors"),
                       ("err_after", "roofline, fitted factors"),
                       ("err_cross", "roofline, factors fitted on the other model"),
                       ("err_table", "cost table (fitted curve, at measured lengths)"),
                       ("err_table_heldout", "cost table, lengths left out of the fit")):  # fmt: skip
        rows[label] = {"median": data[col].median(), "worst": data[col].max()}
    return pd.DataFrame(rows).T


def _report(data, joint, cross, peak_f, peak_b, tokens, args, elapsed) -> str:
    head = _headline(data)
    by_kind = (
        data.groupby(["model", "phase", "unit_kind"])[["err_before", "err_after", "err_table"]]
        .median()
        .rename(columns={"err_before": "before", "err_after": "after", "err_table": "table"})
    )
    by_len = (
        data[data["unit_kind"] == "block"]
        .groupby(["model", "phase", "tokens"])[["err_before", "err_after", "err_table"]]
        .median()
        .rename(columns={"err_before": "before", "err_after": "after", "err_table": "table"})
    )
    signed = data.groupby(["phase", "unit_kind"])["err_signed_before"].median()
    lines = [
        "# Calibration: the roofline cost model against measured unit times",
        "",
        "Generated by `benchmarks/calibrate.py` (do not edit by hand). Machine: "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, shared with "
        "other busy processes; torch on one thread, process pinned to the idlest core, fp32, "
        "batch 1, "
        f"random weights; each time is the median of {args.repeats} repeats after "
        f"{args.warmup} warm-up runs, the repeats cycling over all points. Lengths: {', '.join(map(str, tokens))} "
        f"(forward: sequence length; decode: KV-cache length). Took {elapsed:.0f} s.",
        "",
        "Models: GPT-2 small (catalog `gpt2`) and `llama-small` (4 layers, hidden 512, "
        "8 heads / 2 KV heads, gated MLP 1408, vocab 32000, RMSNorm, rotary).",
        "",
        "Relative error = |predicted - measured| / measured, over every measured unit "
        f"({len(data)} rows: embed, block, attn, mlp, head; forward and decode).",
        "",
        "- **before**: peaks microbenchmarked here "
        f"({peak_f / 1e9:.1f} GFLOP/s fp32 matmul, {peak_b / 1e9:.1f} GB/s copy) with the "
        "catalog defaults (compute efficiency 0.6, bandwidth efficiency 0.8, 10 us per unit);",
        "- **after**: factors fitted to both models' timings: achievable "
        f"{joint.flops_per_s / 1e9:.1f} GFLOP/s, {joint.bytes_per_s / 1e9:.1f} GB/s, "
        f"{joint.overhead_s * 1e6:.0f} us per unit (`device.yaml`);",
        "- **cross**: factors fitted on the other model only ("
        + ", ".join(
            f"for {m}: {f.flops_per_s / 1e9:.1f} GFLOP/s, {f.bytes_per_s / 1e9:.1f} GB/s, "
            f"{f.overhead_s * 1e6:.0f} us"
            for m, f in cross.items()
        )
        + ");",
        "- **table**: the cost table's fitted curve (least squares on 1, n, n^2 for passes, "
        "1, c for decode), which is what a scenario with the table attached uses; at the "
        "measured lengths, and (**held out**) at 64 and 256 from a fit on 32, 128 and 512 only.",
        "",
        "## Headline",
        "",
        _table_md(head, ["median", "worst"], ["prediction"]),
        "",
        "## Median relative error per model, phase and unit kind",
        "",
        _table_md(by_kind, ["before", "after", "table"], ["model", "phase", "unit"]),
        "",
        "## Median relative error of blocks per sequence / context length",
        "",
        _table_md(by_len, ["before", "after", "table"], ["model", "phase", "tokens"]),
        "",
        "## Direction of the error before fitting (median of predicted / measured - 1)",
        "",
        "| phase | unit | bias |",
        "|---|---|---|",
        *[f"| {p} | {u} | {v:+.0%} |" for (p, u), v in signed.items()],
        "",
        "Files: `gpt2.csv`, `llama-small.csv` (cost tables in the `splitsim profile` format), "
        "`errors.csv` (every measurement with its predictions), `device.yaml` (fitted spec).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
