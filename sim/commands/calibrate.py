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
    p.add_argument("--fix", default="",
                   help="factors held instead of fitted, e.g. kernel_overhead_us=6.5,"
                        "non_overlap=0.48 (another GPU's fit as a prior)")  # fmt: skip
    p.add_argument("--before", default=None,
                   help="YAML file with the device's entry (name: {fields}) to report as "
                        "'before' and fit from, instead of the catalog's")  # fmt: skip
    p.add_argument("-o", "--output", required=True, help="report folder (files replaced)")


def _units(text: str) -> tuple[str, ...]:
    from sim.profile.gpu import FIT_UNITS

    units = tuple(dict.fromkeys(u.strip() for u in text.split(",") if u.strip()))
    bad = [u for u in units if u not in FIT_UNITS]
    if bad or not units:
        raise UserError(f"--fit-units: expected some of {', '.join(FIT_UNITS)}; got '{text}'")
    return units


_FIX_BOUNDS = {
    "compute_efficiency": lim.EFFICIENCY,
    "bandwidth_efficiency": lim.EFFICIENCY,
    "kernel_overhead_us": lim.Bound(0, 40),  # the fit's search box
    "non_overlap": lim.NON_OVERLAP,
}


def _fixed(text: str) -> dict[str, float]:
    """`--fix name=value,...` as {name: value}, each name a fitted factor, each value in range."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or name not in _FIX_BOUNDS:
            raise UserError(f"--fix: expected name=value with name one of "
                            f"{', '.join(_FIX_BOUNDS)}; got '{part}'")  # fmt: skip
        try:
            out[name] = float(_FIX_BOUNDS[name].parse(value.strip()))
        except ValueError as err:
            raise UserError(f"--fix {name}: {err}") from None
    return out


def _before(path: str | None, name: str):
    """The device entry `name` of a YAML file (`devices:` entry format), or the catalog's."""
    from pydantic import ValidationError

    from sim.catalog import get_device
    from sim.catalog.specs import DeviceSpec

    if path is None:
        return get_device(name, "--device")
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise UserError(f"--before: cannot read {path} ({err.strerror or err})") from None
    except yaml.YAMLError:
        raise UserError(f"--before: {path} is not valid YAML") from None
    if not isinstance(raw, dict) or not isinstance(raw.get(name), dict):
        raise UserError(f"--before: {path} has no entry '{name}: {{fields}}'")
    try:
        return DeviceSpec(name=name, **raw[name])
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise UserError(f"--before: {path}: {name}.{where}: {first['msg']}") from None


def run_calibrate(args: argparse.Namespace) -> int:
    from sim.catalog import get_device
    from sim.profile.gpu import calibrate, cost_table, summary
    from sim.profile.vidur import read_profile

    units = _units(args.fit_units)
    fixed = _fixed(args.fix)
    get_device(args.device, "--device")
    device = _before(args.before, args.device)
    if device.kind != "server":
        raise UserError(f"--device: '{device.name}' is a client; calibrate fits server GPUs")
    out = Path(args.output)
    for name in FILES:
        check_output_file(out / name)
    profile = read_profile(args.profile)
    try:
        cal = calibrate(profile, device, units, args.max_tokens, fixed)
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
        f"{f.bandwidth_efficiency}, kernel_overhead_us {f.kernel_overhead_us}, non_overlap "
        f"{f.non_overlap}; "
        f"report in {out}/"
    )
    for line in profile.skipped:
        print(f"skipped: {line}")
    return 0


def _command(args) -> str:
    extra = (f" --fix {args.fix}" if args.fix else "") + (
        f" --before {args.before}" if args.before else "")  # fmt: skip
    return (f"splitsim calibrate {args.profile} --device {args.device} --fit-units "
            f"{args.fit_units} --max-tokens {args.max_tokens}{extra} -o {args.output}")  # fmt: skip


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
        f"  compute_efficiency: {f.compute_efficiency}  # {_src(cal, 'compute_efficiency', src)}",
        f"  bandwidth_efficiency: {f.bandwidth_efficiency}  # "
        f"{_src(cal, 'bandwidth_efficiency', src)}",
        "  overhead_us: 0  # all of a unit's fixed time is counted per kernel",
        f"  kernel_overhead_us: {f.kernel_overhead_us}  # {_src(cal, 'kernel_overhead_us', src)}",
        f"  non_overlap: {f.non_overlap}  # {_src(cal, 'non_overlap', src)}",
        "",
    ])  # fmt: skip


def _src(cal, name: str, src: str) -> str:
    return f"held at {cal.fixed[name]} (--fix), not fitted" if name in cal.fixed else src


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
        "`bound_s(FLOPs/F, bytes/B, non_overlap) + overhead_us + kernels x "
        "kernel_overhead_us` with the cost model's own FLOPs and bytes and one kernel per "
        "summed operator. Error = predicted / measured - 1; the table gives |error|.",
        "",
        f"Fitted on: {', '.join(cal.fit_units)} rows of all models, 1-{cal.max_tokens} tokens"
        + (
            "; held, not fitted: " + ", ".join(f"{k} = {v}" for k, v in cal.fixed.items())
            if cal.fixed
            else ""
        )
        + ".",
        "",
        "| factor | before | after |",
        "|---|---|---|",
        f"| compute_efficiency | {d.compute_efficiency} | {f.compute_efficiency} |",
        f"| bandwidth_efficiency | {d.bandwidth_efficiency} | {f.bandwidth_efficiency} |",
        f"| overhead_us (per unit) | {d.overhead_us} | 0 |",
        f"| kernel_overhead_us | {d.kernel_overhead_us} | {f.kernel_overhead_us} |",
        f"| non_overlap | {d.non_overlap} | {f.non_overlap} |",
        "",
        "Left out (factors fitted without the model):",
        "",
        *[
            f"- {m}: compute {x.compute_efficiency}, bandwidth {x.bandwidth_efficiency}, "
            f"kernel overhead {x.kernel_overhead_us} us, non_overlap {x.non_overlap}"
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
