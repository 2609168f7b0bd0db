"""Spherical Motion Dynamics in a plain PyTorch loop: a LayerNorm MLP settles at Δ* = √(2λη/(1+α)).

Each hidden ``Linear`` (weight and bias together) feeds a LayerNorm, so it is scale-invariant, and SGD with
momentum α and weight decay λ drives it to the equilibrium of Wan et al. (NeurIPS 2021): RMS angular update
Δ* = √(2λη/(1+α)) per step (Thm 3) and norm w* with (w*)⁴ = Lη/(λ(1−α)(2 − λη/(1+α))) (Thm 2). The data are
drawn afresh every step (inputs x ~ N(0, I), labels sampled from a fixed random teacher's softmax), so
nothing can be memorised and the unit gradient L stays away from 0, as the theorems need. The norm relaxes
in (1−α)/(2λη) = 100 steps; after 1500 steps the table compares, per layer and over the last 200 steps, the
RMS of Δ with Δ* and ‖w‖ with w* (w* from the monitor's estimate of L over the same window).

Run: ``python examples/plain_pytorch.py`` (no downloads). Measured on one thread of a shared 2-core CPU
(torch 2.13.0): 4-8 s of training, 10-15 s with imports. Seed 0 prints RMS Δ/Δ* = 1.009 / 0.988 / 0.984 and
‖w‖/w* = 1.004 / 1.001 / 0.998 for the three hidden layers (Δ* = 0.02294); over seeds 0-5 the ratios lie in
0.983-1.009 and 0.995-1.004. The classifier ``9.weight`` feeds no norm, so it is not monitored.
"""

import time

import numpy as np
import torch
from torch import nn

import smdyn

LR, WD, MOMENTUM, STEPS, WINDOW, BATCH, DIM, CLASSES = 0.1, 5e-3, 0.9, 1500, 200, 128, 32, 10
torch.set_num_threads(1)  # a model this small runs fastest on one thread
torch.manual_seed(0)
teacher = torch.randn(DIM, CLASSES) * 3 / DIM**0.5  # labels ~ softmax(x @ teacher): irreducible noise
model = nn.Sequential(
    nn.Linear(DIM, 128), nn.LayerNorm(128), nn.ReLU(),
    nn.Linear(128, 128), nn.LayerNorm(128), nn.ReLU(),
    nn.Linear(128, 128), nn.LayerNorm(128), nn.ReLU(),
    nn.Linear(128, CLASSES),
)  # fmt: skip
opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
start = time.perf_counter()
with smdyn.SphericalMonitor(model, opt, window=WINDOW) as mon:  # params="auto": finds the LayerNorm inputs
    for _ in range(STEPS):
        x = torch.randn(BATCH, DIM)
        y = torch.multinomial(torch.softmax(x @ teacher, dim=1), 1).squeeze(1)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
rows = mon.history()
last = rows["step"] > rows["step"].max() - WINDOW  # the last WINDOW recorded steps
print(f"{STEPS} steps in {time.perf_counter() - start:.1f} s, final loss {loss.item():.3f}")
print(f"{'layer':<16} {'Δ*':>8} {'RMS Δ/Δ*':>9} {'‖w‖/w*':>8}  reason")
for row in mon.summary():
    sel = last & (rows["param"] == row["param"])
    w_sq, star_sq = rows["weight_norm"][sel] ** 2, rows["theory_weight_norm"][sel] ** 2
    rms_ratio = row["angular_update_rms"] / row["theory_angular_update"]
    norm_ratio = np.sqrt(w_sq.mean() / star_sq.mean())
    print(f"{row['param']:<16} {row['theory_angular_update']:8.5f} {rms_ratio:9.3f} {norm_ratio:8.3f}  "
          f"{row['reason_code'] or '-'}")  # fmt: skip
