"""Resident memory of SphericalMonitor over 10⁶ recorded rows: flat once the in-memory bound is reached.

A model of ``--weights`` tiny Linear → LayerNorm blocks gives that many rows per recorded step; it trains
for ``rows / weights`` steps with the monitor recording every step. Each configuration runs in its own
process, one after another (resident memory is a per-process figure), and reports the process's resident
set size (RSS) every 10% of the run, relative to its RSS after the first step:

  bounded        default settings (the latest 100,000 rows in memory)
  bounded+csv    default settings with a CSVSink (everything also on disk)
  unbounded      ``history_rows=None`` (the whole history in memory), for comparison

Usage: python benchmarks/memory.py [--rows 1000000] [--weights 100]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _child(config: str, rows: int, weights: int) -> None:
    import torch
    from torch import nn

    from smdyn import SphericalMonitor
    from smdyn.sinks import CSVSink

    torch.set_num_threads(1)
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Linear(4, 4, bias=False), nn.LayerNorm(4)) for _ in range(weights)]
    model = nn.Sequential(*blocks)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    names = [f"{i}.0.weight" for i in range(weights)]
    with tempfile.TemporaryDirectory() as tmp:
        sinks = [CSVSink(os.path.join(tmp, "metrics.csv"))] if config == "bounded+csv" else []
        kwargs = {"history_rows": None} if config == "unbounded" else {}
        mon = SphericalMonitor(model, opt, params=names, sinks=sinks, **kwargs)
        steps = rows // weights
        x = torch.randn(8, 4)
        samples = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for step in range(steps):
                opt.zero_grad()
                model(x + 0.1 * torch.randn(8, 4)).square().mean().backward()
                opt.step()
                if step == 0:
                    base = _rss_mib()
                if (step + 1) % (steps // 10) == 0:
                    samples.append(((step + 1) * weights, _rss_mib() - base))
        mon.close()
    print(json.dumps({"config": config, "samples": samples, "kept": len(mon.history()["step"])}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--weights", type=int, default=100)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.rows, args.weights)
        return
    results = []
    for config in ("bounded", "bounded+csv", "unbounded"):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            config,
            "--rows",
            str(args.rows),
            "--weights",
            str(args.weights),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    rows = [r for r, _ in results[0]["samples"]]
    print(f"RSS growth (MiB) since the first step, {args.weights} weights per step:")
    print(f"{'rows':>10} " + " ".join(f"{r['config']:>12}" for r in results))
    for i, n in enumerate(rows):
        print(f"{n:>10} " + " ".join(f"{r['samples'][i][1]:>12.1f}" for r in results))
    for r in results:
        print(f"{r['config']}: {r['kept']} rows kept in memory at the end")


if __name__ == "__main__":
    main()
