"""``smdyn report``: one self-contained HTML page that compares runs, with paper-style figures.

The page reads only run directories (through :mod:`smdyn.experiments.rundir`; figures by
:mod:`smdyn.experiments.figures`): each run's configuration, a table of per-layer equilibrium statistics
over the last window of its last learning-rate stage, the figures of Wan et al., "Spherical Motion
Dynamics" (NeurIPS 2021) with captions that cite what each one tests, and every ``reason`` the monitor
recorded (no theory for this optimizer, a collapsing unit gradient, a frozen weight, ...) as a warning.
Images are embedded as base64 ``data:`` URIs and the styling is inline, so the
single ``report.html`` can be mailed, archived or opened offline; it has no scripts.

Statistics, per monitored layer, over the last ``window`` recorded steps, within the last LR stage (the
monitor's window, 200 by default; the paper's Fig 3 averages 200 iterations too), defined as in the
runner's ``summary.json`` so the two agree:

- RMS Δ/Δ*: √(mean (Δ_t/Δ*_t)²) — Δ* = √(2λη/(1+α)) is the equilibrium value of √E[Δ²] (Thm 3);
- mean Δ/Δ*: mean Δ_t/Δ*_t, reported beside it (it sits below 1 when ‖g̃‖² varies);
- ‖w‖/w*: √(mean ‖w_t‖² / mean w*_t²), with w* the monitor's exact fixed point of Thm 1 / Thm 2;
- in equilibrium: the monitor's own flag at the last record (|RMS Δ/Δ* − 1| ≤ its tolerance, window full).

Per run, the page reports the median over layers of |RMS Δ/Δ* − 1|, |mean Δ/Δ* − 1| and |‖w‖/w* − 1|,
the fraction of layers in equilibrium and the final test accuracy.
"""

from __future__ import annotations

import argparse
import base64
import html
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from smdyn.experiments import figures as fig
from smdyn.experiments import rundir
from smdyn.experiments._io import atomic_write_text
from smdyn.experiments.figures import highlight_layer
from smdyn.experiments.rundir import Run

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["add_report_arguments", "report_main", "write_report"]

_MAX_LAYER_NAMES = 4  # layers named per warning before "and N more"
_OPEN_TABLE_LAYERS = 16  # per-layer tables longer than this start folded
_TARGET_DELTA = 0.05  # |RMS Δ/Δ* − 1| shown green up to 5%, amber up to 10%
_TARGET_NORM = 0.10  # |‖w‖/w* − 1| shown green up to 10%, amber up to 20%


@dataclass(frozen=True)
class _Figure:
    file: str
    title: str
    caption: str


_FIGURES: tuple[tuple[Any, bool, bool, _Figure], ...] = (
    # (function, takes a layer, needs two runs or more, title and caption)
    (
        fig.angular_update_figure,
        True,
        False,
        _Figure(
            "angular_update.png",
            "Angular update of every layer against Δ*",
            "Angular update Δ_t = ∠(w_t, w_{t+1}) (Def 3, Eq 13), one panel per run. Faint: raw Δ_t; "
            "solid: its RMS over the monitor's trailing window (restarted at each LR change); dashed: "
            "Δ* = √(2λη/(1+α)), the equilibrium value of √E[Δ²] (Thm 3, Eq 14). In equilibrium the solid "
            "lines lie on the dashed one whatever the layer (paper Fig 3(c,f) for one layer, Fig 5(a,b,d,e) "
            "for all). Vertical lines: LR changes (grey) and k^-¼ rescalings (purple).",
        ),
    ),
    (
        fig.angular_update_comparison_figure,
        True,
        True,
        _Figure(
            "angular_update_comparison.png",
            "Angular update of one layer, runs compared",
            "RMS Δ of the highlighted layer in every run (solid) with that run's Δ* (dashed, same colour). "
            "Equal ηλ/(1+α) gives equal Δ*, hence equal equilibrium Δ (Thm 3; paper Fig 4(c,f)); after an "
            "LR drop Δ starts k^-½ below the new Δ* and lags for about ln(k)(1−α)/(2λη) steps unless the "
            "weights are rescaled (Cor 3.1, Sec 4.2; Fig 6(c)).",
        ),
    ),
    (
        fig.weight_norm_figure,
        True,
        False,
        _Figure(
            "weight_norm.png",
            "Weight norm against its equilibrium w*",
            "‖w_t‖ of the highlighted layer (solid) and w* (dashed): the exact fixed point of Thm 1 (SGD) / "
            "Thm 2 (SGDM), (w*)⁴ = Lη/(λ(1−α)(2 − λη/(1+α))), with L the monitor's trailing mean of ‖g̃‖² "
            "or h̃ (paper Fig 3(b,e)). Lower panel: ‖w_t‖/w*; after an LR drop by k the norm must shrink "
            "by k^-¼ to the new equilibrium, which takes the lag of Cor 3.1 (Fig 5(c,f)).",
        ),
    ),
    (
        fig.unit_gradient_figure,
        True,
        False,
        _Figure(
            "unit_gradient.png",
            "Unit gradient ‖g̃‖² and h̃",
            "‖g̃_t‖² = ‖g_t‖²‖w_t‖² (Def 2, Eq 6) and, for runs with momentum, h̃_t (Thm 2) of the "
            "highlighted layer: faint raw, solid 200-step mean, the estimate of L = E‖g̃‖² (E h̃) that sets "
            "w* (paper Fig 3(a,d)). The theorems assume L stays away from 0; a mean falling towards 0 means "
            "the network is memorising its training data and Δ drops below Δ*.",
        ),
    ),
    (
        fig.training_figure,
        False,
        False,
        _Figure(
            "training.png",
            "Training loss and test accuracy",
            "Training loss per step (faint) and its running mean (solid), and test accuracy, runs overlaid; "
            "runs that differ only in seed share a colour (mean solid, min–max band). Larger equilibrium Δ "
            "means higher loss, and momentum lowers Δ but raises the loss (paper Sec 3.2, Fig 4); a test "
            "accuracy that dips only in the second LR stage and not with rescaling is the pseudo "
            "overfitting of Fig 6.",
        ),
    ),
    (
        fig.stage_ratio_figure,
        False,
        False,
        _Figure(
            "stage_ratio.png",
            "Δ/Δ* per layer and learning-rate stage",
            "Left: RMS Δ over the second half of each LR stage divided by that stage's Δ*, one dot per "
            "layer and a box per run; 1 is equilibrium (Thm 3). Without rescaling late stages fall below 1 "
            "because the norm needs ~ln(k)(1−α)/(2λη) steps to shrink (Cor 3.1, Fig 5(a,d)); the k^-¼ "
            "rescaling keeps them at 1 (Sec 4.2, Fig 5(b,e)). Right: the RMS Δ itself (median and IQR over "
            "layers) and Δ* (dashes), which also shows optimizers without a Δ* (Adam, Fig 6(c)).",
        ),
    ),
)


# ---------------------------------------------------------------------------------------------- numbers


@dataclass
class _Stats:
    """A run's per-layer table and the summary numbers the overview compares."""

    layers: pd.DataFrame | None
    window: tuple[int, int] | None
    med_rms: float
    med_mean: float
    med_norm: float
    n_theory: int
    n_eq: int
    n_layers: int
    test_accuracy: float
    last_step: int | None
    records: int = 0  # recorded steps in the window


def _final_test_accuracy(run: Run) -> float:
    t = run.train
    if t is not None and "test_accuracy" in t:
        acc = t["test_accuracy"].to_numpy(dtype=np.float64)
        acc = acc[np.isfinite(acc)]
        if len(acc):
            return float(acc[-1])
    for key in ("final_test_accuracy", "test_accuracy"):
        v = run.summary.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
    return math.nan


def _stats(run: Run, window: int | None) -> _Stats:
    """Per-layer equilibrium statistics over the last ``window`` recorded steps of the last LR stage
    (`rundir.run_equilibrium`, the figures of ``summary.json`` and of the claims)."""
    import pandas as pd

    acc = _final_test_accuracy(run)
    m = run.metrics
    if m is None or not len(m):
        return _Stats(None, None, math.nan, math.nan, math.nan, 0, 0, 0, acc, None)
    e = rundir.run_equilibrium(run, window)
    last = m.groupby("param", observed=True, sort=False).tail(1).set_index("param")["reason"].astype(str)
    table = pd.DataFrame(
        {
            "rms_ratio": e.rms_ratio,
            "mean_ratio": e.mean_ratio,
            "norm_ratio": e.norm_ratio,
            "rms": e.rms_delta,
            "star": e.last_theory_delta,
            "norm": e.last_norm,
            "wstar": e.last_norm_star,
            "in_equilibrium": e.in_equilibrium,
            "reason": [last.get(n, "") for n in e.layers],
        },
        index=pd.Index(e.layers, name="param"),
    )
    return _Stats(
        layers=table,
        window=e.window,
        med_rms=e.median_abs_rms_dev,
        med_mean=e.median_abs_mean_dev,
        med_norm=e.median_abs_norm_dev,
        n_theory=int(np.isfinite(e.rms_ratio).sum()),
        n_eq=int(e.in_equilibrium.sum()),
        n_layers=len(e.layers),
        test_accuracy=acc,
        last_step=e.window[1],
        records=e.records,
    )


def _reason_warnings(run: Run) -> list[tuple[str, str]]:
    """(severity, text) for every distinct ``reason`` the monitor recorded, most frequent first."""
    m = run.metrics
    if m is None:
        return []
    flagged = (m["reason"] != "").to_numpy()
    if not flagged.any():
        return []
    r = m.loc[flagged, ["reason", "param", "step"]].astype({"reason": str, "param": str})
    r["collapse"] = rundir.collapse_flags(m)[flagged]
    r["nonfinite"] = rundir.nonfinite_flags(m)[flagged]
    g = r.groupby("reason", sort=False)
    out = []
    summary = g.agg(count=("step", "size"), first=("step", "min"), last=("step", "max"))
    for reason, row in summary.sort_values("count", ascending=False).iterrows():
        names = [str(p) for p in r.loc[r["reason"] == reason, "param"].unique()]
        shown = ", ".join(n.removesuffix(".weight") for n in names[:_MAX_LAYER_NAMES])
        if len(names) > _MAX_LAYER_NAMES:
            shown += f" and {len(names) - _MAX_LAYER_NAMES} more"
        rows = r["reason"] == reason
        severe = bool(r.loc[rows, "collapse"].any()) or bool(r.loc[rows, "nonfinite"].any())
        severity = "bad" if severe else "warn"
        out.append(
            (
                severity,
                f"{reason} — {len(names)} layer{'s' if len(names) != 1 else ''} ({shown}), "
                f"steps {row['first']}–{row['last']}, {row['count']} records",
            )
        )
    return out


# ---------------------------------------------------------------------------------------------- HTML


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _num(x: float, digits: int = 3) -> str:
    return "–" if not math.isfinite(x) else f"{x:.{digits}f}"


def _pct(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{100 * x:.2f}%"


def _sci(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{x:.3g}"


def _accuracy(x: float) -> str:
    if not math.isfinite(x):
        return "–"
    return f"{100 * x:.2f}%" if x <= 1.0 else f"{x:.2f}"


def _grade(dev: float, target: float) -> str:
    """CSS class of a |ratio − 1|: within ``target`` good, within twice it fair, else poor."""
    if not math.isfinite(dev):
        return "na"
    return "good" if dev <= target else "fair" if dev <= 2 * target else "poor"


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return _sci(v) if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5) else f"{v:g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _chip(colour: str) -> str:
    return f'<span class="chip" style="background:{_e(colour)}"></span>'


def _config_html(config: dict[str, Any]) -> str:
    if not config:
        return '<p class="muted">no config.toml</p>'
    rows = []
    top = {k: v for k, v in config.items() if not isinstance(v, dict)}
    sections = [("", top)] if top else []
    sections += [(k, v) for k, v in config.items() if isinstance(v, dict)]
    for name, values in sections:
        flat = _flatten(values)
        items = " ".join(
            f'<span class="kv"><b>{_e(k)}</b>&nbsp;=&nbsp;{_e(_fmt(v))}</span>' for k, v in flat.items()
        )
        rows.append(f"<tr><th>{_e(name or '(top)')}</th><td>{items or '–'}</td></tr>")
    return f'<table class="config">{"".join(rows)}</table>'


def _summary_html(summary: dict[str, Any]) -> str:
    if not summary:
        return ""
    flat = _flatten(summary)
    items = " ".join(
        f'<span class="kv"><b>{_e(k)}</b>&nbsp;=&nbsp;'
        f"{_e(_sci(v) if isinstance(v, float) else _fmt(v))}</span>"
        for k, v in list(flat.items())[:40]
    )
    return f'<p class="summary"><span class="muted">summary.json:</span> {items}</p>'


def _run_card(run: Run, style: fig.RunStyle, stats: _Stats) -> str:
    window = (
        f"last window: steps {stats.window[0]}–{stats.window[1]}" if stats.window else "no metrics recorded"
    )
    chan = (
        '<p class="muted note">Recorded per output channel and folded per layer here: '
        f"{_e(', '.join(run.per_channel))}"
        " (‖w‖, ‖g̃‖², h̃ and w* exact; Δ as the RMS over channels).</p>"
        if run.per_channel
        else ""
    )
    return (
        f'<div class="card"><h3>{_chip(style.colour)}{_e(run.name)} '
        f'<span class="label">{_e(style.label)}</span></h3>'
        f'<p class="muted path">{_e(run.path)} · {len(run.layers)} monitored layers · {_e(window)}</p>'
        f"{_config_html(run.config)}{_summary_html(run.summary)}{chan}</div>"
    )


def _overview_html(runs: list[Run], styles: list[fig.RunStyle], stats: list[_Stats]) -> str:
    head = (
        "<tr><th>run</th><th>setting</th><th>last step</th><th>median |RMS Δ/Δ* − 1|</th>"
        "<th>median |mean Δ/Δ* − 1|</th><th>median |‖w‖/w* − 1|</th><th>layers in equilibrium</th>"
        "<th>final test accuracy</th></tr>"
    )
    body = []
    for run, st, s in zip(runs, styles, stats, strict=True):
        eq = f"{s.n_eq}/{s.n_layers} ({100 * s.n_eq / s.n_layers:.0f}%)" if s.n_layers else "–"
        theory = "" if s.n_theory == s.n_layers else f' <span class="muted">({s.n_theory} with Δ*)</span>'
        body.append(
            f"<tr><td>{_chip(st.colour)}{_e(run.name)}</td><td>{_e(st.label)}</td>"
            f'<td class="n">{"–" if s.last_step is None else s.last_step}</td>'
            f'<td class="n {_grade(s.med_rms, _TARGET_DELTA)}">{_pct(s.med_rms)}{theory}</td>'
            f'<td class="n">{_pct(s.med_mean)}</td>'
            f'<td class="n {_grade(s.med_norm, _TARGET_NORM)}">{_pct(s.med_norm)}</td>'
            f'<td class="n">{eq}</td><td class="n">{_accuracy(s.test_accuracy)}</td></tr>'
        )
    return f'<table class="data overview"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


def _layers_html(run: Run, style: fig.RunStyle, stats: _Stats) -> str:
    t = stats.layers
    if t is None or not len(t):
        return ""
    head = (
        "<tr><th>layer</th><th>RMS Δ/Δ*</th><th>mean Δ/Δ*</th><th>‖w‖/w*</th><th>RMS Δ</th><th>Δ*</th>"
        "<th>‖w‖</th><th>w*</th><th>equilibrium</th><th>reason</th></tr>"
    )
    rows = []
    for name, r in t.iterrows():
        eq = '<span class="yes">yes</span>' if r["in_equilibrium"] else '<span class="no">no</span>'
        rows.append(
            f"<tr><td>{_e(name)}</td>"
            f'<td class="n {_grade(abs(r["rms_ratio"] - 1), _TARGET_DELTA)}">{_num(r["rms_ratio"])}</td>'
            f'<td class="n">{_num(r["mean_ratio"])}</td>'
            f'<td class="n {_grade(abs(r["norm_ratio"] - 1), _TARGET_NORM)}">{_num(r["norm_ratio"])}</td>'
            f'<td class="n">{_sci(r["rms"])}</td><td class="n">{_sci(r["star"])}</td>'
            f'<td class="n">{_sci(r["norm"])}</td><td class="n">{_sci(r["wstar"])}</td>'
            f'<td class="c">{eq}</td><td class="reason">{_e(r["reason"])}</td></tr>'
        )
    lo, hi = stats.window or (0, 0)
    summary = (
        f"{_chip(style.colour)}<b>{_e(run.name)}</b> — {len(t)} layers, steps {lo}–{hi}: "
        f"median |RMS Δ/Δ* − 1| {_pct(stats.med_rms)}, median |‖w‖/w* − 1| {_pct(stats.med_norm)}, "
        f"{stats.n_eq}/{stats.n_layers} in equilibrium"
    )
    opened = " open" if len(t) <= _OPEN_TABLE_LAYERS else ""
    return (
        f"<details{opened}><summary>{summary}</summary>"
        f'<table class="data layers"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></details>'
    )


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"data:image/png;base64,{data}"


_CSS = """
:root { --ink:#1d2330; --muted:#6b7280; --line:#e5e7eb; --bg:#f7f8fa; --card:#fff; --accent:#2563eb; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
  font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif; }
main { max-width:1240px; margin:0 auto; padding:28px 28px 60px; }
header h1 { font-size:26px; margin:0 0 4px; letter-spacing:-0.01em; }
header p { margin:0; color:var(--muted); }
h2 { font-size:19px; margin:36px 0 12px; padding-bottom:6px; border-bottom:1px solid var(--line); }
h3 { font-size:16px; margin:0 0 4px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:14px 18px;
  margin:12px 0; box-shadow:0 1px 2px rgba(0,0,0,.03); }
.label { font-weight:400; color:var(--muted); margin-left:6px; font-size:14px; }
.muted { color:var(--muted); }
.path { font-size:13px; margin:0 0 8px; word-break:break-all; }
.chip { display:inline-block; width:11px; height:11px; border-radius:3px; margin-right:7px;
  vertical-align:baseline; }
table { border-collapse:collapse; }
table.config { font-size:13px; width:100%; }
table.config th { text-align:left; color:var(--muted); font-weight:600; padding:3px 12px 3px 0;
  vertical-align:top; white-space:nowrap; width:1%; }
table.config td { padding:3px 0; }
.kv { display:inline-block; margin:0 14px 2px 0; white-space:nowrap; }
.kv b { font-weight:600; }
.summary, .note { font-size:13px; margin:8px 0 0; }
table.data { width:100%; background:var(--card); border:1px solid var(--line); border-radius:10px;
  font-size:13.5px; overflow:hidden; }
table.data th { background:#f1f3f6; text-align:left; font-weight:600; padding:8px 10px;
  border-bottom:1px solid var(--line); }
table.data td { padding:6px 10px; border-bottom:1px solid #f0f1f3; }
table.data tbody tr:nth-child(even) td { background:#fafbfc; }
td.n { text-align:right; font-variant-numeric:tabular-nums;
  font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; white-space:nowrap; }
td.c { text-align:center; }
td.reason { color:var(--muted); font-size:12.5px; max-width:360px; }
.good { color:#15803d; } .fair { color:#b45309; } .poor { color:#b91c1c; } .na { color:var(--muted); }
.yes { color:#15803d; font-weight:600; } .no { color:#b91c1c; }
ul.warnings { list-style:none; padding:0; margin:0; }
ul.warnings li { background:#fffbeb; border:1px solid #fde68a; border-left:4px solid #f59e0b;
  border-radius:6px; padding:8px 12px; margin:6px 0; font-size:14px; }
ul.warnings li.bad { background:#fef2f2; border-color:#fecaca; border-left-color:#dc2626; }
ul.warnings li b { margin-right:4px; }
p.ok { background:#f0fdf4; border:1px solid #bbf7d0; border-radius:6px; padding:8px 12px; }
figure { margin:18px 0 30px; background:var(--card); border:1px solid var(--line); border-radius:10px;
  padding:14px; }
figure img { display:block; width:100%; height:auto; }
figcaption { font-size:14px; color:#374151; margin-top:10px; }
figcaption b { color:var(--ink); }
details { margin:10px 0 16px; }
details summary { cursor:pointer; margin-bottom:8px; }
footer { margin-top:40px; font-size:13px; color:var(--muted); }
footer dt { font-weight:600; color:var(--ink); margin-top:6px; }
footer dd { margin:0 0 0 16px; }
"""

_DEFINITIONS = (
    (
        "Δ_t, angular_update",
        "∠(w_t, w_{t+1}), the angle one step turns a scale-invariant weight (Def 3, Eq 13).",
    ),
    (
        "Δ*",
        "√(2λη/(1+α)): the equilibrium value of √E[Δ²] under SGD (α = 0) or SGDM with weight decay λ "
        "(Thm 3).",
    ),
    ("RMS Δ / Δ*", "√(mean Δ_t²) over the window divided by Δ*; 1 in equilibrium. The mean of Δ sits lower."),
    (
        "w*",
        "The equilibrium weight norm, (w*)⁴ = Lη/(λ(1−α)(2 − λη/(1+α))), exact fixed point of Thm 1 (SGD) "
        "and Thm 2 (SGDM), with L = E‖g̃‖² (SGD) or E h̃ (SGDM) estimated by the monitor's trailing mean.",
    ),
    ("‖g̃‖², unit_grad_sq", "‖g_t‖²‖w_t‖²: the gradient of the weight's direction (Def 2, Eq 6)."),
    ("h̃, h_tilde", "(‖g_t‖² + 2α⟨v_{t−1}, g_t⟩)‖w_t‖²: what sets the SGDM equilibrium (Thm 2)."),
    (
        "lag after an LR drop",
        "≈ ln(k)(1−α)/(2λη) steps to the new equilibrium after dividing η by k (Cor 3.1); rescaling the "
        "scale-invariant weights by k^-¼ at the drop removes it (Sec 4.2).",
    ),
)


def _render(
    title: str,
    runs: list[Run],
    styles: list[fig.RunStyle],
    stats: list[_Stats],
    figures: list[tuple[_Figure, Path]],
    warnings_: list[tuple[str, str, str]],
    layer_note: str,
) -> str:
    cards = "".join(_run_card(r, st, s) for r, st, s in zip(runs, styles, stats, strict=True))
    if warnings_:
        items = "".join(
            f'<li class="{_e(sev)}"><b>{_e(name)}:</b> {_e(text)}</li>' for name, sev, text in warnings_
        )
        warn = f'<ul class="warnings">{items}</ul>'
    else:
        warn = '<p class="ok">The monitor recorded no reason to doubt the theory for any layer.</p>'
    figs = "".join(
        f'<figure id="{_e(Path(f.file).stem)}"><img src="{_img(p)}" alt="{_e(f.title)}" '
        f"><figcaption><b>{_e(f.title)}.</b> {_e(f.caption)}</figcaption></figure>"
        for f, p in figures
    )
    layers = "".join(_layers_html(r, st, s) for r, st, s in zip(runs, styles, stats, strict=True))
    defs = "".join(f"<dt>{_e(a)}</dt><dd>{_e(b)}</dd>" for a, b in _DEFINITIONS)
    when = datetime.now().strftime("%Y-%m-%d %H:%M")
    windows = sorted({s.records for s in stats if s.window})
    window_text = ", ".join(f"{w} recorded steps" for w in windows) or "no metrics"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<header>
<h1>{_e(title)}</h1>
<p>Spherical Motion Dynamics (Wan et al., NeurIPS 2021) of {len(runs)} run{"s" if len(runs) != 1 else ""},
generated {_e(when)} by smdyn. {_e(layer_note)}</p>
</header>
<h2>Runs</h2>
{cards}
<h2>Warnings</h2>
{warn}
<h2>Equilibrium at the end of training</h2>
<p class="muted">Per run, over the last window of its last LR stage ({_e(window_text)}): the median over
layers of how far RMS Δ is from Δ* (Thm 3) and ‖w‖ from w* (Thms 1–2), and how many layers the monitor
flags as in equilibrium. Green: within 5% (Δ) or 10% (‖w‖); amber: within 10% / 20%.</p>
{_overview_html(runs, styles, stats)}
<h2>Figures</h2>
{figs or '<p class="muted">No figure could be drawn from these runs.</p>'}
<h2>Per-layer statistics</h2>
{layers or '<p class="muted">No run recorded metrics.</p>'}
<footer>
<h2>Definitions</h2>
<dl>{defs}</dl>
</footer>
</main>
</body>
</html>
"""


# ---------------------------------------------------------------------------------------------- entry


def _default_out(run_dirs: Sequence[Path]) -> Path:
    if len(run_dirs) == 1:
        return Path(run_dirs[0])
    base = Path("runs") / f"report-{datetime.now():%Y%m%d-%H%M%S}"
    out, i = base, 1
    while out.exists():
        out, i = base.with_name(f"{base.name}-{i}"), i + 1
    return out


def write_report(
    run_dirs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str] | None = None,
    title: str | None = None,
    *,
    layer: str | None = None,
    window: int | None = None,
    extra_figures: Sequence[tuple[str, str, str | os.PathLike[str]]] = (),
) -> Path:
    """Writes ``<out>/figures/*.png`` and a self-contained ``<out>/report.html`` comparing the runs.

    Args:
        run_dirs: run directories (each with metrics and/or ``train.csv``, see
            :func:`smdyn.experiments.rundir.load_run`).
        out: where to write; default the run directory itself for one run, else a new
            ``runs/report-<timestamp>/``.
        title: the page's title (default: the run names).
        layer: the layer highlighted in the single-layer figures (a name or prefix such as
            ``layer2.0.conv2``); default the paper's ``layer2.0.conv2`` where present, else the middle one.
        window: recorded steps in the final window of the statistics (default the config's
            ``[monitor] window``, else 200), never reaching back before the last LR change.
        extra_figures: figures drawn elsewhere (an experiment's own), as (title, caption, PNG path); shown
            first, in this order, before the generic figures.

    Returns:
        The path of ``report.html``.

    Raises:
        TypeError, ValueError: a bad argument (named in the message), a run directory without metrics or
            ``train.csv``, a ``layer`` that a run does not monitor, or a malformed ``extra_figures`` item.
        FileNotFoundError: a run directory or an extra figure's file does not exist.
    """
    return _write(run_dirs, out, title, layer, window, extra_figures)[0]


def _extra(extra_figures: Any) -> list[tuple[_Figure, Path]]:
    """``extra_figures`` checked, in the form `_render` draws: (title, caption, path) -> (_Figure, path)."""
    if isinstance(extra_figures, (str, bytes)) or not isinstance(extra_figures, Sequence):
        raise TypeError(
            f"extra_figures must be a sequence of (title, caption, path), got {type(extra_figures).__name__}"
        )
    out = []
    for item in extra_figures:
        ok = isinstance(item, (tuple, list)) and len(item) == 3
        if not ok or not isinstance(item[0], str) or not isinstance(item[1], str):
            raise TypeError(f"extra_figures items must be (title: str, caption: str, path), got {item!r}")
        if not isinstance(item[2], (str, os.PathLike)):
            raise TypeError(f"extra_figures path must be a str or os.PathLike, got {type(item[2]).__name__}")
        path = Path(item[2])
        if not path.is_file():
            raise FileNotFoundError(f"extra_figures: {path} does not exist")
        out.append((_Figure(path.name, item[0], item[1]), path))
    return out


def _write(
    run_dirs: Any, out: Any, title: Any, layer: Any, window: Any, extra_figures: Any = ()
) -> tuple[Path, list[Run], list[_Stats]]:
    if isinstance(run_dirs, (str, os.PathLike)) or not isinstance(run_dirs, Sequence):
        raise TypeError(f"run_dirs must be a sequence of run directories, got {type(run_dirs).__name__}")
    if not run_dirs:
        raise ValueError("run_dirs must name at least one run directory")
    for d in run_dirs:
        if not isinstance(d, (str, os.PathLike)):
            raise TypeError(f"run_dirs must hold str or os.PathLike, got {type(d).__name__}")
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be a str or os.PathLike, got {type(out).__name__}")
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a str, got {type(title).__name__}")
    if layer is not None and not isinstance(layer, str):
        raise TypeError(f"layer must be a str, got {type(layer).__name__}")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"window must be a positive number of steps, got {window!r}")
    extra = _extra(extra_figures)
    paths = [Path(d) for d in run_dirs]
    runs = [fig.load_run(p) for p in paths]
    # An unknown layer is an error before anything is written (it names the run and its layers).
    highlighted = sorted({highlight_layer(r, layer).removesuffix(".weight") for r in runs if r.layers})
    out_dir = Path(out) if out is not None else _default_out(paths)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    styles = fig.run_styles(runs)
    warnings_: list[tuple[str, str, str]] = []
    for r in runs:
        warnings_ += [(r.name, "warn", p) for p in r.problems]
        warnings_ += [(r.name, sev, text) for sev, text in _reason_warnings(r)]
    drawn: list[tuple[_Figure, Path]] = list(extra)
    for fn, takes_layer, needs_two, spec in _FIGURES:
        if needs_two and len(runs) < 2:
            continue
        kwargs = {"layer": layer} if takes_layer else {}
        try:
            drawn.append((spec, fig.save_figure(fn(runs, **kwargs), fig_dir / spec.file)))
        except fig.NoDataError as exc:
            warnings_.append(("report", "warn", f"{spec.title}: not drawn ({exc})"))
    stats = [_stats(r, window) for r in runs]
    note = f"Single-layer figures show {', '.join(highlighted)}." if highlighted else ""
    default_title = " vs ".join(r.name for r in runs) if len(runs) <= 3 else f"Comparison of {len(runs)} runs"
    page = _render(title or default_title, runs, styles, stats, drawn, warnings_, note)
    target = out_dir / "report.html"
    atomic_write_text(target, page)
    return target, runs, stats


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the arguments of ``smdyn report RUN_DIR [RUN_DIR ...] [--out DIR]`` to ``parser``."""
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories to compare")
    parser.add_argument(
        "--out",
        default=None,
        help="output directory (default: the run directory for one run, else a new runs/report-<time>/)",
    )
    parser.add_argument("--title", default=None, help="title of the page (default: the run names)")
    parser.add_argument(
        "--layer",
        default=None,
        help="layer highlighted in single-layer figures (default layer2.0.conv2 or the middle one)",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=None,
        help="recorded steps in the final statistics window (default: the run's monitor window)",
    )


def report_main(args: argparse.Namespace) -> int:
    """Runs ``smdyn report``: writes the report, prints a line per run and where the page is."""
    try:
        path, runs, stats = _write(args.run_dirs, args.out, args.title, args.layer, args.window)
    except (FileNotFoundError, ValueError, TypeError) as exc:
        print(f"smdyn report: {exc}", file=sys.stderr)
        return 2
    for r, s in zip(runs, stats, strict=True):
        print(
            f"  {r.name}: median |RMS Δ/Δ* − 1| {_pct(s.med_rms)}, median |‖w‖/w* − 1| {_pct(s.med_norm)}, "
            f"{s.n_eq}/{s.n_layers} layers in equilibrium, final test accuracy {_accuracy(s.test_accuracy)}"
        )
    print(f"wrote {path} (figures in {path.parent / 'figures'})")
    return 0
