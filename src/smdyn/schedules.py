"""Named learning-rate schedules as plain ``step -> lr`` callables, and the lrs of a torch scheduler instance.

Each schedule is a small frozen dataclass: call it with a step (0, 1, ...) for the lr of that step, as
``peak × shape(step)``. With the default ``peak=1`` it is a multiplier, which is what
:func:`smdyn.plan` and ``torch.optim.lr_scheduler.LambdaLR`` take. Warm-up is linear from ``peak/warmup``
at step 0 to ``peak`` at step ``warmup − 1`` (never 0, so a rescaling has a first lr to start from); every
decay reaches ``floor × peak`` at step ``steps``, one past the last step, so the last step's lr stays
positive when ``floor`` is 0.

:func:`scheduler_lrs` reads the lrs a torch scheduler *instance* will give from its current position on,
without touching it or its optimizer: it deep-copies the scheduler with its optimizer replaced by a stand-in
that holds copies of the param groups' settings and no parameter or state, and steps the copy.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

__all__ = ["CosineRestarts", "WarmupCosine", "WarmupLinear", "Wsd", "scheduler_lrs"]

DECAY_SHAPES = ("linear", "1-sqrt", "cosine")


def _int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if not (math.isfinite(float(value)) and 0.0 <= float(value) <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _peak(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"peak must be a number > 0, got {value!r}")
    if not (math.isfinite(float(value)) and float(value) > 0):
        raise ValueError(f"peak must be a number > 0, got {value!r}")
    return float(value)


def _check_warmup(warmup: Any, steps: int) -> int:
    w = _int("warmup", warmup, 0)
    if w >= steps:
        raise ValueError(f"warmup must be a number of steps in [0, steps = {steps}), got {warmup!r}")
    return w


def _ramp(step: int, warmup: int) -> float:
    return (step + 1) / warmup if step < warmup else 1.0


def _shape(kind: str, frac: float) -> float:
    """Decay from 1 at frac = 0 to 0 at frac = 1."""
    if kind == "linear":
        return 1.0 - frac
    if kind == "1-sqrt":
        return 1.0 - math.sqrt(frac)
    return 0.5 * (1.0 + math.cos(math.pi * frac))


@dataclass(frozen=True)
class _WarmupThenDecay:
    """Linear warm-up, then a decay of shape ``_SHAPE`` to ``floor × peak`` at step ``steps``."""

    steps: int
    warmup: int = 0
    floor: float = 0.0
    peak: float = 1.0
    _SHAPE: ClassVar[str] = "cosine"

    def __post_init__(self) -> None:
        steps = _int("steps", self.steps, 1)
        _check_warmup(self.warmup, steps)
        _fraction("floor", self.floor)
        _peak(self.peak)

    def __call__(self, step: int) -> float:
        frac = min(max(step - self.warmup, 0) / (self.steps - self.warmup), 1.0)
        shape = self.floor + (1.0 - self.floor) * _shape(self._SHAPE, frac)
        return self.peak * _ramp(step, self.warmup) * shape


@dataclass(frozen=True)
class WarmupCosine(_WarmupThenDecay):
    """Linear warm-up, then a cosine decay to ``floor × peak`` at step ``steps``.

    Args:
        steps: the schedule's length (>= 1).
        warmup: warm-up steps in [0, steps).
        floor: the final lr as a fraction of the peak, in [0, 1].
        peak: the lr at the end of warm-up (default 1: a multiplier).
    """

    _SHAPE: ClassVar[str] = "cosine"


@dataclass(frozen=True)
class WarmupLinear(_WarmupThenDecay):
    """Linear warm-up, then a linear decay to ``floor × peak`` at step ``steps`` (arguments as
    :class:`WarmupCosine`)."""

    _SHAPE: ClassVar[str] = "linear"


@dataclass(frozen=True)
class Wsd:
    """Warm-up, stable, decay: linear warm-up, the peak held, then a decay over the last ``decay`` steps.

    Args:
        steps: the schedule's length (>= 1).
        warmup: warm-up steps in [0, steps).
        decay: steps of the final decay, >= 1 with warmup + decay <= steps; or a float in (0, 1]: that
            fraction of ``steps`` (rounded, at least 1).
        shape: ``"linear"``, ``"1-sqrt"`` (1 − √frac, Hägele et al. 2024, arXiv 2405.18392) or ``"cosine"``.
        floor: the final lr as a fraction of the peak, in [0, 1].
        peak: the stable lr (default 1: a multiplier).
    """

    steps: int
    warmup: int = 0
    decay: int | float = 0.2
    shape: str = "linear"
    floor: float = 0.0
    peak: float = 1.0

    def __post_init__(self) -> None:
        steps = _int("steps", self.steps, 1)
        warmup = _check_warmup(self.warmup, steps)
        if self.shape not in DECAY_SHAPES:
            raise ValueError(f"shape must be one of {DECAY_SHAPES}, got {self.shape!r}")
        d = self.decay
        if isinstance(d, (float, np.floating)) and not isinstance(d, bool):
            if not (math.isfinite(float(d)) and 0.0 < float(d) <= 1.0):
                raise ValueError(f"decay must be an int >= 1 or a fraction in (0, 1], got {d!r}")
            d = max(1, round(float(d) * steps))
        d = _int("decay", d, 1)
        if warmup + d > steps:
            raise ValueError(f"decay must fit after the warm-up: warmup {warmup} + decay {d} > steps {steps}")
        object.__setattr__(self, "decay", d)
        _fraction("floor", self.floor)
        _peak(self.peak)

    @property
    def decay_start(self) -> int:
        """The first step of the decay."""
        return self.steps - int(self.decay)

    def __call__(self, step: int) -> float:
        frac = min(max(step - self.decay_start, 0) / int(self.decay), 1.0)
        shape = self.floor + (1.0 - self.floor) * _shape(self.shape, frac)
        return self.peak * _ramp(step, self.warmup) * shape


@dataclass(frozen=True)
class CosineRestarts:
    """Cosine annealing with warm restarts (SGDR, Loshchilov & Hutter, arXiv 1608.03983), after a warm-up.

    The same as ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(T_0=period, T_mult=mult,
    eta_min=floor × peak)`` counted from the end of the warm-up: each cycle decays from the peak towards
    the floor and restarts at the peak; cycle i lasts ``period × mult^i`` steps.

    Args:
        period: steps of the first cycle (>= 1).
        mult: growth factor of each next cycle (int >= 1).
        warmup: warm-up steps (>= 0) before the first cycle.
        floor: the lr a cycle decays towards, as a fraction of the peak, in [0, 1].
        peak: the lr at each restart (default 1: a multiplier).
    """

    period: int
    mult: int = 1
    warmup: int = 0
    floor: float = 0.0
    peak: float = 1.0

    def __post_init__(self) -> None:
        _int("period", self.period, 1)
        _int("mult", self.mult, 1)
        _int("warmup", self.warmup, 0)
        _fraction("floor", self.floor)
        _peak(self.peak)

    def cycle_position(self, step: int) -> tuple[int, int]:
        """(steps into the current cycle, the cycle's length) at ``step`` (>= warmup)."""
        t, length = step - self.warmup, self.period
        if self.mult == 1:
            return t % length, length
        while t >= length:
            t -= length
            length *= self.mult
        return t, length

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.peak * _ramp(step, self.warmup)
        t, length = self.cycle_position(step)
        return self.peak * (self.floor + (1.0 - self.floor) * _shape("cosine", t / length))


def scheduler_lrs(scheduler: Any, steps: int, group: int = 0) -> NDArray[np.float64]:
    """The lr of param group ``group`` for the next ``steps`` steps of a torch LR scheduler instance.

    Reads from the scheduler's current position (step 0 is the lr its optimizer holds now) and leaves the
    scheduler, its optimizer and the parameters untouched: the scheduler is deep-copied with every reference
    to its optimizer mapped to a stand-in ``torch.optim.SGD`` whose param groups are copies of the real ones'
    settings (lr, initial_lr, momentum or betas...) around one dummy parameter each; the copy is stepped and
    the stand-in's lr read. Nested schedulers (``SequentialLR``, ``ChainedScheduler``) follow the same map.

    Raises:
        TypeError: not an ``LRScheduler``.
        ValueError: ``ReduceLROnPlateau`` (it needs the metric), a bad ``steps`` or ``group``.
    """
    import torch

    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise ValueError("schedule: ReduceLROnPlateau depends on a metric; give its drops as milestones")
    if not isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
        raise TypeError(f"schedule must be a torch LRScheduler instance, got {type(scheduler).__name__}")
    steps = _int("steps", steps, 1)
    real = scheduler.optimizer
    if (
        isinstance(group, bool)
        or not isinstance(group, (int, np.integer))
        or not 0 <= group < len(real.param_groups)
    ):
        raise ValueError(f"group must be an index in [0, {len(real.param_groups)}), got {group!r}")
    stand_in = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    stand_in.param_groups = [
        {
            **{k: copy.deepcopy(v) for k, v in g.items() if k != "params"},
            "params": [torch.nn.Parameter(torch.zeros(1))],
        }
        for g in real.param_groups
    ]
    sched = copy.deepcopy(scheduler, {id(real): stand_in})
    out = np.empty(steps)
    target = stand_in.param_groups[group]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": nothing is trained here
        for t in range(steps):
            lr = target["lr"]
            out[t] = float(lr.item() if isinstance(lr, torch.Tensor) else lr)
            sched.step()
    return out
