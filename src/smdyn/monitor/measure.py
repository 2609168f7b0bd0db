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
RAW = ("ww", "gg", "vv", "wg", "wv", "gv", "bb", "db", "dd", "dperp", "pb", "pp", "unmoved", "skip")
NRAW = len(RAW)
I = {name: i for i, name in enumerate(RAW)}  # noqa: E741 - column index by name
_SNAP = slice(I["bb"], I["unmoved"] + 1)  # the columns the snapshot path fills after the step


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


FAST_MAX = 1 << 15  # CPU float32 dot products stay accurate (≤ 5e-7, geometry._BLOCK) up to this size
_TAILS: dict[torch.device, torch.Tensor] = {}


def _tail(device: torch.device) -> torch.Tensor:
    """The constant end of a known-update row: NaN snapshot columns and a 0 skip flag (cached per device)."""
    t = _TAILS.get(device)
    if t is None:  # made on the device: a tensor copied from the host would wait for it
        nan = torch.full((7,), math.nan, dtype=torch.float64, device=device)
        t = torch.cat([nan, torch.zeros(1, dtype=torch.float64, device=device)])
        _TAILS[device] = t
    return t


def _six_dots(w: torch.Tensor, g: torch.Tensor, v: torch.Tensor | None, per_channel: bool) -> torch.Tensor:
    """[rows, 6] float64: ‖w‖², ‖g‖², ‖v‖², ⟨w,g⟩, ⟨w,v⟩, ⟨g,v⟩ (v = 0 when there is no buffer)."""
    same = g.dtype == w.dtype and (v is None or v.dtype == w.dtype)
    if not per_channel and same and w.dtype in (torch.float32, torch.float64):
        if v is None:
            return without_buffer(geometry.gram([w, g]).reshape(1, 3))
        return geometry.gram([w, g, v]).reshape(1, 6)
    if v is None:  # no momentum buffer (yet): its entries are 0
        return without_buffer(geometry.dots([(w, w), (g, g), (w, g)], per_channel=per_channel).reshape(-1, 3))
    pairs = [(w, w), (g, g), (v, v), (w, g), (w, v), (g, v)]
    return geometry.dots(pairs, per_channel=per_channel).reshape(-1, 6)


def without_buffer(dots: torch.Tensor) -> torch.Tensor:
    """[rows, 3] (‖w‖², ‖g‖², ⟨w,g⟩) → [rows, 6] in :func:`_six_dots`' order, the buffer's entries 0."""
    zero = torch.zeros_like(dots[:, :1])
    return torch.cat([dots[:, :2], zero, dots[:, 2:], zero, zero], dim=1)


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
    the optimizer will not apply. Neither is read on the host here. A small float32 tensor costs about a
    dozen dispatched ops: six dot products, one stack, one cast and one concatenation.
    """
    return finish_row(_six_dots(w, g, v, per_channel), inv_scale, skipped)


def finish_row(
    dots: torch.Tensor, inv_scale: torch.Tensor | None, skipped: torch.Tensor | None
) -> torch.Tensor:
    """[rows, 6] Gram entries → [rows, NRAW] rows: unscaled, with NaN snapshot columns and the skip flag."""
    if inv_scale is not None:
        s = inv_scale.to(device=dots.device, dtype=torch.float64, non_blocking=True).reshape(1)
        one = torch.ones_like(s)
        dots = dots * torch.cat([one, s * s, one, s, one, s])
    tail = _tail(dots.device).expand(dots.shape[0], NRAW - 6)
    if skipped is not None:
        flag = skipped.to(device=dots.device, dtype=torch.float64, non_blocking=True).reshape(1, 1)
        tail = torch.cat([tail[:, :-1], flag.expand(dots.shape[0], 1)], dim=1)
    return torch.cat([dots, tail], dim=1)


class Buffers:
    """Storage reused from one recorded step to the next, on the CPU only.

    On the CPU a fresh megabyte-sized tensor comes from ``mmap`` and pays a page fault per 4 KiB when first
    written: cloning six 1 MiB weights took 2.2 ms where copying into kept buffers takes 0.15 ms (measured).
    On an accelerator the caching allocator already reuses memory, and memory held between steps is memory
    the user's activations cannot have, so nothing is kept there.
    """

    #: Recorded steps a buffer may go unused before it is freed: a model whose set of weights with a
    #: gradient changes (top-k experts) would otherwise keep one for every set it ever had, while sets that
    #: come back within a few steps keep theirs.
    KEEP_UNUSED = 4

    def __init__(self) -> None:
        self._kept: dict[object, torch.Tensor] = {}
        self._idle: dict[object, int] = {}  # recorded steps since each kept buffer was last used

    def get(self, key: object, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """An uninitialised tensor of this shape, dtype and device: on CPU the same one for one key."""
        if device.type != "cpu":
            return torch.empty(shape, dtype=dtype, device=device)
        self._idle[key] = 0
        t = self._kept.get(key)
        if t is None or t.shape != shape or t.dtype != dtype:
            t = torch.empty(shape, dtype=dtype, device=device)
            self._kept[key] = t
        return t

    def new_step(self) -> None:
        """Age the kept buffers by one recorded step; free those unused for more than ``KEEP_UNUSED``."""
        for key, idle in list(self._idle.items()):
            if idle >= self.KEEP_UNUSED:
                del self._idle[key], self._kept[key]
            else:
                self._idle[key] = idle + 1

    def clear(self) -> None:
        self._kept.clear()
        self._idle.clear()


def snapshot(w: torch.Tensor, buffers: Buffers | None = None, key: object = None) -> torch.Tensor:
    """A copy of w_t in its own format (the post-step difference is then exact in float32)."""
    if buffers is None:
        return w.detach().clone()
    out = buffers.get(key, w.shape, w.dtype, w.device)
    with torch.no_grad():
        return out.copy_(w)


def fill_update(
    raw: torch.Tensor, before: torch.Tensor, after: torch.Tensor, per_channel: bool, sharded: bool
) -> None:
    """Fill the snapshot columns of ``raw`` in place from w_t (``before``, consumed) and w_{t+1} (``after``).

    The difference is formed in float32 at least: two bfloat16/float16 values differ by an amount float32
    holds exactly, so the step measured is the one the rounding really applied. ``before`` is overwritten.
    """
    work = torch.promote_types(after.dtype, torch.float32)
    if not (per_channel or sharded):
        if after.numel() <= FAST_MAX:
            _fill_small(raw, before, after, work)
            return
        if after.device.type == "cpu":
            _fill_large_cpu(raw, before, after, work)
            return
    b = after.to(work)
    d = _difference(before, b)
    sums = geometry.update_sums(b, d, per_channel=per_channel)
    if sharded:  # ‖d⊥‖² of a shard is not additive: rebuilt on the host from the summed sums
        sums[..., 3] = math.nan
    unmoved = count_unmoved(d.reshape(before.shape[0] if per_channel else 1, -1)).to(torch.float64)
    nan = torch.full_like(unmoved[:, None], math.nan).expand(-1, 2)
    raw[:, _SNAP] = torch.cat([sums.reshape(-1, 4), nan, unmoved[:, None]], dim=1)


def _fill_large_cpu(raw: torch.Tensor, before: torch.Tensor, after: torch.Tensor, work: torch.dtype) -> None:
    """One whole CPU tensor above ``FAST_MAX``: its update sums taken on the host as the step is formed
    (``geometry.step_sums_host``; ``geometry.update_sums_host`` when w_t must first be cast), and the
    unmoved count, written into the row with one copy."""
    if before.dtype == after.dtype == work and before.is_contiguous():
        sums = geometry.step_sums_host(before, after)
        d = before.view(1, -1)
    else:
        b = after.reshape(-1).to(work)
        d = _difference(before.reshape(-1), b)
        sums = geometry.update_sums_host(b, d)
    unmoved = float(count_unmoved(d.reshape(1, -1))[0])  # consumes d
    raw[0, _SNAP] = torch.tensor([*sums, math.nan, math.nan, unmoved], dtype=torch.float64)


def _difference(before: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """d = w_t − w_{t+1} in ``b``'s (working) precision: in place in ``before`` when it already has it."""
    if before.dtype == b.dtype:
        return before.sub_(b)
    return before.to(b.dtype) - b


_COUNT_EXACT = 1 << 24  # float32 sums of 0s and 1s are exact below this many elements per row


def count_unmoved(d: torch.Tensor) -> torch.Tensor:
    """Elements per row of the [rows, m] step ``d`` that are exactly 0 (the weight did not change).

    Returned exactly, in d's precision (or float64 past 2²⁴ elements a row).

    ``d`` is consumed: it becomes 1.0 where the element moved (a NaN step counts as moved) and is summed in
    its own float32-or-wider precision, exact below 2²⁴ elements a row. Two passes over d and no temporary:
    ``torch.count_nonzero`` costs 3× as much on the CPU (a boolean temporary and a scalar loop).
    """
    if d.shape[1] >= _COUNT_EXACT or not d.dtype.is_floating_point:
        return (d.shape[1] - torch.count_nonzero(d, dim=1)).to(torch.float64)
    return d.shape[1] - d.ne_(0).sum(dim=1)


def _fill_small(raw: torch.Tensor, before: torch.Tensor, after: torch.Tensor, work: torch.dtype) -> None:
    """One small tensor: ‖b‖², ⟨d,b⟩, ‖d‖² and the two sums of the projected step, with no host read.

    With c = ⟨d,b⟩/‖b‖² and p = d − c·b (the step with its radial part removed, up to rounding), the host
    takes ‖d⊥‖² = ‖p‖² − ⟨p,b⟩²/‖b‖², accurate whether the step is mostly tangential or mostly radial
    (docs/design.md §2), so no branch on a device value is needed; ⟨d,b⟩ = c‖b‖² + ⟨p,b⟩ and ‖d‖² =
    c²‖b‖² + 2c⟨p,b⟩ + ‖p‖² follow in float64 (so a pair of tensors, whose sums the host adds, keeps that
    accuracy too). Up to ``FAST_MAX`` elements each sum is one float32 dot product that stays accurate.
    Larger tensors go through ``geometry.update_sums``, which projects only when the step is mostly radial:
    always projecting cost more there than the dot products it saves (MLP AdamW post-step hook 2.9-3.1 →
    3.5-3.6 ms a step, measured).
    """
    f64 = torch.float64
    b = after.reshape(-1).to(work)
    d = _difference(before.reshape(-1), b)
    bb, db = torch.dot(b, b).to(f64), torch.dot(d, b).to(f64)
    c_low = (db / bb).to(work)
    p = torch.addcmul(d, b, c_low, value=-1.0)
    pb, pp = torch.dot(p, b).to(f64), torch.dot(p, p).to(f64)
    unmoved = count_unmoved(d.reshape(1, -1))[0].to(f64)  # consumes d
    c = c_low.to(f64)
    sums = torch.stack([bb, c * bb + pb, c * c * bb + 2.0 * c * pb + pp, pb, pp, unmoved])
    raw[0, _SNAP] = torch.cat([sums[:3], _tail(raw.device)[:1], sums[3:]])
