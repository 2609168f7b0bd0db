"""``smdyn demo``: watch a BatchNorm network reach Spherical Motion Dynamics equilibrium in about a minute.

Runs the shipped ``demo.toml`` config through the training runner: a 1-D BatchNorm CNN trained with
SGD-momentum and weight decay on mnist1d (Greydanus 2020), generated locally and never downloaded, with
:class:`smdyn.SphericalMonitor` attached. 48 000 training samples are enough that the network does not
memorise them in the run, so the unit gradient stays away from zero, which the theorems need. At the end
it writes the run directory and ``report.html``, and prints, per scale-invariant layer, the RMS angular update
over the last 200 steps against Δ* = √(2λη/(1+α)) (Thm 3) and the weight norm against w* (Thm 2).
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any


def _fmt(x: Any, spec: str = ".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def print_layers(summary: dict[str, Any]) -> None:
    """Per-layer equilibrium table of a run's ``summary.json``: RMS and mean Δ/Δ*, ‖w‖/w*."""
    header = ("layer", "RMS Δ/Δ*", "mean Δ/Δ*", "‖w‖/w*", "Δ*", "in equilibrium", "note")
    body = [
        (
            name,
            _fmt(v["angular_update_rms_ratio"]),
            _fmt(v["angular_update_mean_ratio"]),
            _fmt(v["weight_norm_ratio"]),
            _fmt(v["theory_angular_update"], ".3g"),
            "yes" if v["in_equilibrium"] == 1 else "no",
            str(v.get("reason", ""))[:60],
        )
        for name, v in summary.get("layers", {}).items()
    ]
    title = (
        f"{summary.get('name', 'run')}: {summary.get('steps')} steps, "
        f"test accuracy {_fmt(summary.get('final_test_accuracy'))}"
    )
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich ships with the experiments extra
        print(title)
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
        for line in (header, *body):
            print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))
        return
    table = Table(title=title)
    for h in header:
        table.add_column(h, justify="left" if h in ("layer", "note") else "right")
    for b in body:
        table.add_row(*b)
    Console().print(table)


def run_demo(steps: int = 6000, out: str | Path | None = None, seed: int = 0, threads: int = 2) -> Path:
    """Train the demo config, write its run directory and report, print the per-layer table."""
    from smdyn.experiments.config import load_config
    from smdyn.experiments.report import write_report
    from smdyn.experiments.train import train

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    overrides = [f"run.steps={steps}", f"run.seed={seed}", f"run.threads={threads}"]
    cfg = load_config("demo", overrides)
    run_dir = Path(out) if out is not None else Path("runs") / f"demo-{datetime.now():%Y%m%d-%H%M%S}"
    train(cfg, out_dir=run_dir)
    report = write_report([run_dir])
    summary = json.loads((run_dir / "summary.json").read_text())
    print_layers(summary)
    print(
        f"median over layers: |RMS Δ/Δ* − 1| = {_fmt(summary.get('median_angular_update_rms_deviation'))}, "
        f"|‖w‖/w* − 1| = {_fmt(summary.get('median_weight_norm_deviation'))}"
    )
    print(f"run directory: {run_dir}\nreport: {report}")
    return run_dir
