"""What the framework callbacks share: monitor arguments checked up front, and hooks that never raise.

A callback runs inside someone else's training loop (Lightning's ``fit``, the Hugging Face ``Trainer``),
where an exception aborts the run. So bad settings are refused when the callback is built, before training,
and from then on a hook that fails — nothing to monitor, a model the monitor cannot handle, a broken
checkpoint — gives one ``RuntimeWarning`` and leaves the callback idle while training goes on.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = ["close_quietly", "guarded", "idle_warning", "monitor_arguments"]

F = TypeVar("F", bound=Callable[..., Any])


def monitor_arguments(
    params: Any, monitor_kwargs: Mapping[str, Any] | None, kwargs: Mapping[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """The ``params`` and keyword arguments a callback will pass to :class:`smdyn.SphericalMonitor`.

    ``monitor_kwargs`` and the callback's own keywords are merged (a name given both ways is a TypeError).
    They are checked by building a throwaway monitor on a one-weight model, so a bad value (or an unknown
    name) raises here, when the callback is made, with the monitor's own message; nothing is re-listed.
    """
    if isinstance(params, str):
        if params != "auto":
            raise ValueError(f"params must be 'auto', (name, parameter) pairs or names, got {params!r}")
    else:
        params = list(params)  # a generator must survive until training starts
    given = dict(monitor_kwargs or {})
    both = sorted(set(given) & set(kwargs))
    if both:
        raise TypeError(f"{', '.join(both)} given both as a keyword and in monitor_kwargs")
    given.update(kwargs)
    for name in ("model", "optimizer", "params"):
        if name in given:
            raise TypeError(f"{name} is the callback's to give the monitor; do not pass it in monitor_kwargs")
    if "sinks" in given:
        given["sinks"] = list(given["sinks"])
    _probe({k: v for k, v in given.items() if k != "sinks"})  # the sinks are the caller's: never closed here
    return params, given


def _probe(kwargs: Mapping[str, Any]) -> None:
    from smdyn.monitor import SphericalMonitor

    model = nn.Linear(1, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        SphericalMonitor(model, optimizer, [("probe", model.weight)], **kwargs).close()


def guarded(default: Any = None) -> Callable[[F], F]:
    """Decorates a callback hook: if the callback is idle it does nothing; an exception makes it idle.

    The callback provides ``_idle`` (bool) and ``_go_idle(hook_name, exc)``. ``default`` is what the hook
    returns then (``state_dict`` must still return a dict).
    """

    def wrap(hook: F) -> F:
        @functools.wraps(hook)
        def run(self: Any, *args: Any, **kwargs: Any) -> Any:
            if self._idle:
                return default() if callable(default) else default
            try:
                return hook(self, *args, **kwargs)
            except Exception as exc:  # never abort the framework's training loop
                self._go_idle(hook.__name__.lstrip("_"), exc)
                return default() if callable(default) else default

        return run  # type: ignore[return-value]

    return wrap


def idle_warning(callback: str, hook: str, exc: BaseException, what: str) -> None:
    """The one warning a callback gives when it stops: which hook, why, and that training goes on."""
    warnings.warn(
        f"smdyn: {callback} is idle for the rest of training ({hook}: {type(exc).__name__}: {exc}); "
        f"training goes on without {what}",
        RuntimeWarning,
        stacklevel=4,
    )


def close_quietly(objects: Iterable[Any]) -> None:
    """``close()`` each object; a failure here must not hide the one that made the callback stop."""
    for obj in objects:
        if obj is not None:
            with contextlib.suppress(Exception):  # already stopping because of another error
                obj.close()


class MonitorOwner:
    """The end of a monitor callback's life, shared by the Lightning and Hugging Face callbacks: close the
    monitor once, or, if closing fails, go idle with one warning. Needs ``monitor``, ``_idle``, ``_open``."""

    monitor: Any
    _idle: bool
    _open: bool

    def _close_monitor(self, hook: str) -> None:
        """Flush the last records, remove the optimizer hooks and close the sinks; never raises."""
        if self.monitor is not None and not self._idle:
            try:
                self.monitor.close()
            except Exception as exc:  # training is ending: say so, do not raise
                self._go_idle(hook, exc)
        self._open = False

    def _go_idle(self, hook: str, exc: BaseException) -> None:
        """One warning, then nothing more until training starts again; the monitor's hooks are removed."""
        self._idle = True
        self._open = False
        close_quietly([self.monitor])
        idle_warning("SphericalMonitorCallback", hook, exc, "monitoring")
