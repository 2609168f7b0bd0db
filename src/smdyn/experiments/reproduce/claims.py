"""What every experiment of `smdyn reproduce` shares: the verdict, the typed claim, the experiment's
declaration, and the number formats of the claims' sentences."""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smdyn.experiments.rundir import Run

__all__ = ["Claim", "Experiment", "Runs", "Verdict", "finite", "num", "pct", "steps_text"]

Runs = Mapping[str, Sequence[Run]]  # config name -> its runs (one per seed)


class Verdict(str, enum.Enum):
    """How far a claim of the paper held in the runs (written into claims.json as its value)."""

    REPRODUCED = "reproduced"
    PARTLY = "partly"
    NOT_REPRODUCED = "not reproduced"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Claim:
    """One claim of the paper checked by numbers: what was measured, the verdict and why.

    Attributes:
        id: a stable identifier (``thm1_thm3_sgd``, ``lag_after_drop``, ...).
        claim: the claim in one sentence.
        paper: where the paper makes it (theorem, section, figure).
        runs: the runs it was measured in.
        figure: the measurement in one line, with its numbers.
        verdict: the `Verdict`.
        reason: why this verdict, naming the thresholds.
        measured: every number behind it, written to claims.json as it is.
    """

    id: str
    claim: str
    paper: str
    runs: list[str]
    figure: str
    verdict: Verdict
    reason: str
    measured: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The claim as claims.json holds it (the verdict as its text)."""
        return {
            "id": self.id,
            "claim": self.claim,
            "paper": self.paper,
            "runs": list(self.runs),
            "figure": self.figure,
            "verdict": self.verdict.value,
            "reason": self.reason,
            "measured": self.measured,
        }


@dataclass(frozen=True)
class Experiment:
    """One experiment of `smdyn reproduce`: its configs, how ``--quick`` shrinks them, its thresholds (a
    frozen dataclass written whole into claims.json) and the evaluation that turns runs into claims."""

    name: str
    title: str
    configs: tuple[str, ...]
    evaluate: Callable[[Runs], list[Claim]]
    quick_factor: Mapping[str, float]  # scale_steps factor per config for --quick
    thresholds: Any  # a frozen dataclass instance
    seeds: tuple[int, ...] = ()  # () runs each config once with its own seed, in <out>/<config>/
    quick_seeds: tuple[int, ...] = ()
    #: configs that run other seeds than ``seeds`` (full runs only): a claim about one config's seed
    #: spread can have more seeds without multiplying every other config's runs.
    config_seeds: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    #: the experiment's own figures for its report.html, beside the generic ones: called with the runs, the
    #: claims and the figures folder, it writes PNGs there and returns (title, caption, path) per figure.
    figures: Callable[[Runs, Sequence[Claim], Path], list[tuple[str, str, Path]]] | None = None

    def seeds_of(self, config: str, quick: bool) -> tuple[int, ...]:
        """The seeds ``config`` runs with: ``quick_seeds`` under ``--quick``, else its own or ``seeds``."""
        if quick and self.quick_seeds:
            return self.quick_seeds
        return self.config_seeds.get(config, self.seeds)

    def full_runs(self) -> int:
        """How many runs the full experiment trains."""
        return sum(max(1, len(self.seeds_of(name, quick=False))) for name in self.configs)

    def threshold_values(self) -> dict[str, Any]:
        """Every field of the thresholds, tuples as lists (JSON arrays)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self.thresholds).items()
        }


def finite(*xs: Any) -> bool:
    """All arguments are finite numbers (``None`` from a JSON null is not)."""
    return all(isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


def pct(x: float) -> str:
    if not finite(x):
        return "n/a"
    return f"{100 * x:.2f}%" if abs(x) < 0.01 else f"{100 * x:.1f}%"


def num(x: float, spec: str = ".3g") -> str:
    if isinstance(x, float) and math.isinf(x):
        return "never"
    return format(x, spec) if finite(x) else "n/a"


def steps_text(x: float) -> str:
    return "never" if isinstance(x, float) and math.isinf(x) else (f"{x:.0f}" if finite(x) else "n/a")
