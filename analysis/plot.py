"""Make every figure a folder's data supports, and say which were skipped and why."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from analysis.figures import FIGURES
from analysis.io import TABLES, AnalysisError, MissingData, load_folder
from analysis.style import save_figure

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

    Raises `AnalysisError` when the folder is missing, unreadable or supports none of them.
    """
    names = check_names(names)
    data = load_folder(folder)
    if not data.sources:
        files = ", ".join(f for t in TABLES.values() for f in t.files)
        raise AnalysisError(f"{folder}: no result files to plot (looked for {files})")
    report = PlotReport(Path(folder) / FIGURES_DIR)
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
    for name, fig in figures.items():
        report.written[name] = save_figure(fig, report.out_dir / name, formats)
    return report
