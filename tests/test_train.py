"""Tests for smdyn.experiments.train: run directory contents, resume bit-identity, Ctrl-C and NaN handling."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from smdyn.experiments import rundir
from smdyn.experiments.config import Config, config_from_dict, load_config
from smdyn.experiments.train import EVENT_COLUMNS, TRAIN_COLUMNS, add_train_arguments, train, train_main
from smdyn.sinks import read_metrics


class _Teacher:
    """A tiny in-memory source with the DataSource interface: 8×8 images labelled by a random linear teacher.

    ``nan_at`` / ``interrupt_at`` / ``crash_at``: the 0-based ``train_batch`` call that returns NaN
    inputs, raises KeyboardInterrupt or raises RuntimeError (after drawing from the generator, as a real
    source would).
    """

    name = "teacher"
    num_classes = 4
    input_shape = (1, 8, 8)

    def __init__(
        self,
        n: int = 256,
        nan_at: int | None = None,
        interrupt_at: int | None = None,
        crash_at: int | None = None,
    ) -> None:
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, *self.input_shape, generator=g)
        self.y = (self.x.flatten(1) @ torch.randn(64, self.num_classes, generator=g)).argmax(1)
        self.train_size = n
        self.calls = 0
        self.nan_at, self.interrupt_at, self.crash_at = nan_at, interrupt_at, crash_at

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(len(self.x), (batch_size,), generator=generator)
        x = self.x[index] + 0.1 * torch.randn(batch_size, *self.input_shape, generator=generator)
        call, self.calls = self.calls, self.calls + 1
        if call == self.interrupt_at:
            raise KeyboardInterrupt
        if call == self.crash_at:
            raise RuntimeError("the process dies here")
        if call == self.nan_at:
            x = torch.full_like(x, math.nan)
        return x, self.y[index]

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[:96], self.y[:96]

    def train_subset(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[:n], self.y[:n]


def _config(**sections: dict[str, Any]) -> Config:
    raw: dict[str, dict[str, Any]] = {
        "run": {"name": "tiny", "steps": 40, "log_every": 10, "eval_every": 20, "threads": 1},
        "data": {"name": "digits", "batch_size": 16},
        "model": {"name": "small_bn_cnn", "options": {"width": 4}},
        "optim": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3},
        "schedule": {"kind": "multistep", "milestones": [25], "gamma": 0.1},
        "monitor": {"window": 10, "flush_every": 7},
        "rescale": {"enabled": True},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return config_from_dict(raw)


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run of `_config()` from start to end, trained once for every test that compares against it."""
    return train(_config(), tmp_path_factory.mktemp("straight") / "run", source=_Teacher(), quiet=True)


def test_run_directory_has_every_file_with_the_right_columns(straight: Path) -> None:
    cfg = _config()
    run_dir = straight
    for name in ("config.toml", "metrics.csv", "train.csv", "events.csv", "summary.json", "checkpoint.pt"):
        assert (run_dir / name).is_file(), name
    assert load_config(run_dir / "config.toml") == cfg

    cols, rows = _read_csv(run_dir / "train.csv")
    assert tuple(cols) == TRAIN_COLUMNS
    assert [int(r["step"]) for r in rows] == [10, 20, 30, 40]
    for r in rows:
        assert float(r["epoch"]) == pytest.approx(int(r["step"]) * 16 / 256)
        evaluated = int(r["step"]) % 20 == 0
        assert math.isfinite(float(r["test_accuracy"])) == evaluated
        assert math.isfinite(float(r["test_loss"])) == evaluated
        assert 0 <= float(r["accuracy"]) <= 1 and float(r["loss"]) > 0
    # lr of the last step of each row: 0.1 up to step 25 (0-based index 24), then 0.1 × gamma
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.1, 0.1, 0.01, 0.01])

    cols, events = _read_csv(run_dir / "events.csv")
    assert tuple(cols) == EVENT_COLUMNS
    by_kind = {e["kind"]: e for e in events}
    assert set(by_kind) == {"lr_change", "rescale"}
    assert int(by_kind["lr_change"]["step"]) == 25 and int(by_kind["rescale"]["step"]) == 25
    assert float(by_kind["lr_change"]["factor"]) == pytest.approx(0.1)
    assert float(by_kind["rescale"]["factor"]) == pytest.approx(0.1**0.25)  # Sec 4.2: k^(-1/4), k = 10

    metrics = read_metrics(run_dir / "metrics.csv")
    assert set(np.unique(metrics["param"])) == {"conv1.weight", "conv2.weight", "conv3.weight"}
    assert sorted(np.unique(metrics["step"])) == list(range(40))

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 40
    assert summary["final_test_accuracy"] == pytest.approx(float(rows[-1]["test_accuracy"]))
    assert summary["steps_per_s"] > 0 and summary["wall_time_s"] > 0
    assert set(summary["layers"]) == {"conv1.weight", "conv2.weight", "conv3.weight"}
    # the summary's RMS Δ/Δ* is recomputed here from metrics.csv over the last 10 recorded steps
    last = metrics["step"] >= 30
    for name, layer in summary["layers"].items():
        mine = last & (metrics["param"] == name)
        ratio = metrics["angular_update"][mine] / metrics["theory_angular_update"][mine]
        assert layer["angular_update_rms_ratio"] == pytest.approx(float(np.sqrt(np.mean(ratio**2))))
    devs = [abs(v["angular_update_rms_ratio"] - 1) for v in summary["layers"].values()]
    assert summary["median_angular_update_rms_deviation"] == pytest.approx(float(np.median(devs)))
    # and it is the equilibrium the report and the claims read back from the run directory
    e = rundir.run_equilibrium(rundir.load_run(run_dir))
    assert e.window == (30, 39)
    for i, name in enumerate(e.layers):
        layer = summary["layers"][name]
        assert layer["angular_update_rms_ratio"] == pytest.approx(float(e.rms_ratio[i]), rel=1e-12)
        assert layer["weight_norm_ratio"] == pytest.approx(float(e.norm_ratio[i]), rel=1e-12)

    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 40
    for key in ("model", "optimizer", "scheduler", "monitor", "rescaler", "generator", "torch_rng"):
        assert key in ckpt


def test_cosine_schedule_with_warmup_writes_the_closed_form_lr(tmp_path: Path) -> None:
    cfg = _config(
        run={"steps": 12, "log_every": 1, "eval_every": 0},
        schedule={"kind": "cosine", "milestones": [], "warmup": 4},
        rescale={"enabled": False},
    )
    run_dir = train(cfg, tmp_path / "run", source=_Teacher(), quiet=True)
    _, rows = _read_csv(run_dir / "train.csv")
    for r in rows:
        t = int(r["step"]) - 1  # the 0-based index of the row's step
        expected = 0.1 * 0.5 * (1 + math.cos(math.pi * t / 12)) * min(1.0, (t + 1) / 4)
        assert float(r["lr"]) == pytest.approx(expected, rel=1e-12)


def test_resume_is_bit_identical(tmp_path: Path, straight: Path) -> None:
    cfg = _config()
    half = _config(run={"steps": 20})
    split = train(half, tmp_path / "split", source=_Teacher(), quiet=True)
    train(cfg, split, resume=True, source=_Teacher(), quiet=True)

    a, b = _read_csv(straight / "train.csv")[1], _read_csv(split / "train.csv")[1]
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]  # the same text: the same float64
    assert [r["accuracy"] for r in a] == [r["accuracy"] for r in b]
    wa, wb = _weights(straight), _weights(split)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ma, mb = read_metrics(straight / "metrics.csv"), read_metrics(split / "metrics.csv")
    assert np.array_equal(ma["step"], mb["step"])
    np.testing.assert_array_equal(ma["angular_update"], mb["angular_update"])
    np.testing.assert_array_equal(ma["weight_norm"], mb["weight_norm"])
    assert _read_csv(straight / "events.csv") == _read_csv(split / "events.csv")


def test_ctrl_c_saves_a_checkpoint_that_resumes_bit_identically(tmp_path: Path, straight: Path) -> None:
    cfg = _config()
    run_dir = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run_dir, source=_Teacher(interrupt_at=27), quiet=True)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 27  # steps 0..26 done; the 28th batch was drawn, then undone
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    _, rows = _read_csv(run_dir / "train.csv")
    assert [int(r["step"]) for r in rows] == [10, 20]
    assert set(np.unique(read_metrics(run_dir / "metrics.csv")["step"])) == set(range(27))

    train(cfg, run_dir, resume=True, source=_Teacher(), quiet=True)
    wa, wb = _weights(straight), _weights(run_dir)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    a, b = _read_csv(straight / "train.csv")[1], _read_csv(run_dir / "train.csv")[1]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_sigint_during_the_update_is_deferred_to_the_end_of_the_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real SIGINT arriving inside optimizer.step() must not leave half a step in the checkpoint."""
    cfg = _config(rescale={"enabled": False})
    straight = train(cfg, tmp_path / "straight", source=_Teacher(), quiet=True)
    original = torch.optim.SGD.step
    calls = {"n": 0}

    def step(self: torch.optim.SGD, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 13:
            os.kill(os.getpid(), signal.SIGINT)  # handled at once by Python, inside the update
        return original(self, *args, **kwargs)

    step.hooked = True  # type: ignore[attr-defined]  # torch must not wrap it a second time
    monkeypatch.setattr(torch.optim.SGD, "step", step)
    run_dir = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run_dir, source=_Teacher(), quiet=True)
    monkeypatch.undo()
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 13  # the 13th step completed
    train(cfg, run_dir, resume=True, source=_Teacher(), quiet=True)
    wa, wb = _weights(straight), _weights(run_dir)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_resume_after_a_crash_cuts_rows_written_after_the_checkpoint(tmp_path: Path) -> None:
    """A run that dies between checkpoints has rows past its checkpoint; a resume must not repeat them."""
    cfg = _config(run={"log_every": 5, "checkpoint_every": 10})
    straight = train(cfg, tmp_path / "straight", source=_Teacher(), quiet=True)
    run_dir = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="dies here"):
        train(cfg, run_dir, source=_Teacher(crash_at=17), quiet=True)
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 10
    assert [int(r["step"]) for r in _read_csv(run_dir / "train.csv")[1]] == [5, 10, 15]
    assert read_metrics(run_dir / "metrics.csv")["step"].max() == 16  # flushed when the monitor closed
    with open(run_dir / "train.csv", "a") as f:
        f.write("17,1.0,0.1,0.5")  # an unfinished line, as a kill in the middle of a write leaves

    train(cfg, run_dir, resume=True, source=_Teacher(), quiet=True)
    a, b = _read_csv(straight / "train.csv")[1], _read_csv(run_dir / "train.csv")[1]
    assert [r["step"] for r in b] == [r["step"] for r in a] == [str(s) for s in range(5, 41, 5)]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    ma, mb = read_metrics(straight / "metrics.csv"), read_metrics(run_dir / "metrics.csv")
    np.testing.assert_array_equal(ma["step"], mb["step"])
    np.testing.assert_array_equal(ma["angular_update"], mb["angular_update"])


def test_nan_loss_stops_cleanly_and_keeps_every_row(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = _config(rescale={"enabled": False})
    run_dir = train(cfg, tmp_path / "run", source=_Teacher(nan_at=33), quiet=True)
    assert "non-finite training loss" in capsys.readouterr().err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["steps"] == 33
    assert "step 33" in summary["note"]
    _, rows = _read_csv(run_dir / "train.csv")
    assert [int(r["step"]) for r in rows] == [10, 20, 30, 33]
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    metrics = read_metrics(run_dir / "metrics.csv")
    assert metrics["step"].max() == 32
    assert np.isfinite(metrics["weight_norm"]).all()


def test_existing_run_is_not_overwritten_and_resume_checks_the_config(tmp_path: Path) -> None:
    cfg = _config(run={"steps": 10}, rescale={"enabled": False})
    run_dir = train(cfg, tmp_path / "run", source=_Teacher(), quiet=True)
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(cfg, run_dir, source=_Teacher(), quiet=True)
    changed = _config(run={"steps": 20}, optim={"lr": 0.2}, rescale={"enabled": False})
    with pytest.raises(ValueError, match=r"optim\.lr: 0\.1 -> 0\.2"):
        train(changed, run_dir, resume=True, source=_Teacher(), quiet=True)
    with pytest.raises(FileNotFoundError, match=r"checkpoint\.pt"):
        train(cfg, tmp_path / "empty", resume=True, source=_Teacher(), quiet=True)
    with pytest.raises(ValueError, match="needs out_dir"):
        train(cfg, resume=True)


def test_train_restores_the_thread_count(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    train(_config(run={"steps": 5, "threads": before + 1}), tmp_path / "run", source=_Teacher(), quiet=True)
    assert torch.get_num_threads() == before


def test_plain_progress_lines_when_not_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train(_config(run={"steps": 20}), tmp_path / "run", source=_Teacher())
    out = capsys.readouterr().out
    assert "step      20/20" in out and "Δ/Δ*" in out
    train(_config(run={"steps": 20}), tmp_path / "quiet", source=_Teacher(), quiet=True)
    assert capsys.readouterr().out == ""


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return parser.parse_args(argv)


def test_cli_trains_a_config_file_with_overrides(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[run]\nname = "cli"\nsteps = 1000\nthreads = 1\n'
        '[data]\nname = "shapes"\nbatch_size = 8\noptions = { size = 8, train_size = 64, test_size = 32 }\n'
        '[model]\nname = "small_bn_cnn"\noptions = { width = 4 }\n'
        "[monitor]\nwindow = 4\n"
    )
    args = _cli(
        [str(config), "--set", "run.steps=6", "--set", "run.log_every=3", "--out", str(tmp_path / "r")]
    )
    assert train_main(args) == 0
    out = capsys.readouterr().out
    assert "cli: completed after 6 steps" in out and str(tmp_path / "r") in out
    assert load_config(tmp_path / "r" / "config.toml").run.steps == 6
    # resume from the run's own config.toml without --out; extending the run is allowed
    args = _cli([str(tmp_path / "r" / "config.toml"), "--resume", "--set", "run.steps=9", "--quiet"])
    assert train_main(args) == 0
    _, rows = _read_csv(tmp_path / "r" / "train.csv")
    assert [int(r["step"]) for r in rows] == [3, 6, 9]


def test_cli_reports_bad_config_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[optim]\nlr = -1.0\n")
    assert train_main(_cli([str(config), "--out", str(tmp_path / "r")])) == 2
    err = capsys.readouterr().err
    assert "[optim] lr = -1.0: must be a finite number > 0" in err
    assert not (tmp_path / "r").exists()
    config.write_text("[optim]\nlr = 1.0\n")
    assert train_main(_cli([str(config), "--resume"])) == 2
    assert "--resume needs --out" in capsys.readouterr().err
