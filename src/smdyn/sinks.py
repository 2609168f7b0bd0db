"""Where monitor records go: append-only CSV, Parquet part files and TensorBoard scalars.

A sink receives columnar batches (``dict[str, np.ndarray]``, one row per step and parameter) and must leave
every row it was given readable even if the process is killed right after ``write`` returns, so a run cut
short still has the Δ_t and ‖w_t‖ history (Def 3, Thm 1) up to its last flush. ``read_metrics`` reads
either on-disk format back with the same dtypes. Only numpy is needed at import; pyarrow and tensorboard are
imported when used.
"""

from __future__ import annotations

import csv
import io
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = ["CSVSink", "ParquetSink", "Sink", "TensorBoardSink", "read_metrics"]

# Columns whose type cannot be told from their text: parameter names such as "0" (nn.ParameterList) look
# like integers, and a column of empty reasons looks like nothing at all.
_CSV_DTYPES: dict[str, str] = {"step": "int", "param": "str", "reason": "str", "in_equilibrium": "bool"}
_PART = "part-{:06d}.parquet"
_PART_RE = re.compile(r"part-(\d+)\.parquet")


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


def _text(arr: np.ndarray) -> list[str]:
    """A column as text; floats via ``repr``, the shortest string that reads back to the same float64."""
    return ["" if v is None else repr(v) if isinstance(v, float) else str(v) for v in arr.tolist()]


def _parts(directory: Path) -> list[Path]:
    """Part files in write order (numerically, so a millionth part still sorts last)."""
    found = [
        (int(m.group(1)), q) for q in directory.glob("part-*.parquet") if (m := _PART_RE.fullmatch(q.name))
    ]
    return [q for _, q in sorted(found)]


class _Base:
    """Shared bookkeeping: the column set is fixed by the first batch; writing after close is an error."""

    def __init__(self) -> None:
        self._closed = False
        self._names: list[str] | None = None

    def _prepare(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
        if self._closed:
            raise ValueError(f"{type(self).__name__} is closed; cannot write")
        cols, rows = _columns(batch)
        if self._names is not None and set(cols) != set(self._names):
            raise ValueError(
                f"batch columns {sorted(cols)} differ from the columns already written {sorted(self._names)}"
            )
        return cols if rows else None


class CSVSink(_Base):
    """Append-only CSV: the header once, then every batch's rows flushed and fsynced before ``write`` returns.

    An existing file with the same columns is continued (a resumed run); an unfinished last line left by a
    killed process is cut off first, with a warning, so the new rows start on a line of their own.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        super().__init__()
        self.path = Path(path)
        self._file: io.TextIOWrapper | None = None

    def _open(self, names: list[str]) -> tuple[io.TextIOWrapper, list[str]]:
        """Opens for appending; also returns the column order already on disk, checked against the batch's."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = self.path.read_bytes() if self.path.exists() else b""
        end = data.rfind(b"\n") + 1
        header = next(csv.reader([data[: data.find(b"\n")].decode("utf-8")])) if end else names
        if set(header) != set(names):
            raise ValueError(f"{self.path} has columns {header}, which differ from the batch's {names}")
        if end < len(data):
            warnings.warn(f"{self.path}: dropping an unfinished last line", RuntimeWarning, stacklevel=3)
            os.truncate(self.path, end)
        f = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115 (kept open)
        if not end:
            csv.writer(f, lineterminator="\n").writerow(names)
        return f, header

    def write(self, batch: Mapping[str, np.ndarray]) -> None:
        """Appends the batch's rows and makes them durable (flush + fsync)."""
        cols = self._prepare(batch)
        if cols is None:
            return
        if self._file is None:
            self._file, self._names = self._open(list(cols))
        names = self._names or list(cols)
        csv.writer(self._file, lineterminator="\n").writerows(
            zip(*(_text(cols[n]) for n in names), strict=True)
        )
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Closes the file; further writes raise. Safe to call twice."""
        if self._file is not None:
            self._file.close()
        self._closed = True


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
    under a temporary name, fsynced and atomically renamed. Existing parts (a resumed run) are kept and
    numbering continues after them.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"directory must be a str or os.PathLike, got {type(directory).__name__}")
        super().__init__()
        self._pa, self._pq = _pyarrow()
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        parts = _parts(self.directory)
        self._next = int(parts[-1].stem[5:]) + 1 if parts else 0
        if parts:
            self._names = list(self._pq.read_schema(parts[-1]).names)

    def write(self, batch: Mapping[str, np.ndarray]) -> None:
        """Writes the batch as the next part file; it is complete and durable when this returns."""
        pa = self._pa
        try:
            cols = self._prepare(batch)
        except ValueError as e:
            raise ValueError(f"{self.directory}: {e}") from None
        if cols is None:
            return
        self._names = self._names or list(cols)
        arrays = [
            pa.array(_text(cols[n]), pa.string()) if cols[n].dtype.kind in "UO" else cols[n]
            for n in self._names
        ]
        final = self.directory / _PART.format(self._next)
        tmp = final.with_name(f".{final.name}.tmp")
        with open(tmp, "wb") as f:
            self._pq.write_table(pa.table(arrays, names=self._names), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        if os.name == "posix":  # make the rename itself durable
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._next += 1

    def close(self) -> None:
        """Nothing is held open between writes; further writes raise. Safe to call twice."""
        self._closed = True


class TensorBoardSink(_Base):
    """TensorBoard scalars tagged ``<metric>/<param>`` at each row's ``step``.

    Every float or bool column is logged (``lr``, ``wd`` and ``momentum`` included), one ``add_scalar`` per
    value; NaN (undefined, e.g. no theory for this optimizer) is skipped, so a plot shows a gap, not a zero.
    """

    def __init__(self, log_dir: str | os.PathLike[str] | None = None, *, writer: Any = None) -> None:
        super().__init__()
        if writer is not None and log_dir is not None:
            raise ValueError("give either log_dir or writer, not both")
        self._owns = writer is None
        if writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("TensorBoard logging needs: pip install smdyn[tensorboard]") from e
            writer = SummaryWriter(log_dir=None if log_dir is None else os.fspath(log_dir))
        self.writer = writer

    def write(self, batch: Mapping[str, np.ndarray]) -> None:
        """Logs every non-NaN float or bool value, then flushes the event file."""
        cols = self._prepare(batch)
        if cols is None:
            return
        self._names = self._names or list(cols)
        for need in ("step", "param"):
            if need not in cols:
                raise ValueError(f"TensorBoardSink needs a {need!r} column in the batch")
        steps = cols["step"].astype(np.int64).tolist()
        params = _text(cols["param"])
        for name, arr in cols.items():
            if arr.dtype.kind not in "fb":
                continue
            for step, param, value in zip(steps, params, arr.astype(np.float64).tolist(), strict=True):
                if value == value:  # not NaN
                    self.writer.add_scalar(f"{name}/{param}", value, step)
        self.writer.flush()

    def close(self) -> None:
        """Flushes, and closes the writer if this sink created it. Safe to call twice."""
        if not self._closed:
            self.writer.flush()
            if self._owns:
                self.writer.close()
        self._closed = True


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


def _parse(name: str, values: list[str]) -> np.ndarray:
    """Turns a CSV column's text back into an array of the type it was written from."""
    kind = _CSV_DTYPES.get(name) or _kind(values)
    if kind == "str":
        return np.array(values, dtype=object)
    if kind == "bool":
        return np.array([v in ("True", "true", "1") for v in values], dtype=bool)
    return np.array(values, dtype=np.int64 if kind == "int" else np.float64)


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        warnings.warn(f"{path}: skipping an unfinished last line", RuntimeWarning, stacklevel=3)
        data = data[: data.rfind(b"\n") + 1]
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    if not rows:
        raise ValueError(f"{path} has no header line")
    header, body = rows[0], [r for r in rows[1:] if len(r) == len(rows[0])]
    if len(body) != len(rows) - 1:
        warnings.warn(f"{path}: skipping {len(rows) - 1 - len(body)} malformed rows", RuntimeWarning, 3)
    return {name: _parse(name, [r[i] for r in body]) for i, name in enumerate(header)}


def _read_parquet(parts: list[Path]) -> dict[str, np.ndarray]:
    pa, pq = _pyarrow()
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


def read_metrics(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Reads metrics back: a CSV file, a Parquet part directory, or a run directory holding either.

    Returns concatenated columns with ``step`` int64, ``param``/``reason`` str (object arrays),
    ``in_equilibrium`` bool and float columns float64, NaN preserved; ``pandas.DataFrame(result)`` works.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    p = Path(path)
    if p.is_file():
        return _read_parquet([p]) if p.suffix == ".parquet" else _read_csv(p)
    if not p.is_dir():
        raise FileNotFoundError(f"no metrics at {p}")
    parts = _parts(p)
    if parts:
        return _read_parquet(parts)
    found = [q for q in (p / "metrics.csv", p / "metrics") if q.exists()]
    if len(found) > 1:
        raise ValueError(f"{p} holds both metrics.csv and metrics/; pass the one to read")
    if not found:
        raise FileNotFoundError(f"no metrics.csv, metrics/ or part-*.parquet files in {p}")
    return read_metrics(found[0])
