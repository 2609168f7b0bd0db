"""The ``smdyn`` command: ``theory`` prints closed forms, ``demo`` trains and monitors a network.

Exit codes: 0 done, 1 a training run diverged, 2 bad input (a file, config, checkpoint or number; the
one-line message names it), 130 interrupted. Bad input is turned into exit code 2 in one place, ``main``,
for the narrow set of exception types that mean bad input (``_INPUT_ERRORS``); anything else is a bug in
smdyn and keeps its traceback.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from smdyn import theory

#: Exceptions that mean the input (a path, a config, a checkpoint, a number) is wrong, not smdyn.
_INPUT_ERRORS: tuple[type[Exception], ...] = (
    ValueError,  # includes UnicodeDecodeError, TOML and JSON decode errors
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)
#: Entries of a checkpoint written by ``smdyn train`` that resuming cannot do without.
_CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "monitor", "step")


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return value


def _positive(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _drop_factor(text: str) -> float:
    value = _number(text)
    if value <= 1:
        raise argparse.ArgumentTypeError(
            f"a drop factor k divides the learning rate, so it must be > 1, got {text}"
        )
    return value


def _count(low: int) -> Callable[[str], int]:
    """An argparse type for an integer >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
        return value

    return parse


def _theory(args: argparse.Namespace) -> int:
    if args.optimizer is not None:
        from smdyn import theory_cli

        return theory_cli.run(args)
    if args.momentum is None:
        args.momentum = 0.0
    try:
        values = theory.summary(args.lr, args.wd, args.momentum, L=args.L, drop=args.drop)
    except ValueError as exc:
        print(f"smdyn theory: {exc}", file=sys.stderr)
        return 2
    rule = "SGD" if args.momentum == 0 else f"SGD with momentum {args.momentum:g}"
    print(f"{rule}, lr η = {args.lr:g}, weight decay λ = {args.wd:g}  (Wan et al. 2021)")
    labels = {
        "angular_update": "equilibrium angular update Δ* = √(2λη/(1+α))  [Thm 3]",
        "weight_norm": "equilibrium weight norm w*  [Thm 1-2, exact fixed point]",
        "approach_factor_bound": "per-step factor of the approach bound  [Eq 8 / 12]",
        "contraction_factor": "per-step contraction of |‖w‖² − w*²| (linearised)",
        "steps_to_new_equilibrium": "steps to the new equilibrium after the drop  [Cor 3.1]",
        "angular_update_after_drop": "Δ* after the drop",
        "relative_angular_update_after_drop": "Δ/Δ*_new right after the drop (k^-½)",
        "rescale_factor": "rescale scale-invariant weights by k^-¼ at the drop  [Sec 4.2]",
    }
    for key, value in values.items():
        label = labels.get(key, key)
        print(f"  {label:<62} {value:.6g}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from smdyn.experiments.demo import run_demo

    run_demo(steps=args.steps, out=args.out, seed=args.seed, threads=args.threads)
    return 0


def _train(args: argparse.Namespace) -> int:
    """``smdyn train``; a damaged ``--resume`` checkpoint is bad input (exit 2), named by ``train``."""
    from smdyn.experiments.train import train_main

    return int(train_main(args))


def _report(args: argparse.Namespace) -> int:
    """``smdyn report``; each run's metrics.csv is checked first, so a file that is not metrics is named."""
    from smdyn.experiments.report import report_main
    from smdyn.sinks import csv_columns

    for run_dir in args.run_dirs:
        path = Path(run_dir) / "metrics.csv"
        if path.exists():
            columns = csv_columns(path)  # reads the first line only; ValueError naming the file
            missing = [c for c in ("step", "param") if c not in columns]
            if missing:
                raise ValueError(
                    f"{path} is not a metrics file: it has no {' or '.join(missing)} column "
                    f"(its first line reads {', '.join(columns[:6])}{', ...' if len(columns) > 6 else ''})"
                )
    return int(report_main(args))


def _default_out(kind: str) -> Path:
    return Path("runs") / f"{kind}-{datetime.now():%Y%m%d-%H%M%S}"


def _simulate(args: argparse.Namespace) -> int:
    from smdyn.experiments.simulation_report import write_simulation_report

    out = Path(args.out) if args.out else _default_out("simulate")
    path = write_simulation_report(out, quick=args.quick, progress=print)
    print(f"wrote {path} and its figures in {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand (kept separate so tests can inspect it)."""
    parser = argparse.ArgumentParser(prog="smdyn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("theory", help="print the equilibrium values for given hyper-parameters")
    p.add_argument("--lr", type=_positive, required=True, help="learning rate η")
    p.add_argument("--wd", type=float, required=True, help="weight decay λ (coupled, as torch.optim.SGD)")
    p.add_argument(
        "--momentum",
        type=float,
        default=None,
        help="momentum α, or β₁ (AdamW, RAdam, Lion), μ (Muon); default: 0 for SGD, else the optimizer's own",
    )
    p.add_argument("--L", type=_positive, default=None, help="E‖g̃‖² (SGD) or E h̃ (SGDM), for w*")
    p.add_argument("--drop", type=_drop_factor, default=None, help="a learning-rate drop factor k > 1")
    from smdyn import theory_cli

    theory_cli.add_arguments(p)
    p.set_defaults(func=_theory)

    p = sub.add_parser("demo", help="train a small BatchNorm CNN on mnist1d with the monitor attached")
    p.add_argument("--steps", type=_count(1), default=6000, help="optimizer steps (default 6000)")
    p.add_argument("--out", default=None, help="run directory (default: a new folder under runs/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_count(0), default=2, help="torch CPU threads (0: torch's default)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("simulate", help="check the theorems against simulated SMD; writes a report")
    p.add_argument("--out", default=None, help="output directory (default: a new folder under runs/)")
    p.add_argument("--quick", action="store_true", help="a small grid that runs in seconds")
    p.set_defaults(func=_simulate)

    from smdyn.plan_cli import add_plan_arguments, run_plan

    p = sub.add_parser(
        "plan", help="predict Δ/Δ*, ‖g‖/‖w‖ and lags for any schedule, update rule and control"
    )
    add_plan_arguments(p)
    p.set_defaults(func=run_plan)

    from smdyn.experiments.report import add_report_arguments
    from smdyn.experiments.reproduce import add_reproduce_arguments, reproduce_main
    from smdyn.experiments.train import add_train_arguments

    p = sub.add_parser("reproduce", help="run one of the paper's experiments (or all) and check its claims")
    add_reproduce_arguments(p)
    p.set_defaults(func=reproduce_main)

    p = sub.add_parser("train", help="train a model from a TOML config with the monitor attached")
    add_train_arguments(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("report", help="paper-style figures and a self-contained report.html comparing runs")
    add_report_arguments(p)
    p.set_defaults(func=_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``smdyn`` console script; returns the exit code (see the module docstring)."""
    args = build_parser().parse_args(argv)  # bad options and numbers: argparse's message, exit code 2
    try:
        return int(args.func(args))
    except _INPUT_ERRORS as exc:
        print(f"smdyn {args.command}: {_one_line(exc)}", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line (a path in it stays whole)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


if __name__ == "__main__":
    raise SystemExit(main())
