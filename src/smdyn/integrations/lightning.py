"""Lightning callbacks for smdyn (``pip install smdyn[lightning]``).

Lightning is imported only when a callback is first accessed: ``from smdyn.integrations.lightning import
RescalerCallback`` builds the class then, subclassing ``lightning.pytorch.Callback`` (or the older
``pytorch_lightning.Callback``). Each callback is made by a ``_build_<name>`` function registered in
``_BUILDERS``, so another callback is added the same way.

Lightning runs forward and backward inside ``optimizer.step(closure)``, after the optimizer's step
pre-hooks, so a pre-hook would see the gradients of the previous step. The callbacks therefore act in
``on_before_optimizer_step``, which Lightning calls between backward and the step (after gradient
unscaling under mixed precision) — the point where the Sec 4.2 rescale belongs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["RescalerCallback"]  # noqa: F822 (built on first access, by __getattr__)


def _lightning() -> Any:
    """The ``lightning.pytorch`` module (or ``pytorch_lightning``), or an ImportError naming the extra."""
    try:
        import lightning.pytorch as pl
    except ImportError:
        try:
            import pytorch_lightning as pl
        except ImportError as exc:
            raise ImportError(
                "smdyn.integrations.lightning needs Lightning: pip install smdyn[lightning]"
            ) from exc
    return pl


def _raw(optimizer: Any) -> Any:
    """The torch optimizer behind Lightning's ``LightningOptimizer`` wrapper."""
    return getattr(optimizer, "_optimizer", optimizer)


# ----------------------------------------------------------------------------------------- rescaler


def _build_rescaler_callback(pl: Any) -> type:
    from smdyn.rescale import Rescaler

    class RescalerCallback(pl.Callback):
        """Rescale scale-invariant weights at learning-rate changes (Sec 4.2) in a Lightning run.

        One :class:`smdyn.Rescaler` per optimizer of the module, created at ``on_train_start`` (after
        Lightning has restored the optimizer and scheduler from a checkpoint, so the reference lr is the
        restored one) with ``model=pl_module``, and driven from ``on_before_optimizer_step``. Its state is
        saved in and restored from Lightning checkpoints, so a resumed run sees a drop at the first step
        after the resume too.

        Args:
            params: ``"auto"`` or names resolved against the LightningModule (see :class:`smdyn.Rescaler`).
            **kwargs: passed to :class:`smdyn.Rescaler` (``mode``, ``threshold``, ``floor``, ``momentum``,
                ``force``, ``example_batch``, ``loss_fn``).
        """

        def __init__(self, params: Any = "auto", **kwargs: Any) -> None:
            super().__init__()
            if "hook" in kwargs:
                raise TypeError("RescalerCallback drives the Rescaler itself; do not pass hook")
            self.params = params
            self.kwargs = kwargs
            self.rescalers: list[Rescaler] = []
            self._pending: list[dict[str, Any]] | None = None

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.rescalers = [
                Rescaler(_raw(opt), self.params, pl_module, hook=False, **self.kwargs)
                for opt in trainer.optimizers
            ]
            if self._pending is not None:
                self._load(self._pending)

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            raw = _raw(optimizer)
            for r in self.rescalers:
                if r.optimizer is raw:
                    r.before_step()

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            for r in self.rescalers:
                r.close()

        def state_dict(self) -> dict[str, Any]:
            return {"rescalers": [r.state_dict() for r in self.rescalers]}

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            if self.rescalers:
                self._load(state_dict["rescalers"])
            else:  # checkpoint restored before training starts: apply at on_train_start
                self._pending = state_dict["rescalers"]

        def _load(self, states: list[dict[str, Any]]) -> None:
            if len(states) != len(self.rescalers):
                raise ValueError(
                    f"checkpoint holds {len(states)} rescaler states, the module has {len(self.rescalers)} "
                    "optimizers"
                )
            for r, s in zip(self.rescalers, states, strict=True):
                r.load_state_dict(s)
            self._pending = None

    RescalerCallback.__module__ = __name__
    RescalerCallback.__qualname__ = "RescalerCallback"  # Lightning keys checkpoint state by it
    return RescalerCallback


# ------------------------------------------------------------------------------------------ lookup

_BUILDERS: dict[str, Callable[[Any], type]] = {"RescalerCallback": _build_rescaler_callback}
_BUILT: dict[str, type] = {}


def __getattr__(name: str) -> type:
    """Build a callback class on first access, importing Lightning only then."""
    if name not in _BUILDERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _BUILT:
        _BUILT[name] = _BUILDERS[name](_lightning())
    return _BUILT[name]
