"""`splitsim profile`: measure a model unit by unit on this machine, write a cost table."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sim.errors import UserError


def add_profile_parser(sub) -> None:
    p = sub.add_parser(
        "profile",
        help="measure a model's per-unit times here; write a cost table and a device spec",
    )
    p.add_argument("--model", required=True,
                   help="catalog model name, or a YAML file {name: {model fields}}")  # fmt: skip
    p.add_argument("--tokens", required=True, help="sequence / context lengths, e.g. 64,128,256")
    p.add_argument("--batch", default="1", help="batch sizes, e.g. 1,4 (default 1)")
    p.add_argument("--phases", default="forward,decode",
                   help="forward, prefill, decode (default forward,decode)")  # fmt: skip
    p.add_argument("--granularity", default="block", choices=["block", "sublayer"])
    p.add_argument("--repeats", type=int, default=5, help="timed runs per point (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per point")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--torch-device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--device-name", default="local-cpu", help="name of the device in the outputs")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="fp32 peak for the device spec (default: a matmul microbenchmark)")  # fmt: skip
    p.add_argument("--peak-bandwidth-gb-s", type=float, default=None,
                   help="memory bandwidth peak (default: a copy microbenchmark)")  # fmt: skip
    p.add_argument("-o", "--output", required=True, help="cost table CSV; the spec goes beside it (.yaml)")  # fmt: skip
    p.add_argument("--quiet", action="store_true")


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag}: expected comma-separated integers, got '{text}'") from None
    if not values or min(values) < 1:
        raise UserError(f"{flag}: expected integers >= 1, got '{text}'")
    return sorted(set(values))


def _model(ref: str):
    from sim.catalog import ModelSpec, get_model

    path = Path(ref)
    if ref.endswith((".yaml", ".yml")) and path.is_file():
        import yaml
        from pydantic import ValidationError

        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict) or len(raw) != 1:
            raise UserError(f"{ref}: expected one model: {{name: {{fields}}}}")
        ((name, fields),) = raw.items()
        try:
            return ModelSpec(name=name, **fields)
        except (ValidationError, TypeError) as err:
            raise UserError(f"{ref}: {str(err).splitlines()[0]}") from None
    return get_model(ref, "--model")


def _memory_gb() -> float:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError, AttributeError):
        return 8.0


def run_profile(args: argparse.Namespace) -> int:
    from sim.profile import missing_extra

    hint = missing_extra()
    if hint:
        raise UserError(hint)
    tokens = _ints(args.tokens, "--tokens")
    batches = _ints(args.batch, "--batch")
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    bad = [p for p in phases if p not in ("forward", "prefill", "decode")]
    if bad or not phases:
        raise UserError(f"--phases: expected forward, prefill, decode; got '{args.phases}'")
    if args.repeats < 1 or args.warmup < 0:
        raise UserError("--repeats must be >= 1 and --warmup >= 0")
    spec = _model(args.model)
    out = Path(args.output)
    result = profile_to_files(
        spec, tokens, batches, phases, args.granularity == "sublayer", args.repeats,
        args.warmup, args.torch_device, args.device_name, args.threads, out,
        args.peak_tflops, args.peak_bandwidth_gb_s, quiet=args.quiet,
    )  # fmt: skip
    print(result)
    return 0


def profile_to_files(spec, tokens, batches, phases, sublayer, repeats, warmup, torch_device,
                     device_name, threads, out: Path, peak_tflops=None, peak_bw_gb_s=None,
                     quiet=True) -> str:  # fmt: skip
    """Profile, write `out` (CSV) and `out.yaml` (device spec); a summary to print."""
    import pandas as pd

    from sim.costs.tables import read_cost_table
    from sim.profile.factors import device_yaml, fit_factors, fitted_device, work_rows
    from sim.profile.measure import peak_rates, profile_model

    def progress(msg):
        if not quiet:
            print(f"profiling {msg}", file=sys.stderr, flush=True)

    rows = profile_model(spec, tokens, batches, phases, sublayer, repeats, warmup,
                         torch_device, device_name, threads, progress)  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame([r.__dict__ for r in rows])
    frame["seconds"] = frame["seconds"].map(lambda s: float(f"{s:.6g}"))
    frame.to_csv(out, index=False)
    table = read_cost_table(out)  # what users will load: check it round-trips
    fp32 = spec.model_copy(update={"weight_dtype": "fp32", "activation_dtype": "fp32"})
    w = work_rows(fp32, table)
    pf, pb = peak_rates(threads)
    if peak_tflops:
        pf = peak_tflops * 1e12
    if peak_bw_gb_s:
        pb = peak_bw_gb_s * 1e9
    factors = fit_factors(w["flops"], w["bytes"], w["seconds"], guess=(pf * 0.5, pb * 0.5))
    yaml_path = out.with_suffix(".yaml")
    device = fitted_device(
        device_name, factors, pf, pb, _memory_gb(), out.name,
        description=f"fitted by splitsim profile on {spec.name} (fp32, torch {torch_device})",
    )  # fmt: skip
    comment = (
        f"splitsim profile --model {spec.name} --tokens {','.join(map(str, tokens))}: "
        f"roofline factors fitted to {len(w)} batch-1 unit timings\n"
        f"median relative error of the fitted roofline: {factors.median_rel_error:.1%}\n"
        "paste under `devices:` in a scenario (cost_table is relative to the scenario file)"
    )
    yaml_path.write_text(device_yaml(device, comment))
    return (
        f"{len(frame)} rows -> {out}; device spec -> {yaml_path} "
        f"(achievable {factors.flops_per_s / 1e9:.1f} GFLOP/s, "
        f"{factors.bytes_per_s / 1e9:.1f} GB/s, overhead {factors.overhead_s * 1e6:.0f} us; "
        f"fitted roofline median error {factors.median_rel_error:.1%})"
    )
