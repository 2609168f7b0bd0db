"""What a training run shows while it runs: a rich progress bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

__all__ = ["TrainingProgress"]


class TrainingProgress:
    """A rich progress bar (loss, accuracy, mean Δ/Δ* over layers, ETA) on a terminal; plain lines at every
    tenth of the run otherwise; nothing when quiet."""

    def __init__(self, name: str, total: int, start: int, *, quiet: bool) -> None:
        self.total, self.quiet = total, quiet
        self._bar: Any = None
        self._next_line = start + max(total // 10, 1)
        self._t0 = time.perf_counter()
        self._start = start
        if quiet or not sys.stdout.isatty():
            return
        try:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
        except ImportError:  # pragma: no cover - depends on the environment
            return
        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}  Δ/Δ* {task.fields[ratio]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self._task = self._bar.add_task(name, total=total, completed=start, loss="-", acc="-", ratio="-")
        self._bar.start()

    def update(self, step: int, loss: float, acc: float, ratio: float) -> None:
        def fmt(x: float, spec: str) -> str:
            return format(x, spec) if math.isfinite(x) else "-"

        if self._bar is not None:
            self._bar.update(
                self._task,
                completed=step,
                loss=fmt(loss, ".4f"),
                acc=fmt(acc, ".3f"),
                ratio=fmt(ratio, ".3f"),
            )
        elif not self.quiet and (step >= self._next_line or step == self.total):
            self._next_line = step + max(self.total // 10, 1)
            rate = (step - self._start) / max(time.perf_counter() - self._t0, 1e-9)
            eta = (self.total - step) / rate if rate > 0 else math.nan
            print(
                f"step {step:>7}/{self.total}  loss {fmt(loss, '.4f')}  acc {fmt(acc, '.3f')}  "
                f"Δ/Δ* {fmt(ratio, '.3f')}  {rate:6.1f} steps/s  ETA {fmt(eta, '.0f')} s",
                flush=True,
            )

    def advance(self, step: int) -> None:
        """Moves the bar only (between rows, where there is nothing new to show)."""
        if self._bar is not None:
            self._bar.update(self._task, completed=step)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
