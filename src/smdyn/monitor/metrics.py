"""Stage 2, on the host: metrics of one monitored unit from its tensors' device reductions (pure numpy).

Everything is float64 and vectorised over a block of recorded steps: arrays are ``[steps, rows]``. No torch,
no hooks: this stage is testable with hand-made sums.
"""

from __future__ import annotations

import numpy as np

from smdyn import geometry
from smdyn.monitor.measure import I


def _col(p: np.ndarray, name: str) -> np.ndarray:
    return p[..., I[name]]


def _total(parts: list[np.ndarray], name: str) -> np.ndarray:
    return sum(_col(p, name) for p in parts)


#: Below this tangential share ‖d⊥‖²/‖d‖² of a known update, the float32-accumulated Gram of (w, g, v)
#: (relative error ~1e-6) no longer resolves ‖d⊥‖² to 0.1%: Δ is NaN, ``radial_step``. A scale-invariant
#: weight's step is mostly tangential (its decay part is ~Δ/2 of it); the snapshot path projects exactly.
RADIAL_LIMIT = 1e-3


def known_update_angle(parts: list[np.ndarray], coeffs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Δ from the Gram matrix of (w, g, v) before the step and d = a·w + b·g + c·v (docs/design.md §2), and
    where it is not resolved (``RADIAL_LIMIT``).

    The weight-decay term a·w is radial, so when every tensor of the unit shares a, the tangential part comes
    from e = b·g + c·v alone and never suffers the cancellation of ‖d‖² − ⟨d,ŵ⟩².
    """
    ww = _total(parts, "ww")
    dw = ew = ee = dd = 0.0
    for p, k in zip(parts, coeffs, strict=True):
        a, b, c = (k[:, j : j + 1] for j in range(3))
        ew_i = b * _col(p, "wg") + c * _col(p, "wv")
        ee_i = b * b * _col(p, "gg") + c * c * _col(p, "vv") + 2 * b * c * _col(p, "gv")
        ew, ee = ew + ew_i, ee + ee_i
        dw = dw + a * _col(p, "ww") + ew_i
        dd = dd + a * a * _col(p, "ww") + 2 * a * ew_i + ee_i
    same_a = np.all([k[:, :1] == coeffs[0][:, :1] for k in coeffs], axis=0)
    perp = np.where(same_a, ee - ew**2 / ww, dd - dw**2 / ww)
    norm = np.sqrt(ww)
    delta = np.arctan2(np.sqrt(np.maximum(perp, 0.0)), norm - dw / norm)
    return delta, perp < RADIAL_LIMIT * np.where(same_a, ee, dd)


def snapshot_angle(parts: list[np.ndarray]) -> np.ndarray:
    """Δ from the sums relative to b = w_{t+1} (``geometry.update_sums``), added over tensors and shards.

    A single tensor carries an exact ‖d⊥‖²: from ``update_sums`` (``dperp``), or from the projected step
    p = d − c·b (``pb`` = ⟨p,b⟩, ``pp`` = ‖p‖²). Pairs and shards add their sums and form the one-pass
    ‖d‖² − ⟨d,b⟩²/‖b‖².
    """
    bb, db, dd = _total(parts, "bb"), _total(parts, "db"), _total(parts, "dd")
    one_pass = dd - db**2 / bb
    if len(parts) > 1:
        perp = one_pass
    else:
        p = parts[0]
        projected = _col(p, "pp") - _col(p, "pb") ** 2 / bb
        exact = np.where(np.isfinite(_col(p, "dperp")), _col(p, "dperp"), projected)
        perp = np.where(np.isfinite(exact), exact, one_pass)
    return geometry.angle_from_sums(np.stack(np.broadcast_arrays(bb, db, dd, perp), axis=-1))


def unit_metrics(
    parts: list[np.ndarray],
    coeffs: list[np.ndarray],
    lr: np.ndarray,
    momentum: np.ndarray,
    row_numel: int,
    *,
    with_h: bool,
) -> dict[str, np.ndarray]:
    """Measured metrics of one unit.

    Args:
        parts: one ``[steps, rows, NRAW]`` array of raw sums per tensor of the unit.
        coeffs: one ``[steps, 3]`` array per tensor: the known-update coefficients (a, b, c), NaN on the
            steps where the snapshot path measured the update instead.
        lr: ``[steps]`` learning rate (for the effective learning rate η/‖w‖²).
        momentum: ``[steps]`` heavy-ball α (h̃ of Thm 2 needs it).
        row_numel: elements per row (for the fraction of elements that did not move).
        with_h: the rule has a heavy-ball buffer, so h̃ is defined.
    """
    ww, gg, wg, gv = (_total(parts, k) for k in ("ww", "gg", "wg", "gv"))
    with np.errstate(invalid="ignore", divide="ignore"):
        is_known = np.all([np.isfinite(k).all(axis=1, keepdims=True) for k in coeffs], axis=0)
        known, radial = known_update_angle(parts, coeffs)
        radial &= is_known
        delta = np.where(radial, np.nan, np.where(is_known, known, snapshot_angle(parts)))
        h = (gg + 2 * momentum[:, None] * gv) * ww if with_h else np.full_like(ww, np.nan)
        unmoved = np.where(is_known, np.nan, _total(parts, "unmoved") / row_numel)
        return {
            "weight_norm": np.sqrt(ww),
            "unit_grad_sq": gg * ww,
            "h_tilde": h,
            "angular_update": np.where(ww > 0, delta, np.nan),
            "effective_lr": np.where(ww > 0, lr[:, None] / ww, np.nan),
            "grad_cosine": wg / np.sqrt(ww * gg),
            "unmoved_fraction": unmoved,
            "grad_to_weight_ratio": np.sqrt(gg / ww),
            "radial_step": radial,  # not a column: for the row's reason
        }
