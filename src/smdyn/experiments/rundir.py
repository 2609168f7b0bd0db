"""The run directory (docs/design.md §5): its file names, the writer a training run uses, the one reader
every figure, report and claim uses, and the one equilibrium summary over a run's last window.

A run directory holds:

- ``config.toml``: the complete configuration, enough to run it again.
- ``metrics.csv`` or ``metrics/part-*.parquet``: the monitor's records (`smdyn.sinks`), one row per recorded
  step and monitored weight (or channel); ``step`` is the 0-based optimizer step.
- ``train.csv``: `TRAIN_COLUMNS`, one row per logged step, flushed row by row.
- ``events.csv``: `EVENT_COLUMNS`: learning-rate changes (``lr_change``) and weight rescalings
  (``rescale``).
- ``summary.json``: status, timings, final accuracies and `equilibrium` over the last window.
- ``checkpoint.pt``: everything needed to resume (written by `smdyn.experiments.train`).

Reading: the metrics are parsed by `smdyn.sinks.read_metrics`, the same reader a user of the sinks has, so
there is one rule for part order, booleans and missing values. Per-channel records are folded into one row
per step and layer (`fold_channels`), and each metric is available as a [steps × layers] array
(`Run.wide`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from smdyn.experiments._io import atomic_write_json, atomic_write_text, load_toml
from smdyn.monitor.columns import COLLAPSE, COLUMNS, HPARAMS

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "EVENTS",
    "EVENT_COLUMNS",
    "METRICS_CSV",
    "METRICS_DIR",
    "SUMMARY",
    "TRAIN",
    "TRAIN_COLUMNS",
    "Equilibrium",
    "NoDataError",
    "Run",
    "TrainLog",
    "collapse_flags",
    "equilibrium",
    "fold_channels",
    "load_run",
    "lr_changes",
    "monitor_window",
    "nonfinite_flags",
    "read_metrics",
    "records_equilibrium",
    "run_equilibrium",
    "stage_starts",
    "summary_figures",
    "truncate_csv",
    "write_events",
    "write_summary",
]

CONFIG = "config.toml"
METRICS_CSV = "metrics.csv"
METRICS_DIR = "metrics"
TRAIN = "train.csv"
EVENTS = "events.csv"
SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pt"

#: Columns of ``train.csv``, in order.
TRAIN_COLUMNS = ("step", "epoch", "lr", "loss", "accuracy", "test_loss", "test_accuracy")
#: Columns of ``events.csv``, in order.
EVENT_COLUMNS = ("step", "kind", "group", "lr_before", "lr_after", "factor")

# The numeric columns of the monitor's records that a figure, the report or a claim reads (a selection,
# checked against the monitor's own column list when this module is imported).
_FLOAT_COLUMNS = (
    *HPARAMS,
    "weight_norm",
    "unit_grad_sq",
    "h_tilde",
    "angular_update",
    "angular_update_rms",
    "angular_update_mean",
    "theory_angular_update",
    "theory_weight_norm",
)
assert set(_FLOAT_COLUMNS) <= set(COLUMNS), "rundir reads a column the monitor does not write"
_TEXT_COLUMNS = ("param", "reason", "reason_code")
_NA = ["nan", "NaN", "-nan", ""]
_MAX_STAGES = 12  # more LR changes than this is a continuous schedule: one stage
_EVENT_TOL = 0.05  # an LR move of 5% since the last change starts a new stage (as the monitor logs it)
_DEFAULT_WINDOW = 200  # the monitor's default window (the paper's Fig 3 averages 200 iterations)
#: The monitor's ``reason_code`` of a collapsing unit gradient; older runs only have the prose ``reason``.
COLLAPSE_CODE = COLLAPSE
_COLLAPSE_WORD = "collapsing"  # in the monitor's prose reason for a collapsing unit gradient


class NoDataError(ValueError):
    """The runs given hold nothing a figure or a claim can be drawn from (no metrics, no train.csv, ...)."""


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("reading run directories needs pandas: pip install 'smdyn[experiments]'") from exc
    return pandas


# ---------------------------------------------------------------------------------------------- writing


def _text(v: Any) -> str:
    return repr(float(v)) if isinstance(v, float) else str(v)


class TrainLog:
    """``train.csv``: appended row by row and flushed at once, so a killed process keeps every row."""

    def __init__(self, path: Path) -> None:
        new = not path.exists() or path.stat().st_size == 0
        self._file = open(path, "a", newline="", encoding="utf-8")  # noqa: SIM115 (kept open)
        self._writer = csv.writer(self._file, lineterminator="\n")
        if new:
            self._writer.writerow(TRAIN_COLUMNS)
            self._file.flush()

    def write(self, row: Mapping[str, float]) -> None:
        self._writer.writerow([_text(row[c]) for c in TRAIN_COLUMNS])
        self._file.flush()

    def sync(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self.sync()
            self._file.close()


def truncate_csv(path: Path, column: str, limit: float) -> None:
    """Cuts a CSV (rows in increasing ``column``) before its first row with ``column`` >= ``limit``.

    Also drops an unfinished last line. Used on resume, so rows written after the checkpoint by the run
    that was stopped are not duplicated.
    """
    if not path.exists():
        return
    with open(path, "rb") as f:
        header = f.readline()
        if not header.endswith(b"\n"):
            os.truncate(path, 0)
            return
        names = next(csv.reader([header.decode("utf-8")]))
        if column not in names:
            raise ValueError(f"{path} has no column {column!r}; its columns are {names}")
        index = names.index(column)
        offset = len(header)
        for line in f:
            if not line.endswith(b"\n"):
                break
            fields = next(csv.reader([line.decode("utf-8")]))
            if float(fields[index]) >= limit:
                break
            offset += len(line)
    os.truncate(path, offset)


def write_events(run_dir: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """``events.csv`` from rows with `EVENT_COLUMNS`, atomically (it is rewritten at every checkpoint)."""
    lines = [",".join(EVENT_COLUMNS)]
    lines += [",".join(_text(r[c]) for c in EVENT_COLUMNS) for r in rows]
    return atomic_write_text(run_dir / EVENTS, "\n".join(lines) + "\n")


def write_summary(run_dir: Path, summary: Mapping[str, Any]) -> Path:
    """``summary.json``, strict JSON (NaN and infinities as null), atomically."""
    return atomic_write_json(run_dir / SUMMARY, dict(summary))


# ---------------------------------------------------------------------------------------------- reading


def _csv_bytes(path: Path) -> io.BytesIO | Path:
    """The file, or its bytes up to the last newline when a killed writer left a partial line."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size:
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return path
        f.seek(0)
        data = f.read()
    warnings.warn(f"{path}: skipping an unfinished last line", RuntimeWarning, stacklevel=3)
    return io.BytesIO(data[: data.rfind(b"\n") + 1])


def read_table(path: Path, strings: Sequence[str] = ()) -> pd.DataFrame:
    """``train.csv`` or ``events.csv``: floats may be ``nan``/``inf``, string columns keep '' and 'NA'."""
    pd = _pandas()
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split(",")
    numeric = [c for c in header if c not in strings]
    return pd.read_csv(
        _csv_bytes(path),
        dtype={c: "category" for c in header if c in strings},
        keep_default_na=False,
        na_values=dict.fromkeys(numeric, _NA),
        on_bad_lines="warn",
    )


def _metrics_source(run_dir: Path) -> Path | None:
    """Where the run's metrics are: ``metrics.csv``, ``metrics/``, Parquet parts in the folder, or none."""
    csv_path, part_dir = run_dir / METRICS_CSV, run_dir / METRICS_DIR
    if csv_path.exists() and part_dir.exists():
        raise ValueError(f"{run_dir} holds both {METRICS_CSV} and {METRICS_DIR}/; keep one")
    if csv_path.exists():
        return csv_path
    if part_dir.is_dir() and any(part_dir.glob("part-*.parquet")):
        return part_dir
    if any(run_dir.glob("part-*.parquet")):
        return run_dir
    return None


def read_metrics(run_dir: str | os.PathLike[str]) -> pd.DataFrame | None:
    """The monitor's records of a run directory as a table, ``None`` when it has none.

    Parsed by `smdyn.sinks.read_metrics`; per-channel rows folded into their layer (`fold_channels`,
    the folded layers' names in ``attrs["per_channel"]``); a step recorded twice (a resumed run) keeps its
    later record; rows sorted by step, layers (the categories of ``param``) in the monitor's order.
    """
    from smdyn.sinks import read_metrics as read_records

    pd = _pandas()
    path = Path(run_dir)
    source = _metrics_source(path)
    if source is None:
        return None
    records = read_records(source)
    if "step" not in records or "param" not in records:
        raise ValueError(f"{path}: metrics need 'step' and 'param' columns, found {list(records)}")
    n = len(records["step"])
    df = pd.DataFrame({"step": np.asarray(records["step"]).astype(np.int64)})
    for c in _TEXT_COLUMNS:
        if c in records or c != "reason_code":  # reason_code only where the monitor recorded it
            values = records.get(c, np.full(n, "", dtype=object))
            df[c] = _categorical(pd.Series(values, dtype=object))
    channel = records.get("channel")
    channel = np.full(n, -1.0) if channel is None else channel.astype(np.float64)
    df["channel"] = np.nan_to_num(channel, nan=-1).astype(np.int64)
    for c in _FLOAT_COLUMNS:
        df[c] = records[c].astype(np.float64) if c in records else np.nan
    eq = np.asarray(records.get("in_equilibrium", np.zeros(n, dtype=bool)))
    # Booleans as the sinks write them; anything else by the sinks' rule for text ("True", "true", "1").
    df["in_equilibrium"] = eq if eq.dtype == bool else np.isin(eq.astype(str), ("True", "true", "1"))
    df = df.drop_duplicates(["step", "param", "channel"], keep="last")
    order = [str(x) for x in pd.unique(df["param"])]  # the monitor's order: first appearance
    df, folded = fold_channels(df)
    df["param"] = _categorical(df["param"]).cat.set_categories(order)
    for c in _TEXT_COLUMNS:
        if c in df:
            df[c] = _categorical(df[c])
    df = df.sort_values("step", kind="stable").reset_index(drop=True)
    df.attrs["per_channel"] = folded
    return df


def _categorical(col: pd.Series) -> pd.Series:
    """A string column as a categorical of ``str`` categories, missing values read as ''."""
    pd = _pandas()
    if isinstance(col.dtype, pd.CategoricalDtype):
        if col.isna().any():
            col = col.cat.add_categories([""]) if "" not in col.cat.categories else col
            col = col.fillna("")
        return col
    return col.fillna("").astype(str).astype("category")


def fold_channels(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Per-channel rows (``channel`` ≥ 0) folded into one row per step and layer, exactly where possible.

    ‖w‖² = Σ_c ‖w_c‖² and ‖g‖² = Σ_c ‖g̃_c‖²/‖w_c‖², so weight_norm, unit_grad_sq = ‖g‖²‖w‖² (Eq 6) and
    h̃ (Thm 2) of the whole tensor are exact; w*² is summed the same way. A tensor's angle is not a
    function of its channels' angles, so Δ, its window RMS and mean become the RMS (mean) over channels.
    ``in_equilibrium`` holds when most channels are in equilibrium; ``reason`` is any channel's reason.
    """
    chan = df["channel"].to_numpy() >= 0
    if not chan.any():
        return df, []
    pd = _pandas()
    c = df.loc[chan]
    w2 = c["weight_norm"] ** 2
    parts = pd.DataFrame(
        {
            "step": c["step"],
            "param": c["param"],
            "w2": w2,
            "g2": c["unit_grad_sq"] / w2,
            "h": c["h_tilde"] / w2,
            "d2": c["angular_update"] ** 2,
            "r2": c["angular_update_rms"] ** 2,
            "mean": c["angular_update_mean"],
            "t2": c["theory_weight_norm"] ** 2,
            "eq": c["in_equilibrium"].astype(np.float64),
        }
    )
    keys = [parts["step"], parts["param"]]
    g = parts.groupby(["step", "param"], sort=False, observed=True)
    # NaN in any channel makes the folded value NaN: a partial sum would be a silently wrong number.
    nan_any = parts[["w2", "g2", "h", "t2"]].isna().groupby(keys, sort=False, observed=True).any()
    sums = g[["w2", "g2", "h", "t2"]].sum().mask(nan_any)
    means = g[["d2", "r2", "mean", "eq"]].mean()
    first = c.groupby(["step", "param"], sort=False, observed=True)[
        ["lr", "wd", "momentum", "theory_angular_update"]
    ].first()
    texts = {
        t: c[t].astype(str).groupby([c["step"], c["param"]], sort=False, observed=True).max()
        for t in _TEXT_COLUMNS
        if t in c and t != "param"
    }
    folded = pd.DataFrame(
        {
            "weight_norm": np.sqrt(sums["w2"]),
            "unit_grad_sq": sums["g2"] * sums["w2"],
            "h_tilde": sums["h"] * sums["w2"],
            "angular_update": np.sqrt(means["d2"]),
            "angular_update_rms": np.sqrt(means["r2"]),
            "angular_update_mean": means["mean"],
            "theory_weight_norm": np.sqrt(sums["t2"]),
            "in_equilibrium": means["eq"] > 0.5,
            **texts,
            **{k: first[k] for k in first.columns},
        }
    ).reset_index()
    folded["channel"] = -1
    names = [str(n) for n in pd.unique(c["param"])]
    as_text = {t: str for t in _TEXT_COLUMNS if t in df}
    rest = df.loc[~chan].astype(as_text)
    folded = folded.astype(as_text)
    return pd.concat([rest, folded[df.columns]], ignore_index=True), names


def lr_changes(steps: np.ndarray, lr: np.ndarray) -> list[int]:
    """Steps where the learning rate moved ≥ 5% from its value at the previous change (Cor 3.1 stages)."""
    ok = np.isfinite(lr)
    steps, lr = steps[ok], lr[ok]
    if len(lr) < 2:
        return []
    candidates = np.flatnonzero(lr[1:] != lr[:-1]) + 1
    out, ref = [], lr[0]
    for i in candidates:  # only the steps where lr changes at all
        if ref > 0 and abs(lr[i] / ref - 1) >= _EVENT_TOL:
            out.append(int(steps[i]))
            ref = lr[i]
    return out


def _read_events(run_dir: Path, metrics: pd.DataFrame | None, train: pd.DataFrame | None) -> pd.DataFrame:
    """``events.csv`` (step, kind), or the LR changes read off the recorded learning rate without it."""
    pd = _pandas()
    path = run_dir / EVENTS
    if path.exists():
        ev = read_table(path, strings=("kind",))
        if "step" not in ev or "kind" not in ev:
            raise ValueError(f"{path}: needs 'step' and 'kind' columns, found {list(ev.columns)}")
        return ev[["step", "kind"]].astype({"step": np.int64}).sort_values("step").reset_index(drop=True)
    steps: list[int] = []
    if metrics is not None and len(metrics):
        first = metrics[metrics["param"] == metrics["param"].cat.categories[0]]
        steps = lr_changes(first["step"].to_numpy(), first["lr"].to_numpy())
    elif train is not None and "lr" in train and len(train):
        steps = lr_changes(train["step"].to_numpy(), train["lr"].to_numpy(dtype=np.float64))
    return pd.DataFrame({"step": np.asarray(steps, dtype=np.int64), "kind": "lr_change"})


@dataclass
class Run:
    """Everything a run directory holds, read once and shared by every figure, the report and the claims.

    Attributes:
        path: the run directory.
        name: ``[run] name`` of the config, or the directory's name.
        config: the parsed ``config.toml`` (empty when absent).
        metrics: one row per recorded step and layer (see `read_metrics`), or ``None`` without metrics.
        train: ``train.csv`` (`TRAIN_COLUMNS`) or ``None``.
        events: LR changes and rescales (step, kind): ``events.csv``, or LR changes read off the recorded
            learning rate when that file is absent.
        summary: ``summary.json`` (empty when absent).
        layers: monitored layer names in the order the monitor wrote them (model order).
        per_channel: layers recorded per output channel and folded here.
        stage_starts: first step of each learning-rate stage (one stage for a continuous schedule).
        continuous: more than ``_MAX_STAGES`` LR changes: a continuous schedule.
        problems: what could not be read, for the report's warnings.
    """

    path: Path
    name: str
    config: dict[str, Any]
    metrics: pd.DataFrame | None
    train: pd.DataFrame | None
    events: pd.DataFrame
    summary: dict[str, Any]
    layers: list[str]
    per_channel: list[str]
    stage_starts: np.ndarray
    continuous: bool
    problems: list[str] = field(default_factory=list)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def wide(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps [T], values [T, layers]) of one metric column, NaN where a layer has no record."""
        if self.metrics is None:
            raise NoDataError(f"{self.path}: no metrics recorded")
        if "index" not in self._cache:
            steps, inv = np.unique(self.metrics["step"].to_numpy(), return_inverse=True)
            codes = self.metrics["param"].cat.codes.to_numpy()
            self._cache["index"] = (steps, inv, codes)
        steps, inv, codes = self._cache["index"]
        key = f"wide:{column}"
        if key not in self._cache:
            out = np.full((len(steps), len(self.layers)), np.nan)
            out[inv, codes] = self.metrics[column].to_numpy(dtype=np.float64)
            self._cache[key] = out
        return steps, self._cache[key]


def _read_config(path: Path, problems: list[str]) -> dict[str, Any]:
    if not (path / CONFIG).exists():
        problems.append(f"no {CONFIG}: the run's settings are unknown")
        return {}
    try:
        return load_toml(path / CONFIG)
    except ValueError as exc:  # tomllib.TOMLDecodeError is a ValueError
        problems.append(f"{CONFIG} could not be parsed: {exc}")
        return {}


def _read_summary(path: Path, problems: list[str]) -> dict[str, Any]:
    if not (path / SUMMARY).exists():
        return {}
    try:
        loaded = json.loads((path / SUMMARY).read_text(encoding="utf-8"))
    except ValueError as exc:
        problems.append(f"{SUMMARY} could not be parsed: {exc}")
        return {}
    return loaded if isinstance(loaded, dict) else {"value": loaded}


def stage_starts(lr_change_steps: Sequence[int] | np.ndarray, first_step: int = 0) -> np.ndarray:
    """First step of each learning-rate stage (Cor 3.1): the first record, then each LR change after it.

    More than ``_MAX_STAGES`` changes is a continuous schedule (cosine, warm-up): one stage, since no part
    of it is a fixed learning rate at which an equilibrium could settle.
    """
    changes = np.unique(np.asarray(lr_change_steps, dtype=np.int64))
    later = [] if len(changes) > _MAX_STAGES else [int(s) for s in changes if s > first_step]
    return np.array([first_step, *later], dtype=np.int64)


def load_run(run_dir: str | os.PathLike[str] | Run) -> Run:
    """Reads a run directory once: config, metrics (channels folded per layer), train log, events.

    Args:
        run_dir: a directory written by a training run (docs/design.md §5); a ``Run`` is returned as it is.

    Raises:
        TypeError: ``run_dir`` is not a path.
        FileNotFoundError: it is not a directory.
        ValueError: it holds neither metrics nor ``train.csv``, or a file there is malformed.
    """
    if isinstance(run_dir, Run):
        return run_dir
    if not isinstance(run_dir, (str, os.PathLike)):
        raise TypeError(f"run_dir must be a str or os.PathLike, got {type(run_dir).__name__}")
    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"run_dir {path} is not a directory")
    problems: list[str] = []
    config = _read_config(path, problems)
    metrics = read_metrics(path)
    train = read_table(path / TRAIN) if (path / TRAIN).exists() else None
    if metrics is None and train is None:
        raise ValueError(f"run_dir {path} holds neither metrics ({METRICS_CSV}, {METRICS_DIR}/) nor {TRAIN}")
    if metrics is None:
        problems.append(f"no metrics recorded ({METRICS_CSV} or {METRICS_DIR}/): no SMD figures for this run")
    if train is None:
        problems.append(f"no {TRAIN}: no loss or accuracy curves for this run")
    elif "step" not in train:
        raise ValueError(f"{path / TRAIN}: needs a 'step' column, found {list(train.columns)}")
    summary = _read_summary(path, problems)
    events = _read_events(path, metrics, train)
    changes = events.loc[events["kind"] == "lr_change", "step"].to_numpy()
    first_step = int(metrics["step"].iloc[0]) if metrics is not None and len(metrics) else 0
    starts = stage_starts(changes, first_step)
    continuous = len(np.unique(changes)) > _MAX_STAGES
    run_cfg = config.get("run", {})
    name = run_cfg.get("name") if isinstance(run_cfg, dict) else None
    return Run(
        path=path,
        name=str(name) if name else path.resolve().name,
        config=config,
        metrics=metrics,
        train=train,
        events=events,
        summary=summary,
        layers=[] if metrics is None else [str(c) for c in metrics["param"].cat.categories],
        per_channel=[] if metrics is None else list(metrics.attrs.get("per_channel", [])),
        stage_starts=starts,
        continuous=continuous,
        problems=problems,
    )


# ---------------------------------------------------------------------------------------------- verdicts


def collapse_flags(metrics: pd.DataFrame) -> np.ndarray:
    """Rows where the monitor flagged a collapsing unit gradient, as a bool array over a metrics table
    (`read_metrics`): its ``reason_code`` where the run recorded that column, else the wording of its
    ``reason`` (runs recorded before the code existed)."""
    if "reason_code" in metrics:
        return (metrics["reason_code"].astype(str) == COLLAPSE_CODE).to_numpy()
    return metrics["reason"].astype(str).str.contains(_COLLAPSE_WORD, regex=False).to_numpy()


def nonfinite_flags(metrics: pd.DataFrame) -> np.ndarray:
    """Rows whose weight, gradient or update was not finite: ``reason_code`` where recorded, else prose."""
    if "reason_code" in metrics:
        return metrics["reason_code"].astype(str).str.startswith("nonfinite").to_numpy()
    return metrics["reason"].astype(str).str.contains("non-finite", regex=False).to_numpy()


# ---------------------------------------------------------------------------------------------- equilibrium


def nanmean(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Mean over finite values (NaN where there are none), without numpy's empty-slice warning."""
    ok = np.isfinite(x)
    n = ok.sum(axis=axis)
    s = np.where(ok, x, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def nanmedian(x: Any) -> float:
    """Median over the non-NaN values (inf counts as a value: a layer that never got there), NaN if none."""
    a = np.asarray(list(x), dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(np.median(a)) if a.size else math.nan


@dataclass(frozen=True)
class Equilibrium:
    """Per-layer equilibrium figures over one window of records (Thm 1–3), arrays over ``layers``.

    RMS Δ/Δ* = √(mean (Δ_t/Δ*_t)²) (Δ* = √(2λη/(1+α)) is the equilibrium value of √E[Δ²], Thm 3), mean
    Δ/Δ* beside it (below 1 when ‖g̃‖² varies), ‖w‖/w* = √(mean ‖w_t‖² / mean w*_t²) with w* the monitor's
    exact fixed point of Thm 1 / Thm 2. ``theory`` marks the layers with a Δ* > 0 somewhere in the run;
    the medians and the fraction in equilibrium are over those.
    """

    window: tuple[int, int]  # first and last step of the window
    records: int  # recorded steps in the window
    layers: list[str]
    theory: np.ndarray  # bool
    rms_ratio: np.ndarray
    mean_ratio: np.ndarray
    norm_ratio: np.ndarray
    rms_delta: np.ndarray  # RMS Δ of every layer (Adam has no Δ* but has a Δ)
    theory_delta: np.ndarray  # mean Δ* over the window
    last_theory_delta: np.ndarray  # Δ* at the last record with one
    last_norm: np.ndarray
    last_norm_star: np.ndarray
    in_equilibrium: np.ndarray  # bool: the monitor's flag at the last recorded step

    def _over_theory(self, x: np.ndarray) -> np.ndarray:
        return x[self.theory]

    @property
    def median_rms_ratio(self) -> float:
        return nanmedian(self._over_theory(self.rms_ratio))

    @property
    def median_mean_ratio(self) -> float:
        return nanmedian(self._over_theory(self.mean_ratio))

    @property
    def median_norm_ratio(self) -> float:
        return nanmedian(self._over_theory(self.norm_ratio))

    @property
    def median_abs_rms_dev(self) -> float:
        return nanmedian(np.abs(self._over_theory(self.rms_ratio) - 1))

    @property
    def median_abs_mean_dev(self) -> float:
        return nanmedian(np.abs(self._over_theory(self.mean_ratio) - 1))

    @property
    def median_abs_norm_dev(self) -> float:
        return nanmedian(np.abs(self._over_theory(self.norm_ratio) - 1))

    @property
    def fraction_in_equilibrium(self) -> float:
        return float(self.in_equilibrium[self.theory].mean()) if self.theory.any() else math.nan


def _last_finite(x: np.ndarray) -> np.ndarray:
    """The last finite value of each column of [T, L] (NaN where none)."""
    ok = np.isfinite(x)
    idx = np.where(ok.any(axis=0), len(x) - 1 - np.argmax(ok[::-1], axis=0), 0)
    out = x[idx, np.arange(x.shape[1])] if len(x) else np.full(x.shape[1], np.nan)
    return np.where(ok.any(axis=0), out, np.nan)


def equilibrium(
    steps: np.ndarray, wide: Mapping[str, np.ndarray], layers: Sequence[str], start: int
) -> Equilibrium:
    """`Equilibrium` over the records at steps ≥ ``start``.

    Args:
        steps: the recorded steps [T], increasing.
        wide: [T, layers] arrays of ``angular_update``, ``theory_angular_update``, ``weight_norm``,
            ``theory_weight_norm`` and ``in_equilibrium`` (as 0/1, NaN where a layer has no record).
        layers: the layers' names.
        start: the window's first step.
    """
    delta, star = wide["angular_update"], wide["theory_angular_update"]
    norm, norm_star = wide["weight_norm"], wide["theory_weight_norm"]
    sel = steps >= start
    # Each layer's column contiguous (Fortran order), so its sums over the window are pairwise sums.
    col = np.asfortranarray
    with np.errstate(invalid="ignore", divide="ignore"):
        r = col(np.where(star > 0, delta / star, np.nan)[sel])
    ok = np.isfinite(norm_star[sel]) & (norm_star[sel] > 0) & np.isfinite(norm[sel])
    w2 = col(np.where(ok, norm[sel] ** 2, np.nan))
    ws2 = col(np.where(ok, norm_star[sel] ** 2, np.nan))
    with np.errstate(invalid="ignore", divide="ignore"):
        norm_ratio = np.sqrt(nanmean(w2) / nanmean(ws2))
    eq = np.nan_to_num(wide["in_equilibrium"]) > 0.5
    return Equilibrium(
        window=(int(steps[sel][0]), int(steps[-1])),
        records=int(sel.sum()),
        layers=list(layers),
        theory=np.any(np.isfinite(star) & (star > 0), axis=0),
        rms_ratio=np.sqrt(nanmean(r**2)),
        mean_ratio=nanmean(r),
        norm_ratio=norm_ratio,
        rms_delta=np.sqrt(nanmean(delta[sel] ** 2)),
        theory_delta=nanmean(col(star[sel])),
        last_theory_delta=_last_finite(star[sel]),
        last_norm=_last_finite(norm[sel]),
        last_norm_star=_last_finite(norm_star[sel]),
        in_equilibrium=eq[-1],
    )


def monitor_window(config: Mapping[str, Any]) -> int:
    """The ``[monitor] window`` of a parsed config, else the monitor's default (200 steps)."""
    mon = config.get("monitor", {})
    w = mon.get("window") if isinstance(mon, dict) else None
    return int(w) if isinstance(w, int) and not isinstance(w, bool) and w > 1 else _DEFAULT_WINDOW


def window_start(steps: np.ndarray, window: int, stage_start: int) -> int:
    """First step of the last ``window`` recorded steps, never before the last learning-rate change."""
    return max(int(steps[-min(window, len(steps))]), int(stage_start))


_EQUILIBRIUM_COLUMNS = (
    "angular_update",
    "theory_angular_update",
    "weight_norm",
    "theory_weight_norm",
    "in_equilibrium",
)


def run_equilibrium(run: Run, window: int | None = None) -> Equilibrium:
    """`equilibrium` of a run over its last ``window`` recorded steps (default its monitor window) within
    its last learning-rate stage: the figures of ``summary.json``, the report and the claims.

    Raises:
        NoDataError: the run has no monitor records.
    """
    if run.metrics is None or not len(run.metrics):
        raise NoDataError(f"{run.path}: no monitor records ({METRICS_CSV})")
    steps = run.wide("angular_update")[0]
    wide = {c: run.wide(c)[1] for c in _EQUILIBRIUM_COLUMNS}
    w = monitor_window(run.config) if window is None else window
    return equilibrium(steps, wide, run.layers, window_start(steps, w, int(run.stage_starts[-1])))


def records_equilibrium(records: Mapping[str, np.ndarray], window: int, stage_start: int) -> Equilibrium:
    """`equilibrium` of monitor records held in memory (sink batches: one row per step and layer or
    channel), as a training run summarises itself without reading its files back."""
    pd = _pandas()
    df = pd.DataFrame({c: np.asarray(v) for c, v in records.items()})
    for c in ("param", "reason"):
        df[c] = df[c].astype(str)
    if "channel" not in df:
        df["channel"] = -1
    for c in _FLOAT_COLUMNS:
        if c not in df:
            df[c] = np.nan
    df = df.drop_duplicates(["step", "param", "channel"], keep="last")
    order = [str(x) for x in pd.unique(df["param"])]
    df, _ = fold_channels(df)
    steps, inv = np.unique(df["step"].to_numpy(), return_inverse=True)
    codes = pd.Categorical(df["param"], categories=order).codes
    wide = {}
    for c in _EQUILIBRIUM_COLUMNS:
        out = np.full((len(steps), len(order)), np.nan)
        out[inv, codes] = df[c].to_numpy(dtype=np.float64)
        wide[c] = out
    return equilibrium(steps, wide, order, window_start(steps, window, stage_start))


def summary_figures(eq: Equilibrium, reasons: Mapping[str, str]) -> dict[str, Any]:
    """The equilibrium part of ``summary.json``: per layer RMS and mean Δ/Δ*, ‖w‖/w*, the monitor's flag,
    Δ* and ``reasons[layer]`` at the last record; the medians over layers of |RMS Δ/Δ* − 1| and
    |‖w‖/w* − 1|, the means of RMS and mean Δ/Δ* and the fraction of layers in equilibrium."""

    def mean(x: np.ndarray) -> float:
        x = x[eq.theory & np.isfinite(x)]
        return float(np.mean(x)) if x.size else math.nan

    layers = {
        name: {
            "angular_update_rms_ratio": float(eq.rms_ratio[i]),
            "angular_update_mean_ratio": float(eq.mean_ratio[i]),
            "weight_norm_ratio": float(eq.norm_ratio[i]),
            "in_equilibrium": float(eq.in_equilibrium[i]),
            "theory_angular_update": float(eq.last_theory_delta[i]),
            "reason": reasons.get(name, ""),
        }
        for i, name in enumerate(eq.layers)
    }
    return {
        "window_steps": eq.records,
        "median_angular_update_rms_deviation": eq.median_abs_rms_dev,
        "median_weight_norm_deviation": eq.median_abs_norm_dev,
        "mean_angular_update_rms_ratio": mean(eq.rms_ratio),
        "mean_angular_update_mean_ratio": mean(eq.mean_ratio),
        "fraction_in_equilibrium": eq.fraction_in_equilibrium,
        "layers": layers,
    }
