"""Where monitor records go: append-only CSV, Parquet part files and TensorBoard scalars.

A sink receives columnar batches (``dict[str, np.ndarray]``, one row per step and parameter) and must leave
every row it was given readable even if the process is killed right after ``write`` returns, so a run cut
short still has the Δ_t and ‖w_t‖ history (Def 3, Thm 1) up to its last flush. ``read_metrics`` reads
either on-disk format back with the same dtypes. Only numpy is needed at import; pyarrow and tensorboard are
imported when used.

A sink runs inside the training loop, so it never stops training and never loses rows silently:

* a path that would block or never end (a FIFO, a device, a directory where a file belongs) is refused
  with a ``ValueError`` when the sink is built; an existing CSV is only read as far as its header line and
  back to the start of its last line, never as a whole;
* an I/O error in ``write`` (full disk, file-size limit, read-only directory) is reported once as a
  ``RuntimeWarning``; the rows stay in memory and are written, in order and exactly once, at the next
  ``write`` that succeeds. At most ``max_pending_rows`` rows wait (the oldest waiting batch is always kept
  whole); rows beyond that are dropped and counted in ``lost_rows``, with a warning;
* ``close`` makes one last attempt, never raises, and warns with the number of rows that were lost.

Bad batches (wrong shapes, other columns than before) and writing after ``close`` are programming errors and
still raise.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import os
import re
import stat
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = ["CSVSink", "ParquetSink", "Sink", "TensorBoardSink", "csv_columns", "read_metrics"]

# Columns whose type cannot be told from their text: parameter names such as "0" (nn.ParameterList) look
# like integers, and a column of empty reasons looks like nothing at all.
_CSV_DTYPES: dict[str, str] = {
    "step": "int",
    "param": "str",
    "reason": "str",
    "reason_code": "str",
    "in_equilibrium": "bool",
}
_PART = "part-{:06d}.parquet"
_PART_RE = re.compile(r"part-(\d+)\.parquet")
#: Rows a sink keeps in memory while its target cannot be written.
MAX_PENDING_ROWS = 100_000
_HEADER_LIMIT = 1 << 16  # bytes read from the start of an existing CSV to find its header line
_TAIL_LIMIT = 1 << 20  # bytes read back from its end to find where the last complete line ends
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # opening a FIFO must fail or return at once, never wait


class Sink(Protocol):
    """Anything the monitor can hand a flushed batch of records to."""

    def write(self, batch: Mapping[str, np.ndarray]) -> None: ...

    def close(self) -> None: ...


def _columns(batch: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], int]:
    """Validates a batch; returns 1-D arrays (floats as float64, ints as int64) and the row count."""
    if not isinstance(batch, Mapping):
        raise TypeError(f"batch must be a mapping of column name to array, got {type(batch).__name__}")
    cols: dict[str, np.ndarray] = {}
    rows = None
    for name, values in batch.items():
        arr = np.asarray(values)
        if arr.ndim != 1:
            raise ValueError(f"batch column {name!r} must be 1-D, got shape {arr.shape}")
        if rows is not None and len(arr) != rows:
            raise ValueError(f"batch column {name!r} has {len(arr)} rows, expected {rows}")
        rows = len(arr)
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float64, copy=False)
        elif arr.dtype.kind in "iu":
            arr = arr.astype(np.int64, copy=False)
        elif arr.dtype.kind == "S":
            arr = arr.astype(str)
        elif arr.dtype.kind not in "bUO":
            raise TypeError(f"batch column {name!r} has unsupported dtype {arr.dtype}")
        cols[str(name)] = arr
    return cols, rows or 0


def _nrows(cols: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(cols.values()))) if cols else 0


def _text(arr: np.ndarray) -> list[str]:
    """A column as text; floats via ``repr``, the shortest string that reads back to the same float64."""
    return ["" if v is None else repr(v) if isinstance(v, float) else str(v) for v in arr.tolist()]


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISREG, "regular file"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO (named pipe)"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "special file"


def _refuse_unless(path: Path, want: str) -> None:
    """ValueError naming ``path`` if it exists and is not a regular file (``want="file"``) or a directory.

    Also checks the nearest existing ancestor is a directory. A FIFO would block ``open`` (or a read of it
    would never end) and a device such as /dev/full fails every write, so neither is ever opened.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"{path}: {parent} is not a directory") from None
        return
    except OSError as exc:  # a path component that is a file, a loop of links, ...
        raise ValueError(f"{path}: {exc.strerror or exc}") from None
    ok = stat.S_ISREG(mode) if want == "file" else stat.S_ISDIR(mode)
    if not ok:
        need = "a regular file" if want == "file" else "a directory"
        raise ValueError(f"{path} is a {_file_kind(mode)}, not {need}; give the sink {need}")


def _parts(directory: Path) -> list[Path]:
    """Part files in write order (numerically, so a millionth part still sorts last)."""
    found = [
        (int(m.group(1)), q) for q in directory.glob("part-*.parquet") if (m := _PART_RE.fullmatch(q.name))
    ]
    return [q for _, q in sorted(found)]


class _Base:
    """What every sink shares: a fixed column set, the rows waiting after an I/O error, and the warnings.

    Subclasses implement ``_emit(cols)`` (write one batch completely or raise, leaving nothing of it
    behind, so a retry writes each row exactly once), ``_release()`` and ``_target``.
    """

    _io_errors: tuple[type[BaseException], ...] = (OSError,)

    def __init__(self, max_pending_rows: int) -> None:
        if type(max_pending_rows) is not int or max_pending_rows < 1:
            raise ValueError(f"max_pending_rows must be a positive int, got {max_pending_rows!r}")
        self.max_pending_rows = max_pending_rows
        self._closed = False
        self._names: list[str] | None = None
        self._backlog: list[dict[str, np.ndarray]] = []
        self._pending = 0
        self._lost = 0
        self._warned_io = False
        self._warned_full = False
        self._last_error: BaseException | None = None

    @property
    def pending_rows(self) -> int:
        """Rows given to ``write`` that are not written yet (waiting for the target to accept them)."""
        return self._pending

    @property
    def lost_rows(self) -> int:
        """Rows given to ``write`` that will never be written (dropped beyond the bound, or at ``close``)."""
        return self._lost

    @property
    def _target(self) -> str:
        raise NotImplementedError

    def _emit(self, cols: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        """Let go of files and writers at close; must not raise."""

    def _check(self, cols: dict[str, np.ndarray]) -> None:
        """Sink-specific checks of a batch before it is accepted (raise ValueError)."""

    def _prepare(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
        if self._closed:
            raise ValueError(f"{type(self).__name__} is closed; cannot write")
        cols, rows = _columns(batch)
        if self._names is not None and set(cols) != set(self._names):
            raise ValueError(
                f"{self._target}: batch columns {sorted(cols)} differ from the columns already written "
                f"{sorted(self._names)}"
            )
        if not rows:
            return None
        self._check(cols)
        if self._names is None:
            self._names = list(cols)
        return cols

    def write(self, batch: Mapping[str, np.ndarray]) -> None:
        """Writes the batch after any rows still waiting; an I/O error keeps them all for the next call.

        Raises ValueError / TypeError for a malformed batch, one whose columns differ from the file's, or
        after ``close``; never for an I/O error.
        """
        cols = self._prepare(batch)
        if cols is not None:
            self._backlog.append(cols)
            self._pending += _nrows(cols)
        try:
            self._drain()
        except Exception:
            if cols is not None:  # refused with this very error, so not lost unseen
                self._lost -= _nrows(cols)
            raise

    def _drain(self) -> None:
        """Writes waiting batches oldest first; stops at the first I/O error and bounds what waits."""
        while self._backlog:
            try:
                self._emit(self._backlog[0])
            except self._io_errors as exc:
                self._last_error = exc
                self._warn_io(exc)
                self._bound()
                return
            except Exception:  # not I/O: the target holds other columns, or a batch it cannot take
                self._drop_all()  # so no later write is stuck behind it
                raise
            self._pending -= _nrows(self._backlog.pop(0))

    def _warn_io(self, exc: BaseException) -> None:
        if not self._warned_io:
            self._warned_io = True
            _warn(
                f"smdyn: {type(self).__name__} could not write to {self._target} ({exc!r}); keeping "
                f"{self._pending} rows in memory and retrying at the next write (at most "
                f"{self.max_pending_rows} rows are kept; see lost_rows)"
            )

    def _bound(self) -> None:
        """Drops the newest waiting rows beyond ``max_pending_rows``; the oldest batch is kept whole."""
        excess = self._pending - max(self.max_pending_rows, _nrows(self._backlog[0]))
        if excess <= 0:
            return
        while excess > 0:
            last = self._backlog[-1]
            n = _nrows(last)
            cut = min(excess, n)
            if cut == n:
                self._backlog.pop()
            else:
                self._backlog[-1] = {k: v[: n - cut] for k, v in last.items()}
            excess -= cut
            self._pending -= cut
            self._lost += cut
        if not self._warned_full:
            self._warned_full = True
            _warn(
                f"smdyn: {type(self).__name__} for {self._target}: more than {self.max_pending_rows} rows "
                f"are waiting to be written; newer rows are dropped ({self._lost} lost so far, see lost_rows)"
            )

    def _drop_all(self) -> None:
        self._lost += self._pending
        self._pending = 0
        self._backlog.clear()

    def close(self) -> None:
        """One last attempt at the waiting rows, then let go of the target. Never raises; safe to call twice.

        A ``RuntimeWarning`` gives the number of rows lost over the sink's life, if any.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._drain()
        except Exception as exc:  # close runs in finally blocks and at exit: it must not raise
            self._last_error = exc
            self._drop_all()
        if self._pending:
            self._drop_all()
        self._release()
        if self._lost:
            why = f" (last error: {self._last_error!r})" if self._last_error is not None else ""
            _warn(
                f"smdyn: {type(self).__name__} for {self._target}: {self._lost} rows were lost and never "
                f"written{why}"
            )

    def __enter__(self) -> _Base:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=4)


def _header(head: bytes, size: int, path: Path) -> tuple[list[str], int] | None:
    """The header line of an existing CSV from its first bytes: (columns, offset after the line).

    None when the file holds no complete line yet (an unfinished header left by a killed process).
    """
    end = head.find(b"\n")
    if end < 0:
        if size > len(head):
            raise ValueError(f"{path}: no line break in its first {len(head)} bytes; not a metrics CSV")
        return None
    try:
        line = head[:end].decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a UTF-8 CSV file: its first line does not decode") from None
    return next(csv.reader([line])), end + 1


def _pread(fd: int, n: int, offset: int) -> bytes:
    """Up to ``n`` bytes at ``offset`` (``os.pread`` where it exists; a seek and read elsewhere)."""
    if hasattr(os, "pread"):
        return os.pread(fd, n, offset)
    os.lseek(fd, offset, os.SEEK_SET)  # pragma: no cover - Windows
    return os.read(fd, n)  # pragma: no cover


def _last_line_end(fd: int, size: int, start: int, path: Path) -> int:
    """Offset just after the last line break at or after ``start``; reads back at most _TAIL_LIMIT bytes."""
    if size <= start or _pread(fd, 1, size - 1) == b"\n":
        return size
    hi = size
    while hi > start:
        lo = max(start, hi - (1 << 16))
        if size - lo > _TAIL_LIMIT:
            raise ValueError(f"{path}: its last line is over {_TAIL_LIMIT} bytes long; not a metrics CSV")
        chunk = _pread(fd, hi - lo, lo)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            return lo + cut + 1
        hi = lo
    return start


def csv_columns(path: str | os.PathLike[str]) -> list[str]:
    """The column names of a metrics CSV, from its first line only (at most 64 KiB are read).

    Raises ValueError naming the file if it is not a regular file, not UTF-8 or holds no complete line;
    FileNotFoundError if it does not exist. Never blocks: a FIFO is refused before it is opened.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no file at {p}")
    _refuse_unless(p, "file")
    fd = os.open(p, os.O_RDONLY | _NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{p} is a {_file_kind(st.st_mode)}, not a regular file")
        found = _header(_pread(fd, min(st.st_size, _HEADER_LIMIT), 0), st.st_size, p)
    finally:
        os.close(fd)
    if found is None:
        raise ValueError(f"{p} holds no complete header line; not a metrics CSV")
    return found[0]


class CSVSink(_Base):
    """Append-only CSV: the header once, then every batch's rows flushed and fsynced before ``write`` returns.

    An existing file with the same columns is continued (a resumed run); an unfinished last line left by a
    killed process is cut off first, with a warning, so the new rows start on a line of their own. Only the
    header line and the end of the file are read, never the whole file.

    Args:
        path: the CSV file; refused (ValueError) if it exists and is not a regular file.
        max_pending_rows: rows kept in memory while the file cannot be written (see the module docstring).
    """

    def __init__(self, path: str | os.PathLike[str], *, max_pending_rows: int = MAX_PENDING_ROWS) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        super().__init__(max_pending_rows)
        self.path = Path(path)
        _refuse_unless(self.path, "file")
        self._fd: int | None = None
        self._order: list[str] = []  # column order in the file
        self._size = 0  # bytes of complete, written rows
        self._dirty = False  # a failed write may have left part of a batch after _size

    @property
    def _target(self) -> str:
        return str(self.path)

    def __getstate__(self) -> dict[str, Any]:
        """A copy (pickle, deepcopy) reopens the path: a descriptor number copied from this process could
        name another file once this sink closes, and the copy's rows would go there."""
        state = dict(self.__dict__)
        state["_fd"] = None
        return state

    def _open(self, names: list[str]) -> None:
        """Opens for appending, checks the header on disk against ``names`` and cuts an unfinished line."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _refuse_unless(self.path, "file")  # checked again: it could have been replaced since
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | _NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self.path, flags, 0o666)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(f"{self.path} is a {_file_kind(st.st_mode)}, not a regular file")
            size = st.st_size
            found = _header(_pread(fd, min(size, _HEADER_LIMIT), 0), size, self.path) if size else None
            order, end = names, 0
            if found is not None:
                order, start = found
                if sorted(order) != sorted(names):
                    raise ValueError(f"{self.path} has columns {order}, unlike the batch's {names}")
                end = _last_line_end(fd, size, start, self.path)
            if end < size:
                _warn(f"{self.path}: dropping an unfinished last line")
                os.ftruncate(fd, end)
            if end == 0:
                header = _csv_bytes([order])
                try:
                    _write_all(fd, header)
                    os.fsync(fd)
                except OSError:  # leave no half header, which a retry would take for a killed run's
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, 0)
                    raise
                end = len(header)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._order, self._size = fd, order, end

    def _emit(self, cols: dict[str, np.ndarray]) -> None:
        if self._fd is None:
            self._open(list(cols))
        fd = self._fd
        assert fd is not None
        if self._dirty:  # take back what a failed write left, so no row appears twice
            os.ftruncate(fd, self._size)
            self._dirty = False
        data = _csv_bytes(zip(*(_text(cols[n]) for n in self._order), strict=True))
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError:
            self._dirty = True
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._size)
                self._dirty = False
            raise
        self._size += len(data)

    def _release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _csv_bytes(rows: Any) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode("utf-8")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:  # pragma: no cover - os.write raises rather than return 0 for regular files
            raise OSError(f"write returned {n}")
        view = view[n:]


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError("Parquet metrics need pyarrow: pip install smdyn[parquet]") from e
    return pa, pq


class ParquetSink(_Base):
    """One complete Parquet file per ``write`` (``part-000000.parquet``, ...) in a directory.

    A Parquet file cannot be read until its footer is written, so each batch becomes its own file, written
    under a temporary name, fsynced and then linked atomically to the first free part name (never over an
    existing part: two sinks on one directory keep each other's): a failed write leaves no part behind, and
    the retry writes it whole. Existing parts (a resumed run) are kept and numbering continues after them.

    Args:
        directory: the part directory; refused (ValueError) if it exists and is not a directory.
        max_pending_rows: rows kept in memory while parts cannot be written (see the module docstring).
    """

    def __init__(
        self, directory: str | os.PathLike[str], *, max_pending_rows: int = MAX_PENDING_ROWS
    ) -> None:
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"directory must be a str or os.PathLike, got {type(directory).__name__}")
        super().__init__(max_pending_rows)
        self._pa, self._pq = _pyarrow()
        self.directory = Path(directory)
        _refuse_unless(self.directory, "dir")
        self.directory.mkdir(parents=True, exist_ok=True)
        parts = _parts(self.directory)
        self._next = int(parts[-1].stem[5:]) + 1 if parts else 0
        if parts:
            _refuse_unless(parts[-1], "file")  # reading a FIFO's schema would block
            self._names = list(self._pq.read_schema(parts[-1]).names)

    @property
    def _target(self) -> str:
        return str(self.directory)

    def _emit(self, cols: dict[str, np.ndarray]) -> None:
        pa = self._pa
        names = self._names or list(cols)
        arrays = [
            pa.array(_text(cols[n]), pa.string()) if cols[n].dtype.kind in "UO" else cols[n] for n in names
        ]
        tmp = self.directory / f".{_PART.format(self._next)}.{os.getpid()}-{id(self):x}.tmp"
        try:
            # O_NONBLOCK: a FIFO left under the temporary name fails at once instead of blocking
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NONBLOCK, 0o666)
            with os.fdopen(fd, "wb") as f:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(f"{tmp} is not a regular file")
                self._pq.write_table(pa.table(arrays, names=names), f)
                f.flush()
                os.fsync(f.fileno())
            number = _publish(tmp, self.directory, self._next)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._next = number + 1
        if os.name == "posix":  # make the rename itself durable; the part is complete either way
            try:
                fd = os.open(self.directory, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                self._warn_io(exc)


# link() refused as such (FAT, some network file systems): fall back to check-then-rename, which raises
# on its own if the directory cannot be written at all
_NO_HARD_LINKS = {
    errno.EPERM,
    errno.EACCES,
    errno.EINVAL,
    errno.ENOTSUP,
    errno.EOPNOTSUPP,
    errno.ENOSYS,
    errno.EXDEV,
    errno.EMLINK,
}


def _publish(tmp: Path, directory: Path, start: int) -> int:
    """Give ``tmp`` the first free part name from ``start`` on, never over an existing part (another sink
    on the same directory, or a second run); returns its number."""
    n = start
    while True:
        final = directory / _PART.format(n)
        try:
            os.link(tmp, final)  # fails if the name is taken: no part is ever replaced
        except FileExistsError:
            n += 1
            continue
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            if final.exists():  # a file system without hard links: check, then rename
                n += 1
                continue
            os.replace(tmp, final)
            return n
        with contextlib.suppress(OSError):  # the part is published: a leftover .tmp is ignored by readers
            os.unlink(tmp)
        return n


class TensorBoardSink(_Base):
    """TensorBoard scalars tagged ``<metric>/<param>`` at each row's ``step``.

    Every float or bool column is logged (``lr``, ``wd`` and ``momentum`` included), one ``add_scalar`` per
    value; NaN (undefined, e.g. no theory for this optimizer) is skipped, so a plot shows a gap, not a zero.
    A batch counts as written once the writer has flushed it; after a failed ``add_scalar`` the retry
    continues from the first value not yet handed over, so no value is logged twice.

    Args:
        log_dir: the event file directory (refused with ValueError if it exists and is not a directory), or
        writer: a ``SummaryWriter``-like object, which stays the caller's (it is flushed, never closed).
        max_pending_rows: rows kept in memory while the writer fails (see the module docstring).
    """

    _io_errors = (Exception,)  # the writer's background thread re-raises whatever stopped it

    def __init__(
        self,
        log_dir: str | os.PathLike[str] | None = None,
        *,
        writer: Any = None,
        max_pending_rows: int = MAX_PENDING_ROWS,
    ) -> None:
        super().__init__(max_pending_rows)
        if writer is not None and log_dir is not None:
            raise ValueError("give either log_dir or writer, not both")
        self._owns = writer is None
        self._where = "its writer" if writer is not None else str(log_dir or "runs/")
        if writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("TensorBoard logging needs: pip install smdyn[tensorboard]") from e
            if log_dir is not None:
                _refuse_unless(Path(log_dir), "dir")
            writer = SummaryWriter(log_dir=None if log_dir is None else os.fspath(log_dir))
        self.writer = writer
        self._done = 0  # values of the oldest waiting batch already handed to the writer

    @property
    def _target(self) -> str:
        return self._where

    def _check(self, cols: dict[str, np.ndarray]) -> None:
        for need in ("step", "param"):
            if need not in cols:
                raise ValueError(f"TensorBoardSink needs a {need!r} column in the batch")

    def _emit(self, cols: dict[str, np.ndarray]) -> None:
        scalars = _scalars(cols)
        for i in range(self._done, len(scalars)):
            self.writer.add_scalar(*scalars[i])
            self._done = i + 1
        self.writer.flush()
        self._done = 0

    def _drop_all(self) -> None:
        super()._drop_all()
        self._done = 0

    def _release(self) -> None:
        try:
            self.writer.flush()
            if self._owns:
                self.writer.close()
        except Exception as exc:  # close must not raise
            self._warn_io(exc)


def _scalars(cols: Mapping[str, np.ndarray]) -> list[tuple[str, float, int]]:
    """(tag, value, step) for every non-NaN float or bool value, row by row (so a prefix is whole rows)."""
    steps = cols["step"].astype(np.int64).tolist()
    params = _text(cols["param"])
    floats = [(n, a.astype(np.float64).tolist()) for n, a in cols.items() if a.dtype.kind in "fb"]
    out = []
    for i, (step, param) in enumerate(zip(steps, params, strict=True)):
        for name, values in floats:
            if values[i] == values[i]:  # not NaN
                out.append((f"{name}/{param}", values[i], step))
    return out


def _kind(values: list[str]) -> str:
    """Type of a CSV column this module did not name: the first of bool, int, float that reads every value."""
    if not values:
        return "float"
    if set(values) <= {"True", "False"}:
        return "bool"
    for kind, conv in (("int", int), ("float", float)):
        try:
            for v in values:
                conv(v)
        except ValueError:
            continue
        return kind
    return "str"


def _parse(name: str, values: Any) -> np.ndarray:
    """Turns a CSV column's text back into an array of the type it was written from."""
    kind = _CSV_DTYPES.get(name) or _kind(list(values))
    if kind == "str":
        return np.array(values, dtype=object)
    if kind == "bool":
        return np.isin(np.asarray(values, dtype=object), ("True", "true", "1"))
    return np.asarray(values, dtype=object).astype(np.int64 if kind == "int" else np.float64)


def _csv_columns(text: str, path: Path) -> tuple[list[str], list[Any]]:
    """Header and the text of each column: pandas' C reader when it is installed, the csv module if not."""
    try:
        import pandas as pd
    except ImportError:
        pd = None
    if pd is not None:
        try:
            df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, on_bad_lines="skip")
        except pd.errors.EmptyDataError:
            raise ValueError(f"{path} has no header line") from None
        skipped = text.count("\n") - 1 - len(df)  # rows the C reader dropped: say so, as the csv path does
        if skipped > 0:
            warnings.warn(f"{path}: skipping {skipped} malformed rows", RuntimeWarning, 3)
        return list(df.columns), [df[c].to_numpy(dtype=object) for c in df.columns]
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows:
        raise ValueError(f"{path} has no header line")
    header, body = rows[0], [r for r in rows[1:] if len(r) == len(rows[0])]
    if len(body) != len(rows) - 1:
        warnings.warn(f"{path}: skipping {len(rows) - 1 - len(body)} malformed rows", RuntimeWarning, 3)
    return header, [[r[i] for r in body] for i in range(len(header))]


def _read_csv(path: Path, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        warnings.warn(f"{path}: skipping an unfinished last line", RuntimeWarning, stacklevel=3)
        data = data[: data.rfind(b"\n") + 1]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not a metrics CSV: not UTF-8 text (byte {exc.start})") from None
    header, values = _csv_columns(text, path)
    wanted = set(header if columns is None else columns)
    try:
        return {n: _parse(n, v) for n, v in zip(header, values, strict=True) if n in wanted}
    except ValueError as exc:
        raise ValueError(f"{path} is not a metrics CSV: {exc}") from None


def _read_parquet(parts: list[Path]) -> dict[str, np.ndarray]:
    pa, pq = _pyarrow()
    for p in parts:
        _refuse_unless(p, "file")
    tables = [pq.read_table(p) for p in parts]
    names = tables[0].column_names
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for part, table in zip(parts, tables, strict=True):
        if set(table.column_names) != set(names):
            raise ValueError(f"{part} has columns {table.column_names}, unlike {parts[0]}'s {names}")
        for n in names:
            col = table.column(n)
            is_str = pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
            arr = np.array(col.to_pylist(), dtype=object) if is_str else col.to_numpy()
            out[n].append(arr.astype(np.float64) if arr.dtype.kind == "f" else arr)
    return {n: np.concatenate(v) for n, v in out.items()}


def read_metrics(path: str | os.PathLike[str], columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Reads metrics back: a CSV file, a Parquet part directory, or a run directory holding either.

    ``columns`` limits the result to those names (all when None). Returns concatenated columns with
    ``step`` int64, ``param``/``reason`` str (object arrays),
    ``in_equilibrium`` bool and float columns float64, NaN preserved; ``pandas.DataFrame(result)`` works.
    A FIFO or device is refused (ValueError) rather than read.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    p = Path(path)
    if p.is_file():
        out = _read_parquet([p]) if p.suffix == ".parquet" else _read_csv(p, columns)
        return out if columns is None else {c: out[c] for c in columns if c in out}
    if not p.is_dir():
        if p.exists():
            raise ValueError(f"{p} is a {_file_kind(os.stat(p).st_mode)}, not a metrics file or directory")
        raise FileNotFoundError(f"no metrics at {p}")
    parts = _parts(p)
    if parts:
        out = _read_parquet(parts)
        return out if columns is None else {c: out[c] for c in columns if c in out}
    found = [q for q in (p / "metrics.csv", p / "metrics") if q.exists()]
    if len(found) > 1:
        raise ValueError(f"{p} holds both metrics.csv and metrics/; pass the one to read")
    if not found:
        raise FileNotFoundError(f"no metrics.csv, metrics/ or part-*.parquet files in {p}")
    return read_metrics(found[0], columns)


def __getattr__(name: str) -> Any:
    """``WandbSink`` is in :mod:`smdyn.wandb_sink`, loaded on first use: this module never imports wandb."""
    if name == "WandbSink":
        from smdyn.wandb_sink import WandbSink

        return WandbSink
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
