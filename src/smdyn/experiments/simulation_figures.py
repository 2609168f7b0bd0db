"""The figures of ``smdyn simulate`` (`smdyn.experiments.simulation_report`), one function each; the
report saves them. matplotlib's Agg-backed ``Figure`` only: no pyplot, no global backend switch."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["save_all"]


def _new(nrows: int = 1, ncols: int = 1, **kw: Any) -> tuple[Figure, Any]:
    """A new figure and its axes, as ``pyplot.subplots`` returns them."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the simulation report needs matplotlib: pip install 'smdyn[experiments]'") from exc
    figsize = kw.pop("figsize", None)
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


def equilibrium_figure(eq: list[dict[str, Any]]) -> Figure:
    """RMS and mean Δ/Δ* (Thm 3) and ‖w‖²/w*² (Thms 1-2) over λη, per momentum."""
    fig, axes = _new(1, 2, figsize=(11, 4))
    for a in sorted({r["momentum"] for r in eq}):
        sel = [r for r in eq if r["momentum"] == a and r["lr"] == eq[0]["lr"]]
        x = [r["lr_wd"] for r in sel]
        axes[0].plot(x, [r["rms_ratio"] for r in sel], "o-", label=f"RMS, α={a:g}")
        axes[0].plot(x, [r["mean_ratio"] for r in sel], "x--", label=f"mean, α={a:g}")
        axes[1].plot(x, [r["norm_ratio"] for r in sel], "o-", label=f"α={a:g}")
    for ax, title in zip(axes, ("Δ / Δ* (Thm 3)", "‖w‖² / w*² (Thms 1-2, exact fixed point)"), strict=True):
        ax.set_xscale("log")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xlabel("λη")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.suptitle(f"Equilibrium, η = {eq[0]['lr']:g}, ‖g̃‖² uniform with CV 0.5")
    fig.tight_layout()
    return fig


def contraction_figure(curves: dict[str, Any]) -> Figure:
    """The squared distance to w*² against the fit, the linearised rate and the bound of Eqs 8/12."""
    fig, ax = _new(figsize=(7, 4.5))
    for i, (label, (err, f0, s0, e0, lin, bound, scale)) in enumerate(curves.items()):
        color = f"C{i}"
        t = np.arange(err.shape[0])
        u = t * scale
        ax.semilogy(u, err, color=color, lw=1.2, label=f"{label}: measured")
        if e0 > s0:
            ax.semilogy(u[s0:e0], err[s0] * f0 ** (t[s0:e0] - s0), color="k", ls=":", lw=1)
        ax.semilogy(u, err[s0] * lin ** (t - s0), color=color, ls="--", lw=0.8, label=f"{label}: linearised")
        if bound == bound:
            ax.semilogy(u, err[0] * bound**t, color=color, ls="-.", lw=0.8, label=f"{label}: bound Eq 8/12")
    ax.set_ylim(1e-13, 10)
    ax.set_xlim(0, 8)
    ax.set_xlabel("t · 2λη/(1−α)  (e-folds of the bound)")
    ax.set_ylabel("(‖w_t‖² − w*²)² / w*⁴")
    ax.set_title("Approach to equilibrium, λη = 1e-4 (V = 0, ‖w_0‖² = 2w*²; dotted: fit)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def lr_drop_figure(lag_curves: dict[Any, Any]) -> Figure:
    """Δ/Δ*_new after a drop by k, with and without the Sec 4.2 rescaling, per momentum."""
    momenta = sorted({key[0] for key in lag_curves})
    fig, axes = _new(1, len(momenta), figsize=(5.5 * len(momenta), 4), squeeze=False)
    for ax, a in zip(axes[0], momenta, strict=True):
        for i, k in enumerate(sorted({key[1] for key in lag_curves})):
            for name, ls in (("none", "-"), ("split", "--"), ("scale", "-."), ("keep", ":")):
                t, ratio = lag_curves[(a, k, name)]
                ax.plot(t, ratio, color=f"C{i}", ls=ls, lw=1, label=f"k={k}, rescale: {name}")
        ax.axvline(1.0, color="k", lw=0.8)
        ax.axhline(1.0, color="k", lw=0.5)
        ax.set_xlim(0, 4)
        ax.set_xlabel("steps after the drop / Corollary 3.1 (η after)")
        ax.set_ylabel("Δ_t / Δ*_new")
        ax.set_title(f"α = {a:g}")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    return fig


def thm3_bias_figure(bias: list[dict[str, Any]]) -> Figure:
    """Thm 3's deviation term against V/(L·l)."""
    fig, ax = _new(figsize=(7, 4.5))
    for i, a in enumerate((0.0, 0.9)):
        sel = [r for r in bias if r["momentum"] == a and math.isfinite(r["x"])]
        xs = [r["x"] for r in sel]
        ax.loglog(xs, [r["mean_abs_rel"] for r in sel], "o-", color=f"C{i}", label=f"mean |Δ/Δ*−1|, α={a:g}")
        ax.loglog(
            xs, [abs(r["mean_bias"]) for r in sel], "x--", color=f"C{i}", label=f"|E Δ/Δ* − 1|, α={a:g}"
        )
    xs = np.array(sorted(r["x"] for r in bias if math.isfinite(r["x"])))
    ax.loglog(xs, xs ** (1 / 3), "k-", lw=0.8, label="(V/(L·l))^⅓ (Thm 3, constant 1)")
    ax.set_xlabel("V / (L·l)")
    ax.set_title("Thm 3 bias term (λη = 1e-3, uniform noise)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def engines_figure(engines: dict[str, Any]) -> Figure:
    """The reduced engine against the full vector model and a logistic loss."""
    fig, axes = _new(2, 1, figsize=(8, 6), sharex=True)
    for name, color in (("full", "C0"), ("reduced", "C1"), ("logistic", "C2")):
        res = engines[name][2]
        t = np.arange(res.steps)
        rms = np.sqrt(np.mean(res.angular_update**2, axis=1)) / res.theory_angular_update
        axes[0].plot(t, rms, color=color, lw=0.8, label=name)
        axes[1].plot(t, np.mean(res.weight_norm_sq, axis=1) / res.theory_weight_norm_sq, color=color, lw=0.8)
    for ax, label in zip(axes, ("RMS over trajectories of Δ_t / Δ*", "mean ‖w_t‖² / w*_t²"), strict=True):
        ax.axhline(1.0, color="k", lw=0.5)
        ax.set_ylim(0.0, 2.0)
        ax.set_ylabel(label)
    axes[1].set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.suptitle("Full vector model, reduced Gram model, logistic regression (η=0.1, λ=0.01, α=0.9)")
    fig.tight_layout()
    return fig


def save_all(out: Path, eq: list, curves: dict, lag_curves: dict, bias: list, engines: dict) -> list[str]:
    """Draws every figure and writes it as ``<out>/<name>.png``; returns the file names in report order."""
    drawn = {
        "equilibrium.png": equilibrium_figure(eq),
        "contraction.png": contraction_figure(curves),
        "lr_drop.png": lr_drop_figure(lag_curves),
        "thm3_bias.png": thm3_bias_figure(bias),
        "engines.png": engines_figure(engines),
    }
    for name, fig in drawn.items():
        fig.savefig(out / name, dpi=110)
    return list(drawn)
