"""Typed configuration of a training run, read from TOML and checked key by key before anything runs.

A run of the paper's experiments (Wan et al. 2021, Sec 4) is fully described by η, λ, α, the learning-rate
schedule (the drops of Sec 4.2 and Corollary 3.1 are milestones in *optimizer steps*), the data, the model
and how the monitor samples it. A TOML file names them in eight sections::

    [run]       name, seed, steps, eval_every, log_every, checkpoint_every, threads, device
    [data]      name, root, seed, batch_size, options = {...}
    [model]     name, options = {...}
    [optim]     name (sgd | adam | adamw | muon), lr, momentum, weight_decay, nesterov, betas, adamw_lr
    [schedule]  kind (constant | multistep | step | cosine), milestones, gamma, step_size, warmup
    [monitor]   every, granularity, window, flush_every, tol, params ("auto", "matrices" or a list of names)
    [rescale]   enabled, mode (drops | continuous), after_warmup
    [control]   kind (none | corrected_decay | corrected_growth | rotation)

Every section and key may be left out (the defaults are the dataclass defaults below). An unknown section or
key, a value of the wrong type or a value out of range is reported with its section, key and what is
allowed, all problems of a file at once. ``--set section.key=value`` overrides are parsed as TOML values
(``--set optim.lr=0.05``, ``--set model.options.width=8``; a bare word is a string). `save_config` writes a
complete file that `load_config` reads back to an equal `Config`.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import os
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Config",
    "ControlConfig",
    "DataConfig",
    "ModelConfig",
    "MonitorConfig",
    "OptimConfig",
    "RescaleConfig",
    "RunConfig",
    "ScheduleConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "save_config",
    "scale_steps",
    "shipped_configs",
]

_OPTIMIZERS = ("sgd", "adam", "adamw", "muon")
_SCHEDULES = ("constant", "multistep", "step", "cosine")
_CONTROLS = ("none", "corrected_decay", "corrected_growth", "rotation")
# The data sets the loader knows; read from the data module when it is importable (see `_dataset_names`).
_DATASETS_FALLBACK = ("digits", "mnist1d", "shapes", "cifar10", "imagefolder")


@dataclass(frozen=True)
class RunConfig:
    """What to run and for how long. Steps count optimizer steps (the paper's iterations), not epochs."""

    name: str = "run"
    seed: int = 0  # model initialisation and batch order
    steps: int = 1000  # optimizer steps
    eval_every: int = 0  # test-set evaluation every N steps; 0: at the end only
    log_every: int = 50  # a train.csv row every N steps (means over the interval)
    checkpoint_every: int = 0  # checkpoint.pt every N steps; 0: at the end (and on Ctrl-C) only
    threads: int = 2  # torch CPU threads; 0 leaves torch's default
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", ... or "auto" (cuda when available)


@dataclass(frozen=True)
class DataConfig:
    """Which data set; ``seed`` generates / splits it, so it stays the same across ``run.seed`` values."""

    name: str = "mnist1d"
    root: str | None = None  # folder of on-disk data sets (cifar10, imagefolder); unused by generated ones
    seed: int = 0
    batch_size: int = 128  # examples per optimizer step
    options: dict[str, Any] = field(default_factory=dict)  # passed to load_data(name, **options)


@dataclass(frozen=True)
class ModelConfig:
    """A model of ``smdyn.experiments.models.MODELS``; num_classes and input sizes come from the data."""

    name: str = "cnn1d"
    options: dict[str, Any] = field(default_factory=dict)  # passed to build_model(name, **options)


@dataclass(frozen=True)
class OptimConfig:
    """The update rule. ``sgd`` with ``nesterov = false`` is exactly Eqs 10–11 (coupled weight decay).

    ``muon``: ``torch.optim.Muon`` (lr, weight_decay, momentum, nesterov) on the hidden 2-D weights of a model
    that declares them (``parameter_roles``, as ``gpt`` does), AdamW (``adamw_lr``, ``betas``,
    ``weight_decay``) on the rest, stepped together.
    """

    name: str = "sgd"
    lr: float = 0.1  # η (peak value; the schedule multiplies it)
    momentum: float = 0.0  # α (sgd), μ (muon)
    weight_decay: float = 5e-4  # λ: coupled for sgd and adam, decoupled for adamw and muon
    nesterov: bool = False  # sgd (no equilibrium theory is derived for it) and muon
    betas: tuple[float, float] = (0.9, 0.999)  # adam, adamw and the AdamW part of muon
    adamw_lr: float | None = None  # muon only: the AdamW part's lr (default: lr)


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate factor per optimizer step, times the optional linear warm-up.

    ``multistep``: × gamma at each step of ``milestones``; ``step``: × gamma every ``step_size`` steps;
    ``cosine``: half a cosine from 1 to 0 over ``run.steps``; ``constant``: 1.
    """

    kind: str = "constant"
    milestones: tuple[int, ...] = ()  # optimizer steps at which the lr is multiplied by gamma
    gamma: float = 0.1  # the paper's drops divide the lr by k = 1/gamma = 10
    step_size: int = 0  # for kind = "step"
    warmup: int = 0  # linear warm-up steps from lr/warmup to lr (Goyal et al. 2017)


@dataclass(frozen=True)
class MonitorConfig:
    """Arguments of `smdyn.SphericalMonitor` (see its docstring)."""

    every: int = 1  # record every N-th optimizer step
    granularity: str = "tensor"  # or "channel": one row per BatchNorm channel
    window: int = 200  # recorded steps in the RMS Δ and L windows (the paper's Fig 3 uses 200)
    flush_every: int = 100  # recorded steps per transfer to the host and metrics.csv
    tol: float = 0.1  # in equilibrium when |RMS Δ/Δ* − 1| <= tol over a full window
    # "auto" (the scale-invariant weights), "matrices" (every weight of 2 or more dimensions, invariant or
    # not) or parameter names ("a.weight+a.bias" for a pair)
    params: str | tuple[str, ...] = "auto"


@dataclass(frozen=True)
class RescaleConfig:
    """The Sec 4.2 rescaling: scale-invariant weights × k^(−¼) when the lr is divided by k."""

    enabled: bool = False
    mode: str = "drops"  # "drops": at each lr drop; "continuous": every step, for smooth schedules
    # attach at the end of the warm-up: a fresh initialisation is far from the equilibrium of the warm-up's
    # first lr, and following w* ∝ η^p through the warm-up would multiply it by (peak/lr₀)^p
    after_warmup: bool = False


@dataclass(frozen=True)
class ControlConfig:
    """A control of the scale-invariant weights other than the rescaling (docs/design.md §6).

    ``none``; ``corrected_decay``: `smdyn.CorrectedWeightDecay` (λ_t = λ·η_t/η_max, Defazio et al. 2025);
    ``corrected_growth``: the same with ``track_growth=True`` (λ_t also follows the measured growth of the
    norm per step; AdamW only); ``rotation``: `smdyn.RotationController` (the initial norm held,
    Δ_t = Δ*(η_t) every step).
    """

    kind: str = "none"


@dataclass(frozen=True)
class Config:
    """A whole run: one field per TOML section."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    rescale: RescaleConfig = field(default_factory=RescaleConfig)
    control: ControlConfig = field(default_factory=ControlConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict (tuples as lists, ``None`` left out), as written to ``config.toml``."""
        out: dict[str, dict[str, Any]] = {}
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            out[f.name] = {
                k.name: _plain(getattr(section, k.name))
                for k in dataclasses.fields(section)
                if getattr(section, k.name) is not None
            }
        return out


_SECTIONS: dict[str, type] = {
    "run": RunConfig,
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "monitor": MonitorConfig,
    "rescale": RescaleConfig,
    "control": ControlConfig,
}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------------------- parsing


def _toml() -> Any:
    """``tomllib`` (Python >= 3.11), or the ``tomli`` package it came from on Python 3.10."""
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError as exc:
            raise ImportError("reading TOML configs on Python 3.10 needs tomli: pip install tomli") from exc
    return tomllib


class _Problems:
    """Collects one message per bad key so a file with three typos is fixed in one go."""

    def __init__(self) -> None:
        self.items: list[tuple[type[Exception], str]] = []

    def add(self, kind: type[Exception], message: str) -> None:
        self.items.append((kind, message))

    def raise_if_any(self, source: str | None) -> None:
        if not self.items:
            return
        kind = self.items[0][0]
        lines = [m for _, m in self.items]
        where = f"{source}: " if source else ""
        if len(lines) == 1:
            raise kind(f"{where}{lines[0]}")
        raise kind(f"{where}{len(lines)} problems in the config:\n  " + "\n  ".join(lines))


def _type_name(hint: Any) -> str:
    names = {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
        dict[str, Any]: "a table",
        tuple[int, ...]: "a list of integers",
        tuple[float, float]: "a list of two numbers",
        str | None: "a string",
        float | None: "a number",
        str | tuple[str, ...]: '"auto" or a list of strings',
    }
    return names.get(hint, str(hint))


def _convert(hint: Any, value: Any) -> Any:
    """Converts a TOML value to the field's type, or raises TypeError (message filled in by the caller)."""

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and is_int(value):
        return value
    if hint in (float, float | None) and is_num(value):
        return float(value)
    if hint in (str, str | None) and isinstance(value, str):
        return value
    if hint == dict[str, Any] and isinstance(value, dict):
        return value
    if hint == tuple[int, ...] and isinstance(value, (list, tuple)) and all(is_int(v) for v in value):
        return tuple(value)
    if (
        hint == tuple[float, float]
        and isinstance(value, (list, tuple))
        and len(value) == 2
        and all(is_num(v) for v in value)
    ):
        return tuple(float(v) for v in value)
    if hint == str | tuple[str, ...]:
        if isinstance(value, str):
            return value
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
    raise TypeError


def _section(name: str, cls: type, raw: Any, problems: _Problems) -> Any:
    if not isinstance(raw, Mapping):
        problems.add(TypeError, f"[{name}] must be a table, got {type(raw).__name__} {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    allowed = [f.name for f in dataclasses.fields(cls)]
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in hints:
            problems.add(ValueError, f"[{name}] unknown key {key!r}; allowed keys: {', '.join(allowed)}")
            continue
        try:
            values[key] = _convert(hints[key], value)
        except TypeError:
            problems.add(
                TypeError,
                f"[{name}] {key} must be {_type_name(hints[key])}, got {type(value).__name__} {value!r}",
            )
    return cls(**values)


def _dataset_names() -> tuple[str, ...]:
    try:
        from smdyn.experiments.data import DATASETS
    except ImportError:
        return _DATASETS_FALLBACK
    return tuple(DATASETS)


def _check_values(cfg: Config, problems: _Problems) -> None:
    """Range and cross-field checks: each names the section, the key, the value and what is allowed."""

    def bad(section: str, key: str, value: Any, what: str) -> None:
        problems.add(ValueError, f"[{section}] {key} = {value!r}: {what}")

    def finite(v: float) -> bool:
        return math.isfinite(v)

    r = cfg.run
    if not r.name or not re.fullmatch(r"[A-Za-z0-9._-]+", r.name):
        bad("run", "name", r.name, "must be non-empty letters, digits, '.', '_' or '-' (it names a folder)")
    if r.steps < 1:
        bad("run", "steps", r.steps, "must be >= 1")
    for key in ("eval_every", "checkpoint_every", "threads", "seed"):
        if getattr(r, key) < 0:
            bad("run", key, getattr(r, key), "must be >= 0")
    if r.log_every < 1:
        bad("run", "log_every", r.log_every, "must be >= 1")
    if not re.fullmatch(r"cpu|auto|cuda(:\d+)?|mps", r.device):
        bad("run", "device", r.device, "must be 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'")

    d = cfg.data
    names = _dataset_names()
    if d.name not in names:
        bad("data", "name", d.name, f"unknown data set; known: {', '.join(names)}")
    if d.batch_size < 1:
        bad("data", "batch_size", d.batch_size, "must be >= 1")
    if d.seed < 0:
        bad("data", "seed", d.seed, "must be >= 0")
    if "seed" in d.options or "root" in d.options:
        bad("data", "options", d.options, "set seed and root as [data] keys, not options")

    from smdyn.experiments.models import MODELS

    if cfg.model.name not in MODELS:
        bad("model", "name", cfg.model.name, f"unknown model; known: {', '.join(sorted(MODELS))}")
    if "num_classes" in cfg.model.options:
        bad("model", "options", cfg.model.options, "num_classes comes from the data set; leave it out")

    o = cfg.optim
    if o.name not in _OPTIMIZERS:
        bad("optim", "name", o.name, f"must be one of {', '.join(_OPTIMIZERS)}")
    if not (finite(o.lr) and o.lr > 0):
        bad("optim", "lr", o.lr, "must be a finite number > 0")
    if not (0 <= o.momentum < 1):
        bad("optim", "momentum", o.momentum, "must be in [0, 1)")
    if not (finite(o.weight_decay) and o.weight_decay >= 0):
        bad("optim", "weight_decay", o.weight_decay, "must be a finite number >= 0")
    if not all(0 <= b < 1 for b in o.betas):
        bad("optim", "betas", list(o.betas), "each must be in [0, 1)")
    if o.name not in ("sgd", "muon") and o.momentum != 0:
        bad("optim", "momentum", o.momentum, f"applies to sgd only, and to muon ({o.name} uses betas)")
    if o.name not in ("sgd", "muon") and o.nesterov:
        bad("optim", "nesterov", o.nesterov, "applies to sgd only, and to muon")
    if o.name == "sgd" and o.nesterov and o.momentum == 0:
        bad("optim", "nesterov", o.nesterov, "needs momentum > 0")
    if o.adamw_lr is not None and o.name != "muon":
        bad("optim", "adamw_lr", o.adamw_lr, f"applies to muon only, not {o.name!r}")
    if o.adamw_lr is not None and not (finite(o.adamw_lr) and o.adamw_lr > 0):
        bad("optim", "adamw_lr", o.adamw_lr, "must be a finite number > 0")

    s = cfg.schedule
    if s.kind not in _SCHEDULES:
        bad("schedule", "kind", s.kind, f"must be one of {', '.join(_SCHEDULES)}")
    if not (finite(s.gamma) and s.gamma > 0):
        bad("schedule", "gamma", s.gamma, "must be a finite number > 0")
    if s.warmup < 0:
        bad("schedule", "warmup", s.warmup, "must be >= 0")
    if s.step_size < 0:
        bad("schedule", "step_size", s.step_size, "must be >= 0")
    ms = list(s.milestones)
    if s.kind == "multistep":
        if not ms:
            bad("schedule", "milestones", ms, "kind = 'multistep' needs at least one milestone")
        elif any(m < 1 for m in ms) or any(b <= a for a, b in itertools.pairwise(ms)):
            bad("schedule", "milestones", ms, "must be strictly increasing steps >= 1")
    elif ms:
        bad("schedule", "milestones", ms, f"only used by kind = 'multistep', not {s.kind!r}")
    if s.kind == "step" and s.step_size < 1:
        bad("schedule", "step_size", s.step_size, "kind = 'step' needs step_size >= 1")
    if s.kind != "step" and s.step_size != 0:
        bad("schedule", "step_size", s.step_size, f"only used by kind = 'step', not {s.kind!r}")

    m = cfg.monitor
    if m.every < 1:
        bad("monitor", "every", m.every, "must be >= 1")
    if m.granularity not in ("tensor", "channel"):
        bad("monitor", "granularity", m.granularity, "must be 'tensor' or 'channel'")
    if m.window < 2:
        bad("monitor", "window", m.window, "must be >= 2")
    if m.flush_every < 1:
        bad("monitor", "flush_every", m.flush_every, "must be >= 1")
    if not (finite(m.tol) and m.tol > 0):
        bad("monitor", "tol", m.tol, "must be a finite number > 0")
    if isinstance(m.params, str) and m.params not in ("auto", "matrices"):
        bad("monitor", "params", m.params, "must be 'auto', 'matrices' or a list of parameter names")
    if not isinstance(m.params, str) and not m.params:
        bad("monitor", "params", list(m.params), "an empty list monitors nothing; use 'auto'")

    if cfg.rescale.mode not in ("drops", "continuous"):
        bad("rescale", "mode", cfg.rescale.mode, "must be 'drops' or 'continuous'")
    if cfg.rescale.enabled and o.name == "adam":
        bad(
            "rescale",
            "enabled",
            True,
            "Adam with L2 weight decay has no derived equilibrium law to rescale by; use sgd or adamw",
        )
    if cfg.rescale.enabled and o.name == "muon":
        bad("rescale", "enabled", True, "rescaling is not supported with muon's two optimizers")
    _check_control(cfg, bad)


def _check_control(cfg: Config, bad: Any) -> None:
    kind = cfg.control.kind
    if kind not in _CONTROLS:
        bad("control", "kind", kind, f"must be one of {', '.join(_CONTROLS)}")
    elif kind != "none" and cfg.rescale.enabled:
        bad("control", "kind", kind, "one control per weight: set [rescale] enabled = false to use it")
    elif kind == "corrected_growth" and cfg.optim.name != "adamw":
        bad(
            "control",
            "kind",
            kind,
            f"follows the growth of decoupled decay: needs adamw, not {cfg.optim.name!r}",
        )
    elif kind != "none" and cfg.optim.name not in ("sgd", "adamw"):
        bad(
            "control",
            "kind",
            kind,
            f"needs sgd or adamw, whose weight decay and Δ* are known, not {cfg.optim.name!r}",
        )


def config_from_dict(raw: Mapping[str, Any], *, source: str | None = None) -> Config:
    """Builds and validates a `Config` from a nested dict (a parsed TOML document).

    Args:
        raw: ``{section: {key: value}}``; missing sections and keys take their defaults.
        source: where ``raw`` came from, prefixed to error messages.

    Raises:
        ValueError: unknown sections or keys, or values out of range (all of them, one line each).
        TypeError: a value of the wrong type, when that is the first problem found.
    """
    if not isinstance(raw, Mapping):
        raise TypeError(f"raw must be a mapping of section name to table, got {type(raw).__name__}")
    problems = _Problems()
    sections: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in _SECTIONS:
            what = "section" if isinstance(value, Mapping) else "top-level key"
            problems.add(ValueError, f"unknown {what} {name!r}; allowed sections: {', '.join(_SECTIONS)}")
            continue
        sections[name] = _section(name, _SECTIONS[name], value, problems)
    cfg = Config(**sections)
    if not problems.items:
        _check_values(cfg, problems)
    problems.raise_if_any(source)
    return cfg


def _set_dotted(raw: dict[str, Any], path: list[str], value: Any, text: str) -> None:
    node = raw
    for i, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"--set {text}: {'.'.join(path[: i + 1])} is not a table")
        node = child
    node[path[-1]] = value


def _parse_value(text: str) -> Any:
    """A TOML value; a bare word that is not valid TOML (``digits``) is taken as a string."""
    toml = _toml()
    try:
        return toml.loads(f"v = {text}")["v"]
    except toml.TOMLDecodeError:
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./:+-]*", text):
            return text
        raise ValueError(f"--set value {text!r} is not a TOML value (quote strings: '\"...\"')") from None


def apply_overrides(raw: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Returns a copy of ``raw`` with each ``section.key=value`` (TOML value) applied, in order.

    ``model.options.width=8`` sets a key inside an options table. Validation happens afterwards, in
    `config_from_dict`, so an override with an unknown key gets the same message as a file would.

    Raises:
        ValueError: an override without ``=``, without a ``section.key`` path, or with a bad value.
    """
    out = copy.deepcopy(dict(raw))
    for text in overrides:
        if not isinstance(text, str):
            raise TypeError(f"overrides must be strings 'section.key=value', got {text!r}")
        key, sep, value = text.partition("=")
        path = [p.strip() for p in key.strip().split(".")]
        if not sep or len(path) < 2 or not all(path):
            raise ValueError(f"--set {text!r}: expected section.key=value, e.g. optim.lr=0.05")
        _set_dotted(out, path, _parse_value(value.strip()), text)
    return out


def load_config(path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> Config:
    """Reads a TOML config, applies ``--set`` overrides and validates it.

    Args:
        path: a ``.toml`` file, or the name of a shipped config (``"fig3_sgdm"``; see `shipped_configs`).
        overrides: ``section.key=value`` strings, values in TOML syntax.

    Raises:
        FileNotFoundError: no such file and no shipped config of that name.
        ValueError / TypeError: a TOML syntax error or a bad key or value; the message names the file.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    p = Path(path)
    if not p.exists():
        shipped = shipped_configs()
        name = p.name.removesuffix(".toml")
        if str(path) == p.name and name in shipped:
            p = shipped[name]
        else:
            raise FileNotFoundError(
                f"config {str(path)!r} not found (shipped configs: {', '.join(sorted(shipped))})"
            )
    toml = _toml()
    try:
        raw = toml.loads(p.read_text(encoding="utf-8"))
    except toml.TOMLDecodeError as exc:
        raise ValueError(f"{p}: not valid TOML: {exc}") from None
    overrides = list(overrides)
    try:
        raw = apply_overrides(raw, overrides)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{p}: {exc}") from None
    return config_from_dict(raw, source=str(p) + (" (with --set overrides)" if overrides else ""))


# ---------------------------------------------------------------------------------------------- writing


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are a subset of TOML's
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = [f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} to TOML")


def _dumps(cfg: Config, header: str = "") -> str:
    """The TOML text of ``cfg``: every key of every section, so the file alone reproduces the run."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for section, values in cfg.to_dict().items():
        if lines:
            lines.append("")
        lines.append(f"[{section}]")
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def save_config(cfg: Config, path: str | os.PathLike[str], header: str = "") -> Path:
    """Writes ``cfg`` as a complete TOML file (atomically) that `load_config` reads back equal.

    Args:
        cfg: the configuration.
        path: the file to write.
        header: text written as ``#`` comment lines at the top.
    """
    if not isinstance(cfg, Config):
        raise TypeError(f"cfg must be a Config, got {type(cfg).__name__}")
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(_dumps(cfg, header), encoding="utf-8")
    os.replace(tmp, p)
    return p


# ---------------------------------------------------------------------------------------------- utilities


def shipped_configs() -> dict[str, Path]:
    """The configs shipped with smdyn, by name (file name without ``.toml``)."""
    folder = Path(__file__).with_name("configs")
    return {p.stem: p for p in sorted(folder.glob("*.toml"))}


def scale_steps(cfg: Config, factor: float) -> Config:
    """The same run with every step count multiplied by ``factor`` (a short smoke-test variant).

    Scales ``run.steps``, ``eval_every``, ``log_every``, ``checkpoint_every``, the schedule's milestones,
    ``step_size`` and ``warmup``, and caps ``monitor.window`` so it still fits in a stage. Step counts
    are rounded and kept >= 1 where they were; milestones stay distinct and below ``run.steps``.

    Raises:
        ValueError: ``factor`` is not a finite number > 0, or the scaled run is too short for its
            milestones.
    """
    if isinstance(factor, bool) or not isinstance(factor, (int, float)):
        raise TypeError(f"factor must be a number, got {type(factor).__name__}")
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"factor must be a finite number > 0, got {factor!r}")

    def sc(n: int) -> int:
        return 0 if n == 0 else max(1, round(n * factor))

    steps = sc(cfg.run.steps)
    run = dataclasses.replace(
        cfg.run,
        steps=steps,
        eval_every=sc(cfg.run.eval_every),
        log_every=sc(cfg.run.log_every),
        checkpoint_every=sc(cfg.run.checkpoint_every),
    )
    milestones = tuple(sc(m) for m in cfg.schedule.milestones)
    stages = [b - a for a, b in zip((0, *milestones), (*milestones, steps), strict=True)]
    sched = dataclasses.replace(
        cfg.schedule,
        milestones=milestones,
        step_size=sc(cfg.schedule.step_size),
        warmup=sc(cfg.schedule.warmup),
    )
    window = min(cfg.monitor.window, max(2, min(stages) // 2)) if milestones else cfg.monitor.window
    window = min(window, max(2, steps // 2))
    monitor = dataclasses.replace(cfg.monitor, window=window, flush_every=min(cfg.monitor.flush_every, steps))
    out = dataclasses.replace(cfg, run=run, schedule=sched, monitor=monitor)
    problems = _Problems()
    _check_values(out, problems)
    problems.raise_if_any(f"scale_steps(factor={factor})")
    return out
