"""The Sec 4.2 rescaling rule: which learning-rate change gives which weight factor (pure Python).

Wan et al., "Spherical Motion Dynamics", NeurIPS 2021, Sec 4.2: w* ∝ η^¼ for SGD(M) (Thms 1-2), so when
the lr changes by r the equilibrium norm changes by r^¼ (r^½ for AdamW: the exponent is the rule's), and
multiplying the weights by that factor keeps them at equilibrium. The planner (:func:`smdyn.plan`) runs this
rule on a schedule before training and :class:`smdyn.Rescaler` during it, so the two cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["MODES", "LrRule", "check_rule_args"]

MODES = ("drops", "continuous")


def check_rule_args(mode: str, threshold: float, floor: float) -> None:
    """Refuse bad rule settings with a ``ValueError`` naming the setting."""
    if mode not in MODES:
        raise ValueError(f"mode must be 'drops' or 'continuous', got {mode!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
        raise ValueError(f"threshold must be a number in [0, 1), got {threshold!r}")
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor <= 1:
        raise ValueError(f"floor must be a number in [0, 1], got {floor!r}")


@dataclass
class LrRule:
    """Turns one param group's sequence of learning rates into weight factors, following the lr both ways.

    The rule starts at the first positive, finite lr, ``ref_lr`` (a warm-up from 0 starts at its first
    positive step, so nothing is divided by 0). ``target`` is (anchor_lr / ref_lr)^exponent, the closed form
    of the equilibrium law w* ∝ η^exponent, where ``anchor_lr`` is the lr the target was last set from:
    every lr in ``"continuous"`` mode, in ``"drops"`` mode only an lr that moved from the anchor by more
    than ``threshold`` (down: below (1 − threshold)·anchor; up: above anchor / (1 − threshold)). So a
    decrease scales the weights down, an increase (warm-up, restart) scales them back up, and a schedule
    that returns to an earlier lr returns the weights to the factor they had then: nothing ratchets.
    ``applied`` = max(target, floor) is the cumulative factor applied so far; each observation returns the
    factor to apply now, applied_new / applied_old.
    """

    mode: str
    threshold: float
    floor: float
    exponent: float
    last_lr: float | None = None  # last valid lr seen
    ref_lr: float | None = None  # first valid lr: the target is (anchor_lr / ref_lr)^exponent
    anchor_lr: float | None = None  # lr the target was last set from
    target: float = 1.0
    applied: float = 1.0
    invalid: bool = False  # the last lr seen was 0 or non-finite

    def observe(self, lr: float) -> tuple[str, float, float]:
        """Return (action, r, factor) for the lr of this step; factor 1.0 means leave the weights alone.

        r is lr over the last valid lr. Actions: ``start``, ``waiting`` (lr 0 before the first positive
        lr: a warm-up from 0), ``same``, ``ignored`` (within ``threshold`` of the anchor, drops mode),
        ``rescaled``, ``floored`` (the floor took all of it), ``skipped`` (lr 0 or non-finite after the
        start, or non-finite before it; first of a spell), ``still_skipped``.
        """
        if not (math.isfinite(lr) and lr > 0):
            if self.ref_lr is None and lr == 0:
                return "waiting", math.nan, 1.0
            action = "still_skipped" if self.invalid else "skipped"
            self.invalid = True
            return action, math.nan, 1.0
        self.invalid = False
        if self.ref_lr is None or self.last_lr is None or self.anchor_lr is None:
            self.last_lr = self.ref_lr = self.anchor_lr = lr
            return "start", 1.0, 1.0
        r = lr / self.last_lr
        self.last_lr = lr
        if r == 1.0:
            return "same", r, 1.0
        q, keep = lr / self.anchor_lr, 1.0 - self.threshold
        if self.mode == "drops" and keep <= q and q * keep <= 1.0:
            return "ignored", r, 1.0
        self.anchor_lr = lr
        self.target = (lr / self.ref_lr) ** self.exponent
        new = max(self.target, self.floor)
        factor = new / self.applied
        self.applied = new
        return ("rescaled" if factor != 1.0 else "floored"), r, factor

    def state(self) -> dict[str, Any]:
        """Plain values that :meth:`load` restores."""
        return {
            "last_lr": self.last_lr,
            "ref_lr": self.ref_lr,
            "anchor_lr": self.anchor_lr,
            "target": self.target,
            "applied": self.applied,
            "invalid": self.invalid,
        }

    def load(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state`."""
        self.last_lr = None if state["last_lr"] is None else float(state["last_lr"])
        self.ref_lr = None if state["ref_lr"] is None else float(state["ref_lr"])
        anchor = state.get("anchor_lr", state["last_lr"])  # saved before anchors existed: the last lr
        self.anchor_lr = None if anchor is None else float(anchor)
        self.target = float(state["target"])
        self.applied = float(state["applied"])
        self.invalid = bool(state["invalid"])
