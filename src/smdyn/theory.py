"""Closed forms of Spherical Motion Dynamics: what equilibrium a scale-invariant weight settles into.

Wan et al., "Spherical Motion Dynamics: Learning Dynamics of Normalized Neural Network using SGD and
Weight Decay" (NeurIPS 2021) show that a scale-invariant weight trained by SGD (Eq 7) or heavy-ball SGDM
(Eqs 10-11) with weight decay reaches an equilibrium in which the angular update Δ_t = ∠(w_t, w_{t+1})
depends only on the hyper-parameters (Thm 3) and the weight norm on them and the unit-gradient norm
(Thms 1-2). This module turns those results, and their AdamW / Lion counterparts from Kosson et al.,
"Rotational Equilibrium: How Weight Decay Balances Learning Across Neural Networks" (ICML 2024,
arXiv 2305.17212), into vectorised functions.

Notation: ``lr`` = η, ``wd`` = λ, ``momentum`` = α (SGD is α = 0), ``L`` = E‖g̃‖² (SGD) or E h̃ (SGDM),
``k`` = the factor the learning rate is divided by. Every function takes Python numbers or numpy arrays
(broadcast against each other): all-scalar input gives a Python ``float`` (``int`` for step counts),
any array gives an array. Bad input raises ``ValueError`` naming the argument. ``wd = 0`` is allowed and
gives the honest limit: there is no equilibrium, so Δ* = 0, the norm grows without bound (``inf``), it
is never reached (``inf`` steps) and nothing contracts (factor 1.0).

Pure numpy on purpose: the monitor, the planner and the CLI all use it without touching torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from smdyn import _decorrelation as _decor

__all__ = [
    "adamw_angular_update",
    "adamw_weight_norm",
    "angular_update",
    "approach_factor",
    "contraction_factor",
    "equilibrium_exists",
    "lion_angular_update",
    "lion_decorrelation",
    "lion_weight_norm",
    "muon_adjusted_lr",
    "muon_angular_update",
    "muon_decorrelation",
    "muon_update_norm",
    "muon_weight_norm",
    "rescale_factor",
    "sgd_angular_update",
    "sgd_filter_sums",
    "sgd_weight_norm",
    "steps_to_new_equilibrium",
    "summary",
    "weight_norm",
    "weight_norm_paper",
]

FloatOrArray = float | NDArray[np.float64]

# --------------------------------------------------------------------------------------------------
# Input handling


def _as_float_array(name: str, value: ArrayLike) -> NDArray[np.float64]:
    """Convert ``value`` to a finite float64 array, or raise naming ``name``."""
    try:
        raw = np.asarray(value)
    except ValueError as exc:  # ragged nested sequences
        raise TypeError(f"{name} must be a real number or an array of real numbers, got {value!r}") from exc
    if raw.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real number or an array of real numbers, got {value!r}")
    arr = raw.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {_first_bad(value, ~np.isfinite(arr))}")
    return arr


def _first_bad(value: ArrayLike, bad: NDArray[np.bool_]) -> str:
    """Describe the first offending element, for an error message."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        return repr(float(arr))
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    return f"{float(arr[index])!r} at index {index}"


def _require(ok: NDArray[np.bool_], name: str, value: ArrayLike, what: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``ok`` holds everywhere."""
    ok_arr = np.asarray(ok, dtype=bool)
    if not ok_arr.all():
        bad_value = _first_bad(np.broadcast_to(value, ok_arr.shape), ~ok_arr)
        raise ValueError(f"{name} must be {what}, got {bad_value}")


def _lr(lr: ArrayLike, name: str = "lr") -> NDArray[np.float64]:
    arr = _as_float_array(name, lr)
    _require(arr > 0, name, arr, "> 0")
    return arr


def _wd(wd: ArrayLike) -> NDArray[np.float64]:
    arr = _as_float_array("wd", wd)
    _require(arr >= 0, "wd", arr, ">= 0")
    return arr


def _beta(beta: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = _as_float_array(name, beta)
    _require((arr >= 0) & (arr < 1), name, arr, "in [0, 1)")
    return arr


def _positive(value: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = _as_float_array(name, value)
    _require(arr > 0, name, arr, "> 0")
    return arr


def _nonnegative(value: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = _as_float_array(name, value)
    _require(arr >= 0, name, arr, ">= 0")
    return arr


def _numel(numel: ArrayLike) -> NDArray[np.float64]:
    arr = _as_float_array("numel", numel)
    _require((arr >= 1) & (arr == np.floor(arr)), "numel", arr, "a whole number >= 1")
    return arr


def _is_scalar(*values: ArrayLike) -> bool:
    """Whether every input is a scalar; a malformed one counts as not (its check then names it)."""
    try:
        return all(np.ndim(v) == 0 for v in values)
    except ValueError:  # ragged nested sequences
        return False


def _out(result: NDArray[np.float64], scalar: bool) -> FloatOrArray:
    """Python float for all-scalar input, a float64 array otherwise."""
    if scalar:
        return float(result)
    return np.asarray(result, dtype=np.float64)


def equilibrium_exists(
    lr: ArrayLike, wd: ArrayLike, momentum: ArrayLike = 0.0, *, coupled: bool = True
) -> Any:
    """Where the weight norm has a fixed point, elementwise: lr·wd < 2(1 + α) under coupled decay (Thm 2
    needs 2 − λη/(1+α) > 0), lr·wd < 1 under decoupled decay (the factor 1 − ηλ stays positive). False for
    NaN; the arguments are not otherwise checked."""
    lw = np.asarray(lr, dtype=np.float64) * np.asarray(wd, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return lw < (2.0 * (1.0 + np.asarray(momentum, dtype=np.float64)) if coupled else 1.0)


def _check_fixed_point_exists(
    lr: NDArray[np.float64], wd: NDArray[np.float64], a: NDArray[np.float64]
) -> None:
    """Thm 2's fixed point needs 2 − λη/(1+α) > 0; past it there is no positive fixed point."""
    _require(
        equilibrium_exists(lr, wd, a), "lr * wd", lr * wd, "< 2 * (1 + momentum) for an equilibrium to exist"
    )


# --------------------------------------------------------------------------------------------------
# SGD / SGDM (Wan et al., NeurIPS 2021)


def angular_update(lr: ArrayLike, wd: ArrayLike, momentum: ArrayLike = 0.0) -> FloatOrArray:
    """Equilibrium angular update Δ* = √(2λη/(1+α)) per step (Thm 3, Eq 14; SGD is α = 0).

    It depends on the hyper-parameters only, not on the gradient, the weight's shape or its place in the
    network, which is why it is the quantity to watch. Δ* is the equilibrium value of √E[Δ_t²]: compare it
    with the RMS of Δ over a window (the mean is lower when ‖g̃‖² varies).

    Args:
        lr: learning rate η (> 0).
        wd: weight decay λ (>= 0), coupled into the gradient as in ``torch.optim.SGD``.
        momentum: heavy-ball momentum α in [0, 1) (``dampening=0``, ``nesterov=False``).

    Returns:
        Δ* in radians; 0.0 where ``wd == 0`` (no equilibrium: the norm grows and Δ decays to 0).
    """
    scalar = _is_scalar(lr, wd, momentum)
    eta, lam, a = _lr(lr), _wd(wd), _beta(momentum, "momentum")
    _check_fixed_point_exists(eta, lam, a)
    return _out(np.sqrt(2.0 * lam * eta / (1.0 + a)), scalar)


def weight_norm(L: ArrayLike, lr: ArrayLike, wd: ArrayLike, momentum: ArrayLike = 0.0) -> FloatOrArray:
    """Equilibrium weight norm w* (not squared), exact fixed-point form (Thm 2; Thm 1 at α = 0).

    (w*)⁴ = L·η / (λ(1−α)(2 − λη/(1+α))). At α = 0 this is L·η/(λ(2 − λη)), the exact fixed point of the
    noiseless SGD recurrence ‖w_{t+1}‖² = (1−λη)²‖w_t‖² + η²L/‖w_t‖²; Thm 1 prints the first-order form
    (Lη/(2λ))^¼ (see :func:`weight_norm_paper`). For SGDM it is also the exact fixed point of the
    mean-field Gram-matrix recurrence of (w, v).

    Args:
        L: E‖g̃_t‖² = E[‖g_t‖²‖w_t‖²] for SGD (Thm 1), E h̃_t = E[(‖g_t‖² + 2α⟨v_{t-1}, g_t⟩)‖w_t‖²] for
            SGDM (Thm 2, assumption 6); >= 0. It is an expectation: estimate it over a window.
        lr: learning rate η (> 0).
        wd: weight decay λ (>= 0).
        momentum: α in [0, 1).

    Returns:
        w*; ``inf`` where ``wd == 0`` (no equilibrium: the norm grows without bound).

    Raises:
        ValueError: for bad arguments, or ``lr * wd >= 2(1 + momentum)`` (no fixed point exists).
    """
    scalar = _is_scalar(L, lr, wd, momentum)
    big_l, eta, lam, a = _nonnegative(L, "L"), _lr(lr), _wd(wd), _beta(momentum, "momentum")
    _check_fixed_point_exists(eta, lam, a)
    return _out(np.sqrt(_sgdm_fixed_point_sq(big_l, eta, lam, a)), scalar)


def _sgdm_fixed_point_sq(
    big_l: NDArray[np.float64], eta: NDArray[np.float64], lam: NDArray[np.float64], a: NDArray[np.float64]
) -> NDArray[np.float64]:
    """(w*)² = √(Lη / (λ(1−α)(2 − λη/(1+α)))), ``inf`` where λ = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = lam * (1.0 - a) * (2.0 - lam * eta / (1.0 + a))
        x = np.sqrt(big_l * eta / np.where(lam > 0, denom, 1.0))
    return np.where(lam > 0, x, np.inf)


def weight_norm_paper(L: ArrayLike, lr: ArrayLike, wd: ArrayLike) -> FloatOrArray:
    """SGD equilibrium norm as Thm 1 prints it: w* = (Lη/(2λ))^¼.

    First order in λη: it differs from the exact fixed point :func:`weight_norm` by the factor
    ((2 − λη)/2)^¼ ≈ 1 − λη/8. Provided so the two can be compared; prefer :func:`weight_norm`.

    Args:
        L: E‖g̃_t‖² (>= 0).
        lr: learning rate η (> 0).
        wd: weight decay λ (>= 0).

    Returns:
        w*; ``inf`` where ``wd == 0``.
    """
    scalar = _is_scalar(L, lr, wd)
    big_l, eta, lam = _nonnegative(L, "L"), _lr(lr), _wd(wd)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = (big_l * eta / (2.0 * np.where(lam > 0, lam, 1.0))) ** 0.25
    return _out(np.where(lam > 0, w, np.inf), scalar)


def approach_factor(lr: ArrayLike, wd: ArrayLike, momentum: ArrayLike = 0.0) -> FloatOrArray:
    """Per-step factor of the paper's BOUND on E[‖w_t‖² − w*²]²: 1 − 2λη (Eq 8), 1 − 2λη/(1−α) (Eq 12).

    This is a bound, not a rate. The squared error really shrinks by about :func:`contraction_factor`²
    per step, ≈ 1 − 8λη/(1−α) for small λη: about 4× faster than this factor says. Past
    λη ≈ (1−√α)²/4 (6.6e-4 at α = 0.9) the real factor saturates at α per step (the momentum mode
    oscillates), and near or outside Thm 2's assumption 5 (λη < (1−√α)²) this factor can even claim a
    faster approach than really happens. Plan with the recurrence; quote this for the paper's statement.

    Args:
        lr: learning rate η (> 0).
        wd: weight decay λ (>= 0).
        momentum: α in [0, 1).

    Returns:
        The factor; 1.0 where ``wd == 0`` (nothing is approached).

    Raises:
        ValueError: for bad arguments, or where the factor would be <= 0 (2λη/(1−α) >= 1, far outside the
            theorems' λη ≪ 1).
    """
    scalar = _is_scalar(lr, wd, momentum)
    eta, lam, a = _lr(lr), _wd(wd), _beta(momentum, "momentum")
    factor = 1.0 - 2.0 * lam * eta / (1.0 - a)
    _require(
        factor > 0, "lr * wd", lam * eta, "< (1 - momentum) / 2 for the bound of Eqs 8/12 to mean anything"
    )
    return _out(factor, scalar)


def contraction_factor(
    lr: ArrayLike, wd: ArrayLike, momentum: ArrayLike = 0.0, L: ArrayLike = 1.0
) -> FloatOrArray:
    """Actual per-step contraction of |‖w_t‖² − w*²| near equilibrium, from the linearised recurrence.

    SGD: the noiseless map f(x) = (1−λη)²x + η²L/x (x = ‖w‖², from Eq 7 with g ⟂ w) has
    f'(x*) = (1−λη)² − η²L/x*² = 1 − 4λη + 2(λη)² at its fixed point, so the error contracts by ≈ 1 − 4λη
    per step and its square by ≈ 1 − 8λη, about 4× the rate of the bound in Eq 8 (:func:`approach_factor`).

    SGDM: the state of Eqs 10-11 under isotropic gradients reduces to the Gram matrix of (w, v), three
    scalars (‖w‖², ‖v‖², ⟨w, v⟩) with ⟨w, v'⟩ = α⟨w, v⟩ + λ‖w‖², ‖v'‖² = α²‖v‖² + L/‖w‖² + λ²‖w‖² + 2αλ⟨w, v⟩,
    ‖w'‖² = ‖w‖² − 2η⟨w, v'⟩ + η²‖v'‖², ⟨w', v'⟩ = ⟨w, v'⟩ − η‖v'‖². Its fixed point is Thm 2's w*; the
    value returned is the spectral radius of the map's Jacobian there. For small λη it is
    ≈ 1 − 4λη/(1−α); past λη ≈ (1−√α)²/4 (6.6e-4 at α = 0.9) the slow mode merges with the momentum
    mode into an oscillating pair and it is √α.

    The map is homogeneous in L (state ∝ √L), so the result does not depend on L; ``L`` is accepted so
    that callers can pass the value they have.

    Args:
        lr: learning rate η (> 0).
        wd: weight decay λ (>= 0).
        momentum: α in [0, 1).
        L: E‖g̃‖² or E h̃ (> 0); the result is independent of it.

    Returns:
        The spectral radius (< 1: the equilibrium attracts); 1.0 where ``wd == 0``.

    Raises:
        ValueError: for bad arguments, or ``lr * wd >= 2(1 + momentum)`` (no fixed point exists).
    """
    scalar = _is_scalar(lr, wd, momentum, L)
    eta, lam, a = _lr(lr), _wd(wd), _beta(momentum, "momentum")
    big_l = _positive(L, "L")
    _check_fixed_point_exists(eta, lam, a)
    eta, lam, a, big_l = np.broadcast_arrays(eta, lam, a, big_l)
    has_wd = lam > 0
    # Where wd == 0 evaluate at a harmless stand-in and overwrite with 1.0 below.
    lam_s = np.where(has_wd, lam, 1e-3 / eta)
    x = _sgdm_fixed_point_sq(big_l, eta, lam_s, a)
    g_sq = big_l / x**2  # ‖g‖² at the fixed point, L/‖w*‖⁴

    sgd = np.abs((1.0 - lam_s * eta) ** 2 - eta**2 * g_sq)

    zero = np.zeros_like(x)
    dz1 = np.stack([lam_s, zero, a], axis=-1)  # d⟨w, v'⟩ / d(x, y, z)
    dy1 = np.stack([lam_s**2 - g_sq, a * a, 2.0 * a * lam_s], axis=-1)  # d‖v'‖²
    e_x = np.stack([np.ones_like(x), zero, zero], axis=-1)
    row_x = e_x - 2.0 * eta[..., None] * dz1 + (eta**2)[..., None] * dy1
    row_z = dz1 - eta[..., None] * dy1
    jac = np.stack([row_x, dy1, row_z], axis=-2)
    sgdm = np.max(np.abs(np.linalg.eigvals(jac)), axis=-1)

    rho = np.where(a == 0, sgd, sgdm)
    return _out(np.where(has_wd, rho, 1.0), scalar)


def steps_to_new_equilibrium(
    k: ArrayLike, lr_after: ArrayLike, wd: ArrayLike, momentum: ArrayLike = 0.0
) -> int | float | NDArray[np.float64]:
    """Steps to the new equilibrium after the learning rate is divided by ``k``: Corollary 3.1.

    ⌈ln(k)(1−α)/(2λη)⌉ with η the rate AFTER the change (α = 0 for SGD). Measured in simulation, the lag
    until Δ is within 5-10% of the new Δ* is 0.7-1.0× this value, so read it as an estimate, not a strict
    lower bound (it comes from the upper bound of Eqs 8/12). Using the rate before the drop would be k×
    too small.

    For k < 1 (a learning-rate increase) the corollary does not apply; the same expression with |ln k| is
    returned as the analogous relaxation estimate only.

    Args:
        k: the factor the learning rate is divided by (> 0); k = 1 gives 0.
        lr_after: learning rate after the change, η/k (> 0).
        wd: weight decay λ (>= 0).
        momentum: α in [0, 1).

    Returns:
        An ``int`` for all-scalar input (``math.inf`` where ``wd == 0``: there is no equilibrium to
        reach); for array input a float64 array of whole numbers, with ``inf`` where ``wd == 0``.
    """
    scalar = _is_scalar(k, lr_after, wd, momentum)
    kk = _positive(k, "k")
    eta, lam, a = _lr(lr_after, "lr_after"), _wd(wd), _beta(momentum, "momentum")
    _check_fixed_point_exists(eta, lam, a)
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = np.abs(np.log(kk)) * (1.0 - a) / (2.0 * np.where(lam > 0, lam, 1.0) * eta)
    steps = np.where(lam > 0, np.ceil(raw), np.inf)
    if scalar:
        value = float(steps)
        return math.inf if math.isinf(value) else int(value)
    return np.asarray(steps, dtype=np.float64)


def rescale_factor(k: ArrayLike) -> FloatOrArray:
    """k^(−¼): multiply every scale-invariant weight by this when the learning rate is divided by k.

    w* ∝ η^¼ (Thms 1-2), so scaling the norm by k^(−¼) at the drop puts the weight at the new equilibrium
    at once instead of after :func:`steps_to_new_equilibrium` steps (Sec 4.2).

    Args:
        k: the factor the learning rate is divided by (> 0).
    """
    scalar = _is_scalar(k)
    return _out(_positive(k, "k") ** -0.25, scalar)


# --------------------------------------------------------------------------------------------------
# SGD with Nesterov momentum or dampening (torch.optim.SGD's other settings; derived here)


def sgd_filter_sums(
    momentum: ArrayLike, dampening: ArrayLike = 0.0, nesterov: bool = False
) -> tuple[FloatOrArray, FloatOrArray]:
    """(C, S₂) = (Σ c_k, Σ c_k²) of the filter by which ``torch.optim.SGD`` turns gradients into steps.

    ``torch.optim.SGD`` steps by η·Σ_k c_k d_{t−k} with d = g + λw: heavy ball c_k = (1−τ)α^k; Nesterov
    c_0 = 1 + α(1−τ), c_k = (1−τ)α^{k+1} (k ≥ 1), with τ the dampening. (The first step, where the buffer
    is d itself, does not matter in equilibrium.)

    Args:
        momentum: α in [0, 1).
        dampening: τ in [0, 1].
        nesterov: Nesterov momentum.
    """
    scalar = _is_scalar(momentum, dampening)
    a = _beta(momentum, "momentum")
    tau = _as_float_array("dampening", dampening)
    _require((tau >= 0) & (tau <= 1), "dampening", dampening, "in [0, 1]")
    k = 1.0 - tau
    if nesterov:
        c_sum = 1.0 + a * k / (1.0 - a)
        c_sq = (1.0 + a * k) ** 2 + k**2 * a**4 / (1.0 - a**2)
    else:
        c_sum = k / (1.0 - a)
        c_sq = k**2 / (1.0 - a**2)
    return _out(c_sum, scalar), _out(c_sq, scalar)


def sgd_angular_update(
    lr: ArrayLike,
    wd: ArrayLike,
    momentum: ArrayLike = 0.0,
    dampening: ArrayLike = 0.0,
    nesterov: bool = False,
) -> FloatOrArray:
    """Equilibrium angular update of ``torch.optim.SGD`` in any setting: Δ*² = 2λη·S₂/C.

    Derived as in Thms 1-3 for a general linear filter (:func:`sgd_filter_sums`), with gradients orthogonal
    to w, independent between steps, and λη ≪ 1 − α: stationarity of E‖w‖² gives 2λC‖w‖² = ησ²C²
    (σ² = E‖g‖²; the cross terms ⟨w_t, g_{t−k}⟩ sum with Σc_k² to C²), and the tangential step is
    η²σ²S₂/‖w‖². Heavy ball without dampening gives Thm 3's √(2λη/(1+α)) (returned exactly); dampening τ
    acts as a rate η(1−τ); Nesterov (τ = 0) has S₂/C = (1+2α−2α³)/(1+α), so Δ* is √(1+2α−2α³) times the
    heavy-ball value (1.16× at α = 0.9). Checked against ``torch.optim.SGD`` in ``tests/test_rules.py``.
    """
    if not nesterov and np.all(np.asarray(dampening) == 0):
        return angular_update(lr, wd, momentum)
    scalar = _is_scalar(lr, wd, momentum, dampening)
    eta, lam = _lr(lr), _wd(wd)
    c_sum, c_sq = sgd_filter_sums(momentum, dampening, nesterov)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.asarray(c_sum) > 0, np.asarray(c_sq) / np.asarray(c_sum), 0.0)
    return _out(np.sqrt(2.0 * lam * eta * ratio), scalar)


def sgd_weight_norm(
    L: ArrayLike,
    lr: ArrayLike,
    wd: ArrayLike,
    momentum: ArrayLike = 0.0,
    dampening: ArrayLike = 0.0,
    nesterov: bool = False,
) -> FloatOrArray:
    """Equilibrium norm of ``torch.optim.SGD`` in any setting: (w*)⁴ = η·L·C/(2λ), L = E‖g̃‖².

    Same derivation and assumptions as :func:`sgd_angular_update` (first order in λη). Heavy ball without
    dampening returns the exact fixed point :func:`weight_norm` instead.
    """
    if not nesterov and np.all(np.asarray(dampening) == 0):
        return weight_norm(L, lr, wd, momentum)
    scalar = _is_scalar(L, lr, wd, momentum, dampening)
    big_l, eta, lam = _nonnegative(L, "L"), _lr(lr), _wd(wd)
    c_sum, _ = sgd_filter_sums(momentum, dampening, nesterov)
    with np.errstate(divide="ignore", invalid="ignore"):
        w4 = eta * big_l * np.asarray(c_sum) / (2.0 * np.where(lam > 0, lam, 1.0))
    return _out(np.where(lam > 0, w4**0.25, np.inf), scalar)


# --------------------------------------------------------------------------------------------------
# AdamW and Lion (Kosson et al., ICML 2024, arXiv 2305.17212)


def adamw_angular_update(lr: ArrayLike, wd: ArrayLike, beta1: ArrayLike = 0.9) -> FloatOrArray:
    """Expected equilibrium angular update of AdamW: √(2ηλ(1−β₁)/(1+β₁)).

    Kosson et al., "Rotational Equilibrium: How Weight Decay Balances Learning Across Neural Networks"
    (ICML 2024, arXiv 2305.17212): the equilibrium of its random-walk model (as in the authors'
    code, github.com/epfml/req). Derived in their random-walk model: in equilibrium the gradient acts as
    zero-mean noise independent of the weight (so orthogonal to it in expectation, as for a
    scale-invariant weight), each element's √v̂ equals that element's gradient RMS, and λη ≪ 1 − β₁
    (the decay during the first moment's memory is neglected: at λη = 2e-3, β₁ = 0.9 the norm comes out
    ~1% lower). Decay is AdamW's decoupled w ← w − ηλw (``torch.optim.AdamW``'s ``weight_decay``), not
    an L2 term in the gradient. β₂ and ε do not appear: β₂ only sets how well √v̂ tracks the RMS, and ε
    is assumed negligible next to it.

    Args:
        lr: learning rate η (> 0).
        wd: decoupled weight decay λ (>= 0).
        beta1: Adam's first-moment coefficient β₁ in [0, 1).

    Returns:
        The expected angle per step in radians; 0.0 where ``wd == 0``.
    """
    scalar = _is_scalar(lr, wd, beta1)
    (eta, lam), b1 = _decayed(lr, wd), _beta(beta1, "beta1")
    return _out(np.sqrt(2.0 * eta * lam * (1.0 - b1) / (1.0 + b1)), scalar)


def adamw_weight_norm(lr: ArrayLike, wd: ArrayLike, numel: ArrayLike, beta1: ArrayLike = 0.9) -> FloatOrArray:
    """Expected equilibrium norm of a weight trained by AdamW: √(ηC/(2λ)), C = number of elements.

    Kosson et al. (ICML 2024, arXiv 2305.17212), same random-walk assumptions as
    :func:`adamw_angular_update`. The Adam update is normalised per element, so each step adds about C·η²
    to ‖w‖² whatever the gradient's scale: unlike SGD the norm does not depend on the gradient, nor on
    β₁ (a gradient's total contribution through the first moment sums to one step), β₂ or ε. C is the
    number of elements of the vector whose norm is taken (for a per-neuron view, the fan-in).

    Args:
        lr: learning rate η (> 0).
        wd: decoupled weight decay λ (>= 0).
        numel: C, a whole number >= 1.
        beta1: β₁ in [0, 1); checked but, as above, it does not change the value. Accepted so that a
            caller can pass AdamW's settings as they are.

    Returns:
        The equilibrium norm; ``inf`` where ``wd == 0``.
    """
    scalar = _is_scalar(lr, wd, numel, beta1)
    (eta, lam), c = _decayed(lr, wd), _numel(numel)
    lam = np.broadcast_arrays(lam, _beta(beta1, "beta1"))[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.sqrt(eta * c / (2.0 * np.where(lam > 0, lam, 1.0)))
    return _out(np.where(lam > 0, w, np.inf), scalar)


def _decayed(lr: ArrayLike, wd: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(η, λ) validated for a decoupled decay w ← (1 − ηλ)w, which needs ηλ < 1."""
    eta, lam = _lr(lr), _wd(wd)
    _require(
        equilibrium_exists(eta, lam, coupled=False),
        "lr * wd",
        eta * lam,
        "< 1 (the decay factor 1 − lr·wd must stay positive)",
    )
    return eta, lam


def _rotational(
    eta: NDArray[np.float64],
    lam: NDArray[np.float64],
    r_of: Callable[..., float],
    *params: NDArray[np.float64],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(Δ*, R_a/(1 − a²)) per element, a = 1 − ηλ; R_a = r_of(a, *params) (docs/design.md §6)."""
    shape = np.broadcast_shapes(eta.shape, lam.shape, *(p.shape for p in params))
    flat = [np.broadcast_to(x, shape).ravel() for x in (eta, lam, *params)]
    delta, growth = np.zeros(flat[0].size), np.full(flat[0].size, np.inf)
    for i in range(flat[0].size):
        if flat[1][i] > 0:
            d = float(flat[0][i] * flat[1][i])
            r_a = r_of(1.0 - d, *(float(p[i]) for p in flat[2:]))
            delta[i] = _decor.radial_corrected_angle(d, r_a)
            growth[i] = r_a / (d * (2.0 - d))  # 1 − a², a = 1 − ηλ, without its cancellation at tiny ηλ
    return delta.reshape(shape), growth.reshape(shape)


def _lion_r(a: float, b1: float, b2: float) -> float:
    return _decor.integrated_autocorrelation(*_decor.lion_lags(b1, b2), a, _decor.arcsine)


def lion_decorrelation(beta1: float = 0.9, beta2: float = 0.99, decay: float = 0.0) -> float:
    """R_a = 1 + 2Σ_j (1−ηλ)^j·(2/π)arcsin(r_j): Lion's integrated autocorrelation of sign(c_t).

    r_j is the correlation of c_t with c_{t−j} (a linear filter of the gradients); sign of jointly Gaussian
    variables has correlation (2/π)·arcsin(r) (Van Vleck), exact for Gaussian gradient noise. ``decay`` =
    ηλ weights lag j by (1 − ηλ)^j (0: the small-ηλ limit).
    """
    b1, b2 = float(_beta(beta1, "beta1")), float(_beta(beta2, "beta2"))
    d = float(_as_float_array("decay", decay))
    _require(np.asarray(0 <= d < 1), "decay", d, "in [0, 1)")
    return _lion_r(1.0 - d, b1, b2)


def lion_angular_update(
    lr: ArrayLike, wd: ArrayLike, beta1: ArrayLike = 0.9, beta2: ArrayLike = 0.99
) -> FloatOrArray:
    """Equilibrium angular update of Lion: Δ* ≈ √((1 − a²)/R_a) ≈ √(2ηλ/R), a = 1 − ηλ.

    Rotational equilibrium of Kosson et al. (ICML 2024, arXiv 2305.17212) and Wen et al. 2026 (Hyperball,
    arXiv 2606.16899) for a step of fixed norm √C: w_t = −ηΣa^k u_{t−1−k} gives ‖w‖² = η²C·R_a/(1 − a²) with
    R_a from :func:`lion_decorrelation` (the arcsine law for sign(c)). Kosson et al.'s √(πηλK),
    K = (1−β₁)² + β₁²(1−β₂)/(1+β₂), linearises sign(c) ≈ √(2/π)c/σ and drops its white remainder: it is
    R = 2/(πK) instead of 1 + 2Σ(2/π)arcsin(r_j): its Δ* is 25% high at β₁ = 0, 3% at (0.8, 0.9) and
    0.7% at (0.9, 0.99). The step's radial part is kept (:mod:`smdyn._decorrelation`). Update rule
    (Chen et al., arXiv 2302.06675):
    c_t = β₁m + (1−β₁)g_t, w ← w(1 − ηλ) − η·sign(c_t), m ← β₂m + (1−β₂)g_t. Assumes gradients that are
    Gaussian noise independent between steps and of the weight (a scale-invariant weight's, in equilibrium).

    Args:
        lr: learning rate η (> 0).
        wd: decoupled weight decay λ (>= 0), in Lion's convention (multiplied by η); ηλ < 1.
        beta1: interpolation coefficient β₁ in [0, 1).
        beta2: momentum coefficient β₂ in [0, 1).

    Returns:
        The angle per step in radians (the RMS over steps); 0.0 where ``wd == 0``.
    """
    scalar = _is_scalar(lr, wd, beta1, beta2)
    eta, lam = _decayed(lr, wd)
    b1, b2 = _beta(beta1, "beta1"), _beta(beta2, "beta2")
    return _out(_rotational(eta, lam, _lion_r, b1, b2)[0], scalar)


def lion_weight_norm(
    lr: ArrayLike, wd: ArrayLike, numel: ArrayLike, beta1: ArrayLike = 0.9, beta2: ArrayLike = 0.99
) -> FloatOrArray:
    """Equilibrium norm of a weight trained by Lion: η·√(C·R_a/(1 − a²)) ≈ η√(CR/(2ηλ)), a = 1 − ηλ.

    Same derivation and assumptions as :func:`lion_angular_update`; every Lion step has norm √C (C the
    element count), so the norm does not depend on the gradient's scale.

    Returns:
        The equilibrium norm; ``inf`` where ``wd == 0``.
    """
    scalar = _is_scalar(lr, wd, numel, beta1, beta2)
    eta, lam = _decayed(lr, wd)
    c, b1, b2 = _numel(numel), _beta(beta1, "beta1"), _beta(beta2, "beta2")
    growth = _rotational(eta, lam, _lion_r, b1, b2)[1]
    return _out(eta * np.sqrt(c * growth), scalar)


# --------------------------------------------------------------------------------------------------
# Muon (torch.optim.Muon): rotational equilibrium with a decorrelating orthogonalisation


def _shape(shape: Any) -> tuple[int, int]:
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be two whole numbers >= 1, got {shape!r}") from None
    if len(dims) != 2 or min(dims) < 1 or any(d != float(x) for d, x in zip(dims, shape, strict=True)):
        raise ValueError(f"shape must be two whole numbers >= 1 (a 2-D weight), got {shape!r}")
    return dims


def _muon_r(shape: tuple[int, int], nesterov: bool, ns: tuple[tuple[float, float, float], int]) -> Any:
    f = _decor.ns_correlation(shape, *ns)
    lags = _decor.nesterov_lags if nesterov else _decor.heavy_ball_lags
    return lambda a, mu: _decor.integrated_autocorrelation(*lags(mu), a, f)


def muon_decorrelation(
    shape: Any,
    momentum: float = 0.95,
    nesterov: bool = True,
    decay: float = 0.0,
    ns_coefficients: tuple[float, float, float] = _decor.NS_COEFFICIENTS,
    ns_steps: int = _decor.NS_STEPS,
) -> float:
    """R_a = 1 + 2Σ_j (1−ηλ)^j f(r_j): the integrated autocorrelation of Muon's orthogonalised step.

    The momentum matrices M_t, M_{t−j} are jointly Gaussian with element correlation r_j (the filter's), so
    the steps' correlation is f(r_j), f the correlation map of Newton–Schulz for this aspect ratio:
    tabulated once per (reduced shape, coefficients) by a fixed-seed Monte Carlo (shorter side reduced to
    64, aspect ratio kept; see :mod:`smdyn._decorrelation`). NS decorrelates: at 32×32, R = 24.0 for
    μ = 0.95 Nesterov and 14.2 for μ = 0.9 heavy ball, against 32.9 and 19 for a linear map. R depends on
    the aspect ratio (32×128: 30.5) and a little on the size (square 16: 25.4, 64: 23.2).
    """
    mu = float(_beta(momentum, "momentum"))
    d = float(_as_float_array("decay", decay))
    _require(np.asarray(0 <= d < 1), "decay", d, "in [0, 1)")
    return float(_muon_r(_shape(shape), bool(nesterov), (tuple(ns_coefficients), int(ns_steps)))(1.0 - d, mu))


def muon_update_norm(
    shape: Any,
    ns_coefficients: tuple[float, float, float] = _decor.NS_COEFFICIENTS,
    ns_steps: int = _decor.NS_STEPS,
) -> float:
    """U = √E‖NS(M)‖_F for a Gaussian momentum M: Newton–Schulz's singular values are not 1.

    ≈ √min(A, B)·s̄ with s̄² the mean square of the iterated NS polynomial over the Marchenko–Pastur
    singular values of M/‖M‖_F: 0.88·√32 at 32×32, 0.85·√128 at 32×128. Exact for exact msign: √min(A, B).
    """
    return math.sqrt(_decor.ns_update_norm_sq(_shape(shape), tuple(ns_coefficients), int(ns_steps)))


def muon_adjusted_lr(lr: ArrayLike, shape: Any, adjust_lr_fn: str | None = None) -> FloatOrArray:
    """torch.optim.Muon's rate for the orthogonalised step: η·√max(1, A/B) (None, "original") or
    η·0.2·√max(A, B) ("match_rms_adamw"). The decay uses η itself."""
    scalar = _is_scalar(lr)
    a, b = _shape(shape)
    if adjust_lr_fn in (None, "original"):
        ratio = math.sqrt(max(1.0, a / b))
    elif adjust_lr_fn == "match_rms_adamw":
        ratio = 0.2 * math.sqrt(max(a, b))
    else:
        raise ValueError(f"adjust_lr_fn must be None, 'original' or 'match_rms_adamw', got {adjust_lr_fn!r}")
    return _out(_lr(lr) * ratio, scalar)


def muon_angular_update(
    lr: ArrayLike,
    wd: ArrayLike,
    shape: Any,
    momentum: ArrayLike = 0.95,
    nesterov: bool = True,
    ns_coefficients: tuple[float, float, float] = _decor.NS_COEFFICIENTS,
    ns_steps: int = _decor.NS_STEPS,
) -> FloatOrArray:
    """Equilibrium angular update of ``torch.optim.Muon``: Δ* ≈ √((1 − a²)/R_a) ≈ √(2ηλ/R), a = 1 − ηλ.

    Rotational equilibrium (Kosson et al., ICML 2024, arXiv 2305.17212; Wen et al. 2026, "Hyperball",
    arXiv 2606.16899, whose ‖W∞‖ ≈ ηU√((1+aβ)/((1−a²)(1−aβ))) is the linear-map case): Muon decays
    w ← (1 − ηλ)w and steps by η'·O_t, O_t = NS(M_t), so w_t = −η'Σa^k O_{t−1−k}, ‖w*‖² = η'²U²R_a/(1 − a²)
    and the step's angle is η'U/‖w*‖: independent of the adjusted rate η' and of U. R_a is
    :func:`muon_decorrelation`; the step's radial part is kept. Assumes gradients that are noise
    independent between steps and of the weight (a scale-invariant weight in equilibrium), and a 2-D
    weight of this shape. Checked against ``torch.optim.Muon`` in ``tests/test_rule_registry.py``.

    Args:
        lr: learning rate η (> 0); wd: weight decay λ (>= 0), ηλ < 1.
        shape: the weight's (A, B).
        momentum: μ in [0, 1); nesterov: Muon's default True.
        ns_coefficients, ns_steps: the Newton–Schulz settings of the optimizer.

    Returns:
        The angle per step in radians (the RMS over steps); 0.0 where ``wd == 0``.
    """
    scalar = _is_scalar(lr, wd, momentum)
    eta, lam = _decayed(lr, wd)
    mu = _beta(momentum, "momentum")
    r_of = _muon_r(_shape(shape), bool(nesterov), (tuple(ns_coefficients), int(ns_steps)))
    return _out(_rotational(eta, lam, r_of, mu)[0], scalar)


def muon_weight_norm(
    lr: ArrayLike,
    wd: ArrayLike,
    shape: Any,
    momentum: ArrayLike = 0.95,
    nesterov: bool = True,
    adjust_lr_fn: str | None = None,
    ns_coefficients: tuple[float, float, float] = _decor.NS_COEFFICIENTS,
    ns_steps: int = _decor.NS_STEPS,
) -> FloatOrArray:
    """Equilibrium norm under ``torch.optim.Muon``: η'·U·√(R_a/(1 − a²)) ∝ √η (η' the adjusted rate).

    Same derivation and assumptions as :func:`muon_angular_update`; U from :func:`muon_update_norm`
    (Gaussian momentum: the norm needs no gradient statistics). ``inf`` where ``wd == 0``.
    """
    scalar = _is_scalar(lr, wd, momentum)
    eta, lam = _decayed(lr, wd)
    mu = _beta(momentum, "momentum")
    dims = _shape(shape)
    ns = (tuple(ns_coefficients), int(ns_steps))
    growth = _rotational(eta, lam, _muon_r(dims, bool(nesterov), ns), mu)[1]
    step = np.asarray(muon_adjusted_lr(eta, dims, adjust_lr_fn)) * muon_update_norm(dims, *ns)
    return _out(step * np.sqrt(growth), scalar)


# --------------------------------------------------------------------------------------------------
# Summary


def summary(
    lr: float, wd: float, momentum: float = 0.0, L: float | None = None, drop: float | None = None
) -> dict[str, float]:
    """The SGD/SGDM values of this module for one setting, as a flat dict (what ``smdyn theory`` prints).

    Keys: ``angular_update`` (Thm 3), ``weight_norm`` (Thm 2, only if ``L`` is given),
    ``approach_factor_bound`` (Eqs 8/12, a bound; NaN where 2λη/(1−α) >= 1, where it means nothing),
    ``contraction_factor`` (the linearised recurrence).
    If ``drop`` = k is given (learning rate divided by k): ``steps_to_new_equilibrium`` (Corollary 3.1,
    with the rate after the drop), ``rescale_factor`` (k^(−¼), Sec 4.2), ``angular_update_after_drop``
    (the new equilibrium Δ* at η/k) and ``relative_angular_update_after_drop`` = k^(−½), the ratio of Δ
    right after the drop (norm unchanged, so Δ*/k) to that new Δ*.

    Args:
        lr: learning rate η (> 0).
        wd: weight decay λ (>= 0).
        momentum: α in [0, 1).
        L: E‖g̃‖² (SGD) or E h̃ (SGDM), if known.
        drop: k, the factor the learning rate is divided by (> 0), if any.

    Raises:
        TypeError: if any argument is an array; this gathers one setting.
    """
    args: dict[str, Any] = {"lr": lr, "wd": wd, "momentum": momentum, "L": L, "drop": drop}
    for name, value in args.items():
        if value is not None and np.ndim(value) != 0:
            raise TypeError(f"{name} must be a scalar in summary(), got an array of shape {np.shape(value)}")

    def f(fn: Callable[..., Any], *a: Any) -> float:
        return float(fn(*a))

    delta = f(angular_update, lr, wd, momentum)  # validates lr, wd and momentum first
    # Far outside λη ≪ 1 the bound of Eqs 8/12 has no meaning (its factor would be <= 0): report NaN.
    bounded = 2.0 * float(lr) * float(wd) / (1.0 - float(momentum)) < 1.0
    bound = f(approach_factor, lr, wd, momentum) if bounded else math.nan
    out: dict[str, float] = {"angular_update": delta}
    if L is not None:
        out["weight_norm"] = f(weight_norm, L, lr, wd, momentum)
    out["approach_factor_bound"] = bound
    out["contraction_factor"] = f(contraction_factor, lr, wd, momentum, L if L else 1.0)
    if drop is not None:
        k = float(_positive(drop, "drop"))
        lr_after = float(_lr(lr)) / k
        out["steps_to_new_equilibrium"] = f(steps_to_new_equilibrium, k, lr_after, wd, momentum)
        out["rescale_factor"] = f(rescale_factor, k)
        out["angular_update_after_drop"] = f(angular_update, lr_after, wd, momentum)
        out["relative_angular_update_after_drop"] = k**-0.5
    return out
