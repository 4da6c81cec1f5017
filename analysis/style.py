"""One figure style: single-column paper width, Okabe–Ito colours, fixed look per policy.

Every figure function runs under `paper_style()` (through `@styled`), so a figure looks the
same whoever calls it; `save_figure()` writes vector PDF and PNG atomically.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

import matplotlib

from sim.atomic import atomic_write
from sim.records import POLICY_ORDER

# Okabe & Ito (2008), "Color Universal Design": distinguishable with every common
# colour-vision deficiency.
OKABE_ITO: dict[str, str] = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
}

# Two of Paul Tol's colours, told apart from the Okabe–Ito ones with every common deficiency
# (tests/test_figure_guard.py checks each pair of policy colours, simulated too).
WINE = "#882255"
SAND = "#DDCC77"

COLUMN_WIDTH_IN = 3.4  # single column of a two-column paper
DOUBLE_WIDTH_IN = 7.0
FIGURE_WIDTHS_IN: tuple[float, ...] = (COLUMN_WIDTH_IN, DOUBLE_WIDTH_IN)  # every figure's width
MAX_FIGURE_HEIGHT_IN = 8.0  # taller does not fit a page with its caption
FORMATS: tuple[str, ...] = ("pdf", "png", "svg")
PNG_DPI = 300


@dataclass(frozen=True)
class PolicyStyle:
    """How one policy looks in every figure: label, colour, marker and line style."""

    label: str
    color: str
    marker: str
    linestyle: str | tuple


# A colour per policy, each pair told apart (dp blue, dp_queue_aware vermillion: the load-aware
# DP is not a lighter shade of DP); marker and line style differ too, for print in grey.
POLICY_STYLES: dict[str, PolicyStyle] = {
    "server_only": PolicyStyle("server-only", OKABE_ITO["black"], "s", ":"),
    "greedy": PolicyStyle("greedy", OKABE_ITO["orange"], "v", "--"),
    "greedy_ratio": PolicyStyle("greedy-ratio", OKABE_ITO["reddish_purple"], "^", "-."),
    "best_cut": PolicyStyle("best-cut", OKABE_ITO["bluish_green"], "D", (0, (5, 1, 1, 1))),
    "dp": PolicyStyle("DP", OKABE_ITO["blue"], "o", "-"),
    "dp_queue_aware": PolicyStyle("DP queue-aware", OKABE_ITO["vermillion"], "h", (0, (4, 1.5))),
    "client_only": PolicyStyle("client-only", SAND, "x", (0, (1, 1))),
    "dp_batched": PolicyStyle("DP batched", "#8C564B", "*", (0, (3, 1, 1, 1))),
    "dp_phases": PolicyStyle("DP phases", OKABE_ITO["yellow"], "p", (0, (2, 1))),
    "dp_batched_phases": PolicyStyle("DP batched phases", WINE, "X", (0, (6, 2))),
}
_SPARE = ("#777777", "#8C564B", OKABE_ITO["yellow"])
# The records' order, with the load-aware DP right after the DP it extends.
_AFTER_DP = ("dp_queue_aware", "dp_batched", "dp_phases", "dp_batched_phases")
FIGURE_ORDER: tuple[str, ...] = tuple(
    q for p in POLICY_ORDER for q in ((p, *_AFTER_DP) if p == "dp" else (p,))
)

# Client and server in placement maps and cost figures.
CLIENT_COLOR = OKABE_ITO["sky_blue"]
SERVER_COLOR = OKABE_ITO["vermillion"]

RC: dict[str, object] = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "figure.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "legend.handlelength": 2.6,
    "legend.columnspacing": 1.0,
    "lines.linewidth": 1.3,
    "lines.markersize": 4,
    "axes.linewidth": 0.6,
    "axes.grid": True,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.35,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "figure.dpi": 100,
    "savefig.dpi": PNG_DPI,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
    "pdf.fonttype": 42,  # embed TrueType: editable text, accepted by publishers
    "ps.fonttype": 42,
    "figure.constrained_layout.h_pad": 0.02,
    "figure.constrained_layout.w_pad": 0.02,
}


def policy_style(policy: str) -> PolicyStyle:
    """The fixed style of a policy; an unknown policy gets a spare colour by its name."""
    if policy in POLICY_STYLES:
        return POLICY_STYLES[policy]
    color = _SPARE[sum(map(ord, policy)) % len(_SPARE)]
    return PolicyStyle(policy, color, "P", "-")


def ordered_policies(policies: Iterable[str]) -> list[str]:
    """Policies in the project's fixed order, unknown ones after, in order of appearance."""
    seen = list(dict.fromkeys(str(p) for p in policies))
    return [p for p in FIGURE_ORDER if p in seen] + [p for p in seen if p not in FIGURE_ORDER]


@contextmanager
def paper_style() -> Iterator[None]:
    """rcParams for figures readable at single-column width, restored on exit."""
    with matplotlib.rc_context(RC):
        yield


P = ParamSpec("P")
R = TypeVar("R")


def styled(func: Callable[P, R]) -> Callable[P, R]:
    """Run a figure function under `paper_style()`."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with paper_style():
            return func(*args, **kwargs)

    return wrapper


def parse_formats(text: str) -> list[str]:
    """'pdf,png' -> ['pdf', 'png']; raises ValueError naming a format that is not known."""
    formats = [f.strip().lower().lstrip(".") for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        shown = bad[0] if bad else text
        raise ValueError(f"unknown format '{shown}'; known: {', '.join(FORMATS)}")
    return list(dict.fromkeys(formats))


def save_figure(
    fig, stem: str | os.PathLike, formats: Iterable[str] = ("pdf", "png")
) -> list[Path]:
    """Write `stem.<fmt>` for each format; each file appears complete or not at all."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    with paper_style():
        for fmt in formats:
            target = stem.with_name(f"{stem.name}.{fmt}")
            atomic_write(
                target,
                lambda handle, fmt=fmt: fig.savefig(handle, format=fmt, metadata=_metadata(fmt)),
                binary=True,
            )
            written.append(target)
    return written


def _metadata(fmt: str) -> dict | None:
    """No creation dates in vector files, so the same data gives the same bytes."""
    if fmt == "pdf":
        return {"CreationDate": None, "Creator": "splitsim"}
    if fmt == "svg":
        return {"Date": None}
    return None
