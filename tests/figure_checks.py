"""Checks a rendered figure must pass: no overlapping text, a line per policy, a colour per
policy, a paper width. Each check returns a list of problems (empty when it passes), so a
test can assert on one check or gather them all with `figure_problems`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import combinations

import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backend_bases import RendererBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import Collection
from matplotlib.colors import to_hex, to_rgb
from matplotlib.container import Container
from matplotlib.figure import Figure, FigureBase
from matplotlib.legend import Legend
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from analysis.style import FIGURE_WIDTHS_IN, MAX_FIGURE_HEIGHT_IN, paper_style, policy_style

TOUCH_PX = 1.0  # boxes may share this much (at 100 dpi) without counting as overlapping
WIDTH_TOLERANCE_IN = 0.15


def render(fig: Figure) -> RendererBase:
    """Draw `fig` (layout included) under the paper style, as `save_figure` would."""
    canvas = FigureCanvasAgg(fig)
    with paper_style():
        canvas.draw()
    return canvas.get_renderer()


# --- text -----------------------------------------------------------------------------------


def _visible_axes(fig: FigureBase) -> Iterator[Axes]:
    """Every visible axes of the figure, its subfigures and inset/secondary axes."""
    for ax in fig.axes:
        if ax.get_visible():
            yield ax
            yield from (c for c in ax.child_axes if c.get_visible())
    for sub in fig.subfigs:
        yield from _visible_axes(sub)


def _legends(fig: FigureBase) -> list[Legend]:
    """The visible legends of the figure and of its axes."""
    legends = list(fig.legends) + [ax.get_legend() for ax in _visible_axes(fig)]
    return [leg for leg in legends if leg is not None and leg.get_visible()]


def _axis_texts(ax: Axes) -> Iterator[tuple[str, Text]]:
    """(kind, text) of an axes: titles, axis labels, offset texts, drawn tick labels, texts."""
    yield from zip(("title", "left title", "right title"),
                   (ax.title, ax._left_title, ax._right_title), strict=True)  # fmt: skip
    for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
        yield f"{name} label", axis.label
        yield f"{name} offset", axis.get_offset_text()
        for tick in axis._update_ticks():  # the ticks within the view limits, as drawn
            yield f"{name} tick", tick.label1
            yield f"{name} tick", tick.label2
    for text in ax.texts:
        yield "text", text


def labelled_texts(fig: Figure) -> list[tuple[str, Text]]:
    """(kind, artist) of every visible, non-empty text in a drawn figure."""
    found: list[tuple[str, Text]] = [("figure text", t) for t in fig.texts]
    for ax in _visible_axes(fig):
        found += list(_axis_texts(ax))
    for leg in _legends(fig):
        found += [("legend", t) for t in leg.get_texts()] + [("legend title", leg.get_title())]
    return [(k, t) for k, t in found if t.get_visible() and t.get_text().strip()]


def _area(box: Bbox) -> float:
    return max(box.width, 0.0) * max(box.height, 0.0)


def _overlap(a: Bbox, b: Bbox) -> bool:
    """True when the boxes share more than TOUCH_PX in both directions."""
    dx = min(a.x1, b.x1) - max(a.x0, b.x0)
    dy = min(a.y1, b.y1) - max(a.y0, b.y0)
    return dx > TOUCH_PX and dy > TOUCH_PX


def _describe(kind: str, text: Text) -> str:
    return f"{kind} {text.get_text()!r}"


def text_overlaps(fig: Figure, renderer: RendererBase | None = None) -> list[str]:
    """Pairs of different visible texts whose boxes overlap, as readable messages."""
    renderer = renderer or render(fig)
    boxes = [(k, t, t.get_window_extent(renderer)) for k, t in labelled_texts(fig)]
    boxes = [(k, t, b) for k, t, b in boxes if _area(b) > 0]
    return [f"{_describe(ka, ta)} overlaps {_describe(kb, tb)}"
            for (ka, ta, a), (kb, tb, b) in combinations(boxes, 2)
            if ta is not tb and _overlap(a, b)]  # fmt: skip


def legend_covers(fig: Figure, renderer: RendererBase | None = None) -> list[str]:
    """Titles, axis labels and tick labels of any axes that a legend's frame covers."""
    renderer = renderer or render(fig)
    problems = []
    for leg in _legends(fig):
        frame = leg.get_window_extent(renderer)
        own = set(map(id, [*leg.get_texts(), leg.get_title()]))
        for ax in _visible_axes(fig):
            for kind, text in _axis_texts(ax):
                if id(text) in own or not (text.get_visible() and text.get_text().strip()):
                    continue
                if _overlap(frame, text.get_window_extent(renderer)):
                    problems.append(f"legend frame covers {_describe(kind, text)}")
    return problems


def outside_figure(fig: Figure, renderer: RendererBase | None = None) -> list[str]:
    """Texts and legends reaching beyond the figure's edges: a tight save would grow the
    image past its paper width (or cut them, saved without `bbox_inches="tight"`)."""
    renderer = renderer or render(fig)
    page = fig.bbox
    items = [(f"{k} {t.get_text()!r}", t.get_window_extent(renderer))
             for k, t in labelled_texts(fig)]  # fmt: skip
    items += [("legend", leg.get_window_extent(renderer)) for leg in _legends(fig)]
    return [f"{what} reaches {side} past the figure's edge"
            for what, box in items if _area(box) > 0
            for side, past in (("left", page.x0 - box.x0), ("right", box.x1 - page.x1),
                               ("below", page.y0 - box.y0), ("above", box.y1 - page.y1))
            if past > TOUCH_PX]  # fmt: skip


# --- policies ------------------------------------------------------------------------------


def _label_policy(label: str, policies: Iterable[str]) -> str | None:
    """The policy an artist's label names: its style label, alone or followed by " (...)"."""
    for p in policies:
        name = policy_style(p).label
        if label in (name, p) or label.startswith(f"{name} ("):
            return p
    return None


def _shows_data(artist: Artist) -> bool:
    """A visible artist with something drawn: a line with a finite point, a patch, a
    non-empty collection."""
    if not artist.get_visible():
        return False
    if isinstance(artist, Line2D):
        x, y = (np.asarray(v, float) for v in artist.get_data())
        return bool(np.any(np.isfinite(x) & np.isfinite(y)))
    if isinstance(artist, Collection):
        return len(artist.get_paths()) > 0
    return isinstance(artist, Patch)


def _color(artist: Artist) -> str | None:
    """The artist's main colour as #rrggbb (a line's colour, a patch's or collection's fill,
    else its edge)."""
    if isinstance(artist, Line2D):
        return to_hex(artist.get_color())
    if isinstance(artist, Patch):
        face = artist.get_facecolor()
        return to_hex(face if face[3] > 0 else artist.get_edgecolor())
    if isinstance(artist, Collection):
        colors = artist.get_facecolor()
        if len(colors) == 0 or colors[0][3] == 0:
            colors = artist.get_edgecolor()
        return to_hex(colors[0]) if len(colors) else None
    return None


def policy_artists(fig: Figure, policies: Iterable[str]) -> dict[str, list[Artist]]:
    """Visible drawn artists of each policy: by gid `policy:<name>`, or by label (a bar
    container's label counts for its bars)."""
    policies = list(dict.fromkeys(map(str, policies)))
    found: dict[str, list[Artist]] = {p: [] for p in policies}
    for ax in _visible_axes(fig):
        for artist in [*ax.lines, *ax.collections, *ax.patches]:
            gid = artist.get_gid() or ""
            policy = gid.split(":", 1)[1] if gid.startswith("policy:") else None
            policy = policy or _label_policy(artist.get_label(), policies)
            if policy in found and _shows_data(artist):
                found[policy].append(artist)
        for container in ax.containers:
            policy = _label_policy(container.get_label() or "", policies)
            if policy in found:
                found[policy] += [a for a in _container_artists(container) if _shows_data(a)]
    return found


def _container_artists(container: Container) -> list[Artist]:
    """A container's patches (bars) or its data line (error bars)."""
    if hasattr(container, "patches"):
        return list(container.patches)
    return [a for a in container if isinstance(a, Line2D | Collection)][:1]


def missing_policies(fig: Figure, policies: Iterable[str]) -> list[str]:
    """Policies of the data with no visible line, bar or band in the figure."""
    found = policy_artists(fig, policies)
    return [f"policy {p!r} has no visible artist" for p, arts in found.items() if not arts]


# Colour distances (CIE76 ΔE in CIELAB): below these two policies read as one colour, in
# normal vision or under simulated deuteranopia or protanopia (Machado et al. 2009, severity 1).
MIN_DELTA_E = 30.0
MIN_DELTA_E_CVD = 12.0
CVD_MATRICES = {
    "deuteranopia": np.array([[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
                              [-0.011820, 0.042940, 0.968881]]),
    "protanopia": np.array([[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216],
                            [-0.003882, -0.048116, 1.051998]]),
}  # fmt: skip


def _linear_rgb(color: str) -> np.ndarray:
    c = np.asarray(to_rgb(color), float)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _lab(linear: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of a linear-RGB colour."""
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                    [0.0193, 0.1192, 0.9505]]) @ linear / np.array([0.95047, 1.0, 1.08883])  # fmt: skip
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def colour_distances(a: str, b: str) -> dict[str, float]:
    """ΔE between two colours as seen with normal vision and each simulated deficiency."""
    la, lb = _linear_rgb(a), _linear_rgb(b)
    seen = {"normal": np.eye(3), **CVD_MATRICES}
    return {k: float(np.linalg.norm(_lab(np.clip(m @ la, 0, 1)) - _lab(np.clip(m @ lb, 0, 1))))
            for k, m in seen.items()}  # fmt: skip


def too_close(a: str, b: str) -> str | None:
    """Why two colours read as one (None when they are told apart)."""
    dist = colour_distances(a, b)
    if dist["normal"] < MIN_DELTA_E:
        return f"ΔE {dist['normal']:.0f} < {MIN_DELTA_E:.0f}"
    worst = min((k for k in CVD_MATRICES), key=dist.__getitem__)
    if dist[worst] < MIN_DELTA_E_CVD:
        return f"ΔE {dist[worst]:.0f} < {MIN_DELTA_E_CVD:.0f} with {worst}"
    return None


def policy_colours(fig: Figure, policies: Iterable[str]) -> dict[str, set[str]]:
    """The colours each policy is drawn in."""
    return {p: {_color(a) for a in arts} - {None}
            for p, arts in policy_artists(fig, policies).items()}  # fmt: skip


def shared_colours(fig: Figure, policies: Iterable[str]) -> list[str]:
    """Pairs of policies drawn in the same colour or in colours too close to tell apart."""
    colours = policy_colours(fig, policies)
    problems = []
    for a, b in combinations(colours, 2):
        for ca in sorted(colours[a]):
            for cb in sorted(colours[b]):
                why = "the same" if ca == cb else too_close(ca, cb)
                if why:
                    problems.append(f"policies {a!r} ({ca}) and {b!r} ({cb}) share a colour: {why}")
    return problems


# --- size ----------------------------------------------------------------------------------


def size_problems(fig: Figure) -> list[str]:
    """A width outside the paper's width family, or a height above the maximum."""
    width, height = fig.get_size_inches()
    problems = []
    if not any(abs(width - w) <= WIDTH_TOLERANCE_IN for w in FIGURE_WIDTHS_IN):
        problems.append(f"width {width:.2f} in is none of {FIGURE_WIDTHS_IN} in")
    if height > MAX_FIGURE_HEIGHT_IN:
        problems.append(f"height {height:.2f} in exceeds {MAX_FIGURE_HEIGHT_IN} in")
    return problems


def figure_problems(fig: Figure, policies: Iterable[str] = ()) -> list[str]:
    """Every problem the checks above find in `fig` (policies: those of the data drawn)."""
    renderer = render(fig)
    policies = list(policies)
    return [*size_problems(fig), *outside_figure(fig, renderer), *text_overlaps(fig, renderer),
            *legend_covers(fig, renderer),
            *missing_policies(fig, policies), *shared_colours(fig, policies)]  # fmt: skip
