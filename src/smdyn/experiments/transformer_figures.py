"""The transformer experiment's own figure: each layer's RMS Δ over its reference Δ, one panel per run,
placed by block and coloured by role, so a reader sees at once whether attention, MLP or the QK-normalised
projections sit off their equilibrium (docs/design.md §6).

Layer names follow `smdyn.experiments.gpt`: ``blocks.<i>.attn.{q,k,v,o}.weight``,
``blocks.<i>.mlp.{fc,proj}.weight``; every other monitored matrix (``embed``, ``position``, ``head``) is
drawn at the side of the blocks. The figure draws numbers it is given (the claims' per-layer ratios): it
computes none, so it cannot disagree with ``claims.json``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from smdyn.experiments._plotting import _RC, _THEORY, _figure_legend, _matplotlib, _set_scale
from smdyn.experiments.rundir import NoDataError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["ROLES", "LayerPlace", "Panel", "layer_place", "layer_ratio_figure"]

#: Roles inside a block, in the order they are drawn side by side: (role, group).
ROLES: tuple[tuple[str, str], ...] = (
    ("q", "qk"),
    ("k", "qk"),
    ("v", "attention"),
    ("o", "attention"),
    ("fc", "mlp"),
    ("proj", "mlp"),
)
_GROUP_OF = dict(ROLES)
_BLOCK_LAYER = re.compile(r"^blocks\.(\d+)\.(?:attn\.(q|k|v|o)|mlp\.(fc|proj))\.weight$")
_COLOUR = {"qk": "#9467bd", "attention": "#1f77b4", "mlp": "#2ca02c", "outside": "#7f7f7f"}
_MARKER = {"q": "^", "k": "v", "v": "o", "o": "s", "fc": "D", "proj": "P", "outside": "X"}
_SPREAD = 0.6  # the roles of one block span this much of its unit on the x axis
_SIDE_STEP = 0.9  # x distance between the matrices drawn beside the blocks (room for their names)
_BAND = "#2ca02c"


@dataclass(frozen=True)
class LayerPlace:
    """Where a layer goes in the figure: its block (None outside the blocks), its role (``q`` ... ``proj``,
    or ``outside``) and the role's group (``qk``, ``attention``, ``mlp`` or ``outside``)."""

    block: int | None
    role: str
    group: str


def layer_place(name: str) -> LayerPlace:
    """The block, role and group of a monitored layer of the GPT, from its parameter name."""
    m = _BLOCK_LAYER.match(name)
    if m is None:
        return LayerPlace(None, "outside", "outside")
    role = m.group(2) or m.group(3)
    return LayerPlace(int(m.group(1)), role, _GROUP_OF[role])


@dataclass(frozen=True)
class Panel:
    """One run's panel: its title and each layer's RMS Δ / Δ_ref (NaN where there is no reference)."""

    title: str
    ratios: Mapping[str, float]
    qk_norm: bool = True  # q and k are QK-normalised (scale-invariant) in this run


def _role_label(role: str, qk_norm: bool) -> str:
    if role == "outside":
        return "outside the blocks (embeddings, head)"
    if role in ("q", "k"):
        return f"attn.{role} ({'QK-norm: scale-invariant' if qk_norm else 'no QK-norm'})"
    return f"attn.{role} (attention)" if role in ("v", "o") else f"mlp.{role} (MLP)"


def _draw_panel(ax: Axes, panel: Panel, depth: int, tol: float) -> list[float]:
    """Draws one run's points (one line of markers per role, ordered by block); returns the plotted ratios."""
    offsets = {r: (i / (len(ROLES) - 1) - 0.5) * _SPREAD for i, (r, _) in enumerate(ROLES)}
    by_role: dict[str, list[tuple[float, float]]] = {}
    outside: list[str] = []
    for name, ratio in panel.ratios.items():
        place = layer_place(name)
        if place.block is None:
            outside.append(name)
            continue
        if math.isfinite(ratio):
            by_role.setdefault(place.role, []).append((place.block + offsets[place.role], ratio))
    outside.sort()
    side = {n: depth + 0.2 + _SIDE_STEP * i for i, n in enumerate(outside)}
    shown = [(side[n], panel.ratios[n]) for n in outside if math.isfinite(panel.ratios[n])]
    if shown:
        by_role["outside"] = shown
    ax.axhspan(1 - tol, 1 + tol, color=_BAND, alpha=0.12, linewidth=0, zorder=0)
    ax.axhline(1.0, color=_THEORY, linestyle="--", linewidth=1, zorder=1)
    plotted: list[float] = []
    for role in [*(r for r, _ in ROLES), "outside"]:
        points = sorted(by_role.get(role, []))
        if not points:
            continue
        x, y = np.array(points).T
        group = _GROUP_OF.get(role, "outside")
        ax.plot(
            x,
            y,
            linestyle="none",
            marker=_MARKER[role],
            markersize=6,
            markeredgecolor="white",
            markeredgewidth=0.5,
            color=_COLOUR[group],
            label=_role_label(role, panel.qk_norm),
            gid=role,
            zorder=3,
        )
        plotted += y.tolist()
    if outside:
        ax.axvline(depth - 0.5, color="#cccccc", linewidth=0.8)
    ticks = [*range(depth), *side.values()]
    labels = [str(b) for b in range(depth)] + [n.removesuffix(".weight") for n in outside]
    ax.set_xticks(ticks, labels)
    ax.set_xlim(-0.6, (max(side.values()) if side else depth - 1) + 0.6)
    ax.grid(axis="x", visible=False)
    missing = sum(not math.isfinite(r) for r in panel.ratios.values())
    plural = "s" if missing != 1 else ""
    skipped = f"  ({missing} layer{plural} without a reference, not drawn)" if missing else ""
    ax.set_xlabel("block" + ("  |  outside the blocks" if outside else "") + skipped)
    ax.set_ylabel("RMS Δ / Δ_ref")
    ax.set_title(panel.title)
    _set_scale(ax, np.array([]), keep=np.array([*plotted, 1 - tol, 1 + tol]), log_span=8.0)
    return plotted


def layer_ratio_figure(panels: Sequence[Panel], tol: float) -> Figure:
    """RMS Δ / Δ_ref per layer, one panel per run: x the block (roles side by side within it, the matrices
    outside the blocks at the right), colour the role's group, the band 1 ± ``tol``.

    Raises:
        ValueError: ``tol`` is not a finite number in (0, 1), or no panel is given.
        NoDataError: no panel has a finite ratio to draw.
    """
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (0 < tol < 1):
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
    if not panels:
        raise ValueError("panels must hold at least one run's ratios")
    if not any(math.isfinite(r) for p in panels for r in p.ratios.values()):
        raise NoDataError("no layer has a finite RMS Δ / Δ_ref to draw")
    blocks = [layer_place(n).block for p in panels for n in p.ratios]
    depth = max((b + 1 for b in blocks if b is not None), default=0)
    mpl = _matplotlib()
    from matplotlib.patches import Patch

    with mpl.rc_context(_RC):
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.2 * len(panels), 4.9), layout="constrained")
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, panel in zip(axes, panels, strict=True):
            _draw_panel(ax, panel, depth, tol)
        fig.suptitle(
            f"Per-layer RMS Δ / Δ_ref over the claims' window; shaded band: 1 ± {100 * tol:g}%, "
            "the tolerance within which a layer matches",
            fontsize=10.5,
            fontweight="bold",
        )
        band = (Patch(facecolor=_BAND, alpha=0.25), f"1 ± {100 * tol:g}% (a layer matches)")
        _figure_legend(fig, list(axes), extra=[band], ncol=4)
        return fig
