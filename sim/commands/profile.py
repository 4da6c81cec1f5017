"""`splitsim profile`: measure a model unit by unit on this machine, write a cost table."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sim import limits as lim
from sim.atomic import atomic_write_text
from sim.errors import UserError
from sim.output import check_output_file


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
    p.add_argument("--repeats", type=lim.REPEATS.arg("--repeats"), default=5,
                   help="timed runs per point (median)")  # fmt: skip
    p.add_argument("--warmup", type=lim.WARMUP.arg("--warmup"), default=1,
                   help="untimed runs per point")  # fmt: skip
    p.add_argument("--threads", type=lim.THREADS.arg("--threads"), default=None,
                   help="torch threads (default: torch's)")  # fmt: skip
    p.add_argument("--torch-device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--device-name", default="local-cpu", help="name of the device in the outputs")
    p.add_argument("--peak-tflops", type=lim.PEAK_TFLOPS.arg("--peak-tflops"), default=None,
                   help="fp32 peak for the device spec (default: a matmul microbenchmark)")  # fmt: skip
    p.add_argument("--peak-bandwidth-gb-s", default=None,
                   type=lim.MEMORY_BANDWIDTH_GB_S.arg("--peak-bandwidth-gb-s"),
                   help="memory bandwidth peak (default: a copy microbenchmark)")  # fmt: skip
    p.add_argument("-o", "--output", required=True, help="cost table CSV; the spec goes beside it (.yaml)")  # fmt: skip
    p.add_argument("--quiet", action="store_true")


def _ints(text: str, flag: str, bound: lim.Bound) -> list[int]:
    """Comma-separated integers, each inside `bound` (at most 64 of them)."""
    parts = [v for v in text.split(",") if v.strip()]
    if not parts or len(parts) > 64:
        raise UserError(f"{flag}: expected 1 to 64 comma-separated integers, got '{text}'")
    try:
        values = [bound.parse(v) for v in parts]
    except ValueError as err:
        raise UserError(f"{flag}: each value {err}") from None
    return sorted(set(values))


def _model(ref: str):
    from sim.catalog import ModelSpec, get_model

    path = Path(ref)
    if ref.endswith((".yaml", ".yml")) and path.is_file():
        from sim.config import read_yaml
        from sim.config.load import build_spec

        raw = read_yaml(path)
        if len(raw) != 1 or not isinstance(next(iter(raw.values())), dict):
            raise UserError(f"{ref}: expected one model: {{name: {{fields}}}}")
        ((name, fields),) = raw.items()
        return build_spec(ModelSpec, str(name), fields, str(name), ref)
    return get_model(ref, "--model")


def _check_torch_device(name: str) -> None:
    """`--torch-device` must name a device torch knows and this machine has."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(
            f"--torch-device: '{name}' is not a torch device (cpu, cuda, cuda:1, mps ...)"
        ) from None
    if device.type == "cpu":
        return
    backend = getattr(torch, device.type, None)
    available = getattr(backend, "is_available", None)
    count = getattr(backend, "device_count", None)
    if available is None or not available():
        raise UserError(f"--torch-device: no {device.type} device on this machine; use cpu")
    if device.index is not None and count is not None and device.index >= count():
        raise UserError(
            f"--torch-device: {name}: this machine has {count()} {device.type} device(s)"
        )


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
    tokens = _ints(args.tokens, "--tokens", lim.TOKENS)
    batches = _ints(args.batch, "--batch", lim.BATCH)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    bad = [p for p in phases if p not in ("forward", "prefill", "decode")]
    if bad or not phases:
        raise UserError(f"--phases: expected forward, prefill, decode; got '{args.phases}'")
    spec = _model(args.model)
    _check_torch_device(args.torch_device)
    out = Path(args.output)
    check_output_file(out)  # before minutes of profiling
    check_output_file(out.with_suffix(".yaml"))
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
    atomic_write_text(out, frame.to_csv(index=False))
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
    atomic_write_text(yaml_path, device_yaml(device, comment))
    return (
        f"{len(frame)} rows -> {out}; device spec -> {yaml_path} "
        f"(achievable {factors.flops_per_s / 1e9:.1f} GFLOP/s, "
        f"{factors.bytes_per_s / 1e9:.1f} GB/s, overhead {factors.overhead_s * 1e6:.0f} us; "
        f"fitted roofline median error {factors.median_rel_error:.1%})"
    )
