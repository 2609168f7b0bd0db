"""Per-channel theory for every rule: each output row of a weight against its own equilibrium.

Synthetic matrices whose loss is invariant to each row's scale (gradients orthogonal to every row, fresh
noise each step), trained by the real optimizer for 6 relaxation times; the monitor, with
``granularity="channel"``, must report each row's Δ* and w*, and the rows must sit on them on average."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from smdyn import SphericalMonitor

ROWS, COLS, N = 16, 64, 12


def _train(make_opt, lr: float, wd: float, steps: int, row_norm: float) -> dict[str, np.ndarray]:
    """Rows start at ``row_norm`` (near equilibrium: 6 relaxation times then leave < 1% of the start)."""
    gen = torch.Generator().manual_seed(0)
    model = nn.Module()
    params = []
    for i in range(N):
        w = torch.randn(ROWS, COLS, generator=gen)
        p = nn.Parameter(w * (row_norm / w.norm(dim=1, keepdim=True)))
        model.register_parameter(f"w{i}", p)
        params.append(p)
    opt = make_opt(params, lr, wd)
    mon = SphericalMonitor(
        model,
        opt,
        params=[f"w{i}" for i in range(N)],
        granularity="channel",
        window=100,
        flush_every=50,
        history_rows=None,
    )
    for _ in range(steps):
        for p in params:
            w = p.detach()
            r = torch.randn(ROWS, COLS, generator=gen)
            r -= (r * w).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True) * w  # ⟂ every row
            p.grad = r / w.norm(dim=1, keepdim=True)
        opt.step()
    mon.close()
    return mon.history()


@pytest.mark.parametrize("rule", ["adamw", pytest.param("muon", marks=pytest.mark.slow)])
def test_every_row_has_its_theory_and_sits_on_it(rule: str) -> None:
    if rule == "adamw":
        lr, wd = 2e-3, 0.5

        def make(ps, lr, wd):
            return torch.optim.AdamW(ps, lr=lr, weight_decay=wd, betas=(0.9, 0.99))

        # Kosson et al.: Δ* = √(2ηλ(1−β₁)/(1+β₁)), w*_row = √(η·COLS/(2λ)): written here
        star, norm_star = math.sqrt(2 * lr * wd * 0.1 / 1.9), math.sqrt(lr * COLS / (2 * wd))
    else:
        lr, wd = 0.02, 0.05

        def make(ps, lr, wd):
            return torch.optim.Muon(ps, lr=lr, weight_decay=wd)

        from smdyn import theory  # no closed form (a Monte Carlo): the matrix's values, checked vs torch

        star = float(theory.muon_angular_update(lr, wd, (ROWS, COLS)))
        norm_star = float(theory.muon_weight_norm(lr, wd, (ROWS, COLS))) / math.sqrt(ROWS)
    h = _train(make, lr, wd, int(6 / (2 * lr * wd)), 1.5 * norm_star)
    last = h["step"] == h["step"].max()
    assert np.all(h["channel"][last] >= 0) and last.sum() == N * ROWS
    assert set(h["reason_code"][last]) == {""}
    rows_star = h["theory_angular_update"][last]
    rows_norm_star = h["theory_weight_norm"][last]
    np.testing.assert_allclose(rows_star, star, rtol=1e-9)
    np.testing.assert_allclose(rows_norm_star, norm_star, rtol=1e-9)
    late = h["step"] >= h["step"].max() - 100
    assert np.mean(h["weight_norm"][late]) / norm_star == pytest.approx(1.0, abs=0.04)
    rms = math.sqrt(np.mean(h["angular_update"][late] ** 2))
    assert rms / star == pytest.approx(1.0, abs=0.05)
