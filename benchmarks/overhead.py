"""Time the monitor adds to a training step, as a share of the bare step measured in the same process.

Variants, interleaved round by round (the order rotates) so drift in machine speed hits them all alike:
  bare     the training step alone
  smdyn    SphericalMonitor recording every step (flush every 100, no in-memory history)
  every10  SphericalMonitor recording every 10th step
  naive    what one writes by hand: clone every monitored weight before the step, then float32 ``acos`` of
           the normalised dot product and ``.item()`` per weight after it (fast, and wrong below Δ ≈ 1e-2)
  req      a logger in the style of REQ's (Kosson et al. 2024), written from its description: clone every
           parameter and deep-copy the optimizer state each logged step, ``acos`` of the float32 cosine

Cases (``--case``):
  mlp_sgdm     LayerNorm MLP, 6 × (Linear 512→512 with bias → LayerNorm), batch 64, SGD-momentum
  mlp_adamw    the same with AdamW
  tiny_blocks  500 × (Conv2d(8, 8, 3, padding=1) → BatchNorm2d(8)) on a 1×8×8×8 input, SGD-momentum
  resnet20     CIFAR ResNet-20, batch 64, 32×32 inputs, SGD-momentum

Reported per case: the median step time of each variant (over rounds), the min–max spread, the overhead
(median ratio to bare − 1) and the median minor page faults a step. ``--device cuda`` runs the same on a GPU.

The allocator. glibc serves a CPU tensor of a megabyte or more from ``mmap`` until such a block has been
freed, then from its heap, and hands heap memory back to the system when enough is free at its top. Which
of these a training step meets depends on the allocations before it, not on the variant: AdamW on the MLP
took 2 064 page faults a step (its megabyte temporaries, ~3-4 ms of a 12 ms step) in one state and 0 in
another, so the same code measured +31% one run and +71% the next, and "every 10th step" seemed to cost
+39%. ``--allocator steady`` (the default) fixes the state before timing with ``mallopt``: blocks up to
32 MiB come from the heap and the heap is not trimmed, so no variant pays page faults the others do not
(the faults column shows it). ``--allocator default`` leaves glibc as it is.

Usage: python benchmarks/overhead.py [--case ...] [--steps 20] [--rounds 5] [--threads 1] [--clock wall|cpu]
    [--allocator steady|default]
(``--clock cpu``: process CPU time, for a machine shared with other work.)
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import resource
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from smdyn import SphericalMonitor


class NaiveMonitor:
    """The hand-written monitor smdyn replaces: a snapshot, ``acos`` and a host sync per weight."""

    def __init__(self, params: list[nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
        self.params = params
        self.values: list[float] = []
        self._snap: list[torch.Tensor] = []
        self._h = [optimizer.register_step_pre_hook(self._pre), optimizer.register_step_post_hook(self._post)]

    def _pre(self, *_: object) -> None:
        self._snap = [p.detach().clone() for p in self.params]

    def _post(self, *_: object) -> None:
        for p, w in zip(self.params, self._snap, strict=True):
            cos = torch.dot(w.flatten(), p.detach().flatten()) / (w.norm() * p.detach().norm())
            self.values.append(torch.acos(cos.clamp(-1, 1)).item())

    def close(self) -> None:
        for h in self._h:
            h.remove()


class ReqStyleLogger(NaiveMonitor):
    """REQ-style logging: every parameter cloned and the optimizer state deep-copied each logged step."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        super().__init__(list(model.parameters()), optimizer)
        self.optimizer = optimizer
        self.state: object = None

    def _pre(self, *_: object) -> None:
        super()._pre()
        self.state = copy.deepcopy(self.optimizer.state)


def _mlp() -> nn.Module:
    return nn.Sequential(*[nn.Sequential(nn.Linear(512, 512), nn.LayerNorm(512)) for _ in range(6)])


def _tiny_blocks() -> nn.Module:
    return nn.Sequential(
        *[nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)) for _ in range(500)]
    )


def _case(name: str, device: str) -> tuple[nn.Module, torch.optim.Optimizer, Callable[[], torch.Tensor]]:
    torch.manual_seed(0)
    if name.startswith("mlp"):
        model, x = _mlp(), torch.randn(64, 512)
    elif name == "tiny_blocks":
        model, x = _tiny_blocks(), torch.randn(1, 8, 8, 8)
    elif name == "resnet20":
        from smdyn.experiments.models import build_model

        model, x = build_model("resnet20"), torch.randn(64, 3, 32, 32)
    else:
        raise SystemExit(f"unknown case {name!r}")
    model, x = model.to(device), x.to(device)
    if name == "mlp_adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=5e-2)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return model, opt, lambda: model(x).float().square().mean()


def _time_steps(
    opt: torch.optim.Optimizer, loss: Callable[[], torch.Tensor], steps: int, device: str
) -> tuple[float, float]:
    """(time, minor page faults) per step."""

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    sync()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = _CLOCK[0]()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss().backward()
        opt.step()
    sync()
    elapsed = _CLOCK[0]() - t0
    return elapsed / steps, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps


def steady_allocator() -> bool:
    """glibc: serve blocks up to 32 MiB from the heap and never trim it (module docstring). False where
    there is no glibc ``mallopt``."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


# perf_counter (wall) by default; ``--clock cpu`` counts this process's CPU time only, which is what to
# compare on a machine shared with other work (1 thread: the two agree on an idle machine).
_CLOCK: list[Callable[[], float]] = [time.perf_counter]


_VARIANTS = ("bare", "smdyn", "every10", "naive", "req")


def bench(
    name: str, steps: int, rounds: int, device: str
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Step times and page faults per variant, one entry per round."""
    model, opt, loss = _case(name, device)
    probe = SphericalMonitor(model, opt, keep_history=False)
    monitored = [t for u in probe.units for t in u.tensors]
    probe.close()
    _time_steps(opt, loss, 3, device)  # warm-up: buffers, allocator, kernels
    times: dict[str, list[float]] = {v: [] for v in _VARIANTS}
    faults: dict[str, list[float]] = {v: [] for v in _VARIANTS}
    for r in range(rounds):
        for variant in _VARIANTS[r % 5 :] + _VARIANTS[: r % 5]:
            attached: object = None
            if variant in ("smdyn", "every10"):
                every = 1 if variant == "smdyn" else 10
                attached = SphericalMonitor(model, opt, every=every, flush_every=100, keep_history=False)
            elif variant == "naive":
                attached = NaiveMonitor(monitored, opt)
            elif variant == "req":
                attached = ReqStyleLogger(model, opt)
            seconds, per_step = _time_steps(opt, loss, steps, device)
            times[variant].append(seconds)
            faults[variant].append(per_step)
            if attached is not None:
                attached.close()
    return times, faults


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--case", nargs="+", default=["mlp_sgdm", "mlp_adamw", "tiny_blocks", "resnet20"])
    parser.add_argument("--steps", type=int, default=20, help="steps per variant per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--allocator", choices=("steady", "default"), default="steady")
    args = parser.parse_args()
    if args.clock == "cpu":
        _CLOCK[0] = time.process_time
    torch.set_num_threads(args.threads)
    steady = args.allocator == "steady" and steady_allocator()
    print(
        f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, allocator "
        f"{'steady (mallopt)' if steady else 'as glibc leaves it'}"
    )
    for name in args.case:
        times, faults = bench(name, args.steps, args.rounds, args.device)
        base = statistics.median(times["bare"])
        print(
            f"\n{name}: bare {base * 1e3:.2f} ms/step (median of {args.rounds} rounds × {args.steps} steps)"
        )
        for variant, ts in times.items():
            med = statistics.median(ts)
            print(
                f"  {variant:<8} {med * 1e3:9.2f} ms/step  [{min(ts) * 1e3:.2f}–{max(ts) * 1e3:.2f}]  "
                f"overhead {100 * (med / base - 1):+6.1f}%  "
                f"faults/step {statistics.median(faults[variant]):7.1f}"
            )


if __name__ == "__main__":
    main()
