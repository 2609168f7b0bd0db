"""``smdyn train CONFIG.toml``: train a normalised network with `smdyn.SphericalMonitor` attached.

One run of the paper's experiments (Wan et al. 2021, Sec 4): a model, a data source, SGD(M)/Adam(W) with
weight decay and a learning-rate schedule (the drops of Sec 4.2), optionally `smdyn.Rescaler` (Sec 4.2's
k^(−¼) rescaling) or another control of the scale-invariant weights (`run_controls`), and the monitor
recording Δ_t, ‖w_t‖ and ‖g̃_t‖² of every scale-invariant weight. The run directory (docs/design.md §5)
holds:

- ``config.toml``: the complete configuration (`save_config`), enough to run it again.
- ``metrics.csv``: the monitor's records (`smdyn.sinks.CSVSink`); ``step`` is the 0-based optimizer step.
- ``train.csv``: ``step, epoch, lr, loss, accuracy, test_loss, test_accuracy``; ``step`` counts the steps
  done, ``loss`` and ``accuracy`` are means over the training batches since the previous row, ``lr`` is the
  rate of the last of them, ``test_*`` are NaN on rows without an evaluation. Each row is flushed when
  written, so a killed run keeps every row.
- ``events.csv``: ``step, kind, group, lr_before, lr_after, factor``; ``kind`` is ``lr_change`` (a move of
  5% or more; ``factor`` = lr_after / lr_before, ``step`` the first step at the new rate) or ``rescale``
  (``factor`` the weights were multiplied by).
- ``summary.json``: status, final test accuracy, wall time, steps/s and the equilibrium figures over the
  last monitor window within the last learning-rate stage (`rundir.summary_figures`: per layer RMS Δ/Δ*
  (Thm 3), mean Δ/Δ*, ‖w‖/w* (Thm 1–2) and the monitor's flag; medians over layers).
- ``checkpoint.pt``: model, optimizer, scheduler, monitor and controls' state, random-generator states and
  the step, written to a temporary file and renamed (never half-written); tensors and plain containers
  only, so it loads with ``torch.load(..., weights_only=True)``.

``resume=True`` continues from the checkpoint and gives bit-for-bit the run that was never stopped: the same
batches (the generator state is saved), the same updates, and ``train.csv`` / ``metrics.csv`` cut back to
the checkpoint before rows are appended. A non-finite loss stops the run before the update is applied
(status ``diverged``). Ctrl-C saves a checkpoint at the last completed step, then re-raises.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import signal
import sys
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from smdyn.experiments import rundir
from smdyn.experiments._io import atomic_write
from smdyn.experiments.config import Config, load_config, save_config
from smdyn.experiments.progress import TrainingProgress

__all__ = ["EVENT_COLUMNS", "TRAIN_COLUMNS", "add_train_arguments", "train", "train_main"]

#: Columns of ``train.csv``, in order.
TRAIN_COLUMNS = rundir.TRAIN_COLUMNS
#: Columns of ``events.csv``, in order.
EVENT_COLUMNS = rundir.EVENT_COLUMNS

# Keys of [run] that may differ between a run and its resumption: they change neither batches nor updates.
_RESUMABLE = ("steps", "eval_every", "log_every", "checkpoint_every", "threads", "device")
_EVAL_BATCH = 1024
_TAIL_COLUMNS = (
    "step",
    "param",
    "channel",
    "angular_update",
    "angular_update_rms",
    "weight_norm",
    "theory_angular_update",
    "theory_weight_norm",
    "in_equilibrium",
    "reason",
)


# ---------------------------------------------------------------------------------------------- building


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"[run] device = {name!r}, but CUDA is not available here; use 'cpu' or 'auto'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"[run] device = {name!r}, but MPS is not available here; use 'cpu' or 'auto'")
    return dev


def _load_source(cfg: Config) -> Any:
    from smdyn.experiments.data import load_data

    d = cfg.data
    try:
        return load_data(d.name, root=d.root, seed=d.seed, **d.options)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"[data] {exc}") from None


def _build_model(cfg: Config, source: Any) -> nn.Module:
    """``build_model`` with ``num_classes`` and the input size (channels, length, features) from the data."""
    from smdyn.experiments.models import MODELS, build_model

    accepted = inspect.signature(MODELS[cfg.model.name]).parameters
    kwargs = dict(cfg.model.options)
    shape = tuple(source.input_shape)
    if "num_classes" in accepted:
        kwargs["num_classes"] = int(source.num_classes)
    if "in_channels" in accepted and "in_channels" not in kwargs and len(shape) == 3:
        kwargs["in_channels"] = shape[0]
    if "length" in accepted and "length" not in kwargs:
        kwargs["length"] = shape[-1]
    if "in_features" in accepted and "in_features" not in kwargs:
        kwargs["in_features"] = math.prod(shape)
    try:
        return build_model(cfg.model.name, **kwargs)
    except TypeError as exc:
        raise TypeError(
            f"[model] options {dict(cfg.model.options)} do not fit {cfg.model.name!r}: {exc}"
        ) from None


def _build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """Weight decay on every parameter, as Eqs 10–11 write it (``torch.optim.SGD`` is exactly that rule);
    a model that declares its ``parameter_roles`` gets the groups they imply (`optimizers.by_roles`)."""
    o = cfg.optim
    if o.name == "muon" or callable(getattr(model, "parameter_roles", None)):
        from smdyn.experiments.optimizers import by_roles

        return by_roles(o, model)
    params = list(model.parameters())
    if o.name == "sgd":
        return torch.optim.SGD(
            params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov
        )
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)


def _lr_factor(cfg: Config) -> Callable[[int], float]:
    """The schedule's multiplier of the base lr for the optimizer step with 0-based index ``t``.

    A milestone m means steps m, m+1, ... run at the reduced rate (so the drop is seen at step m).
    """
    s, total = cfg.schedule, cfg.run.steps
    milestones = list(s.milestones)

    def factor(t: int) -> float:
        if s.kind == "multistep":
            f = s.gamma ** bisect_right(milestones, t)
        elif s.kind == "step":
            f = s.gamma ** (t // s.step_size)
        elif s.kind == "cosine":
            f = 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))
        else:
            f = 1.0
        if s.warmup and t < s.warmup:
            f *= (t + 1) / s.warmup
        return f

    return factor


def _flat(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A sequence model's ``[B, T, C]`` logits and ``[B, T]`` targets as ``[B·T, C]`` and ``[B·T]``: every
    position is one example (of the loss, the accuracy and the example count)."""
    if out.dim() == 3 and y.dim() == 2:
        return out.flatten(0, 1), y.flatten()
    return out, y


# ---------------------------------------------------------------------------------------------- files


def _to_tensors(obj: Any) -> Any:
    """numpy → torch inside a state dict, so ``torch.load(weights_only=True)`` accepts it."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "OUS":
            return [str(v) for v in obj.tolist()]
        return torch.from_numpy(np.ascontiguousarray(obj).copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _to_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_tensors(v) for v in obj)
    return obj


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


# ---------------------------------------------------------------------------------------------- tail


class _Tail:
    """A monitor sink that keeps the records of the last ``window`` recorded steps, for the summary and
    the progress bar (the monitor itself keeps no history: a long run would not fit in memory)."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.cols: dict[str, np.ndarray] = {}

    def write(self, batch: Mapping[str, np.ndarray]) -> None:
        new = {c: np.asarray(batch[c]) for c in _TAIL_COLUMNS}
        cols = {c: np.concatenate([self.cols[c], new[c]]) for c in _TAIL_COLUMNS} if self.cols else new
        steps = np.unique(cols["step"])
        if len(steps) > self.window:
            keep = cols["step"] >= steps[-self.window]
            cols = {c: v[keep] for c, v in cols.items()}
        self.cols = cols

    def close(self) -> None:
        pass

    def state(self) -> dict[str, Any]:
        return _to_tensors(dict(self.cols))

    def load(self, state: Mapping[str, Any]) -> None:
        self.cols = {
            c: np.asarray(
                v.numpy() if isinstance(v, torch.Tensor) else v,
                dtype=object if c in ("param", "reason") else None,
            )
            for c, v in state.items()
        }

    def mean_ratio(self) -> float:
        """Mean over the latest step's rows of RMS Δ / Δ* (the progress bar's figure)."""
        if not self.cols:
            return math.nan
        last = self.cols["step"] == self.cols["step"].max()
        with np.errstate(invalid="ignore", divide="ignore"):
            r = self.cols["angular_update_rms"][last] / self.cols["theory_angular_update"][last]
        r = r[np.isfinite(r)]
        return float(r.mean()) if r.size else math.nan

    def summary(self, stage_start: int) -> dict[str, Any]:
        """`rundir.summary_figures` over the window, never reaching back before ``stage_start``."""
        if not self.cols or not len(self.cols["step"]):
            return {"layers": {}}
        c = self.cols
        last = c["step"] == c["step"].max()
        reasons: dict[str, str] = {}
        for name, reason in zip(c["param"][last].tolist(), c["reason"][last].tolist(), strict=True):
            if str(reason) and not reasons.get(str(name)):
                reasons[str(name)] = str(reason)
        return rundir.summary_figures(rundir.records_equilibrium(c, self.window, stage_start), reasons)


# ---------------------------------------------------------------------------------------------- Ctrl-C


class _Interrupts:
    """Defers SIGINT while an update is being applied, so a checkpoint never holds half a step.

    Outside the critical section Ctrl-C raises at once; inside it is remembered and raised right after.
    A second Ctrl-C inside the section raises immediately. Only the main thread can install handlers.
    """

    def __init__(self) -> None:
        self.critical = False
        self.pending = False
        self._old: Any = None

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.critical and not self.pending:
            self.pending = True
            return
        raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


# ---------------------------------------------------------------------------------------------- the run


def _default_out(cfg: Config) -> Path:
    return Path("runs") / f"{cfg.run.name}-{datetime.now():%Y%m%d-%H%M%S}"


def _check_resumable(saved: Config, cfg: Config, where: Path) -> None:
    differ = []
    for section in dataclasses.fields(Config):
        a, b = getattr(saved, section.name), getattr(cfg, section.name)
        for f in dataclasses.fields(a):
            if section.name == "run" and f.name in _RESUMABLE:
                continue
            if getattr(a, f.name) != getattr(b, f.name):
                differ.append(f"{section.name}.{f.name}: {getattr(a, f.name)!r} -> {getattr(b, f.name)!r}")
    if differ:
        raise ValueError(
            f"cannot resume {where}: the config differs from the run's config.toml in "
            + "; ".join(differ)
            + f" (only run.{', run.'.join(_RESUMABLE)} may change)"
        )


def _load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint to resume from, or a ValueError naming it when it cannot be read.

    ``torch.load`` says a truncated or foreign file is bad in many ways (EOFError, RuntimeError from the zip
    reader, OSError, UnpicklingError); they all become one message. A FIFO is refused before it can block.
    """
    if not path.is_file():
        raise ValueError(f"cannot resume: {path} is not a regular file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # only the reading of this one file is guarded
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else "unexpected end of file"
        why = why if len(why) <= 120 else why[:117] + "..."
        raise ValueError(
            f"cannot resume: {path} is not a readable checkpoint (truncated or corrupt?): "
            f"{type(exc).__name__}: {why}"
        ) from None
    keys = ("step", "model", "optimizer", "scheduler", "monitor", "rescaler", "generator", "torch_rng")
    missing = [k for k in keys if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"cannot resume: {path} is not a training checkpoint (no {', '.join(missing)})")
    return ckpt


class _Run:
    """One training run: everything `train` builds, the loop, and the files it writes."""

    def __init__(self, cfg: Config, run_dir: Path, resume: bool, source: Any, quiet: bool) -> None:
        self.cfg, self.dir, self.quiet = cfg, run_dir, quiet
        self.ckpt_path = run_dir / rundir.CHECKPOINT
        ckpt = None
        if resume:
            if not self.ckpt_path.exists():
                raise FileNotFoundError(f"cannot resume: {self.ckpt_path} does not exist")
            if (run_dir / rundir.CONFIG).exists():
                _check_resumable(load_config(run_dir / rundir.CONFIG), cfg, run_dir)
            ckpt = _load_checkpoint(self.ckpt_path)
        elif any((run_dir / n).exists() for n in (rundir.CHECKPOINT, rundir.TRAIN, rundir.METRICS_CSV)):
            raise FileExistsError(
                f"{run_dir} already holds a run; resume it (--resume) or choose another directory (--out)"
            )
        if cfg.run.threads > 0:
            torch.set_num_threads(cfg.run.threads)
        self.device = _device(cfg.run.device)
        self.source = _load_source(cfg) if source is None else source
        torch.manual_seed(cfg.run.seed)
        self.model = _build_model(cfg, self.source).to(self.device)
        self.optimizer = _build_optimizer(cfg, self.model)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_factor(cfg))
        self.generator = torch.Generator().manual_seed(cfg.run.seed)
        x_test, y_test = self.source.test_set()
        self.test = (x_test, y_test)
        example = x_test[: min(32, len(x_test))].to(self.device)
        # Written once the data and model are known to load, so a bad path leaves no half-made run behind.
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / rundir.CONFIG, header=f"smdyn run {cfg.run.name!r}")

        from smdyn.experiments.run_controls import RunControls

        self.controls = RunControls(cfg, self.optimizer, self.model, self._params(), example)
        from smdyn import SphericalMonitor
        from smdyn.sinks import CSVSink

        if ckpt is not None:  # rows written after the checkpoint by the stopped run would repeat
            rundir.truncate_csv(run_dir / rundir.METRICS_CSV, "step", float(ckpt["monitor"]["step"]))
            rundir.truncate_csv(run_dir / rundir.TRAIN, "step", float(ckpt["step"]) + 0.5)
        m = cfg.monitor
        self.tail = _Tail(m.window)
        self.monitor = SphericalMonitor(
            self.model,
            self.optimizer,
            self._params(),
            every=m.every,
            sinks=[CSVSink(run_dir / rundir.METRICS_CSV), self.tail],
            flush_every=m.flush_every,
            granularity=m.granularity,  # type: ignore[arg-type]
            window=m.window,
            tol=m.tol,
            keep_history=False,
            example_batch=example,
        )
        self.step = 0
        self.elapsed = 0.0
        self._acc = {"loss": 0.0, "correct": 0.0, "examples": 0.0, "steps": 0.0}
        self.last_eval = (math.nan, math.nan)
        self.last_train = (math.nan, math.nan)
        self.lr_used = float(self.optimizer.param_groups[0]["lr"])
        if ckpt is not None:
            self._load(ckpt)
        self.log = rundir.TrainLog(run_dir / rundir.TRAIN)

    def _params(self) -> Any:
        p = self.cfg.monitor.params
        if p == "matrices":
            return [n for n, t in self.model.named_parameters() if t.dim() >= 2]
        return p if isinstance(p, str) else list(p)

    # ------------------------------------------------------------------ state

    def _state(self, gen_state: torch.Tensor) -> dict[str, Any]:
        return {
            "format": 1,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "monitor": self.monitor.state_dict(),  # saveable as it is
            **self.controls.state(),  # "rescaler" and "control"
            "generator": gen_state,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "accumulators": dict(self._acc),
            "tail": self.tail.state(),
            "elapsed": self.elapsed,
            "last_eval": list(self.last_eval),
            "last_train": list(self.last_train),
            "lr_used": self.lr_used,
        }

    def _load(self, ckpt: Mapping[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.monitor.load_state_dict(ckpt["monitor"])
        self.controls.load(ckpt, int(ckpt["step"]))
        self.generator.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        if ckpt["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
        self._acc = {k: float(v) for k, v in ckpt["accumulators"].items()}
        self.tail.load(ckpt["tail"])
        self.step = int(ckpt["step"])
        self.elapsed = float(ckpt["elapsed"])
        self.last_eval = tuple(float(v) for v in ckpt["last_eval"])  # type: ignore[assignment]
        self.last_train = tuple(float(v) for v in ckpt["last_train"])  # type: ignore[assignment]
        self.lr_used = float(ckpt["lr_used"])

    def _checkpoint(self, gen_state: torch.Tensor) -> None:
        self.log.sync()
        _save_checkpoint(self.ckpt_path, self._state(gen_state))
        self._write_events()

    # ------------------------------------------------------------------ records

    def _evaluate(self) -> tuple[float, float]:
        x, y = self.test
        self.model.eval()
        loss = correct = count = 0.0
        with torch.no_grad():
            for i in range(0, len(x), _EVAL_BATCH):
                xb = x[i : i + _EVAL_BATCH].to(self.device)
                yb = y[i : i + _EVAL_BATCH].to(self.device)
                out, yb = _flat(self.model(xb), yb)
                loss += float(F.cross_entropy(out, yb, reduction="sum"))
                correct += float((out.argmax(1) == yb).sum())
                count += len(yb)
        self.model.train()
        return loss / count, correct / count

    def _row(self, evaluate: bool) -> None:
        a = self._acc
        loss = a["loss"] / a["steps"] if a["steps"] else math.nan
        acc = a["correct"] / a["examples"] if a["examples"] else math.nan
        self.last_train = (loss, acc)
        test = self._evaluate() if evaluate else (math.nan, math.nan)
        if evaluate:
            self.last_eval = test
        size = self.source.train_size
        epoch = self.step * self.cfg.data.batch_size / size if size else math.nan
        self.log.write(
            {
                "step": self.step,
                "epoch": float(epoch),
                "lr": self.lr_used,
                "loss": float(loss),
                "accuracy": float(acc),
                "test_loss": float(test[0]),
                "test_accuracy": float(test[1]),
            }
        )
        self._acc = {"loss": 0.0, "correct": 0.0, "examples": 0.0, "steps": 0.0}

    def _events(self) -> list[dict[str, Any]]:
        rows = [
            {
                "step": int(e["step"]),
                "kind": "lr_change",
                "group": int(e["group"]),
                "lr_before": float(e["lr_before"]),
                "lr_after": float(e["lr_after"]),
                "factor": float(e["lr_after"]) / float(e["lr_before"]),
            }
            for e in self.monitor.events
        ]
        rows += self.controls.rescale_events()
        rows.sort(key=lambda r: (r["step"], r["kind"] != "lr_change", r["group"]))
        return rows

    def _write_events(self) -> None:
        rundir.write_events(self.dir, self._events())

    def _summary(self, status: str, steps_this_run: int, loop_time: float, note: str = "") -> dict[str, Any]:
        out = {
            "name": self.cfg.run.name,
            "status": status,
            "note": note,
            "steps": self.step,
            "steps_planned": self.cfg.run.steps,
            "final_test_loss": self.last_eval[0],
            "final_test_accuracy": self.last_eval[1],
            "final_train_loss": self.last_train[0],
            "final_train_accuracy": self.last_train[1],
            "wall_time_s": self.elapsed,
            "steps_per_s": steps_this_run / loop_time if loop_time > 0 else math.nan,
            "monitored": len(self.monitor.units),
            "device": str(self.device),
            "threads": torch.get_num_threads(),
        }
        changes = [int(e["step"]) for e in self.monitor.events]
        out.update(self.tail.summary(int(rundir.stage_starts(changes)[-1])))
        rundir.write_summary(self.dir, out)
        return out

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        total, start = cfg.run.steps, self.step
        if start > total:
            raise ValueError(f"the checkpoint is at step {start}, beyond run.steps = {total}")
        progress = TrainingProgress(cfg.run.name, total, start, quiet=self.quiet)
        t_start = t0 = time.perf_counter()
        gen_state, drawn = self.generator.get_state(), False
        status, note = "completed", ""
        try:
            with _Interrupts() as guard:
                while self.step < total:
                    self.controls.before_step(self.step)
                    gen_state, drawn = self.generator.get_state(), True
                    x, y = self.source.train_batch(cfg.data.batch_size, self.generator)
                    x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                    out, y = _flat(self.model(x), y)
                    loss = F.cross_entropy(out, y)
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        status = "diverged"
                        note = f"non-finite training loss ({value}) at step {self.step}; update not applied"
                        break
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    guard.critical = True  # from here to the end of the step, Ctrl-C waits
                    self.lr_used = float(self.optimizer.param_groups[0]["lr"])
                    self.optimizer.step()
                    self.scheduler.step()
                    self.step += 1
                    a = self._acc
                    a["loss"] += value
                    a["correct"] += float((out.detach().argmax(1) == y).sum())
                    a["examples"] += len(y)
                    a["steps"] += 1
                    drawn = guard.critical = False
                    if guard.pending:
                        raise KeyboardInterrupt
                    self._after_step(progress)
                    if cfg.run.checkpoint_every and self.step % cfg.run.checkpoint_every == 0:
                        self.elapsed += time.perf_counter() - t0
                        t0 = time.perf_counter()
                        self._checkpoint(self.generator.get_state())
        except KeyboardInterrupt:
            # A step whose batch was drawn but whose update was not counted is undone: rewind its batch.
            self.elapsed += time.perf_counter() - t0
            progress.close()
            self._checkpoint(gen_state if drawn else self.generator.get_state())
            self._finish("interrupted", start, time.perf_counter() - t_start, "stopped by Ctrl-C")
            if not self.quiet:
                print(f"interrupted at step {self.step}; checkpoint saved in {self.dir}", file=sys.stderr)
            raise
        except BaseException:
            progress.close()
            self.log.close()
            self.monitor.close()
            self.controls.close()
            raise
        self.elapsed += time.perf_counter() - t0
        progress.close()
        if status == "diverged":
            if self._acc["steps"]:
                self._row(evaluate=False)
            print(f"smdyn train: {note}; stopped, rows up to step {self.step} are kept", file=sys.stderr)
        else:
            self._checkpoint(self.generator.get_state())
        return self._finish(status, start, time.perf_counter() - t_start, note)

    def _after_step(self, progress: TrainingProgress) -> None:
        cfg, step = self.cfg, self.step
        evaluate = step == cfg.run.steps or bool(cfg.run.eval_every and step % cfg.run.eval_every == 0)
        if evaluate or step % cfg.run.log_every == 0:
            self._row(evaluate)
            progress.update(step, self.last_train[0], self.last_train[1], self.tail.mean_ratio())
        else:
            progress.advance(step)

    def _finish(self, status: str, start: int, loop_time: float, note: str) -> dict[str, Any]:
        self.monitor.close()
        self.controls.close()
        self.log.close()
        self._write_events()
        return self._summary(status, self.step - start, loop_time, note)


# ---------------------------------------------------------------------------------------------- public


def train(
    cfg: Config | str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    *,
    source: Any = None,
    quiet: bool = False,
) -> Path:
    """Trains one configured run and writes its run directory; returns the directory.

    Args:
        cfg: a `Config`, or the path of a TOML config (or a shipped config's name).
        out_dir: the run directory; default ``runs/<run.name>-<date-time>``. Required for ``resume``.
        resume: continue the run in ``out_dir`` from its ``checkpoint.pt`` (only the [run] keys
            steps, eval_every, log_every, checkpoint_every, threads and device may differ from the
            saved config.toml). Bit-identical to a run that was never stopped, on the same machine.
        source: a data source to use instead of ``load_data(cfg.data...)`` (anything with the
            ``smdyn.experiments.data.DataSource`` interface).
        quiet: print nothing (no progress bar, no lines); the progress bar is also off when stdout is
            not a terminal.

    Raises:
        FileExistsError: ``out_dir`` already holds a run and ``resume`` is False.
        FileNotFoundError: ``resume`` without a checkpoint.
        ValueError / TypeError: a bad config, or a resume with a config that differs from the saved one.
        KeyboardInterrupt: re-raised after the checkpoint and summary are written.
    """
    if isinstance(cfg, (str, os.PathLike)):
        cfg = load_config(cfg)
    if not isinstance(cfg, Config):
        raise TypeError(f"cfg must be a Config or a path to a TOML config, got {type(cfg).__name__}")
    if resume and out_dir is None:
        raise ValueError("resume=True needs out_dir, the run directory to continue")
    run_dir = Path(out_dir) if out_dir is not None else _default_out(cfg)
    threads = torch.get_num_threads()
    try:
        _Run(cfg, run_dir, resume, source, quiet).run()
    finally:
        torch.set_num_threads(threads)
    return run_dir


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``CONFIG [--set section.key=value ...] [--out DIR] [--resume] [--quiet]`` to ``parser``."""
    parser.add_argument("config", help="a TOML config file, or the name of a shipped config (fig3_sgdm, ...)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (TOML syntax, e.g. optim.lr=0.05); repeatable",
    )
    parser.add_argument("--out", default=None, help="run directory (default: a new folder under runs/)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out (or in the folder of CONFIG when it is a run's config.toml)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def train_main(args: argparse.Namespace) -> int:
    """Runs ``smdyn train`` from parsed arguments; returns the exit status (0 done, 1 diverged, 2 bad
    input, 130 interrupted)."""
    try:
        cfg = load_config(args.config, args.overrides)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"smdyn train: {exc}", file=sys.stderr)
        return 2
    out = args.out
    if args.resume and out is None:
        folder = Path(args.config).parent
        if (folder / "checkpoint.pt").exists():
            out = folder
        else:
            print("smdyn train: --resume needs --out DIR (the run directory to continue)", file=sys.stderr)
            return 2
    try:
        run_dir = train(cfg, out, resume=args.resume, quiet=args.quiet)
    except KeyboardInterrupt:
        print(
            f"smdyn train: interrupted; continue with: smdyn train {args.config} "
            f"--out {out or '<run dir>'} --resume",
            file=sys.stderr,
        )
        return 130
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError) as exc:
        print(f"smdyn train: {exc}", file=sys.stderr)
        return 2
    summary = json.loads((run_dir / rundir.SUMMARY).read_text())
    if not args.quiet:
        _print_summary(summary)
        print(f"wrote {run_dir}")
    return 1 if summary["status"] == "diverged" else 0


def _print_summary(s: Mapping[str, Any]) -> None:
    def f(x: Any, spec: str = ".3f") -> str:
        return "-" if x is None else format(x, spec)

    print(
        f"{s['name']}: {s['status']} after {s['steps']} steps, test accuracy {f(s['final_test_accuracy'])}, "
        f"{f(s['steps_per_s'], '.1f')} steps/s"
    )
    layers = s.get("layers", {})
    if layers:
        width = max(len(n) for n in layers)
        print(f"  {'layer':<{width}}  RMS Δ/Δ*  mean Δ/Δ*  ‖w‖/w*  equilibrium")
        for name, v in layers.items():
            print(
                f"  {name:<{width}}  {f(v['angular_update_rms_ratio']):>8}"
                f"  {f(v['angular_update_mean_ratio']):>9}  {f(v['weight_norm_ratio']):>6}"
                f"  {f(v['in_equilibrium'], '.2f'):>11}"
            )
        print(
            f"  median |RMS Δ/Δ* − 1| = {f(s.get('median_angular_update_rms_deviation'))}, "
            f"median |‖w‖/w* − 1| = {f(s.get('median_weight_norm_deviation'))}, "
            f"in equilibrium: {f(s.get('fraction_in_equilibrium'), '.0%')}"
        )


def _main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - `python -m` convenience
    parser = argparse.ArgumentParser(prog="smdyn train")
    add_train_arguments(parser)
    return train_main(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
