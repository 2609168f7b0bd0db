"""Rescaler: invariant outputs, running statistics, exact factors, schedulers, hook order, resumption."""

from __future__ import annotations

import copy
import io
import itertools
import math
import sys
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import lr_scheduler as sch

from smdyn import SphericalMonitor, geometry, theory
from smdyn.rescale import Rescaler


class _Net(nn.Module):
    """conv1 (bias) → BN → relu → conv2 → BN → relu → fc (bias) → LayerNorm → relu → head.

    Scale-invariant: conv1.weight (BN removes the bias), conv2.weight, fc.weight+fc.bias (jointly, under
    LayerNorm). Not: head.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, bias=True)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(16, 6)
        self.ln = nn.LayerNorm(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        return self.head(F.relu(self.ln(self.fc(h.flatten(1)))))


_UNITS = ["conv1.weight", "conv2.weight", "fc.weight+fc.bias"]


def _batch(t: int, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + t)
    return torch.randn(n, 1, 6, 6, generator=g) * 2 + 0.5, torch.randint(0, 3, (n,), generator=g)


def _loss(model: nn.Module, t: int) -> torch.Tensor:
    x, y = _batch(t)
    return F.cross_entropy(model(x), y)


def _unit_norms(model: nn.Module) -> np.ndarray:
    named = dict(model.named_parameters())
    out = []
    for unit in _UNITS:
        out.append(math.sqrt(sum(float(named[n].detach().double().square().sum()) for n in unit.split("+"))))
    return np.array(out)


def _trained(steps: int = 5, seed: int = 0, dtype: torch.dtype = torch.float32) -> _Net:
    """A net with non-trivial running statistics and a non-zero conv1 bias."""
    torch.manual_seed(seed)
    model = _Net().to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    for t in range(steps):
        opt.zero_grad()
        x, y = _batch(t)
        F.cross_entropy(model(x.to(dtype)), y).backward()
        opt.step()
    return model


def _quiet_rescaler(*args: Any, **kwargs: Any) -> Rescaler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Rescaler(*args, **kwargs)


# ------------------------------------------------------------------------------------- detection


def test_auto_finds_the_invariant_units_and_their_running_statistics() -> None:
    model = _Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-4)
    r = Rescaler(opt, "auto", model=model, example_batch=_batch(0)[0])
    assert r.names == _UNITS
    stats = {u.name: [(n, b) for n, b in u.stats] for u in r._units}
    assert [n for n, _ in stats["conv1.weight"]] == [model.bn1]
    assert stats["conv1.weight"][0][1] is model.conv1.bias  # the bias is not rescaled: mean follows it
    assert stats["conv2.weight"] == [(model.bn2, None)]
    assert stats["fc.weight+fc.bias"] == []  # LayerNorm keeps no running statistics


# ------------------------------------------------------------------------------- model invariance


def _drop(model: nn.Module, k: float, **kwargs: Any) -> Rescaler:
    """Rescale ``model`` for an lr drop by k, without an optimizer step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    r = Rescaler(opt, "auto", model=model, example_batch=_batch(0)[0].to(next(model.parameters()).dtype),
                 hook=False, **kwargs)  # fmt: skip
    r.before_step()
    opt.param_groups[0]["lr"] = 0.1 / k
    r.before_step()
    return r


@pytest.mark.parametrize("k", [10.0, 3.0])
def test_outputs_unchanged_in_train_and_eval_mode_with_tiny_eps(k: float) -> None:
    model = _trained()
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            m.eps = 1e-12
    x = _batch(99)[0]
    ref = copy.deepcopy(model)
    ref.eval()
    with torch.no_grad():
        ref_eval = ref(x)
        ref.train()
        ref_train = ref(x)
    old_mean = model.bn1.running_mean.double().clone()
    bias = model.conv1.bias.detach().double().clone()
    _drop(model, k)
    c = k**-0.25
    np.testing.assert_allclose(_unit_norms(model) / _unit_norms(ref), c, rtol=1e-6)
    model.eval()
    with torch.no_grad():
        out_eval = model(x)
        model.train()
        out_train = model(x)
    torch.testing.assert_close(out_eval, ref_eval, rtol=1e-5, atol=1e-5 * float(ref_eval.abs().max()))
    torch.testing.assert_close(out_train, ref_train, rtol=1e-5, atol=1e-5 * float(ref_train.abs().max()))
    # The mean must follow c·(mean − b) + b: c·mean alone (the bias forgotten) changes the eval output.
    naive = copy.deepcopy(model)
    naive.bn1.running_mean.copy_(old_mean * c)
    naive.eval()
    with torch.no_grad():
        wrong = naive(x)
    assert float((wrong - ref_eval).abs().max()) > 1e-3 * float(ref_eval.abs().max())
    assert float(bias.abs().max()) > 1e-3


def test_running_statistics_follow_the_weights_exactly() -> None:
    model = _trained(dtype=torch.float64)
    before = {n: b.clone() for n, b in model.named_buffers()}
    bias = model.conv1.bias.detach().clone()
    k = 10.0
    _drop(model, k)
    c = k**-0.25
    torch.testing.assert_close(model.bn1.running_var, before["bn1.running_var"] * c**2, rtol=1e-14, atol=0)
    torch.testing.assert_close(model.bn2.running_var, before["bn2.running_var"] * c**2, rtol=1e-14, atol=0)
    torch.testing.assert_close(
        model.bn1.running_mean, c * (before["bn1.running_mean"] - bias) + bias, rtol=1e-13, atol=1e-15
    )
    torch.testing.assert_close(model.bn2.running_mean, before["bn2.running_mean"] * c, rtol=1e-14, atol=0)
    assert model.bn1.num_batches_tracked == before["bn1.num_batches_tracked"]


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_default_eps_changes_the_output_by_the_predicted_amount(mode: str) -> None:
    """With eps not negligible, each channel's output is scaled by √((σ²+eps)/(σ²+eps·√k)) exactly."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, bias=False), nn.BatchNorm2d(3, affine=False)).double()
    x = torch.randn(32, 1, 6, 6, dtype=torch.float64) * 0.1  # small activations: eps = 1e-5 matters
    with torch.no_grad():
        model(x)  # running statistics from this batch (momentum 0.1 on top of var = 1)
        model[1].momentum = None
        model[1].reset_running_stats()
        model(x)  # cumulative average of one batch: running stats = batch stats (var unbiased)
    model.train(mode == "train")
    with torch.no_grad():
        pre = model[0](x)
        out = model(x)
    var = pre.var(dim=(0, 2, 3), unbiased=False) if mode == "train" else model[1].running_var.clone()
    k, eps = 10.0, model[1].eps
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-4)
    r = Rescaler(opt, "auto", model=model, hook=False)
    r.before_step()
    opt.param_groups[0]["lr"] = 0.01
    r.before_step()
    with torch.no_grad():
        new = model(x)
    ratio = (new * out).sum(dim=(0, 2, 3)) / (out * out).sum(dim=(0, 2, 3))  # one factor per channel
    torch.testing.assert_close(new, out * ratio.view(1, -1, 1, 1), rtol=1e-9, atol=1e-12)
    expected = torch.sqrt((var + eps) / (var + eps * math.sqrt(k)))
    torch.testing.assert_close(ratio, expected, rtol=1e-9, atol=0)
    bound = eps * (math.sqrt(k) - 1) / (2 * var)
    assert torch.all((1 - ratio) <= bound)
    assert torch.all((1 - ratio) > 0.5 * bound)  # and of that size: the bound is tight here
    assert float(bound.max()) > 3e-3  # the effect is visible in this test


def test_norms_gradients_and_momentum_buffer_after_a_drop_float64() -> None:
    """‖w‖ × k^-¼ exactly, g × k^¼ (Lemma 1, Eq 4), buffer: tangential ÷ c, radial × c over the unit."""
    model = _trained(dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    r = Rescaler(opt, "auto", model=model, example_batch=_batch(0)[0].double())
    seen: dict[str, Any] = {}

    def after_rescale(o: Any, args: Any, kwargs: Any) -> None:  # appended: runs after the Rescaler
        seen["w"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        seen["g"] = {n: p.grad.clone() for n, p in model.named_parameters()}
        seen["v"] = {n: o.state[p].get("momentum_buffer") for n, p in model.named_parameters()}
        seen["v"] = {n: v if v is None else v.clone() for n, v in seen["v"].items()}

    opt.register_step_pre_hook(after_rescale)
    k = 10.0
    for t in range(4):
        if t == 3:
            opt.param_groups[0]["lr"] = 0.1 / k
        opt.zero_grad()
        x, y = _batch(t)
        F.cross_entropy(model(x.double()), y).backward()
        w = {n: p.detach().clone().numpy() for n, p in model.named_parameters()}
        g = {n: p.grad.clone().numpy() for n, p in model.named_parameters()}
        v = {n: opt.state[p].get("momentum_buffer") for n, p in model.named_parameters()}
        v = {n: b if b is None else b.clone() for n, b in v.items()}
        opt.step()
    c = k**-0.25
    assert [e["step"] for e in r.events] == [3]
    assert r.events[0]["factor"] == pytest.approx(c, rel=1e-15)
    for unit in _UNITS:
        names = unit.split("+")
        wf = np.concatenate([w[n].ravel() for n in names])
        vf = np.concatenate([v[n].numpy().ravel() for n in names])
        mu = float(vf @ wf) / float(wf @ wf)
        v_new = (vf - mu * wf) / c + c * mu * wf
        np.testing.assert_allclose(np.concatenate([seen["v"][n].numpy().ravel() for n in names]), v_new,
                                   rtol=1e-12, atol=1e-15 * np.abs(v_new).max())  # fmt: skip
        new_w = np.concatenate([seen["w"][n].numpy().ravel() for n in names])
        assert np.linalg.norm(new_w) == pytest.approx(np.linalg.norm(wf) * c, rel=1e-14)
        for n in names:
            np.testing.assert_allclose(seen["g"][n].numpy(), g[n] / c, rtol=1e-14)
    # Not scale-invariant: untouched.
    np.testing.assert_array_equal(seen["w"]["head.weight"].numpy(), w["head.weight"])
    np.testing.assert_array_equal(seen["v"]["head.weight"].numpy(), v["head.weight"].numpy())


def test_adamw_factor_is_square_root_and_moments_follow_the_gradients() -> None:
    """AdamW: w* ∝ η^½ (Kosson et al. 2024), so weights × r^½; exp_avg ÷ c, exp_avg_sq ÷ c²."""
    model = _trained(dtype=torch.float64)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05, amsgrad=True)
    r = Rescaler(opt, "auto", model=model, example_batch=_batch(0)[0].double(), hook=False)
    for t in range(3):
        opt.zero_grad()
        x, y = _batch(t)
        F.cross_entropy(model(x.double()), y).backward()
        r.before_step()
        opt.step()
    p = model.conv2.weight
    st = {k: v.clone() for k, v in opt.state[p].items()}
    w = p.detach().clone()
    opt.param_groups[0]["lr"] = 1e-3
    r.before_step()
    c = 0.1**0.5
    assert r.cumulative_factor(0) == pytest.approx(c, rel=1e-15)
    torch.testing.assert_close(p.detach(), w * c, rtol=1e-15, atol=0)
    torch.testing.assert_close(opt.state[p]["exp_avg"], st["exp_avg"] / c, rtol=1e-15, atol=0)
    torch.testing.assert_close(opt.state[p]["exp_avg_sq"], st["exp_avg_sq"] / c**2, rtol=1e-15, atol=0)
    torch.testing.assert_close(
        opt.state[p]["max_exp_avg_sq"], st["max_exp_avg_sq"] / c**2, rtol=1e-15, atol=0
    )
    assert torch.equal(opt.state[p]["step"], st["step"])


# ---------------------------------------------------------------- schedulers × optimizers × modes

_N = 24


def _manual(opt: torch.optim.Optimizer, t: int) -> None:
    """Manual edits before step t: ÷10, ×3, lr 0 (skipped), back to a lower lr, ÷10."""
    base = opt.defaults["lr"]
    edits = {5: base / 10, 9: base * 3 / 10, 12: 0.0, 13: base * 2 / 10, 18: base * 2 / 100}
    if t in edits:
        opt.param_groups[0]["lr"] = edits[t]


_SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer], Any] | None] = {
    "MultiStepLR": lambda o: sch.MultiStepLR(o, [6, 14], 0.1),
    "StepLR": lambda o: sch.StepLR(o, 5, 0.5),
    "LambdaLR": lambda o: sch.LambdaLR(o, lambda s: min(1.0, (s + 1) / 4) * (0.1 if s >= 12 else 1.0)),
    "CosineAnnealingLR": lambda o: sch.CosineAnnealingLR(o, T_max=_N),
    "OneCycleLR": lambda o: sch.OneCycleLR(
        o, max_lr=o.param_groups[0]["lr"], total_steps=_N + 1, cycle_momentum=False
    ),
    "SequentialLR": lambda o: sch.SequentialLR(
        o, [sch.LinearLR(o, 0.1, total_iters=4), sch.MultiStepLR(o, [6], 0.1)], milestones=[4]
    ),
    "ReduceLROnPlateau": lambda o: sch.ReduceLROnPlateau(o, factor=0.1, patience=2),
    "manual": None,
}
_OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=1e-3),
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2),
}


def _expected_factors(lrs: list[float], mode: str, e: float, threshold: float, floor: float) -> list[float]:
    """The rule as specified: the cumulative factor is max((anchor/lr₀)^e, floor), lr₀ the first valid lr.

    The anchor is every valid lr in continuous mode; in drops mode an lr outside
    [(1 − threshold)·anchor, anchor/(1 − threshold)], both ways. Invalid lr (0, non-finite) are skipped.
    """
    out, first, anchor, applied = [], None, None, 1.0
    for lr in lrs:
        factor = 1.0
        if lr > 0 and math.isfinite(lr):
            if first is None:
                first = anchor = lr
            elif mode == "continuous" or not (1 - threshold) * anchor <= lr <= anchor / (1 - threshold):
                anchor = lr
            new = max((anchor / first) ** e, floor)
            factor, applied = new / applied, new
        out.append(factor)
    return out


@pytest.mark.parametrize("mode", ["drops", "continuous"])
@pytest.mark.parametrize("opt_name", list(_OPTIMIZERS))
@pytest.mark.parametrize("sched_name", list(_SCHEDULERS))
def test_every_scheduler_and_optimizer(sched_name: str, opt_name: str, mode: str) -> None:
    torch.manual_seed(0)
    model = _Net()
    opt = _OPTIMIZERS[opt_name](model.parameters())
    make = _SCHEDULERS[sched_name]
    scheduler = make(opt) if make is not None else None
    r = _quiet_rescaler(opt, "auto", model=model, mode=mode)
    lrs, ratios = [], []
    seen: list[np.ndarray] = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append(_unit_norms(model)))  # runs after the Rescaler
    for t in range(_N):
        if scheduler is None:
            _manual(opt, t)
        opt.zero_grad()
        loss = _loss(model, t)
        loss.backward()
        before = _unit_norms(model)
        lrs.append(float(opt.param_groups[0]["lr"]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lr 0 in the manual schedule
            opt.step()
        ratios.append(seen[-1] / before)
        if isinstance(scheduler, sch.ReduceLROnPlateau):
            scheduler.step(1.0)  # never improves: a drop every patience + 1 steps
        elif scheduler is not None:
            scheduler.step()
    e = 0.5 if opt_name == "adamw" else 0.25
    expected = _expected_factors(lrs, mode, e, threshold=0.2, floor=0.1)
    measured = np.array(ratios)
    for i in range(len(_UNITS)):  # every unit of the group gets the group's factor
        np.testing.assert_allclose(measured[:, i], expected, rtol=2e-6)
    assert any(f != 1.0 for f in expected), "the schedule should trigger at least one rescale"
    rescaled = [e["step"] for e in r.events if e["action"] == "rescaled"]
    assert rescaled == [t for t, f in enumerate(expected) if f != 1.0]
    assert r.cumulative_factor(0) == pytest.approx(float(np.prod(expected)), rel=1e-12)
    valid = [(t, lr) for t, lr in enumerate(lrs) if lr > 0]
    jumps = [t for (_, a), (t, b) in itertools.pairwise(valid) if b > 1.3 * a]  # beyond 1/(1 − 0.2)
    up = {e["step"] for e in r.events if e["action"] == "rescaled" and e["factor"] > 1}
    assert set(jumps) <= up  # every large increase scales the weights back up, in both modes


# --------------------------------------------------------------------------------- rule details


def _hookless(
    model: nn.Module | None = None, **kwargs: Any
) -> tuple[Rescaler, torch.optim.Optimizer, nn.Module]:
    model = model if model is not None else _trained(dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    r = Rescaler(opt, "auto", model=model, example_batch=_batch(0)[0].double(), hook=False, **kwargs)
    return r, opt, model


def test_drops_mode_follows_increases_and_skips_zero_and_nonfinite_lr() -> None:
    r, opt, model = _hookless()
    norm0 = _unit_norms(model)
    lrs = [0.1, 0.1, 0.2, 0.3, 0.03, 0.0, math.nan, 0.003, 0.0029, math.inf]
    caught = []
    for lr in lrs:
        opt.param_groups[0]["lr"] = lr
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            r.before_step()
        caught.append([str(x.message) for x in w])
    assert [len(c) for c in caught] == [0, 0, 0, 0, 0, 1, 0, 0, 0, 1]  # one warning per invalid spell
    assert "lr 0.0" in caught[5][0] and "skipped" in caught[5][0]
    acts = [(e["step"], e["action"]) for e in r.events]
    assert acts == [
        (2, "rescaled"),
        (3, "rescaled"),
        (4, "rescaled"),
        (5, "skipped"),
        (7, "rescaled"),
        (9, "skipped"),
    ]
    factors = [e["factor"] for e in r.events if e["action"] == "rescaled"]
    np.testing.assert_allclose(factors, [2**0.25, 1.5**0.25, 0.1**0.25, 0.1**0.25], rtol=1e-13)
    assert r.events[4]["r"] == pytest.approx(0.1)  # 0.003 against the last valid lr, 0.03
    # The closed form (lr/lr₀)^¼ of the last rescale's lr (0.0029 is within the threshold of 0.003):
    np.testing.assert_allclose(_unit_norms(model) / norm0, (0.003 / 0.1) ** 0.25, rtol=1e-13)


def test_continuous_mode_floor() -> None:
    """Cumulative factor max((lr/lr₀)^¼, floor): the norms follow the lr down to the floor, then stop."""
    r, opt, model = _hookless(mode="continuous", floor=0.1)
    norm0 = _unit_norms(model)
    mults = [1, 0.5, 0.1, 1e-3, 1e-5, 1e-6, 1e-4, 1e-2, 1, 2]
    for m in mults:
        opt.param_groups[0]["lr"] = 0.1 * m
        r.before_step()
        want = max(m**0.25, 0.1)
        assert r.cumulative_factor(0) == pytest.approx(want, rel=1e-13)
        np.testing.assert_allclose(_unit_norms(model) / norm0, want, rtol=1e-12)
    actions = [e["action"] for e in r.events]
    assert actions.count("floored") == 2  # 1e-5 → 1e-6 and 1e-6 → 1e-4 change nothing
    # Without the floor the same schedule drives the norms to 1e-6^¼ ≈ 0.03 of their start.
    r2, opt2, model2 = _hookless(mode="continuous", floor=0.0)
    n2 = _unit_norms(model2)
    for m in mults[:6]:
        opt2.param_groups[0]["lr"] = 0.1 * m
        r2.before_step()
    np.testing.assert_allclose(_unit_norms(model2) / n2, 1e-6**0.25, rtol=1e-12)


# ------------------------------------------------------------------------ following the lr both ways


def _closed_form(lrs: list[float], floor: float = 0.1, e: float = 0.25) -> np.ndarray:
    """max((lr_t/lr₀)^e, floor), lr₀ the first positive lr (1 before it)."""
    first = next(lr for lr in lrs if lr > 0)
    return np.array([max((lr / first) ** e, floor) if lr > 0 else 1.0 for lr in lrs])


def _run_schedule(
    make_scheduler: Callable[[torch.optim.Optimizer], Any], steps: int, rescaler: dict[str, Any] | None
) -> tuple[list[float], list[float], list[np.ndarray], Rescaler | None]:
    """Trains a float64 net with SGD(M); returns lr_t, the Rescaler's cumulative factor and the unit norms
    as the step sees them (a pre-hook registered after the Rescaler's)."""
    torch.manual_seed(0)
    model = _Net().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    scheduler = make_scheduler(opt)
    r = None
    if rescaler is not None:
        r = Rescaler(opt, "auto", model=model, example_batch=_batch(0)[0].double(), **rescaler)
    lrs, cums, norms = [], [], []
    opt.register_step_pre_hook(lambda o, a, k: norms.append(_unit_norms(model)))
    for t in range(steps):
        opt.zero_grad()
        x, y = _batch(t)
        F.cross_entropy(model(x.double()), y).backward()
        lrs.append(float(opt.param_groups[0]["lr"]))
        opt.step()
        cums.append(r.cumulative_factor(0) if r is not None else 1.0)
        scheduler.step()
    return lrs, cums, norms, r


def _closed_form_loop(
    make_scheduler: Callable[[torch.optim.Optimizer], Any],
    steps: int,
    factors: Callable[[list[float]], float],
) -> list[np.ndarray]:
    """The same training without a Rescaler: before each step, w ← c·w and g ← g/c by hand, where c takes
    the cumulative factor to ``factors(lrs so far)``; the momentum buffer is kept (``momentum="keep"``)."""
    torch.manual_seed(0)
    model = _Net().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    scheduler = make_scheduler(opt)
    named = dict(model.named_parameters())
    tensors = [named[n] for u in _UNITS for n in u.split("+")]
    lrs, applied, norms = [], 1.0, []
    for t in range(steps):
        opt.zero_grad()
        x, y = _batch(t)
        F.cross_entropy(model(x.double()), y).backward()
        lrs.append(float(opt.param_groups[0]["lr"]))
        cum = factors(lrs)
        with torch.no_grad():
            for p in tensors:
                p.mul_(cum / applied)
                p.grad.div_(cum / applied)
        applied = cum
        norms.append(_unit_norms(model))
        opt.step()
        scheduler.step()
    return norms


def _warm_up_then_drop(o: torch.optim.Optimizer) -> Any:
    return sch.ChainedScheduler([sch.LinearLR(o, 0.1, 1.0, total_iters=5), sch.MultiStepLR(o, [10], 0.1)])


def _cosine_restarts(o: torch.optim.Optimizer) -> Any:
    return sch.CosineAnnealingWarmRestarts(o, T_0=8, eta_min=1e-3)


@pytest.mark.parametrize("mode", ["continuous", "drops"])
def test_warm_up_then_drop_scales_up_then_back(mode: str) -> None:
    """LinearLR 0.1 → 1 over 5 steps, then ÷10 at step 10: the lr is back at lr₀, and so is the factor."""
    lrs, cums, norms, _ = _run_schedule(_warm_up_then_drop, 14, {"mode": mode, "momentum": "keep"})
    np.testing.assert_allclose(lrs[:6], [0.01, 0.028, 0.046, 0.064, 0.082, 0.1], rtol=1e-12)
    closed = _closed_form(lrs)
    if mode == "continuous":
        np.testing.assert_allclose(cums, closed, rtol=1e-12)
    else:  # the factor follows within the threshold band, never further from the closed form
        band = -0.25 * math.log(1 - 0.2)
        assert np.all(np.abs(np.log(cums) - np.log(closed)) <= band + 1e-12)
        np.testing.assert_allclose(cums, np.cumprod(_expected_factors(lrs, mode, 0.25, 0.2, 0.1)), rtol=1e-12)
        assert cums[8] == pytest.approx((0.082 / 0.01) ** 0.25, rel=1e-12)  # 0.082 → 0.1 is within it
    assert max(cums) > 1.5  # scaled up during the warm-up: (0.1/0.01)^¼ ≈ 1.78
    assert cums[10:] == pytest.approx([1.0] * 4, rel=1e-12)  # lr back at lr₀: the weights' factor is 1 again
    factors = lambda seen: float(np.prod(_expected_factors(seen, mode, 0.25, 0.2, 0.1)))  # noqa: E731
    np.testing.assert_allclose(norms, _closed_form_loop(_warm_up_then_drop, 14, factors), rtol=1e-10)


@pytest.mark.parametrize("mode", ["continuous", "drops"])
def test_cosine_with_restarts_returns_to_the_start_every_cycle(mode: str) -> None:
    lrs, cums, norms, r = _run_schedule(_cosine_restarts, 33, {"mode": mode, "momentum": "keep"})
    starts = [0, 8, 16, 24, 32]
    np.testing.assert_allclose([lrs[t] for t in starts], 0.1, rtol=1e-12)
    assert [cums[t] for t in starts] == pytest.approx([1.0] * 5, rel=1e-12)  # no ratchet, cycle after cycle
    assert min(cums) < 0.5  # the cosine's low end: (1e-3/0.1)^¼ ≈ 0.32 at most
    if mode == "continuous":
        np.testing.assert_allclose(cums, _closed_form(lrs), rtol=1e-12)
        factors = lambda seen: float(_closed_form(seen)[-1])  # noqa: E731
    else:
        factors = lambda seen: float(np.prod(_expected_factors(seen, mode, 0.25, 0.2, 0.1)))  # noqa: E731
    ups = [e for e in r.events if e["action"] == "rescaled" and e["factor"] > 1]
    assert [e["step"] for e in ups] == [8, 16, 24, 32]  # each restart scales the weights back up
    np.testing.assert_allclose(norms, _closed_form_loop(_cosine_restarts, 33, factors), rtol=1e-10)


@pytest.mark.parametrize("mode", ["continuous", "drops"])
def test_warm_up_from_zero_starts_at_the_first_positive_lr(mode: str) -> None:
    """lr 0 at the first step: no warning, no division by 0; the rule starts at lr = 0.025."""
    warm = lambda o: sch.LambdaLR(o, lambda s: min(s / 4, 1.0))  # noqa: E731
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lrs, cums, norms, r = _run_schedule(warm, 8, {"mode": mode})
    assert [w for w in caught if issubclass(w.category, RuntimeWarning)] == []
    assert lrs[:5] == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1])
    assert all(np.isfinite(n).all() for n in norms) and np.isfinite(cums).all()
    np.testing.assert_allclose(cums, _closed_form(lrs), rtol=1e-12)  # (lr/0.025)^¼, 1 before the start
    assert cums[-1] == pytest.approx(4**0.25, rel=1e-12)
    assert all(e["action"] == "rescaled" for e in r.events)


@pytest.mark.parametrize("hook", [True, False])
def test_an_error_inside_the_step_becomes_one_warning_and_the_rescaler_goes_idle(hook: bool) -> None:
    torch.manual_seed(0)
    model = _Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-3)
    scheduler = sch.MultiStepLR(opt, [2, 4], 0.1)
    r = Rescaler(opt, "auto", model=model, hook=hook)
    if not hook:  # as the Lightning callback drives it
        opt.register_step_pre_hook(lambda o, a, k: r.before_step())

    def broken(units: Any, c: float) -> None:
        raise RuntimeError("device lost")

    r._rescale = broken  # type: ignore[method-assign]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for t in range(6):
            opt.zero_grad()
            _loss(model, t).backward()
            w = model.conv2.weight.detach().clone()
            opt.step()  # never raises
            assert not torch.equal(w, model.conv2.weight)  # and the step was taken
            scheduler.step()
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "device lost" in messages[0] and "idle" in messages[0]
    assert "step 2" in messages[0]
    assert r._closed and r.step == 2  # the drop at step 4 was not followed
    if hook:
        assert len(opt._optimizer_step_pre_hooks) == 0


def test_close_and_context_manager_stop_rescaling() -> None:
    torch.manual_seed(0)
    model = _Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-3)
    with Rescaler(opt, "auto", model=model) as r:
        assert len(opt._optimizer_step_pre_hooks) == 1
    assert len(opt._optimizer_step_pre_hooks) == 0
    r.close()  # twice is fine
    for t, lr in enumerate([0.1, 0.01]):
        opt.param_groups[0]["lr"] = lr
        opt.zero_grad()
        _loss(model, t).backward()
        opt.step()
    assert r.events == [] and r.step == 0


# ------------------------------------------------------------------------------------ refusals


def test_refuses_what_detection_does_not_show_invariant() -> None:
    model = _Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-3)
    with pytest.raises(ValueError, match=r"'head.weight' is not scale-invariant"):
        Rescaler(opt, ["head.weight"], model=model)
    with pytest.raises(ValueError, match="jointly"):
        Rescaler(opt, ["fc.weight"], model=model)
    with pytest.warns(UserWarning, match="force=True"):
        r = Rescaler(opt, ["head.weight", "conv2.weight"], model=model, force=True)
    assert r.names == ["head.weight", "conv2.weight"]
    ok = Rescaler(opt, [("w", model.fc.weight), ("b", model.fc.bias)], model=model)
    assert ok.names == ["fc.weight+fc.bias"]
    assert Rescaler(opt, ["fc.weight+fc.bias", "conv1.weight"], model=model).names == [
        "fc.weight+fc.bias",
        "conv1.weight",
    ]


def test_bad_arguments() -> None:
    model = _Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-3)
    with pytest.raises(ValueError, match="needs model"):
        Rescaler(opt, "auto")
    with pytest.raises(ValueError, match="model is needed"):
        Rescaler(opt, [("w", model.conv1.weight)])
    with pytest.warns(UserWarning, match="without model"):
        Rescaler(opt, [("w", model.conv1.weight)], force=True)
    with pytest.raises(ValueError, match="params"):
        Rescaler(opt, "all", model=model)
    with pytest.raises(ValueError, match="params"):
        Rescaler(opt, [], model=model)
    with pytest.raises(TypeError, match="params"):
        Rescaler(opt, [3], model=model)
    with pytest.raises(ValueError, match="not a parameter"):
        Rescaler(opt, ["nope.weight"], model=model)
    with pytest.raises(ValueError, match="does not belong"):
        Rescaler(opt, [("w", nn.Parameter(torch.ones(2)))], model=model)
    with pytest.raises(ValueError, match="twice"):
        Rescaler(opt, ["conv1.weight", "conv1.weight"], model=model)
    with pytest.raises(ValueError, match="mode"):
        Rescaler(opt, "auto", model=model, mode="smooth")  # type: ignore[arg-type]
    for bad in (-0.1, 1.0, True):
        with pytest.raises(ValueError, match="threshold"):
            Rescaler(opt, "auto", model=model, threshold=bad)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="floor"):
            Rescaler(opt, "auto", model=model, floor=bad)
    with pytest.raises(ValueError, match="momentum"):
        Rescaler(opt, "auto", model=model, momentum="zero")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="optimizer"):
        Rescaler("sgd", "auto", model=model)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="RMSprop"):
        Rescaler(torch.optim.RMSprop(model.parameters()), "auto", model=model)
    with pytest.raises(TypeError, match="L2"):
        Rescaler(torch.optim.Adam(model.parameters(), weight_decay=1e-3), "auto", model=model)
    head_only = torch.optim.SGD(model.head.parameters(), lr=0.1, weight_decay=1e-3)
    with pytest.raises(ValueError, match="not in the optimizer"):
        Rescaler(head_only, ["conv2.weight"], model=model)
    with pytest.raises(ValueError, match="found no scale-invariant"):
        Rescaler(head_only, "auto", model=model)
    split = torch.optim.SGD(
        [{"params": [model.fc.weight]}, {"params": [model.fc.bias], "weight_decay": 0.0}],
        lr=0.1,
        weight_decay=1e-3,
    )
    with pytest.raises(ValueError, match="different param groups"):
        Rescaler(split, ["fc.weight+fc.bias"], model=model)
    with pytest.warns(UserWarning, match="weight_decay 0"):
        Rescaler(torch.optim.SGD(model.parameters(), lr=0.1), "auto", model=model)


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, bias=False)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 1e9:  # data-dependent control flow: torch.fx cannot trace it
            x = x * 0
        return self.bn(self.conv(x)).flatten(1)


def test_untraceable_model_needs_example_batch() -> None:
    model = _Untraceable()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-3)
    with pytest.raises(ValueError, match="example_batch"):
        Rescaler(opt, "auto", model=model)
    with pytest.raises(ValueError, match="example_batch"):
        Rescaler(opt, ["conv.weight"], model=model)
    r = Rescaler(opt, "auto", model=model, example_batch=torch.randn(4, 1, 5, 5))
    assert r.names == ["conv.weight"]
    assert r._units[0].stats == [(model.bn, None)]


# ------------------------------------------------------------------------------------ hook order


@pytest.mark.parametrize("monitor_first", [True, False])
def test_monitor_records_the_step_actually_taken(monitor_first: bool) -> None:
    """The rescale runs before the monitor's measurement whatever the attach order (Sec 4.2 + Def 3)."""
    torch.manual_seed(0)
    model = _Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    make_mon = lambda: SphericalMonitor(model, opt, params=["conv2.weight"], window=2)  # noqa: E731
    if monitor_first:
        mon = make_mon()
        r = Rescaler(opt, "auto", model=model)
    else:
        r = Rescaler(opt, "auto", model=model)
        mon = make_mon()
    assert next(iter(opt._optimizer_step_pre_hooks.values())) == r._pre_hook
    scheduler = sch.MultiStepLR(opt, [3], 0.1)
    brute, norms = [], []
    for t in range(5):
        opt.zero_grad()
        _loss(model, t).backward()
        before = model.conv2.weight.detach().double().clone()
        opt.step()
        factor = next((e["factor"] for e in r.events if e["step"] == t), 1.0)
        rescaled = before * factor
        brute.append(float(geometry.angle(rescaled, model.conv2.weight.detach().double())))
        norms.append(float(rescaled.norm()))
        scheduler.step()
    h = mon.history()
    mon.close()
    assert [e["step"] for e in r.events] == [3]
    np.testing.assert_allclose(h["angular_update"], brute, rtol=1e-6)
    np.testing.assert_allclose(h["weight_norm"], norms, rtol=1e-6)


def test_a_rescale_hooked_after_the_monitor_still_runs_before_its_measurement() -> None:
    """The monitor keeps its pre-hook last, so a rescale hooked after it is measured too (Sec 4.2, Def 3).

    Without that, the drop step would be described from the unscaled weights (‖w‖ off by k^¼). On the first
    step the hook runs after the monitor's, which records that step as not measured.
    """
    torch.manual_seed(0)
    model = _Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    mon = SphericalMonitor(model, opt, params=["conv2.weight"], window=2)
    r = Rescaler(opt, "auto", model=model, hook=False)
    opt.register_step_pre_hook(lambda o, a, k: r.before_step())  # registered after the monitor
    scheduler = sch.MultiStepLR(opt, [3], 0.1)
    brute, norms = [], []
    for t in range(4):
        opt.zero_grad()
        _loss(model, t).backward()
        before = model.conv2.weight.detach().double().clone()
        factor = 0.1**0.25 if t == 3 else 1.0  # what the rescale does to w before the step
        opt.step()
        brute.append(float(geometry.angle(before * factor, model.conv2.weight.detach().double())))
        norms.append(float(before.norm()) * factor)
        scheduler.step()
    h = mon.history()
    mon.close()
    assert [e["step"] for e in r.events] == [3]
    assert list(h["reason_code"][:1]) == ["not_measured"]
    np.testing.assert_allclose(h["angular_update"][1:], brute[1:], rtol=1e-6)
    np.testing.assert_allclose(h["weight_norm"][1:], norms[1:], rtol=1e-6)


# ------------------------------------------------------------------------------------ resumption


def _run(steps: range, state: bytes | None, load_rescaler: bool = True) -> tuple[_Net, bytes]:
    torch.manual_seed(123 if state is None else 456)  # a resumed run must not depend on the seed
    model = _Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    scheduler = sch.MultiStepLR(opt, [4, 10], 0.1)
    r = Rescaler(opt, "auto", model=model)
    if state is not None:
        s = torch.load(io.BytesIO(state), weights_only=True)
        model.load_state_dict(s["model"])
        opt.load_state_dict(s["optimizer"])
        scheduler.load_state_dict(s["scheduler"])
        if load_rescaler:
            r.load_state_dict(s["rescaler"])
    for t in steps:
        opt.zero_grad()
        _loss(model, t).backward()
        opt.step()
        scheduler.step()
    buf = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rescaler": r.state_dict(),
        },
        buf,
    )
    return model, buf.getvalue()


def test_state_dict_round_trip_continues_bit_identically() -> None:
    straight, _ = _run(range(14), None)
    _, saved = _run(range(10), None)  # lr drops at the start of step 10: right after the resume
    resumed, _ = _run(range(10, 14), saved)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # Control: without the Rescaler's state the drop at step 10 is not seen, and the runs differ.
    forgetful, _ = _run(range(10, 14), saved, load_rescaler=False)
    assert not torch.equal(straight.conv2.weight, forgetful.conv2.weight)


def test_load_state_dict_checks_what_it_loads() -> None:
    model = _Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-3)
    state = Rescaler(opt, "auto", model=model).state_dict()
    other = Rescaler(opt, ["conv1.weight"], model=model)
    with pytest.raises(ValueError, match="parameters"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="mode"):
        Rescaler(opt, "auto", model=model, mode="continuous").load_state_dict(state)


# ------------------------------------------------------------------ momentum buffer: the experiment


def _vector_model(
    lrs: list[float], wd: float, a: float, momentum: str | None, L: float = 1.0
) -> tuple[np.ndarray, float]:
    """torch.optim.SGD on one vector with g ⟂ (w, v) and ‖g‖² = L/‖w‖² (fresh orthogonal axis each step),
    started at the equilibrium of lrs[0]: the noiseless model of docs/design.md §2, by brute force.

    Returns Δ_t and the exact equilibrium Δ of lrs[-1] (cos Δ = 1 − λη/(1+α), fixed point of that model).
    """
    eta = lrs[0]
    x = math.sqrt(L * eta / (wd * (1 - a) * (2 - wd * eta / (1 + a))))  # ‖w*‖² (Thm 2)
    wv = wd * x / (1 + a)  # at the fixed point 2⟨w, v'⟩ = η‖v'‖² and ⟨w, v'⟩ = α⟨w, v⟩ + λ‖w‖²
    y, z = 2 * wv / eta, -wv
    dim = len(lrs) + 2
    w = torch.zeros(dim, dtype=torch.float64)
    w[0] = math.sqrt(x)
    v = torch.zeros(dim, dtype=torch.float64)
    v[0], v[1] = z / math.sqrt(x), math.sqrt(y - z * z / x)
    p = nn.Parameter(w)
    opt = torch.optim.SGD([p], lr=eta, momentum=a, weight_decay=wd)
    opt.state[p]["momentum_buffer"] = v
    if momentum is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Rescaler(opt, [("w", p)], force=True, momentum=momentum)  # type: ignore[arg-type]
    deltas = []
    for t, lr in enumerate(lrs):
        opt.param_groups[0]["lr"] = lr
        g = torch.zeros(dim, dtype=torch.float64)
        g[t + 2] = math.sqrt(L) / float(p.detach().norm())
        p.grad = g
        before = p.detach().clone()
        opt.step()
        deltas.append(float(geometry.angle(before, p.detach())))
    u = wd * lrs[-1] / (1 + a)
    return np.array(deltas), math.atan2(math.sqrt(u * (2 - u)), 1 - u)


def test_momentum_buffer_choice_in_the_noiseless_model() -> None:
    """At α = 0.9, k = 10: 'split' is at the new equilibrium at once, 'scale' within 0.3%, 'keep' 33% off."""
    lr, wd, a, k = 0.1, 1e-2, 0.9, 10.0
    lrs = [lr] * 3 + [lr / k] * 60
    held, ref_old = _vector_model([lr] * 3, wd, a, None)
    np.testing.assert_allclose(held, ref_old, rtol=1e-9)  # the start is the equilibrium
    dev = {}
    for choice in ("split", "scale", "keep", None):
        deltas, ref = _vector_model(lrs, wd, a, choice)
        dev[choice] = np.abs(deltas[3:] / ref - 1)
    assert dev["split"].max() < 2e-4
    assert 1e-3 < dev["scale"].max() < 3e-3
    assert dev["keep"][0] == pytest.approx(1 - 0.668, abs=0.01)
    assert dev["keep"].max() > 0.3
    assert dev[None][0] == pytest.approx(1 - k**-0.5, abs=0.01)  # no rescale: Δ/Δ*_new = k^-½


@pytest.mark.slow
def test_momentum_buffer_choice_on_a_real_network() -> None:
    """A BatchNorm CNN at equilibrium, lr ÷ 10: keeping the buffer starts ~30% low; 'scale' ≈ 'split'."""
    torch.manual_seed(0)
    x_all = torch.randn(2048, 1, 8, 8)
    teacher = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 4))
    with torch.no_grad():
        y_all = teacher(x_all).argmax(1)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Linear(128, 4),
    )  # fmt: skip
    lr, wd, a, k = 0.1, 5e-3, 0.9, 10.0
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=a, weight_decay=wd)
    gen = torch.Generator().manual_seed(1)
    for _ in range(1500):  # (1−α)/(2λη) = 100 steps: equilibrium well before the end
        idx = torch.randint(0, 2048, (64,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x_all[idx]), y_all[idx]).backward()
        opt.step()
    snap_m, snap_o = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    star_new = math.sqrt(2 * wd * lr / k / (1 + a))
    ratios: dict[str, np.ndarray] = {}
    for choice in ("split", "scale", "keep"):
        model.load_state_dict(snap_m)
        opt.load_state_dict(copy.deepcopy(snap_o))  # load_state_dict keeps references: copy
        r = Rescaler(opt, ["0.weight", "3.weight"], model=model, momentum=choice)  # type: ignore[arg-type]
        opt.param_groups[0]["lr"] = lr / k
        gen = torch.Generator().manual_seed(2)
        out = []
        for _ in range(20):
            idx = torch.randint(0, 2048, (64,), generator=gen)
            opt.zero_grad()
            F.cross_entropy(model(x_all[idx]), y_all[idx]).backward()
            before = [model[0].weight.detach().double().clone(), model[3].weight.detach().double().clone()]
            opt.step()
            out.append([float(geometry.angle(b, m.weight.detach().double())) for b, m in
                        zip(before, (model[0], model[3]), strict=True)])  # fmt: skip
        r.close()
        ratios[choice] = np.array(out) / star_new
    first3 = {c: v[:3].mean() for c, v in ratios.items()}
    print({c: round(float(v), 4) for c, v in first3.items()})
    assert first3["keep"] / first3["split"] < 0.85
    assert abs(first3["scale"] / first3["split"] - 1) < 0.03
    assert 0.7 < first3["split"] < 1.4


# -------------------------------------------------------------------------------------- Lightning


@pytest.mark.slow
def test_lightning_callback_matches_the_plain_loop_and_resumes(tmp_path) -> None:
    pl = pytest.importorskip("lightning.pytorch", reason="Lightning is not installed (pip install lightning)")
    from smdyn.integrations.lightning import RescalerCallback

    xs = torch.cat([_batch(t, 8)[0] for t in range(4)])  # one epoch = 4 steps
    ys = torch.cat([_batch(t, 8)[1] for t in range(4)])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xs, ys), batch_size=8)
    milestones = [2, 4]  # the drop at 4 comes right after the resume below

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _Net()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return F.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sch.MultiStepLR(opt, milestones, 0.1),
                                                        "interval": "step"}}  # fmt: skip

    def fit(steps: int, ckpt: str | None = None) -> tuple[Any, Any, Any]:
        torch.manual_seed(0)
        module, callback = Module(), RescalerCallback()
        trainer = pl.Trainer(
            max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
            default_root_dir=tmp_path,
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(module, loader, ckpt_path=ckpt)
        return module, callback, trainer

    module, callback, _ = fit(8)
    (r,) = callback.rescalers
    assert [e["step"] for e in r.events if e["action"] == "rescaled"] == milestones
    assert callback.state_dict()["rescalers"][0]["step"] == 8

    torch.manual_seed(0)
    net = _Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    scheduler = sch.MultiStepLR(opt, milestones, 0.1)
    Rescaler(opt, "auto", model=net)
    for t in range(8):
        b = t % 4
        opt.zero_grad()
        F.cross_entropy(net(xs[8 * b : 8 * b + 8]), ys[8 * b : 8 * b + 8]).backward()
        opt.step()
        scheduler.step()
    for (name, a), b in zip(net.state_dict().items(), module.net.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)

    # A Lightning checkpoint after one epoch, resumed: the Rescaler's state comes back with it.
    _, _, half = fit(4)
    half.save_checkpoint(tmp_path / "half.ckpt")
    _, resumed_cb, _ = fit(8, str(tmp_path / "half.ckpt"))
    assert resumed_cb.rescalers[0].state_dict() == r.state_dict()  # (Lightning's own resume is not exact)
    # Control: without the callback's state the resumed run misses the drop at step 4.
    ckpt = torch.load(tmp_path / "half.ckpt", weights_only=False)
    assert ckpt["callbacks"].pop("RescalerCallback")["rescalers"][0]["step"] == 4
    torch.save(ckpt, tmp_path / "stripped.ckpt")
    _, forgetful, _ = fit(8, str(tmp_path / "stripped.ckpt"))
    assert [e["step"] for e in forgetful.rescalers[0].events if e["action"] == "rescaled"] == []
    # A state for other optimizers: one warning, and the callback stops rather than abort the fit.
    with pytest.warns(RuntimeWarning, match="idle .*0 rescaler states, the module has 1 optimizers"):
        resumed_cb.load_state_dict({"rescalers": []})
    assert resumed_cb.state_dict() == {}


def test_lightning_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import smdyn.integrations.lightning as integration

    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, name, None)  # import of it raises ImportError
    monkeypatch.setattr(integration, "_BUILT", {})
    with pytest.raises(ImportError, match=r"pip install smdyn\[lightning\]"):
        integration.RescalerCallback  # noqa: B018
    with pytest.raises(AttributeError):
        integration.MonitorCallbackThatDoesNotExist  # noqa: B018


def test_adamw_rescale_in_the_random_walk_model() -> None:
    """Kosson et al.'s model: g ⟂ w, ∝ 1/‖w‖, random. Weights × r^½ with the moments scaled: at the new
    equilibrium at once; keeping the moments overshoots for ~1/(1−β₂) steps."""
    torch.manual_seed(0)
    n, dim, lr, wd, k = 8, 256, 1e-2, 0.1, 10.0

    def grad(w: torch.Tensor) -> torch.Tensor:
        xi = torch.randn_like(w)
        sq = (w * w).sum(1, keepdim=True)
        return (xi - (xi * w).sum(1, keepdim=True) / sq * w) / sq.sqrt()

    p = nn.Parameter(torch.randn(n, dim, dtype=torch.float64))
    opt = torch.optim.AdamW([p], lr=lr, weight_decay=wd)
    for _ in range(5000):  # 1/(2λη) = 500 steps per e-fold, and the second moment's memory of 1000
        p.grad = grad(p.detach())
        opt.step()
    snap_w, snap_o = p.detach().clone(), copy.deepcopy(opt.state_dict())
    star_new = float(theory.adamw_angular_update(lr / k, wd, 0.9))
    rms = {}
    for choice in ("split", "keep", None):
        torch.manual_seed(1)
        with torch.no_grad():
            p.copy_(snap_w)
        opt.load_state_dict(copy.deepcopy(snap_o))
        r = None if choice is None else _quiet_rescaler(opt, [("w", p)], force=True, momentum=choice)
        opt.param_groups[0]["lr"] = lr / k
        out = []
        for _ in range(200):
            p.grad = grad(p.detach())
            before = p.detach().clone()
            opt.step()
            out.append(geometry.angle(before, p.detach(), per_channel=True).numpy() / star_new)
        if r is not None:
            r.close()
        rms[choice] = float(np.sqrt(np.mean(np.square(out))))
    print(rms)
    assert abs(rms["split"] - 1) < 0.05
    assert rms["keep"] > 1.5
    assert rms[None] == pytest.approx(k**-0.5, rel=0.1)
