"""RotationController: every step turns each weight by exactly the target angle (float64 reference) at its
initial norm, for SGD, SGDM, AdamW and Muon; refusals; resumption; hook order; no raise in training."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import lr_scheduler as sch

from smdyn.corrected_decay import CorrectedWeightDecay
from smdyn.rescale import Rescaler
from smdyn.rotation import RotationController
from smdyn.rules import rule_for

INVARIANT = ("0.weight", "3.weight")
LRS = [0.1, 0.1, 0.05, 0.02, 0.08, 0.01, 0.01, 0.003]  # drops and a restart


def _net(seed: int = 0, width: int = 8) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, width, bias=False),
        nn.BatchNorm1d(width),
        nn.ReLU(),
        nn.Linear(width, width, bias=False),
        nn.BatchNorm1d(width),
        nn.ReLU(),
        nn.Linear(width, 3),
    )


def _loss(model: nn.Module, t: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + t)
    x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
    return F.cross_entropy(model(x), y)


def _invariant(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if n in INVARIANT]


def _angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise angle in float64: 2·atan2(‖â − b̂‖, ‖â + b̂‖), exact for small angles (docs/design.md §2)."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    return 2 * torch.atan2((a - b).norm(dim=1), (a + b).norm(dim=1))


def _sgd_star(lr: float, wd: float, mom: float) -> float:
    return math.sqrt(2 * lr * wd / (1 + mom))  # Wan et al. Thm 3


def _adamw_star(lr: float, wd: float, beta1: float) -> float:
    return math.sqrt(2 * lr * wd * (1 - beta1) / (1 + beta1))  # Kosson et al. 2024, Table 1


def _measure(model: nn.Module, opt: torch.optim.Optimizer, per_channel: bool) -> list[tuple[float, ...]]:
    """Train over LRS; per step and invariant tensor: (step, lr, angle of each row, its rows after)."""
    rows = []
    for t, lr in enumerate(LRS):
        opt.param_groups[0]["lr"] = lr
        opt.zero_grad()
        _loss(model, t).backward()
        before = [p.detach().clone() for p in _invariant(model)]
        opt.step()
        for b, p in zip(before, _invariant(model), strict=True):
            shape = (b.shape[0], -1) if per_channel else (1, -1)
            rows.append(
                (
                    t,
                    lr,
                    _angle(b.reshape(shape), p.detach().reshape(shape)),
                    p.detach().double().reshape(shape),
                )
            )
    return rows


@pytest.mark.parametrize("per_channel", [False, True], ids=["tensor", "channel"])
@pytest.mark.parametrize(
    ("name", "make", "star"),
    [
        ("sgd", lambda ps: torch.optim.SGD(ps, lr=0.1, weight_decay=0.05), lambda lr: _sgd_star(lr, 0.05, 0)),
        (
            "sgdm",
            lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.05),
            lambda lr: _sgd_star(lr, 0.05, 0.9),
        ),
        (
            "adamw",
            lambda ps: torch.optim.AdamW(ps, lr=0.1, weight_decay=0.5),
            lambda lr: _adamw_star(lr, 0.5, 0.9),
        ),
    ],
)
def test_angle_is_the_equilibrium_from_step_one(name: str, make, star, per_channel: bool) -> None:
    model = _net()
    inv = _invariant(model)
    opt = make(inv)
    start = [
        p.detach().double().reshape((p.shape[0], -1) if per_channel else (1, -1)).norm(dim=1) for p in inv
    ]
    rc = RotationController(list(zip(INVARIANT, inv, strict=True)), opt, per_channel=per_channel)
    worst_angle = worst_norm = 0.0
    for i, (_, lr, angle, w) in enumerate(_measure(model, opt, per_channel)):
        worst_angle = max(worst_angle, float((angle / star(lr) - 1).abs().max()))
        worst_norm = max(worst_norm, float((w.norm(dim=1) / start[i % 2] - 1).abs().max()))
    assert worst_angle < 1e-5
    assert worst_norm < 1e-6
    assert rc.angular_update[0] == pytest.approx(star(LRS[-1]), rel=1e-12)

    plain = _net()  # without the controller the first steps are far from Δ*: the check can fail
    opt = make(_invariant(plain))
    first = _measure(plain, opt, per_channel)[0]
    assert float((first[2] / star(first[1]) - 1).abs().max()) > 0.05


def test_muon() -> None:
    model = _net()
    inv = _invariant(model)
    opt = torch.optim.Muon(inv, lr=0.1, weight_decay=0.1)
    rule = rule_for(opt, opt.param_groups[0])
    if rule.theory:
        RotationController(list(zip(INVARIANT, inv, strict=True)), opt)
        expected = lambda lr: float(rule.angular_update(lr, 0.1, 0.95))  # noqa: E731
    else:
        with pytest.raises(ValueError, match="no derived equilibrium angular update"):
            RotationController(list(zip(INVARIANT, inv, strict=True)), opt)
        RotationController(list(zip(INVARIANT, inv, strict=True)), opt, target=lambda t: 0.01 * (t + 1))
        expected = None
    norms = [p.detach().double().norm() for p in inv]
    for i, (t, lr, angle, w) in enumerate(_measure(model, opt, False)):
        want = expected(lr) if expected else 0.01 * (t + 1)
        assert float(angle) == pytest.approx(want, rel=1e-5)
        assert float(w.norm()) == pytest.approx(float(norms[i % 2]), rel=1e-6)


def test_callable_target_and_auto_detection() -> None:
    """Small angles on larger tensors: float32 rounding of the result limits Δ to ~1e-8/√n absolute."""
    model = _net(width=64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    rc = RotationController(model, opt, target=lambda step: 1e-3 * 10 ** (step % 3))
    assert rc.names == list(INVARIANT)
    for t, _, angle, _ in _measure(model, opt, False):
        assert float(angle) == pytest.approx(1e-3 * 10 ** (t % 3), rel=1e-5)


def test_no_gradient_no_turn() -> None:
    model = _net()
    inv = _invariant(model)
    opt = torch.optim.AdamW(inv, lr=0.1, weight_decay=0.5)
    RotationController(list(zip(INVARIANT, inv, strict=True)), opt)
    before = [p.detach().clone() for p in inv]
    opt.step()  # no gradients: AdamW skips them (and its decay with them)
    for b, p in zip(before, inv, strict=True):
        torch.testing.assert_close(p, b, rtol=1e-6, atol=0)


def test_resume_is_bit_identical() -> None:
    def build() -> tuple[nn.Module, torch.optim.Optimizer, sch.LRScheduler, RotationController]:
        model = _net()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-3)
        sched = sch.CosineAnnealingLR(opt, T_max=20)
        return model, opt, sched, RotationController(model, opt, per_channel=True)

    def run(model: nn.Module, opt: torch.optim.Optimizer, sched: sch.LRScheduler, steps: range) -> None:
        for t in steps:
            opt.zero_grad()
            _loss(model, t).backward()
            opt.step()
            sched.step()

    model, opt, sched, rc = build()
    run(model, opt, sched, range(7))
    saved = [x.state_dict() for x in (model, opt, sched, rc)]
    saved = torch.utils._pytree.tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, saved)
    torch.save(saved[3], buf := __import__("io").BytesIO())
    buf.seek(0)
    saved[3] = torch.load(buf, weights_only=True)
    run(model, opt, sched, range(7, 15))

    model2, opt2, sched2, rc2 = build()
    for obj, state in zip((model2, opt2, sched2, rc2), saved, strict=True):
        obj.load_state_dict(state)
    run(model2, opt2, sched2, range(7, 15))
    for (name, a), b in zip(model.named_parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert rc2.state_dict() == rc.state_dict()


def test_runs_before_other_post_hooks() -> None:
    model = _net()
    inv = _invariant(model)
    opt = torch.optim.AdamW(inv, lr=0.1, weight_decay=0.5)
    seen = []
    opt.register_step_post_hook(lambda o, a, k: seen.append(float(inv[0].detach().double().norm())))
    start = float(inv[0].detach().double().norm())
    RotationController(list(zip(INVARIANT, inv, strict=True)), opt)
    _loss(model, 0).backward()
    opt.step()
    assert seen == [pytest.approx(start, rel=1e-6)]


def test_refusals() -> None:
    model = _net()
    inv = _invariant(model)
    pairs = list(zip(INVARIANT, inv, strict=True))
    with pytest.raises(ValueError, match=r"param group 0: Adam has no derived .*pass target="):
        RotationController(pairs, torch.optim.Adam(inv, lr=0.1, weight_decay=0.1))
    RotationController(pairs, torch.optim.Adam(inv, lr=0.1, weight_decay=0.1), target=0.01).close()

    class Custom(torch.optim.SGD):
        def step(self, closure=None):
            return super().step(closure)

    with pytest.raises(ValueError, match="Custom overrides step"):
        RotationController(pairs, Custom(inv, lr=0.1, weight_decay=0.1))
    with pytest.raises(ValueError, match=r"weight_decay 0\.0: its equilibrium angular update is 0"):
        RotationController(pairs, torch.optim.SGD(inv, lr=0.1))
    with pytest.raises(ValueError, match=r"target must be an angle in \[0, π\]"):
        RotationController(pairs, torch.optim.SGD(inv, lr=0.1), target=-0.1)
    with pytest.raises(TypeError, match="target must be None, a number or a callable"):
        RotationController(pairs, torch.optim.SGD(inv, lr=0.1), target="0.1")
    zero = nn.Parameter(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="zero or non-finite norm"):
        RotationController([zero], torch.optim.SGD([zero], lr=0.1), target=0.1)


@pytest.mark.parametrize("other", ["rescaler", "corrected"])
def test_one_control_per_weight(other: str) -> None:
    model = _net()
    inv = _invariant(model)
    opt = torch.optim.SGD([{"params": inv}, {"params": model[6].parameters()}], lr=0.1, weight_decay=0.05)
    held = Rescaler(opt, model=model) if other == "rescaler" else CorrectedWeightDecay(model, opt)
    with pytest.raises(ValueError, match=r"already controlled by .*fixes ‖w‖ and sets the angular update"):
        RotationController(model, opt)
    held.close()
    rc = RotationController(model, opt)
    with pytest.raises(ValueError, match=r"already controlled by smdyn\.RotationController"):
        CorrectedWeightDecay(model, opt)
    with pytest.raises(ValueError, match="a second RotationController"):
        RotationController(model, opt)
    rc.close()


def test_never_raises_in_training_and_goes_idle() -> None:
    model = _net()
    inv = _invariant(model)
    opt = torch.optim.SGD(inv, lr=0.1, weight_decay=0.05)
    rc = RotationController(
        list(zip(INVARIANT, inv, strict=True)), opt, target=lambda t: 0.01 if t < 2 else math.nan
    )
    for t in range(2):
        _loss(model, t).backward()
        opt.step()
    _loss(model, 2).backward()
    with pytest.warns(RuntimeWarning, match="idle from now on"):
        opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        before = inv[0].detach().clone()
        opt.step()  # the plain SGD step applies
        torch.testing.assert_close(inv[0].detach(), before - 0.1 * (inv[0].grad + 0.05 * before))
    assert rc.step == 2


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_the_monitor_measures_the_turned_step(momentum: float) -> None:
    """With SGD the monitor would otherwise rebuild the step from (w, g, v) and report the inner optimizer's
    angle; weights a rotation controller holds are measured from snapshots, so it reports the turn."""
    from smdyn import SphericalMonitor

    model = _net(width=16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum, weight_decay=5e-3)
    RotationController(list(zip(INVARIANT, _invariant(model), strict=True)), opt)
    mon = SphericalMonitor(model, opt, params=list(INVARIANT))
    for t in range(6):
        opt.zero_grad()
        _loss(model, t).backward()
        opt.step()
    mon.close()
    h = mon.history()
    star = _sgd_star(0.1, 5e-3, momentum)
    for got in h["angular_update"]:
        assert got == pytest.approx(star, rel=1e-5)


def test_a_monitor_says_it_cannot_see_a_turn_made_after_step_returns() -> None:
    """hook=False: after_step() runs after the monitor's post-hook, which would report the inner step."""
    from smdyn import SphericalMonitor

    model = _net(width=16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-3)
    rc = RotationController(list(zip(INVARIANT, _invariant(model), strict=True)), opt, hook=False)
    with SphericalMonitor(model, opt, params=list(INVARIANT)) as mon:
        for t in range(3):
            opt.zero_grad()
            _loss(model, t).backward()
            rc.before_step()
            opt.step()
            rc.after_step()
    h = mon.history()
    assert set(h["reason_code"]) == {"turned_after_step"}
    assert all(math.isnan(x) for x in h["angular_update"])
