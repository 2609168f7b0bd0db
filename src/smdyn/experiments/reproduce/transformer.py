"""``transformer``: rotational equilibrium beyond the paper, in a small character-level GPT
(docs/design.md §6).

Two runs at a constant learning rate with ηλ = 5e-3 (1/(ηλ) = 200 steps, the full runs last 5 000): AdamW on
every weight, and Muon on the hidden matrices with AdamW on embeddings, head and gains. The monitor records
every weight of two or more dimensions: the QK-normalised q/k projections, which are scale-invariant
(found by `smdyn.find_scale_invariant`, as ``params="auto"`` finds them), and all the others, which are not.

Claims, measured over the last ``tail`` of each run (its start at least ``min_relaxations`` / (ηλ) steps in):

1. AdamW: each layer's RMS Δ reaches √(2ηλ(1−β₁)/(1+β₁)) (Kosson et al. 2024, arXiv 2305.17212) within
   ``tol``, (a) for the scale-invariant weights and (b) for the weights that are not. The value is computed
   here from η, λ and β₁ of the records, in float64, not read from the monitor's theory column.
2. Muon: each hidden matrix's RMS Δ reaches the monitor's Δ* (``theory_angular_update``, from
   `smdyn.theory.muon_angular_update`: √((1 − a²)/R_a) ≈ √(2ηλ/R)) within ``tol``; the ratio to √(2ηλ/R)
   with R from `smdyn.theory.muon_decorrelation` is recorded alongside.

A layer's verdict is |RMS Δ / Δ_ref − 1| ≤ ``tol``: "reproduced" when every layer of the group passes,
"partly" when the median over the group does, "not reproduced" otherwise.

Each claim's ``measured`` holds its layers' numbers (``per_layer``: RMS Δ, Δ_ref, their ratio); the Muon
claim also holds those of the matrices AdamW trains in that run (``adamw_trained_per_layer``, against the
monitor's Δ*, not graded). The report's figure (`figures`) draws exactly these ratios, by block and role.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smdyn.experiments.reproduce.claims import Claim, Experiment, Runs, Verdict, finite, num, pct
from smdyn.experiments.reproduce.measures import Series, series, training
from smdyn.experiments.rundir import Run, nanmean, nanmedian

__all__ = [
    "EXPERIMENT",
    "THRESHOLDS",
    "TransformerThresholds",
    "evaluate",
    "figures",
    "layer_ratios",
    "scale_invariant_layers",
]


@dataclass(frozen=True)
class TransformerThresholds:
    """Equilibrium is measured over the last ``tail`` of the records, which must start at least
    ``min_relaxations`` / (ηλ) steps into the run (the norm then sits within e^(−2·min_relaxations) of its
    equilibrium); a layer matches when |RMS Δ / Δ_ref − 1| ≤ ``tol`` (the issue's 10%)."""

    tol: float = 0.10
    tail: float = 0.20
    min_relaxations: float = 2.0


THRESHOLDS = TransformerThresholds()


def scale_invariant_layers(run: Run) -> set[str]:
    """The monitored layers that are scale-invariant, found by `smdyn.find_scale_invariant` on the run's
    model rebuilt from its config (initial weights: invariance is a property of the architecture)."""
    from smdyn.experiments.gpt import gpt
    from smdyn.experiments.text_data import VOCABULARY
    from smdyn.invariance import find_scale_invariant

    model_cfg = run.config.get("model", {})
    if model_cfg.get("name") != "gpt":
        return set()
    length = int(run.config.get("data", {}).get("options", {}).get("length", 64))
    options = {k: v for k, v in model_cfg.get("options", {}).items() if k != "length"}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = gpt(len(VOCABULARY) + 1, length, **options)
        example = torch.randint(0, len(VOCABULARY) + 1, (4, length))
        found = find_scale_invariant(model, example)
    return {p for f in found for p in f.params}


def _window(s: Series, t: TransformerThresholds) -> slice:
    n = len(s.steps)
    return slice(min(n - 1, math.floor((1.0 - t.tail) * n)), n)


def _per_layer(s: Series, ref: np.ndarray, win: slice) -> dict[str, dict[str, float]]:
    rms = np.sqrt(nanmean(s.delta[win] ** 2))
    out = {}
    for name, r, d in zip(s.layers, rms, ref, strict=True):
        ratio = float(r / d) if finite(float(r), float(d)) and d > 0 else math.nan
        out[name] = {"rms_delta": float(r), "reference": float(d), "ratio": ratio}
    return out


def _group(layers: Mapping[str, Mapping[str, float]], names: list[str], tol: float) -> dict[str, Any]:
    """Figures of one group of layers: ratios, their median and extremes, how many are within ``tol``."""
    ratios = [layers[n]["ratio"] for n in names if n in layers]
    devs = [abs(r - 1) for r in ratios if finite(r)]
    return {
        "layers": len(ratios),
        "within_tol": int(sum(d <= tol for d in devs)),
        "median_ratio": nanmedian(ratios),
        "min_ratio": float(min(ratios)) if ratios else math.nan,
        "max_ratio": float(max(ratios)) if ratios else math.nan,
        "median_abs_dev": nanmedian(devs),
        "max_abs_dev": float(max(devs)) if devs else math.nan,
        "per_layer": {n: layers[n] for n in names if n in layers},
    }


def _grade(g: Mapping[str, Any], t: TransformerThresholds, long_enough: bool) -> tuple[Verdict, str]:
    n, ok = g["layers"], g["within_tol"]
    what = (
        f"{ok}/{n} layers within {pct(t.tol)} (median |RMS Δ/Δ_ref − 1| = {pct(g['median_abs_dev'])}, "
        f"largest {pct(g['max_abs_dev'])})"
    )
    if n == 0:
        return Verdict.NOT_REPRODUCED, "no monitored layer in this group"
    if not long_enough:
        return Verdict.PARTLY if ok == n else Verdict.NOT_REPRODUCED, (
            f"{what}; but the window starts before {t.min_relaxations:g}/(ηλ) steps: not yet in equilibrium"
        )
    if ok == n:
        return Verdict.REPRODUCED, what
    if finite(g["median_abs_dev"]) and g["median_abs_dev"] <= t.tol:
        return Verdict.PARTLY, f"{what}: the median layer matches, not every layer"
    return Verdict.NOT_REPRODUCED, what


def _run_figures(run: Run, s: Series, win: slice, t: TransformerThresholds) -> dict[str, Any]:
    lr, wd = nanmedian(s.lr[win].ravel()), nanmedian(s.wd[win].ravel())
    start = int(s.steps[win.start])
    eta_lambda = (
        float(np.nanmax(s.lr[win] * s.wd[win])) if np.isfinite(s.lr[win] * s.wd[win]).any() else math.nan
    )
    tr = training(run)
    return {
        "window": [start, int(s.steps[-1])],
        "lr": lr,
        "weight_decay": wd,
        "relaxations_at_window_start": start * eta_lambda if finite(eta_lambda) else math.nan,
        "long_enough": bool(finite(eta_lambda) and start * eta_lambda >= t.min_relaxations),
        "final_train_loss": tr["train_loss"],
        "final_test_loss": tr["test_loss"],
        "steps": int(s.steps[-1]) + 1,
    }


def _adamw_claims(run: Run, t: TransformerThresholds) -> list[Claim]:
    s = series(run)
    win = _window(s, t)
    lr, wd, b1 = (np.nanmedian(x[win], axis=0) for x in (s.lr, s.wd, s.mom))
    with np.errstate(invalid="ignore"):
        ref = np.sqrt(2.0 * lr * wd * (1.0 - b1) / (1.0 + b1))  # Kosson et al. 2024, float64
    layers = _per_layer(s, ref, win)
    info = _run_figures(run, s, win, t)
    invariant = scale_invariant_layers(run)
    groups = {
        "invariant": [n for n in s.layers if n in invariant],
        "other": [n for n in s.layers if n not in invariant],
    }
    out = []
    for key, label, paper in (
        ("invariant", "scale-invariant weights (QK-normalised q/k projections)", "Kosson et al. 2024, Sec 3"),
        ("other", "weights that are not scale-invariant", "Kosson et al. 2024, Sec 3 and 5"),
    ):
        g = _group(layers, groups[key], t.tol)
        verdict, reason = _grade(g, t, info["long_enough"])
        a, b = info["window"]
        figure = (
            f"AdamW, {label}: RMS Δ / √(2ηλ(1−β₁)/(1+β₁)) median {num(g['median_ratio'])}, range "
            f"{num(g['min_ratio'])}–{num(g['max_ratio'])} over {g['layers']} layers, steps {a}–{b} "
            f"({num(info['relaxations_at_window_start'])}/(ηλ) in); held-out loss "
            f"{num(info['final_test_loss'])} nats/char"
        )
        out.append(
            Claim(
                f"adamw_equilibrium_{key}",
                f"With AdamW at a constant lr, each layer's RMS angular update reaches √(2ηλ(1−β₁)/(1+β₁)) "
                f"within {pct(t.tol)}: {label}",
                paper,
                ["transformer_adamw"],
                figure,
                verdict,
                reason,
                {
                    **info,
                    **g,
                    "reference": "sqrt(2*lr*wd*(1-beta1)/(1+beta1)) from the records' lr, wd, beta1",
                },
            )
        )
    return out


def _simple_muon(s: Series, win: slice, layers: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """RMS Δ / √(2ηλ/R) per layer, R from `smdyn.theory.muon_decorrelation` (when it exists)."""
    from smdyn import theory

    decorrelation = getattr(theory, "muon_decorrelation", None)
    shapes = _layer_shapes(s.run)
    nesterov = bool(s.run.config.get("optim", {}).get("nesterov", True))
    out = {}
    for j, name in enumerate(s.layers):
        shape = shapes.get(name)
        lr, wd, mu = (float(np.nanmedian(x[win, j])) for x in (s.lr, s.wd, s.mom))
        if decorrelation is None or shape is None or not finite(lr, wd, mu) or wd <= 0:
            out[name] = math.nan
            continue
        r = decorrelation(shape, mu, nesterov, lr * wd)
        out[name] = layers[name]["rms_delta"] / math.sqrt(2 * lr * wd / r)
    return out


def _layer_shapes(run: Run) -> dict[str, tuple[int, int]]:
    """(rows, columns) of the hidden matrices of the run's GPT, from its config."""
    m = run.config.get("model", {}).get("options", {})
    d, ratio = int(m.get("width", 128)), int(m.get("mlp_ratio", 4))
    out = {}
    for i in range(int(m.get("depth", 4))):
        for role in ("q", "k", "v", "o"):
            out[f"blocks.{i}.attn.{role}.weight"] = (d, d)
        out[f"blocks.{i}.mlp.fc.weight"] = (ratio * d, d)
        out[f"blocks.{i}.mlp.proj.weight"] = (d, ratio * d)
    return out


def _muon_claim(run: Run, t: TransformerThresholds) -> Claim:
    s = series(run)
    win = _window(s, t)
    star = (
        np.nanmedian(s.star[win], axis=0)
        if np.isfinite(s.star[win]).any()
        else np.full(len(s.layers), np.nan)
    )
    layers = _per_layer(s, star, win)
    info = _run_figures(run, s, win, t)
    matrices = [n for n in s.layers if n in _layer_shapes(run)]
    invariant = scale_invariant_layers(run)
    g = _group(layers, matrices, t.tol)
    simple = _simple_muon(s, win, layers)
    g["simple_ratio"] = {n: simple[n] for n in matrices}
    g["median_simple_ratio"] = nanmedian(simple[n] for n in matrices)
    g["invariant_median_ratio"] = nanmedian(layers[n]["ratio"] for n in matrices if n in invariant)
    g["other_median_ratio"] = nanmedian(layers[n]["ratio"] for n in matrices if n not in invariant)
    g["adamw_trained_per_layer"] = {n: layers[n] for n in s.layers if n not in matrices}
    have_theory = any(finite(layers[n]["reference"]) for n in matrices)
    if have_theory:
        verdict, reason = _grade(g, t, info["long_enough"])
    else:
        verdict, reason = Verdict.NOT_REPRODUCED, "pending theory: the monitor's records carry no Muon Δ*"
    a, b = info["window"]
    figure = (
        f"Muon, {g['layers']} hidden matrices: RMS Δ / Δ* median {num(g['median_ratio'])} (q/k "
        f"{num(g['invariant_median_ratio'])}, others {num(g['other_median_ratio'])}), range "
        f"{num(g['min_ratio'])}–{num(g['max_ratio'])}; RMS Δ / √(2ηλ/R) median "
        f"{num(g['median_simple_ratio'])}; "
        f"steps {a}–{b} ({num(info['relaxations_at_window_start'])}/(ηλ) in); held-out loss "
        f"{num(info['final_test_loss'])} nats/char"
    )
    return Claim(
        "muon_equilibrium",
        "With Muon at a constant lr, each hidden matrix's RMS angular update reaches the monitor's Δ* "
        f"within {pct(t.tol)}",
        "docs/design.md §6 (rotational equilibrium of Muon)",
        ["transformer_muon"],
        figure,
        verdict,
        reason,
        {**info, **g},
    )


def evaluate(runs: Runs, t: TransformerThresholds = THRESHOLDS) -> list[Claim]:
    return [*_adamw_claims(runs["transformer_adamw"][0], t), _muon_claim(runs["transformer_muon"][0], t)]


def layer_ratios(claims: Sequence[Claim | Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Each run's RMS Δ / Δ_ref per layer, as the claims measured it (``per_layer``, and the Muon run's
    ``adamw_trained_per_layer``): config name -> layer -> ratio (NaN where there is no reference).

    Takes `Claim` objects or their dicts as claims.json holds them (a NaN there is ``null``).
    """
    out: dict[str, dict[str, float]] = {}
    for c in claims:
        d = c.to_dict() if isinstance(c, Claim) else c
        measured = d.get("measured") or {}
        if not d.get("runs"):
            continue
        layers = out.setdefault(d["runs"][0], {})
        for key in ("per_layer", "adamw_trained_per_layer"):
            for name, v in (measured.get(key) or {}).items():
                r = v.get("ratio")
                layers[name] = float(r) if finite(r) else math.nan
    return out


_PANEL_TITLES = (
    ("transformer_adamw", "AdamW: RMS Δ / √(2ηλ(1−β₁)/(1+β₁))"),
    ("transformer_muon", "Muon: RMS Δ / Δ* (the monitor's)"),
)


def _caption(t: TransformerThresholds) -> str:
    return (
        f"Every monitored matrix's RMS angular update over the claims' window (the last {pct(t.tail)} of the "
        "records) divided by the reference Δ its claim compares it with: for AdamW √(2ηλ(1−β₁)/(1+β₁)) "
        "(Kosson et al. 2024) from the recorded η, λ, β₁; for Muon the monitor's Δ* "
        "(smdyn.theory.muon_angular_update). These are the per-layer ratios of claims.json. x: the block, "
        "its roles side by side (q, k, v, o, fc, proj); at the right the matrices outside the blocks "
        "(embeddings, head). Colour: the role's group; q and k are QK-normalised, hence scale-invariant, "
        "the others are not. Shaded: 1 ± tol, where a layer counts as matching. In the Muon run the "
        "embeddings and head are trained by AdamW and shown against the monitor's Δ* for AdamW; they are "
        "not part of the Muon claim."
    )


def _qk_norm(runs: Runs, config: str) -> bool:
    found = runs.get(config) or []
    options = found[0].config.get("model", {}).get("options", {}) if found else {}
    return options.get("qk_norm", "layernorm") != "none"


def figures(
    runs: Runs, claims: Sequence[Claim], folder: Path, t: TransformerThresholds = THRESHOLDS
) -> list[tuple[str, str, Path]]:
    """The report's figure of this experiment: RMS Δ / Δ_ref per layer by block and role, one panel per run,
    drawn from the claims' own per-layer numbers. [] when the claims measured no layer.

    Raises:
        NoDataError: no layer has a finite ratio.
    """
    from smdyn.experiments._plotting import save_figure
    from smdyn.experiments.transformer_figures import Panel, layer_ratio_figure

    ratios = layer_ratios(claims)
    windows = {c.runs[0]: c.measured.get("window") for c in claims if c.runs and "window" in c.measured}
    panels = []
    for config, title in _PANEL_TITLES:
        if not ratios.get(config):
            continue
        w = windows.get(config)
        steps = f", steps {w[0]}–{w[1]}" if w else ""
        panels.append(Panel(f"{title}{steps}", ratios[config], _qk_norm(runs, config)))
    if not panels:
        return []
    path = save_figure(layer_ratio_figure(panels, t.tol), Path(folder) / "transformer_layers.png")
    title = f"RMS Δ / Δ_ref per layer, by block and role (band: 1 ± {pct(t.tol)})"
    return [(title, _caption(t), path)]


EXPERIMENT = Experiment(
    "transformer",
    "Rotational equilibrium in a small GPT: AdamW and Muon (beyond the paper)",
    ("transformer_adamw", "transformer_muon"),
    evaluate,
    # 500 steps = 2.5/(ηλ): a smoke test whose window (from step 400 = 2/(ηλ)) is near equilibrium.
    {"transformer_adamw": 0.1, "transformer_muon": 0.1},
    THRESHOLDS,
    figures=figures,
)
