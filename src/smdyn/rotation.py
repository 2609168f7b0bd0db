"""Rotation control: fix the norm of each scale-invariant weight and turn it by a set angle every step.

Left to itself a scale-invariant weight reaches its equilibrium angular update Δ* only after ~1/(λη) steps
(Wan et al., NeurIPS 2021, Thms 1-3), and falls behind every change of the lr by as long (Cor 3.1). A
rotation controller removes the approach phase and the lag: it keeps ‖w‖ at its initial value and sets the
angle of every step directly, Δ_t = Δ*(η_t) of the group's update rule (:mod:`smdyn.rules`) at the current
lr, or a value the user gives. This is the rotational wrapper of Kosson et al., "Rotational Equilibrium"
(ICML 2024, arXiv 2305.17212), here without its averaging of the update size, and the fixed-norm training of
Wen et al. 2026 ("Hyperball Optimization", arXiv 2606.16899).

Each step, around the inner optimizer's step (pre- and post-hooks, so training code is unchanged):

1. before it, w_t is copied;
2. the inner optimizer steps as usual, giving w';
3. after it, u = w' − w_t is split along w_t, and its tangential part u⊥ = u − ⟨u, ŵ⟩ŵ gives the direction
   t̂ = u⊥/‖u⊥‖ (in float64); the weight becomes ‖w_0‖·(cos Δ_t·ŵ + sin Δ_t·t̂): exactly Δ_t away from w_t,
   at exactly its initial norm. Where u⊥ = 0 (no gradient reached it) the weight only gets its norm back.

Only the direction of the inner update is used, never its size or its radial part, so the inner optimizer's
weight decay cannot shrink the weights: decoupled decay (AdamW, Muon) is a pure radial step that the
projection removes, and coupled decay (SGD: λw in the gradient, and through it in the momentum buffer) is
radial up to the turn of the last ~1/(1−α) steps, which tilts the direction by O(λ/‖g‖·‖w‖) and leaves the
angle alone. The group's ``weight_decay`` still sets the target Δ*(η, λ, α), so it is left in place.

``per_channel=True`` turns each output channel (dim-0 slice) on its own, each at its own initial norm, for
weights whose channels are scale-invariant one by one (a layer followed by BatchNorm, as
:func:`smdyn.find_scale_invariant` reports); others are turned as a whole.

The turn is exact up to the rounding of the result to the weights' format: in float32 the angle is off by
at most ~8e-8/√n for a vector of n elements (measured over 25 random steps: 1.1e-8 at n = 48, 2.8e-10 at
n = 65536), so within 1e-5 of Δ_t for Δ_t ≥ 1e-3 from n ≈ 100 on.

A monitor measures the rotated step when its post-hook runs after this one: the controller's hooks run
before every other per-optimizer hook. Inside ``optimizer.step()`` nothing raises: an error becomes one
``RuntimeWarning`` and the controller goes idle (the inner optimizer's steps then apply as they are).
Cost per step: a copy of the controlled weights and a few float64 passes over them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from smdyn import _control
from smdyn.rules import rule_for

__all__ = ["RotationController"]

TargetSpec = float | Callable[[int], float] | None


@dataclass
class _Unit:
    """A controlled vector (or, per channel, its rows), its fixed norms and this step's copy of it."""

    name: str
    tensors: list[torch.Tensor]
    group: int
    rows: int  # 1, or the number of output channels
    norms: torch.Tensor  # float64 [rows]: the norm each row is held at
    before: list[torch.Tensor] | None = None


class RotationController:
    """Hold each scale-invariant weight at its initial norm and turn it by Δ_target(η_t) every step.

    Args:
        model_or_params: the model (its scale-invariant weights are found by
            :func:`smdyn.find_scale_invariant`), or an iterable of parameters or ``(name, parameter)`` pairs
            (taken as scale-invariant without a check).
        optimizer: the inner optimizer; it gives the direction of each step.
        target: ``None``: the rule's equilibrium Δ* at the group's current lr, weight decay and momentum
            (needs a rule with theory and weight decay > 0); a number: that angle (radians) every step; a
            callable ``step → Δ``, with ``step`` counting optimizer steps from 0.
        per_channel: turn each output channel on its own where it is scale-invariant on its own (always, for
            explicitly given parameters of two or more dims).
        example_batch: one input batch for :func:`smdyn.find_scale_invariant` (models torch.fx cannot trace).
        loss_fn: maps the model output to a scalar loss for its probe.
        hook: register the step pre- and post-hooks; ``False``: call :meth:`before_step` and
            :meth:`after_step` around each ``optimizer.step()``.

    Attributes:
        angular_update: the angle Δ_t each param group's weights were turned by at the last step.
        step: optimizer steps seen.

    Raises:
        TypeError: a ``target`` that is neither None, a number nor callable; malformed parameters.
        ValueError: without ``target``, a group whose rule has no derived Δ* or weight decay 0; a target
            outside [0, π]; a weight of norm 0; weights another control already holds.
    """

    def __init__(
        self,
        model_or_params: Any,
        optimizer: torch.optim.Optimizer,
        *,
        target: TargetSpec = None,
        per_channel: bool = False,
        example_batch: Any = None,
        loss_fn: Any = None,
        hook: bool = True,
    ) -> None:
        _check_target(target)
        found = _control.resolve(model_or_params, optimizer, example_batch, loss_fn, "RotationController")
        explicit = not isinstance(model_or_params, torch.nn.Module)
        self.optimizer = optimizer
        self.target = target
        self.per_channel = bool(per_channel)
        self._units = [_unit(t, self.per_channel and (explicit or t.per_channel)) for t in found]
        self._groups = sorted({u.group for u in self._units})
        if target is None:
            for gi in self._groups:
                _check_theory(optimizer, gi)
        self.angular_update: dict[int, float] = {}
        self.step = 0
        self._closed = False
        self._handles: list[Any] = []
        self.hooked = bool(hook)  # False: the turn comes after step() returns, after every post-hook
        _control.claim(optimizer, [p for u in self._units for p in u.tensors], self, "RotationController")
        if hook:
            pre = optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.before_step())
            post = optimizer.register_step_post_hook(lambda opt, args, kwargs: self.after_step())
            _control.to_front(optimizer._optimizer_step_pre_hooks, pre)
            _control.to_front(optimizer._optimizer_step_post_hooks, post)
            self._handles = [pre, post]

    @property
    def names(self) -> list[str]:
        """Names of the controlled weights, in order."""
        return [u.name for u in self._units]

    # ------------------------------------------------------------------ the step

    def before_step(self) -> None:
        """Copy the weights and fix this step's angles (the pre-hook; call it only with ``hook=False``)."""
        self._guard(self._before)

    def after_step(self) -> None:
        """Turn the weights (the post-hook; call it only with ``hook=False``)."""
        if self._guard(self._after):
            self.step += 1

    def _guard(self, fn: Callable[[], None]) -> bool:
        if self._closed:
            return False
        try:
            fn()
        except Exception as exc:  # never break the user's training step
            _control.go_idle(self, "RotationController", exc, self.step, "the inner optimizer's steps apply")
            return False
        return True

    @torch.no_grad()
    def _before(self) -> None:
        self.angular_update = {gi: self._angle(gi) for gi in self._groups}
        for u in self._units:
            u.before = [p.detach().clone() for p in u.tensors]

    def _angle(self, gi: int) -> float:
        if self.target is None:
            group = self.optimizer.param_groups[gi]
            rule = rule_for(self.optimizer, group)
            lr, wd, mom = rule.hparams(group)
            delta = 0.0 if lr == 0 or wd == 0 else float(rule.angular_update(lr, wd, mom))
        elif callable(self.target):
            delta = float(self.target(self.step))
        else:
            delta = float(self.target)
        if not (math.isfinite(delta) and 0 <= delta <= math.pi):
            raise ValueError(f"the target angle for param group {gi} is {delta!r}, outside [0, π]")
        return delta

    @torch.no_grad()
    def _after(self) -> None:
        for u in self._units:
            if u.before is None:
                raise RuntimeError("a step ended without the copy taken before it (before_step not called)")
            delta = self.angular_update[u.group]
            w = torch.cat([b.reshape(u.rows, -1).double() for b in u.before], 1)
            moved = torch.cat([p.detach().reshape(u.rows, -1).double() for p in u.tensors], 1)
            u.before = None
            length = w.norm(dim=1, keepdim=True)
            if not bool((length > 0).all()):
                raise ValueError(f"{u.name} has norm 0; it cannot be turned")
            w_hat = w / length
            step = moved - w
            tangent = step - (step * w_hat).sum(1, keepdim=True) * w_hat
            size = tangent.norm(dim=1, keepdim=True)
            turns = size > 0  # a row the inner step did not move keeps its direction
            t_hat = torch.where(turns, tangent / size.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
            cos = torch.where(turns, math.cos(delta), 1.0)
            out = u.norms[:, None] * (cos * w_hat + math.sin(delta) * t_hat)
            start = 0
            for p in u.tensors:
                width = p.numel() // u.rows
                p.copy_(out[:, start : start + width].reshape(p.shape))
                start += width

    # ------------------------------------------------------------------ persistence and life cycle

    def state_dict(self) -> dict[str, Any]:
        """The step count and the norm each weight (row) is held at, as plain Python floats."""
        return {
            "step": self.step,
            "units": self.names,
            "per_channel": self.per_channel,
            "norms": [u.norms.tolist() for u in self._units],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the controlled weights must be the same."""
        if list(state["units"]) != self.names:
            raise ValueError(f"state is for parameters {list(state['units'])}, this control has {self.names}")
        norms = list(state["norms"])
        if bool(state["per_channel"]) != self.per_channel or [len(n) for n in norms] != [
            u.rows for u in self._units
        ]:
            raise ValueError("state was saved with a different per_channel setting")
        for u, n in zip(self._units, norms, strict=True):
            u.norms = torch.tensor(n, dtype=torch.float64, device=u.norms.device)
        self.step = int(state["step"])

    def close(self) -> None:
        """Remove the hooks; the inner optimizer's steps apply as they are from now on. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for h in self._handles:
            h.remove()
        for u in self._units:
            u.before = None
        _control.release(self.optimizer, self)

    def __enter__(self) -> RotationController:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_target(target: Any) -> None:
    if target is None or callable(target):
        return
    if isinstance(target, bool) or not isinstance(target, (int, float)):
        raise TypeError(
            f"target must be None, a number or a callable step → angle, got {type(target).__name__}"
        )
    if not (math.isfinite(target) and 0 <= target <= math.pi):
        raise ValueError(f"target must be an angle in [0, π] (radians), got {target!r}")


def _check_theory(optimizer: torch.optim.Optimizer, gi: int) -> None:
    """Refuse a group whose equilibrium angular update is not known (or is 0): the target would be made up."""
    group = optimizer.param_groups[gi]
    rule = rule_for(optimizer, group)
    hint = "pass target= (an angle in radians, or a callable step → angle)"
    if not rule.theory:
        raise ValueError(
            f"param group {gi}: {type(optimizer).__name__} has no derived equilibrium angular update "
            f"({rule.note or rule.name}); {hint}"
        )
    lr, wd, mom = rule.hparams(group)
    if not (wd > 0):
        raise ValueError(
            f"param group {gi} has weight_decay {wd!r}: its equilibrium angular update is 0, so the weights "
            f"would never turn; set a weight decay or {hint}"
        )
    if not (0 <= mom < 1 and lr >= 0):
        raise ValueError(f"param group {gi}: lr {lr!r} and momentum {mom!r} have no equilibrium; {hint}")


def _unit(t: _control.Target, per_channel: bool) -> _Unit:
    """The controlled vector, split into rows when each channel is turned on its own."""
    for p in t.tensors:
        if type(p).__name__ == "DTensor":
            raise ValueError(f"{t.name} is a sharded DTensor; the rotation needs each whole vector locally")
    rows = t.tensors[0].shape[0] if per_channel and t.tensors[0].dim() >= 2 else 1
    if any(p.dim() == 0 or p.shape[0] != rows for p in t.tensors) and rows > 1:
        rows = 1  # tensors that do not share the channel dimension are turned as a whole
    with torch.no_grad():
        w = torch.cat([p.detach().reshape(rows, -1).double() for p in t.tensors], 1)
        norms = w.norm(dim=1)
    if not bool((norms > 0).all()) or not bool(norms.isfinite().all()):
        raise ValueError(f"{t.name} has a zero or non-finite norm (in some channel); it cannot be turned")
    return _Unit(t.name, list(t.tensors), t.group, rows, norms)
