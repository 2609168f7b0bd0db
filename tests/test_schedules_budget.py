"""benchmarks/schedules_on_a_network.py's AdamW budget on hand-made columns, against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest


def test_adam_budget_on_a_steady_norm(load_benchmark) -> None:
    bench = load_benchmark("schedules_on_a_network")
    steps, layers, lr, norm, delta = 40, 3, 1e-3, 2.0, 0.01
    columns = {
        "weight_norm": np.full((layers, steps), norm),
        "unit_grad_sq": np.full((layers, steps), 7.0),
        "angular_update": np.full((layers, steps), delta),
    }
    run = bench.Run(columns, np.full(steps, lr), 0.0, 0.0, 0.0)
    got = bench.adam_budget(bench.ADAMW, run, blocks=4)
    size = bench.WIDTH * bench.WIDTH
    keep = (1 - lr * bench.ADAMW.wd) ** 2
    growth = (1 - keep) * norm**2 / (lr**2 * size)  # ‖w‖² held: the growth replaces what the decay took
    step_sq = (norm * math.tan(delta) / lr) ** 2 / size
    np.testing.assert_allclose(got["rho_sq"], 1.0, rtol=1e-12)  # a constant σ²: v̂ equals it from step 1
    np.testing.assert_allclose(got["growth"], growth, rtol=1e-9)
    np.testing.assert_allclose(got["efficiency"], growth, rtol=1e-9)
    np.testing.assert_allclose(got["step_sq"], step_sq, rtol=1e-12)
    np.testing.assert_allclose(got["corr"], growth / step_sq, rtol=1e-9)
    assert got["lr_fraction"] == pytest.approx([lr / bench.ADAMW.lr] * 4)
