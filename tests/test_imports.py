"""The core (theory, geometry, invariance, monitor, sinks, rescale, plan, simulation) imports with only
torch and numpy; optional packages load only when a feature that needs them is used."""

from __future__ import annotations

import subprocess
import sys

OPTIONAL = [
    "matplotlib",
    "pandas",
    "scipy",
    "rich",
    "mnist1d",
    "sklearn",
    "lightning",
    "pytorch_lightning",
    "transformers",
    "pyarrow",
    "tensorboard",
    "PIL",
    "wandb",
]

SCRIPT = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {OPTIONAL!r}:
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
import smdyn, smdyn.theory, smdyn.geometry, smdyn.invariance, smdyn.monitor, smdyn.sinks
import smdyn.rescale, smdyn.simulation, smdyn.corrected_decay, smdyn.rotation, smdyn.rules
from smdyn import plan, simulate, Rescaler, SphericalMonitor, find_scale_invariant
from smdyn import CorrectedWeightDecay, RotationController
print("ok")
"""


def test_core_imports_without_optional_packages() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_theory_does_not_import_torch() -> None:
    """Loaded with its own helpers only (the package's ``__init__`` imports torch for the monitor): an empty
    ``smdyn`` package stands in, so ``from smdyn import _decorrelation`` finds the file and nothing else."""
    import os

    import smdyn.theory

    folder = os.path.dirname(smdyn.theory.__file__)
    src = (
        "import importlib.util, sys, types; "
        f"pkg = types.ModuleType('smdyn'); pkg.__path__ = [{folder!r}]; sys.modules['smdyn'] = pkg; "
        "import smdyn.theory as mod; "
        "mod.angular_update(0.1, 1e-4); mod.lion_angular_update(1e-4, 1.0); "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
