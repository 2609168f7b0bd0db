"""SphericalMonitor: per-layer angular update, weight norm and unit gradient of scale-invariant weights.

The monitor attaches to any ``torch.optim`` optimizer through ``register_step_pre_hook`` /
``register_step_post_hook`` and records, for every monitored weight and recorded step, the quantities of
Wan et al., "Spherical Motion Dynamics" (NeurIPS 2021): weight norm (Thm 1), unit-gradient norm ‖g̃‖²
(Def 2, Eq 6), h̃ (Thm 2), angular update Δ (Def 3, Eq 13) and their theoretical equilibrium values.

Cost model. On a recorded step the monitor runs a handful of dot products per weight on the weight's own
device and keeps the small result tensor; nothing moves to the host until a flush (every ``flush_every``
recorded steps, or ``history()`` / ``close()``). For ``torch.optim.SGD`` the applied update is a known linear
combination of the weight, its gradient and the momentum buffer, so the whole step follows from their Gram
matrix computed *before* the step: no copy of the weights is kept and the post-step hook does nothing. Any
other optimizer gets a snapshot of the monitored weights on recorded steps only.

Accuracy. Angles come from the tangential and radial parts of the step (DESIGN §2): Δ = atan2(‖d⊥‖, r),
never ``arccos`` of a cosine, which is useless at the Δ ≈ 1e-3 of real training.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import math
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from smdyn import geometry, theory

__all__ = ["SphericalMonitor"]

_log = logging.getLogger("smdyn")

# Raw per-tensor reductions computed on the device, in this column order.
_RAW = ("ww", "gg", "vv", "wg", "wv", "gv", "bb", "db", "dd", "dperp")
_NRAW = len(_RAW)
_I = {name: i for i, name in enumerate(_RAW)}

#: Columns of ``history()`` and of every sink batch, in order.
COLUMNS = (
    "step",
    "param",
    "channel",
    "lr",
    "wd",
    "momentum",
    "weight_norm",
    "unit_grad_sq",
    "h_tilde",
    "angular_update",
    "effective_lr",
    "grad_cosine",
    "angular_update_rms",
    "angular_update_mean",
    "l_estimate",
    "theory_angular_update",
    "theory_weight_norm",
    "in_equilibrium",
    "reason",
)


@dataclass
class _Unit:
    """One monitored vector: a weight, or a weight and bias that are scale-invariant only together."""

    name: str
    tensors: list[nn.Parameter]
    per_channel: bool
    rows: int = 1  # output rows: 1, or the number of channels


@dataclass
class _Rule:
    """How a param group updates its weights, and which theory (if any) applies to it."""

    kind: Literal["sgd", "adamw", "other"]
    known_update: bool  # the applied update follows from (w, g, v) before the step
    theory: bool  # a derived or published equilibrium exists for this rule
    note: str = ""


def _rule_for(optimizer: torch.optim.Optimizer, group: Mapping[str, Any]) -> _Rule:
    """Classify a param group's update rule (DESIGN §1: never apply the SGD theory to another rule)."""
    if type(optimizer) is torch.optim.SGD:
        plain = not group.get("nesterov", False) and group.get("dampening", 0) == 0
        known = not group.get("differentiable", False) and not group.get("fused", False)
        note = "" if plain else "SGD with Nesterov or dampening: no equilibrium theory is derived for it"
        return _Rule("sgd", known_update=known, theory=plain and not group.get("maximize", False), note=note)
    decoupled = isinstance(optimizer, torch.optim.AdamW) or (
        type(optimizer) is torch.optim.Adam and group.get("decoupled_weight_decay", False)
    )
    if decoupled:
        return _Rule("adamw", known_update=False, theory=True)
    return _Rule("other", False, False, f"{type(optimizer).__name__}: no equilibrium theory for this rule")


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
        keep_history: keep every record in memory for :meth:`history` (sinks still get everything).
        example_batch, loss_fn: forwarded to :func:`smdyn.find_scale_invariant` for ``params="auto"``.

    Records (one row per recorded step and monitored weight, or channel): see ``COLUMNS``. L, the
    expected unit-gradient norm of Theorems 1–2, is estimated by the mean of h̃ (SGDM) or ‖g̃‖² (SGD) over
    the trailing ``window`` recorded steps (the paper's Fig 3 uses a 200-step mean): ``l_estimate``.
    Δ* = √(2λη/(1+α)) is the equilibrium value of √E[Δ²], so ``angular_update_rms`` is what it is
    compared with; ``angular_update_mean`` is recorded too (it sits below Δ* when ‖g̃‖² varies).
    The Δ window restarts whenever lr, weight decay or momentum change.
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
        keep_history: bool = True,
        example_batch: Any = None,
        loss_fn: Callable[..., torch.Tensor] | None = None,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if isinstance(every, int):
            if every < 1:
                raise ValueError(f"every must be a positive int or a callable, got {every}")
        elif not callable(every):
            raise TypeError("every must be a positive int or a callable step -> bool")
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        if granularity not in ("tensor", "channel"):
            raise ValueError(f"granularity must be 'tensor' or 'channel', got {granularity!r}")
        if window < 2:
            raise ValueError(f"window must be >= 2, got {window}")
        if not tol > 0:
            raise ValueError(f"tol must be > 0, got {tol}")
        self.model = model
        self.optimizer = optimizer
        self.every = every
        self.sinks = list(sinks)
        self.flush_every = flush_every
        self.granularity = granularity
        self.window = window
        self.tol = tol
        self.keep_history = keep_history
        self.loss_fn = loss_fn
        self.step = 0  # optimizer steps seen (a step skipped by GradScaler never reaches the hooks)
        self.events: list[dict[str, Any]] = []
        self._last_lr: list[float] = [math.nan] * len(optimizer.param_groups)
        self._event_lr: list[float] = [math.nan] * len(optimizer.param_groups)
        self._first_batch: Any = None
        self._capture: Any = None
        self.units: list[_Unit] = []
        self._win: dict[str, np.ndarray] = {}
        units = self._resolve(params, example_batch, loss_fn)
        if units is None:
            # fx could not trace the model: read the data flow from the first real forward pass instead.
            self._capture = model.register_forward_pre_hook(self._capture_batch, with_kwargs=True)
        else:
            self._set_units(units)
        self._pending: list[tuple[int, list[tuple], list[torch.Tensor]]] = []
        self._snap: list[list[torch.Tensor | None]] | None = None
        self._current: tuple[int, list[torch.Tensor], list[tuple]] | None = None
        self._history: list[dict[str, np.ndarray]] = []
        self._latest: dict[str, np.ndarray] = {}
        self._warned: set[str] = set()
        self._closed = False
        self._handles = [
            optimizer.register_step_pre_hook(self._pre_hook),
            optimizer.register_step_post_hook(self._post_hook),
        ]
        # Records buffered at interpreter exit still reach the sinks (a crash in user code, Ctrl-C).
        self._atexit = _flush_at_exit(self)
        atexit.register(self._atexit)

    # ------------------------------------------------------------------ set-up

    def _set_units(self, units: list[_Unit]) -> None:
        if not units:
            raise ValueError(
                "no parameters to monitor: params='auto' found no scale-invariant weight in the model "
                "(no conv/linear feeding a normalization layer); pass params explicitly"
            )
        self.units = units
        self._group_of = self._map_groups()
        self._shards = _ShardPlan.build(units)
        total = sum(u.rows for u in units)
        self._row_names = np.asarray([u.name for u in units for _ in range(u.rows)], dtype=object)
        self._row_channels = np.asarray(
            [r if u.per_channel else -1 for u in units for r in range(u.rows)], dtype=np.int64
        )
        # Trailing windows per output row (ring buffers); they survive flushes and state_dict round trips.
        w = self.window
        self._win = {
            "sq": np.full((total, w), np.nan),  # Δ² since the last hyper-parameter change
            "ang": np.full((total, w), np.nan),  # Δ since the last hyper-parameter change
            "ell": np.full((total, w), np.nan),  # h̃ (SGDM) or ‖g̃‖² (SGD, other rules): L samples
            "n": np.zeros(total, dtype=np.int64),
            "n_ell": np.zeros(total, dtype=np.int64),
            "since": np.zeros(total, dtype=np.int64),  # recorded steps since the last change
            "hparams": np.full((total, 3), np.nan),  # (lr, wd, momentum) the window was recorded under
        }

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
        named = dict(self.model.named_parameters())
        chan = self.granularity == "channel"
        self._set_units(
            [self._unit(f.name, [named[n] for n in f.params], chan and f.per_channel) for f in found]
        )

    def _resolve(self, params: Any, example_batch: Any, loss_fn: Any) -> list[_Unit] | None:
        """The monitored units, or None when they can only be found from the first forward pass."""
        named = dict(self.model.named_parameters())
        by_id = {id(p): n for n, p in named.items()}
        chan = self.granularity == "channel"
        if isinstance(params, str):
            if params != "auto":
                raise ValueError(f"params must be 'auto', (name, parameter) pairs or names, got {params!r}")
            from smdyn.invariance import find_scale_invariant

            if example_batch is None:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    found = find_scale_invariant(self.model)
                if not found and any("cannot trace" in str(w.message) for w in caught):
                    return None
            else:
                found = find_scale_invariant(self.model, example_batch, loss_fn)
            return [self._unit(f.name, [named[n] for n in f.params], chan and f.per_channel) for f in found]
        units = []
        for item in params:
            if isinstance(item, str):
                missing = [n for n in item.split("+") if n not in named]
                if missing:
                    raise ValueError(f"params: {missing[0]!r} is not a parameter of the model")
                tensors = [named[n] for n in item.split("+")]
                units.append(self._unit(item, tensors, chan))
            elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], torch.Tensor):
                name, p = item
                if id(p) not in by_id:
                    raise ValueError(f"params: parameter {name!r} does not belong to the model")
                units.append(self._unit(str(name), [p], chan))
            else:
                raise TypeError(f"params: expected a name or a (name, parameter) pair, got {item!r}")
        return units

    @staticmethod
    def _unit(name: str, tensors: list[nn.Parameter], per_channel: bool) -> _Unit:
        if per_channel and any(_is_sharded(t) for t in tensors):
            raise ValueError(
                f"{name}: granularity='channel' is not supported for sharded (DTensor) parameters"
            )
        rows = tensors[0].shape[0] if per_channel and tensors[0].dim() >= 1 else 1
        if per_channel and any(t.dim() < 1 or t.shape[0] != rows for t in tensors):
            raise ValueError(f"{name}: tensors of a per-channel unit must share their first dimension")
        return _Unit(name, list(tensors), per_channel and rows > 1, max(rows, 1) if per_channel else 1)

    def _map_groups(self) -> dict[int, int]:
        group_of = {id(p): gi for gi, g in enumerate(self.optimizer.param_groups) for p in g["params"]}
        for u in self.units:
            for t in u.tensors:
                if id(t) not in group_of:
                    raise ValueError(f"{u.name}: parameter is not in the optimizer's param groups")
        return group_of

    # ------------------------------------------------------------------ hooks

    def _recording(self, step: int) -> bool:
        every = self.every
        return every(step) if callable(every) else step % every == 0

    def _pre_hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> Any:
        """Measure before the step or, when ``step(closure)`` computes the gradients, right after the closure.

        Frameworks such as Lightning run forward and backward inside ``optimizer.step(closure)``, after the
        pre-hooks: the gradients are only there once the closure has run, so the closure is wrapped instead.
        """
        # torch passes the step's own arguments: (optimizer, closure?) and kwargs
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if closure is None:
            self._before_step()
            return None

        def measured_closure() -> Any:
            loss = closure()
            self._before_step()
            return loss

        if "closure" in kwargs:
            return args, {**kwargs, "closure": measured_closure}
        return (args[0], measured_closure, *args[2:]), kwargs

    def _before_step(self) -> None:
        if self._capture is not None:
            try:
                self._resolve_late()
            except Exception as exc:  # never break the user's training step
                self._warn_once("auto", f"smdyn monitor found nothing to monitor and is idle: {exc}")
                self.close()
                return
        try:
            self._watch_lr()
            if self._recording(self.step):
                self._measure_before()
        except Exception as exc:  # never break the user's training step
            self._current = None
            self._warn_once("pre", f"smdyn monitor skipped step {self.step}: {exc!r}")

    def _post_hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        try:
            if self._current is not None:
                self._measure_after()
        except Exception as exc:
            self._warn_once("post", f"smdyn monitor skipped step {self.step}: {exc!r}")
        finally:
            self._current = None
            self._snap = None
            self.step += 1
            if len(self._pending) >= self.flush_every:
                self.flush()

    def _watch_lr(self) -> None:
        """Log every change of a group's learning rate with the Corollary 3.1 lag estimate."""
        for gi, group in enumerate(self.optimizer.param_groups):
            lr = float(group["lr"])
            prev, ref = self._last_lr[gi], self._event_lr[gi]
            self._last_lr[gi] = lr
            if math.isnan(prev) or lr == prev:
                if math.isnan(ref):
                    self._event_lr[gi] = lr
                continue
            # Continuous schedules change lr every step: an event is a 5% move since the last event.
            if not (lr > 0 and ref > 0) or abs(lr / ref - 1) < _RESTART:
                continue
            self._event_lr[gi] = lr
            k = ref / lr
            wd, mom = float(group.get("weight_decay", 0.0)), float(group.get("momentum", 0.0))
            rule = _rule_for(self.optimizer, group)
            lag = math.nan
            if rule.kind == "sgd" and rule.theory and wd > 0 and 0 <= mom < 1:
                lag = float(theory.steps_to_new_equilibrium(k, lr, wd, mom))
            event = {"step": self.step, "group": gi, "lr_before": ref, "lr_after": lr, "steps_to_new": lag}
            self.events.append(event)
            _log.info(
                "smdyn: step %d group %d lr %.4g -> %.4g (÷%.3g); Corollary 3.1: ~%s steps to the new "
                "equilibrium",
                self.step,
                gi,
                ref,
                lr,
                k,
                "?" if math.isnan(lag) else f"{lag:.0f}",
            )

    def _measure_before(self) -> None:
        """Gram entries of (w, g, v) per tensor on its device; coefficients of the update on the host."""
        groups = self.optimizer.param_groups
        state = self.optimizer.state
        raws: list[torch.Tensor] = []
        meta: list[tuple] = []
        snap: list[list[torch.Tensor | None]] = []
        need_snap = False
        for u in self.units:
            gi = self._group_of[id(u.tensors[0])]
            group = groups[gi]
            rule = _rule_for(self.optimizer, group)
            lr = float(group["lr"])
            wd = float(group.get("weight_decay", 0.0))
            mom = (
                float(group.get("momentum", 0.0))
                if rule.kind == "sgd"
                else float(group.get("betas", (0.0,))[0])
            )
            coeffs = []
            usnap: list[torch.Tensor | None] = []
            for t in u.tensors:
                g = _local(t.grad)
                tg = groups[self._group_of[id(t)]]
                if g is None:
                    raws.append(_nan_raw(t, u.per_channel))
                    coeffs.append(None)
                    usnap.append(None)
                    continue
                w = _local(t.detach())
                v = _local(state.get(t, {}).get("momentum_buffer")) if rule.kind == "sgd" else None
                raws.append(_gram(w, g, v, u.per_channel))
                if rule.known_update:
                    coeffs.append(_sgd_coefficients(tg, has_buffer=v is not None))
                    usnap.append(None)
                else:
                    coeffs.append(None)
                    usnap.append(w.clone())
                    need_snap = True
            snap.append(usnap)
            meta.append((lr, wd, mom, rule, coeffs, any(t.grad is None for t in u.tensors)))
        self._snap = snap if need_snap else None
        self._current = (self.step, raws, meta)

    def _measure_after(self) -> None:
        step, raws, meta = self._current
        if self._snap is not None:
            i = 0
            for u, usnap in zip(self.units, self._snap, strict=True):
                for t, before in zip(u.tensors, usnap, strict=True):
                    if before is not None:
                        after = _local(t.detach())
                        sums = geometry.update_sums(after, before - after, per_channel=u.per_channel)
                        if _is_sharded(t):  # ‖d⊥‖² of a shard is not additive: rebuilt from the sums
                            sums[..., 3] = math.nan
                        raws[i][..., _I["bb"] :] = sums
                    i += 1
        self._pending.append((step, meta, raws))

    # ------------------------------------------------------------------ host side

    def flush(self) -> None:
        """Move buffered records to the host, compute the metrics and theory, and write the sinks."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        raw = _to_host([raws for _, _, raws in pending], self._shards)  # [steps, rows, 10]: one transfer
        steps = np.asarray([s for s, _, _ in pending], dtype=np.int64)
        batch = self._records(steps, [m for _, m, _ in pending], raw)
        if self.keep_history:
            self._history.append(batch)
        nrows = len(self._row_names)
        self._latest = {c: v[-nrows:] for c, v in batch.items()}
        if not _is_rank_zero():
            return
        for sink in self.sinks:
            try:
                sink.write(batch)
            except Exception as exc:  # a full disk must not stop training; the records stay in memory
                self._warn_once(f"sink{id(sink)}", f"smdyn: sink {type(sink).__name__} failed: {exc!r}")

    def _records(self, steps: np.ndarray, meta: list[list[tuple]], raw: np.ndarray) -> dict[str, np.ndarray]:
        """Rows for a block of recorded steps: metrics vectorised over steps, then windows and theory."""
        nsteps = len(steps)
        cols: dict[str, list[np.ndarray]] = {k: [] for k in _METRICS}
        hp, ell, star, relax, why, sgd, adamw_norm = [], [], [], [], [], [], []
        t = 0
        for ui, u in enumerate(self.units):
            parts = []
            for tensor in u.tensors:
                n = tensor.shape[0] if u.per_channel else 1
                parts.append(raw[:, t : t + n])
                t += n
            lr, wd, mom, kind, has_theory, note, coeffs, no_grad = _unit_meta([m[ui] for m in meta])
            m = _unit_metrics(parts, coeffs, kind == "sgd", mom)
            for k in _METRICS:
                cols[k].append(m[k])
            rows = (nsteps, u.rows)
            hp.append(np.broadcast_to(np.stack([lr, wd, mom], axis=-1)[:, None, :], (*rows, 3)))
            ell.append(m["h_tilde"] if (kind == "sgd" and (mom > 0).any()) else m["unit_grad_sq"])
            th = _theory(kind, has_theory, note, lr, wd, mom, _numel(u) // u.rows)
            star.append(np.broadcast_to(th["angular_update"][:, None], rows))
            relax.append(np.broadcast_to(th["relaxation_steps"][:, None], rows))
            adamw_norm.append(np.broadcast_to(th["adamw_weight_norm"][:, None], rows))
            sgd.append(np.broadcast_to(((kind == "sgd") & has_theory)[:, None], rows))
            why.append(_reasons(u, parts, m, no_grad, th["note"]))
        c = {k: np.concatenate(v, axis=1) for k, v in cols.items()}
        hparams = np.concatenate(hp, axis=1)
        win = self._advance_windows(hparams, c["angular_update"], np.concatenate(ell, axis=1))
        star_a, sgd_a = np.concatenate(star, axis=1), np.concatenate(sgd, axis=1)
        lr, wd, mom = hparams[..., 0], hparams[..., 1], hparams[..., 2]
        norm_star = np.concatenate(adamw_norm, axis=1).copy()
        ok = sgd_a & (wd > 0) & np.isfinite(win["l_estimate"]) & (win["l_estimate"] > 0)
        if ok.any():
            norm_star[ok] = theory.weight_norm(win["l_estimate"][ok], lr[ok], wd[ok], mom[ok])
        reason = np.concatenate(why, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = win["angular_update_rms"] / star_a
            eff = lr / c["weight_norm"] ** 2
        full = win["count"] >= self.window
        fine = reason == ""
        late = win["since"] * _stride(self.every) > 3 * np.concatenate(relax, axis=1)
        collapsed = full & fine & sgd_a & (ratio < 1 - 2 * self.tol) & late
        reason[collapsed] = _COLLAPSE
        eq = full & fine & ~collapsed & (np.abs(ratio - 1) <= self.tol)
        nrows = c["weight_norm"].shape[1]
        out = {
            "step": np.repeat(steps, nrows),
            "param": np.tile(self._row_names, nsteps),
            "channel": np.tile(self._row_channels, nsteps),
            "lr": lr,
            "wd": wd,
            "momentum": mom,
            **c,
            "effective_lr": np.where(c["weight_norm"] > 0, eff, np.nan),
            "angular_update_rms": win["angular_update_rms"],
            "angular_update_mean": win["angular_update_mean"],
            "l_estimate": win["l_estimate"],
            "theory_angular_update": star_a,
            "theory_weight_norm": norm_star,
            "in_equilibrium": eq,
            "reason": reason,
        }
        return {k: np.ascontiguousarray(out[k]).reshape(-1) if out[k].ndim > 1 else out[k] for k in COLUMNS}

    def _advance_windows(
        self, hparams: np.ndarray, delta: np.ndarray, ell: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Push a block of steps through the ring buffers; return the per-step trailing statistics."""
        w, size = self._win, self.window
        nsteps, nrows = delta.shape
        idx = np.arange(nrows)
        out = {
            k: np.empty((nsteps, nrows)) for k in ("angular_update_rms", "angular_update_mean", "l_estimate")
        }
        out["count"] = np.empty((nsteps, nrows), dtype=np.int64)
        out["since"] = np.empty((nsteps, nrows), dtype=np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            for s in range(nsteps):
                # Restart on a change of more than 5% since the window began (or of momentum, or to/from 0):
                # a continuous schedule then restarts it every ~5% of decay, not every step.
                start = w["hparams"]
                rel = np.abs(hparams[s] - start) > _RESTART * np.abs(start)
                changed = (
                    rel[:, 0] | rel[:, 1] | (hparams[s][:, 2] != start[:, 2]) | np.isnan(start).any(axis=1)
                )
                if changed.any():  # the Δ window restarts; L is a property of the gradients and carries on
                    for key in ("sq", "ang"):
                        w[key][changed] = np.nan
                    w["n"][changed] = 0
                    w["since"][changed] = 0
                    w["hparams"][changed] = hparams[s][changed]
                for ring, count, x in (("ang", "n", delta[s]), ("ell", "n_ell", ell[s])):
                    ok = np.isfinite(x)
                    slot = w[count][ok] % size
                    w[ring][idx[ok], slot] = x[ok]
                    if ring == "ang":
                        w["sq"][idx[ok], slot] = x[ok] ** 2
                    w[count] += ok
                w["since"] += 1
                n = np.minimum(w["n"], size)
                out["angular_update_rms"][s] = np.sqrt(np.nansum(w["sq"], axis=1) / n)
                out["angular_update_mean"][s] = np.nansum(w["ang"], axis=1) / n
                out["l_estimate"][s] = np.nansum(w["ell"], axis=1) / np.minimum(w["n_ell"], size)
                out["count"][s] = n
                out["since"][s] = w["since"]
        return out

    # ------------------------------------------------------------------ public

    def history(self) -> dict[str, np.ndarray]:
        """All records so far as a columnar dict of numpy arrays (flushes pending records first)."""
        self.flush()
        if not self._history:
            return {c: np.empty(0, dtype=object if c in ("param", "reason") else float) for c in COLUMNS}
        if len(self._history) > 1:
            self._history = [{c: np.concatenate([b[c] for b in self._history]) for c in COLUMNS}]
        return dict(self._history[0])

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
        Python scalars, lists and CPU tensors, so ``torch.save`` / ``torch.load(..., weights_only=True)`` of
        it (alone or inside a training checkpoint) works as it is.
        """
        self.flush()
        return {
            "step": self.step,
            "units": [u.name for u in self.units],
            "rows": [u.rows for u in self.units],
            "last_lr": list(self._last_lr),
            "event_lr": list(self._event_lr),
            "events": [dict(e) for e in self.events],
            "windows": {k: torch.from_numpy(v.copy()) for k, v in self._win.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the monitored parameters must be the same as when it was saved."""
        names = [u.name for u in self.units]
        if list(state["units"]) != names or list(state["rows"]) != [u.rows for u in self.units]:
            raise ValueError(
                f"monitor state is for parameters {list(state['units'])}, this monitor has {names}"
            )
        self.step = int(state["step"])
        self._last_lr = [float(x) for x in state["last_lr"]]
        self._event_lr = [float(x) for x in state["event_lr"]]
        self.events = [dict(e) for e in state["events"]]
        win = state["windows"]
        if any(np.shape(win[k]) != v.shape for k, v in self._win.items()):
            raise ValueError("monitor state was saved with another window size or granularity")
        self._win = {k: np.array(_numpy(win[k]), dtype=v.dtype) for k, v in self._win.items()}

    def close(self) -> None:
        """Flush, remove the optimizer hooks and close the sinks. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for h in self._handles:
            h.remove()
        if self._capture is not None:
            self._capture.remove()
        atexit.unregister(self._atexit)
        try:
            self.flush()
        finally:
            for sink in self.sinks:
                sink.close()

    def __enter__(self) -> SphericalMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)


# ---------------------------------------------------------------------- helpers


def _flush_at_exit(mon: SphericalMonitor) -> Callable[[], None]:
    ref = weakref.ref(mon)

    def flush() -> None:
        m = ref()
        if m is not None and not m._closed:
            m.close()

    return flush


def _is_rank_zero() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _stride(every: int | Callable[[int], bool]) -> int:
    return every if isinstance(every, int) else 1


def _numel(u: _Unit) -> int:
    return sum(t.numel() for t in u.tensors)


def _numpy(x: Any) -> Any:
    return x.numpy() if isinstance(x, torch.Tensor) else x


def _local(x: torch.Tensor | None) -> torch.Tensor | None:
    """The local shard of a DTensor (FSDP2, tensor parallel), or the tensor itself."""
    return x.to_local() if x is not None and _is_sharded(x) else x


def _is_sharded(x: torch.Tensor) -> bool:
    return type(x).__name__ == "DTensor" and hasattr(x, "to_local")


@dataclass
class _ShardPlan:
    """How to add the partial sums of sharded (DTensor) parameters: over Shard mesh dims, never Replicate."""

    groups: list[Any]  # process groups of the mesh dimensions the parameters are sharded over
    replicated_rows: torch.Tensor  # [rows] bool: rows of unsharded tensors, counted once (coordinate 0)
    first: bool  # this rank is at coordinate 0 along every summed mesh dimension

    @staticmethod
    def build(units: list[_Unit]) -> _ShardPlan | None:
        tensors = [t for u in units for t in u.tensors]
        sharded = [t for t in tensors if _is_sharded(t)]
        if not sharded:
            return None
        mesh = sharded[0].device_mesh
        dims = [i for i, p in enumerate(sharded[0].placements) if p.is_shard()]
        for t in sharded:
            if t.device_mesh != mesh or [i for i, p in enumerate(t.placements) if p.is_shard()] != dims:
                raise ValueError(
                    "sharded parameters must share one device mesh and the same sharded dimensions"
                )
        if len({t.to_local().device for t in tensors}) > 1:
            raise ValueError("sharded parameters must all live on one device per rank")
        rows = torch.tensor([not _is_sharded(t) for u in units for t in u.tensors for _ in range(u.rows)])
        coord = mesh.get_coordinate() or []
        plan = _ShardPlan([mesh.get_group(i) for i in dims], rows, all(coord[i] == 0 for i in dims))
        plan._check_same_everywhere(units)
        return plan

    def _check_same_everywhere(self, units: list[_Unit]) -> None:
        """Fail now, with a clear message, if another rank monitors different parameters (or none)."""
        names = ";".join(f"{u.name}:{u.rows}" for u in units)
        digest = int.from_bytes(hashlib.sha256(names.encode()).digest()[:6], "big")
        for group in self.groups:
            nccl = torch.distributed.get_backend(group) == "nccl"
            dev = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
            x = torch.tensor([digest, -digest], dtype=torch.float64, device=dev)
            try:
                torch.distributed.all_reduce(x, op=torch.distributed.ReduceOp.MAX, group=group)
            except RuntimeError as exc:
                raise RuntimeError(
                    "SphericalMonitor: the ranks did not all attach a monitor (collective failed: "
                    f"{exc}); create it on every rank with the same parameters"
                ) from exc
            if x[0].item() != -x[1].item():
                raise ValueError(
                    "SphericalMonitor: ranks monitor different parameters; all must monitor the same ones"
                )

    def reduce(self, stacked: torch.Tensor) -> torch.Tensor:
        """Sum [steps, rows, 10] partial sums over the shards in place: one all-reduce per mesh dim."""
        if not self.first:
            mask = self.replicated_rows.to(stacked.device)[None, :, None]
            stacked = torch.where(mask, torch.zeros((), dtype=stacked.dtype, device=stacked.device), stacked)
        for group in self.groups:
            torch.distributed.all_reduce(stacked, group=group)
        return stacked


def _nan_raw(t: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """A row for a tensor without a gradient: its norm is still known, everything else is NaN."""
    raw = torch.full(
        (t.shape[0] if per_channel else 1, _NRAW), math.nan, dtype=torch.float64, device=t.device
    )
    raw[:, _I["ww"]] = geometry.sq_norm(_local(t.detach()), per_channel=per_channel)
    return raw


def _gram(w: torch.Tensor, g: torch.Tensor, v: torch.Tensor | None, per_channel: bool) -> torch.Tensor:
    """[rows, 10] float64 on the device: ‖w‖², ‖g‖², ‖v‖², ⟨w,g⟩, ⟨w,v⟩, ⟨g,v⟩, then 4 NaN update slots."""
    dot, sq = geometry.dot, geometry.sq_norm
    ww = sq(w, per_channel=per_channel)
    nan = torch.full_like(ww, math.nan)
    if v is None:  # no momentum buffer (yet): its entries are 0
        zero = torch.zeros_like(ww)
        cols = [ww, sq(g, per_channel=per_channel), zero, dot(w, g, per_channel=per_channel), zero, zero]
    else:
        cols = [
            ww,
            sq(g, per_channel=per_channel),
            sq(v, per_channel=per_channel),
            dot(w, g, per_channel=per_channel),
            dot(w, v, per_channel=per_channel),
            dot(g, v, per_channel=per_channel),
        ]
    return torch.stack([*cols, nan, nan, nan, nan], dim=-1).reshape(-1, _NRAW)


def _sgd_coefficients(group: Mapping[str, Any], *, has_buffer: bool) -> tuple[float, float, float]:
    """(a, b, c) with the applied update d = w_t − w_{t+1} = a·w + b·g + c·v_{t−1} for torch.optim.SGD.

    Mirrors ``torch.optim.SGD``: grad ← ±g + λw; buf ← grad (first step) or α·buf + (1−τ)·grad;
    direction ← grad + α·buf (Nesterov) or buf; w ← w − η·direction. Eqs 10–11 are the case τ = 0.
    """
    lr = float(group["lr"])
    wd = float(group.get("weight_decay", 0.0))
    mom = float(group.get("momentum", 0.0))
    damp = float(group.get("dampening", 0.0))
    s = -1.0 if group.get("maximize", False) else 1.0
    if mom == 0:
        return lr * wd, lr * s, 0.0
    k, c = (1.0 - damp, mom) if has_buffer else (1.0, 0.0)  # buf = k·(s·g + λw) + c·v
    if group.get("nesterov", False):  # direction = (s·g + λw) + α·buf
        k, c = 1.0 + mom * k, mom * c
    return lr * k * wd, lr * k * s, lr * c


_RESTART = 0.05  # relative change of lr or wd that restarts the Δ window (and logs an lr event)

_METRICS = ("weight_norm", "unit_grad_sq", "h_tilde", "angular_update", "grad_cosine")

_COLLAPSE = (
    "RMS Δ/Δ* far below 1 long after the last hyper-parameter change: the unit gradient is collapsing "
    "(memorised data?), so the equilibrium theory does not apply"
)


def _to_host(per_step: list[list[torch.Tensor]], shards: _ShardPlan | None) -> np.ndarray:
    """Stack the per-tensor reductions of many steps and move them to the host, one copy per device.

    With sharded parameters the local partial sums are first added across shards: one all-reduce for all
    parameters and all buffered steps together.
    """
    devices = list(dict.fromkeys(r.device for r in per_step[0]))
    stacked = {
        d: torch.stack([torch.cat([r for r in raws if r.device == d]) for raws in per_step]) for d in devices
    }
    if shards is not None:
        (d,) = devices  # _ShardPlan.build refuses sharded models spread over several devices
        stacked[d] = shards.reduce(stacked[d])
    host = {d: x.cpu().numpy() for d, x in stacked.items()}
    if len(devices) == 1:
        return host[devices[0]]
    offsets, parts = dict.fromkeys(devices, 0), []
    for r in per_step[0]:
        o = offsets[r.device]
        parts.append(host[r.device][:, o : o + r.shape[0]])
        offsets[r.device] = o + r.shape[0]
    return np.concatenate(parts, axis=1)


def _unit_meta(per_step: list[tuple]) -> tuple:
    """Per-step arrays of one unit's hyper-parameters, rule and update coefficients."""
    lr = np.array([m[0] for m in per_step])
    wd = np.array([m[1] for m in per_step])
    mom = np.array([m[2] for m in per_step])
    kind = per_step[-1][3].kind
    has_theory = np.array([m[3].theory and m[3].kind == kind for m in per_step])
    note = np.array([m[3].note for m in per_step], dtype=object)
    ntensors = len(per_step[0][4])
    coeffs = [
        np.array([m[4][i] if m[4][i] is not None else (np.nan,) * 3 for m in per_step])
        for i in range(ntensors)
    ]
    no_grad = np.array([m[5] for m in per_step])
    return lr, wd, mom, kind, has_theory, note, coeffs, no_grad


def _theory(
    kind: str,
    has_theory: np.ndarray,
    note: np.ndarray,
    lr: np.ndarray,
    wd: np.ndarray,
    mom: np.ndarray,
    numel: int,
) -> dict[str, np.ndarray]:
    """Δ*, AdamW's w*, the relaxation time and the reason for no theory, per step (NaN where none)."""
    n = len(lr)
    star, relax, adamw = np.full(n, np.nan), np.full(n, np.inf), np.full(n, np.nan)
    why = np.where(has_theory, "", note).astype(object)
    valid = has_theory & (lr > 0) & np.isfinite(lr) & (mom >= 0) & (mom < 1) & (wd >= 0)
    why[has_theory & ~valid] = "lr or momentum outside the theory's range"
    no_wd = valid & (wd == 0)
    star[no_wd] = 0.0
    why[no_wd] = "weight decay is 0: no equilibrium (the norm grows without bound)"
    ok = valid & (wd > 0)
    if ok.any():
        if kind == "adamw":
            star[ok] = theory.adamw_angular_update(lr[ok], wd[ok], mom[ok])
            adamw[ok] = theory.adamw_weight_norm(lr[ok], wd[ok], numel, mom[ok])
            relax[ok] = 1 / (2 * lr[ok] * wd[ok])
        else:
            star[ok] = theory.angular_update(lr[ok], wd[ok], mom[ok])
            relax[ok] = (1 - mom[ok]) / (2 * lr[ok] * wd[ok])
    return {"angular_update": star, "relaxation_steps": relax, "adamw_weight_norm": adamw, "note": why}


def _unit_metrics(
    parts: list[np.ndarray], coeffs: list[np.ndarray], is_sgd: bool, mom: np.ndarray
) -> dict[str, np.ndarray]:
    """Metrics of one unit, [steps, rows], from its tensors' raw reductions (float64 host math)."""

    def col(name: str, p: np.ndarray) -> np.ndarray:
        return p[..., _I[name]]

    ww = sum(col("ww", p) for p in parts)
    gg = sum(col("gg", p) for p in parts)
    wg = sum(col("wg", p) for p in parts)
    gv = sum(col("gv", p) for p in parts)
    with np.errstate(invalid="ignore", divide="ignore"):
        # Known update d = a·w + e, e = b·g + c·v: the weight-decay term a·w is radial, so the tangential part
        # comes from e alone and never suffers the cancellation of ‖d‖² − ⟨d,ŵ⟩² (DESIGN §2).
        dw = ew = ee = dd = 0.0
        for p, k in zip(parts, coeffs, strict=True):
            a, b, c = (k[:, j : j + 1] for j in range(3))
            ew_i = b * col("wg", p) + c * col("wv", p)
            ee_i = b * b * col("gg", p) + c * c * col("vv", p) + 2 * b * c * col("gv", p)
            ew, ee = ew + ew_i, ee + ee_i
            dw = dw + a * col("ww", p) + ew_i
            dd = dd + a * a * col("ww", p) + 2 * a * ew_i + ee_i
        same_a = np.all([k[:, :1] == coeffs[0][:, :1] for k in coeffs], axis=0)
        perp = np.where(same_a, ee - ew**2 / ww, dd - dw**2 / ww)
        norm = np.sqrt(ww)
        known = np.arctan2(np.sqrt(np.maximum(perp, 0.0)), norm - dw / norm)
        # Snapshot path: sums relative to b = w_{t+1} (geometry.update_sums).
        bb = sum(col("bb", p) for p in parts)
        db = sum(col("db", p) for p in parts)
        dd_s = sum(col("dd", p) for p in parts)
        one_pass = dd_s - db**2 / bb  # for pairs and shards; a single local tensor has the exact ‖d⊥‖²
        perp_s = np.where(np.isfinite(col("dperp", parts[0])), col("dperp", parts[0]), one_pass)
        if len(parts) > 1:
            perp_s = one_pass
        snap = geometry.angle_from_sums(np.stack(np.broadcast_arrays(bb, db, dd_s, perp_s), axis=-1))
        is_known = np.all([np.isfinite(k).all(axis=1, keepdims=True) for k in coeffs], axis=0)
        delta = np.where(is_known, known, snap)
        h = (gg + 2 * mom[:, None] * gv) * ww if is_sgd else np.full_like(ww, np.nan)
        cos = wg / np.sqrt(ww * gg)
    return {
        "weight_norm": norm,
        "unit_grad_sq": gg * ww,
        "h_tilde": h,
        "angular_update": np.where(ww > 0, delta, np.nan),
        "grad_cosine": cos,
    }


def _reasons(
    u: _Unit, parts: list[np.ndarray], m: dict[str, np.ndarray], no_grad: np.ndarray, note: np.ndarray
) -> np.ndarray:
    """Why each row's numbers are NaN, or why no theory applies ('' when all is well), [steps, rows]."""
    ww = sum(p[..., _I["ww"]] for p in parts)
    finite_g = np.all([np.isfinite(p[..., _I["gg"]]) for p in parts], axis=0)
    shape = ww.shape
    conds = [
        np.full(shape, not all(t.requires_grad for t in u.tensors)),
        np.broadcast_to(no_grad[:, None], shape),
        ~np.isfinite(ww),
        ww == 0,
        ~finite_g | ~np.isfinite(m["angular_update"]),
    ]
    choices = [
        "frozen parameter (requires_grad=False)",
        "no gradient this step (p.grad is None)",
        "non-finite weight",
        "zero-norm weight: direction undefined",
        "non-finite gradient or update",
    ]
    default = np.broadcast_to(note[:, None], shape)
    return np.select(conds, choices, default=default).astype(object)
