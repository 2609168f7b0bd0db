"""Stage 1, on the device: the per-tensor reductions a recorded step needs, and nothing else.

Everything here runs on the parameter's own device and returns small float64 tensors; nothing is read
back to the host (no ``.item()``, no branching on device values), so a recorded step never waits for the
device. The host turns these sums into metrics at the next flush (``metrics``).

Two ways to know the applied step d = w_t − w_{t+1}:

- *known update*: for rules whose update is a linear combination a·w + b·g + c·v of the weight, its
  gradient and the momentum buffer before the step (``torch.optim.SGD``), the Gram matrix of (w, g, v)
  before the step is enough: no copy of the weights.
- *snapshot*: otherwise (AdamW, Muon, LBFGS, fused kernels, and any weight stored in a format coarser than
  float32, whose rounding the algebra cannot see) a copy of w_t is kept until the post-step hook, which
  measures the step that was really applied, including the fraction of elements that did not move.
"""

from __future__ import annotations

import math

import torch

from smdyn import geometry

#: Raw per-tensor reductions, in this column order.
RAW = ("ww", "gg", "vv", "wg", "wv", "gv", "bb", "db", "dd", "dperp", "unmoved", "skip")
NRAW = len(RAW)
I = {name: i for i, name in enumerate(RAW)}  # noqa: E741 - column index by name
_SNAP = slice(I["bb"], I["unmoved"] + 1)  # the five columns the snapshot path fills after the step


def is_sharded(x: torch.Tensor) -> bool:
    return type(x).__name__ == "DTensor" and hasattr(x, "to_local")


def local(x: torch.Tensor | None) -> torch.Tensor | None:
    """The local shard of a DTensor (FSDP2, tensor parallel), or the tensor itself."""
    return x.to_local() if x is not None and is_sharded(x) else x


def _rows(t: torch.Tensor, per_channel: bool) -> int:
    return t.shape[0] if per_channel else 1


def nan_raw(t: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """A row for a tensor without a usable gradient: its norm is still known, everything else is NaN."""
    w = local(t.detach())
    raw = torch.full((_rows(w, per_channel), NRAW), math.nan, dtype=torch.float64, device=w.device)
    raw[:, I["ww"]] = geometry.sq_norm(w, per_channel=per_channel)
    raw[:, I["skip"]] = 0.0
    return raw


def gram(
    w: torch.Tensor,
    g: torch.Tensor,
    v: torch.Tensor | None,
    per_channel: bool,
    inv_scale: torch.Tensor | None = None,
    skipped: torch.Tensor | None = None,
) -> torch.Tensor:
    """[rows, NRAW] float64 on the device: Gram entries of (w, g, v); the snapshot columns NaN for now.

    ``inv_scale`` (a 0-d device tensor) unscales a gradient that a gradient scaler handed to a fused
    optimizer still scaled; ``skipped`` (0-d, nonzero when the scaler found inf/NaN) marks the step as one
    the optimizer will not apply. Neither is read on the host here.
    """
    dot, sq = geometry.dot, geometry.sq_norm
    ww = sq(w, per_channel=per_channel)
    gg, wg = sq(g, per_channel=per_channel), dot(w, g, per_channel=per_channel)
    if v is None:  # no momentum buffer (yet): its entries are 0
        vv = wv = gv = torch.zeros_like(ww)
    else:
        vv, wv, gv = (
            sq(v, per_channel=per_channel),
            dot(w, v, per_channel=per_channel),
            dot(g, v, per_channel=per_channel),
        )
    if inv_scale is not None:
        s = inv_scale.to(device=ww.device, dtype=torch.float64, non_blocking=True)
        gg, wg, gv = gg * (s * s), wg * s, gv * s
    skip = torch.zeros_like(ww)
    if skipped is not None:
        skip = skip + skipped.to(device=ww.device, dtype=torch.float64, non_blocking=True)
    nan = torch.full_like(ww, math.nan)
    cols = [ww, gg, vv, wg, wv, gv, nan, nan, nan, nan, nan, skip]
    return torch.stack(cols, dim=-1).reshape(-1, NRAW)


def snapshot(w: torch.Tensor) -> torch.Tensor:
    """A copy of w_t in its own format (the post-step difference is then exact in float32)."""
    return w.detach().clone()


def fill_update(
    raw: torch.Tensor, before: torch.Tensor, after: torch.Tensor, per_channel: bool, sharded: bool
) -> None:
    """Fill the snapshot columns of ``raw`` in place from w_t (``before``) and w_{t+1} (``after``).

    The difference is formed in float32 at least: two bfloat16/float16 values differ by an amount float32
    holds exactly, so the step measured is the one the rounding really applied.
    """
    work = torch.promote_types(after.dtype, torch.float32)
    b = after.to(work)
    d = before.to(work) - b
    sums = geometry.update_sums(b, d, per_channel=per_channel)
    if sharded:  # ‖d⊥‖² of a shard is not additive: rebuilt on the host from the summed sums
        sums[..., 3] = math.nan
    same = (before == after).reshape(before.shape[0] if per_channel else 1, -1)
    unmoved = same.sum(dim=1, dtype=torch.float64)
    raw[:, _SNAP] = torch.cat([sums.reshape(-1, 4), unmoved[:, None]], dim=1)
