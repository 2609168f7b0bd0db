"""The recurrences :func:`smdyn.plan` iterates: one per family of update rule, with a per-step weight decay.

**SGD family** (coupled decay, heavy-ball momentum: Wan et al., NeurIPS 2021, Eqs 10-11): the exact Gram-state
kernel of :mod:`smdyn.dynamics` (three scalars, isotropic gradients in many dimensions).

**Decoupled family** (AdamW, Muon, Lion: w ← a·w − η·u_t, a = 1 − ηλ, u_t the rule's normalised step, of a
size that does not depend on the gradient's scale). Unrolled, w_T = a^T·w_0 − ηΣ_t a^(T−1−t)·u_t, so

    E‖w_{t+1}‖² = a²‖w_t‖² + η²‖u‖²·R,    R = 1 + 2Σ_{j≥1} a^j ρ_j,

where ρ_j is the correlation of u_t with u_{t−j} (momentum makes consecutive steps alike) and the cross
term −2aη⟨w_t, u_t⟩ has been written as the correlation of u_t with the earlier steps that make up w_t.
The approximation: the steps decorrelate (ρ_j → 0) within a time ≪ 1/(ηλ), the time over which a and η
change and the norm relaxes, so R takes its steady value at the current (η, λ), and u_t is independent
of the weight (scale-invariance makes the gradient ⟂ w and of a size the normalisation removes). For
AdamW with gradients that are noise from step to step, u = m̂/√v̂ has ‖u‖² = C(1−β₁)/(1+β₁) per step and
ρ_j = β₁^j, so R = (1+β₁)/(1−β₁) and ‖u‖²R = C: the growth per step is η²C, whatever β₁.

R and ‖u‖ are not taken from a formula per optimizer but from the rule's own equilibrium (Δ*, w*)
(:meth:`smdyn.rules.Rule.angular_update`, :meth:`~smdyn.rules.Rule.equilibrium_norm`; Kosson et al., ICML
2024, docs/design.md §6): ‖u‖ = Δ*·w*/η and R = (1 − a²)/Δ*², so that the fixed point of the recurrence
is exactly the rule's w*, and Δ_t = atan2(η‖u‖, ‖w_t‖) is the rule's Δ* there (to Δ*²/3).

Three AdamW effects are added. At the first steps of a fresh run Adam's bias correction enlarges the step:
‖m̂_n‖² = ‖u‖²(1+β₁ⁿ)/(1−β₁ⁿ) at its n-th step (i.i.d. gradients), which Δ_t includes, and the growth of
‖w‖² with it: G_n times the steady growth (:func:`bias_growth`: G_1 = 1, 19× the steady step's square, a
peak of 1.6 at n = 5 for β₁ = 0.9). The momentum holds gradients of the last ~1/(1−β₁) steps, whose scale
was the one of the norm then (:func:`_advance`). And Adam divides by
√v̂, an average of g² over ~1/(1−β₂) steps, while a scale-invariant weight's gradient follows 1/‖w‖
(‖g‖² = L/‖w‖²): when the norm moves within that memory, v̂ lags and the step's size is ρ_t = σ_t/√v̂_t
times its steady value, σ_t² = L_t/‖w_t‖² (per element, up to C), v̂ the bias-corrected EMA of σ². ρ_t
multiplies both Δ_t and the growth. Measured against ``torch.optim.AdamW`` (1024 elements, 16 weights,
β₂ = 0.999, ηλ = 3e-4, warm-up + cosine): without ρ_t the plan was up to 9% off while the norm doubled,
with it within 2% (tests/test_plan.py).

From a fresh start the n-th step of Muon and Lion has only n earlier steps to correlate with: the growth
uses R_n = 1 + (R − 1)(1 − qⁿ), q the memory of the rule's buffer (μ Muon, β₂ Lion; G_n for AdamW). For Lion
(β₂ = 0.99) from a norm far below w* the true build-up is slower than geometric: the plan's norm ran up to
19% high around step 100 (w0 = 0.3, w* = 2.6), within 1% by step 2000; from w0 = 2 within 2% throughout.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from smdyn import dynamics, theory
from smdyn.dynamics import GramState

__all__ = ["DecoupledModel", "DecoupledState", "SgdModel", "rule_curves"]

Array = NDArray[np.float64]
_EXACT_LIMIT = 1024  # distinct (η, λ) pairs evaluated one by one; beyond, interpolated in ηλ


# --------------------------------------------------------------------------------------------------
# SGD(M): the Gram state of smdyn.dynamics


@dataclass
class SgdModel:
    """Heavy-ball SGD(M) with coupled decay (Eqs 10-11), stepped by :mod:`smdyn.dynamics`."""

    momentum: float
    family: str = "sgd"

    def start(
        self, w0: float | None, lr: float, wd: float, L: float, warm: Mapping[str, Any] | None = None
    ) -> GramState:
        """At the fixed point of the first step's settings, or at rest with ‖w‖ = w0 (a fresh start; a warm
        momentum buffer is forgotten within ~1/(1−α) steps, so ``warm`` is not used)."""
        if w0 is None:
            return dynamics.fixed_point(L, lr, wd, self.momentum)
        return GramState.at_rest(w0)

    def run(
        self, state: GramState, lrs: Array, wds: Array, ls: Array, factors: Array
    ) -> tuple[Array, Array, GramState]:
        """‖w_t‖² (after any rescale), Δ_t and the final state, over the given steps."""
        if len(wds) and np.all(wds == wds[0]):
            return dynamics.run(state, lrs, float(wds[0]), self.momentum, ls, factors)
        n = len(lrs)
        w_sq, delta = np.empty(n), np.empty(n)
        a, step = self.momentum, dynamics.step
        for t, (eta, lam, ell, f) in enumerate(
            zip(lrs.tolist(), wds.tolist(), ls.tolist(), factors.tolist(), strict=True)
        ):
            if f != 1.0:
                state = dynamics.rescale(state, f)
            w_sq[t] = state.w_sq
            state, delta[t] = step(state, eta, lam, a, ell)
        return w_sq, delta, state

    def step(self, state: GramState, lr: float, wd: float, L: float) -> tuple[GramState, float]:
        """One step (the held continuation of a stage)."""
        return dynamics.step(state, lr, wd, self.momentum, L)

    def stepper(self, lr: float, wd: float, L: float) -> Callable[[GramState], tuple[GramState, float]]:
        """:meth:`step` at fixed (η, λ, L)."""
        return partial(dynamics.step, lr=lr, wd=wd, momentum=self.momentum, L=L)

    def fixed_delta(self, lrs: Array, wds: Array) -> Array:
        """Δ at the recurrence's exact fixed point: cos Δ = 1 − λη/(1+α)."""
        u = lrs * wds / (1.0 + self.momentum)
        return np.arctan2(np.sqrt(u * (2.0 - u)), 1.0 - u)

    def theory(self, rule: Any, lrs: Array, wds: Array, ls: Array) -> tuple[Array, Array]:
        """(Δ*, w*): Thm 3 and Thm 2's exact fixed-point norm for L_t."""
        return (
            np.asarray(theory.angular_update(lrs, wds, self.momentum), dtype=np.float64),
            np.asarray(theory.weight_norm(ls, lrs, wds, self.momentum), dtype=np.float64),
        )


# --------------------------------------------------------------------------------------------------
# Decoupled decay: the norm recurrence


class DecoupledState(NamedTuple):
    """‖w‖², Adam's second moment v (per element, in units of L/‖w‖²; 0 without one), the steps taken
    since the optimizer's state was empty (−1: warmed up, no bias correction), and the β₁- and β₁²-averages
    of the gradient's scale σ² = L/‖w‖² that the momentum holds (NaN: in step with the current σ²)."""

    w_sq: float
    second: float
    steps: int
    recent: float = math.nan
    recent_sq: float = math.nan


@dataclass
class DecoupledModel:
    """w² ← (1 − ηλ)²w² + ρ_t²η²‖u‖²R, Δ = atan2(ρ_t·η‖u_t‖, ‖w‖) (module docstring), with per-step (‖u‖, R).

    Attributes:
        rule: the :class:`smdyn.rules.Rule` whose Δ*, w* define ‖u‖ and R.
        momentum: its β₁ (or μ).
        numel: C, the weight's element count (w* ∝ √C).
        bias_correction: β₁ of Adam's first-moment bias correction (AdamW), or None.
        beta2: Adam's second-moment coefficient (AdamW), or None: ρ_t = 1.
        memory: q, the decay per step of the steps' autocorrelation (β₁ for AdamW, μ for Muon, β₂ for
            Lion): from a fresh start the n-th step has only n earlier steps to correlate with, so the
            growth uses R_n = 1 + (R − 1)(1 − qⁿ) (geometric ρ_j ∝ q^j).
    """

    rule: Any
    momentum: float
    numel: float
    bias_correction: float | None = None
    beta2: float | None = None
    memory: float = 0.0
    family: str = "decoupled"

    def start(
        self, w0: float | None, lr: float, wd: float, L: float, warm: Mapping[str, Any] | None = None
    ) -> DecoupledState:
        """At the rule's w* for the first step (a warmed-up optimizer), or at w0: with empty state, or with
        ``warm`` = the optimizer's ``steps`` taken and Adam's ``second_moment`` (Σ exp_avg_sq, in the units
        of L/‖w‖²; without it, the normaliser is in step with the gradient: no lag)."""
        if w0 is None:
            _, w_star = rule_curves(self.rule, np.array([lr]), np.array([wd]), self.momentum, self.numel)
            x = float(w_star[0]) ** 2
            return DecoupledState(x, L / x, -1)
        x = w0 * w0
        k, b, sigma_sq = int((warm or {}).get("steps", -1)), self.momentum, L / x
        if warm is None or k == 0:
            return DecoupledState(x, 0.0, 0)
        second = warm.get("second_moment")
        if second is None:  # a normaliser in step with the gradient, over the steps taken
            b2 = self.beta2 if self.beta2 is not None else 0.0
            second = sigma_sq * (1.0 - b2**k) if k > 0 else sigma_sq
        if k < 0:
            return DecoupledState(x, float(second), k)
        # the momentum's averages of σ² as k steps at the current scale leave them (their weight so far)
        return DecoupledState(x, float(second), k, sigma_sq * (1.0 - b**k), sigma_sq * (1.0 - b ** (2 * k)))

    def coefficients(self, lrs: Array, wds: Array) -> tuple[Array, Array]:
        """(η²‖u‖²R, η‖u‖) per step, from the rule's Δ*, w*."""
        d_star, w_star = rule_curves(self.rule, lrs, wds, self.momentum, self.numel)
        decay = lrs * wds
        growth = w_star**2 * decay * (2.0 - decay)  # η²‖u‖²R = (1 − a²)w*²: the fixed point is w*
        return growth, d_star * w_star

    def run(
        self, state: DecoupledState, lrs: Array, wds: Array, ls: Array, factors: Array
    ) -> tuple[Array, Array, DecoupledState]:
        """‖w_t‖² (after any rescale), Δ_t and the final state, over the given steps."""
        n = len(lrs)
        w_sq, delta = np.empty(n), np.empty(n)
        if n == 0:
            return w_sq, delta, state
        growth, step_len = self.coefficients(lrs, wds)
        keep = (1.0 - lrs * wds) ** 2
        for t, args in enumerate(
            zip(keep.tolist(), growth.tolist(), step_len.tolist(), ls.tolist(), factors.tolist(), strict=True)
        ):
            w_sq[t] = state.w_sq * args[4] ** 2
            state, delta[t] = self._step(state, *args)
        return w_sq, delta, state

    def _step(
        self, state: DecoupledState, keep: float, growth: float, step_len: float, L: float, f: float = 1.0
    ) -> tuple[DecoupledState, float]:
        """One step; a rescale by f first (Adam's v ÷ f², as :class:`smdyn.Rescaler` does)."""
        x, v, n, r1, r2 = state
        if f != 1.0:
            ff = f * f
            x, v, r1, r2 = x * ff, v / ff, r1 / ff, r2 / ff
        b1, b2, q = self.bias_correction or 0.0, self.beta2, self.memory
        return _advance(DecoupledState(x, v, n, r1, r2), keep, growth, step_len, L, b1, b2, q, self.momentum)

    def step(self, state: DecoupledState, lr: float, wd: float, L: float) -> tuple[DecoupledState, float]:
        """One step at (η, λ)."""
        growth, step_len = self.coefficients(np.array([lr]), np.array([wd]))
        return self._step(state, (1.0 - lr * wd) ** 2, float(growth[0]), float(step_len[0]), L)

    def stepper(self, lr: float, wd: float, L: float) -> Callable[[Any], tuple[Any, float]]:
        """:meth:`step` at fixed (η, λ, L): :func:`_advance` inlined with the rule evaluated once, for the
        held search's millions of steps (three times as fast as calling it; tests/test_plan.py checks that
        the two agree)."""
        g, s = self.coefficients(np.array([lr]), np.array([wd]))
        keep, growth, step_len = (1.0 - lr * wd) ** 2, float(g[0]), float(s[0])
        b1, b2, q, beta = self.bias_correction or 0.0, self.beta2, self.memory, self.momentum
        if b2 is None:  # no normaliser (Lion, Muon): the general step
            return partial(
                _advance, keep=keep, growth=growth, step_len=step_len, L=L, b1=b1, b2=b2, q=q, beta=beta
            )
        atan2, sqrt = math.atan2, math.sqrt
        b_sq, sigma_num = beta * beta, L

        def step(state: Any) -> tuple[Any, float]:  # a warmed-up Adam (n = −1) inline, a fresh one general
            x, v, n, r1, r2 = state
            if n >= 0:
                return _advance(state, keep, growth, step_len, L, b1, b2, q, beta)
            sigma_sq = sigma_num / x
            v = b2 * v + (1.0 - b2) * sigma_sq
            if r1 != r1:
                r1 = r2 = sigma_sq
            r1 = beta * r1 + (1.0 - beta) * sigma_sq
            r2 = b_sq * r2 + (1.0 - b_sq) * sigma_sq
            d = atan2(step_len * sqrt(r2 / v), sqrt(x))
            return (keep * x + growth * (2.0 * r1 - r2) / v, v, -1, r1, r2), d

        return step

    def fixed_delta(self, lrs: Array, wds: Array) -> Array:
        """Δ at the recurrence's fixed point: atan(Δ*)."""
        d_star, _ = rule_curves(self.rule, lrs, wds, self.momentum, self.numel)
        return np.arctan(d_star)

    def theory(self, rule: Any, lrs: Array, wds: Array, ls: Array) -> tuple[Array, Array]:
        """(Δ*, w*) of the rule."""
        return rule_curves(self.rule, lrs, wds, self.momentum, self.numel)


def _advance(
    state: DecoupledState,
    keep: float,
    growth: float,
    step_len: float,
    L: float,
    b1: float,
    b2: float | None,
    q: float,
    beta: float = 0.0,
) -> tuple[DecoupledState, float]:
    """One decoupled step on plain floats: the state after it, and Δ (module docstring).

    Adam (``b2`` set) divides by √v̂ a momentum of past gradients, whose scale σ² = L/‖w‖² moves with the
    norm: the step's square follows the β²-average of σ² the momentum holds, the growth (the step with its
    correlations to the earlier ones, weights 2(1−β)βʲ − (1−β²)β²ʲ on σ² j steps back) 2A − B of the
    β- and β²-averages A, B, each over its weight so far. From w0 = 1 (w* = 7.2) on independent gradients
    the plan's ‖w‖ ran up to 28% below torch.optim.AdamW's with σ_t² alone and the steady step's growth
    (:func:`bias_growth` not applied), 2.7% with both (tests/test_plan.py).
    """
    x, v, n, r1, r2 = state
    fresh = n >= 0
    if fresh and b1:  # a fresh Adam: the bias-corrected steps' growth, G_{n+1} times the steady one
        table = bias_growth(b1)
        if n + 1 < len(table):
            growth *= table[n + 1]
    elif fresh and q:  # a fresh start: R_n = 1 + (R − 1)(1 − qⁿ)
        white = step_len * step_len
        growth = white + (growth - white) * (1.0 - q**n)
    size_sq = grow_sq = 1.0
    if b2 is not None:  # ρ² = σ²/v̂: the normaliser lags a gradient scale that follows 1/‖w‖
        sigma_sq = L / x
        v = b2 * v + (1.0 - b2) * sigma_sq
        corr = (1.0 - b2 ** (n + 1)) / v if fresh else 1.0 / v
        if r1 != r1:  # NaN: in step with σ² (a warmed-up start)
            r1 = r2 = 0.0 if fresh else sigma_sq
        b_sq = beta * beta
        r1 = beta * r1 + (1.0 - beta) * sigma_sq
        r2 = b_sq * r2 + (1.0 - b_sq) * sigma_sq
        m1 = 1.0 - beta ** (n + 1) if fresh else 1.0
        m2 = 1.0 - b_sq ** (n + 1) if fresh else 1.0
        size_sq = r2 / m2 * corr
        grow_sq = (2.0 * r1 - r2) / (2.0 * m1 - m2) * corr
    bias_sq = 1.0
    if b1 and 0 <= n < 2000:  # ‖m̂_k‖²/‖m_∞‖² = (1 + β₁ᵏ)/(1 − β₁ᵏ) at the k-th step
        p = b1 ** (n + 1)
        bias_sq = (1.0 + p) / (1.0 - p)
    d = math.atan2(step_len * math.sqrt(size_sq * bias_sq), math.sqrt(x))
    return DecoupledState(keep * x + growth * grow_sq, v, (n + 1 if fresh else -1), r1, r2), d


@functools.lru_cache(maxsize=16)
def bias_growth(beta1: float, tol: float = 1e-10) -> Array:
    """G_n, n = 0, 1, …: the expected growth of ‖w‖² at Adam's n-th step from an empty state, over the
    steady growth (gradients independent from step to step, the weight's decay negligible over 1/(1−β₁)).

    The n-th step is m̂_n = Σ_{i≤n} c_{n,i}g_i, c_{n,i} = (1−β₁)β₁^(n−i)/B_n, B_n = 1 − β₁ⁿ (the bias
    correction), and ‖w‖² grows by η²(‖m̂_n‖² + 2Σ_{k<n}⟨m̂_n, m̂_k⟩) (per unit ‖g‖²):
    G_n = Σ_i c_{n,i}(2P_{n,i} − c_{n,i}), P_{n,i} = Σ_{k=i..n} c_{k,i}. With Q_n = Σ_i β₁^(n−i)P_{n,i} =
    β₁Q_{n−1} + ((1−β₁)/B_n)(1−β₁^(2n))/(1−β₁²), G_n = 2((1−β₁)/B_n)Q_n − ((1−β₁)/B_n)²(1−β₁^(2n))/(1−β₁²):
    G_1 = 1 (the first step is g/|g|: √C long, 19× the steady step's square at β₁ = 0.9), G_n → 1. The
    table ends where |G_n − 1| < ``tol``. Against torch.optim.AdamW on gradients independent from step to
    step: the plan's ‖w‖² at step 50 from w0 = 1 (w* = 7.2) was 41% low without it (the ramp
    R_n = 1 + (R − 1)(1 − β₁ⁿ) of the steady step's correlations alone)."""
    b = float(beta1)
    out = [0.0]
    q = 0.0
    n = 0
    while True:
        n += 1
        bn = 1.0 - b**n
        k = (1.0 - b) / bn
        s2 = (1.0 - b ** (2 * n)) / (1.0 - b * b)
        q = b * q + k * s2
        g = 2.0 * k * q - k * k * s2
        out.append(g)
        if (n > 1 and abs(g - 1.0) < tol) or n > 1_000_000:
            break
    return np.array(out)


def rule_curves(rule: Any, lrs: Array, wds: Array, momentum: float, numel: float) -> tuple[Array, Array]:
    """The rule's Δ*(η_t, λ_t) and w*(η_t, λ_t) per step, for a decoupled rule.

    Closed forms are vectorised; rules whose Δ* is a numerical series (Lion, Muon) are evaluated once per
    distinct (η, λ), or, past ``_EXACT_LIMIT`` distinct pairs, on a log grid of ηλ and interpolated: their
    Δ* and w*/η depend on (η, λ) only through a = 1 − ηλ (checked on the rule before it is relied on).
    A w* that needs gradient statistics (NaN) is replaced by η/Δ*·1: norms then count in units of ‖u‖.
    """
    pairs, inverse = np.unique(np.stack([lrs, wds], 1), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    if rule.delta_fn is None or len(pairs) <= _EXACT_LIMIT:
        d, w = _evaluate(rule, pairs[:, 0], pairs[:, 1], momentum, numel)
        return d[inverse], w[inverse]
    p = lrs * wds
    lam0 = float(np.median(wds))
    grid = np.geomspace(p.min(), p.max(), 257) if p.max() > p.min() else np.array([p.min()])
    d_grid, w_grid = _evaluate(rule, grid / lam0, np.full(len(grid), lam0), momentum, numel)
    probe_d, probe_w = _evaluate(rule, grid[[0, -1]] / (2 * lam0), np.full(2, 2 * lam0), momentum, numel)
    if not (
        np.allclose(probe_d, d_grid[[0, -1]], rtol=1e-9)
        and np.allclose(
            probe_w / (grid[[0, -1]] / (2 * lam0)), w_grid[[0, -1]] / (grid[[0, -1]] / lam0), rtol=1e-9
        )
    ):
        d, w = _evaluate(rule, pairs[:, 0], pairs[:, 1], momentum, numel)
        return d[inverse], w[inverse]
    lg = np.log(grid)
    d = np.exp(np.interp(np.log(p), lg, np.log(d_grid)))
    w_over_eta = np.exp(np.interp(np.log(p), lg, np.log(w_grid / (grid / lam0))))
    return d, w_over_eta * lrs


def _evaluate(rule: Any, lrs: Array, wds: Array, momentum: float, numel: float) -> tuple[Array, Array]:
    d = np.asarray(rule.angular_update(lrs, wds, momentum), dtype=np.float64).reshape(-1)
    w = np.asarray(rule.equilibrium_norm(lrs, wds, momentum, numel), dtype=np.float64).reshape(-1)
    w = np.broadcast_to(w, d.shape).copy()
    missing = ~np.isfinite(w)
    w[missing] = lrs[missing] / d[missing]  # ‖u‖ = 1: norms in units of the step's size
    return d, w
