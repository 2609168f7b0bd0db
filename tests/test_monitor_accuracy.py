"""The monitor's angle against a float64 reference, for steps from 1e-7 to 1 rad, tangential and radial.

A stand-in optimizer moves each weight to a prescribed w_{t+1}; the monitor measures the step from its
snapshot (batched for same-shaped tensors, one at a time for large ones). The reference is the float64 angle
between the float32 vectors actually stored before and after.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from smdyn import SphericalMonitor


class _MoveTo(torch.optim.Optimizer):
    """Sets each parameter to the next prescribed value: a step of exactly known geometry."""

    def __init__(self, params: list[nn.Parameter], targets: list[torch.Tensor]) -> None:
        super().__init__(params, {"lr": 1.0})
        self.targets = targets

    @torch.no_grad()
    def step(self, closure=None):
        for p, t in zip(self.param_groups[0]["params"], self.targets, strict=True):
            p.copy_(t)


def _angle64(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    return 2 * math.atan2(np.linalg.norm(a - b), np.linalg.norm(a + b))


def _rotated(w: torch.Tensor, angle: float, radial: float, gen: torch.Generator) -> torch.Tensor:
    """w turned by ``angle`` toward a random orthogonal direction, its norm scaled by ``radial``."""
    x = w.double().flatten()
    u = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    u -= (u @ x) / (x @ x) * x
    u *= x.norm() / u.norm()
    y = (math.cos(angle) * x + math.sin(angle) * u) * radial
    return y.reshape(w.shape).float()


@pytest.mark.parametrize("numel", [64, 4096, 100_000])  # batched groups, and the one-at-a-time path
@pytest.mark.parametrize("radial", [1.0, 1.0 - 1e-3, 0.5])  # tangential, slightly and mostly radial
def test_angle_matches_float64_from_1e_minus_7_to_1(numel: int, radial: float) -> None:
    gen = torch.Generator().manual_seed(0)
    angles = [1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    params = [nn.Parameter(torch.randn(numel, generator=gen)) for _ in angles]
    model = nn.Module()
    for i, p in enumerate(params):
        model.register_parameter(f"w{i}", p)
    targets = [_rotated(p.detach(), a, radial, gen) for p, a in zip(params, angles, strict=True)]
    opt = _MoveTo(params, targets)
    mon = SphericalMonitor(model, opt, params=[f"w{i}" for i in range(len(angles))])
    before = [p.detach().double().numpy().copy() for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    mon.close()
    got = mon.history()["angular_update"]
    for i, a in enumerate(angles):
        want = _angle64(before[i], params[i].detach().double().numpy())
        assert abs(want / a - 1) < 0.2  # the stored float32 vectors are turned by about the prescribed angle
        # Tangential: relative 2e-6. A radial part d_r adds the rounding of d once more: ≲ ε‖d_r‖/‖w‖.
        atol = 1.2e-7 * abs(1 - radial)
        assert got[i] == pytest.approx(want, rel=2e-6, abs=atol), (a, radial, numel)
