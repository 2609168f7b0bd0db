"""smdyn: Spherical Motion Dynamics for PyTorch.

Measure, predict and act on the angular update of scale-invariant weights trained with SGD(M) and weight
decay (Wan et al., "Spherical Motion Dynamics: Learning Dynamics of Normalized Neural Network using SGD and
Weight Decay", NeurIPS 2021).
"""

from smdyn import geometry, theory
from smdyn.corrected_decay import CorrectedWeightDecay
from smdyn.forecast import Forecast, forecast
from smdyn.invariance import InvariantParam, find_scale_invariant
from smdyn.monitor import SphericalMonitor
from smdyn.plan import PlanResult, plan
from smdyn.rescale import Rescaler
from smdyn.rotation import RotationController
from smdyn.simulation import SimulationResult, simulate

__all__ = [
    "CorrectedWeightDecay",
    "Forecast",
    "InvariantParam",
    "PlanResult",
    "Rescaler",
    "RotationController",
    "SimulationResult",
    "SphericalMonitor",
    "find_scale_invariant",
    "forecast",
    "geometry",
    "plan",
    "simulate",
    "theory",
]
__version__ = "0.1.0"
