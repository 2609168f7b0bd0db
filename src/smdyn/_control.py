"""What the controls of scale-invariant weights share: which weights they control, and who controls each.

Three controls change how scale-invariant weights move: :class:`smdyn.Rescaler` (moves ‖w‖ so that the
angular update sits at its equilibrium for the current lr), :class:`smdyn.CorrectedWeightDecay` (decays λ
with the lr, so ‖w‖ stays put and the angular update shrinks with η) and :class:`smdyn.RotationController`
(fixes ‖w‖ and sets the angular update itself). Two of them on one weight work against each other, so each
claims its weights on the optimizer (an attribute listing the controlled parameter ids and their owner) and
a second claim on the same weight is refused with the reason.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "Target",
    "claim",
    "controller_of",
    "go_idle",
    "moved_after_step",
    "one_group",
    "release",
    "resolve",
    "to_front",
]

_ATTR = "_smdyn_controls"

_WHAT = {
    "Rescaler": "the Rescaler moves ‖w‖ so that the angular update stays at its equilibrium for the lr",
    "CorrectedWeightDecay": "corrected weight decay (λ ∝ lr) holds ‖w‖ and lets the angular update shrink "
    "with the lr",
    "RotationController": "the rotation controller fixes ‖w‖ and sets the angular update itself",
}


# --------------------------------------------------------------------------------------------------
# The marker on the optimizer


# Two Rescalers on the same weights each apply every factor; that stays the user's choice, as it always was.
_SHARED_BY_KIND = frozenset({"Rescaler"})


def claim(optimizer: torch.optim.Optimizer, tensors: Iterable[torch.Tensor], owner: Any, kind: str) -> None:
    """Mark ``tensors`` as controlled by ``owner`` (a ``kind``), or refuse when another control holds one.

    Raises:
        ValueError: a complex tensor; a tensor already held by a live control of another kind, or of the
            same kind for :class:`smdyn.CorrectedWeightDecay` and :class:`smdyn.RotationController` (a
            second one would apply its change twice), with what each does.
    """
    marks: dict[int, list[tuple[str, weakref.ref]]] = getattr(optimizer, _ATTR, None) or {}
    tensors = list(tensors)
    if any(t.is_complex() for t in tensors):
        raise ValueError(
            f"{kind}: complex parameters are not supported (its angles are those of real vectors)"
        )
    for t in tensors:
        for theirs, ref in marks.get(id(t), []):
            other = ref()
            if other is None or other is owner or (theirs == kind and kind in _SHARED_BY_KIND):
                continue
            if theirs == kind:
                why = f"a second {kind} on the same weights would apply its change twice"
            else:
                why = f"{_WHAT[theirs]}, and {_WHAT[kind]}: on the same weights they work against each other"
            names = getattr(other, "names", None)
            label = f" (one of {', '.join(names)})" if names else ""
            raise ValueError(
                f"{kind}: a weight{label} is already controlled by smdyn.{theirs} on this optimizer: {why}. "
                f"Use one control per weight (call close() on the {theirs} first)"
            )
    ref = weakref.ref(owner)
    for t in tensors:
        marks.setdefault(id(t), []).append((kind, ref))
    setattr(optimizer, _ATTR, marks)


def release(optimizer: torch.optim.Optimizer, owner: Any) -> None:
    """Drop every mark of ``owner``, and those of controls that no longer exist (safe when it holds none)."""
    marks = getattr(optimizer, _ATTR, None) or {}
    for key in list(marks):
        marks[key] = [(k, ref) for k, ref in marks[key] if ref() is not None and ref() is not owner]
        if not marks[key]:
            del marks[key]


def go_idle(control: Any, name: str, exc: BaseException, step: int, after: str) -> None:
    """A control failed inside ``optimizer.step()``: warn once and close it; nothing reaches the training
    loop, not even a failing ``close()``."""
    warnings.warn(
        f"smdyn {name}: {exc!r} at step {step}; it is idle from now on ({after})", RuntimeWarning, 4
    )
    try:
        control.close()
    except Exception:
        control._closed = True


def moved_after_step(
    optimizer: torch.optim.Optimizer, kinds: Iterable[str]
) -> tuple[frozenset[int], frozenset[int]]:
    """Ids of the parameters a live control of one of ``kinds`` moves after the optimizer's own update, and
    of those it moves only after ``step()`` returns (``hooked`` False), where no post-hook sees the step
    applied. One pass over the marks, for a per-step check."""
    kinds = frozenset(kinds)
    held, unseen = set(), set()
    for pid, marks in (getattr(optimizer, _ATTR, None) or {}).items():
        owners = [o for k, ref in marks if k in kinds and (o := ref()) is not None]
        if owners:
            held.add(pid)
            if any(getattr(o, "hooked", True) is False for o in owners):
                unseen.add(pid)
    return frozenset(held), frozenset(unseen)


def holder_of(optimizer: torch.optim.Optimizer, tensor: torch.Tensor) -> Any:
    """The live control that holds ``tensor``, or None."""
    for _, ref in (getattr(optimizer, _ATTR, None) or {}).get(id(tensor), []):
        if (owner := ref()) is not None:
            return owner
    return None


def controller_of(optimizer: torch.optim.Optimizer, tensor: torch.Tensor) -> str | None:
    """The kind of a live control that holds ``tensor`` (``"RotationController"``...), or None."""
    return next((k for k, ref in (getattr(optimizer, _ATTR, None) or {}).get(id(tensor), []) if ref()), None)


def to_front(hooks: Any, handle: Any) -> None:
    """Run this hook before every other per-optimizer hook of its kind (torch has no ``prepend`` for them)."""
    hooks.move_to_end(handle.id, last=False)


# --------------------------------------------------------------------------------------------------
# Which weights


@dataclass
class Target:
    """A controlled vector: one tensor, or a weight and bias that are scale-invariant only jointly."""

    name: str
    tensors: list[nn.Parameter]
    group: int
    per_channel: bool  # every dim-0 slice is scale-invariant on its own


def resolve(
    model_or_params: Any, optimizer: torch.optim.Optimizer, example_batch: Any, loss_fn: Any, kind: str
) -> list[Target]:
    """The scale-invariant weights of ``model_or_params`` that ``optimizer`` trains.

    A module: :func:`smdyn.find_scale_invariant` finds them (weights trained by another optimizer are left
    out). Otherwise an iterable of ``(name, parameter)`` pairs or parameters, taken as given.

    Raises:
        TypeError: an item that is neither a parameter nor a ``(name, parameter)`` pair.
        ValueError: nothing to control, a parameter outside the optimizer, the tensors of one vector in
            different param groups, or a model torch.fx cannot trace without ``example_batch``.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    group_of = {id(p): gi for gi, g in enumerate(optimizer.param_groups) for p in g["params"]}
    if isinstance(model_or_params, nn.Module):
        found = _detect(model_or_params, example_batch, loss_fn)
        named = dict(model_or_params.named_parameters())
        units = [(f.name, [named[n] for n in f.params], f.per_channel) for f in found]
        units = [u for u in units if any(id(t) in group_of for t in u[1])]
        if not units:
            raise ValueError(
                f"{kind}: the model has no scale-invariant weight that this optimizer trains "
                "(smdyn.find_scale_invariant found none); nothing to control"
            )
    else:
        units = [(name, [t], False) for name, t in _pairs(model_or_params, kind)]
    return [Target(name, ts, one_group(kind, name, ts, group_of), pc) for name, ts, pc in units]


def one_group(who: str, name: str, tensors: Iterable[torch.Tensor], group_of: dict[int, int]) -> int:
    """The one param group holding every tensor of a unit, or a ValueError naming ``who`` and the unit.

    A jointly scale-invariant unit (weight + bias) is invariant only as a whole, so one group's lr and
    weight decay must drive all of it.
    """
    groups = {group_of.get(id(t)) for t in tensors}
    if None in groups:
        raise ValueError(f"{who}: {name!r} is not in the optimizer's param groups")
    if len(groups) > 1:
        raise ValueError(
            f"{who}: the tensors of {name!r} are in different param groups; put them in one (the vector "
            "is scale-invariant only as a whole, and one group's lr must drive it)"
        )
    return groups.pop()


def _pairs(params: Any, kind: str) -> list[tuple[str, nn.Parameter]]:
    if isinstance(params, (torch.Tensor, str)) or not isinstance(params, Iterable):
        raise TypeError(
            f"{kind}: model_or_params must be a torch.nn.Module or an iterable of parameters or (name, "
            f"parameter) pairs, got {type(params).__name__}"
        )
    out = []
    for i, item in enumerate(params):
        if isinstance(item, torch.Tensor):
            out.append((f"param{i}", item))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], torch.Tensor):
            out.append((str(item[0]), item[1]))
        else:
            raise TypeError(f"{kind}: expected a parameter or a (name, parameter) pair, got {item!r}")
    if not out:
        raise ValueError(f"{kind}: no parameters given; nothing to control")
    if len({id(t) for _, t in out}) != len(out):
        raise ValueError(f"{kind}: a parameter is listed twice")
    return out


def _detect(model: nn.Module, example_batch: Any, loss_fn: Any) -> list[Any]:
    from smdyn.rescale import detect

    found = detect(model, example_batch, loss_fn)
    if found is None:
        raise ValueError(
            "torch.fx cannot trace the model; pass example_batch so that its data flow is read from one "
            "forward pass, or pass the scale-invariant parameters themselves"
        )
    return found
