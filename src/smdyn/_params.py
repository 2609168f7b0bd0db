"""The one parser of ``params=``: names (``"fc.weight+fc.bias"`` for a jointly invariant pair) or pairs.

The monitor and the Rescaler both take ``params`` as ``"auto"`` or an iterable of parameter names or
``(name, parameter)`` pairs; this turns the explicit forms into ``(label, tensors)`` with one set of checks
and messages. What each does with ``"auto"`` (detection) stays with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


def parse_params(params: Any, model: nn.Module | None) -> list[tuple[str, list[nn.Parameter]]]:
    """``(label, tensors)`` for each name or pair in ``params``.

    Raises:
        ValueError: an empty list, a name that is not a parameter of ``model`` (or a name without a model),
            a pair whose parameter does not belong to ``model``, or a parameter listed twice.
        TypeError: an item that is neither a name nor a ``(name, parameter)`` pair.
    """
    items = list(params) if isinstance(params, Iterable) and not isinstance(params, str) else None
    if not items:
        raise ValueError("params must be 'auto' or a non-empty iterable of names or (name, parameter) pairs")
    named = dict(model.named_parameters()) if model is not None else {}
    owned = {id(p) for p in named.values()}
    out: list[tuple[str, list[nn.Parameter]]] = []
    for item in items:
        if isinstance(item, str):
            if model is None:
                raise ValueError(f"params: the name {item!r} needs model to be resolved")
            missing = [n for n in item.split("+") if n not in named]
            if missing:
                raise ValueError(f"params: {missing[0]!r} is not a parameter of the model")
            out.append((item, [named[n] for n in item.split("+")]))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], torch.Tensor):
            if model is not None and id(item[1]) not in owned:
                raise ValueError(f"params: parameter {item[0]!r} does not belong to the model")
            out.append((str(item[0]), [item[1]]))
        else:
            raise TypeError(f"params: expected a name or a (name, parameter) pair, got {item!r}")
    ids = [id(t) for _, ts in out for t in ts]
    if len(set(ids)) != len(ids):
        raise ValueError("params: a parameter is listed twice")
    return out
