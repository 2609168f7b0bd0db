"""The monitor under schedules: ‖g‖/‖w‖ against its steady state, and the two transients it names —
rotating far above equilibrium early on (``rotation_excess``) and lagging a decaying lr (``schedule_lag``).

Synthetic scale-invariant weights: each step's gradient is a fresh Gaussian direction orthogonal to w, of
norm 1/‖w‖ (‖g̃‖ = 1), which is what a scale-invariant loss hands the optimizer (Lemma 1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from smdyn import SphericalMonitor

DIM, N = 1024, 8
LR, WD, MOM = 0.05, 5e-3, 0.9  # relaxation (1−α)/(2ηλ) = 200 steps


def _weights(norm: float, seed: int = 0) -> tuple[nn.Module, list[nn.Parameter], torch.Generator]:
    gen = torch.Generator().manual_seed(seed)
    model = nn.Module()
    params = []
    for i in range(N):
        w = torch.randn(DIM, generator=gen, dtype=torch.float64)
        p = nn.Parameter(w * (norm / w.norm()))
        model.register_parameter(f"w{i}", p)
        params.append(p)
    return model, params, gen


def _grads(params: list[nn.Parameter], gen: torch.Generator) -> None:
    for p in params:
        w = p.detach()
        r = torch.randn(DIM, generator=gen, dtype=torch.float64)
        r -= (r @ w) / (w @ w) * w
        p.grad = r / r.norm() / w.norm()


def _run(norm: float, steps: int, lr_at=lambda t: LR) -> dict[str, np.ndarray]:
    model, params, gen = _weights(norm)
    opt = torch.optim.SGD(params, lr=LR, momentum=MOM, weight_decay=WD)
    mon = SphericalMonitor(model, opt, params=[f"w{i}" for i in range(N)], window=50)
    for t in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(t)
        _grads(params, gen)
        opt.step()
    mon.close()
    return mon.history()


def _equilibrium_norm() -> float:
    """(w*)⁴ = ηL/(2λ(1−α)) with L = ‖g̃‖² = 1 (Thm 2 for uncorrelated gradients), written out here."""
    return (LR / (2 * WD * (1 - MOM))) ** 0.25


def test_grad_to_weight_ratio_is_measured_and_matches_its_steady_state() -> None:
    h = _run(_equilibrium_norm(), 1500)
    late = h["step"] >= 1000
    measured = h["grad_to_weight_ratio"][late]
    # ‖g‖/‖w‖ = ‖g̃‖/‖w‖² = 1/‖w‖² here, from the recorded norm
    np.testing.assert_allclose(measured, 1 / h["weight_norm"][late] ** 2, rtol=1e-9)
    steady = math.sqrt(2 * WD * (1 - MOM) / LR)  # = 1/(w*)²: closed form written here
    np.testing.assert_allclose(h["theory_grad_to_weight_ratio"][late], steady, rtol=1e-12)
    assert np.mean(measured) / steady == pytest.approx(1.0, abs=0.03)
    assert set(h["reason_code"][late]) == {""}  # in equilibrium: no transient is named


def test_a_small_initial_norm_rotates_above_equilibrium_and_is_named() -> None:
    h = _run(_equilibrium_norm() / 4, 1500)  # Δ starts ~16× Δ* (Δ ∝ 1/‖w‖²)
    first = h["step"] < 40
    late = h["step"] >= 1200
    ratio = h["angular_update_rms"] / h["theory_angular_update"]
    early = first & (h["step"] >= 10)
    assert np.all(ratio[early] > 2)
    assert set(h["reason_code"][early]) == {"rotation_excess"}
    assert np.all(np.isfinite(h["theory_angular_update"][first]))  # the theory is kept beside the reason
    assert not h["in_equilibrium"][first].any()
    assert set(h["reason_code"][late]) == {""}


def test_a_weight_lagging_a_decaying_lr_is_named_and_a_held_lr_is_not() -> None:
    def cosine_tail(t: int) -> float:  # constant for 1000 steps, then a cosine decay to 5% in 300
        if t < 1000:
            return LR
        return LR * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t - 1000, 300) / 300)))

    h = _run(_equilibrium_norm(), 1300, cosine_tail)
    tail = h["step"] >= 1250
    ratio = h["angular_update_rms"] / h["theory_angular_update"]
    assert np.all(ratio[tail] < 0.8)  # the norm cannot shrink as fast as η^¼ asks
    assert set(h["reason_code"][tail]) == {"schedule_lag"}
    # ‖g‖/‖w‖ rises as the steady state does, but lags below it
    before = h["grad_to_weight_ratio"][(h["step"] >= 900) & (h["step"] < 1000)].mean()
    assert h["grad_to_weight_ratio"][tail].mean() > before
    assert np.all(h["grad_to_weight_ratio"][tail] < h["theory_grad_to_weight_ratio"][tail])
    held = (h["step"] >= 800) & (h["step"] < 1000)
    assert set(h["reason_code"][held]) == {""}
