"""SphericalMonitor: per-layer angular update, weight norm and unit gradient of scale-invariant weights.

The monitor attaches to any ``torch.optim`` optimizer through ``register_step_pre_hook`` /
``register_step_post_hook`` and records, for every monitored weight and recorded step, the quantities of
Wan et al., "Spherical Motion Dynamics" (NeurIPS 2021): weight norm (Thm 1), unit-gradient norm ‖g̃‖²
(Def 2, Eq 6), h̃ (Thm 2), angular update Δ (Def 3, Eq 13) and their theoretical equilibrium values.

Stages, one module each: ``measure`` (device reductions, no host sync) → ``metrics`` (host float64 math)
→ ``windows`` (trailing ring buffers) → ``verdict`` (theory and reasons) → ``records`` (the rows), with
``distributed`` summing shards across ranks and ``history`` holding a bounded number of rows in memory.
Angles come from the tangential and radial parts of the step (docs/design.md §2), never from ``arccos``.
"""

from smdyn.monitor.columns import COLLAPSE, COLUMNS, HPARAMS, METRICS, REASONS, THEORY, WINDOWED
from smdyn.monitor.core import SphericalMonitor

__all__ = ["COLLAPSE", "COLUMNS", "HPARAMS", "METRICS", "REASONS", "THEORY", "WINDOWED", "SphericalMonitor"]
