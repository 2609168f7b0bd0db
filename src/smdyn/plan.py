"""Plan a learning-rate schedule: will each stage reach the angular-update equilibrium before the next change?

Without training, :func:`plan` iterates the noiseless recurrence of SGD(M) with weight decay on a
scale-invariant weight (Wan et al., "Spherical Motion Dynamics", NeurIPS 2021, Eqs 10-11 with g ⟂ w;
docs/design.md §2): under isotropic gradients the state reduces exactly to the Gram matrix of (w_t, v_{t−1}),
three scalars per trajectory, stepped by :mod:`smdyn.dynamics`.

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

import itertools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from smdyn import dynamics, theory
from smdyn._rescale_rule import LrRule, check_rule_args
from smdyn.dynamics import GramState

__all__ = ["PlanResult", "plan"]

_TOLS = (0.10, 0.05, 0.01)
_HELD_CAP = 4_000_000  # steps searched past the stages' ends for their lags, in all (~3 s); beyond: inf

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
            if step >= steps:
                raise ValueError(f"schedule: milestone step {step} is not before the end (steps = {steps})")
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
# The recurrence (smdyn.dynamics), run over the schedule


@dataclass
class _Trajectory:
    angular_update: NDArray[np.float64]
    weight_norm: NDArray[np.float64]
    factor: NDArray[np.float64]  # weight factor applied before each step (1.0 where none)
    states: dict[int, GramState]  # state before step t, at each stage end t


def _simulate(
    lrs: NDArray[np.float64],
    ls: NDArray[np.float64],
    wd: float,
    a: float,
    start: GramState,
    rule: LrRule | None,
    ends: Sequence[int],
) -> _Trajectory:
    """Run the recurrence stage by stage; the rule's factors depend on the lrs only, so come first."""
    fac = np.ones(len(lrs))
    if rule is not None:
        fac[:] = [rule.observe(eta)[2] for eta in lrs.tolist()]
    delta, norm_sq = np.empty(len(lrs)), np.empty(len(lrs))
    states = {}
    s, b0 = start, 0
    for b1 in ends:
        norm_sq[b0:b1], delta[b0:b1], s = dynamics.run(s, lrs[b0:b1], wd, a, ls[b0:b1], fac[b0:b1])
        states[b1], b0 = s, b1
    return _Trajectory(delta, np.sqrt(norm_sq), fac, states)


def _held_lags(
    s: GramState, lr: float, wd: float, a: float, L: float, done: int, cap: int
) -> tuple[list[float], int]:
    """Continue with the lr held from state s (``done`` steps into the stage): lag for each tolerance.

    Stops once |Δ/Δ_eq − 1| has stayed below half the smallest tolerance for a momentum time scale, or
    after ``cap`` steps, giving ``inf`` for the tolerances not reached by then. Returns the lags and the
    steps it ran.
    """
    ref = float(dynamics.equilibrium_delta(lr, wd, a))
    hi, mid, lo = (ref * (1.0 + t) for t in _TOLS)
    hi_l, mid_l, lo_l = (ref * (1.0 - t) for t in _TOLS)
    calm_hi, calm_lo = ref * (1.0 + 0.5 * _TOLS[-1]), ref * (1.0 - 0.5 * _TOLS[-1])
    out10 = out5 = out1 = -1
    settle = 50 + int(20 / (1.0 - a))
    calm = 0
    step = dynamics.step
    for j in range(cap):
        s, d = step(s, lr, wd, a, L)
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
    check_rule_args(mode, threshold, floor)
    if tol not in _TOLS:
        raise ValueError(f"tol must be one of {_TOLS}, got {tol!r}")
    steps = int(steps)
    lrs = _lr_sequence(schedule, lr, steps)
    ls = _l_sequence(L, steps)
    if np.any(lrs * wd >= 2.0 * (1.0 + a)):
        raise ValueError("lr * wd must be < 2 * (1 + momentum) at every step for an equilibrium to exist")
    if w0 is None:
        start = dynamics.fixed_point(float(ls[0]), float(lrs[0]), wd, a)
    else:
        start = GramState.at_rest(_number("w0", w0, low=0.0))

    limit = -math.log(1.0 - threshold) if threshold > 0 else 0.0
    jumps = np.abs(np.diff(np.log(lrs)))
    bounds = [0, *(int(t) + 1 for t in np.flatnonzero(jumps > limit)), steps]
    variants = {False: ["none"], True: ["rescaled"], "both": ["none", "rescaled"]}[rescale]
    star = np.asarray(theory.angular_update(lrs, wd, a))
    ref = np.asarray(dynamics.equilibrium_delta(lrs, wd, a))
    runs, rows = {}, []
    for name in variants:
        rule = (
            LrRule(mode, float(threshold), float(floor), dynamics.NORM_EXPONENT)
            if name == "rescaled"
            else None
        )
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
