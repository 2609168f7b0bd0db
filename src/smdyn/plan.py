"""Plan a learning-rate schedule: will each stage reach the angular-update equilibrium before the next change?

Without training, :func:`plan` iterates the noiseless recurrence of SGD(M) with weight decay on a
scale-invariant weight (Wan et al., "Spherical Motion Dynamics", NeurIPS 2021, Eqs 10-11 with g ⟂ w; DESIGN
§2): under isotropic gradients the state reduces exactly to the Gram matrix of (w_t, v_{t−1}), three scalars
x = ‖w‖², y = ‖v‖², z = ⟨w, v⟩, with

    ⟨w, v'⟩ = αz + λx,  ‖v'‖² = α²y + L/x + λ²x + 2αλz,
    x ← x − 2η⟨w, v'⟩ + η²‖v'‖²,  y ← ‖v'‖²,  z ← ⟨w, v'⟩ − η‖v'‖²,
    Δ_t = atan2(η‖v'_⊥‖, ‖w‖ − η⟨w, v'⟩/‖w‖),  ‖v'_⊥‖² = ‖v'‖² − ⟨w, v'⟩²/x.

Its fixed point is Thm 2's w* and has cos Δ = 1 − λη/(1+α) exactly, i.e. Δ ≈ √(2λη/(1+α)) (Thm 3): that
exact value is what "within 10/5/1%" is measured against. The map is homogeneous in L (the state scales as
√L), so with a constant L (default 1) the angular update does not depend on it; pass ``L`` as a function of
the step to see a changing unit-gradient norm.

For every learning-rate change it reports Corollary 3.1's estimate ⌈ln(k)(1−α)/(2λη)⌉ (η after the change)
and the recurrence's own lag: steps until Δ stays within 10%, 5% and 1% of the new equilibrium, continuing
with the lr held where the next change comes first — with and without the Sec 4.2 rescaling as
:class:`smdyn.Rescaler` applies it (same rule, same ``"split"`` treatment of the momentum buffer).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from smdyn import theory
from smdyn.rescale import _check_rule_args, _LrRule

__all__ = ["PlanResult", "add_plan_arguments", "plan", "plan_main", "run_plan"]

_TOLS = (0.10, 0.05, 0.01)
_HELD_CAP = 4_000_000  # steps searched past the stages' ends for their lags, in all (~2 s); beyond: inf
_SGD_EXPONENT = 0.25  # w* ∝ η^¼ (Thms 1-2)

Schedule = Callable[[int], float] | Sequence[tuple[int, float]] | Mapping[str, Any] | None


# --------------------------------------------------------------------------------------------------
# Inputs


def _number(name: str, value: Any, *, low: float | None = None, strict: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or (low is not None and (v <= low if strict else v < low)):
        bound = "" if low is None else f" {'>' if strict else '>='} {low:g}"
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return v


def _lr_sequence(schedule: Schedule, lr: float, steps: int) -> NDArray[np.float64]:
    """The learning rate of every step 0..steps−1 described by ``schedule`` (see :func:`plan`)."""
    if schedule is None:
        out = np.full(steps, lr)
    elif callable(schedule):
        out = np.array([lr * float(schedule(t)) for t in range(steps)], dtype=np.float64)
    elif isinstance(schedule, Mapping):
        out = _torch_schedule(schedule, lr, steps)
    elif isinstance(schedule, Sequence) and not isinstance(schedule, str):
        out = np.full(steps, lr)
        last = -1
        for item in schedule:
            if not (isinstance(item, Sequence) and len(item) == 2):
                raise TypeError(f"schedule: milestones must be (step, lr) pairs, got {item!r}")
            step, value = item
            if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step <= last:
                raise ValueError(f"schedule: milestone steps must be increasing ints >= 0, got {step!r}")
            last = int(step)
            out[last:] = _number("schedule lr", value, low=0.0)
    else:
        raise TypeError(
            "schedule must be None, a callable step -> lr multiplier, a list of (step, lr) milestones or a "
            f"mapping naming a torch.optim.lr_scheduler class, got {type(schedule).__name__}"
        )
    bad = np.flatnonzero(~(np.isfinite(out) & (out > 0)))
    if bad.size:
        raise ValueError(
            f"schedule gives lr {out[bad[0]]!r} at step {bad[0]}: the plan needs lr > 0 at every step "
            "(a schedule that ends at 0 can end at a small positive eta_min instead)"
        )
    return out


def _torch_schedule(spec: Mapping[str, Any], lr: float, steps: int) -> NDArray[np.float64]:
    """Step a real torch scheduler on a dummy parameter, so its semantics are torch's own."""
    import torch

    kwargs = dict(spec)
    name = kwargs.pop("name", None)
    cls = getattr(torch.optim.lr_scheduler, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.lr_scheduler.LRScheduler)):
        raise ValueError(
            f"schedule['name'] must name a torch.optim.lr_scheduler.LRScheduler class, got {name!r}"
        )
    if cls is torch.optim.lr_scheduler.ReduceLROnPlateau:
        raise ValueError("schedule: ReduceLROnPlateau depends on a metric; give its drops as milestones")
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=lr)
    try:
        sched = cls(opt, **kwargs)
    except TypeError as exc:
        raise ValueError(f"schedule: {name}({', '.join(kwargs)}) is not a valid call: {exc}") from exc
    out = np.empty(steps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dummy step is a no-op
        for t in range(steps):
            out[t] = float(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    return out


def _l_sequence(L: float | Callable[[int], float] | None, steps: int) -> NDArray[np.float64]:
    if L is None:
        return np.ones(steps)
    if callable(L):
        out = np.array([float(L(t)) for t in range(steps)], dtype=np.float64)
        bad = np.flatnonzero(~(np.isfinite(out) & (out > 0)))
        if bad.size:
            raise ValueError(f"L must be > 0 and finite at every step, got {out[bad[0]]!r} at step {bad[0]}")
        return out
    return np.full(steps, _number("L", L, low=0.0))


# --------------------------------------------------------------------------------------------------
# The recurrence


def _equilibrium_delta(lr: NDArray[np.float64] | float, wd: float, a: float) -> Any:
    """Exact Δ at the fixed point of the Gram recurrence: cos Δ = 1 − u, u = λη/(1+α) (≈ Thm 3's Δ*)."""
    u = np.asarray(lr) * wd / (1.0 + a)
    return np.arctan2(np.sqrt(u * (2.0 - u)), 1.0 - u)


def _fixed_point(L: float, lr: float, wd: float, a: float) -> tuple[float, float, float]:
    """(x, y, z) at the fixed point: x = w*² (Thm 2), ⟨w, v'⟩ = λx/(1+α), y = 2⟨w, v'⟩/η, z = −⟨w, v'⟩."""
    x = float(theory.weight_norm(L, lr, wd, a)) ** 2
    wv = wd * x / (1.0 + a)
    return x, 2.0 * wv / lr, -wv


def _transform(s: tuple[float, float, float], c: float) -> tuple[float, float, float]:
    """w ← c·w and the buffer's tangential part ÷ c, radial part × c (``Rescaler(momentum="split")``)."""
    x, y, z = s
    tangential = max(y - z * z / x, 0.0)
    return x * c * c, tangential / (c * c) + c * c * z * z / x, z * c * c


def _step(
    s: tuple[float, float, float], lr: float, wd: float, a: float, L: float
) -> tuple[float, tuple[float, float, float]]:
    """Δ of one step from state s and the next state."""
    x, y, z = s
    wv = a * z + wd * x
    vv = a * a * y + L / x + wd * wd * x + 2.0 * a * wd * z
    sx = math.sqrt(x)
    delta = math.atan2(lr * math.sqrt(max(vv - wv * wv / x, 0.0)), sx - lr * wv / sx)
    return delta, (x - 2.0 * lr * wv + lr * lr * vv, vv, wv - lr * vv)


@dataclass
class _Trajectory:
    angular_update: NDArray[np.float64]
    weight_norm: NDArray[np.float64]
    factor: NDArray[np.float64]  # weight factor applied before each step (1.0 where none)
    states: dict[int, tuple[float, float, float]]  # state before step t, at each stage end t


def _simulate(
    lrs: NDArray[np.float64],
    ls: NDArray[np.float64],
    wd: float,
    a: float,
    start: tuple[float, float, float],
    rule: _LrRule | None,
    ends: Sequence[int],
) -> _Trajectory:
    n = len(lrs)
    delta, norm, fac = np.empty(n), np.empty(n), np.ones(n)
    keep = set(ends)
    states = {}
    s = start
    for t in range(n):
        eta = float(lrs[t])
        if rule is not None:
            f = rule.observe(eta)[2]
            if f != 1.0:
                s = _transform(s, f)
                fac[t] = f
        norm[t] = math.sqrt(s[0])
        delta[t], s = _step(s, eta, wd, a, float(ls[t]))
        if t + 1 in keep:
            states[t + 1] = s
    return _Trajectory(delta, norm, fac, states)


def _held_lags(
    s: tuple[float, float, float], lr: float, wd: float, a: float, L: float, done: int, cap: int
) -> tuple[list[float], int]:
    """Continue with the lr held from state s (``done`` steps into the stage): lag for each tolerance.

    Stops once |Δ/Δ_eq − 1| has stayed below half the smallest tolerance for a momentum time scale, or
    after ``cap`` steps, giving ``inf`` for the tolerances not reached by then. Returns the lags and the
    steps it ran. The recurrence of
    :func:`_step` is inlined: this loop is where long plans spend their time.
    """
    ref = float(_equilibrium_delta(lr, wd, a))
    hi, mid, lo = (ref * (1.0 + t) for t in _TOLS)
    hi_l, mid_l, lo_l = (ref * (1.0 - t) for t in _TOLS)
    calm_hi, calm_lo = ref * (1.0 + 0.5 * _TOLS[-1]), ref * (1.0 - 0.5 * _TOLS[-1])
    out10 = out5 = out1 = -1
    settle = 50 + int(20 / (1.0 - a))
    calm = 0
    x, y, z = s
    aa, ww, two_aw, lr2 = a * a, wd * wd, 2.0 * a * wd, lr * lr
    sqrt, atan2 = math.sqrt, math.atan2
    for j in range(cap):
        wv = a * z + wd * x
        vv = aa * y + L / x + ww * x + two_aw * z
        sx = sqrt(x)
        d = atan2(lr * sqrt(max(vv - wv * wv / x, 0.0)), sx - lr * wv / sx)
        x, y, z = x - 2.0 * lr * wv + lr2 * vv, vv, wv - lr * vv
        if d > lo or d < lo_l:
            out1 = j
            if d > mid or d < mid_l:
                out5 = j
                if d > hi or d < hi_l:
                    out10 = j
        if calm_lo < d < calm_hi:
            calm += 1
            if calm >= settle:
                return [float(done + o + 1) for o in (out10, out5, out1)], j + 1
        else:
            calm = 0
    return [float(done + o + 1) if o < cap - settle else math.inf for o in (out10, out5, out1)], cap


# --------------------------------------------------------------------------------------------------
# Result


@dataclass
class PlanResult:
    """What :func:`plan` predicts: per-step series and one row per (stage, variant).

    Attributes:
        lr: learning rate of every step.
        L: the unit-gradient norm used at every step.
        theory_angular_update: Δ*_t = √(2λη_t/(1+α)) (Thm 3).
        theory_weight_norm: w*_t (Thm 2, exact fixed-point form) for L_t.
        runs: per variant (``"none"``, ``"rescaled"``): ``angular_update`` Δ_t and ``weight_norm`` ‖w_t‖
            of the recurrence, and ``factor``, the rescale applied before each step.
        stages: one dict per (stage, variant); see :meth:`table`.
        settings: the arguments of the plan.
    """

    lr: NDArray[np.float64]
    L: NDArray[np.float64]
    theory_angular_update: NDArray[np.float64]
    theory_weight_norm: NDArray[np.float64]
    runs: dict[str, dict[str, NDArray[np.float64]]]
    stages: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        """One dict per (stage, variant).

        Keys: ``stage``, ``variant``, ``start``, ``end`` (exclusive), ``lr`` (at the stage's start),
        ``lr_end``, ``k`` (lr before / lr after the change; NaN for the first stage),
        ``theory_angular_update`` (Δ* at the start), ``ratio_at_start`` (Δ/Δ* on the first step),
        ``corollary_3_1`` (Corollary 3.1's steps; NaN where there is no change), ``lag_10``, ``lag_5``,
        ``lag_1`` (steps from the stage's start until Δ stays within 10/5/1% of the equilibrium; past the
        stage's end the lr is held; ``inf`` if not reached within ``lag_search`` steps — a stage whose lr
        varies is not continued), ``lag_search``,
        ``mean_abs_deviation`` (mean |Δ/Δ* − 1| over the stage), ``in_equilibrium`` (``"yes"`` when the
        lag at the plan's ``tol`` fits in the stage).
        """
        return [dict(row) for row in self.stages]

    def to_string(self) -> str:
        """The table as aligned text, one line per (stage, variant)."""
        head = (
            "stage",
            "steps",
            "lr",
            "k",
            "variant",
            "Δ*",
            "Δ/Δ* first",
            "Cor 3.1",
            "lag 10%",
            "lag 5%",
            "lag 1%",
            "mean|Δ/Δ*−1|",
            "in equilibrium before next change",
        )
        rows = [head]
        for r in self.stages:
            rows.append(
                (
                    str(r["stage"]),
                    f"{r['start']}-{r['end']}",
                    f"{r['lr']:.4g}" + ("" if r["lr_end"] == r["lr"] else f"→{r['lr_end']:.3g}"),
                    _fmt(r["k"], ".3g"),
                    r["variant"],
                    f"{r['theory_angular_update']:.3e}",
                    f"{r['ratio_at_start']:.3f}",
                    _fmt(r["corollary_3_1"], ".0f"),
                    _fmt_lag(r["lag_10"], r["lag_search"]),
                    _fmt_lag(r["lag_5"], r["lag_search"]),
                    _fmt_lag(r["lag_1"], r["lag_search"]),
                    f"{r['mean_abs_deviation']:.3f}",
                    r["in_equilibrium"],
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
        s = self.settings
        rule = "SGD" if s["momentum"] == 0 else f"SGDM α={s['momentum']:g}"
        title = (
            f"{rule}, λ={s['wd']:g}, "
            f"{len(self.lr)} steps; rescale mode {s['mode']!r}. Lags: steps until Δ stays within the "
            "tolerance of its equilibrium (noiseless recurrence)."
        )
        return "\n".join([title, *lines])

    def __str__(self) -> str:
        return self.to_string()

    def plot(self, path: str | Path) -> Path:
        """Learning rate, Δ_t against Δ*_t and ‖w_t‖ against w*_t, saved as a PNG (needs matplotlib)."""
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("PlanResult.plot needs matplotlib: pip install smdyn[experiments]") from exc
        path = Path(path)
        steps = np.arange(len(self.lr))
        fig = Figure(figsize=(9, 8), layout="constrained")
        FigureCanvasAgg(fig)
        ax_lr, ax_d, ax_w = fig.subplots(3, 1, sharex=True)
        ax_lr.plot(steps, self.lr, color="black")
        ax_lr.set_yscale("log")
        ax_lr.set_ylabel("lr")
        ax_d.plot(steps, self.theory_angular_update, "k--", label="Δ* (Thm 3)")
        ax_w.plot(steps, self.theory_weight_norm, "k--", label="w* (Thm 2)")
        colors = {"none": "tab:blue", "rescaled": "tab:orange"}
        for name, run in self.runs.items():
            label = "no rescale" if name == "none" else "rescaled (Sec 4.2)"
            ax_d.plot(steps, run["angular_update"], color=colors[name], label=label)
            ax_w.plot(steps, run["weight_norm"], color=colors[name], label=label)
        ax_d.set_yscale("log")
        ax_d.set_ylabel("angular_update Δ_t (rad)")
        ax_w.set_ylabel("weight_norm ‖w_t‖")
        ax_w.set_xlabel("step")
        for ax in (ax_lr, ax_d, ax_w):
            for r in self.stages:
                if r["stage"] > 0 and r["variant"] == next(iter(self.runs)):
                    ax.axvline(r["start"], color="grey", lw=0.5, ls=":")
        ax_d.legend(loc="best", fontsize=8)
        ax_w.legend(loc="best", fontsize=8)
        s = self.settings
        ell = "varies" if s["L_varies"] else f"{s['L']:g}"
        fig.suptitle(f"smdyn plan: λ={s['wd']:g}, α={s['momentum']:g}, L={ell}")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        return path


def _fmt(value: float, spec: str) -> str:
    return "-" if isinstance(value, float) and math.isnan(value) else format(value, spec)


def _fmt_lag(value: float, searched: int) -> str:
    return f">{searched}" if math.isinf(value) else format(value, ".0f")


# --------------------------------------------------------------------------------------------------
# The plan


def plan(
    schedule: Schedule,
    lr: float,
    wd: float,
    momentum: float = 0.0,
    L: float | Callable[[int], float] | None = None,
    steps: int | None = None,
    rescale: bool | str = "both",
    *,
    mode: str = "drops",
    threshold: float = 0.2,
    floor: float = 0.1,
    w0: float | None = None,
    tol: float = 0.05,
) -> PlanResult:
    """Predict Δ*_t, Δ_t and ‖w_t‖ for a schedule, and the lag after each lr change, without training.

    Args:
        schedule: the learning rate over the steps, one of: ``None`` (constant ``lr``); a callable
            ``step -> multiplier`` of ``lr`` (as ``LambdaLR``); a list of ``(step, lr)`` milestones (the lr
            from that step on; ``lr`` before the first); a mapping ``{"name": "MultiStepLR", "milestones":
            [...], "gamma": 0.1}`` naming any ``torch.optim.lr_scheduler`` class with its arguments (it is
            stepped once per step on a dummy optimizer, so the semantics are torch's).
        lr: the base learning rate η (> 0).
        wd: weight decay λ (> 0), coupled as in ``torch.optim.SGD``.
        momentum: heavy-ball momentum α in [0, 1).
        L: E‖g̃‖² (SGD) or E h̃ (SGDM): a constant (default 1; Δ does not depend on it) or a callable
            ``step -> L``.
        steps: the number of optimizer steps (required).
        rescale: ``False`` (no rescaling), ``True`` (as :class:`smdyn.Rescaler` does) or ``"both"``.
        mode, threshold, floor: the :class:`smdyn.Rescaler` settings to mirror; ``threshold`` also splits
            the schedule into stages (a change with |ln(lr_t/lr_{t−1})| > −ln(1 − threshold)).
        w0: initial weight norm with a zero momentum buffer (a fresh start); default: start at the
            equilibrium of the first lr.
        tol: tolerance of the verdict ``in_equilibrium`` (one of 0.10, 0.05, 0.01).

    Returns:
        A :class:`PlanResult`.

    Raises:
        ValueError, TypeError: for bad arguments, naming the argument.
    """
    lr = _number("lr", lr, low=0.0)
    wd = _number("wd", wd, low=0.0)
    a = _number("momentum", momentum, low=0.0, strict=False)
    if a >= 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if steps is None or isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if rescale not in (False, True, "both"):
        raise ValueError(f"rescale must be False, True or 'both', got {rescale!r}")
    _check_rule_args(mode, threshold, floor)
    if tol not in _TOLS:
        raise ValueError(f"tol must be one of {_TOLS}, got {tol!r}")
    steps = int(steps)
    lrs = _lr_sequence(schedule, lr, steps)
    ls = _l_sequence(L, steps)
    if np.any(lrs * wd >= 2.0 * (1.0 + a)):
        raise ValueError("lr * wd must be < 2 * (1 + momentum) at every step for an equilibrium to exist")
    if w0 is None:
        start = _fixed_point(float(ls[0]), float(lrs[0]), wd, a)
    else:
        start = (_number("w0", w0, low=0.0) ** 2, 0.0, 0.0)

    limit = -math.log(1.0 - threshold) if threshold > 0 else 0.0
    jumps = np.abs(np.diff(np.log(lrs)))
    bounds = [0, *(int(t) + 1 for t in np.flatnonzero(jumps > limit)), steps]
    variants = {False: ["none"], True: ["rescaled"], "both": ["none", "rescaled"]}[rescale]
    star = np.asarray(theory.angular_update(lrs, wd, a))
    ref = np.asarray(_equilibrium_delta(lrs, wd, a))
    runs, rows = {}, []
    for name in variants:
        rule = _LrRule(mode, float(threshold), float(floor), _SGD_EXPONENT) if name == "rescaled" else None
        traj = _simulate(lrs, ls, wd, a, start, rule, bounds[1:])
        runs[name] = {
            "angular_update": traj.angular_update,
            "weight_norm": traj.weight_norm,
            "factor": traj.factor,
        }
        for i, (b0, b1) in enumerate(itertools.pairwise(bounds)):
            rows.append(_stage_row(i, name, b0, b1, lrs, ls, wd, a, traj, star, ref, tol))
    _continue_held(rows, wd, a)
    rows.sort(key=lambda r: (r["stage"], variants.index(r["variant"])))
    return PlanResult(
        lr=lrs,
        L=ls,
        theory_angular_update=star,
        theory_weight_norm=np.asarray(theory.weight_norm(ls, lrs, wd, a)),
        runs=runs,
        stages=rows,
        settings={
            "lr": lr,
            "wd": wd,
            "momentum": a,
            "L": float(ls[0]),
            "L_varies": bool(np.any(ls != ls[0])),
            "steps": steps,
            "rescale": rescale,
            "mode": mode,
            "threshold": threshold,
            "floor": floor,
            "w0": w0,
            "tol": tol,
        },
    )


def _stage_row(
    i: int,
    name: str,
    b0: int,
    b1: int,
    lrs: NDArray[np.float64],
    ls: NDArray[np.float64],
    wd: float,
    a: float,
    traj: _Trajectory,
    star: NDArray[np.float64],
    ref: NDArray[np.float64],
    tol: float,
) -> dict[str, Any]:
    err = np.abs(traj.angular_update[b0:b1] / ref[b0:b1] - 1.0)
    constant = bool(np.all(lrs[b0:b1] == lrs[b0])) and bool(np.all(ls[b0:b1] == ls[b0]))
    n = b1 - b0
    lags: list[float] = []
    for t in _TOLS:
        out = np.flatnonzero(err > t)
        lags.append(0.0 if out.size == 0 else float(out[-1] + 1) if out[-1] < n - 1 else math.nan)
    k = math.nan if i == 0 else float(lrs[b0 - 1] / lrs[b0])
    cor = math.nan
    if i > 0 and k != 1.0:
        cor = float(theory.steps_to_new_equilibrium(k, float(lrs[b0]), wd, a))
    lag_at_tol = lags[_TOLS.index(tol)]
    return {
        "stage": i,
        "variant": name,
        "start": b0,
        "end": b1,
        "lr": float(lrs[b0]),
        "lr_end": float(lrs[b1 - 1]),
        "k": k,
        "theory_angular_update": float(star[b0]),
        "ratio_at_start": float(traj.angular_update[b0] / star[b0]),
        "corollary_3_1": cor,
        "lag_10": lags[0],
        "lag_5": lags[1],
        "lag_1": lags[2],
        "mean_abs_deviation": float(np.mean(np.abs(traj.angular_update[b0:b1] / star[b0:b1] - 1.0))),
        "in_equilibrium": "yes" if lag_at_tol <= n else "no",
        "lag_search": n,
        "_held": (traj.states[b1], float(lrs[b0]), float(ls[b0])) if constant else None,
    }


def _continue_held(rows: list[dict[str, Any]], wd: float, a: float) -> None:
    """Lags not reached within a stage: continue with its lr held, longest stages first, ``_HELD_CAP`` steps
    in all (a warm-up of one-step stages must not use up the search). Unreached: ``inf``, searched
    ``lag_search`` steps from the stage's start.
    """
    budget = _HELD_CAP
    for row in sorted(rows, key=lambda r: r["end"] - r["start"], reverse=True):
        held = row.pop("_held")
        lags = [row["lag_10"], row["lag_5"], row["lag_1"]]
        if not any(math.isnan(g) for g in lags):
            continue
        n = row["end"] - row["start"]
        found = [math.inf] * len(lags)
        if held is not None and budget > 0:
            found, used = _held_lags(held[0], held[1], wd, a, held[2], n, budget)
            budget -= used
            row["lag_search"] = n + used
        row["lag_10"], row["lag_5"], row["lag_1"] = (
            f if math.isnan(g) else g for g, f in zip(lags, found, strict=True)
        )


# --------------------------------------------------------------------------------------------------
# Command line


def add_plan_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``smdyn plan`` options to ``parser`` (an ``argparse`` subparser) and return it."""
    parser.add_argument("--lr", type=float, required=True, help="base learning rate η")
    parser.add_argument(
        "--wd", type=float, required=True, help="weight decay λ (coupled, as torch.optim.SGD)"
    )
    parser.add_argument("--momentum", type=float, default=0.0, help="momentum α (0 for plain SGD)")
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps")
    parser.add_argument(
        "--milestones", type=int, nargs="*", default=[], help="steps at which lr is multiplied by --gamma"
    )
    parser.add_argument("--gamma", type=float, default=0.1, help="factor at each milestone (default 0.1)")
    parser.add_argument("--cosine", action="store_true", help="cosine decay over --steps (after --warmup)")
    parser.add_argument(
        "--eta-min", type=float, default=0.0, help="final lr of --cosine, as a fraction of lr"
    )
    parser.add_argument("--warmup", type=int, default=0, help="linear warm-up steps from lr/warmup to lr")
    parser.add_argument("--L", type=float, default=1.0, help="E‖g̃‖² or E h̃ (only ‖w‖ depends on it)")
    parser.add_argument("--w0", type=float, default=None, help="initial ‖w‖ (default: at equilibrium)")
    parser.add_argument(
        "--rescale", choices=("no", "yes", "both"), default="both", help="with Sec 4.2 rescaling or not"
    )
    parser.add_argument("--mode", choices=("drops", "continuous"), default="drops", help="rescaling mode")
    parser.add_argument("--out", default=None, help="output directory (default: a new folder under runs/)")
    return parser


def _cli_schedule(args: argparse.Namespace) -> Callable[[int], float]:
    milestones = sorted(args.milestones)
    steps, warm = args.steps, args.warmup

    def multiplier(t: int) -> float:
        m = args.gamma ** sum(t >= s for s in milestones)
        if warm and t < warm:
            m *= (t + 1) / warm
        if args.cosine:
            frac = max(t - warm, 0) / max(steps - warm, 1)
            m *= args.eta_min + (1.0 - args.eta_min) * 0.5 * (1.0 + math.cos(math.pi * frac))
        return m

    return multiplier


def run_plan(args: argparse.Namespace) -> int:
    """Run ``smdyn plan``: print the table; write stages.csv, series.csv, plan.png and config.toml."""
    rescale = {"no": False, "yes": True, "both": "both"}[args.rescale]
    try:
        result = plan(
            _cli_schedule(args),
            args.lr,
            args.wd,
            args.momentum,
            L=args.L,
            steps=args.steps,
            rescale=rescale,
            mode=args.mode,
            w0=args.w0,
        )
    except (ValueError, TypeError) as exc:
        print(f"smdyn plan: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("runs") / f"plan-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    print(result.to_string())
    rows = result.table()
    with open(out / "stages.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    stride = max(1, math.ceil(len(result.lr) / 20_000))  # keep the file small for long schedules
    cols: dict[str, NDArray[Any]] = {
        "step": np.arange(len(result.lr)),
        "lr": result.lr,
        "theory_angular_update": result.theory_angular_update,
        "theory_weight_norm": result.theory_weight_norm,
    }
    for name, run in result.runs.items():
        cols[f"angular_update_{name}"] = run["angular_update"]
        cols[f"weight_norm_{name}"] = run["weight_norm"]
    with open(out / "series.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(cols)
        for t in range(0, len(result.lr), stride):
            writer.writerow([repr(int(c[t])) if k == "step" else repr(float(c[t])) for k, c in cols.items()])
    settings = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    lines = ["# smdyn plan", "[plan]", *(f"{k} = {_toml(v)}" for k, v in settings.items() if v is not None)]
    (out / "config.toml").write_text("\n".join(lines) + "\n")
    png = result.plot(out / "plan.png")
    print(f"wrote {out}: stages.csv, series.csv (every {stride} step(s)), {png.name}, config.toml")
    return 0


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


def plan_main(argv: Sequence[str] | None = None) -> int:
    """``smdyn plan`` as a standalone entry point: parse ``argv`` and run."""
    parser = argparse.ArgumentParser(prog="smdyn plan", description=(__doc__ or "").splitlines()[0])
    return run_plan(add_plan_arguments(parser).parse_args(argv))
