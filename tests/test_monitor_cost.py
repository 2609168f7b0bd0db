"""What a recorded step costs: no host read between flushes, and a bounded number of dispatched ops."""

from __future__ import annotations

import collections

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from smdyn import SphericalMonitor

_HOST_READS = ("aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.equal")


class _Ops(TorchDispatchMode):
    """Counts every aten op dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def _setup(
    kind: str, every: int = 1, blocks: int = 10, width: int = 32
) -> tuple[nn.Module, torch.optim.Optimizer, SphericalMonitor]:
    torch.manual_seed(0)
    model = nn.Sequential(
        *[nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width)) for _ in range(blocks)]
    )
    if kind == "sgdm":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    return model, opt, SphericalMonitor(model, opt, flush_every=1000, every=every)


def _step_ops(model: nn.Module, opt: torch.optim.Optimizer) -> collections.Counter[str]:
    x = torch.randn(4, model[0][0].in_features)
    opt.zero_grad()
    model(x).square().mean().backward()
    with _Ops() as counter:
        opt.step()
    return counter.ops


def _extra_ops(
    kind: str, blocks: int, width: int = 32
) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    model, opt, mon = _setup(kind, blocks=blocks, width=width)
    _step_ops(model, opt)  # first step: buffers are created
    monitored = _step_ops(model, opt)
    mon.close()
    bare = _step_ops(model, opt)
    return monitored, bare, sum(monitored.values()) - sum(bare.values())


# Measured on torch 2.13.0: 48 ops a recorded step for SGDM (two shape groups: 24 each), 98 for AdamW.
@pytest.mark.parametrize(("kind", "per_group"), [("sgdm", 25), ("adamw", 50)])
def test_recorded_step_reads_nothing_on_the_host_and_its_ops_grow_with_groups_not_tensors(
    kind: str, per_group: int
) -> None:
    monitored, bare, extra = _extra_ops(kind, blocks=10)
    for name in _HOST_READS:
        assert monitored[name] == bare[name], f"{name} dispatched by the monitor on a recorded step"
    assert 0 < extra <= 2 * per_group  # weights [32, 32] and biases [32]: two groups of same-shaped tensors
    _, _, extra_40 = _extra_ops(kind, blocks=40)
    assert extra_40 == extra, "four times the tensors, the same ops"


def test_large_known_update_weights_cost_their_dot_products_and_little_more() -> None:
    """Weights above the batching size are reduced one at a time (stacking them would copy megabytes), but
    their rows are assembled together: per weight, SGDM's six dot products, one stack and the views that
    flatten w, g and v (measured on torch 2.13.0: 11 ops a weight; 15 when each weight built its own row)."""
    _, _, extra_4 = _extra_ops("sgdm", blocks=4, width=200)  # 40 000-element weights, biases batched
    monitored, bare, extra_8 = _extra_ops("sgdm", blocks=8, width=200)
    for name in _HOST_READS:
        assert monitored[name] == bare[name], f"{name} dispatched by the monitor on a recorded step"
    per_weight = (extra_8 - extra_4) / 4
    assert 6 <= per_weight <= 11, per_weight


def test_unrecorded_steps_dispatch_nothing() -> None:
    model, opt, mon = _setup("adamw", every=10)
    _step_ops(model, opt)  # step 0 is recorded
    monitored = _step_ops(model, opt)  # step 1 is not
    mon.close()
    bare = _step_ops(model, opt)
    assert sum(monitored.values()) == sum(bare.values())


def test_buffered_records_hold_rows_not_copies_of_the_weights() -> None:
    """Between flushes a pending record keeps only its rows: a snapshot kept per buffered step would cost
    flush_every copies of every weight (AdamW measures from snapshots)."""
    model, opt, mon = _setup("adamw", blocks=3)
    for _ in range(5):
        _step_ops(model, opt)
    pending = mon._pending
    assert len(pending) == 5
    weights = sum(p.numel() for p in model.parameters())
    for _, _, m in pending:
        assert not m.needs_after
        held = sum(b.numel() for b in m.blocks)
        assert held < weights / 10  # rows of 14 numbers per weight, not the weights themselves
    mon.close()
