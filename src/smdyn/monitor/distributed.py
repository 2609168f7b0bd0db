"""Stage 5: summing partial sums across ranks (FSDP2 / DTensor shards), and the one move to the host.

Every reduction is a sum over elements, so under DDP each rank already holds the full value and nothing is
exchanged; sharded parameters add their per-shard partial sums with one all-reduce per flush for all
parameters and all buffered steps together (docs/design.md §4).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from smdyn.monitor.measure import is_sharded


def is_rank_zero() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


@dataclass
class ShardPlan:
    """How to add the partial sums of sharded (DTensor) parameters: over Shard mesh dims, never Replicate."""

    groups: list[Any]  # process groups of the mesh dimensions the parameters are sharded over
    replicated_rows: torch.Tensor  # [rows] bool: rows of unsharded tensors, counted once (coordinate 0)
    first: bool  # this rank is at coordinate 0 along every summed mesh dimension

    @staticmethod
    def build(units: list[Any]) -> ShardPlan | None:
        tensors = [t for u in units for t in u.tensors]
        sharded = [t for t in tensors if is_sharded(t)]
        if not sharded:
            return None
        mesh = sharded[0].device_mesh
        dims = [i for i, p in enumerate(sharded[0].placements) if p.is_shard()]
        for t in sharded:
            if t.device_mesh != mesh or [i for i, p in enumerate(t.placements) if p.is_shard()] != dims:
                raise ValueError(
                    "sharded parameters must share one device mesh and the same sharded dimensions"
                )
        if len({t.to_local().device for t in tensors}) > 1:
            raise ValueError("sharded parameters must all live on one device per rank")
        rows = torch.tensor([not is_sharded(t) for u in units for t in u.tensors for _ in range(u.rows)])
        coord = mesh.get_coordinate() or []
        plan = ShardPlan([mesh.get_group(i) for i in dims], rows, all(coord[i] == 0 for i in dims))
        plan._check_same_everywhere(units)
        return plan

    def _check_same_everywhere(self, units: list[Any]) -> None:
        """Fail now, with a clear message, if another rank monitors different parameters (or none)."""
        names = ";".join(f"{u.name}:{u.rows}" for u in units)
        digest = int.from_bytes(hashlib.sha256(names.encode()).digest()[:6], "big")
        for group in self.groups:
            nccl = torch.distributed.get_backend(group) == "nccl"
            dev = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
            x = torch.tensor([digest, -digest], dtype=torch.float64, device=dev)
            try:
                torch.distributed.all_reduce(x, op=torch.distributed.ReduceOp.MAX, group=group)
            except RuntimeError as exc:
                raise RuntimeError(
                    "SphericalMonitor: the ranks did not all attach a monitor (collective failed: "
                    f"{exc}); create it on every rank with the same parameters"
                ) from exc
            if x[0].item() != -x[1].item():
                raise ValueError(
                    "SphericalMonitor: ranks monitor different parameters; all must monitor the same ones"
                )

    def reduce(self, stacked: torch.Tensor, index: np.ndarray) -> torch.Tensor:
        """Sum [steps, rows, NRAW] partial sums over the shards: one all-reduce per mesh dim.

        ``index`` [steps, rows] gives the record row of each stacked row (blocks come in any order).
        """
        if not self.first:
            rows = self.replicated_rows[torch.from_numpy(index)]
            mask = rows.to(stacked.device)[:, :, None]
            stacked = torch.where(mask, torch.zeros((), dtype=stacked.dtype, device=stacked.device), stacked)
        for group in self.groups:
            torch.distributed.all_reduce(stacked, group=group)
        return stacked


def to_host(steps: list[Any], nrows: int, shards: ShardPlan | None) -> np.ndarray:
    """The record rows of many steps as one ``[steps, rows, NRAW]`` float64 array: one copy per device.

    Each step's blocks (``batch.StepMeasurement``) are concatenated per device and the steps stacked, so
    every device moves its rows to the host once; the host puts each block's rows where they belong. With
    sharded parameters the partial sums are first added across shards: one all-reduce for all parameters
    and all buffered steps together.
    """
    ncols = steps[0].blocks[0].shape[1]
    out = np.full((len(steps), nrows, ncols), np.nan)
    devices = list(dict.fromkeys(b.device for b in steps[0].blocks))
    for d in devices:
        parts = [[(b, ix) for b, ix in zip(m.blocks, m.index, strict=True) if b.device == d] for m in steps]
        stacked = torch.stack([torch.cat([b for b, _ in p]) for p in parts])  # [steps, rows on d, NRAW]
        index = [np.concatenate([ix for _, ix in p]) for p in parts]
        if shards is not None:
            stacked = shards.reduce(stacked, np.stack(index))
        host = stacked.cpu().numpy()
        for s, ix in enumerate(index):
            out[s, ix] = host[s]
    return out
