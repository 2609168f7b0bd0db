"""What every figure shares: the look (rc settings, colours, event lines), run styles and legends, the
binning that keeps million-record runs cheap to draw, and `save_figure`.

Long series are reduced to at most ``_MAX_POINTS`` bins per line (a noisy raw series as its per-bin min–max
band, which is what a dense line plot shows anyway; a smooth one as its bin mean). matplotlib is used
through ``matplotlib.figure.Figure`` and its Agg canvas only: no pyplot, no global backend switch, so drawing
a report never disturbs interactive plotting (a notebook, an open window).
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from smdyn.experiments.rundir import NoDataError, Run, load_run

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_MAX_POINTS = 1500  # bins per plotted line
_MAX_STAGES = 12  # more LR changes than this is a continuous schedule: no stage boxes, no event lines
_SHORT_LABEL = 52  # characters of a run label in a legend or panel title
_PAPER_LAYER = "layer2.0.conv2"  # the layer of the paper's Figs 3 and 4
_DPI = 150

_RC = {
    "font.size": 9.5,
    "axes.titlesize": 10.5,
    "axes.titleweight": "bold",
    "axes.labelsize": 9.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#e3e3e3",
    "grid.linewidth": 0.6,
    "legend.fontsize": 8.5,
    "legend.frameon": True,
    "legend.framealpha": 0.9,
    "legend.edgecolor": "#dddddd",
    "xtick.labelsize": 8.5,
    "ytick.labelsize": 8.5,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}
_EVENT_STYLE = {
    "lr_change": {"color": "#7f7f7f", "linestyle": (0, (4, 3)), "linewidth": 0.9, "label": "LR change"},
    "rescale": {"color": "#9467bd", "linestyle": ":", "linewidth": 1.3, "label": "rescale (k^-¼)"},
}
_HIGHLIGHT = "#d62728"
_THEORY = "#222222"


@dataclass(frozen=True)
class RunStyle:
    """How a run appears in every figure and table: its colour and its legend label.

    Runs whose configs differ only in seeds (and run names) share a ``group``, a colour and a label.
    """

    colour: str
    label: str
    group: int
    short: str  # the label cut to fit a legend


# ---------------------------------------------------------------------------------------------- loading


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("figures and reports need pandas: pip install 'smdyn[experiments]'") from exc
    return pandas


def _matplotlib() -> Any:
    try:
        import matplotlib
        import matplotlib.figure  # the Agg-backed Figure, no pyplot
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("figures need matplotlib: pip install 'smdyn[experiments]'") from exc
    return matplotlib


def _as_runs(runs: Any) -> list[Run]:
    if isinstance(runs, (str, os.PathLike, Run)) or not isinstance(runs, Sequence):
        raise TypeError(
            f"runs must be a sequence of run directories or Run objects, got {type(runs).__name__}"
        )
    if not runs:
        raise ValueError("runs must not be empty")
    return [load_run(r) for r in runs]


# ---------------------------------------------------------------------------------------------- styling


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


_IGNORED_KEYS = ("run.name", "run.out", "run.dir", "run.resume", "run.output")
_ALIASES = {
    "optim.lr": "η",
    "optim.weight_decay": "λ",
    "optim.wd": "λ",
    "optim.momentum": "α",
}
_VALUE_ONLY = ("optim.name", "model.name", "data.name", "schedule.name", "schedule.kind")
_SWITCHES = {"rescale.enabled": "rescale", "schedule.rescale": "rescale", "optim.nesterov": "Nesterov"}


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt_value(x) for x in v) + "]"
    return str(v)


def _label_part(key: str, value: Any) -> str:
    if key in _VALUE_ONLY:
        return _fmt_value(value)
    if isinstance(value, bool):
        what = _SWITCHES.get(key, key.rsplit(".", 1)[-1])
        return what if value else f"no {what}"
    return f"{_ALIASES.get(key, key.rsplit('.', 1)[-1])}={_fmt_value(value)}"


def run_styles(runs: Sequence[Run]) -> list[RunStyle]:
    """Colours and legend labels for runs shown together.

    A label names only what differs between the runs' configs (η, λ, α, optimizer, ...), so a legend stays
    short; runs that differ only in ``seed`` form one group with one colour (Fig 6 averages seeds).
    """
    flat = []
    for r in runs:
        f = _flatten(r.config)
        flat.append({k: v for k, v in f.items() if k not in _IGNORED_KEYS and k.rsplit(".", 1)[-1] != "seed"})
    keys = sorted({k for f in flat for k in f})
    differing = [
        k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat}) > 1
    ]
    order = {k: (0 if k in _VALUE_ONLY else 1 if k in _ALIASES else 2, k) for k in differing}
    differing.sort(key=order.__getitem__)
    groups: dict[str, int] = {}
    members: dict[int, list[Run]] = {}
    for r, f in zip(runs, flat, strict=True):
        key = json.dumps(f, sort_keys=True, default=str) if r.config else f"dir:{r.path.resolve()}"
        gi = groups.setdefault(key, len(groups))
        members.setdefault(gi, []).append(r)
    palette = _palette(len(groups))
    styles = []
    for r, f in zip(runs, flat, strict=True):
        key = json.dumps(f, sort_keys=True, default=str) if r.config else f"dir:{r.path.resolve()}"
        gi = groups[key]
        parts = [_label_part(k, f[k]) for k in differing if k in f]
        label = ", ".join(parts) if parts else _group_name([m.name for m in members[gi]])
        short = label if len(label) <= _SHORT_LABEL else label[: _SHORT_LABEL - 1].rstrip(", ") + "…"
        n = len(members[gi])
        if n > 1:
            label += f" ({n} runs)"
            short += f" ({n} runs)"
        styles.append(RunStyle(colour=palette[gi], label=label, group=gi, short=short))
    return styles


def _group_name(names: list[str]) -> str:
    """What the names of runs differing only in seed share ("fig6-sgdm-s0", "fig6-sgdm-s1" → "fig6-sgdm")."""
    if len(names) == 1:
        return names[0]
    same = 0
    for chars in zip(*names, strict=False):
        if len(set(chars)) > 1:
            break
        same += 1
    prefix = names[0][:same]
    prefix = re.sub(r"[-_. ]*(seed|s)?[-_. =]*$", "", prefix)
    return prefix or names[0]


def _palette(n: int) -> list[str]:
    # Colour-blind-safe qualitative colours (tab10 order, which the paper's figures also use).
    base = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
    base += ["#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d"]
    return [base[i % len(base)] for i in range(n)]


def _short(layer: str) -> str:
    return layer.removesuffix(".weight")


def _pick_layer(run: Run, layer: str | None) -> int:
    """Index of the layer to highlight: ``layer`` (a name or a prefix), the paper's, or the middle one."""
    names = run.layers
    if not names:
        raise NoDataError(f"{run.path}: no monitored layers")
    if layer is not None:
        for i, n in enumerate(names):
            if n == layer or n.startswith(f"{layer}.") or n.startswith(f"{layer}+"):
                return i
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise ValueError(f"layer {layer!r} is not monitored in {run.path} (layers: {shown})")
    for i, n in enumerate(names):
        if n.startswith(f"{_PAPER_LAYER}."):
            return i
    return len(names) // 2


def highlight_layer(run: Run, layer: str | None = None) -> str:
    """The layer the single-layer figures show: ``layer`` (a name or a prefix such as ``layer2.0.conv2``),
    else the paper's ``layer2.0.conv2`` (Figs 3–4) where the model has it, else the middle monitored layer.

    Raises:
        ValueError: ``layer`` is not monitored in ``run`` (the message lists what is).
        NoDataError: the run monitored no layer.
    """
    return run.layers[_pick_layer(run, layer)]


# ---------------------------------------------------------------------------------------------- drawing


def _reduce(steps: np.ndarray, values: np.ndarray, max_points: int = _MAX_POINTS) -> tuple[np.ndarray, ...]:
    """(x, lo, hi, mean) of ``values`` [T] or [T, k] in at most ``max_points`` bins of consecutive records.

    Below the limit every record is its own bin (lo = hi = mean = the value). NaN is ignored inside a bin;
    an all-NaN bin gives NaN (a gap in the line).
    """
    steps = np.asarray(steps, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if len(steps) <= max_points:
        return steps, values, values, values
    per = math.ceil(len(steps) / max_points)
    nbins = math.ceil(len(steps) / per)
    pad = nbins * per - len(steps)
    shape = (nbins, per, *values.shape[1:])
    v = np.concatenate([values, np.full((pad, *values.shape[1:]), np.nan)]).reshape(shape)
    x = np.concatenate([steps, np.full(pad, np.nan)]).reshape(nbins, per)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN bins
        return np.nanmean(x, axis=1), np.nanmin(v, axis=1), np.nanmax(v, axis=1), np.nanmean(v, axis=1)


def _raw_and_line(
    ax: Axes,
    steps: np.ndarray,
    raw: np.ndarray,
    line: np.ndarray | None,
    colour: str,
    *,
    alpha: float = 0.22,
    label: str | None = None,
    raw_label: str | None = None,
    lw: float = 1.5,
) -> None:
    """A noisy series faint (as a line, or a min–max band once binned) and its smooth summary solid."""
    x, lo, hi, _ = _reduce(steps, raw)
    if len(x) == len(steps):
        ax.plot(x, raw, color=colour, alpha=alpha, linewidth=0.7, label=raw_label)
    else:
        ax.fill_between(x, lo, hi, color=colour, alpha=alpha, linewidth=0, label=raw_label)
    if line is not None:
        xl, _, _, mean = _reduce(steps, line)
        ax.plot(xl, mean, color=colour, linewidth=lw, label=label)


def _mark_events(ax: Axes, runs: Sequence[Run]) -> None:
    """Vertical lines at the LR changes and rescales of the given runs, each step drawn once.

    None for a continuous schedule (a line per step would hide the data); Cor 3.1's lag and the Sec 4.2
    rescaling both start at these lines.
    """
    for kind, style in _EVENT_STYLE.items():
        found = [
            r.events.loc[r.events["kind"] == kind, "step"].to_numpy()
            for r in runs
            if not r.continuous and len(r.events)
        ]
        steps = np.unique(np.concatenate(found)) if found else np.array([])
        if not len(steps) or len(steps) > _MAX_STAGES * 2:
            continue
        kw = dict(style)
        label = kw.pop("label")
        for i, s in enumerate(steps):
            ax.axvline(s, zorder=1, alpha=0.85, label=label if i == 0 else None, **kw)


def _set_scale(
    ax: Axes,
    values: np.ndarray,
    *,
    keep: np.ndarray | None = None,
    lo_q: float = 0.5,
    hi_q: float = 99.5,
    log_span: float = 8.0,
) -> None:
    """Log y when all values are positive and their robust range spans more than ``log_span``×.

    Limits come from robust percentiles of ``values`` (a noisy raw series must not squash the plot) widened
    to include every finite value of ``keep`` (the smooth lines a reader must see whole).
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    k = np.asarray([] if keep is None else keep, dtype=np.float64)
    k = k[np.isfinite(k)]
    if not len(v) and not len(k):
        return
    lo, hi = np.percentile(v, [lo_q, hi_q]) if len(v) else (np.inf, -np.inf)
    if len(k):
        lo, hi = min(lo, k.min()), max(hi, k.max())
    positive = (len(v) == 0 or v.min() > 0) and lo > 0
    if positive and hi / lo > log_span:
        ax.set_yscale("log")
        ax.set_ylim(lo / 1.4, hi * 1.4)
    elif hi > lo:
        pad = 0.08 * (hi - lo)
        ax.set_ylim(max(lo - pad, 0.0) if lo >= 0 else lo - pad, hi + pad)


def _figure(nrows: int, ncols: int, width: float, height: float, **kw: Any) -> tuple[Any, np.ndarray]:
    _matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _panels(
    axes: Any, nrows: int, ncols: int, width: float, height: float, **kw: Any
) -> tuple[Any, np.ndarray]:
    """(figure, [nrows, ncols] axes): the ``axes`` a caller gave (their figure), or a new figure.

    Raises:
        ValueError: fewer axes than the figure has panels.
    """
    if axes is None:
        return _figure(nrows, ncols, width, height, **kw)
    given = np.atleast_1d(np.asarray(axes, dtype=object)).ravel()
    if len(given) < nrows * ncols:
        raise ValueError(f"axes: this figure draws {nrows * ncols} panel(s), got {len(given)} axes")
    return given[0].figure, given[: nrows * ncols].reshape(nrows, ncols)


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Writes ``fig`` as a PNG at ``path`` (its folder created), at the resolution the report uses."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=_DPI)
    return out


def _figure_legend(
    fig: Any, axes: Sequence[Axes], extra: Sequence[tuple[Any, str]] = (), ncol: int = 3
) -> None:
    """One legend under the panels, each label once: legends inside the axes would cover the data."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab and not lab.startswith("_"):
                seen.setdefault(lab, h)
    for h, lab in extra:
        seen.setdefault(lab, h)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncol=min(ncol, len(seen)))


def _with_metrics(runs: list[Run], what: str) -> list[tuple[int, Run]]:
    found = [(i, r) for i, r in enumerate(runs) if r.metrics is not None and len(r.metrics)]
    if not found:
        raise NoDataError(f"no run has metrics to draw the {what} from")
    return found


def _theory_line(style: str = "--") -> Any:
    from matplotlib.lines import Line2D

    return Line2D([], [], color=_THEORY, linestyle=style, linewidth=1.2)


def _no_theory_reason(run: Run, column: str) -> str | None:
    """Why ``column`` (a theory column) is NaN throughout the run: its most frequent recorded reason."""
    m = run.metrics
    if np.isfinite(m[column].to_numpy()).any():
        return None
    reasons = m.loc[m["reason"] != "", "reason"]
    return str(reasons.value_counts().index[0]) if len(reasons) else "no theoretical value recorded"


def _note(ax: Axes, text: str) -> None:
    ax.text(
        0.99,
        0.97,
        text,
        transform=ax.transAxes,
        ha="right",
        va="top",
        fontsize=8,
        color="#555555",
        bbox={"boxstyle": "round,pad=0.3", "facecolor": "white", "edgecolor": "#dddddd", "alpha": 0.9},
        wrap=True,
        zorder=10,
    )
