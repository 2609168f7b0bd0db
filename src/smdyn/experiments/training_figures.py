"""Figures of training itself, drawn from run directories: loss and test accuracy (the paper's Fig 4 and
Fig 6(a,b)) and Δ/Δ* per learning-rate stage (the lag of Fig 5 and Cor 3.1 at a glance)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from smdyn.experiments._plotting import (
    _RC,
    _THEORY,
    RunStyle,
    _as_runs,
    _figure_legend,
    _mark_events,
    _matplotlib,
    _note,
    _pandas,
    _panels,
    _raw_and_line,
    _reduce,
    _set_scale,
    _with_metrics,
    run_styles,
)
from smdyn.experiments.rundir import NoDataError, Run

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["stage_ratio_figure", "training_figure"]


def _accuracy_scale(values: np.ndarray) -> tuple[float, str]:
    finite = values[np.isfinite(values)]
    return (100.0, "%") if len(finite) and finite.max() <= 1.0 else (1.0, "")


def training_figure(runs: Sequence[Run | str | os.PathLike[str]], *, axes: Any = None) -> Figure:
    """Training loss and test accuracy against step, runs overlaid, as the paper's Fig 4 and Fig 6(a,b).

    Runs that differ only in seed share a colour: each is drawn faint and, where their steps coincide,
    their mean solid (with the min–max band of test accuracy across seeds).
    """
    runs = _as_runs(runs)
    found = [(i, r) for i, r in enumerate(runs) if r.train is not None and len(r.train)]
    if not found:
        raise NoDataError("no run has a train.csv to draw loss and accuracy from")
    styles = run_styles(runs)
    has_test = any("test_accuracy" in r.train and r.train["test_accuracy"].notna().any() for _, r in found)
    has_loss = any("loss" in r.train and r.train["loss"].notna().any() for _, r in found)
    if not has_loss and not has_test:
        raise NoDataError("train.csv has neither a loss nor a test_accuracy column with values")
    mpl = _matplotlib()
    with mpl.rc_context(_RC):
        ncols = int(has_loss) + int(has_test)
        fig, axes = _panels(axes, 1, ncols, 6.2 * ncols, 4.6)
        ax_loss = axes[0, 0] if has_loss else None
        ax_acc = axes[0, -1] if has_test else None
        groups: dict[int, list[Run]] = {}
        for i, r in found:
            groups.setdefault(styles[i].group, []).append(r)
        first_style = {styles[i].group: styles[i] for i, _ in reversed(found)}
        every_acc = [
            r.train["test_accuracy"].to_numpy(dtype=np.float64)
            for _, r in found
            if "test_accuracy" in r.train
        ]
        scale, unit = _accuracy_scale(np.concatenate(every_acc) if every_acc else np.array([]))
        losses: list[np.ndarray] = []
        for g, members in groups.items():
            if ax_loss is not None:
                _loss_curves(ax_loss, members, first_style[g], losses)
            if ax_acc is not None:
                _accuracy_curves(ax_acc, members, first_style[g], scale)
        every = [r for _, r in found]
        if ax_loss is not None:
            _mark_events(ax_loss, every)
            _set_scale(ax_loss, np.concatenate(losses), lo_q=0.5, hi_q=99.5, log_span=4.0)
            ax_loss.set_title("Training loss: faint per step, solid running mean")
            ax_loss.set_xlabel("step")
            ax_loss.set_ylabel("loss (training batches)")
        if ax_acc is not None:
            _mark_events(ax_acc, every)
            ax_acc.set_title("Test accuracy")
            ax_acc.set_xlabel("step")
            ax_acc.set_ylabel(f"test_accuracy{f' ({unit})' if unit else ''}")
        _figure_legend(fig, [a for a in (ax_loss, ax_acc) if a is not None])
        return fig


def _same_steps(frames: list[Any], col: str) -> np.ndarray | None:
    """The common step grid of the members' finite ``col`` rows, or None when they differ."""
    grids = [f.loc[f[col].notna(), "step"].to_numpy() for f in frames]
    first = grids[0]
    if len(grids) > 1 and all(len(g) == len(first) and np.array_equal(g, first) for g in grids):
        return first
    return None


def _loss_curves(ax: Axes, members: list[Run], st: RunStyle, out: list[np.ndarray]) -> None:
    pd = _pandas()
    frames = [r.train for r in members if "loss" in r.train and r.train["loss"].notna().any()]
    if not frames:
        return
    window = max(5, max(len(f) for f in frames) // 100)
    smooth = []
    for f in frames:
        steps, loss = f["step"].to_numpy(), f["loss"].to_numpy(dtype=np.float64)
        _raw_and_line(ax, steps, loss, None, st.colour, alpha=0.15)
        smooth.append(pd.Series(loss).rolling(window, min_periods=1).mean().to_numpy())
        out.append(loss)
    if _same_steps(frames, "loss") is not None:
        x, _, _, m = _reduce(frames[0]["step"].to_numpy(), np.mean(smooth, axis=0))
        ax.plot(x, m, color=st.colour, linewidth=1.7, label=st.short)
        return
    for k, (f, s) in enumerate(zip(frames, smooth, strict=True)):
        x, _, _, m = _reduce(f["step"].to_numpy(), s)
        ax.plot(x, m, color=st.colour, linewidth=1.5, label=st.short if k == 0 else None)


def _accuracy_curves(ax: Axes, members: list[Run], st: RunStyle, scale: float) -> None:
    frames = [
        r.train for r in members if "test_accuracy" in r.train and r.train["test_accuracy"].notna().any()
    ]
    if not frames:
        return
    evals = [f.loc[f["test_accuracy"].notna(), ["step", "test_accuracy"]] for f in frames]
    grid = _same_steps(frames, "test_accuracy")
    if grid is not None:
        acc = np.stack([e["test_accuracy"].to_numpy(dtype=np.float64) for e in evals]) * scale
        ax.fill_between(grid, acc.min(0), acc.max(0), color=st.colour, alpha=0.15, linewidth=0)
        ax.plot(grid, acc.mean(0), color=st.colour, linewidth=1.6, marker="o", markersize=2.5, label=st.short)
        return
    for k, e in enumerate(evals):
        ax.plot(
            e["step"],
            e["test_accuracy"] * scale,
            color=st.colour,
            linewidth=1.4,
            marker="o",
            markersize=2.5,
            label=st.short if k == 0 else None,
        )


def _stage_table(run: Run) -> pd.DataFrame:
    """Per stage and layer: RMS Δ over the second half of the stage, mean Δ* there, and their ratio.

    The second half, because the first holds the approach to the new equilibrium (Cor 3.1); a ratio below 1
    there means the lag outlasted half the stage (Fig 5(a,d)); rescaling should put it at 1 (Sec 4.2).
    """
    pd = _pandas()
    m = run.metrics
    steps = m["step"].to_numpy()
    starts = run.stage_starts
    stage = np.searchsorted(starts, steps, side="right") - 1
    ends = np.append(starts[1:], steps.max() + 1)
    valid = stage >= 0
    s = np.maximum(stage, 0)
    late = valid & (steps >= (starts[s] + ends[s]) / 2.0)
    d = m.loc[late, ["param", "angular_update", "theory_angular_update"]].copy()
    d["stage"] = stage[late]
    d["d2"] = d["angular_update"] ** 2
    g = d.groupby(["stage", "param"], observed=True)
    t = pd.DataFrame(
        {"rms": np.sqrt(g["d2"].mean()), "star": g["theory_angular_update"].mean(), "n": g["d2"].count()}
    ).reset_index()
    with np.errstate(invalid="ignore", divide="ignore"):
        t["ratio"] = np.where(t["star"] > 0, t["rms"] / t["star"], np.nan)
    return t


def stage_ratio_figure(runs: Sequence[Run | str | os.PathLike[str]], *, axes: Any = None) -> Figure:
    """Δ/Δ* per layer and learning-rate stage, runs side by side: the lag of Fig 5 and Cor 3.1 at a glance.

    Left: RMS Δ over the second half of each stage divided by that stage's Δ*, one box (and one dot per
    layer) per run and stage; 1 is equilibrium (Thm 3). Without rescaling, late stages sit below 1 because
    the norm needs ~ln(k)(1−α)/(2λη) steps to shrink (Cor 3.1); with the k^-¼ rescaling they sit at 1
    (Sec 4.2). Right: the RMS Δ itself (median over layers, interquartile bars) and each run's Δ* (dashes),
    which also covers optimizers without a Δ* (Adam, Fig 6(c)).
    """
    runs = _as_runs(runs)
    found = _with_metrics(runs, "stage ratios")
    styles = run_styles(runs)
    tables = [(i, r, _stage_table(r)) for i, r in found]
    nstage = max(int(t["stage"].max()) + 1 if len(t) else 1 for _, _, t in tables)
    k = len(tables)
    width = min(0.8 / k, 0.3)
    offsets = (np.arange(k) - (k - 1) / 2) * width
    rng = np.random.default_rng(0)
    mpl = _matplotlib()
    from matplotlib.patches import Patch

    with mpl.rc_context(_RC):
        fig, axes = _panels(axes, 1, 2, 12.4, 4.8)
        ax_r, ax_d = axes[0]
        no_theory, shown, handles, ratios_all = [], set(), [], []
        for (i, run, t), off in zip(tables, offsets, strict=True):
            st = styles[i]
            if st.group not in shown:
                handles.append((Patch(facecolor=st.colour, alpha=0.6, edgecolor=st.colour), st.short))
                shown.add(st.group)
            have = t[np.isfinite(t["ratio"])]
            if not len(have):
                no_theory.append(run.name)
            for s in range(nstage):
                pos = s + 1 + off
                vals = have.loc[have["stage"] == s, "ratio"].to_numpy()
                if len(vals):
                    ratios_all.append(vals)
                    _box(ax_r, vals, pos, width, st.colour, rng)
                rows = t[t["stage"] == s]
                rms = rows["rms"].to_numpy()
                rms = rms[np.isfinite(rms)]
                if len(rms):
                    q1, med, q3 = np.percentile(rms, [25, 50, 75])
                    ax_d.errorbar(
                        [pos],
                        [med],
                        yerr=[[med - q1], [q3 - med]],
                        fmt="o",
                        color=st.colour,
                        markersize=4.5,
                        capsize=2.5,
                        linewidth=1.2,
                    )
                star = rows["star"].to_numpy()
                star = star[np.isfinite(star) & (star > 0)]
                if len(star):
                    ax_d.hlines(
                        np.median(star),
                        pos - width / 2,
                        pos + width / 2,
                        color=st.colour,
                        linestyle="--",
                        linewidth=1.6,
                    )
        ax_r.axhspan(0.9, 1.1, color="#2ca02c", alpha=0.1, linewidth=0)
        ax_r.axhline(1.0, color=_THEORY, linestyle="--", linewidth=1)
        labels = [f"LR stage {s + 1}" for s in range(nstage)] if nstage > 1 else ["whole run"]
        for ax in (ax_r, ax_d):
            ax.set_xticks(np.arange(1, nstage + 1), labels)
            ax.set_xlim(0.5, nstage + 0.5)
            ax.grid(axis="x", visible=False)
            for s in range(1, nstage):
                ax.axvline(s + 0.5, color="#cccccc", linewidth=0.8)
        ax_r.set_ylabel("RMS Δ / Δ*  (second half of each stage)")
        ax_r.set_title("RMS angular update over Δ*, one dot per layer")
        if no_theory:
            _note(ax_r, f"no Δ* recorded for: {', '.join(no_theory)}")
        if ratios_all:
            _set_scale(ax_r, np.array([]), keep=np.concatenate([*ratios_all, [0.9, 1.1]]), log_span=1e9)
        else:
            ax_r.text(
                0.5,
                0.5,
                "no run recorded a theoretical Δ*",
                ha="center",
                va="center",
                transform=ax_r.transAxes,
                color="#666666",
            )
        ax_d.set_yscale("log")
        ax_d.set_ylabel("RMS angular_update Δ (rad)")
        ax_d.set_title("RMS Δ per stage: median over layers (IQR bars), Δ* dashed")
        extra = [*handles, (Patch(facecolor="#2ca02c", alpha=0.2), "within ±10% of Δ*")]
        _figure_legend(fig, [], extra=extra)
        return fig


def _box(ax: Axes, vals: np.ndarray, pos: float, width: float, colour: str, rng: np.random.Generator) -> None:
    """One box of per-layer values in a run's colour, with the layers as jittered dots when few."""
    bp = ax.boxplot(
        vals, positions=[pos], widths=width * 0.85, patch_artist=True, showfliers=False, manage_ticks=False
    )
    for b in bp["boxes"]:
        b.set(facecolor=colour, alpha=0.3, edgecolor=colour)
    for part in ("whiskers", "caps"):
        for line in bp[part]:
            line.set(color=colour, linewidth=1)
    for line in bp["medians"]:
        line.set(color=colour, linewidth=2)
    if len(vals) <= 80:
        jitter = rng.uniform(-0.25, 0.25, len(vals)) * width
        ax.scatter(pos + jitter, vals, s=8, color=colour, alpha=0.85, linewidths=0, zorder=3)
