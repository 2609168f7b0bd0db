"""Every rule with theory against the real torch optimizer on synthetic scale-invariant weights.

Each row of a [64, 1024] parameter is one trajectory (torch's optimizers act elementwise, so rows never
interact). Its gradient is random, orthogonal to the row, with ‖g‖²‖w‖² = L: the scale-invariant setting
of Thms 1-3 with a unit gradient that does not vanish. The rows start away from the predicted equilibrium
(twice the predicted norm), run five relaxation times, and are then measured in float64.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from smdyn import Rescaler, theory
from smdyn.rules import Rule, register_rule, rule_for

_T, _N, _L = 64, 1024, 1.0


def _grad(w: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    r = torch.randn(w.shape, generator=gen, dtype=w.dtype)
    r -= (r * w).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True) * w
    scale = torch.sqrt(_L / ((r * r).sum(1, keepdim=True) * (w * w).sum(1, keepdim=True)))
    return r * scale


def _angles(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    a = a / a.norm(dim=1, keepdim=True)
    b = b / b.norm(dim=1, keepdim=True)
    return (2 * torch.atan2((a - b).norm(dim=1), (a + b).norm(dim=1))).numpy()


def _run(opt_factory, star: float, w_star: float, relax: float, seed: int = 0, window: int = 400):
    gen = torch.Generator().manual_seed(seed)
    w0 = torch.randn(_T, _N, generator=gen, dtype=torch.float64)
    w = torch.nn.Parameter(2 * w_star * w0 / w0.norm(dim=1, keepdim=True))
    opt = opt_factory([w])
    sq, norms = [], []
    for t in range(int(5 * relax) + window):
        w.grad = _grad(w.detach(), gen)
        before = w.detach().clone()
        opt.step()
        if t >= int(5 * relax):
            sq.append(_angles(before, w.detach()) ** 2)
            norms.append(w.detach().norm(dim=1).numpy())
    return math.sqrt(np.mean(sq)) / star, float(np.mean(norms)) / w_star, w, opt, gen


_SGD_CASES = [  # (lr, wd, momentum, dampening, nesterov): λη from 5e-5 to 5e-4
    (0.1, 1e-3, 0.9, 0.0, False),
    (0.1, 1e-3, 0.9, 0.0, True),
    (0.05, 1e-3, 0.9, 0.5, False),
    (0.1, 5e-3, 0.9, 0.0, True),
    (0.1, 1e-3, 0.5, 0.3, False),
    (0.05, 1e-3, 0.8, 0.0, True),
]


@pytest.mark.slow
@pytest.mark.parametrize(("lr", "wd", "mom", "damp", "nesterov"), _SGD_CASES)
def test_sgd_rules_reach_their_equilibrium_with_the_real_optimizer(
    lr: float, wd: float, mom: float, damp: float, nesterov: bool
) -> None:
    def make(params):
        return torch.optim.SGD(
            params, lr=lr, momentum=mom, dampening=damp, nesterov=nesterov, weight_decay=wd
        )

    probe = make([torch.nn.Parameter(torch.zeros(1))])
    rule = rule_for(probe, probe.param_groups[0])
    assert rule.theory, rule.note
    star = float(rule.angular_update(lr, wd, mom))
    w_star = float(rule.weight_norm(_L, lr, wd, mom))
    rms, norm, *_ = _run(make, star, w_star, float(rule.relaxation_steps(lr, wd, mom)))
    assert rms == pytest.approx(1.0, abs=0.02), f"RMS Δ/Δ* = {rms:.4f}"
    assert norm == pytest.approx(1.0, abs=0.03), f"‖w‖/w* = {norm:.4f}"


def test_nesterov_theory_differs_from_heavy_ball_by_the_derived_factor() -> None:
    """The closed form, by hand: Nesterov's S₂/C over heavy ball's is 1 + 2α − 2α³ (1.342 at α = 0.9)."""
    hb = theory.sgd_angular_update(0.1, 1e-3, 0.9)
    nag = theory.sgd_angular_update(0.1, 1e-3, 0.9, nesterov=True)
    assert (nag / hb) ** 2 == pytest.approx(1 + 1.8 - 2 * 0.729, rel=1e-12)
    assert hb == pytest.approx(math.sqrt(2 * 0.1 * 1e-3 / 1.9), rel=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("nesterov", [False, True])
def test_rescaled_drop_puts_the_first_step_at_the_new_equilibrium(nesterov: bool) -> None:
    lr, wd, mom = 0.1, 2e-3, 0.9

    def make(params):
        return torch.optim.SGD(params, lr=lr, momentum=mom, nesterov=nesterov, weight_decay=wd)

    probe = make([torch.nn.Parameter(torch.zeros(1))])
    rule = rule_for(probe, probe.param_groups[0])
    star, w_star = float(rule.angular_update(lr, wd, mom)), float(rule.weight_norm(_L, lr, wd, mom))
    _, _, w, opt, gen = _run(make, star, w_star, float(rule.relaxation_steps(lr, wd, mom)), window=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no model: invariance is not checked, which is the point here
        rescaler = Rescaler(opt, params=[("w", w)], force=True)
    opt.param_groups[0]["lr"] = lr / 10
    w.grad = _grad(w.detach(), gen)
    before = w.detach().clone()
    opt.step()
    first = math.sqrt(np.mean(_angles(before, w.detach()) ** 2))
    new_star = float(rule.angular_update(lr / 10, wd, mom))
    assert first / new_star == pytest.approx(1.0, abs=0.05)
    rescaler.close()


class _ReferenceLion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv 2302.06675)."""

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                m = self.state[p].setdefault("exp_avg", torch.zeros_like(p))
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(torch.sign(m * b1 + p.grad * (1 - b1)), alpha=-group["lr"])
                m.mul_(b2).add_(p.grad, alpha=1 - b2)


def test_a_third_party_optimizer_gets_a_rule_through_the_registry() -> None:
    opt = _ReferenceLion([torch.nn.Parameter(torch.zeros(3))])
    assert not rule_for(opt, opt.param_groups[0]).theory
    register_rule(_ReferenceLion, Rule("lion", "other", theory=False, note="measured only"))
    assert rule_for(opt, opt.param_groups[0]).name == "lion"
    with pytest.raises(TypeError, match="Optimizer subclass"):
        register_rule(dict, Rule("x", "other", theory=False))
