"""Optimizers built from a model's declared parameter roles, and Muon + AdamW stepped as one optimizer.

A model may declare each parameter's role (``parameter_roles()``: ``"matrix"``, ``"embedding"`` or ``"gain"``,
as `smdyn.experiments.gpt.GPT` does). `by_roles` then leaves the gains (norm weights and biases) without
weight decay, the transformer convention, and for ``muon`` trains the matrices with Muon.

Muon (Jordan et al. 2024; ``torch.optim.Muon``) orthogonalises the update of 2-D weights only; embeddings,
the output head and norm gains are trained by AdamW, as in its reference setup. The training loop, the
learning-rate schedule, the checkpoint and `smdyn.SphericalMonitor` each want one optimizer: `MuonWithAdamW`
holds both, shares their param-group dicts (so a scheduler's lr reaches both) and tells the monitor, per
param group, which of the two rules applies (registered with `smdyn.rules.register_rule`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from smdyn.experiments.config import OptimConfig
from smdyn.rules import Rule, register_rule, rule_for

__all__ = ["MuonWithAdamW", "by_roles"]


class _JointState(Mapping[torch.Tensor, Any]):
    """Read-only view of both optimizers' per-parameter state (without creating entries on lookup, as a
    ChainMap over defaultdicts would)."""

    def __init__(self, *states: Mapping[torch.Tensor, Any]) -> None:
        self._states = states

    def __getitem__(self, p: torch.Tensor) -> Any:
        for s in self._states:
            if p in s:
                return s[p]
        raise KeyError(p)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return itertools.chain.from_iterable(self._states)

    def __len__(self) -> int:
        return sum(len(s) for s in self._states)


class MuonWithAdamW(torch.optim.Optimizer):
    """``torch.optim.Muon`` over ``muon_groups`` and ``torch.optim.AdamW`` over ``adamw_groups``.

    Args:
        muon_groups: param groups of 2-D weights; one group per shape, so the monitor's Muon theory (which
            depends on the aspect ratio) applies to each.
        adamw_groups: param groups of everything else (may set their own ``weight_decay``).
        lr, weight_decay, momentum, nesterov: Muon's settings (its decay is decoupled: w ← (1 − ηλ)w).
        adamw_lr, betas: the AdamW part's rate and betas; its default weight decay is ``weight_decay``.
    """

    def __init__(
        self,
        muon_groups: Sequence[dict[str, Any]],
        adamw_groups: Sequence[dict[str, Any]],
        *,
        lr: float,
        weight_decay: float,
        momentum: float = 0.95,
        nesterov: bool = True,
        adamw_lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
    ) -> None:
        if not muon_groups or not adamw_groups:
            raise ValueError("MuonWithAdamW needs parameters for both Muon and AdamW")
        self.muon = torch.optim.Muon(
            list(muon_groups), lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov
        )
        self.adamw = torch.optim.AdamW(
            list(adamw_groups), lr=adamw_lr, betas=betas, weight_decay=weight_decay
        )
        params = [p for g in (*self.muon.param_groups, *self.adamw.param_groups) for p in g["params"]]
        super().__init__(params, {})
        self.param_groups = [*self.muon.param_groups, *self.adamw.param_groups]
        self.state = _JointState(self.muon.state, self.adamw.state)  # type: ignore[assignment]

    def owner(self, group: Mapping[str, Any]) -> torch.optim.Optimizer:
        """The inner optimizer that holds ``group`` (by identity)."""
        return self.muon if any(g is group for g in self.muon.param_groups) else self.adamw

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:  # type: ignore[override]
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self.param_groups = [*self.muon.param_groups, *self.adamw.param_groups]
        self.state = _JointState(self.muon.state, self.adamw.state)  # type: ignore[assignment]


def _joint_rule(optimizer: torch.optim.Optimizer, group: Mapping[str, Any]) -> Rule:
    """The rule of the inner optimizer that holds the group (Muon's or AdamW's)."""
    return rule_for(optimizer.owner(group), group)  # type: ignore[attr-defined]


register_rule(MuonWithAdamW, _joint_rule)


def by_roles(o: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of ``o`` for a model with ``parameter_roles``: Muon on the ``"matrix"`` parameters (one
    group per shape) with AdamW on the rest for ``muon``, else one optimizer over a decayed group (matrices
    and embeddings) and an undecayed one (gains).

    Raises:
        ValueError: ``muon`` for a model without ``parameter_roles`` or without a 2-D ``"matrix"``.
    """
    has_roles = callable(getattr(model, "parameter_roles", None))
    roles: Mapping[str, str] = model.parameter_roles() if has_roles else {}  # type: ignore[operator]
    by_shape: dict[tuple[int, ...], list[nn.Parameter]] = {}
    decayed, gains = [], []
    for name, p in model.named_parameters():
        role = roles.get(name, "gain" if p.dim() < 2 else "embedding")
        if o.name == "muon" and role == "matrix" and p.dim() == 2:
            by_shape.setdefault(tuple(p.shape), []).append(p)
        elif role == "gain":
            gains.append(p)
        else:
            decayed.append(p)
    groups = [g for g in ({"params": decayed}, {"params": gains, "weight_decay": 0.0}) if g["params"]]
    if o.name == "muon":
        if not by_shape:
            raise ValueError(
                "[optim] name = 'muon' needs a model that declares its hidden matrices, as gpt does"
            )
        return MuonWithAdamW(
            [{"params": ps} for ps in by_shape.values()],
            groups,
            lr=o.lr,
            weight_decay=o.weight_decay,
            momentum=o.momentum,
            nesterov=o.nesterov,
            adamw_lr=o.lr if o.adamw_lr is None else o.adamw_lr,
            betas=o.betas,
        )
    if o.name == "sgd":
        return torch.optim.SGD(
            groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov
        )
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
