"""Throughput of ``smdyn.simulation.simulate``: trajectory-steps per second, against a plain numpy loop.

What it measures, for SGDM (Eqs 10-11; η = 0.1, λ = 0.01, α = 0.9) with ‖g̃‖² ~ Gamma(mean 1, variance
0.25) and the gradient ⟂ w in a random direction, 1 000 trajectories of dimension 1 024:

1. Baseline: the full vector model as one would write it without batching, a Python loop over
   trajectories and steps with float64 numpy vectors (draw ‖g̃‖², draw a direction, project it off w,
   update v and w, take Δ from the four update sums as in ``smdyn.geometry``).
2. The full engine (``engine="full"``): all trajectories as one batched torch tensor, float32 and float64.
3. The reduced engine (``engine="reduced"``): the three-scalar Gram recurrence (DESIGN.md §2) in numpy,
   with gamma draws (V = 0.25), with uniform draws of the same variance, and without any random
   numbers (V = 0).
4. Whether the reduced engine's statistics match the full model's: RMS Δ/Δ* and mean ‖w‖²/w*² over the
   last 2 000 of 4 000 steps, 64 trajectories, dim 1 024, the same ‖g̃‖² draws (target: within 1%).

Ratios are trajectory-steps per second over the baseline's. Hardware: AMD EPYC CPU, 1 thread
(torch.set_num_threads(1)) on a machine shared with other work, so timings vary by ±30%; torch 2.13.0
(CPU), numpy 2.4. Runtime: 10-20 s. One seed. Run: ``.venv/bin/python benchmarks/simulate_throughput.py``.

Result on that machine (best of 3 repeats; two runs, the machine's load changed between them):

    engine                         traj-steps/s        × loop
    numpy loop (float64)           2.1e4 / 4.3e4            1
    full, torch float32            5.2e4 / 7.1e4      2.5 / 1.7
    full, torch float64            1.6e4 / 3.0e4      0.8 / 0.7
    reduced, gamma draws (V > 0)   1.0e7 / 2.1e7      490 / 495
    reduced, uniform draws (V > 0) 1.8e7 / 3.8e7      880 / 890
    reduced, no draws (V = 0)      3.6e7 / 4.5e7    1 720 / 1 060

    full vs reduced (dim 1024, 64 trajectories, the same ‖g̃‖² draws): RMS Δ/Δ* 1.00059 vs 1.00054,
    mean Δ/Δ* 0.99693 vs 0.99712, ‖w‖²/w*² 1.00043 vs 1.00043: agree within 2e-4 (target 1%).

The reduced engine passes 1 000x the loop only without random numbers: one gamma variate costs ~25-50 ns,
more than the recurrence itself (~20-30 ns per trajectory-step at 1 000 trajectories), so with gamma noise
it is ~500x and with uniform noise ~900x. The batched full engine gains little over the loop at dim 1 024:
the 1 024 normal draws per trajectory-step and ~15 passes over the vectors dominate both (float64 normals
are drawn in float32 and cast, as torch's float64 ``randn`` is ~4x slower on CPU).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch

from smdyn.simulation import simulate

LR, WD, MOMENTUM = 0.1, 1e-2, 0.9
L, V = 1.0, 0.25
TRAJECTORIES, DIM = 1000, 1024
LOOP_TRAJECTORIES, LOOP_STEPS = 10, 200  # the baseline is slow: time a slice of it
FULL_STEPS = 10
REDUCED_STEPS = 4000
REPEATS = 3


def numpy_loop(steps: int, trajectories: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The full model, one trajectory and one step at a time, float64 numpy: the baseline."""
    rng = np.random.default_rng(seed)
    shape, scale = L * L / V, V / L
    norm_sq = np.empty((steps, trajectories))
    delta = np.empty((steps, trajectories))
    for j in range(trajectories):
        w = rng.standard_normal(dim)
        w /= np.linalg.norm(w)
        v = np.zeros(dim)
        for t in range(steps):
            g_tilde_sq = rng.gamma(shape, scale)
            x = w @ w
            u = rng.standard_normal(dim)
            u -= (u @ w) / x * w
            g = u * math.sqrt(g_tilde_sq / (x * (u @ u)))  # ‖g‖²‖w‖² = ‖g̃‖², g ⟂ w
            v *= MOMENTUM
            v += g
            v += WD * w
            d = LR * v
            w_next = w - d
            bb, db, dd = w_next @ w_next, d @ w_next, d @ d
            nb = math.sqrt(bb)
            delta[t, j] = math.atan2(math.sqrt(max(dd - db * db / bb, 0.0)), nb + db / nb)
            norm_sq[t, j] = x
            w = w_next
    return norm_sq, delta


def best_time(fn: Callable[[], object]) -> float:
    best = math.inf
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    t = best_time(lambda: numpy_loop(LOOP_STEPS, LOOP_TRAJECTORIES, DIM))
    base = LOOP_STEPS * LOOP_TRAJECTORIES / t
    rows.append(("numpy loop (float64)", base))
    for dtype, name in ((torch.float32, "float32"), (torch.float64, "float64")):

        def full(dtype: torch.dtype = dtype) -> object:
            return simulate(
                LR, WD, MOMENTUM, steps=FULL_STEPS, trajectories=TRAJECTORIES, dim=DIM, L=L, V=V,
                engine="full", dtype=dtype,
            )  # fmt: skip

        rows.append((f"full, torch {name}", FULL_STEPS * TRAJECTORIES / best_time(full)))
    variants = (
        (V, "gamma", "gamma draws (V > 0)"),
        (V, "uniform", "uniform draws (V > 0)"),
        (0.0, "gamma", "no draws (V = 0)"),
    )
    for v, noise, name in variants:

        def reduced(v: float = v, noise: str = noise) -> object:
            return simulate(
                LR, WD, MOMENTUM, steps=REDUCED_STEPS, trajectories=TRAJECTORIES, L=L, V=v, noise=noise,
                engine="reduced",
            )  # fmt: skip

        rows.append((f"reduced, {name}", REDUCED_STEPS * TRAJECTORIES / best_time(reduced)))

    print(f"SGDM η={LR:g} λ={WD:g} α={MOMENTUM:g}, {TRAJECTORIES} trajectories, dim {DIM}, 1 thread")
    print(f"{'engine':<30} {'traj-steps/s':>14} {'× loop':>9}")
    for name, rate in rows:
        print(f"{name:<30} {rate:>14.2e} {rate / base:>9.3g}")

    kw = {"steps": 4000, "trajectories": 64, "L": L, "V": V, "seed": 1}
    full_s = simulate(LR, WD, MOMENTUM, dim=DIM, engine="full", **kw).summary(2000)
    red_s = simulate(LR, WD, MOMENTUM, engine="reduced", **kw).summary(2000)
    print(f"\nstatistics over the last 2000 of 4000 steps, 64 trajectories, dim {DIM} (full) vs dim → ∞:")
    for key in ("angular_update_rms_ratio", "angular_update_mean_ratio", "weight_norm_sq_ratio"):
        a, b = full_s[key], red_s[key]
        print(f"  {key:<28} full {a:.5f}  reduced {b:.5f}  relative difference {abs(a / b - 1):.1e}")


if __name__ == "__main__":
    main()
