"""SphericalMonitor under DDP and FSDP2 on CPU (gloo, 2 processes): same records as one process.

Plain BatchNorm normalises per local batch, so equality with a single process is tested on LayerNorm /
GroupNorm models, where DDP's averaged gradient equals the gradient of the global batch.
"""

from __future__ import annotations

import os
import socket
import traceback
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from smdyn import SphericalMonitor
from smdyn.sinks import CSVSink, read_metrics

pytestmark = pytest.mark.slow
WORLD = 2
STEPS = 6
_PARAMS = ["fc1.weight+fc1.bias", "fc2.weight", "conv.weight"]


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3, bias=False)
        self.gn = nn.GroupNorm(2, 4)
        self.fc1 = nn.Linear(4 * 14, 32)
        self.ln1 = nn.LayerNorm(32)
        self.fc2 = nn.Linear(32, 32, bias=False)
        self.ln2 = nn.LayerNorm(32)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.gn(self.conv(x.unsqueeze(1)))).flatten(1)
        h = torch.relu(self.ln1(self.fc1(h)))
        return self.head(torch.relu(self.ln2(self.fc2(h))))


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(8 * WORLD, 16, generator=g), torch.randint(0, 3, (8 * WORLD,), generator=g))
        for _ in range(STEPS)
    ]


def _optimizer(params, kind: str) -> torch.optim.Optimizer:
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-2)
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3)


def _single(kind: str) -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    model = _Net()
    opt = _optimizer(model.parameters(), kind)
    with SphericalMonitor(model, opt, params=_PARAMS) as mon:
        for x, y in _data():
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return mon.history()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, mode: str, kind: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=20))
    try:
        _run(rank, mode, kind, Path(out))
    except BaseException:
        (Path(out) / f"error{rank}.txt").write_text(traceback.format_exc())
        dist.destroy_process_group()
        raise
    # Every rank is done with its collectives before the group goes away, and the process leaves without
    # interpreter finalisation: gloo's worker threads can abort it there ("terminate called without an
    # active exception", seen once in 2-rank FSDP runs) after all results were written.
    if mode != "fsdp_partial":  # there rank 1 must leave without any collective
        dist.barrier()
    dist.destroy_process_group()
    os._exit(0)


def _run(rank: int, mode: str, kind: str, out: Path) -> None:
    torch.manual_seed(0)
    model = _Net()
    if mode == "fsdp_rescale":
        _run_rescale(rank, out, sharded=True)
        return
    if mode in ("fsdp", "fsdp_mismatch", "fsdp_partial"):
        from torch.distributed.fsdp import fully_shard

        for m in (model.fc1, model.fc2, model.conv):
            fully_shard(m)
        fully_shard(model)
        names = [n for n, _ in model.named_parameters()]
        assert all(n in names for p in _PARAMS for n in p.split("+"))
        net = model
    else:
        net = nn.parallel.DistributedDataParallel(model)
    opt = _optimizer(net.parameters(), kind)
    prefix = "module." if mode.startswith("ddp") else ""
    params = [("+".join(prefix + n for n in p.split("+"))) for p in _PARAMS]
    if mode == "fsdp_mismatch" and rank == 1:
        params = params[:2]
    if mode == "fsdp_partial" and rank == 1:
        (out / "skipped1").write_text("no monitor on this rank")
        return
    calls = {"all_reduce": 0}
    real_all_reduce = dist.all_reduce

    def counting_all_reduce(*args, **kwargs):
        calls["all_reduce"] += 1
        return real_all_reduce(*args, **kwargs)

    mon = SphericalMonitor(
        net, opt, params=params, sinks=[CSVSink(out / f"metrics{rank}.csv")], flush_every=2
    )
    dist.all_reduce = counting_all_reduce
    try:
        for step, (x, y) in enumerate(_data()):
            xs, ys = x[rank * 8 : (rank + 1) * 8], y[rank * 8 : (rank + 1) * 8]
            opt.zero_grad()
            nn.functional.cross_entropy(net(xs), ys).backward()
            if mode == "ddp_kill" and rank == 1 and step == 3:
                os._exit(3)  # a rank dies mid-run
            opt.step()
        mon.flush()
    finally:
        dist.all_reduce = real_all_reduce
    h = mon.history()
    mon.close()
    np.savez(out / f"history{rank}.npz", **{k: v for k, v in h.items() if v.dtype != object})
    (out / f"calls{rank}.txt").write_text(str(calls["all_reduce"]))


def _run_rescale(rank: int, out: Path, sharded: bool) -> None:
    """SGDM with an LR drop by 10 at step 3 and the Rescaler; returns the final full weights."""
    from smdyn import Rescaler

    torch.manual_seed(0)
    model = _Net()
    if sharded:
        from torch.distributed.fsdp import fully_shard

        for m in (model.fc1, model.fc2, model.conv):
            fully_shard(m)
        fully_shard(model)
    opt = _optimizer(model.parameters(), "sgdm")
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[3], gamma=0.1)
    rescaler = Rescaler(opt, params=_PARAMS, model=model, force=True)
    world = WORLD if sharded else 1
    for x, y in _data():
        xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
        opt.zero_grad()
        nn.functional.cross_entropy(model(xs), ys).backward()
        opt.step()
        sched.step()
    rescaler.close()
    full = {
        n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach() for n, p in model.named_parameters()
    }
    full["rescales"] = torch.tensor(sum(e["action"] == "rescaled" for e in rescaler.events))
    if rank == 0:
        torch.save(full, out / "rescaled_weights.pt")


def _spawn(mode: str, kind: str, tmp: Path, expect_ok: bool = True) -> None:
    ctx = mp.start_processes(
        _worker, args=(_free_port(), mode, kind, str(tmp)), nprocs=WORLD, join=False, start_method="spawn"
    )
    try:
        while not ctx.join(timeout=120):
            pass
    except Exception as exc:
        if expect_ok:
            errors = "\n".join(p.read_text() for p in tmp.glob("error*.txt"))
            raise AssertionError(f"distributed run failed ({exc}):\n{errors}") from None


@pytest.mark.parametrize(("mode", "kind"), [("ddp", "sgdm"), ("fsdp", "sgdm"), ("fsdp", "adamw")])
def test_records_equal_single_process(tmp_path: Path, mode: str, kind: str) -> None:
    _spawn(mode, kind, tmp_path)
    single = _single(kind)
    dist_h = np.load(tmp_path / "history0.npz")
    for key in ("step", "weight_norm", "unit_grad_sq", "h_tilde", "angular_update", "theory_weight_norm"):
        np.testing.assert_allclose(dist_h[key], single[key], rtol=2e-4, atol=1e-9, err_msg=key)
    # only rank 0 writes to its sinks; both ranks hold the same history
    assert len(read_metrics(tmp_path / "metrics0.csv")["step"]) == STEPS * len(_PARAMS)
    assert not (tmp_path / "metrics1.csv").exists() or not (tmp_path / "metrics1.csv").read_text().strip()
    np.testing.assert_allclose(np.load(tmp_path / "history1.npz")["angular_update"], dist_h["angular_update"])
    calls = int((tmp_path / "calls0.txt").read_text())
    flushes = STEPS // 2 + 1  # flush_every=2, then the explicit flush (a no-op when nothing is pending)
    if mode == "ddp":
        assert calls == 0  # replicated parameters: every rank already has the full sums
    else:
        assert calls <= flushes  # one all-reduce per flush for all parameters together
        assert calls >= STEPS // 2


def test_different_parameter_lists_raise_instead_of_hanging(tmp_path: Path) -> None:
    _spawn("fsdp_mismatch", "sgdm", tmp_path, expect_ok=False)
    errors = " ".join(p.read_text() for p in tmp_path.glob("error*.txt"))
    assert "different parameters" in errors or "did not all attach" in errors


def test_monitor_on_one_rank_only_raises_instead_of_hanging(tmp_path: Path) -> None:
    _spawn("fsdp_partial", "sgdm", tmp_path, expect_ok=False)
    assert "did not all attach" in (tmp_path / "error0.txt").read_text()


def test_killed_rank_leaves_rank0_flushed_rows_readable(tmp_path: Path) -> None:
    _spawn("ddp_kill", "sgdm", tmp_path, expect_ok=False)
    rows = read_metrics(tmp_path / "metrics0.csv")
    assert len(rows["step"]) >= 2 * len(_PARAMS)  # the flush after steps 0-1 at least
    assert np.isfinite(rows["angular_update"]).all()


def test_rescaler_scales_fsdp_shards_like_one_process(tmp_path: Path) -> None:
    _spawn("fsdp_rescale", "sgdm", tmp_path)
    sharded = torch.load(tmp_path / "rescaled_weights.pt", weights_only=True)
    (tmp_path / "single").mkdir()
    _run_rescale(0, tmp_path / "single", sharded=False)
    single = torch.load(tmp_path / "single" / "rescaled_weights.pt", weights_only=True)
    assert int(sharded["rescales"]) == int(single["rescales"]) == 1  # the drop at step 3 was rescaled
    for name, w in single.items():
        torch.testing.assert_close(sharded[name], w, rtol=1e-4, atol=1e-6, msg=name)
