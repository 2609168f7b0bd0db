"""The ``smdyn`` command line, and the README's promise of exactly two set-up commands."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from smdyn.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_theory_prints_closed_forms(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["theory", "--lr", "0.1", "--wd", "1e-4", "--momentum", "0.9", "--drop", "10"]) == 0
    out = capsys.readouterr().out
    delta = float(re.search(r"Δ\* = √\(2λη/\(1\+α\)\).*?([0-9.e-]+)\s*$", out, re.M).group(1))
    assert delta == pytest.approx(math.sqrt(2 * 0.1 * 1e-4 / 1.9), rel=1e-5)
    lag = float(re.search(r"steps to the new equilibrium.*?([0-9.e+]+)\s*$", out, re.M).group(1))
    assert lag == math.ceil(math.log(10) * 0.1 / (2 * 1e-4 * 0.01))
    assert "0.562341" in out  # 10 ** -0.25


def test_theory_rejects_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["theory", "--lr", "0.1", "--wd", "-1"]) == 2
    assert "wd" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["theory", "--lr", "-0.1", "--wd", "1e-4"])


@pytest.mark.slow
def test_simulate_quick_writes_a_report(tmp_path: Path) -> None:
    assert main(["simulate", "--quick", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "simulation_report.md").read_text()
    assert "Thm 3" in text
    assert len(list(tmp_path.glob("*.png"))) >= 3


def test_module_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "smdyn", "theory", "--lr", "0.2", "--wd", "5e-4"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "0.01414" in result.stdout  # sqrt(2 * 0.2 * 5e-4)


def test_readme_opens_with_the_two_setup_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.+?)\n```", readme)
    assert len(commands) >= 2
    demo, tests = commands[:2]
    assert demo.startswith("python3 -m venv .venv") and demo.endswith("smdyn demo")
    assert tests.startswith("python3 -m venv .venv") and tests.endswith("/pytest")
    assert "torch==2.13.0" in demo and "torch==2.13.0" in tests
    assert readme.index(demo) < readme.index("## ")  # before any section: the README's first lines
    ci = (ROOT / ".ci" / "run").read_text()
    pattern = re.search(r"grep -m1 -E '(.+)' README.md", ci).group(1)
    assert re.search(pattern, tests) and not re.search(pattern, demo)
