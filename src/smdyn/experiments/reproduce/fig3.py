"""``fig3``: a fixed learning rate with SGD and with SGDM (Thm 1–3, Eqs 8/12, paper Fig 3).

Claims: every scale-invariant weight reaches ‖w‖ = w* and RMS Δ = Δ* = √(2λη/(1+α)) (one claim per
optimizer), and SGDM gets there faster than SGD at equal η and λ (the bounds of Eqs 8/12 predict
1/(1−α) = 10× at α = 0.9).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from smdyn.experiments.reproduce.claims import (
    Claim,
    Experiment,
    Runs,
    Verdict,
    finite,
    num,
    pct,
    steps_text,
)
from smdyn.experiments.reproduce.measures import equilibrium_figures, optim, series, time_to_equilibrium
from smdyn.experiments.rundir import Run

__all__ = ["EXPERIMENT", "THRESHOLDS", "Fig3Thresholds", "equilibrium_claim", "evaluate"]


@dataclass(frozen=True)
class Fig3Thresholds:
    """Equilibrium (Thm 1–3): the targets the CPU runs are held to, over the last monitor window of the last
    stage; within ``partly_factor`` × them is "partly". SGDM is "faster" at ``faster_ratio`` × SGD's speed
    (time to equilibrium), faster at all is "partly"."""

    equilibrium_delta_tol: float = 0.05  # median over layers of |RMS Δ/Δ* − 1|
    equilibrium_norm_tol: float = 0.10  # median over layers of |‖w‖/w* − 1|
    partly_factor: float = 2.0
    faster_ratio: float = 2.0


THRESHOLDS = Fig3Thresholds()


def grade_equilibrium(e: Mapping[str, Any], t: Fig3Thresholds = THRESHOLDS) -> tuple[Verdict, str]:
    """The verdict on an equilibrium claim from `measures.equilibrium_figures`."""
    d, n = e["median_abs_rms_dev"], e["median_abs_norm_dev"]
    if not finite(d, n):
        return Verdict.NOT_REPRODUCED, "no layer with a theoretical Δ* and w* in the final window"
    dt, nt = t.equilibrium_delta_tol, t.equilibrium_norm_tol
    what = f"median |RMS Δ/Δ* − 1| = {pct(d)} and median |‖w‖/w* − 1| = {pct(n)}"
    if d <= dt and n <= nt:
        return Verdict.REPRODUCED, f"{what}, within the targets {pct(dt)} and {pct(nt)}"
    f = t.partly_factor
    if d <= f * dt and n <= f * nt:
        return Verdict.PARTLY, f"{what}: above the targets {pct(dt)} / {pct(nt)}, within twice them"
    return Verdict.NOT_REPRODUCED, f"{what}: more than twice the targets {pct(dt)} / {pct(nt)}"


def equilibrium_claim(cid: str, label: str, paper: str, name: str, run: Run) -> Claim:
    """The claim that ``run`` (a fixed learning rate) ends in the equilibrium of Thm 1–3."""
    e = equilibrium_figures(series(run))
    verdict, reason = grade_equilibrium(e)
    a, b = e["window"]
    figure = (
        f"{label}: median |RMS Δ/Δ* − 1| = {pct(e['median_abs_rms_dev'])}, median |‖w‖/w* − 1| = "
        f"{pct(e['median_abs_norm_dev'])}, median mean Δ/Δ* = {num(e['median_mean_ratio'])} "
        f"({e['layers']} layers, steps {a}–{b}); {pct(e['fraction_in_equilibrium'])} of layers flagged "
        "in equilibrium"
    )
    claim = (
        f"With a fixed learning rate, {label} brings every scale-invariant weight to ‖w‖ = w* and "
        "RMS Δ = Δ* = √(2λη/(1+α))"
    )
    return Claim(cid, claim, paper, [name], figure, verdict, reason, e)


def _faster_verdict(
    ts: Mapping[str, Any], tm: Mapping[str, Any], t: Fig3Thresholds
) -> tuple[Verdict, str, float]:
    """(verdict, reason, SGD's time / SGDM's) — a lower bound when SGD never got there."""
    a, b = ts["median_first_step"], tm["median_first_step"]
    ratio = a / b if finite(b) and b > 0 else math.nan
    if not finite(b):
        return Verdict.NOT_REPRODUCED, f"SGDM never reached equilibrium in {tm['last_step'] + 1} steps", ratio
    if math.isinf(a):
        bound = (ts["last_step"] + 1) / b
        why = f"SGD had not reached equilibrium by step {ts['last_step'] + 1}, SGDM did at step {b:.0f}"
        verdict = Verdict.REPRODUCED if bound >= t.faster_ratio else Verdict.PARTLY
        reason = f"{why}: at least {bound:.1f}× faster" + (
            "" if verdict == Verdict.REPRODUCED else " (< 2× so far)"
        )
        return verdict, reason, bound
    if ratio >= t.faster_ratio:
        return Verdict.REPRODUCED, f"SGDM {ratio:.1f}× faster (≥ {t.faster_ratio:g}×)", ratio
    if ratio > 1:
        return Verdict.PARTLY, f"SGDM faster, but only {ratio:.2f}× (< {t.faster_ratio:g}×)", ratio
    return Verdict.NOT_REPRODUCED, f"SGDM not faster: {ratio:.2f}× SGD's speed", ratio


def evaluate(runs: Runs, t: Fig3Thresholds = THRESHOLDS) -> list[Claim]:
    sgd, sgdm = runs["fig3_sgd"][0], runs["fig3_sgdm"][0]
    out = [
        equilibrium_claim("thm1_thm3_sgd", "SGD", "Thm 1, Thm 3, Fig 3(a–c)", "fig3_sgd", sgd),
        equilibrium_claim("thm2_thm3_sgdm", "SGDM", "Thm 2, Thm 3, Fig 3(d–f)", "fig3_sgdm", sgdm),
    ]
    ts, tm = time_to_equilibrium(series(sgd)), time_to_equilibrium(series(sgdm))
    alpha = optim(sgdm)[2]
    predicted = 1 / (1 - alpha) if alpha < 1 else math.nan
    verdict, reason, ratio = _faster_verdict(ts, tm, t)
    figure = (
        f"median first step in equilibrium: SGD {steps_text(ts['median_first_step'])} ({ts['reached']}/"
        f"{ts['layers']} layers), SGDM {steps_text(tm['median_first_step'])} "
        f"({tm['reached']}/{tm['layers']}); ratio {num(ratio)} "
        f"(bounds of Eqs 8/12: 1/(1−α) = {num(predicted)})"
    )
    measured = {"sgd": ts, "sgdm": tm, "ratio": ratio, "predicted_ratio": predicted}
    out.append(
        Claim(
            "sgdm_faster",
            "At equal η and λ, SGDM reaches equilibrium faster than SGD",
            "Eqs 8 and 12, Fig 3(b, e)",
            ["fig3_sgd", "fig3_sgdm"],
            figure,
            verdict,
            reason,
            measured,
        )
    )
    return out


EXPERIMENT = Experiment(
    "fig3",
    "Fixed learning rate, SGD and SGDM (Fig 3)",
    ("fig3_sgd", "fig3_sgdm"),
    evaluate,
    # SGD needs its whole length to equilibrate (relaxation 2 500 steps); SGDM is there in ~500.
    {"fig3_sgd": 1.0, "fig3_sgdm": 0.25},
    THRESHOLDS,
)
