"""Training-step overhead of SphericalMonitor, as ratios against bare training in the same process.

Variants, interleaved round by round so drift in machine speed hits them all alike:
  bare            plain SGD-momentum steps
  every=1         SphericalMonitor recording every step (flush every 100)
  every=10        SphericalMonitor recording every 10th step
  naive           what one writes by hand: clone every weight before the step, then float32 ``arccos`` of
                  the normalised dot product and ``.item()`` per parameter after it

Models: CIFAR-style ResNet-18 (11.2M parameters) and ResNet-20 (0.27M), batch 128, 32×32 inputs, 2 CPU threads
by default; ``--device cuda`` runs the same on a GPU and checks that no step synchronises with the host
(``torch.cuda.set_sync_debug_mode("error")`` around monitored steps).

Usage: python benchmarks/overhead.py [--model resnet18 resnet20] [--steps 10] [--rounds 3] [--device cpu]
Reported: median step time per variant and its ratio to bare (ratio − 1 is the overhead).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from smdyn import SphericalMonitor
from smdyn.experiments.models import build_model


class NaiveMonitor:
    """The hand-written monitor smdyn replaces: a snapshot, ``arccos`` and a host sync per parameter."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.params = [p for n, p in model.named_parameters() if p.dim() > 1 and "fc" not in n]
        self.values: list[float] = []
        self._snap: list[torch.Tensor] = []
        self._h = [optimizer.register_step_pre_hook(self._pre), optimizer.register_step_post_hook(self._post)]

    def _pre(self, *_: object) -> None:
        self._snap = [p.detach().clone() for p in self.params]

    def _post(self, *_: object) -> None:
        for p, w in zip(self.params, self._snap, strict=True):
            cos = torch.dot(w.flatten(), p.detach().flatten()) / (w.norm() * p.detach().norm())
            self.values.append(torch.arccos(cos.clamp(-1, 1)).item())

    def close(self) -> None:
        for h in self._h:
            h.remove()


def _time_steps(model, opt, x, y, steps: int, device: str, check_sync: bool = False) -> float:
    loss_fn = nn.CrossEntropyLoss()

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        if check_sync:
            torch.cuda.set_sync_debug_mode("error")
        opt.step()
        if check_sync:
            torch.cuda.set_sync_debug_mode(0)
    sync()
    return (time.perf_counter() - t0) / steps


def bench(name: str, steps: int, rounds: int, device: str, batch: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model(name).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    _time_steps(model, opt, x, y, 2, device)  # warm-up: momentum buffers, allocator, kernels
    times: dict[str, list[float]] = {"bare": [], "every=1": [], "every=10": [], "naive": []}
    order = list(times)
    for r in range(rounds):
        for variant in order[r % 4 :] + order[: r % 4]:  # rotate: no variant always runs first
            mon = None
            if variant.startswith("every"):
                every = int(variant.split("=")[1])
                mon = SphericalMonitor(model, opt, every=every, flush_every=100, keep_history=False)
            elif variant == "naive":
                mon = NaiveMonitor(model, opt)
            check = device == "cuda" and variant.startswith("every")
            times[variant].append(_time_steps(model, opt, x, y, steps, device, check_sync=check))
            if mon is not None:
                mon.close()
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", nargs="+", default=["resnet20", "resnet18_cifar"])
    parser.add_argument("--steps", type=int, default=10, help="steps per variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, device {args.device}, "
        f"threads {torch.get_num_threads()}, batch {args.batch}"
    )
    for name in args.model:
        med = bench(name, args.steps, args.rounds, args.device, args.batch)
        base = med["bare"]
        print(
            f"\n{name}: bare {base * 1e3:.1f} ms/step (median of {args.rounds} rounds × {args.steps} steps)"
        )
        for variant, t in med.items():
            print(
                f"  {variant:<9} {t * 1e3:9.1f} ms/step   ratio {t / base:.4f}   "
                f"overhead {100 * (t / base - 1):+.2f}%"
            )


if __name__ == "__main__":
    main()
