"""Paper-style figures of Spherical Motion Dynamics, drawn only from what run directories hold.

Every figure here reads a run directory (``config.toml``, ``metrics.csv`` or ``metrics/``, ``train.csv``,
``events.csv``, ``summary.json``) and nothing else: the monitor computes, the sinks write, this module draws
(the layout of Wan et al., "Spherical Motion Dynamics", NeurIPS 2021, Figs 3–6). A figure never recomputes a
theoretical value: Δ* (Thm 3) and w* (Thms 1–2) are the ones the monitor recorded, NaN where no theory
applies. Only display-side smoothing happens here (the 200-step mean of Fig 3(a)) and the per-stage RMS of
Fig 5, both from recorded columns.

Runs with millions of records stay cheap: the CSV is parsed by pandas' C reader (only the needed columns),
each metric becomes one [steps × layers] array by a vectorised scatter, and long series are reduced to at
most ``_MAX_POINTS`` bins per line (a noisy raw series as its per-bin min–max band, which is what a dense
line plot shows anyway; a smooth one as its bin mean).

matplotlib is used through ``matplotlib.figure.Figure`` and its Agg canvas only: no pyplot, no global
backend switch, so drawing a report never disturbs interactive plotting (a notebook, an open window).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

__all__ = [
    "NoDataError",
    "Run",
    "RunStyle",
    "angular_update_comparison_figure",
    "angular_update_figure",
    "highlight_layer",
    "load_run",
    "run_styles",
    "stage_ratio_figure",
    "training_figure",
    "unit_gradient_figure",
    "weight_norm_figure",
]

# Metric columns a figure or the report reads (monitor.COLUMNS minus the ones nothing here draws).
_FLOAT_COLUMNS = (
    "lr",
    "wd",
    "momentum",
    "weight_norm",
    "unit_grad_sq",
    "h_tilde",
    "angular_update",
    "angular_update_rms",
    "angular_update_mean",
    "theory_angular_update",
    "theory_weight_norm",
)
_COLUMNS = ("step", "param", "channel", *_FLOAT_COLUMNS, "in_equilibrium", "reason")
_NA = ["nan", "NaN", "-nan", ""]
_MAX_POINTS = 1500  # bins per plotted line
_MAX_STAGES = 12  # more LR changes than this is a continuous schedule: no stage boxes, no event lines
_EVENT_TOL = 0.05  # an LR move of 5% since the last change starts a new stage (as the monitor logs it)
_SHORT_LABEL = 52  # characters of a run label in a legend or panel title
_PAPER_LAYER = "layer2.0.conv2"  # the layer of the paper's Figs 3 and 4
_MEAN_STEPS = 200  # the paper's Fig 3(a,d) averages ‖g̃‖² and h̃ over 200 iterations
_DPI = 150

_RC = {
    "font.size": 9.5,
    "axes.titlesize": 10.5,
    "axes.titleweight": "bold",
    "axes.labelsize": 9.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#e3e3e3",
    "grid.linewidth": 0.6,
    "legend.fontsize": 8.5,
    "legend.frameon": True,
    "legend.framealpha": 0.9,
    "legend.edgecolor": "#dddddd",
    "xtick.labelsize": 8.5,
    "ytick.labelsize": 8.5,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}
_EVENT_STYLE = {
    "lr_change": {"color": "#7f7f7f", "linestyle": (0, (4, 3)), "linewidth": 0.9, "label": "LR change"},
    "rescale": {"color": "#9467bd", "linestyle": ":", "linewidth": 1.3, "label": "rescale (k^-¼)"},
}
_HIGHLIGHT = "#d62728"
_THEORY = "#222222"


class NoDataError(ValueError):
    """The runs given hold nothing a figure can be drawn from (no metrics, no train.csv, ...)."""


@dataclass
class Run:
    """Everything a run directory holds, read once and shared by every figure and the report.

    Attributes:
        path: the run directory.
        name: ``[run] name`` of the config, or the directory's name.
        config: the parsed ``config.toml`` (empty when absent).
        metrics: one row per recorded step and layer (per-channel rows folded into their layer; see
            :func:`load_run`), sorted by step; ``None`` when the run has no metrics.
        train: ``train.csv`` (step, epoch, lr, loss, accuracy, test_loss, test_accuracy) or ``None``.
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


@dataclass(frozen=True)
class RunStyle:
    """How a run appears in every figure and table: its colour and its legend label.

    Runs whose configs differ only in seeds (and run names) share a ``group``, a colour and a label.
    """

    colour: str
    label: str
    group: int
    short: str  # the label cut to fit a legend


# ---------------------------------------------------------------------------------------------- loading


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("figures and reports need pandas: pip install 'smdyn[experiments]'") from exc
    return pandas


def _matplotlib() -> Any:
    try:
        import matplotlib
        import matplotlib.figure  # the Agg-backed Figure, no pyplot
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("figures need matplotlib: pip install 'smdyn[experiments]'") from exc
    return matplotlib


def _toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError as exc:
            raise ImportError("reading config.toml on Python 3.10 needs: pip install tomli") from exc
    with open(path, "rb") as f:
        return tomllib.load(f)


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


def _read_table(
    path: Path, strings: Sequence[str] = (), usecols: Sequence[str] | None = None
) -> pd.DataFrame:
    """A CSV written by this package: floats may be ``nan``/``inf``, string columns keep '' and 'NA'.

    String columns are read as categoricals: a million rows of a few layer names cost a few MB, not 60.
    """
    pd = _pandas()
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split(",")
    cols = [c for c in header if usecols is None or c in usecols]
    numeric = [c for c in cols if c not in strings]
    return pd.read_csv(
        _csv_bytes(path),
        usecols=cols,
        dtype={c: "category" for c in cols if c in strings},
        keep_default_na=False,
        na_values=dict.fromkeys(numeric, _NA),
        on_bad_lines="warn",
    )


def _read_metrics(run_dir: Path) -> pd.DataFrame | None:
    """The monitor's records (metrics.csv or a metrics/ Parquet part directory), only needed columns."""
    pd = _pandas()
    csv_path, part_dir = run_dir / "metrics.csv", run_dir / "metrics"
    if csv_path.exists() and part_dir.exists():
        raise ValueError(f"{run_dir} holds both metrics.csv and metrics/; keep one")
    if csv_path.exists():
        df = _read_table(csv_path, strings=("param", "reason"), usecols=_COLUMNS)
    else:
        parts = sorted(run_dir.glob("part-*.parquet")) or (
            sorted(part_dir.glob("part-*.parquet")) if part_dir.is_dir() else []
        )
        if not parts:
            return None
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("Parquet metrics need pyarrow: pip install smdyn[parquet]") from exc
        tables = [
            pq.read_table(p, columns=[c for c in _COLUMNS if c in pq.read_schema(p).names]) for p in parts
        ]
        df = pa.concat_tables(tables).to_pandas()
    if "step" not in df or "param" not in df:
        raise ValueError(f"{run_dir}: metrics need 'step' and 'param' columns, found {list(df.columns)}")
    for c in _FLOAT_COLUMNS:
        df[c] = df[c].astype(np.float64) if c in df else np.nan
    df["channel"] = df["channel"].fillna(-1).astype(np.int64) if "channel" in df else -1
    if "in_equilibrium" not in df:
        df["in_equilibrium"] = False
    elif df["in_equilibrium"].dtype != bool:
        df["in_equilibrium"] = df["in_equilibrium"].astype(str).isin(("True", "true", "1", "1.0"))
    df["reason"] = _categorical(df["reason"] if "reason" in df else pd.Series("", index=df.index))
    df["param"] = _categorical(df["param"])
    df["step"] = df["step"].astype(np.int64)
    # A resumed run may record a step twice: the later record wins.
    df = df.drop_duplicates(["step", "param", "channel"], keep="last")
    # Layers in the monitor's order (first appearance in the file), which the codes of ``param`` follow.
    order = [str(x) for x in pd.unique(df["param"])]
    df, folded = _fold_channels(df)
    df["param"] = _categorical(df["param"]).cat.set_categories(order)
    df["reason"] = _categorical(df["reason"])
    df = df.sort_values("step", kind="stable").reset_index(drop=True)
    df.attrs["per_channel"] = folded
    return df


def _categorical(col: pd.Series) -> pd.Series:
    """A string column as a categorical of ``str`` categories, NaN read as ''."""
    pd = _pandas()
    if isinstance(col.dtype, pd.CategoricalDtype):
        if col.isna().any():
            col = col.cat.add_categories([""]) if "" not in col.cat.categories else col
            col = col.fillna("")
        return col
    return col.fillna("").astype(str).astype("category")


def _fold_channels(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
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
    g = parts.groupby(["step", "param"], sort=False, observed=True)
    # NaN in any channel makes the folded value NaN: a partial sum would be a silently wrong number.
    nan_any = (
        parts[["w2", "g2", "h", "t2"]]
        .isna()
        .groupby([parts["step"], parts["param"]], sort=False, observed=True)
        .any()
    )
    sums = g[["w2", "g2", "h", "t2"]].sum().mask(nan_any)
    means = g[["d2", "r2", "mean", "eq"]].mean()
    keys = ["step", "param"]
    first = c.groupby(keys, sort=False, observed=True)[
        ["lr", "wd", "momentum", "theory_angular_update"]
    ].first()
    reason = c["reason"].astype(str).groupby([c["step"], c["param"]], sort=False, observed=True).max()
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
            "reason": reason,
            **{k: first[k] for k in first.columns},
        }
    ).reset_index()
    folded["channel"] = -1
    names = [str(n) for n in pd.unique(c["param"])]
    rest = df.loc[~chan].astype({"param": str, "reason": str})
    folded = folded.astype({"param": str, "reason": str})
    return pd.concat([rest, folded[df.columns]], ignore_index=True), names


def _lr_changes(steps: np.ndarray, lr: np.ndarray) -> list[int]:
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
    pd = _pandas()
    path = run_dir / "events.csv"
    if path.exists():
        ev = _read_table(path, strings=("kind",))
        if "step" not in ev or "kind" not in ev:
            raise ValueError(f"{path}: needs 'step' and 'kind' columns, found {list(ev.columns)}")
        return ev[["step", "kind"]].astype({"step": np.int64}).sort_values("step").reset_index(drop=True)
    steps: list[int] = []
    if metrics is not None and len(metrics):
        first = metrics[metrics["param"] == metrics["param"].cat.categories[0]]
        steps = _lr_changes(first["step"].to_numpy(), first["lr"].to_numpy())
    elif train is not None and "lr" in train and len(train):
        steps = _lr_changes(train["step"].to_numpy(), train["lr"].to_numpy(dtype=np.float64))
    return pd.DataFrame({"step": np.asarray(steps, dtype=np.int64), "kind": "lr_change"})


def load_run(run_dir: str | os.PathLike[str] | Run) -> Run:
    """Reads a run directory once: config, metrics (channels folded per layer), train log, events.

    Args:
        run_dir: a directory written by a training run (DESIGN §5); a ``Run`` is returned as it is.

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
    config: dict[str, Any] = {}
    if (path / "config.toml").exists():
        try:
            config = _toml(path / "config.toml")
        except ValueError as exc:  # tomllib.TOMLDecodeError is a ValueError
            problems.append(f"config.toml could not be parsed: {exc}")
    else:
        problems.append("no config.toml: the run's settings are unknown")
    metrics = _read_metrics(path)
    train = _read_table(path / "train.csv") if (path / "train.csv").exists() else None
    if metrics is None and train is None:
        raise ValueError(f"run_dir {path} holds neither metrics (metrics.csv, metrics/) nor train.csv")
    if metrics is None:
        problems.append("no metrics recorded (metrics.csv or metrics/): no SMD figures for this run")
    if train is None:
        problems.append("no train.csv: no loss or accuracy curves for this run")
    elif "step" not in train:
        raise ValueError(f"{path / 'train.csv'}: needs a 'step' column, found {list(train.columns)}")
    summary: dict[str, Any] = {}
    if (path / "summary.json").exists():
        try:
            loaded = json.loads((path / "summary.json").read_text(encoding="utf-8"))
            summary = loaded if isinstance(loaded, dict) else {"value": loaded}
        except ValueError as exc:
            problems.append(f"summary.json could not be parsed: {exc}")
    events = _read_events(path, metrics, train)
    changes = np.unique(events.loc[events["kind"] == "lr_change", "step"].to_numpy())
    first_step = int(metrics["step"].iloc[0]) if metrics is not None and len(metrics) else 0
    continuous = len(changes) > _MAX_STAGES
    starts = np.array([first_step] + ([] if continuous else [int(s) for s in changes if s > first_step]))
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
        stage_starts=starts.astype(np.int64),
        continuous=continuous,
        problems=problems,
    )


def _as_runs(runs: Any) -> list[Run]:
    if isinstance(runs, (str, os.PathLike, Run)) or not isinstance(runs, Sequence):
        raise TypeError(
            f"runs must be a sequence of run directories or Run objects, got {type(runs).__name__}"
        )
    if not runs:
        raise ValueError("runs must not be empty")
    return [load_run(r) for r in runs]


# ---------------------------------------------------------------------------------------------- styling


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


_IGNORED_KEYS = ("run.name", "run.out", "run.dir", "run.resume", "run.output")
_ALIASES = {
    "optim.lr": "η",
    "optim.weight_decay": "λ",
    "optim.wd": "λ",
    "optim.momentum": "α",
}
_VALUE_ONLY = ("optim.name", "model.name", "data.name", "schedule.name", "schedule.kind")
_SWITCHES = {"rescale.enabled": "rescale", "schedule.rescale": "rescale", "optim.nesterov": "Nesterov"}


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt_value(x) for x in v) + "]"
    return str(v)


def _label_part(key: str, value: Any) -> str:
    if key in _VALUE_ONLY:
        return _fmt_value(value)
    if isinstance(value, bool):
        what = _SWITCHES.get(key, key.rsplit(".", 1)[-1])
        return what if value else f"no {what}"
    return f"{_ALIASES.get(key, key.rsplit('.', 1)[-1])}={_fmt_value(value)}"


def run_styles(runs: Sequence[Run]) -> list[RunStyle]:
    """Colours and legend labels for runs shown together.

    A label names only what differs between the runs' configs (η, λ, α, optimizer, ...), so a legend stays
    short; runs that differ only in ``seed`` form one group with one colour (Fig 6 averages seeds).
    """
    flat = []
    for r in runs:
        f = _flatten(r.config)
        flat.append({k: v for k, v in f.items() if k not in _IGNORED_KEYS and k.rsplit(".", 1)[-1] != "seed"})
    keys = sorted({k for f in flat for k in f})
    differing = [
        k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat}) > 1
    ]
    order = {k: (0 if k in _VALUE_ONLY else 1 if k in _ALIASES else 2, k) for k in differing}
    differing.sort(key=order.__getitem__)
    groups: dict[str, int] = {}
    members: dict[int, list[Run]] = {}
    for r, f in zip(runs, flat, strict=True):
        key = json.dumps(f, sort_keys=True, default=str) if r.config else f"dir:{r.path.resolve()}"
        gi = groups.setdefault(key, len(groups))
        members.setdefault(gi, []).append(r)
    palette = _palette(len(groups))
    styles = []
    for r, f in zip(runs, flat, strict=True):
        key = json.dumps(f, sort_keys=True, default=str) if r.config else f"dir:{r.path.resolve()}"
        gi = groups[key]
        parts = [_label_part(k, f[k]) for k in differing if k in f]
        label = ", ".join(parts) if parts else _group_name([m.name for m in members[gi]])
        short = label if len(label) <= _SHORT_LABEL else label[: _SHORT_LABEL - 1].rstrip(", ") + "…"
        n = len(members[gi])
        if n > 1:
            label += f" ({n} runs)"
            short += f" ({n} runs)"
        styles.append(RunStyle(colour=palette[gi], label=label, group=gi, short=short))
    return styles


def _group_name(names: list[str]) -> str:
    """What the names of runs differing only in seed share ("fig6-sgdm-s0", "fig6-sgdm-s1" → "fig6-sgdm")."""
    if len(names) == 1:
        return names[0]
    same = 0
    for chars in zip(*names, strict=False):
        if len(set(chars)) > 1:
            break
        same += 1
    prefix = names[0][:same]
    prefix = re.sub(r"[-_. ]*(seed|s)?[-_. =]*$", "", prefix)
    return prefix or names[0]


def _palette(n: int) -> list[str]:
    # Colour-blind-safe qualitative colours (tab10 order, which the paper's figures also use).
    base = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
    base += ["#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d"]
    return [base[i % len(base)] for i in range(n)]


def _short(layer: str) -> str:
    return layer.removesuffix(".weight")


def _pick_layer(run: Run, layer: str | None) -> int:
    """Index of the layer to highlight: ``layer`` (a name or a prefix), the paper's, or the middle one."""
    names = run.layers
    if not names:
        raise NoDataError(f"{run.path}: no monitored layers")
    if layer is not None:
        for i, n in enumerate(names):
            if n == layer or n.startswith(f"{layer}.") or n.startswith(f"{layer}+"):
                return i
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise ValueError(f"layer {layer!r} is not monitored in {run.path} (layers: {shown})")
    for i, n in enumerate(names):
        if n.startswith(f"{_PAPER_LAYER}."):
            return i
    return len(names) // 2


def highlight_layer(run: Run, layer: str | None = None) -> str:
    """The layer the single-layer figures show: ``layer`` (a name or a prefix such as ``layer2.0.conv2``),
    else the paper's ``layer2.0.conv2`` (Figs 3–4) where the model has it, else the middle monitored layer.

    Raises:
        ValueError: ``layer`` is not monitored in ``run`` (the message lists what is).
        NoDataError: the run monitored no layer.
    """
    return run.layers[_pick_layer(run, layer)]


# ---------------------------------------------------------------------------------------------- drawing


def _reduce(steps: np.ndarray, values: np.ndarray, max_points: int = _MAX_POINTS) -> tuple[np.ndarray, ...]:
    """(x, lo, hi, mean) of ``values`` [T] or [T, k] in at most ``max_points`` bins of consecutive records.

    Below the limit every record is its own bin (lo = hi = mean = the value). NaN is ignored inside a bin;
    an all-NaN bin gives NaN (a gap in the line).
    """
    steps = np.asarray(steps, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if len(steps) <= max_points:
        return steps, values, values, values
    per = math.ceil(len(steps) / max_points)
    nbins = math.ceil(len(steps) / per)
    pad = nbins * per - len(steps)
    shape = (nbins, per, *values.shape[1:])
    v = np.concatenate([values, np.full((pad, *values.shape[1:]), np.nan)]).reshape(shape)
    x = np.concatenate([steps, np.full(pad, np.nan)]).reshape(nbins, per)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN bins
        return np.nanmean(x, axis=1), np.nanmin(v, axis=1), np.nanmax(v, axis=1), np.nanmean(v, axis=1)


def _raw_and_line(
    ax: Axes,
    steps: np.ndarray,
    raw: np.ndarray,
    line: np.ndarray | None,
    colour: str,
    *,
    alpha: float = 0.22,
    label: str | None = None,
    raw_label: str | None = None,
    lw: float = 1.5,
) -> None:
    """A noisy series faint (as a line, or a min–max band once binned) and its smooth summary solid."""
    x, lo, hi, _ = _reduce(steps, raw)
    if len(x) == len(steps):
        ax.plot(x, raw, color=colour, alpha=alpha, linewidth=0.7, label=raw_label)
    else:
        ax.fill_between(x, lo, hi, color=colour, alpha=alpha, linewidth=0, label=raw_label)
    if line is not None:
        xl, _, _, mean = _reduce(steps, line)
        ax.plot(xl, mean, color=colour, linewidth=lw, label=label)


def _mark_events(ax: Axes, runs: Sequence[Run]) -> None:
    """Vertical lines at the LR changes and rescales of the given runs, each step drawn once.

    None for a continuous schedule (a line per step would hide the data); Cor 3.1's lag and the Sec 4.2
    rescaling both start at these lines.
    """
    for kind, style in _EVENT_STYLE.items():
        found = [
            r.events.loc[r.events["kind"] == kind, "step"].to_numpy()
            for r in runs
            if not r.continuous and len(r.events)
        ]
        steps = np.unique(np.concatenate(found)) if found else np.array([])
        if not len(steps) or len(steps) > _MAX_STAGES * 2:
            continue
        kw = dict(style)
        label = kw.pop("label")
        for i, s in enumerate(steps):
            ax.axvline(s, zorder=1, alpha=0.85, label=label if i == 0 else None, **kw)


def _set_scale(
    ax: Axes,
    values: np.ndarray,
    *,
    keep: np.ndarray | None = None,
    lo_q: float = 0.5,
    hi_q: float = 99.5,
    log_span: float = 8.0,
) -> None:
    """Log y when all values are positive and their robust range spans more than ``log_span``×.

    Limits come from robust percentiles of ``values`` (a noisy raw series must not squash the plot) widened
    to include every finite value of ``keep`` (the smooth lines a reader must see whole).
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    k = np.asarray([] if keep is None else keep, dtype=np.float64)
    k = k[np.isfinite(k)]
    if not len(v) and not len(k):
        return
    lo, hi = np.percentile(v, [lo_q, hi_q]) if len(v) else (np.inf, -np.inf)
    if len(k):
        lo, hi = min(lo, k.min()), max(hi, k.max())
    positive = (len(v) == 0 or v.min() > 0) and lo > 0
    if positive and hi / lo > log_span:
        ax.set_yscale("log")
        ax.set_ylim(lo / 1.4, hi * 1.4)
    elif hi > lo:
        pad = 0.08 * (hi - lo)
        ax.set_ylim(max(lo - pad, 0.0) if lo >= 0 else lo - pad, hi + pad)


def _figure(nrows: int, ncols: int, width: float, height: float, **kw: Any) -> tuple[Any, np.ndarray]:
    _matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _figure_legend(
    fig: Any, axes: Sequence[Axes], extra: Sequence[tuple[Any, str]] = (), ncol: int = 3
) -> None:
    """One legend under the panels, each label once: legends inside the axes would cover the data."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab and not lab.startswith("_"):
                seen.setdefault(lab, h)
    for h, lab in extra:
        seen.setdefault(lab, h)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncol=min(ncol, len(seen)))


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=_DPI)
    return out


def _check_path(path: Any) -> None:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")


def _with_metrics(runs: list[Run], what: str) -> list[tuple[int, Run]]:
    found = [(i, r) for i, r in enumerate(runs) if r.metrics is not None and len(r.metrics)]
    if not found:
        raise NoDataError(f"no run has metrics to draw the {what} from")
    return found


def _theory_line(style: str = "--") -> Any:
    from matplotlib.lines import Line2D

    return Line2D([], [], color=_THEORY, linestyle=style, linewidth=1.2)


def _no_theory_reason(run: Run, column: str) -> str | None:
    """Why ``column`` (a theory column) is NaN throughout the run: its most frequent recorded reason."""
    m = run.metrics
    if np.isfinite(m[column].to_numpy()).any():
        return None
    reasons = m.loc[m["reason"] != "", "reason"]
    return str(reasons.value_counts().index[0]) if len(reasons) else "no theoretical value recorded"


def _note(ax: Axes, text: str) -> None:
    ax.text(
        0.99,
        0.97,
        text,
        transform=ax.transAxes,
        ha="right",
        va="top",
        fontsize=8,
        color="#555555",
        bbox={"boxstyle": "round,pad=0.3", "facecolor": "white", "edgecolor": "#dddddd", "alpha": 0.9},
        wrap=True,
        zorder=10,
    )


# ---------------------------------------------------------------------------------------------- figures


def angular_update_figure(
    runs: Sequence[Run | str | os.PathLike[str]], path: str | os.PathLike[str], *, layer: str | None = None
) -> Path:
    """Angular update Δ_t of every monitored layer against Δ* = √(2λη/(1+α)), one panel per run.

    The paper's Fig 3(c,f) (one layer) and Fig 5(a,b,d,e) (all layers): raw Δ_t (Def 3, Eq 13) faint, its
    RMS over the monitor's trailing window solid — Δ* is the equilibrium value of √E[Δ²] (Thm 3) — and Δ*
    dashed. With more than six layers every layer's RMS is a thin line coloured by depth and one layer
    (``layer``, else the paper's ``layer2.0.conv2``, else the middle one) is highlighted with its raw Δ_t.

    Returns:
        ``path``, where the PNG was written.
    """
    _check_path(path)
    runs = _as_runs(runs)
    found = _with_metrics(runs, "angular update")
    styles = run_styles(runs)
    n = len(found)
    ncols = 1 if n == 1 else 2
    nrows = math.ceil(n / ncols)
    mpl = _matplotlib()
    with mpl.rc_context(_RC):
        fig, axes = _figure(nrows, ncols, 8.0 if n == 1 else 12.5, 3.6 * nrows + 0.9)
        used_cmap = 0
        for ax, (i, run) in zip(axes.flat, found, strict=False):
            used_cmap = max(used_cmap, _angular_panel(ax, run, layer))
            ax.set_title(_panel_title(run, styles[i]))
        for ax in list(axes.flat)[n:]:
            ax.set_visible(False)
        if used_cmap:
            from matplotlib.cm import ScalarMappable
            from matplotlib.colors import Normalize

            sm = ScalarMappable(norm=Normalize(1, used_cmap), cmap="viridis")
            cb = fig.colorbar(sm, ax=axes.ravel().tolist(), shrink=0.9, pad=0.01, aspect=30)
            cb.set_label("RMS Δ of each layer, by depth (layer number)")
            from matplotlib.ticker import MaxNLocator

            cb.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        _figure_legend(fig, list(axes.flat)[:n], ncol=4)
        return _save(fig, path)


def _panel_title(run: Run, style: RunStyle) -> str:
    if style.label.startswith(run.name):
        return run.name
    return f"{run.name}\n{style.short}"


def _angular_panel(ax: Axes, run: Run, layer: str | None) -> int:
    """Draws one run's Δ panel; returns the number of layers drawn by colour map (0 if listed by name)."""
    mpl = _matplotlib()
    steps, raw = run.wide("angular_update")
    _, rms = run.wide("angular_update_rms")
    _, star = run.wide("theory_angular_update")
    hl = _pick_layer(run, layer)
    nl = len(run.layers)
    few = nl <= 6
    if few:
        colours = [_HIGHLIGHT] if nl == 1 else _palette(nl)
        for j in range(nl):
            _raw_and_line(ax, steps, raw[:, j], rms[:, j], colours[j], alpha=0.3, label=_short(run.layers[j]))
    else:
        cmap = mpl.colormaps["viridis"]
        x, _, _, rms_b = _reduce(steps, rms)
        for j in range(nl):
            if j != hl:
                ax.plot(x, rms_b[:, j], color=cmap(j / max(nl - 1, 1)), linewidth=0.7, alpha=0.75)
        name = _short(run.layers[hl])
        _raw_and_line(
            ax,
            steps,
            raw[:, hl],
            rms[:, hl],
            _HIGHLIGHT,
            alpha=0.28,
            lw=1.8,
            raw_label=f"{name}: raw Δ_t",
            label=f"{name}: RMS Δ",
        )
    # Δ* as recorded: one dashed line per distinct theory column (usually one: all layers share η, λ, α).
    x, _, _, star_b = _reduce(steps, star)
    drawn: list[np.ndarray] = []
    for j in [hl, *range(nl)]:
        col = star_b[:, j]
        if not np.isfinite(col).any() or any(np.allclose(col, d, equal_nan=True) for d in drawn):
            continue
        ax.plot(
            x,
            col,
            color=_THEORY,
            linestyle="--",
            linewidth=1.3,
            drawstyle="steps-post",
            zorder=5,
            label="Δ* = √(2λη/(1+α))  [Thm 3]",
        )
        drawn.append(col)
    notes = []
    why = _no_theory_reason(run, "theory_angular_update")
    if why:
        notes.append(f"no Δ*: {why}")
    if run.per_channel:
        notes.append("recorded per channel: Δ is the RMS over each layer's channels")
    if notes:
        _note(ax, "\n".join(notes))
    _mark_events(ax, [run])
    _set_scale(ax, raw[:, hl], keep=np.concatenate([star[:, hl], _reduce(steps, rms)[3].ravel()]))
    ax.set_xlabel("step")
    ax.set_ylabel("angular_update Δ_t (rad)")
    return 0 if few else nl


def angular_update_comparison_figure(
    runs: Sequence[Run | str | os.PathLike[str]], path: str | os.PathLike[str], *, layer: str | None = None
) -> Path:
    """One layer's angular update across runs, as the paper's Fig 4(c,f) and Fig 6(c) compare settings.

    Solid: RMS Δ over the monitor's window; dashed, same colour: that run's Δ* (Thm 3); raw Δ_t faint when
    three runs or fewer are shown (more would hide each other).
    """
    _check_path(path)
    runs = _as_runs(runs)
    found = _with_metrics(runs, "angular update comparison")
    styles = run_styles(runs)
    mpl = _matplotlib()
    with mpl.rc_context(_RC):
        fig, axes = _figure(1, 1, 9.0, 5.0)
        ax = axes[0, 0]
        values, keep, names, shown = [], [], set(), set()
        for i, run in found:
            st = styles[i]
            hl = _pick_layer(run, layer)
            names.add(_short(run.layers[hl]))
            steps, raw = run.wide("angular_update")
            _, rms = run.wide("angular_update_rms")
            _, star = run.wide("theory_angular_update")
            label = None if st.group in shown else st.short
            shown.add(st.group)
            raw_col = raw[:, hl] if len(found) <= 3 else np.full(len(steps), np.nan)
            _raw_and_line(ax, steps, raw_col, rms[:, hl], st.colour, alpha=0.15, label=label, lw=1.6)
            x, _, _, sb = _reduce(steps, star[:, hl])
            ax.plot(x, sb, color=st.colour, linestyle="--", linewidth=1.1, drawstyle="steps-post")
            values.append(raw_col)
            keep.append(np.concatenate([_reduce(steps, rms[:, hl])[3], star[:, hl]]))
        _mark_events(ax, [r for _, r in found])
        _set_scale(ax, np.concatenate(values), keep=np.concatenate(keep))
        ax.set_xlabel("step")
        ax.set_ylabel("angular_update Δ_t (rad)")
        ax.set_title(f"Angular update of {', '.join(sorted(names))}: solid RMS Δ, dashed Δ* of the same run")
        _figure_legend(fig, [ax], extra=[(_theory_line(), "Δ* = √(2λη/(1+α))  [Thm 3]")])
        return _save(fig, path)


def weight_norm_figure(
    runs: Sequence[Run | str | os.PathLike[str]], path: str | os.PathLike[str], *, layer: str | None = None
) -> Path:
    """‖w_t‖ of one layer against the equilibrium w* of Thm 1 (SGD) / Thm 2 (SGDM), as in Fig 3(b,e).

    w* is the monitor's: the exact fixed point (w*)⁴ = Lη/(λ(1−α)(2 − λη/(1+α))) with L the trailing mean of
    ‖g̃‖² (SGD) or h̃ (SGDM). The lower panel shows ‖w_t‖/w*: 1 in equilibrium; after an LR drop it sits
    above 1 until the norm shrinks to the new w* (Cor 3.1), unless the weights were rescaled
    (Sec 4.2, Fig 5(c,f)).
    """
    _check_path(path)
    runs = _as_runs(runs)
    found = _with_metrics(runs, "weight norm")
    styles = run_styles(runs)
    mpl = _matplotlib()
    with mpl.rc_context(_RC):
        fig, axes = _figure(2, 1, 9.0, 6.4, sharex=True, gridspec_kw={"height_ratios": [2.2, 1]})
        top, bottom = axes[0, 0], axes[1, 0]
        norms, ratios, names, shown, missing = [], [], set(), set(), []
        for i, run in found:
            st = styles[i]
            hl = _pick_layer(run, layer)
            names.add(_short(run.layers[hl]))
            steps, w = run.wide("weight_norm")
            _, ws = run.wide("theory_weight_norm")
            x, _, _, wb = _reduce(steps, w[:, hl])
            _, _, _, wsb = _reduce(steps, ws[:, hl])
            label = None if st.group in shown else st.short
            shown.add(st.group)
            top.plot(x, wb, color=st.colour, linewidth=1.6, label=label)
            top.plot(x, wsb, color=st.colour, linestyle="--", linewidth=1.2)
            with np.errstate(invalid="ignore", divide="ignore"):
                r = w[:, hl] / ws[:, hl]
            xr, _, _, rb = _reduce(steps, r)
            bottom.plot(xr, rb, color=st.colour, linewidth=1.3)
            norms.append(np.concatenate([wb, wsb]))
            ratios.append(rb)
            if _no_theory_reason(run, "theory_weight_norm"):
                missing.append(run.name)
        every = [r for _, r in found]
        _mark_events(top, every)
        _mark_events(bottom, every)
        _set_scale(top, np.array([]), keep=np.concatenate(norms))
        top.set_ylabel("weight_norm ‖w_t‖₂")
        top.set_title(f"Weight norm of {', '.join(sorted(names))}: solid ‖w_t‖, dashed w* of the same run")
        if missing:
            _note(top, f"no w* recorded for: {', '.join(missing)}")
        bottom.axhspan(0.9, 1.1, color="#2ca02c", alpha=0.1, linewidth=0, label="‖w‖/w* within ±10%")
        bottom.axhline(1.0, color=_THEORY, linewidth=0.9, linestyle="--")
        _set_scale(
            bottom, np.concatenate(ratios), keep=np.array([0.9, 1.1]), lo_q=1.0, hi_q=99.0, log_span=1e9
        )
        bottom.set_ylabel("‖w_t‖ / w*")
        bottom.set_xlabel("step")
        _figure_legend(fig, [top, bottom], extra=[(_theory_line(), "w*  [Thm 1 (SGD) / Thm 2 (SGDM)]")])
        return _save(fig, path)


def _trailing_mean(steps: np.ndarray, values: np.ndarray, span: int = _MEAN_STEPS) -> np.ndarray:
    """Mean over the trailing ``span`` steps (in records: span / the recording stride), NaN ignored."""
    pd = _pandas()
    stride = float(np.median(np.diff(steps))) if len(steps) > 1 else 1.0
    window = max(round(span / max(stride, 1.0)), 1)
    return pd.Series(values).rolling(window, min_periods=max(window // 4, 1)).mean().to_numpy()


def unit_gradient_figure(
    runs: Sequence[Run | str | os.PathLike[str]], path: str | os.PathLike[str], *, layer: str | None = None
) -> Path:
    """‖g̃_t‖² (Def 2, Eq 6) and h̃_t (Thm 2) of one layer, raw and their 200-step mean, as Fig 3(a,d).

    The 200-step mean estimates L = E‖g̃‖² (SGD) or E h̃ (SGDM) that sets w* (Thms 1–2). h̃ is drawn for
    runs with momentum; its mean close to that of ‖g̃‖² is the paper's observation that E⟨v, g⟩ ≈ 0.
    A mean falling towards 0 late in training means the unit gradient is collapsing (memorised data), where
    the equilibrium theory no longer applies.
    """
    _check_path(path)
    runs = _as_runs(runs)
    found = _with_metrics(runs, "unit gradient")
    styles = run_styles(runs)
    has_h = [
        (i, r)
        for i, r in found
        if np.nanmax(r.metrics["momentum"].to_numpy(), initial=0.0) > 0
        and np.isfinite(r.wide("h_tilde")[1][:, _pick_layer(r, layer)]).any()
    ]
    panels = [("unit_grad_sq", "‖g̃_t‖² = ‖g_t‖²‖w_t‖²  [Def 2, Eq 6]", found)]
    if has_h:
        panels.append(("h_tilde", "h̃_t = (‖g_t‖² + 2α⟨v_{t−1}, g_t⟩)‖w_t‖²  [Thm 2]", has_h))
    mpl = _matplotlib()
    with mpl.rc_context(_RC):
        fig, axes = _figure(1, len(panels), 6.2 * len(panels), 4.6)
        names = set()
        for ax, (col, title, which) in zip(axes[0], panels, strict=True):
            values, keep, shown = [], [], set()
            for i, run in which:
                st = styles[i]
                hl = _pick_layer(run, layer)
                names.add(_short(run.layers[hl]))
                steps, v = run.wide(col)
                mean = _trailing_mean(steps, v[:, hl])
                label = None if st.group in shown else st.short
                shown.add(st.group)
                _raw_and_line(ax, steps, v[:, hl], mean, st.colour, alpha=0.15, label=label, lw=1.7)
                values.append(v[:, hl])
                keep.append(_reduce(steps, mean)[3])
            _mark_events(ax, [r for _, r in which])
            _set_scale(
                ax, np.concatenate(values), keep=np.concatenate(keep), lo_q=2.0, hi_q=98.0, log_span=5.0
            )
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.set_ylabel(col)
        fig.suptitle(
            f"Unit gradient of {', '.join(sorted(names))}: "
            f"faint raw, solid {_MEAN_STEPS}-step mean (estimates L)",
            fontsize=10.5,
            fontweight="bold",
        )
        _figure_legend(fig, list(axes[0]))
        return _save(fig, path)


def _accuracy_scale(values: np.ndarray) -> tuple[float, str]:
    finite = values[np.isfinite(values)]
    return (100.0, "%") if len(finite) and finite.max() <= 1.0 else (1.0, "")


def training_figure(runs: Sequence[Run | str | os.PathLike[str]], path: str | os.PathLike[str]) -> Path:
    """Training loss and test accuracy against step, runs overlaid, as the paper's Fig 4 and Fig 6(a,b).

    Runs that differ only in seed share a colour: each is drawn faint and, where their steps coincide,
    their mean solid (with the min–max band of test accuracy across seeds).
    """
    _check_path(path)
    runs = _as_runs(runs)
    found = [(i, r) for i, r in enumerate(runs) if r.train is not None and len(r.train)]
    if not found:
        raise NoDataError("no run has a train.csv to draw loss and accuracy from")
    styles = run_styles(runs)
    has_test = any("test_accuracy" in r.train and r.train["test_accuracy"].notna().any() for _, r in found)
    has_loss = any("loss" in r.train and r.train["loss"].notna().any() for _, r in found)
    if not has_loss and not has_test:
        raise NoDataError("train.csv has neither a loss nor a test_accuracy column with values")
    mpl = _matplotlib()
    with mpl.rc_context(_RC):
        ncols = int(has_loss) + int(has_test)
        fig, axes = _figure(1, ncols, 6.2 * ncols, 4.6)
        ax_loss = axes[0, 0] if has_loss else None
        ax_acc = axes[0, -1] if has_test else None
        groups: dict[int, list[Run]] = {}
        for i, r in found:
            groups.setdefault(styles[i].group, []).append(r)
        first_style = {styles[i].group: styles[i] for i, _ in reversed(found)}
        every_acc = [
            r.train["test_accuracy"].to_numpy(dtype=np.float64)
            for _, r in found
            if "test_accuracy" in r.train
        ]
        scale, unit = _accuracy_scale(np.concatenate(every_acc) if every_acc else np.array([]))
        losses: list[np.ndarray] = []
        for g, members in groups.items():
            if ax_loss is not None:
                _loss_curves(ax_loss, members, first_style[g], losses)
            if ax_acc is not None:
                _accuracy_curves(ax_acc, members, first_style[g], scale)
        every = [r for _, r in found]
        if ax_loss is not None:
            _mark_events(ax_loss, every)
            _set_scale(ax_loss, np.concatenate(losses), lo_q=0.5, hi_q=99.5, log_span=4.0)
            ax_loss.set_title("Training loss: faint per step, solid running mean")
            ax_loss.set_xlabel("step")
            ax_loss.set_ylabel("loss (training batches)")
        if ax_acc is not None:
            _mark_events(ax_acc, every)
            ax_acc.set_title("Test accuracy")
            ax_acc.set_xlabel("step")
            ax_acc.set_ylabel(f"test_accuracy{f' ({unit})' if unit else ''}")
        _figure_legend(fig, [a for a in (ax_loss, ax_acc) if a is not None])
        return _save(fig, path)


def _same_steps(frames: list[Any], col: str) -> np.ndarray | None:
    """The common step grid of the members' finite ``col`` rows, or None when they differ."""
    grids = [f.loc[f[col].notna(), "step"].to_numpy() for f in frames]
    first = grids[0]
    if len(grids) > 1 and all(len(g) == len(first) and np.array_equal(g, first) for g in grids):
        return first
    return None


def _loss_curves(ax: Axes, members: list[Run], st: RunStyle, out: list[np.ndarray]) -> None:
    pd = _pandas()
    frames = [r.train for r in members if "loss" in r.train and r.train["loss"].notna().any()]
    if not frames:
        return
    window = max(5, max(len(f) for f in frames) // 100)
    smooth = []
    for f in frames:
        steps, loss = f["step"].to_numpy(), f["loss"].to_numpy(dtype=np.float64)
        _raw_and_line(ax, steps, loss, None, st.colour, alpha=0.15)
        smooth.append(pd.Series(loss).rolling(window, min_periods=1).mean().to_numpy())
        out.append(loss)
    if _same_steps(frames, "loss") is not None:
        x, _, _, m = _reduce(frames[0]["step"].to_numpy(), np.mean(smooth, axis=0))
        ax.plot(x, m, color=st.colour, linewidth=1.7, label=st.short)
        return
    for k, (f, s) in enumerate(zip(frames, smooth, strict=True)):
        x, _, _, m = _reduce(f["step"].to_numpy(), s)
        ax.plot(x, m, color=st.colour, linewidth=1.5, label=st.short if k == 0 else None)


def _accuracy_curves(ax: Axes, members: list[Run], st: RunStyle, scale: float) -> None:
    frames = [
        r.train for r in members if "test_accuracy" in r.train and r.train["test_accuracy"].notna().any()
    ]
    if not frames:
        return
    evals = [f.loc[f["test_accuracy"].notna(), ["step", "test_accuracy"]] for f in frames]
    grid = _same_steps(frames, "test_accuracy")
    if grid is not None:
        acc = np.stack([e["test_accuracy"].to_numpy(dtype=np.float64) for e in evals]) * scale
        ax.fill_between(grid, acc.min(0), acc.max(0), color=st.colour, alpha=0.15, linewidth=0)
        ax.plot(grid, acc.mean(0), color=st.colour, linewidth=1.6, marker="o", markersize=2.5, label=st.short)
        return
    for k, e in enumerate(evals):
        ax.plot(
            e["step"],
            e["test_accuracy"] * scale,
            color=st.colour,
            linewidth=1.4,
            marker="o",
            markersize=2.5,
            label=st.short if k == 0 else None,
        )


def _stage_table(run: Run) -> pd.DataFrame:
    """Per stage and layer: RMS Δ over the second half of the stage, mean Δ* there, and their ratio.

    The second half, because the first holds the approach to the new equilibrium (Cor 3.1); a ratio below 1
    there means the lag outlasted half the stage (Fig 5(a,d)); rescaling should put it at 1 (Sec 4.2).
    """
    pd = _pandas()
    m = run.metrics
    steps = m["step"].to_numpy()
    starts = run.stage_starts
    stage = np.searchsorted(starts, steps, side="right") - 1
    ends = np.append(starts[1:], steps.max() + 1)
    valid = stage >= 0
    s = np.maximum(stage, 0)
    late = valid & (steps >= (starts[s] + ends[s]) / 2.0)
    d = m.loc[late, ["param", "angular_update", "theory_angular_update"]].copy()
    d["stage"] = stage[late]
    d["d2"] = d["angular_update"] ** 2
    g = d.groupby(["stage", "param"], observed=True)
    t = pd.DataFrame(
        {"rms": np.sqrt(g["d2"].mean()), "star": g["theory_angular_update"].mean(), "n": g["d2"].count()}
    ).reset_index()
    with np.errstate(invalid="ignore", divide="ignore"):
        t["ratio"] = np.where(t["star"] > 0, t["rms"] / t["star"], np.nan)
    return t


def stage_ratio_figure(runs: Sequence[Run | str | os.PathLike[str]], path: str | os.PathLike[str]) -> Path:
    """Δ/Δ* per layer and learning-rate stage, runs side by side: the lag of Fig 5 and Cor 3.1 at a glance.

    Left: RMS Δ over the second half of each stage divided by that stage's Δ*, one box (and one dot per
    layer) per run and stage; 1 is equilibrium (Thm 3). Without rescaling, late stages sit below 1 because
    the norm needs ~ln(k)(1−α)/(2λη) steps to shrink (Cor 3.1); with the k^-¼ rescaling they sit at 1
    (Sec 4.2). Right: the RMS Δ itself (median over layers, interquartile bars) and each run's Δ* (dashes),
    which also covers optimizers without a Δ* (Adam, Fig 6(c)).
    """
    _check_path(path)
    runs = _as_runs(runs)
    found = _with_metrics(runs, "stage ratios")
    styles = run_styles(runs)
    tables = [(i, r, _stage_table(r)) for i, r in found]
    nstage = max(int(t["stage"].max()) + 1 if len(t) else 1 for _, _, t in tables)
    k = len(tables)
    width = min(0.8 / k, 0.3)
    offsets = (np.arange(k) - (k - 1) / 2) * width
    rng = np.random.default_rng(0)
    mpl = _matplotlib()
    from matplotlib.patches import Patch

    with mpl.rc_context(_RC):
        fig, axes = _figure(1, 2, 12.4, 4.8)
        ax_r, ax_d = axes[0]
        no_theory, shown, handles, ratios_all = [], set(), [], []
        for (i, run, t), off in zip(tables, offsets, strict=True):
            st = styles[i]
            if st.group not in shown:
                handles.append((Patch(facecolor=st.colour, alpha=0.6, edgecolor=st.colour), st.short))
                shown.add(st.group)
            have = t[np.isfinite(t["ratio"])]
            if not len(have):
                no_theory.append(run.name)
            for s in range(nstage):
                pos = s + 1 + off
                vals = have.loc[have["stage"] == s, "ratio"].to_numpy()
                if len(vals):
                    ratios_all.append(vals)
                    _box(ax_r, vals, pos, width, st.colour, rng)
                rows = t[t["stage"] == s]
                rms = rows["rms"].to_numpy()
                rms = rms[np.isfinite(rms)]
                if len(rms):
                    q1, med, q3 = np.percentile(rms, [25, 50, 75])
                    ax_d.errorbar(
                        [pos],
                        [med],
                        yerr=[[med - q1], [q3 - med]],
                        fmt="o",
                        color=st.colour,
                        markersize=4.5,
                        capsize=2.5,
                        linewidth=1.2,
                    )
                star = rows["star"].to_numpy()
                star = star[np.isfinite(star) & (star > 0)]
                if len(star):
                    ax_d.hlines(
                        np.median(star),
                        pos - width / 2,
                        pos + width / 2,
                        color=st.colour,
                        linestyle="--",
                        linewidth=1.6,
                    )
        ax_r.axhspan(0.9, 1.1, color="#2ca02c", alpha=0.1, linewidth=0)
        ax_r.axhline(1.0, color=_THEORY, linestyle="--", linewidth=1)
        labels = [f"LR stage {s + 1}" for s in range(nstage)] if nstage > 1 else ["whole run"]
        for ax in (ax_r, ax_d):
            ax.set_xticks(np.arange(1, nstage + 1), labels)
            ax.set_xlim(0.5, nstage + 0.5)
            ax.grid(axis="x", visible=False)
            for s in range(1, nstage):
                ax.axvline(s + 0.5, color="#cccccc", linewidth=0.8)
        ax_r.set_ylabel("RMS Δ / Δ*  (second half of each stage)")
        ax_r.set_title("RMS angular update over Δ*, one dot per layer")
        if no_theory:
            _note(ax_r, f"no Δ* recorded for: {', '.join(no_theory)}")
        if ratios_all:
            _set_scale(ax_r, np.array([]), keep=np.concatenate([*ratios_all, [0.9, 1.1]]), log_span=1e9)
        else:
            ax_r.text(
                0.5,
                0.5,
                "no run recorded a theoretical Δ*",
                ha="center",
                va="center",
                transform=ax_r.transAxes,
                color="#666666",
            )
        ax_d.set_yscale("log")
        ax_d.set_ylabel("RMS angular_update Δ (rad)")
        ax_d.set_title("RMS Δ per stage: median over layers (IQR bars), Δ* dashed")
        extra = [*handles, (Patch(facecolor="#2ca02c", alpha=0.2), "within ±10% of Δ*")]
        _figure_legend(fig, [], extra=extra)
        return _save(fig, path)


def _box(ax: Axes, vals: np.ndarray, pos: float, width: float, colour: str, rng: np.random.Generator) -> None:
    """One box of per-layer values in a run's colour, with the layers as jittered dots when few."""
    bp = ax.boxplot(
        vals, positions=[pos], widths=width * 0.85, patch_artist=True, showfliers=False, manage_ticks=False
    )
    for b in bp["boxes"]:
        b.set(facecolor=colour, alpha=0.3, edgecolor=colour)
    for part in ("whiskers", "caps"):
        for line in bp[part]:
            line.set(color=colour, linewidth=1)
    for line in bp["medians"]:
        line.set(color=colour, linewidth=2)
    if len(vals) <= 80:
        jitter = rng.uniform(-0.25, 0.25, len(vals)) * width
        ax.scatter(pos + jitter, vals, s=8, color=colour, alpha=0.85, linewidths=0, zorder=3)
