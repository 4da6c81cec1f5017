"""`splitsim catalog models|devices|policies`: what is built in."""

from __future__ import annotations

from pathlib import Path

from sim.catalog import devices, models
from sim.commands.table import format_table
from sim.costs import param_count


def run_catalog_args(args) -> int:
    return run_catalog(args.what, getattr(args, "scenario", None))


def _costs(d) -> str:
    """Where a device's unit times come from: the roofline, or a measured cost table."""
    if d.cost_table is None:
        return "roofline"
    return f"table {Path(d.cost_table).name}"


def _devices(ld) -> list:
    if ld is None:
        return list(devices().values())
    found = dict(ld.devices)
    for d in [*ld.group_devices, *ld.client_devices]:
        if d is not None:
            found.setdefault(d.name, d)
    return list(found.values())


def run_catalog(what: str, scenario: str | None = None) -> int:
    """Print a catalog table; with `scenario`, the file is validated and its own models and
    devices are listed too (a bad file is an error, never silently ignored)."""
    ld = None
    if scenario is not None:
        from sim.config import load_scenario

        ld = load_scenario(scenario)
    if what == "models":
        rows = [
            (
                m.name,
                m.architecture,
                m.layers + m.decoder_layers,
                m.hidden_size,
                m.heads,
                m.n_kv_heads,
                m.mlp_kind,
                f"{param_count(m) / 1e6:.1f}M",
                m.weight_dtype,
            )
            for m in (ld.models if ld is not None else models()).values()
        ]
        header = (
            "model",
            "architecture",
            "layers",
            "hidden",
            "heads",
            "kv_heads",
            "mlp",
            "params",
            "weights",
        )
    elif what == "devices":
        rows = [
            (
                d.name,
                d.kind,
                d.flops_per_s("fp16") / d.compute_efficiency / 1e12,
                d.memory_bandwidth_gb_s,
                d.memory_gb,
                d.compute_efficiency,
                d.bandwidth_efficiency,
                d.overhead_us,
                d.kernel_overhead_us,
                _costs(d),
            )
            for d in _devices(ld)
        ]
        header = (
            "device",
            "kind",
            "fp16_tflops",
            "mem_bw_gb_s",
            "memory_gb",
            "compute_eff",
            "bw_eff",
            "overhead_us",
            "kernel_overhead_us",
            "costs",
        )
    else:
        from sim.split import POLICIES

        rows = [
            (name, (POLICIES.get(name).__doc__ or "").strip().splitlines()[0])
            for name in POLICIES.names()
        ]
        header = ("policy", "description")
    print(format_table(header, rows))
    return 0
