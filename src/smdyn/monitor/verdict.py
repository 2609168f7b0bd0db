"""Stage 4: which theory applies to each recorded row, its values, and the reason when none does.

A row's reason is decided here, when the row is recorded, and never rewritten. Theory is reported only where
its assumptions hold for that step: a rule with theory, lr > 0, 0 ≤ momentum < 1, weight decay > 0, a weight
that is scale-invariant this step (its norm normalizes) and a step that was really applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from smdyn import theory
from smdyn.monitor.columns import REASONS
from smdyn.rules import Rule

#: Codes decided on the host when the step is measured (before any device value is known).
HOST_CODES = ("frozen", "not_in_optimizer", "no_grad", "turned_after_step", "norm_frozen", "mixed_groups")
_BELOW_RESOLUTION = 0.5  # fraction of elements that did not move beyond which the step is not the rule's


def distinct_rules(rules: Any) -> list[Rule]:
    """The different rules among ``rules`` (an iterable or object array), in order of first appearance.

    Compared by identity first (the monitor hands the same object for an unchanged param group), and by
    value only between the few objects left: hashing or comparing a Rule field by field for every row of a
    flush cost more than the rest of the flush (500 units × 100 steps: 0.19 of 0.77 s)."""
    out: list[Rule] = []
    for r in {id(r): r for r in np.asarray(rules, dtype=object).ravel()}.values():
        if not any(r == u for u in out):
            out.append(r)
    return out


def same_rule(rules: Any, rule: Rule) -> np.ndarray:
    """A boolean array of the shape of ``rules``: where the entry is ``rule`` (identity, then value)."""
    arr = np.asarray(rules, dtype=object)
    flat = [r is rule or r == rule for r in arr.ravel()]
    return np.array(flat, dtype=bool).reshape(arr.shape)


def step_theory(
    rules: Sequence[Rule], lr: np.ndarray, wd: np.ndarray, mom: np.ndarray, row_numel: int
) -> dict[str, np.ndarray]:
    """Per step: Δ*, w* of decoupled rules (the sgd family's needs L: ``records``), the norm's relaxation
    time, the steady-state ‖g‖/‖w‖ (sgd family), and the theory's reason code and prose."""
    n = len(lr)
    star, relax, norm = np.full(n, np.nan), np.full(n, np.inf), np.full(n, np.nan)
    grad_ratio = np.full(n, np.nan)
    code = np.full(n, "", dtype=object)
    note = np.full(n, "", dtype=object)
    has = np.array([r.theory for r in rules], dtype=bool)
    for i in np.flatnonzero(~has):
        code[i], note[i] = "no_theory", rules[i].note or REASONS["no_theory"]
    coupled = np.array([r.family == "sgd" for r in rules], dtype=bool)
    exists = np.where(
        coupled, theory.equilibrium_exists(lr, wd, mom), theory.equilibrium_exists(lr, wd, coupled=False)
    )
    with np.errstate(invalid="ignore"):
        valid = has & np.isfinite(lr) & (lr > 0) & np.isfinite(wd) & (wd >= 0) & (mom >= 0) & (mom < 1)
        valid &= exists
    bad = has & ~valid
    code[bad], note[bad] = "bad_hparams", REASONS["bad_hparams"]
    no_wd = valid & (wd == 0)
    code[no_wd], note[no_wd] = "no_decay", REASONS["no_decay"]
    ok = valid & (wd > 0)
    for rule in distinct_rules([rules[i] for i in np.flatnonzero(ok)]):
        sel = ok & same_rule(rules, rule)
        a, b, m = lr[sel], wd[sel], mom[sel]
        try:  # a registered rule's closed forms, or a weight they do not cover, may raise: only its rows lose
            values = (rule.angular_update(a, b, m), rule.relaxation_steps(a, b, m))
            if rule.family == "sgd":  # w* needs L, estimated from the gradients (records.build)
                values += (sgd_grad_to_weight_ratio(rule, a, b, m),)
            else:  # decoupled rules: w* from the update's own size (AdamW, Lion, Muon), NaN where not derived
                values += (rule.equilibrium_norm(a, b, m, row_numel),)
        except Exception as exc:
            code[sel], note[sel] = "no_theory", f"the rule's closed form failed for this weight: {exc!r}"
            continue
        star[sel], relax[sel] = values[0], values[1]
        (grad_ratio if rule.family == "sgd" else norm)[sel] = values[2]
    return {
        "angular_update": star,
        "relaxation_steps": relax,
        "weight_norm": norm,
        "grad_to_weight_ratio": grad_ratio,
        "code": code,
        "note": note,
    }


def sgd_grad_to_weight_ratio(rule: Rule, lr: np.ndarray, wd: np.ndarray, mom: np.ndarray) -> np.ndarray:
    """Steady-state ‖g‖/‖w‖ of a scale-invariant weight under ``torch.optim.SGD``: √(2λ/(ηC)).

    ‖g‖ = ‖g̃‖/‖w‖ (Lemma 1), and at the equilibrium norm (w*)⁴ = ηLC/(2λ) with L = E‖g̃‖² and C the sum
    of the filter from gradients to steps (1/(1−α) for heavy ball), so (‖g‖/‖w‖)² = L/(w*)⁴ = 2λ/(ηC),
    whatever the gradients' size. For heavy ball it assumes successive gradients uncorrelated (h̃ ≈ ‖g̃‖²).
    Under a decaying η the steady state itself rises as η^-½ (Defazio et al. 2025).
    """
    c_sum, _ = theory.sgd_filter_sums(mom, rule.dampening, rule.nesterov)
    return np.sqrt(2.0 * wd / (lr * c_sum))


def mark_transients(
    code: np.ndarray,
    prose: np.ndarray,
    ratio: np.ndarray,
    enough: np.ndarray,
    early: np.ndarray,
    decayed: np.ndarray,
    tol: float,
) -> None:
    """Flag rows far from equilibrium for a known reason (in place): rotating far above it early in training
    (``rotation_excess``) or far below it while the lr decays (``schedule_lag``). Both keep the theory."""
    with np.errstate(invalid="ignore"):
        excess = enough & (code == "") & early & (ratio > 1 + 2 * tol)
        lag = enough & (code == "") & decayed & (ratio < 1 - 2 * tol)
    for mask, key in ((excess, "rotation_excess"), (lag, "schedule_lag")):
        code[mask] = key
        prose[mask] = REASONS[key]


def row_reasons(
    host_code: np.ndarray,
    lr: np.ndarray,
    m: dict[str, np.ndarray],
    ww: np.ndarray,
    finite_grad: np.ndarray,
    skipped: np.ndarray,
    th: dict[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """``reason_code`` and ``reason`` per ``[steps, rows]``: the first that applies, in ``REASONS`` order."""
    shape = ww.shape
    host = np.broadcast_to(np.asarray(host_code, dtype=object)[:, None], shape)
    with np.errstate(invalid="ignore"):
        conds = [
            (host == "frozen", "frozen"),
            (host == "not_in_optimizer", "not_in_optimizer"),
            (host == "no_grad", "no_grad"),
            (host == "turned_after_step", "turned_after_step"),
            (skipped > 0, "skipped"),
            (~np.isfinite(ww), "nonfinite_weight"),
            (ww == 0, "zero_norm"),
            (~finite_grad, "nonfinite_grad"),
            (m["radial_step"], "radial_step"),
            (~np.isfinite(m["angular_update"]), "nonfinite_grad"),
            (host == "norm_frozen", "norm_frozen"),
            (host == "mixed_groups", "mixed_groups"),
            ((m["unmoved_fraction"] > _BELOW_RESOLUTION) & (lr[:, None] > 0), "below_resolution"),
        ]
    code = np.select([c for c, _ in conds], [k for _, k in conds], default="")
    code = np.where(code == "", np.broadcast_to(th["code"][:, None], shape), code).astype(object)
    prose = np.array([REASONS.get(c, "") for c in code.ravel()], dtype=object).reshape(shape)
    from_theory = np.isin(code, ("no_theory",))
    prose[from_theory] = np.broadcast_to(th["note"][:, None], shape)[from_theory]
    return code, prose


def mark_collapse(
    code: np.ndarray,
    prose: np.ndarray,
    ratio: np.ndarray,
    full: np.ndarray,
    late: np.ndarray,
    heavy_ball: np.ndarray,
    tol: float,
) -> np.ndarray:
    """Flag rows whose RMS Δ/Δ* sits far below 1 long after the last change: the unit gradient collapses.

    Returns the mask of collapsed rows (their code and prose are set in place).
    """
    with np.errstate(invalid="ignore"):
        collapsed = full & (code == "") & heavy_ball & (ratio < 1 - 2 * tol) & late
    code[collapsed] = "collapse"
    prose[collapsed] = REASONS["collapse"]
    return collapsed
