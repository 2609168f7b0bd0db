"""Stable angles between weight tensors, and the fused reductions the monitor needs every step.

The angular update of Wan et al. (NeurIPS 2021, Def 3, Eq 13) is Δ_t = ∠(w_t, w_{t+1}), which the paper
writes as the arccos of a cosine. That form is useless in practice: Δ is of order √(2λη/(1+α)) ≈ 1e-3..1e-2
in equilibrium (Thm 3), where the cosine is 1 − Δ²/2 and float32 ``arccos`` is off by 10-100 % (it returns
exactly 0 at Δ = 1e-4); even arccos of float64 dot products is off by 7 % to 300 % at Δ = 1e-7 (measured,
see benchmarks/angle_accuracy.py). This module uses two forms that are exact to rounding instead:

* :func:`angle` for any two tensors: Δ = 2·atan2(‖â − b̂‖, ‖â + b̂‖), as ‖â − b̂‖ = 2 sin(Δ/2) and
  ‖â + b̂‖ = 2 cos(Δ/2), with the normalisation and the differences in float64. Relative error ≤ 1e-9 for
  any angle in [1e-7, π) and any ratio of norms (measured ≤ 4e-11).
* :func:`update_sums` + :func:`angle_from_sums` for the monitor's hot path. With b = w_{t+1} and the applied
  step d = w_t − w_{t+1}, the component of w_t along b̂ is ‖b‖ + ⟨d, b̂⟩ and the rest is
  d⊥ = d − ⟨d, b̂⟩b̂, so Δ = atan2(‖d⊥‖, ‖b‖ + ⟨d, b̂⟩) — no cosine, no cancellation between the two vectors.
  The four sums are one pass of dot products in the input's own precision, stored as float64.

Every reduction runs on the tensor's device and returns a float64 tensor there; nothing reads a value back
to the host on an accelerator, so a training step never waits for the monitor.

Precision of the float32 reductions. On CPU a single BLAS ``sdot`` over 1.1e7 normal floats returns ‖x‖²
with a relative error of 3e-4 (``vector_norm``: 1.6e-4), far above what the angle needs. Summing blocks of
2**15 elements with ``sdot`` and adding the block sums in float64 bounds it by the error of one block, 5e-7
at worst and ~1e-7 typically, at ~1.5x the time of plain ``sdot`` (a float64 copy costs 25-50x). Per-row
reductions use ``torch.linalg.vecdot``, which sums pairwise. On CUDA ``torch.dot`` and ``vecdot`` are tree
reductions, accurate as they are. float16 and bfloat16 are cast to float32 first: their own accumulators
would lose the angle entirely.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "angle",
    "angle_from_sums",
    "dot",
    "dots",
    "gram",
    "norm_before_sq_from_sums",
    "sq_norm",
    "step_sums_host",
    "update_sums",
    "update_sums_host",
]

# CPU sdot accumulates in a few float32 registers, so its error grows with length. Worst relative error of
# ‖x‖² over 40 normal vectors of 2**15 / 2**16 / 2**17 elements: 4.1e-7 / 5.2e-7 / 1.2e-6 (measured); one
# sdot over 1.1e7 elements: 3e-4. Six sums over 2**18 elements take 340 µs in 2**15 blocks, 210 µs in 2**16
# blocks, 150 µs unblocked (1 thread), but ‖d‖² of a 1e5-element step then errs by 2.0e-6 / 2.7e-6 (20
# trials): 2**16 would break the monitor's angle bound (2e-6), so the blocks stay at 2**15.
_BLOCK = 1 << 15
# The Gram entries of a known update ((w, g, v) before the step, :func:`gram`) feed Δ through e = b·g + c·v,
# whose tangential part has no cancellation, so they tolerate coarser blocks. Worst relative error of that Δ
# over 10 SGDM-like steps (‖g‖ = 0.03‖w‖ ⟂ w, v with a radial part) against float64: blocks of 2**15 / 2**17
# / 2**18 elements: 1.8e-7 / 3.6e-7 / 7.8e-7 at 2**16-2**20 elements (unblocked: 1.2e-6 at 2**20). Six sums
# over 2**18 elements: 256 µs in 2**15 blocks, 164 µs in one block (1 thread, measured).
GRAM_BLOCK = 1 << 18
# Elements per float64 chunk in the two passes of :func:`angle`: bounded memory, cache-sized work.
_ANGLE_CHUNK = 1 << 20
_HALF_TYPES = (torch.float16, torch.bfloat16)

_SumsT = TypeVar("_SumsT", np.ndarray, Tensor)


# --------------------------------------------------------------------------------------------------
# Input handling


def _check_tensor(name: str, t: object) -> Tensor:
    """Return ``t`` if it is a real floating-point tensor, else raise naming ``name``."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} must have a floating-point dtype, got {t.dtype}")
    return t


def _check_pair(names: tuple[str, str], a: object, b: object) -> tuple[Tensor, Tensor]:
    """Validate two tensors that are reduced together: same shape, same device."""
    ta, tb = _check_tensor(names[0], a), _check_tensor(names[1], b)
    if ta.shape != tb.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, got {tuple(ta.shape)} and {tuple(tb.shape)}"
        )
    if ta.device != tb.device:
        raise ValueError(
            f"{names[0]} and {names[1]} must be on the same device, got {ta.device} and {tb.device}"
        )
    return ta, tb


def _work_dtype(t: Tensor) -> torch.dtype:
    """Reduction precision: the tensor's own for float32/float64, float32 for the half types."""
    return torch.float32 if t.dtype in _HALF_TYPES else t.dtype


def _rows(name: str, t: Tensor, per_channel: bool, dtype: torch.dtype) -> Tensor:
    """View ``t`` as [rows, elements]: one row per output channel, or a single row for the whole tensor."""
    if per_channel:
        if t.dim() == 0:
            raise ValueError(
                f"{name} must have at least one dimension for per_channel=True, got a 0-d tensor"
            )
        out = t.reshape(t.shape[0], -1)
    else:
        out = t.reshape(1, -1)
    return out.to(dtype)


def _finish(rows: Tensor, per_channel: bool) -> Tensor:
    """[rows, ...] → [C, ...] per channel, or drop the row dimension for the whole tensor."""
    return rows if per_channel else rows[0]


# --------------------------------------------------------------------------------------------------
# Reductions


def _rowdot_matrix(*pairs: tuple[Tensor, Tensor]) -> Tensor:
    """Row-wise ⟨x_r, y_r⟩ for each pair of [R, K] tensors (all of one shape and dtype), float64 [R, P].

    One row (the whole tensor): ``torch.dot``; on CPU in blocks of ``_BLOCK`` elements whose float32 sums
    are added in float64 (see the module docstring for why), all pairs in one sweep so each block is read
    from cache. Several rows: ``torch.linalg.vecdot``, one call per pair, pairwise summation.
    """
    x0 = pairs[0][0]
    if x0.shape[0] != 1:
        return torch.stack([torch.linalg.vecdot(x, y, dim=1) for x, y in pairs], dim=1).to(torch.float64)
    if x0.device.type != "cpu" or x0.shape[1] <= _BLOCK:
        return torch.stack([torch.dot(x[0], y[0]) for x, y in pairs]).to(torch.float64).view(1, -1)
    split: dict[int, tuple[Tensor, ...]] = {}  # each distinct tensor is cut into blocks once

    def blocks_of(x: Tensor) -> tuple[Tensor, ...]:
        if id(x) not in split:
            split[id(x)] = x[0].split(_BLOCK)
        return split[id(x)]

    blocks = [(blocks_of(x), blocks_of(y)) for x, y in pairs]
    parts = [torch.dot(xs[i], ys[i]) for i in range(len(blocks[0][0])) for xs, ys in blocks]
    # the block sums are cast to float64 as they are added (one op)
    return torch.stack(parts).view(-1, len(pairs)).sum(0, dtype=torch.float64).view(1, -1)


def _rowdots(*pairs: tuple[Tensor, Tensor]) -> list[Tensor]:
    """:func:`_rowdot_matrix` as one float64 [R] tensor per pair."""
    return list(_rowdot_matrix(*pairs).unbind(1))


def _rowdot(x: Tensor, y: Tensor) -> Tensor:
    """Row-wise ⟨x_r, y_r⟩ of two [R, K] tensors of one dtype, as float64 [R] on their device."""
    return _rowdots((x, y))[0]


def dot(a: Tensor, b: Tensor, *, per_channel: bool = False) -> Tensor:
    """⟨a, b⟩ over all elements (or per slice along dim 0), as float64 on a's device.

    Used for ⟨w, g⟩ and ⟨v, g⟩ (Lemma 1, Eq 3; h̃ of Thm 2). Reduced in the input's precision for
    float32/float64 and in float32 for float16/bfloat16 (blocked on CPU, see the module docstring); no host
    synchronisation.

    Args:
        a: Any floating-point tensor.
        b: A tensor of the same shape on the same device (its dtype may differ).
        per_channel: One value per slice ``a[i]`` (shape ``[a.shape[0]]``) instead of a 0-d tensor.

    Returns:
        A float64 tensor: 0-d, or ``[a.shape[0]]`` with ``per_channel``.

    Raises:
        TypeError: An argument is not a floating-point tensor.
        ValueError: Shapes or devices differ, or ``per_channel`` with a 0-d tensor.
    """
    a, b = _check_pair(("a", "b"), a, b)
    dtype = torch.promote_types(_work_dtype(a), _work_dtype(b))
    return _finish(_rowdot(_rows("a", a, per_channel, dtype), _rows("b", b, per_channel, dtype)), per_channel)


def dots(pairs: list[tuple[Tensor, Tensor]], *, per_channel: bool = False) -> Tensor:
    """⟨a, b⟩ of several pairs of same-shaped tensors in one sweep, float64 ``[P]`` (or ``[C, P]``).

    The reductions of :func:`dot`, but on the CPU each block of ``_BLOCK`` elements of every pair is reduced
    while it is in cache: a tensor that appears in several pairs (w in ‖w‖² and ⟨w, g⟩) is read from memory
    once per block instead of once per pair.

    Raises:
        TypeError: An argument is not a floating-point tensor.
        ValueError: No pairs, or shapes or devices that differ (dtypes are promoted, as in :func:`dot`).
    """
    if not pairs:
        raise ValueError("dots needs at least one pair")
    checked = [_check_pair(("a", "b"), a, b) for a, b in pairs]
    shape, device = checked[0][0].shape, checked[0][0].device
    if any(a.shape != shape or a.device != device for a, _ in checked):
        raise ValueError("dots: every pair must have the same shape and device")
    dtype = _work_dtype(checked[0][0])
    for pair in checked:
        for t in pair:
            dtype = torch.promote_types(dtype, _work_dtype(t))
    viewed: dict[int, Tensor] = {}  # one view per distinct tensor, so the sweep splits each once

    def rows_of(name: str, t: Tensor) -> Tensor:
        if id(t) not in viewed:
            viewed[id(t)] = _rows(name, t, per_channel, dtype)
        return viewed[id(t)]

    rows = [(rows_of("a", a), rows_of("b", b)) for a, b in checked]
    return _finish(_rowdot_matrix(*rows), per_channel)


def gram(tensors: list[Tensor], *, cast: bool = True) -> Tensor:
    """Every inner product of a few same-shaped tensors over all their elements, float64 ``[k(k+1)/2]``.

    Order: the k squared norms, then ⟨x_i, x_j⟩ for i < j row by row (for (w, g, v): ‖w‖², ‖g‖², ‖v‖²,
    ⟨w,g⟩, ⟨w,v⟩, ⟨g,v⟩). The reductions of :func:`dots`, with the per-call work cut to what a monitored
    step can afford: each tensor is flattened and cut into blocks once, in blocks of ``GRAM_BLOCK`` (2**18)
    elements, sized for the known-update angle these sums feed (≤ 1e-6 relative, see ``GRAM_BLOCK``)
    rather than for ‖x‖² itself (≤ 2e-6 relative per block); nothing is promoted (the tensors must share
    one float32 or float64 dtype: half types go through :func:`dots`). ``cast=False`` leaves sums taken in
    one block in the tensors' dtype, for a caller that casts many tensors' sums at once (blocked sums are
    added in float64 either way).

    Raises:
        ValueError: No tensors, or shapes, dtypes or devices that differ, or a dtype other than float32/64.
    """
    if not tensors:
        raise ValueError("gram needs at least one tensor")
    first = tensors[0]
    for t in tensors:
        if t.shape != first.shape or t.dtype != first.dtype or t.device != first.device:
            raise ValueError("gram: every tensor must have the same shape, dtype and device")
    if first.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"gram: float32 or float64 tensors only, got {first.dtype}")
    k = len(tensors)
    pairs = [(i, i) for i in range(k)] + [(i, j) for i in range(k) for j in range(i + 1, k)]
    flat = [t.reshape(-1) for t in tensors]
    if first.device.type != "cpu" or first.numel() <= GRAM_BLOCK:
        sums = torch.stack([torch.dot(flat[i], flat[j]) for i, j in pairs])
        return sums.to(torch.float64) if cast else sums
    cut = [f.split(GRAM_BLOCK) for f in flat]
    parts = [torch.dot(cut[i][b], cut[j][b]) for b in range(len(cut[0])) for i, j in pairs]
    return torch.stack(parts).view(-1, len(pairs)).to(torch.float64).sum(0)


def sq_norm(a: Tensor, *, per_channel: bool = False) -> Tensor:
    """‖a‖² over all elements (or per slice along dim 0), as float64 on a's device.

    Used for ‖w‖², ‖g‖² and ‖v‖² (Def 2, Eq 6; Thm 2). Computed as ⟨a, a⟩ with the same reductions as
    :func:`dot`: on CPU ``vector_norm`` accumulates naively in float32 (1.6e-4 relative error at 1.1e7
    elements), so it is not used.

    Args:
        a: Any floating-point tensor.
        per_channel: One value per slice ``a[i]`` (shape ``[a.shape[0]]``) instead of a 0-d tensor.

    Returns:
        A float64 tensor: 0-d, or ``[a.shape[0]]`` with ``per_channel``.

    Raises:
        TypeError: ``a`` is not a floating-point tensor.
        ValueError: ``per_channel`` with a 0-d tensor.
    """
    a = _check_tensor("a", a)
    rows = _rows("a", a, per_channel, _work_dtype(a))
    return _finish(_rowdot(rows, rows), per_channel)


# --------------------------------------------------------------------------------------------------
# The general angle


def angle(a: Tensor, b: Tensor, *, per_channel: bool = False) -> Tensor:
    """The angle ∠(a, b) in radians, exact to ~1e-9 relative for any angle and any ratio of norms.

    Δ = 2·atan2(‖â − b̂‖, ‖â + b̂‖) with â = a/‖a‖, b̂ = b/‖b‖ (the angular update of Def 3, Eq 13, without
    its arccos). Two passes in float64 over chunks of the data: the norms, then the two chords. The
    inputs are cast to float64 (exactly, whatever their dtype), so the result is the angle of the vectors
    as given.

    Under BatchNorm each output channel's filter is scale-invariant on its own, so ``per_channel`` gives
    one angle per slice ``a[i]``, each slice treated as its own vector.

    Args:
        a: Any floating-point tensor (float16/bfloat16/float32/float64).
        b: A tensor of the same shape on the same device (its dtype may differ).
        per_channel: One angle per slice along dim 0 (shape ``[a.shape[0]]``) instead of a 0-d tensor.

    Returns:
        float64 angles in [0, π] on a's device. NaN where either vector has zero norm (the angle is
        undefined; NaN rather than an exception so one dead channel does not stop a measurement) or is
        not finite.

    Raises:
        TypeError: An argument is not a floating-point tensor.
        ValueError: Shapes or devices differ, or ``per_channel`` with a 0-d tensor.
    """
    a, b = _check_pair(("a", "b"), a, b)
    x = _rows("a", a, per_channel, a.dtype)
    y = _rows("b", b, per_channel, b.dtype)
    n_rows, n_cols = x.shape
    step = max(1, _ANGLE_CHUNK // max(1, n_rows))
    f64 = torch.float64

    def chunks(copy: bool) -> Iterator[tuple[Tensor, Tensor]]:
        # One float64 chunk alive at a time. ``copy`` for the pass that scales in place: a float64
        # input must not be modified.
        for j in range(0, max(n_cols, 1), step):
            yield x[:, j : j + step].to(f64, copy=copy), y[:, j : j + step].to(f64, copy=copy)

    # Pass 1: the norms, accumulated in float64.
    xx = torch.zeros(n_rows, dtype=f64, device=a.device)
    yy = torch.zeros_like(xx)
    for cx, cy in chunks(copy=False):
        cxx, cyy = _rowdots((cx, cx), (cy, cy))
        xx += cxx
        yy += cyy
    inv_x = (1.0 / xx.sqrt()).unsqueeze(1)
    inv_y = (1.0 / yy.sqrt()).unsqueeze(1)
    # Pass 2: ‖â − b̂‖² and ‖â + b̂‖², formed from the unit vectors chunk by chunk.
    minus = torch.zeros_like(xx)
    plus = torch.zeros_like(xx)
    for cx, cy in chunks(copy=True):
        ux = cx.mul_(inv_x)
        uy = cy.mul_(inv_y)
        diff = ux - uy
        minus += _rowdot(diff, diff)
        ux.add_(uy)
        plus += _rowdot(ux, ux)
    delta = 2.0 * torch.atan2(minus.sqrt(), plus.sqrt())
    delta = torch.where((xx > 0) & (yy > 0), delta, torch.full_like(delta, math.nan))
    return _finish(delta, per_channel)


# --------------------------------------------------------------------------------------------------
# The monitor's fast path


def update_sums(after: Tensor, update: Tensor, *, per_channel: bool = False) -> Tensor:
    """The four sums from which Δ_t = ∠(w_t, w_{t+1}) (Def 3, Eq 13) and ‖w_t‖ follow exactly.

    With b = ``after`` = w_{t+1} and d = ``update`` = w_t − w_{t+1} (the step actually applied), returns
    (‖b‖², ⟨d, b⟩, ‖d‖², ‖d⊥‖²) where d⊥ = d − ⟨d, b̂⟩b̂ is the part of the step across b. Then
    Δ = atan2(‖d⊥‖, ‖b‖ + ⟨d, b⟩/‖b‖) (:func:`angle_from_sums`) and ‖w_t‖² = ‖b‖² + 2⟨d, b⟩ + ‖d‖²
    (:func:`norm_before_sq_from_sums`).

    Cost: three dot products in the input's precision (float32 for float16/bfloat16), no float64 copy of
    the data. ‖d⊥‖² = ‖d‖² − ⟨d, b⟩²/‖b‖² is exact enough while the step is mostly tangential
    (|⟨d, b̂⟩| ≤ ½‖d‖; in SMD equilibrium radial/tangential ≈ Δ*/2), but cancels when the step is mostly
    radial (weight decay alone, a rescaling). For those rows one more pass forms p = d − c·b with
    c = ⟨d, b⟩/‖b‖² and takes ‖d⊥‖² = ‖p‖² − ⟨p, b⟩²/‖b‖², ⟨d, b⟩ = c‖b‖² + ⟨p, b⟩ and
    ‖d‖² = c²‖b‖² + 2c⟨p, b⟩ + ‖p‖² from it, which also keeps ‖b‖ + ⟨d, b⟩/‖b‖ and ‖w_t‖² precise when
    w_t is much shorter than w_{t+1}. On CPU that pass runs only when some row needs it (the decision is
    a host read of a CPU tensor); on other devices it always runs and ``torch.where`` picks the rows, so
    the host never waits for the device. p is formed in the working precision, so for a mostly radial
    step the error in Δ is that of rounding d once more: absolute ≲ ε‖d‖/‖w_t‖ (ε = 1.2e-7 for float32),
    no larger than what the rounding of the float32 inputs themselves does to Δ. Relative error in the
    tangential regime: ≲ 3e-7 for float32 (measured ≤ 1.1e-7 for 1e3-1e6 elements).

    Args:
        after: The weight after the step, w_{t+1}; any floating-point dtype.
        update: The applied step w_t − w_{t+1}, same shape and device as ``after``.
        per_channel: Sums per slice along dim 0 (each output channel's filter as its own vector).

    Returns:
        float64 tensor of shape ``[4]`` (or ``[C, 4]`` per channel) on after's device. ‖d⊥‖² is NaN where
        ‖b‖ = 0 (the direction of b is undefined).

    Raises:
        TypeError: An argument is not a floating-point tensor.
        ValueError: Shapes or devices differ, or ``per_channel`` with a 0-d tensor.
    """
    after, update = _check_pair(("after", "update"), after, update)
    return _update_sums(after, update, per_channel=per_channel, host_branch=after.device.type == "cpu")


def _update_sums(after: Tensor, update: Tensor, *, per_channel: bool, host_branch: bool) -> Tensor:
    """:func:`update_sums` with the branch strategy explicit (``host_branch=False`` is the device path)."""
    dtype = torch.promote_types(_work_dtype(after), _work_dtype(update))
    b = _rows("after", after, per_channel, dtype)
    d = _rows("update", update, per_channel, dtype)
    bb, db, dd = _rowdots((b, b), (d, b), (d, d))
    perp = dd - db * db / bb
    radial = _is_radial(db, dd, bb)
    if not host_branch or bool(radial.any()):  # host_branch: a CPU tensor, so no device to wait for
        db_p, dd_p, perp_p = _projected(d, b, db, bb)
        db = torch.where(radial, db_p, db)
        dd = torch.where(radial, dd_p, dd)
        perp = torch.where(radial, perp_p, perp)
    perp = torch.where(bb > 0, perp.clamp_min(0.0), torch.full_like(perp, math.nan))
    return _finish(torch.stack([bb, db, dd, perp], dim=-1), per_channel)


def update_sums_host(after: Tensor, update: Tensor) -> list[float]:
    """:func:`update_sums` of one whole CPU tensor, as Python floats [‖b‖², ⟨d,b⟩, ‖d‖², ‖d⊥‖²].

    The same sums in the same order, with the scalar arithmetic done in Python floats: on the CPU a sum's
    value is in host memory as soon as it is computed, so reading it waits for nothing, while the two dozen
    tensor ops on one-element values that the device form needs cost more than the sums themselves (the
    monitor's snapshot fill of a 2**18-element step: 337 → 240 µs, measured). Equal to
    ``update_sums(after, update).tolist()``.

    Raises:
        TypeError: An argument is not a floating-point tensor.
        ValueError: Shapes or devices differ, or the tensors are not on the CPU.
    """
    after, update = _check_pair(("after", "update"), after, update)
    if after.device.type != "cpu":
        raise ValueError(f"update_sums_host reads sums on the host: CPU tensors only, got {after.device}")
    dtype = torch.promote_types(_work_dtype(after), _work_dtype(update))
    b = _rows("after", after, False, dtype)
    d = _rows("update", update, False, dtype)
    bb, db, dd = _rowdot_matrix((b, b), (d, b), (d, d))[0].tolist()
    return _host_finish(b, d, bb, db, dd)


def step_sums_host(before: Tensor, after: Tensor) -> list[float]:
    """:func:`update_sums_host` of ``after`` and the step ``before − after``, the step formed as it is summed.

    ``before`` (w_t, a contiguous CPU tensor of after's float32/float64 dtype) is overwritten with
    d = w_t − w_{t+1}, one block of ``_BLOCK`` elements at a time, and each block's three sums are taken
    while it is in cache: the step is then read from memory once instead of three times (a 2**18-element
    weight with the caches cold, as a model larger than them leaves them: 336 → 243 µs, measured; where
    weights and optimizer state fit in the cache the gain is within the noise). The same
    dot products in the same order as forming d first, so equal to ``update_sums_host(after, d)`` to the
    last bit where ``before`` is aligned as a fresh tensor is (BLAS rounds differently at other addresses:
    then within the blocked sums' own error).

    Raises:
        TypeError: An argument is not a floating-point tensor.
        ValueError: Shapes, devices or dtypes differ, a dtype other than float32/float64, a device other
            than the CPU, ``before`` not contiguous (it could not be written in place) or sharing memory
            with ``after`` (writing the step would change the weight being summed).
    """
    before, after = _check_pair(("before", "after"), before, after)
    if before.device.type != "cpu":
        raise ValueError(f"step_sums_host reads sums on the host: CPU tensors only, got {before.device}")
    if before.dtype != after.dtype or before.dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"step_sums_host: before and after must share a float32 or float64 dtype, got {before.dtype} "
            f"and {after.dtype}"
        )
    if not before.is_contiguous():
        raise ValueError("step_sums_host overwrites before with the step: it must be contiguous")
    if before.untyped_storage().data_ptr() == after.untyped_storage().data_ptr():
        raise ValueError("step_sums_host writes the step into before: it must not share memory with after")
    d, b = before.view(-1), after.reshape(-1)
    if d.numel() <= _BLOCK:
        return update_sums_host(b, d.sub_(b))
    parts: list[Tensor] = []
    for x, y in zip(d.split(_BLOCK), b.split(_BLOCK), strict=True):
        x.sub_(y)
        parts += [torch.dot(y, y), torch.dot(x, y), torch.dot(x, x)]  # _rowdot_matrix's order
    bb, db, dd = torch.stack(parts).view(-1, 3).sum(0, dtype=torch.float64).tolist()
    return _host_finish(b.view(1, -1), d.view(1, -1), bb, db, dd)


def _host_finish(b: Tensor, d: Tensor, bb: float, db: float, dd: float) -> list[float]:
    """[‖b‖², ⟨d,b⟩, ‖d‖², ‖d⊥‖²] from the one-pass sums of [1, K] rows, projecting a mostly radial step."""
    if bb <= 0.0 or math.isnan(bb):
        return [bb, db, dd, math.nan]
    perp = dd - db * db / bb
    if _is_radial(db, dd, bb):
        c_low = torch.tensor([db / bb], dtype=torch.float64).to(d.dtype)
        pb, pp = torch.cat(_projected_sums(d, b, c_low)).tolist()
        db, dd, perp = _from_projection(float(c_low[0]), bb, pb, pp)
    return [bb, db, dd, 0.0 if perp < 0.0 else perp]  # a NaN stays NaN


def _is_radial(db: Any, dd: Any, bb: Any) -> Any:
    """|⟨d, b̂⟩| > ½‖d‖ ⇔ ⟨d, b⟩² > ¼‖d‖²‖b‖²: the step is mostly radial and the one-pass ‖d‖² − ⟨d,b⟩²/‖b‖²
    has cancelled (tensors or floats)."""
    return db * db > 0.25 * dd * bb


def _projected(d: Tensor, b: Tensor, db: Tensor, bb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """⟨d,b⟩, ‖d‖², ‖d⊥‖² per row re-derived from d = c·b + p, for a mostly radial step.

    c = ⟨d,b⟩/‖b‖² rounded to d's dtype and p = d − c·b, formed in d's precision. Then
    ‖d⊥‖² = ‖p‖² − ⟨p,b⟩²/‖b‖² (the second term removes what the rounded c left along b),
    ⟨d,b⟩ = c‖b‖² + ⟨p,b⟩ and ‖d‖² = c²‖b‖² + 2c⟨p,b⟩ + ‖p‖². Written this way ‖b‖ + ⟨d,b⟩/‖b‖ =
    ‖b‖(1 + c) + ⟨p,b⟩/‖b‖ keeps its precision when w_t = b + d is much shorter than b (d ≈ −b), where
    the directly summed ⟨d,b⟩ would cancel against ‖b‖², and ‖w_t‖² = ‖b‖²(1 + c)² + 2(1 + c)⟨p,b⟩ + ‖p‖²
    likewise. No host read.
    """
    c_low = (db / bb).to(d.dtype)
    pb, pp = _projected_sums(d, b, c_low)
    return _from_projection(c_low.to(torch.float64), bb, pb, pp)


def _projected_sums(d: Tensor, b: Tensor, c_low: Tensor) -> list[Tensor]:
    """⟨p,b⟩ and ‖p‖² per row of p = d − c·b, formed in d's precision (``c_low``: [rows], d's dtype)."""
    p = torch.addcmul(d, b, c_low.unsqueeze(1), value=-1.0)
    return _rowdots((p, b), (p, p))


def _from_projection(c: Any, bb: Any, pb: Any, pp: Any) -> tuple[Any, Any, Any]:
    """⟨d,b⟩, ‖d‖², ‖d⊥‖² of d = c·b + p from ‖b‖², ⟨p,b⟩, ‖p‖² (:func:`_projected`; tensors or floats)."""
    return c * bb + pb, c * c * bb + 2.0 * c * pb + pp, pp - pb * pb / bb


def _check_sums(sums: _SumsT) -> _SumsT:
    """Validate a [..., 4] array of sums and return it as float64 (a numpy array or a tensor)."""
    if isinstance(sums, Tensor):
        if not sums.dtype.is_floating_point:
            raise TypeError(f"sums must have a floating-point dtype, got {sums.dtype}")
        out = sums.to(torch.float64)
    elif isinstance(sums, np.ndarray):
        if sums.dtype.kind != "f":
            raise TypeError(f"sums must have a floating-point dtype, got {sums.dtype}")
        out = sums.astype(np.float64, copy=False)
    else:
        raise TypeError(f"sums must be a numpy array or a torch.Tensor, got {type(sums).__name__}")
    if out.ndim == 0 or out.shape[-1] != 4:
        raise ValueError(f"sums must have shape [..., 4] (‖b‖², ⟨d,b⟩, ‖d‖², ‖d⊥‖²), got {tuple(out.shape)}")
    return out


def angle_from_sums(sums: _SumsT) -> _SumsT:
    """Δ = atan2(‖d⊥‖, ‖b‖ + ⟨d, b⟩/‖b‖) from :func:`update_sums` output (Def 3, Eq 13, without arccos).

    ‖b‖ + ⟨d, b⟩/‖b‖ is the component of w_t = b + d along b̂ and ‖d⊥‖ the rest of it, so this is the
    angle between w_t and w_{t+1}, stable from 0 to π. Vectorised over leading dimensions.

    Args:
        sums: float64 numpy array or torch tensor of shape ``[..., 4]``.

    Returns:
        Angles of shape ``sums.shape[:-1]``, of the input's type (a tensor stays on its device). NaN where
        ‖b‖ = 0.

    Raises:
        TypeError: ``sums`` is neither a numpy array nor a tensor, or not floating point.
        ValueError: The last dimension is not 4.
    """
    s = _check_sums(sums)
    bb, db, perp = s[..., 0], s[..., 1], s[..., 3]
    if isinstance(s, Tensor):
        nb = bb.sqrt()
        out = torch.atan2(perp.clamp_min(0.0).sqrt(), nb + db / nb)
        return torch.where(bb > 0, out, torch.full_like(out, math.nan))
    with np.errstate(divide="ignore", invalid="ignore"):
        nb = np.sqrt(bb)
        out_np = np.arctan2(np.sqrt(np.maximum(perp, 0.0)), nb + db / nb)
    return np.where(bb > 0, out_np, np.nan)


def norm_before_sq_from_sums(sums: _SumsT) -> _SumsT:
    """‖w_t‖² = ‖b + d‖² = ‖b‖² + 2⟨d, b⟩ + ‖d‖² from :func:`update_sums` output.

    The weight norm before the step (Thm 1-2), with no snapshot of w_t. Vectorised over leading dimensions.

    Args:
        sums: float64 numpy array or torch tensor of shape ``[..., 4]``.

    Returns:
        ‖w_t‖² of shape ``sums.shape[:-1]``, of the input's type.

    Raises:
        TypeError: ``sums`` is neither a numpy array nor a tensor, or not floating point.
        ValueError: The last dimension is not 4.
    """
    s = _check_sums(sums)
    return s[..., 0] + 2.0 * s[..., 1] + s[..., 2]
