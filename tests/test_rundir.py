"""Tests for smdyn.experiments.rundir (the run directory's one reader, writer and equilibrium summary) and
smdyn.experiments._io (atomic writes, strict JSON). References: plain loops over the rows as written, and
`smdyn.sinks.read_metrics`, the reader a user of the sinks has."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _run_columns import RUN_COLUMNS

from smdyn.experiments import rundir
from smdyn.experiments._io import atomic_write_json, atomic_write_text, json_safe
from smdyn.sinks import read_metrics as sinks_read_metrics

_COLUMNS = RUN_COLUMNS  # the monitor's columns a run directory is read for


def _rows(steps: int, layers: tuple[str, ...], seed: int = 0) -> list[dict]:
    """Monitor-like rows: Δ* = 0.02, Δ = Δ*·(1 ± noise), ‖w‖ near w* = 2, one NaN Δ, a flag late on."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(steps):
        for j, name in enumerate(layers):
            d = 0.02 * (1 + 0.3 * rng.standard_normal()) * (1 + 0.1 * j)
            out.append(
                {
                    "step": t,
                    "param": name,
                    "channel": -1,
                    "lr": 0.1 if t < steps // 2 else 0.01,
                    "wd": 1e-3,
                    "momentum": 0.9,
                    "weight_norm": 2.0 * (1 + 0.05 * rng.standard_normal()),
                    "unit_grad_sq": 1.0,
                    "h_tilde": 1.0,
                    "angular_update": math.nan if (t, j) == (steps - 3, 0) else d,
                    "angular_update_rms": d,
                    "angular_update_mean": d,
                    "theory_angular_update": 0.02,
                    "theory_weight_norm": 2.0,
                    "in_equilibrium": t > steps - 5 and j != 1,
                    "reason": "",
                }
            )
    return out


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(_COLUMNS)
        w.writerows([[r[c] for c in _COLUMNS] for r in rows])


def _write_parts(folder: Path, parts: dict[int, list[dict]]) -> None:
    folder.mkdir(parents=True)
    for number, rows in parts.items():
        pd.DataFrame(rows).to_parquet(folder / f"part-{number}.parquet")


# ---------------------------------------------------------------------------------------------- reading


def test_parquet_parts_are_read_in_write_order_so_the_later_record_wins(tmp_path: Path) -> None:
    """part-10 was written after part-9 (numeric order), though it sorts before it as text."""
    first, again = _rows(4, ("a",)), _rows(4, ("a",), seed=1)
    _write_parts(tmp_path / "metrics", {9: first, 10: again[2:]})  # steps 2, 3 recorded twice (a resume)
    m = rundir.read_metrics(tmp_path)
    assert m["step"].tolist() == [0, 1, 2, 3]
    expected = [first[0], first[1], again[2], again[3]]
    np.testing.assert_array_equal(m["weight_norm"].to_numpy(), [r["weight_norm"] for r in expected])


def test_reader_agrees_with_the_sinks_reader(tmp_path: Path) -> None:
    rows = _rows(6, ("a", "b"))
    rows[3]["in_equilibrium"] = "1.0"  # not a word the sinks write: read as the sinks read it
    _write_csv(tmp_path / "metrics.csv", rows)
    ours = rundir.read_metrics(tmp_path).sort_values(["step", "param"], kind="stable")
    theirs = pd.DataFrame(sinks_read_metrics(tmp_path)).sort_values(["step", "param"], kind="stable")
    np.testing.assert_array_equal(ours["in_equilibrium"].to_numpy(), theirs["in_equilibrium"].to_numpy())
    for c in ("weight_norm", "angular_update", "theory_weight_norm"):
        np.testing.assert_array_equal(ours[c].to_numpy(), theirs[c].to_numpy().astype(float))
    assert list(ours["param"].cat.categories) == ["a", "b"]


def test_collapse_verdict_reads_the_code_and_falls_back_to_the_prose() -> None:
    prose = "RMS Δ/Δ* far below 1 ...: the unit gradient is collapsing (memorised data?)"
    old = pd.DataFrame({"reason": [prose, "", "frozen parameter"]})
    assert rundir.collapse_flags(old).tolist() == [True, False, False]
    new = old.assign(reason_code=["no_theory", "collapse", "frozen"])  # the code decides, not the words
    assert rundir.collapse_flags(new).tolist() == [False, True, False]


def test_reason_code_column_is_kept_and_folded(tmp_path: Path) -> None:
    rows = _rows(3, ("a",))
    for r in rows:
        r["reason_code"] = "collapse" if r["step"] == 2 else ""
    with open(tmp_path / "metrics.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([*_COLUMNS, "reason_code"])
        w.writerows([[r[c] for c in (*_COLUMNS, "reason_code")] for r in rows])
    m = rundir.read_metrics(tmp_path)
    assert rundir.collapse_flags(m).tolist() == [False, False, True]


# ---------------------------------------------------------------------------------------------- equilibrium


def _brute_force(rows: list[dict], start: int) -> dict[str, dict[str, float]]:
    out = {}
    for name in dict.fromkeys(r["param"] for r in rows):
        mine = [r for r in rows if r["param"] == name and r["step"] >= start]
        ratios = [r["angular_update"] / r["theory_angular_update"] for r in mine]
        ratios = [x for x in ratios if x == x]
        w2 = [r["weight_norm"] ** 2 for r in mine]
        ws2 = [r["theory_weight_norm"] ** 2 for r in mine]
        last = max((r for r in rows if r["param"] == name), key=lambda r: r["step"])
        out[name] = {
            "rms": math.sqrt(sum(x * x for x in ratios) / len(ratios)),
            "mean": sum(ratios) / len(ratios),
            "norm": math.sqrt(sum(w2) / sum(ws2)),
            "eq": bool(last["in_equilibrium"]),
        }
    return out


def test_run_equilibrium_over_the_last_window_of_the_last_stage(tmp_path: Path) -> None:
    rows = _rows(40, ("a", "b", "c"))
    _write_csv(tmp_path / "metrics.csv", rows)
    (tmp_path / "config.toml").write_text("[monitor]\nwindow = 30\n")
    run = rundir.load_run(tmp_path)
    assert run.stage_starts.tolist() == [0, 20]  # the LR drop read off the recorded lr
    e = rundir.run_equilibrium(run)
    assert e.window == (20, 39) and e.records == 20  # 30 steps back would cross the drop at 20
    ref = _brute_force(rows, 20)
    for i, name in enumerate(e.layers):
        assert e.rms_ratio[i] == pytest.approx(ref[name]["rms"], rel=1e-12)
        assert e.mean_ratio[i] == pytest.approx(ref[name]["mean"], rel=1e-12)
        assert e.norm_ratio[i] == pytest.approx(ref[name]["norm"], rel=1e-12)
        assert bool(e.in_equilibrium[i]) == ref[name]["eq"]
    assert e.median_abs_rms_dev == pytest.approx(np.median([abs(v["rms"] - 1) for v in ref.values()]))
    assert e.fraction_in_equilibrium == pytest.approx(2 / 3)
    e10 = rundir.run_equilibrium(run, window=10)
    assert e10.window == (30, 39)
    assert e10.rms_ratio[1] == pytest.approx(_brute_force(rows, 30)["b"]["rms"], rel=1e-12)


def test_records_in_memory_and_on_disk_give_the_same_summary(tmp_path: Path) -> None:
    """What a training run writes into summary.json (from its sink batches) equals what the report reads
    back from metrics.csv: one computation, per-channel rows folded the same way."""
    rows = _rows(30, ("a", "b"))
    chan = []
    for r in rows:  # layer "a" recorded per channel (2 channels of equal norm): folds to the same layer
        if r["param"] == "a":
            for c in (0, 1):
                chan.append({**r, "channel": c, "weight_norm": r["weight_norm"] / math.sqrt(2)})
                chan[-1]["theory_weight_norm"] = r["theory_weight_norm"] / math.sqrt(2)
        else:
            chan.append(r)
    _write_csv(tmp_path / "metrics.csv", chan)
    (tmp_path / "config.toml").write_text("[monitor]\nwindow = 8\n")
    on_disk = rundir.run_equilibrium(rundir.load_run(tmp_path))
    records = {c: np.array([r[c] for r in chan]) for c in _COLUMNS}
    in_memory = rundir.records_equilibrium(records, window=8, stage_start=15)
    assert on_disk.layers == in_memory.layers == ["a", "b"]
    assert on_disk.window == in_memory.window
    for field in ("rms_ratio", "mean_ratio", "norm_ratio", "in_equilibrium"):
        np.testing.assert_allclose(getattr(on_disk, field), getattr(in_memory, field), rtol=1e-12)
    summary = rundir.summary_figures(in_memory, {"b": "a reason"})
    assert summary["layers"]["b"]["reason"] == "a reason" and summary["window_steps"] == 8


def test_stage_starts_of_a_continuous_schedule_are_one_stage() -> None:
    assert rundir.stage_starts([30, 60], first_step=0).tolist() == [0, 30, 60]
    assert rundir.stage_starts(list(range(1, 40)), first_step=0).tolist() == [0]


# ---------------------------------------------------------------------------------------------- _io


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    atomic_write_text(target, "old\n")

    def fail(f: object) -> None:
        raise RuntimeError("disk full")

    from smdyn.experiments._io import atomic_write

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary file left behind


def test_json_is_strict() -> None:
    obj = {"a": np.float64("nan"), "b": [np.inf, -np.inf, np.int64(3), np.bool_(True)], 1: 0.5}
    assert json_safe(obj) == {"a": None, "b": [None, None, 3, True], "1": 0.5}
    assert json_safe(obj, inf_as_text=True)["b"][:2] == ["inf", "-inf"]


def test_atomic_json_round_trips(tmp_path: Path) -> None:
    path = atomic_write_json(tmp_path / "x.json", {"v": [1.5, math.nan]}, inf_as_text=True)
    assert json.loads(path.read_text(encoding="utf-8")) == {"v": [1.5, None]}
