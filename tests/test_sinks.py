"""Sinks: exact round trips, durability after SIGKILL, resumed files, TensorBoard tags, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from smdyn.sinks import CSVSink, ParquetSink, TensorBoardSink, read_metrics

# Values chosen to break a lossy float format: thirds, 0.1 + 0.2, subnormals, huge, signed zero, inf, NaN.
_HARD = [1 / 3, 0.1 + 0.2, 5e-324, 1.7976931348623157e308, -0.0, np.inf, -np.inf, np.nan, 1e-7, 2.0]


def _batch(steps: list[int], params: list[str], seed: int = 0) -> dict[str, np.ndarray]:
    """One row per (step, param), in the monitor's column layout plus an extra float column."""
    rng = np.random.default_rng(seed)
    n = len(steps) * len(params)
    hard = np.resize(np.array(_HARD), n)
    return {
        "step": np.repeat(np.array(steps, dtype=np.int64), len(params)),
        "param": np.array(params * len(steps), dtype=object),
        "lr": np.full(n, 0.1),
        "weight_norm": rng.random(n) * 10,
        "angular_update": hard,
        "theory_angular_update": np.where(np.arange(n) % 3 == 0, np.nan, rng.random(n)),
        "in_equilibrium": np.arange(n) % 2 == 0,
        "reason": np.array(["" if i % 4 else 'zero norm, "frozen"' for i in range(n)], dtype=object),
        "extra_metric": rng.standard_normal(n).astype(np.float32),
    }


def _concat(*batches: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    assert got["step"].dtype == np.int64
    assert got["in_equilibrium"].dtype == np.bool_
    assert got["param"].dtype == object
    assert all(type(v) is str for v in got["param"])
    for k, w in want.items():
        g = got[k]
        assert len(g) == len(w), k
        if w.dtype.kind == "f":
            assert g.dtype == np.float64, k
            w64 = w.astype(np.float64)
            # Bitwise: NaN where NaN, and the sign of -0.0 kept.
            assert np.array_equal(g.view(np.int64), w64.view(np.int64)), k
        else:
            assert g.tolist() == w.tolist(), k


# A parameter named "0" (nn.ParameterList) looks like an integer but must come back as a string.
_PARAMS = ["0", "layer.weight"]


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_round_trip_is_exact(tmp_path: Path, kind: str) -> None:
    b1, b2 = _batch([0, 1, 2], _PARAMS, seed=1), _batch([3, 4], _PARAMS, seed=2)
    path = tmp_path / ("m.csv" if kind == "csv" else "m")
    sink = CSVSink(path) if kind == "csv" else ParquetSink(path)
    sink.write(b1)
    sink.write(b2)
    sink.close()
    _assert_same(read_metrics(path), _concat(b1, b2))
    if kind == "parquet":
        assert sorted(p.name for p in path.iterdir()) == ["part-000000.parquet", "part-000001.parquet"]


def test_csv_text_format(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    with_nan = {
        "step": np.array([7]),
        "param": np.array(["w"]),
        "x": np.array([np.nan]),
        "y": np.array([0.1]),
    }
    sink = CSVSink(path)
    sink.write(with_nan)
    sink.close()
    assert path.read_text() == "step,param,x,y\n7,w,nan,0.1\n"


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_resume_continues_the_file(tmp_path: Path, kind: str) -> None:
    b1, b2 = _batch([0, 1], _PARAMS, seed=3), _batch([2, 3], _PARAMS, seed=4)
    path = tmp_path / ("m.csv" if kind == "csv" else "m")
    make = CSVSink if kind == "csv" else ParquetSink
    first = make(path)
    first.write(b1)
    first.close()
    second = make(path)  # a resumed run: same columns, in a different order
    second.write(dict(reversed(list(b2.items()))))
    second.close()
    _assert_same(read_metrics(path), _concat(b1, b2))
    if kind == "csv":
        assert path.read_text().count("step") == 1  # one header


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_resume_with_other_columns_names_the_path(tmp_path: Path, kind: str) -> None:
    path = tmp_path / ("m.csv" if kind == "csv" else "m")
    make = CSVSink if kind == "csv" else ParquetSink
    first = make(path)
    first.write(_batch([0], _PARAMS))
    first.close()
    b = _batch([1], _PARAMS)
    b["new_metric"] = np.zeros(len(_PARAMS))
    with pytest.raises(ValueError, match=str(path.name)):
        make(path).write(b)
    _assert_same(read_metrics(path), _batch([0], _PARAMS))  # what was there is untouched


def test_parts_are_read_in_numeric_order(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    b1, b2 = _batch([0], _PARAMS, seed=8), _batch([1], _PARAMS, seed=9)
    pq.write_table(pa.table({k: v.tolist() for k, v in b1.items()}), tmp_path / "part-999999.parquet")
    sink = ParquetSink(tmp_path)
    sink.write(b2)
    sink.close()
    assert (tmp_path / "part-1000000.parquet").exists()  # sorts before part-999999 as text
    _assert_same(read_metrics(tmp_path), _concat(b1, b2))


def test_truncated_last_line_is_skipped_with_warning(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    b1, b2 = _batch([0, 1], _PARAMS, seed=5), _batch([2], _PARAMS, seed=6)
    sink = CSVSink(path)
    sink.write(b1)
    sink.write(b2)
    sink.close()
    data = path.read_bytes()
    path.write_bytes(data[:-7])  # cut the last row mid-line, as a kill during write() would
    with pytest.warns(RuntimeWarning, match="unfinished"):
        got = read_metrics(path)
    want = _concat(b1, {k: v[:1] for k, v in b2.items()})  # the last row of b2 is gone
    _assert_same(got, want)
    # Resuming cuts the fragment so the new rows are not glued onto it.
    b3 = _batch([3], _PARAMS, seed=7)
    again = CSVSink(path)
    with pytest.warns(RuntimeWarning, match="unfinished"):
        again.write(b3)
    again.close()
    _assert_same(read_metrics(path), _concat(want, b3))


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_rows_survive_sigkill(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal
        import numpy as np
        from smdyn.sinks import CSVSink, ParquetSink
        csv_sink, pq_sink = CSVSink({str(tmp_path / "m.csv")!r}), ParquetSink({str(tmp_path / "m")!r})
        for k in range(3):
            batch = {{"step": np.arange(4 * k, 4 * k + 4), "param": np.array(["w"] * 4),
                     "weight_norm": np.arange(4 * k, 4 * k + 4) / 3}}
            csv_sink.write(batch)
            pq_sink.write(batch)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    for path in (tmp_path / "m.csv", tmp_path / "m"):
        got = read_metrics(path)
        assert got["step"].tolist() == list(range(12))
        assert got["weight_norm"].tolist() == [i / 3 for i in range(12)]
    assert not [p for p in (tmp_path / "m").iterdir() if not p.name.startswith("part-")]


def test_read_metrics_finds_run_directory(tmp_path: Path) -> None:
    b = _batch([0, 1], _PARAMS)
    csv_run, pq_run = tmp_path / "a", tmp_path / "b"
    sink = CSVSink(csv_run / "metrics.csv")
    sink.write(b)
    sink.close()
    sink = ParquetSink(pq_run / "metrics")
    sink.write(b)
    sink.close()
    _assert_same(read_metrics(csv_run), b)
    _assert_same(read_metrics(pq_run), b)
    (pq_run / "metrics.csv").write_text("step\n")
    with pytest.raises(ValueError, match=r"metrics\.csv and metrics/"):
        read_metrics(pq_run)
    with pytest.raises(FileNotFoundError):
        read_metrics(tmp_path / "nowhere")


class _RecordingWriter:
    """Stands in for SummaryWriter; records calls so the per-value contract can be counted."""

    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []
        self.flushes = 0

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def add_scalars(self, *args: object) -> None:
        raise AssertionError("add_scalars makes one event file per tag; never use it")

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        raise AssertionError("a writer the caller passed in belongs to the caller")


def _expected_scalars(b: dict[str, np.ndarray]) -> list[tuple[str, float, int]]:
    """Brute force: every float/bool column, every row, NaN skipped."""
    out = []
    for name, col in b.items():
        if col.dtype.kind in "fb":
            for i in range(len(col)):
                if not np.isnan(float(col[i])):
                    out.append((f"{name}/{b['param'][i]}", float(col[i]), int(b["step"][i])))
    return out


def test_tensorboard_calls_add_scalar_per_value() -> None:
    writer = _RecordingWriter()
    sink = TensorBoardSink(writer=writer)
    b = _batch([0, 5, 9], _PARAMS)
    sink.write(b)
    assert writer.flushes >= 1  # durable after write, not only at close
    sink.close()
    sink.close()
    assert sorted(writer.scalars) == sorted(_expected_scalars(b))


def test_tensorboard_event_file_reads_back(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    b = _batch([0, 1, 2], _PARAMS)
    sink = TensorBoardSink(tmp_path)
    sink.write(b)
    sink.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    acc.Reload()
    want: dict[str, list[tuple[int, float]]] = {}
    for tag, value, step in _expected_scalars(b):
        want.setdefault(tag, []).append((step, value))
    assert set(acc.Tags()["scalars"]) == set(want)
    assert not any(t.startswith(("param/", "reason/", "step/")) for t in acc.Tags()["scalars"])
    for tag, pairs in want.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in pairs], tag
        with np.errstate(over="ignore"):  # the event file stores float32: 1.8e308 becomes inf
            want32 = np.array([v for _, v in pairs]).astype(np.float32)
        np.testing.assert_array_equal([v for _, v in got], want32, err_msg=tag)


def _sinks(tmp_path: Path) -> list[object]:
    return [
        CSVSink(tmp_path / "m.csv"),
        ParquetSink(tmp_path / "m"),
        TensorBoardSink(writer=_RecordingWriter()),
    ]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_bad_batches_and_lifecycle(tmp_path: Path, which: int) -> None:
    sink = _sinks(tmp_path)[which]
    b = _batch([0, 1], _PARAMS)
    bad = dict(b, weight_norm=b["weight_norm"][:-1])
    with pytest.raises(ValueError, match="weight_norm"):
        sink.write(bad)
    sink.write({k: v[:0] for k, v in b.items()})  # empty: nothing happens
    assert not (tmp_path / "m.csv").exists()
    assert not list((tmp_path / "m").glob("*"))
    sink.write(b)
    with pytest.raises(ValueError, match="columns"):
        sink.write({k: v for k, v in b.items() if k != "lr"})
    sink.close()
    sink.close()
    with pytest.raises(ValueError, match="closed"):
        sink.write(b)


def test_missing_extras_name_the_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ImportError, match=r"smdyn\[parquet\]"):
        ParquetSink(tmp_path / "m")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"smdyn\[tensorboard\]"):
        TensorBoardSink(tmp_path)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="path"):
        CSVSink(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="log_dir or writer"):
        TensorBoardSink(tmp_path, writer=_RecordingWriter())
    with pytest.raises(ValueError, match="1-D"):
        CSVSink(tmp_path / "m.csv").write({"step": np.zeros((2, 2))})
    assert os.listdir(tmp_path) == []


def test_a_copied_csv_sink_writes_to_its_own_file_not_to_a_reused_descriptor(tmp_path) -> None:
    """pickle/deepcopy copied the open descriptor's number: once the original closed, another file opened
    next could take that number and receive the copy's rows."""
    import pickle

    first = {"step": np.array([1]), "param": np.array(["a"]), "x": np.array([0.5])}
    sink = CSVSink(tmp_path / "m.csv")
    sink.write(first)
    copy = pickle.loads(pickle.dumps(sink))
    sink.close()
    with open(tmp_path / "other.txt", "w") as other:
        copy.write({"step": np.array([2]), "param": np.array(["a"]), "x": np.array([1.0])})
        other.flush()
        copy.close()
    assert (tmp_path / "other.txt").read_text() == ""
    assert (tmp_path / "m.csv").read_text().splitlines()[1:] == ["1,a,0.5", "2,a,1.0"]


def test_two_parquet_sinks_on_one_directory_keep_each_others_parts(tmp_path: Path) -> None:
    """Both numbered from the same next part: the second's rename replaced the first's part."""
    pytest.importorskip("pyarrow")
    a, b = ParquetSink(tmp_path), ParquetSink(tmp_path)
    for k in range(3):
        for sink, tag in ((a, "A"), (b, "B")):
            sink.write({"step": np.array([k]), "param": np.array([tag]), "x": np.array([float(k)])})
    a.close()
    b.close()
    rows = read_metrics(tmp_path)
    assert sorted(zip(rows["param"], rows["step"], strict=True)) == [(t, k) for t in "AB" for k in range(3)]
    assert not list(tmp_path.glob(".*.tmp"))
