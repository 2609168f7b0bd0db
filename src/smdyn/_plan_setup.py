"""The inputs of :func:`smdyn.plan`, checked: the lr of every step, L, the update rule and the controls."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from smdyn._plan_models import DecoupledModel, SgdModel

__all__ = ["CONTROLS", "Setup", "check_number", "controls", "l_sequence", "lr_sequence", "setup"]

CONTROLS = ("none", "rescale", "corrected_decay", "rotation")
RUN_NAMES = {
    "none": "none",
    "rescale": "rescaled",
    "rescaled": "rescaled",
    "corrected_decay": "corrected_decay",
    "rotation": "rotation",
}
OPTIMIZERS = ("sgd", "adamw", "lion", "muon")
#: Each rule family's own defaults, as torch (and Lion's paper) set them: (momentum α, β₁ or μ; β₂ or None).
#: Δ* depends on them, so a setting the user leaves out must take these, not 0.
DEFAULTS: dict[str, tuple[float, float | None]] = {
    "sgd": (0.0, None),
    "adamw": (0.9, 0.999),
    "lion": (0.9, 0.99),
    "muon": (0.95, None),
}


def default_beta2(family: str) -> float:
    """β₂ of a family that has one (0.999 where it has none: unused)."""
    return DEFAULTS.get(family, (0.0, None))[1] or 0.999


_DECOUPLED = ("adamw", "lion", "muon")


def check_number(name: str, value: Any, *, low: float | None = None, strict: bool = True) -> float:
    """``value`` as a float, or a ``TypeError``/``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or (low is not None and (v <= low if strict else v < low)):
        bound = "" if low is None else f" {'>' if strict else '>='} {low:g}"
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return v


# --------------------------------------------------------------------------------------------------
# Schedule and L


def lr_sequence(schedule: Any, lr: float, steps: int) -> NDArray[np.float64]:
    """The learning rate of every step 0..steps−1 described by ``schedule`` (see :func:`smdyn.plan`)."""
    if schedule is None:
        out = np.full(steps, lr)
    elif callable(schedule):
        out = np.empty(steps)
        for t in range(steps):
            value = schedule(t)
            try:
                out[t] = lr * float(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(
                    f"schedule({t}) must return a number (an lr multiplier), got {value!r}"
                ) from exc
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
            out[last:] = check_number("schedule lr", value, low=0.0)
    elif isinstance(schedule, _scheduler_types()):
        raise ValueError(
            f"schedule: this {type(schedule).__name__} steps another optimizer than the one given as "
            "optimizer=; pass the scheduler alone (its optimizer is read) or the optimizer it was built on"
        )
    else:
        raise TypeError(
            "schedule must be None, a callable step -> lr multiplier, a list of (step, lr) milestones, a "
            "mapping naming a torch.optim.lr_scheduler class or a torch LR scheduler instance, got "
            f"{type(schedule).__name__}"
        )
    return check_lrs(out)


def check_lrs(out: NDArray[np.float64]) -> NDArray[np.float64]:
    """Refuse an lr that is not > 0 and finite, naming its step."""
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
        try:
            for t in range(steps):
                out[t] = float(opt.param_groups[0]["lr"])
                opt.step()
                sched.step()
        except Exception as exc:  # e.g. StepLR(step_size=0) divides by zero when stepped
            raise ValueError(f"schedule: {name}({', '.join(kwargs)}) failed at step {t}: {exc!r}") from exc
    return out


def _scheduler_types() -> tuple[type, ...]:
    import torch

    return (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def l_sequence(L: float | Callable[[int], float] | None, steps: int) -> NDArray[np.float64]:
    """L_t for every step: 1, a constant, or a callable's values (each > 0 and finite)."""
    if L is None:
        return np.ones(steps)
    if callable(L):
        out = np.array([float(L(t)) for t in range(steps)], dtype=np.float64)
        bad = np.flatnonzero(~(np.isfinite(out) & (out > 0)))
        if bad.size:
            raise ValueError(f"L must be > 0 and finite at every step, got {out[bad[0]]!r} at step {bad[0]}")
        return out
    return np.full(steps, check_number("L", L, low=0.0))


def controls(control: Any, rescale: Any) -> list[str]:
    """The runs to plan, as run names (``none``, ``rescaled``, ``corrected_decay``, ``rotation``)."""
    if control is None:
        if rescale is None:
            rescale = "both"
        if rescale not in (False, True, "both"):
            raise ValueError(f"rescale must be False, True or 'both', got {rescale!r}")
        return {False: ["none"], True: ["rescaled"], "both": ["none", "rescaled"]}[rescale]
    if rescale is not None:
        raise ValueError("give either rescale or control, not both (control='rescale' is rescale=True)")
    items = [control] if isinstance(control, str) else control
    if not isinstance(items, Sequence) or not items:
        raise ValueError(f"control must be a name of {CONTROLS}, 'all' or a list of them, got {control!r}")
    names: list[str] = []
    for c in items:
        if c == "all":
            wanted = list(CONTROLS)
        elif isinstance(c, str) and c in RUN_NAMES:
            wanted = [c]
        else:
            raise ValueError(f"control must be one of {CONTROLS} or 'all', got {c!r}")
        names += [RUN_NAMES[w] for w in wanted if RUN_NAMES[w] not in names]
    return names


# --------------------------------------------------------------------------------------------------
# The update rule


@dataclass
class Setup:
    """The resolved rule, its recurrence and hyper-parameters; ``lrs`` when a scheduler instance gave them."""

    rule: Any
    model: SgdModel | DecoupledModel
    lr: float
    wd: float
    momentum: float
    numel: float
    lrs: NDArray[np.float64] | None


def setup(
    schedule: Any,
    lr: Any,
    wd: Any,
    momentum: Any,
    optimizer: Any,
    rule: Any,
    numel: Any,
    shape: Any,
    beta2: Any,
    group: Any,
    steps: int,
    fresh: bool,
) -> Setup:
    """Resolve the rule (named, from an optimizer or scheduler instance, or given) and its settings."""
    import torch

    from smdyn import schedules
    from smdyn.rules import Rule, group_lr, rule_for

    source = None
    if isinstance(schedule, _scheduler_types()):
        source = schedule.optimizer
    if rule is not None and optimizer is not None:
        raise ValueError("give optimizer or rule, not both")
    if rule is not None and not isinstance(rule, Rule):
        raise TypeError(f"rule must be a smdyn.rules.Rule, got {type(rule).__name__}")
    if isinstance(optimizer, torch.optim.Optimizer):
        source = optimizer
    elif optimizer is not None and optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS} or a torch optimizer, got {optimizer!r}")
    group_hp: Mapping[str, Any] | None = None
    if source is not None:
        if (
            isinstance(group, bool)
            or not isinstance(group, (int, np.integer))
            or not 0 <= group < len(source.param_groups)
        ):
            raise ValueError(f"group must be an index in [0, {len(source.param_groups)}), got {group!r}")
        group_hp = source.param_groups[group]
    lrs = None
    if source is not None and schedule is not None and getattr(schedule, "optimizer", None) is source:
        lrs = check_lrs(schedules.scheduler_lrs(schedule, steps, group))
        if lr is not None and not math.isclose(float(lr), lrs[0], rel_tol=1e-9):
            raise ValueError(
                f"lr {lr!r} disagrees with the scheduler's current lr {lrs[0]!r}: pass lr=None "
                "(a scheduler's lrs are absolute)"
            )
        lr = lrs[0]
    if group_hp is not None:
        if rule is None and not isinstance(optimizer, str):
            rule = rule_for(source, group_hp)
            momentum = rule.hparams(group_hp)[2] if momentum is None else momentum
        lr = group_lr(group_hp) if lr is None else lr
        wd = group_hp.get("weight_decay", 0.0) if wd is None else wd
        betas = group_hp.get("betas")
        if beta2 is None and isinstance(betas, (tuple, list)) and len(betas) == 2:
            beta2 = float(betas[1])
    lr = check_number("lr", lr, low=0.0) if lr is not None else _missing("lr")
    wd = check_number("wd", wd, low=0.0) if wd is not None else _missing("wd")
    family = rule.family if rule is not None else (optimizer or "sgd")
    if momentum is None:
        momentum = DEFAULTS.get(family, (0.0, None))[0]
    a = check_number("momentum", momentum, low=0.0, strict=False)
    if a >= 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    name = optimizer if isinstance(optimizer, str) else "sgd"
    b2 = None if beta2 is None else check_number("beta2", beta2, low=0.0, strict=False)
    if b2 is not None and b2 >= 1:
        raise ValueError(f"beta2 must be in [0, 1), got {beta2!r}")
    if rule is None:
        rule = _named_rule(name, lr, wd, a, default_beta2(name) if b2 is None else b2, shape)
    size = _numel(numel, shape)
    model = _model(rule, a, size, fresh, default_beta2(rule.family) if b2 is None else b2)
    return Setup(rule, model, lr, wd, a, size, lrs)


def _missing(name: str) -> float:
    raise ValueError(f"{name} must be given (or read from an optimizer or scheduler instance)")


def _dims(shape: Any) -> tuple[int, ...]:
    """``shape`` as whole sizes >= 1, or a ValueError naming it (5, "ab", 2.7 and inf are not sizes)."""
    bad = ValueError(f"shape must be a sequence of whole sizes >= 1, got {shape!r}")
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence | np.ndarray) or np.ndim(shape) != 1:
        raise bad
    dims = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer, float, np.floating)):
            raise bad
        if not math.isfinite(d) or d != int(d) or d < 1:
            raise bad
        dims.append(int(d))
    if not dims:
        raise bad
    return tuple(dims)


def _numel(numel: Any, shape: Any) -> float:
    if numel is None:
        return float(math.prod(_dims(shape))) if shape is not None else 1.0
    return check_number("numel", numel, low=1.0, strict=False)


def _named_rule(name: str, lr: float, wd: float, momentum: float, beta2: float, shape: Any) -> Any:
    """The rule of ``torch.optim.SGD`` (heavy ball), ``AdamW``, Lion or ``Muon`` with these settings.

    SGD's and AdamW's are the :class:`smdyn.rules.Rule` that :func:`smdyn.rules.rule_for` gives those
    optimizers, built directly: creating a torch optimizer costs seconds the first time in a process.
    """
    import torch

    from smdyn.dynamics import NORM_EXPONENT
    from smdyn.rules import Rule, lion_rule, rule_for

    if name == "sgd":
        return Rule("sgd", "sgd", theory=True, buffer="momentum_buffer", norm_exponent=NORM_EXPONENT)
    if name == "adamw":
        return Rule("adamw", "adamw", theory=True, norm_exponent=0.5)
    if name == "lion":
        return lion_rule(None, {"betas": (momentum, beta2), "lr": lr, "weight_decay": wd})  # type: ignore[arg-type]
    if name == "muon":
        if shape is None:
            raise ValueError(
                "optimizer='muon' needs the weight's shape=(rows, cols): Muon's Δ* depends on it"
            )
        dims = _dims(shape)
        if len(dims) != 2:
            raise ValueError(f"shape must be two ints >= 1 (a 2-D weight), got {shape!r}")
        p = torch.nn.Parameter(torch.zeros(dims))
        opt = torch.optim.Muon([p], lr=lr, weight_decay=wd, momentum=momentum)
    return rule_for(opt, opt.param_groups[0])


def _model(rule: Any, momentum: float, numel: float, fresh: bool, beta2: float) -> SgdModel | DecoupledModel:
    """The recurrence for the rule's family; rules it cannot plan are refused, saying why."""
    if not rule.theory:
        raise ValueError(f"rule {rule.name!r} has no equilibrium theory to plan with: {rule.note}")
    if rule.family == "sgd":
        if not rule.heavy_ball:
            raise ValueError(
                f"rule {rule.name!r}: the plan's SGD recurrence is heavy-ball momentum without dampening "
                "(Eqs 10-11); Nesterov and dampening are not modelled"
            )
        return SgdModel(momentum)
    if rule.family in _DECOUPLED:
        adam = rule.family == "adamw"
        bias = momentum if adam and rule.name == "adamw" and fresh else None
        memory = beta2 if rule.family == "lion" else momentum  # the steps' correlation time
        return DecoupledModel(
            rule, momentum, numel, bias_correction=bias, beta2=beta2 if adam else None, memory=memory
        )
    raise ValueError(f"rule {rule.name!r} (family {rule.family!r}): no recurrence to plan it with")
