"""The monitor columns that synthetic run directories in the tests hold: those the readers of a run
directory use (the others are left out, so the writers stay short)."""

from __future__ import annotations

from smdyn.monitor import COLUMNS

_IGNORED = (
    "effective_lr",
    "grad_cosine",
    "unmoved_fraction",
    "l_estimate",
    "reason_code",
    "grad_to_weight_ratio",
    "theory_grad_to_weight_ratio",
)
RUN_COLUMNS = tuple(c for c in COLUMNS if c not in _IGNORED)
