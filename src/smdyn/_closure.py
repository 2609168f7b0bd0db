"""Run something once the gradients exist: before a step, or after a step closure's first call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def closure_of(args: tuple, kwargs: dict) -> Any:
    """The closure passed to ``optimizer.step`` (as seen by a step pre-hook), or None."""
    return kwargs.get("closure", args[1] if len(args) > 1 else None)


def after_first_call(args: tuple, kwargs: dict, run: Callable[[], None]) -> tuple[tuple, dict]:
    """The step's (args, kwargs) with its closure wrapped so that ``run`` follows the closure's first call.

    Frameworks such as Lightning run forward and backward inside ``optimizer.step(closure)``, after the
    pre-hooks: the gradients exist only once the closure has run. LBFGS calls it several times a step;
    only the first call sees the weights before the step. The closure's own arguments are passed on.
    """
    closure, calls = closure_of(args, kwargs), [0]

    def wrapped(*a: Any, **k: Any) -> Any:
        loss = closure(*a, **k)
        calls[0] += 1
        if calls[0] == 1:
            run()
        return loss

    if "closure" in kwargs:
        return args, {**kwargs, "closure": wrapped}
    return (args[0], wrapped, *args[2:]), kwargs
