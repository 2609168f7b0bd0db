"""The in-memory record history: bounded by default, so a long run cannot grow it without limit."""

from __future__ import annotations

from collections import deque

import numpy as np

from smdyn.monitor.columns import COLUMNS

DEFAULT_ROWS = 100_000  # ~20-30 MB of records; everything older lives only in the sinks


def empty() -> dict[str, np.ndarray]:
    return {
        c: np.empty(0, dtype=object if c in ("param", "reason", "reason_code") else float) for c in COLUMNS
    }


class History:
    """The latest ``max_rows`` records (all of them when ``max_rows`` is None), as columnar batches."""

    def __init__(self, max_rows: int | None) -> None:
        self.max_rows = max_rows
        self._batches: deque[dict[str, np.ndarray]] = deque()
        self.rows = 0
        self.dropped = 0  # rows that left memory because of the bound

    def append(self, batch: dict[str, np.ndarray]) -> int:
        """Keep a batch; return how many old rows this pushed out of memory."""
        if self.max_rows == 0:
            n = len(batch["step"])
            self.dropped += n
            return n
        self._batches.append(batch)
        self.rows += len(batch["step"])
        out = 0
        while self.max_rows is not None and self.rows > self.max_rows:
            first = self._batches[0]
            n = len(first["step"])
            excess = self.rows - self.max_rows
            if n <= excess:
                self._batches.popleft()
                cut = n
            else:
                self._batches[0] = {c: v[excess:].copy() for c, v in first.items()}
                cut = excess
            self.rows -= cut
            out += cut
        self.dropped += out
        return out

    def table(self) -> dict[str, np.ndarray]:
        """All kept rows as one columnar dict (concatenated once, then kept as one batch)."""
        if not self._batches:
            return empty()
        if len(self._batches) > 1:
            merged = {c: np.concatenate([b[c] for b in self._batches]) for c in COLUMNS}
            self._batches = deque([merged])
        return dict(self._batches[0])
