"""Update rules: which optimizer a param group follows, what it applies, and which theory (if any) holds.

Every part of smdyn that needs to know how an optimizer moves a weight asks :func:`rule_for`; nothing else
classifies optimizers. A rule says

- how to read the group's hyper-parameters (learning rate, weight decay, momentum or β₁),
- whether the applied update d = w_t − w_{t+1} is a known linear combination a·w + b·g + c·v of the weight,
  its gradient and the momentum buffer *before* the step (then the monitor needs no snapshot),
- its equilibrium angular update Δ* and norm w* where one is derived or published (cited on the function),
  and the relaxation time of the norm,
- the exponent of the norm in η (w* ∝ η^¼ for SGD(M), η^½ for AdamW), which is what a rescaling uses.

A third-party optimizer gets a rule with :func:`register_rule`. A subclass of a registered optimizer that
overrides ``step`` is *not* given its parent's rule: its update is unknown, so it is measured from snapshots
and reported without theory until a rule is registered for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from smdyn import geometry, theory
from smdyn.dynamics import NORM_EXPONENT

__all__ = ["Rule", "register_rule", "registered_rules", "rule_for"]

Coefficients = tuple[float, float, float]


@dataclass(frozen=True)
class Rule:
    """How one param group updates its weights, and what SMD theory says about it.

    Attributes:
        name: short identifier (``"sgd"``, ``"sgd_nesterov"``, ``"adamw"``, ``"other"``...).
        family: ``"sgd"`` (coupled decay, heavy-ball momentum: Wan et al.), ``"adamw"`` (decoupled decay,
            normalised update: Kosson et al.), or ``"other"``.
        theory: an equilibrium Δ* (and w*) is derived or published for this rule as configured.
        note: why there is no theory (empty when there is).
        buffer: the optimizer-state key of the momentum buffer that enters the update, or None.
        coefficients: group, has_buffer → (a, b, c) with d = a·w + b·g + c·v, or None when the update is
            not a known function of (w, g, v) (a snapshot is then needed).
        norm_exponent: w* ∝ η^norm_exponent at fixed λ (what a rescaling after an η change must apply).
        rescale_state: (optimizer.state, tensors, c, mode) → None: how the optimizer's state follows when
            the weights are about to become c·w (called while they still hold w); None: nothing to do.
    """

    name: str
    family: str
    theory: bool
    note: str = ""
    buffer: str | None = None
    coefficients: Callable[[Mapping[str, Any], bool], Coefficients] | None = None
    norm_exponent: float = math.nan
    dampening: float = 0.0  # torch.optim.SGD's τ (the sgd family only)
    nesterov: bool = False  # torch.optim.SGD's Nesterov momentum (the sgd family only)
    rescale_state: Callable[[Mapping[Any, Any], list[torch.Tensor], float, str], None] | None = None

    @property
    def heavy_ball(self) -> bool:
        """Plain heavy-ball SGD(M) (Eqs 10-11): where Thm 2's h̃, its exact w* and Cor 3.1 apply as printed."""
        return self.family == "sgd" and not self.nesterov and self.dampening == 0

    def hparams(self, group: Mapping[str, Any]) -> tuple[float, float, float]:
        """(lr, weight decay, momentum or β₁) of a param group, as floats (NaN where unreadable)."""
        lr = group_lr(group)
        wd = _float(group.get("weight_decay", 0.0))
        if "momentum" in group:
            mom = _float(group["momentum"])
        elif "betas" in group:
            mom = _float(group["betas"][0])
        else:
            mom = 0.0
        return lr, wd, mom

    def angular_update(self, lr: Any, wd: Any, mom: Any) -> Any:
        """Equilibrium Δ* (valid arguments only: lr > 0, wd > 0, 0 ≤ mom < 1)."""
        if self.family == "adamw":
            return theory.adamw_angular_update(lr, wd, mom)
        return theory.sgd_angular_update(lr, wd, mom, self.dampening, self.nesterov)

    def weight_norm(self, L: Any, lr: Any, wd: Any, mom: Any) -> Any:
        """Equilibrium norm w* from the unit-gradient estimate L (the sgd family; valid arguments only)."""
        return theory.sgd_weight_norm(L, lr, wd, mom, self.dampening, self.nesterov)

    def relaxation_steps(self, lr: Any, wd: Any, mom: Any) -> Any:
        """Steps for the norm to relax: 1/(2ληC), which is (1−α)/(2λη) for SGDM (Eq 12); 1/(2λη) for AdamW."""
        if self.family == "adamw":
            return 1.0 / (2.0 * lr * wd)
        c_sum, _ = theory.sgd_filter_sums(mom, self.dampening, self.nesterov)
        return 1.0 / (2.0 * lr * wd * c_sum)


def group_lr(group: Mapping[str, Any]) -> float:
    """A param group's learning rate as a float (NaN where unreadable), without classifying the optimizer."""
    return _float(group.get("lr", math.nan))


def _float(x: Any) -> float:
    try:
        return float(x.item() if isinstance(x, torch.Tensor) else x)
    except (TypeError, ValueError, RuntimeError):
        return math.nan


def _sgd_coefficients(group: Mapping[str, Any], has_buffer: bool) -> Coefficients:
    """(a, b, c) with the applied update d = w_t − w_{t+1} = a·w + b·g + c·v_{t−1} for ``torch.optim.SGD``.

    Mirrors ``torch.optim.SGD``: grad ← ±g + λw; buf ← grad (first step) or α·buf + (1−τ)·grad;
    direction ← grad + α·buf (Nesterov) or buf; w ← w − η·direction. Eqs 10–11 are the case τ = 0.
    """
    lr = _float(group["lr"])
    wd = _float(group.get("weight_decay", 0.0))
    mom = _float(group.get("momentum", 0.0))
    damp = _float(group.get("dampening", 0.0))
    s = -1.0 if group.get("maximize", False) else 1.0
    if mom == 0:
        return lr * wd, lr * s, 0.0
    k, c = (1.0 - damp, mom) if has_buffer else (1.0, 0.0)  # buf = k·(s·g + λw) + c·v
    if group.get("nesterov", False):  # direction = (s·g + λw) + α·buf
        k, c = 1.0 + mom * k, mom * c
    return lr * k * wd, lr * k * s, lr * c


def _rescale_sgd_state(state: Mapping[Any, Any], tensors: list[torch.Tensor], c: float, mode: str) -> None:
    """Momentum buffer for weights c·w: ``split`` (v = v⊥ + μw → v⊥/c + c·μw), ``scale`` (v/c) or ``keep``.

    ``split`` keeps the buffer's tangential part in step with the smaller effective rate and its radial part
    in proportion to the weight, so the first step after a rescale is already at the new equilibrium.
    """
    bufs = [state.get(p, {}).get("momentum_buffer") for p in tensors]
    if mode == "keep" or all(b is None for b in bufs):
        return
    if mode == "scale":
        for b in bufs:
            if b is not None:
                b.div_(c)
        return
    ww = sum(geometry.sq_norm(p.detach()) for p in tensors)
    wv = sum(geometry.dot(p.detach(), b) for p, b in zip(tensors, bufs, strict=True) if b is not None)
    mu = torch.where(ww > 0, wv / ww, torch.zeros_like(ww)) * (c - 1.0 / c)
    for p, b in zip(tensors, bufs, strict=True):
        if b is not None:
            b.div_(c).add_(p.detach() * mu.to(b.dtype))


def _rescale_adam_state(state: Mapping[Any, Any], tensors: list[torch.Tensor], c: float, mode: str) -> None:
    """Adam's moments for weights c·w: its step is normalised, so m/c and v/c² keep each direction."""
    if mode == "keep":
        return
    for p in tensors:
        s = state.get(p, {})
        for key, power in (("exp_avg", 1), ("exp_avg_sq", 2), ("max_exp_avg_sq", 2)):
            if isinstance(s.get(key), torch.Tensor):
                s[key].div_(c**power)


def _sgd(optimizer: torch.optim.Optimizer, group: Mapping[str, Any]) -> Rule:
    nesterov, damp = bool(group.get("nesterov", False)), _float(group.get("dampening", 0.0))
    if _float(group.get("momentum", 0.0)) == 0:  # no buffer: torch ignores dampening (and refuses Nesterov)
        nesterov, damp = False, 0.0
    theory_ok = not group.get("maximize", False) and 0 <= damp <= 1
    # The fused and differentiable paths do the same math, not bit for bit: measure them from snapshots.
    known = not group.get("differentiable", False) and not group.get("fused", False)
    note = "" if theory_ok else "SGD with maximize=True or a dampening outside [0, 1]: no equilibrium theory"
    return Rule(
        "sgd_nesterov" if nesterov else "sgd",
        "sgd",
        theory=theory_ok,
        note=note,
        buffer="momentum_buffer",
        coefficients=_sgd_coefficients if known else None,
        norm_exponent=NORM_EXPONENT,
        dampening=damp if 0 <= damp <= 1 else 0.0,
        nesterov=nesterov,
        rescale_state=_rescale_sgd_state,
    )


def _adamw(optimizer: torch.optim.Optimizer, group: Mapping[str, Any]) -> Rule:
    return Rule("adamw", "adamw", theory=True, norm_exponent=0.5, rescale_state=_rescale_adam_state)


def _adam(optimizer: torch.optim.Optimizer, group: Mapping[str, Any]) -> Rule:
    if group.get("decoupled_weight_decay", False):
        return _adamw(optimizer, group)
    note = "Adam with L2 weight decay (coupled): no equilibrium theory is derived for it"
    return Rule("adam", "other", theory=False, note=note)


_REGISTRY: dict[type, Callable[[torch.optim.Optimizer, Mapping[str, Any]], Rule]] = {
    torch.optim.SGD: _sgd,
    torch.optim.AdamW: _adamw,
    torch.optim.Adam: _adam,
}


def register_rule(
    optimizer_class: type, rule: Rule | Callable[[torch.optim.Optimizer, Mapping[str, Any]], Rule]
) -> None:
    """Attach a rule to an optimizer class (a third-party one, or a subclass that overrides ``step``).

    Args:
        optimizer_class: the class; instances of it (and of subclasses that do not override ``step``)
            follow the rule.
        rule: a :class:`Rule`, or a callable ``(optimizer, param_group) -> Rule`` for rules that depend on
            the group's settings.

    Raises:
        TypeError: ``optimizer_class`` is not a ``torch.optim.Optimizer`` subclass, or ``rule`` is neither a
            Rule nor callable.
    """
    if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, torch.optim.Optimizer)):
        raise TypeError(f"optimizer_class must be a torch.optim.Optimizer subclass, got {optimizer_class!r}")
    if isinstance(rule, Rule):
        fixed = rule
        _REGISTRY[optimizer_class] = lambda opt, group: fixed
    elif callable(rule):
        _REGISTRY[optimizer_class] = rule
    else:
        raise TypeError(f"rule must be a smdyn.rules.Rule or a callable, got {type(rule).__name__}")


def registered_rules() -> list[type]:
    """The optimizer classes that have a rule."""
    return list(_REGISTRY)


def _unwrapped_step(cls: type) -> Any:
    """``cls.step`` without torch's hook wrappers (which may sit on a subclass as well as on its parent)."""
    fn = getattr(cls, "step", None)
    while hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
    return fn


def rule_for(optimizer: torch.optim.Optimizer, group: Mapping[str, Any]) -> Rule:
    """The rule a param group of ``optimizer`` follows (an ``"other"`` rule without theory when unknown)."""
    cls = type(optimizer)
    base = next((b for b in cls.__mro__ if b in _REGISTRY), None)
    if base is None:
        return _unknown(cls, f"{cls.__name__}: no update rule registered (smdyn.rules.register_rule)")
    if base is not cls and _unwrapped_step(cls) is not _unwrapped_step(base):
        return _unknown(cls, f"{cls.__name__} overrides step() of {base.__name__}")
    rule = _REGISTRY[base](optimizer, group)
    if base is not cls and rule.coefficients is not None:  # inherited: trust the theory, not the arithmetic
        rule = replace(rule, coefficients=None)
    return rule


def _unknown(cls: type, why: str) -> Rule:
    return Rule("other", "other", theory=False, note=f"{why}: no equilibrium theory for this rule")
