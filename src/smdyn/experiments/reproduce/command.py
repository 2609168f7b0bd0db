"""The ``smdyn reproduce`` command line: run an experiment, or write REPRODUCTION.md from finished ones."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from smdyn.experiments.reproduce.markdown import write_reproduction_md
from smdyn.experiments.reproduce.runner import EXPERIMENTS, EXPERIMENTS_BY_NAME, command, reproduce

__all__ = ["add_reproduce_arguments", "reproduce_main"]


def add_reproduce_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``[NAME] [--quick] [--out DIR] [--threads N] [--no-report] [--quiet]
    [--markdown RUN_ROOT ... [--markdown-out PATH]]`` to ``parser``."""
    parser.add_argument(
        "name",
        nargs="?",
        choices=EXPERIMENTS,
        help="the experiment: "
        + ", ".join(f"{e.name} ({e.title})" for e in EXPERIMENTS_BY_NAME.values())
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
            f"smdyn reproduce: interrupted; continue with: {command(args.name, args.quick)} --out {out}",
            file=sys.stderr,
        )
        return 130
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError) as exc:
        print(f"smdyn reproduce: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"done: {out}")
    return 0
