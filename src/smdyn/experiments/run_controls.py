"""The controls a training run attaches to its scale-invariant weights, in one place: built from the config's
[rescale] and [control] sections, saved in and restored from the checkpoint, and closed.

- [rescale]: `smdyn.Rescaler` on the monitored weights. With ``after_warmup`` it is built before the first
  step after the warm-up, so its reference lr is the peak: from a fresh initialisation the weights are far
  from the equilibrium of the warm-up's first lr, and following w* ∝ η^p from there would multiply them by
  (peak/lr₀)^p during the warm-up (see `smdyn.rescale`).
- [control] ``corrected_decay``: `smdyn.CorrectedWeightDecay` (``corrected_growth``: with ``track_growth``);
  ``rotation``: `smdyn.RotationController`.
  Both find the scale-invariant weights of the model themselves (`smdyn.find_scale_invariant`).

Every control moves its optimizer hooks to the front, so the monitor measures the step they shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from smdyn.experiments.config import Config

__all__ = ["RunControls"]


class RunControls:
    """The Rescaler (possibly waiting for the end of the warm-up) and the [control] of one run."""

    def __init__(
        self, cfg: Config, optimizer: torch.optim.Optimizer, model: nn.Module, params: Any, example: Any
    ) -> None:
        self.optimizer, self.model, self.params, self.example = optimizer, model, params, example
        self.mode = cfg.rescale.mode
        self.rescale_at: int | None = None
        if cfg.rescale.enabled:
            self.rescale_at = cfg.schedule.warmup if cfg.rescale.after_warmup else 0
        self.rescaler: Any = None
        self.control: Any = None
        kind = cfg.control.kind
        if kind in ("corrected_decay", "corrected_growth"):
            from smdyn.corrected_decay import CorrectedWeightDecay

            self.control = CorrectedWeightDecay(
                model, optimizer, example_batch=example, track_growth=kind == "corrected_growth"
            )
        elif kind == "rotation":
            from smdyn.rotation import RotationController

            self.control = RotationController(model, optimizer, example_batch=example)
        self.before_step(0)

    def before_step(self, step: int) -> None:
        """Build the Rescaler once its first step has come (call before the step's forward pass: finding
        the scale-invariant weights runs the model)."""
        if self.rescaler is None and self.rescale_at is not None and step >= self.rescale_at:
            self._build_rescaler()

    def _build_rescaler(self) -> None:
        from smdyn.rescale import Rescaler

        self.rescaler = Rescaler(
            self.optimizer,
            self.params,
            self.model,
            mode=self.mode,  # type: ignore[arg-type]
            example_batch=self.example,
        )

    def state(self) -> dict[str, Any]:
        """The checkpoint's ``rescaler`` and ``control`` entries (None where there is none)."""
        from smdyn.experiments.train import _to_tensors

        return {
            "rescaler": None if self.rescaler is None else _to_tensors(self.rescaler.state_dict()),
            "control": None if self.control is None else _to_tensors(self.control.state_dict()),
        }

    def load(self, ckpt: Mapping[str, Any], step: int) -> None:
        """Restore `state` from a checkpoint taken at ``step``.

        Raises:
            ValueError: the checkpoint and the config disagree on whether a control is attached.
        """
        saved = ckpt["rescaler"]
        if saved is not None and self.rescaler is None:
            if self.rescale_at is None:
                raise ValueError("the checkpoint was saved with rescaling; cannot resume with it disabled")
            self._build_rescaler()
        if self.rescaler is not None:
            if saved is None:
                raise ValueError("the checkpoint was saved without rescaling; cannot resume with it enabled")
            self.rescaler.load_state_dict(saved)
        control = ckpt.get("control")
        if (control is None) != (self.control is None):
            have = "with" if control is not None else "without"
            raise ValueError(
                f"the checkpoint was saved {have} a [control]; resume with the same [control] kind"
            )
        if self.control is not None:
            self.control.load_state_dict(control)
        if self.rescaler is None and self.rescale_at is not None and step > self.rescale_at:
            raise ValueError("the checkpoint was saved without rescaling; cannot resume with it enabled")

    def rescale_events(self) -> list[dict[str, Any]]:
        """``events.csv`` rows of the rescales applied so far (the Rescaler counts its steps from its
        attachment, at step ``rescale_at`` of the run)."""
        if self.rescaler is None or self.rescale_at is None:
            return []
        return [
            {
                "step": int(e["step"]) + self.rescale_at,
                "kind": "rescale",
                "group": int(e["group"]),
                "lr_before": float(e["lr_before"]),
                "lr_after": float(e["lr_after"]),
                "factor": float(e["factor"]),
            }
            for e in self.rescaler.events
            if e["action"] == "rescaled"
        ]

    def close(self) -> None:
        for c in (self.rescaler, self.control):
            if c is not None:
                c.close()
