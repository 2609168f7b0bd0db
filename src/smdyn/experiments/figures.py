"""Paper-style figures of Spherical Motion Dynamics, drawn only from what run directories hold.

Every figure function takes runs (run directories or loaded `rundir.Run` objects), draws on the ``axes``
it is given (as many as it has panels; legends and colour bars go to their figure) or on a new figure when
none are given, and returns the figure; only callers save it (`save_figure`).

Every figure here reads a run directory (``config.toml``, ``metrics.csv`` or ``metrics/``, ``train.csv``,
``events.csv``, ``summary.json``) and nothing else: the monitor computes, the sinks write, this module draws
(the layout of Wan et al., "Spherical Motion Dynamics", NeurIPS 2021, Figs 3–6). A figure never recomputes a
theoretical value: Δ* (Thm 3) and w* (Thms 1–2) are the ones the monitor recorded, NaN where no theory
applies. Only display-side smoothing happens here (the 200-step mean of Fig 3(a)) and the per-stage RMS of
Fig 5, both from recorded columns.

Runs with millions of records stay cheap: each metric becomes one [steps × layers] array by a vectorised
scatter (`rundir.Run.wide`) and long series are binned (`_plotting`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from smdyn.experiments._plotting import (
    _HIGHLIGHT,
    _RC,
    _THEORY,
    RunStyle,
    _as_runs,
    _figure_legend,
    _mark_events,
    _matplotlib,
    _no_theory_reason,
    _note,
    _palette,
    _pandas,
    _panels,
    _pick_layer,
    _raw_and_line,
    _reduce,
    _set_scale,
    _short,
    _theory_line,
    _with_metrics,
    highlight_layer,
    run_styles,
    save_figure,
)
from smdyn.experiments.rundir import NoDataError, Run, load_run
from smdyn.experiments.training_figures import stage_ratio_figure, training_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "NoDataError",
    "Run",
    "RunStyle",
    "angular_update_comparison_figure",
    "angular_update_figure",
    "highlight_layer",
    "load_run",
    "run_styles",
    "save_figure",
    "stage_ratio_figure",
    "training_figure",
    "unit_gradient_figure",
    "weight_norm_figure",
]

_MEAN_STEPS = 200  # the paper's Fig 3(a,d) averages ‖g̃‖² and h̃ over 200 iterations

# ---------------------------------------------------------------------------------------------- figures


def angular_update_figure(
    runs: Sequence[Run | str | os.PathLike[str]], *, layer: str | None = None, axes: Any = None
) -> Figure:
    """Angular update Δ_t of every monitored layer against Δ* = √(2λη/(1+α)), one panel per run.

    The paper's Fig 3(c,f) (one layer) and Fig 5(a,b,d,e) (all layers): raw Δ_t (Def 3, Eq 13) faint, its
    RMS over the monitor's trailing window solid — Δ* is the equilibrium value of √E[Δ²] (Thm 3) — and Δ*
    dashed. With more than six layers every layer's RMS is a thin line coloured by depth and one layer
    (``layer``, else the paper's ``layer2.0.conv2``, else the middle one) is highlighted with its raw Δ_t.

    """
    runs = _as_runs(runs)
    found = _with_metrics(runs, "angular update")
    styles = run_styles(runs)
    n = len(found)
    ncols = 1 if n == 1 else 2
    nrows = math.ceil(n / ncols)
    mpl = _matplotlib()
    with mpl.rc_context(_RC):
        fig, axes = _panels(axes, nrows, ncols, 8.0 if n == 1 else 12.5, 3.6 * nrows + 0.9)
        used_cmap = 0
        for ax, (i, run) in zip(axes.flat, found, strict=False):
            used_cmap = max(used_cmap, _angular_panel(ax, run, layer))
            ax.set_title(_panel_title(run, styles[i]))
        for ax in list(axes.flat)[n:]:
            ax.set_visible(False)
        if used_cmap:
            from matplotlib.cm import ScalarMappable
            from matplotlib.colors import Normalize

            sm = ScalarMappable(norm=Normalize(1, used_cmap), cmap="viridis")
            cb = fig.colorbar(sm, ax=axes.ravel().tolist(), shrink=0.9, pad=0.01, aspect=30)
            cb.set_label("RMS Δ of each layer, by depth (layer number)")
            from matplotlib.ticker import MaxNLocator

            cb.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        _figure_legend(fig, list(axes.flat)[:n], ncol=4)
        return fig


def _panel_title(run: Run, style: RunStyle) -> str:
    if style.label.startswith(run.name):
        return run.name
    return f"{run.name}\n{style.short}"


def _angular_panel(ax: Axes, run: Run, layer: str | None) -> int:
    """Draws one run's Δ panel; returns the number of layers drawn by colour map (0 if listed by name)."""
    mpl = _matplotlib()
    steps, raw = run.wide("angular_update")
    _, rms = run.wide("angular_update_rms")
    _, star = run.wide("theory_angular_update")
    hl = _pick_layer(run, layer)
    nl = len(run.layers)
    few = nl <= 6
    if few:
        colours = [_HIGHLIGHT] if nl == 1 else _palette(nl)
        for j in range(nl):
            _raw_and_line(ax, steps, raw[:, j], rms[:, j], colours[j], alpha=0.3, label=_short(run.layers[j]))
    else:
        cmap = mpl.colormaps["viridis"]
        x, _, _, rms_b = _reduce(steps, rms)
        for j in range(nl):
            if j != hl:
                ax.plot(x, rms_b[:, j], color=cmap(j / max(nl - 1, 1)), linewidth=0.7, alpha=0.75)
        name = _short(run.layers[hl])
        _raw_and_line(
            ax,
            steps,
            raw[:, hl],
            rms[:, hl],
            _HIGHLIGHT,
            alpha=0.28,
            lw=1.8,
            raw_label=f"{name}: raw Δ_t",
            label=f"{name}: RMS Δ",
        )
    # Δ* as recorded: one dashed line per distinct theory column (usually one: all layers share η, λ, α).
    x, _, _, star_b = _reduce(steps, star)
    drawn: list[np.ndarray] = []
    for j in [hl, *range(nl)]:
        col = star_b[:, j]
        if not np.isfinite(col).any() or any(np.allclose(col, d, equal_nan=True) for d in drawn):
            continue
        ax.plot(
            x,
            col,
            color=_THEORY,
            linestyle="--",
            linewidth=1.3,
            drawstyle="steps-post",
            zorder=5,
            label="Δ* = √(2λη/(1+α))  [Thm 3]",
        )
        drawn.append(col)
    notes = []
    why = _no_theory_reason(run, "theory_angular_update")
    if why:
        notes.append(f"no Δ*: {why}")
    if run.per_channel:
        notes.append("recorded per channel: Δ is the RMS over each layer's channels")
    if notes:
        _note(ax, "\n".join(notes))
    _mark_events(ax, [run])
    _set_scale(ax, raw[:, hl], keep=np.concatenate([star[:, hl], _reduce(steps, rms)[3].ravel()]))
    ax.set_xlabel("step")
    ax.set_ylabel("angular_update Δ_t (rad)")
    return 0 if few else nl


def angular_update_comparison_figure(
    runs: Sequence[Run | str | os.PathLike[str]], *, layer: str | None = None, axes: Any = None
) -> Figure:
    """One layer's angular update across runs, as the paper's Fig 4(c,f) and Fig 6(c) compare settings.

    Solid: RMS Δ over the monitor's window; dashed, same colour: that run's Δ* (Thm 3); raw Δ_t faint when
    three runs or fewer are shown (more would hide each other).
    """
    runs = _as_runs(runs)
    found = _with_metrics(runs, "angular update comparison")
    styles = run_styles(runs)
    mpl = _matplotlib()
    with mpl.rc_context(_RC):
        fig, axes = _panels(axes, 1, 1, 9.0, 5.0)
        ax = axes[0, 0]
        values, keep, names, shown = [], [], set(), set()
        for i, run in found:
            st = styles[i]
            hl = _pick_layer(run, layer)
            names.add(_short(run.layers[hl]))
            steps, raw = run.wide("angular_update")
            _, rms = run.wide("angular_update_rms")
            _, star = run.wide("theory_angular_update")
            label = None if st.group in shown else st.short
            shown.add(st.group)
            raw_col = raw[:, hl] if len(found) <= 3 else np.full(len(steps), np.nan)
            _raw_and_line(ax, steps, raw_col, rms[:, hl], st.colour, alpha=0.15, label=label, lw=1.6)
            x, _, _, sb = _reduce(steps, star[:, hl])
            ax.plot(x, sb, color=st.colour, linestyle="--", linewidth=1.1, drawstyle="steps-post")
            values.append(raw_col)
            keep.append(np.concatenate([_reduce(steps, rms[:, hl])[3], star[:, hl]]))
        _mark_events(ax, [r for _, r in found])
        _set_scale(ax, np.concatenate(values), keep=np.concatenate(keep))
        ax.set_xlabel("step")
        ax.set_ylabel("angular_update Δ_t (rad)")
        ax.set_title(f"Angular update of {', '.join(sorted(names))}: solid RMS Δ, dashed Δ* of the same run")
        _figure_legend(fig, [ax], extra=[(_theory_line(), "Δ* = √(2λη/(1+α))  [Thm 3]")])
        return fig


def weight_norm_figure(
    runs: Sequence[Run | str | os.PathLike[str]], *, layer: str | None = None, axes: Any = None
) -> Figure:
    """‖w_t‖ of one layer against the equilibrium w* of Thm 1 (SGD) / Thm 2 (SGDM), as in Fig 3(b,e).

    w* is the monitor's: the exact fixed point (w*)⁴ = Lη/(λ(1−α)(2 − λη/(1+α))) with L the trailing mean of
    ‖g̃‖² (SGD) or h̃ (SGDM). The lower panel shows ‖w_t‖/w*: 1 in equilibrium; after an LR drop it sits
    above 1 until the norm shrinks to the new w* (Cor 3.1), unless the weights were rescaled
    (Sec 4.2, Fig 5(c,f)).
    """
    runs = _as_runs(runs)
    found = _with_metrics(runs, "weight norm")
    styles = run_styles(runs)
    mpl = _matplotlib()
    with mpl.rc_context(_RC):
        fig, axes = _panels(axes, 2, 1, 9.0, 6.4, sharex=True, gridspec_kw={"height_ratios": [2.2, 1]})
        top, bottom = axes[0, 0], axes[1, 0]
        norms, ratios, names, shown, missing = [], [], set(), set(), []
        for i, run in found:
            st = styles[i]
            hl = _pick_layer(run, layer)
            names.add(_short(run.layers[hl]))
            steps, w = run.wide("weight_norm")
            _, ws = run.wide("theory_weight_norm")
            x, _, _, wb = _reduce(steps, w[:, hl])
            _, _, _, wsb = _reduce(steps, ws[:, hl])
            label = None if st.group in shown else st.short
            shown.add(st.group)
            top.plot(x, wb, color=st.colour, linewidth=1.6, label=label)
            top.plot(x, wsb, color=st.colour, linestyle="--", linewidth=1.2)
            with np.errstate(invalid="ignore", divide="ignore"):
                r = w[:, hl] / ws[:, hl]
            xr, _, _, rb = _reduce(steps, r)
            bottom.plot(xr, rb, color=st.colour, linewidth=1.3)
            norms.append(np.concatenate([wb, wsb]))
            ratios.append(rb)
            if _no_theory_reason(run, "theory_weight_norm"):
                missing.append(run.name)
        every = [r for _, r in found]
        _mark_events(top, every)
        _mark_events(bottom, every)
        _set_scale(top, np.array([]), keep=np.concatenate(norms))
        top.set_ylabel("weight_norm ‖w_t‖₂")
        top.set_title(f"Weight norm of {', '.join(sorted(names))}: solid ‖w_t‖, dashed w* of the same run")
        if missing:
            _note(top, f"no w* recorded for: {', '.join(missing)}")
        bottom.axhspan(0.9, 1.1, color="#2ca02c", alpha=0.1, linewidth=0, label="‖w‖/w* within ±10%")
        bottom.axhline(1.0, color=_THEORY, linewidth=0.9, linestyle="--")
        _set_scale(
            bottom, np.concatenate(ratios), keep=np.array([0.9, 1.1]), lo_q=1.0, hi_q=99.0, log_span=1e9
        )
        bottom.set_ylabel("‖w_t‖ / w*")
        bottom.set_xlabel("step")
        _figure_legend(fig, [top, bottom], extra=[(_theory_line(), "w*  [Thm 1 (SGD) / Thm 2 (SGDM)]")])
        return fig


def _trailing_mean(steps: np.ndarray, values: np.ndarray, span: int = _MEAN_STEPS) -> np.ndarray:
    """Mean over the trailing ``span`` steps (in records: span / the recording stride), NaN ignored."""
    pd = _pandas()
    stride = float(np.median(np.diff(steps))) if len(steps) > 1 else 1.0
    window = max(round(span / max(stride, 1.0)), 1)
    return pd.Series(values).rolling(window, min_periods=max(window // 4, 1)).mean().to_numpy()


def unit_gradient_figure(
    runs: Sequence[Run | str | os.PathLike[str]], *, layer: str | None = None, axes: Any = None
) -> Figure:
    """‖g̃_t‖² (Def 2, Eq 6) and h̃_t (Thm 2) of one layer, raw and their 200-step mean, as Fig 3(a,d).

    The 200-step mean estimates L = E‖g̃‖² (SGD) or E h̃ (SGDM) that sets w* (Thms 1–2). h̃ is drawn for
    runs with momentum; its mean close to that of ‖g̃‖² is the paper's observation that E⟨v, g⟩ ≈ 0.
    A mean falling towards 0 late in training means the unit gradient is collapsing (memorised data), where
    the equilibrium theory no longer applies.
    """
    runs = _as_runs(runs)
    found = _with_metrics(runs, "unit gradient")
    styles = run_styles(runs)
    has_h = [
        (i, r)
        for i, r in found
        if np.nanmax(r.metrics["momentum"].to_numpy(), initial=0.0) > 0
        and np.isfinite(r.wide("h_tilde")[1][:, _pick_layer(r, layer)]).any()
    ]
    panels = [("unit_grad_sq", "‖g̃_t‖² = ‖g_t‖²‖w_t‖²  [Def 2, Eq 6]", found)]
    if has_h:
        panels.append(("h_tilde", "h̃_t = (‖g_t‖² + 2α⟨v_{t−1}, g_t⟩)‖w_t‖²  [Thm 2]", has_h))
    mpl = _matplotlib()
    with mpl.rc_context(_RC):
        fig, axes = _panels(axes, 1, len(panels), 6.2 * len(panels), 4.6)
        names = set()
        for ax, (col, title, which) in zip(axes[0], panels, strict=True):
            values, keep, shown = [], [], set()
            for i, run in which:
                st = styles[i]
                hl = _pick_layer(run, layer)
                names.add(_short(run.layers[hl]))
                steps, v = run.wide(col)
                mean = _trailing_mean(steps, v[:, hl])
                label = None if st.group in shown else st.short
                shown.add(st.group)
                _raw_and_line(ax, steps, v[:, hl], mean, st.colour, alpha=0.15, label=label, lw=1.7)
                values.append(v[:, hl])
                keep.append(_reduce(steps, mean)[3])
            _mark_events(ax, [r for _, r in which])
            _set_scale(
                ax, np.concatenate(values), keep=np.concatenate(keep), lo_q=2.0, hi_q=98.0, log_span=5.0
            )
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.set_ylabel(col)
        fig.suptitle(
            f"Unit gradient of {', '.join(sorted(names))}: "
            f"faint raw, solid {_MEAN_STEPS}-step mean (estimates L)",
            fontsize=10.5,
            fontweight="bold",
        )
        _figure_legend(fig, list(axes[0]))
        return fig
