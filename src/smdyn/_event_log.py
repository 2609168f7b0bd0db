"""A bounded list of events: a schedule that moves the lr every step must not grow memory without limit."""

from __future__ import annotations

import warnings
from typing import Any

#: Events kept in memory and in ``state_dict`` (the latest); a continuous Rescaler logs one a step.
MAX_EVENTS = 10_000


class EventLog(list):
    """A list of event dicts that keeps the latest ``limit`` (up to an eighth more between trims, so an
    append stays O(1) amortised); ``dropped`` counts the older ones.

    A list, so code that iterates, indexes or compares it keeps working; every way of adding trims.
    """

    def __init__(
        self, items: Any = (), limit: int | None = None, dropped: int = 0, owner: str = "smdyn"
    ) -> None:
        super().__init__(items)
        self.limit = MAX_EVENTS if limit is None else int(limit)
        self.dropped, self.owner = int(dropped), owner
        self._trim()

    def append(self, event: Any) -> None:
        super().append(event)
        self._trim()

    def extend(self, events: Any) -> None:
        super().extend(events)
        self._trim()

    def __iadd__(self, events: Any) -> EventLog:
        self.extend(events)
        return self

    def insert(self, index: Any, event: Any) -> None:
        super().insert(index, event)
        self._trim()

    def _trim(self) -> None:
        if len(self) <= self.limit + self.limit // 8:
            return
        if self.dropped == 0:
            warnings.warn(
                f"{self.owner} keeps the latest {self.limit} events; older ones are dropped "
                "(the per-step records keep the lr of every step)",
                RuntimeWarning,
                stacklevel=4,
            )
        extra = len(self) - self.limit
        del self[:extra]
        self.dropped += extra
