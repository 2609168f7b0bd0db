"""``smdyn demo``: watch a BatchNorm network reach Spherical Motion Dynamics equilibrium in about a minute.

A 1-D BatchNorm CNN is trained with SGD-momentum and weight decay on mnist1d (Greydanus 2020), generated
locally (never downloaded), with :class:`smdyn.SphericalMonitor` attached. 48 000 training samples are
enough that the network does not memorise them in the run, so the unit gradient stays away from zero, which
is what the equilibrium theorems need. At the end it prints, per scale-invariant layer, the RMS angular
update over the last 200 steps against Δ* = √(2λη/(1+α)) (Thm 3) and the weight norm against w* (Thm 2).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from smdyn import SphericalMonitor
from smdyn.sinks import CSVSink


@dataclass(frozen=True)
class DemoConfig:
    """Hyper-parameters of the demo run (units in comments)."""

    steps: int = 6000  # optimizer steps
    batch_size: int = 128  # examples per step
    lr: float = 0.1  # η
    momentum: float = 0.9  # α
    weight_decay: float = 5e-4  # λ, coupled as in torch.optim.SGD (Eq 10)
    num_samples: int = 60_000  # mnist1d samples generated; 80% train, 20% test
    seed: int = 0
    window: int = 200  # steps in the RMS / L windows (the paper's Fig 3 averages 200 steps)


def mnist1d_arrays(num_samples: int, seed: int) -> dict[str, np.ndarray]:
    """Generate mnist1d with its own procedural generator (``make_dataset``; its downloader is never used)."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the demo needs mnist1d: pip install 'smdyn[experiments]'") from exc
    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    data = make_dataset(args)
    return {k: np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test")}


def _default_out() -> Path:
    return Path("runs") / f"demo-{datetime.now():%Y%m%d-%H%M%S}"


def _write_config(path: Path, cfg: DemoConfig) -> None:
    lines = ["# smdyn demo run", "[demo]"]
    lines += [f"{k} = {v!r}" for k, v in asdict(cfg).items()]
    path.write_text("\n".join(lines) + "\n")


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return acc


def print_table(rows: list[dict], title: str) -> None:
    """Per-layer equilibrium table: RMS and mean Δ over Δ*, and ‖w‖ over w*."""
    header = ("layer", "RMS Δ/Δ*", "mean Δ/Δ*", "‖w‖/w*", "Δ*", "equilibrium", "note")
    body = []
    for r in rows:
        star, norm_star = r["theory_angular_update"], r["theory_weight_norm"]
        body.append(
            (
                str(r["param"]),
                f"{r['angular_update_rms'] / star:.3f}" if star > 0 else "-",
                f"{r['angular_update_mean'] / star:.3f}" if star > 0 else "-",
                f"{r['weight_norm'] / norm_star:.3f}" if norm_star > 0 else "-",
                f"{star:.3g}",
                "yes" if r["in_equilibrium"] else "no",
                str(r["reason"])[:60],
            )
        )
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
        print(title)
        for line in (header, *body):
            print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))
        return
    table = Table(title=title)
    for h in header:
        table.add_column(h, justify="left" if h in ("layer", "note") else "right")
    for b in body:
        table.add_row(*b)
    Console().print(table)


def run_demo(steps: int = 6000, out: str | Path | None = None, seed: int = 0, threads: int = 2) -> Path:
    """Train, monitor, write ``config.toml`` and ``metrics.csv`` under ``out`` and print the table."""
    from smdyn.experiments.models import cnn1d

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    cfg = DemoConfig(steps=steps, seed=seed)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    run_dir = Path(out) if out is not None else _default_out()
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_config(run_dir / "config.toml", cfg)

    t0 = time.perf_counter()
    data = mnist1d_arrays(cfg.num_samples, seed)
    x = torch.tensor(data["x"], dtype=torch.float32)
    y = torch.tensor(data["y"], dtype=torch.long)
    x_test = torch.tensor(data["x_test"], dtype=torch.float32)
    y_test = torch.tensor(data["y_test"], dtype=torch.long)
    print(
        f"mnist1d: {len(x)} train / {len(x_test)} test samples generated in {time.perf_counter() - t0:.1f} s"
    )

    model = cnn1d(num_classes=10, length=x.shape[1])
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    mon = SphericalMonitor(model, opt, sinks=[CSVSink(run_dir / "metrics.csv")], window=cfg.window)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    with mon:
        for step in range(cfg.steps):
            idx = torch.randint(len(x), (cfg.batch_size,), generator=gen)
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step == 0:
                names = ", ".join(u.name for u in mon.units)
                print(f"monitoring {len(mon.units)} scale-invariant weights: {names}")
            if (step + 1) % max(cfg.steps // 10, 1) == 0 or step + 1 == cfg.steps:
                elapsed = time.perf_counter() - t0
                print(f"step {step + 1:>6}/{cfg.steps}  loss {loss.item():.3f}  {elapsed:6.1f} s")
        rows = mon.summary()
    acc = _evaluate(model, x_test, y_test)
    print(f"test accuracy {acc:.3f}; trained in {time.perf_counter() - t0:.1f} s")
    print_table(
        rows,
        f"Spherical Motion Dynamics after {cfg.steps} steps (λ={cfg.weight_decay}, "
        f"η={cfg.lr}, α={cfg.momentum})",
    )
    print(f"wrote {run_dir}/config.toml and {run_dir}/metrics.csv")
    return run_dir
