"""The rule registry: which optimizer gets which rule, and why a rule has no theory.

The equilibrium of every rule with theory is checked against the real optimizer in
``tests/test_rule_registry.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from smdyn import theory
from smdyn.rules import Rule, register_rule, rule_for

_T, _N, _L = 64, 1024, 1.0


def test_nesterov_theory_differs_from_heavy_ball_by_the_derived_factor() -> None:
    """The closed form, by hand: Nesterov's S₂/C over heavy ball's is 1 + 2α − 2α³ (1.342 at α = 0.9)."""
    hb = theory.sgd_angular_update(0.1, 1e-3, 0.9)
    nag = theory.sgd_angular_update(0.1, 1e-3, 0.9, nesterov=True)
    assert (nag / hb) ** 2 == pytest.approx(1 + 1.8 - 2 * 0.729, rel=1e-12)
    assert hb == pytest.approx(math.sqrt(2 * 0.1 * 1e-3 / 1.9), rel=1e-12)


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


@pytest.mark.parametrize(
    ("make", "name", "has_theory", "why"),
    [
        (lambda ps: torch.optim.Adam(ps, weight_decay=1e-2), "adam", False, "coupled"),
        (lambda ps: torch.optim.Adam(ps, weight_decay=1e-2, decoupled_weight_decay=True), "adamw", True, ""),
        (lambda ps: torch.optim.RAdam(ps, weight_decay=1e-2), "radam", False, "coupled"),
        (
            lambda ps: torch.optim.RAdam(ps, weight_decay=1e-2, decoupled_weight_decay=True),
            "radam_decoupled",
            True,
            "",
        ),
        (lambda ps: torch.optim.NAdam(ps, weight_decay=1e-2), "nadam", False, "coupled"),
        (
            lambda ps: torch.optim.NAdam(ps, weight_decay=1e-2, decoupled_weight_decay=True),
            "nadam",
            False,
            "μ_t",
        ),
        (lambda ps: torch.optim.Adamax(ps, weight_decay=1e-2), "adamax", False, "coupled"),
        (lambda ps: torch.optim.RMSprop(ps, weight_decay=1e-2), "rmsprop", False, "coupled"),
        (lambda ps: torch.optim.Adagrad(ps, weight_decay=1e-2), "adagrad", False, "1/√t"),
        (lambda ps: torch.optim.Adafactor(ps, weight_decay=1e-2), "adafactor", False, "RMS(w)"),
        (lambda ps: torch.optim.Muon(ps), "muon_nesterov", True, ""),
        (lambda ps: torch.optim.Muon(ps, nesterov=False), "muon", True, ""),
    ],
)
def test_each_torch_optimizer_gets_its_rule(make, name: str, has_theory: bool, why: str) -> None:
    opt = make([torch.nn.Parameter(torch.zeros(4, 8))])
    rule = rule_for(opt, opt.param_groups[0])
    assert (rule.name, rule.theory) == (name, has_theory)
    assert why in rule.note
    if has_theory:
        assert rule.norm_exponent == 0.5
        assert rule.relaxation_steps(0.01, 0.1, 0.9) == pytest.approx(1 / (2 * 0.01 * 0.1))


def test_muon_rule_needs_one_aspect_ratio_per_group() -> None:
    same = torch.optim.Muon(
        [torch.nn.Parameter(torch.zeros(64, 64)), torch.nn.Parameter(torch.zeros(128, 128))]
    )
    rule = rule_for(same, same.param_groups[0])
    assert rule.theory
    assert math.isnan(rule.equilibrium_norm(0.02, 0.1, 0.95, 1))  # U differs with the size: w* is per weight
    mixed = torch.optim.Muon(
        [torch.nn.Parameter(torch.zeros(32, 32)), torch.nn.Parameter(torch.zeros(32, 128))]
    )
    rule = rule_for(mixed, mixed.param_groups[0])
    assert not rule.theory
    assert "aspect ratio" in rule.note


def test_rescaling_muon_divides_its_buffer() -> None:
    p = torch.nn.Parameter(torch.randn(8, 8))
    opt = torch.optim.Muon([p])
    p.grad = torch.randn(8, 8)
    opt.step()
    buf = opt.state[p]["momentum_buffer"].clone()
    rule = rule_for(opt, opt.param_groups[0])
    rule.rescale_state(opt.state, [p], 0.5, "split")
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], buf / 0.5)
    rule.rescale_state(opt.state, [p], 0.5, "keep")
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], buf / 0.5)
