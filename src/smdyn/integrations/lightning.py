"""Lightning callbacks for smdyn (``pip install smdyn[lightning]``).

Lightning is imported only when a callback is first accessed: ``from smdyn.integrations.lightning import
RescalerCallback`` builds the class then, subclassing ``lightning.pytorch.Callback`` (or the older
``pytorch_lightning.Callback``). Each callback is made by a ``_build_<name>`` function registered in
``_BUILDERS``, so another callback is added the same way.

* ``RescalerCallback``: the Sec 4.2 rescale of scale-invariant weights at learning-rate drops.
* ``SphericalMonitorCallback``: a :class:`smdyn.SphericalMonitor` on the module's optimizer, with a compact
  set of its metrics sent to the trainer's loggers.

Lightning runs forward and backward inside ``optimizer.step(closure)``, after the optimizer's step
pre-hooks, so a pre-hook would see the gradients of the previous step. The rescaler therefore acts in
``on_before_optimizer_step``, which Lightning calls inside that closure, between backward and the step
(after gradient unscaling under mixed precision) — the point where the Sec 4.2 rescale belongs. The
monitor wraps the closure it is handed and measures when the closure returns, i.e. after every
``on_before_optimizer_step`` (rescale and gradient clipping included): it describes the step actually taken.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from smdyn.integrations._callbacks import (
    MonitorOwner,
    close_quietly,
    guarded,
    idle_warning,
    monitor_arguments,
)
from smdyn.integrations._metrics import compact_metrics
from smdyn.monitor import SphericalMonitor

__all__ = ["RescalerCallback", "SphericalMonitorCallback"]  # noqa: F822 (built on first access, by __getattr__)


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
    from smdyn.rescale import Rescaler, check_settings

    class RescalerCallback(pl.Callback):
        """Rescale scale-invariant weights at learning-rate changes (Sec 4.2) in a Lightning run.

        One :class:`smdyn.Rescaler` per optimizer of the module, created at ``on_train_start`` (after
        Lightning has restored the optimizer and scheduler from a checkpoint, so the reference lr is the
        restored one) with ``model=pl_module``, and driven from ``on_before_optimizer_step``. Its state is
        saved in and restored from Lightning checkpoints, so a resumed run sees a drop at the first step
        after the resume too.

        Never aborts ``fit``: bad settings raise when the callback is made; after that, a hook that fails
        (nothing to rescale in the module, a checkpoint state for other optimizers) gives one
        ``RuntimeWarning`` and the callback stays idle until the next ``fit``. The Rescaler itself never
        raises inside the optimizer step either.

        Args:
            params: ``"auto"`` or names resolved against the LightningModule (see :class:`smdyn.Rescaler`).
            **kwargs: passed to :class:`smdyn.Rescaler` (``mode``, ``threshold``, ``floor``, ``momentum``,
                ``force``, ``example_batch``, ``loss_fn``).
        """

        def __init__(self, params: Any = "auto", **kwargs: Any) -> None:
            super().__init__()
            if "hook" in kwargs:
                raise TypeError("RescalerCallback drives the Rescaler itself; do not pass hook")
            check_settings(**kwargs)
            self.params = params if isinstance(params, str) else list(params)
            self.kwargs = kwargs
            self.rescalers: list[Rescaler] = []
            self._pending: list[dict[str, Any]] | None = None
            self._idle = False

        def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
            """A new fit gets a new chance (before Lightning restores a checkpoint into the callback)."""
            if stage == "fit":
                self._idle = False

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self._on_train_start(trainer, pl_module)

        @guarded()
        def _on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.rescalers = [
                Rescaler(_raw(opt), self.params, pl_module, hook=False, **self.kwargs)
                for opt in trainer.optimizers
            ]
            if self._pending is not None:
                self._load(self._pending)

        @guarded()
        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            raw = _raw(optimizer)
            for r in self.rescalers:
                if r.optimizer is raw:
                    r.before_step()

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            close_quietly(self.rescalers)

        @guarded(default=dict)
        def state_dict(self) -> dict[str, Any]:
            return {"rescalers": [r.state_dict() for r in self.rescalers]}

        @guarded()
        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            states = state_dict.get("rescalers")
            if states is None:  # saved by a callback that had gone idle: nothing to restore
                return
            if self.rescalers:
                self._load(states)
            else:  # checkpoint restored before training starts: apply at on_train_start
                self._pending = states

        def _load(self, states: list[dict[str, Any]]) -> None:
            if len(states) != len(self.rescalers):
                raise ValueError(
                    f"checkpoint holds {len(states)} rescaler states, the module has {len(self.rescalers)} "
                    "optimizers"
                )
            for r, s in zip(self.rescalers, states, strict=True):
                r.load_state_dict(s)
            self._pending = None

        def _go_idle(self, hook: str, exc: BaseException) -> None:
            self._idle = True
            close_quietly(self.rescalers)
            idle_warning("RescalerCallback", hook, exc, "rescaling")

    RescalerCallback.__module__ = __name__
    RescalerCallback.__qualname__ = "RescalerCallback"  # Lightning keys checkpoint state by it
    return RescalerCallback


# ------------------------------------------------------------------------------------------ monitor

# Per-weight values sent to the loggers as ``<metric>/<param>``: the names of the Hugging Face callback.


# The body of SphericalMonitorCallback; the class itself, on Lightning's Callback, is made on first access.
class _MonitorCallbackBody(MonitorOwner):
    """Record Spherical Motion Dynamics during ``Trainer.fit``, reported through the trainer's loggers.

    Pass it in ``Trainer(callbacks=[SphericalMonitorCallback()])``. At ``on_train_start`` (after
    ``configure_optimizers``, and after Lightning has restored the optimizer from a checkpoint) it builds
    a :class:`smdyn.SphericalMonitor` on the LightningModule and the torch optimizer behind the trainer's
    first optimizer (Lightning's ``LightningOptimizer`` wrapper is looked through). The monitor hooks that
    optimizer's ``step`` and measures right after the closure Lightning passes to it, so every optimizer
    step is recorded from the gradients and weights it actually uses: after backward, gradient clipping
    and any rescale done in ``on_before_optimizer_step`` (:class:`RescalerCallback`), whatever the order
    of the callbacks. With ``accumulate_grad_batches=k`` the optimizer steps once per k batches, and so
    does the monitor: one record per optimizer step, from the accumulated gradient. After ``fit``,
    ``callback.monitor`` holds the closed monitor with the full ``history()``.

    Logged from ``on_train_batch_end`` with ``pl_module.log_dict(..., on_step=True)`` on the batches that
    ended with an optimizer step and whose ``trainer.global_step`` is a multiple of
    ``trainer.log_every_n_steps`` (the steps at which Lightning writes step metrics to its loggers; the
    logger's step is then the monitor's record step), from the latest record of each monitored weight:

    * ``angular_update/<param>``: Δ_t, the angle between w_t and w_{t+1} (Def 3, Eq 13);
    * ``angular_update_rms/<param>``: the trailing RMS of Δ over the monitor's ``window``, the quantity
      the equilibrium Δ* describes;
    * ``theory_angular_update/<param>``: Δ* = √(2λη/(1+α)) (Thm 3), only where a theory applies;
    * ``weight_norm/<param>``: ‖w_t‖ (Thm 1);
    * ``smdyn/median_rms_ratio``: the median of RMS Δ / Δ* over the weights with a theory;
    * ``smdyn/fraction_in_equilibrium``: the fraction of those within ``tol`` of Δ* over a full window.

    ``<param>`` is the monitored name against the LightningModule (``net.0.weight``) with every
    character other than letters, digits and ``_ . / -`` replaced by ``_``, so that every logger takes it
    (MLflow rejects others): a weight+bias pair ``fc.weight+fc.bias`` is logged as ``fc.weight_fc.bias``.
    With ``granularity="channel"`` each per-weight value is the median over the weight's channels.
    Non-finite values are left out. Lightning logs through float32 tensors (7 significant digits). Each
    logging step flushes the monitor (one transfer to the host), besides its own flush every
    ``flush_every`` recorded steps; give the monitor a sink (:mod:`smdyn.sinks`) to keep every record,
    not only the logged ones.

    ``params="auto"`` finds the scale-invariant weights by tracing the LightningModule's ``forward``
    (:func:`smdyn.find_scale_invariant`); a module that does not define ``forward`` (its
    ``training_step`` calls ``self.net(x)``) cannot be traced, so name the weights instead:
    ``params=["net.0.weight", ...]`` (a warning says so, and the monitor stays idle).

    Checkpoints: Lightning stores ``state_dict()`` (the monitor's step count, Δ and L windows and lr
    tracking, as tensors and plain numbers, so the checkpoint loads with ``weights_only=True``) and gives
    it back on ``fit(ckpt_path=...)``: the resumed monitor continues the step count and windows. A
    checkpoint without that state (or with one for other parameters or another window) resumes with empty
    windows and the step count set to ``trainer.global_step``, with a warning.

    The monitor's ``step`` counts the optimizer steps that ran; it equals ``trainer.global_step`` unless
    the mixed-precision loss scaler skipped some (a warning says so once). Only the first optimizer is
    monitored: with several, pass ``params`` that belong to it. Under DDP/FSDP every rank runs the
    callback (flushes of sharded parameters are collective); the loggers write on rank 0 only.

    Never aborts ``fit``: bad arguments raise when the callback is made (the monitor checks them);
    after that, a hook that fails — nothing to monitor, no optimizer, a model or optimizer the monitor
    cannot handle — gives one ``RuntimeWarning`` and the callback stays idle until the next ``fit``.

    Args:
        params: ``"auto"``, names resolved against the LightningModule, or ``(name, parameter)`` pairs.
        monitor_kwargs: keyword arguments of :class:`smdyn.SphericalMonitor` (``every``, ``sinks``,
            ``flush_every``, ``granularity``, ``window``, ``tol``, ``history_rows``, ``example_batch``,
            ``loss_fn``, ...), as a mapping; or as keywords: ``SphericalMonitorCallback(window=50)``.
            ``sinks`` are closed when ``fit`` ends.
    """

    def __init__(
        self,
        params: str | Iterable[Any] = "auto",
        *,
        monitor_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.monitor: SphericalMonitor | None = None
        self._params, self._kwargs = monitor_arguments(params, monitor_kwargs, kwargs)
        self._pending: dict[str, Any] | None = None  # state loaded before the monitor exists
        self._open = False  # a monitor is attached to the optimizer
        self._idle = False  # a hook failed: nothing more is done until the next fit
        self._tags: dict[str, str] = {}
        self._global_step = -1
        self._step_before: int | None = None
        self._warned_skip = False

    # -------------------------------------------------------------- life cycle

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """A new fit gets a new chance (before Lightning restores a checkpoint into the callback)."""
        if stage == "fit":
            self._idle = False

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Attach the monitor to the (restored) first optimizer; restore its state when resuming."""
        self._close()
        self._on_train_start(trainer, pl_module)

    @guarded()
    def _on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.optimizers:
            raise ValueError("SphericalMonitorCallback: the LightningModule configured no optimizer")
        optimizer = _raw(trainer.optimizers[0])
        if self._params == "auto" and type(pl_module).forward is self._pl.LightningModule.forward:
            _warn(
                "smdyn: params='auto' traces the LightningModule's forward, which it does not define; "
                "name the weights to monitor instead (params=['net.0.weight', ...])"
            )
        self.monitor = SphericalMonitor(pl_module, optimizer, self._params, **self._kwargs)
        self._open = True
        self._tags = {}
        self._global_step = trainer.global_step
        self._step_before = None
        self._warned_skip = False
        pending, self._pending = self._pending, None
        if pending is not None:
            self._restore(pending, trainer.global_step)
        elif trainer.global_step > 0:
            self.monitor.step = trainer.global_step
            _warn(
                f"smdyn: resuming at global step {trainer.global_step} from a checkpoint without "
                "SphericalMonitorCallback state; the Δ and L windows start empty"
            )

    @guarded()
    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        """Note the monitor's step count: a step that never reaches the optimizer leaves it unchanged."""
        if self._open and _raw(optimizer) is self.monitor.optimizer:
            self._step_before = self.monitor.step

    @guarded()
    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """After an optimizer step, at Lightning's logging steps: log the latest values."""
        if not self._open or trainer.global_step == self._global_step:
            return  # no optimizer step in this batch (gradient accumulation)
        self._global_step = trainer.global_step
        self._check_step()
        every = trainer.log_every_n_steps
        if not (every > 0 and (trainer.global_step % every == 0 or trainer.should_stop)):
            return
        metrics = compact_metrics(
            self.monitor.summary(), lambda name: _tag(name, self._tags)
        )  # flushes, on every rank
        if metrics:
            pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        """Flush the last records, remove the optimizer hooks and close the sinks."""
        self._close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Flush what was recorded before the failure, so the sinks hold it."""
        self._close()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Close the monitor at the end of ``fit`` (also after an interrupted one)."""
        if stage == "fit":
            self._close()

    # -------------------------------------------------------------- checkpoints

    @guarded(default=dict)
    def state_dict(self) -> dict[str, Any]:
        """The monitor's state as tensors and plain numbers (Lightning saves it in its checkpoints)."""
        if self.monitor is None or not self.monitor.units:
            return {} if self._pending is None else {"monitor": self._pending}
        return {"monitor": self.monitor.state_dict()}

    @guarded()
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the state for ``on_train_start``: Lightning restores callbacks before training starts."""
        state = state_dict.get("monitor")
        if state is None:
            return
        if self._open:
            self._restore(state, None)
        else:
            self._pending = state

    # -------------------------------------------------------------- internals

    def _restore(self, state: dict[str, Any], global_step: int | None) -> None:
        mon = self.monitor
        try:
            mon.load_state_dict(state)
        except (ValueError, KeyError, TypeError) as exc:
            if global_step is not None:
                mon.step = global_step
            _warn(
                f"smdyn: monitor state in the checkpoint could not be restored ({exc}); the Δ and L "
                "windows start empty"
            )
            return
        if global_step is not None and mon.step != global_step:
            _warn(
                f"smdyn: restored monitor state is at step {mon.step}, the trainer at global step "
                f"{global_step} (steps skipped by the loss scaler are not counted)"
            )

    def _check_step(self) -> None:
        before, self._step_before = self._step_before, None
        mon = self.monitor
        if before is None or self._warned_skip or not mon.units or mon.step != before:
            return
        self._warned_skip = True
        _warn(
            f"smdyn: optimizer step {self._global_step - 1} was not recorded (the loss scaler skipped "
            "it, or the optimizer bypasses torch.optim step hooks); the monitor's step count now lags "
            "trainer.global_step"
        )

    def _close(self) -> None:
        self._close_monitor("close")


def _build_monitor_callback(pl: Any) -> type:
    """``SphericalMonitorCallback``: :class:`_MonitorCallbackBody` on Lightning's ``Callback``."""
    cls = type(
        "SphericalMonitorCallback",
        (_MonitorCallbackBody, pl.Callback),
        {"__module__": __name__, "__doc__": _MonitorCallbackBody.__doc__, "_pl": pl},
    )
    cls.__qualname__ = "SphericalMonitorCallback"  # Lightning keys checkpoint state by the qualified name
    return cls


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=2)


def _tag(name: str, tags: dict[str, str]) -> str:
    """``name`` with the characters loggers reject replaced by ``_``; made unique among ``tags``."""
    if name not in tags:
        tag = base = re.sub(r"[^A-Za-z0-9_./-]", "_", name)
        taken = set(tags.values())
        i = 1
        while tag in taken:
            i += 1
            tag = f"{base}_{i}"
        tags[name] = tag
    return tags[name]


_BUILDERS: dict[str, Callable[[Any], type]] = {
    "RescalerCallback": _build_rescaler_callback,
    "SphericalMonitorCallback": _build_monitor_callback,
}
_BUILT: dict[str, type] = {}


def __getattr__(name: str) -> type:
    """Build a callback class on first access, importing Lightning only then."""
    if name not in _BUILDERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _BUILT:
        _BUILT[name] = _BUILDERS[name](_lightning())
    return _BUILT[name]
