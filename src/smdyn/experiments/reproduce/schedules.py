"""``schedules``: decaying learning rates and warm-up in a small GPT, and what the controls do (beyond the
paper, docs/design.md §6).

AdamW at a peak ηλ = 4e-3 (1/(ηλ) = 250 steps, the full runs last 3 000) with a cosine decay to 0, on a small
character-level GPT whose QK-normalised q/k projections are scale-invariant (the monitored weights). Six
configs, three seeds each: warm-up + cosine without a control (``schedules_cosine``), with
`smdyn.CorrectedWeightDecay` (``schedules_corrected``; with ``track_growth``: ``schedules_corrected_growth``),
with the continuous `smdyn.Rescaler` attached at the
end of the warm-up (``schedules_rescaled``), with `smdyn.RotationController` (``schedules_rotation``), and
the cosine without warm-up (``schedules_nowarmup``).

Measurements (every layer's series is its monitor column, the figure of a run the median over its layers):

- Rise of ‖g‖/‖w‖ (the monitor's ``grad_to_weight_ratio``, ‖g̃‖/‖w‖²): its mean over the last ``tail`` of
  the run over the smallest of its running means (over ``smooth`` of the run) between the end of the
  warm-up and that tail.
- Final held-out loss: the last evaluation (``final_test_loss`` of ``summary.json``); against the
  uncontrolled run of the same seed, as a paired difference with its 95% t-interval over the seeds.
- Early rotation: Δ/Δ* (``angular_update`` / ``theory_angular_update``) as a trailing RMS over ``roll``
  steps; its ``peak`` in the first ``horizon``/(ηλ) steps and the first step after it at which it is down
  to 1 + ``band`` (``settle``: the excess is over). The prediction is the same
  reading of `smdyn.plan` for AdamW, run on the run's own recorded lrs from the measured initial norm of each
  layer (``w0``, its element count, λ, β₁, β₂ of the config), median over the layers as measured.

Claims and verdicts (the thresholds are `SchedulesThresholds`):

3. Under warm-up + cosine decay ‖g‖/‖w‖ rises over the last part of training (Defazio et al. 2025, arXiv
   2506.02285): "reproduced" when every seed's rise is ≥ ``rise``, "partly" when the seed mean is.
   Per control, it removes the rise: "reproduced" when every seed's rise is ≤ ``flat``, "partly" when the
   seed mean is; the held-out loss it gives is reported either way (whether it helps is a finding).
4. Without warm-up the early rotation exceeds Δ* by the factor the planner predicts, for about the predicted
   number of steps (Kosson et al. 2024, arXiv 2410.23922): "reproduced" when the seed-mean peak is within
   ``excess_tol`` of the planned one and the seed-mean settle step within a factor ``1 + duration_tol`` of
   it, "partly" when one of the two is. Warm-up removes the excess: "reproduced" when every warm-up seed's
   peak is ≤ ``warmup_peak`` while every seed without warm-up exceeds it, "partly" when the seed means do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from smdyn.experiments.reproduce.claims import Claim, Experiment, Runs, Verdict, finite, num, pct
from smdyn.experiments.reproduce.measures import rolling_rms, spread
from smdyn.experiments.rundir import Run, nanmedian

__all__ = ["EXPERIMENT", "THRESHOLDS", "SchedulesThresholds", "early_rotation", "evaluate", "grad_rise"]

BASELINE = "schedules_cosine"
CONTROLS = {
    "schedules_corrected": "CorrectedWeightDecay (λ_t = λ·η_t/η_max)",
    "schedules_corrected_growth": "CorrectedWeightDecay(track_growth=True) (λ_t = λ·η_t/η_max·K̄_t/K̄_ref)",
    "schedules_rescaled": "the continuous Rescaler (from the end of the warm-up)",
    "schedules_rotation": "RotationController (fixed norm, Δ_t = Δ*(η_t))",
}
NO_WARMUP = "schedules_nowarmup"


@dataclass(frozen=True)
class SchedulesThresholds:
    """``rise``: the least rise of ‖g‖/‖w‖ that counts as one; ``flat``: the most a control may leave;
    ``tail`` / ``smooth``: the final window and the running mean, as fractions of the run; ``roll``: steps of
    the trailing RMS of Δ/Δ*; ``band``: Δ/Δ* ≤ 1 + band ends the excess (the planner's 10%); ``horizon``:
    the early phase, in units of 1/(ηλ) at the peak lr (the norm is then within e^(−4) of its approach);
    ``excess_tol``: |peak / planned peak − 1|; ``duration_tol``: settle / planned settle within a factor
    1 + duration_tol; ``warmup_peak``: the largest early Δ/Δ* that counts as no excess."""

    rise: float = 1.2
    flat: float = 1.1
    tail: float = 0.10
    smooth: float = 0.05
    roll: int = 10
    band: float = 0.10
    horizon: float = 2.0
    excess_tol: float = 0.25
    duration_tol: float = 0.5
    warmup_peak: float = 1.25


THRESHOLDS = SchedulesThresholds()


# ---------------------------------------------------------------------------------------------- measures


def _running_mean(x: np.ndarray, w: int) -> np.ndarray:
    """Mean of each column over trailing windows of ``w`` rows (NaN rows ignored), [T − w + 1, L]."""
    ok = np.isfinite(x)
    zero = np.zeros((1, x.shape[1]))
    s = np.concatenate([zero, np.cumsum(np.where(ok, x, 0.0), axis=0)])
    n = np.concatenate([zero, np.cumsum(ok, axis=0)])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (s[w:] - s[:-w]) / np.where(n[w:] - n[:-w] > 0, n[w:] - n[:-w], np.nan)


def _rise(steps: np.ndarray, x: np.ndarray, warmup: int, t: SchedulesThresholds) -> tuple[np.ndarray, ...]:
    """Per layer: mean over the last ``tail`` / smallest running mean after the warm-up; and the two."""
    n = len(steps)
    tail_start = min(n - 1, math.floor((1.0 - t.tail) * n))
    w = max(1, round(t.smooth * n))
    means = _running_mean(x[:tail_start], w) if tail_start >= w else np.empty((0, x.shape[1]))
    ends = steps[w - 1 : tail_start]  # the last step of each window
    inside = means[ends >= warmup + w - 1] if len(means) else means
    with np.errstate(invalid="ignore", divide="ignore"):
        final = np.nanmean(x[tail_start:], axis=0)
        low = np.nanmin(inside, axis=0) if len(inside) else np.full(x.shape[1], np.nan)
        return final / low, final, low


def grad_rise(run: Run, t: SchedulesThresholds = THRESHOLDS) -> dict[str, Any]:
    """The rise of ‖g‖/‖w‖ of a run (module docstring): per layer and its median over the layers; and the
    same reading of ‖g̃‖ alone (‖g‖/‖w‖ = ‖g̃‖/‖w‖²: what is left of the rise when the norm is held)."""
    steps, g = _grad_to_weight(run)
    warmup = int(run.config.get("schedule", {}).get("warmup", 0))
    per_layer, final, low = _rise(steps, g, warmup, t)
    unit = _rise(steps, np.sqrt(run.wide("unit_grad_sq")[1]), warmup, t)[0]
    tail_start = min(len(steps) - 1, math.floor((1.0 - t.tail) * len(steps)))
    return {
        "rise": nanmedian(per_layer),
        "per_layer": dict(zip(run.layers, per_layer.tolist(), strict=True)),
        "final_ratio": nanmedian(final),
        "min_ratio": nanmedian(low),
        "unit_grad_rise": nanmedian(unit),
        "window": [int(steps[tail_start]), int(steps[-1])],
    }


def _grad_to_weight(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """‖g‖/‖w‖ per step and layer: the monitor's ``grad_to_weight_ratio``, which is √(‖g̃‖²)/‖w‖² of its
    ``unit_grad_sq`` = ‖g‖²‖w‖² and ``weight_norm`` (read from those where the column is not loaded)."""
    if run.metrics is not None and "grad_to_weight_ratio" in run.metrics:
        return run.wide("grad_to_weight_ratio")
    steps, unit_sq = run.wide("unit_grad_sq")
    _, norm = run.wide("weight_norm")
    with np.errstate(invalid="ignore", divide="ignore"):
        return steps, np.sqrt(unit_sq) / norm**2


def _excess(ratio: np.ndarray, steps: np.ndarray, horizon: float, t: SchedulesThresholds) -> dict[str, float]:
    """Early excess of Δ/Δ* (trailing RMS over ``roll`` steps, median over layers): its ``peak`` before step
    ``horizon`` and ``settle``, the first step after the peak at which it is down to 1 + ``band``."""
    rms = rolling_rms(ratio, t.roll)
    med = np.nanmedian(rms, axis=1) if rms.size else np.empty(0)
    at = steps[t.roll - 1 :] if len(steps) >= t.roll else np.empty(0)
    early = np.flatnonzero(at < horizon)
    if not early.size or not np.isfinite(med[early]).any():
        return {"peak": math.nan, "peak_step": math.nan, "settle": math.nan}
    i = int(np.nanargmax(med[early]))
    down = np.flatnonzero(med[i:] <= 1.0 + t.band)
    return {
        "peak": float(med[i]),
        "peak_step": float(at[i]),
        "settle": float(at[i + down[0]]) if down.size else math.inf,
    }


def _planned_ratio(run: Run, steps: np.ndarray) -> np.ndarray:
    """`smdyn.plan`'s Δ/Δ* for each layer of the run, [T, L]: AdamW on the run's recorded lrs, from each
    layer's measured initial norm, with its element count and the config's λ, β₁, β₂."""
    from smdyn import plan

    _, lr = run.wide("lr")
    _, norm = run.wide("weight_norm")
    optim = run.config.get("optim", {})
    wd = float(optim.get("weight_decay", math.nan))
    b1, b2 = (float(b) for b in optim.get("betas", (0.9, 0.999)))
    sizes = _layer_sizes(run)
    lrs = np.nan_to_num(np.nanmedian(lr, axis=1))
    peak = float(lrs.max())
    total = int(steps[-1]) + 1
    per_step = np.full(total, peak)
    per_step[steps.astype(int)] = lrs
    out = np.full((len(steps), len(run.layers)), np.nan)
    for j, name in enumerate(run.layers):
        p = plan(
            lambda s: float(per_step[s]) / peak,
            lr=peak,
            wd=wd,
            momentum=b1,
            beta2=b2,
            steps=total,
            optimizer="adamw",
            control="none",
            threshold=0.999,  # one stage: a continuous schedule has no lag to search for
            w0=float(norm[0, j]),
            numel=sizes.get(name, 1),
        )
        out[:, j] = p.runs["none"]["delta_ratio"][steps.astype(int)]
    return out


def _layer_sizes(run: Run) -> dict[str, int]:
    """Element count of each monitored weight, from the run's GPT config (q/k projections: width²)."""
    width = int(run.config.get("model", {}).get("options", {}).get("width", 128))
    return {name: width * width for name in run.layers}


def early_rotation(run: Run, t: SchedulesThresholds = THRESHOLDS) -> dict[str, Any]:
    """Measured and planned early excess of Δ/Δ* of one run (module docstring)."""
    steps, delta = run.wide("angular_update")
    _, star = run.wide("theory_angular_update")
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(star > 0, delta / star, np.nan)
    optim = run.config.get("optim", {})
    horizon = t.horizon / (float(optim.get("lr", math.nan)) * float(optim.get("weight_decay", math.nan)))
    measured = _excess(ratio, steps, horizon, t)
    planned = _excess(_planned_ratio(run, steps), steps, horizon, t)
    _, norm = run.wide("weight_norm")
    _, reason = _reason_codes(run)
    # the rows of the planned excess: how many the monitor explains as rotation_excess
    rows = steps < planned["settle"] if finite(planned["settle"]) else np.zeros(len(steps), dtype=bool)
    flagged = float(np.mean(reason[rows] == "rotation_excess")) if rows.any() else math.nan
    return {
        "measured": measured,
        "planned": planned,
        "initial_norm": nanmedian(norm[0]),
        "flagged_rotation_excess": flagged,
    }


def _reason_codes(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """(steps, reason_code [T, L]) as strings ("" where none)."""
    m = run.metrics
    steps, inv = np.unique(m["step"].to_numpy(), return_inverse=True)
    codes = m["param"].cat.codes.to_numpy()
    out = np.full((len(steps), len(run.layers)), "", dtype=object)
    if "reason_code" in m:
        out[inv, codes] = m["reason_code"].fillna("").astype(str).to_numpy()
    return steps, out


# ---------------------------------------------------------------------------------------------- claims


def _pm(s: dict[str, float], spec: str = ".3g") -> str:
    return f"{num(s['mean'], spec)} ± {num(s['sd'], spec.lstrip('+'))}"


def _losses(runs: Sequence[Run]) -> dict[int, float]:
    out = {}
    for r in runs:
        loss = r.summary.get("final_test_loss")
        out[int(r.config.get("run", {}).get("seed", 0))] = float(loss) if finite(loss) else math.nan
    return out


def _by_threshold(values: Sequence[float], ok: Any) -> tuple[bool, bool]:
    """(every value passes, the mean passes)."""
    s = spread(values)
    return bool(values) and all(finite(v) and ok(v) for v in values), finite(s["mean"]) and ok(s["mean"])


def _rise_claim(runs: Sequence[Run], t: SchedulesThresholds) -> tuple[Claim, list[float]]:
    rises = [grad_rise(r, t) for r in runs]
    values = [x["rise"] for x in rises]
    s = spread(values)
    every, mean = _by_threshold(values, lambda v: v >= t.rise)
    verdict = Verdict.REPRODUCED if every else Verdict.PARTLY if mean else Verdict.NOT_REPRODUCED
    losses = spread(list(_losses(runs).values()))
    unit = spread([x["unit_grad_rise"] for x in rises])
    figure = (
        f"warm-up + cosine, AdamW, no control: ‖g‖/‖w‖ over the last {pct(t.tail)} / its smallest running "
        f"mean after the warm-up = {_pm(s)} (seeds: {', '.join(num(v) for v in values)}; the same reading of "
        f"‖g̃‖ = ‖g‖·‖w‖ alone: {_pm(unit)}); held-out loss {_pm(losses, '.4f')} nats/char"
    )
    reason = (
        f"rise ≥ {t.rise:g} in {sum(finite(v) and v >= t.rise for v in values)}/{len(values)} seeds "
        f"(mean {num(s['mean'])})"
    )
    claim = Claim(
        "grad_ratio_rises_under_cosine",
        "Under warm-up + cosine decay (AdamW), ‖g‖/‖w‖ of the scale-invariant weights rises over the last "
        f"part of training (by ≥ {t.rise:g}×)",
        "Defazio et al. 2025, arXiv 2506.02285",
        [BASELINE],
        figure,
        verdict,
        reason,
        {"rise": s, "unit_grad_rise": unit, "per_seed": rises, "final_test_loss": losses},
    )
    return claim, values


def _control_claim(
    name: str, label: str, runs: Sequence[Run], base_runs: Sequence[Run], base_rise: list[float],
    t: SchedulesThresholds,
) -> Claim:  # fmt: skip
    rises = [grad_rise(r, t) for r in runs]
    values = [x["rise"] for x in rises]
    s, b = spread(values), spread(base_rise)
    every, mean = _by_threshold(values, lambda v: v <= t.flat)
    verdict = Verdict.REPRODUCED if every else Verdict.PARTLY if mean else Verdict.NOT_REPRODUCED
    mine, base = _losses(runs), _losses(base_runs)
    paired = [mine[k] - base[k] for k in sorted(mine) if k in base]
    diff, loss, base_loss = spread(paired), spread(list(mine.values())), spread(list(base.values()))
    half = diff["half95"]
    if not (finite(diff["mean"], half)):
        effect = "n/a (one seed)"
    elif abs(diff["mean"]) <= half:
        effect = f"no clear effect on the loss (0 is inside the 95% interval ±{half:.4f})"
    else:
        better = "lower" if diff["mean"] < 0 else "higher"
        effect = f"a {better} held-out loss (0 is outside the 95% interval ±{half:.4f})"
    unit = spread([x["unit_grad_rise"] for x in rises])
    figure = (
        f"{label}: rise of ‖g‖/‖w‖ {_pm(s)} (seeds: {', '.join(num(v) for v in values)}; ‖g̃‖ alone "
        f"{_pm(unit)}) against {_pm(b)} without; held-out loss {_pm(loss, '.4f')} against "
        f"{_pm(base_loss, '.4f')} nats/char, paired difference {_pm(diff, '+.4f')} over {diff['n']} seeds: "
        f"{effect}"
    )
    reason = (
        f"rise ≤ {t.flat:g} in {sum(finite(v) and v <= t.flat for v in values)}/{len(values)} seeds "
        f"(mean {num(s['mean'])})"
    )
    return Claim(
        f"control_removes_rise_{name.removeprefix('schedules_')}",
        f"{label} removes the rise of ‖g‖/‖w‖ under warm-up + cosine decay (rise ≤ {t.flat:g}×)",
        "Defazio et al. 2025, arXiv 2506.02285; docs/design.md §6",
        [name, BASELINE],
        figure,
        verdict,
        reason,
        {
            "rise": s,
            "baseline_rise": b,
            "unit_grad_rise": unit,
            "per_seed": rises,
            "final_test_loss": loss,
            "baseline_final_test_loss": base_loss,
            "paired_loss_difference": diff,
            "loss_effect": effect,
        },
    )


def _excess_claim(runs: Sequence[Run], t: SchedulesThresholds) -> tuple[Claim, list[float]]:
    found = [early_rotation(r, t) for r in runs]
    peak = spread([f["measured"]["peak"] for f in found])
    plan_peak = spread([f["planned"]["peak"] for f in found])
    settle = spread([f["measured"]["settle"] for f in found])
    plan_settle = spread([f["planned"]["settle"] for f in found])
    with np.errstate(invalid="ignore", divide="ignore"):
        peak_ratio = peak["mean"] / plan_peak["mean"]
        settle_ratio = settle["mean"] / plan_settle["mean"]
    peak_ok = finite(peak_ratio) and abs(peak_ratio - 1.0) <= t.excess_tol
    settle_ok = finite(settle_ratio) and 1 / (1 + t.duration_tol) <= settle_ratio <= 1 + t.duration_tol
    verdict = (
        Verdict.REPRODUCED
        if peak_ok and settle_ok
        else Verdict.PARTLY
        if peak_ok or settle_ok
        else Verdict.NOT_REPRODUCED
    )
    flagged = spread([f["flagged_rotation_excess"] for f in found])
    figure = (
        f"no warm-up: peak Δ/Δ* (RMS over {t.roll} steps) {_pm(peak)} against {_pm(plan_peak)} planned from "
        f"‖w₀‖ = {num(found[0]['initial_norm'] if found else math.nan)}; down to 1 + {t.band:g} from "
        f"step {_pm(settle, '.0f')} against {_pm(plan_settle, '.0f')} planned; the monitor flags "
        f"{pct(flagged['mean'])} of those rows rotation_excess"
    )
    reason = (
        f"peak / planned = {num(peak_ratio)} ({'within' if peak_ok else 'outside'} {pct(t.excess_tol)}); "
        f"settle step / planned = {num(settle_ratio)} ({'within' if settle_ok else 'outside'} a factor "
        f"{1 + t.duration_tol:g})"
    )
    claim = Claim(
        "early_rotation_excess_without_warmup",
        "Without warm-up the early rotation exceeds Δ* by the factor smdyn.plan predicts from the measured "
        "initial norm, for about the predicted number of steps",
        "Kosson et al. 2024, arXiv 2410.23922",
        [NO_WARMUP],
        figure,
        verdict,
        reason,
        {
            "peak": peak,
            "planned_peak": plan_peak,
            "settle": settle,
            "planned_settle": plan_settle,
            "peak_ratio": peak_ratio,
            "settle_ratio": settle_ratio,
            "flagged_rotation_excess": flagged,
            "per_seed": found,
        },
    )
    return claim, [f["measured"]["peak"] for f in found]


def _warmup_claim(runs: Sequence[Run], cold_peaks: list[float], t: SchedulesThresholds) -> Claim:
    found = [early_rotation(r, t) for r in runs]
    peaks = [f["measured"]["peak"] for f in found]
    s, cold = spread(peaks), spread(cold_peaks)
    plan_peak = spread([f["planned"]["peak"] for f in found])
    every = _by_threshold(peaks, lambda v: v <= t.warmup_peak)[0] and all(
        finite(v) and v > t.warmup_peak for v in cold_peaks
    )
    mean = finite(s["mean"], cold["mean"]) and s["mean"] <= t.warmup_peak < cold["mean"]
    verdict = Verdict.REPRODUCED if every else Verdict.PARTLY if mean else Verdict.NOT_REPRODUCED
    warmup = int(runs[0].config.get("schedule", {}).get("warmup", 0)) if runs else 0
    figure = (
        f"warm-up of {warmup} steps: peak Δ/Δ* {_pm(s)} ({_pm(plan_peak)} planned) against {_pm(cold)} "
        "without"
    )
    reason = (
        f"peak ≤ {t.warmup_peak:g} with warm-up in {sum(finite(v) and v <= t.warmup_peak for v in peaks)}/"
    )
    reason += f"{len(peaks)} seeds, > {t.warmup_peak:g} without in "
    reason += f"{sum(finite(v) and v > t.warmup_peak for v in cold_peaks)}/{len(cold_peaks)}"
    return Claim(
        "warmup_removes_rotation_excess",
        f"A linear warm-up removes the early excess of the rotation over Δ* (peak Δ/Δ* ≤ {t.warmup_peak:g})",
        "Kosson et al. 2024, arXiv 2410.23922",
        [BASELINE, NO_WARMUP],
        figure,
        verdict,
        reason,
        {"peak": s, "planned_peak": plan_peak, "peak_without_warmup": cold, "per_seed": found},
    )


def evaluate(runs: Runs, t: SchedulesThresholds = THRESHOLDS) -> list[Claim]:
    base = list(runs[BASELINE])
    rise, base_rise = _rise_claim(base, t)
    out = [rise]
    for name, label in CONTROLS.items():
        out.append(_control_claim(name, label, list(runs[name]), base, base_rise, t))
    excess, cold_peaks = _excess_claim(list(runs[NO_WARMUP]), t)
    return [*out, excess, _warmup_claim(base, cold_peaks, t)]


EXPERIMENT = Experiment(
    "schedules",
    "Decaying schedules and warm-up in a small GPT: the rise of ‖g‖/‖w‖, the controls, the early rotation "
    "(beyond the paper)",
    (BASELINE, *CONTROLS, NO_WARMUP),
    evaluate,
    # 750 steps = 3/(ηλ): the cosine decays to 0 within a few relaxation times, a smoke test.
    {name: 0.25 for name in (BASELINE, *CONTROLS, NO_WARMUP)},
    THRESHOLDS,
    seeds=(0, 1, 2),
    quick_seeds=(0,),
)
