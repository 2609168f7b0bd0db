"""WandbSink: a real offline W&B run read back from its transaction log equals the monitor's own history."""

from __future__ import annotations

import bisect
import json
import math
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from smdyn import SphericalMonitor
from smdyn.sinks import WandbSink

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

_BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks of records with a 7-byte header
_FULL, _LAST = 1, 4


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """wandb in offline mode with every file under tmp_path: nothing is sent anywhere."""
    env = {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path),
        "WANDB_CONFIG_DIR": str(tmp_path / "config"),
        "WANDB_CACHE_DIR": str(tmp_path / "cache"),
        "WANDB_DATA_DIR": str(tmp_path / "data"),
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB__DISABLE_STATS": "true",
        "WANDB__DISABLE_META": "true",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    yield wandb
    if wandb.run is not None:  # a failed test leaves no run behind for the next one
        wandb.run.finish()
    wandb.teardown()  # the next setup reads the environment again (WANDB_DIR is read once per setup)


def _records(run: Any) -> list[Any]:
    """Every record of a finished offline run, from its ``run-<id>.wandb`` file.

    ``run.finish()`` can return before the W&B service has written the last rows, so the file is read
    again until its last record is the run's ``exit`` record (at most 30 s).
    """
    (path,) = Path(run.dir).parent.glob("run-*.wandb")
    deadline = time.monotonic() + 30
    while True:
        records = _parse(path.read_bytes())
        if records and records[-1].WhichOneof("record_type") == "exit":
            return records
        assert time.monotonic() < deadline, f"{path} has no exit record 30 s after the run finished"
        time.sleep(0.05)


def _parse(data: bytes) -> list[Any]:
    """The records of a ``.wandb`` file: a LevelDB-style log, after a 7-byte ``:W&B`` file header."""
    assert data[:4] == b":W&B"
    pos, chunks, out = 7, [], []
    while pos + 7 <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < 7:  # too little room for a header: the rest of the block is padding
            pos += room
            continue
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and n == 0:
            pos += room
            continue
        if pos + 7 + n > len(data):  # a record still being written
            break
        chunks.append(data[pos + 7 : pos + 7 + n])
        pos += 7 + n
        if kind in (_FULL, _LAST):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(b"".join(chunks))
            out.append(rec)
            chunks = []
    return out


def _items(entries: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for e in entries:
        keys = list(e.nested_key) or [e.key]
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = json.loads(e.value_json)
    return out


def _history(run: Any) -> list[dict[str, Any]]:
    return [_items(r.history.item) for r in _records(run) if r.WhichOneof("record_type") == "history"]


def _summary_updates(run: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in _records(run):
        if r.WhichOneof("record_type") == "summary":
            out.update(_items(r.summary.update))
    return out


def _by_step(rows: list[dict[str, Any]], step_key: str) -> dict[int, dict[str, Any]]:
    """The rows that carry ``step_key``, by that step; each step must appear once."""
    out: dict[int, dict[str, Any]] = {}
    for row in rows:
        if step_key in row:
            step = row[step_key]
            assert step not in out, f"step {step} logged twice"
            out[step] = row
    return out


class _Net(nn.Module):
    """A linear layer feeding BatchNorm, and a layer that is trained but never used (so never has a grad)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8, bias=False), nn.BatchNorm1d(8), nn.Linear(8, 2))
        self.unused = nn.Linear(3, 3, bias=False)  # NaN rows with reason "no_grad"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _setup(zero_channel: bool = False) -> tuple[_Net, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = _Net()
    if zero_channel:
        with torch.no_grad():
            model.body[0].weight[3] = 0.0  # a zero-norm channel at the first step: NaN, "zero_norm"
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, log: Any = None) -> list[float]:
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model(torch.randn(16, 4)).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if log is not None:
            log({"train/loss": losses[-1]})
    return losses


def _float_columns(hist: dict[str, np.ndarray]) -> list[str]:
    return [n for n, a in hist.items() if np.asarray(a).dtype.kind in "fb"]


def test_offline_run_holds_the_monitor_history(offline: Any) -> None:
    run = offline.init(project="smdyn-test")
    assert run.settings.mode == "offline"
    model, opt = _setup()
    sink = WandbSink()  # the active run
    assert sink.run is run
    params = ["body.0.weight", "unused.weight"]
    mon = SphericalMonitor(model, opt, params, sinks=[sink], flush_every=3, window=4)
    losses = _train(model, opt, 7, log=run.log)  # the user's own wandb.log calls, on W&B's step counter
    mon.close()
    assert wandb.run is run  # a run the sink did not start is not finished by it
    hist = mon.history()
    run.finish()

    rows = _history(run)
    assert [r["train/loss"] for r in rows if "train/loss" in r] == losses  # none of the user's rows lost
    got = _by_step(rows, "smdyn/step")
    assert sorted(got) == sorted(set(hist["step"].tolist())) == list(range(7))
    want: dict[int, dict[str, Any]] = {s: {"smdyn/step": s} for s in got}
    nan_seen = 0
    for i in range(len(hist["step"])):  # brute force, row by row, from the monitor's own numbers
        step, param = int(hist["step"][i]), str(hist["param"][i])
        for name in _float_columns(hist):
            v = float(hist[name][i])
            if math.isnan(v):
                nan_seen += 1
            else:
                want[step][f"smdyn/{name}/{param}"] = v
        want[step][f"smdyn/reason_code/{param}"] = str(hist["reason_code"][i])
    assert nan_seen > 0  # the test covers skipped values
    for step, row in got.items():
        assert {k: v for k, v in row.items() if k.startswith("smdyn/")} == want[step], step
    codes = {c for r in got.values() for k, c in r.items() if k.startswith("smdyn/reason_code/")}
    assert "no_grad" in codes
    summary = _summary_updates(run)
    mask = hist["reason_code"] == "no_grad"
    assert summary["smdyn/reason/no_grad"] == str(hist["reason"][mask][0])

    metrics = {r.metric.name or r.metric.glob_name: r.metric for r in _records(run) if r.HasField("metric")}
    assert metrics["smdyn/*"].step_metric == "smdyn/step"


def test_channel_rows_as_means_and_histograms(offline: Any) -> None:
    run = offline.init(project="smdyn-test")
    model, opt = _setup(zero_channel=True)
    means = WandbSink(run)
    hists = WandbSink(run, prefix="hist", step_metric="hist/step", histograms=True)
    mon = SphericalMonitor(
        model, opt, ["body.0.weight"], sinks=[means, hists], flush_every=2, granularity="channel"
    )
    _train(model, opt, 5)
    mon.close()
    hist = mon.history()
    run.finish()

    rows = _history(run)
    got_mean, got_hist = _by_step(rows, "smdyn/step"), _by_step(rows, "hist/step")
    assert sorted(got_mean) == sorted(got_hist) == list(range(5))
    assert "zero_norm" in got_mean[0]["smdyn/reason_code/body.0.weight"].split(",")
    assert (hist["channel"] >= 0).all()
    for step in range(5):
        at = hist["step"] == step
        assert at.sum() == 8
        for name in _float_columns(hist):
            vals = [float(v) for v in hist[name][at]]
            defined = [v for v in vals if not math.isnan(v)]
            mean_key, hist_key = f"smdyn/{name}/body.0.weight", f"hist/{name}/body.0.weight"
            if not defined:
                assert mean_key not in got_mean[step] and hist_key not in got_hist[step]
                continue
            assert got_mean[step][mean_key] == pytest.approx(sum(defined) / len(defined), rel=1e-12, abs=0)
            h = got_hist[step][hist_key]
            if name in ("lr", "wd", "momentum", "in_equilibrium"):
                assert h == got_mean[step][mean_key]  # scalars in both sinks
                continue
            assert h["_type"] == "histogram"
            assert sum(h["values"]) == len(defined)  # every finite channel value counted once
            bins = h["bins"]
            counts = [0] * (len(bins) - 1)
            for v in defined:  # recount by hand: bin k holds bins[k] <= v < bins[k + 1], the last one closed
                counts[min(bisect.bisect_right(bins, v), len(bins) - 1) - 1] += 1
            assert h["values"] == counts
    assert any(math.isnan(float(v)) for v in hist["angular_update"])  # the NaN path was exercised


def test_failing_log_loses_nothing(offline: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    run = offline.init(project="smdyn-test")
    real_log = run.log
    calls = []

    def flaky(data: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        calls.append(data.get("smdyn/step"))
        if 2 <= len(calls) <= 4:  # the second write fails part-way, and its retries fail too
            raise ConnectionError("service went away")
        real_log(data, *args, **kwargs)

    model, opt = _setup()
    sink = WandbSink(run)
    monkeypatch.setattr(run, "log", flaky)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mon = SphericalMonitor(model, opt, ["body.0.weight"], sinks=[sink], flush_every=3)
        _train(model, opt, 9)
        assert sink.pending_rows > 0
        mon.close()
    monkeypatch.undo()
    assert (sink.pending_rows, sink.lost_rows) == (0, 0)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert sum("could not write" in m for m in messages) == 1
    assert not any("lost" in m and "could not write" not in m for m in messages)
    hist = mon.history()
    run.finish()

    got = _by_step(_history(run), "smdyn/step")
    assert sorted(got) == list(range(9))
    for i, step in enumerate(hist["step"].tolist()):
        v = float(hist["angular_update"][i])
        assert got[step]["smdyn/angular_update/body.0.weight"] == v


class _StubRun:
    """The parts of a W&B run the sink uses, recorded; ``log`` fails while ``failing`` is set."""

    def __init__(self) -> None:
        self.logged: list[dict[str, Any]] = []
        self.metrics: list[tuple[str, str | None]] = []
        self.summary: dict[str, Any] = {}
        self.failing = False
        self.finished = False
        self.name = "stub"

    def define_metric(self, name: str, step_metric: str | None = None) -> None:
        self.metrics.append((name, step_metric))

    def log(self, data: dict[str, Any]) -> None:
        if self.failing:
            raise OSError("offline")
        self.logged.append(data)

    def finish(self) -> None:
        self.finished = True


def _batch(start: int, n: int) -> dict[str, np.ndarray]:
    steps = np.arange(start, start + n, dtype=np.int64)
    return {
        "step": steps,
        "param": np.array(["a"] * n, dtype=object),
        "channel": np.full(n, -1, dtype=np.int64),
        "weight_norm": steps / 7.0,
        "reason_code": np.array([""] * n, dtype=object),
        "reason": np.array([""] * n, dtype=object),
    }


def test_bounded_backlog_and_close_never_raises() -> None:
    run = _StubRun()
    sink = WandbSink(run, max_pending_rows=4)
    assert run.metrics == [("smdyn/step", None), ("smdyn/*", "smdyn/step")]
    run.failing = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sink.write(_batch(0, 3))
        sink.write(_batch(3, 3))  # 6 rows waiting, 4 kept: the newest 2 dropped
        assert (sink.pending_rows, sink.lost_rows) == (4, 2)
        sink.close()  # fails again: never raises, counts the rest as lost
    assert (sink.pending_rows, sink.lost_rows) == (0, 6)
    assert any("6 rows were lost" in str(w.message) for w in caught)
    assert not run.finished  # not the sink's run
    with pytest.raises(ValueError, match="closed"):
        sink.write(_batch(6, 1))


def test_recovered_log_writes_backlog_in_order_once() -> None:
    run = _StubRun()
    sink = WandbSink(run, prefix="sm", step_metric="sm/step")
    run.failing = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sink.write(_batch(0, 2))
    run.failing = False
    sink.write(_batch(2, 2))
    sink.close()
    assert [d["sm/step"] for d in run.logged] == [0, 1, 2, 3]
    assert [d["sm/weight_norm/a"] for d in run.logged] == [0 / 7, 1 / 7, 2 / 7, 3 / 7]


def test_bad_arguments_and_missing_run(offline: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    assert wandb.run is None
    with pytest.raises(ValueError, match="no active W&B run"):
        WandbSink()
    with pytest.raises(ValueError, match="either run or project"):
        WandbSink(_StubRun(), project="p")
    for bad in ("", "a/", "/a", "a*", 3):
        with pytest.raises(ValueError, match="prefix"):
            WandbSink(_StubRun(), prefix=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="histograms"):
        WandbSink(_StubRun(), histograms=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_pending_rows"):
        WandbSink(_StubRun(), max_pending_rows=0)
    with pytest.raises(ValueError, match="'param'"):
        WandbSink(_StubRun()).write({"step": np.arange(2)})
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match=r"pip install 'smdyn\[wandb\]'"):
        WandbSink(_StubRun())


def test_project_starts_a_run_and_close_finishes_it(offline: Any) -> None:
    sink = WandbSink(project="smdyn-test")
    run = sink.run
    assert wandb.run is run and run.project == "smdyn-test"
    with pytest.raises(ValueError, match="not of"):
        WandbSink(project="other")
    sink.write(_batch(0, 2))
    sink.close()
    assert wandb.run is None  # finished: the sink started it
    got = _by_step(_history(run), "smdyn/step")
    assert {s: r["smdyn/weight_norm/a"] for s, r in got.items()} == {0: 0.0, 1: 1 / 7}


def test_smdyn_does_not_import_wandb() -> None:
    code = "import sys, smdyn, smdyn.sinks, smdyn.wandb_sink; print('wandb' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
