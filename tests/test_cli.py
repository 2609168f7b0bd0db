"""The ``smdyn`` command line, and the README's promise of exactly two set-up commands."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from smdyn import cli
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
def test_simulate_quick_writes_a_report(quick_simulation: dict) -> None:
    assert quick_simulation["rc"] == 0
    assert "Thm 3" in quick_simulation["path"].read_text()
    assert len(list(quick_simulation["out"].glob("*.png"))) >= 3


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


# ------------------------------------------------------------------------------------ bad input: exit 2

_TINY = """
[run]
name = "tiny"
steps = 2
log_every = 1
eval_every = 2
threads = 1
[data]
name = "digits"
batch_size = 16
[model]
name = "small_bn_cnn"
options = { width = 4 }
[optim]
lr = 0.1
momentum = 0.9
weight_decay = 1e-3
"""


def _err_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line of stderr: a message, not a traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def _within(seconds: float, fn: Callable[[], Any]) -> Any:
    """fn() in a thread; fails the test instead of hanging if it blocks."""
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.update(value=fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"blocked for more than {seconds} s"
    return box["value"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step run of `smdyn train` on a tiny config: run/ holds a real checkpoint.pt."""
    root = tmp_path_factory.mktemp("train")
    (root / "tiny.toml").write_text(_TINY)
    assert main(["train", str(root / "tiny.toml"), "--out", str(root / "run"), "--quiet"]) == 0
    return root


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "cut short":
        path.write_bytes(data[:10])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "not a checkpoint":
        path.write_text("step,param\n")
    elif how == "another torch file":
        torch.save({"weights": torch.zeros(2)}, path)


@pytest.mark.parametrize("how", ["truncated", "cut short", "empty", "not a checkpoint", "another torch file"])
def test_resume_from_a_damaged_checkpoint_is_bad_input(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run / "run", run)
    _damage(run / "checkpoint.pt", how)
    capsys.readouterr()
    assert main(["train", str(finished_run / "tiny.toml"), "--out", str(run), "--resume", "--quiet"]) == 2
    err = _err_line(capsys)
    assert f"cannot resume: {run / 'checkpoint.pt'} is not a" in err
    # Found from CONFIG's folder when --out is not given (a run's own config.toml): the same message.
    assert main(["train", str(run / "config.toml"), "--resume", "--quiet"]) == 2
    assert str(run / "checkpoint.pt") in _err_line(capsys)


def test_resume_from_an_intact_checkpoint_still_works(finished_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run / "run", run)
    assert main(["train", str(finished_run / "tiny.toml"), "--out", str(run), "--resume", "--quiet"]) == 0


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_checkpoint_and_metrics_that_are_fifos_never_block(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run / "run", run)
    (run / "checkpoint.pt").unlink()
    os.mkfifo(run / "checkpoint.pt")
    args = ["train", str(finished_run / "tiny.toml"), "--out", str(run), "--resume", "--quiet"]
    assert _within(30, lambda: main(args)) == 2
    assert f"{run / 'checkpoint.pt'} is not a regular file" in _err_line(capsys)
    (run / "metrics.csv").unlink()
    os.mkfifo(run / "metrics.csv")
    assert _within(30, lambda: main(["report", str(run), "--out", str(tmp_path / "r")])) == 2
    assert f"{run / 'metrics.csv'} is a FIFO" in _err_line(capsys)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "is not a UTF-8 CSV file"),
        (b"epoch,loss\n1,0.5\n", "is not a metrics file: it has no step or param column"),
        (b"step,lr\n0,0.1\n", "is not a metrics file: it has no param column"),
    ],
)
def test_report_names_a_metrics_file_that_is_not_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, why: str
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_bytes(content)
    assert main(["report", str(run), "--out", str(tmp_path / "r")]) == 2
    assert f"smdyn report: {run / 'metrics.csv'} {why}" in _err_line(capsys)
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["report", str(tmp_path / "notes.txt")]) == 2
    assert str(tmp_path / "notes.txt") in _err_line(capsys)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["theory", "--lr", "0.1", "--wd", "1e-4", "--drop", "0.5"], "--drop: a drop factor k"),
        (["theory", "--lr", "0.1", "--wd", "1e-4", "--drop", "1"], "must be > 1, got 1"),
        (["theory", "--lr", "0.1", "--wd", "1e-4", "--drop", "nan"], "--drop: must be finite, got nan"),
        (["theory", "--lr", "0.1", "--wd", "1e-4", "--drop", "ten"], "--drop: not a number: 'ten'"),
        (["theory", "--lr", "inf", "--wd", "1e-4"], "--lr: must be finite, got inf"),
        (["theory", "--lr", "0.1", "--wd", "1e-4", "--L", "0"], "--L: must be a positive number, got 0"),
        (["demo", "--steps", "0"], "--steps: must be >= 1, got 0"),
        (["demo", "--threads", "-1"], "--threads: must be >= 0, got -1"),
    ],
)
def test_bad_numbers_exit_2_naming_the_option(
    capsys: pytest.CaptureFixture[str], argv: list[str], named: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert named in capsys.readouterr().err


def test_bad_files_and_configs_exit_2_naming_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    # plan's options are defined in smdyn.plan; main turns the error of its output folder into exit code 2.
    assert main(["plan", "--lr", "0.1", "--wd", "1e-4", "--steps", "50", "--out", str(blocker / "x")]) == 2
    assert str(blocker / "x") in _err_line(capsys)
    assert main(["simulate", "--quick", "--out", str(blocker)]) == 2
    assert str(blocker) in _err_line(capsys)
    assert main(["train", str(tmp_path)]) == 2  # a directory for a config
    assert str(tmp_path) in _err_line(capsys)
    (tmp_path / "bad.toml").write_text("[run\n")
    assert main(["train", str(tmp_path / "bad.toml")]) == 2
    assert "bad.toml" in _err_line(capsys)


def test_a_bug_is_not_passed_off_as_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(args: object) -> int:
        raise KeyError("an internal bug")

    monkeypatch.setattr(cli, "_theory", broken)
    with pytest.raises(KeyError, match="an internal bug"):
        main(["theory", "--lr", "0.1", "--wd", "1e-4"])
