"""Communication and step overhead of SphericalMonitor under 2-process DDP and FSDP2 on CPU (gloo).

What it measures:
  1. FSDP2 (``fully_shard``): all-reduce calls and bytes the monitor adds per flush, for LayerNorm MLPs of
     growing depth (number of monitored weights) and width (size of each weight). Target: one collective
     per flush, O(monitored weights × steps per flush × 10) float64 values, independent of weight sizes.
  2. DDP: training-step time with the monitor recording every step vs bare DDP, interleaved in the same
     processes, printed as a ratio. Under DDP every rank already holds the full gradient, so the monitor
     needs no collective at all.

Usage: python benchmarks/distributed.py [--steps 20] [--rounds 3]
Runtime: about a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from smdyn import SphericalMonitor

WORLD = 2


def mlp(depth: int, width: int) -> nn.Sequential:
    """Linear -> LayerNorm -> ReLU blocks: every (weight, bias) pair is jointly scale-invariant."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.LayerNorm(width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def _params(depth: int, prefix: str = "") -> list[str]:
    return [f"{prefix}{3 * i}.weight+{prefix}{3 * i}.bias" for i in range(depth)]


def _comm(rank: int, depth: int, width: int, flush_every: int, steps: int) -> tuple[int, int]:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = mlp(depth, width)
    for i in range(depth):
        fully_shard(model[3 * i])
    fully_shard(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    mon = SphericalMonitor(model, opt, params=_params(depth), flush_every=flush_every, keep_history=False)
    calls, nbytes = [0], [0]
    real = dist.all_reduce

    def counting(tensor, *args, **kwargs):
        calls[0] += 1
        nbytes[0] += tensor.numel() * tensor.element_size()
        return real(tensor, *args, **kwargs)

    dist.all_reduce = counting
    try:
        x, y = torch.randn(16, width), torch.randint(0, 10, (16,))
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    finally:
        dist.all_reduce = real
        mon.close()
    return calls[0], nbytes[0]


def _ddp_time(name: str, steps: int, rounds: int) -> dict[str, float]:
    torch.manual_seed(0)
    if name == "resnet20":
        from smdyn.experiments.models import resnet20

        model = nn.parallel.DistributedDataParallel(resnet20())
        x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
        params: str | list[str] = "auto"
    else:  # worst case: little compute per parameter, so the monitor's memory traffic shows
        model = nn.parallel.DistributedDataParallel(mlp(6, 512))
        x, y = torch.randn(64, 512), torch.randint(0, 10, (64,))
        params = _params(6, prefix="module.")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)

    def run() -> float:
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return (time.perf_counter() - t0) / steps

    run()  # warm-up
    times: dict[str, list[float]] = {"bare": [], "monitor": []}
    for r in range(rounds):
        for variant in ["bare", "monitor"] if r % 2 == 0 else ["monitor", "bare"]:
            mon = (
                SphericalMonitor(model, opt, params=params, keep_history=False)
                if variant == "monitor"
                else None
            )
            times[variant].append(run())
            if mon is not None:
                mon.close()
    return {k: statistics.median(v) for k, v in times.items()}


def _worker(rank: int, port: int, out: str, steps: int, rounds: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    lines = []
    try:
        flush_every = 10
        for depth, width in ((2, 64), (8, 64), (32, 64), (8, 16), (8, 256), (8, 1024)):
            calls, nbytes = _comm(rank, depth, width, flush_every, 2 * flush_every)
            numel = depth * (width * width + width)
            lines.append(
                f"  FSDP2 {depth:>3} weights × {width * width + width:>8} elements ({numel:>9} monitored): "
                f"{calls / 2:.0f} all-reduce per flush, {nbytes / 2:>7.0f} bytes per flush "
                f"(= {nbytes / 2 / (depth * flush_every * 8):.0f} float64 per weight-step)"
            )
        for name, what in (
            ("resnet20", "ResNet-20, 32 images/rank"),
            ("mlp", "LayerNorm MLP 6×512, 64/rank"),
        ):
            t = _ddp_time(name, steps, rounds)
            lines.append(
                f"  DDP {what}: bare {t['bare'] * 1e3:.1f} ms/step, monitored every step "
                f"{t['monitor'] * 1e3:.1f} ms/step, ratio {t['monitor'] / t['bare']:.3f}"
            )
        if rank == 0:
            Path(out).write_text("\n".join(lines) + "\n")
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.txt")
        mp.start_processes(
            _worker, args=(port, out, args.steps, args.rounds), nprocs=WORLD, start_method="spawn"
        )
        print(f"torch {torch.__version__}, gloo, {WORLD} processes × 1 thread, flush every 10 steps")
        print(Path(out).read_text(), end="")


if __name__ == "__main__":
    main()
