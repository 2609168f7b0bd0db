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
        return w_sq, delta, _run_batch(state, lrs, wd, momentum, rows, fs, buffer, w_sq, delta)
    for t, (eta, f) in enumerate(zip(lrs, fs, strict=True)):
        if f != 1.0:
            state = rescale(state, f, buffer)
        w_sq[t] = state.w_sq
        state, delta[t] = step(state, eta, wd, momentum, rows[t])
    return w_sq, delta, state


def _run_batch(
    state: GramState,
    lrs: list[float],
    wd: float,
    momentum: float,
    rows: Any,
    fs: list[float],
    buffer: str,
    w_sq: NDArray[np.float64],
    delta: NDArray[np.float64],
) -> GramState:
    """:func:`run` for arrays: :func:`step`'s equations, in place into preallocated rows.

    The simulator's hot loop: with 1 000 trajectories a step is 16 numpy calls of ~0.6 µs each (~2 µs for
    the square root and ~3.5 µs for atan2); Python floats as operands cost ~0.3 µs a call more than 0-d
    arrays, and writing in place saves the temporaries and the copies into ``w_sq`` and ``delta``. Between
    steps the buffer's coordinate is held as ημ, which saves a call; so the last bits may differ from
    :func:`step`'s (tests/test_dynamics.py checks both against the vectors).
    """
    shape = w_sq.shape[1:]
    w_sq[0] = state.w_sq
    mu = np.array(np.broadcast_to(state.radial, shape), dtype=np.float64)
    mu *= lrs[0]  # held as ημ between steps
    tau: Any = np.array(np.broadcast_to(state.area_sq, shape), dtype=np.float64)
    w, e, wv_next, cx, x_last = (np.empty(shape) for _ in range(5))
    mul, div, sub = np.multiply, np.divide, np.subtract
    nexts = [*w_sq[1:], x_last]
    # 0-d arrays: numpy takes them faster than Python floats
    alpha_plain, alpha_sq = np.array(momentum), np.array(momentum * momentum)
    eta_before = lrs[0]
    lr_wd, lr_sq, lr_0d = (np.array(v) for v in (eta_before * wd, eta_before**2, eta_before))
    for eta, f, x, x_next, d, row in zip(lrs, fs, w_sq, nexts, delta, rows, strict=True):
        if f != 1.0:  # rescale(), in place; without momentum μ and τ enter nothing
            x *= f * f
            if buffer == "scale":
                mu /= f * f
            elif buffer == "keep":
                mu /= f
                tau = tau * (f * f)  # not in place: without momentum tau is the caller's row of L
        alpha = alpha_plain
        if eta != eta_before:
            lr_wd, lr_sq, lr_0d = (np.array(v) for v in (eta * wd, eta * eta, eta))
            alpha = np.array(momentum * eta / eta_before)  # ημ of the step before → αημ of this one
        if momentum:
            mu *= alpha
            mu += lr_wd  # p = η(αμ + λ); μ is spent until the step writes ημ'
            tau *= alpha_sq
            tau += row
            p = mu
        else:
            p, tau = lr_wd, row
        mul(p, x, w)
        div(tau, x, e)
        e *= lr_sq
        mul(p, w, cx)
        e += cx
        sub(w, e, wv_next)
        sub(x, w, cx)
        sub(cx, wv_next, x_next)
        div(wv_next, x_next, mu)
        cx /= lr_0d
        np.sqrt(tau, d)
        np.arctan2(d, cx, d)  # Δ = atan2(√τ', (x − W)/η)
        eta_before = eta
    mu /= eta_before
    return GramState(x_last, mu, np.array(np.broadcast_to(tau, shape), dtype=np.float64))
