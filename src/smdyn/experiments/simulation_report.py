"""``smdyn simulate``: every theorem of Spherical Motion Dynamics checked against simulated numbers.

Runs :func:`smdyn.simulation.simulate` over a grid of (η, λ, α) and writes ``simulation_report.md`` with
PNG figures: measured against theoretical angular update (Thm 3; RMS and mean) and weight norm (Thms 1-2)
in equilibrium; the measured per-step contraction of E[‖w_t‖² − w*²]² beside the bounds of Eqs 8/12 and
the linearised recurrence; the stationary variance of ‖w_t‖² against Eq 8's constant term; the steps to
the new equilibrium after a learning-rate drop against Corollary 3.1, with and without the rescaling of
Sec 4.2; Thm 3's bias term against V/(L·l); and a check of the reduced engine against the full vector
model and of a real scale-invariant loss. Settings outside a theorem's assumptions are labelled as
generalisations, and where theory and measurement disagree the report says so.

Hardware of the quoted runtimes: one shared CPU core (AMD EPYC), torch 2.13.0, numpy 2.4. ``quick``:
7-15 s; full: 55-80 s (the logistic model and the λη = 1e-5 horizons take most of it). Everything is
seeded; the numbers change only with the seed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from smdyn import theory
from smdyn.experiments._io import atomic_write_text
from smdyn.simulation import SimulationResult, simulate

__all__ = ["write_simulation_report"]

_L = 1.0  # E‖g̃‖² of the random model
_V = 0.25  # its variance: coefficient of variation 0.5
_TOLERANCES = (0.10, 0.05, 0.01)
_DROPS = (2, 10, 100)
_BUFFERS = ("split", "scale", "keep")  # what the Sec 4.2 rescaling does to the momentum buffer


@dataclass(frozen=True)
class _Plan:
    """What one report run covers (the quick plan is a subset of the full one)."""

    lrs: tuple[float, ...]
    lr_wds: tuple[float, ...]  # λη values of the equilibrium grid
    momenta: tuple[float, ...]
    trajectories: int
    contraction_lr_wds: tuple[float, ...]
    lag_lr_wd_after: float
    lag_momenta: tuple[float, ...]
    bias_variances: tuple[float, ...]  # V/L² with uniform noise
    bias_gamma_variances: tuple[float, ...]  # V/L² with gamma noise (no floor: a generalisation)
    full_dim: int
    full_steps: int
    logistic_steps: int


_QUICK = _Plan(
    lrs=(0.1,),
    lr_wds=(1e-4, 1e-3, 1e-2),
    momenta=(0.0, 0.9),
    trajectories=16,
    contraction_lr_wds=(1e-4, 1e-3),
    lag_lr_wd_after=1e-3,
    lag_momenta=(0.0, 0.9),
    bias_variances=(0.001, 0.01, 0.1, 0.3),
    bias_gamma_variances=(1.0,),
    full_dim=256,
    full_steps=2000,
    logistic_steps=1000,
)
_FULL = _Plan(
    lrs=(0.1, 1.0),
    lr_wds=(1e-5, 1e-4, 1e-3, 1e-2),
    momenta=(0.0, 0.5, 0.9, 0.99),
    trajectories=32,
    contraction_lr_wds=(1e-5, 1e-4, 1e-3, 1e-2),
    lag_lr_wd_after=1e-4,
    lag_momenta=(0.0, 0.5, 0.9, 0.99),
    bias_variances=(0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.2, 0.3, 0.33),
    bias_gamma_variances=(0.25, 1.0, 4.0),
    full_dim=1024,
    full_steps=6000,
    logistic_steps=2000,
)


# --------------------------------------------------------------------------------------------------
# Assumptions and small functions


def _regime(lr_wd: float, momentum: float, floor: float, L: float = _L) -> str:
    """Which theorem's assumptions a setting meets, or which ones fail (a generalisation).

    Thm 1 (SGD): λη ≪ 1 (taken as <= 0.01 here) and ‖g̃‖² > l > 2[2λη/(1−2λη)]²L (assumption 4).
    Thm 2 (SGDM): α ∈ (½, 1), λη < (1−√α)² (assumption 5) and l > 2[6λη/((1−α)³(1+α) − 8λη(1−α))]²L
    (assumption 8, with a positive denominator). Labels: ``A1`` λη not ≪ 1, ``A4``/``A8`` the floor l
    too low (or none), ``A5`` λη >= (1−√α)², ``α`` momentum outside (½, 1).
    """
    failed = []
    if lr_wd > 0.01:
        failed.append("A1")
    if momentum == 0.0:
        if not floor > 2.0 * (2.0 * lr_wd / (1.0 - 2.0 * lr_wd)) ** 2 * L:
            failed.append("A4")
        return "Thm 1" if not failed else "gen. (" + ", ".join(failed) + ")"
    if not 0.5 < momentum < 1.0:
        failed.append("α")
    if lr_wd >= (1.0 - math.sqrt(momentum)) ** 2:
        failed.append("A5")
    den = (1.0 - momentum) ** 3 * (1.0 + momentum) - 8.0 * lr_wd * (1.0 - momentum)
    if den <= 0 or not floor > 2.0 * (6.0 * lr_wd / den) ** 2 * L:
        failed.append("A8")
    return "Thm 2" if not failed else "gen. (" + ", ".join(failed) + ")"


def _uniform_floor(V: float, L: float = _L) -> float:
    """l = L − √(3V), the lower bound of uniform noise of mean L and variance V."""
    return L - math.sqrt(3.0 * V)


def _relax_steps(lr: float, wd: float, momentum: float) -> float:
    """1/(1 − ρ): steps per e-fold of |‖w‖² − w*²| by the linearised recurrence."""
    return 1.0 / (1.0 - float(theory.contraction_factor(lr, wd, momentum)))


def _bound_factor(lr: float, wd: float, momentum: float) -> float:
    """Eq 8/12's per-step factor 1 − 2λη/(1−α), NaN where it is <= 0 (the bound says nothing)."""
    try:
        return float(theory.approach_factor(lr, wd, momentum))
    except ValueError:
        return math.nan


def _fit_decay(err_sq: NDArray, hi: float, lo: float) -> tuple[float, int, int]:
    """Per-step factor of ``err_sq`` from a least-squares line through log(err²) where it lies in (lo, hi].

    The fit uses the suffix maximum of err² (its upper envelope), so a decay that oscillates (the
    momentum mode, past λη ≈ (1−√α)²/4) is fitted by its envelope instead of its zeros.
    """
    env = np.maximum.accumulate(err_sq[::-1])[::-1]
    inside = np.flatnonzero((env <= hi) & (env > lo))
    if inside.size < 20:
        return math.nan, 0, 0
    start, stop = int(inside[0]), int(inside[-1]) + 1
    t = np.arange(start, stop, dtype=np.float64)
    slope = np.polyfit(t, np.log(env[start:stop]), 1)[0]
    return float(math.exp(slope)), start, stop


def _lag(ratio: NDArray, tol: float) -> float:
    """Steps until |ratio − 1| <= tol for good; NaN if it is still outside at the end of the horizon."""
    outside = np.flatnonzero(np.abs(ratio - 1.0) > tol)
    if outside.size == 0:
        return 0.0
    last = int(outside[-1])
    return math.nan if last == ratio.shape[0] - 1 else float(last + 1)


def _fmt(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    if isinstance(value, int | np.integer):
        return str(int(value))
    a = abs(value)
    if a != 0 and (a < 1e-3 or a >= 1e5):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        out.append("| " + " | ".join(c if isinstance(c, str) else _fmt(c) for c in row) + " |")
    return out


# --------------------------------------------------------------------------------------------------
# Experiments


def _equilibrium(plan: _Plan, tick: Callable[[str], None]) -> list[dict[str, Any]]:
    """Thm 3 and Thms 1-2 in equilibrium over the (η, λ, α) grid, uniform noise V = 0.25 (l = 0.134)."""
    rows = []
    floor = _uniform_floor(_V)
    for lr in plan.lrs:
        for lr_wd in plan.lr_wds:
            wd = lr_wd / lr
            for a in plan.momenta:
                relax = _relax_steps(lr, wd, a)
                burn = math.ceil(3 * relax)
                window = max(2000, math.ceil(10 * relax))
                res = simulate(
                    lr, wd, a, steps=burn + window, trajectories=plan.trajectories, L=_L, V=_V,
                    noise="uniform", init_norm="equilibrium", seed=1,
                )  # fmt: skip
                s = _summary_with_mean(res, window)
                x_star = float(res.theory_weight_norm_sq[-1])
                paper_sq = float(theory.weight_norm_paper(_L, lr, wd)) ** 2 if a == 0 else math.nan
                var_bound = 2.0 * _V * lr * lr / floor  # Eq 8's constant term (SGD)
                # SGD, linearised: e' = ρe + η²(‖g̃‖² − L)/w*², so Var = η⁴V/(w*⁴(1 − ρ²))
                rho = float(theory.contraction_factor(lr, wd, a))
                var_lin = lr**4 * _V / (x_star**2 * (1.0 - rho**2)) if a == 0 else math.nan
                rows.append(
                    {
                        "lr": lr, "wd": wd, "lr_wd": lr_wd, "momentum": a,
                        "regime": _regime(lr_wd, a, floor),
                        "steps": burn + window, "window": window,
                        "rms_ratio": s["angular_update_rms_ratio"],
                        "mean_ratio": s["angular_update_mean_ratio"],
                        "theory_delta": s["theory_angular_update"],
                        "norm_ratio": s["weight_norm_sq_ratio"],
                        "norm_ratio_paper": s["weight_norm_sq_mean"] / paper_sq if a == 0 else math.nan,
                        "msd": s["weight_norm_sq_msd"], "var": s["weight_norm_sq_var"],
                        "var_bound": var_bound, "var_lin": var_lin,
                        "C_implied": s["weight_norm_sq_msd"] / (_V * lr * lr / floor),
                    }
                )  # fmt: skip
            tick(f"equilibrium grid η={lr:g} λη={lr_wd:g}")
    return rows


def _summary_with_mean(res: SimulationResult, window: int) -> dict[str, float]:
    s = res.summary(window)
    s["weight_norm_sq_mean"] = float(np.mean(res.weight_norm_sq[-window:]))
    return s


def _contraction(plan: _Plan, tick: Callable[[str], None]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Fit the per-step factor of E[‖w_t‖² − w*²]² from ‖w_0‖² = 2w*² (V = 0 and V = 0.25)."""
    rows: list[dict[str, Any]] = []
    curves: dict[str, Any] = {}
    lr = 0.1
    for lr_wd in plan.contraction_lr_wds:
        wd = lr_wd / lr
        for a in plan.momenta:
            x_star = float(theory.weight_norm(_L, lr, wd, a)) ** 2
            rho = float(theory.contraction_factor(lr, wd, a))
            relax = 1.0 / (1.0 - rho)
            bound = _bound_factor(lr, wd, a)
            init = math.sqrt(2.0 * x_star)
            # V = 0: one deterministic trajectory, fitted between 1e-2 and 1e-12 of w*⁴ (1e-8 at λη = 1e-5)
            lo = 1e-8 if lr_wd < 1e-4 else 1e-12
            steps = math.ceil(relax * (0.5 * math.log(1e-2 / lo) + 4.0)) + 200
            res = simulate(lr, wd, a, steps=steps, trajectories=1, L=_L, init_norm=init, seed=2)
            err = np.mean((res.weight_norm_sq - x_star) ** 2, axis=1) / x_star**2
            f0, s0, e0 = _fit_decay(err, 1e-2, lo)
            # V > 0: the trajectory mean of the squared error, fitted above 10x its stationary level
            steps_v = math.ceil(relax * 12.0) + 200
            res_v = simulate(
                lr, wd, a, steps=steps_v, trajectories=plan.trajectories, L=_L, V=_V, noise="uniform",
                init_norm=init, seed=3,
            )  # fmt: skip
            err_v = np.mean((res_v.weight_norm_sq - x_star) ** 2, axis=1) / x_star**2
            level = float(np.mean(err_v[-max(20, steps_v // 5) :]))
            f1, _, _ = _fit_decay(err_v, 1e-2, 10.0 * level)
            # Eqs 8/12 with B from t = 0: B = (‖w_0‖² − w*²)², all trajectories start there
            b0 = (init**2 - x_star) ** 2
            vanishing = (bound ** np.arange(steps_v)) * b0 if bound == bound else np.full(steps_v, math.nan)
            err_abs = err_v * x_star**2
            unit = _V * lr**2 / _uniform_floor(_V)  # Vη²/l
            efold = min(steps_v - 1, math.ceil(-1.0 / math.log(bound))) if bound == bound else 0
            if a == 0:
                ratio = err_abs / (vanishing + 2.0 * unit)
                holds, at_efold, c_min = float(np.max(ratio)), float(ratio[efold]), math.nan
            else:
                holds = at_efold = math.nan
                c_min = max(0.0, float(np.max(err_abs - vanishing))) / unit if bound == bound else math.nan
            rows.append(
                {
                    "lr_wd": lr_wd, "momentum": a, "regime": _regime(lr_wd, a, _L),
                    "measured": f0, "measured_noisy": f1, "linearised": rho**2, "bound": bound,
                    "vs_linearised": math.log(f0) / (2.0 * math.log(rho)),
                    "vs_bound": math.log(f0) / math.log(bound) if bound == bound else math.nan,
                    "vs_bound_noisy": math.log(f1) / math.log(bound) if bound == bound else math.nan,
                    "bound_holds": holds, "bound_at_efold": at_efold, "c_min": c_min,
                }
            )  # fmt: skip
            if lr_wd == 1e-4:
                scale = 2.0 * lr_wd / (1.0 - a)  # steps → e-folds of the bound
                curves[f"α = {a:g}"] = (err, f0, s0, e0, rho**2, bound, scale)
        tick(f"contraction λη={lr_wd:g}")
    return rows, curves


def _lags(plan: _Plan, tick: Callable[[str], None]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Steps until Δ is within 10/5/1% of the new Δ* after η is divided by k (V = 0), vs Corollary 3.1."""
    rows: list[dict[str, Any]] = []
    curves: dict[str, Any] = {}
    lr_after = 0.1
    wd = plan.lag_lr_wd_after / lr_after
    pre = 200
    for a in plan.lag_momenta:
        for k in _DROPS:
            lr0 = lr_after * k
            cor = int(theory.steps_to_new_equilibrium(k, lr_after, wd, a))
            cor_before = int(theory.steps_to_new_equilibrium(k, lr0, wd, a))
            post = max(4 * cor, 1000)
            sched = np.concatenate([np.ones(pre), np.full(post, 1.0 / k)])
            variants = (("none", False, "split"), *((m, True, m) for m in _BUFFERS))
            for name, rescale, rescale_v in variants:
                res = simulate(
                    lr0, wd, a, steps=pre + post, trajectories=1, L=_L, schedule=sched, rescale=rescale,
                    rescale_momentum=rescale_v, init_norm="equilibrium", seed=4,
                )  # fmt: skip
                ratio = res.angular_update[pre:, 0] / res.theory_angular_update[pre:]
                lags = [_lag(ratio, tol) for tol in _TOLERANCES]
                rows.append(
                    {
                        "momentum": a, "k": k, "rescale": name, "cor": cor, "cor_before": cor_before,
                        "lags": lags, "first": float(ratio[0]), "min": float(ratio.min()),
                        "max": float(ratio.max()),
                        "regime_before": _regime(lr0 * wd, a, _L),
                        "regime_after": _regime(lr_after * wd, a, _L),
                    }
                )  # fmt: skip
                curves[(a, k, name)] = (np.arange(post) / cor, ratio)
        tick(f"learning-rate drops α={a:g}")
    return rows, curves


def _bias(plan: _Plan, tick: Callable[[str], None]) -> list[dict[str, Any]]:
    """Thm 3's bias term: how far Δ_t strays from Δ* as V/(L·l) grows (λη = 1e-3, η = 0.1)."""
    rows = []
    lr, wd = 0.1, 1e-2
    settings = [("uniform", v) for v in plan.bias_variances] + [
        ("gamma", v) for v in plan.bias_gamma_variances
    ]
    for a in (0.0, 0.9):
        relax = _relax_steps(lr, wd, a)
        burn = math.ceil(3 * relax)
        window = 4000
        for noise, v in settings:
            res = simulate(
                lr, wd, a, steps=burn + window, trajectories=plan.trajectories, L=_L, V=v * _L**2,
                noise=noise, init_norm="equilibrium", seed=5,
            )  # fmt: skip
            d = res.angular_update[-window:]
            d_star = float(res.theory_angular_update[-1])
            per_traj = np.mean(d / d_star, axis=0)  # independent trajectories: their spread gives the error
            floor = _uniform_floor(v) if noise == "uniform" else 0.0
            x = v / (_L * floor) if floor > 0 else math.inf
            rel = np.abs(d / d_star - 1.0)
            thm = x ** (1.0 / 3.0)
            rows.append(
                {
                    "momentum": a, "noise": noise, "V": v, "l": floor, "x": x, "thm3_term": thm,
                    "mean_bias": float(np.mean(d)) / d_star - 1.0,
                    "mean_bias_se": float(np.std(per_traj, ddof=1) / math.sqrt(per_traj.size)),
                    "predicted_sgd": _mean_sqrt_ratio(noise, v) - 1.0 if a == 0 else math.nan,
                    "rms_bias": float(np.sqrt(np.mean(d * d))) / d_star - 1.0,
                    "mean_abs_rel": float(np.mean(rel)),
                    "p90_abs": float(np.quantile(np.abs(d - d_star), 0.9)),
                    "frac_outside": float(np.mean(rel > thm)) if math.isfinite(thm) else math.nan,
                    "allowed": min(thm, 1.0),
                    "regime": _regime(lr * wd, a, floor),
                }
            )  # fmt: skip
        tick(f"Thm 3 bias α={a:g}")
    return rows


def _mean_sqrt_ratio(noise: str, v: float) -> float:
    """E√(‖g̃‖²/L) for the noise distribution with V/L² = v.

    For SGD in equilibrium Δ_t ≈ Δ*·√(‖g̃_t‖²/L) (the norm barely moves in one step), so this is the
    predicted mean Δ/Δ* while the RMS stays 1. Uniform on 1 ± √(3v): (2/3)(b^1.5 − a^1.5)/(b − a);
    gamma of shape k = 1/v: Γ(k + ½)/(Γ(k)√k).
    """
    if noise == "uniform":
        lo, hi = 1.0 - math.sqrt(3.0 * v), 1.0 + math.sqrt(3.0 * v)
        return (2.0 / 3.0) * (hi**1.5 - lo**1.5) / (hi - lo)
    k = 1.0 / v
    return math.exp(math.lgamma(k + 0.5) - math.lgamma(k) - 0.5 * math.log(k))


def _engines(plan: _Plan, tick: Callable[[str], None]) -> dict[str, Any]:
    """Reduced engine against the full vector model (random gradient), and the logistic loss."""
    lr, wd, a = 0.1, 1e-2, 0.9
    steps, window = plan.full_steps, plan.full_steps // 2
    out: dict[str, Any] = {}
    common = {"steps": steps, "trajectories": 8, "L": _L, "V": _V, "noise": "uniform", "seed": 6}
    for engine in ("full", "reduced"):
        start = time.perf_counter()
        res = simulate(lr, wd, a, dim=plan.full_dim, engine=engine, **common)
        out[engine] = (_summary_with_mean(res, window), time.perf_counter() - start, res)
    tick("full vs reduced engine")
    start = time.perf_counter()
    n = plan.logistic_steps
    res = simulate(lr, wd, a, steps=n, trajectories=8, dim=plan.full_dim, gradient="logistic", seed=7)
    out["logistic"] = (_summary_with_mean(res, n // 2), time.perf_counter() - start, res)
    tick("logistic regression")
    return out


# --------------------------------------------------------------------------------------------------
# The report


def write_simulation_report(
    out_dir: str | Path, *, quick: bool = False, progress: Callable[[str], None] | None = None
) -> Path:
    """Run the simulations and write ``simulation_report.md`` and PNG figures into ``out_dir``.

    Args:
        out_dir: directory to write into (created if missing).
        quick: a reduced grid that finishes in seconds (the full one takes a few minutes).
        progress: called with a short line after each part, e.g. ``print``; silent if None.

    Returns:
        The path of ``simulation_report.md``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = _QUICK if quick else _FULL
    # Small tensors: extra threads only add synchronisation (and fight other work for the cores).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _write(out, plan, quick, progress)
    finally:
        torch.set_num_threads(threads)


def _write(out: Path, plan: _Plan, quick: bool, progress: Callable[[str], None] | None) -> Path:
    start = time.perf_counter()

    def tick(msg: str) -> None:
        if progress is not None:
            progress(f"[{time.perf_counter() - start:6.1f} s] {msg}")

    eq = _equilibrium(plan, tick)
    con, curves = _contraction(plan, tick)
    lags, lag_curves = _lags(plan, tick)
    bias = _bias(plan, tick)
    engines = _engines(plan, tick)
    # The text and the figures need what this module computes (its plan and helpers): imported here.
    from smdyn.experiments.simulation_figures import save_all
    from smdyn.experiments.simulation_markdown import markdown

    figures = save_all(out, eq, curves, lag_curves, bias, engines)
    tick("figures")
    text = markdown(plan, quick, eq, con, lags, bias, engines, figures, time.perf_counter() - start)
    path = out / "simulation_report.md"
    return atomic_write_text(path, text)
