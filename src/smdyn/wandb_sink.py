"""Monitor records as Weights & Biases charts, on their own step axis.

Each recorded step becomes one ``run.log`` call holding ``<prefix>/<metric>/<param>`` for every float or bool
column (``lr``, ``wd``, ``momentum`` and ``in_equilibrium`` included) and ``step_metric`` (``smdyn/step``),
the monitor's optimizer step. ``define_metric`` makes that the x-axis of every ``<prefix>/*`` chart, so the
charts are right whatever W&B's own step counter reads, also when a monitor flushes 100 steps at once.

NaN (an undefined value: no theory for this optimizer, no gradient this step) is never logged, since a W&B
chart draws it badly; the chart shows a gap. Why the value is missing is not lost: every row also logs
``<prefix>/reason_code/<param>`` (``""`` when the row has no note, else a key of ``smdyn.monitor.REASONS``),
and the run summary holds the prose of every code seen, under ``<prefix>/reason/<code>``.

Per-channel rows (``granularity="channel"``) are summarised per (step, parameter) by the mean over the
channels whose value is not NaN or, with ``histograms=True``, by one ``wandb.Histogram`` of the finite
channel values per metric. The hyper-parameters (equal on every channel) and ``in_equilibrium`` (its mean is
the fraction of channels in equilibrium) stay scalar means. The reason code of such a row lists the distinct
codes of its channels, comma-separated.

wandb is imported when a ``WandbSink`` is built, never by the rest of smdyn. Failures follow
:mod:`smdyn.sinks`: a ``run.log`` that raises keeps the rows in memory (bounded) and the next ``write`` logs
them, in order and once each; ``close`` never raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from smdyn.sinks import MAX_PENDING_ROWS, _Base, _text

__all__ = ["WandbSink"]

# Equal on every channel of a parameter (they are the param group's): a histogram of them says nothing.
_HPARAMS = ("lr", "wd", "momentum")


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError as e:
        raise ImportError("Weights & Biases logging needs wandb: pip install 'smdyn[wandb]'") from e
    return wandb


def _check_name(what: str, value: object) -> str:
    if not isinstance(value, str) or not value or value != value.strip("/") or "*" in value:
        raise ValueError(f"{what} must be a non-empty str without '*' or leading/trailing '/', got {value!r}")
    return value


class WandbSink(_Base):
    """Logs monitor records to a W&B run: ``<prefix>/<metric>/<param>`` against ``step_metric``.

    Each recorded step adds one row to the run's history, so W&B's own step counter moves on too: if you
    pass ``step=`` to ``wandb.log`` yourself, give your metrics their own axis with ``define_metric`` instead
    (as W&B recommends), or W&B drops your rows whose step is behind its counter.

    Args:
        run: the W&B run to log to; by default the active run (``wandb.run``).
        project: with no active run, a run is started in this project (``wandb.init(project=...)``) and
            finished by ``close``. A run the sink did not start is never finished by it.
        prefix: the first part of every key and the ``define_metric`` glob ``<prefix>/*``.
        step_metric: the key of the monitor's step, the x-axis of every ``<prefix>/*`` chart.
        histograms: per-channel rows as one histogram per metric and parameter instead of their mean.
        max_pending_rows: rows kept in memory while ``run.log`` fails (see :mod:`smdyn.sinks`).

    Raises:
        ImportError: wandb is not installed.
        ValueError: no run to log to, both ``run`` and ``project``, an active run in another project, or
            a malformed ``prefix`` / ``step_metric``.
    """

    _io_errors = (Exception,)  # whatever stops run.log (a finished run, a dead service) is retried later

    def __init__(
        self,
        run: Any = None,
        *,
        project: str | None = None,
        prefix: str = "smdyn",
        step_metric: str = "smdyn/step",
        histograms: bool = False,
        max_pending_rows: int = MAX_PENDING_ROWS,
    ) -> None:
        self.prefix = _check_name("prefix", prefix)
        self.step_metric = _check_name("step_metric", step_metric)
        if not isinstance(histograms, bool):
            raise ValueError(f"histograms must be a bool, got {histograms!r}")
        if project is not None and (not isinstance(project, str) or not project):
            raise ValueError(f"project must be a non-empty str, got {project!r}")
        if run is not None and project is not None:
            raise ValueError("give either run or project, not both")
        super().__init__(max_pending_rows)
        self.histograms = histograms
        self._wandb = _import_wandb()
        self.run, self._owns = self._find_run(run, project)
        try:
            self.run.define_metric(step_metric)
            self.run.define_metric(f"{prefix}/*", step_metric=step_metric)
        except BaseException:
            if self._owns:
                self.run.finish()
            raise
        self._done = 0  # steps of the oldest waiting batch already logged
        self._legend: set[tuple[str, str]] = set()  # (code, prose) pairs already in the summary

    def _find_run(self, run: Any, project: str | None) -> tuple[Any, bool]:
        """The run to log to, and whether this sink started it (and so finishes it)."""
        if run is not None:
            return run, False
        active = self._wandb.run
        if active is not None:
            if project is not None and getattr(active, "project", project) != project:
                raise ValueError(
                    f"a W&B run of project {active.project!r} is active, not of {project!r}; pass run= or "
                    "finish it first"
                )
            return active, False
        if project is None:
            raise ValueError("no active W&B run: call wandb.init() first, pass run=, or give project=")
        return self._wandb.init(project=project), True

    @property
    def _target(self) -> str:
        name = getattr(self.run, "name", None) or getattr(self.run, "id", None)
        return f"W&B run {name}" if name else "its W&B run"

    def _check(self, cols: dict[str, np.ndarray]) -> None:
        for need in ("step", "param"):
            if need not in cols:
                raise ValueError(f"WandbSink needs a {need!r} column in the batch")

    def _emit(self, cols: dict[str, np.ndarray]) -> None:
        self._update_legend(cols)  # before the rows: repeating it on a retry changes nothing
        rows = self._rows(cols)
        for i in range(self._done, len(rows)):
            self.run.log(rows[i])
            self._done = i + 1
        self._done = 0

    def _drop_all(self) -> None:
        super()._drop_all()
        self._done = 0

    def _release(self) -> None:
        if not self._owns:
            return
        try:
            self.run.finish()
        except Exception as exc:  # close must not raise
            self._warn_io(exc)

    def _update_legend(self, cols: Mapping[str, np.ndarray]) -> None:
        if "reason_code" not in cols or "reason" not in cols:
            return
        new = set(zip(_text(cols["reason_code"]), _text(cols["reason"]), strict=True)) - self._legend
        new = {(code, prose) for code, prose in new if code}
        if new:
            self.run.summary.update({f"{self.prefix}/reason/{code}": prose for code, prose in sorted(new)})
            self._legend |= new

    def _rows(self, cols: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
        """One ``run.log`` payload per step, in the order the steps first appear in the batch."""
        steps = cols["step"].astype(np.int64)
        params = np.asarray(_text(cols["param"]), dtype=object)
        channel = cols.get("channel")
        codes = _text(cols["reason_code"]) if "reason_code" in cols else None
        values = {n: a.astype(np.float64) for n, a in cols.items() if a.dtype.kind in "fb"}
        as_mean = {n for n, a in cols.items() if a.dtype.kind == "b"}.union(_HPARAMS)
        out: dict[int, dict[str, Any]] = {}
        for step, param, idx in _groups(steps, params):
            row = out.setdefault(step, {self.step_metric: step})
            per_channel = len(idx) > 1 or (channel is not None and channel[idx[0]] >= 0)
            for name, arr in values.items():
                key = f"{self.prefix}/{name}/{param}"
                if not per_channel:
                    v = float(arr[idx[0]])
                    if v == v:  # not NaN
                        row[key] = v
                    continue
                summary = self._summarise(arr[idx], histogram=self.histograms and name not in as_mean)
                if summary is not None:
                    row[key] = summary
            if codes is not None:
                seen = dict.fromkeys(codes[i] for i in idx.tolist())
                row[f"{self.prefix}/reason_code/{param}"] = ",".join(c for c in seen if c)
        return list(out.values())

    def _summarise(self, values: np.ndarray, histogram: bool) -> Any:
        """The channels' values as one logged value: their mean, or a histogram; None when all are NaN."""
        if histogram:
            finite = values[np.isfinite(values)]
            return self._wandb.Histogram(finite) if len(finite) else None
        defined = values[~np.isnan(values)]
        return float(defined.mean()) if len(defined) else None


def _groups(steps: np.ndarray, params: np.ndarray) -> list[tuple[int, str, np.ndarray]]:
    """(step, param, row indices) for each distinct pair, ordered by the pair's first row."""
    _, first, inverse = np.unique(
        np.stack([steps, np.unique(params, return_inverse=True)[1].reshape(-1)], axis=1),
        axis=0,
        return_index=True,
        return_inverse=True,
    )
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    groups = np.split(order, bounds)
    by_first = np.argsort(first, kind="stable")
    return [(int(steps[first[g]]), str(params[first[g]]), groups[g]) for g in by_first.tolist()]
