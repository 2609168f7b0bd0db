"""``fig4``: a grid of (η, λ) with equal and unequal ηλ, with and without momentum (Sec 4.1, paper Fig 4).

Claims: runs with equal ηλ (and α) have equal angular updates and similar accuracy; a larger Δ gives a
higher train loss and a lower test accuracy; momentum lowers Δ (by √(1+α), Thm 3) but raises the loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from smdyn.experiments.reproduce.claims import Claim, Experiment, Runs, Verdict, finite, num, pct
from smdyn.experiments.reproduce.measures import equilibrium_figures, optim, series, training

__all__ = ["EXPERIMENT", "RUNS", "THRESHOLDS", "Fig4Thresholds", "evaluate"]


@dataclass(frozen=True)
class Fig4Thresholds:
    """Equal ηλ ⇒ equal Δ and similar accuracy (the conjecture of Sec 4.1): the relative spread of the
    measured RMS Δ between runs of equal ηλ and α, and the absolute spread of their test accuracy (2
    points)."""

    equal_delta_tol: float = 0.10
    similar_accuracy_tol: float = 0.02


THRESHOLDS = Fig4Thresholds()

#: The grid, in the order the runs are trained and listed.
RUNS = (
    "fig4_sgd_lr0.1_wd2e-3",
    "fig4_sgd_lr0.2_wd1e-3",
    "fig4_sgd_lr0.2_wd2e-3",
    "fig4_sgdm_lr0.1_wd2e-3",
    "fig4_sgdm_lr0.05_wd4e-3",
    "fig4_sgdm_lr0.1_wd4e-3",
)


def _grid(runs: Runs) -> list[dict[str, Any]]:
    """Per run of a grid: name, η, λ, α, ηλ, measured RMS Δ, Δ* and training figures."""
    rows = []
    for name, members in runs.items():
        run = members[0]
        lr, wd, mom, _ = optim(run)
        e = equilibrium_figures(series(run))
        rows.append(
            {
                "run": name,
                "lr": lr,
                "wd": wd,
                "momentum": mom,
                "lr_wd": float(f"{lr * wd:.6g}"),
                "rms_delta": e["rms_delta"],
                "theory_delta": e["theory_delta"],
                **training(run),
            }
        )
    return rows


def _equal_lr_wd(rows: list[dict[str, Any]], t: Fig4Thresholds) -> Claim:
    """Equal ηλ (and α) ⇒ equal Δ and similar accuracy (Thm 3, the conjecture of Sec 4.1)."""
    groups: dict[tuple[float, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["momentum"], r["lr_wd"]), []).append(r)
    pairs = [g for g in groups.values() if len(g) >= 2]
    spreads = []
    for g in pairs:
        d = [r["rms_delta"] for r in g]
        acc = [r["test_accuracy"] for r in g]
        spreads.append(
            {
                "runs": [r["run"] for r in g],
                "momentum": g[0]["momentum"],
                "lr_wd": g[0]["lr_wd"],
                "rms_delta": d,
                "delta_spread": max(d) / min(d) - 1 if min(d) > 0 else math.nan,
                "test_accuracy": acc,
                "accuracy_spread": max(acc) - min(acc),
            }
        )
    d_ok = [finite(s["delta_spread"]) and s["delta_spread"] <= t.equal_delta_tol for s in spreads]
    a_ok = [finite(s["accuracy_spread"]) and s["accuracy_spread"] <= t.similar_accuracy_tol for s in spreads]
    figure = "; ".join(
        f"α = {s['momentum']:g}, ηλ = {s['lr_wd']:g}: RMS Δ spread {pct(s['delta_spread'])}, test accuracy "
        f"spread {num(100 * s['accuracy_spread'], '.2f')} points"
        for s in spreads
    )
    if not spreads:
        verdict, reason = Verdict.NOT_REPRODUCED, "no two runs share ηλ and α"
    else:
        lim = f"(limits {pct(t.equal_delta_tol)} and {100 * t.similar_accuracy_tol:g} points)"
        if all(d_ok) and all(a_ok):
            verdict, reason = (
                Verdict.REPRODUCED,
                f"equal Δ and similar accuracy in all {len(spreads)} pairs {lim}",
            )
        elif all(d_ok) or all(a_ok):
            which = "Δ equal" if all(d_ok) else "accuracy similar"
            verdict, reason = (
                Verdict.PARTLY,
                (
                    f"{which} in every pair, the other in {sum(a_ok) if all(d_ok) else sum(d_ok)}"
                    f"/{len(spreads)} {lim}"
                ),
            )
        else:
            verdict, reason = (
                Verdict.NOT_REPRODUCED,
                (f"Δ equal in {sum(d_ok)}/{len(spreads)} pairs, accuracy similar in {sum(a_ok)} {lim}"),
            )
    return Claim(
        "equal_lr_wd",
        "Runs with equal ηλ (and α) have equal angular updates and similar accuracy",
        "Thm 3, Sec 4.1 conjecture, Fig 4",
        [r["run"] for g in pairs for r in g],
        figure,
        verdict,
        reason,
        {"pairs": spreads},
    )


def _larger_delta_worse(rows: list[dict[str, Any]]) -> Claim:
    """A larger Δ ⇒ a higher train loss and a lower test accuracy, per momentum (Sec 4.1)."""
    comparisons = []
    for mom in sorted({r["momentum"] for r in rows}):
        same = [r for r in rows if r["momentum"] == mom]
        top = max(r["lr_wd"] for r in same)
        big = [r for r in same if r["lr_wd"] == top]
        small = [r for r in same if r["lr_wd"] < top]
        if not small:
            continue
        b = big[0]
        comparisons.append(
            {
                "momentum": mom,
                "larger": b["run"],
                "smaller": [r["run"] for r in small],
                "delta_larger": b["rms_delta"] > max(r["rms_delta"] for r in small),
                "loss_higher": b["train_loss"] > max(r["train_loss"] for r in small),
                "accuracy_lower": b["test_accuracy"] < min(r["test_accuracy"] for r in small),
                "train_loss": [b["train_loss"], [r["train_loss"] for r in small]],
                "test_accuracy": [b["test_accuracy"], [r["test_accuracy"] for r in small]],
                "rms_delta": [b["rms_delta"], [r["rms_delta"] for r in small]],
            }
        )
    figure = "; ".join(
        f"α = {c['momentum']:g}: Δ {num(c['rms_delta'][0])} vs "
        f"{', '.join(num(x) for x in c['rms_delta'][1])} rad, train loss "
        f"{num(c['train_loss'][0], '.4f')} vs "
        f"{', '.join(num(x, '.4f') for x in c['train_loss'][1])}, test accuracy "
        f"{num(c['test_accuracy'][0], '.4f')} vs {', '.join(num(x, '.4f') for x in c['test_accuracy'][1])}"
        for c in comparisons
    )
    both = [c["loss_higher"] and c["accuracy_lower"] for c in comparisons]
    some = [c["loss_higher"] or c["accuracy_lower"] for c in comparisons]
    if not comparisons:
        verdict, reason = Verdict.NOT_REPRODUCED, "no run with a larger ηλ to compare"
    elif not all(c["delta_larger"] for c in comparisons):
        verdict, reason = (
            Verdict.NOT_REPRODUCED,
            "the run with the larger ηλ did not have the larger measured Δ",
        )
    elif all(both):
        verdict, reason = (
            Verdict.REPRODUCED,
            "at every α the larger-Δ run has the higher train loss and lower test accuracy",
        )
    elif any(some):
        parts = [
            f"α = {c['momentum']:g}: loss {'higher' if c['loss_higher'] else 'not higher'}, accuracy "
            f"{'lower' if c['accuracy_lower'] else 'not lower'}"
            for c in comparisons
        ]
        verdict, reason = Verdict.PARTLY, "; ".join(parts)
    else:
        verdict, reason = (
            Verdict.NOT_REPRODUCED,
            "the larger-Δ runs have neither a higher loss nor a lower accuracy",
        )
    return Claim(
        "larger_delta_worse",
        "A larger angular update gives a higher training loss and a lower test accuracy",
        "Sec 4.1, Fig 4",
        [r["run"] for r in rows],
        figure,
        verdict,
        reason,
        {"comparisons": comparisons},
    )


def _momentum_delta_loss(rows: list[dict[str, Any]]) -> Claim:
    """Momentum lowers Δ (by √(1+α), Thm 3) but raises the loss, at equal ηλ."""
    effects = []
    for lw in sorted({r["lr_wd"] for r in rows}):
        sgd = [r for r in rows if r["lr_wd"] == lw and r["momentum"] == 0]
        sgdm = [r for r in rows if r["lr_wd"] == lw and r["momentum"] > 0]
        if not sgd or not sgdm:
            continue
        d0, d1 = np.mean([r["rms_delta"] for r in sgd]), np.mean([r["rms_delta"] for r in sgdm])
        l0, l1 = np.mean([r["train_loss"] for r in sgd]), np.mean([r["train_loss"] for r in sgdm])
        a0, a1 = np.mean([r["test_accuracy"] for r in sgd]), np.mean([r["test_accuracy"] for r in sgdm])
        alpha = sgdm[0]["momentum"]
        effects.append(
            {
                "lr_wd": lw,
                "delta_ratio": float(d1 / d0) if d0 > 0 else math.nan,
                "predicted_delta_ratio": (1 + alpha) ** -0.5,
                "train_loss_sgd": float(l0),
                "train_loss_sgdm": float(l1),
                "test_accuracy_sgd": float(a0),
                "test_accuracy_sgdm": float(a1),
            }
        )
    lower = [finite(e["delta_ratio"]) and e["delta_ratio"] < 1 for e in effects]
    higher = [e["train_loss_sgdm"] > e["train_loss_sgd"] for e in effects]
    figure = "; ".join(
        f"ηλ = {e['lr_wd']:g}: Δ_SGDM/Δ_SGD = {num(e['delta_ratio'])} (Thm 3: "
        f"{num(e['predicted_delta_ratio'])}), train loss {num(e['train_loss_sgd'], '.4f')} → "
        f"{num(e['train_loss_sgdm'], '.4f')}, test accuracy {num(e['test_accuracy_sgd'], '.4f')} → "
        f"{num(e['test_accuracy_sgdm'], '.4f')}"
        for e in effects
    )
    if not effects:
        verdict, reason = Verdict.NOT_REPRODUCED, "no SGD and SGDM runs at the same ηλ"
    elif all(lower) and all(higher):
        verdict, reason = (
            Verdict.REPRODUCED,
            f"Δ lower and train loss higher with momentum at all {len(effects)} ηλ",
        )
    elif all(lower):
        verdict, reason = (
            Verdict.PARTLY,
            f"Δ lower at every ηλ, train loss higher at {sum(higher)}/{len(effects)}",
        )
    else:
        verdict, reason = (
            Verdict.NOT_REPRODUCED,
            f"Δ lower with momentum at only {sum(lower)}/{len(effects)} ηλ",
        )
    return Claim(
        "momentum_delta_loss",
        "Momentum lowers the angular update but raises the loss",
        "Thm 3, Sec 4.1, Fig 4",
        [r["run"] for r in rows],
        figure,
        verdict,
        reason,
        {"effects": effects},
    )


def evaluate(runs: Runs, t: Fig4Thresholds = THRESHOLDS) -> list[Claim]:
    rows = _grid(runs)
    return [_equal_lr_wd(rows, t), _larger_delta_worse(rows), _momentum_delta_loss(rows)]


EXPERIMENT = Experiment(
    "fig4",
    "Grid of (η, λ) with and without momentum (Fig 4)",
    RUNS,
    evaluate,
    dict.fromkeys(RUNS, 0.4),  # one factor for all: runs of different lengths would not compare
    THRESHOLDS,
)
