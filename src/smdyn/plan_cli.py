"""``smdyn plan`` on the command line: parse the schedule, run :func:`smdyn.plan`, write and draw the result.

It prints first the answer to "how far out of equilibrium is my run at the end?" (Δ/Δ* and ‖g‖/‖w‖ against
its steady state at the last step, per control), then the stage table and the readings per percent of the
run. The run directory holds ``stages.csv`` (one row per stage and control, :meth:`smdyn.PlanResult.table`),
``progress.csv`` (:meth:`smdyn.PlanResult.progress`), ``series.csv`` (the per-step series, at most ~20 000
rows), ``plan.png`` and ``config.toml`` (the arguments). matplotlib is imported only to draw.
"""

from __future__ import annotations

import argparse
import ast
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
from smdyn import schedules
from smdyn._plan_setup import CONTROLS, OPTIMIZERS
from smdyn.plan import PlanResult, plan

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "NAMED_SCHEDULES",
    "add_plan_arguments",
    "cli_schedule",
    "named_schedule",
    "plan_main",
    "plot_plan",
    "run_plan",
    "save_plan_plot",
]

NAMED_SCHEDULES = ("constant", "warmup_cosine", "warmup_linear", "wsd", "cosine_restarts")


def add_plan_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``smdyn plan`` options to ``parser`` (an ``argparse`` subparser) and return it."""
    parser.add_argument("--lr", type=float, required=True, help="base (peak) learning rate η")
    parser.add_argument(
        "--wd", type=float, required=True, help="weight decay λ (coupled for sgd, decoupled otherwise)"
    )
    parser.add_argument(
        "--momentum",
        type=float,
        default=None,
        help="momentum α or β₁ (default: 0 sgd, 0.9 adamw/lion, 0.95 muon)",
    )
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps")
    parser.add_argument(
        "--schedule",
        default=None,
        help=f"one of {', '.join(NAMED_SCHEDULES)}, or a torch.optim.lr_scheduler class name "
        "(its arguments with --schedule-arg)",
    )
    parser.add_argument(
        "--schedule-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an argument of a torch scheduler named by --schedule (repeatable), e.g. T_max=1000",
    )
    parser.add_argument(
        "--milestones", type=int, nargs="*", default=[], help="steps at which lr is multiplied by --gamma"
    )
    parser.add_argument("--gamma", type=float, default=0.1, help="factor at each milestone (default 0.1)")
    parser.add_argument("--cosine", action="store_true", help="cosine decay over --steps (after --warmup)")
    parser.add_argument("--eta-min", type=float, default=0.0, help="final lr of a decay, as a fraction of lr")
    parser.add_argument("--warmup", type=int, default=0, help="linear warm-up steps from lr/warmup to lr")
    parser.add_argument(
        "--decay", type=float, default=0.2, help="wsd: decay steps (>= 1) or a fraction of --steps (< 1)"
    )
    parser.add_argument(
        "--decay-shape", choices=schedules.DECAY_SHAPES, default="linear", help="wsd: the decay's shape"
    )
    parser.add_argument("--period", type=int, default=None, help="cosine_restarts: first cycle's steps")
    parser.add_argument("--period-mult", type=int, default=1, help="cosine_restarts: cycle growth factor")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="the update rule")
    parser.add_argument("--shape", type=int, nargs=2, default=None, help="muon: the weight's rows, cols")
    parser.add_argument("--numel", type=float, default=None, help="elements of the weight (decoupled rules)")
    parser.add_argument("--beta2", type=float, default=None, help="β₂ of adamw (0.999) or lion (0.99)")
    parser.add_argument("--L", type=float, default=1.0, help="E‖g̃‖² or E h̃ (only ‖w‖ depends on it)")
    parser.add_argument("--w0", type=float, default=None, help="initial ‖w‖ (default: at equilibrium)")
    parser.add_argument(
        "--control",
        nargs="+",
        choices=(*CONTROLS, "all"),
        default=None,
        help="controls to compare (default: none and rescale, as --rescale both)",
    )
    parser.add_argument(
        "--rescale", choices=("no", "yes", "both"), default=None, help="with Sec 4.2 rescaling or not"
    )
    parser.add_argument("--mode", choices=("drops", "continuous"), default="drops", help="rescaling mode")
    parser.add_argument(
        "--rescale-from",
        type=int,
        default=None,
        metavar="STEP",
        help="step the Rescaler is built at (default: the end of the warm-up; 0 rescales through it)",
    )
    parser.add_argument(
        "--reference-lr", type=float, default=None, help="corrected decay's η_max (default: the peak so far)"
    )
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


def named_schedule(args: argparse.Namespace) -> Any:
    """The schedule of the command line: a multiplier callable, or a torch scheduler spec (a mapping).

    Raises:
        ValueError: naming the option, for a bad or conflicting choice.
    """
    name = args.schedule
    if name is not None and name not in NAMED_SCHEDULES:
        if args.milestones or args.warmup or args.cosine:
            raise ValueError(
                f"--schedule {name}: --milestones, --warmup and --cosine apply to the named schedules "
                f"({', '.join(NAMED_SCHEDULES)}); give a torch scheduler's arguments with --schedule-arg"
            )
        return {"name": name, **_schedule_args(args.schedule_arg)}
    if args.schedule_arg:
        raise ValueError("--schedule-arg is for a torch scheduler named by --schedule")
    if name is not None and args.cosine:
        raise ValueError("give --schedule or --cosine, not both")
    base = cli_schedule(args.steps, args.milestones, args.gamma, args.warmup, args.cosine, args.eta_min)
    if name in (None, "constant"):
        return base
    shape: Callable[[int], float]
    if name == "warmup_cosine":
        shape = schedules.WarmupCosine(args.steps, args.warmup, args.eta_min)
    elif name == "warmup_linear":
        shape = schedules.WarmupLinear(args.steps, args.warmup, args.eta_min)
    elif name == "wsd":
        decay = int(args.decay) if args.decay >= 1 and args.decay == int(args.decay) else args.decay
        shape = schedules.Wsd(args.steps, args.warmup, decay, args.decay_shape, args.eta_min)
    else:
        if args.period is None:
            raise ValueError("--schedule cosine_restarts needs --period (the first cycle's steps)")
        shape = schedules.CosineRestarts(args.period, args.period_mult, args.warmup, args.eta_min)
    steps_only = cli_schedule(args.steps, args.milestones, args.gamma)  # the milestones, without warm-up

    def multiplier(t: int) -> float:
        return shape(t) * steps_only(t)

    return multiplier


def _schedule_args(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--schedule-arg must be KEY=VALUE with KEY a name, got {item!r}")
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[key] = text
    return out


def run_plan(args: argparse.Namespace) -> int:
    """Run ``smdyn plan``: print the state at the end and the tables; write the CSVs, plan.png, config.toml.

    Returns 0, or 2 (with the reason on stderr) for arguments :func:`smdyn.plan` or the schedule refuse.
    """
    try:
        schedule = named_schedule(args)
        if args.control is not None and args.rescale is not None:
            raise ValueError("give --control or --rescale, not both (--control rescale is --rescale yes)")
        if args.control is None and args.rescale is None:
            args.rescale = "both"
        rescale = None if args.rescale is None else {"no": False, "yes": True, "both": "both"}[args.rescale]
        result = plan(
            schedule,
            args.lr,
            args.wd,
            args.momentum,
            L=args.L,
            steps=args.steps,
            rescale=rescale,
            control=args.control,
            mode=args.mode,
            rescale_from=args.rescale_from,
            w0=args.w0,
            optimizer=args.optimizer,
            shape=args.shape,
            numel=args.numel,
            beta2=args.beta2,
            reference_lr=args.reference_lr,
        )
    except (ValueError, TypeError) as exc:
        print(f"smdyn plan: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("runs") / f"plan-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    print(result.summary())
    print()
    print(result.to_string())
    _write_rows(result.table(), out / "stages.csv")
    _write_rows(result.progress(), out / "progress.csv")
    stride = _write_series(result, out / "series.csv")
    settings = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    lines = ["# smdyn plan", "[plan]", *(f"{k} = {_toml(v)}" for k, v in settings.items() if v is not None)]
    (out / "config.toml").write_text("\n".join(lines) + "\n")
    png = save_plan_plot(result, out / "plan.png")
    print(
        f"wrote {out}: stages.csv, progress.csv, series.csv (every {stride} step(s)), {png.name}, config.toml"
    )
    return 0


def _write_rows(rows: list[dict[str, Any]], path: Path) -> None:
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
        for key in ("angular_update", "weight_norm", "delta_ratio", "grad_ratio", "lag"):
            cols[f"{key}_{name}"] = run[key]
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
    """Draw the lr, ‖w_t‖ against w*_t, Δ_t/Δ*_t and ‖g‖/‖w‖ over its steady state, one line per control.

    Args:
        result: what :func:`smdyn.plan` returned.
        axes: four axes to draw on (lr, weight norm, Δ/Δ*, ‖g‖/‖w‖ ÷ steady); default: a new 9×10 in figure.

    Returns:
        The figure the axes belong to.
    """
    if axes is None:
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("plotting a plan needs matplotlib: pip install smdyn[experiments]") from exc
        new = Figure(figsize=(9, 10), layout="constrained")
        FigureCanvasAgg(new)
        axes = new.subplots(4, 1, sharex=True)
    ax_lr, ax_w, ax_d, ax_g = axes
    steps = np.arange(len(result.lr))
    ax_lr.plot(steps, result.lr, color="black")
    ax_lr.set_yscale("log")
    ax_lr.set_ylabel("lr")
    ax_w.plot(steps, result.theory_weight_norm, "k--", label="w* (no control)")
    for name, run in result.runs.items():
        color, label = _STYLE.get(name, ("tab:gray", name))
        ax_w.plot(steps, run["weight_norm"], color=color, label=label)
        ax_d.plot(steps, run["delta_ratio"], color=color, label=label)
        ax_g.plot(steps, run["grad_ratio"], color=color, label=label)
    for ax, text in ((ax_d, "Δ_t / Δ*_t"), (ax_g, "‖g‖/‖w‖ ÷ steady state")):
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_ylabel(text)
    ax_w.set_ylabel("weight_norm ‖w_t‖")
    ax_g.set_xlabel("step")
    for ax in (ax_lr, ax_w, ax_d, ax_g):
        for r in result.stages:
            if r["stage"] > 0 and r["variant"] == next(iter(result.runs)) and len(result.stages) < 200:
                ax.axvline(r["start"], color="grey", lw=0.5, ls=":")
    for ax in (ax_w, ax_d):
        ax.legend(loc="best", fontsize=8)
    s = result.settings
    ell = "varies" if s["L_varies"] else f"{s['L']:g}"
    fig = ax_lr.get_figure()
    fig.suptitle(
        f"smdyn plan: {s.get('optimizer', 'sgd')}, λ={s['wd']:g}, momentum {s['momentum']:g}, L={ell}"
    )
    return fig


_STYLE = {
    "none": ("tab:blue", "no control"),
    "rescaled": ("tab:orange", "rescaled (Sec 4.2)"),
    "corrected_decay": ("tab:green", "corrected decay λ·η/η_max"),
    "rotation": ("tab:red", "rotation control"),
}


def save_plan_plot(result: PlanResult, path: str | Path) -> Path:
    """:func:`plot_plan` saved as a PNG at ``path`` (its folder is created); returns the path."""
    path = Path(path)
    fig = plot_plan(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
