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

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from smdyn import geometry, theory
from smdyn.dynamics import NORM_EXPONENT

__all__ = ["Rule", "lion_rule", "register_rule", "registered_rules", "rule_for"]

Coefficients = tuple[float, float, float]
_DECOUPLED = ("adamw", "muon", "lion")  # w ← (1 − ηλ)w − η·(normalised step): ‖w‖² relaxes as (1 − ηλ)^2t


@dataclass(frozen=True)
class Rule:
    """How one param group updates its weights, and what SMD theory says about it.

    Attributes:
        name: short identifier (``"sgd"``, ``"sgd_nesterov"``, ``"adamw"``, ``"other"``...).
        family: ``"sgd"`` (coupled decay, heavy-ball momentum: Wan et al.), ``"adamw"`` (decoupled decay,
            normalised update: Kosson et al.), ``"muon"``, ``"lion"`` (decoupled decay, orthogonalised or
            sign step: rotational equilibrium, docs/design.md §6), or ``"other"``.
        theory: an equilibrium Δ* (and w*) is derived or published for this rule as configured.
        note: why there is no theory (empty when there is).
        buffer: the optimizer-state key of the momentum buffer that enters the update, or None.
        coefficients: group, has_buffer → (a, b, c) with d = a·w + b·g + c·v, or None when the update is
            not a known function of (w, g, v) (a snapshot is then needed).
        norm_exponent: w* ∝ η^norm_exponent at fixed λ (what a rescaling after an η change must apply).
        rescale_state: (optimizer.state, tensors, c, mode) → None: how the optimizer's state follows when
            the weights are about to become c·w (called while they still hold w); None: nothing to do.
        delta_fn: Δ*(lr, wd, mom) where the rule's own theory gives it (Muon, Lion); None: by family.
        norm_fn: w*(lr, wd, mom, numel) where it needs no gradient statistics; None: by family.
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
    delta_fn: Callable[[Any, Any, Any], Any] | None = None  # Δ*(lr, wd, mom) for rules outside sgd/adamw
    norm_fn: Callable[[Any, Any, Any, Any], Any] | None = None  # w*(lr, wd, mom, numel) needing no gradient

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
        if self.delta_fn is not None:
            return self.delta_fn(lr, wd, mom)
        if self.family == "adamw":
            return theory.adamw_angular_update(lr, wd, mom)
        return theory.sgd_angular_update(lr, wd, mom, self.dampening, self.nesterov)

    def weight_norm(self, L: Any, lr: Any, wd: Any, mom: Any) -> Any:
        """Equilibrium norm w* from the unit-gradient estimate L (the sgd family; valid arguments only)."""
        return theory.sgd_weight_norm(L, lr, wd, mom, self.dampening, self.nesterov)

    def equilibrium_norm(self, lr: Any, wd: Any, mom: Any, numel: Any) -> Any:
        """w* where it needs no gradient statistics (AdamW, Lion, Muon; ``numel`` = C), else NaN."""
        if self.norm_fn is not None:
            return self.norm_fn(lr, wd, mom, numel)
        if self.family == "adamw":
            return theory.adamw_weight_norm(lr, wd, numel, mom)
        return np.full(np.broadcast(lr, wd, mom).shape, np.nan) if np.ndim(lr) else math.nan

    def relaxation_steps(self, lr: Any, wd: Any, mom: Any) -> Any:
        """Steps for the norm to relax: 1/(2ληC), (1−α)/(2λη) for SGDM (Eq 12); 1/(2λη) when decoupled."""
        if self.family in _DECOUPLED:
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
    return _no_theory("adam", _COUPLED_NOTE.format(name="Adam"))


_COUPLED_NOTE = (
    "{name} with L2 weight decay (coupled): λw enters the normalised step divided by the gradient's RMS, so "
    "the decay's pull depends on the gradient scale and no equilibrium in (η, λ, β) alone is derived"
)


def _no_theory(name: str, note: str) -> Rule:
    return Rule(name, "other", theory=False, note=note)


def _radam(optimizer: torch.optim.Optimizer, group: Mapping[str, Any]) -> Rule:
    """RAdam: once its rectification r_t → 1 the step is AdamW's (checked with β₂ = 0.99).

    r_t ≈ √(ρ_t/ρ_∞) needs β₂^t ≈ 0: at β₂ = 0.999 it is 0.78 at step 1650 and 0.98 at 5000, and the norm
    follows it (w* ∝ r_t); before that the AdamW values over-predict the norm.
    """
    if group.get("decoupled_weight_decay", False):
        return replace(_adamw(optimizer, group), name="radam_decoupled")
    return _no_theory("radam", _COUPLED_NOTE.format(name="RAdam"))


def _nadam(optimizer: torch.optim.Optimizer, group: Mapping[str, Any]) -> Rule:
    note = (
        "NAdam's momentum schedule μ_t = β₁(1 − ½·0.96^(ψt)) keeps changing for ~ln(50)/(ψ·0.04) steps "
        "(23,000 at ψ = 4e-3): no constant equilibrium is derived"
    )
    if not group.get("decoupled_weight_decay", False):
        note = _COUPLED_NOTE.format(name="NAdam")
    return _no_theory("nadam", note)


def _fixed_note(name: str, note: str) -> Callable[[torch.optim.Optimizer, Mapping[str, Any]], Rule]:
    rule = _no_theory(name, note)
    return lambda optimizer, group: rule


_ADAGRAD_NOTE = "Adagrad's accumulated squares make its step shrink as 1/√t: there is no equilibrium"
_ADAFACTOR_NOTE = (
    "Adafactor's step is relative to RMS(w) (×min(lr, 1/√t)), so decay and step both scale with ‖w‖: "
    "there is no equilibrium norm"
)


# --------------------------------------------------------------------------------------------------
# Muon and Lion: rotational equilibrium (smdyn.theory.muon_*, lion_*; docs/design.md §6)


def _rescale_first_moment(state: Mapping[Any, Any], tensors: list[torch.Tensor], c: float, mode: str) -> None:
    """Muon's buffer (Lion's m) for weights c·w: the gradients there are g/c, so m/c keeps every later
    normalised step (msign, sign) as it would have been at c·w; ``keep`` leaves it (old gradients then
    outweigh new ones by c for the buffer's memory)."""
    if mode == "keep":
        return
    for p in tensors:
        for key in ("momentum_buffer", "exp_avg"):
            buf = state.get(p, {}).get(key)
            if isinstance(buf, torch.Tensor):
                buf.div_(c)


@functools.lru_cache(maxsize=256)
def _muon_rule(
    shapes: frozenset[tuple[int, int]],
    nesterov: bool,
    ns: tuple[tuple[float, float, float], int],
    adjust: str | None,
) -> Rule:
    from smdyn._decorrelation import reduced_shape

    name = "muon_nesterov" if nesterov else "muon"
    base = Rule(name, "muon", theory=False, norm_exponent=0.5, rescale_state=_rescale_first_moment)
    if not shapes:
        return replace(base, note="Muon group without 2-D weights: no equilibrium theory")
    if len({reduced_shape(s) for s in shapes}) > 1:
        note = (
            "Muon's Δ* depends on the weight's aspect ratio and this param group mixes "
            f"{sorted(shapes)}: use one group per aspect ratio, or theory.muon_angular_update per weight"
        )
        return replace(base, note=note)
    shape = next(iter(shapes))

    def delta(lr: Any, wd: Any, mom: Any) -> Any:
        return theory.muon_angular_update(lr, wd, shape, mom, nesterov, *ns)

    def norm(lr: Any, wd: Any, mom: Any, numel: Any) -> Any:
        if len(shapes) > 1:  # one aspect ratio, several sizes: U differs, w* is per weight
            return np.full(np.broadcast(lr, wd, mom).shape, np.nan) if np.ndim(lr) else math.nan
        # A row of numel < A·B elements (granularity="channel"): rows are exchangeable, so each holds
        # numel/(A·B) of ‖w*‖² (measured vs torch.optim.Muon: 0.98-1.00 of this, rows scatter by 8-18%).
        share = np.sqrt(np.asarray(numel, dtype=np.float64) / (shape[0] * shape[1]))
        return theory.muon_weight_norm(lr, wd, shape, mom, nesterov, adjust, *ns) * share

    return replace(base, theory=True, delta_fn=delta, norm_fn=norm)


def _muon(optimizer: torch.optim.Optimizer, group: Mapping[str, Any]) -> Rule:
    """torch.optim.Muon: measured from snapshots (bf16 Newton–Schulz); Δ* from theory.muon_angular_update."""
    shapes = frozenset(tuple(int(d) for d in p.shape) for p in group["params"] if p.ndim == 2)
    coeffs = tuple(float(c) for c in group.get("ns_coefficients", (3.4445, -4.7750, 2.0315)))
    ns = (coeffs, int(group.get("ns_steps", 5)))
    return _muon_rule(shapes, bool(group.get("nesterov", True)), ns, group.get("adjust_lr_fn"))


@functools.lru_cache(maxsize=256)
def _lion_rule(beta2: float) -> Rule:
    def delta(lr: Any, wd: Any, b1: Any) -> Any:
        return theory.lion_angular_update(lr, wd, b1, beta2)

    def norm(lr: Any, wd: Any, b1: Any, numel: Any) -> Any:
        return theory.lion_weight_norm(lr, wd, numel, b1, beta2)

    return Rule(
        "lion",
        "lion",
        theory=True,
        norm_exponent=0.5,
        rescale_state=_rescale_first_moment,
        delta_fn=delta,
        norm_fn=norm,
    )


def lion_rule(optimizer: torch.optim.Optimizer, group: Mapping[str, Any]) -> Rule:
    """The rule of Lion (Chen et al. 2023, arXiv 2302.06675), for any implementation of its update.

    Lion is not in torch. Its update, c = β₁m + (1−β₁)g; w ← w(1 − lr·wd) − lr·sign(c); m ← β₂m + (1−β₂)g,
    is read from the group's ``lr``, ``betas`` and ``weight_decay``; Δ* and w* are
    :func:`smdyn.theory.lion_angular_update` / ``lion_weight_norm``. Attach it to the class you train with::

        from lion_pytorch import Lion            # lucidrains' lion-pytorch
        smdyn.rules.register_rule(Lion, smdyn.rules.lion_rule)
        from timm.optim import Lion              # timm (its default caution=False is plain Lion)
        smdyn.rules.register_rule(Lion, smdyn.rules.lion_rule)

    heavyball's optimizers name their groups and updates differently: register ``lion_rule`` only for a
    class whose step is the update above with those three keys (read its ``step``); anything else keeps
    its snapshot measurements without theory. A group with ``maximize`` or caution gets no theory.
    """
    try:
        b1, b2 = (float(b) for b in group["betas"])
    except (KeyError, TypeError, ValueError):
        return _no_theory("lion", "Lion group without readable betas: no equilibrium theory")
    if group.get("maximize", False) or group.get("caution", False) or not (0 <= b1 < 1 and 0 <= b2 < 1):
        return replace(
            _lion_rule(0.0), theory=False, note="Lion with maximize, caution or betas outside [0, 1)"
        )
    return _lion_rule(b2)


_REGISTRY: dict[type, Callable[[torch.optim.Optimizer, Mapping[str, Any]], Rule]] = {
    torch.optim.SGD: _sgd,
    torch.optim.AdamW: _adamw,
    torch.optim.Adam: _adam,
    torch.optim.RAdam: _radam,
    torch.optim.NAdam: _nadam,
    torch.optim.Adamax: _fixed_note("adamax", _COUPLED_NOTE.format(name="Adamax")),
    torch.optim.RMSprop: _fixed_note("rmsprop", _COUPLED_NOTE.format(name="RMSprop")),
    torch.optim.Adagrad: _fixed_note("adagrad", _ADAGRAD_NOTE),
    torch.optim.Adafactor: _fixed_note("adafactor", _ADAFACTOR_NOTE),
    torch.optim.Muon: _muon,
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
