"""``smdyn reproduce NAME [--quick]``: run one of the paper's experiments and check its claims by numbers.

Wan et al., "Spherical Motion Dynamics" (NeurIPS 2021), Sec 4, at CPU scale. Each experiment is a list of
shipped configs (``smdyn/experiments/configs``) run one after another (never in parallel: the runs use every
core they are given), each into ``<out>/<config>[-seed<N>]/``, followed by the comparison report
(`smdyn.experiments.report.write_report`) and ``claims.json``: for every claim of the paper the experiment
addresses, the measured figures, a verdict — ``reproduced``, ``partly`` or ``not reproduced`` — and the
reason, computed from the numbers with the thresholds below. `write_reproduction_md` gathers the
``claims.json`` files of finished experiments into ``REPRODUCTION.md``: no number there is typed in.

Experiments (``--quick`` scales the steps with `scale_steps`, by the factor given per config, so that an
experiment takes at most ~3 min on two cores; the theorems' time scales do not shrink with it, so several
claims cannot show at that size — the quick variants are smoke tests):

- ``fig3``: fixed learning rate, SGD and SGDM (Thm 1–3; SGDM reaches equilibrium sooner, Eqs 8/12).
- ``fig4``: a grid of (η, λ) with equal and unequal ηλ, with and without momentum (Sec 4.1).
- ``fig5``: a multi-stage learning rate with and without the k^(−¼) rescaling (Cor 3.1, Sec 4.2).
- ``fig6``: "pseudo overfitting": SGDM, SGDM + rescaling and Adam on a finite training split, 3 seeds
  (Sec 4.3; ``--quick`` runs seed 0 only).
- ``collapse``: a network that memorises its training set, where the theorems' assumption fails: the unit
  gradient collapses, Δ falls far below Δ* and the monitor says so in its ``reason`` column.
- ``all``: every experiment above, each into ``<out>/<experiment>/``, then ``<out>/REPRODUCTION.md``.

A run directory whose ``summary.json`` says the run finished is re-used, one that was interrupted is
resumed from its checkpoint, so ``smdyn reproduce all --out DIR`` continues where it stopped. A run
directory that holds a different configuration is never overwritten.

Measurements (all over scale-invariant layers with a theoretical value, i.e. a finite Δ* > 0):

- Equilibrium (Thm 1–3): over the last monitor window of the last learning-rate stage, per layer
  RMS Δ/Δ* = √(mean (Δ_t/Δ*)²) (Δ* = √(2λη/(1+α)) is the equilibrium value of √E[Δ²], Thm 3), mean Δ/Δ*
  and ‖w‖/w* = √(mean ‖w_t‖² / mean w*_t²) (w* the monitor's exact fixed point of Thm 1 / Thm 2); the
  median over layers of |RMS Δ/Δ* − 1| and |‖w‖/w* − 1|.
- Time to equilibrium: the first step at which the monitor flags a layer ``in_equilibrium``; median over
  layers (a layer never flagged counts as never).
- Lag after a drop by k (Cor 3.1): the first step after the drop at which the RMS of Δ/Δ*_new over a
  centred window of ``_ROLL`` records reaches 1 − ``_REACHED_TOL``, median over layers, against
  ⌈ln(k)(1−α)/(2λη_new)⌉ (`smdyn.theory.steps_to_new_equilibrium`).
- Stage deviation (Sec 4.2): the mean over a stage of |RMS Δ/Δ* − 1| (RMS over trailing windows of
  ``_ROLL`` records inside the stage), median over layers.
- Test-accuracy dip (Sec 4.3): the largest drawdown (a peak minus a later value) of the seed-mean test
  accuracy inside a learning-rate stage, after a running median over 3 evaluations (one outlying
  evaluation is not a dip); Δ rise: RMS Δ over the last 10% of the second stage divided by RMS Δ over its
  first 5%, median over layers, mean over seeds.
- Training figures: train loss and accuracy, mean of the ``train.csv`` rows in the last 10% of the run;
  test accuracy and loss, mean of the evaluations in the last 25% of the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from smdyn import theory
from smdyn.experiments import figures as fig
from smdyn.experiments.config import Config, load_config, scale_steps

__all__ = [
    "EXPERIMENTS",
    "add_reproduce_arguments",
    "reproduce",
    "reproduce_main",
    "reproduction_markdown",
    "write_reproduction_md",
]

_REPRODUCED, _PARTLY, _NOT_REPRODUCED = "reproduced", "partly", "not reproduced"

# ------------------------------------------------------------------------------------- verdict thresholds
# Equilibrium (Thm 1–3): the targets the CPU runs are held to; within twice them is "partly".
_EQ_DELTA_TOL = 0.05  # median over layers of |RMS Δ/Δ* − 1|
_EQ_NORM_TOL = 0.10  # median over layers of |‖w‖/w* − 1|
_PARTLY_FACTOR = 2.0
# SGDM reaches equilibrium faster (Eqs 8/12): SGD's time to equilibrium / SGDM's at equal η, λ. The
# bounds predict 1/(1−α) = 10 at α = 0.9; twice as fast is a clear difference, faster at all is "partly".
_FASTER_RATIO = 2.0
# Equal ηλ ⇒ equal Δ and similar accuracy (conjecture of Sec 4.1, Fig 4): relative spread of the measured
# RMS Δ between runs of equal ηλ and α, and absolute spread of their test accuracy (2 points).
_EQUAL_DELTA_TOL = 0.10
_SIMILAR_ACC_TOL = 0.02
# Lag after a drop (Cor 3.1): reached when the windowed RMS Δ/Δ*_new >= 1 − _REACHED_TOL; the measured lag
# must lie within _LAG_BAND × the corollary's value (simulations give 0.7–1.0×; a real network adds the
# drift of its unit gradient after the drop, hence the wider band).
_REACHED_TOL = 0.10
_LAG_BAND = (0.5, 1.5)
_IMMEDIATE_RECORDS = 20  # records right after a drop in the Δ/Δ*_new reading (k^-½ expected)
# Rescaling removes the lag (Sec 4.2): in every stage after a drop, the rescaled run's stage deviation is at
# most this fraction of the unrescaled run's; lower at all is "partly". The weights must have been rescaled
# by k^-¼: the median ratio ‖w‖ after / before the drop within _RESCALE_CHECK_TOL of it (one step of
# dynamics changes ‖w‖ by ~ηλ/(1−α) = 0.5% at the fig5 settings).
_RESCALE_GAIN = 0.5
_RESCALE_CHECK_TOL = 0.02
# Pseudo overfitting and its cure (Sec 4.3, Fig 6): a drawdown of the seed-mean test accuracy in stage 2
# of at least _DIP_CLEAR is a dip (1.5 points, above the ~0.5-point noise of a 3-seed mean on 2 000 test
# images), below _DIP_SOME is none; Δ rises when its RMS at the end of stage 2 is >= _RISE_CLEAR × its RMS
# at the start, and shows no rise at <= _RISE_NONE.
_DIP_CLEAR = 0.015
_DIP_SOME = 0.005
_ONLY_STAGE2 = 2.0  # the paper: the dip comes *only* in stage 2, so it must exceed stages 3–4's by this
_RISE_CLEAR = 1.5
_RISE_NONE = 1.2
# Collapse: RMS Δ/Δ* on memorised data must fall to at most _COLLAPSE_FAR_BELOW with at least
# _COLLAPSE_FLAGGED of the layers flagged; below Δ* at all (< _COLLAPSE_BELOW) with some flagged is "partly".
# There is no lower limit: the unit gradient keeps shrinking as the network memorises, so Δ/Δ* falls with
# the run's length (digits: 20% after 4 000 steps, 18% after 8 000); _COLLAPSE_BAND is only
# quoted beside the measurement for comparison.
_COLLAPSE_FAR_BELOW = 0.6
_COLLAPSE_BAND = (0.2, 0.6)
_COLLAPSE_BELOW = 0.8
_COLLAPSE_FLAGGED = 0.5
_COLLAPSE_WORD = "collapsing"  # in the monitor's reason for a collapsing unit gradient

_ROLL = 100  # records in the windowed RMS of Δ/Δ* used for lags and stage deviations
_DEFAULT_WINDOW = 200  # the monitor's default window (the paper's Fig 3 averages 200 iterations)
_TRAIN_TAIL = 0.10  # fraction of the run whose train.csv rows give the final train loss and accuracy
_TEST_TAIL = 0.25  # fraction of the run whose evaluations give the final test accuracy and loss

_THRESHOLDS = {
    "equilibrium_delta_tol": _EQ_DELTA_TOL,
    "equilibrium_norm_tol": _EQ_NORM_TOL,
    "partly_factor": _PARTLY_FACTOR,
    "faster_ratio": _FASTER_RATIO,
    "equal_delta_tol": _EQUAL_DELTA_TOL,
    "similar_accuracy_tol": _SIMILAR_ACC_TOL,
    "reached_tol": _REACHED_TOL,
    "lag_band": list(_LAG_BAND),
    "rescale_gain": _RESCALE_GAIN,
    "rescale_check_tol": _RESCALE_CHECK_TOL,
    "dip_clear": _DIP_CLEAR,
    "dip_some": _DIP_SOME,
    "only_stage2": _ONLY_STAGE2,
    "rise_clear": _RISE_CLEAR,
    "rise_none": _RISE_NONE,
    "collapse_far_below": _COLLAPSE_FAR_BELOW,
    "collapse_band": list(_COLLAPSE_BAND),
    "collapse_flagged": _COLLAPSE_FLAGGED,
    "rolling_records": _ROLL,
}

_Runs = Mapping[str, Sequence[fig.Run]]  # config name -> its runs (one per seed)


# ---------------------------------------------------------------------------------------------- numbers


def _nanmean(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Mean over finite values (NaN where there are none), without numpy's empty-slice warning."""
    ok = np.isfinite(x)
    n = ok.sum(axis=axis)
    s = np.where(ok, x, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def _median(x: Iterable[float]) -> float:
    """Median over the non-NaN values (inf counts as a value: a layer that never got there), NaN if none."""
    a = np.asarray(list(x), dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(np.median(a)) if a.size else math.nan


def _finite(*xs: float) -> bool:
    """All arguments are finite numbers (``None`` from a JSON null is not)."""
    return all(isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


def _rolling_rms(x: np.ndarray, w: int) -> np.ndarray:
    """RMS of each column over trailing windows of ``w`` records, [T − w + 1, L]; NaN where over half the
    window is NaN."""
    if len(x) < w:
        return np.empty((0, x.shape[1]))
    ok = np.isfinite(x)
    zero = np.zeros((1, x.shape[1]))
    s = np.concatenate([zero, np.cumsum(np.where(ok, x * x, 0.0), axis=0)])
    n = np.concatenate([zero, np.cumsum(ok, axis=0)])
    tot, cnt = s[w:] - s[:-w], n[w:] - n[:-w]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(np.where(cnt > w / 2, tot / np.maximum(cnt, 1), np.nan))


def _drawdown(values: np.ndarray) -> tuple[float, int, int]:
    """Largest fall from a running peak: (peak − later value, index of the peak, index of the low)."""
    best, peak_i, lo_i, run_i = 0.0, 0, 0, 0
    for i, v in enumerate(values):
        if v > values[run_i]:
            run_i = i
        if values[run_i] - v > best:
            best, peak_i, lo_i = float(values[run_i] - v), run_i, i
    return best, peak_i, lo_i


@dataclass
class _Series:
    """A run's monitor records as [steps, layers] arrays (per-channel records folded per layer)."""

    run: fig.Run
    steps: np.ndarray
    delta: np.ndarray
    star: np.ndarray
    norm: np.ndarray
    norm_star: np.ndarray
    eq: np.ndarray
    lr: np.ndarray
    wd: np.ndarray
    mom: np.ndarray
    ell: np.ndarray  # h̃ with momentum (Thm 2), ‖g̃‖² without (Thm 1)
    layers: list[str]

    @property
    def ratio(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.star > 0, self.delta / self.star, np.nan)

    @property
    def theory(self) -> np.ndarray:
        """Layers with a theoretical Δ* (> 0) somewhere in the run."""
        return np.any(np.isfinite(self.star) & (self.star > 0), axis=0)


def _series(run: fig.Run) -> _Series:
    """The columns every claim reads, as [steps, layers] arrays (`fig.Run.wide`), read once per run."""
    if run.metrics is None or not len(run.metrics):
        raise fig.NoDataError(f"{run.path}: no monitor records (metrics.csv)")
    steps, delta = run.wide("angular_update")
    cols = {c: run.wide(c)[1] for c in ("theory_angular_update", "weight_norm", "theory_weight_norm")}
    cols.update({c: run.wide(c)[1] for c in ("in_equilibrium", "lr", "wd", "momentum")})
    mom = cols["momentum"]
    h, g = run.wide("h_tilde")[1], run.wide("unit_grad_sq")[1]
    return _Series(
        run=run,
        steps=steps,
        delta=delta,
        star=cols["theory_angular_update"],
        norm=cols["weight_norm"],
        norm_star=cols["theory_weight_norm"],
        eq=np.nan_to_num(cols["in_equilibrium"]) > 0.5,
        lr=cols["lr"],
        wd=cols["wd"],
        mom=mom,
        ell=np.where(np.nan_to_num(mom) > 0, h, g),
        layers=list(run.layers),
    )


def _monitor_window(run: fig.Run) -> int:
    mon = run.config.get("monitor", {})
    w = mon.get("window") if isinstance(mon, dict) else None
    return int(w) if isinstance(w, int) and not isinstance(w, bool) and w > 1 else _DEFAULT_WINDOW


def _equilibrium(s: _Series) -> dict[str, Any]:
    """Per-layer equilibrium figures over the last monitor window of the last stage, and their medians."""
    w = _monitor_window(s.run)
    start = max(int(s.steps[-min(w, len(s.steps))]), int(s.run.stage_starts[-1]))
    sel = s.steps >= start
    keep = s.theory
    r = s.ratio[sel][:, keep]
    rms = np.sqrt(_nanmean(r**2))
    mean = _nanmean(r)
    ok = np.isfinite(s.norm_star[sel]) & (s.norm_star[sel] > 0) & np.isfinite(s.norm[sel])
    w2 = np.where(ok, s.norm[sel] ** 2, np.nan)[:, keep]
    ws2 = np.where(ok, s.norm_star[sel] ** 2, np.nan)[:, keep]
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.sqrt(_nanmean(w2) / _nanmean(ws2))
    delta_rms = np.sqrt(_nanmean(s.delta[sel] ** 2))  # every layer: Adam has no Δ* but has a Δ
    names = [n for n, k in zip(s.layers, keep, strict=True) if k]
    return {
        "window": [start, int(s.steps[-1])],
        "layers": len(names),
        "per_layer": {
            n: {"rms_ratio": float(a), "mean_ratio": float(b), "norm_ratio": float(c)}
            for n, a, b, c in zip(names, rms, mean, norm, strict=True)
        },
        "median_rms_ratio": _median(rms),
        "median_mean_ratio": _median(mean),
        "median_norm_ratio": _median(norm),
        "median_abs_rms_dev": _median(np.abs(rms - 1)),
        "median_abs_mean_dev": _median(np.abs(mean - 1)),
        "median_abs_norm_dev": _median(np.abs(norm - 1)),
        "fraction_in_equilibrium": float(s.eq[-1][keep].mean()) if keep.any() else math.nan,
        "rms_delta": _median(delta_rms),
        "theory_delta": _median(_nanmean(s.star[sel][:, keep])) if keep.any() else math.nan,
    }


def _time_to_equilibrium(s: _Series) -> dict[str, Any]:
    """First step the monitor flags each layer in equilibrium; the median over layers (inf: never)."""
    keep = s.theory
    eq = s.eq[:, keep]
    first = [float(s.steps[np.argmax(col)]) if col.any() else math.inf for col in eq.T]
    return {
        "median_first_step": _median(first),
        "reached": int(sum(math.isfinite(f) for f in first)),
        "layers": int(keep.sum()),
        "last_step": int(s.steps[-1]),
    }


def _training(run: fig.Run) -> dict[str, float]:
    """Final train loss / accuracy (rows of the last 10% of the run) and test accuracy / loss (evaluations
    of the last 25%)."""
    out = {
        "train_loss": math.nan,
        "train_accuracy": math.nan,
        "test_accuracy": math.nan,
        "test_loss": math.nan,
    }
    t = run.train
    if t is None or not len(t):
        return out
    step = t["step"].to_numpy(dtype=np.float64)
    last = float(step.max())
    tail = step >= (1 - _TRAIN_TAIL) * last
    for key, col in (("train_loss", "loss"), ("train_accuracy", "accuracy")):
        if col in t:
            out[key] = float(_nanmean(t[col].to_numpy(dtype=np.float64)[tail]))
    tail = step >= (1 - _TEST_TAIL) * last
    for key in ("test_accuracy", "test_loss"):
        if key in t:
            out[key] = float(_nanmean(t[key].to_numpy(dtype=np.float64)[tail]))
    return out


def _optim(run: fig.Run) -> tuple[float, float, float, str]:
    """(η, λ, α, optimizer name) from the run's config.toml."""
    o = run.config.get("optim", {})
    return (
        float(o.get("lr", math.nan)),
        float(o.get("weight_decay", math.nan)),
        float(o.get("momentum", 0.0)),
        str(o.get("name", "sgd")),
    )


@dataclass(frozen=True)
class _Drop:
    index: int  # index into _Series.steps of the first record at the new rate
    end: int  # index one past the stage's last record
    step: int
    stage_steps: int
    k: float
    lr_after: float
    wd: float
    mom: float


def _drops(s: _Series) -> list[_Drop]:
    """Learning-rate drops (by more than 5%) at the run's stage starts, with the stage that follows."""
    starts = [int(x) for x in s.run.stage_starts]
    bounds = [int(np.searchsorted(s.steps, b)) for b in starts] + [len(s.steps)]
    out = []
    for j in range(1, len(starts)):
        i, end = bounds[j], bounds[j + 1]
        if i <= 0 or i >= len(s.steps):
            continue
        before, after = _median(s.lr[i - 1]), _median(s.lr[i])
        if not (_finite(before, after) and after > 0 and before / after > 1.05):
            continue
        stage_steps = (starts[j + 1] if j + 1 < len(starts) else int(s.steps[-1]) + 1) - starts[j]
        out.append(
            _Drop(
                index=i,
                end=end,
                step=int(s.steps[i]),
                stage_steps=stage_steps,
                k=before / after,
                lr_after=after,
                wd=_median(s.wd[i]),
                mom=_median(s.mom[i]),
            )
        )
    return out


def _roll_window(records: int) -> int:
    return max(2, min(_ROLL, records // 5))


def _lag(s: _Series, d: _Drop) -> dict[str, Any]:
    """Steps from a drop until the windowed RMS Δ/Δ*_new reaches 1 − _REACHED_TOL (Cor 3.1), and Δ/Δ*_new
    right after the drop (k^-½ expected)."""
    keep = s.theory
    r = s.ratio[d.index : d.end][:, keep]
    steps = s.steps[d.index : d.end]
    w = _roll_window(len(r))
    roll = _rolling_rms(r, w)
    lags = []
    for col in roll.T:
        hit = np.flatnonzero(col >= 1 - _REACHED_TOL)
        lags.append(float(steps[hit[0] + (w - 1) // 2] - d.step) if hit.size else math.inf)
    n0 = max(1, min(_IMMEDIATE_RECORDS, len(r) // 10))
    immediate = np.sqrt(_nanmean(r[:n0] ** 2))
    predicted = theory.steps_to_new_equilibrium(d.k, d.lr_after, d.wd, d.mom)
    return {
        "step": d.step,
        "k": d.k,
        "stage_steps": d.stage_steps,
        "predicted_lag": float(predicted),
        "measured_lag": _median(lags),
        "layers_reached": int(sum(math.isfinite(x) for x in lags)),
        "layers": len(lags),
        "immediate_ratio": _median(immediate),
        "expected_immediate_ratio": d.k**-0.5,
    }


def _stage_deviation(s: _Series) -> list[float]:
    """Per stage: mean over the stage of |windowed RMS Δ/Δ* − 1|, median over layers."""
    keep = s.theory
    starts = [int(x) for x in s.run.stage_starts]
    bounds = [int(np.searchsorted(s.steps, b)) for b in starts] + [len(s.steps)]
    out = []
    for j in range(len(starts)):
        r = s.ratio[bounds[j] : bounds[j + 1]][:, keep]
        roll = _rolling_rms(r, _roll_window(len(r)))
        out.append(_median(_nanmean(np.abs(roll - 1))) if len(roll) else math.nan)
    return out


def _norm_steps(s: _Series, drops: Sequence[_Drop]) -> list[dict[str, float]]:
    """‖w‖ at the first record of each new stage over ‖w‖ one record before, median over layers, against
    k^-¼ (Sec 4.2's rescale factor)."""
    keep = s.theory
    out = []
    for d in drops:
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = s.norm[d.index][keep] / s.norm[d.index - 1][keep]
        out.append({"step": d.step, "k": d.k, "norm_ratio": _median(ratio), "expected": d.k**-0.25})
    return out


def _stage_rise(s: _Series, d: _Drop) -> float:
    """RMS Δ over the last 10% of the stage after ``d`` over its first 5%, median over layers."""
    seg = s.delta[d.index : d.end]
    n = len(seg)
    a, b = max(2, n // 20), max(2, n // 10)
    if n < a + b:
        return math.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        rise = np.sqrt(_nanmean(seg[-b:] ** 2) / _nanmean(seg[:a] ** 2))
    return _median(rise)


def _stage_bounds(run: fig.Run) -> list[tuple[int, int]]:
    """(first step, last step + 1) of each learning-rate stage, in optimizer steps."""
    starts = [int(x) for x in run.stage_starts]
    last = int(run.summary.get("steps") or 0)
    if run.metrics is not None and len(run.metrics):
        last = max(last, int(run.metrics["step"].max()) + 1)
    return list(zip(starts, [*starts[1:], last], strict=True))


def _mean_test_curve(runs: Sequence[fig.Run]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, seed-mean test accuracy) over the evaluation steps every run has."""
    curves = []
    for run in runs:
        t = run.train
        if t is None or "test_accuracy" not in t:
            continue
        acc = t["test_accuracy"].to_numpy(dtype=np.float64)
        ok = np.isfinite(acc)
        curves.append(dict(zip(t["step"].to_numpy()[ok].astype(int).tolist(), acc[ok].tolist(), strict=True)))
    if not curves:
        return np.empty(0, dtype=int), np.empty(0)
    common = sorted(set.intersection(*(set(c) for c in curves)))
    return np.array(common, dtype=int), np.array([np.mean([c[k] for c in curves]) for k in common])


def _median3(x: np.ndarray) -> np.ndarray:
    """Running median over 3 consecutive values (the two ends kept as they are)."""
    if len(x) < 3:
        return x
    y = x.copy()
    y[1:-1] = np.median(np.stack([x[:-2], x[1:-1], x[2:]]), axis=0)
    return y


def _stage_dips(runs: Sequence[fig.Run]) -> list[dict[str, float]]:
    """Per learning-rate stage: the largest drawdown of the seed-mean test accuracy inside it.

    An evaluation at step s sees the weights after s steps, so the stage [a, b) owns the evaluations at
    steps a+1 .. b (the one at a is the last of the previous stage).
    """
    steps, acc = _mean_test_curve(runs)
    out = []
    for a, b in _stage_bounds(runs[0]):
        sel = (steps > a) & (steps <= b)
        if sel.sum() < 2:
            out.append({"start": a, "dip": math.nan, "peak_step": math.nan, "low_step": math.nan})
            continue
        dip, i, j = _drawdown(_median3(acc[sel]))
        st = steps[sel]
        out.append({"start": a, "dip": dip, "peak_step": float(st[i]), "low_step": float(st[j])})
    return out


# ---------------------------------------------------------------------------------------------- claims


def _claim(
    cid: str,
    claim: str,
    paper: str,
    runs: Sequence[str],
    figure: str,
    verdict: str,
    reason: str,
    **measured: Any,
) -> dict[str, Any]:
    return {
        "id": cid,
        "claim": claim,
        "paper": paper,
        "runs": list(runs),
        "figure": figure,
        "verdict": verdict,
        "reason": reason,
        "measured": measured,
    }


def _pct(x: float) -> str:
    if not _finite(x):
        return "n/a"
    return f"{100 * x:.2f}%" if abs(x) < 0.01 else f"{100 * x:.1f}%"


def _num(x: float, spec: str = ".3g") -> str:
    if isinstance(x, float) and math.isinf(x):
        return "never"
    return format(x, spec) if _finite(x) else "n/a"


def _steps(x: float) -> str:
    return "never" if isinstance(x, float) and math.isinf(x) else (f"{x:.0f}" if _finite(x) else "n/a")


def _grade_equilibrium(e: Mapping[str, Any]) -> tuple[str, str]:
    d, n = e["median_abs_rms_dev"], e["median_abs_norm_dev"]
    if not _finite(d, n):
        return _NOT_REPRODUCED, "no layer with a theoretical Δ* and w* in the final window"
    what = f"median |RMS Δ/Δ* − 1| = {_pct(d)} and median |‖w‖/w* − 1| = {_pct(n)}"
    if d <= _EQ_DELTA_TOL and n <= _EQ_NORM_TOL:
        return _REPRODUCED, f"{what}, within the targets {_pct(_EQ_DELTA_TOL)} and {_pct(_EQ_NORM_TOL)}"
    f = _PARTLY_FACTOR
    if d <= f * _EQ_DELTA_TOL and n <= f * _EQ_NORM_TOL:
        return _PARTLY, (
            f"{what}: above the targets {_pct(_EQ_DELTA_TOL)} / {_pct(_EQ_NORM_TOL)}, within twice them"
        )
    return (
        _NOT_REPRODUCED,
        f"{what}: more than twice the targets {_pct(_EQ_DELTA_TOL)} / {_pct(_EQ_NORM_TOL)}",
    )


def _equilibrium_claim(cid: str, label: str, paper: str, name: str, run: fig.Run) -> dict[str, Any]:
    e = _equilibrium(_series(run))
    verdict, reason = _grade_equilibrium(e)
    a, b = e["window"]
    figure = (
        f"{label}: median |RMS Δ/Δ* − 1| = {_pct(e['median_abs_rms_dev'])}, median |‖w‖/w* − 1| = "
        f"{_pct(e['median_abs_norm_dev'])}, median mean Δ/Δ* = {_num(e['median_mean_ratio'])} "
        f"({e['layers']} layers, steps {a}–{b}); {_pct(e['fraction_in_equilibrium'])} of layers flagged "
        "in equilibrium"
    )
    claim = (
        f"With a fixed learning rate, {label} brings every scale-invariant weight to ‖w‖ = w* and "
        "RMS Δ = Δ* = √(2λη/(1+α))"
    )
    return _claim(cid, claim, paper, [name], figure, verdict, reason, **e)


def _claims_fig3(runs: _Runs) -> list[dict[str, Any]]:
    sgd, sgdm = runs["fig3_sgd"][0], runs["fig3_sgdm"][0]
    out = [
        _equilibrium_claim("thm1_thm3_sgd", "SGD", "Thm 1, Thm 3, Fig 3(a–c)", "fig3_sgd", sgd),
        _equilibrium_claim("thm2_thm3_sgdm", "SGDM", "Thm 2, Thm 3, Fig 3(d–f)", "fig3_sgdm", sgdm),
    ]
    ts, tm = _time_to_equilibrium(_series(sgd)), _time_to_equilibrium(_series(sgdm))
    alpha = _optim(sgdm)[2]
    predicted = 1 / (1 - alpha) if alpha < 1 else math.nan
    a, b = ts["median_first_step"], tm["median_first_step"]
    ratio = a / b if _finite(b) and b > 0 else math.nan
    if not _finite(b):
        verdict, reason = _NOT_REPRODUCED, f"SGDM never reached equilibrium in {tm['last_step'] + 1} steps"
    elif math.isinf(a):
        bound = (ts["last_step"] + 1) / b
        ratio = bound
        why = f"SGD had not reached equilibrium by step {ts['last_step'] + 1}, SGDM did at step {b:.0f}"
        verdict = _REPRODUCED if bound >= _FASTER_RATIO else _PARTLY
        reason = f"{why}: at least {bound:.1f}× faster" + ("" if verdict == _REPRODUCED else " (< 2× so far)")
    elif ratio >= _FASTER_RATIO:
        verdict, reason = _REPRODUCED, f"SGDM {ratio:.1f}× faster (≥ {_FASTER_RATIO:g}×)"
    elif ratio > 1:
        verdict, reason = _PARTLY, f"SGDM faster, but only {ratio:.2f}× (< {_FASTER_RATIO:g}×)"
    else:
        verdict, reason = _NOT_REPRODUCED, f"SGDM not faster: {ratio:.2f}× SGD's speed"
    figure = (
        f"median first step in equilibrium: SGD {_steps(a)} ({ts['reached']}/{ts['layers']} layers), "
        f"SGDM {_steps(b)} ({tm['reached']}/{tm['layers']}); ratio {_num(ratio)} (bounds of Eqs 8/12: "
        f"1/(1−α) = {_num(predicted)})"
    )
    out.append(
        _claim(
            "sgdm_faster",
            "At equal η and λ, SGDM reaches equilibrium faster than SGD",
            "Eqs 8 and 12, Fig 3(b, e)",
            ["fig3_sgd", "fig3_sgdm"],
            figure,
            verdict,
            reason,
            sgd=ts,
            sgdm=tm,
            ratio=ratio,
            predicted_ratio=predicted,
        )
    )
    return out


def _grid(runs: _Runs) -> list[dict[str, Any]]:
    """Per run of a grid: name, η, λ, α, ηλ, measured RMS Δ, Δ* and training figures."""
    rows = []
    for name, members in runs.items():
        run = members[0]
        lr, wd, mom, _ = _optim(run)
        e = _equilibrium(_series(run))
        rows.append(
            {
                "run": name,
                "lr": lr,
                "wd": wd,
                "momentum": mom,
                "lr_wd": float(f"{lr * wd:.6g}"),
                "rms_delta": e["rms_delta"],
                "theory_delta": e["theory_delta"],
                **_training(run),
            }
        )
    return rows


def _claims_fig4(runs: _Runs) -> list[dict[str, Any]]:
    rows = _grid(runs)
    out = []
    # Equal ηλ ⇒ equal Δ and similar accuracy, per momentum.
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
    d_ok = [_finite(s["delta_spread"]) and s["delta_spread"] <= _EQUAL_DELTA_TOL for s in spreads]
    a_ok = [_finite(s["accuracy_spread"]) and s["accuracy_spread"] <= _SIMILAR_ACC_TOL for s in spreads]
    figure = "; ".join(
        f"α = {s['momentum']:g}, ηλ = {s['lr_wd']:g}: RMS Δ spread {_pct(s['delta_spread'])}, test accuracy "
        f"spread {_num(100 * s['accuracy_spread'], '.2f')} points"
        for s in spreads
    )
    if not spreads:
        verdict, reason = _NOT_REPRODUCED, "no two runs share ηλ and α"
    else:
        lim = f"(limits {_pct(_EQUAL_DELTA_TOL)} and {100 * _SIMILAR_ACC_TOL:g} points)"
        if all(d_ok) and all(a_ok):
            verdict, reason = _REPRODUCED, f"equal Δ and similar accuracy in all {len(spreads)} pairs {lim}"
        elif all(d_ok) or all(a_ok):
            which = "Δ equal" if all(d_ok) else "accuracy similar"
            verdict, reason = (
                _PARTLY,
                (
                    f"{which} in every pair, the other in {sum(a_ok) if all(d_ok) else sum(d_ok)}"
                    f"/{len(spreads)} {lim}"
                ),
            )
        else:
            verdict, reason = (
                _NOT_REPRODUCED,
                (f"Δ equal in {sum(d_ok)}/{len(spreads)} pairs, accuracy similar in {sum(a_ok)} {lim}"),
            )
    out.append(
        _claim(
            "equal_lr_wd",
            "Runs with equal ηλ (and α) have equal angular updates and similar accuracy",
            "Thm 3, Sec 4.1 conjecture, Fig 4",
            [r["run"] for g in pairs for r in g],
            figure,
            verdict,
            reason,
            pairs=spreads,
        )
    )
    # Larger Δ ⇒ higher loss and lower accuracy, per momentum.
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
        f"α = {c['momentum']:g}: Δ {_num(c['rms_delta'][0])} vs "
        f"{', '.join(_num(x) for x in c['rms_delta'][1])} rad, train loss "
        f"{_num(c['train_loss'][0], '.4f')} vs "
        f"{', '.join(_num(x, '.4f') for x in c['train_loss'][1])}, test accuracy "
        f"{_num(c['test_accuracy'][0], '.4f')} vs {', '.join(_num(x, '.4f') for x in c['test_accuracy'][1])}"
        for c in comparisons
    )
    both = [c["loss_higher"] and c["accuracy_lower"] for c in comparisons]
    some = [c["loss_higher"] or c["accuracy_lower"] for c in comparisons]
    if not comparisons:
        verdict, reason = _NOT_REPRODUCED, "no run with a larger ηλ to compare"
    elif not all(c["delta_larger"] for c in comparisons):
        verdict, reason = _NOT_REPRODUCED, "the run with the larger ηλ did not have the larger measured Δ"
    elif all(both):
        verdict, reason = (
            _REPRODUCED,
            "at every α the larger-Δ run has the higher train loss and lower test accuracy",
        )
    elif any(some):
        parts = [
            f"α = {c['momentum']:g}: loss {'higher' if c['loss_higher'] else 'not higher'}, accuracy "
            f"{'lower' if c['accuracy_lower'] else 'not lower'}"
            for c in comparisons
        ]
        verdict, reason = _PARTLY, "; ".join(parts)
    else:
        verdict, reason = _NOT_REPRODUCED, "the larger-Δ runs have neither a higher loss nor a lower accuracy"
    out.append(
        _claim(
            "larger_delta_worse",
            "A larger angular update gives a higher training loss and a lower test accuracy",
            "Sec 4.1, Fig 4",
            [r["run"] for r in rows],
            figure,
            verdict,
            reason,
            comparisons=comparisons,
        )
    )
    # Momentum lowers Δ (by √(1+α), Thm 3) but raises the loss, at equal ηλ.
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
    lower = [_finite(e["delta_ratio"]) and e["delta_ratio"] < 1 for e in effects]
    higher = [e["train_loss_sgdm"] > e["train_loss_sgd"] for e in effects]
    figure = "; ".join(
        f"ηλ = {e['lr_wd']:g}: Δ_SGDM/Δ_SGD = {_num(e['delta_ratio'])} (Thm 3: "
        f"{_num(e['predicted_delta_ratio'])}), train loss {_num(e['train_loss_sgd'], '.4f')} → "
        f"{_num(e['train_loss_sgdm'], '.4f')}, test accuracy {_num(e['test_accuracy_sgd'], '.4f')} → "
        f"{_num(e['test_accuracy_sgdm'], '.4f')}"
        for e in effects
    )
    if not effects:
        verdict, reason = _NOT_REPRODUCED, "no SGD and SGDM runs at the same ηλ"
    elif all(lower) and all(higher):
        verdict, reason = _REPRODUCED, f"Δ lower and train loss higher with momentum at all {len(effects)} ηλ"
    elif all(lower):
        verdict, reason = _PARTLY, f"Δ lower at every ηλ, train loss higher at {sum(higher)}/{len(effects)}"
    else:
        verdict, reason = _NOT_REPRODUCED, f"Δ lower with momentum at only {sum(lower)}/{len(effects)} ηλ"
    out.append(
        _claim(
            "momentum_delta_loss",
            "Momentum lowers the angular update but raises the loss",
            "Thm 3, Sec 4.1, Fig 4",
            [r["run"] for r in rows],
            figure,
            verdict,
            reason,
            effects=effects,
        )
    )
    return out


def _lag_verdict(lags: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    lo, hi = _LAG_BAND
    notes, consistent, measured = [], [], []
    for g in lags:
        pred, got, stage = g["predicted_lag"], g["measured_lag"], g["stage_steps"]
        ratio = got / pred if _finite(got) and pred > 0 else math.nan
        if pred <= stage:
            ok = _finite(ratio) and lo <= ratio <= hi
            measured.append(ok)
            what = f"{ratio:.2f}× the prediction" if _finite(ratio) else f"not reached in {stage} steps"
        else:
            ok = not _finite(got) or ratio >= lo
            if _finite(got):
                measured.append(ok)
                what = f"{ratio:.2f}× the prediction"
            else:
                what = f"not reached in the {stage}-step stage, as predicted ({pred:.0f} > {stage})"
        consistent.append(ok)
        notes.append(f"drop at step {g['step']}: {what}")
    text = "; ".join(notes) + f" (consistent: within {lo:g}–{hi:g}×)"
    if not lags:
        return _NOT_REPRODUCED, "the run has no learning-rate drop"
    if all(consistent) and measured:
        return _REPRODUCED, text
    if all(consistent):
        return _PARTLY, text + "; every lag outlasted its stage, so none was measured"
    if any(consistent):
        return _PARTLY, text
    return _NOT_REPRODUCED, text


def _lag_text(g: Mapping[str, Any]) -> str:
    got = g["measured_lag"]
    if _finite(got):
        return f"{got:.0f} steps"
    return f"> {g['stage_steps']} steps (not reached in the stage)"


def _claims_fig5(runs: _Runs) -> list[dict[str, Any]]:
    base, resc = _series(runs["fig5_multistage"][0]), _series(runs["fig5_rescaled"][0])
    drops = _drops(base)
    lags = [_lag(base, d) for d in drops]
    verdict, reason = _lag_verdict(lags)
    figure = "; ".join(
        f"÷{g['k']:.3g} at step {g['step']}: lag {_lag_text(g)} vs Cor 3.1 {g['predicted_lag']:.0f} "
        f"({_REACHED_TOL:.0%} tolerance), Δ/Δ*_new right after "
        f"{_num(g['immediate_ratio'])} (k^-½ = {_num(g['expected_immediate_ratio'])})"
        for g in lags
    )
    out = [
        _claim(
            "lag_after_drop",
            "After the learning rate is divided by k, Δ lags below the new Δ* for ~ln(k)(1−α)/(2λη) steps",
            "Cor 3.1, Fig 5(a, c)",
            ["fig5_multistage"],
            figure,
            verdict,
            reason,
            drops=lags,
        )
    ]
    dev_base, dev_resc = _stage_deviation(base), _stage_deviation(resc)
    checks = _norm_steps(resc, _drops(resc))
    controls = _norm_steps(base, drops)
    later = list(range(1, min(len(dev_base), len(dev_resc))))
    gains = [dev_resc[j] / dev_base[j] if dev_base[j] > 0 else math.nan for j in later]
    factor_ok = bool(checks) and all(
        _finite(c["norm_ratio"]) and abs(c["norm_ratio"] / c["expected"] - 1) <= _RESCALE_CHECK_TOL
        for c in checks
    )
    stages = ", ".join(
        f"stage {j + 1}: {_pct(a)} → {_pct(b)}"
        for j, (a, b) in enumerate(zip(dev_base, dev_resc, strict=False))
    )
    figure = (
        f"mean |RMS Δ/Δ* − 1| without → with rescaling: {stages}; ‖w‖ after/before each drop: "
        + ", ".join(f"{_num(c['norm_ratio'], '.4f')} (k^-¼ = {_num(c['expected'], '.4f')})" for c in checks)
    )
    if not later:
        verdict, reason = _NOT_REPRODUCED, "no learning-rate stage after a drop in both runs"
    elif not factor_ok:
        verdict, reason = _NOT_REPRODUCED, "the rescaled run's weights did not change by k^-¼ at every drop"
    elif all(_finite(g) and g <= _RESCALE_GAIN for g in gains):
        verdict, reason = (
            _REPRODUCED,
            (
                f"after every drop the rescaled run's deviation is ≤ {_RESCALE_GAIN:g}× the unrescaled one "
                f"({', '.join(f'{g:.2f}×' for g in gains)})"
            ),
        )
    elif any(_finite(g) and g < 1 for g in gains):
        verdict, reason = (
            _PARTLY,
            (
                f"rescaling lowers the deviation in {sum(_finite(g) and g < 1 for g in gains)}/{len(gains)} "
                f"stages after a drop ({', '.join(f'{g:.2f}×' for g in gains)}), not by "
                f"{_RESCALE_GAIN:g}× in all"
            ),
        )
    else:
        verdict, reason = (
            _NOT_REPRODUCED,
            f"rescaling does not lower the deviation ({', '.join(f'{g:.2f}×' for g in gains)})",
        )
    out.append(
        _claim(
            "rescaling_removes_lag",
            "Rescaling scale-invariant weights by k^-¼ at each drop keeps Δ at the new Δ* (no lag)",
            "Sec 4.2, Fig 5(b, c)",
            ["fig5_multistage", "fig5_rescaled"],
            figure,
            verdict,
            reason,
            stage_deviation_without=dev_base,
            stage_deviation_with=dev_resc,
            ratios=gains,
            rescale_check=checks,
            unrescaled_norm_steps=controls,
        )
    )
    return out


def _fig6_stats(members: Sequence[fig.Run]) -> dict[str, Any]:
    """Seed-mean stage dips, the Δ rise in stage 2 and the final test accuracy of one fig6 setting."""
    dips = _stage_dips(members)
    rises = []
    for run in members:
        s = _series(run)
        d = _drops(s)
        rises.append(_stage_rise(s, d[0]) if d else math.nan)
    finals = [_training(r)["test_accuracy"] for r in members]
    return {
        "seeds": len(members),
        "stage_dips": dips,
        "dip_stage2": dips[1]["dip"] if len(dips) > 1 else math.nan,
        "rise_stage2": float(_nanmean(np.asarray(rises))) if rises else math.nan,
        "rise_per_seed": rises,
        "final_test_accuracy": float(_nanmean(np.asarray(finals))),
    }


def _claims_fig6(runs: _Runs) -> list[dict[str, Any]]:
    sgdm, resc, adam = (_fig6_stats(runs[n]) for n in ("fig6_sgdm", "fig6_rescaled", "fig6_adam"))
    seeds = sgdm["seeds"]
    dip, rise = sgdm["dip_stage2"], sgdm["rise_stage2"]
    others = ", ".join(_num(100 * d["dip"], ".2f") for d in sgdm["stage_dips"][2:])
    figure = (
        f"SGDM, mean of {seeds} seed(s): stage-2 test-accuracy dip {_num(100 * dip, '.2f')} points "
        f"(stages 3–4: {others or 'n/a'}), RMS Δ rises {_num(rise)}× over stage 2"
    )
    later = max((d["dip"] for d in sgdm["stage_dips"][2:] if _finite(d["dip"])), default=0.0)
    if _finite(dip, rise) and dip >= _DIP_CLEAR and rise >= _RISE_CLEAR and dip > _ONLY_STAGE2 * later:
        verdict, reason = (
            _REPRODUCED,
            (
                f"dip {100 * dip:.2f} ≥ {100 * _DIP_CLEAR:g} points, over {_ONLY_STAGE2:g}× the later "
                f"stages' ({100 * later:.2f}), while Δ rises {rise:.2f}× (≥ {_RISE_CLEAR:g}×)"
            ),
        )
    elif (_finite(dip) and dip >= _DIP_SOME) or (_finite(rise) and rise >= _RISE_CLEAR):
        verdict, reason = (
            _PARTLY,
            (
                f"dip {_num(100 * dip, '.2f')} points (clear at ≥ {100 * _DIP_CLEAR:g} and over "
                f"{_ONLY_STAGE2:g}× the later stages' {100 * later:.2f}), Δ rise {_num(rise)}× "
                f"(clear at ≥ {_RISE_CLEAR:g}×)"
            ),
        )
    else:
        verdict, reason = (
            _NOT_REPRODUCED,
            (
                f"dip {_num(100 * dip, '.2f')} points < {100 * _DIP_SOME:g} and "
                f"Δ rise {_num(rise)}× < {_RISE_CLEAR:g}×"
            ),
        )
    out = [
        _claim(
            "pseudo_overfitting",
            "With SGDM, test accuracy dips during the 2nd learning-rate stage while Δ rises back to Δ*",
            "Sec 4.3, Fig 6(a, b)",
            [f"fig6_sgdm ({seeds} seeds)"],
            figure,
            verdict,
            reason,
            sgdm=sgdm,
        )
    ]
    dip_r, rise_r = resc["dip_stage2"], resc["rise_stage2"]
    figure = (
        f"stage-2 dip: SGDM {_num(100 * dip, '.2f')} → rescaled {_num(100 * dip_r, '.2f')} points; Δ rise "
        f"{_num(rise)}× → {_num(rise_r)}×; final test accuracy {_num(sgdm['final_test_accuracy'], '.4f')} → "
        f"{_num(resc['final_test_accuracy'], '.4f')}"
    )
    smaller = _finite(dip, dip_r) and dip_r < dip
    flat = _finite(rise_r) and rise_r < _RISE_CLEAR
    if not (_finite(dip) and dip >= _DIP_CLEAR):
        verdict = _PARTLY if smaller or flat else _NOT_REPRODUCED
        reason = (
            f"no clear dip to cure in the SGDM runs ({_num(100 * dip, '.2f')} < "
            f"{100 * _DIP_CLEAR:g} points); "
            f"rescaled Δ rise {_num(rise_r)}×"
        )
    elif dip_r <= _RESCALE_GAIN * dip and flat:
        verdict, reason = (
            _REPRODUCED,
            (
                f"dip {100 * dip_r:.2f} ≤ {_RESCALE_GAIN:g}× SGDM's {100 * dip:.2f} points and no rising Δ "
                f"({rise_r:.2f}× < {_RISE_CLEAR:g}×)"
            ),
        )
    elif smaller or flat:
        verdict, reason = (
            _PARTLY,
            (f"dip {_num(100 * dip_r, '.2f')} vs SGDM's {100 * dip:.2f} points, Δ rise {_num(rise_r)}×"),
        )
    else:
        verdict, reason = _NOT_REPRODUCED, f"the rescaled runs dip as much ({100 * dip_r:.2f} points)"
    out.append(
        _claim(
            "rescaling_cures_dip",
            "Rescaling at each drop removes the rising Δ and with it the test-accuracy dip",
            "Sec 4.3, Fig 6(b)",
            [f"fig6_sgdm ({seeds} seeds)", f"fig6_rescaled ({resc['seeds']} seeds)"],
            figure,
            verdict,
            reason,
            rescaled=resc,
        )
    )
    rise_a, dip_a = adam["rise_stage2"], adam["dip_stage2"]
    figure = (
        f"Adam: RMS Δ over stage 2 changes {_num(rise_a)}× (SGDM {_num(rise)}×); stage-2 test-accuracy dip "
        f"{_num(100 * dip_a, '.2f')} points"
    )
    if not _finite(rise_a):
        verdict, reason = _NOT_REPRODUCED, "no stage 2 in the Adam runs"
    elif rise_a <= _RISE_NONE:
        verdict, reason = _REPRODUCED, f"Δ changes {rise_a:.2f}× over stage 2 (≤ {_RISE_NONE:g}×: no rise)"
    elif rise_a < _RISE_CLEAR:
        verdict, reason = _PARTLY, f"Δ changes {rise_a:.2f}× (between {_RISE_NONE:g}× and {_RISE_CLEAR:g}×)"
    else:
        verdict, reason = _NOT_REPRODUCED, f"Δ rises {rise_a:.2f}× over stage 2 (≥ {_RISE_CLEAR:g}×)"
    out.append(
        _claim(
            "adam_no_rising_delta",
            "With Adam the angular update does not rise after a drop (and test accuracy does not dip)",
            "Sec 4.3, Fig 6(c)",
            [f"fig6_adam ({adam['seeds']} seeds)"],
            figure,
            verdict,
            reason,
            adam=adam,
        )
    )
    return out


def _claims_collapse(runs: _Runs) -> list[dict[str, Any]]:
    run = runs["digits_collapse"][0]
    s = _series(run)
    e = _equilibrium(s)
    keep = s.theory
    last = run.metrics[run.metrics["step"] == run.metrics["step"].max()]
    reasons = dict(zip(last["param"].astype(str), last["reason"].astype(str), strict=True))
    names = [n for n, k in zip(s.layers, keep, strict=True) if k]
    flagged = sum(_COLLAPSE_WORD in reasons.get(n, "") for n in names)
    frac = flagged / len(names) if names else math.nan
    w = _monitor_window(run)
    ell = s.ell[:, keep]
    blocks = [_nanmean(ell[i : i + w]) for i in range(0, len(ell) - w + 1, w)]
    ell_ratio = _median(blocks[-1] / np.max(blocks, axis=0)) if blocks else math.nan
    tr = _training(run)
    ratio = e["median_rms_ratio"]
    lo, hi = _COLLAPSE_BAND
    figure = (
        f"median RMS Δ/Δ* = {_num(ratio)} (mean Δ/Δ* {_num(e['median_mean_ratio'])}) over the last "
        f"{e['window'][1] - e['window'][0] + 1} steps; {flagged}/{len(names)} layers flagged by the monitor; "
        f"unit gradient at {_pct(ell_ratio)} of its peak; train loss {_num(tr['train_loss'], '.4f')}, train "
        f"accuracy {_num(tr['train_accuracy'], '.4f')}"
    )
    if _finite(ratio, frac) and ratio <= _COLLAPSE_FAR_BELOW and frac >= _COLLAPSE_FLAGGED:
        where = "below" if ratio < lo else "within"
        verdict, reason = (
            _REPRODUCED,
            f"Δ at {_pct(ratio)} of Δ* (≤ {_pct(_COLLAPSE_FAR_BELOW)}; {where} the "
            f"{_pct(lo)}–{_pct(hi)} seen on shorter digits runs), {flagged}/{len(names)} layers flagged",
        )
    elif _finite(ratio, frac) and ratio < _COLLAPSE_BELOW and flagged:
        verdict, reason = (
            _PARTLY,
            f"Δ at {_pct(ratio)} of Δ* (above {_pct(_COLLAPSE_FAR_BELOW)}) or few layers flagged "
            f"({flagged}/{len(names)})",
        )
    else:
        verdict, reason = (
            _NOT_REPRODUCED,
            f"Δ at {_pct(ratio)} of Δ* with {flagged}/{len(names)} layers flagged",
        )
    return [
        _claim(
            "collapse_flagged",
            "On memorised data the unit gradient collapses, Δ falls far below Δ* (≤ 60%), and the "
            "monitor flags it",
            "Sec 3 assumptions (‖g̃‖² bounded away from 0)",
            ["digits_collapse"],
            figure,
            verdict,
            reason,
            fraction_flagged=frac,
            unit_gradient_ratio=ell_ratio,
            **e,
            **tr,
        )
    ]


# ---------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class _Experiment:
    name: str
    title: str
    configs: tuple[str, ...]
    evaluate: Callable[[_Runs], list[dict[str, Any]]]
    quick_factor: Mapping[str, float]  # scale_steps factor per config for --quick
    seeds: tuple[int, ...] = ()  # () runs each config once with its own seed, in <out>/<config>/
    quick_seeds: tuple[int, ...] = ()


_FIG4_RUNS = (
    "fig4_sgd_lr0.1_wd2e-3",
    "fig4_sgd_lr0.2_wd1e-3",
    "fig4_sgd_lr0.2_wd2e-3",
    "fig4_sgdm_lr0.1_wd2e-3",
    "fig4_sgdm_lr0.05_wd4e-3",
    "fig4_sgdm_lr0.1_wd4e-3",
)

_EXPERIMENTS: dict[str, _Experiment] = {
    e.name: e
    for e in (
        _Experiment(
            "fig3",
            "Fixed learning rate, SGD and SGDM (Fig 3)",
            ("fig3_sgd", "fig3_sgdm"),
            _claims_fig3,
            # SGD needs its whole length to equilibrate (relaxation 2 500 steps); SGDM is there in ~500.
            {"fig3_sgd": 1.0, "fig3_sgdm": 0.25},
        ),
        _Experiment(
            "fig4",
            "Grid of (η, λ) with and without momentum (Fig 4)",
            _FIG4_RUNS,
            _claims_fig4,
            dict.fromkeys(_FIG4_RUNS, 0.4),  # one factor for all: runs of different lengths would not compare
        ),
        _Experiment(
            "fig5",
            "Multi-stage learning rate with and without k^-¼ rescaling (Fig 5)",
            ("fig5_multistage", "fig5_rescaled"),
            _claims_fig5,
            {"fig5_multistage": 0.12, "fig5_rescaled": 0.12},
        ),
        _Experiment(
            "fig6",
            "Pseudo overfitting: SGDM, SGDM + rescaling, Adam (Fig 6)",
            ("fig6_sgdm", "fig6_rescaled", "fig6_adam"),
            _claims_fig6,
            {"fig6_sgdm": 0.1, "fig6_rescaled": 0.1, "fig6_adam": 0.1},
            seeds=(0, 1, 2),
            quick_seeds=(0,),
        ),
        _Experiment(
            "collapse",
            "Memorised data: the unit gradient collapses (digits)",
            ("digits_collapse",),
            _claims_collapse,
            # The monitor flags a collapse 3 relaxation times (3 000 steps) after the last change.
            {"digits_collapse": 0.5},
        ),
    )
}

#: Names accepted by `reproduce`: the experiments, in the order ``all`` runs them, then ``"all"``.
EXPERIMENTS: tuple[str, ...] = (*_EXPERIMENTS, "all")


# ---------------------------------------------------------------------------------------------- running


@dataclass(frozen=True)
class _Planned:
    config: str
    seed: int | None
    cfg: Config
    dir_name: str
    full_steps: int


def _plan(exp: _Experiment, quick: bool, threads: int | None) -> list[_Planned]:
    seeds = exp.quick_seeds if quick and exp.quick_seeds else exp.seeds
    out = []
    for name in exp.configs:
        base = load_config(name)
        cfg = scale_steps(base, exp.quick_factor[name]) if quick else base
        if threads is not None:
            cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, threads=threads))
        if not seeds:
            out.append(_Planned(name, None, cfg, name, base.run.steps))
            continue
        for seed in seeds:
            run = dataclasses.replace(cfg.run, seed=seed, name=f"{name}-seed{seed}")
            out.append(
                _Planned(name, seed, dataclasses.replace(cfg, run=run), f"{name}-seed{seed}", base.run.steps)
            )
    return out


def _comparable(cfg: Config) -> dict[str, Any]:
    """The config without the keys that change neither batches nor updates (threads, device)."""
    d = cfg.to_dict()
    d["run"] = {k: v for k, v in d["run"].items() if k not in ("threads", "device")}
    return d


def _differences(a: Config, b: Config) -> list[str]:
    da, db = _comparable(a), _comparable(b)
    return [
        f"{sec}.{k}"
        for sec in da
        for k in sorted(set(da[sec]) | set(db.get(sec, {})))
        if da[sec].get(k) != db.get(sec, {}).get(k)
    ]


def _prepare(run_dir: Path, cfg: Config) -> str:
    """What to do with ``run_dir``: ``"new"``, ``"resume"`` (interrupted) or ``"done"`` (finished).

    Raises:
        FileExistsError: the folder holds something else than this run, which is never overwritten.
    """
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return "new"
    cfg_path = run_dir / "config.toml"
    if not cfg_path.is_file():
        raise FileExistsError(f"{run_dir} exists and holds no config.toml; choose another --out")
    saved = load_config(cfg_path)
    diff = _differences(saved, cfg)
    if diff:
        raise FileExistsError(
            f"{run_dir} holds a run of another configuration (differs in {', '.join(diff)}); "
            "choose another --out (quick and full runs need different folders)"
        )
    summary_path = run_dir / "summary.json"
    status = None
    if summary_path.is_file():
        try:
            status = json.loads(summary_path.read_text(encoding="utf-8")).get("status")
        except ValueError:
            status = None
    if status in ("completed", "diverged"):
        return "done"
    if (run_dir / "checkpoint.pt").is_file():
        return "resume"
    # Stopped before its first checkpoint (killed): nothing to resume from, and this very config.
    shutil.rmtree(run_dir)
    return "new"


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, flush=True)


def _command(name: str, quick: bool) -> str:
    return f"smdyn reproduce {name}" + (" --quick" if quick else "")


def _run_experiment(
    exp: _Experiment, quick: bool, out: Path, threads: int | None, report: bool, quiet: bool
) -> Path:
    from smdyn.experiments.train import train

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    plan = _plan(exp, quick, threads)
    dirs: dict[str, list[Path]] = {}
    info = []
    for i, p in enumerate(plan, 1):
        run_dir = out / p.dir_name
        state = _prepare(run_dir, p.cfg)
        label = f"{exp.name} [{i}/{len(plan)}] {p.dir_name} ({p.cfg.run.steps} steps)"
        if state == "done":
            _say(quiet, f"{label}: finished earlier, re-used")
        else:
            _say(quiet, f"{label}: {'resuming' if state == 'resume' else 'training'} in {run_dir}")
            train(p.cfg, run_dir, resume=state == "resume", quiet=quiet)
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        dirs.setdefault(p.config, []).append(run_dir)
        info.append(
            {
                "dir": p.dir_name,
                "config": p.config,
                "seed": p.cfg.run.seed,
                "steps": summary.get("steps"),
                "full_steps": p.full_steps,
                "status": summary.get("status"),
                "wall_time_s": summary.get("wall_time_s"),
                "steps_per_s": summary.get("steps_per_s"),
                "threads": summary.get("threads"),
                "reused": state == "done",
            }
        )
    loaded = {name: [fig.load_run(d) for d in ds] for name, ds in dirs.items()}
    try:
        claims = exp.evaluate(loaded)
    except fig.NoDataError as exc:  # a run without records (diverged at once): say so, claim by claim
        claims = [_claim("no_data", exp.title, "", list(dirs), "", _NOT_REPRODUCED, str(exc))]
    report_path = None
    if report:
        from smdyn.experiments.report import write_report

        report_path = write_report(
            [d for ds in dirs.values() for d in ds], out, title=f"smdyn reproduce: {exp.title}"
        )
    n_seeds = max(1, len(exp.seeds))
    estimate = 0.0
    for name in exp.configs:
        rates = [
            r["steps_per_s"] for r in info if r["config"] == name and _finite(r["steps_per_s"] or math.nan)
        ]
        full = next(r["full_steps"] for r in info if r["config"] == name)
        estimate += full * n_seeds / float(np.mean(rates)) if rates else math.nan
    doc = {
        "experiment": exp.name,
        "title": exp.title,
        "quick": quick,
        "command": _command(exp.name, quick),
        "created": datetime.now().isoformat(timespec="seconds"),
        "wall_time_s": time.perf_counter() - t0,
        "train_time_s": float(sum(r["wall_time_s"] or 0.0 for r in info)),
        "full_estimate_s": estimate,
        "full_runs": len(exp.configs) * n_seeds,
        "runs": info,
        "report": report_path.name if report_path else None,
        "thresholds": _THRESHOLDS,
        "claims": claims,
    }
    path = out / "claims.json"
    tmp = path.with_name(".claims.json.tmp")
    tmp.write_text(json.dumps(_json_safe(doc), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    for c in claims:
        _say(quiet, f"  {c['id']}: {c['verdict']} — {c['reason']}")
    _say(quiet, f"wrote {path}" + (f" and {report_path}" if report_path else ""))
    return out


def _json_safe(obj: Any) -> Any:
    """NaN becomes null and ±inf the strings "inf"/"-inf", so claims.json stays strict JSON."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        if math.isnan(x):
            return None
        return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")
    return obj


def reproduce(
    name: str,
    *,
    quick: bool = False,
    out: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    report: bool = True,
    quiet: bool = False,
) -> Path:
    """Runs one of the paper's experiments (or ``"all"``) and writes its report and ``claims.json``.

    Args:
        name: one of `EXPERIMENTS`.
        quick: the smoke-test variant: steps scaled by the experiment's factors, fig6 with one seed.
        out: the output folder; default a new ``runs/reproduce-<name>[-quick]-<time>/``. Runs go to
            ``<out>/<config>[-seed<N>]/`` (``<out>/<experiment>/...`` for ``all``); finished runs found
            there are re-used and interrupted ones resumed.
        threads: torch CPU threads for every run, replacing the configs' ``run.threads`` (results do not
            depend on it; on a loaded machine 1 is often much faster than 2).
        report: also write the comparison ``report.html`` and its figures.
        quiet: print nothing.

    Returns:
        The output folder.

    Raises:
        ValueError: an unknown ``name`` or a bad ``threads``.
        FileExistsError: a run folder under ``out`` holds a different configuration.
        KeyboardInterrupt: re-raised after the running run saved its checkpoint; run again to resume.
    """
    if not isinstance(name, str) or name not in EXPERIMENTS:
        raise ValueError(f"name must be one of {', '.join(EXPERIMENTS)}, got {name!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 0):
        raise ValueError(f"threads must be a non-negative integer or None, got {threads!r}")
    if out is None:
        out = Path("runs") / f"reproduce-{name}{'-quick' if quick else ''}-{datetime.now():%Y%m%d-%H%M%S}"
    root = Path(out)
    if name != "all":
        return _run_experiment(_EXPERIMENTS[name], quick, root, threads, report, quiet)
    for exp in _EXPERIMENTS.values():
        _run_experiment(exp, quick, root / exp.name, threads, report, quiet)
    md = write_reproduction_md(root, root / "REPRODUCTION.md")
    _say(quiet, f"wrote {md}")
    return root


# ---------------------------------------------------------------------------------------------- markdown


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "n/a"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _load_claims(files: Sequence[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    docs = []
    for f in files:
        p = Path(f)
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"claims_files: cannot read {p}: {exc}") from None
        if not isinstance(doc, dict) or not {"experiment", "claims", "quick"} <= set(doc):
            raise ValueError(f"claims_files: {p} is not a claims.json written by smdyn reproduce")
        doc["_path"] = p
        docs.append(doc)
    return docs


def _pick(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One document per experiment: full runs before quick ones, then the latest."""
    best: dict[str, dict[str, Any]] = {}
    for d in docs:
        key = (not d["quick"], str(d.get("created", "")))
        old = best.get(d["experiment"])
        if old is None or key > (not old["quick"], str(old.get("created", ""))):
            best[d["experiment"]] = d
    order = list(_EXPERIMENTS)
    return sorted(
        best.values(), key=lambda d: order.index(d["experiment"]) if d["experiment"] in order else 99
    )


def reproduction_markdown(claims_files: Sequence[str | os.PathLike[str]]) -> str:
    """``REPRODUCTION.md``: one row per claim, built from ``claims.json`` files of `reproduce`.

    Where an experiment has several files, the full run wins over the quick one and the newer over the
    older. Every number comes from the files; nothing is typed in.

    Raises:
        ValueError: no files, or a file that is not a ``claims.json`` of `reproduce`.
    """
    if isinstance(claims_files, (str, os.PathLike)) or not isinstance(claims_files, Sequence):
        raise TypeError(f"claims_files must be a sequence of paths, got {type(claims_files).__name__}")
    if not claims_files:
        raise ValueError("claims_files is empty: run `smdyn reproduce NAME` first")
    docs = _pick(_load_claims(claims_files))
    quick = [d["experiment"] for d in docs if d["quick"]]
    full = [d["experiment"] for d in docs if not d["quick"]]
    lines = [
        '# Reproduction of "Spherical Motion Dynamics" (Wan et al., NeurIPS 2021) at CPU scale',
        "",
        "Generated by `smdyn reproduce --markdown RUN_ROOT` from the `claims.json` files that",
        "`smdyn reproduce` writes next to its runs: every number below was measured in those runs, none is",
        "typed in. The measurements and the thresholds behind each verdict (reproduced / partly / not",
        "reproduced) are defined and documented in `src/smdyn/experiments/reproduce.py`; each experiment's",
        "`report.html` shows the figures.",
        "",
    ]
    if full:
        lines.append(f"- From the **full CPU runs**: {', '.join(f'`{e}`' for e in full)}.")
    if quick:
        lines.append(
            f"- From the **quick runs** (`--quick`, steps scaled down so that each experiment takes about 3 "
            f"minutes, fig6 with one seed of three): {', '.join(f'`{e}`' for e in quick)}. The theorems' "
            "time scales do not "
            "shrink with the runs, so at that size several claims cannot show (a lag after a learning-rate "
            "drop outlasts a shortened stage, SGD is not yet in equilibrium): those verdicts describe the "
            "smoke-test size, not the paper. Run the full commands below for the CPU-scale results."
        )
    lines += [
        "",
        "## Claims",
        "",
        "| Claim | Paper | Command | Measured | Verdict | Reason | Runtime | Runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in docs:
        source = "quick" if d["quick"] else "full CPU"
        for c in d["claims"]:
            lines.append(
                "| "
                + " | ".join(
                    _cell(x)
                    for x in (
                        c["claim"],
                        c["paper"],
                        f"`{d['command']}`",
                        c["figure"],
                        f"**{c['verdict']}**",
                        c["reason"],
                        _duration(d.get("train_time_s")),
                        source,
                    )
                )
                + " |"
            )
    lines += [
        "",
        "## Experiments",
        "",
        "| Experiment | Command | Runs | Steps per run | Training time | Threads | Source |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in docs:
        runs = d.get("runs", [])
        steps = sorted({r.get("steps") for r in runs if r.get("steps") is not None})
        threads = sorted({r.get("threads") for r in runs if r.get("threads") is not None})
        lines.append(
            "| "
            + " | ".join(
                _cell(x)
                for x in (
                    d.get("title", d["experiment"]),
                    f"`{d['command']}`",
                    len(runs),
                    ", ".join(str(s) for s in steps),
                    _duration(d.get("train_time_s")),
                    ", ".join(str(t) for t in threads),
                    "quick" if d["quick"] else "full CPU",
                )
            )
            + " |"
        )
    lines += [
        "",
        "Training time is the sum of the runs' training loops (`wall_time_s` in each `summary.json`), on",
        "a 2-core CPU shared with other work; data generation and the report come on top.",
        "",
        "## Full CPU runs",
        "",
        "| Command | Runs | Runtime |",
        "|---|---|---|",
    ]
    total = 0.0
    for d in docs:
        if d["quick"]:
            est = d.get("full_estimate_s")
            text = f"about {_duration(est)} (estimated from the quick runs' steps/s)"
        else:
            est = d.get("train_time_s")
            text = f"{_duration(est)} (measured)"
        if isinstance(est, (int, float)) and math.isfinite(est):
            total += est
        lines.append(
            f"| `{_command(d['experiment'], False)}` | {d.get('full_runs', 'n/a')} | {_cell(text)} |"
        )
    lines += [
        "",
        f"Total: about {_duration(total)}. `smdyn reproduce all --out DIR` runs them one after another and",
        "resumes from DIR after an interruption; `--threads 1` helps on a machine shared with other work.",
        "",
    ]
    return "\n".join(lines)


def write_reproduction_md(
    run_root: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    path: str | os.PathLike[str] = "REPRODUCTION.md",
) -> Path:
    """Writes `reproduction_markdown` of every ``claims.json`` under ``run_root`` (one folder or several).

    Raises:
        FileNotFoundError: a folder does not exist, or none holds a ``claims.json``.
    """
    roots = [run_root] if isinstance(run_root, (str, os.PathLike)) else list(run_root)
    files: list[Path] = []
    for r in roots:
        if not isinstance(r, (str, os.PathLike)):
            raise TypeError(f"run_root must be a path or a sequence of paths, got {type(r).__name__}")
        p = Path(r)
        if not p.is_dir():
            raise FileNotFoundError(f"run_root {p} is not a directory")
        files += sorted(p.rglob("claims.json"))
    if not files:
        raise FileNotFoundError(
            f"no claims.json under {', '.join(str(r) for r in roots)}: run smdyn reproduce first"
        )
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(reproduction_markdown(files), encoding="utf-8")
    os.replace(tmp, target)
    return target


# ---------------------------------------------------------------------------------------------- command line


def add_reproduce_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``[NAME] [--quick] [--out DIR] [--threads N] [--no-report] [--quiet]
    [--markdown RUN_ROOT ... [--markdown-out PATH]]`` to ``parser``."""
    parser.add_argument(
        "name",
        nargs="?",
        choices=EXPERIMENTS,
        help="the experiment: "
        + ", ".join(f"{e.name} ({e.title})" for e in _EXPERIMENTS.values())
        + ", or all",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the ~3-minute smoke-test variant (steps scaled down; fig6 runs one seed)",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output folder; finished runs there are re-used (default: a new runs/ folder)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads per run (default: the configs')"
    )
    parser.add_argument("--no-report", action="store_true", help="skip the figures and report.html")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument(
        "--markdown",
        action="append",
        default=[],
        metavar="RUN_ROOT",
        help="write REPRODUCTION.md from the claims.json files under RUN_ROOT (repeatable); runs nothing",
    )
    parser.add_argument(
        "--markdown-out",
        default="REPRODUCTION.md",
        metavar="PATH",
        help="where --markdown writes (default ./REPRODUCTION.md)",
    )


def reproduce_main(args: argparse.Namespace) -> int:
    """Runs ``smdyn reproduce`` from parsed arguments; returns the exit status (0 done, 2 bad input,
    130 interrupted)."""
    if args.markdown:
        if args.name:
            print("smdyn reproduce: give either NAME or --markdown, not both", file=sys.stderr)
            return 2
        try:
            path = write_reproduction_md(args.markdown, args.markdown_out)
        except (FileNotFoundError, ValueError, TypeError) as exc:
            print(f"smdyn reproduce: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {path}")
        return 0
    if not args.name:
        print(
            f"smdyn reproduce: name an experiment ({', '.join(EXPERIMENTS)}) or give --markdown",
            file=sys.stderr,
        )
        return 2
    out = args.out or str(
        Path("runs") / f"reproduce-{args.name}{'-quick' if args.quick else ''}-{datetime.now():%Y%m%d-%H%M%S}"
    )
    try:
        reproduce(
            args.name,
            quick=args.quick,
            out=out,
            threads=args.threads,
            report=not args.no_report,
            quiet=args.quiet,
        )
    except KeyboardInterrupt:
        print(
            f"smdyn reproduce: interrupted; continue with: {_command(args.name, args.quick)} --out {out}",
            file=sys.stderr,
        )
        return 130
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError) as exc:
        print(f"smdyn reproduce: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"done: {out}")
    return 0
