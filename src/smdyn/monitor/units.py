"""Which vectors are monitored: parameter names, ``(name, parameter)`` pairs or ``"auto"`` → units."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from smdyn._params import parse_params
from smdyn.monitor.measure import is_sharded


@dataclass
class Unit:
    """One monitored vector: a weight, or a weight and bias that are scale-invariant only together.

    ``norms`` are the normalising modules that make it invariant (when detection found them): a BatchNorm
    that uses its running statistics (eval mode) does not normalize, so the weight is not invariant then.
    """

    name: str
    tensors: list[nn.Parameter]
    per_channel: bool
    rows: int = 1  # output rows: 1, or the number of channels
    norms: list[nn.Module] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return sum(t.numel() for t in self.tensors)

    def norm_frozen(self) -> bool:
        """A normalising module uses running statistics this step (BatchNorm / InstanceNorm in eval mode)."""
        return any(not m.training and getattr(m, "running_mean", None) is not None for m in self.norms)


def make_unit(
    name: str, tensors: list[nn.Parameter], per_channel: bool, norms: Sequence[nn.Module] = ()
) -> Unit:
    if any(t.is_complex() for t in tensors):
        raise ValueError(
            f"{name}: complex parameters are not supported (the sphere is that of the real and imaginary "
            "parts; measure torch.view_as_real of the weight yourself)"
        )
    if per_channel and any(is_sharded(t) for t in tensors):
        raise ValueError(f"{name}: granularity='channel' is not supported for sharded (DTensor) parameters")
    rows = tensors[0].shape[0] if per_channel and tensors[0].dim() >= 1 else 1
    if per_channel and any(t.dim() < 1 or t.shape[0] != rows for t in tensors):
        raise ValueError(f"{name}: tensors of a per-channel unit must share their first dimension")
    return Unit(
        name, list(tensors), per_channel and rows > 1, max(rows, 1) if per_channel else 1, list(norms)
    )


def from_found(model: nn.Module, found: list[Any], per_channel: bool) -> list[Unit]:
    """Units from :func:`smdyn.find_scale_invariant` results, with their normalising modules attached."""
    named = dict(model.named_parameters())
    modules = dict(model.named_modules())
    units = []
    for f in found:
        if any(named[n].is_complex() for n in f.params):
            warnings.warn(f"{f.name}: complex parameters are not monitored (see make_unit)", stacklevel=4)
            continue
        norms = _norm_modules(f, modules)
        units.append(make_unit(f.name, [named[n] for n in f.params], per_channel and f.per_channel, norms))
    return units


def _norm_modules(found: Any, modules: dict[str, nn.Module]) -> list[nn.Module]:
    """The normalising modules of a detection result (none for weight norm, which needs no layer)."""
    if found.kind == "weight_norm":
        return []
    return [modules[n] for n in found.norm.split(",") if n in modules]


def resolve(
    model: nn.Module, params: Any, per_channel: bool, example_batch: Any, loss_fn: Callable[..., Any] | None
) -> list[Unit] | None:
    """The monitored units, or None when they can only be found from the first forward pass (no fx trace)."""
    if isinstance(params, str):
        if params != "auto":
            raise ValueError(f"params must be 'auto', (name, parameter) pairs or names, got {params!r}")
        from smdyn.invariance import find_scale_invariant

        if example_batch is None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                found = find_scale_invariant(model)
            if not found and any("cannot trace" in str(w.message) for w in caught):
                return None
        else:
            found = find_scale_invariant(model, example_batch, loss_fn)
        return from_found(model, found, per_channel)
    given = parse_params(params, model)
    norms = _running_stat_norms(model, [t for _, tensors in given for t in tensors])
    return [make_unit(label, tensors, per_channel, norms.get(id(tensors[0]), ())) for label, tensors in given]


def _running_stat_norms(model: nn.Module, tensors: list[nn.Parameter]) -> dict[int, list[nn.Module]]:
    """For named parameters: the BatchNorm/InstanceNorm with running statistics each feeds, by the data flow
    (``norm_frozen`` needs them). Only models with such a layer pay for the trace; where it fails, none."""
    if not any(getattr(m, "running_mean", None) is not None for m in model.modules()):
        return {}
    if any(is_sharded(p) for p in model.parameters()) or any(
        type(m).__module__.startswith("torch.distributed") for m in model.modules()
    ):
        return {}  # a traced forward of a sharded model could unshard or communicate: not for a courtesy
    from smdyn.invariance import find_scale_invariant

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = find_scale_invariant(model, probe=False)
    except Exception:  # detection is a courtesy here: the user named the weights
        return {}
    named, modules = dict(model.named_parameters()), dict(model.named_modules())
    wanted = {id(t) for t in tensors}
    out: dict[int, list[nn.Module]] = {}
    for f in found:
        mods = _norm_modules(f, modules)
        for n in f.params:
            if id(named[n]) in wanted and mods:
                out.setdefault(id(named[n]), mods)
    return out
