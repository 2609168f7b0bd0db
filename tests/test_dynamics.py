"""smdyn.dynamics against the vectors it summarises: torch.optim.SGD on float64 vectors of dimension >= 2048.

References, none of them the kernel itself: the real optimizer (and the real Rescaler) stepping the vectors,
whose Gram entries and angles are measured here in float64; the closed form of the fixed point, Thm 2's
(w*)⁴ = Lη/(λ(1−α)(2 − λη/(1+α))), written out here; cos Δ* = 1 − λη/(1+α).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from smdyn import dynamics
from smdyn.dynamics import GramState
from smdyn.rescale import Rescaler

DIM = 2048


def _angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise ∠(a, b) = 2·atan2(‖â − b̂‖, ‖â + b̂‖), float64 (exact for small angles)."""
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    return 2.0 * torch.atan2((a - b).norm(dim=-1), (a + b).norm(dim=-1))


def _gram(w: torch.Tensor, v: torch.Tensor) -> np.ndarray:
    """(‖w‖², ⟨w, v⟩, ‖v‖²) per row, ``[3, rows]``."""
    return torch.stack([(w * w).sum(-1), (w * v).sum(-1), (v * v).sum(-1)]).numpy()


def _kernel_gram(s: GramState) -> np.ndarray:
    return np.stack(np.broadcast_arrays(s.w_sq, s.wv, s.v_sq))


def _assert_gram_close(kernel: np.ndarray, vectors: np.ndarray, rtol: float) -> None:
    """Entries equal to ``rtol`` relative; ⟨w, v⟩ (which changes sign) relative to ‖w‖‖v‖."""
    np.testing.assert_allclose(kernel[0], vectors[0], rtol=rtol)
    np.testing.assert_allclose(kernel[2], vectors[2], rtol=rtol)
    scale = np.sqrt(vectors[0] * vectors[2])
    assert np.all(np.abs(kernel[1] - vectors[1]) <= rtol * scale), np.abs(kernel[1] - vectors[1]) / scale


def _split(w: torch.Tensor, v: torch.Tensor, c: float, buffer: str) -> torch.Tensor:
    """The buffer after w ← c·w, on the vectors: radial part × c and the rest ÷ c, or v/c, or v."""
    if buffer == "split":
        radial = w * ((w * v).sum(-1, keepdim=True) / (w * w).sum(-1, keepdim=True))
        return (v - radial) / c + radial * c
    return v / c if buffer == "scale" else v


# ------------------------------------------------------------------------------ exact, noiseless


def _fresh_axis_run(
    lrs: np.ndarray, wd: float, a: float, L: np.ndarray, start: GramState, factors: np.ndarray, buffer: str
) -> tuple[list[np.ndarray], np.ndarray]:
    """torch.optim.SGD on ``[rows, DIM]`` float64 rows; step t's gradient lies along the fresh axis t + 2, so
    it is orthogonal to w and to the buffer exactly, with ‖g‖² = L[t]/‖w‖². Returns the Gram entries of
    (w, v) before each step (after its rescale) and after the last, and Δ_t. v is the momentum buffer, or
    without momentum the last step's direction g + λw (it enters nothing then, but the state keeps it).
    """
    rows = L.shape[1]
    x0, mu0, tau0 = (np.broadcast_to(np.asarray(v, dtype=np.float64), (rows,)) for v in start)
    w = torch.zeros(rows, DIM, dtype=torch.float64)
    w[:, 0] = torch.from_numpy(np.sqrt(x0))
    v = torch.zeros_like(w)
    v[:, 0] = torch.from_numpy(mu0 * np.sqrt(x0))
    v[:, 1] = torch.from_numpy(np.sqrt(tau0 / x0))
    p = nn.Parameter(w)
    opt = torch.optim.SGD([p], lr=float(lrs[0]), momentum=a, weight_decay=wd)
    if a > 0:
        opt.state[p]["momentum_buffer"] = v
    grams, deltas = [], []
    for t in range(len(lrs)):
        with torch.no_grad():
            if factors[t] != 1.0:
                v = _split(p, v, float(factors[t]), buffer)
                if a > 0:
                    opt.state[p]["momentum_buffer"] = v
                p.mul_(float(factors[t]))
        grams.append(_gram(p.detach(), v))
        g = torch.zeros_like(w)
        g[:, t + 2] = torch.from_numpy(np.sqrt(L[t])) / p.detach().norm(dim=1)
        p.grad = g
        opt.param_groups[0]["lr"] = float(lrs[t])
        before = p.detach().clone()
        opt.step()
        deltas.append(_angle(before, p.detach()).numpy())
        # the buffer; without momentum, the step's direction g + λw (what the state's v means then)
        v = opt.state[p]["momentum_buffer"] if a > 0 else (before - p.detach()) / float(lrs[t])
    grams.append(_gram(p.detach(), v))
    return grams, np.array(deltas)


@pytest.mark.parametrize("buffer", ["split", "scale", "keep"])
@pytest.mark.parametrize(("a", "wd"), [(0.9, 1e-2), (0.0, 5e-2)])
def test_step_and_rescale_equal_the_vector_model(a: float, wd: float, buffer: str) -> None:
    """Gram entries to 1e-10 and Δ to 1e-9 over 300 steps: an lr drop with a rescale, a rise, another drop,
    a per-trajectory L_t, from equilibrium and from rest; both the batched and the scalar path."""
    steps, rows = 300, 3
    lrs = np.r_[np.full(100, 0.1), np.full(100, 0.01), np.full(50, 0.03), np.full(50, 0.002)]
    factors = np.ones(steps)
    factors[[100, 200, 250]] = (lrs[[100, 200, 250]] / lrs[[99, 199, 249]]) ** 0.25
    t = np.arange(steps)[:, None]
    L = (1.0 + 0.5 * np.sin(t / 9.0 + np.arange(rows))) * np.array([1.0, 2.0, 0.5])
    for start in (dynamics.fixed_point(1.0, 0.1, wd, a), GramState.at_rest(1.7)):
        grams, deltas = _fresh_axis_run(lrs, wd, a, L, start, factors, buffer)
        batch0 = GramState(*(np.full(rows, float(v)) for v in start))
        w_sq, delta, final = dynamics.run(batch0, lrs, wd, a, L, factors, buffer)
        np.testing.assert_allclose(delta, deltas, rtol=1e-9)
        np.testing.assert_allclose(w_sq, [g[0] for g in grams[:-1]], rtol=1e-10)
        state = batch0
        for k in range(steps):  # step by step: the entries before every step, not only ‖w‖²
            if factors[k] != 1.0:
                state = dynamics.rescale(state, factors[k], buffer)
            _assert_gram_close(_kernel_gram(state), grams[k], 1e-10)
            state, d = dynamics.step(state, lrs[k], wd, a, L[k])
            np.testing.assert_allclose(d, deltas[k], rtol=1e-9)
        _assert_gram_close(_kernel_gram(final), grams[-1], 1e-10)
        _assert_gram_close(_kernel_gram(state), grams[-1], 1e-10)
        for r in range(rows):  # one trajectory at a time: Python floats
            x, d, last = dynamics.run(start, lrs, wd, a, L[:, r], factors, buffer)
            assert isinstance(last.w_sq, float)
            np.testing.assert_allclose(x, w_sq[:, r], rtol=1e-13)
            np.testing.assert_allclose(d, delta[:, r], rtol=1e-13)


@pytest.mark.parametrize("buffer", ["split", "scale", "keep"])
@pytest.mark.parametrize("mode", ["drops", "continuous"])
def test_rescale_matches_the_rescaler(buffer: str, mode: str) -> None:
    """The transform of the Gram state is what smdyn.Rescaler does to the real SGD buffer, to 1e-10."""
    lr, wd, a, L = 0.1, 1e-2, 0.9, 1.0
    lrs = np.r_[np.full(30, lr), np.full(30, lr / 10), lr / 10 * np.linspace(1.0, 0.3, 40)]
    x0, mu0, tau0 = dynamics.fixed_point(L, lr, wd, a)
    w = torch.zeros(DIM, dtype=torch.float64)
    w[0] = math.sqrt(x0)
    p = nn.Parameter(w)
    opt = torch.optim.SGD([p], lr=lr, momentum=a, weight_decay=wd)
    v = torch.zeros(DIM, dtype=torch.float64)
    v[0], v[1] = mu0 * math.sqrt(x0), math.sqrt(tau0 / x0)
    opt.state[p]["momentum_buffer"] = v
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rescaler = Rescaler(opt, [("w", p)], force=True, mode=mode, momentum=buffer)
    grams, deltas = [], []
    opt.register_step_pre_hook(  # runs after the Rescaler's hook: the state the step starts from
        lambda o, args, kw: grams.append(_gram(p.detach()[None], opt.state[p]["momentum_buffer"][None]))
    )
    for t, eta in enumerate(lrs):
        opt.param_groups[0]["lr"] = float(eta)
        g = torch.zeros(DIM, dtype=torch.float64)
        g[t + 2] = math.sqrt(L) / float(p.detach().norm())
        p.grad = g
        before = p.detach().clone()
        opt.step()
        deltas.append(float(_angle(before, p.detach())))
    factors = np.ones(len(lrs))
    for e in rescaler.events:
        if e["action"] == "rescaled":
            factors[e["step"]] = e["factor"]
    assert np.count_nonzero(factors != 1.0) >= (1 if mode == "drops" else 30)
    state = GramState(x0, mu0, tau0)
    for t, eta in enumerate(lrs):
        if factors[t] != 1.0:
            state = dynamics.rescale(state, factors[t], buffer)
        _assert_gram_close(_kernel_gram(GramState(*(np.array([v]) for v in state))), grams[t], 1e-10)
        state, d = dynamics.step(state, float(eta), wd, a, L)
        assert d == pytest.approx(deltas[t], rel=1e-9)


# ------------------------------------------------------------------- random directions, with noise


def _random_direction_means(
    lr: float, wd: float, a: float, G: np.ndarray, w0: float, seed: int
) -> np.ndarray:
    """torch.optim.SGD on 64 rows of dimension 4096; each gradient is a random direction projected off w
    (not off the buffer), scaled to ‖g‖²‖w‖² = G[t, row]. Returns the trajectory means of the Gram entries
    before each step, ``[steps, 3]``."""
    steps, rows = G.shape
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, 4096, generator=gen, dtype=torch.float64)
    w *= w0 / w.norm(dim=1, keepdim=True)
    p = nn.Parameter(w)
    opt = torch.optim.SGD([p], lr=lr, momentum=a, weight_decay=wd)
    out = np.empty((steps, 3))
    Gt = torch.from_numpy(G)
    for t in range(steps):
        w = p.detach()
        buf = opt.state[p].get("momentum_buffer", torch.zeros_like(w))
        out[t] = _gram(w, buf).mean(axis=1)
        u = torch.randn(w.shape, generator=gen).to(torch.float64)  # float32 draws: only the direction matters
        x = (w * w).sum(1, keepdim=True)
        u -= w * ((u * w).sum(1, keepdim=True) / x)
        p.grad = u * torch.sqrt(Gt[t][:, None] / (x * (u * u).sum(1, keepdim=True)))
        opt.step()
    return out


@pytest.mark.slow
def test_means_match_the_vector_model_with_random_gradients() -> None:
    """SGDM from 2× the equilibrium norm with gamma-distributed ‖g̃‖² (CV 0.5), 64 trajectories of dim 4096.

    At finite dim the gradient is not orthogonal to the buffer: ⟨v, g⟩ ~ ‖v‖‖g‖/√dim moves ‖v‖² of each
    trajectory by a few % at random. Averaged over the trajectories and over 50-step windows, the Gram
    entries agree with the kernel fed the same draws to ~1e-3 (measured over seeds 5-8: ‖w‖² ≤ 1.1e-3,
    ⟨w, v⟩ ≤ 4.5e-4 of ‖w‖‖v‖, ‖v‖² ≤ 2.0e-3), while the kernel with α = 0.89 instead of 0.9 is off by 2-12%.
    """
    lr, wd, a, steps, window = 0.1, 1e-2, 0.9, 400, 50
    G = np.random.default_rng(5).gamma(4.0, 0.25, size=(steps, 64))
    w0 = 2.0 * float(np.sqrt(dynamics.fixed_point(1.0, lr, wd, a).w_sq))
    vec = _random_direction_means(lr, wd, a, G, w0, seed=5).reshape(-1, window, 3).mean(axis=1)

    def deviation(alpha: float) -> np.ndarray:
        """Largest deviation of the windowed means: ‖w‖², ⟨w, v⟩ (over ‖w‖‖v‖), ‖v‖²."""
        state = GramState.at_rest(np.full(64, w0))
        means = np.empty((steps, 3))
        for t in range(steps):
            means[t] = _kernel_gram(state).mean(axis=1)
            state, _ = dynamics.step(state, lr, wd, alpha, G[t])
        k = means.reshape(-1, window, 3).mean(axis=1)
        scale = np.sqrt(vec[:, 0] * vec[:, 2])
        errs = [
            np.abs(k[:, 0] / vec[:, 0] - 1),
            np.abs(k[:, 1] - vec[:, 1]) / scale,
            np.abs(k[:, 2] / vec[:, 2] - 1),
        ]
        return np.array([e.max() for e in errs])

    good, wrong = deviation(a), deviation(0.89)
    print(f"windowed means off by {good} (kernel), {wrong} (kernel with α = 0.89)")
    assert vec[-1, 0] < 0.4 * vec[0, 0]  # the run covers most of the approach to equilibrium
    assert np.all(good < 4e-3)
    assert np.all(wrong > 1e-2)


# --------------------------------------------------------------------------------- fixed point


@pytest.mark.parametrize("a", [0.0, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("lr_wd", [1e-5, 1e-3, 0.1])
def test_fixed_point_is_fixed_and_matches_thm_2(a: float, lr_wd: float) -> None:
    lr, L = 0.5, 3.0
    wd = lr_wd / lr
    s = dynamics.fixed_point(L, lr, wd, a)
    closed = math.sqrt(L * lr / (wd * (1 - a) * (2 - wd * lr / (1 + a))))  # (w*)², Thm 2
    assert s.w_sq == pytest.approx(closed, rel=1e-13)
    assert s.wv == pytest.approx(-wd * closed / (1 + a), rel=1e-13)  # the norm is stationary
    nxt, d = dynamics.step(s, lr, wd, a, L)
    for got, want in zip(nxt, s, strict=True):
        assert got == pytest.approx(want, rel=1e-12)
    u = wd * lr / (1 + a)
    assert d == pytest.approx(math.acos(1 - u), rel=1e-9)  # cos Δ* = 1 − λη/(1+α)
    assert float(dynamics.equilibrium_delta(lr, wd, a)) == pytest.approx(math.acos(1 - u), rel=1e-9)
    batch = dynamics.fixed_point(np.array([L, 2 * L]), lr, wd, a)  # arrays broadcast
    np.testing.assert_allclose(batch.w_sq, [closed, closed * math.sqrt(2)], rtol=1e-13)


def test_state_helpers_and_bad_buffer() -> None:
    s = GramState.from_gram(4.0, -0.5, 2.0)
    assert (s.w_sq, s.wv, s.v_sq) == pytest.approx((4.0, -0.5, 2.0), rel=1e-15)
    for buffer in ("split", "scale", "keep"):
        back = dynamics.rescale(dynamics.rescale(s, 0.7, buffer), 1 / 0.7, buffer)
        assert tuple(back) == pytest.approx(tuple(s), rel=1e-14)
    with pytest.raises(ValueError, match="buffer"):
        dynamics.rescale(s, 0.5, "reset")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="buffer"):
        dynamics.run(s, [0.1], 1e-3, 0.9, [1.0], buffer="reset")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one entry per step"):
        dynamics.run(s, [0.1, 0.1], 1e-3, 0.9, [1.0])


@pytest.mark.parametrize("a", [0.0, 0.9])
def test_run_leaves_its_inputs_alone(a: float) -> None:
    """The batched path steps in place: never in the caller's L (without momentum τ' is L's row itself)."""
    G = np.random.default_rng(0).gamma(2.0, 0.5, size=(50, 4))
    keep = G.copy()
    start = GramState(np.full(4, 2.0), np.zeros(4), np.zeros(4))
    factors = np.ones(50)
    factors[10] = 0.5
    dynamics.run(start, np.full(50, 0.1), 1e-2, a, G, factors, "keep")
    np.testing.assert_array_equal(G, keep)
    np.testing.assert_array_equal(start.w_sq, 2.0)


def test_run_past_a_right_angle_matches_step() -> None:
    """A state whose first step turns w by more than π/2 (x − ⟨w, w'⟩ < 0): the batched path's arctan of a
    ratio must hand over to arctan2 there, and agree with :func:`dynamics.step` applied in a loop."""
    start = GramState(np.ones(3), np.full(3, 30.0), np.ones(3))
    lr, L = [0.1] * 5, np.ones((5, 3))
    _, deltas, _ = dynamics.run(start, lr, 1e-3, 0.9, L)
    state, expected = start, []
    for t in range(5):
        state, d = dynamics.step(state, lr[t], 1e-3, 0.9, L[t])
        expected.append(d)
    assert np.max(expected[0]) > math.pi / 2  # the case this test is about
    np.testing.assert_allclose(deltas, np.array(expected), rtol=1e-12)
