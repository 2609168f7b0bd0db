"""SphericalMonitor: hooks on the optimizer step that orchestrate the measuring stages.

measure (device, ``measure``) → host metrics (``metrics``) → windows (``windows``) → verdict (``verdict``),
with the cross-rank sum in ``distributed``; ``records`` assembles the rows and ``history`` keeps a bounded
number of them in memory. This class owns only the plumbing: hooks, parameter groups, flushing and state.
"""

from __future__ import annotations

import atexit
import math
import sys
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from smdyn import _control
from smdyn._closure import after_first_call, closure_of
from smdyn.monitor import batch, measure, records
from smdyn.monitor.columns import COLUMNS
from smdyn.monitor.distributed import ShardPlan, is_rank_zero, to_host
from smdyn.monitor.events import LrEvents
from smdyn.monitor.history import DEFAULT_ROWS, History
from smdyn.monitor.units import Unit, from_found, resolve
from smdyn.monitor.windows import Windows
from smdyn.rules import Rule, rule_for

__all__ = ["SphericalMonitor"]

_EXACT_FORMATS = (torch.float32, torch.float64)  # where the known-update algebra matches the stored step
# Controls that change a weight after the optimizer's own update: only a snapshot sees the step applied.
_MOVES_AFTER_STEP = frozenset({"RotationController"})
_NOT_IN_OPTIMIZER = Rule("other", "other", theory=False, note="parameter is not in the optimizer")


class SphericalMonitor:
    """Record Spherical Motion Dynamics of a model's scale-invariant weights during training.

    Args:
        model: the model being trained (used to resolve parameter names and, for ``params="auto"``,
            to find the scale-invariant weights with :func:`smdyn.find_scale_invariant`).
        optimizer: any ``torch.optim.Optimizer`` that owns the monitored parameters.
        params: ``"auto"``; an iterable of ``(name, parameter)`` pairs; or an iterable of names resolved
            against ``model`` (``"fc.weight+fc.bias"`` monitors the pair as one vector).
        every: record every ``every``-th optimizer step, or a callable ``step -> bool``.
        sinks: objects with ``write(batch)`` / ``close()`` (see :mod:`smdyn.sinks`).
        flush_every: recorded steps buffered on the device before one transfer to the host and the sinks.
        granularity: ``"tensor"`` (default) or ``"channel"``: one row per output channel where each
            channel is scale-invariant on its own (weights feeding BatchNorm).
        window: trailing window, in recorded steps, of the RMS / mean of Δ and of the estimate of L.
        tol: ``in_equilibrium`` holds when the window is full and |RMS Δ / Δ* − 1| ≤ ``tol``.
        history_rows: records kept in memory for :meth:`history` (default 100,000, the latest ones; older
            rows live only in the sinks). ``None`` keeps every row; 0 keeps none.
        keep_history: ``False`` is ``history_rows=0`` (kept for compatibility).
        example_batch, loss_fn: forwarded to :func:`smdyn.find_scale_invariant` for ``params="auto"``.

    Records (one row per recorded step and monitored weight, or channel): see ``COLUMNS``. L, the
    expected unit-gradient norm of Theorems 1–2, is estimated by the mean of h̃ (SGDM) or ‖g̃‖² (SGD) over
    the trailing ``window`` recorded steps (the paper's Fig 3 uses a 200-step mean): ``l_estimate``.
    Δ* = √(2λη/(1+α)) is the equilibrium value of √E[Δ²], so ``angular_update_rms`` is what it is
    compared with; ``angular_update_mean`` is recorded too (it sits below Δ* when ‖g̃‖² varies).
    Every number is either a measurement or NaN with a ``reason_code`` (see ``smdyn.monitor.REASONS``).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        params: str | Iterable[Any] = "auto",
        *,
        every: int | Callable[[int], bool] = 1,
        sinks: Iterable[Any] = (),
        flush_every: int = 100,
        granularity: Literal["tensor", "channel"] = "tensor",
        window: int = 200,
        tol: float = 0.1,
        history_rows: int | None = DEFAULT_ROWS,
        keep_history: bool = True,
        example_batch: Any = None,
        loss_fn: Callable[..., torch.Tensor] | None = None,
    ) -> None:
        _check_arguments(optimizer, every, flush_every, granularity, window, tol, history_rows)
        self.model = model
        self.optimizer = optimizer
        self.every = every
        self.sinks = list(sinks)
        self.flush_every = flush_every
        self.granularity = granularity
        self.window = window
        self.tol = tol
        self.loss_fn = loss_fn
        self.step = 0  # optimizer steps seen (a step skipped by GradScaler never reaches the hooks)
        self._lr = LrEvents()
        self.units: list[Unit] = []
        self._history = History(0 if not keep_history else history_rows)
        self._group_of: dict[int, int] = {}
        self._ngroups = -1
        self._plan: list[Any] | None = None  # _unit_plan of the units and param groups
        self._rules: dict[int, Rule] = {}  # param group → its rule at the last recorded step
        self._first_batch: Any = None
        self._deferred_state: dict[str, Any] | None = None  # load_state_dict before the weights are known
        self._capture: Any = None
        self._pending: list[tuple[int, list[records.UnitStep], batch.StepMeasurement]] = []
        self._current: tuple[int, list[records.UnitStep], batch.StepMeasurement] | None = None
        self._sink_failed = False  # then rows the history bound drops may be in no sink
        self._not_measured: list[tuple[int, str]] = []  # (step, why): recorded steps whose hook failed
        self._buffers = measure.Buffers()  # snapshots kept between recorded steps (CPU only)
        self._outer: tuple[int, Any] | None = None  # (frame id, code) of the step() call being measured
        self._latest: dict[str, np.ndarray] = {}
        self._warned: set[str] = set()
        self._closed = False
        self._idle = False
        self._explicit = not isinstance(params, str)
        units = resolve(model, params, granularity == "channel", example_batch, loss_fn)
        if units is None:
            # fx could not trace the model: read the data flow from the first real forward pass instead.
            self._capture = model.register_forward_pre_hook(self._capture_batch, with_kwargs=True)
        else:
            self._set_units(units)
        self._handles = [
            optimizer.register_step_pre_hook(self._pre_hook),
            optimizer.register_step_post_hook(self._post_hook),
        ]
        # Records buffered at interpreter exit still reach the sinks (a crash in user code, Ctrl-C).
        self._atexit = _flush_at_exit(self)
        atexit.register(self._atexit)

    # ------------------------------------------------------------------ set-up

    def _set_units(self, units: list[Unit]) -> None:
        if not units:
            raise ValueError(
                "no parameters to monitor: params='auto' found no scale-invariant weight in the model "
                "(no conv/linear feeding a normalization layer); pass params explicitly"
            )
        self.units = units
        self._plan = None
        self._sync_groups()
        if self._explicit:
            for u in units:
                if any(id(t) not in self._group_of for t in u.tensors):
                    raise ValueError(f"{u.name}: parameter is not in the optimizer's param groups")
        self._shards = ShardPlan.build(units)
        names = [u.name for u in units for _ in range(u.rows)]
        channels = [r if u.per_channel else -1 for u in units for r in range(u.rows)]
        self._layout = records.Layout(
            units,
            np.asarray(names, dtype=object),
            np.asarray(channels, dtype=np.int64),
            self.window,
            self.tol,
            self.every if isinstance(self.every, int) else 1,
        )
        self._windows = Windows(len(names), self.window)
        self._raw_rows = sum(u.rows for u in units for _ in u.tensors)  # device rows: one set per tensor

    def _sync_groups(self) -> None:
        """Map parameters to param groups; re-done when ``add_param_group`` adds one mid-run."""
        groups = self.optimizer.param_groups
        if len(groups) == self._ngroups:
            return
        self._group_of = {id(p): gi for gi, g in enumerate(groups) for p in g["params"]}
        self._lr.grow(len(groups))
        self._ngroups = len(groups)
        self._plan = None

    def _capture_batch(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._first_batch is None and args and not kwargs:
            self._first_batch = args[0] if len(args) == 1 else args

    def _resolve_late(self) -> None:
        """Find the scale-invariant weights from the first forward pass (models fx cannot trace)."""
        self._capture.remove()
        self._capture = None
        from smdyn.invariance import find_scale_invariant

        batch, self._first_batch = self._first_batch, None
        found = [] if batch is None else find_scale_invariant(self.model, batch, self.loss_fn)
        self._set_units(from_found(self.model, found, self.granularity == "channel"))
        state, self._deferred_state = self._deferred_state, None
        if state is not None:
            try:
                self.load_state_dict(state)
            except Exception as exc:  # a state of other weights: this run goes on without it, and says so
                self._warn_once("resume", f"smdyn monitor could not restore its saved state: {exc!r}")

    # ------------------------------------------------------------------ hooks

    def _recording(self, step: int) -> bool:
        every = self.every
        return bool(every(step)) if callable(every) else step % every == 0

    def _pre_hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> Any:
        """Measure before the step or, when ``step(closure)`` computes the gradients, after the first closure.

        Frameworks such as Lightning run forward and backward inside ``optimizer.step(closure)``, after the
        pre-hooks: the gradients are only there once the closure has run, so the closure is wrapped. LBFGS
        calls the closure several times a step; only the first call sees the weights before the step.
        A subclass whose ``step`` calls ``super().step()`` runs the hooks twice: the inner call is ignored.
        """
        if self._idle:
            return None
        caller = sys._getframe(1)
        if self._outer is not None and _is_ancestor(self._outer, caller.f_back):
            return None  # nested step() of a subclass: this step is already being measured
        self._outer = (id(caller), caller.f_code)
        self._current = None
        if closure_of(args, kwargs) is not None:  # measured after the closure: every pre-hook has run
            return after_first_call(args, kwargs, self._before_step)
        self._before_step(in_pre_hook=True)
        return None

    def _before_step(self, in_pre_hook: bool = False) -> None:
        """Measure a recorded step. In the pre-hook, a step pre-hook that runs after this one (registered
        later; it is moved behind after the step) would change the gradient after it is measured: then
        nothing is measured, and the rows say why."""
        recording = False
        try:
            if self._capture is not None:
                self._resolve_late()
            self._sync_groups()
            self._lr.watch(self.optimizer, self.step)
            recording = self._recording(self.step)
            hook_after = in_pre_hook and recording and _runs_after_me(self.optimizer, self._handles[0].id)
            if hook_after:
                why = f"step pre-hook {hook_after} ran after the monitor's measurement point (from the next "
                why += "step on it runs before it)"
                self._warn_once("order", f"smdyn monitor did not measure step {self.step}: {why}")
                self._not_measured.append((self.step, why))
            elif recording:
                with torch.no_grad():  # a gradient made with create_graph=True must not record a graph
                    self._measure_before()
        except Exception as exc:  # never break the user's training step
            self._current = None
            if not self.units:
                self._go_idle(f"smdyn monitor found nothing to monitor and is idle: {exc}")
            else:
                self._warn_once("pre", f"smdyn monitor skipped step {self.step}: {exc!r}")
                if recording:
                    self._not_measured.append((self.step, repr(exc)))

    def _post_hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        caller = sys._getframe(1)
        if self._idle or self._outer != (id(caller), caller.f_code):
            return  # the inner call of a nested step(), or a monitor that has nothing to do
        self._outer = None
        try:
            if self._current is not None:
                with torch.no_grad():
                    self._measure_after()
        except Exception as exc:
            self._warn_once("post", f"smdyn monitor skipped step {self.step}: {exc!r}")
            self._not_measured.append((self.step, repr(exc)))
        finally:
            self._current = None
            self.step += 1
        try:
            _keep_last(getattr(optimizer, "_optimizer_step_pre_hooks", None), self._handles[0].id)
            if len(self._pending) + len(self._not_measured) >= self.flush_every:
                self.flush()
        except Exception as exc:  # flush() keeps its own rows; nothing reaches the training loop
            self._warn_once("post", f"smdyn monitor: {exc!r} after step {self.step - 1}")

    def _go_idle(self, message: str) -> None:
        self._warn_once("idle", message)
        self._idle = True
        for h in self._handles:
            h.remove()
        if self._capture is not None:
            self._capture.remove()
            self._capture = None

    def _same_rule(self, gi: int, rule: Rule) -> Rule:
        """The rule object this group had at the last recorded step when the rule is unchanged: records of
        one rule then share one object, which the flush groups by identity (``verdict.distinct_rules``)."""
        old = self._rules.get(gi)
        if old is not None and old == rule:
            return old
        self._rules[gi] = rule
        return rule

    def _measure_before(self) -> None:
        """Reductions of (w, g, v) on the device (``batch``); hyper-parameters and rule on the host."""
        opt = self.optimizer
        groups, state = opt.param_groups, opt.state
        rules = [self._same_rule(gi, rule_for(opt, g)) for gi, g in enumerate(groups)]
        scale = getattr(opt, "grad_scale", None)  # set by GradScaler for fused optimizers: grads still scaled
        inv_scale = torch.reciprocal(scale) if isinstance(scale, torch.Tensor) else None
        found_inf = getattr(opt, "found_inf", None)
        found_inf = found_inf if isinstance(found_inf, torch.Tensor) else None
        # weights a control moves after the optimizer's update, and those it moves after step() returns
        turned, unseen = _control.moved_after_step(opt, _MOVES_AFTER_STEP)
        hparams = [r.hparams(g) for r, g in zip(rules, groups, strict=True)]
        with_coeffs = [r.coefficients is not None for r in rules]
        known_coeffs: dict[tuple[int, bool], Any] = {}  # (group, has buffer) → (a, b, c): once per step

        def coefficients(gi: int, has_buffer: bool) -> Any:
            key = (gi, has_buffer)
            if key not in known_coeffs:
                known_coeffs[key] = rules[gi].coefficients(groups[gi], has_buffer)
            return known_coeffs[key]

        items: list[batch.Item] = []
        meta: list[records.UnitStep] = []
        # units with the same host facts this step share one UnitStep: the flush computes them together
        shared: dict[tuple, records.UnitStep] = {}
        if self._plan is None:
            self._plan = _unit_plan(self.units, self._group_of)
        for u, placed, in_optimizer in self._plan:
            if not in_optimizer:
                items += [batch.Item(t, r, n, u.per_channel, None, None, False) for t, r, n, _, _ in placed]
                key = (-1, len(u.tensors))
                if key not in shared:
                    none = (None,) * len(u.tensors)
                    nan3 = (math.nan,) * 3
                    shared[key] = records.UnitStep(*nan3, _NOT_IN_OPTIMIZER, none, "not_in_optimizer")
                meta.append(shared[key])
                continue
            gi0 = placed[0][3]
            rule = rules[gi0]
            coeffs: list[Any] = []
            frozen = no_grad = False
            for t, row, n, gi, shape_key in placed:
                if not t.requires_grad:
                    frozen, g = True, None
                else:  # a tensor with a batching key is not sharded: its gradient is read as it is
                    g = t.grad if shape_key is not None else measure.local(t.grad)
                    no_grad = no_grad or g is None
                v = None
                if rules[gi].buffer and g is not None:
                    st = state.get(t)
                    v = None if st is None else measure.local(st.get(rules[gi].buffer))
                known = g is not None and with_coeffs[gi] and t.dtype in _EXACT_FORMATS
                known = known and id(t) not in turned
                coeffs.append(coefficients(gi, v is not None) if known else None)
                snap = g is not None and not known
                items.append(batch.Item(t, row, n, u.per_channel, g, v, snap, shape_key))
            code = "frozen" if frozen else "no_grad" if no_grad else ""
            if not code and any(id(p[0]) in unseen for p in placed):
                code = "turned_after_step"
            if not code and u.norm_frozen():
                code = "norm_frozen"
            if not code and any(not _same_settings(rules, hparams, p[3], gi0) for p in placed[1:]):
                code = "mixed_groups"  # a weight and its bias under different settings: no one equilibrium
            key = (gi0, code, tuple(map(id, coeffs)))  # coefficients are one object per (group, buffer)
            if key not in shared:
                shared[key] = records.UnitStep(*hparams[gi0], rule, tuple(coeffs), code)
            meta.append(shared[key])
        self._current = (self.step, meta, batch.measure_step(items, inv_scale, found_inf, self._buffers))

    def _measure_after(self) -> None:
        step, meta, m = self._current
        if m.needs_after:
            batch.measure_after(m)
        self._pending.append((step, meta, m))

    # ------------------------------------------------------------------ host side

    def flush(self) -> None:
        """Move buffered records to the host, compute the metrics and theory, and write the sinks.

        Never raises: a block whose numbers cannot be computed is recorded as NaN rows with
        ``reason_code == "internal"``, a recorded step whose measurement failed in a hook as NaN rows with
        ``"not_measured"``, and a failing sink is reported once by a warning.
        """
        if not self._pending and not self._not_measured:
            return
        pending, self._pending = self._pending, []
        failed, self._not_measured = self._not_measured, []
        blocks = [records.fallback(self._layout, np.array([s]), why, "not_measured") for s, why in failed]
        if pending:
            steps = np.asarray([s for s, _, _ in pending], dtype=np.int64)
            try:
                raw = to_host([m for _, _, m in pending], self._raw_rows, self._shards)
                blocks.append(
                    records.build(self._layout, self._windows, steps, [m for _, m, _ in pending], raw)
                )
            except Exception as exc:
                self._warn_once(
                    "flush",
                    f"smdyn: could not compute records of steps {steps[0]}..{steps[-1]}: "
                    f"{exc!r}; they are recorded as NaN",
                )
                blocks.append(records.fallback(self._layout, steps, repr(exc)))
        batch = records.in_step_order(blocks)
        dropped = self._history.append(batch)
        if dropped and not self.sinks and self._history.max_rows != 0:
            self._warn_once(
                "bound",
                f"smdyn: the monitor keeps the latest {self._history.max_rows} rows in "
                "memory and no sink holds the older ones; add a sink (smdyn.sinks) or pass "
                "history_rows=None to keep them all",
            )
        elif dropped and self._sink_failed and self._history.max_rows != 0:
            self._warn_once(
                "lost",
                f"smdyn: a sink failed and the monitor keeps only the latest {self._history.max_rows} rows "
                "in memory: older rows that sink did not take are lost (history_rows=None keeps them all)",
            )
        nrows = len(self._layout.names)
        self._latest = {c: v[-nrows:] for c, v in batch.items()}
        if not is_rank_zero():
            return
        for sink in self.sinks:
            try:
                sink.write(batch)
            except Exception as exc:  # a full disk must not stop training; the records stay in memory
                self._sink_failed = True
                kept = _rows_kept(self._history.max_rows)
                self._warn_once(
                    f"sink{id(sink)}", f"smdyn: sink {type(sink).__name__} failed: {exc!r}; {kept}"
                )

    # ------------------------------------------------------------------ public

    def history(self) -> dict[str, np.ndarray]:
        """The records kept in memory (the latest ``history_rows``) as a columnar dict of numpy arrays."""
        self.flush()
        return self._history.table()

    @property
    def events(self) -> list[dict[str, Any]]:
        """Learning-rate changes of 5% or more: step, group, lr before and after, Corollary 3.1 lag (the
        latest 10,000 at least are kept; ``events.dropped`` counts the older ones)."""
        return self._lr.events

    @property
    def dropped_rows(self) -> int:
        """Rows that left memory because of the ``history_rows`` bound (the sinks still got them)."""
        return self._history.dropped

    def to_pandas(self) -> Any:
        """``history()`` as a ``pandas.DataFrame`` (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("to_pandas needs pandas: pip install pandas") from exc
        return pd.DataFrame(self.history())

    def summary(self) -> list[dict[str, Any]]:
        """The latest record of each monitored row (flushes first): for tables, logs and progress bars."""
        self.flush()
        latest = self._latest
        return [{c: latest[c][i] for c in COLUMNS} for i in range(len(latest.get("step", ())))]

    def state_dict(self) -> dict[str, Any]:
        """Step count, windows and lr tracking, so a resumed run continues where it stopped.

        Flushes first: the windows are advanced on the host, so pending records must be folded in. Holds only
        Python scalars, lists and CPU tensors, so ``torch.load(..., weights_only=True)`` of it works as it is.
        """
        self.flush()
        if self._deferred_state is not None:  # loaded, not yet applied: saved again as it came
            return {**self._deferred_state, "step": self.step}
        windows = self._windows.state() if self.units else {}
        return {
            "step": self.step,
            "units": [u.name for u in self.units],
            "rows": [u.rows for u in self.units],
            **self._lr.state(),
            "windows": {k: torch.from_numpy(v) for k, v in windows.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; a state of other parameters or param groups is refused, named.

        A monitor whose weights are found from the first forward pass (a model fx cannot trace) takes the
        step count now and checks and restores the rest once it knows its weights.
        """
        if self._capture is not None and not self.units:
            self._deferred_state = dict(state)
            self.step = int(state["step"])
            return
        names = [u.name for u in self.units]
        if list(state["units"]) != names or list(state["rows"]) != [u.rows for u in self.units]:
            raise ValueError(
                f"monitor state is for parameters {list(state['units'])}, this monitor has {names}"
            )
        self._sync_groups()
        saved, have = len(state["last_lr"]), len(self.optimizer.param_groups)
        if saved != have:
            raise ValueError(
                f"monitor state was saved with {saved} optimizer param groups, this optimizer has {have}"
            )
        self._windows.load(state["windows"])
        self.step = int(state["step"])
        self._lr.load(state)

    def close(self) -> None:
        """Flush, remove the optimizer hooks and close the sinks. Safe to call twice; never raises."""
        if self._closed:
            return
        self._closed = True
        for h in self._handles:
            h.remove()
        if self._capture is not None:
            self._capture.remove()
        atexit.unregister(self._atexit)
        self.flush()
        self._buffers.clear()
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:
                self._warn_once(
                    f"close{id(sink)}", f"smdyn: closing sink {type(sink).__name__} failed: {exc!r}"
                )

    def __enter__(self) -> SphericalMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)


# ---------------------------------------------------------------------- helpers


def _check_arguments(
    optimizer: Any,
    every: Any,
    flush_every: int,
    granularity: str,
    window: int,
    tol: float,
    history_rows: int | None,
) -> None:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if isinstance(every, bool) or (isinstance(every, int) and every < 1):
        raise ValueError(f"every must be a positive int or a callable, got {every}")
    if not isinstance(every, int) and not callable(every):
        raise TypeError("every must be a positive int or a callable step -> bool")
    if flush_every < 1:
        raise ValueError(f"flush_every must be >= 1, got {flush_every}")
    if granularity not in ("tensor", "channel"):
        raise ValueError(f"granularity must be 'tensor' or 'channel', got {granularity!r}")
    if window < 2:
        raise ValueError(f"window must be >= 2, got {window}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    if history_rows is not None and (
        isinstance(history_rows, bool) or not isinstance(history_rows, int) or history_rows < 0
    ):
        raise ValueError(f"history_rows must be None or an int >= 0, got {history_rows!r}")


def _unit_plan(
    units: list[Unit], group_of: Mapping[int, int]
) -> list[tuple[Unit, list[tuple[torch.Tensor, int, int, int, tuple | None]], bool]]:
    """Per unit, what does not change from step to step: each tensor's first record row, rows, param
    group and batching key (:func:`batch.shape_key`), and whether the optimizer holds all of its tensors.
    Re-made when the units or the param groups change."""
    plan, row = [], 0
    for u in units:
        placed = []
        for t in u.tensors:
            n = t.shape[0] if u.per_channel else 1
            placed.append((t, row, n, group_of.get(id(t)), batch.shape_key(t, u.per_channel)))
            row += n
        plan.append((u, placed, all(p[3] is not None for p in placed)))
    return plan


def _is_ancestor(outer: tuple[int, Any], frame: Any) -> bool:
    """The step() call recorded in ``outer`` is still running below ``frame`` (not a stale, failed one)."""
    while frame is not None:
        if (id(frame), frame.f_code) == outer:
            return True
        frame = frame.f_back
    return False


def _rows_kept(max_rows: int | None) -> str:
    """Where a failed sink's rows are, for its warning."""
    if max_rows is None:
        return "they are kept in memory"
    if max_rows == 0:
        return "they are not kept in memory (history_rows=0 or keep_history=False)"
    return f"the latest {max_rows} rows are kept in memory"


def _same_settings(rules: list[Rule], hparams: list[tuple], gi: int | None, gi0: int | None) -> bool:
    """Two param groups give one equilibrium: same rule and (lr, λ, momentum), NaN equal to NaN."""
    if gi == gi0:
        return True
    same = (a == b or (a != a and b != b) for a, b in zip(hparams[gi], hparams[gi0], strict=True))
    return rules[gi] == rules[gi0] and all(same)


def _runs_after_me(optimizer: torch.optim.Optimizer, key: int) -> str:
    """The name of a step pre-hook registered after the monitor's (other monitors aside, which only read),
    or ''."""
    hooks = getattr(optimizer, "_optimizer_step_pre_hooks", None)
    if not isinstance(hooks, OrderedDict) or key not in hooks or next(reversed(hooks)) == key:
        return ""
    later = list(hooks.values())[list(hooks).index(key) + 1 :]
    for h in later:
        if not isinstance(getattr(h, "__self__", None), SphericalMonitor):
            return getattr(h, "__qualname__", type(h).__name__)
    return ""


def _keep_last(hooks: Any, key: int) -> None:
    """Move the monitor's pre-hook behind hooks registered later (clipping, unscaling): it measures last."""
    if isinstance(hooks, OrderedDict) and key in hooks and next(reversed(hooks)) != key:
        hooks.move_to_end(key)


def _flush_at_exit(mon: SphericalMonitor) -> Callable[[], None]:
    ref = weakref.ref(mon)

    def flush() -> None:
        m = ref()
        if m is not None and not m._closed:
            m.close()

    return flush
