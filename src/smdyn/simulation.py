"""Synthetic Spherical Motion Dynamics: many trajectories of the update rule under controlled gradients.

:func:`simulate` runs SGD (Eq 7) or heavy-ball SGDM (Eqs 10-11, ``torch.optim.SGD`` with ``dampening=0``,
``nesterov=False``) on a scale-invariant weight whose gradient is either

* ``"random"``: orthogonal to w_t (Lemma 1) in a random direction, with its unit-gradient norm
  ‖g̃_t‖² = ‖g_t‖²‖w_t‖² drawn per step and trajectory from a distribution of mean L_t and variance V_t
  (the quantities of Thm 1's assumptions 2-4), or
* ``"logistic"``: the true autograd gradient of a logistic-regression loss whose input is projected on
  w/‖w‖, on a fixed synthetic data set with minibatch noise, so scale invariance holds exactly and
  L_t drifts as the model learns, as in real training.

Two engines compute the same dynamics:

* ``"full"``: the vectors themselves, ``trajectories × dim`` batched torch tensors (CPU by default, any
  device torch supports). Δ_t comes from :func:`smdyn.geometry.update_sums` and
  :func:`smdyn.geometry.angle_from_sums`.
* ``"reduced"``: for the random model with a gradient orthogonal to both w_t and the momentum buffer v_{t-1}
  (exact as dim → ∞, and exact at any dim for SGD, where only g ⟂ w matters), the state of Eqs 10-11 is
  the Gram matrix of (w, v): three scalars per trajectory with a closed update, :mod:`smdyn.dynamics`
  (docs/design.md §2), vectorised over trajectories in float64 numpy. About 12 ns per trajectory-step at
  1 000 trajectories plus ~6 ns per gamma draw when V > 0 (~1 300× a per-trajectory numpy loop of the
  vectors), so million-step horizons and hyper-parameter grids are cheap (benchmarks/simulate_throughput.py).

Per step the result holds ‖w_t‖², Δ_t, ‖g̃_t‖², h̃_t (Thm 2, assumption 6) and the theory: Δ*_t (Thm 3) and
w*_t² (Thms 1-2, exact fixed-point form, :func:`smdyn.theory.weight_norm`) from that step's η_t and L_t.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray

from smdyn import dynamics, geometry, theory
from smdyn.dynamics import GramState

__all__ = ["SimulationResult", "simulate"]

Engine = Literal["full", "reduced", "auto"]
Gradient = Literal["random", "logistic"]
Noise = Literal["gamma", "uniform"]
Momentum = Literal["split", "scale", "keep"]

# The logistic model: a fixed data set of _LOGISTIC_SAMPLES standard-normal inputs labelled by a random
# teacher direction with _LOGISTIC_LABEL_NOISE of the labels flipped (so the gradient never vanishes), each
# trajectory drawing its own minibatch of _LOGISTIC_BATCH examples per step. Logits are
# _LOGISTIC_SCALE·⟨x, w/‖w‖⟩, so ⟨x, ŵ⟩ ~ N(0, 1) and the loss is invariant to ‖w‖.
_LOGISTIC_SAMPLES = 4096
_LOGISTIC_BATCH = 32
_LOGISTIC_SCALE = 3.0
_LOGISTIC_LABEL_NOISE = 0.1
# Trailing window (steps) over which the logistic model's L_t = E h̃_t is estimated; the paper's Fig 3
# averages 200 iterations.
_L_WINDOW = 200
_TO_UNIT = 2.0**-32  # a uint32 word times this is uniform on [0, 1)


# --------------------------------------------------------------------------------------------------
# Result


@dataclass(frozen=True)
class SimulationResult:
    """Per-step records of :func:`simulate`; ``[steps, trajectories]`` arrays unless noted.

    Attributes:
        weight_norm_sq: ‖w_t‖², the weight entering step t (after a rescaling at t, if any).
        angular_update: Δ_t = ∠(w_t, w_{t+1}) in radians (Def 3, Eq 13, computed without arccos).
        unit_grad_sq: ‖g̃_t‖² = ‖g_t‖²‖w_t‖² actually drawn (random model) or measured (logistic).
        h_tilde: h̃_t = (‖g_t‖² + 2α⟨v_{t-1}, g_t⟩)‖w_t‖² (Thm 2, assumption 6); in the reduced engine,
            where g ⟂ v, it equals ``unit_grad_sq`` and is a read-only view of it.
        lr: ``[steps]`` learning rate η_t = lr · schedule_t.
        L: ``[steps]`` L_t = E‖g̃_t‖² (= E h̃_t): as given for the random model; for the logistic model the
            mean of h̃ over trajectories, then over a trailing window of 200 steps (fewer at the start).
        V: ``[steps]`` the variance of ‖g̃_t‖² (given; estimated like ``L`` for the logistic model).
        grad_floor: ``[steps]`` l_t, the lower bound of ‖g̃_t‖² (Thm 1, assumption 4): 0 for gamma noise,
            L_t − √(3V_t) for uniform noise, NaN for the logistic model (unknown).
        theory_angular_update: ``[steps]`` Δ*_t = √(2λη_t/(1+α)) (Thm 3).
        theory_weight_norm_sq: ``[steps]`` (w*_t)² from η_t and L_t, exact fixed point (Thms 1-2).
        rescale_steps: steps at which w (and possibly v) was rescaled (Sec 4.2).
        wd: λ.  momentum: α.  engine: ``"full"`` or ``"reduced"``.  gradient: ``"random"`` or
        ``"logistic"``.  noise: the distribution of ‖g̃‖² (``"gamma"``/``"uniform"``; ``"none"`` for the
        logistic model).  dim: vector length (``None`` for the reduced engine: dim → ∞).  seed: the seed.
    """

    weight_norm_sq: NDArray[np.float64]
    angular_update: NDArray[np.float64]
    unit_grad_sq: NDArray[np.float64]
    h_tilde: NDArray[np.float64]
    lr: NDArray[np.float64]
    L: NDArray[np.float64]
    V: NDArray[np.float64]
    grad_floor: NDArray[np.float64]
    theory_angular_update: NDArray[np.float64]
    theory_weight_norm_sq: NDArray[np.float64]
    rescale_steps: NDArray[np.int64]
    wd: float
    momentum: float
    engine: str
    gradient: str
    noise: str
    dim: int | None
    seed: int

    @property
    def steps(self) -> int:
        """Number of simulated steps."""
        return int(self.weight_norm_sq.shape[0])

    @property
    def trajectories(self) -> int:
        """Number of independent trajectories."""
        return int(self.weight_norm_sq.shape[1])

    def _rows(self, window: int | None) -> slice:
        if window is None:
            return slice(None)
        if isinstance(window, bool) or not isinstance(window, int | np.integer) or window < 1:
            raise ValueError(f"window must be None or a whole number >= 1, got {window!r}")
        if window > self.steps:
            raise ValueError(f"window must be <= steps ({self.steps}), got {window}")
        return slice(self.steps - int(window), None)

    def rms_angular_update(self, window: int | None = None) -> float:
        """√E[Δ²] over the last ``window`` steps (all if None) and all trajectories: compare with Δ*."""
        d = self.angular_update[self._rows(window)]
        return float(np.sqrt(np.mean(d * d)))

    def mean_angular_update(self, window: int | None = None) -> float:
        """E[Δ] over the last ``window`` steps and all trajectories (below Δ* when ‖g̃‖² varies)."""
        return float(np.mean(self.angular_update[self._rows(window)]))

    def summary(self, window: int | None = None) -> dict[str, float]:
        """Equilibrium statistics over the last ``window`` steps (all if None), pooled over trajectories.

        Ratios are taken step by step against that step's theory, so they stay meaningful under a schedule.

        Returns:
            ``angular_update_rms`` and ``angular_update_mean`` (radians), ``theory_angular_update`` (its
            RMS over the window), ``angular_update_rms_ratio`` = √mean((Δ_t/Δ*_t)²),
            ``angular_update_mean_ratio`` = mean(Δ_t/Δ*_t), ``weight_norm_sq_ratio`` = mean(‖w_t‖²/w*_t²),
            ``weight_norm_sq_msd`` = mean((‖w_t‖² − w*_t²)²) (the left side of Eqs 8/12),
            ``weight_norm_sq_var`` (variance of ‖w_t‖² across trajectories, averaged over the window) and
            ``unit_grad_sq_mean`` / ``h_tilde_mean``.
        """
        rows = self._rows(window)
        d = self.angular_update[rows]
        d_star = self.theory_angular_update[rows][:, None]
        x = self.weight_norm_sq[rows]
        x_star = self.theory_weight_norm_sq[rows][:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = d / d_star
            norm_ratio = x / x_star
        return {
            "angular_update_rms": float(np.sqrt(np.mean(d * d))),
            "angular_update_mean": float(np.mean(d)),
            "theory_angular_update": float(np.sqrt(np.mean(d_star * d_star))),
            "angular_update_rms_ratio": float(np.sqrt(np.mean(ratio * ratio))),
            "angular_update_mean_ratio": float(np.mean(ratio)),
            "weight_norm_sq_ratio": float(np.mean(norm_ratio)),
            "weight_norm_sq_msd": float(np.mean((x - x_star) ** 2)),
            "weight_norm_sq_var": float(np.mean(np.var(x, axis=1))) if x.shape[1] > 1 else math.nan,
            "unit_grad_sq_mean": float(np.mean(self.unit_grad_sq[rows])),
            "h_tilde_mean": float(np.mean(self.h_tilde[rows])),
        }

    def to_dict(self) -> dict[str, Any]:
        """Every field as a plain dict (arrays are the result's own, not copies)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


# --------------------------------------------------------------------------------------------------
# Input handling


def _whole(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {out!r}")
    return out


def _per_step(name: str, value: ArrayLike, steps: int) -> NDArray[np.float64]:
    """A number or a length-``steps`` array of finite numbers, as a float64 ``[steps]`` array."""
    try:
        raw = np.asarray(value)
    except ValueError as exc:
        raise TypeError(f"{name} must be a number or a 1-D array of numbers, got {value!r}") from exc
    if raw.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a number or a 1-D array of numbers, got {value!r}")
    arr = raw.astype(np.float64)
    if arr.ndim == 0:
        arr = np.full(steps, float(arr))
    elif arr.ndim != 1 or arr.shape[0] != steps:
        raise ValueError(f"{name} must be a number or have shape [steps] = [{steps}], got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr[~np.isfinite(arr)][0]!r}")
    return arr


def _schedule(schedule: Sequence[float] | ArrayLike | Callable[[int], float] | None, steps: int) -> NDArray:
    """Per-step lr multipliers: None (constant), an array of length ``steps``, or a function of the step."""
    if schedule is None:
        return np.ones(steps)
    if callable(schedule):
        values = [schedule(t) for t in range(steps)]
        try:
            sched = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError("schedule(step) must return real numbers") from exc
    else:
        if np.size(schedule) == 0:
            raise ValueError("schedule must not be empty: give one lr multiplier per step")
        sched = _per_step("schedule", schedule, steps)
    if not np.all(np.isfinite(sched)) or not np.all(sched > 0):
        bad = sched[~(np.isfinite(sched) & (sched > 0))][0]
        raise ValueError(f"schedule must be finite and > 0 at every step, got {bad!r}")
    return sched


def _device(device: str | torch.device | None) -> torch.device:
    try:
        dev = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must name a torch device, got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available")
    return dev


def _draw_unit_grad_sq(
    rng: np.random.Generator, L: NDArray, V: NDArray, noise: str, trajectories: int
) -> NDArray[np.float64]:
    """‖g̃‖² per step and trajectory, ``[steps, trajectories]``, of mean L_t and variance V_t.

    ``gamma``: shape L²/V, scale V/L (positive, skewed, no floor above 0; :func:`_standard_gamma`);
    ``uniform``: L + √(3V)·U(−1, 1) (floor L − √(3V), which needs V <= L²/3). V = 0 gives L exactly.
    """
    steps = L.shape[0]
    Lc, Vc = L[:, None], V[:, None]
    if noise == "uniform":  # from raw 32-bit words, in place: half the cost of the generator's uniforms
        half_width = np.sqrt(3.0 * Vc)
        n = steps * trajectories
        words = rng.bit_generator.random_raw((n + 1) // 2).view(np.uint32)[:n].reshape(steps, trajectories)
        out = np.multiply(words, 2.0 * _TO_UNIT * half_width)  # uniform on [0, 2√(3V))
        out += Lc - half_width
        return out
    noisy = V > 0
    if not noisy.any():
        return np.repeat(Lc, trajectories, axis=1)
    shape = np.where(noisy, L * L / np.where(noisy, V, 1.0), 1.0)
    scale = np.where(noisy, V / L, 1.0)
    out = np.empty((steps, trajectories))
    change = np.flatnonzero((np.diff(shape) != 0) | (np.diff(scale) != 0)) + 1
    for a, b in itertools.pairwise([0, *change.tolist(), steps]):  # steps that share (L, V): one call
        _standard_gamma(rng, float(shape[a]), float(scale[a]), out[a:b])
    return out if noisy.all() else np.where(noisy[:, None], out, Lc)


_GAMMA_CHUNK = 1 << 16  # variates per pass of _marsaglia_tsang32 (its temporaries: ~2 MB)
_GAMMA_MIN = 1 << 13  # fewer draws than this: numpy's sampler, as _marsaglia_tsang32's ~25 calls cost more


def _standard_gamma(rng: np.random.Generator, k: float, scale: float, out: NDArray[np.float64]) -> None:
    """Fill ``out`` (C-contiguous) with Gamma(k, scale) variates, exact in distribution to float32 rounding.

    For k >= 1, Marsaglia & Tsang's method ("A simple method for generating gamma variables", ACM TOMS
    26(3), 2000) vectorised (:func:`_marsaglia_tsang32`), ~6 ns a variate against ~18 for numpy's float64
    ``standard_gamma`` (numpy 2.4, 1 thread), which draws one normal at a time. k < 1 (V > L², rare) and
    blocks of fewer than ``_GAMMA_MIN`` draws use numpy's sampler.
    """
    if k < 1.0 or out.size < _GAMMA_MIN:  # few draws (L, V vary by step): numpy's calls cost less
        rng.standard_gamma(k, size=out.shape, out=out)
        out *= scale
        return
    flat = out.reshape(-1)
    edges = np.linspace(0, flat.size, -(-flat.size // _GAMMA_CHUNK) + 1).astype(np.int64).tolist()
    for a, b in itertools.pairwise(edges):  # equal passes: no short last one
        _marsaglia_tsang32(rng, k, scale, flat[a:b])


def _marsaglia_tsang32(rng: np.random.Generator, k: float, scale: float, out: NDArray[np.float64]) -> None:
    """Fill the 1-D ``out`` with Gamma(k, scale) variates (k >= 1) in one vectorised pass.

    Candidates d·v, v = (1 + c·x)³ with d = k − 1/3, c = 1/√(9d), x ~ N(0, 1) by Box-Muller, all in float32
    from raw 32-bit words of the generator (half the cost of its float32 uniforms, which take a 64-bit
    draw each); accepted when v > 0 and ln U < x²/2 + d(1 − v + ln v) (95% at k = 1, 99% at k = 4).
    Of n + a few spare candidates the first n are written to ``out`` and the rejected among them replaced
    by accepted spares, or by numpy's sampler when the spares run short, so one pass fills ``out`` and no
    mask compacts it. Box-Muller's words reach |x| <= 6.66 (probability 3e-11 beyond). Every candidate
    takes the full test: the squeeze 0.0331·x⁴ < 1 − U leaves 8% in doubt at every k, and indexing them
    costs more than the two logarithms.
    """
    n = out.size
    d = k - 1.0 / 3.0
    f32 = np.float32
    h = (n + _gamma_spares(n, k) + 1) // 2  # candidate pairs
    m = 2 * h
    u = rng.bit_generator.random_raw(m).view(np.uint32).astype(np.float32)  # [radius h | angle h | U m]
    radius, angle, accept = u[:h], u[h:m], u[m:]
    y = np.empty(m, np.float32)  # c·x
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        radius *= f32(_TO_UNIT)
        np.log(radius, out=radius)  # a zero word: −inf, then x = ±inf or nan, rejected below
        radius *= f32(-2.0 / (9.0 * d))
        np.sqrt(radius, out=radius)  # c·√(−2 ln u₁)
        angle *= f32(2.0 * math.pi * _TO_UNIT)
        np.cos(angle, out=y[:h])
        np.sin(angle, out=y[h:])
        y[:h] *= radius
        y[h:] *= radius
        v = y + f32(1.0)
        v *= v * v
        test = np.log(v)  # v <= 0: nan, rejected
        test -= v
        test += f32(1.0)
        y *= y
        y *= f32(4.5)  # x²/(2d) = 4.5·(c·x)²
        test += y
        test *= f32(d)  # x²/2 + d(1 − v + ln v)
        accept *= f32(_TO_UNIT)
        np.log(accept, out=accept)
    ok = accept < test
    np.multiply(v[:n], f32(d * scale), out=out)
    holes = np.flatnonzero(~ok[:n])
    if holes.size:
        spares = v[n:][ok[n:]][: holes.size] * (d * scale)
        out[holes[: spares.size]] = spares
        if spares.size < holes.size:
            out[holes[spares.size :]] = rng.standard_gamma(k, holes.size - spares.size) * scale


def _gamma_spares(n: int, k: float) -> int:
    """Spare candidates for n Gamma(k) variates: 1.5× the ~5%·k^-1.2 that Marsaglia-Tsang rejects, + 32."""
    return int(n * 0.075 * k**-1.2) + 32


def _grad_floor(L: NDArray, V: NDArray, noise: str) -> NDArray[np.float64]:
    """l_t, the lower bound of ‖g̃_t‖² (Thm 1, assumption 4)."""
    floor = np.maximum(L - np.sqrt(3.0 * V), 0.0) if noise == "uniform" else np.zeros_like(L)
    return np.where(V == 0, L, floor)


# --------------------------------------------------------------------------------------------------
# Engines


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """⟨a_r, b_r⟩ per row of two ``[n, dim]`` tensors, as float64."""
    return torch.linalg.vecdot(a, b, dim=1).to(torch.float64)


def _random_perp(w: torch.Tensor, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rows orthogonal to the rows of w (``x`` = their squared norms), and their squared norms.

    Gaussian rows projected off w are uniform in direction on w's orthogonal complement. The normal draws
    are float32 even for float64 vectors (torch's float64 ``randn`` is ~4x slower on CPU): only the
    distribution of the direction matters, and the projection is done in w's dtype. One projection leaves
    a component along w of relative size ~ the dtype's epsilon, which changes ‖w_{t+1}‖² by a relative
    ~ε·Δ_t: far below anything measured.
    """
    u = torch.randn(w.shape, generator=gen, dtype=torch.float32, device=w.device).to(w.dtype)
    coef = (_rowdot(u, w) / x).to(w.dtype)
    u.sub_(w * coef[:, None])
    return u, _rowdot(u, u)


class _Logistic:
    """The scale-invariant logistic-regression loss of the module docstring, batched over trajectories."""

    def __init__(self, dim: int, dtype: torch.dtype, device: torch.device, gen: torch.Generator) -> None:
        teacher = torch.randn(dim, generator=gen, dtype=dtype, device=device)
        teacher /= torch.linalg.vector_norm(teacher)
        self.x = torch.randn(_LOGISTIC_SAMPLES, dim, generator=gen, dtype=dtype, device=device)
        flip = (
            torch.rand(_LOGISTIC_SAMPLES, generator=gen, dtype=dtype, device=device) < _LOGISTIC_LABEL_NOISE
        )
        self.y = ((self.x @ teacher > 0) ^ flip).to(dtype)
        self.gen = gen

    def gradient(self, w: torch.Tensor) -> torch.Tensor:
        """∂/∂w of each trajectory's minibatch loss (rows are independent, so one backward gives all)."""
        n = w.shape[0]
        idx = torch.randint(0, _LOGISTIC_SAMPLES, (n, _LOGISTIC_BATCH), generator=self.gen, device=w.device)
        xb, yb = self.x[idx], self.y[idx]
        with torch.enable_grad():
            leaf = w.detach().requires_grad_(True)
            unit = leaf / torch.linalg.vector_norm(leaf, dim=1, keepdim=True)
            logits = _LOGISTIC_SCALE * torch.einsum("tbd,td->tb", xb, unit)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yb, reduction="none")
            (grad,) = torch.autograd.grad(loss.mean(dim=1).sum(), leaf)
        return grad


def _run_full(
    lr: NDArray,
    wd: float,
    momentum: float,
    G: NDArray | None,
    init: float | GramState,
    factors: NDArray,
    rescale_momentum: str,
    *,
    trajectories: int,
    dim: int,
    dtype: torch.dtype,
    device: torch.device,
    seed: int,
) -> tuple[NDArray, NDArray, NDArray, NDArray]:
    """Eqs 10-11 on ``[trajectories, dim]`` tensors; ``G is None`` selects the logistic loss.

    Returns ``(weight_norm_sq, angular_update, unit_grad_sq, h_tilde)``, each ``[steps, trajectories]``.
    """
    steps = lr.shape[0]
    f64 = torch.float64
    gen = torch.Generator(device=device).manual_seed(seed)
    task = _Logistic(dim, dtype, device, gen) if G is None else None
    w = torch.randn(trajectories, dim, generator=gen, dtype=dtype, device=device)
    w /= torch.linalg.vector_norm(w, dim=1, keepdim=True)
    v = torch.zeros_like(w)
    if isinstance(init, GramState):  # v = μ·w + a random part ⟂ w of squared norm τ/‖w‖²
        x0 = float(init.w_sq)
        e, e_sq = _random_perp(w, torch.ones(trajectories, dtype=f64, device=device), gen)
        v = (
            w * (float(init.radial) * math.sqrt(x0))
            + e * torch.sqrt(init.area_sq / x0 / e_sq).to(dtype)[:, None]
        )
        w *= math.sqrt(x0)
    else:
        w *= init
    g_all = None if G is None else torch.as_tensor(G, dtype=f64, device=device)
    sums = torch.empty(steps, trajectories, 4, dtype=f64, device=device)
    x_rec = torch.empty(steps, trajectories, dtype=f64, device=device)
    gsq_rec = torch.empty_like(x_rec)
    h_rec = torch.empty_like(x_rec)
    x = _rowdot(w, w)
    for t in range(steps):
        eta = float(lr[t])
        f = float(factors[t])
        if f != 1.0:  # Sec 4.2: w ← f·w; v per ``rescale_momentum``
            if rescale_momentum == "split":
                radial = w * (_rowdot(v, w) / x).to(dtype)[:, None]
                v.sub_(radial).div_(f).add_(radial, alpha=f)
            elif rescale_momentum == "scale":
                v.div_(f)
            w.mul_(f)
            x = x * (f * f)
        if g_all is None:
            g = task.gradient(w)  # type: ignore[union-attr]
            g_tilde_sq = _rowdot(g, g) * x
        else:
            # ‖g‖² = ‖g̃‖²/‖w‖², so that ‖g̃‖² = ‖g‖²‖w‖² is the value drawn (Def 2, Eq 6)
            g, u_sq = _random_perp(w, x, gen)
            g.mul_(torch.sqrt(g_all[t] / (x * u_sq)).to(dtype)[:, None])
            g_tilde_sq = g_all[t]
        x_rec[t] = x
        gsq_rec[t] = g_tilde_sq
        h_rec[t] = g_tilde_sq + 2.0 * momentum * _rowdot(v, g) * x if momentum else g_tilde_sq
        # Eq 10 (Eq 7 when α = 0, where v is just this step's g + λw) and Eq 11
        v.mul_(momentum).add_(g).add_(w, alpha=wd)
        d = v * eta
        w.sub_(d)
        sums[t] = geometry.update_sums(w, d, per_channel=True)
        x = sums[t, :, 0]  # ‖w_{t+1}‖²
    angles = geometry.angle_from_sums(sums)
    return (
        x_rec.cpu().numpy(),
        angles.cpu().numpy(),
        gsq_rec.cpu().numpy(),
        h_rec.cpu().numpy(),
    )


def _trailing_mean(values: NDArray, window: int) -> NDArray:
    """Mean of the last ``window`` values up to and including each step (fewer at the start)."""
    c = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(1, values.shape[0] + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


# --------------------------------------------------------------------------------------------------
# Public entry point


def simulate(
    lr: float,
    wd: float,
    momentum: float = 0.0,
    *,
    steps: int,
    trajectories: int = 64,
    dim: int = 1024,
    L: float | ArrayLike = 1.0,
    V: float | ArrayLike = 0.0,
    schedule: ArrayLike | Callable[[int], float] | None = None,
    rescale: bool = False,
    rescale_momentum: Momentum = "split",
    init_norm: float | Literal["equilibrium"] = 1.0,
    noise: Noise = "gamma",
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    engine: Engine = "auto",
    gradient: Gradient = "random",
    device: str | torch.device | None = None,
) -> SimulationResult:
    """Simulate SGD (Eq 7) / SGDM (Eqs 10-11) with weight decay on a scale-invariant weight.

    Every trajectory starts from its own random direction and evolves independently; the unit-gradient
    norms ‖g̃‖² of the random model are drawn from one numpy generator (SFC64, the fastest numpy has)
    seeded by ``seed``, the same draws for both engines, so they can be compared trajectory by trajectory.

    Args:
        lr: base learning rate η (> 0); step t uses η_t = lr · schedule_t.
        wd: weight decay λ (>= 0), coupled into the gradient as in ``torch.optim.SGD``. λη_t < 1 at every
            step (else the decay overshoots and nothing the theorems say applies).
        momentum: heavy-ball α in [0, 1) (0 is plain SGD).
        steps: number of steps (>= 1).
        trajectories: independent runs simulated at once (>= 1).
        dim: vector length for the full engine (>= 2); the reduced engine is the dim → ∞ limit.
        L: E‖g̃_t‖², a number or one value per step (> 0); random model only.
        V: variance of ‖g̃_t‖², a number or one value per step (>= 0); random model only.
        schedule: lr multipliers, one per step (> 0), or a function of the step returning one;
            None for a constant rate. Multi-step and cosine schedules are just such arrays.
        rescale: at every step whose rate differs from the previous one (division by k = η_{t-1}/η_t),
            multiply w by :func:`smdyn.theory.rescale_factor` ``(k)`` = k^(−¼) before the step, which puts
            ‖w‖ at the new equilibrium at once (Sec 4.2).
        rescale_momentum: what ``rescale`` does to the momentum buffer v, with c = k^(−¼) the factor
            applied to w (the choices of :class:`smdyn.rescale.Rescaler`'s ``momentum``). ``"split"`` (the
            default): the part of v along w is multiplied by c and the rest divided by c. ``"scale"``: v/c.
            ``"keep"``: v unchanged. Why split: in equilibrium v is mostly accumulated gradient, which scales
            as 1/‖w‖, and ‖v‖² ≈ 2λ‖w‖²/(η(1+α)) ∝ η^(−½) grows by k^½ = 1/c², so the tangential part must
            be divided by c; the radial part sets the norm's drift, ⟨w, v⟩ = −λ‖w‖²/(1+α) ∝ c², so it must be
            multiplied by c. Measured (reduced engine, V = 0, from equilibrium, λη = 1e-4 after a drop by
            k = 2/10/100; simulation report, section 4), min and max of Δ/Δ*_new after the drop at α = 0.9:
            ``"split"`` 1.0000/0.9999/0.9987 to 1.0000 (exact to first order in λη: λη = 1e-2 before the
            drop by 100); ``"scale"`` 0.9996/0.998/0.991 to 1.0000 (the radial part is k^½ off);
            ``"keep"`` (v k^¼ too short) 0.87/0.67/0.52 to 1.005, 12-17 steps until within 1%. At
            α = 0.99: ``"split"`` within 1.2e-3, ``"scale"`` 0.968-1.014 (272 steps to 1% at k = 100),
            ``"keep"`` 0.34-1.23 and 476-652 steps to 1%. At α = 0 the buffer plays no part.
        init_norm: ‖w_0‖ (> 0) with v = 0, or ``"equilibrium"`` to start at the fixed point of the Gram
            recurrence for η_0 and L_0 (‖w_0‖ = w*, v at its equilibrium radial and tangential parts);
            random model only.
        noise: distribution of ‖g̃_t‖² (random model): ``"gamma"`` (shape L²/V, scale V/L: always positive
            but with no floor l > 0, so outside Thm 1's assumption 4) or ``"uniform"`` on
            L ± √(3V) (floor l = L − √(3V); needs V <= L²/3).
        seed: seed of every random number used.
        dtype: floating dtype of the full engine's vectors (torch.float32 or torch.float64); the reduced
            engine always computes in float64.
        engine: ``"full"`` (vectors), ``"reduced"`` (Gram recurrence, random model only) or ``"auto"``
            (reduced for the random model, full for the logistic one).
        gradient: ``"random"`` (controlled ‖g̃‖²) or ``"logistic"`` (true gradient of a real loss).
        device: torch device of the full engine (default CPU); the reduced engine runs in numpy.

    Returns:
        A :class:`SimulationResult`.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of range (the message names it): lr <= 0, wd < 0, λη_t >= 1,
            momentum outside [0, 1), steps/trajectories < 1, dim < 2, L <= 0, V < 0, V > L²/3 with
            uniform noise, an empty or non-positive schedule, an unknown engine/gradient/noise, the
            reduced engine with the logistic gradient, L/V/init ``"equilibrium"`` with the logistic
            gradient, or an unavailable device.
    """
    setup = _setup(
        lr, wd, momentum, steps=steps, trajectories=trajectories, dim=dim, L=L, V=V, schedule=schedule,
        rescale=rescale, rescale_momentum=rescale_momentum, init_norm=init_norm, noise=noise, seed=seed,
        dtype=dtype, engine=engine, gradient=gradient, device=device,
    )  # fmt: skip
    return _run(setup)


@dataclass(frozen=True)
class _Setup:
    """:func:`simulate`'s arguments, checked, with the per-step series they imply."""

    lr: NDArray[np.float64]  # η_t
    wd: float
    momentum: float
    L: NDArray[np.float64]
    V: NDArray[np.float64]
    factors: NDArray[np.float64]  # the Sec 4.2 weight factor before each step (1.0: none)
    init: float | Literal["equilibrium"]
    rescale_momentum: Momentum
    noise: str
    gradient: str
    engine: str  # "full" or "reduced"
    trajectories: int
    dim: int
    seed: int
    dtype: torch.dtype
    device: torch.device


def _check_choices(
    engine: str, gradient: str, noise: str, dtype: torch.dtype, rescale: bool, rescale_momentum: str
) -> None:
    if engine not in ("full", "reduced", "auto"):
        raise ValueError(f"engine must be 'full', 'reduced' or 'auto', got {engine!r}")
    if gradient not in ("random", "logistic"):
        raise ValueError(f"gradient must be 'random' or 'logistic', got {gradient!r}")
    if noise not in ("gamma", "uniform"):
        raise ValueError(f"noise must be 'gamma' or 'uniform', got {noise!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    if not isinstance(rescale, bool):
        raise TypeError(f"rescale must be a bool, got {rescale!r}")
    if rescale_momentum not in ("split", "scale", "keep"):
        raise ValueError(f"rescale_momentum must be 'split', 'scale' or 'keep', got {rescale_momentum!r}")


def _setup(
    lr: float,
    wd: float,
    momentum: float,
    *,
    steps: int,
    trajectories: int,
    dim: int,
    L: float | ArrayLike,
    V: float | ArrayLike,
    schedule: ArrayLike | Callable[[int], float] | None,
    rescale: bool,
    rescale_momentum: Momentum,
    init_norm: float | str,
    noise: str,
    seed: int,
    dtype: torch.dtype,
    engine: str,
    gradient: str,
    device: str | torch.device | None,
) -> _Setup:
    """Check :func:`simulate`'s arguments (the errors its docstring lists) and derive the series."""
    lr_f = _real("lr", lr)
    if lr_f <= 0:
        raise ValueError(f"lr must be > 0, got {lr_f!r}")
    wd_f = _real("wd", wd)
    if wd_f < 0:
        raise ValueError(f"wd must be >= 0, got {wd_f!r}")
    alpha = _real("momentum", momentum)
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {alpha!r}")
    steps = _whole("steps", steps, 1)
    trajectories = _whole("trajectories", trajectories, 1)
    dim = _whole("dim", dim, 2)
    seed = _whole("seed", seed, 0)
    _check_choices(engine, gradient, noise, dtype, rescale, rescale_momentum)
    lr_t = lr_f * _schedule(schedule, steps)
    if np.any(wd_f * lr_t >= 1.0):
        t = int(np.argmax(wd_f * lr_t >= 1.0))
        raise ValueError(
            "lr * wd must be < 1 at every step (the decay would overshoot), "
            f"got {wd_f * lr_t[t]!r} at step {t}"
        )
    L_t = _per_step("L", L, steps)
    if np.any(L_t <= 0):
        raise ValueError(f"L must be > 0, got {L_t[L_t <= 0][0]!r}")
    V_t = _per_step("V", V, steps)
    if np.any(V_t < 0):
        raise ValueError(f"V must be >= 0 (it is a variance), got {V_t[V_t < 0][0]!r}")
    if noise == "uniform" and np.any(V_t > L_t * L_t / 3.0):
        raise ValueError("V must be <= L**2 / 3 for uniform noise (‖g̃‖² = L ± √(3V) must stay >= 0)")
    if isinstance(init_norm, str):
        if init_norm != "equilibrium":
            raise ValueError(f"init_norm must be a positive number or 'equilibrium', got {init_norm!r}")
    elif _real("init_norm", init_norm) <= 0:
        raise ValueError(f"init_norm must be > 0, got {init_norm!r}")
    if gradient == "logistic":
        if engine == "reduced":
            raise ValueError("engine 'reduced' needs gradient='random' (the Gram recurrence assumes it)")
        if not (np.all(L_t == 1.0) and np.all(V_t == 0.0)):
            raise ValueError("L and V set the random model; with gradient='logistic' the data set fixes them")
        if init_norm == "equilibrium":
            raise ValueError("init_norm='equilibrium' needs gradient='random' (L must be known in advance)")
    dev = _device(device)
    if wd_f == 0.0 and init_norm == "equilibrium":
        raise ValueError(
            "init_norm='equilibrium' needs wd > 0 (without weight decay there is no equilibrium)"
        )
    factors = np.ones(steps)
    if rescale and steps > 1:
        factors[1:] = np.asarray(theory.rescale_factor(lr_t[:-1] / lr_t[1:]), dtype=np.float64)
    return _Setup(
        lr=lr_t, wd=wd_f, momentum=alpha, L=L_t, V=V_t, factors=factors,
        init="equilibrium" if init_norm == "equilibrium" else float(init_norm),
        rescale_momentum=rescale_momentum, noise=noise, gradient=gradient,
        engine=("reduced" if gradient == "random" else "full") if engine == "auto" else engine,
        trajectories=trajectories, dim=dim, seed=seed, dtype=dtype, device=dev,
    )  # fmt: skip


def _run(s: _Setup) -> SimulationResult:
    """Draw the gradients' norms, run the engine and put the theory beside it."""
    L_t, V_t, steps = s.L, s.V, s.lr.shape[0]
    G: NDArray | None = None
    floor = np.full(steps, math.nan)
    if s.gradient == "random":
        rng = np.random.Generator(np.random.SFC64(s.seed))  # the fastest of numpy's bit generators
        G = _draw_unit_grad_sq(rng, L_t, V_t, s.noise, s.trajectories)
        floor = _grad_floor(L_t, V_t, s.noise)
    init = (
        dynamics.fixed_point(float(L_t[0]), float(s.lr[0]), s.wd, s.momentum)
        if s.init == "equilibrium"
        else float(s.init)
    )
    if s.engine == "reduced":
        assert G is not None
        one = init if isinstance(init, GramState) else GramState.at_rest(init)
        start = GramState(*(np.full(s.trajectories, float(v)) for v in one))
        x, delta, _ = dynamics.run(start, s.lr, s.wd, s.momentum, G, s.factors, s.rescale_momentum)
        gsq, h = G, G.view()  # g ⟂ v: h̃ = ‖g̃‖², shared: a copy would cost ~1.5 ns a trajectory-step
        h.flags.writeable = False
    else:
        x, delta, gsq, h = _run_full(
            s.lr, s.wd, s.momentum, G, init, s.factors, s.rescale_momentum,
            trajectories=s.trajectories, dim=s.dim, dtype=s.dtype, device=s.device, seed=s.seed,
        )  # fmt: skip
    if s.gradient == "logistic":
        L_t = _trailing_mean(h.mean(axis=1), _L_WINDOW)
        V_t = _trailing_mean(h.var(axis=1), _L_WINDOW) if s.trajectories > 1 else np.full(steps, math.nan)
    theory_delta = np.asarray(theory.angular_update(s.lr, s.wd, s.momentum), dtype=np.float64)
    theory_norm = np.asarray(
        theory.weight_norm(np.maximum(L_t, 0.0), s.lr, s.wd, s.momentum), dtype=np.float64
    )
    return SimulationResult(
        weight_norm_sq=x,
        angular_update=delta,
        unit_grad_sq=gsq,
        h_tilde=h,
        lr=s.lr,
        L=L_t,
        V=V_t,
        grad_floor=floor,
        theory_angular_update=theory_delta,
        theory_weight_norm_sq=theory_norm**2,
        rescale_steps=np.flatnonzero(s.factors != 1.0).astype(np.int64),
        wd=s.wd,
        momentum=s.momentum,
        engine=s.engine,
        gradient=s.gradient,
        noise=s.noise if s.gradient == "random" else "none",
        dim=s.dim if s.engine == "full" else None,
        seed=s.seed,
    )
