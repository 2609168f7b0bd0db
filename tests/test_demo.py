"""``smdyn demo`` end to end, shortened: the run directory, the report and the printed table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smdyn.cli import main

pytestmark = pytest.mark.slow


def test_demo_writes_run_report_and_prints_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--steps", "300", "--out", str(out), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    for name in ("config.toml", "metrics.csv", "train.csv", "summary.json", "report.html"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["steps"] == 300
    layers = summary["layers"]
    assert set(layers) == {"conv1.weight", "conv2.weight", "conv3.weight"}
    for name, v in layers.items():
        assert name in printed
        assert 0.3 < v["angular_update_rms_ratio"] < 3  # Δ is of the order of Δ* already after 300 steps
    assert f"report: {out / 'report.html'}" in printed
