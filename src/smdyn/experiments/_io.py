"""Small file helpers every experiment module shares: atomic writes, strict JSON, TOML.

A run directory is read while it is written (a report of a running run, a resumed run), so a file is
either the old version or the new one, never half of each: each write goes to a hidden temporary file in
the same folder, is flushed to disk and renamed over the target (``os.replace`` is atomic on POSIX and
Windows).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = ["atomic_write", "atomic_write_json", "atomic_write_text", "json_safe", "load_toml", "tomllib"]


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Calls ``write`` on a temporary binary file next to ``path``, syncs it and renames it to ``path``.

    The temporary name carries the process id, so two processes writing the same file (a shared cache)
    never write into one temporary file; a failed ``write`` leaves ``path`` as it was.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def json_safe(obj: Any, *, inf_as_text: bool = False) -> Any:
    """``obj`` with numpy scalars as Python ones and NaN as ``None``, so the JSON written is strict.

    Infinities become ``None`` too, or the strings ``"inf"`` / ``"-inf"`` with ``inf_as_text`` (where
    "never" is a measured answer, such as a layer that never reached equilibrium).
    """
    if isinstance(obj, dict):
        return {str(k): json_safe(v, inf_as_text=inf_as_text) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v, inf_as_text=inf_as_text) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        if math.isfinite(x):
            return x
        return ("inf" if x > 0 else "-inf") if inf_as_text and not math.isnan(x) else None
    return obj


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, inf_as_text: bool = False) -> Path:
    """Writes ``json_safe(obj)`` as indented strict JSON (non-ASCII kept) to ``path`` atomically."""
    text = json.dumps(json_safe(obj, inf_as_text=inf_as_text), indent=2, ensure_ascii=False, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def tomllib() -> Any:
    """``tomllib`` (Python >= 3.11), or the ``tomli`` package it came from on Python 3.10."""
    try:
        import tomllib as lib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as lib
        except ModuleNotFoundError as exc:
            raise ImportError("reading TOML on Python 3.10 needs tomli: pip install tomli") from exc
    return lib


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed TOML file. Raises ``ValueError`` (``TOMLDecodeError``) when it is malformed."""
    with open(path, "rb") as f:
        return tomllib().load(f)
