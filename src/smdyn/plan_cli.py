"""``smdyn plan`` on the command line: parse the schedule, run :func:`smdyn.plan`, write and draw the result.

The run directory holds ``stages.csv`` (one row per stage and variant, :meth:`smdyn.PlanResult.table`),
``series.csv`` (the per-step series, at most ~20 000 rows), ``plan.png`` and ``config.toml`` (the
arguments). matplotlib is imported only to draw.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from smdyn import plan as plan_module
from smdyn.plan import PlanResult, plan

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["add_plan_arguments", "cli_schedule", "plan_main", "plot_plan", "run_plan", "save_plan_plot"]


def add_plan_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``smdyn plan`` options to ``parser`` (an ``argparse`` subparser) and return it."""
    parser.add_argument("--lr", type=float, required=True, help="base learning rate η")
    parser.add_argument(
        "--wd", type=float, required=True, help="weight decay λ (coupled, as torch.optim.SGD)"
    )
    parser.add_argument("--momentum", type=float, default=0.0, help="momentum α (0 for plain SGD)")
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps")
    parser.add_argument(
        "--milestones", type=int, nargs="*", default=[], help="steps at which lr is multiplied by --gamma"
    )
    parser.add_argument("--gamma", type=float, default=0.1, help="factor at each milestone (default 0.1)")
    parser.add_argument("--cosine", action="store_true", help="cosine decay over --steps (after --warmup)")
    parser.add_argument(
        "--eta-min", type=float, default=0.0, help="final lr of --cosine, as a fraction of lr"
    )
    parser.add_argument("--warmup", type=int, default=0, help="linear warm-up steps from lr/warmup to lr")
    parser.add_argument("--L", type=float, default=1.0, help="E‖g̃‖² or E h̃ (only ‖w‖ depends on it)")
    parser.add_argument("--w0", type=float, default=None, help="initial ‖w‖ (default: at equilibrium)")
    parser.add_argument(
        "--rescale", choices=("no", "yes", "both"), default="both", help="with Sec 4.2 rescaling or not"
    )
    parser.add_argument("--mode", choices=("drops", "continuous"), default="drops", help="rescaling mode")
    parser.add_argument("--out", default=None, help="output directory (default: a new folder under runs/)")
    return parser


def cli_schedule(
    steps: int,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    warmup: int = 0,
    cosine: bool = False,
    eta_min: float = 0.0,
) -> Callable[[int], float]:
    """The lr multiplier of step t for the command line's options, after checking them.

    Raises:
        ValueError: naming the option: milestones not strictly increasing within [1, steps), gamma outside
            (0, 1) (each milestone is a drop by k = 1/gamma > 1), warmup outside [0, steps), eta_min
            outside [0, 1].
    """
    ms = [int(m) for m in milestones]
    if any(m < 1 or m >= steps for m in ms) or any(b <= a for a, b in itertools.pairwise(ms)):
        raise ValueError(f"milestones must be increasing steps in [1, steps = {steps}), got {ms}")
    if not (math.isfinite(gamma) and 0.0 < gamma < 1.0):
        raise ValueError(
            f"gamma must be in (0, 1): the lr is multiplied by it at each milestone, got {gamma!r}"
        )
    if not 0 <= warmup < max(steps, 1):
        raise ValueError(f"warmup must be a number of steps in [0, steps = {steps}), got {warmup!r}")
    if not (math.isfinite(eta_min) and 0.0 <= eta_min <= 1.0):
        raise ValueError(f"eta_min must be a fraction of lr in [0, 1], got {eta_min!r}")

    def multiplier(t: int) -> float:
        m = gamma ** sum(t >= s for s in ms)
        if warmup and t < warmup:
            m *= (t + 1) / warmup
        if cosine:
            frac = max(t - warmup, 0) / max(steps - warmup, 1)
            m *= eta_min + (1.0 - eta_min) * 0.5 * (1.0 + math.cos(math.pi * frac))
        return m

    return multiplier


def run_plan(args: argparse.Namespace) -> int:
    """Run ``smdyn plan``: print the table; write stages.csv, series.csv, plan.png and config.toml.

    Returns 0, or 2 (with the reason on stderr) for arguments :func:`smdyn.plan` or the schedule refuse.
    """
    rescale = {"no": False, "yes": True, "both": "both"}[args.rescale]
    try:
        schedule = cli_schedule(
            args.steps, args.milestones, args.gamma, args.warmup, args.cosine, args.eta_min
        )
        result = plan(
            schedule,
            args.lr,
            args.wd,
            args.momentum,
            L=args.L,
            steps=args.steps,
            rescale=rescale,
            mode=args.mode,
            w0=args.w0,
        )
    except (ValueError, TypeError) as exc:
        print(f"smdyn plan: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("runs") / f"plan-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    print(result.to_string())
    _write_stages(result, out / "stages.csv")
    stride = _write_series(result, out / "series.csv")
    settings = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    lines = ["# smdyn plan", "[plan]", *(f"{k} = {_toml(v)}" for k, v in settings.items() if v is not None)]
    (out / "config.toml").write_text("\n".join(lines) + "\n")
    png = save_plan_plot(result, out / "plan.png")
    print(f"wrote {out}: stages.csv, series.csv (every {stride} step(s)), {png.name}, config.toml")
    return 0


def _write_stages(result: PlanResult, path: Path) -> None:
    rows = result.table()
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _write_series(result: PlanResult, path: Path) -> int:
    """Every ``stride``-th step, so long schedules stay ~20 000 rows; returns the stride."""
    stride = max(1, math.ceil(len(result.lr) / 20_000))
    cols: dict[str, NDArray[Any]] = {
        "step": np.arange(len(result.lr)),
        "lr": result.lr,
        "theory_angular_update": result.theory_angular_update,
        "theory_weight_norm": result.theory_weight_norm,
    }
    for name, run in result.runs.items():
        cols[f"angular_update_{name}"] = run["angular_update"]
        cols[f"weight_norm_{name}"] = run["weight_norm"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(cols)
        for t in range(0, len(result.lr), stride):
            writer.writerow([repr(int(c[t])) if k == "step" else repr(float(c[t])) for k, c in cols.items()])
    return stride


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


def plan_main(argv: Sequence[str] | None = None) -> int:
    """``smdyn plan`` as a standalone entry point: parse ``argv`` and run."""
    description = (plan_module.__doc__ or "").splitlines()[0]
    parser = argparse.ArgumentParser(prog="smdyn plan", description=description)
    return run_plan(add_plan_arguments(parser).parse_args(argv))


# --------------------------------------------------------------------------------------------------
# Drawing


def plot_plan(result: PlanResult, axes: Sequence[Axes] | None = None) -> Figure:
    """Draw the learning rate, Δ_t against Δ*_t and ‖w_t‖ against w*_t on three stacked axes.

    Args:
        result: what :func:`smdyn.plan` returned.
        axes: three axes to draw on (lr, angular update, weight norm); default: a new 9×8 in figure.

    Returns:
        The figure the axes belong to.
    """
    if axes is None:
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("plotting a plan needs matplotlib: pip install smdyn[experiments]") from exc
        new = Figure(figsize=(9, 8), layout="constrained")
        FigureCanvasAgg(new)
        axes = new.subplots(3, 1, sharex=True)
    ax_lr, ax_d, ax_w = axes
    steps = np.arange(len(result.lr))
    ax_lr.plot(steps, result.lr, color="black")
    ax_lr.set_yscale("log")
    ax_lr.set_ylabel("lr")
    ax_d.plot(steps, result.theory_angular_update, "k--", label="Δ* (Thm 3)")
    ax_w.plot(steps, result.theory_weight_norm, "k--", label="w* (Thm 2)")
    colors = {"none": "tab:blue", "rescaled": "tab:orange"}
    for name, run in result.runs.items():
        label = "no rescale" if name == "none" else "rescaled (Sec 4.2)"
        ax_d.plot(steps, run["angular_update"], color=colors[name], label=label)
        ax_w.plot(steps, run["weight_norm"], color=colors[name], label=label)
    ax_d.set_yscale("log")
    ax_d.set_ylabel("angular_update Δ_t (rad)")
    ax_w.set_ylabel("weight_norm ‖w_t‖")
    ax_w.set_xlabel("step")
    for ax in (ax_lr, ax_d, ax_w):
        for r in result.stages:
            if r["stage"] > 0 and r["variant"] == next(iter(result.runs)):
                ax.axvline(r["start"], color="grey", lw=0.5, ls=":")
    ax_d.legend(loc="best", fontsize=8)
    ax_w.legend(loc="best", fontsize=8)
    s = result.settings
    ell = "varies" if s["L_varies"] else f"{s['L']:g}"
    fig = ax_lr.get_figure()
    fig.suptitle(f"smdyn plan: λ={s['wd']:g}, α={s['momentum']:g}, L={ell}")
    return fig


def save_plan_plot(result: PlanResult, path: str | Path) -> Path:
    """:func:`plot_plan` saved as a PNG at ``path`` (its folder is created); returns the path."""
    path = Path(path)
    fig = plot_plan(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
