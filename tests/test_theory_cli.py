"""``smdyn theory --optimizer``: each rule's values, checked against closed forms written here."""

from __future__ import annotations

import math
import re

import pytest

from smdyn.cli import main


def _values(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, float]:
    assert main(["theory", *argv]) == 0
    out = capsys.readouterr().out
    found = re.findall(r"^  (.+?)\s{2,}(\S+)", out, flags=re.M)
    return {name.strip(): float(v) for name, v in found if re.match(r"^[-+0-9.eainf]+$", v)}


def test_sgd_momentum_values_are_the_papers(capsys: pytest.CaptureFixture[str]) -> None:
    v = _values(capsys, "--optimizer", "sgd", "--lr", "0.1", "--wd", "1e-4", "--momentum", "0.9", "--L", "2")
    assert v["equilibrium angular update Δ*"] == pytest.approx(math.sqrt(2 * 0.1 * 1e-4 / 1.9), rel=1e-5)
    # Thm 2's exact fixed point: (w*)⁴ = Lη/(λ(1−α)(2 − λη/(1+α)))
    w4 = 2 * 0.1 / (1e-4 * 0.1 * (2 - 1e-5 / 1.9))
    assert v["equilibrium weight norm w*"] == pytest.approx(w4**0.25, rel=1e-5)
    assert v["steady-state ‖g‖/‖w‖"] == pytest.approx(math.sqrt(2 * 1e-4 * 0.1 / 0.1), rel=1e-5)
    assert v["relaxation time of the norm"] == pytest.approx(0.1 / (2 * 0.1 * 1e-4), rel=1e-5)
    assert v["norm exponent p (w* ∝ η^p at fixed λ)"] == 0.25


def test_adamw_values_are_kossons(capsys: pytest.CaptureFixture[str]) -> None:
    v = _values(
        capsys,
        "--optimizer",
        "adamw",
        "--lr",
        "1e-3",
        "--wd",
        "0.1",
        "--momentum",
        "0.9",
        "--shape",
        "64",
        "32",
    )
    assert v["equilibrium angular update Δ*"] == pytest.approx(math.sqrt(2 * 1e-4 * 0.1 / 1.9), rel=1e-5)
    assert v["equilibrium weight norm w*"] == pytest.approx(math.sqrt(1e-3 * 2048 / 0.2), rel=1e-5)
    assert v["norm exponent p (w* ∝ η^p at fixed λ)"] == 0.5


def test_lion_and_muon_print_their_rules(capsys: pytest.CaptureFixture[str]) -> None:
    lion = _values(
        capsys, "--optimizer", "lion", "--lr", "1e-4", "--wd", "1.0", "--momentum", "0.9", "--beta2", "0.99"
    )
    # sign(·) steps have ‖u‖² = C and a decorrelation R ≥ 1: Δ* ≤ √(2ηλ), ‖w*‖ = √(ηCR/(2λ))·... ≥ √(ηC/(2λ))
    assert 0 < lion["equilibrium angular update Δ*"] < math.sqrt(2 * 1e-4)
    muon = _values(
        capsys,
        "--optimizer",
        "muon",
        "--lr",
        "0.02",
        "--wd",
        "0.01",
        "--momentum",
        "0.95",
        "--shape",
        "32",
        "32",
    )
    # Δ* = √(2ηλ/R) with R ≈ 24 at 32×32 (μ = 0.95, Nesterov), measured against torch.optim.Muon
    assert muon["equilibrium angular update Δ*"] == pytest.approx(math.sqrt(2 * 0.02 * 0.01 / 24.0), rel=0.05)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--optimizer", "muon", "--lr", "0.02", "--wd", "0.01", "--shape", "10"], "--shape"),
        (["--optimizer", "adamw", "--lr", "0.02", "--wd", "0", "--momentum", "0.9"], "--wd"),
        (["--optimizer", "adamw", "--lr", "0.02", "--wd", "0.1", "--momentum", "1.5"], "--momentum"),
        (["--optimizer", "nesterov", "--lr", "0.02", "--wd", "0.1"], "--momentum"),
    ],
)
def test_bad_input_exits_2_naming_the_argument(
    capsys: pytest.CaptureFixture[str], argv: list[str], named: str
) -> None:
    assert main(["theory", *argv]) == 2
    assert named in capsys.readouterr().err


def test_an_unknown_optimizer_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["theory", "--optimizer", "sgdx", "--lr", "0.1", "--wd", "0.1"])
    assert exc.value.code == 2
    assert "--optimizer" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("optimizer", "star"),
    [
        # Kosson et al.: √(2ηλ(1−β₁)/(1+β₁)) at torch's β₁ = 0.9
        ("adamw", math.sqrt(2 * 1e-3 * 0.1 * 0.1 / 1.9)),
        ("radam", math.sqrt(2 * 1e-3 * 0.1 * 0.1 / 1.9)),
    ],
)
def test_unset_momentum_is_the_optimizers_own_not_zero(capsys, optimizer: str, star: float) -> None:
    """β₁ = 0 read 4.4× high for AdamW: an option the user did not give takes the optimizer's default."""
    v = _values(capsys, "--optimizer", optimizer, "--lr", "1e-3", "--wd", "0.1")
    assert v["equilibrium angular update Δ*"] == pytest.approx(star, rel=1e-3)
