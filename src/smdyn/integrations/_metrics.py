"""The compact set of monitor values that the framework callbacks log (framework-free)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

#: Per-weight values logged as ``<key>/<param>``.
LOGGED = ("angular_update", "angular_update_rms", "theory_angular_update", "weight_norm")


def compact_metrics(rows: Sequence[Mapping[str, Any]], tag: Callable[[str], str] = str) -> dict[str, float]:
    """Logged values from the latest record of each monitored row (``SphericalMonitor.summary()``).

    Per weight: ``<key>/<tag(param)>`` for each key of :data:`LOGGED` (the median over a weight's channels
    with ``granularity="channel"``; non-finite values left out). Over the weights with a theory:
    ``smdyn/median_rms_ratio`` (median RMS Δ/Δ*) and ``smdyn/fraction_in_equilibrium``.
    """
    if not rows:
        return {}
    col = {k: np.asarray([r[k] for r in rows], dtype=np.float64) for k in (*LOGGED, "in_equilibrium")}
    names = np.asarray([r["param"] for r in rows], dtype=object)
    out: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN medians of weights without a theory
        for name in dict.fromkeys(names.tolist()):
            sel = names == name
            for key in LOGGED:
                value = float(np.nanmedian(col[key][sel]))
                if math.isfinite(value):
                    out[f"{key}/{tag(name)}"] = value
        star, rms = col["theory_angular_update"], col["angular_update_rms"]
        has_theory = np.isfinite(star) & (star > 0)
        if has_theory.any():
            ratio = rms[has_theory] / star[has_theory]
            ratio = ratio[np.isfinite(ratio)]
            if ratio.size:
                out["smdyn/median_rms_ratio"] = float(np.median(ratio))
            out["smdyn/fraction_in_equilibrium"] = float(col["in_equilibrium"][has_theory].mean())
    return out
