"""The monitor's record format: column names and reason codes, defined once and imported everywhere."""

from __future__ import annotations

__all__ = [
    "COLLAPSE",
    "COLUMNS",
    "HPARAMS",
    "METRICS",
    "OUT_OF_EQUILIBRIUM",
    "REASONS",
    "THEORY",
    "WINDOWED",
]

#: Hyper-parameters of the step, as the rule reads them from the param group.
HPARAMS = ("lr", "wd", "momentum")
#: Measured per-row quantities, computed on the host from the device reductions (see ``metrics``).
METRICS = (
    "weight_norm",
    "unit_grad_sq",
    "h_tilde",
    "angular_update",
    "effective_lr",
    "grad_cosine",
    "unmoved_fraction",
    "grad_to_weight_ratio",
)
#: Trailing-window statistics (see ``windows``).
WINDOWED = ("angular_update_rms", "angular_update_mean", "l_estimate")
#: Theoretical values, where the rule's theory applies to the step (see ``verdict``).
THEORY = ("theory_angular_update", "theory_weight_norm", "theory_grad_to_weight_ratio")

#: Columns of ``SphericalMonitor.history()`` and of every sink batch, in order.
COLUMNS = (
    "step",
    "param",
    "channel",
    *HPARAMS,
    *METRICS,
    *WINDOWED,
    *THEORY,
    "in_equilibrium",
    "reason_code",
    "reason",
)

#: The ``reason_code`` of a row whose unit gradient is collapsing (the one verdict experiments look for).
COLLAPSE = "collapse"
#: Codes that keep the theory columns: the theory applies, the weight is just not at its equilibrium.
OUT_OF_EQUILIBRIUM = ("collapse", "rotation_excess", "schedule_lag")

#: ``reason_code`` → the ``reason`` prose, in order of precedence (the first that applies is recorded).
#: Codes up to ``nonfinite_grad`` make the measured numbers NaN; the later ones keep the measurements (Δ alone
#: is NaN for ``radial_step``) and only withhold the theory (``OUT_OF_EQUILIBRIUM`` codes keep the theory too:
#: the comparison fails). ``not_measured`` and ``internal`` are whole rows the monitor could not measure or
#: compute: every number NaN.
REASONS = {
    "frozen": "frozen parameter (requires_grad=False)",
    "not_in_optimizer": "parameter is not in the optimizer's param groups",
    "no_grad": "no gradient this step (p.grad is None)",
    "turned_after_step": (
        "a RotationController with hook=False turns this weight after step() returns, after the monitor's "
        "hooks: the step applied is not seen (use hook=True)"
    ),
    "skipped": "step skipped by the gradient scaler (non-finite gradients): the weights did not move",
    "nonfinite_weight": "non-finite weight",
    "zero_norm": "zero-norm weight: direction undefined",
    "nonfinite_grad": "non-finite gradient or update",
    "radial_step": (
        "the step is almost all along the weight (is it scale-invariant?): its tangential part is below what "
        "the Gram matrix of (w, g, v) resolves, so Δ is not given"
    ),
    "norm_frozen": (
        "its normalization uses running statistics (eval mode): the weight is not scale-invariant this step"
    ),
    "mixed_groups": (
        "the unit's tensors (a weight and its bias) are in param groups with different lr, weight decay, "
        "momentum or rule: there is no one equilibrium to compare with"
    ),
    "below_resolution": (
        "most elements did not move: the step is below the resolution of the weight's floating-point format"
    ),
    "no_theory": "no equilibrium theory for this update rule",  # the rule's own note replaces this prose
    "bad_hparams": "lr, weight decay or momentum outside the theory's range (lr > 0, 0 <= momentum < 1)",
    "no_decay": "weight decay is 0: no equilibrium (the norm grows without bound)",
    "collapse": (
        "RMS Δ/Δ* far below 1 long after the last hyper-parameter change: the unit gradient is collapsing "
        "(memorised data?), so the equilibrium theory does not apply"
    ),
    "rotation_excess": (
        "RMS Δ/Δ* far above 1 early in training: the norm has not yet grown to its equilibrium, so the "
        "weight rotates faster than the rule's steady state (what warm-up is for; Kosson et al. 2024)"
    ),
    "schedule_lag": (
        "RMS Δ/Δ* far below 1 while the lr is below its peak: the norm lags the decaying schedule, so "
        "‖g‖/‖w‖ rises (Defazio et al. 2025)"
    ),
    "not_measured": "smdyn could not measure this step (the step itself ran untouched; see the warning)",
    "internal": "smdyn could not compute this row (an internal error; see the warning)",
}

#: Codes whose rows carry no valid measurement of the step (Δ and the gradient terms are NaN).
MEASUREMENT_LOST = (
    "frozen",
    "not_in_optimizer",
    "no_grad",
    "turned_after_step",
    "skipped",
    "nonfinite_weight",
    "zero_norm",
    "nonfinite_grad",
    "not_measured",
    "internal",
)
