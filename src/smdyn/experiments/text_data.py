"""Character-level text that needs no download: the Python standard library's own source files.

Every Python installation ships its standard library as ``.py`` source (``sysconfig.get_paths()["stdlib"]``,
about 30 MB in 1 800 files for CPython 3.11, its test suite included). The transformer experiment trains a
character-level model on it.

What a small model can learn from it: character statistics, Python's syntax (indentation after ``:``,
matching brackets and quotes, keywords, ``self.``), frequent identifiers and docstring English. What it
cannot: memorise the corpus. A run of the experiment sees at most a few million characters (6 000 steps of
8 × 64), a fraction of the ~28 MB training split, and its ~1 M parameters could not store the split if it
saw it all; so the training loss stays close to the held-out loss and the gradient stays noisy: the unit
gradient does not collapse (the failure the ``collapse`` experiment shows) and the equilibrium theory's
assumption of a noisy gradient holds.

The corpus depends on the installation: another Python version (or a distribution that strips the test
suite) gives other files. The source checks its size at load time and refuses a corpus under
``min_chars`` training characters; its ``fingerprint`` (files, characters per split) says what was read.

- Files: every ``*.py`` under the root, except ``site-packages`` and ``__pycache__``, in sorted order of
  their path relative to the root (independent of the file system's listing order).
- Split: a file is held out for evaluation when crc32 of its relative path is 0 mod ``test_every``
  (about 1 in 10): deterministic, the same on every machine, and whole files, so no test window overlaps a
  training window.
- Characters: the 95 printable ASCII characters, newline and tab each get an id; everything else
  (non-ASCII, carriage returns, form feeds) shares one id: 98 symbols.
- Batches: windows of ``length + 1`` characters at uniformly random offsets of the concatenated training
  files, drawn with the generator given to ``train_batch`` only; the target is the input shifted by one.
- Test set: ``test_windows`` windows at fixed random offsets (from ``seed``) of the held-out files.
"""

from __future__ import annotations

import os
import sysconfig
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from smdyn.experiments.checks import as_int

__all__ = ["VOCABULARY", "TextSource", "encode", "load_text", "source_files"]

#: The characters with an id of their own; id len(VOCABULARY) stands for every other character.
VOCABULARY = "\n\t" + "".join(chr(c) for c in range(32, 127))
_OTHER = len(VOCABULARY)
_TABLE = np.full(256, _OTHER, dtype=np.uint8)
_TABLE[[ord(c) for c in VOCABULARY]] = np.arange(len(VOCABULARY), dtype=np.uint8)
_DEFAULTS: dict[str, Any] = {"length": 64, "test_windows": 256, "test_every": 10, "min_chars": 4_000_000}


def encode(data: bytes) -> np.ndarray:
    """Character ids (uint8) of raw bytes: printable ASCII, newline and tab, the rest one shared id."""
    return _TABLE[np.frombuffer(data, dtype=np.uint8)]


def source_files(root: Path) -> list[Path]:
    """The ``*.py`` files under ``root`` (site-packages and __pycache__ left out), sorted by relative path."""
    skip = {"site-packages", "dist-packages", "__pycache__"}
    files = [p for p in root.rglob("*.py") if p.is_file() and not skip & set(p.relative_to(root).parts)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _held_out(relative: str, test_every: int) -> bool:
    return zlib.crc32(relative.encode("utf-8")) % test_every == 0


def _windows(text: Tensor, starts: Tensor, length: int) -> tuple[Tensor, Tensor]:
    idx = starts[:, None] + torch.arange(length + 1)
    chunk = text[idx].long()
    return chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()


class TextSource:
    """The stdlib corpus as a `smdyn.experiments.data.DataSource` for next-character prediction.

    ``train_batch`` returns ``x`` int64 token ids ``[B, length]`` and ``y`` the next ids ``[B, length]``
    (every position is one example); ``train_size`` counts the training text in windows of ``length``.
    """

    def __init__(self, root: Path, seed: int, options: Mapping[str, Any]) -> None:
        self.name = "text"
        self.length = as_int("length", options["length"], 1)
        test_windows = as_int("test_windows", options["test_windows"], 1)
        test_every = as_int("test_every", options["test_every"], 2)
        min_chars = as_int("min_chars", options["min_chars"], 1)
        if not root.is_dir():
            raise FileNotFoundError(f"text corpus folder {root} does not exist")
        train, test = [], []
        for p in source_files(root):
            part = test if _held_out(p.relative_to(root).as_posix(), test_every) else train
            part.append(encode(p.read_bytes() + b"\n"))
        n_train, n_test = sum(len(a) for a in train), sum(len(a) for a in test)
        if n_train < min_chars or n_test < (self.length + 1) * 4:
            raise ValueError(
                f"the text corpus under {root} is too small: {n_train:,} training and {n_test:,} held-out "
                f"characters in {len(train) + len(test)} .py files; need >= {min_chars:,} training "
                "characters (min_chars) so that a run cannot memorise it. Point [data] root at a folder of "
                "Python source"
            )
        self._train = torch.from_numpy(np.concatenate(train))
        self._test_text = torch.from_numpy(np.concatenate(test))
        self.num_classes = len(VOCABULARY) + 1
        self.input_shape = (self.length,)
        self.train_size: int | None = n_train // self.length
        self.fingerprint = {"files": len(train) + len(test), "train_chars": n_train, "test_chars": n_test}
        g = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, n_test - self.length, (test_windows,), generator=g)
        self._test = _windows(self._test_text, starts, self.length)
        self._seed = seed

    def __repr__(self) -> str:
        f = self.fingerprint
        return (
            f"<text: {f['files']} files, {f['train_chars']:,} training / {f['test_chars']:,} held-out "
            f"characters, windows of {self.length}>"
        )

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        batch_size = as_int("batch_size", batch_size, 1)
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        starts = torch.randint(0, len(self._train) - self.length, (batch_size,), generator=generator)
        return _windows(self._train, starts, self.length)

    def test_set(self) -> tuple[Tensor, Tensor]:
        return self._test

    def train_subset(self, n: int) -> tuple[Tensor, Tensor]:
        n = as_int("n", n, 1)
        g = torch.Generator().manual_seed(self._seed + 1)
        return _windows(
            self._train, torch.randint(0, len(self._train) - self.length, (n,), generator=g), self.length
        )


def load_text(root: str | os.PathLike[str] | None, seed: int, options: Mapping[str, object]) -> TextSource:
    """The corpus under ``root`` (default: this Python's standard library); options ``length`` [64],
    ``test_windows`` [256], ``test_every`` [10], ``min_chars`` [4 000 000].

    Raises:
        ValueError: an unknown option, or a corpus under ``min_chars`` training characters.
        FileNotFoundError: ``root`` is not a folder.
    """
    unknown = sorted(set(options) - set(_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown option(s) for data set 'text': {', '.join(unknown)}; accepted: {', '.join(_DEFAULTS)}"
        )
    folder = Path(root).expanduser() if root is not None else Path(sysconfig.get_paths()["stdlib"])
    return TextSource(folder, seed, {**_DEFAULTS, **options})
