"""The plain-PyTorch example runs as a user would run it and reaches the equilibrium its header promises.

The expected values are the theory's, not the code's: Δ* = √(2λη/(1+α)) (Thm 3) is recomputed here from the
example's hyper-parameters, and in equilibrium RMS Δ/Δ* → 1 and ‖w‖/w* → 1 (Thms 2-3). Over seeds 0-5 the
example measured 0.983-1.009 and 0.995-1.004; the bands below are ±10% (the monitor's own default tolerance)
and ±5%, wide enough for another seed or BLAS, narrow enough that a wrong Δ* (a missing 1+α is a factor 1.38),
a lagging norm or an angle from arccos fails.
"""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plain_pytorch.py"
LR, WD, MOMENTUM = 0.1, 5e-3, 0.9  # as in the example
ROW = re.compile(r"^(\S+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s+(\S+)$")


@pytest.mark.slow
def test_plain_pytorch_example_reaches_equilibrium() -> None:
    done = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    source = EXAMPLE.read_text()
    assert "LR, WD, MOMENTUM, STEPS, WINDOW, BATCH, DIM, CLASSES = 0.1, 5e-3, 0.9," in source

    rows = [m.groups() for line in done.stdout.splitlines() if (m := ROW.match(line.strip()))]
    names = [r[0] for r in rows]
    assert names == ["0.weight+0.bias", "3.weight+3.bias", "6.weight+6.bias"], done.stdout
    star = math.sqrt(2 * LR * WD / (1 + MOMENTUM))
    for name, delta_star, rms_ratio, norm_ratio, reason in rows:
        assert float(delta_star) == pytest.approx(star, rel=1e-3), name
        assert 0.9 <= float(rms_ratio) <= 1.1, f"{name}: RMS Δ/Δ* = {rms_ratio}"
        assert 0.95 <= float(norm_ratio) <= 1.05, f"{name}: ‖w‖/w* = {norm_ratio}"
        assert reason == "-", f"{name}: reason_code {reason}"
