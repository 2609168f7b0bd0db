"""Plan a learning-rate schedule: will each stage reach the angular-update equilibrium before the next change?

Without training, :func:`plan` iterates a recurrence of the weight's norm for the chosen update rule on a
scale-invariant weight (:mod:`smdyn._plan_models`):

- SGD(M) with coupled weight decay (Wan et al., "Spherical Motion Dynamics", NeurIPS 2021, Eqs 10-11 with
  g ⟂ w; docs/design.md §2): under isotropic gradients the state reduces exactly to the Gram matrix of
  (w_t, v_{t−1}), three scalars, stepped by :mod:`smdyn.dynamics`. Its fixed point has cos Δ = 1 − λη/(1+α)
  exactly, Δ ≈ √(2λη/(1+α)) (Thm 3). The map is homogeneous in L (the state scales as √L), so with a constant
  L (default 1) the angular update does not depend on it; pass ``L`` as a function of the step to see a
  changing unit-gradient norm.
- Decoupled decay (AdamW, Lion, Muon): w²_{t+1} = (1 − η_tλ_t)²w²_t + η_t²‖u‖²R, with the step's size ‖u‖
  and its integrated autocorrelation R set by the rule's own equilibrium Δ*, w* (docs/design.md §6); the
  approximation is that the steps decorrelate on a time scale ≪ 1/(ηλ).

It runs one recurrence per control: ``none``; ``rescaled`` (Sec 4.2's rescaling, as :class:`smdyn.Rescaler`
applies it, same rule, same ``"split"`` treatment of the momentum buffer, the rule's norm exponent);
``corrected_decay`` (λ_t = λ·η_t/η_max, as :class:`smdyn.CorrectedWeightDecay` sets it); and ``rotation``
(:class:`smdyn.RotationController`: Δ_t = Δ*_t exactly at the initial norm). For each it gives the per-step
readings of :mod:`smdyn._plan_series` (Δ/Δ*, ‖w‖/w*, ‖g‖/‖w‖ against its steady state, steps behind the
schedule, the early excess), and for every learning-rate change Corollary 3.1's estimate
⌈ln(k)(1−α)/(2λη)⌉ (η after the change; ⌈ln(k)/(2λη)⌉ for decoupled decay) and the recurrence's own lag:
steps until Δ stays within 10%, 5% and 1% of the new equilibrium, continuing with the lr held where the next
change comes first.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from smdyn import _plan_series, theory
from smdyn._plan_models import SgdModel
from smdyn._plan_setup import controls, l_sequence, lr_sequence, setup
from smdyn._rescale_rule import LrRule, check_rule_args

__all__ = ["PlanResult", "plan"]

_TOLS = (0.10, 0.05, 0.01)
_HELD_CAP = 4_000_000  # steps searched past the stages' ends for their lags, in all (~3 s); beyond: inf
PERCENTS = (0, 10, 25, 50, 75, 90, 100)

Schedule = Callable[[int], float] | Sequence[tuple[int, float]] | Mapping[str, Any] | Any | None
Array = NDArray[np.float64]


# --------------------------------------------------------------------------------------------------
# The recurrences, run over the schedule


@dataclass
class _Trajectory:
    angular_update: Array
    weight_norm: Array
    factor: Array  # weight factor applied before each step (1.0 where none)
    states: dict[int, Any]  # state before step t, at each stage end t


def _simulate(
    model: Any,
    lrs: Array,
    ls: Array,
    wds: Array,
    start: Any,
    rule: LrRule | None,
    ends: Sequence[int],
    attach: int = 0,
) -> _Trajectory:
    """Run the recurrence stage by stage; the rule's factors depend on the lrs only, so come first. The
    rule sees the lrs from step ``attach`` on, as a Rescaler built then would."""
    fac = np.ones(len(lrs))
    if rule is not None:
        fac[attach:] = [rule.observe(eta)[2] for eta in lrs[attach:].tolist()]
    delta, norm_sq = np.empty(len(lrs)), np.empty(len(lrs))
    states = {}
    s, b0 = start, 0
    for b1 in ends:
        norm_sq[b0:b1], delta[b0:b1], s = model.run(s, lrs[b0:b1], wds[b0:b1], ls[b0:b1], fac[b0:b1])
        states[b1], b0 = s, b1
    return _Trajectory(delta, np.sqrt(norm_sq), fac, states)


def _rotation(star: Array, norm: float) -> _Trajectory:
    """The rotation controller: Δ_t = Δ*_t at a fixed norm, with nothing to simulate."""
    return _Trajectory(star.copy(), np.full(len(star), norm), np.ones(len(star)), {})


def _held_lags(
    model: Any, s: Any, lr: float, wd: float, L: float, done: int, cap: int
) -> tuple[list[float], int]:
    """Continue with the lr held from state s (``done`` steps into the stage): lag for each tolerance.

    Stops once |Δ/Δ_eq − 1| has stayed below half the smallest tolerance for a momentum time scale, or
    after ``cap`` steps, giving ``inf`` for the tolerances not reached by then. Returns the lags and the
    steps it ran.
    """
    ref = float(model.fixed_delta(np.array([lr]), np.array([wd]))[0])
    hi, mid, lo = (ref * (1.0 + t) for t in _TOLS)
    hi_l, mid_l, lo_l = (ref * (1.0 - t) for t in _TOLS)
    calm_hi, calm_lo = ref * (1.0 + 0.5 * _TOLS[-1]), ref * (1.0 - 0.5 * _TOLS[-1])
    out10 = out5 = out1 = -1
    settle = 50 + int(20 / (1.0 - model.momentum))
    calm = 0
    step = model.stepper(lr, wd, L)
    for j in range(cap):
        s, d = step(s)
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
    """What :func:`plan` predicts: per-step series per control, and one row per (stage, control).

    Attributes:
        lr: learning rate of every step.
        L: the unit-gradient norm used at every step.
        theory_angular_update: Δ*_t of the rule at (η_t, λ) (Thm 3 for SGD(M)).
        theory_weight_norm: w*_t of the rule at (η_t, λ) (Thm 2, exact fixed-point form, for L_t).
        runs: per control (``"none"``, ``"rescaled"``, ``"corrected_decay"``, ``"rotation"``):
            ``angular_update`` Δ_t and ``weight_norm`` ‖w_t‖ (entering step t, after any rescale), ``factor``
            (the rescale applied before each step), ``weight_decay`` λ_t, the control's own equilibrium
            ``theory_angular_update`` Δ*_t and ``theory_weight_norm`` w*_t (the rotation controller's is its
            fixed norm), and the readings of :mod:`smdyn._plan_series`: ``delta_ratio``, ``norm_ratio``,
            ``grad_weight_ratio`` (‖g‖/‖w‖ with ‖g̃‖² = L_t), ``steady_grad_weight_ratio`` (its value at
            w*_t), ``grad_ratio`` (their quotient, (w*_t/‖w_t‖)²) and ``lag`` (steps behind the schedule).
        stages: one dict per (stage, control); see :meth:`table`.
        settings: the arguments of the plan, with the rule's ``optimizer`` name and ``family``.
        early: per control, the excess from the start: ``peak`` Δ/Δ*, at ``peak_step``, and ``settle``,
            the first step with Δ within 10% of Δ* (``inf`` if never).
    """

    lr: Array
    L: Array
    theory_angular_update: Array
    theory_weight_norm: Array
    runs: dict[str, dict[str, Array]]
    stages: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    early: dict[str, dict[str, float]] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        """One dict per (stage, control).

        Keys: ``stage``, ``variant`` (the control), ``start``, ``end`` (exclusive), ``lr`` (at the stage's
        start), ``lr_end``, ``k`` (lr before / lr after the change; NaN for the first stage),
        ``theory_angular_update`` (Δ* at the start), ``ratio_at_start`` (Δ/Δ* on the first step),
        ``corollary_3_1`` (Corollary 3.1's steps, ⌈ln(k)/(2λη)⌉ for decoupled decay; NaN where there is
        no change), ``lag_10``, ``lag_5``, ``lag_1`` (steps from the stage's start until Δ stays within
        10/5/1% of the equilibrium; past the stage's end the lr is held; ``inf`` if not reached within
        ``lag_search`` steps — a stage whose lr varies is not continued), ``lag_search``,
        ``mean_abs_deviation`` (mean |Δ/Δ* − 1| over the stage), ``in_equilibrium`` (``"yes"`` when the
        lag at the plan's ``tol`` fits in the stage).
        """
        return [dict(row) for row in self.stages]

    def progress(self, percents: Sequence[float] = PERCENTS) -> list[dict[str, Any]]:
        """One dict per (percent of the run, control): the readings at that step (the last for 100).

        Keys: ``percent``, ``step``, ``lr``, ``control``, ``delta_ratio`` Δ/Δ*, ``norm_ratio`` ‖w‖/w*,
        ``grad_ratio`` ‖g‖/‖w‖ over its steady state, ``steady_rise`` (the steady state over its value at
        the step of the largest lr), ``grad_rise`` (‖g‖/‖w‖ over its lowest value from that step on, at
        ``grad_low_step``: a reading that does not depend on the initial norm) and ``lag``.
        """
        n, rows = len(self.lr), []
        for p in percents:
            t = min(n - 1, max(0, round(float(p) / 100.0 * (n - 1))))
            rows += [{"percent": p, **r} for r in _plan_series.at_step(self.runs, self.lr, t)]
        return rows

    def at_end(self) -> dict[str, dict[str, Any]]:
        """Per control, the readings at the last step: how far out of equilibrium the run ends."""
        return {r["control"]: r for r in _plan_series.at_step(self.runs, self.lr, len(self.lr) - 1)}

    def summary(self) -> str:
        """How far out of equilibrium the run is at its last step, one line per control."""
        lines = [f"At the last step ({len(self.lr) - 1}, lr {self.lr[-1]:.4g}):"]
        for name, r in self.at_end().items():
            lag = (
                "" if math.isnan(r["lag"]) or r["lag"] == 0 else f", {r['lag']:.0f} steps behind the schedule"
            )
            lines.append(
                f"  {name:>15}: Δ/Δ* = {r['delta_ratio']:.3f}; ‖g‖/‖w‖ = {r['grad_ratio']:.3f}× its steady "
                f"state, which is {r['steady_rise']:.3f}× its value at the peak lr; ‖g‖/‖w‖ has risen "
                f"{r['grad_rise']:.3f}× from its lowest value after the peak (step {r['grad_low_step']}){lag}"
            )
        peak = _peak_step(self.lr)
        if peak > 0 and self.lr[0] < self.lr[peak]:
            if self.settings.get("w0") is None:
                lines.append(
                    f"  (the plan starts at the equilibrium of the first step's lr, {self.lr[0]:.4g}, below "
                    f"the peak {self.lr[peak]:.4g}: give w0, the initial ‖w‖, to plan a fresh run's warm-up)"
                )
            if "rescaled" in self.runs:
                lines.append(_rescaler_note(int(self.settings.get("rescale_from", 0)), peak))
        return "\n".join(lines)

    def to_string(self) -> str:
        """The stage table, then the readings per percent of the run, as aligned text."""
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
        if s.get("family", "sgd") == "sgd":
            rule = "SGD" if s["momentum"] == 0 else f"SGDM α={s['momentum']:g}"
        else:
            rule = f"{s['optimizer']} β={s['momentum']:g}"
        title = (
            f"{rule}, λ={s['wd']:g}, "
            f"{len(self.lr)} steps; rescale mode {s['mode']!r}. Lags: steps until Δ stays within the "
            "tolerance of its equilibrium (noiseless recurrence)."
        )
        progress = _plan_series.format_rows(self.progress(), ("percent", "step", "lr"))
        return "\n".join([title, *lines, "", "Readings per percent of the run:", *progress])

    def __str__(self) -> str:
        return self.to_string()


def _rescaler_note(attach: int, peak: int) -> str:
    """Where the rescaled run's Rescaler is built, against the warm-up's end (the summary's last line)."""
    if attach == 0:
        return (
            "  (the rescaled run rescales through the warm-up too, as a Rescaler built at step 0 would; "
            f"built at the peak, step {peak}, the default of rescale_from, it acts on the decay alone)"
        )
    if attach < peak:
        return (
            f"  (the rescaled run's Rescaler is built at step {attach}, before the lr peaks at step {peak}: "
            "it rescales the rest of the warm-up; before it that run is the uncontrolled one)"
        )
    return (
        f"  (the rescaled run's Rescaler is built at step {attach}, once the lr has peaked (step {peak}); "
        "before it that run is the uncontrolled one)"
    )


def _fmt(value: float, spec: str) -> str:
    return "-" if isinstance(value, float) and math.isnan(value) else format(value, spec)


def _fmt_lag(value: float, searched: int) -> str:
    return f">{searched}" if math.isinf(value) else format(value, ".0f")


# --------------------------------------------------------------------------------------------------
# The plan


def plan(
    schedule: Schedule,
    lr: float | None = None,
    wd: float | None = None,
    momentum: float | None = None,
    L: float | Callable[[int], float] | None = None,
    steps: int | None = None,
    rescale: bool | str | None = None,
    *,
    mode: str = "drops",
    threshold: float = 0.2,
    floor: float = 0.1,
    w0: float | None = None,
    tol: float = 0.05,
    optimizer: Any = None,
    rule: Any = None,
    control: str | Sequence[str] | None = None,
    numel: int | None = None,
    shape: Sequence[int] | None = None,
    reference_lr: float | None = None,
    beta2: float | None = None,
    group: int = 0,
    rescale_from: int | None = None,
    optimizer_state: Mapping[str, Any] | None = None,
) -> PlanResult:
    """Predict Δ*_t, Δ_t and ‖w_t‖ for a schedule, rule and control, and the lag after each lr change.

    Args:
        schedule: the learning rate over the steps, one of: ``None`` (constant ``lr``); a callable
            ``step -> multiplier`` of ``lr`` (as ``LambdaLR``; :mod:`smdyn.schedules` has warm-up + cosine,
            warm-up + linear, WSD and cosine with restarts); a list of ``(step, lr)`` milestones (the lr
            from that step on; ``lr`` before the first); a mapping ``{"name": "MultiStepLR", "milestones":
            [...], "gamma": 0.1}`` naming any ``torch.optim.lr_scheduler`` class with its arguments (stepped
            on a dummy optimizer, so the semantics are torch's); or a torch LR scheduler *instance* built on
            your optimizer: its lrs are read from its current position on a deep copy whose optimizer is a
            stand-in (:func:`smdyn.schedules.scheduler_lrs`: your optimizer and scheduler are untouched),
            and the rule, λ and momentum come from that optimizer's param group ``group``.
        lr: the base learning rate η (> 0); None with a scheduler or optimizer instance (read from it).
        wd: weight decay λ (> 0), coupled for SGD, decoupled for AdamW, Lion and Muon; None: read from an
            optimizer instance.
        momentum: heavy-ball α, or β₁ (AdamW, Lion), μ (Muon), in [0, 1); default: the optimizer
            instance's, else 0 for SGD, 0.9 for AdamW and Lion, 0.95 for Muon.
        L: E‖g̃‖² (SGD) or E h̃ (SGDM): a constant (default 1; Δ does not depend on it) or a callable
            ``step -> L``. For decoupled rules it only sets the scale of ‖g‖/‖w‖.
        steps: the number of optimizer steps (required).
        rescale: ``False`` (no rescaling), ``True`` (as :class:`smdyn.Rescaler` does) or ``"both"`` (the
            default when ``control`` is not given). Give ``rescale`` or ``control``, not both.
        mode, threshold, floor: the :class:`smdyn.Rescaler` settings to mirror; ``threshold`` also splits
            the schedule into stages (a change with |ln(lr_t/lr_{t−1})| > −ln(1 − threshold)).
        w0: initial weight norm with an empty optimizer state (a fresh start); default: start at the
            equilibrium of the first step's settings.
        tol: tolerance of the verdict ``in_equilibrium`` (one of 0.10, 0.05, 0.01).
        optimizer: ``"sgd"`` (default), ``"adamw"``, ``"lion"`` (β₂ = 0.99), ``"muon"`` (needs ``shape``),
            or a torch optimizer instance (its rule from :func:`smdyn.rules.rule_for`).
        rule: a :class:`smdyn.rules.Rule` instead of ``optimizer``.
        control: ``"none"``, ``"rescale"``, ``"corrected_decay"``, ``"rotation"``, a list of them, or
            ``"all"``: one run each, under its run name (``"rescale"`` runs as ``"rescaled"``).
        numel: C, the weight's element count, for the norms of decoupled rules (w* ∝ √C); default: the
            product of ``shape``, else 1 (norms are then RMS values per element).
        shape: the weight's (rows, cols), for Muon.
        reference_lr: η_max of the corrected decay, as :class:`smdyn.CorrectedWeightDecay` takes it;
            default: the largest lr of the plan so far at each step.
        beta2: β₂ of AdamW (default: the optimizer instance's, else 0.999) and Lion (0.99).
        group: the param group of an optimizer or scheduler instance to read.
        rescale_from: the step at which the rescaled run's :class:`smdyn.Rescaler` is built (it rescales
            from the lr it first sees); before it that run is the uncontrolled one. Default: the end of the
            warm-up, the first step at the schedule's peak lr (0 when the run starts at its peak), as the
            Rescaler's own documentation advises; 0 rescales through the warm-up (a fresh norm scaled up
            by (η_peak/η₀)^¼).
        optimizer_state: with ``w0``, a plan that starts mid-run (:func:`smdyn.forecast`): the optimizer's
            ``steps`` taken so far (0: a fresh start) and, for AdamW, its ``second_moment`` Σ exp_avg_sq over
            the weight's elements (the average of ‖g‖² its normaliser holds, in the units of ``L``/‖w‖²;
            without it, one in step with the gradient); ``{}`` for a warmed-up state in step with the
            gradient. Default: empty (a fresh start).
            The SGD recurrence starts at rest either way (its buffer is forgotten within ~1/(1−α) steps).

    Returns:
        A :class:`PlanResult`.

    Raises:
        ValueError, TypeError: for bad arguments, naming the argument.
    """
    steps, w0, reference_lr = _check_plan_args(steps, tol, w0, reference_lr)
    warm = _check_optimizer_state(optimizer_state, w0)
    variants = controls(control, rescale)
    check_rule_args(mode, threshold, floor)
    su = setup(schedule, lr, wd, momentum, optimizer, rule, numel, shape, beta2, group, steps, w0 is not None)
    model, wd, a = su.model, su.wd, su.momentum
    lrs = su.lrs if su.lrs is not None else lr_sequence(schedule, su.lr, steps)
    ls = l_sequence(L, steps)
    attach = _rescale_start(rescale_from, lrs)
    decays = {name: _weight_decay(name, lrs, wd, reference_lr) for name in variants}
    for wds in decays.values():
        _check_stable(model, lrs, wds, a)
    limit = -math.log(1.0 - threshold) if threshold > 0 else 0.0
    jumps = np.abs(np.diff(np.log(lrs)))
    bounds = [0, *(int(t) + 1 for t in np.flatnonzero(jumps > limit)), steps]
    nominal = np.full(steps, wd)
    star, w_star = model.theory(su.rule, lrs, nominal, ls)
    runs, rows, early = {}, [], {}
    lr_rule = LrRule(mode, float(threshold), float(floor), su.rule.norm_exponent)  # the one rescaled run's
    for name in variants:
        rule = lr_rule if name == "rescaled" else None
        traj, runs[name] = _run_control(
            name, su, lrs, ls, decays[name], w0, rule, attach, bounds, star, w_star, warm
        )
        early[name] = _plan_series.early_excess(runs[name]["delta_ratio"])
        ref = traj.states.pop("ref")
        for i, (b0, b1) in enumerate(itertools.pairwise(bounds)):
            rows.append(
                _stage_row(i, name, b0, b1, lrs, ls, decays[name], model, traj,
                           runs[name]["theory_angular_update"], ref, tol)
            )  # fmt: skip
    _continue_held(rows, model)
    rows.sort(key=lambda r: (r["stage"], variants.index(r["variant"])))
    rescaler = {"mode": mode, "threshold": threshold, "floor": floor}
    rescale = rescale if control is None else None
    settings = _settings(su, variants, ls, steps, rescale, w0, tol, reference_lr, attach, **rescaler)
    return PlanResult(lrs, ls, star, w_star, runs, rows, settings, early)


def _check_plan_args(
    steps: Any, tol: Any, w0: Any, reference_lr: Any
) -> tuple[int, float | None, float | None]:
    if steps is None or isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if tol not in _TOLS:
        raise ValueError(f"tol must be one of {_TOLS}, got {tol!r}")
    w0 = None if w0 is None else _number("w0", w0)
    reference_lr = None if reference_lr is None else _number("reference_lr", reference_lr)
    return int(steps), w0, reference_lr


def _check_optimizer_state(state: Any, w0: float | None) -> dict[str, Any] | None:
    """``optimizer_state`` as {"steps": int >= 0, "second_moment": float > 0}, either optional, or None."""
    if state is None:
        return None
    if not isinstance(state, Mapping):
        raise ValueError(f"optimizer_state must be a mapping or None, got {type(state).__name__}")
    if w0 is None:
        raise ValueError("optimizer_state needs w0: it is the state of a run at the norm w0")
    extra = set(state) - {"steps", "second_moment"}
    if extra:
        raise ValueError(f"optimizer_state: unknown keys {sorted(extra)} (known: 'steps', 'second_moment')")
    out: dict[str, Any] = {}
    if "steps" in state:
        k = state["steps"]
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"optimizer_state['steps'] must be an int >= 0, got {k!r}")
        out["steps"] = int(k)
    if "second_moment" in state and out.get("steps") != 0:  # after 0 steps there is nothing to hold
        out["second_moment"] = _number("optimizer_state['second_moment']", state["second_moment"])
    return out


def _settings(
    su: Any,
    variants: list[str],
    ls: Array,
    steps: int,
    rescale: Any,
    w0: float | None,
    tol: float,
    reference_lr: float | None,
    rescale_from: int,
    **rescaler: Any,
) -> dict[str, Any]:
    """The arguments of the plan as resolved (rule name and family, controls), for the result."""
    return {
        "lr": su.lr,
        "wd": su.wd,
        "momentum": su.momentum,
        "optimizer": su.rule.name,
        "family": su.rule.family,
        "controls": list(variants),
        "numel": su.numel,
        "L": float(ls[0]),
        "L_varies": bool(np.any(ls != ls[0])),
        "steps": steps,
        "rescale": rescale,
        "rescale_from": rescale_from,
        **rescaler,
        "w0": w0,
        "tol": tol,
        "reference_lr": reference_lr,
    }


def _run_control(
    name: str,
    su: Any,
    lrs: Array,
    ls: Array,
    wds: Array,
    w0: float | None,
    lr_rule: LrRule | None,
    attach: int,
    bounds: Sequence[int],
    star: Array,
    w_star: Array,
    warm: Mapping[str, Any] | None = None,
) -> tuple[_Trajectory, dict[str, Array]]:
    """One control's trajectory and its per-step series (the fixed-point Δ stored as ``states["ref"]``)."""
    model, steps = su.model, len(lrs)
    if name == "rotation":
        fixed = float(w_star[0]) if w0 is None else w0
        traj, d_star, n_star, ref = _rotation(star, fixed), star, np.full(steps, fixed), star
    else:
        start = model.start(w0, float(lrs[0]), float(wds[0]), float(ls[0]), warm)
        traj = _simulate(model, lrs, ls, wds, start, lr_rule, bounds[1:], attach)
        d_star, n_star = (star, w_star) if name != "corrected_decay" else model.theory(su.rule, lrs, wds, ls)
        ref = model.fixed_delta(lrs, wds)
    traj.states["ref"] = ref
    series = {
        "angular_update": traj.angular_update,
        "weight_norm": traj.weight_norm,
        "factor": traj.factor,
        "weight_decay": wds,
        "theory_angular_update": d_star,
        "theory_weight_norm": n_star,
        **_plan_series.diagnostics(traj.angular_update, traj.weight_norm, d_star, n_star, ls),
    }
    return traj, series


def _peak_step(lrs: Array) -> int:
    """The first step at the schedule's peak lr, to rounding (a restart's peak computed a bit higher does
    not move it): where a warm-up ends, however it rises (flat stretches and plateaus included)."""
    return int(np.flatnonzero(lrs >= lrs.max() * (1.0 - 1e-9))[0])


def _rescale_start(rescale_from: Any, lrs: Array) -> int:
    """The step the rescaled run's Rescaler is built at (``plan``'s ``rescale_from``)."""
    if rescale_from is None:
        return _peak_step(lrs)
    if isinstance(rescale_from, bool) or not isinstance(rescale_from, (int, np.integer)):
        raise TypeError(f"rescale_from must be a step (an int) or None, got {rescale_from!r}")
    if not 0 <= rescale_from < len(lrs):
        raise ValueError(f"rescale_from must be a step in [0, steps = {len(lrs)}), got {rescale_from!r}")
    return int(rescale_from)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(float(value)) and float(value) > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _weight_decay(name: str, lrs: Array, wd: float, reference_lr: float | None) -> Array:
    """λ_t of a control: λ, or λ·η_t/η_max for the corrected decay (η_max: reference_lr or the peak)."""
    if name != "corrected_decay":
        return np.full(len(lrs), wd)
    peak = np.full(len(lrs), reference_lr) if reference_lr is not None else np.maximum.accumulate(lrs)
    return wd * lrs / peak


def _check_stable(model: Any, lrs: Array, wds: Array, a: float) -> None:
    if isinstance(model, SgdModel):
        if np.any(lrs * wds >= 2.0 * (1.0 + a)):
            raise ValueError("lr * wd must be < 2 * (1 + momentum) at every step for an equilibrium to exist")
    elif np.any(lrs * wds >= 1.0):
        raise ValueError("lr * wd must be < 1 at every step under decoupled decay (the factor 1 − lr·wd > 0)")


def _stage_row(
    i: int,
    name: str,
    b0: int,
    b1: int,
    lrs: Array,
    ls: Array,
    wds: Array,
    model: Any,
    traj: _Trajectory,
    star: Array,
    ref: Array,
    tol: float,
) -> dict[str, Any]:
    err = np.abs(traj.angular_update[b0:b1] / ref[b0:b1] - 1.0)
    constant = all(bool(np.all(x[b0:b1] == x[b0])) for x in (lrs, ls, wds))
    n = b1 - b0
    lags: list[float] = []
    for t in _TOLS:
        out = np.flatnonzero(err > t)
        lags.append(0.0 if out.size == 0 else float(out[-1] + 1) if out[-1] < n - 1 else math.nan)
    k = math.nan if i == 0 else float(lrs[b0 - 1] / lrs[b0])
    cor = math.nan
    if i > 0 and k != 1.0:
        eta, lam = float(lrs[b0]), float(wds[b0])
        if isinstance(model, SgdModel):
            cor = float(theory.steps_to_new_equilibrium(k, eta, lam, model.momentum))
        else:
            cor = float(math.ceil(abs(math.log(k)) / (2.0 * lam * eta)))
    lag_at_tol = lags[_TOLS.index(tol)]
    held = traj.states.get(b1)
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
        "_held": (held, float(lrs[b0]), float(wds[b0]), float(ls[b0]))
        if constant and held is not None
        else None,
    }


def _continue_held(rows: list[dict[str, Any]], model: Any) -> None:
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
            found, used = _held_lags(model, *held, n, budget)
            budget -= used
            row["lag_search"] = n + used
        row["lag_10"], row["lag_5"], row["lag_1"] = (
            f if math.isnan(g) else g for g, f in zip(lags, found, strict=True)
        )
