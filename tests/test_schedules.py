"""Named schedules against closed forms and torch's own schedulers; reading a scheduler instance untouched."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from smdyn.schedules import CosineRestarts, WarmupCosine, WarmupLinear, Wsd, scheduler_lrs


def _torch_lrs(make, steps: int, lr: float = 1.0) -> np.ndarray:
    """The lr of each step of a real torch scheduler, stepped after a real optimizer step."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = make(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return np.array(out)


def test_warmup_cosine_and_linear_match_closed_forms_and_torch() -> None:
    steps, warmup, floor = 500, 50, 0.02
    t = np.arange(steps)
    frac = np.clip((t - warmup) / (steps - warmup), 0, 1)
    ramp = np.where(t < warmup, (t + 1) / warmup, 1.0)
    cos = WarmupCosine(steps, warmup, floor, peak=3.0)
    want = 3.0 * ramp * (floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * frac)))
    np.testing.assert_allclose([cos(int(s)) for s in t], want, rtol=1e-12)
    lin = WarmupLinear(steps, warmup, floor)
    np.testing.assert_allclose(
        [lin(int(s)) for s in t], ramp * (floor + (1 - floor) * (1 - frac)), rtol=1e-12
    )
    # Without warm-up: exactly torch's CosineAnnealingLR and LinearLR.
    sched = _torch_lrs(
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=steps, eta_min=floor), steps
    )
    np.testing.assert_allclose([WarmupCosine(steps, 0, floor)(s) for s in range(steps)], sched, rtol=1e-9)
    sched = _torch_lrs(
        lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=1.0, end_factor=floor, total_iters=steps),
        steps,
    )
    np.testing.assert_allclose([WarmupLinear(steps, 0, floor)(s) for s in range(steps)], sched, rtol=1e-9)
    assert cos(warmup - 1) == 3.0 and cos(0) == pytest.approx(3.0 / warmup)
    assert WarmupCosine(10)(9) > 0  # the floor is reached one past the last step


@pytest.mark.parametrize("shape", ["linear", "1-sqrt", "cosine"])
def test_wsd(shape: str) -> None:
    steps, warmup, decay = 1000, 100, 200
    s = Wsd(steps, warmup, decay, shape, floor=0.1)
    t = np.arange(steps)
    frac = np.clip((t - (steps - decay)) / decay, 0, 1)
    g = {"linear": 1 - frac, "1-sqrt": 1 - np.sqrt(frac), "cosine": 0.5 * (1 + np.cos(np.pi * frac))}[shape]
    want = np.where(t < warmup, (t + 1) / warmup, 1.0) * (0.1 + 0.9 * g)
    np.testing.assert_allclose([s(int(x)) for x in t], want, rtol=1e-12)
    assert s.decay_start == 800 and s(799) == 1.0 and s(800) == 1.0 and s(801) < 1.0
    assert Wsd(steps, decay=0.25).decay == 250  # a fraction of the steps


@pytest.mark.parametrize(("period", "mult"), [(100, 1), (50, 2)])
def test_cosine_restarts_match_torch(period: int, mult: int) -> None:
    steps, floor = 700, 0.05
    want = _torch_lrs(
        lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            o, T_0=period, T_mult=mult, eta_min=floor
        ),
        steps,
    )
    got = [CosineRestarts(period, mult, floor=floor)(t) for t in range(steps)]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    warm = CosineRestarts(period, mult, warmup=20, floor=floor)
    assert warm(19) == 1.0 and warm(20 + 5) == pytest.approx(got[5])


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: WarmupCosine(0), "steps"),
        (lambda: WarmupCosine(10, warmup=10), "warmup"),
        (lambda: WarmupCosine(10, warmup=-1), "warmup"),
        (lambda: WarmupCosine(10, floor=1.5), "floor"),
        (lambda: WarmupLinear(10, floor=math.nan), "floor"),
        (lambda: WarmupLinear(10, peak=0.0), "peak"),
        (lambda: Wsd(10, decay=0), "decay"),
        (lambda: Wsd(10, decay=1.5), "decay"),
        (lambda: Wsd(10, warmup=5, decay=6), "decay"),
        (lambda: Wsd(10, shape="sqrt"), "shape"),
        (lambda: CosineRestarts(0), "period"),
        (lambda: CosineRestarts(10, mult=0), "mult"),
        (lambda: CosineRestarts(10, mult=1.5), "mult"),  # type: ignore[arg-type]
        (lambda: WarmupCosine(10.5), "steps"),  # type: ignore[arg-type]
    ],
)
def test_bad_arguments_name_the_argument(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def _model_and_optimizer() -> tuple[torch.nn.Parameter, torch.optim.Optimizer]:
    p = torch.nn.Parameter(torch.randn(4, generator=torch.Generator().manual_seed(0)))
    opt = torch.optim.AdamW([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.1)
    return p, opt


@pytest.mark.parametrize(
    "make",
    [
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=60),
        lambda o: torch.optim.lr_scheduler.LambdaLR(o, WarmupCosine(60, 10)),
        lambda o: torch.optim.lr_scheduler.SequentialLR(
            o,
            [
                torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=10),
                torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=50),
            ],
            milestones=[10],
        ),
    ],
)
def test_scheduler_lrs_reads_ahead_without_touching_anything(make) -> None:
    p, opt = _model_and_optimizer()
    sched = make(opt)
    for _ in range(7):  # mid-run: the optimizer has state, the scheduler a position
        p.grad = torch.ones_like(p)
        opt.step()
        sched.step()
    before = (p.detach().clone(), opt.state_dict(), {k: v for k, v in sched.state_dict().items()})
    ahead = scheduler_lrs(sched, 40)
    assert torch.equal(p.detach(), before[0])
    assert opt.state_dict()["param_groups"] == before[1]["param_groups"]
    assert torch.equal(opt.state[p]["exp_avg"], before[1]["state"][0]["exp_avg"])
    assert sched.last_epoch == before[2]["last_epoch"]
    real = []
    for _ in range(40):  # the real scheduler then gives the same lrs
        real.append(opt.param_groups[0]["lr"])
        p.grad = torch.ones_like(p)
        opt.step()
        sched.step()
    np.testing.assert_allclose(ahead, real, rtol=1e-12)


def test_scheduler_lrs_refuses() -> None:
    _, opt = _model_and_optimizer()
    with pytest.raises(ValueError, match="ReduceLROnPlateau"):
        scheduler_lrs(torch.optim.lr_scheduler.ReduceLROnPlateau(opt), 5)
    with pytest.raises(TypeError, match="LRScheduler"):
        scheduler_lrs(opt, 5)
    sched = torch.optim.lr_scheduler.StepLR(opt, 3)
    with pytest.raises(ValueError, match="group"):
        scheduler_lrs(sched, 5, group=1)
    with pytest.raises(ValueError, match="steps"):
        scheduler_lrs(sched, 0)
