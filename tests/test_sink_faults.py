"""Sinks under faults: nothing blocks, nothing raises into training, no row is lost or written twice unseen.

Real faults where the kernel can give them to an unprivileged test: a FIFO, /dev/full, a file-size limit
(``RLIMIT_FSIZE``, in a subprocess that ignores SIGXFSZ) and a read-only directory (in a subprocess that gives
up root, which ignores directory permissions). Transient faults are injected by failing one system call.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from smdyn import sinks
from smdyn.sinks import CSVSink, ParquetSink, TensorBoardSink, csv_columns, read_metrics

posix_only = pytest.mark.skipif(os.name != "posix", reason="needs POSIX files and signals")


def _batch(start: int, n: int, params: tuple[str, ...] = ("a", "b")) -> dict[str, np.ndarray]:
    """Rows for steps start..start+n-1, one per param; the values tell every row apart."""
    steps = np.repeat(np.arange(start, start + n, dtype=np.int64), len(params))
    return {
        "step": steps,
        "param": np.array(list(params) * n, dtype=object),
        "weight_norm": steps / 7.0 + np.tile(np.arange(len(params)), n),
    }


def _concat(*batches: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _assert_rows(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """Same rows in the same order: each exactly once."""
    assert got["step"].tolist() == want["step"].tolist()
    assert got["param"].tolist() == want["param"].tolist()
    assert got["weight_norm"].tolist() == want["weight_norm"].tolist()


def _within(seconds: float, fn: Callable[[], Any], unblock: Path | None = None) -> Any:
    """Runs fn in a thread; fails the test (instead of hanging) if it has not returned after ``seconds``.

    ``unblock``: a FIFO to open from this side if fn hangs, so its thread can end.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if unblock is not None:
            fd = os.open(unblock, os.O_RDWR | os.O_NONBLOCK)  # gives the blocked open its other end
            thread.join(5)
            os.close(fd)
        pytest.fail(f"blocked for more than {seconds} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _io_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


# ------------------------------------------------------------------------------------------- FIFOs


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_fifo_is_refused_at_construction_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "metrics.csv"
    os.mkfifo(fifo)
    for make in (CSVSink, ParquetSink, lambda p: TensorBoardSink(p)):
        with pytest.raises(ValueError, match=rf"{re.escape(str(fifo))} is a FIFO"):
            _within(10, lambda make=make: make(fifo), unblock=fifo)
    with pytest.raises(ValueError, match="FIFO"):
        _within(10, lambda: read_metrics(fifo), unblock=fifo)
    with pytest.raises(ValueError, match="FIFO"):
        _within(10, lambda: read_metrics(tmp_path), unblock=fifo)  # a run directory's metrics.csv
    with pytest.raises(ValueError, match="FIFO"):
        _within(10, lambda: csv_columns(fifo), unblock=fifo)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_fifo_that_appears_after_construction_is_refused_at_write(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    sink = CSVSink(path)
    os.mkfifo(path)
    with pytest.raises(ValueError, match="FIFO"):
        _within(10, lambda: sink.write(_batch(0, 2)), unblock=path)
    assert sink.lost_rows == 0  # the caller was told: the rows are not counted as lost unseen
    _within(10, sink.close, unblock=path)
    parts = tmp_path / "parts"
    parts.mkdir()
    os.mkfifo(parts / "part-000000.parquet")  # read_schema would block on it
    with pytest.raises(ValueError, match="FIFO"):
        _within(10, lambda: ParquetSink(parts), unblock=parts / "part-000000.parquet")


# ------------------------------------------------------------------------------- devices, bounds


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_dev_full_is_refused_and_a_writer_on_it_never_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"/dev/full is a character device"):
        CSVSink("/dev/full")
    with pytest.raises(ValueError, match="character device"):
        ParquetSink("/dev/full")

    class DevFullWriter:
        """Writes each scalar to /dev/full: every flush fails with the kernel's ENOSPC."""

        def __init__(self) -> None:
            self.file = open("/dev/full", "w")  # noqa: SIM115 (closed by close)

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            self.file.write(f"{tag} {value} {step}\n")

        def flush(self) -> None:
            self.file.flush()

        def close(self) -> None:
            self.file.close()

    writer = DevFullWriter()
    sink = TensorBoardSink(writer=writer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sink.write(_batch(0, 3))
        sink.write(_batch(3, 2))
        assert sink.pending_rows == 10 and sink.lost_rows == 0
        sink.close()
        sink.close()
    messages = _io_warnings(caught)
    assert len(messages) == 2, messages
    assert "could not write" in messages[0] and "No space left" in messages[0]
    assert "10 rows were lost" in messages[1]
    assert sink.lost_rows == 10 and sink.pending_rows == 0
    with pytest.raises(OSError, match="No space left"):  # close() swallowed this very error
        writer.close()


def test_existing_csv_is_read_only_as_far_as_the_header_and_the_last_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.csv"
    first = _batch(0, 40_000)
    with CSVSink(path) as sink:
        sink.write(first)
    size = path.stat().st_size
    assert size > 1_000_000
    with open(path, "ab") as f:
        f.write(b"40000,a,0.12")  # a killed run's unfinished line
    read = []
    real = sinks._pread
    monkeypatch.setattr(sinks, "_pread", lambda fd, n, off: read.append(n) or real(fd, n, off))
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("read the whole file"))
    sink = CSVSink(path)
    with pytest.warns(RuntimeWarning, match="unfinished"):
        sink.write(_batch(40_000, 1))
    sink.close()
    assert sum(read) <= sinks._HEADER_LIMIT + (1 << 16) + 1  # the header's 64 KiB, one block back, one byte
    monkeypatch.undo()
    _assert_rows(read_metrics(path), _concat(first, _batch(40_000, 1)))

    junk = tmp_path / "junk.csv"
    junk.write_bytes(b"x" * (sinks._HEADER_LIMIT + 10))  # no line break at all
    with pytest.raises(ValueError, match=rf"{junk}: no line break"):
        CSVSink(junk).write(_batch(0, 1))
    assert junk.stat().st_size == sinks._HEADER_LIMIT + 10  # untouched
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00step\n1\n")
    with pytest.raises(ValueError, match=rf"{binary} is not a UTF-8"):
        CSVSink(binary).write(_batch(0, 1))
    with pytest.raises(ValueError, match=rf"{binary} is not a metrics CSV"):
        read_metrics(binary)


def test_directory_where_a_file_belongs_and_the_reverse(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=rf"{tmp_path} is a directory, not a regular file"):
        CSVSink(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a regular file, not a directory"):
        ParquetSink(tmp_path / "f")
    with pytest.raises(ValueError, match=r"(?i)not a directory"):
        CSVSink(tmp_path / "f" / "m.csv")
    with pytest.raises(ValueError, match="max_pending_rows"):
        CSVSink(tmp_path / "m.csv", max_pending_rows=0)


# ------------------------------------------------------------------------------- transient errors


class _FlakyWriter:
    """A SummaryWriter stand-in whose ``fail_at``-th add_scalar call (0-based) and first flush can fail."""

    def __init__(self, fail_at: int | None = None, fail_flush: bool = False) -> None:
        self.scalars: list[tuple[str, float, int]] = []
        self.calls = 0
        self.fail_at, self.fail_flush = fail_at, fail_flush

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.calls += 1
        if self.calls - 1 == self.fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.scalars.append((tag, value, step))

    def flush(self) -> None:
        if self.fail_flush:
            self.fail_flush = False
            raise OSError(errno.EIO, "Input/output error")

    def close(self) -> None:
        pass


def _fail_once(monkeypatch: pytest.MonkeyPatch, name: str, partial: bool = False) -> dict[str, int]:
    """Makes the next ``os.<name>`` call fail with ENOSPC (after writing half its data, if ``partial``)."""
    real = getattr(os, name)
    state = {"armed": 1, "calls": 0}

    def flaky(fd: int, *args: Any) -> Any:
        state["calls"] += 1
        if state["armed"]:
            state["armed"] = 0
            if partial:  # half of the bytes reach the file, then the disk is full
                data = bytes(args[0])
                real(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, *args)

    monkeypatch.setattr(os, name, flaky)
    return state


@pytest.mark.parametrize(
    ("kind", "fault"),
    [
        ("csv", "write"),
        ("csv", "partial write"),
        ("csv", "fsync"),
        ("parquet", "fsync"),
        ("parquet", "link"),
    ],
)
def test_a_transient_error_loses_and_repeats_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, fault: str
) -> None:
    path = tmp_path / ("m.csv" if kind == "csv" else "m")
    sink = CSVSink(path) if kind == "csv" else ParquetSink(path)
    b1, b2, b3 = _batch(0, 3), _batch(3, 4), _batch(7, 2)
    sink.write(b1)
    state = _fail_once(monkeypatch, fault.split()[-1], partial=fault.startswith("partial"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sink.write(b2)  # fails: kept
        assert sink.pending_rows == 8 and sink.lost_rows == 0
        sink.write(b3)  # b2 then b3
        sink.close()
    assert state["armed"] == 0
    messages = _io_warnings(caught)
    assert len(messages) == 1 and "could not write" in messages[0] and "No space left" in messages[0]
    assert sink.pending_rows == 0 and sink.lost_rows == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no unfinished or malformed line was left behind
        _assert_rows(read_metrics(path), _concat(b1, b2, b3))
    if kind == "parquet":
        assert sorted(p.name for p in path.iterdir()) == [f"part-00000{i}.parquet" for i in range(3)]


@pytest.mark.parametrize(("fail_at", "fail_flush"), [(5, False), (0, False), (None, True)])
def test_tensorboard_retry_hands_every_value_over_once(fail_at: int | None, fail_flush: bool) -> None:
    writer = _FlakyWriter(fail_at, fail_flush)
    sink = TensorBoardSink(writer=writer)
    b1, b2 = _batch(0, 3), _batch(3, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sink.write(b1)
        assert sink.pending_rows == 6
        sink.write(b2)
        sink.close()
    assert len(_io_warnings(caught)) == 1
    want = [
        (f"weight_norm/{p}", float(v), int(s))
        for b in (b1, b2)
        for s, p, v in zip(b["step"], b["param"], b["weight_norm"], strict=True)
    ]
    assert writer.scalars == want  # every value once, in order
    assert sink.lost_rows == 0 and sink.pending_rows == 0


# ------------------------------------------------------------------------------- lasting errors


class _BrokenWriter(_FlakyWriter):
    def add_scalar(self, tag: str, value: float, step: int) -> None:
        raise OSError(errno.EIO, "Input/output error")


@pytest.fixture
def broken_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fail)


@pytest.mark.usefixtures("broken_fsync")
@pytest.mark.parametrize("kind", ["csv", "parquet", "tensorboard"])
def test_rows_beyond_the_bound_are_counted_and_close_never_raises(tmp_path: Path, kind: str) -> None:
    make = {
        "csv": lambda: CSVSink(tmp_path / "m.csv", max_pending_rows=10),
        "parquet": lambda: ParquetSink(tmp_path / "m", max_pending_rows=10),
        "tensorboard": lambda: TensorBoardSink(writer=_BrokenWriter(), max_pending_rows=10),
    }[kind]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with make() as sink:
            sink.write(_batch(0, 3))  # 6 rows wait
            sink.write(_batch(3, 3))  # 12: the newest 2 are dropped
            assert (sink.pending_rows, sink.lost_rows) == (10, 2)
            sink.write(_batch(6, 1))  # 2 more, both dropped
            assert (sink.pending_rows, sink.lost_rows) == (10, 4)
        assert (sink.pending_rows, sink.lost_rows) == (0, 14)  # close gave up on the 10 waiting rows
    messages = _io_warnings(caught)
    assert len(messages) == 3, messages
    assert "could not write" in messages[0]
    assert "more than 10 rows are waiting" in messages[1] and "2 lost so far" in messages[1]
    assert "14 rows were lost" in messages[2] and "Input/output error" in messages[2]
    if kind == "csv":
        assert (tmp_path / "m.csv").stat().st_size == 0  # not even the header: its fsync failed too
    if kind == "parquet":
        assert list((tmp_path / "m").iterdir()) == []  # no temporary file left behind


@pytest.mark.usefixtures("broken_fsync")
def test_the_oldest_waiting_batch_is_kept_whole(tmp_path: Path) -> None:
    sink = CSVSink(tmp_path / "m.csv", max_pending_rows=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sink.write(_batch(0, 5))  # 10 rows, more than the bound, but one batch: kept
        assert (sink.pending_rows, sink.lost_rows) == (10, 0)
        sink.write(_batch(5, 1))
        assert (sink.pending_rows, sink.lost_rows) == (10, 2)
        sink.close()


@pytest.mark.usefixtures("broken_fsync")
def test_training_with_a_failing_sink_goes_on(tmp_path: Path) -> None:
    import torch
    from torch import nn

    from smdyn import SphericalMonitor

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8, bias=False), nn.BatchNorm1d(8), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-3)
    sink = CSVSink(tmp_path / "m.csv")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with SphericalMonitor(model, opt, [("w", model[0].weight)], sinks=[sink], flush_every=3) as mon:
            for _ in range(10):
                opt.zero_grad()
                model(torch.randn(16, 4)).square().mean().backward()
                opt.step()
    assert mon.step == 10 and len(mon.history()["step"]) == 10
    assert sink.lost_rows == 10
    messages = _io_warnings(caught)
    assert sum("could not write" in m for m in messages) == 1
    assert sum("10 rows were lost" in m for m in messages) == 1


# ------------------------------------------------------------------ real kernel errors (subprocess)


_BATCHES = """
def batch(start, n):
    steps = np.repeat(np.arange(start, start + n, dtype=np.int64), 2)
    return {"step": steps, "param": np.array(["a", "b"] * n, dtype=object), "weight_norm": steps / 7.0}
"""


def _run(script: str, *args: str, drop_root: bool = False) -> dict[str, Any]:
    """Runs ``script`` in a fresh interpreter and returns the JSON it prints last."""
    head = "import json, os, sys, warnings\nimport numpy as np\nimport pyarrow.parquet\n"
    head += "from smdyn.sinks import CSVSink, ParquetSink, TensorBoardSink, read_metrics\n"
    if drop_root:  # root ignores directory permissions: continue as nobody, everything imported
        head += "os.setgid(65534)\nos.setuid(65534)\n"
    proc = subprocess.run(
        [sys.executable, "-c", head + _BATCHES + textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@posix_only
@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGXFSZ"), reason="needs RLIMIT_FSIZE and SIGXFSZ")
def test_file_size_limit_keeps_rows_until_there_is_room(tmp_path: Path) -> None:
    script = """
    import resource, signal
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process at the limit
    d = sys.argv[1]
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    out = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sinks = {"csv": CSVSink(d + "/m.csv"), "parquet": ParquetSink(d + "/m")}
        tb = TensorBoardSink(d + "/tb")
        for s in (*sinks.values(), tb):
            s.write(batch(0, 10))
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, hard))
        for s in (*sinks.values(), tb):
            for k in range(1, 4):
                s.write(batch(10 * k, 200))  # 400 rows a batch: over 2 KiB in either format
        out["pending"] = {k: s.pending_rows for k, s in sinks.items()}
        out["tb_pending"] = tb.pending_rows
        out["csv_size"] = os.path.getsize(d + "/m.csv")
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        for s in sinks.values():
            s.write(batch(1000, 1))
            s.close()
        tb.close()  # its writer thread died at the limit: what it had not flushed is lost
        out["lost"] = {k: s.lost_rows for k, s in sinks.items()}
        out["tb_lost"] = tb.lost_rows
    out["warnings"] = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    for k in sinks:
        got = read_metrics(d + ("/m.csv" if k == "csv" else "/m"))
        out[k] = got["step"].tolist()
    print(json.dumps(out))
    """
    out = _run(script, str(tmp_path))
    want = np.concatenate([_batch(0, 10)["step"], *(_batch(10 * k, 200)["step"] for k in (1, 2, 3))])
    want = np.concatenate([want, _batch(1000, 1)["step"]]).tolist()
    assert out["pending"] == {"csv": 1200, "parquet": 1200}  # every batch after the limit waited
    assert out["csv_size"] <= 2048
    assert out["lost"] == {"csv": 0, "parquet": 0}
    assert out["csv"] == want and out["parquet"] == want  # every row once, in order
    assert out["tb_pending"] > 0 and out["tb_lost"] == out["tb_pending"]  # its writer never recovers
    failed = [m for m in out["warnings"] if "could not write" in m]
    assert len(failed) == 3, failed  # once per sink
    for where in (
        f"CSVSink could not write to {tmp_path / 'm.csv'} (",
        f"ParquetSink could not write to {tmp_path / 'm'} (",
    ):
        assert any(m.startswith(f"smdyn: {where}") and "File too large" in m for m in failed), failed


@posix_only
def test_read_only_directory(tmp_path: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="smdyn-ro-"))  # root's pytest folder is closed to other users
    try:
        os.chmod(base, 0o777)
        script = """
        d = sys.argv[1]
        ro, gone, pq = d + "/ro", d + "/gone", d + "/pq"
        out = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for name in (ro, gone):
                os.mkdir(name)
                os.chmod(name, 0o555)
            fixed, lost = CSVSink(ro + "/m.csv"), CSVSink(gone + "/m.csv")
            parts = ParquetSink(pq)
            parts.write(batch(0, 1))
            os.chmod(pq, 0o555)
            for s in (fixed, lost, parts):
                s.write(batch(1, 2))
                s.write(batch(3, 2))
            out["pending"] = [s.pending_rows for s in (fixed, lost, parts)]
            os.chmod(ro, 0o755)
            os.chmod(pq, 0o755)
            fixed.write(batch(5, 1))
            parts.write(batch(5, 1))
            for s in (fixed, lost, parts):
                s.close()
            out["lost"] = [s.lost_rows for s in (fixed, lost, parts)]
        out["warnings"] = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        out["csv"] = read_metrics(ro + "/m.csv")["step"].tolist()
        out["parquet"] = read_metrics(pq)["step"].tolist()
        out["gone"] = os.listdir(gone)
        print(json.dumps(out))
        """
        out = _run(script, str(base), drop_root=os.geteuid() == 0)
    finally:
        for root, dirs, _ in os.walk(base):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o755)
        subprocess.run(["rm", "-rf", str(base)], check=True)
    assert out["pending"] == [8, 8, 8]
    assert out["lost"] == [0, 8, 0]
    steps = [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert out["csv"] == steps and out["parquet"] == [0, 0, *steps]
    assert out["gone"] == []
    denied = [m for m in out["warnings"] if "could not write" in m]
    assert len(denied) == 3 and all("Permission denied" in m for m in denied)
    lost = [m for m in out["warnings"] if "rows were lost" in m]
    assert len(lost) == 1 and "/gone/m.csv: 8 rows were lost" in lost[0]


def test_file_kind_names() -> None:
    assert sinks._file_kind(stat.S_IFIFO) == "FIFO (named pipe)"
    assert sinks._file_kind(stat.S_IFCHR) == "character device"


def test_reading_a_csv_with_a_malformed_row_says_so(tmp_path) -> None:
    import warnings as _w

    from smdyn.sinks import read_metrics

    path = tmp_path / "metrics.csv"
    path.write_text("step,param,weight_norm\n0,a,1.0\n1,a,2.0,extra\n2,a,3.0\n")
    with _w.catch_warnings(record=True) as caught:
        _w.simplefilter("always")
        rows = read_metrics(path)
    assert list(rows["step"]) == [0, 2]
    assert any("skipping 1 malformed rows" in str(w.message) for w in caught)


def test_a_part_published_before_its_temporary_name_could_be_removed_is_not_written_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = ParquetSink(tmp_path)
    real, armed = os.unlink, [True]

    def unlink_fails_once(path: Any, *args: Any, **kwargs: Any) -> None:
        if armed[0] and str(path).endswith(".tmp"):
            armed[0] = False
            raise PermissionError(errno.EACCES, "held by another process")
        real(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink_fails_once)
    b1, b2 = _batch(0, 3), _batch(3, 2)
    sink.write(b1)
    sink.write(b2)
    sink.close()
    assert not armed[0] and sink.lost_rows == 0 and sink.pending_rows == 0
    _assert_rows(read_metrics(tmp_path), _concat(b1, b2))
