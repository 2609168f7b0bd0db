"""The planner and the controls against real runs under warm-up + cosine decay, and after a step drop.

The network of ``rules_on_a_network.py`` (in 64 → 4 × [Linear without bias → LayerNorm → ReLU] → 10, here
128 wide) learns a fixed random teacher from fresh Gaussian inputs every step, labels the teacher's argmax
under logit noise 0.5: data that cannot be memorised. The hidden Linear weights (scale-invariant, found by
the monitor) are one param group, every other parameter another; both follow the same schedule.

1. Planner against real runs. SGDM and AdamW, warm-up then cosine to 2% of the peak. ``smdyn.plan`` predicts
   each layer's ‖w_t‖ from the schedule, (η, λ, α or β₁) and the measured initial norm: for SGDM fed
   L_t = the monitor's ``l_estimate`` of that layer (trailing mean of h̃), or L held at its mean over 10-20%
   of the run (what a plan made early knows); for AdamW with the rule's own w* (Kosson et al.), or with its
   scale fitted over 10-20% of the run. Then ``smdyn.forecast`` made from the monitor mid-run (at 50% and 70%
   of the run, with the run's own scheduler): the plan restarted at each layer's measured norm and Adam's
   real state, its statistic fitted to the recent past. Each prediction of ‖g‖/‖w‖ = ‖g̃‖/‖w‖² combines the
   predicted ‖w‖ with the measured ‖g̃‖ (``unit_grad_sq``); it is compared with the measured
   ``grad_to_weight_ratio``, both averaged over the layers and ±1% of the run around 50% and 90% (the last
   2% for 100%), over the seeds. Then a SGDM run at constant lr with one ÷10 drop: the planner's steps until
   Δ stays within 10% of the new Δ* (``PlanResult.table()``, ``lag_10``, fed the measured L_t) against the
   steps until the layer-mean of the monitor's windowed RMS Δ / Δ* stays within 10%.
2. Controls on the same runs: corrected decay (holds ‖w‖ at its η-free w*, so ‖g‖/‖w‖ at its steady state
   ‖g̃‖/w*²; ``corrected_growth``: with ``track_growth=True``, AdamW only), continuous rescaling (attached at
   the end of the warm-up) and the rotation controller (both hold Δ at Δ*). Over the last 20% of training,
   in 10 blocks: RMS Δ/Δ* (Δ* at the group's own λ_t) and (w_ref/‖w‖)² (w_ref each layer's mean norm over
   10-20% of the run: ‖g‖/‖w‖ over ‖g̃‖/w_ref², 1 while the norm holds), the range over blocks of the layer
   mean; for the uncontrolled and the rescaled runs beside the planner's values for the same blocks (the
   rescaled run planned with ``rescale_from`` at the end of the warm-up, from its own initial norm and, for
   SGDM, its own L_t; AdamW's element count fitted to the uncontrolled run). Final held-out loss
   (cross-entropy against noisy labels) and accuracy (against the teacher's clean argmax) on 8192 fresh
   samples, mean ± standard deviation over the seeds.

Usage: python benchmarks/schedules_on_a_network.py [--steps 5000] [--seeds 3] [--threads 1]

Result on this machine (1 thread, 2 shared CPU cores, torch 2.13 CPU; 28 runs, 499 s: 10-25 s a run; the
corrected_growth row from a later run with --controls none corrected_growth after a change to that control,
the other rows of which were the same bit for bit):

1. ‖g‖/‖w‖ = ‖g̃‖/‖w‖²: measured, and predicted = measured ‖g̃‖ / planned ‖w‖² (layer mean, ±1%
   of the run around each point, the last 2% for 100%; mean over seeds, range of the ratio)
rule   plan           point  measured  predicted  predicted/measured
sgdm   L_t measured     50%    0.1503     0.1505  1.002 (0.990–1.011)
sgdm   L_t measured     90%    0.3011     0.3025  1.005 (1.004–1.005)
sgdm   L_t measured    100%    0.3332     0.3347  1.005 (1.004–1.005)
sgdm   L fit 10-20%     50%    0.1503     0.1253  0.834 (0.814–0.853)
sgdm   L fit 10-20%     90%    0.3011     0.2734  0.908 (0.898–0.914)
sgdm   L fit 10-20%    100%    0.3332     0.3041  0.913 (0.904–0.918)
sgdm   forecast@50%     90%    0.3011     0.3289  1.092 (1.082–1.111)
sgdm   forecast@50%    100%    0.3332     0.3656  1.097 (1.086–1.119)
sgdm   forecast@70%     90%    0.3011     0.3191  1.060 (1.055–1.064)
sgdm   forecast@70%    100%    0.3332     0.3548  1.065 (1.060–1.071)
adamw  rule's w*        50%    0.1157     0.0435  0.376 (0.366–0.383)
adamw  rule's w*        90%    0.1868     0.0879  0.471 (0.464–0.474)
adamw  rule's w*       100%    0.1970     0.0942  0.478 (0.471–0.483)
adamw  w* scale fit     50%    0.1157     0.1024  0.885 (0.873–0.908)
adamw  w* scale fit     90%    0.1868     0.2170  1.162 (1.148–1.185)
adamw  w* scale fit    100%    0.1970     0.2327  1.181 (1.169–1.204)
adamw  forecast@50%     90%    0.1868     0.1686  0.903 (0.884–0.915)
adamw  forecast@50%    100%    0.1970     0.1804  0.916 (0.895–0.928)
adamw  forecast@70%     90%    0.1868     0.1882  1.008 (0.996–1.019)
adamw  forecast@70%    100%    0.1970     0.2012  1.022 (1.007–1.036)

Why the AdamW plan drifts (uncontrolled runs, layer mean, seed mean, per tenth of the run):
the plan holds growth/ρ² (efficiency) constant; R = growth/(‖u⊥‖²/C) is 19 for independent steps
lr/peak       0.749   0.971   0.895   0.777   0.630   0.470   0.315   0.180   0.081   0.029
ρ² (v̂ lag)   0.808   0.634   0.718   0.826   0.914   1.030   1.131   1.230   1.250   1.216
‖u⊥‖²/C       0.042   0.016   0.017   0.019   0.023   0.026   0.031   0.036   0.040   0.042
growth/η²C    0.643   0.287   0.314   0.360   0.420   0.489   0.602   0.756   1.225   2.514
efficiency    0.844   0.489   0.472   0.466   0.490   0.504   0.561   0.641   1.038   2.125
R            16.356  18.323  19.002  18.818  18.870  18.960  20.172  21.471  30.532  57.945

SGDM, lr ÷10 at step 1500: steps until Δ stays within 10% of the new Δ*: planned 1741 (L_t measured), 1813
(L constant); measured 1747 (windowed RMS, window 100)

2. Last 20% of training: RMS Δ/Δ* and (w_ref/‖w‖)², range over 10 blocks × seeds of the
   layer mean. Held-out loss and accuracy: mean ± sd over seeds; paired with the uncontrolled run
   of the same seed (same init, teacher and batches): Δacc = accuracy − its, mean ± sd
rule   control          RMS Δ/Δ*     (w_ref/‖w‖)²  held-out loss    accuracy         Δacc
sgdm   none             0.443–0.846  2.596–3.367   1.4639 ± 0.0190  0.9203 ± 0.0052  +0.0000 ± 0.0000
       planned          0.482–0.840  2.652–3.443
       forecast@70%     0.436–0.790  2.691–3.598
sgdm   corrected_decay  1.036–1.216  1.071–1.090   1.4542 ± 0.0189  0.9358 ± 0.0028  +0.0155 ± 0.0063
sgdm   rescale          0.940–1.120  3.255–7.654   1.4728 ± 0.0181  0.9043 ± 0.0079  -0.0160 ± 0.0055
       planned          0.989–1.099  3.345–7.827
sgdm   rotation         1.000–1.000  1.000–1.000   1.4764 ± 0.0174  0.8976 ± 0.0073  -0.0227 ± 0.0067
adamw  none             0.285–0.676  1.667–1.907   1.4517 ± 0.0200  0.9254 ± 0.0021  +0.0000 ± 0.0000
       planned          0.255–0.587  2.577–3.029
       forecast@70%     0.308–0.693  1.646–1.971
adamw  corrected_decay  1.103–1.248  0.713–0.772   1.4495 ± 0.0196  0.9313 ± 0.0028  +0.0059 ± 0.0018
adamw  corrected_growth  0.337–0.825  1.071–1.120   1.4514 ± 0.0199  0.9306 ± 0.0027  +0.0052 ± 0.0032
adamw  rescale          1.013–1.282  6.406–33.514  1.4623 ± 0.0204  0.9040 ± 0.0046  -0.0214 ± 0.0048
       planned          0.991–0.994  9.518–53.739
adamw  rotation         1.000–1.000  1.000–1.000   1.4589 ± 0.0201  0.9054 ± 0.0082  -0.0201 ± 0.0075

Reading. SGDM: the planner fed L_t predicts ‖g‖/‖w‖ within 1.1% at every point, the 2.2× rise from 50% to
100% included, and the lag after the drop within 0.4% (tolerance stated: 15%); held at its early L it reads
17% low at 50% and 9% low at the end (L moves with the gradients). AdamW: the rule's w* = √(ηC/(2λ)) is
1.5-1.8× the real norm here, so ‖g‖/‖w‖ is predicted 2.1-2.7× low; with the scale fitted once (10-20% of
the run) -12% at 50%, +16% at 90%, +18% at 100%: the drift is overestimated. The cause, in the budget table:
Adam's normalised step is not of a fixed size (‖u⊥‖²/C 0.016 at the peak lr, 0.042 at 3% of it; 0.053 for
independent gradients); the lag of Adam's normaliser ρ² (which the plan models, and which matches the
optimizer's own mean g²/v̂) explains 0.63 → 1.25 of the rise of the growth per step, and what the plan
holds constant, growth/ρ², stays at 0.47-0.56 from 10% to 70% of the run and then rises to 0.64, 1.04 and
2.1 as η falls below 20% of its peak, because the steps correlate longer (R 18-19 like independent steps,
then 31 and 58): at a small η the gradient's mean direction persists. No plan made before training can know
that; a forecast made from the monitor can: from 50% of the run it reads 0.90/0.92 (AdamW) and 1.09/1.10
(SGDM) at 90/100%, from 70% 1.01/1.02 and 1.06/1.07; over the last 20% the forecast from 70% reads the
uncontrolled drift of (w_ref/‖w‖)² 1.65-1.97 (AdamW; measured 1.67-1.91) where the plan made before training
read 2.58-3.03. Under SGDM the plan of the rescaled run reads its
late Δ/Δ* 0.989-1.099 against 0.940-1.120 measured. Controls: under SGDM each holds its quantity within
±20% (corrected decay's Δ/Δ* is the corrected rule's); under AdamW AdamC's λ ∝ η lets the norm grow
((w_ref/‖w‖)² 0.71-0.77) because the growth per step rises 8.7× over the run, while ``track_growth``
holds it at 1.07-1.12; continuous rescaling lets Δ/Δ* rise to 1.28 where its plan holds 0.99 (the same
efficiency drift); rotation holds 1.000. Accuracy: corrected decay helps (paired +1.6 points SGDM, +0.6
AdamW, +0.5 with the growth tracked); rescaling and rotation hurt (-1.6 to -2.3 points): holding Δ at
Δ* ∝ √η keeps the steps larger at the end than the lagging uncontrolled run, which anneals harder.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

import smdyn
from smdyn.schedules import WarmupCosine

WIDTH, DEPTH, D_IN, D_OUT, BATCH = 128, 4, 64, 10, 128
LABEL_NOISE = 0.5  # std of the noise added to the teacher's logits before the argmax
EVAL_SAMPLES = 8192
WINDOW = 100  # the monitor's window (steps): l_estimate and the windowed RMS Δ
WARMUP, FLOOR = 0.05, 0.02  # warm-up fraction of the run; final lr as a fraction of the peak
DROP_AT, DROP_AFTER = 1500, 4000  # the step drop: steps before it (15 relaxation times), steps after
PERCENTS = (50, 90, 100)
FORECAST_AT = (0.5, 0.7)  # fractions of the run at which smdyn.forecast reads the monitor
CONTROLS = ("none", "corrected_decay", "corrected_growth", "rescale", "rotation")
DECOUPLED_ONLY = ("corrected_growth",)  # CorrectedWeightDecay(track_growth=True): refused under SGD
BETA2 = 0.999  # AdamW's β₂ here, and the lag of its normaliser in the budget reading


@dataclass(frozen=True)
class Rule:
    """One update rule: the scale-invariant group's (η, λ, α or β₁), and the other parameters' lr and λ."""

    name: str
    lr: float
    wd: float
    momentum: float
    rest_lr: float
    rest_wd: float

    def optimizer(self, hidden: list[nn.Parameter], rest: list[nn.Parameter]) -> torch.optim.Optimizer:
        groups = [
            {"params": hidden, "lr": self.lr, "weight_decay": self.wd},
            {"params": rest, "lr": self.rest_lr, "weight_decay": self.rest_wd},
        ]
        if self.name == "sgdm":
            return torch.optim.SGD(groups, lr=self.lr, momentum=self.momentum)
        return torch.optim.AdamW(groups, lr=self.lr, betas=(self.momentum, BETA2))


# relaxation time of the norm at the peak: (1 − α)/(2ηλ) = 100 steps (SGDM), 1/(2ηλ) = 250 steps (AdamW)
SGDM = Rule("sgdm", lr=0.1, wd=5e-3, momentum=0.9, rest_lr=0.05, rest_wd=1e-4)
ADAMW = Rule("adamw", lr=4e-3, wd=0.5, momentum=0.9, rest_lr=2e-3, rest_wd=1e-2)


@dataclass
class Run:
    """One training run: per-layer monitor columns as [layers, steps] arrays, and the held-out result."""

    columns: dict[str, np.ndarray]
    lr: np.ndarray  # the scale-invariant group's lr per step
    loss: float
    accuracy: float
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)
    forecasts: dict[float, smdyn.Forecast] = field(default_factory=dict)  # smdyn.forecast at FORECAST_AT


def _model() -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(D_IN, WIDTH), nn.ReLU()]
    for _ in range(DEPTH):
        layers += [nn.Linear(WIDTH, WIDTH, bias=False), nn.LayerNorm(WIDTH), nn.ReLU()]
    layers.append(nn.Linear(WIDTH, D_OUT))
    return nn.Sequential(*layers)


def _batch(teacher: nn.Module, n: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Fresh inputs, noisy labels and the teacher's clean labels."""
    x = torch.randn(n, D_IN, generator=gen)
    with torch.no_grad():
        logits = teacher(x)
    noisy = (logits + LABEL_NOISE * torch.randn(n, D_OUT, generator=gen)).argmax(1)
    return x, noisy, logits.argmax(1)


COLUMNS = (
    "weight_norm",
    "unit_grad_sq",
    "grad_to_weight_ratio",
    "angular_update",
    "angular_update_rms",
    "l_estimate",
    "theory_angular_update",
    "theory_weight_norm",
)


def _per_layer(h: dict[str, np.ndarray], steps: int) -> dict[str, np.ndarray]:
    """Monitor history → {column: [layers, steps]} (NaN where a step has no row)."""
    names = sorted(set(h["param"].tolist()))
    out = {c: np.full((len(names), steps), np.nan) for c in COLUMNS}
    for i, name in enumerate(names):
        sel = h["param"] == name
        idx = h["step"][sel].astype(int)
        for c in COLUMNS:
            out[c][i, idx] = h[c][sel].astype(np.float64)
    return out


def train(rule: Rule, control: str, seed: int, steps: int, multiplier: Callable[[int], float]) -> Run:
    """Train one run under ``multiplier`` (of every group's lr) with one control on the hidden weights."""
    torch.manual_seed(seed)
    model, teacher = _model(), nn.Linear(D_IN, D_OUT)
    hidden = [m.weight for m in model if isinstance(m, nn.Linear) and m.weight.shape == (WIDTH, WIDTH)]
    rest = [p for p in model.parameters() if all(p is not q for q in hidden)]
    opt = rule.optimizer(hidden, rest)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, multiplier)
    monitor = smdyn.SphericalMonitor(model, opt, window=WINDOW, flush_every=500)
    if control == "corrected_decay":
        smdyn.CorrectedWeightDecay(model, opt)
    elif control == "corrected_growth":
        smdyn.CorrectedWeightDecay(model, opt, track_growth=True)
    elif control == "rotation":
        smdyn.RotationController(model, opt)
    warmup = round(WARMUP * steps)
    gen = torch.Generator().manual_seed(1000 + seed)
    loss_fn = nn.CrossEntropyLoss()
    lrs = np.empty(steps)
    forecast_at = {round(f * steps): f for f in FORECAST_AT} if control == "none" else {}
    ahead = {}
    t0 = time.perf_counter()
    for t in range(steps):
        if control == "rescale" and t == warmup:  # from a fresh init: leave the warm-up alone
            smdyn.Rescaler(opt, model=model, mode="continuous")
        if t in forecast_at:  # what the monitor's records say of the rest of the run
            ahead[forecast_at[t]] = smdyn.forecast(monitor, sched, steps - t)
        x, y, _ = _batch(teacher, BATCH, gen)
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        lrs[t] = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
    seconds = time.perf_counter() - t0
    columns = _per_layer(monitor.history(), steps)
    monitor.close()
    x, noisy, clean = _batch(teacher, EVAL_SAMPLES, torch.Generator().manual_seed(10_000 + seed))
    with torch.no_grad():
        out = model(x)
    loss, acc = float(loss_fn(out, noisy)), float((out.argmax(1) == clean).float().mean())
    return Run(columns, lrs, loss, acc, seconds, forecasts=ahead)


# --------------------------------------------------------------------------------------------------
# The planner's predictions for a run


def _schedule(steps: int) -> WarmupCosine:
    return WarmupCosine(steps, round(WARMUP * steps), FLOOR)


def _window(steps: int, lo: float, hi: float) -> slice:
    return slice(round(lo * steps), round(hi * steps))


def predicted_norms(
    rule: Rule,
    run: Run,
    schedule: object,
    use_l: bool,
    numel: list[float] | None = None,
    control: str = "none",
    fixed_l: tuple[float, float] | None = None,
) -> list[smdyn.PlanResult]:
    """One plan per layer, from its measured initial norm (and its measured L_t when ``use_l``); the
    ``rescale`` control as ``train`` builds it: continuous, from the end of the warm-up; ``fixed_l``: L held
    at its mean over that part of the run (what a plan made early in training knows)."""
    c, steps = run.columns, len(run.lr)
    plans = []
    for i in range(c["weight_norm"].shape[0]):
        ell = c["l_estimate"][i]
        ell = np.where(np.isfinite(ell) & (ell > 0), ell, np.nanmedian(ell))
        if fixed_l is not None:
            ell = np.full_like(ell, np.mean(ell[_window(steps, *fixed_l)]))
        plans.append(
            smdyn.plan(
                schedule,
                lr=rule.lr,
                wd=rule.wd,
                momentum=rule.momentum,
                L=(lambda t, e=ell: float(e[t])) if use_l else None,
                steps=steps,
                w0=float(c["weight_norm"][i, 0]),
                optimizer="sgd" if rule.name == "sgdm" else "adamw",
                numel=float(WIDTH * WIDTH) if numel is None else numel[i],
                control=control,
                mode="continuous",
                rescale_from=round(WARMUP * steps),
            )
        )
    return plans


def planned_variants(rule: Rule, run: Run) -> dict[str, list[smdyn.PlanResult]]:
    """The plans compared with a run: SGDM fed the measured L_t; AdamW with the rule's own w* (C = numel),
    and with the norm's scale fitted per layer (C_eff = C·(measured/planned ‖w‖)² over 10–20% of the run)."""
    steps = len(run.lr)
    if rule.name == "sgdm":
        return {
            "L_t measured": predicted_norms(rule, run, _schedule(steps), use_l=True),
            "L fit 10-20%": predicted_norms(rule, run, _schedule(steps), use_l=True, fixed_l=(0.1, 0.2)),
        }
    plain = predicted_norms(rule, run, _schedule(steps), use_l=False)
    fit = _window(steps, 0.1, 0.2)
    scale = [
        float(np.mean(run.columns["weight_norm"][i, fit] / p.runs["none"]["weight_norm"][fit]))
        for i, p in enumerate(plain)
    ]
    numel = [float(round(WIDTH * WIDTH * r * r)) for r in scale]  # the rule takes a whole count
    fitted = predicted_norms(rule, run, _schedule(steps), use_l=False, numel=numel)
    return {"rule's w*": plain, "w* scale fit": fitted}


def _around(steps: int, percent: float) -> slice:
    """The steps averaged for a percent of the run: ±1% around it, the last 2% for 100%."""
    half = max(1, steps // 100)
    if percent >= 100:
        return slice(steps - 2 * half, steps)
    t = round(percent / 100 * (steps - 1))
    return slice(max(0, t - half), min(steps, t + half + 1))


def _ratios(run: Run, w_plan: np.ndarray, first: int = 0) -> list[tuple[float, float]]:
    """(measured, predicted) ‖g‖/‖w‖ at the points of PERCENTS from step ``first``: predicted = measured
    ‖g̃‖ / ``w_plan``² ([layers, steps])."""
    c, steps = run.columns, len(run.lr)
    predicted = np.sqrt(c["unit_grad_sq"]) / w_plan**2
    points = [_around(steps, p) for p in PERCENTS]
    return [
        (float(np.nanmean(c["grad_to_weight_ratio"][:, s])), float(np.nanmean(predicted[:, s])))
        for s in points
        if s.start >= first
    ]


def grad_weight_ratios(run: Run, plans: list[smdyn.PlanResult]) -> list[tuple[float, float]]:
    """:func:`_ratios` of the planned ‖w‖."""
    return _ratios(run, np.stack([p.runs["none"]["weight_norm"] for p in plans]))


def forecast_series(run: Run, at: float, key: str) -> np.ndarray:
    """A series of the forecast made at ``at`` of the run as [layers, steps], NaN before its start."""
    f = run.forecasts[at]
    out = np.full(run.columns["weight_norm"].shape, np.nan)
    for i, name in enumerate(sorted(f.plans)):  # the rows of run.columns, in _per_layer's order
        out[i, f.start : f.end] = f.series(name)[key]
    return out


def forecast_ratios(run: Run, at: float) -> list[tuple[float, float]]:
    """:func:`_ratios` of the norm :func:`smdyn.forecast` gave from the monitor's records at ``at``."""
    return _ratios(run, forecast_series(run, at, "weight_norm"), run.forecasts[at].start)


# --------------------------------------------------------------------------------------------------
# Late-run readings


def _blocks(steps: int, blocks: int = 10) -> list[tuple[int, int]]:
    edges = np.linspace(round(0.8 * steps), steps, blocks + 1).astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))


def late_readings(
    delta_ratio_sq: np.ndarray, norm: np.ndarray, measured: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per block of the last 20%: layer-mean RMS Δ/Δ*, and layer-mean (w_ref/‖w‖)², w_ref each layer's
    mean norm over 10–20% of the run (‖g‖/‖w‖ against ‖g̃‖/w_ref²: 1 while the norm holds), taken from the
    ``measured`` norms where given (a forecast's norms start later)."""
    steps = norm.shape[1]
    source = norm if measured is None else measured
    ref = np.nanmean(source[:, _window(steps, 0.1, 0.2)], axis=1, keepdims=True)
    held = (ref / norm) ** 2
    pairs = _blocks(steps)
    delta = [np.nanmean(np.sqrt(np.nanmean(delta_ratio_sq[:, a:b], axis=1))) for a, b in pairs]
    return np.array(delta), np.array([np.nanmean(held[:, a:b]) for a, b in pairs])


def measured_late(run: Run) -> tuple[np.ndarray, np.ndarray]:
    c = run.columns
    return late_readings((c["angular_update"] / c["theory_angular_update"]) ** 2, c["weight_norm"])


def planned_late(plans: list[smdyn.PlanResult], name: str = "none") -> tuple[np.ndarray, np.ndarray]:
    d = np.stack([p.runs[name]["delta_ratio"] for p in plans])
    return late_readings(d**2, np.stack([p.runs[name]["weight_norm"] for p in plans]))


def forecast_late(run: Run, at: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`late_readings` of the forecast made at ``at`` of the run (its w_ref the run's measured one)."""
    d, w = (forecast_series(run, at, k) for k in ("delta_ratio", "weight_norm"))
    return late_readings(d**2, w, run.columns["weight_norm"])


def planned_rescale(rule: Rule, run: Run, fitted: list[smdyn.PlanResult]) -> list[smdyn.PlanResult]:
    """The rescaled run's plans: its own initial norms (and L_t for SGDM), the element counts of the plans
    ``fitted`` to the uncontrolled run of the same seed."""
    numel = [float(p.settings["numel"]) for p in fitted]
    return predicted_norms(rule, run, _schedule(len(run.lr)), rule.name == "sgdm", numel, control="rescale")


def drop_lags(rule: Rule, run: Run) -> tuple[float, float, float]:
    """(planned lag_10 with the measured L_t, planned with constant L, measured) after the ÷10 drop."""
    c, steps = run.columns, len(run.lr)
    schedule = [(DROP_AT, rule.lr / 10)]
    lags = []
    for use_l in (True, False):
        plans = predicted_norms(rule, run, schedule, use_l)
        lags.append(float(np.mean([p.table()[1]["lag_10"] for p in plans])))
    ratio = np.nanmean(c["angular_update_rms"] / c["theory_angular_update"], axis=0)[DROP_AT:]
    outside = np.flatnonzero(~(np.abs(ratio - 1.0) <= 0.10))
    if outside.size and outside[-1] == steps - DROP_AT - 1:
        return lags[0], lags[1], math.inf
    return lags[0], lags[1], 0.0 if outside.size == 0 else float(outside[-1] + 1)


# --------------------------------------------------------------------------------------------------
# Why the AdamW plan drifts: the step's budget, measured


def adam_budget(rule: Rule, run: Run, blocks: int = 10) -> dict[str, np.ndarray]:
    """Per tenth of the run (layer mean, from the monitor's columns alone), what the plan assumes constant.

    The plan's norm recurrence is ‖w_{t+1}‖² = a²‖w_t‖² + η²·C·ρ_t²·(its one scale), a = 1 − ηλ, with ρ_t²
    = σ_t²/v̂_t the lag of Adam's normaliser (σ_t² = ‖g̃‖²/‖w_t‖², v̂ its bias-corrected β₂-average). Measured:
    ``rho_sq`` (that lag, from the measured ‖g̃‖² and ‖w‖), ``step_sq`` = ‖u⊥‖²/C = (‖w‖·tan Δ/η)²/C,
    ``growth`` = (‖w_{t+1}‖² − a²‖w_t‖²)/(η²C), ``efficiency`` = growth/ρ² (what the plan holds constant) and
    ``corr`` = growth/step_sq: R = 1 + 2Σ aʲρ_j, the steps' correlation sum ((1+β₁)/(1−β₁) = 19 for
    gradients independent from step to step).
    """
    c, lr = run.columns, run.lr
    norm, unit, delta = c["weight_norm"], c["unit_grad_sq"], c["angular_update"]
    size = float(WIDTH * WIDTH)
    sigma = np.nan_to_num(unit / norm**2)
    v, rho = np.zeros(norm.shape[0]), np.empty_like(norm)
    for t in range(norm.shape[1]):
        v = BETA2 * v + (1 - BETA2) * sigma[:, t]
        rho[:, t] = sigma[:, t] * (1 - BETA2 ** (t + 1)) / v
    a = 1.0 - lr * rule.wd
    growth = (norm[:, 1:] ** 2 - a[:-1] ** 2 * norm[:, :-1] ** 2) / (lr[:-1] ** 2 * size)
    step_sq = (norm * np.tan(delta) / lr) ** 2 / size
    per_step = {
        "lr_fraction": np.broadcast_to(lr / rule.lr, norm.shape)[:, :-1],
        "rho_sq": rho[:, :-1],
        "step_sq": step_sq[:, :-1],
        "growth": growth,
        "efficiency": growth / rho[:, :-1],
        "corr": growth / step_sq[:, :-1],
    }
    edges = np.linspace(0, norm.shape[1] - 1, blocks + 1).astype(int)
    return {
        k: np.array([np.nanmean(x[:, lo:hi]) for lo, hi in itertools.pairwise(edges)])
        for k, x in per_step.items()
    }


def part_budget(runs: list[Run]) -> None:
    print("\nWhy the AdamW plan drifts (uncontrolled runs, layer mean, seed mean, per tenth of the run):")
    print("the plan holds growth/ρ² (efficiency) constant; R = growth/(‖u⊥‖²/C) is 19 for independent steps")
    budgets = [adam_budget(ADAMW, r) for r in runs]
    rows = (
        ("lr/peak", "lr_fraction"),
        ("ρ² (v̂ lag)", "rho_sq"),
        ("‖u⊥‖²/C", "step_sq"),
        ("growth/η²C", "growth"),
        ("efficiency", "efficiency"),
        ("R", "corr"),
    )
    for label, key in rows:
        mean = np.mean([b[key] for b in budgets], axis=0)
        print(f"{label:<12}" + " ".join(f"{x:7.3f}" for x in mean))


# --------------------------------------------------------------------------------------------------
# The report


def _range(x: np.ndarray) -> str:
    return f"{np.min(x):.3f}–{np.max(x):.3f}"


def _mean_sd(x: list[float]) -> str:
    return f"{np.mean(x):.4f} ± {np.std(x):.4f}"


def part_one(rules: dict[str, Rule], runs: dict, plans: dict) -> None:
    print("1. ‖g‖/‖w‖ = ‖g̃‖/‖w‖²: measured, and predicted = measured ‖g̃‖ / planned ‖w‖² (layer mean, ±1%")
    print("   of the run around each point, the last 2% for 100%; mean over seeds, range of the ratio)")
    print("rule   plan           point  measured  predicted  predicted/measured")
    for name in rules:
        for variant in plans[name][0]:
            per_seed = [
                grad_weight_ratios(r, p[variant])
                for r, p in zip(runs[name, "none"], plans[name], strict=True)
            ]
            _print_ratios(name, variant, PERCENTS, per_seed)
        for at in FORECAST_AT:
            per_seed = [forecast_ratios(r, at) for r in runs[name, "none"]]
            points = PERCENTS[len(PERCENTS) - len(per_seed[0]) :]
            _print_ratios(name, f"forecast@{round(100 * at)}%", points, per_seed)


def _print_ratios(name: str, variant: str, points: tuple[int, ...], per_seed: list) -> None:
    for k, pc in enumerate(points):
        meas = np.array([s[k][0] for s in per_seed])
        pred = np.array([s[k][1] for s in per_seed])
        q = pred / meas
        print(f"{name:<6} {variant:<14} {pc:>4}%  {meas.mean():8.4f}  {pred.mean():9.4f}  "
              f"{np.mean(q):.3f} ({_range(q)})")  # fmt: skip


def part_two(rules: dict[str, Rule], runs: dict, plans: dict, controls: tuple[str, ...]) -> None:
    print("\n2. Last 20% of training: RMS Δ/Δ* and (w_ref/‖w‖)², range over 10 blocks × seeds of the")
    print("   layer mean. Held-out loss and accuracy: mean ± sd over seeds; paired with the uncontrolled run")
    print("   of the same seed (same init, teacher and batches): Δacc = accuracy − its, mean ± sd")
    print("rule   control          RMS Δ/Δ*     (w_ref/‖w‖)²  held-out loss    accuracy         Δacc")
    for name in rules:
        base = [r.accuracy for r in runs[name, "none"]]
        for control in controls:
            if (name, control) not in runs:
                continue
            rs = runs[name, control]
            late = [measured_late(r) for r in rs]
            d, g = np.concatenate([x[0] for x in late]), np.concatenate([x[1] for x in late])
            acc = [r.accuracy for r in rs]
            paired = [a - b for a, b in zip(acc, base, strict=True)]
            loss = _mean_sd([r.loss for r in rs])
            print(f"{name:<6} {control:<15}  {_range(d):<11}  {_range(g):<12}  {loss}  {_mean_sd(acc)}  "
                  f"{np.mean(paired):+.4f} ± {np.std(paired):.4f}")  # fmt: skip
            variant = "L_t measured" if name == "sgdm" else "w* scale fit"
            if control == "none":
                late = [planned_late(p[variant]) for p in plans[name]]
            elif control == "rescale":
                late = [
                    planned_late(planned_rescale(rules[name], r, p[variant]), "rescaled")
                    for r, p in zip(rs, plans[name], strict=True)
                ]
            if control in ("none", "rescale"):
                d, g = np.concatenate([x[0] for x in late]), np.concatenate([x[1] for x in late])
                print(f"{'':<6} {'planned':<15}  {_range(d):<11}  {_range(g):<12}")
            if control == "none":
                late = [forecast_late(r, FORECAST_AT[-1]) for r in rs]
                d, g = np.concatenate([x[0] for x in late]), np.concatenate([x[1] for x in late])
                label = f"forecast@{round(100 * FORECAST_AT[-1])}%"
                print(f"{'':<6} {label:<15}  {_range(d):<11}  {_range(g):<12}")


def main() -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--steps", type=int, default=5000, help="steps of each warm-up + cosine run")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--controls", nargs="+", default=list(CONTROLS), choices=CONTROLS)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if "none" not in args.controls:
        parser.error("--controls must include none (the planner is compared with it)")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rules = {"sgdm": SGDM, "adamw": ADAMW}
    runs = {(n, c): [train(r, c, s, args.steps, _schedule(args.steps)) for s in range(args.seeds)]
            for n, r in rules.items() for c in args.controls
            if not (n == "sgdm" and c in DECOUPLED_ONLY)}  # fmt: skip
    plans = {n: [planned_variants(r, run) for run in runs[n, "none"]] for n, r in rules.items()}
    part_one(rules, runs, plans)
    part_budget(runs["adamw", "none"])
    drop = train(SGDM, "none", 0, DROP_AT + DROP_AFTER, lambda t: 1.0 if t < DROP_AT else 0.1)
    planned, flat, measured = drop_lags(SGDM, drop)
    print(f"\nSGDM, lr ÷10 at step {DROP_AT}: steps until Δ stays within 10% of the new Δ*: planned "
          f"{planned:.0f} (L_t measured), {flat:.0f} (L constant); measured {measured:.0f} (windowed RMS, "
          f"window {WINDOW})")  # fmt: skip
    part_two(rules, runs, plans, tuple(args.controls))
    print(f"\n{len(runs) * args.seeds + 1} runs, {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
