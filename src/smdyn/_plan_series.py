"""Per-step readings of a planned run: how far from its equilibrium it is at every step, and why.

For each control :func:`smdyn.plan` runs, from Δ_t, ‖w_t‖ and the equilibrium (Δ*_t, w*_t) at the step's
own settings (η_t, λ_t):

- ``delta_ratio`` Δ_t/Δ*_t and ``norm_ratio`` ‖w_t‖/w*_t;
- ``grad_weight_ratio`` ‖g‖/‖w‖ = ‖g̃‖/‖w‖² (a scale-invariant weight's gradient is ‖g̃‖/‖w‖, Def 2, with
  ‖g̃‖² = L_t) and ``steady_grad_weight_ratio``, its value at the equilibrium norm, √L_t/w*_t²; their
  quotient ``grad_ratio`` = (w*_t/‖w_t‖)² at constant ‖g̃‖. Both move as η decays: the steady state rises
  (w*² ∝ √η for SGD, ∝ η for AdamW, Defazio et al. 2025, arXiv 2506.02285) and the norm lags behind it;
- ``lag``, steps behind the schedule: ‖w_t‖ is the equilibrium norm the schedule had ``lag`` steps ago
  (t − s for the latest s ≤ t at which w*_s was on the other side of ‖w_t‖ from w*_t; 0 at equilibrium,
  NaN while the norm is still approaching from its initial value and no past equilibrium matches it;
  where w* is flat, as under corrected decay, a small gap reads as a long lag: read it with norm_ratio);
- the early excess from a fresh start (:func:`early_excess`).
"""

from __future__ import annotations

import bisect
import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["diagnostics", "early_excess", "steps_behind"]

Array = NDArray[np.float64]
EARLY_TOL = 0.10
_AT_EQUILIBRIUM = 1e-9  # relative |‖w‖ − w*| read as "at equilibrium" (rounding of the recurrence)


def diagnostics(delta: Array, norm: Array, d_star: Array, w_star: Array, ls: Array) -> dict[str, Array]:
    """The per-step readings of the module docstring, as arrays of the run's length."""
    grad = np.sqrt(ls) / norm**2
    steady = np.sqrt(ls) / w_star**2
    return {
        "delta_ratio": delta / d_star,
        "norm_ratio": norm / w_star,
        "grad_weight_ratio": grad,
        "steady_grad_weight_ratio": steady,
        "grad_ratio": grad / steady,
        "lag": steps_behind(norm, w_star),
    }


def steps_behind(norm: Array, w_star: Array) -> Array:
    """lag_t = t − max{s ≤ t : w*_s on the far side of ‖w_t‖ from w*_t} (module docstring), O(n log n).

    Two monotone stacks hold the steps that may still answer "the latest s with w*_s ≥ v" (and ≤ v): a step
    whose w* is exceeded by a later one can never be the latest, so each stack's w* falls (rises) from its
    bottom to its top, and a binary search finds the answer.
    """
    n = len(norm)
    out = np.full(n, math.nan)
    hi_idx: list[int] = []
    hi_neg: list[float] = []  # −w* along the stack of maxima: increasing, for bisect
    lo_idx: list[int] = []
    lo_val: list[float] = []  # w* along the stack of minima: increasing
    ws, xs = w_star.tolist(), norm.tolist()
    for t in range(n):
        v = ws[t]
        while hi_neg and -hi_neg[-1] <= v:
            hi_neg.pop()
            hi_idx.pop()
        hi_neg.append(-v)
        hi_idx.append(t)
        while lo_val and lo_val[-1] >= v:
            lo_val.pop()
            lo_idx.pop()
        lo_val.append(v)
        lo_idx.append(t)
        x = xs[t]
        if abs(x - v) <= _AT_EQUILIBRIUM * v:
            out[t] = 0.0
        elif x > v:  # above the equilibrium: the latest s with w*_s >= x
            i = bisect.bisect_right(hi_neg, -x) - 1
            if i >= 0:
                out[t] = t - hi_idx[i]
        else:  # below: the latest s with w*_s <= x
            i = bisect.bisect_right(lo_val, x) - 1
            if i >= 0:
                out[t] = t - lo_idx[i]
    return out


def early_excess(delta_ratio: Array, tol: float = EARLY_TOL) -> dict[str, float]:
    """From the start: ``settle``, the first step with |Δ/Δ* − 1| <= tol (``inf`` if none), and ``peak``,
    the largest Δ/Δ* before it (at ``peak_step``); ``peak`` is 1 and ``settle`` 0 for a run that starts in
    the band."""
    inside = np.flatnonzero(np.abs(delta_ratio - 1.0) <= tol)
    settle = int(inside[0]) if inside.size else len(delta_ratio)
    if settle == 0:
        return {"peak": float(delta_ratio[0]), "peak_step": 0.0, "settle": 0.0}
    head = delta_ratio[: settle + 1] if inside.size else delta_ratio
    i = int(np.argmax(head))
    return {
        "peak": float(head[i]),
        "peak_step": float(i),
        "settle": float(settle) if inside.size else math.inf,
    }


def at_step(runs: dict[str, dict[str, Array]], lr: Array, t: int) -> list[dict[str, Any]]:
    """One row per control at step t: the readings, how the steady state of ‖g‖/‖w‖ moved since the step
    of the largest lr (the end of a warm-up: before it the steady state falls as the lr rises), and how far
    ‖g‖/‖w‖ itself has risen from its lowest value between that step and t.

    The rise is taken from the lowest value, not from the value at the peak lr, because at the end of a
    warm-up a fresh run's norm is still far from equilibrium: the value there is set by the initial norm,
    the lowest one after it by the schedule (the reading Defazio et al. 2025 make, and the one
    ``smdyn reproduce schedules`` measures)."""
    peak = int(np.argmax(lr))
    rows = []
    for name, run in runs.items():
        steady = run["steady_grad_weight_ratio"]
        ratio = run["grad_weight_ratio"]
        low = peak + int(np.argmin(ratio[peak : t + 1])) if t >= peak else t
        rows.append(
            {
                "step": t,
                "lr": float(lr[t]),
                "control": name,
                "delta_ratio": float(run["delta_ratio"][t]),
                "norm_ratio": float(run["norm_ratio"][t]),
                "grad_ratio": float(run["grad_ratio"][t]),
                "steady_rise": float(steady[t] / steady[peak]),
                "grad_rise": float(ratio[t] / ratio[low]),
                "grad_low_step": low,
                "lag": float(run["lag"][t]),
            }
        )
    return rows


def format_rows(rows: list[dict[str, Any]], lead: tuple[str, ...]) -> list[str]:
    """Aligned text lines for rows of :func:`at_step` (with the ``lead`` columns first)."""
    head = (*lead, "control", "Δ/Δ*", "‖w‖/w*", "‖g‖/‖w‖ ÷ steady", "steady ÷ at peak lr", "lag (steps)")
    lines = [head]
    for r in rows:
        lag = r["lag"]
        lines.append(
            (
                *(_cell(r[k]) for k in lead),
                r["control"],
                f"{r['delta_ratio']:.3f}",
                f"{r['norm_ratio']:.3f}",
                f"{r['grad_ratio']:.3f}",
                f"{r['steady_rise']:.3f}",
                "-" if math.isnan(lag) else f"{lag:.0f}",
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    return ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in lines]


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
