"""Corrected weight decay: λ_t = λ·η_t/η_max on scale-invariant weights, so their norm never lags the lr.

Under a decaying learning rate η_t the equilibrium norm of a scale-invariant weight follows η (w* ∝ η^¼ for
SGD(M), Wan et al. Thms 1-2; ∝ η^½ for AdamW and Muon, Kosson et al. ICML 2024) but reaches it only after
~1/(λη) steps, a lag that grows as η falls: the norms fall behind and ‖g‖/‖w‖ rises at the end of training
(Defazio et al. 2025, "Why Gradients Rapidly Increase Near the End of Training", arXiv 2506.02285). Their fix
(AdamC) decays λ with η: with λ_t = λ·η_t/η_max the equilibrium norm no longer depends on η (η/λ_t is
constant), so there is nothing to lag behind, and the angular update shrinks as η (Δ* ∝ √(λ_t·η_t)). Compare
:class:`smdyn.Rescaler`, which moves the norm instead and keeps Δ at its equilibrium ∝ η^½; the two are
refused on the same weights (``smdyn._control``).

Measured in the random-walk model (one 1024-element weight, gradients orthogonal to it with ‖g‖·‖w‖ = 1,
started at its equilibrium norm, then a cosine decay of the lr to 0): ‖g‖/‖w‖ at 50% / 90% / 99% of the
schedule, relative to its start, is 1.27 / 1.79 / 1.80 for SGD (α = 0.9, λ = 5e-4, η 0.1, 10k steps) and
1.20 / 1.48 / 1.48 for AdamW (λ = 0.1, η 1e-3, 20k steps); with corrected decay 1.00 throughout, for both.

η_max. ``reference_lr`` when given (AdamC's schedule peak: a warm-up then runs with λ_t < λ); otherwise the
largest lr this group has had so far. A warm-up therefore runs at λ (η_t/η_max = 1 while the lr rises: it
never inflates λ, which a first-lr reference would, by peak/lr₀), and after the peak the two agree. A restart
that returns to the peak returns λ_t to λ; an lr above an explicit ``reference_lr`` gives λ_t > λ (warned
once). An lr of 0 before any positive lr leaves λ as it is (nothing moves at lr 0).

λ ∝ η holds the equilibrium norm only while the gradients' statistics hold: w*² = ηK/(2λ) for decoupled
decay, K the growth of ‖w‖² per step in units of η² (C for AdamW on gradients independent from step to
step). Late in a decaying schedule K rises (steps that add up as the lr falls; Adam's normaliser lagging the
gradient): 4× over the last 30% of a cosine on ``benchmarks/schedules_on_a_network.py``, where AdamC's
norm then grows ((w_ref/‖w‖)² 0.71-0.77 over the last 20%). ``track_growth=True`` measures K̄ from the
controlled weights' Σ‖w‖² (one host read every 10 steps at most) and sets λ_t = λ·(η_t/η_max)·(K̄_t/K̄_ref),
K̄_ref its value at the last block that reached the reference lr (the peak: a warm-up and a stable phase
keep it current, the decay freezes it); there (w_ref/‖w‖)² reads 1.07-1.12. K includes the lag of Adam's
normaliser, which the norm's own motion causes as well as the gradients; dividing it out was tried and read
0.79-0.93 (an 11% later reference: 1.21-1.28): how well the norm is held depends on where the reference is
read, so this is a measured finding, not a guarantee. Decoupled decay only: under coupled decay the growth
per step depends on the norm itself (w*⁴ ∝ ηL/λ).

How λ_t reaches the optimizer, before every step (an optimizer step pre-hook, so any scheduler that writes
``param_group["lr"]`` drives it):

* a param group that holds only controlled weights: its ``weight_decay`` is set to λ_t (exact for every rule;
  ``close()`` puts λ back). A ``weight_decay`` written into the group by anyone else becomes the new λ;
* a group that mixes them with other weights, under decoupled decay (AdamW, ``Adam(decoupled_weight_decay=
  True)``, Muon, Lion: w ← w·(1 − ηλ) − η·u, with u independent of w): the controlled weights are
  multiplied by (1 − ηλ_t)/(1 − ηλ) just before the step, so the step leaves w·(1 − ηλ_t) − η·u, exactly
  the update with λ_t (one extra float rounding). A weight without a gradient is left alone, as the
  optimizer leaves it, and so is every weight on a fused step the ``GradScaler`` skips. With
  ``optimizer.step(closure)`` the factor is applied once the closure's first call has made the gradients;
* a mixed group under coupled decay (``torch.optim.SGD``: λw enters the gradient and the momentum buffer):
  refused, with how to give the scale-invariant weights their own group; no in-place change is exact there.

The hook runs before every other per-optimizer pre-hook, so a monitor measuring the same step reads λ_t in
a group of its own (in a mixed group the group keeps λ and the weights are scaled: the monitor's theory
columns there use λ).
State (λ, η_max and the value last written per group) is in :meth:`state_dict`; a run resumed from it with the
optimizer's and scheduler's state continues bit for bit. Inside ``optimizer.step()`` nothing raises: an error
becomes one ``RuntimeWarning``, λ goes back into the groups and the control is idle from then on.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from smdyn import _control
from smdyn._closure import after_first_call, closure_of
from smdyn.rules import group_lr, rule_for

__all__ = ["CorrectedWeightDecay"]

_log = logging.getLogger("smdyn")

_GROWTH_BLOCK = 10  # steps between norm reads of track_growth (one host read per block, at most)
_GROWTH_MIN_DECAY = 1e-4  # a block is read once Π(1 − ηλ)² ≤ 1 − this (float32 norms resolve the change)
_GROWTH_SKIP = 5  # blocks after the start not taken as the reference (Adam's bias-corrected start)
_GROWTH_REF_TOL = 1e-9  # a block whose largest lr reached the reference lr (to rounding) sets the reference
_GROWTH_WEIGHT = 0.25  # weight of the newest block in K̄ (a memory of ~40 steps)
_GROWTH_CLIP = 16.0  # K̄/K_ref is held within [1/16, 16]
_COUPLED = frozenset({"sgd"})  # λw is added to the gradient
_DECOUPLED = frozenset({"adamw", "muon", "lion"})  # w ← w·(1 − ηλ) − η·u


@dataclass
class _Group:
    """One param group with controlled weights, and its decay state."""

    index: int
    tensors: list[torch.Tensor]
    decoupled: bool
    own: bool  # holds only controlled weights: its weight_decay is set directly
    base: float  # λ
    peak: float = 0.0  # the largest valid lr seen (η_max without reference_lr)
    written: float | None = None  # the weight decay last written into the group (own groups)
    current: float = math.nan  # λ_t of the last step
    warned: set[str] = field(default_factory=set)
    growth: _Growth | None = None  # track_growth: the measured growth of Σ‖w‖² per step


@dataclass
class _Growth:
    """The growth of Σ‖w‖² per step in units of η² (K), measured over blocks of steps between norm reads.

    Between reads, Σ‖w‖² of the tensors the optimizer moved at every step of the block goes from x_s to
    x = A·x_s + K·S, A = Π a_j², S = Σ_j η_j²·Π_{i>j} a_i² (a_j = 1 − η_jλ_j, decoupled decay), K taken
    constant over the block (a tensor without a gradient at some step is left out: the optimizer did not
    decay it). A block is read once its decay 1 − A reaches ``_GROWTH_MIN_DECAY`` (late in a schedule,
    below float32's resolution of the change, blocks grow). K̄ is the moving average over blocks; ``ref`` is
    K̄ at the last block whose largest lr reached the reference lr (the peak before the block's read: through
    a warm-up or a stable phase it follows, the decay freezes it), the first ``_GROWTH_SKIP`` blocks left
    out (Adam's start: bias-corrected steps, an empty v̂); without such a block (no warm-up, a reference
    never reached) the first block after those. Until then the factor is 1."""

    keep: float = 1.0  # A since the last read
    gain: float = 0.0  # S since the last read
    last: list[float] | None = None  # each tensor's ‖w‖² at the last read
    moved: list[bool] | None = None  # each tensor had a gradient at every step since the last read
    top_lr: float = 0.0  # the largest lr of the block
    blocks: int = 0  # blocks read
    mean: float | None = None  # K̄
    ref: float | None = None  # K̄ at the reference (peak) lr
    factor: float = 1.0  # K̄/ref, clipped, applied to λ_t

    def due(self) -> bool:
        return self.last is None or 1.0 - self.keep >= _GROWTH_MIN_DECAY

    def read(self, norms_sq: list[float], reference: float) -> None:
        """Close the block at these per-tensor ‖w‖², its largest lr compared with the ``reference`` lr."""
        ok = all(math.isfinite(x) for x in norms_sq)
        if self.last is not None and self.moved is not None and self.gain > 0 and ok:
            pairs = [(x, y) for x, y, m in zip(norms_sq, self.last, self.moved, strict=True) if m]
            x, x_s = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
            k = (x - self.keep * x_s) / self.gain if pairs else math.nan
            if math.isfinite(k) and k > 0:  # a block a rescale spoiled reads nothing
                self.blocks += 1
                self.mean = k if self.mean is None else self.mean + _GROWTH_WEIGHT * (k - self.mean)
                at_reference = self.top_lr >= (1.0 - _GROWTH_REF_TOL) * reference
                if self.blocks > _GROWTH_SKIP and (self.ref is None or at_reference):
                    self.ref = self.mean
                if self.ref is not None:
                    self.factor = min(_GROWTH_CLIP, max(1.0 / _GROWTH_CLIP, self.mean / self.ref))
        self.last = list(norms_sq) if ok else None
        self.moved = [True] * len(norms_sq)
        self.keep, self.gain, self.top_lr = 1.0, 0.0, 0.0

    def advance(self, lr: float, wd: float, moved: list[bool]) -> None:
        a_sq = (1.0 - lr * wd) ** 2
        self.keep *= a_sq
        self.gain = self.gain * a_sq + lr * lr
        self.top_lr = max(self.top_lr, lr)
        if self.moved is not None:
            self.moved = [m and n for m, n in zip(self.moved, moved, strict=True)]


class CorrectedWeightDecay:
    """Decay λ with the lr on scale-invariant weights: λ_t = λ·η_t/η_max (AdamC, arXiv 2506.02285).

    Attach it and train as usual; see the module docstring for the choice of η_max, what happens in a group
    that also holds other weights, and resumption. When resuming, load its :meth:`state_dict` along with the
    optimizer's and the scheduler's: λ and η_max are read from it, not from the (already decayed) groups.

    Args:
        model_or_params: the model (its scale-invariant weights are found by
            :func:`smdyn.find_scale_invariant`), or an iterable of parameters or ``(name, parameter)`` pairs
            to control (taken as scale-invariant without a check).
        optimizer: a rule with coupled (``torch.optim.SGD``) or decoupled weight decay (``AdamW``,
            ``Adam(decoupled_weight_decay=True)``, Muon and Lion where :mod:`smdyn.rules` has their rule).
        reference_lr: η_max; default: the largest lr each group has had so far.
        example_batch: one input batch for :func:`smdyn.find_scale_invariant` (models torch.fx cannot trace).
        loss_fn: maps the model output to a scalar loss for its probe.
        hook: register the optimizer step pre-hook; ``False``: call :meth:`before_step` after backward,
            before each step (the gradients say which weights the step moves).
        track_growth: decoupled rules only: λ_t = λ·(η_t/η_max)·(K̄_t/K̄_ref), K̄ the measured growth of the
            controlled weights' Σ‖w‖² per step in units of η² (read every 10 steps: one host read), K̄_ref
            its value at the reference lr. AdamC's λ ∝ η holds the norm only while K is constant; under
            AdamW it rises as η decays (on ``benchmarks/schedules_on_a_network.py``, 4× over the last 30%
            of a cosine), and the norm then grows: (w_ref/‖w‖)² 0.71-0.77 over the last 20% with
            λ ∝ η, 1.07-1.12 with the growth tracked.

    Raises:
        TypeError: an optimizer whose rule has no known weight decay, or malformed parameters.
        ValueError: bad ``reference_lr``, nothing to control, a coupled-decay group that also holds other
            weights, or weights another control (:class:`smdyn.Rescaler`...) already holds.
    """

    def __init__(
        self,
        model_or_params: Any,
        optimizer: torch.optim.Optimizer,
        *,
        reference_lr: float | None = None,
        example_batch: Any = None,
        loss_fn: Any = None,
        hook: bool = True,
        track_growth: bool = False,
    ) -> None:
        if reference_lr is not None and (
            isinstance(reference_lr, bool)
            or not isinstance(reference_lr, (int, float))
            or not (math.isfinite(reference_lr) and reference_lr > 0)
        ):
            raise ValueError(f"reference_lr must be a positive finite number or None, got {reference_lr!r}")
        targets = _control.resolve(model_or_params, optimizer, example_batch, loss_fn, "CorrectedWeightDecay")
        self.optimizer = optimizer
        self.reference_lr = None if reference_lr is None else float(reference_lr)
        self.names = [t.name for t in targets]
        self._groups = _classify(optimizer, targets)
        self.track_growth = bool(track_growth)
        if self.track_growth:
            coupled = [g.index for g in self._groups if not g.decoupled]
            if coupled:
                raise ValueError(
                    f"track_growth follows the growth of decoupled decay (AdamW, Lion, Muon); param groups "
                    f"{coupled} have coupled decay (SGD), where λ_t = λ·η_t/η_max already holds the "
                    "equilibrium norm (w*⁴ ∝ ηL/λ: the growth per step depends on the norm itself)"
                )
            for g in self._groups:
                g.growth = _Growth()
        self.step = 0
        self._closed = False
        self._handle = None
        _control.claim(optimizer, [p for t in targets for p in t.tensors], self, "CorrectedWeightDecay")
        if hook:
            self._handle = optimizer.register_step_pre_hook(self._pre_hook)
            _control.to_front(optimizer._optimizer_step_pre_hooks, self._handle)

    @property
    def weight_decay(self) -> dict[int, float]:
        """λ_t of the last step for each controlled param group (NaN before the first step)."""
        return {g.index: g.current for g in self._groups}

    def decay_rule(self, group: int) -> tuple[float, float]:
        """(λ', η_max) of param group ``group`` as they stand: λ_t = λ'·η_t/η_max while the lr is at or
        below η_max (λ' = λ, times the growth factor with ``track_growth``); what :func:`smdyn.forecast`
        continues."""
        for g in self._groups:
            if g.index == group:
                ref = self.reference_lr if self.reference_lr is not None else g.peak
                return g.base * (g.growth.factor if g.growth is not None else 1.0), ref
        raise ValueError(f"param group {group} holds no weight of this control")

    # ------------------------------------------------------------------ the step

    def _pre_hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> Any:
        """Before the step; with ``step(closure)``, once its first call has made the gradients (which say
        the weights the optimizer will move) and before the optimizer reads λ."""
        if closure_of(args, kwargs) is not None:
            return after_first_call(args, kwargs, self.before_step)
        self.before_step()
        return None

    def before_step(self) -> None:
        """Set λ_t for this step's lr. Called by the pre-hook; call it yourself only with ``hook=False``."""
        if self._closed:
            return
        try:
            for g in self._groups:
                self._apply(g)
        except Exception as exc:  # never break the user's training step
            _control.go_idle(self, "CorrectedWeightDecay", exc, self.step, "the groups have their λ back")
            return
        self.step += 1

    @torch.no_grad()
    def _apply(self, g: _Group) -> None:
        group = self.optimizer.param_groups[g.index]
        lr = group_lr(group)
        if not (math.isfinite(lr) and lr >= 0):
            self._warn_once(
                g, "lr", f"param group {g.index} has lr {lr!r}; its weight decay is left as it is"
            )
            return
        if g.growth is not None and self.step % _GROWTH_BLOCK == 0 and g.growth.due():
            # the block's lrs against the reference they ran under (the peak before this step's lr)
            before = self.reference_lr if self.reference_lr is not None else g.peak
            g.growth.read(_norms_sq(g.tensors), before)
        g.peak = max(g.peak, lr)
        ref = self.reference_lr if self.reference_lr is not None else g.peak
        if lr > ref:
            self._warn_once(
                g, "above", f"param group {g.index} has lr {lr:.4g} above reference_lr {ref:.4g}: λ_t > λ"
            )
        ratio = lr / ref if ref > 0 else 1.0
        if g.growth is not None:
            ratio *= g.growth.factor
        wd = float(group["weight_decay"])
        if g.own and g.written is not None and wd != g.written:  # set by someone else: the new λ
            _log.info("smdyn: param group %d weight decay %.4g -> %.4g is the new base", g.index, g.base, wd)
        if not g.own or wd != g.written:
            g.base = wd
        g.current = g.base * ratio
        if g.own and g.growth is None:  # the common case: one float written, nothing scanned
            group["weight_decay"] = g.written = g.current
            return
        # a weight without a gradient is left alone by the optimizer, and so by us
        has_grad = [p.grad is not None for p in g.tensors]
        if g.growth is not None:
            g.growth.advance(lr, g.current, has_grad)
        if g.own:
            group["weight_decay"] = g.written = g.current
            return
        keep = 1.0 - lr * wd
        if not keep > 0:
            raise ValueError(f"param group {g.index}: lr·weight_decay = {lr * wd:.4g} ≥ 1")
        c = (1.0 - lr * g.current) / keep
        if c == 1.0:
            return
        moved = [p for p, m in zip(g.tensors, has_grad, strict=True) if m]
        found_inf = getattr(self.optimizer, "found_inf", None)  # GradScaler's flag for a fused step
        if not isinstance(found_inf, torch.Tensor):
            for p in moved:
                p.mul_(c)
            return
        factors: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        for p in moved:  # a step the scaler skips inside the kernel must not move them: decided on the device
            key = (p.device, p.dtype)
            if key not in factors:
                skip = found_inf.to(p.device) > 0
                factors[key] = torch.where(skip, torch.ones((), dtype=p.dtype, device=p.device), c)
            p.mul_(factors[key])

    def _warn_once(self, g: _Group, key: str, message: str) -> None:
        if key not in g.warned:
            g.warned.add(key)
            warnings.warn(f"smdyn CorrectedWeightDecay: {message}", RuntimeWarning, stacklevel=5)

    # ------------------------------------------------------------------ persistence and life cycle

    def state_dict(self) -> dict[str, Any]:
        """λ, η_max and the last written decay per group, and the step count (plain Python values)."""
        return {
            "reference_lr": self.reference_lr,
            "step": self.step,
            "units": list(self.names),
            "track_growth": self.track_growth,
            "groups": {
                g.index: {
                    "base": g.base,
                    "peak": g.peak,
                    "written": g.written,
                    "current": g.current,
                    **({} if g.growth is None else {"growth": dataclasses.asdict(g.growth)}),
                }
                for g in self._groups
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the controlled weights and their groups must be the same."""
        if list(state["units"]) != self.names:
            raise ValueError(f"state is for parameters {list(state['units'])}, this control has {self.names}")
        groups = {int(k): v for k, v in state["groups"].items()}
        if set(groups) != {g.index for g in self._groups}:
            raise ValueError(
                f"state is for param groups {sorted(groups)}, this control has "
                f"{[g.index for g in self._groups]}"
            )
        if state["reference_lr"] != self.reference_lr:
            raise ValueError(
                f"state was saved with reference_lr {state['reference_lr']}, this control has "
                f"{self.reference_lr}"
            )
        for g in self._groups:
            s = groups[g.index]
            g.base, g.peak, g.current = float(s["base"]), float(s["peak"]), float(s["current"])
            g.written = None if s["written"] is None else float(s["written"])
            if g.growth is not None:  # tracking switched on at a resume starts afresh
                g.growth = _Growth(**s["growth"]) if "growth" in s else _Growth()
        self.step = int(state["step"])

    def close(self) -> None:
        """Remove the hook and give the groups their weight decay λ back. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._handle is not None:
            self._handle.remove()
        for g in self._groups:
            group = self.optimizer.param_groups[g.index]
            if g.own and g.written is not None and float(group["weight_decay"]) == g.written:
                group["weight_decay"] = g.base
        _control.release(self.optimizer, self)

    def __enter__(self) -> CorrectedWeightDecay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _norms_sq(tensors: list[torch.Tensor]) -> list[float]:
    """Each tensor's ‖w‖², read to the host as float64: track_growth's one read per block, one foreach
    reduction and one sync per (device, precision); bf16/fp16 are reduced in float32 (their own norm is as
    coarse as the change it must see)."""
    buckets: dict[tuple[torch.device, bool], list[int]] = {}
    for i, t in enumerate(tensors):
        buckets.setdefault((t.device, t.dtype in (torch.float16, torch.bfloat16)), []).append(i)
    out = [0.0] * len(tensors)
    for (_, low), idx in buckets.items():
        norms = torch._foreach_norm(
            [tensors[i].detach() for i in idx], 2, dtype=torch.float32 if low else None
        )
        for i, v in zip(idx, torch.stack([n.double() for n in norms]).pow(2).tolist(), strict=True):
            out[i] = v
    return out


def _classify(optimizer: torch.optim.Optimizer, targets: list[_control.Target]) -> list[_Group]:
    """One :class:`_Group` per param group with controlled weights; refuses what cannot be corrected."""
    by_group: dict[int, list[torch.Tensor]] = {}
    names: dict[int, list[str]] = {}
    for t in targets:
        by_group.setdefault(t.group, []).extend(t.tensors)
        names.setdefault(t.group, []).append(t.name)
    out = []
    for gi in sorted(by_group):
        group = optimizer.param_groups[gi]
        rule = rule_for(optimizer, group)
        if rule.family not in _COUPLED | _DECOUPLED:
            raise TypeError(
                f"param group {gi}: {type(optimizer).__name__} has no known weight decay to correct "
                f"({rule.note or rule.name}); supported are coupled decay (torch.optim.SGD) and decoupled "
                "decay (torch.optim.AdamW, Adam(decoupled_weight_decay=True), and Muon or Lion where "
                "smdyn.rules has their rule)"
            )
        mine = {id(p) for p in by_group[gi]}
        others = [p for p in group["params"] if id(p) not in mine]
        decoupled = rule.family in _DECOUPLED
        if others and not decoupled:
            raise ValueError(
                f"param group {gi} holds the scale-invariant weights {names[gi]} and {len(others)} other "
                "tensor(s); its weight decay is coupled into the gradient and the momentum buffer, so it "
                "cannot be corrected for part of the group. Give the scale-invariant weights a param group "
                "of their own, e.g. inv = {n for f in smdyn.find_scale_invariant(model) for n in f.params}; "
                "torch.optim.SGD([{'params': [p for n, p in model.named_parameters() if n in inv]}, "
                "{'params': [p for n, p in model.named_parameters() if n not in inv]}], ...)"
            )
        wd = float(group.get("weight_decay", 0.0))
        if wd == 0:
            warnings.warn(f"param group {gi} has weight_decay 0: there is no decay to correct", stacklevel=3)
        out.append(_Group(gi, by_group[gi], decoupled, own=not others, base=wd))
    return out
