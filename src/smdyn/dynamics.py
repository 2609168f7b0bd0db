"""The reduced dynamics of SGD(M) with weight decay on a scale-invariant weight: three numbers per trajectory.

Wan et al., "Spherical Motion Dynamics", NeurIPS 2021, Eqs 10-11 (``torch.optim.SGD`` with ``dampening=0``,
``nesterov=False``; SGD is α = 0): v' = αv + g + λw, w' = w − ηv'. When the gradient g is orthogonal to both w
and the buffer v (Lemma 1 gives g ⟂ w; g ⟂ v is the isotropic limit of many dimensions, and does not matter at
α = 0), the step depends on the vectors only through their Gram matrix, and ‖g‖ only through the unit-gradient
norm ‖g̃‖² = ‖g‖²‖w‖² (Def 2) — called L here, as its expectation is in Thms 1-2 (docs/design.md §2).

The state is the Gram matrix of (w_t, v_{t−1}) in three coordinates in which a Sec 4.2 rescaling (with
the buffer split as :class:`smdyn.Rescaler` splits it) changes only x (:class:`GramState`):

    x = ‖w‖²,   μ = ⟨w, v⟩/‖w‖²  (v's component along w, in units of w),
    τ = ‖w‖²‖v‖² − ⟨w, v⟩² = ‖w‖²‖v⟂w‖²  (the Gram determinant: squared area spanned by w and v).

One step is docs/design.md §2's four equations, with L/‖w‖² + α²‖v⟂w‖² = τ'/x, written for the
η-scaled products W = η⟨w, v'⟩ = ηmx (m = αμ + λ) and E = η²‖v'‖² = ηm·W + η²τ'/x:

    τ' = α²τ + L                  w' − w lies along v', so the area of (w', v') is that of (w, v')
    η⟨w', v'⟩ = W − E,            μ' = (W − E)/(ηx')
    x' = (x − W) − (W − E)        = ‖w‖² − 2η⟨w, v'⟩ + η²‖v'‖²
    Δ = atan2(η‖v'⟂w‖, ‖w‖ − η⟨w, v'⟩/‖w‖) = atan2(√τ', (x − W)/η)       (Def 3, Eq 13, without arccos)

x' is x less terms of relative size ~λη, so rounding moves it by ~1e-16·x at random per step; the form
c²x + η²τ'/x (c = 1 − ηm) rounds c the same way every step and drifts by ~1e-16·x per step over the
~1/(λη) steps of the norm's relaxation. W − E is a difference of two terms ~2× apart in equilibrium, so
nothing cancels. At α = 0 the step is the SGD norm recurrence ‖w'‖² = (1−λη)²‖w‖² + η²L/‖w‖² exactly
(τ' = L).

Every function takes Python floats (the planner's scalar loops) or numpy float64 arrays of any shape, one
entry per trajectory (the simulator's batches), and broadcasts.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, Final, Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from smdyn import theory

__all__ = [
    "NORM_EXPONENT",
    "GramState",
    "equilibrium_delta",
    "fixed_point",
    "rescale",
    "run",
    "step",
]

NORM_EXPONENT: Final = 0.25
"""w* ∝ η^¼ at fixed λ, α, L (Thms 1-2): the exponent a rescaling after an lr change applies (Sec 4.2)."""

Buffer = Literal["split", "scale", "keep"]
Value = Any  # a Python float or a float64 ndarray (one entry per trajectory)


class GramState(NamedTuple):
    """The Gram matrix of (w_t, v_{t−1}) (weight before step t, momentum buffer before it), per trajectory.

    Attributes:
        w_sq: x = ‖w‖².
        radial: μ = ⟨w, v⟩/‖w‖², the buffer's component along w in units of w.
        area_sq: τ = ‖w‖²‖v‖² − ⟨w, v⟩², the Gram determinant (‖w‖² times the buffer's squared part ⟂ w).
    """

    w_sq: Value
    radial: Value
    area_sq: Value

    @classmethod
    def from_gram(cls, w_sq: Value, wv: Value, v_sq: Value) -> GramState:
        """From the Gram entries ‖w‖², ⟨w, v⟩, ‖v‖² (τ is clipped at 0 against rounding)."""
        det = w_sq * v_sq - wv * wv
        return cls(w_sq, wv / w_sq, max(det, 0.0) if isinstance(det, float) else np.maximum(det, 0.0))

    @classmethod
    def at_rest(cls, w_norm: Value) -> GramState:
        """‖w‖ = ``w_norm`` with an empty momentum buffer (a fresh start)."""
        return cls(w_norm * w_norm, 0.0 * w_norm, 0.0 * w_norm)

    @property
    def wv(self) -> Value:
        """⟨w, v⟩."""
        return self.radial * self.w_sq

    @property
    def v_sq(self) -> Value:
        """‖v‖² = ‖v⟂w‖² + μ²‖w‖²."""
        return self.area_sq / self.w_sq + self.radial * self.radial * self.w_sq


_new = tuple.__new__  # builds a GramState in a third of the time of its constructor (the planner's loops)


def _sqrt_atan2(y_sq: Value, x: Value) -> Value:
    """atan2(√y_sq, x), in math for Python floats and numpy for arrays."""
    if isinstance(y_sq, float) and isinstance(x, float):
        return math.atan2(math.sqrt(y_sq), x)
    return np.arctan2(np.sqrt(y_sq), x)


def step(state: GramState, lr: Value, wd: float, momentum: float, L: Value) -> tuple[GramState, Value]:
    """One SGD(M) step (Eqs 10-11) with ‖g̃‖² = ``L``: returns the next state and Δ = ∠(w_t, w_{t+1}).

    Args:
        state: the state before the step.
        lr: η of this step (> 0).
        wd: λ (>= 0), coupled as in ``torch.optim.SGD``.
        momentum: α in [0, 1); 0 is plain SGD.
        L: the unit-gradient norm ‖g̃‖² = ‖g‖²‖w‖² of this step's gradient (a float, or one per trajectory).
    """
    x, mu, tau = state
    if momentum:
        p = lr * (momentum * mu + wd)  # η⟨w, v'⟩/‖w‖²
        tau = momentum * momentum * tau + L  # ‖w‖²‖v'⟂w‖²
    else:
        p, tau = lr * wd, L
    w = p * x  # η⟨w, v'⟩
    e = p * w + lr * lr * (tau / x)  # η²‖v'‖²
    wv_next = w - e  # η⟨w', v'⟩
    cx = x - w  # (1 − η⟨w, v'⟩/‖w‖²)·‖w‖²
    x_next = cx - wv_next
    new = _new(GramState, (x_next, wv_next / (lr * x_next), tau))
    return new, _sqrt_atan2(tau, cx / lr)


def rescale(state: GramState, c: Value, buffer: Buffer = "split") -> GramState:
    """The state after w ← c·w (Sec 4.2) with the buffer treated as :class:`smdyn.Rescaler` treats it.

    ``"split"`` (the Rescaler's default): the buffer's part along w × c and the rest ÷ c, so μ and τ are
    unchanged; ``"scale"``: v ← v/c; ``"keep"``: v unchanged.
    """
    x, mu, tau = state
    c_sq = c * c
    if buffer == "split":
        return GramState(x * c_sq, mu, tau)
    if buffer == "scale":
        return GramState(x * c_sq, mu / c_sq, tau)
    if buffer == "keep":
        return GramState(x * c_sq, mu / c, tau * c_sq)
    raise ValueError(f"buffer must be 'split', 'scale' or 'keep', got {buffer!r}")


def fixed_point(L: Value, lr: Value, wd: float, momentum: float) -> GramState:
    """The state that :func:`step` maps to itself at constant L, η, λ > 0, α.

    ‖w*‖² from Thm 2 (:func:`smdyn.theory.weight_norm`, the exact fixed point); at it the norm is stationary,
    which needs ⟨w, v⟩ = −λ‖w*‖²/(1+α), and τ = α²τ + L gives τ = L/(1−α²).
    """
    x = np.asarray(theory.weight_norm(L, lr, wd, momentum)) ** 2
    mu = -wd / (1.0 + momentum) + 0.0 * x
    tau = L / (1.0 - momentum * momentum) + 0.0 * x
    if x.ndim == 0:
        return GramState(float(x), float(mu), float(tau))
    return GramState(x, mu, tau)


def equilibrium_delta(lr: ArrayLike, wd: float, momentum: float) -> Any:
    """Δ at the fixed point: cos Δ = 1 − u with u = λη/(1+α) exactly, Δ ≈ √(2λη/(1+α)) (Thm 3)."""
    u = np.asarray(lr) * wd / (1.0 + momentum)
    return np.arctan2(np.sqrt(u * (2.0 - u)), 1.0 - u)


def run(
    state: GramState,
    lr: Sequence[float] | NDArray[np.float64],
    wd: float,
    momentum: float,
    L: Sequence[float] | NDArray[np.float64],
    factors: Sequence[float] | NDArray[np.float64] | None = None,
    buffer: Buffer = "split",
) -> tuple[NDArray[np.float64], NDArray[np.float64], GramState]:
    """Iterate :func:`step` over ``len(lr)`` steps, rescaling by ``factors[t]`` (1: none) before step t.

    Args:
        state: the state before the first step: floats (one trajectory), or arrays of one shape (many).
        lr: η_t per step.
        wd, momentum: λ and α.
        L: ‖g̃_t‖² per step: ``[steps]``, or ``[steps, *trajectories]`` for one value per trajectory.
        factors: the weight factor c_t applied before step t, or None.
        buffer: what a rescaling does to the buffer (:func:`rescale`).

    Returns:
        ``(w_sq, delta, final)``: ‖w_t‖² entering step t (after its rescaling) and Δ_t, each
        ``[steps, *trajectories]``, and the state after the last step.
    """
    if buffer not in ("split", "scale", "keep"):
        raise ValueError(f"buffer must be 'split', 'scale' or 'keep', got {buffer!r}")
    lrs = np.asarray(lr, dtype=np.float64).tolist()
    ells = np.asarray(L, dtype=np.float64)
    rows = ells.tolist() if ells.ndim == 1 else ells
    fs = [1.0] * len(lrs) if factors is None else np.asarray(factors, dtype=np.float64).tolist()
    if len(rows) != len(lrs) or len(fs) != len(lrs):
        raise ValueError(
            f"lr, L and factors must have one entry per step, got {len(lrs)}, {len(rows)}, {len(fs)}"
        )
    per_trajectory = ells.shape[1:] if ells.ndim > 1 else ()
    shape = (len(lrs), *np.broadcast_shapes(*(np.shape(v) for v in state), per_trajectory))
    w_sq, delta = np.empty(shape), np.empty(shape)
    if not lrs:
        return w_sq, delta, state
    if len(shape) > 1:
        return w_sq, delta, _run_batch(state, lrs, wd, momentum, ells, fs, buffer, w_sq, delta)
    for t, (eta, f) in enumerate(zip(lrs, fs, strict=True)):
        if f != 1.0:
            state = rescale(state, f, buffer)
        w_sq[t] = state.w_sq
        state, delta[t] = step(state, eta, wd, momentum, rows[t])
    return w_sq, delta, state


_CHUNK_VALUES = 1 << 15  # steps per chunk × trajectories: the chunk's η²τ and x − W stay in the L2 cache


def _run_batch(
    state: GramState,
    lrs: list[float],
    wd: float,
    momentum: float,
    ells: NDArray[np.float64],
    fs: list[float],
    buffer: str,
    w_sq: NDArray[np.float64],
    delta: NDArray[np.float64],
) -> GramState:
    """:func:`run` for arrays: :func:`step`'s equations in place, 10 numpy calls a step (6 without momentum).

    The simulator's hot loop. At 1 000 trajectories a numpy call costs ~0.5 µs of overhead, more than its
    arithmetic, so the loop makes few calls. It carries W' = η⟨w', v'⟩ rather than μ (W_{t+1} =
    a·W'_t + ηλ·x_{t+1}, a = αη_{t+1}/η_t), η²τ rather than τ (η²τ' = a²·η²τ + η²L), and reads
    η⟨w', v'⟩ = ((x − W)·W − η²τ')/x; a rate change or a rescaling only changes per-step coefficients,
    computed for all steps up front as 0-d arrays (numpy takes them faster than Python floats). What does
    not feed the next step runs once per chunk of steps over all of them: η²L, and Δ = atan2(η√τ', x − W)
    as arctan of the ratio (numpy's arctan2 costs twice its arctan). The last bits may differ from
    :func:`step`'s (tests/test_dynamics.py checks both against the vectors).
    """
    steps, shape = len(lrs), w_sq.shape[1:]
    n = math.prod(shape)
    xs, ds = w_sq.reshape(steps, n), delta.reshape(steps, n)  # views: run()'s fresh arrays
    ell = ells[:, None] if ells.ndim == 1 else np.broadcast_to(ells, (steps, *shape)).reshape(steps, n)
    lr = np.asarray(lrs)
    coefs = _step_coefficients(lr, wd, momentum, fs, buffer)
    chunk = max(8, min(256, _CHUNK_VALUES // max(n, 1)))
    taus, cs = np.empty((chunk + 1, n)), np.empty((chunk, n))  # η²τ' and x − W of the chunk's steps
    xb = np.empty((chunk + 1, n))
    w, wv, tmp = (np.empty(n) for _ in range(3))
    xb[0].reshape(shape)[...] = state.w_sq
    np.multiply(state.radial, state.w_sq, out=wv.reshape(shape))  # ⟨w_0, v⟩: a_0 = αη_0
    taus[0].reshape(shape)[...] = state.area_sq  # τ_0: a'_0 = (αη_0)²
    rows = list(zip(xb[:-1], xb[1:], taus[:-1], taus[1:], cs, strict=True))  # the same for every chunk
    mul, add, sub, div = np.multiply, np.add, np.subtract, np.divide
    for t0 in range(0, steps, chunk):
        k = min(chunk, steps - t0)
        mul((lr[t0 : t0 + k] ** 2)[:, None], ell[t0 : t0 + k], taus[1 : k + 1])  # η²τ' = η²L + a'·η²τ
        for (x, x_next, tau_old, tau, c), (a, a_tau, lr_wd), f in zip(
            rows[:k], coefs[t0 : t0 + k], fs[t0 : t0 + k], strict=True
        ):
            if f != 1.0:  # rescale(): x here, ⟨w, v⟩ and τ through the coefficients
                x *= f * f
            mul(x, lr_wd, w)
            if momentum:
                mul(tau_old, a_tau, tmp)
                add(tau, tmp, tau)
                mul(wv, a, tmp)
                add(w, tmp, w)  # W = η⟨w, v'⟩ = η(α⟨w, v⟩ + λ‖w‖²)
            sub(x, w, c)
            mul(w, c, wv)
            sub(wv, tau, wv)
            div(wv, x, wv)  # η⟨w', v'⟩ = W − η²‖v'‖² = ((x − W)·W − η²τ')/x
            sub(c, wv, x_next)  # x' = (x − W) − η⟨w', v'⟩
        _angles(taus[1 : k + 1], cs[:k], ds[t0 : t0 + k])
        xs[t0 : t0 + k] = xb[:k]
        taus[0] = taus[k]
        xb[0] = xb[k]
    last, x_last = lr[-1], xb[0].copy()
    return GramState(
        x_last.reshape(shape),
        (wv / (last * x_last)).reshape(shape),
        (taus[0] / (last * last)).reshape(shape),
    )


def _angles(y_sq: NDArray[np.float64], x: NDArray[np.float64], out: NDArray[np.float64]) -> None:
    """``out`` = atan2(√y_sq, x), by arctan(√y_sq / x) where x > 0 (all of them, but for huge steps)."""
    np.sqrt(y_sq, out=out)
    if x.size and x.min() > 0:
        np.divide(out, x, out=out)
        np.arctan(out, out=out)
    else:
        np.arctan2(out, x, out=out)


def _step_coefficients(
    lr: NDArray[np.float64], wd: float, momentum: float, fs: list[float], buffer: str
) -> list[tuple[NDArray[np.float64], ...]]:
    """Per step, as 0-d arrays: a, a' and ηλ with W = a·W'_before + ηλ·x and η²τ' = a'·(η²τ)_before + η²L.

    a = α·η_t/η_{t−1} and a' = a² carry the state into this step's units (step 0 takes ⟨w_0, v⟩ and τ_0:
    η_{−1} = 1); a rescaling before the step (:func:`rescale`) multiplies them by its factors on ⟨w, v⟩
    and τ.
    """
    a_wv = momentum * lr / np.r_[1.0, lr[:-1]]
    a_tau = a_wv * a_wv
    for t in np.flatnonzero(np.asarray(fs) != 1.0):
        f = fs[t]
        if buffer == "split":  # μ kept: ⟨w, v⟩ = μ‖w‖² × f²
            a_wv[t] *= f * f
        elif buffer == "keep":  # ⟨w, v⟩ × f, τ = ‖w‖²‖v⟂w‖² × f²
            a_wv[t] *= f
            a_tau[t] *= f * f
    table = np.stack([a_wv, a_tau, lr * wd], axis=1)
    starts = np.flatnonzero(np.r_[True, np.any(table[1:] != table[:-1], axis=1)]).tolist()
    out: list[tuple[NDArray[np.float64], ...]] = []
    for a, b in itertools.pairwise([*starts, len(lr)]):  # a run of equal steps shares its arrays
        out += [tuple(np.array(v) for v in table[a])] * (b - a)
    return out
