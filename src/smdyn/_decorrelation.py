"""Equilibrium of a normalised update under decoupled weight decay: the integrated autocorrelation R.

An optimizer whose step is a normalised function O_t of a momentum M_t of the gradients (Lion: elementwise
sign; Muon: Newton–Schulz orthogonalisation; AdamW: division by √v̂, linear in M_t) and which decays the
weight by a = 1 − ηλ per step gives, with gradients that are noise independent of the weight,

    w_t = −η' Σ_k a^k O_{t−1−k}   ⇒   E‖w‖² = η'²U²·R_a/(1 − a²),   R_a = 1 + 2 Σ_{j≥1} a^j ρ_j,

with U² = E‖O‖², η' the step's rate and ρ_j = E⟨O_t, O_{t−j}⟩/U². M_t and M_{t−j} are jointly Gaussian
matrices whose elements have correlation r_j (a property of the momentum filter alone), so ρ_j = f(r_j)
where f is the correlation map of the normalisation: f(r) = r (linear), (2/π)·arcsin(r) (sign of
correlated Gaussians), a tabulated Monte Carlo value for Newton–Schulz. Every filter used here has
r_j = r₁·q^{j−1} for j ≥ 1. Pure numpy: the core imports it without torch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

#: torch.optim.Muon's Newton–Schulz coefficients and step count (Keller Jordan's quintic).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
_MAX_SIDE = 64  # Monte Carlo matrices are reduced to this shorter side (aspect ratio kept)
_MAX_LONG = 2048
_GRID = np.linspace(0.0, 1.0, 41)  # u = √(1 − r): f is close to linear in u near r = 1 (like arcsin)
_ELEMENTS = 2**17


def integrated_autocorrelation(
    r1: float, q: float, a: float, f: Callable[[NDArray[np.float64]], NDArray[np.float64]]
) -> float:
    """R_a = 1 + 2Σ_{j≥1} a^j f(r_j) for a filter with r_j = r₁·q^{j−1}, summed until (qa)^j < 1e-12."""
    qa = q * a
    n = 1 if qa <= 0 else int(min(2e6, max(1.0, math.log(1e-12) / math.log(qa)) + 1))
    j = np.arange(1, n + 1, dtype=np.float64)
    return float(1.0 + 2.0 * np.sum(a**j * f(r1 * q ** (j - 1))))


def heavy_ball_lags(mu: float) -> tuple[float, float]:
    """(r₁, q) of an exponential moving average with coefficient μ (Muon's buffer, Adam's m): r_j = μ^j."""
    return mu, mu


def nesterov_lags(mu: float) -> tuple[float, float]:
    """(r₁, q) of torch.optim.Muon's Nesterov update (1−μ)g_t + μ·buf_t, buf_t = (1−μ)Σμ^k g_{t−k}.

    Filter h_0 = (1−μ)(1+μ), h_k = (1−μ)μ^{k+1}: γ_j ∝ μ^j(μ(1+μ) + μ⁴/(1−μ²)) for j ≥ 1 and
    γ_0 ∝ (1+μ)² + μ⁴/(1−μ²).
    """
    tail = mu**4 / (1.0 - mu * mu)
    return mu * (mu * (1.0 + mu) + tail) / ((1.0 + mu) ** 2 + tail), mu


def lion_lags(b1: float, b2: float) -> tuple[float, float]:
    """(r₁, q) of Lion's c_t = (1−β₁)g_t + β₁m_{t−1}, m = EMA(β₂) of g.

    h_0 = 1−β₁, h_k = β₁(1−β₂)β₂^{k−1}: γ_0 = K = (1−β₁)² + β₁²(1−β₂)/(1+β₂) and, for j ≥ 1,
    γ_j = β₁(1−β₂)β₂^{j−1}·((1−β₁) + β₁β₂/(1+β₂)).
    """
    k = (1.0 - b1) ** 2 + b1 * b1 * (1.0 - b2) / (1.0 + b2)
    if k == 0:
        return 0.0, 0.0
    return b1 * (1.0 - b2) * ((1.0 - b1) + b1 * b2 / (1.0 + b2)) / k, b2


def arcsine(r: NDArray[np.float64]) -> NDArray[np.float64]:
    """Correlation of sign(x), sign(y) for standard Gaussians with correlation r (Van Vleck's arcsine law)."""
    return (2.0 / np.pi) * np.arcsin(np.clip(r, -1.0, 1.0))


def radial_corrected_angle(decay: float, r_a: float) -> float:
    """Equilibrium angle per step from R_a, with the step's radial part.

    Step O = o_r·ŵ + O_⊥ with E⟨O_t, ŵ_t⟩ = −η'U²S₁/‖w‖, S₁ = Σ_k a^k ρ_{k+1} = (R_a − 1)/(2a), so with
    D² = η'²U²/‖w‖² = (1 − a²)/R_a: tan²Δ = D²(1 − D²S₁²)/(a + D²S₁)². The radial part is ~ηλR/2 of the
    step (2.4% at ηλ = 2e-3, R = 24), which is why it is kept. Taken from ``decay`` = ηλ = 1 − a, so that
    1 − a² = ηλ(2 − ηλ) does not cancel (it lost all digits below ηλ ≈ 1e-16).
    """
    a = 1.0 - decay
    d2 = decay * (2.0 - decay) / r_a
    s1 = (r_a - 1.0) / (2.0 * a)
    return math.atan(math.sqrt(max(d2 * (1.0 - d2 * s1 * s1), 0.0)) / (a + d2 * s1))


# --------------------------------------------------------------------------------------------------
# Newton–Schulz: the correlation map f and the update norm U


def newton_schulz(
    x: NDArray[np.float64], coefficients: tuple[float, float, float], steps: int
) -> NDArray[np.float64]:
    """torch.optim.Muon's orthogonalisation of a batch [..., m, n] (m <= n) in float64.

    bf16, which torch uses, changes neither f nor U by more than 0.05% at 32×32 (measured).
    """
    a, b, c = coefficients
    x = x / np.linalg.norm(x, axis=(-2, -1), keepdims=True)
    for _ in range(steps):
        gram = x @ np.swapaxes(x, -1, -2)
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x


def reduced_shape(shape: tuple[int, int]) -> tuple[int, int]:
    """The Monte Carlo shape for a weight: shorter side first, at most 64, the aspect ratio kept."""
    m, n = sorted(int(s) for s in shape)
    if m > _MAX_SIDE:
        n, m = max(_MAX_SIDE, round(n * _MAX_SIDE / m)), _MAX_SIDE
    return m, min(n, _MAX_LONG)


@functools.lru_cache(maxsize=64)
def ns_correlation_table(
    shape: tuple[int, int], coefficients: tuple[float, float, float], steps: int
) -> NDArray[np.float64]:
    """f(r) of Newton–Schulz on the grid u = √(1−r), by a fixed-seed Monte Carlo with common random numbers.

    f(r) = E⟨NS(X), NS(Y)⟩/E‖NS(X)‖² for Gaussian X, Z and Y = rX + √(1−r²)Z. Antithetic: (f̂(r) − f̂(−r))/2,
    exact for the odd map NS, cancels the even part of the sampling error (f̂(0) = 0 exactly).
    """
    m, n = shape
    reps = max(2, _ELEMENTS // (m * n))
    rng = np.random.default_rng(20210)
    x, z = rng.standard_normal((2, reps, m, n))
    ox = newton_schulz(x, coefficients, steps)
    den = float(np.sum(ox * ox))
    table = np.empty_like(_GRID)
    for i, u in enumerate(_GRID):
        r = 1.0 - u * u
        if u == 0:
            table[i] = 1.0
            continue
        s = math.sqrt(1.0 - r * r)
        plus = newton_schulz(r * x + s * z, coefficients, steps)
        minus = newton_schulz(-r * x + s * z, coefficients, steps)
        table[i] = float(np.sum(ox * (plus - minus))) / (2.0 * den)
    table.flags.writeable = False
    return table


def ns_correlation(
    shape: tuple[int, int], coefficients: tuple[float, float, float], steps: int
) -> Callable[[NDArray[np.float64]], NDArray[np.float64]]:
    """f(r) for r in [0, 1], interpolated in u = √(1−r) from :func:`ns_correlation_table`."""
    table = ns_correlation_table(reduced_shape(shape), tuple(float(c) for c in coefficients), int(steps))
    return lambda r: np.interp(np.sqrt(1.0 - np.clip(r, 0.0, 1.0)), _GRID, table)


@functools.lru_cache(maxsize=256)
def ns_update_norm_sq(shape: tuple[int, int], coefficients: tuple[float, float, float], steps: int) -> float:
    """U² = E‖NS(M)‖²_F for a Gaussian M of this shape, from its singular values.

    NS acts on each singular value s_i of M/‖M‖_F as the scalar polynomial p(s) = as + bs³ + cs⁵ iterated,
    so U² = Σ p^{∘k}(s_i)². The s_i² are λ_i/Σλ with λ the eigenvalues of MMᵀ: for a shorter side <= 256
    those of fixed-seed Gaussian matrices (8 of them), above that the Marchenko–Pastur quantiles.
    """
    m, n = sorted(int(s) for s in shape)
    if m <= 256:
        rng = np.random.default_rng(20211)
        lam = np.concatenate(
            [np.linalg.svd(rng.standard_normal((m, n)), compute_uv=False) ** 2 for _ in range(8)]
        )
        groups = lam.reshape(8, m)
        s = np.sqrt(groups / groups.sum(axis=1, keepdims=True))
    else:
        s = np.sqrt(_marchenko_pastur_quantiles(m, n) / m)[None, :]
    a, b, c = coefficients
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return float(np.mean(np.sum(s * s, axis=1)))


def _marchenko_pastur_quantiles(m: int, n: int) -> NDArray[np.float64]:
    """m mid-quantiles of the Marchenko–Pastur law of ratio q = m/n (eigenvalues of MMᵀ/n, mean 1)."""
    q = m / n
    lo, hi = (1.0 - math.sqrt(q)) ** 2, (1.0 + math.sqrt(q)) ** 2
    theta = np.linspace(0.0, np.pi, 200_001)  # x = mid + half·(−cos θ) clusters points at the edges
    x = (lo + hi) / 2.0 - (hi - lo) / 2.0 * np.cos(theta)
    dens = np.sqrt(np.maximum((hi - x) * (x - lo), 0.0)) / (2.0 * np.pi * q * np.maximum(x, 1e-300))
    dx = np.gradient(x)
    cdf = np.cumsum(dens * dx)
    cdf /= cdf[-1]
    return np.interp((np.arange(m) + 0.5) / m, cdf, x)
