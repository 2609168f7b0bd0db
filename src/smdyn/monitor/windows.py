"""Stage 3: trailing windows of Δ and of the unit-gradient samples, one ring buffer per output row.

The Δ window restarts when a row's learning rate or weight decay moves more than ``RESTART`` (5%) from the
value the window began under, when momentum changes, or on a change to or from 0: a continuous schedule then
restarts it every ~5% of decay, not every step. L (the expected unit gradient) is a property of the
gradients and carries on across restarts. The windows survive flushes and ``state_dict`` round trips.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

RESTART = 0.05  # relative change of lr or wd that restarts the Δ window

_KEYS = ("sq", "ang", "ell", "n", "n_ell", "since", "hparams")


class Windows:
    """Ring buffers of Δ, Δ² and L samples for ``rows`` rows of ``size`` recorded steps."""

    def __init__(self, rows: int, size: int) -> None:
        self.size = size
        self.sq = np.full((rows, size), np.nan)  # Δ² since the last hyper-parameter change
        self.ang = np.full((rows, size), np.nan)  # Δ since the last hyper-parameter change
        self.ell = np.full((rows, size), np.nan)  # h̃ (SGDM) or ‖g̃‖² (other rules): L samples
        self.n = np.zeros(rows, dtype=np.int64)
        self.n_ell = np.zeros(rows, dtype=np.int64)
        self.since = np.zeros(rows, dtype=np.int64)  # recorded steps since the last change
        self.hparams = np.full((rows, 3), np.nan)  # (lr, wd, momentum) the window was recorded under

    def _restart_changed(self, hp: np.ndarray) -> None:
        start = self.hparams
        with np.errstate(invalid="ignore"):
            rel = np.abs(hp - start) > RESTART * np.abs(start)
        changed = rel[:, 0] | rel[:, 1] | (hp[:, 2] != start[:, 2]) | np.isnan(start).any(axis=1)
        if changed.any():
            self.sq[changed] = np.nan
            self.ang[changed] = np.nan
            self.n[changed] = 0
            self.since[changed] = 0
            self.hparams[changed] = hp[changed]

    def advance(self, hparams: np.ndarray, delta: np.ndarray, ell: np.ndarray) -> dict[str, np.ndarray]:
        """Push ``[steps, rows]`` samples through the buffers; return the per-step trailing statistics.

        NaN samples (a skipped step, a missing gradient) are not pushed: they neither count nor dilute.
        """
        nsteps, nrows = delta.shape
        idx = np.arange(nrows)
        names = ("angular_update_rms", "angular_update_mean", "l_estimate")
        out: dict[str, np.ndarray] = {k: np.empty((nsteps, nrows)) for k in names}
        out["count"] = np.empty((nsteps, nrows), dtype=np.int64)
        out["since"] = np.empty((nsteps, nrows), dtype=np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            for s in range(nsteps):
                self._restart_changed(hparams[s])
                for ring, count, x in ((self.ang, "n", delta[s]), (self.ell, "n_ell", ell[s])):
                    ok = np.isfinite(x)
                    n = getattr(self, count)
                    slot = n[ok] % self.size
                    ring[idx[ok], slot] = x[ok]
                    if ring is self.ang:
                        self.sq[idx[ok], slot] = x[ok] ** 2
                    n += ok
                self.since += 1
                n = np.minimum(self.n, self.size)
                out["angular_update_rms"][s] = np.sqrt(np.nansum(self.sq, axis=1) / n)
                out["angular_update_mean"][s] = np.nansum(self.ang, axis=1) / n
                out["l_estimate"][s] = np.nansum(self.ell, axis=1) / np.minimum(self.n_ell, self.size)
                out["count"][s] = n
                out["since"][s] = self.since
        return out

    def state(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k).copy() for k in _KEYS}

    def load(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state`; a shape that differs (window size, rows) is refused with a clear error."""
        for k in _KEYS:
            mine = getattr(self, k)
            value = np.asarray(state[k].numpy() if hasattr(state[k], "numpy") else state[k])
            if value.shape != mine.shape:
                raise ValueError(
                    f"monitor state: window '{k}' has shape {value.shape}, this monitor needs {mine.shape} "
                    "(another window size or granularity)"
                )
        for k in _KEYS:
            v = state[k]
            setattr(self, k, np.array(v.numpy() if hasattr(v, "numpy") else v, dtype=getattr(self, k).dtype))
