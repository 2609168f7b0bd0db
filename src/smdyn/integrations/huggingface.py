"""Hugging Face ``Trainer`` integration: a ``TrainerCallback`` that runs a :class:`~smdyn.SphericalMonitor`.

The monitor measures, per scale-invariant weight and optimizer step, the angular update Δ_t (Def 3, Eq 13),
the weight norm (Thm 1) and the unit gradient (Def 2, Eq 6), and compares the trailing RMS of Δ with the
equilibrium Δ* = √(2λη/(1+α)) (Thm 3). This module wires it into ``transformers.Trainer``:

* the monitor is built in ``on_train_begin`` from the model and optimizer the Trainer created (or at the
  first ``on_pre_optimizer_step`` if the optimizer appears later), and attaches to the optimizer's own step
  hooks, so every step that reaches the optimizer is measured;
* at each logging step ``on_log`` adds a compact set of the latest values to the Trainer's logs;
* ``on_save`` stores the monitor's windows next to the checkpoint, and a resumed run reloads them;
* ``on_train_end`` flushes, removes the hooks and closes the sinks.

Importing this module needs ``transformers`` (``pip install smdyn[huggingface]``); nothing else in smdyn
imports it.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from smdyn.integrations._callbacks import (
    MonitorOwner,
    close_quietly,
    guarded,
    monitor_arguments,
)
from smdyn.integrations._metrics import compact_metrics
from smdyn.monitor import SphericalMonitor

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "smdyn.integrations.huggingface needs transformers: pip install smdyn[huggingface]"
    ) from exc

__all__ = ["SphericalMonitorCallback"]

_log = logging.getLogger("smdyn")

#: File written into each ``checkpoint-<step>`` folder; read back with ``torch.load(weights_only=True)``.
_STATE_FILE = "smdyn_monitor.pt"

# Per-weight values put into the Trainer's logs as ``<metric>/<param>``.


class SphericalMonitorCallback(MonitorOwner, TrainerCallback):
    """Record Spherical Motion Dynamics during ``Trainer.train()`` and report them through the Trainer's logs.

    Pass it in ``Trainer(..., callbacks=[SphericalMonitorCallback()])``. After training,
    ``callback.monitor`` holds the (closed) :class:`~smdyn.SphericalMonitor` with the full ``history()``.

    Logged at each logging step (``args.logging_steps``), from the latest record of each monitored weight:
    ``angular_update/<param>`` (Δ_t), ``angular_update_rms/<param>`` (trailing RMS of Δ, the quantity Δ* is
    the equilibrium of), ``theory_angular_update/<param>`` (Δ*, Thm 3, only where a theory applies),
    ``weight_norm/<param>`` (‖w_t‖), and over all weights with a theory ``smdyn/median_rms_ratio`` (median
    RMS Δ/Δ*) and ``smdyn/fraction_in_equilibrium``. With ``granularity="channel"`` each per-weight value is
    the median over its channels. Non-finite values are left out. Values are added once per global step,
    so a final summary or evaluation log at an already reported step gets none. They reach
    ``trainer.state.log_history`` and every callback after this one; the Trainer runs its ``report_to``
    callbacks (TensorBoard, W&B, ...) *before* user callbacks, so to have them see the values too, put
    this callback first: ``trainer.callback_handler.callbacks.insert(0, callback)`` instead of passing it
    in ``callbacks=``. Or give the monitor its own sink (:mod:`smdyn.sinks`), which gets every record.

    What the Trainer does that matters for the theory:

    * ``optim="sgd"`` builds ``torch.optim.SGD`` with momentum 0 (set it with ``optim_args="momentum=0.9"``),
      which is the paper's update rule (Eqs 10–11). Other optimizers are measured, with Δ* only where one
      is derived for the rule (AdamW); see :class:`~smdyn.SphericalMonitor`.
    * The Trainer applies ``weight_decay`` only to weights that are neither biases nor normalisation
      parameters; those get λ = 0, hence no equilibrium (the norm grows). A linear layer with a bias feeding
      a LayerNorm is scale-invariant only as weight+bias together, and then the two halves decay at
      different rates, which Δ* does not cover: build such layers with ``bias=False`` (the bias is
      redundant before a normalisation layer), or override ``Trainer.get_decay_parameter_names``. A warning
      names any monitored weight in that situation.
    * The default ``lr_scheduler_type="linear"`` changes η every step, and the monitor restarts its Δ
      window whenever η changes, so ``angular_update_rms`` is then the last Δ alone; use a constant or
      step schedule to compare RMS Δ with Δ*.
    * Gradients are clipped (``max_grad_norm``) before the step: the monitor sees the gradient applied.
    * The monitor's ``step`` counts optimizer steps that ran; it equals ``state.global_step`` unless the
      fp16 loss scaler skipped some (a warning says so).

    ``params="auto"`` finds the scale-invariant weights from the model's data flow
    (:func:`smdyn.find_scale_invariant`): fine for models ``torch.fx`` can trace, but ``transformers`` models
    cannot be traced and use their own normalisation classes, so there it finds nothing and the monitor
    stays idle (with a warning). Name the weights you know to be scale-invariant instead, e.g. the query
    and key projections of a model with QK-norm (Qwen3: ``params=["model.layers.0.self_attn.q_proj.weight",
    ...]``); ``grad_cosine`` ≈ 0 in the records confirms it (Lemma 1).

    Checkpoints: ``on_save`` writes the monitor's state (step count, Δ and L windows, as tensors and plain
    numbers) to ``<output_dir>/checkpoint-<global_step>/smdyn_monitor.pt``. When training resumes
    (``state.global_step > 0`` at train begin) it is read with ``torch.load(..., weights_only=True)`` from
    ``args.resume_from_checkpoint`` if that is a folder, else from ``<output_dir>/checkpoint-<global_step>``:
    ``trainer.train(resume_from_checkpoint=...)`` does not tell callbacks the path, so a checkpoint outside
    ``output_dir`` must also be named in ``TrainingArguments(resume_from_checkpoint=...)``. Without the file
    the windows start empty and the step count is set to the global step (a warning says so).

    Distributed: every rank must run the callback (flushes of sharded parameters are collective); only
    rank 0 writes sinks and checkpoint files, and only rank 0's logs carry the values.

    Never aborts training: bad arguments raise when the callback is made (the monitor checks them); after
    that, a hook that fails — no scale-invariant weight to monitor, a model or optimizer the monitor cannot
    handle — gives one ``RuntimeWarning`` and the callback stays idle until the next ``train()``.

    Args:
        params: ``"auto"``, names or ``(name, parameter)`` pairs (see :class:`~smdyn.SphericalMonitor`).
        monitor_kwargs: keyword arguments of :class:`~smdyn.SphericalMonitor` (``every``, ``sinks``,
            ``flush_every``, ``granularity``, ``window``, ``tol``, ``history_rows``, ``example_batch``,
            ``loss_fn``, ...), as a mapping; or as keywords: ``SphericalMonitorCallback(window=50)``.
            ``sinks`` are closed at train end. The monitor keeps a bounded history in memory; give it a
            sink (:mod:`smdyn.sinks`) to keep every record of a long run.
    """

    def __init__(
        self,
        params: str | Iterable[Any] = "auto",
        *,
        monitor_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._params, self._kwargs = monitor_arguments(params, monitor_kwargs, kwargs)
        self.monitor: SphericalMonitor | None = None
        self._reported_step = -1
        self._step_before = -1
        self._warned_skip = False
        self._open = False  # a monitor is attached to the optimizer
        self._idle = False  # a hook failed: nothing more is done until the next train()

    # ------------------------------------------------------------------ life cycle

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Build the monitor on the Trainer's model and optimizer; restore its state when resuming."""
        close_quietly([self.monitor])
        self.monitor = None
        self._open = False
        self._idle = False  # a new run gets a new chance
        self._reported_step = -1
        self._warned_skip = False
        self._on_train_begin(args, state, kwargs)

    @guarded()
    def _on_train_begin(
        self, args: TrainingArguments, state: TrainerState, kwargs: Mapping[str, Any]
    ) -> None:
        if kwargs.get("optimizer") is not None:
            self._start(args, state, kwargs)

    @guarded()
    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Build the monitor here if the optimizer did not exist at train begin; note the step count."""
        if self.monitor is None and kwargs.get("optimizer") is not None:
            self._start(args, state, kwargs)
        self._step_before = self.monitor.step if self.monitor is not None else -1

    @guarded()
    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Warn once if a step did not reach the optimizer's hooks, so the step counts part ways."""
        mon = self.monitor
        if not self._open or not mon.units or self._warned_skip or mon.step != self._step_before:
            return  # no units: params="auto" found nothing and the monitor already said so
        self._warned_skip = True
        skipped = bool(getattr(kwargs.get("optimizer"), "step_was_skipped", False))
        why = (
            "the loss scaler skipped it (non-finite gradients)"
            if skipped
            else "the optimizer bypasses torch.optim step hooks"
        )
        warnings.warn(
            f"smdyn: optimizer step at global step {state.global_step} was not recorded ({why}); "
            "the monitor's step count now lags the Trainer's global_step",
            RuntimeWarning,
            stacklevel=2,
        )

    @guarded()
    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Add the latest per-weight values and two aggregates to ``logs`` (once per global step)."""
        mon = self.monitor
        if mon is None or logs is None or state.global_step == self._reported_step:
            return
        self._reported_step = state.global_step
        metrics = compact_metrics(
            mon.summary()
        )  # flushes, on every rank: with shards a flush is a collective
        if not metrics:
            return
        logs.update(metrics)
        history = state.log_history
        if history and history[-1].get("step") == state.global_step:
            history[-1].update(metrics)  # the Trainer copied logs into its history before calling us

    @guarded()
    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Write the monitor state into the checkpoint folder the Trainer just wrote."""
        if not self._open:
            return
        payload = self.monitor.state_dict()  # on every rank: state_dict() flushes
        if not args.should_save:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if not os.path.isdir(folder):
            warnings.warn(
                f"smdyn: checkpoint folder {folder} not found; monitor state not saved",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        try:
            torch.save(payload, os.path.join(folder, _STATE_FILE))
        except OSError as exc:  # a full disk loses this state file, not the monitor
            warnings.warn(f"smdyn: monitor state not saved in {folder}: {exc}", RuntimeWarning, stacklevel=2)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Flush the last records, remove the optimizer hooks and close the sinks."""
        self._close_monitor("on_train_end")

    # ------------------------------------------------------------------ internals

    def _start(self, args: TrainingArguments, state: TrainerState, kwargs: Mapping[str, Any]) -> None:
        model = kwargs.get("model")
        if not isinstance(model, nn.Module):
            raise TypeError(f"the Trainer passed no model to the callback (got {type(model).__name__})")
        optimizer = _unwrap(kwargs["optimizer"])
        self.monitor = SphericalMonitor(model, optimizer, self._params, **self._kwargs)
        self._open = True
        self._step_before = self.monitor.step
        self._warn_mixed_decay()
        if state.global_step > 0:
            self._resume(args, state)

    def _warn_mixed_decay(self) -> None:
        mon = self.monitor
        groups = mon.optimizer.param_groups
        group_of = {id(p): g for g in groups for p in g["params"]}
        for u in mon.units:
            decays = {float(group_of[id(t)].get("weight_decay", 0.0)) for t in u.tensors if id(t) in group_of}
            if len(decays) > 1:
                warnings.warn(
                    f"smdyn: {u.name} is monitored as one vector but its tensors have weight decays "
                    f"{sorted(decays)} (the Trainer exempts biases and norm parameters from decay); the "
                    "equilibrium Δ* assumes one rate: build the layer with bias=False before the norm",
                    RuntimeWarning,
                    stacklevel=3,
                )

    def _resume(self, args: TrainingArguments, state: TrainerState) -> None:
        mon = self.monitor
        given = getattr(args, "resume_from_checkpoint", None)
        folder = (
            given
            if isinstance(given, str) and os.path.isdir(given)
            else os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        )
        path = os.path.join(folder, _STATE_FILE)
        if os.path.isfile(path):
            try:
                mon.load_state_dict(torch.load(path, weights_only=True))
            except (ValueError, KeyError, TypeError, RuntimeError) as exc:
                reason = f"could not be restored from {path}: {exc}"
            else:
                if mon.step != state.global_step:
                    warnings.warn(
                        f"smdyn: monitor state in {path} is at step {mon.step}, the Trainer at global step "
                        f"{state.global_step} (steps skipped by the loss scaler are not counted)",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                _log.info("smdyn: monitor state restored from %s (step %d)", path, mon.step)
                return
        else:
            reason = f"not found ({path} does not exist)"
        mon.step = state.global_step
        warnings.warn(
            f"smdyn: resuming at global step {state.global_step}, monitor state {reason}; the Δ and L "
            "windows start empty",
            RuntimeWarning,
            stacklevel=3,
        )


def _unwrap(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer`` (its hooks are the ones that fire)."""
    seen = 0
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer) and seen < 8:
        optimizer, seen = optimizer.optimizer, seen + 1
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"the Trainer's optimizer is a {type(optimizer).__name__}, not a torch.optim.Optimizer; "
            "the monitor needs torch.optim step hooks"
        )
    return optimizer
