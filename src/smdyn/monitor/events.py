"""Learning-rate events: every 5% move of a group's lr, with the Corollary 3.1 lag to the new equilibrium."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from smdyn import theory
from smdyn._event_log import EventLog
from smdyn.monitor.windows import RESTART
from smdyn.rules import group_lr, rule_for

_log = logging.getLogger("smdyn")


class LrEvents:
    """Watches each param group's learning rate; a continuous schedule logs an event every 5% of change."""

    def __init__(self) -> None:
        self.events = EventLog(owner="smdyn monitor")
        self.last: list[float] = []  # lr at the previous step, per group
        self.ref: list[float] = []  # lr at the last event, per group

    def grow(self, groups: int) -> None:
        """Track groups added with ``add_param_group``."""
        extra = groups - len(self.last)
        self.last += [math.nan] * extra
        self.ref += [math.nan] * extra

    def watch(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        for gi, group in enumerate(optimizer.param_groups):
            lr = group_lr(group)  # every step: one float read; the rule is looked up only for an event
            prev, ref = self.last[gi], self.ref[gi]
            self.last[gi] = lr
            if math.isnan(prev) or lr == prev:
                if math.isnan(ref):
                    self.ref[gi] = lr
                continue
            if not (lr > 0 and ref > 0) or abs(lr / ref - 1) < RESTART:
                continue
            self.ref[gi] = lr
            rule = rule_for(optimizer, group)
            _, wd, mom = rule.hparams(group)
            lag = math.nan  # Corollary 3.1 is derived for plain heavy ball only
            if (
                rule.heavy_ball
                and rule.theory
                and wd > 0
                and 0 <= mom < 1
                and theory.equilibrium_exists(lr, wd, mom)
            ):
                lag = float(theory.steps_to_new_equilibrium(ref / lr, lr, wd, mom))
            self.events.append(
                {"step": step, "group": gi, "lr_before": ref, "lr_after": lr, "steps_to_new": lag}
            )
            shown = "?" if math.isnan(lag) else f"{lag:.0f}"
            _log.info(
                "smdyn: step %d group %d lr %.4g -> %.4g; Corollary 3.1: ~%s steps to the new equilibrium",
                step,
                gi,
                ref,
                lr,
                shown,
            )

    def state(self) -> dict[str, Any]:
        return {
            "last_lr": list(self.last),
            "event_lr": list(self.ref),
            "events": [dict(e) for e in self.events],
            "dropped_events": self.events.dropped,
        }

    def load(self, state: Mapping[str, Sequence[Any]]) -> None:
        self.last = [float(x) for x in state["last_lr"]]
        self.ref = [float(x) for x in state["event_lr"]]
        self.events = EventLog(
            (dict(e) for e in state["events"]),
            dropped=int(state.get("dropped_events", 0)),
            owner="smdyn monitor",
        )
