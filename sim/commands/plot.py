"""`splitsim plot`: figures from a result, sweep or capacity folder (drawing lives in analysis/)."""

from __future__ import annotations

import argparse
import os

from sim.errors import UserError


def add_plot_parser(sub) -> None:
    p = sub.add_parser(
        "plot", help="draw the figures a result or sweep folder supports into DIR/figures/"
    )
    p.add_argument("folder", metavar="DIR", help="result folder (run, sweep or capacity)")
    p.add_argument("--figure", dest="figures", action="append", default=[], metavar="NAME",
                   help="figure to draw (repeatable or comma-separated; default: all supported)")  # fmt: skip
    p.add_argument("--format", dest="formats", default="pdf,png",
                   help="comma-separated file formats: pdf, png, svg (default pdf,png)")  # fmt: skip


def run_plot(args: argparse.Namespace) -> int:
    os.environ.setdefault("MPLBACKEND", "Agg")  # files only: never open a window
    from analysis.io import AnalysisError
    from analysis.plot import plot_folder
    from analysis.style import parse_formats

    try:
        formats = parse_formats(args.formats)
    except ValueError as err:
        raise UserError(f"--format: {err}") from None
    names = [n.strip() for arg in args.figures for n in arg.split(",") if n.strip()]
    try:
        report = plot_folder(args.folder, names, formats)
    except AnalysisError as err:
        raise UserError(str(err)) from None
    for name, paths in report.written.items():
        print(f"wrote {name}: {', '.join(str(p) for p in paths)}")
    for name, why in report.skipped.items():
        print(f"skipped {name}: {why}")
    return 0
