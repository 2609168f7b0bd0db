"""Spherical Motion Dynamics inside a Lightning ``Trainer``: a learning-rate drop with and without rescaling.

A 3-layer BatchNorm CNN learns the generated ``shapes`` task (10 classes of 16×16 images, a fresh stream, so
nothing is memorised and nothing is downloaded) with ``torch.optim.SGD`` (momentum α, weight decay λ) and a
``MultiStepLR`` that divides η by 10 at step ``DROP``. ``SphericalMonitorCallback`` finds the three
scale-invariant conv weights (those feeding a BatchNorm), records the angular update Δ_t at every optimizer
step and sends a compact set of values to the trainer's logger (a ``CSVLogger`` here). The same run is made
twice from the same seed, with and without ``RescalerCallback``, which multiplies every scale-invariant
weight by 10^(−¼) at the drop (Sec 4.2).

The table compares RMS Δ with the equilibrium Δ* = √(2λη/(1+α)) of Theorem 3, per layer: over the
``WINDOW`` steps before the drop (after several relaxation times (1−α)/(2λη) = 100 steps, RMS Δ/Δ* ≈ 1),
on the first step after it, and over the ``WINDOW`` steps after it. Without rescaling, Δ falls to
k^(−½) = 0.32 of the new Δ* and needs about ln(10)(1−α)/(2λη_new) ≈ 2300 steps to recover (Corollary 3.1);
with rescaling it is at the new equilibrium from the first step.

Run: ``python examples/lightning_example.py`` (needs ``pip install smdyn[lightning]``; no downloads).
Measured on one thread of a shared 2-core CPU (torch 2.13.0, lightning 2.6.6): 16-18 s of training for the
two runs, about 22 s with imports. Seeds 0, 1, 2 (data stream and init), RMS Δ/Δ* per layer: 1.00-1.06 over
steps 500-599; on step 600, 0.30-0.40 without rescaling (k^(−½) = 0.32) and 0.94-1.26 with it (one step's
Δ is noisy); over steps 600-699, 0.30-0.42 without and 0.83-1.02 with. With rescaling the ratio falls below
1 where the unit-gradient norm L falls after the drop (seed 2: (L_after/L_before)^¼ = 0.90-0.96 from the
recorded h̃, ratio 0.83-0.94; seed 0: L unchanged, 0.98-1.02): w* ∝ (Lη)^¼ and the rescale corrects for η
only.
"""

from __future__ import annotations

import csv
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from smdyn.experiments.data import load_data
from smdyn.integrations.lightning import RescalerCallback, SphericalMonitorCallback

# ---------------------------------------------------------------- hyper-parameters (one place)
LR = 0.1  # η before the drop, per batch of BATCH images
WD = 5e-3  # λ on every parameter; (1 − α)/(2λη) = 100 steps to relax
MOMENTUM = 0.9  # α
BATCH = 64
DROP = 600  # η ← η/10 at this optimizer step (6 relaxation times after the start)
WINDOW = 100  # steps over which RMS Δ is taken, before and after the drop
STEPS = DROP + WINDOW
LOG_EVERY = 100  # trainer.log_every_n_steps
SEED = 0


class CNN(pl.LightningModule):
    """Conv(no bias) -> BatchNorm -> ReLU, three times, then a linear head: each conv weight is invariant."""

    def __init__(self) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
            )

        self.features = nn.Sequential(
            block(3, 16),
            nn.MaxPool2d(2),
            block(16, 32),
            nn.MaxPool2d(2),
            block(32, 32),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.log("loss", loss, on_step=True)
        return loss

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
        drop = torch.optim.lr_scheduler.MultiStepLR(opt, [DROP], gamma=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": drop, "interval": "step"}}


class Shapes(torch.utils.data.IterableDataset):
    """An endless stream of generated batches, drawn from one seeded generator (the same in both runs)."""

    def __init__(self) -> None:
        self.source = load_data("shapes", difficulty=0.0, size=16, seed=SEED)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(SEED)
        while True:
            yield self.source.train_batch(BATCH, generator)


def run(rescale: bool, out: Path) -> tuple[dict[str, np.ndarray], list[dict[str, str]], float]:
    """Train once; return the monitor's history, the rows the logger wrote, and the training time."""
    torch.manual_seed(SEED)
    monitor = SphericalMonitorCallback(window=WINDOW)
    callbacks: list[pl.Callback] = [RescalerCallback(), monitor] if rescale else [monitor]
    logger = CSVLogger(out, name="rescale" if rescale else "plain")
    trainer = pl.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        logger=logger,
        log_every_n_steps=LOG_EVERY,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = torch.utils.data.DataLoader(Shapes(), batch_size=None)
    start = time.perf_counter()
    with warnings.catch_warnings():
        for category in (UserWarning, FutureWarning):  # data loader workers; Lightning's use of torch
            warnings.filterwarnings("ignore", category=category, module="lightning")
        trainer.fit(CNN(), loader)
    seconds = time.perf_counter() - start
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as f:
        logged = list(csv.DictReader(f))
    return monitor.monitor.history(), logged, seconds


def at(h: dict[str, np.ndarray], step: int, name: str, column: str) -> float:
    (i,) = np.flatnonzero((h["step"] == step) & (h["param"] == name))
    return float(h[column][i])


def main() -> None:
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no "GPU available: False" lines
    star_before = math.sqrt(2 * LR * WD / (1 + MOMENTUM))  # Theorem 3
    star_after = star_before / math.sqrt(10)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {rescale: run(rescale, Path(tmp)) for rescale in (False, True)}

    print(f"SGD η={LR} -> {LR / 10} at step {DROP}, λ={WD}, α={MOMENTUM}", end="; ")
    print(f"Δ* = {star_before:.4f} -> {star_after:.4f}")
    print("\nLogged by the trainer's CSVLogger (smdyn/median_rms_ratio = median over layers of RMS Δ/Δ*):")
    print(f"{'':>6} {'loss':^18} {'median RMS Δ/Δ*':^18}")
    print(f"{'step':>6} {'no rescale':>10} {'rescale':>7} {'no rescale':>10} {'rescale':>7}")
    plain, rescaled = ([r for r in runs[k][1] if r.get("smdyn/median_rms_ratio")] for k in (False, True))
    for a, b in zip(plain, rescaled, strict=True):
        ratio = "smdyn/median_rms_ratio"
        print(
            f"{a['step']:>6} {float(a['loss']):>10.3f} {float(b['loss']):>7.3f} "
            f"{float(a[ratio]):>10.3f} {float(b[ratio]):>7.3f}"
        )

    print(f"\nPer layer, RMS Δ/Δ* (window of {WINDOW} steps; Δ* of the learning rate in force):")
    head = (
        f"{'weight':<20} {'rescale':>7} {'steps ' + f'{DROP - WINDOW}-{DROP - 1}':>14} "
        f"{'step ' + str(DROP):>10} {'steps ' + f'{DROP}-{STEPS - 1}':>14}"
    )
    print(head)
    h0 = runs[True][0]
    for name in dict.fromkeys(h0["param"].tolist()):
        for rescale in (False, True):
            h = runs[rescale][0]
            before = at(h, DROP - 1, name, "angular_update_rms") / at(
                h, DROP - 1, name, "theory_angular_update"
            )
            first = at(h, DROP, name, "angular_update") / at(h, DROP, name, "theory_angular_update")
            after = at(h, STEPS - 1, name, "angular_update_rms") / at(
                h, STEPS - 1, name, "theory_angular_update"
            )
            print(f"{name:<20} {'yes' if rescale else 'no':>7} {before:>14.3f} {first:>10.3f} {after:>14.3f}")
    seconds = sum(r[2] for r in runs.values())
    print(f"\ntrained 2 × {STEPS} steps in {seconds:.1f} s")


if __name__ == "__main__":
    main()
