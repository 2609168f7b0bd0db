"""Rescale scale-invariant weights when the learning rate changes, so they stay at their equilibrium.

Wan et al., "Spherical Motion Dynamics" (NeurIPS 2021), Sec 4.2: the equilibrium norm of a scale-invariant
weight trained by SGD(M) with weight decay is w* ∝ η^¼ (Thms 1-2), so after the learning rate is divided by
k the weight lags for ~ln(k)(1−α)/(2λη) steps (Corollary 3.1) with an angular update k^½ below its new
equilibrium value. Multiplying every scale-invariant weight by k^(−¼) at the drop puts it at the new
equilibrium at once. :class:`Rescaler` does that for any learning-rate schedule without a call in the
training loop: an optimizer step pre-hook compares each param group's ``lr`` with the one of the previous
step, which covers every ``torch.optim.lr_scheduler`` (they all write ``param_group["lr"]``) and manual edits.

What a rescale by c does, between backward and the optimizer step:

* every scale-invariant tensor of the group: w ← c·w;
* its gradient: g ← g/c, the gradient at c·w (Lemma 1, Eq 4), so the step taken is the step at c·w;
* a BatchNorm / InstanceNorm fed by the rescaled layer holds running statistics of the old scale: its input
  y = W·x + b becomes c·W·x + b, so running_var ← c²·running_var and running_mean ← c·(running_mean − b) + b
  (b = the layer's bias where the layer has one that is not rescaled with the weight, else 0). Without this,
  evaluation right after a drop would be wrong;
* the optimizer state, chosen by experiment (``momentum=``, below).

Momentum buffer (``momentum="split"``, the default). The SGDM buffer v = Σ αʲ(g + λw) has a tangential part
(gradients, ∝ 1/‖w‖) and a radial part along w. The radial part sets the norm's drift: at equilibrium
E⟨w, v'⟩ = η·E‖v'‖²/2 (the norm is stationary), and with η → η/k = c⁴η and ‖v'‖² → ‖v'‖²/c² this needs
⟨w, v⟩ → c²⟨w, v⟩, whatever produced the radial part. So the tangential part is divided by c and the radial
part (its projection on the unit's whole vector) multiplied by c. Measured, Δ/Δ*_new after a drop by 10 at
α = 0.9 (Δ* = √(2λη/(1+α)), Thm 3):

========================  =============  =============  ==============  =============
buffer after the drop     Gram model,    Gram model,    CNN, mnist1d,   CNN, mnist1d,
                          first step     max |Δ/Δ*−1|   first step [1]  steps 0-4 [1]
========================  =============  =============  ==============  =============
``"split"`` (default)     0.9999         1.2e-4         reference       reference
``"scale"`` (v/c)         0.9998         2.0e-3         −0.01%          −0.05%
``"keep"``                0.668          0.33           −32%            −15%
reset to 0                0.436          0.56           −52%            −22%
========================  =============  =============  ==============  =============

Gram model: the noiseless recurrence of docs/design.md §2 at λη_new = 1e-3 (at α = 0.99: ``"split"`` 1.1e-5,
``"scale"`` 1.5e-3, ``"keep"`` 1% off for 589 steps). [1] 3-layer BatchNorm CNN on mnist1d, SGD lr 0.1 → 0.01,
λ = 5e-3, α = 0.9, at equilibrium before the drop (RMS Δ/Δ* = 0.99-1.00); paired runs (same batches, 6 seeds ×
3 layers), mean of Δ/Δ_split − 1; RMS Δ/Δ*_new on the first step: 1.02 with ``"split"``, 0.69 with ``"keep"``,
0.32 without rescaling (k^-½ = 0.316). On that network Δ/Δ*_new then settles near 0.72 with every buffer
choice (0.24 without rescaling): the unit-gradient norm L = E‖g̃‖² falls ~3× within 400 steps of the drop (the
loss falls too), and the rescale corrects for η only, never for a change of L (w* ∝ L^¼ as well).

AdamW (``torch.optim.AdamW``, or ``Adam`` with ``decoupled_weight_decay=True``): its equilibrium norm is
√(ηC/(2λ)) ∝ η^½ (Kosson et al., "Rotational Equilibrium", ICML 2024, arXiv 2305.17212, Table 1), so the
weights are multiplied by r^½, not r^¼; ``exp_avg`` ← ``exp_avg``/c and ``exp_avg_sq`` ← ``exp_avg_sq``/c²
(the moments of the gradients c·w would have had), which leaves m̂/√v̂ unchanged. Measured in the random-walk
model of that paper (C = 512, lr 1e-2 → 1e-3, λ = 0.1, 16 trajectories): RMS Δ/Δ*_new = 0.998 on the first
step and 0.99 after; keeping the Adam state instead overshoots (2.5 over steps 1-100, 1.3 up to step
1000); the SGD exponent ¼ gives 0.56. Other optimizers have no derived law and are refused (``TypeError``).

Hook order. The rescale must come before any monitor's pre-step measurement, or the monitor would describe
a step that is not taken. torch has no ``prepend`` for optimizer step hooks, so the Rescaler moves its hook
to the front of ``optimizer._optimizer_step_pre_hooks`` (an ``OrderedDict``) with
``move_to_end(key, last=False)``: it runs before every per-optimizer pre-hook whatever the attach order.
Global hooks (``torch.optim.optimizer.register_optimizer_step_pre_hook``) still run before it.

Modes. Both follow the lr both ways: the cumulative factor is the closed form (lr/lr₀)^¼ (SGD; ^½ AdamW) of
the equilibrium law, so a decrease scales the weights down, an increase (warm-up, a restart of a cyclic
schedule) scales them back up by the same law, and a schedule that returns to an earlier lr returns the
weights to the factor they had there — no schedule ratchets them towards the floor. ``"drops"`` (the paper's
rule, the default): the factor changes only when the lr has moved by more than ``threshold`` from the lr
of the last rescale (down below (1 − threshold)·lr, up above lr/(1 − threshold)); smaller moves wait, and
count once they add up. ``"continuous"``: every change — a generalisation that keeps smooth schedules
(cosine, warm-up) on the equilibrium curve, which the planner (:func:`smdyn.plan`) shows before training:
for a 3000-step cosine from λη = 1e-4 (α = 0.9) the noiseless model keeps |Δ/Δ* − 1| < 1e-3 with it,
against a mean of 0.20 and −76% at 90% of the schedule without. In both modes the cumulative factor never goes
below ``floor``: a schedule that decays towards 0 would drive the norms towards 0, where BatchNorm's eps is no
longer negligible (the output moves by ≈ eps(1/c² − 1)/(2σ²)) and the weights lose precision.

lr₀ is the first positive, finite lr the Rescaler sees: a warm-up from lr = 0 starts the rule at its first
positive step (nothing is divided by 0), and the weights then grow by (lr_peak/lr₀)^¼ over the warm-up, as
the law says for weights at the equilibrium of lr₀. Weights far from that equilibrium (a fresh
initialisation) are better left alone during a warm-up: build the Rescaler after it. After the start, an
lr of 0 or a non-finite lr is skipped with a warning; the next valid lr is compared with the last valid one.

Never inside ``optimizer.step()``: an exception in the Rescaler's hook becomes one ``RuntimeWarning`` and the
Rescaler goes idle (the weights keep the factor applied so far). Bad constructor arguments still raise.
"""

from __future__ import annotations

import inspect
import logging
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from smdyn import _control
from smdyn._event_log import EventLog
from smdyn._params import parse_params
from smdyn._rescale_rule import LrRule as _LrRule
from smdyn._rescale_rule import check_rule_args as _check_rule_args
from smdyn.rules import rule_for

__all__ = ["Rescaler", "check_settings"]

_log = logging.getLogger("smdyn")

_MOMENTUM = ("split", "scale", "keep")


# --------------------------------------------------------------------------------------------------
# Settings. The rule itself (which lr change gives which factor) is smdyn._rescale_rule.LrRule, which the
# planner runs too.


def check_settings(**kwargs: Any) -> None:
    """Refuse now what ``Rescaler(optimizer, ..., **kwargs)`` would refuse later for these settings.

    For the framework callbacks, which build their Rescalers only when training starts: an unknown name is a
    TypeError, and ``mode``, ``threshold``, ``floor`` and ``momentum`` get the constructor's own checks.
    """
    params = inspect.signature(Rescaler).parameters
    unknown = sorted(set(kwargs) - set(params) | set(kwargs) & {"optimizer", "params", "model"})
    if unknown:
        raise TypeError(f"Rescaler got unexpected keyword arguments: {', '.join(unknown)}")
    value = {k: kwargs.get(k, params[k].default) for k in ("mode", "threshold", "floor", "momentum")}
    _check_rule_args(value["mode"], value["threshold"], value["floor"])
    _check_momentum(value["momentum"])


def _check_momentum(momentum: str) -> None:
    if momentum not in _MOMENTUM:
        raise ValueError(f"momentum must be one of {_MOMENTUM}, got {momentum!r}")


# --------------------------------------------------------------------------------------------------
# Units: what is rescaled together, and which running statistics follow


@dataclass
class _Unit:
    """A scale-invariant vector (one tensor, or a weight and bias invariant jointly) and its norm layers."""

    name: str
    tensors: list[nn.Parameter]
    group: int
    # (norm module with running statistics, the layer's bias that is not rescaled, or None)
    stats: list[tuple[_NormBase, torch.Tensor | None]] = field(default_factory=list)


def _exponent_for(optimizer: torch.optim.Optimizer) -> float:
    """The norm's exponent in η from the rule registry: w* ∝ η^¼ for SGD(M) (Thms 1-2), η^½ for AdamW."""
    found = {
        (r.norm_exponent, r.family, r.note) for r in (rule_for(optimizer, g) for g in optimizer.param_groups)
    }
    bad = sorted(note or family for exp, family, note in found if math.isnan(exp))
    if bad:
        raise TypeError(
            f"optimizer: {type(optimizer).__name__} has no derived equilibrium law for rescaling ({bad[0]}); "
            "supported are torch.optim.SGD (weights × r^¼), torch.optim.AdamW, "
            "Adam/RAdam(decoupled_weight_decay=True), torch.optim.Muon and Lion via smdyn.rules.lion_rule "
            "(weights × r^½), or a rule registered with smdyn.rules"
        )
    if len({(exp, family) for exp, family, _ in found}) > 1:
        raise TypeError("optimizer: its param groups follow update rules with different equilibrium laws")
    return found.pop()[0]


def detect(model: nn.Module, example_batch: Any, loss_fn: Any) -> list[Any] | None:
    """``find_scale_invariant`` results, or None when the model's data flow could not be read at all."""
    from smdyn.invariance import find_scale_invariant

    if example_batch is not None:
        return find_scale_invariant(model, example_batch, loss_fn)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = find_scale_invariant(model)
    if not found and any("cannot trace" in str(w.message) for w in caught):
        return None
    for w in caught:  # pass on anything else it had to say
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return found


def _stats_for(model: nn.Module, found: Any) -> list[tuple[_NormBase, torch.Tensor | None]]:
    """The norm layers with running statistics fed by a detected unit, with the layer's unscaled bias."""
    if found.kind == "weight_norm":
        return []
    owner = found.params[0].rpartition(".")[0]
    layer = model.get_submodule(owner)
    bias = getattr(layer, "bias", None)
    bias_name = f"{owner}.bias" if owner else "bias"
    unscaled = bias if isinstance(bias, torch.Tensor) and bias_name not in found.params else None
    out = []
    for norm_name in found.norm.split(","):
        norm = model.get_submodule(norm_name)
        if isinstance(norm, _NormBase) and norm.running_var is not None:
            if unscaled is not None and unscaled.shape != norm.running_mean.shape:
                raise ValueError(
                    f"{found.name}: the bias of {owner!r} has shape {tuple(unscaled.shape)} but "
                    f"{norm_name!r} keeps running statistics of shape {tuple(norm.running_mean.shape)}"
                )
            out.append((norm, unscaled))
    return out


def _resolve(
    optimizer: torch.optim.Optimizer,
    params: Any,
    model: nn.Module | None,
    force: bool,
    example_batch: Any,
    loss_fn: Any,
) -> list[_Unit]:
    """The units to rescale, checked against detection (unless forced) and against the param groups."""
    group_of = {id(p): gi for gi, g in enumerate(optimizer.param_groups) for p in g["params"]}
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    named = dict(model.named_parameters()) if model is not None else {}
    name_of = {id(p): n for n, p in named.items()}

    if isinstance(params, str):
        if params != "auto":
            raise ValueError(f"params must be 'auto', (name, parameter) pairs or names, got {params!r}")
        if model is None:
            raise ValueError("params='auto' needs model: it finds the scale-invariant weights in it")
        found = detect(model, example_batch, loss_fn)
        if found is None:
            raise ValueError(
                "params='auto': torch.fx cannot trace the model; pass example_batch so that the data flow "
                "is read from one forward pass, or pass params explicitly with force=True"
            )
        units = []
        for f in found:
            groups = {group_of.get(id(named[n])) for n in f.params}
            if groups == {None}:
                continue  # trained by another optimizer
            if None in groups or len(groups) > 1:
                warnings.warn(
                    f"{f.name}: its tensors are not all in one param group of this optimizer; it is not "
                    "rescaled (a group's lr change would rescale only part of it)",
                    stacklevel=3,
                )
                continue
            units.append(_Unit(f.name, [named[n] for n in f.params], groups.pop(), _stats_for(model, f)))
        if not units:
            raise ValueError(
                "params='auto' found no scale-invariant weight trained by this optimizer (no conv/linear "
                "feeding a normalization layer); pass params explicitly"
            )
        return units

    given = parse_params(params, model)
    ids = [id(t) for _, ts in given for t in ts]

    if model is None:
        if not force:
            raise ValueError(
                "model is needed to check that the parameters are scale-invariant and to find the "
                "BatchNorm layers whose running statistics must follow; pass model=..., or force=True to "
                "rescale the weights alone"
            )
        warnings.warn(
            "Rescaler without model: scale invariance is not checked and no running statistics follow the "
            "rescale (evaluation right after a rescale is wrong if a BatchNorm follows these weights)",
            stacklevel=3,
        )
        return [_Unit(n, ts, _group(n, ts, group_of)) for n, ts in given]

    found = detect(model, example_batch, loss_fn)
    if found is None and not force:
        raise ValueError(
            "cannot check scale invariance: torch.fx cannot trace the model; pass example_batch, or "
            "force=True to rescale without the check"
        )
    by_tensor = {id(named[n]): f for f in found or [] for n in f.params}
    units: list[_Unit] = []
    done: set[str] = set()
    given_ids = set(ids)
    for label, tensors in given:
        fs = {by_tensor[id(t)].name: by_tensor[id(t)] for t in tensors if id(t) in by_tensor}
        unknown = [name_of[id(t)] for t in tensors if id(t) not in by_tensor]
        partial = [f for f in fs.values() if not all(id(named[n]) in given_ids for n in f.params)]
        if unknown or partial:
            if unknown:
                why = f"{unknown[0]!r} is not scale-invariant according to smdyn.find_scale_invariant"
            else:
                why = f"{partial[0].name!r} is scale-invariant only jointly: list all of its tensors"
            if not force:
                raise ValueError(f"params: {why}; pass force=True to rescale it anyway")
            warnings.warn(f"params: {why}; rescaled anyway (force=True)", stacklevel=3)
            units.append(_Unit(label, tensors, _group(label, tensors, group_of)))
            continue
        for f in fs.values():
            if f.name not in done:
                done.add(f.name)
                ts = [named[n] for n in f.params]
                units.append(_Unit(f.name, ts, _group(f.name, ts, group_of), _stats_for(model, f)))
    return units


def _group(name: str, tensors: list[nn.Parameter], group_of: dict[int, int]) -> int:
    return _control.one_group("params", name, tensors, group_of)


# --------------------------------------------------------------------------------------------------
# The public class


class Rescaler:
    """Multiply scale-invariant weights by r^¼ whenever their param group's lr changes by r (Sec 4.2).

    Attach it and train as usual: it watches ``param_group["lr"]`` from an optimizer step pre-hook, so any
    ``torch.optim.lr_scheduler`` (MultiStepLR, StepLR, LambdaLR, CosineAnnealingLR, OneCycleLR,
    SequentialLR, ReduceLROnPlateau, ...) and manual edits of the lr are followed. The lr when it is built is
    the reference: build it after the scheduler (which sets its first lr when built) and after loading a
    checkpoint's optimizer and scheduler state (or load the Rescaler's own state too), else the difference
    counts as a change at the first step. See the module docstring
    for what a rescale does to the gradient, the BatchNorm running statistics and the optimizer state, and
    for the measurements behind each choice.

    Args:
        optimizer: ``torch.optim.SGD`` (factor r^¼) or ``torch.optim.AdamW`` (factor r^½).
        params: ``"auto"`` (needs ``model``; uses :func:`smdyn.find_scale_invariant`), an iterable of names
            resolved against ``model`` (``"fc.weight+fc.bias"`` for a jointly invariant pair), or of
            ``(name, parameter)`` pairs.
        model: the model; needed for ``"auto"`` and names, to check invariance and to find the norm layers
            whose running statistics follow the weights.
        mode: ``"drops"`` (rescale when the lr has moved by more than ``threshold`` since the last rescale,
            either way; the paper's rule) or ``"continuous"`` (at every change). Both keep the cumulative
            factor at (lr/lr₀)^¼ (module docstring).
        threshold: relative move that counts in ``"drops"`` mode: lr < (1 − threshold)·lr_last_rescale or
            lr > lr_last_rescale / (1 − threshold).
        floor: lower bound on the cumulative weight factor since the Rescaler was attached, in both modes
            (0.1: norms never fall below a tenth of their value then; that is lr/lr₀ = 1e-4 for SGD).
        momentum: what happens to the optimizer's momentum state: ``"split"`` (default: tangential part of
            the SGD buffer ÷ c, radial part × c), ``"scale"`` (whole SGD buffer ÷ c) or ``"keep"``. For AdamW
            ``"split"`` and ``"scale"`` both divide ``exp_avg`` by c and ``exp_avg_sq`` by c².
        force: rescale parameters that detection does not show to be scale-invariant (or without a model).
        example_batch: one input batch for :func:`smdyn.find_scale_invariant` (its numerical probe, and the
            data flow of models torch.fx cannot trace).
        loss_fn: maps the model output to a scalar loss for that probe.
        hook: register the optimizer step pre-hook. ``False`` for frameworks that run backward inside
            ``optimizer.step(closure)``: then call :meth:`before_step` between backward and the step.

    Attributes:
        events: one dict per logged event: ``step``, ``group``, ``lr_before``, ``lr_after``, ``r``,
            ``factor`` (applied to the weights now: < 1 after a decrease, > 1 after an increase),
            ``cumulative``, ``action`` (``rescaled``, ``floored`` or ``skipped``), ``last_step``. At least
            the latest 10,000 (continuous mode logs one a step); ``events.dropped`` counts the older ones.
        step: optimizer steps seen.

    Raises:
        TypeError: unsupported optimizer, or a malformed ``params`` entry.
        ValueError: bad settings, a parameter detection refutes (without ``force``), one outside the
            optimizer, or one that :class:`smdyn.CorrectedWeightDecay` or
            :class:`smdyn.RotationController` already controls (they would work against each other).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        params: str | Iterable[Any] = "auto",
        model: nn.Module | None = None,
        *,
        mode: Literal["drops", "continuous"] = "drops",
        threshold: float = 0.2,
        floor: float = 0.1,
        momentum: Literal["split", "scale", "keep"] = "split",
        force: bool = False,
        example_batch: Any = None,
        loss_fn: Any = None,
        hook: bool = True,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        _check_rule_args(mode, threshold, floor)
        _check_momentum(momentum)
        self.optimizer = optimizer
        self.mode = mode
        self.momentum = momentum
        self.exponent = _exponent_for(optimizer)
        self._units = _resolve(optimizer, params, model, force, example_batch, loss_fn)
        self._by_group: dict[int, list[_Unit]] = {}
        for u in self._units:
            self._by_group.setdefault(u.group, []).append(u)
        self._rules = {
            gi: _LrRule(mode, float(threshold), float(floor), self.exponent) for gi in self._by_group
        }
        for gi in self._by_group:
            if float(optimizer.param_groups[gi].get("weight_decay", 0.0)) == 0.0:
                warnings.warn(
                    f"param group {gi} has weight_decay 0: there is no equilibrium to keep, so a rescale "
                    "only changes the effective learning rate η/‖w‖²",
                    stacklevel=2,
                )
        if mode == "continuous" and any(t.element_size() < 4 for u in self._units for t in u.tensors):
            warnings.warn(
                "continuous mode rescales every step: in 16-bit weights each rescale rounds every element "
                "(~2^-9 relative for bfloat16), a direction change comparable to the angular update itself",
                stacklevel=2,
            )
        self.events = EventLog(owner="smdyn Rescaler")
        self.step = 0
        # One control per weight: refused where CorrectedWeightDecay or RotationController holds one.
        _control.claim(optimizer, [t for u in self._units for t in u.tensors], self, "Rescaler")
        self._observe()  # the lr at attach time is the reference: later changes are followed
        self._closed = False
        self._handle = None
        if hook:
            self._handle = optimizer.register_step_pre_hook(self._pre_hook)
            # Run before every other per-optimizer pre-hook (a monitor's measurement), whatever the order.
            optimizer._optimizer_step_pre_hooks.move_to_end(self._handle.id, last=False)

    # ------------------------------------------------------------------ the step

    @property
    def names(self) -> list[str]:
        """Names of the rescaled units, in order."""
        return [u.name for u in self._units]

    def cumulative_factor(self, group: int = 0) -> float:
        """The product of the factors applied to ``group``'s weights since the Rescaler was attached."""
        if group not in self._rules:
            raise ValueError(f"group {group} holds no rescaled parameter; groups: {sorted(self._rules)}")
        return self._rules[group].applied

    def _pre_hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.before_step()

    def before_step(self) -> None:
        """Compare each group's lr with the previous step's and rescale where the rule says so.

        Called by the pre-hook; call it yourself (between backward and ``optimizer.step()``) only when the
        Rescaler was built with ``hook=False``.
        """
        if self._closed:
            return
        try:
            self._observe()
        except Exception as exc:  # never break the user's training step
            warnings.warn(
                f"smdyn Rescaler: {exc!r} at step {self.step}; the Rescaler is idle from now on (the "
                f"weights keep the factors applied so far: {self._factors()})",
                RuntimeWarning,
                stacklevel=3,
            )
            self.close()
            return
        self.step += 1

    def _factors(self) -> str:
        return ", ".join(f"group {gi} × {rule.applied:.6g}" for gi, rule in self._rules.items())

    def _observe(self) -> None:
        for gi, units in self._by_group.items():
            raw = self.optimizer.param_groups[gi]["lr"]
            lr = float(raw)
            rule = self._rules[gi]
            before = rule.last_lr
            action, r, factor = rule.observe(lr)
            if action == "skipped":
                warnings.warn(
                    f"smdyn Rescaler: group {gi} has lr {lr!r} at step {self.step}; skipped (the next "
                    f"valid lr is compared with {before!r})",
                    RuntimeWarning,
                    stacklevel=4,
                )
            if action == "waiting" and self.step == 0:
                _log.info("smdyn: group %d starts at lr 0; the rule starts at its first positive lr", gi)
            if action in ("rescaled", "floored", "skipped"):
                self._event(gi, action, before, lr, r, factor, rule.applied)
            if factor != 1.0:
                self._rescale(units, factor)

    def _event(
        self, gi: int, action: str, before: float | None, lr: float, r: float, factor: float, cum: float
    ) -> None:
        event = {
            "step": self.step,
            "group": gi,
            "lr_before": math.nan if before is None else before,
            "lr_after": lr,
            "r": r,
            "factor": factor,
            "cumulative": cum,
            "action": action,
            "last_step": self.step,
        }
        self.events.append(event)
        if action == "rescaled":
            _log.info(
                "smdyn: step %d group %d lr %.4g -> %.4g: scale-invariant weights × %.6g (cumulative %.6g)",
                self.step,
                gi,
                event["lr_before"],
                lr,
                factor,
                cum,
            )
        elif action != "skipped":
            _log.info(
                "smdyn: step %d group %d lr %.4g -> %.4g: %s", self.step, gi, event["lr_before"], lr, action
            )

    @torch.no_grad()
    def _rescale(self, units: list[_Unit], c: float) -> None:
        """w ← c·w, g ← g/c (Lemma 1, Eq 4), optimizer state and running statistics to match."""
        for u in units:
            self._rescale_state(u, c)
            for p in u.tensors:
                p.mul_(c)
                if p.grad is not None:
                    p.grad.div_(c)
            for norm, bias in u.stats:
                norm.running_var.mul_(c * c)
                if bias is None:
                    norm.running_mean.mul_(c)
                else:  # y = W·x + b → c·W·x + b
                    b = bias.detach().to(norm.running_mean.dtype)
                    norm.running_mean.sub_(b).mul_(c).add_(b)

    def _rescale_state(self, u: _Unit, c: float) -> None:
        """Optimizer state for weights c·w, as the group's update rule says (called while they hold w)."""
        rule = rule_for(self.optimizer, self.optimizer.param_groups[u.group])
        if rule.rescale_state is not None:
            rule.rescale_state(self.optimizer.state, u.tensors, c, self.momentum)

    # ------------------------------------------------------------------ persistence and life cycle

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: the step count, each group's rule state and the events.

        Plain Python values only, so it loads with ``torch.load(..., weights_only=True)``.
        """
        return {
            "mode": self.mode,
            "exponent": self.exponent,
            "step": self.step,
            "units": self.names,
            "groups": {gi: rule.state() for gi, rule in self._rules.items()},
            "events": [dict(e) for e in self.events],
            "dropped_events": self.events.dropped,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the rescaled units and their groups must be the same."""
        if list(state["units"]) != self.names:
            raise ValueError(
                f"state is for parameters {list(state['units'])}, this Rescaler has {self.names}"
            )
        groups = {int(k): v for k, v in state["groups"].items()}
        if set(groups) != set(self._rules):
            raise ValueError(
                f"state is for param groups {sorted(groups)}, this Rescaler has {sorted(self._rules)}"
            )
        if state["mode"] != self.mode or float(state["exponent"]) != self.exponent:
            raise ValueError(
                f"state was saved in mode {state['mode']!r} with exponent {state['exponent']}; this Rescaler "
                f"has {self.mode!r} and {self.exponent}"
            )
        for gi, rule in self._rules.items():
            rule.load(groups[gi])
        self.step = int(state["step"])
        self.events = EventLog(
            (dict(e) for e in state["events"]),
            dropped=int(state.get("dropped_events", 0)),
            owner="smdyn Rescaler",
        )

    def close(self) -> None:
        """Remove the hook; later lr changes are not followed. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._handle is not None:
            self._handle.remove()
        _control.release(self.optimizer, self)

    def __enter__(self) -> Rescaler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
