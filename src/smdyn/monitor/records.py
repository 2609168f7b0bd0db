"""From a flushed block of raw device sums to the record rows: metrics → windows → verdict → columns."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from smdyn.monitor import metrics, verdict
from smdyn.monitor.columns import (
    COLUMNS,
    HPARAMS,
    MEASUREMENT_LOST,
    METRICS,
    OUT_OF_EQUILIBRIUM,
    REASONS,
    WINDOWED,
)
from smdyn.monitor.measure import I
from smdyn.monitor.units import Unit
from smdyn.monitor.windows import RESTART, Windows
from smdyn.rules import Coefficients, Rule

_NAN3 = (math.nan, math.nan, math.nan)
_TRANSIENT_SAMPLES = 8  # Δ samples in the window before a transient (rotation excess, schedule lag) is named
# Metrics that need the step's gradient or update: NaN when the measurement is lost.
_LOST_METRICS = tuple(m for m in METRICS if m not in ("weight_norm", "effective_lr"))


@dataclass(frozen=True)
class UnitStep:
    """What the host knew about one unit at a recorded step, before any device value was read."""

    lr: float
    wd: float
    mom: float
    rule: Rule
    coeffs: tuple[Coefficients | None, ...]  # per tensor; None where the snapshot path measures the step
    host_code: str = ""  # one of verdict.HOST_CODES, or ""


@dataclass
class Layout:
    """Names and sizes of the record rows, fixed once the units are known."""

    units: list[Unit]
    names: np.ndarray
    channels: np.ndarray
    window: int
    tol: float
    stride: int  # optimizer steps between recorded steps, for the relaxation-time test


def _objects(items: list[object]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _unit_rows(u: Unit, raw: np.ndarray, start: int) -> tuple[list[np.ndarray], int]:
    parts = []
    for t in u.tensors:
        n = t.shape[0] if u.per_channel else 1
        parts.append(raw[:, start : start + n])
        start += n
    return parts, start


def _unit_block(parts: list[np.ndarray], row_numel: int, steps: list[UnitStep]) -> dict[str, np.ndarray]:
    """Metrics, theory and reasons over a block of steps, ``[steps, rows]`` each, for units that share
    their per-step host facts (``steps``): one unit, or several whose rows are side by side in ``parts``."""
    lr = np.array([s.lr for s in steps])
    wd = np.array([s.wd for s in steps])
    mom = np.array([s.mom for s in steps])
    rules = [s.rule for s in steps]
    coeffs = [np.array([s.coeffs[i] or _NAN3 for s in steps]) for i in range(len(parts))]
    heavy_ball = np.array([r.family == "sgd" for r in rules])
    m = metrics.unit_metrics(parts, coeffs, lr, mom, row_numel, with_h=bool(heavy_ball.any()))
    ww = sum(p[..., I["ww"]] for p in parts)
    finite_grad = np.all([np.isfinite(p[..., I["gg"]]) for p in parts], axis=0)
    skipped = np.max([p[..., I["skip"]] for p in parts], axis=0)
    th = verdict.step_theory(rules, lr, wd, mom, row_numel)
    host = np.array([s.host_code for s in steps], dtype=object)
    code, prose = verdict.row_reasons(host, lr, m, ww, finite_grad, skipped, th)
    lost = np.isin(code, MEASUREMENT_LOST)
    for k in _LOST_METRICS:
        m[k] = np.where(lost, np.nan, m[k])
    shape = ww.shape
    # h̃ is Thm 2's L for plain heavy ball; the Nesterov/dampening w* is derived for L = E‖g̃‖²
    plain = np.array([r.heavy_ball for r in rules])
    use_h = plain[:, None] & (mom[:, None] > 0)
    return {
        **m,
        "hparams": np.broadcast_to(np.stack([lr, wd, mom], axis=-1)[:, None, :], (*shape, 3)),
        "ell": np.where(use_h, m["h_tilde"], m["unit_grad_sq"]),
        "star": np.broadcast_to(th["angular_update"][:, None], shape),
        "relax": np.broadcast_to(th["relaxation_steps"][:, None], shape),
        "norm_star": np.broadcast_to(th["weight_norm"][:, None], shape),
        "grad_ratio_star": np.broadcast_to(th["grad_to_weight_ratio"][:, None], shape),
        "heavy_ball": np.broadcast_to(heavy_ball[:, None], shape),
        "rule": np.broadcast_to(_objects(rules)[:, None], shape),
        "code": code,
        "prose": prose,
    }


def _unit_blocks(units: list[Unit], meta: list[list[UnitStep]], raw: np.ndarray) -> dict[str, np.ndarray]:
    """Every unit's :func:`_unit_block`, ``[steps, rows]`` in layout order, computed once per set of units
    that share their shape (tensors, elements per row) and their host facts at every step (the monitor
    hands them the same UnitStep objects): 500 small units of one param group take one pass, not 500."""
    sets: dict[tuple, list[tuple[int, list[np.ndarray], np.ndarray]]] = {}
    start = row = 0
    for ui, u in enumerate(units):
        parts, start = _unit_rows(u, raw, start)
        key = (len(u.tensors), u.numel // u.rows, tuple(id(m[ui]) for m in meta))
        sets.setdefault(key, []).append((ui, parts, np.arange(row, row + u.rows)))
        row += u.rows
    out: dict[str, np.ndarray] = {}
    for (ntensors, row_numel, _), members in sets.items():
        parts = [np.concatenate([p[i] for _, p, _ in members], axis=1) for i in range(ntensors)]
        block = _unit_block(parts, row_numel, [m[members[0][0]] for m in meta])
        rows = np.concatenate([r for _, _, r in members])
        for k, v in block.items():
            if k not in out:
                out[k] = np.empty((v.shape[0], row, *v.shape[2:]), dtype=v.dtype)
            out[k][:, rows] = v
    return out


def build(
    layout: Layout, windows: Windows, steps: np.ndarray, meta: list[list[UnitStep]], raw: np.ndarray
) -> dict[str, np.ndarray]:
    """Rows for a block of recorded steps: per-unit metrics vectorised over steps, then windows and theory."""
    c = _unit_blocks(layout.units, meta, raw)
    win = windows.advance(c["hparams"], c["angular_update"], c["ell"], c["star"])
    lr, wd, mom = c["hparams"][..., 0], c["hparams"][..., 1], c["hparams"][..., 2]
    code, prose = c["code"], c["prose"]
    with np.errstate(invalid="ignore", divide="ignore"):
        norm_star = c["norm_star"].copy()
        L = win["l_estimate"]
        ok = c["heavy_ball"] & (code == "") & (L > 0) & np.isfinite(L) & (lr * wd < 2 * (1 + mom))
        for rule in verdict.distinct_rules(c["rule"][ok]):  # the heavy-ball family's w* comes from L
            sel = ok & verdict.same_rule(c["rule"], rule)
            norm_star[sel] = rule.weight_norm(L[sel], lr[sel], wd[sel], mom[sel])
        ratio = win["angular_update_rms"] / c["star"]
        full = win["count"] >= layout.window
        late = win["since"] * layout.stride > 3 * c["relax"]
        verdict.mark_collapse(code, prose, ratio, full, late, c["heavy_ball"], layout.tol)
        early = steps[:, None] < 3 * c["relax"]
        decayed = lr < (1 - RESTART) * win["lr_peak"]
        # Transients are judged on the moving average of (Δ/Δ*)², which follows a continuous schedule (the Δ
        # window restarts at every 5% of lr change); Δ of a weight with n elements scatters by ~1/√n a step.
        enough = win["ratio_count"] >= _TRANSIENT_SAMPLES
        verdict.mark_transients(code, prose, win["ratio_ema"], enough, early, decayed, layout.tol)
        eq = full & (code == "") & (np.abs(ratio - 1) <= layout.tol)
    has_theory = (code == "") | np.isin(code, OUT_OF_EQUILIBRIUM)
    nrows = code.shape[1]
    out = {
        "step": np.repeat(steps, nrows),
        "param": np.tile(layout.names, len(steps)),
        "channel": np.tile(layout.channels, len(steps)),
        **dict(zip(HPARAMS, (lr, wd, mom), strict=True)),
        **{k: c[k] for k in METRICS},
        **{k: win[k] for k in WINDOWED},
        "theory_angular_update": np.where(has_theory, c["star"], np.nan),
        "theory_weight_norm": np.where(has_theory, norm_star, np.nan),
        "theory_grad_to_weight_ratio": np.where(has_theory, c["grad_ratio_star"], np.nan),
        "in_equilibrium": eq,
        "reason_code": code,
        "reason": prose,
    }
    return {k: np.ascontiguousarray(out[k]).reshape(-1) if out[k].ndim > 1 else out[k] for k in COLUMNS}


def fallback(layout: Layout, steps: np.ndarray, why: str, code: str = "internal") -> dict[str, np.ndarray]:
    """Rows for steps whose records could not be computed (``internal``) or whose measurement failed in a
    hook (``not_measured``): every number NaN, the reason says why."""
    nrows = len(layout.names)
    n = len(steps) * nrows
    out: dict[str, np.ndarray] = {c: np.full(n, np.nan) for c in COLUMNS}
    out["step"] = np.repeat(steps, nrows)
    out["param"] = np.tile(layout.names, len(steps))
    out["channel"] = np.tile(layout.channels, len(steps))
    out["in_equilibrium"] = np.zeros(n, dtype=bool)
    out["reason_code"] = np.full(n, code, dtype=object)
    out["reason"] = np.full(n, f"{REASONS[code]}: {why}", dtype=object)
    return out


def in_step_order(blocks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Blocks of rows joined, sorted by step (stable: a step's rows keep the layout order)."""
    if len(blocks) == 1:
        return blocks[0]
    joined = {c: np.concatenate([b[c] for b in blocks]) for c in COLUMNS}
    order = np.argsort(joined["step"], kind="stable")
    return {c: v[order] for c, v in joined.items()}
