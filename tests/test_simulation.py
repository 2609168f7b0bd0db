"""Tests for smdyn.simulation against independent references.

References: the noiseless SGD norm recurrence ‖w_{t+1}‖² = (1−λη)²‖w_t‖² + η²L_t/‖w_t‖² and its angle
tan Δ_t = η‖g_t‖/((1−λη)‖w_t‖) (Eq 7 with g ⟂ w), the four Gram-matrix equations of docs/design.md §2
written out here in their (‖w‖², ‖v‖², ⟨w, v⟩) form, and closed forms (Δ* of Thm 3, the fixed point of
Thms 1-2, the spectral radius of the linearised recurrence) computed here. The engines' own outputs are
never the expected values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from smdyn import simulation, theory
from smdyn.simulation import SimulationResult, simulate

# --------------------------------------------------------------------------------------------------
# Independent references


def _sgd_norm_recurrence(lr: np.ndarray, wd: float, L: np.ndarray, x0: float) -> np.ndarray:
    """‖w_t‖² of Eq 7 with g ⟂ w and ‖g̃_t‖² = L_t exactly, by a plain float64 loop."""
    x = np.empty(lr.shape[0])
    x[0] = x0
    for t in range(lr.shape[0] - 1):
        x[t + 1] = (1.0 - lr[t] * wd) ** 2 * x[t] + lr[t] ** 2 * L[t] / x[t]
    return x


def _gram_reference(
    lr: float, wd: float, alpha: float, G: np.ndarray, x0: float
) -> tuple[np.ndarray, np.ndarray]:
    """docs/design.md §2 verbatim: ⟨w,v'⟩, ‖v'‖², ‖w'‖², ⟨w',v'⟩ and Δ = atan2(η‖v'⊥‖, ‖w‖ − η⟨w,v'⟩/‖w‖)."""
    steps, n = G.shape
    x = np.full(n, x0)
    y = np.zeros(n)
    z = np.zeros(n)
    xs, ds = np.empty((steps, n)), np.empty((steps, n))
    for t in range(steps):
        xs[t] = x
        z1 = alpha * z + wd * x
        y1 = alpha**2 * y + G[t] / x + wd**2 * x + 2 * alpha * wd * z
        perp = y1 - z1**2 / x
        ds[t] = np.arctan2(lr * np.sqrt(perp), np.sqrt(x) - lr * z1 / np.sqrt(x))
        x = x - 2 * lr * z1 + lr**2 * y1
        z = z1 - lr * y1
        y = y1
    return xs, ds


def _delta_star(lr: float, wd: float, alpha: float) -> float:
    return math.sqrt(2 * lr * wd / (1 + alpha))


def _w_star_sq(L: float, lr: float, wd: float, alpha: float) -> float:
    """(w*)² = √(Lη/(λ(1−α)(2 − λη/(1+α)))), Thm 2 (Thm 1's exact form at α = 0)."""
    return math.sqrt(L * lr / (wd * (1 - alpha) * (2 - lr * wd / (1 + alpha))))


def _spectral_radius(lr: float, wd: float, alpha: float, L: float = 1.0) -> float:
    """Largest |eigenvalue| of the Gram map's Jacobian at its fixed point, by central differences."""
    x = _w_star_sq(L, lr, wd, alpha)
    state = np.array([x, 2 * wd * x / (lr * (1 + alpha)), -wd * x / (1 + alpha)])  # (‖w‖², ‖v‖², ⟨w, v⟩)

    def step(s: np.ndarray) -> np.ndarray:
        x, y, z = s
        z1 = alpha * z + wd * x
        y1 = alpha**2 * y + L / x + wd**2 * x + 2 * alpha * wd * z
        return np.array([x - 2 * lr * z1 + lr**2 * y1, y1, z1 - lr * y1])

    jac = np.empty((3, 3))
    for j in range(3):
        h = 1e-6 * abs(state[j])
        e = np.zeros(3)
        e[j] = h
        jac[:, j] = (step(state + e) - step(state - e)) / (2 * h)
    return float(np.max(np.abs(np.linalg.eigvals(jac))))


# --------------------------------------------------------------------------------------------------
# The exactly solvable SGD case


@pytest.mark.parametrize("engine", ["full", "reduced"])
def test_sgd_matches_exact_recurrence(engine: str) -> None:
    """V = 0, g ⟂ w: ‖w_t‖² follows the recurrence to 1e-10 and Δ_t = atan(η√L_t/((1−λη)‖w_t‖²))."""
    steps, lr, wd = 3000, 0.2, 5e-3
    t = np.arange(steps)
    L = 1.0 + 0.5 * np.sin(t / 150.0)  # a per-step L_t
    sched = np.where(t < 1500, 1.0, 0.1)  # a multi-step schedule
    res = simulate(
        lr, wd, steps=steps, trajectories=3, dim=64, L=L, schedule=sched, engine=engine, init_norm=0.7
    )
    lr_t = lr * sched
    x = _sgd_norm_recurrence(lr_t, wd, L, 0.49)
    np.testing.assert_allclose(res.weight_norm_sq, np.broadcast_to(x[:, None], (steps, 3)), rtol=1e-10)
    delta = np.arctan(lr_t * np.sqrt(L) / ((1 - lr_t * wd) * x))
    np.testing.assert_allclose(res.angular_update, np.broadcast_to(delta[:, None], (steps, 3)), rtol=1e-9)
    np.testing.assert_array_equal(res.unit_grad_sq, np.broadcast_to(L[:, None], (steps, 3)))


def test_engines_see_the_same_draws() -> None:
    """SGD with noisy ‖g̃‖²: both engines follow the same trajectories (only g ⟂ w matters for SGD)."""
    kw = {"steps": 2000, "trajectories": 4, "L": 2.0, "V": 1.0, "seed": 3}
    full = simulate(0.1, 1e-2, dim=32, engine="full", **kw)
    reduced = simulate(0.1, 1e-2, engine="reduced", **kw)
    np.testing.assert_array_equal(full.unit_grad_sq, reduced.unit_grad_sq)
    np.testing.assert_allclose(full.weight_norm_sq, reduced.weight_norm_sq, rtol=1e-10)
    np.testing.assert_allclose(full.angular_update, reduced.angular_update, rtol=1e-8)
    # and they are the recurrence with the drawn values
    x = np.empty_like(reduced.unit_grad_sq)
    x[0] = 1.0
    for t in range(1999):
        x[t + 1] = (1 - 1e-3) ** 2 * x[t] + 0.01 * reduced.unit_grad_sq[t] / x[t]
    np.testing.assert_allclose(reduced.weight_norm_sq, x, rtol=1e-10)


def test_reduced_matches_design_gram_equations() -> None:
    """SGDM: the reduced engine is docs/design.md §2's recurrence, evaluated independently here."""
    lr, wd, alpha = 0.1, 1e-2, 0.9
    res = simulate(lr, wd, alpha, steps=3000, trajectories=3, V=0.3, engine="reduced", init_norm=2.0, seed=1)
    xs, ds = _gram_reference(lr, wd, alpha, res.unit_grad_sq, 4.0)
    np.testing.assert_allclose(res.weight_norm_sq, xs, rtol=1e-10)
    np.testing.assert_allclose(res.angular_update, ds, rtol=1e-8)
    np.testing.assert_array_equal(res.h_tilde, res.unit_grad_sq)  # g ⟂ v: h̃ = ‖g̃‖²


# --------------------------------------------------------------------------------------------------
# Theorem 3 in equilibrium


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("lr_wd", [1e-5, 1e-4, 1e-3])
def test_equilibrium_rms_angular_update(lr_wd: float, alpha: float) -> None:
    """RMS Δ within 2% of √(2λη/(1+α)) once equilibrium is reached from ‖w_0‖ = 1.5 w* (Thm 3).

    ‖g̃‖² is gamma with CV 0.5. The run lasts until |‖w‖² − w*²| has shrunk 1000-fold by the linearised rate
    (spectral radius computed here), then measures over a 3000-step window.
    """
    lr = 0.1
    wd = lr_wd / lr
    w_star = math.sqrt(_w_star_sq(1.0, lr, wd, alpha))
    burn = math.ceil(math.log(1e3) / (1 - _spectral_radius(lr, wd, alpha)))
    res = simulate(
        lr, wd, alpha, steps=burn + 3000, trajectories=12, V=0.25, init_norm=1.5 * w_star, engine="reduced"
    )
    d = res.angular_update[-3000:]
    rms = math.sqrt(float(np.mean(d * d)))
    assert rms == pytest.approx(_delta_star(lr, wd, alpha), rel=0.02)
    assert float(np.mean(res.weight_norm_sq[-3000:])) == pytest.approx(w_star**2, rel=0.02)


def test_mean_below_rms_with_noisy_gradient() -> None:
    """SGD: Δ_t ≈ Δ*√(‖g̃_t‖²/L), so mean Δ/Δ* ≈ E√(G/L) = Γ(k+½)/(Γ(k)√k) for gamma of shape k = 1/CV²."""
    lr, wd = 0.1, 1e-2
    res = simulate(lr, wd, steps=6000, trajectories=16, V=1.0, init_norm="equilibrium", seed=2)
    s = res.summary(4000)
    assert s["angular_update_rms_ratio"] == pytest.approx(1.0, abs=0.01)
    k = 1.0
    predicted = math.exp(math.lgamma(k + 0.5) - math.lgamma(k)) / math.sqrt(k)  # √π/2 ≈ 0.886
    assert s["angular_update_mean_ratio"] == pytest.approx(predicted, abs=0.01)


# --------------------------------------------------------------------------------------------------
# The approach to equilibrium


def _fitted_factor(err_sq: np.ndarray, hi: float, lo: float) -> float:
    """Per-step factor of err² from a log-linear fit of its upper envelope where it lies in (lo, hi]."""
    env = np.maximum.accumulate(err_sq[::-1])[::-1]
    idx = np.flatnonzero((env <= hi) & (env > lo))
    assert idx.size > 50
    slope = np.polyfit(idx.astype(float), np.log(env[idx]), 1)[0]
    return math.exp(slope)


@pytest.mark.parametrize(
    ("lr_wd", "alpha"), [(1e-4, 0.0), (1e-3, 0.0), (1e-4, 0.5), (1e-4, 0.9), (1e-3, 0.9), (1e-5, 0.99)]
)
def test_approach_rate(lr_wd: float, alpha: float) -> None:
    """E[‖w_t‖² − w*²]² decays at the linearised rate (within 10%), never slower than Eqs 8/12's bound.

    (1e-3, 0.9) is past λη = (1−√α)²/4, where the slow mode is an oscillating pair; the fit follows the
    envelope.
    """
    lr = 0.1
    wd = lr_wd / lr
    x_star = _w_star_sq(1.0, lr, wd, alpha)
    rho = _spectral_radius(lr, wd, alpha)
    steps = math.ceil(35.0 / (1 - rho)) + 100
    res = simulate(lr, wd, alpha, steps=steps, trajectories=1, init_norm=math.sqrt(1.5 * x_star))
    err = ((res.weight_norm_sq[:, 0] - x_star) / x_star) ** 2
    factor = _fitted_factor(err, 1e-3, 1e-22)
    rate, linearised = -math.log(factor), -2 * math.log(rho)
    assert rate == pytest.approx(linearised, rel=0.10)
    bound = 1 - 2 * lr_wd / (1 - alpha)
    assert rate >= -math.log(bound)


def test_contraction_factor_agrees_with_theory_module() -> None:
    """The spectral radius computed here is what theory.contraction_factor returns (the report quotes it)."""
    for lr_wd, alpha in [(1e-4, 0.0), (1e-3, 0.9), (1e-5, 0.99)]:
        assert float(theory.contraction_factor(0.1, lr_wd / 0.1, alpha)) == pytest.approx(
            _spectral_radius(0.1, lr_wd / 0.1, alpha), abs=1e-7
        )


# --------------------------------------------------------------------------------------------------
# Full engine


def test_reduced_matches_full_sgdm() -> None:
    """SGDM statistics of the full vector model (dim 2048, g ⟂ w only) and the reduced one agree to 1%."""
    kw = {"steps": 2500, "trajectories": 8, "V": 0.25, "seed": 4}
    full = simulate(0.1, 1e-2, 0.9, dim=2048, engine="full", **kw).summary(1500)
    reduced = simulate(0.1, 1e-2, 0.9, engine="reduced", **kw).summary(1500)
    for key in ("angular_update_rms_ratio", "angular_update_mean_ratio", "weight_norm_sq_ratio"):
        assert full[key] == pytest.approx(reduced[key], rel=0.01), key
    assert full["angular_update_rms_ratio"] == pytest.approx(1.0, abs=0.01)
    # h̃ = ‖g̃‖² + 2α⟨v, g⟩‖w‖²: at finite dim ⟨v, g⟩ ≠ 0 but averages to 0
    assert full["h_tilde_mean"] == pytest.approx(full["unit_grad_sq_mean"], rel=0.02)


def test_full_float32_close_to_float64() -> None:
    kw = {"steps": 1500, "trajectories": 4, "dim": 256, "V": 0.25, "engine": "full", "seed": 5}
    s32 = simulate(0.1, 1e-2, 0.5, dtype=torch.float32, **kw).summary(1000)
    s64 = simulate(0.1, 1e-2, 0.5, dtype=torch.float64, **kw).summary(1000)
    assert s32["angular_update_rms_ratio"] == pytest.approx(s64["angular_update_rms_ratio"], rel=1e-3)
    assert s32["weight_norm_sq_ratio"] == pytest.approx(s64["weight_norm_sq_ratio"], rel=1e-3)


def test_full_equilibrium_init() -> None:
    """init_norm='equilibrium' starts the vectors at the Gram fixed point: Δ = Δ* from step 0 (V = 0)."""
    lr, wd, alpha = 0.1, 1e-3, 0.9
    res = simulate(lr, wd, alpha, steps=50, trajectories=2, dim=4096, init_norm="equilibrium", engine="full")
    np.testing.assert_allclose(res.weight_norm_sq[0], _w_star_sq(1.0, lr, wd, alpha), rtol=1e-12)
    # finite dim: ⟨v, g⟩ ~ ‖v‖‖g‖/√dim moves each Δ_t by a few %, their RMS by much less
    np.testing.assert_allclose(res.angular_update, _delta_star(lr, wd, alpha), rtol=0.05)
    assert res.rms_angular_update() == pytest.approx(_delta_star(lr, wd, alpha), rel=0.01)


# --------------------------------------------------------------------------------------------------
# A real scale-invariant loss


def test_logistic_gradient_is_orthogonal_to_w() -> None:
    """SGD on the logistic loss: ‖w_{t+1}‖² = (1−λη)²‖w_t‖² + η²‖g̃_t‖²/‖w_t‖² exactly, which holds only if
    the autograd gradient is ⟂ w (Lemma 1) and the recorded ‖g̃‖² is ‖g‖²‖w‖²."""
    lr, wd = 0.5, 1e-3
    res = simulate(lr, wd, steps=300, trajectories=4, dim=64, gradient="logistic", seed=1)
    x, g = res.weight_norm_sq, res.unit_grad_sq
    np.testing.assert_allclose(x[1:], (1 - lr * wd) ** 2 * x[:-1] + lr**2 * g[:-1] / x[:-1], rtol=1e-10)
    assert res.engine == "full"
    assert np.all(g > 0)
    assert np.all(np.isnan(res.grad_floor))


def test_logistic_reaches_equilibrium() -> None:
    """Thm 3 on a real loss whose L_t drifts as it learns: RMS Δ within 3% of Δ*, ‖w‖² of w*² within 5%."""
    lr, wd, alpha = 0.1, 1e-2, 0.9
    res = simulate(lr, wd, alpha, steps=1500, trajectories=8, dim=128, gradient="logistic", seed=2)
    s = res.summary(700)
    assert s["angular_update_rms_ratio"] == pytest.approx(1.0, abs=0.03)
    assert s["weight_norm_sq_ratio"] == pytest.approx(1.0, abs=0.05)
    # L is the trailing 200-step mean of the trajectory mean of h̃
    np.testing.assert_allclose(res.L[-1], np.mean(res.h_tilde[-200:]), rtol=1e-12)
    expected = np.sqrt(res.L[-1] * lr / (wd * (1 - alpha) * (2 - lr * wd / (1 + alpha))))
    assert res.theory_weight_norm_sq[-1] == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------------------------------
# Schedules and the Sec 4.2 rescaling


def _drop(k: float, rescale: bool, rescale_momentum: str = "split") -> SimulationResult:
    sched = np.r_[np.ones(100), np.full(400, 1 / k)]
    return simulate(
        0.1 * k, 1e-3, 0.9, steps=500, trajectories=1, schedule=sched, rescale=rescale,
        rescale_momentum=rescale_momentum, init_norm="equilibrium",
    )  # fmt: skip


def test_drop_without_rescale_halves_by_sqrt_k() -> None:
    """Right after η is divided by k the norm has not moved, so Δ/Δ*_new = k^-½ (Sec 4.2)."""
    res = _drop(10.0, rescale=False)
    assert res.angular_update[100, 0] / _delta_star(0.1, 1e-3, 0.9) == pytest.approx(10**-0.5, rel=1e-3)
    assert res.rescale_steps.size == 0


@pytest.mark.parametrize(("buffer", "tol"), [("split", 1e-3), ("scale", 0.01)])
def test_drop_with_rescale_is_at_new_equilibrium(buffer: str, tol: float) -> None:
    """w·k^-¼ at the drop: ‖w‖² falls by √k at once and Δ stays at the new Δ* (within 0.1% when v is split
    into its radial part, ×k^-¼, and the rest, ×k^¼; within 1% when all of v is ×k^¼)."""
    res = _drop(10.0, rescale=True, rescale_momentum=buffer)
    np.testing.assert_array_equal(res.rescale_steps, [100])
    # at the old equilibrium (V = 0) ‖w_100‖² before the rescaling equals ‖w_99‖² to ~1e-13
    assert res.weight_norm_sq[100, 0] == pytest.approx(res.weight_norm_sq[99, 0] / math.sqrt(10.0), rel=1e-12)
    ratio = res.angular_update[100:, 0] / _delta_star(0.1, 1e-3, 0.9)
    assert np.max(np.abs(ratio - 1)) < tol


def test_drop_with_rescale_keeping_momentum_dips() -> None:
    """Keeping v at the drop leaves it k^¼ too short for the rescaled weight: Δ dips well below Δ*_new."""
    res = _drop(10.0, rescale=True, rescale_momentum="keep")
    ratio = res.angular_update[100:, 0] / _delta_star(0.1, 1e-3, 0.9)
    assert ratio.min() < 0.8
    assert abs(ratio[-1] - 1) < 0.01


@pytest.mark.parametrize("buffer", ["split", "scale", "keep"])
def test_rescale_buffer_same_in_both_engines(buffer: str) -> None:
    """The three buffer choices act alike on vectors and on the Gram state (SGDM, V = 0, large dim)."""
    sched = np.r_[np.ones(60), np.full(140, 0.1)]
    kw = {"steps": 200, "trajectories": 8, "schedule": sched, "rescale": True, "rescale_momentum": buffer}
    kw |= {"init_norm": "equilibrium", "seed": 2}
    full = simulate(1.0, 1e-3, 0.9, dim=4096, engine="full", **kw).angular_update[60:80].mean(axis=1)
    reduced = simulate(1.0, 1e-3, 0.9, engine="reduced", **kw).angular_update[60:80].mean(axis=1)
    # finite dim: ⟨v, g⟩ ≠ 0 moves each Δ_t by ~3%, the mean over 8 trajectories by ~1%
    np.testing.assert_allclose(full, reduced, rtol=0.03)


def test_schedule_callable_and_theory_columns() -> None:
    """A cosine schedule given as a function; per-step η_t, Δ*_t and w*_t² match their closed forms."""
    steps, lr, wd, alpha = 400, 0.1, 1e-3, 0.5

    def cosine(t: int) -> float:
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t / steps))

    L = np.linspace(1.0, 3.0, steps)
    res = simulate(lr, wd, alpha, steps=steps, trajectories=2, L=L, V=0.1, schedule=cosine, rescale=True)
    lr_t = np.array([lr * cosine(t) for t in range(steps)])
    np.testing.assert_allclose(res.lr, lr_t, rtol=1e-15)
    np.testing.assert_allclose(res.theory_angular_update, np.sqrt(2 * wd * lr_t / (1 + alpha)), rtol=1e-14)
    x_star = np.sqrt(L * lr_t / (wd * (1 - alpha) * (2 - lr_t * wd / (1 + alpha))))
    np.testing.assert_allclose(res.theory_weight_norm_sq, x_star, rtol=1e-13)
    assert res.rescale_steps.size == steps - 1  # the rate changes every step


# --------------------------------------------------------------------------------------------------
# Noise models and the result


@pytest.mark.parametrize("noise", ["gamma", "uniform"])
def test_noise_mean_and_variance(noise: str) -> None:
    res = simulate(0.1, 1e-3, steps=2000, trajectories=50, L=2.0, V=0.5, noise=noise, seed=7)
    g = res.unit_grad_sq
    assert g.mean() == pytest.approx(2.0, rel=0.01)
    assert g.var() == pytest.approx(0.5, rel=0.03)
    floor = 2.0 - math.sqrt(1.5) if noise == "uniform" else 0.0
    assert g.min() >= floor
    np.testing.assert_allclose(res.grad_floor, floor)


@pytest.mark.parametrize(("k", "seed"), [(1.0, 0), (4.0, 1), (30.0, 2), (0.5, 3)])
def test_gamma_draws_follow_the_gamma_distribution(k: float, seed: int) -> None:
    """The gamma noise against scipy's Gamma(k) CDF (Kolmogorov-Smirnov, 200 000 draws); the same test
    rejects a shape 5% off at the same mean (variance 5% off), so it has the power to see a wrong sampler."""
    stats = pytest.importorskip("scipy.stats")
    res = simulate(0.1, 1e-3, steps=200, trajectories=1000, L=k, V=k, seed=seed)  # shape L²/V = k, scale 1
    g = res.unit_grad_sq.ravel()
    assert stats.kstest(g, stats.gamma(k).cdf).pvalue > 1e-3
    assert stats.kstest(g, stats.gamma(1.05 * k, scale=1 / 1.05).cdf).pvalue < 1e-6


def test_gamma_draws_without_spare_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no spare candidates every rejected one is redrawn by numpy's sampler: still Gamma(k)."""
    stats = pytest.importorskip("scipy.stats")
    monkeypatch.setattr(simulation, "_gamma_spares", lambda n, k: 0)
    res = simulate(0.1, 1e-3, steps=200, trajectories=1000, L=1.0, V=1.0, seed=4)  # k = 1: 5% rejected
    g = res.unit_grad_sq.ravel()
    assert stats.kstest(g, stats.gamma(1.0).cdf).pvalue > 1e-3
    assert stats.kstest(g, stats.gamma(1.05, scale=1 / 1.05).cdf).pvalue < 1e-6


def test_uniform_draws_follow_the_uniform_distribution() -> None:
    """The uniform noise against scipy's U(L − √(3V), L + √(3V)) CDF (Kolmogorov-Smirnov, 200 000 draws); the
    same test rejects a range 2% wider, so it has the power to see a wrong scaling."""
    stats = pytest.importorskip("scipy.stats")
    L, V = 2.0, 0.75
    res = simulate(0.1, 1e-3, steps=200, trajectories=1000, L=L, V=V, noise="uniform", seed=5)
    g = res.unit_grad_sq.ravel()
    half = math.sqrt(3 * V)
    assert stats.kstest(g, stats.uniform(L - half, 2 * half).cdf).pvalue > 1e-3
    assert stats.kstest(g, stats.uniform(L - 1.02 * half, 2.04 * half).cdf).pvalue < 1e-6


def test_reduced_h_tilde_is_a_read_only_view_of_the_draws() -> None:
    """g ⟂ v in the reduced engine: h̃ is ‖g̃‖², shared with unit_grad_sq rather than copied."""
    res = simulate(0.1, 1e-2, 0.9, steps=50, trajectories=3, V=0.2, engine="reduced")
    assert np.shares_memory(res.h_tilde, res.unit_grad_sq)
    np.testing.assert_array_equal(res.h_tilde, res.unit_grad_sq)
    with pytest.raises(ValueError, match="read-only"):
        res.h_tilde[0, 0] = 1.0


def test_result_helpers() -> None:
    res = simulate(0.1, 1e-2, 0.9, steps=300, trajectories=5, V=0.2, seed=1)
    assert (res.steps, res.trajectories) == (300, 5)
    for name in ("weight_norm_sq", "angular_update", "unit_grad_sq", "h_tilde"):
        assert getattr(res, name).shape == (300, 5)
        assert getattr(res, name).dtype == np.float64
    d = res.angular_update[-100:]
    assert res.rms_angular_update(100) == pytest.approx(math.sqrt(np.mean(d**2)), rel=1e-14)
    assert res.mean_angular_update(100) == pytest.approx(np.mean(d), rel=1e-14)
    assert res.rms_angular_update() == pytest.approx(math.sqrt(np.mean(res.angular_update**2)), rel=1e-14)
    assert res.summary(100)["angular_update_rms"] == pytest.approx(res.rms_angular_update(100), rel=1e-14)
    as_dict = res.to_dict()
    assert as_dict["momentum"] == 0.9 and as_dict["engine"] == "reduced" and as_dict["dim"] is None
    assert as_dict["weight_norm_sq"] is res.weight_norm_sq
    with pytest.raises(ValueError, match="window"):
        res.rms_angular_update(0)
    with pytest.raises(ValueError, match="window"):
        res.summary(301)
    with pytest.raises(AttributeError):
        res.wd = 1.0  # type: ignore[misc]


def test_seeded_and_reproducible() -> None:
    a = simulate(0.1, 1e-2, 0.9, steps=200, trajectories=3, dim=32, V=0.3, engine="full", seed=11)
    b = simulate(0.1, 1e-2, 0.9, steps=200, trajectories=3, dim=32, V=0.3, engine="full", seed=11)
    c = simulate(0.1, 1e-2, 0.9, steps=200, trajectories=3, dim=32, V=0.3, engine="full", seed=12)
    np.testing.assert_array_equal(a.angular_update, b.angular_update)
    assert not np.array_equal(a.angular_update, c.angular_update)


# --------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": 10.0, "wd": 0.1}, "lr \\* wd"),
        ({"lr": 0.1, "wd": 1e-3, "schedule": np.r_[np.ones(5), np.full(5, 1e5)]}, "lr \\* wd"),
        ({"lr": 0.0}, "lr"),
        ({"wd": -1e-3}, "wd"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.1}, "momentum"),
        ({"V": -0.5}, "V"),
        ({"V": np.r_[np.zeros(9), -1.0]}, "V"),
        ({"L": 0.0}, "L"),
        ({"L": np.ones(3)}, "L"),
        ({"schedule": []}, "schedule"),
        ({"schedule": np.zeros(10)}, "schedule"),
        ({"schedule": np.ones(9)}, "schedule"),
        ({"schedule": lambda t: -1.0}, "schedule"),
        ({"steps": 0}, "steps"),
        ({"trajectories": 0}, "trajectories"),
        ({"dim": 1}, "dim"),
        ({"rescale_momentum": "reset"}, "rescale_momentum"),
        ({"init_norm": 0.0}, "init_norm"),
        ({"init_norm": "start"}, "init_norm"),
        ({"engine": "fast"}, "engine"),
        ({"gradient": "adam"}, "gradient"),
        ({"noise": "normal"}, "noise"),
        ({"noise": "uniform", "V": 1.0}, "V"),
        ({"dtype": torch.float16}, "dtype"),
        ({"gradient": "logistic", "engine": "reduced"}, "reduced"),
        ({"gradient": "logistic", "V": 0.5}, "L and V"),
        ({"gradient": "logistic", "init_norm": "equilibrium"}, "init_norm"),
        ({"wd": 0.0, "init_norm": "equilibrium"}, "wd"),
    ],
)
def test_bad_input_raises_value_error(kwargs: dict, match: str) -> None:
    args = {"lr": 0.1, "wd": 1e-3, "steps": 10}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        simulate(**args)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"steps": 1.5}, "steps"), ({"lr": "0.1"}, "lr"), ({"rescale": 1}, "rescale"), ({"seed": 1.0}, "seed")],
)
def test_bad_types_raise_type_error(kwargs: dict, match: str) -> None:
    args = {"lr": 0.1, "wd": 1e-3, "steps": 10}
    args.update(kwargs)
    with pytest.raises(TypeError, match=match):
        simulate(**args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is absent")
def test_cuda_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="CUDA"):
        simulate(0.1, 1e-3, steps=5, engine="full", device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:  # pragma: no cover - needs a GPU
    kw = {"steps": 500, "trajectories": 4, "dim": 256, "engine": "full", "seed": 3}
    cpu = simulate(0.1, 1e-2, **kw)
    gpu = simulate(0.1, 1e-2, device="cuda", **kw)
    np.testing.assert_allclose(gpu.weight_norm_sq, cpu.weight_norm_sq, rtol=1e-10)
