"""Forecast the rest of a run from what its monitor has measured: where each norm and ‖g‖/‖w‖ will end.

:func:`smdyn.plan` runs before training: it knows the schedule and the rule, not the gradients. What sets a
scale-invariant weight's norm is a gradient statistic: L = E h̃ for the SGD family (Thms 1–2), and for
decoupled rules the growth of ‖w‖² per step, which the rule's closed form takes from gradients independent
from step to step (AdamW: w* = √(ηC/(2λ)), Kosson et al. 2024). Real gradients differ, and the difference
moves with the lr: on the network of ``benchmarks/schedules_on_a_network.py`` the AdamW norm sat at 0.55–0.67
of that w* at the peak lr, and its growth per step rose 4× over the last 30% of a cosine, so a plan made
before training read ‖g‖/‖w‖ 12% low at 50% of the run and 16–18% high at 90–100%.

Mid-run the monitor has measured the statistic. :func:`forecast` starts the plan at each weight's last
measured norm and fits the statistic to its recent past (the ``fit`` window):

- the SGD family (heavy ball): L = the mean of the monitor's ``l_estimate`` over the window (h̃, the
  quantity of Thm 2 itself, measured);
- decoupled rules whose w* grows as √C (AdamW, ``Adam(decoupled_weight_decay=True)``, Lion, Muon): the
  element count C_eff of the growth, fitted: the recurrence is replayed over the window (each step at its
  recorded lr and weight decay) from its first measured norm, and C_eff = C·mean((measured / planned norm)²)
  over the window's second half. AdamW's plan starts from the optimizer's own Σ exp_avg_sq and step count
  (v̂ keeps lagging the gradient as it did); inside the window the state is rebuilt from the records.

The statistic is then held constant to the end, so what the forecast cannot see is how the gradients change
from now on; the later it is made, the less that matters. Measured (3 seeds, warm-up + cosine to 2% of the
peak, 5000 steps; the benchmark above), the forecast's ‖g‖/‖w‖ at 90% and 100% of the run against the
measured values: from 50% of the run 0.88–0.93 (AdamW) and 1.08–1.12 (SGDM); from 70%, 1.00–1.04 and
1.06–1.07. Each weight's series (:meth:`Forecast.series`) is its run from the forecast's first step on:
without a control, or under a :class:`smdyn.CorrectedWeightDecay`, whose rule it continues (the plan's run
``"corrected_decay"``); weights held by the other controls are refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from smdyn import _control, theory
from smdyn._plan_setup import _scheduler_types, setup
from smdyn.plan import PlanResult, plan
from smdyn.rules import Rule, rule_for
from smdyn.schedules import scheduler_lrs

__all__ = ["Forecast", "forecast"]

Array = NDArray[np.float64]
_MIN_ROWS = 8  # recorded steps a fit window needs
_LOST = ("not_measured", "internal")
_KEYS = ("step", "lr", "wd", "momentum", "weight_norm", "unit_grad_sq", "l_estimate", "grad_to_weight_ratio")


@dataclass
class Forecast:
    """What :func:`forecast` predicts, per monitored weight.

    Attributes:
        start: the monitor's step the plans start from (their step 0): the last recorded step.
        now: the optimizer steps the monitor had seen (the schedule's lrs apply from this step on).
        end: the step after the last one forecast.
        plans: per weight, the :class:`smdyn.PlanResult` from ``start`` to ``end``.
        fits: per weight, what the plan was started from: ``weight_norm`` (measured at ``start``),
            ``L``, ``numel`` (the element count the plan runs with: C_eff for decoupled rules, C for the SGD
            family), ``scale`` (C_eff/C, 1.0 for the SGD family), ``fit_from`` (first step of the window),
            ``fit_rows`` (recorded steps in it) and ``rule``.
    """

    start: int
    now: int
    end: int
    plans: dict[str, PlanResult]
    fits: dict[str, dict[str, Any]]

    def series(self, name: str) -> dict[str, Array]:
        """The per-step series of weight ``name`` from ``start`` (its plan's one run: see
        :attr:`smdyn.PlanResult.runs`)."""
        (run,) = self.plans[name].runs.values()
        return run

    def at(self, step: int) -> dict[str, dict[str, float]]:
        """Per weight, the forecast readings at monitor step ``step`` (``start`` ≤ step < ``end``):
        ``weight_norm``, ``grad_to_weight_ratio`` (‖g‖/‖w‖ with ‖g̃‖² held at L), ``rise`` (its value
        over the value at ``start``), ``delta_ratio`` Δ/Δ*, ``norm_ratio`` ‖w‖/w* and ``lag``."""
        if not self.start <= step < self.end:
            raise ValueError(f"step must be in [{self.start}, {self.end}), got {step!r}")
        k = step - self.start
        out = {}
        for name in self.plans:
            run = self.series(name)
            ratio = run["grad_weight_ratio"]
            out[name] = {
                "weight_norm": float(run["weight_norm"][k]),
                "grad_to_weight_ratio": float(ratio[k]),
                "rise": float(ratio[k] / ratio[0]),
                "delta_ratio": float(run["delta_ratio"][k]),
                "norm_ratio": float(run["norm_ratio"][k]),
                "lag": float(run["lag"][k]),
            }
        return out

    def at_end(self) -> dict[str, dict[str, float]]:
        """:meth:`at` the last step forecast: how far out of equilibrium each weight ends."""
        return self.at(self.end - 1)

    def summary(self) -> str:
        """One line per weight: ‖g‖/‖w‖ at the end over now, ‖w‖/w* and Δ/Δ* at the end."""
        lines = [f"Forecast from step {self.start} to step {self.end - 1}:"]
        for name, r in self.at_end().items():
            fit = self.fits[name]
            lines.append(
                f"  {name}: ‖g‖/‖w‖ ×{r['rise']:.3g} (now {fit['grad_to_weight_ratio']:.4g}), ‖w‖/w* "
                f"{r['norm_ratio']:.3g}, Δ/Δ* {r['delta_ratio']:.3g} (norm scale fitted ×{fit['scale']:.3g})"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def forecast(
    monitor: Any, schedule: Any = None, steps: int | None = None, *, fit: int | None = None
) -> Forecast:
    """Forecast each monitored weight from its last recorded step to ``steps`` steps from now.

    Args:
        monitor: a :class:`smdyn.SphericalMonitor` (``granularity="tensor"``) that has recorded steps.
        schedule: the lr of the steps ahead: a torch LR scheduler built on the monitor's optimizer (read
            from its current position, on a copy: yours is untouched), a callable ``t -> multiplier`` of each
            group's current lr (t = 0 is the next step), or None (the lr held).
        steps: the optimizer steps ahead to forecast (>= 1).
        fit: the recorded past, in steps, the statistic is fitted over; default: one relaxation time of
            the norm at the last recorded step's settings (1/(2ηλ) decoupled, (1−α)/(2ηλ) heavy ball), at
            least 2 × ``monitor.window`` steps, at most all of the history.

    Raises:
        ValueError: bad arguments, per-channel records, a weight with too little history, no weight decay
            or lr·wd past the equilibrium, a rule the forecast does not model (Nesterov or dampened SGD,
            AMSGrad, rules without theory), a weight held by a Rescaler or a RotationController (a weight
            under CorrectedWeightDecay is forecast with λ_t = λ·η_t/η_max ahead, λ and η_max the
            control's own, its growth factor held).
    """
    if steps is None or isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if fit is not None and (isinstance(fit, bool) or not isinstance(fit, (int, np.integer)) or fit < 2):
        raise ValueError(f"fit must be an int >= 2 (steps), got {fit!r}")
    if getattr(monitor, "granularity", None) != "tensor":
        raise ValueError("forecast needs a SphericalMonitor with granularity='tensor' (one row per weight)")
    scheduler = isinstance(schedule, _scheduler_types())
    if schedule is not None and not callable(schedule) and not scheduler:
        raise ValueError(
            f"schedule must be a torch LR scheduler, a callable t -> multiplier, or None; got "
            f"{type(schedule).__name__}"
        )
    if scheduler and schedule.optimizer is not monitor.optimizer:
        raise ValueError("schedule: the scheduler is built on another optimizer than the monitor's")
    h = monitor.history()
    now = int(monitor.step)
    group_of = {id(p): i for i, g in enumerate(monitor.optimizer.param_groups) for p in g["params"]}
    plans, fits = {}, {}
    start = None
    for unit in monitor.units:
        rows = _rows(h, unit.name)
        if len(rows["step"]) < _MIN_ROWS:
            raise ValueError(
                f"{unit.name}: {len(rows['step'])} usable recorded steps; a forecast needs {_MIN_ROWS}"
            )
        gi = _control.one_group("forecast", unit.name, unit.tensors, group_of)
        t0 = int(rows["step"][-1])
        start = t0 if start is None else start
        if t0 != start:
            raise ValueError(f"{unit.name}: last recorded at step {t0}, the other weights at {start}")
        ahead = _lrs_ahead(monitor.optimizer, gi, schedule, now - t0, int(steps), float(rows["lr"][-1]))
        p, fitted = _one(monitor, unit, gi, rows, ahead, fit)
        plans[unit.name], fits[unit.name] = p, fitted
    if start is None:
        raise ValueError("the monitor has no weights to forecast")
    return Forecast(start, now, now + int(steps), plans, fits)


def _rows(h: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    """The weight's usable records, in step order: measured norm and lr, a row not lost."""
    norm, lr = h["weight_norm"].astype(np.float64), h["lr"].astype(np.float64)
    with np.errstate(invalid="ignore"):  # NaN compares False: such rows are left out
        sel = (
            (h["param"] == name)
            & (norm > 0)
            & (lr > 0)
            & np.isfinite(norm * lr)
            & ~np.isin(h["reason_code"], _LOST)
        )
    order = np.argsort(h["step"][sel], kind="stable")
    return {k: np.asarray(h[k][sel][order], dtype=np.int64 if k == "step" else np.float64) for k in _KEYS}


def _lrs_ahead(optimizer: Any, gi: int, schedule: Any, gap: int, steps: int, last_lr: float) -> Array:
    """The lrs from the last recorded step on: held over the ``gap`` steps already taken, then the
    schedule's."""
    current = float(optimizer.param_groups[gi]["lr"])
    if schedule is None:
        future = np.full(steps, current)
    elif isinstance(schedule, _scheduler_types()):
        future = scheduler_lrs(schedule, steps, gi)
    else:
        future = np.array([current * _multiplier(schedule, t) for t in range(steps)], dtype=np.float64)
    return np.concatenate([np.full(max(gap, 0), last_lr), future])


def _multiplier(fn: Callable[[int], float], t: int) -> float:
    value = fn(t)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"schedule({t}) returned {value!r}, not a number")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"schedule({t}) returned {value!r}: lr multipliers must be finite and > 0")
    return float(value)


def _one(
    monitor: Any, unit: Any, gi: int, rows: dict[str, np.ndarray], ahead: Array, fit: int | None
) -> tuple[PlanResult, dict[str, Any]]:
    """One weight: the window, the fitted statistic, and the plan from its last recorded step."""
    opt = monitor.optimizer
    group = opt.param_groups[gi]
    rule = rule_for(opt, group)
    lr, wd, mom = (float(rows[k][-1]) for k in ("lr", "wd", "momentum"))
    _check_rule(unit.name, rule, lr, wd, mom)
    if group.get("amsgrad", False):
        raise ValueError(
            f"{unit.name}: AMSGrad divides by the running maximum of v, which the forecast's recurrence (an "
            "average) does not model"
        )
    held = {_control.controller_of(opt, t) for t in unit.tensors} - {None}
    corrected = held == {"CorrectedWeightDecay"}
    decay_rule = _control.holder_of(opt, unit.tensors[0]).decay_rule(gi) if corrected else None
    if held and not corrected:
        raise ValueError(
            f"{unit.name}: held by smdyn.{held.pop()}, which moves the weight itself; the forecast follows "
            "the optimizer's own dynamics (smdyn.plan(control=...) plans a control from the start)"
        )
    steps_rec = rows["step"]
    t0 = int(steps_rec[-1])
    relax = round(float(rule.relaxation_steps(lr, wd, mom)))
    span = fit if fit is not None else max(2 * monitor.window, relax)
    sel = steps_rec >= t0 - span
    if int(sel.sum()) < _MIN_ROWS:
        raise ValueError(
            f"{unit.name}: {int(sel.sum())} recorded steps in the fit window; {_MIN_ROWS} needed"
        )
    win = {k: v[sel] for k, v in rows.items()}
    numel = float(sum(t.numel() for t in unit.tensors))
    common = {"momentum": mom, "optimizer": opt, "group": gi}
    warm: dict[str, Any] | None = {}
    if rule.family == "sgd":
        ell = win["l_estimate"][np.isfinite(win["l_estimate"]) & (win["l_estimate"] > 0)]
        if not len(ell):
            raise ValueError(f"{unit.name}: no l_estimate recorded in the fit window")
        L, c_eff, scale = float(np.mean(ell)), numel, 1.0
    else:
        ug = win["unit_grad_sq"][np.isfinite(win["unit_grad_sq"]) & (win["unit_grad_sq"] > 0)]
        L = float(np.mean(ug)) if len(ug) else 1.0
        beta2 = _beta2(group) if rule.family == "adamw" else None
        taken = _steps_taken(opt, unit) if beta2 is not None else None
        lag = int(monitor.step) - t0  # steps since the last record
        scale = _fit_scale(rows, win, numel, L, common, beta2, None if taken is None else taken - lag)
        c_eff = float(max(1, round(numel * scale)))
        warm = {}
        if beta2 is not None:
            real = _second_moment(opt, unit)
            warm = (
                {"steps": taken, "second_moment": real}
                if real is not None and real > 0 and taken is not None
                else _usable(_history_state(rows, t0, beta2, None))
            )
    start = {"lr": float(ahead[0]), "steps": len(ahead), "w0": float(rows["weight_norm"][-1]), "L": L}
    if decay_rule is not None:  # λ_t = λ·η_t/η_max ahead, as the control stands now (AdamC)
        base, peak = decay_rule
        p = plan(
            _relative(ahead), **start, wd=base, numel=c_eff, optimizer_state=warm, control="corrected_decay",
            reference_lr=peak, **common,
        )  # fmt: skip
    else:
        p = plan(
            _relative(ahead), **start, wd=wd, numel=c_eff, optimizer_state=warm, control="none", **common
        )
    fitted = {
        "rule": rule.name,
        "weight_norm": float(rows["weight_norm"][-1]),
        "grad_to_weight_ratio": float(rows["grad_to_weight_ratio"][-1]),
        "L": L,
        "numel": c_eff,
        "scale": scale,
        "fit_from": int(win["step"][0]),
        "fit_rows": len(win["step"]),
    }
    return p, fitted


def _beta2(group: Any) -> float:
    betas = group.get("betas", (0.9, 0.999))
    return float(betas[1])


def _steps_taken(opt: Any, unit: Any) -> int | None:
    """The optimizer's step count for the weight (Adam's bias corrections), None where it has none."""
    st = opt.state.get(unit.tensors[0], {})
    k = st.get("step")
    return None if k is None else int(float(k))


def _second_moment(opt: Any, unit: Any) -> float | None:
    """Σ exp_avg_sq over the weight's elements: the average of ‖g‖² Adam's normaliser holds now."""
    total = 0.0
    for t in unit.tensors:
        v = opt.state.get(t, {}).get("exp_avg_sq")
        if not isinstance(v, torch.Tensor) or v.shape != t.shape:
            return None
        total += float(v.double().sum())
    return total


def _history_state(
    rows: dict[str, np.ndarray], at: int, beta2: float, taken: int | None
) -> dict[str, Any] | None:
    """Adam's state at step ``at`` rebuilt from the records: the β₂-average of ‖g‖² = ‖g̃‖²/‖w‖² (each
    record held until the next), over ``taken`` steps (the optimizer's count then; default: since the first
    record), the part before the first record at its value. None at a fresh start (no step taken)."""
    steps = rows["step"]
    first = int(steps[0])
    sigma = rows["unit_grad_sq"] / rows["weight_norm"] ** 2
    ok = np.isfinite(sigma)
    steps, sigma = steps[ok], sigma[ok]
    seen = max(at - first, 0)
    taken = seen if taken is None else max(int(taken), seen)
    if taken == 0 or not len(steps):
        return None if taken == 0 else {}
    if seen == 0:
        return {"steps": taken, "second_moment": float(sigma[0]) * (1 - beta2**taken)}
    idx = np.searchsorted(steps, np.arange(first, at), side="right") - 1
    held = sigma[np.maximum(idx, 0)]
    weights = (1 - beta2) * beta2 ** np.arange(seen - 1, -1, -1, dtype=np.float64)
    before = float(sigma[0]) * (1 - beta2 ** (taken - seen)) * beta2**seen
    return {"steps": taken, "second_moment": float(np.dot(weights, held)) + before}


def _check_rule(name: str, rule: Rule, lr: float, wd: float, mom: float) -> None:
    if not (wd > 0):
        raise ValueError(
            f"{name}: weight decay {wd!r}: without decay there is no equilibrium norm to forecast"
        )
    if not rule.theory:
        raise ValueError(
            f"{name}: rule {rule.name!r} has no equilibrium theory to forecast with: {rule.note}"
        )
    coupled = rule.family == "sgd"
    if not bool(theory.equilibrium_exists(lr, wd, mom, coupled=coupled)):
        raise ValueError(
            f"{name}: lr·weight_decay = {lr * wd:.4g}: past the equilibrium of rule {rule.name!r}"
        )
    if coupled:
        if not rule.heavy_ball:
            raise ValueError(f"{name}: rule {rule.name!r}: Nesterov and dampened SGD are not modelled")
        return
    w1, w4 = (float(np.asarray(rule.equilibrium_norm(lr, wd, mom, c))) for c in (1024.0, 4096.0))
    if not (math.isfinite(w1) and math.isfinite(w4) and math.isclose(w4, 2 * w1, rel_tol=1e-6)):
        raise ValueError(
            f"{name}: rule {rule.name!r}: its w* does not grow as √C, so its norm's scale cannot be fitted "
            "(the forecast models the SGD family, AdamW, Lion and Muon)"
        )


def _relative(lrs: Array) -> Callable[[int], float]:
    base = float(lrs[0])
    return lambda t: float(lrs[t]) / base


def _fit_scale(
    rows: dict[str, np.ndarray],
    win: dict[str, np.ndarray],
    numel: float,
    L: float,
    common: dict[str, Any],
    beta2: float | None,
    taken_now: int | None,
) -> float:
    """C_eff/C: the recurrence replayed over the window (each step at its recorded lr and weight decay)
    from its first recorded norm (Adam's state then rebuilt from the records); its second half matched in
    ‖w‖²."""
    steps = win["step"]
    a = int(steps[0])
    n = int(steps[-1]) - a + 1
    # the settings of every step of the window: each record's hold until the next record
    idx = np.searchsorted(steps, np.arange(a, a + n), side="right") - 1
    lrs, wds = win["lr"][idx], win["wd"][idx]
    taken = None if taken_now is None else taken_now - (int(steps[-1]) - a)
    warm = {} if beta2 is None else _usable(_history_state(rows, a, beta2, taken))
    su = setup(
        None, float(lrs[0]), float(wds[0]), common["momentum"], common["optimizer"], None, numel, None, None,
        common["group"], n, True,
    )  # fmt: skip
    state = su.model.start(float(win["weight_norm"][0]), float(lrs[0]), float(wds[0]), L, warm)
    w_sq, _, _ = su.model.run(state, lrs, wds, np.full(n, L), np.ones(n))
    planned = np.sqrt(w_sq[steps - a])
    half = steps >= a + n // 2
    return float(np.mean((win["weight_norm"][half] / planned[half]) ** 2))


def _usable(state: dict[str, Any] | None) -> dict[str, Any] | None:
    """An Adam state the plan can start from: a zero second moment (a weight whose gradients were all 0)
    reads as a normaliser in step with the gradient."""
    if state is not None and state.get("second_moment", 1.0) <= 0:
        return {}
    return state
