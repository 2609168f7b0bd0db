"""The measurements behind the claims of `smdyn reproduce`, from run directories only.

- Time to equilibrium: the first step at which the monitor flags a layer ``in_equilibrium``; median over
  layers (a layer never flagged counts as never).
- Lag after a drop by k (Cor 3.1): the first step after the drop at which the RMS of Δ/Δ*_new over a
  centred window of ``roll`` records reaches 1 − ``reached_tol``, median over layers, against
  ⌈ln(k)(1−α)/(2λη_new)⌉ (`smdyn.theory.steps_to_new_equilibrium`).
- Stage deviation (Sec 4.2): the mean over a stage of |RMS Δ/Δ* − 1| (RMS over trailing windows of
  ``roll`` records inside the stage), median over layers.
- Test-accuracy dip (Sec 4.3): the largest drawdown (a peak minus a later value) of the seed-mean test
  accuracy inside a learning-rate stage, after a running median over 3 evaluations (one outlying
  evaluation is not a dip); Δ rise: RMS Δ over the last 10% of the second stage divided by RMS Δ over its
  first 5%, median over layers.
- Training figures: train loss and accuracy, mean of the ``train.csv`` rows in the last 10% of the run;
  test accuracy and loss, mean of the evaluations in the last 25% of the run.
- Equilibrium (Thm 1–3): `rundir.run_equilibrium`, over the last monitor window of the last stage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from smdyn import theory
from smdyn.experiments.reproduce.claims import finite
from smdyn.experiments.rundir import NoDataError, Run, nanmean, nanmedian, run_equilibrium

_TRAIN_TAIL = 0.10  # fraction of the run whose train.csv rows give the final train loss and accuracy
_TEST_TAIL = 0.25  # fraction of the run whose evaluations give the final test accuracy and loss


def rolling_rms(x: np.ndarray, w: int) -> np.ndarray:
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


def drawdown(values: np.ndarray) -> tuple[float, int, int]:
    """Largest fall from a running peak: (peak − later value, index of the peak, index of the low)."""
    best, peak_i, lo_i, run_i = 0.0, 0, 0, 0
    for i, v in enumerate(values):
        if v > values[run_i]:
            run_i = i
        if values[run_i] - v > best:
            best, peak_i, lo_i = float(values[run_i] - v), run_i, i
    return best, peak_i, lo_i


@dataclass
class Series:
    """A run's monitor records as [steps, layers] arrays (per-channel records folded per layer)."""

    run: Run
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


def series(run: Run) -> Series:
    """The columns every claim reads, as [steps, layers] arrays (`Run.wide`), read once per run."""
    if run.metrics is None or not len(run.metrics):
        raise NoDataError(f"{run.path}: no monitor records (metrics.csv)")
    steps, delta = run.wide("angular_update")
    cols = {c: run.wide(c)[1] for c in ("theory_angular_update", "weight_norm", "theory_weight_norm")}
    cols.update({c: run.wide(c)[1] for c in ("in_equilibrium", "lr", "wd", "momentum")})
    mom = cols["momentum"]
    h, g = run.wide("h_tilde")[1], run.wide("unit_grad_sq")[1]
    return Series(
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


def time_to_equilibrium(s: Series) -> dict[str, Any]:
    """First step the monitor flags each layer in equilibrium; the median over layers (inf: never)."""
    keep = s.theory
    eq = s.eq[:, keep]
    first = [float(s.steps[np.argmax(col)]) if col.any() else math.inf for col in eq.T]
    return {
        "median_first_step": nanmedian(first),
        "reached": int(sum(math.isfinite(f) for f in first)),
        "layers": int(keep.sum()),
        "last_step": int(s.steps[-1]),
    }


def training(run: Run) -> dict[str, float]:
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
            out[key] = float(nanmean(t[col].to_numpy(dtype=np.float64)[tail]))
    tail = step >= (1 - _TEST_TAIL) * last
    for key in ("test_accuracy", "test_loss"):
        if key in t:
            out[key] = float(nanmean(t[key].to_numpy(dtype=np.float64)[tail]))
    return out


def optim(run: Run) -> tuple[float, float, float, str]:
    """(η, λ, α, optimizer name) from the run's config.toml."""
    o = run.config.get("optim", {})
    return (
        float(o.get("lr", math.nan)),
        float(o.get("weight_decay", math.nan)),
        float(o.get("momentum", 0.0)),
        str(o.get("name", "sgd")),
    )


@dataclass(frozen=True)
class Drop:
    index: int  # index into Series.steps of the first record at the new rate
    end: int  # index one past the stage's last record
    step: int
    stage_steps: int
    k: float
    lr_after: float
    wd: float
    mom: float


def drops(s: Series) -> list[Drop]:
    """Learning-rate drops (by more than 5%) at the run's stage starts, with the stage that follows."""
    starts = [int(x) for x in s.run.stage_starts]
    bounds = [int(np.searchsorted(s.steps, b)) for b in starts] + [len(s.steps)]
    out = []
    for j in range(1, len(starts)):
        i, end = bounds[j], bounds[j + 1]
        if i <= 0 or i >= len(s.steps):
            continue
        before, after = nanmedian(s.lr[i - 1]), nanmedian(s.lr[i])
        if not (finite(before, after) and after > 0 and before / after > 1.05):
            continue
        stage_steps = (starts[j + 1] if j + 1 < len(starts) else int(s.steps[-1]) + 1) - starts[j]
        out.append(
            Drop(
                index=i,
                end=end,
                step=int(s.steps[i]),
                stage_steps=stage_steps,
                k=before / after,
                lr_after=after,
                wd=nanmedian(s.wd[i]),
                mom=nanmedian(s.mom[i]),
            )
        )
    return out


def roll_window(records: int, roll: int) -> int:
    """Records in a rolling window: ``roll``, but at most a fifth of the stage (and at least 2)."""
    return max(2, min(roll, records // 5))


def lag(s: Series, d: Drop, *, roll: int, reached_tol: float, immediate_records: int) -> dict[str, Any]:
    """Steps from a drop until the windowed RMS Δ/Δ*_new reaches 1 − ``reached_tol`` (Cor 3.1), and Δ/Δ*_new
    right after the drop (k^-½ expected)."""
    keep = s.theory
    r = s.ratio[d.index : d.end][:, keep]
    steps = s.steps[d.index : d.end]
    w = roll_window(len(r), roll)
    lags = []
    for col in rolling_rms(r, w).T:
        hit = np.flatnonzero(col >= 1 - reached_tol)
        lags.append(float(steps[hit[0] + (w - 1) // 2] - d.step) if hit.size else math.inf)
    n0 = max(1, min(immediate_records, len(r) // 10))
    immediate = np.sqrt(nanmean(r[:n0] ** 2))
    predicted = theory.steps_to_new_equilibrium(d.k, d.lr_after, d.wd, d.mom)
    return {
        "step": d.step,
        "k": d.k,
        "stage_steps": d.stage_steps,
        "predicted_lag": float(predicted),
        "measured_lag": nanmedian(lags),
        "layers_reached": int(sum(math.isfinite(x) for x in lags)),
        "layers": len(lags),
        "immediate_ratio": nanmedian(immediate),
        "expected_immediate_ratio": d.k**-0.5,
    }


def stage_deviation(s: Series, roll: int) -> list[float]:
    """Per stage: mean over the stage of |windowed RMS Δ/Δ* − 1|, median over layers."""
    keep = s.theory
    starts = [int(x) for x in s.run.stage_starts]
    bounds = [int(np.searchsorted(s.steps, b)) for b in starts] + [len(s.steps)]
    out = []
    for j in range(len(starts)):
        r = s.ratio[bounds[j] : bounds[j + 1]][:, keep]
        rolled = rolling_rms(r, roll_window(len(r), roll))
        out.append(nanmedian(nanmean(np.abs(rolled - 1))) if len(rolled) else math.nan)
    return out


def norm_steps(s: Series, drops: Sequence[Drop]) -> list[dict[str, float]]:
    """‖w‖ at the first record of each new stage over ‖w‖ one record before, median over layers, against
    k^-¼ (Sec 4.2's rescale factor)."""
    keep = s.theory
    out = []
    for d in drops:
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = s.norm[d.index][keep] / s.norm[d.index - 1][keep]
        out.append({"step": d.step, "k": d.k, "norm_ratio": nanmedian(ratio), "expected": d.k**-0.25})
    return out


def stage_rise(s: Series, d: Drop) -> float:
    """RMS Δ over the last 10% of the stage after ``d`` over its first 5%, median over layers."""
    seg = s.delta[d.index : d.end]
    n = len(seg)
    a, b = max(2, n // 20), max(2, n // 10)
    if n < a + b:
        return math.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        rise = np.sqrt(nanmean(seg[-b:] ** 2) / nanmean(seg[:a] ** 2))
    return nanmedian(rise)


def stage_bounds(run: Run) -> list[tuple[int, int]]:
    """(first step, last step + 1) of each learning-rate stage, in optimizer steps."""
    starts = [int(x) for x in run.stage_starts]
    last = int(run.summary.get("steps") or 0)
    if run.metrics is not None and len(run.metrics):
        last = max(last, int(run.metrics["step"].max()) + 1)
    return list(zip(starts, [*starts[1:], last], strict=True))


def mean_test_curve(runs: Sequence[Run]) -> tuple[np.ndarray, np.ndarray]:
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


def stage_dips(runs: Sequence[Run]) -> list[dict[str, float]]:
    """Per learning-rate stage: the largest drawdown of the seed-mean test accuracy inside it.

    An evaluation at step s sees the weights after s steps, so the stage [a, b) owns the evaluations at
    steps a+1 .. b (the one at a is the last of the previous stage).
    """
    steps, acc = mean_test_curve(runs)
    out = []
    for a, b in stage_bounds(runs[0]):
        sel = (steps > a) & (steps <= b)
        if sel.sum() < 2:
            out.append({"start": a, "dip": math.nan, "peak_step": math.nan, "low_step": math.nan})
            continue
        dip, i, j = drawdown(_median3(acc[sel]))
        st = steps[sel]
        out.append({"start": a, "dip": dip, "peak_step": float(st[i]), "low_step": float(st[j])})
    return out


# Student's t, two-sided 95%, by degrees of freedom: intervals over a few seeds.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def spread(xs: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (ddof 1; 0 for one value), count and the half-width of the two-sided
    95% Student-t interval of the mean (NaN below two values) of the finite values of ``xs``."""
    v = np.array([x for x in xs if finite(x)], dtype=np.float64)
    if not v.size:
        return {"mean": math.nan, "sd": math.nan, "n": 0, "half95": math.nan}
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    half = _T95.get(v.size - 1, 1.96) * sd / math.sqrt(v.size) if v.size > 1 else math.nan
    return {"mean": float(v.mean()), "sd": sd, "n": int(v.size), "half95": half}


def equilibrium_figures(s: Series) -> dict[str, Any]:
    """`rundir.run_equilibrium` of a run as a claim's measured figures: per layer with a Δ* (RMS Δ/Δ*,
    mean Δ/Δ*, ‖w‖/w*), their medians and median deviations from 1, the fraction of those layers flagged
    in equilibrium, the median RMS Δ over every layer and the median Δ* of the window."""
    e = run_equilibrium(s.run)
    keep = e.theory
    names = [n for n, k in zip(e.layers, keep, strict=True) if k]
    rms, mean, norm = e.rms_ratio[keep], e.mean_ratio[keep], e.norm_ratio[keep]
    return {
        "window": list(e.window),
        "layers": len(names),
        "per_layer": {
            n: {"rms_ratio": float(a), "mean_ratio": float(b), "norm_ratio": float(c)}
            for n, a, b, c in zip(names, rms, mean, norm, strict=True)
        },
        "median_rms_ratio": e.median_rms_ratio,
        "median_mean_ratio": e.median_mean_ratio,
        "median_norm_ratio": e.median_norm_ratio,
        "median_abs_rms_dev": e.median_abs_rms_dev,
        "median_abs_mean_dev": e.median_abs_mean_dev,
        "median_abs_norm_dev": e.median_abs_norm_dev,
        "fraction_in_equilibrium": e.fraction_in_equilibrium,
        "rms_delta": nanmedian(e.rms_delta),
        "theory_delta": nanmedian(e.theory_delta[keep]) if keep.any() else math.nan,
    }
