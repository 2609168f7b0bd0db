"""Tests for smdyn.experiments.simulation_report: the quick report and the small functions behind it."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from smdyn.experiments import simulation_report as report

_PNG = b"\x89PNG\r\n\x1a\n"


def _section_rows(text: str, heading: str) -> list[list[str]]:
    """Cells of the markdown table that follows ``heading`` (header and separator dropped)."""
    part = text.split(heading, 1)[1]
    rows = []
    for line in part.splitlines():
        if line.startswith("## ") and rows:
            break
        if line.startswith("| ") and not line.startswith("|---"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows[1:]


@pytest.mark.slow
def test_quick_report(quick_simulation: dict) -> None:
    """`write_simulation_report(quick=True)` through ``smdyn simulate --quick`` (the session's one run)."""
    out, path = quick_simulation["out"], quick_simulation["path"]
    assert quick_simulation["rc"] == 0
    text = path.read_text(encoding="utf-8")
    for name in ("equilibrium.png", "contraction.png", "lr_drop.png", "thm3_bias.png", "engines.png"):
        data = (out / name).read_bytes()
        assert data.startswith(_PNG) and len(data) > 10_000, name
        assert f"({name})" in text
    *lines, last = quick_simulation["stdout"].splitlines()
    assert lines and all(re.match(r"\[\s*[\d.]+ s\] ", line) for line in lines)  # progress, then where
    assert last == f"wrote {path} and its figures in {out}"

    # Section 1: every row has numbers; where a theorem's assumptions hold RMS Δ/Δ* is within 2% of 1
    rows = _section_rows(text, "## 1.")
    assert len(rows) == 6
    for row in rows:
        lr, wd, lr_wd, alpha, d_star, rms, mean, norm = (float(c) for c in row[:8])
        assert lr * wd == pytest.approx(lr_wd, rel=1e-6)
        assert d_star == pytest.approx(math.sqrt(2 * lr_wd / (1 + alpha)), rel=1e-2)
        assert 0.8 < mean <= rms
        assert norm == pytest.approx(1.0, abs=0.02)
        if row[-1].startswith("Thm"):
            assert rms == pytest.approx(1.0, abs=0.02)
    # Section 2: measured contraction within 10% of the linearised rate, faster than the bound
    for row in _section_rows(text, "## 2."):
        assert float(row[5]) == pytest.approx(1.0, abs=0.1)
        assert float(row[6]) > 1.0
    # Section 4: 3 drops x 2 momenta x (no rescaling + 3 buffer choices); just after a plain drop
    # Δ/Δ*_new ≈ k^-½, and with the rescaling and the split buffer Δ stays within 7% of Δ*_new (λη = 0.1
    # before the drop by 100 in the quick plan, where the first-order rule is a few % off)
    rows = _section_rows(text, "## 4.")
    assert len(rows) == 24
    for row in rows:
        if row[2] == "none":
            assert float(row[5]) == pytest.approx(int(row[1]) ** -0.5, rel=0.03)
        if row[2] == "split":
            assert 0.93 < float(row[6]) <= float(row[7]) < 1.07
    assert "## Findings" in text and "Disagreement" in text


def test_regime_labels() -> None:
    assert report._regime(1e-4, 0.0, floor=0.134) == "Thm 1"
    assert report._regime(1e-4, 0.0, floor=0.0) == "gen. (A4)"
    assert report._regime(0.05, 0.0, floor=1.0) == "gen. (A1)"
    # Thm 2: α ∈ (½, 1), λη < (1−√α)² = 2.6e-3 at α = 0.9, and assumption 8's floor
    assert report._regime(1e-5, 0.9, floor=1.0) == "Thm 2"
    assert report._regime(1e-5, 0.5, floor=1.0) == "gen. (α)"
    assert report._regime(3e-3, 0.9, floor=1.0) == "gen. (A5, A8)"
    # assumption 8 at λη = 1e-4, α = 0.9: l > 2(6e-4/(1.9e-3 − 8e-5))² ≈ 0.217
    assert report._regime(1e-4, 0.9, floor=0.25) == "Thm 2"
    assert report._regime(1e-4, 0.9, floor=0.2) == "gen. (A8)"


def test_fit_decay_recovers_factor() -> None:
    t = np.arange(5000)
    plain = 0.5 * 0.997**t
    factor, start, _ = report._fit_decay(plain, 1e-2, 1e-6)
    assert factor == pytest.approx(0.997, rel=1e-10)
    assert plain[start] <= 1e-2 < plain[start - 1]
    # an oscillating decay (a complex pair of modulus √0.99 per step): its envelope decays by 0.99
    wave = 0.99**t * np.cos(0.3 * t) ** 2
    factor, _, _ = report._fit_decay(wave, 1e-1, 1e-12)
    assert factor == pytest.approx(0.99, abs=2e-4)


def test_lag_definition() -> None:
    ratio = np.r_[np.linspace(0.3, 0.98, 50), np.full(10, 1.02), np.full(40, 0.999)]
    assert report._lag(ratio, 0.05) == 47  # inside 5% from index 47 on (0.958...)
    assert report._lag(ratio, 0.01) == 60
    assert math.isnan(report._lag(ratio, 0.0001))
    assert report._lag(np.ones(5), 0.01) == 0


def test_mean_sqrt_ratio() -> None:
    """E√(G/L) by numerical integration against the closed forms used in section 5."""
    rng = np.random.default_rng(0)
    g = rng.gamma(4.0, 0.25, size=2_000_000)
    assert report._mean_sqrt_ratio("gamma", 0.25) == pytest.approx(np.mean(np.sqrt(g)), abs=1e-3)
    u = rng.uniform(1 - math.sqrt(0.9), 1 + math.sqrt(0.9), size=2_000_000)
    assert report._mean_sqrt_ratio("uniform", 0.3) == pytest.approx(np.mean(np.sqrt(u)), abs=1e-3)
