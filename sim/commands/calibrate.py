"""`splitsim calibrate`: fit a server device to measured GPU operator times (Vidur format).

Writes into the output folder (files replaced one by one, atomically): `errors.csv` (every
measured unit: seconds, FLOPs, bytes, predictions before / after / with the model left out,
relative errors), `summary.csv` (median and worst error per model and unit), `device.yaml`
(the fitted device spec, each value's source in a comment), `cost_table.csv` (the measured
units as a cost table for `cost_table:`) and `README.md` (the tables).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from sim import limits as lim
from sim.atomic import atomic_write_text
from sim.errors import UserError
from sim.output import check_output_file

FILES = ("errors.csv", "summary.csv", "device.yaml", "cost_table.csv", "README.md")


def add_calibrate_parser(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit a server device to measured GPU kernel times (a Vidur profile folder)",
    )
    p.add_argument(
        "profile", help="one GPU's Vidur profile folder (<model>/mlp.csv), or one mlp.csv"
    )
    p.add_argument("--device", required=True, help="catalog device to fit (e.g. a100-80gb)")
    p.add_argument("--fit-units", default="mlp",
                   help="units the fit uses: mlp, attn_proj, embed (comma-separated; default mlp)")  # fmt: skip
    p.add_argument("--max-tokens", type=lim.TOKENS.arg("--max-tokens"), default=4096,
                   help="leave out rows above this many tokens (default 4096)")  # fmt: skip
    p.add_argument("-o", "--output", required=True, help="report folder (files replaced)")


def _units(text: str) -> tuple[str, ...]:
    from sim.profile.gpu import FIT_UNITS

    units = tuple(dict.fromkeys(u.strip() for u in text.split(",") if u.strip()))
    bad = [u for u in units if u not in FIT_UNITS]
    if bad or not units:
        raise UserError(f"--fit-units: expected some of {', '.join(FIT_UNITS)}; got '{text}'")
    return units


def run_calibrate(args: argparse.Namespace) -> int:
    from sim.catalog import get_device
    from sim.profile.gpu import calibrate, cost_table, summary
    from sim.profile.vidur import read_profile

    units = _units(args.fit_units)
    device = get_device(args.device, "--device")
    if device.kind != "server":
        raise UserError(f"--device: '{device.name}' is a client; calibrate fits server GPUs")
    out = Path(args.output)
    for name in FILES:
        check_output_file(out / name)
    profile = read_profile(args.profile)
    try:
        cal = calibrate(profile, device, units, args.max_tokens)
    except ValueError as err:
        raise UserError(f"{args.profile}: {err}") from None
    table = summary(cal)
    out.mkdir(parents=True, exist_ok=True)
    keep = ["model", "unit", "tokens", "seconds", "flops", "bytes", "before_s", "after_s",
            "loo_s", "err_before", "err_after", "err_loo"]  # fmt: skip
    atomic_write_text(out / "errors.csv", cal.rows[keep].to_csv(index=False, float_format="%.6g"))
    atomic_write_text(out / "summary.csv", table.to_csv(index=False, float_format="%.4g"))
    atomic_write_text(out / "device.yaml", device_yaml(cal, profile, args))
    atomic_write_text(
        out / "cost_table.csv",
        cost_table(profile, device.name, args.max_tokens).to_csv(index=False),
    )
    text = report(cal, profile, table, args)
    atomic_write_text(out / "README.md", text)
    f = cal.fitted
    print(
        f"{device.name}: compute_efficiency {f.compute_efficiency}, bandwidth_efficiency "
        f"{f.bandwidth_efficiency}, overhead_us {f.overhead_us}, non_overlap {f.non_overlap}; "
        f"report in {out}/"
    )
    for line in profile.skipped:
        print(f"skipped: {line}")
    return 0


def _command(args) -> str:
    return (f"splitsim calibrate {args.profile} --device {args.device} --fit-units "
            f"{args.fit_units} --max-tokens {args.max_tokens} -o {args.output}")  # fmt: skip


def device_yaml(cal, profile, args) -> str:
    """The fitted spec as a `devices:` entry, the source of every fitted value in a comment."""
    f, d = cal.fitted, cal.device
    src = f"fitted by `{_command(args)}` ({', '.join(m.folder for m in profile.models)})"
    return "\n".join([
        f"# {d.name} fitted to measured kernel times: {src}",
        f"{d.name}:",
        "  kind: server",
        f"  description: {d.description}",
        "  peak_tflops: {" + ", ".join(f"{k}: {v:g}" for k, v in d.peak_tflops.items()) + "}",
        f"  memory_bandwidth_gb_s: {d.memory_bandwidth_gb_s:g}",
        f"  memory_gb: {d.memory_gb:g}",
        f"  compute_efficiency: {f.compute_efficiency}  # {src}",
        f"  bandwidth_efficiency: {f.bandwidth_efficiency}  # {src}",
        f"  overhead_us: {f.overhead_us}  # {src}",
        f"  non_overlap: {f.non_overlap}  # {src}",
        "",
    ])  # fmt: skip


def _pct(x) -> str:
    return "-" if pd.isna(x) else f"{x:.1%}"


def report(cal, profile, table: pd.DataFrame, args) -> str:
    f, d = cal.fitted, cal.device
    lines = [
        f"# {d.name} against measured kernel times ({profile.gpu})",
        "",
        f"Generated by `{_command(args)}` (do not edit by hand).",
        "",
        "Measured: Vidur's per-operator medians, TP1 rows, summed per unit: `mlp` = the MLP "
        "half of a block (post-attention norm, up/gate projection, activation, down "
        "projection, residual add), `attn_proj` = the attention half without the attention "
        "kernel (not in the files), `embed` = the token gather. Predicted: "
        "`bound_s(FLOPs/F, bytes/B, non_overlap) + overhead_us` with the cost model's own "
        "FLOPs and bytes. Error = predicted / measured - 1; the table gives |error|.",
        "",
        f"Fitted on: {', '.join(cal.fit_units)} rows of all models, 1-{cal.max_tokens} tokens.",
        "",
        "| factor | before | after |",
        "|---|---|---|",
        f"| compute_efficiency | {d.compute_efficiency} | {f.compute_efficiency} |",
        f"| bandwidth_efficiency | {d.bandwidth_efficiency} | {f.bandwidth_efficiency} |",
        f"| overhead_us | {d.overhead_us} | {f.overhead_us} |",
        f"| non_overlap | {d.non_overlap} | {f.non_overlap} |",
        "",
        "Left out (factors fitted without the model):",
        "",
        *[
            f"- {m}: compute {x.compute_efficiency}, bandwidth {x.bandwidth_efficiency}, "
            f"overhead {x.overhead_us} us, non_overlap {x.non_overlap}"
            for m, x in cal.left_out.items()
        ],  # fmt: skip
        "",
        "| model | unit | tokens | before median | before worst | after median | after worst "
        "| left out median | left out worst |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table.itertuples():
        lines.append(
            f"| {r.model} | {r.unit} | {r.tokens} | {_pct(r.before_median)} | "
            f"{_pct(r.before_worst)} | {_pct(r.after_median)} | {_pct(r.after_worst)} | "
            f"{_pct(r.loo_median)} | {_pct(r.loo_worst)} |"
        )
    lines += ["", "Read from the profile:", ""]
    for m in profile.models:
        where = "catalog model" if m.in_catalog else "not in the catalog: shape from the columns"
        lines.append(f"- {m.folder} -> `{m.spec.name}` ({where})")
    lines += ["", "Skipped:", ""]
    lines += [f"- {s}" for s in profile.skipped] or ["- nothing"]
    lines.append("")
    return "\n".join(lines)
