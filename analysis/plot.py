"""Make every figure a folder's data supports, and say which were skipped and why."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from analysis.figures import FIGURES
from analysis.io import TABLES, AnalysisError, MissingData, load_folder
from analysis.style import save_figure
from sim.atomic import remove_stale_temporaries

FIGURES_DIR = "figures"


@dataclass
class PlotReport:
    """What `plot_folder()` did: files written per figure, and skipped figures with reasons."""

    out_dir: Path
    written: dict[str, list[Path]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def check_names(names: Sequence[str]) -> list[str]:
    """The figure names, in registry order when none are given; unknown names are errors."""
    if not names:
        return list(FIGURES)
    for name in names:
        if name not in FIGURES:
            raise AnalysisError(f"unknown figure '{name}'; known: {', '.join(FIGURES)}")
    return list(dict.fromkeys(names))


def plot_folder(
    folder: str | Path, names: Sequence[str] = (), formats: Sequence[str] = ("pdf", "png")
) -> PlotReport:
    """Write the figures (all, or `names`) that the folder supports to `folder/figures/`.

    Raises `AnalysisError` when the folder is missing, unreadable or supports none of them,
    or when `folder/figures` cannot take files (checked before any figure is drawn).
    """
    names = check_names(names)
    check_readable(Path(folder))
    data = load_folder(folder)
    if not data.sources:
        files = ", ".join(f for t in TABLES.values() for f in t.files)
        raise AnalysisError(f"{folder}: no result files to plot (looked for {files})")
    report = PlotReport(Path(folder) / FIGURES_DIR)
    prepare_figures_dir(report.out_dir)
    figures = {}
    for name in names:
        spec = FIGURES[name]
        broken = [data.errors[t] for t in spec.needs if t in data.errors]
        absent = [t for t in spec.needs if t not in data]
        if broken:
            report.skipped[name] = broken[0]
            continue
        if absent:
            files = ", ".join(f"{t}.csv" for t in absent)
            report.skipped[name] = f"no {files} in the folder"
            continue
        try:
            figures[name] = spec.function(*(data[t] for t in spec.needs))
        except MissingData as err:
            report.skipped[name] = str(err)
    if not figures:  # the reasons of figures whose tables are there say most
        found = {
            n: w for n, w in report.skipped.items() if set(FIGURES[n].needs) & set(data.sources)
        }
        reasons = "; ".join(f"{n}: {why}" for n, why in (found or report.skipped).items())
        raise AnalysisError(f"{folder}: nothing to plot ({reasons})")
    if report.out_dir.is_dir():
        remove_stale_temporaries(report.out_dir)  # what a killed `plot` left half-written
    for name, fig in figures.items():
        try:
            report.written[name] = save_figure(fig, report.out_dir / name, formats)
        except OSError as err:
            raise AnalysisError(f"{report.out_dir}: cannot write figures here: {err}") from None
    return report


def check_readable(folder: Path) -> None:
    """Refuse, in one line, a folder that is missing, not a folder or cannot be listed."""
    if not folder.exists():
        raise AnalysisError(f"{folder}: no such folder; give a run, sweep or capacity folder")
    if not folder.is_dir():
        raise AnalysisError(f"{folder}: not a folder; give a run, sweep or capacity folder")
    try:
        next(folder.iterdir(), None)
    except OSError as err:
        raise AnalysisError(f"{folder}: cannot read the folder: {err.strerror}") from None
    if not os.access(folder, os.R_OK | os.X_OK):
        raise AnalysisError(f"{folder}: cannot read the folder: permission denied")


def prepare_figures_dir(figures_dir: Path) -> None:
    """Check, before any figure is drawn, that `figures_dir` can take files: a file in its
    place is refused (never replaced), and the folder (or its parent, when it is still to
    be made) must accept a new file. Nothing is left behind by the check."""
    if figures_dir.is_symlink() or (figures_dir.exists() and not figures_dir.is_dir()):
        raise AnalysisError(
            f"{figures_dir}: exists and is not a folder; move it away to draw figures here"
        )
    probe_dir = figures_dir if figures_dir.is_dir() else figures_dir.parent
    try:
        tempfile.TemporaryFile(dir=probe_dir).close()
    except OSError as err:
        raise AnalysisError(f"{figures_dir}: cannot write figures here: {err.strerror}") from None
