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

_KEYS = ("sq", "ang", "ell", "n", "n_ell", "since", "hparams", "lr_peak", "ratio_sq", "n_ratio")
_OPTIONAL = ("lr_peak", "ratio_sq", "n_ratio")  # absent from states saved before they existed: start afresh
RATIO_WEIGHT = 1 / 8  # weight of the newest (Δ/Δ*)² in its moving average (about 8 recorded steps)


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
        self.lr_peak = np.full(rows, np.nan)  # the largest lr so far (a decaying schedule runs below it)
        # (Δ/Δ*)² averaged over the last ~8 steps, each against the Δ* of its own step: unlike the Δ window it
        # needs no restart when the lr moves, so it follows a continuous schedule.
        self.ratio_sq = np.full(rows, np.nan)
        self.n_ratio = np.zeros(rows, dtype=np.int64)

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

    def advance(
        self, hparams: np.ndarray, delta: np.ndarray, ell: np.ndarray, star: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Push ``[steps, rows]`` samples through the buffers; return the per-step trailing statistics.

        NaN samples (a skipped step, a missing gradient) are not pushed: they neither count nor dilute.
        ``star`` (Δ* per step and row) feeds the moving average of (Δ/Δ*)² (``ratio_ema``, ``ratio_count``).
        """
        if star is None:
            star = np.full_like(delta, np.nan)
        nsteps, nrows = delta.shape
        idx = np.arange(nrows)
        names = ("angular_update_rms", "angular_update_mean", "l_estimate")
        out: dict[str, np.ndarray] = {k: np.empty((nsteps, nrows)) for k in names}
        out["count"] = np.empty((nsteps, nrows), dtype=np.int64)
        out["since"] = np.empty((nsteps, nrows), dtype=np.int64)
        out["lr_peak"] = np.empty((nsteps, nrows))
        out["ratio_ema"] = np.empty((nsteps, nrows))
        out["ratio_count"] = np.empty((nsteps, nrows), dtype=np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            for s in range(nsteps):
                self._restart_changed(hparams[s])
                self.lr_peak = np.fmax(self.lr_peak, hparams[s][:, 0])
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
                out["lr_peak"][s] = self.lr_peak
                r2 = (delta[s] / star[s]) ** 2
                ok = np.isfinite(r2)
                fresh = ok & (self.n_ratio == 0)
                self.ratio_sq[fresh] = r2[fresh]
                more = ok & ~fresh
                self.ratio_sq[more] += RATIO_WEIGHT * (r2[more] - self.ratio_sq[more])
                self.n_ratio += ok
                out["ratio_ema"][s] = np.sqrt(self.ratio_sq)
                out["ratio_count"][s] = self.n_ratio
        return out

    def state(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k).copy() for k in _KEYS}

    def load(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state`; a shape that differs (window size, rows) is refused with a clear error."""
        keys = [k for k in _KEYS if k in state or k not in _OPTIONAL]
        for k in keys:
            mine = getattr(self, k)
            value = np.asarray(state[k].numpy() if hasattr(state[k], "numpy") else state[k])
            if value.shape != mine.shape:
                raise ValueError(
                    f"monitor state: window '{k}' has shape {value.shape}, this monitor needs {mine.shape} "
                    "(another window size or granularity)"
                )
        for k in keys:
            v = state[k]
            setattr(self, k, np.array(v.numpy() if hasattr(v, "numpy") else v, dtype=getattr(self, k).dtype))
