"""Accuracy of the angular update Δ = ∠(w_t, w_{t+1}) (Def 3, Eq 13) by method, and the cost of the fast path.

What it measures:
1. Relative error against the exact angle of the float32 vectors given (Gram-Schmidt in numpy
   ``longdouble``, independent of smdyn), for Δ from 1e-7 to 1 rad and π − 1e-3, on 1e6-element vectors
   whose norms differ 3x, for: float32 arccos of the normalised dot product (the paper's Eq 13 as
   written), float32 2·atan2(‖â − b̂‖, ‖â + b̂‖) (the stable formula without float64), float64 arccos of
   float64 dot products, ``smdyn.geometry.angle``, and the monitor's fast path
   ``angle_from_sums(update_sums(w_{t+1}, w_t − w_{t+1}))`` for a mostly tangential step (as in SMD) and
   a mostly radial one (w_t = ½‖w_{t+1}‖ · unit vector at angle Δ, the step is then mostly along w_{t+1}).
   A tangential step turns w by less than π/2, so that column has no π − 1e-3 entry.
2. Time per step for an 11M-element float32 weight: ``update_sums`` + ``angle_from_sums`` against the
   naive snapshot-and-arccos (clone w_t before the step, arccos of float32 dots after it; also with a
   snapshot buffer kept between steps, and in float64) and against ``angle``; best of 7.

Hardware: AMD EPYC CPU (AVX-512, MKL), 1 thread (torch.set_num_threads(1)) on a machine shared with other
work, so timings vary by ±30 %; torch 2.13.0 (CPU), numpy 2.4. Runtime: ~6 s. One seed.
Run: ``.venv/bin/python benchmarks/angle_accuracy.py``.

Result on that machine (relative error; '0!' = returned exactly 0):

    Δ (rad)   f32 arccos  f32 atan2  f64 arccos  angle    fast tang.  fast radial
    1e-07     0!          1.5e+00    3.1e+00     3.6e-13  2.5e-08     7.5e-09
    1e-06     0!          2.3e+00    1.0e-01     1.1e-13  2.8e-08     3.3e-07
    1e-05     0!          2.8e-02    9.7e-04     8.5e-16  3.7e-09     2.1e-06
    1e-04     0!          1.0e-04    1.1e-05     9.5e-16  8.1e-09     7.8e-07
    1e-03     0!          2.5e-06    1.0e-07     4.3e-16  1.9e-08     1.1e-08
    1e-02     1.7e-01     2.1e-07    1.0e-09     5.2e-16  3.5e-08     2.2e-08
    1e-01     1.9e-03     2.7e-06    1.1e-11     4.2e-16  1.4e-08     1.3e-08
    1e+00     1.3e-05     2.1e-06    7.0e-14     2.2e-16  1.0e-08     1.6e-08
    π − 1e-3  3.2e-04     2.5e-08    3.2e-11     0.0e+00  —           2.2e-12

    The fast radial errors above 1e-6 are at the float32 resolution of the step (worst absolute error
    0.08·ε‖d‖/‖w_t‖): there one rounding of d already moves Δ that much.

    11M float32 elements, per step: update_sums + angle_from_sums 9.4-11.3 ms; clone + float32 arccos
    25-29 ms (2.4-3.0x slower, the fresh 44 MB allocation dominates); copying into a kept snapshot
    buffer + float32 arccos 10-15 ms (1.0-1.5x, but wrong below Δ ≈ 1e-2 and 44 MB more memory);
    clone + float64 arccos 110-240 ms (12-21x); angle() 70-140 ms (7-15x).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch

from smdyn.geometry import angle, angle_from_sums, update_sums

N = 1_000_000  # elements per vector in the accuracy table
N_TIMING = 11_000_000  # elements of the weight in the timing (a ResNet-50-sized layer group)
NORM_RATIO = 3.0  # ‖w_{t+1}‖ / ‖w_t‖ for the generic methods
ANGLES = [1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, math.pi - 1e-3]
SEED = 0
EPS32 = float(torch.finfo(torch.float32).eps)


def exact_angle(x: torch.Tensor, y: torch.Tensor) -> float:
    """∠(x, y) of the data as given, by Gram-Schmidt in extended precision (~1e-12 relative)."""
    xl = x.double().numpy().ravel().astype(np.longdouble)
    yl = y.double().numpy().ravel().astype(np.longdouble)
    xx = np.dot(xl, xl)
    c = np.dot(xl, yl) / xx
    r = yl - c * xl
    rr = np.dot(r, r) - np.dot(r, xl) ** 2 / xx
    return float(np.arctan2(np.sqrt(max(rr, np.longdouble(0))) * np.sqrt(xx), c * xx))


def orthonormal(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(n)
    u /= np.linalg.norm(u)
    v = rng.standard_normal(n)
    for _ in range(2):
        v -= (v @ u) * u
    v /= np.linalg.norm(v)
    return u, v


# -- the generic methods: a pair of float32 vectors ---------------------------------------------------


def f32_arccos(a: torch.Tensor, b: torch.Tensor) -> float:
    cosine = torch.dot(a, b) / (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b))
    return float(torch.arccos(cosine.clamp(-1.0, 1.0)))


def f32_atan2(a: torch.Tensor, b: torch.Tensor) -> float:
    ua, ub = a / torch.linalg.vector_norm(a), b / torch.linalg.vector_norm(b)
    return float(2.0 * torch.atan2(torch.linalg.vector_norm(ua - ub), torch.linalg.vector_norm(ua + ub)))


def f64_arccos(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.double(), b.double()
    cosine = torch.dot(a64, b64) / (a64.norm() * b64.norm())
    return float(torch.arccos(cosine.clamp(-1.0, 1.0)))


def smdyn_angle(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(angle(a, b))


GENERIC: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
    "f32 arccos": f32_arccos,
    "f32 atan2": f32_atan2,
    "f64 arccos": f64_arccos,
    "angle": smdyn_angle,
}


# -- the fast path: w_{t+1} and the applied step ------------------------------------------------------


def tangential_step(theta: float, u: np.ndarray, v: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Step across w_{t+1} turning it by ≈ theta, with the SMD-like radial part 0.005 of the step."""
    after = 3.0 * u
    update = 3.0 * math.tan(theta) * (v + 0.005 * u)
    return torch.from_numpy(after).float(), torch.from_numpy(update).float()


def radial_step(theta: float, u: np.ndarray, v: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """w_t = ½‖w_{t+1}‖ (cos θ û + sin θ v): the step w_t − w_{t+1} is mostly along w_{t+1}."""
    after = 3.0 * u
    update = 1.5 * (math.cos(theta) * u + math.sin(theta) * v) - after
    return torch.from_numpy(after).float(), torch.from_numpy(update).float()


def fast_path_error(after: torch.Tensor, update: torch.Tensor) -> tuple[float, float]:
    """(relative error, absolute error in units of ε‖d‖/‖w_t‖, the float32 resolution of the step)."""
    w_t = after.double() + update.double()  # the exact pair the sums describe
    ref = exact_angle(after, w_t)
    err = abs(float(angle_from_sums(update_sums(after, update))) - ref)
    resolution = EPS32 * float(update.double().norm() / w_t.norm())
    return err / ref, err / resolution


def fmt_err(err: float, value: float) -> str:
    return "0!" if value == 0.0 else f"{err:.1e}"


def accuracy_table() -> None:
    header = ["Δ (rad)", *GENERIC, "fast tang.", "fast radial"]
    print(f"Relative error vs the exact angle of the float32 inputs, {N:.0e} elements, norms differ 3x")
    print("".join(f"{h:<13}" for h in header))
    worst_radial = 0.0
    for i, theta in enumerate(ANGLES):
        u, v = orthonormal(N, SEED + i)
        a = torch.from_numpy(2.0 * u).float()
        b = torch.from_numpy(2.0 * NORM_RATIO * (math.cos(theta) * u + math.sin(theta) * v)).float()
        ref = exact_angle(a, b)
        cells = ["π − 1e-3" if theta > 3 else f"{theta:.0e}"]
        for method in GENERIC.values():
            value = method(a, b)
            cells.append(fmt_err(abs(value - ref) / ref, value))
        cells.append(fast_path_error(*tangential_step(theta, u, v))[0] if theta < math.pi / 2 else "—")
        radial_rel, radial_res = fast_path_error(*radial_step(theta, u, v))
        cells.append(radial_rel)
        worst_radial = max(worst_radial, radial_res)
        print("".join(f"{c:<13}" if isinstance(c, str) else f"{c:<13.1e}" for c in cells))
    print(
        "fast radial: at small Δ the step's tangential part is only ~Δ of ‖d‖, so rounding d once to\n"
        "float32 already moves Δ by ~1e-6 relative there. In absolute terms the worst error in that\n"
        f"column is {worst_radial:.2f} x ε‖d‖/‖w_t‖ (ε = float32 epsilon, the resolution of the step).\n"
    )


def best_ms(fn: Callable[[], object], repeats: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def timing() -> None:
    g = torch.Generator().manual_seed(SEED)
    w_t = torch.randn(N_TIMING, generator=g)
    after = w_t - 1e-3 * torch.randn(N_TIMING, generator=g)
    update = w_t - after

    def fast() -> float:
        return float(angle_from_sums(update_sums(after, update)))

    def naive() -> float:
        snapshot = w_t.clone()  # taken before the optimizer step
        return f32_arccos(snapshot, after)

    kept = torch.empty_like(w_t)

    def naive_kept() -> float:
        kept.copy_(w_t)  # a snapshot buffer kept between steps: no allocation
        return f32_arccos(kept, after)

    def naive64() -> float:
        snapshot = w_t.clone()
        return f64_arccos(snapshot, after)

    t_fast, t_naive, t_kept = best_ms(fast), best_ms(naive), best_ms(naive_kept)
    t_naive64, t_angle = best_ms(naive64, 3), best_ms(lambda: angle(w_t, after), 3)
    print(f"\nTime per step, {N_TIMING / 1e6:.0f}M float32 elements, 1 thread (best of 7):")
    print(f"  update_sums + angle_from_sums  {t_fast:8.2f} ms")
    print(f"  clone + float32 arccos         {t_naive:8.2f} ms   naive / fast = {t_naive / t_fast:.1f}x")
    print(f"  copy into kept buffer + arccos {t_kept:8.2f} ms   naive / fast = {t_kept / t_fast:.1f}x")
    print(f"  clone + float64 arccos         {t_naive64:8.2f} ms   naive / fast = {t_naive64 / t_fast:.1f}x")
    print(f"  angle() (float64, two passes)  {t_angle:8.2f} ms   angle / fast = {t_angle / t_fast:.1f}x")


def main() -> None:
    torch.set_num_threads(1)
    print(
        f"torch {torch.__version__}, numpy {np.__version__}, longdouble eps {np.finfo(np.longdouble).eps:.1e}"
    )
    accuracy_table()
    timing()


if __name__ == "__main__":
    main()
