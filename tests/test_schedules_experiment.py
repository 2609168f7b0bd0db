"""Tests of the schedules experiment: the [control] config section, the controls a run attaches (rotation
holds the initial norm, corrected decay, the Rescaler attached at the end of the warm-up, exact resumption
around the attachment), the measurements against brute-force loops, the grading, and (slow)
``smdyn reproduce schedules --quick``."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from smdyn.experiments.config import config_from_dict, load_config
from smdyn.experiments.gpt import gpt
from smdyn.experiments.reproduce.claims import Verdict
from smdyn.experiments.reproduce.measures import spread
from smdyn.experiments.reproduce.schedules import (
    THRESHOLDS,
    _by_threshold,
    _excess,
    _running_mean,
)
from smdyn.experiments.text_data import VOCABULARY
from smdyn.experiments.train import train

V = len(VOCABULARY) + 1
_QK = [f"blocks.{i}.attn.{r}.weight" for i in range(2) for r in "qk"]


# ---------------------------------------------------------------------------------------------- config


def test_control_section_parses_and_refuses_what_cannot_work() -> None:
    assert config_from_dict({}).control.kind == "none"
    cfg = config_from_dict({"optim": {"name": "adamw"}, "control": {"kind": "rotation"}})
    assert cfg.control.kind == "rotation" and cfg.to_dict()["control"] == {"kind": "rotation"}
    with pytest.raises(
        ValueError, match=r"\[control\] kind = 'spin'.*none, corrected_decay, corrected_growth, rotation"
    ):
        config_from_dict({"control": {"kind": "spin"}})
    with pytest.raises(ValueError, match=r"\[control\] kind = 'rotation'.*\[rescale\] enabled = false"):
        config_from_dict({"control": {"kind": "rotation"}, "rescale": {"enabled": True}})
    with pytest.raises(ValueError, match=r"\[control\].*not 'adam'"):
        config_from_dict({"optim": {"name": "adam"}, "control": {"kind": "corrected_decay"}})
    with pytest.raises(ValueError, match=r"\[control\] kind = 'corrected_growth'.*needs adamw, not 'sgd'"):
        config_from_dict({"optim": {"name": "sgd"}, "control": {"kind": "corrected_growth"}})
    with pytest.raises(ValueError, match=r"\[control\] unknown key 'mode'"):
        config_from_dict({"control": {"mode": "x"}})


def test_shipped_configs_differ_from_the_baseline_only_in_their_control() -> None:
    base = load_config("schedules_cosine").to_dict()
    expected = {
        "schedules_corrected": {"control.kind": "corrected_decay"},
        "schedules_corrected_growth": {"control.kind": "corrected_growth"},
        "schedules_rotation": {"control.kind": "rotation"},
        "schedules_rescaled": {
            "rescale.enabled": True,
            "rescale.mode": "continuous",
            "rescale.after_warmup": True,
        },
        "schedules_nowarmup": {"schedule.warmup": 0},
    }
    for name, changes in expected.items():
        d = load_config(name).to_dict()
        diff = {
            f"{sec}.{k}": d[sec][k]
            for sec in d
            for k in d[sec]
            if (sec, k) != ("run", "name") and d[sec][k] != base[sec].get(k)
        }
        assert diff == changes, name
    o, s = base["optim"], base["schedule"]
    steps, eta_lambda = base["run"]["steps"], o["lr"] * o["weight_decay"]
    assert steps * eta_lambda >= 10  # 1/(ηλ) well inside the run
    assert s["warmup"] == round(1 / eta_lambda)


# ---------------------------------------------------------------------------------------------- training


def _corpus(root: Path, files: int = 24, chars: int = 3000) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        line = f"def f{i:02d}(x):\n    return x * {i} + {i % 5}\n"
        (root / f"mod{i:02d}.py").write_text(line * (chars // len(line)))
    return root


def _tiny(root: Path, steps: int, **sections: dict) -> object:
    raw = {
        "run": {"name": "tiny", "steps": steps, "eval_every": 0, "log_every": 5, "threads": 1},
        "data": {
            "name": "text",
            "root": str(root),
            "batch_size": 4,
            "options": {"length": 16, "test_windows": 16, "test_every": 3, "min_chars": 1000},
        },
        "model": {"name": "gpt", "options": {"width": 16, "depth": 2, "heads": 2}},
        "optim": {"name": "adamw", "lr": 0.01, "weight_decay": 0.5},
        "schedule": {"kind": "cosine", "warmup": 10},
        "monitor": {"window": 10, "flush_every": 5, "params": "auto"},
        **sections,
    }
    return config_from_dict(raw)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def _initial(seed: int = 0) -> dict[str, torch.Tensor]:
    """The GPT's weights at initialisation, built here as train builds them (seed, then the model)."""
    torch.manual_seed(seed)
    return gpt(V, 16, width=16, depth=2, heads=2).state_dict()


def test_rotation_run_holds_the_initial_norms_and_turns_by_delta_star(tmp_path: Path) -> None:
    root = _corpus(tmp_path / "c")
    run = train(_tiny(root, 30, control={"kind": "rotation"}), tmp_path / "rot", quiet=True)
    end, start = _weights(run), _initial()
    for name in _QK:
        assert float(end[name].double().norm()) == pytest.approx(float(start[name].double().norm()), rel=1e-6)
        assert not torch.equal(end[name], start[name])  # it moved
    # The monitor measured the turned step: Δ = √(2ηλ(1−β₁)/(1+β₁)) at the step's lr, in float64.
    m = pd.read_csv(run / "metrics.csv")
    want = np.sqrt(2 * m["lr"] * m["wd"] * 0.1 / 1.9)
    np.testing.assert_allclose(m["angular_update"], want, rtol=1e-4)


def _lr(t: int, steps: int, warmup: int, peak: float) -> float:
    """train's schedule, written out: half a cosine over the run times the linear warm-up."""
    f = 0.5 * (1 + math.cos(math.pi * t / steps))
    return peak * f * ((t + 1) / warmup if t < warmup else 1.0)


def test_corrected_decay_run_matches_adamw_with_the_decay_set_per_step(tmp_path: Path) -> None:
    """The run against torch.optim.AdamW stepped by hand, the q/k projections in a group of their own whose
    weight decay is set to λ·η_t/max(η_0..η_t) before each step; same initial weights, same batches."""
    import torch.nn.functional as F

    from smdyn.experiments.data import load_data

    root = _corpus(tmp_path / "c")
    steps, lam = 12, 0.5
    cfg = _tiny(root, steps, control={"kind": "corrected_decay"})
    run = train(cfg, tmp_path / "cwd", quiet=True)

    d = cfg.data
    source = load_data(d.name, root=d.root, seed=d.seed, **d.options)
    torch.manual_seed(0)
    model = gpt(V, 16, width=16, depth=2, heads=2)
    named = dict(model.named_parameters())
    gains = [n for n, p in named.items() if p.dim() < 2]
    other = [n for n in named if n not in gains and n not in _QK]
    opt = torch.optim.AdamW(
        [
            {"params": [named[n] for n in _QK]},
            {"params": [named[n] for n in other]},
            {"params": [named[n] for n in gains], "weight_decay": 0.0},
        ],
        lr=0.01,
        weight_decay=lam,
    )
    gen, peak = torch.Generator().manual_seed(0), 0.0
    for t in range(steps):
        eta = _lr(t, steps, 10, 0.01)
        peak = max(peak, eta)
        for g in opt.param_groups:
            g["lr"] = eta
        opt.param_groups[0]["weight_decay"] = lam * eta / peak
        x, y = source.train_batch(d.batch_size, gen)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    got = _weights(run)
    for n in named:
        if n.endswith("k_norm.bias"):
            continue  # softmax ignores a shift of every key: its gradient is rounding, which Adam magnifies
        torch.testing.assert_close(got[n], named[n].detach(), rtol=1e-5, atol=1e-7)
    # The decay is corrected: an AdamW run at λ throughout ends elsewhere on q/k.
    assert lam * _lr(steps - 1, steps, 10, 0.01) / peak < 0.6 * lam


def test_rescaler_after_warmup_starts_at_the_peak_and_follows_the_square_root(tmp_path: Path) -> None:
    root = _corpus(tmp_path / "c")
    cfg = _tiny(root, 40, rescale={"enabled": True, "mode": "continuous", "after_warmup": True})
    run = train(cfg, tmp_path / "res", quiet=True)
    ev = pd.read_csv(run / "events.csv")
    rescales = ev[ev.kind == "rescale"]
    assert rescales.step.min() == 11  # attached at step 10 (the end of the warm-up), first change at 11
    total = float(np.prod(rescales.factor))
    want = max(math.sqrt(_lr(39, 40, 10, 0.01) / _lr(10, 40, 10, 0.01)), 0.1)  # AdamW: w* ∝ η^½
    assert total == pytest.approx(want, rel=1e-6)


_STEPPED = {"kind": "step", "step_size": 15, "gamma": 0.5, "warmup": 10}


@pytest.mark.parametrize("stop", [5, 25])  # before and after the Rescaler is attached (step 10)
def test_resume_is_exact_around_the_deferred_rescaler(tmp_path: Path, stop: int) -> None:
    root = _corpus(tmp_path / "c")
    cfg = _tiny(
        root,
        30,
        rescale={"enabled": True, "mode": "continuous", "after_warmup": True},
        schedule=_STEPPED,  # a cosine would depend on run.steps, which the interrupted run changes
    )
    whole = train(cfg, tmp_path / "whole", quiet=True)
    part = train(
        dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, steps=stop)), tmp_path / "p", quiet=True
    )
    train(cfg, part, resume=True, quiet=True)
    a, b = _weights(whole), _weights(part)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    events = (whole / "events.csv").read_text()
    assert events == (part / "events.csv").read_text()
    assert ",rescale," in events  # the drop at step 15 was followed


def test_resume_is_exact_with_corrected_decay(tmp_path: Path) -> None:
    root = _corpus(tmp_path / "c")
    cfg = _tiny(root, 24, control={"kind": "corrected_decay"}, schedule=_STEPPED)
    whole = train(cfg, tmp_path / "whole", quiet=True)
    part = train(
        dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, steps=12)), tmp_path / "p", quiet=True
    )
    train(cfg, part, resume=True, quiet=True)
    a, b = _weights(whole), _weights(part)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- measures


def test_running_mean_matches_a_loop() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    x[7, 1] = np.nan
    got = _running_mean(x, 5)
    for i in range(len(got)):
        for j in range(3):
            w = x[i : i + 5, j]
            assert got[i, j] == pytest.approx(float(np.mean(w[np.isfinite(w)])), rel=1e-12)


def test_excess_peak_and_settle_of_a_known_series() -> None:
    t = dataclasses.replace(THRESHOLDS, roll=1)
    steps = np.arange(100.0)
    ratio = (1.0 + 2.0 * np.exp(-steps / 10.0))[:, None]  # 3 at step 0, down to 1.1 at ln(20)·10 = 29.96
    out = _excess(np.repeat(ratio, 3, axis=1), steps, 50.0, t)
    assert out["peak"] == pytest.approx(3.0) and out["peak_step"] == 0
    assert out["settle"] == 30
    assert _excess(np.full((20, 2), 2.0), np.arange(20.0), 50.0, t)["settle"] == math.inf
    # A warm-up: below 1, a peak of 2 at step 20, then down; a late spike beyond the horizon does not count.
    late = np.where(steps < 20, 0.5 + 0.075 * steps, 1.0 + np.exp(-(steps - 20) / 5.0))
    late[80] = 9.0
    out = _excess(late[:, None], steps, 50.0, t)
    want = next(i for i in range(20, 100) if late[i] <= 1.1)  # brute force: 20 + 5·ln(10) → 32
    assert (out["peak"], out["peak_step"], out["settle"]) == (pytest.approx(2.0), 20, want)
    # The trailing RMS over `roll` steps and the median over layers come before the peak is read.
    t3 = dataclasses.replace(THRESHOLDS, roll=3)
    two = np.stack([ratio[:, 0], ratio[:, 0], 100 * ratio[:, 0]], axis=1)
    rms = math.sqrt(float(np.mean(ratio[:3, 0] ** 2)))
    assert _excess(two, steps, 50.0, t3)["peak"] == pytest.approx(rms)


def test_spread_and_grading_helpers() -> None:
    s = spread([1.0, 2.0, 4.0, math.nan])
    assert s["n"] == 3 and s["mean"] == pytest.approx(7 / 3)
    assert s["sd"] == pytest.approx(statistics.stdev([1.0, 2.0, 4.0]))
    # 95% Student t with 2 degrees of freedom (tabulated: 4.303) times the standard error of the mean
    assert s["half95"] == pytest.approx(4.303 * statistics.stdev([1.0, 2.0, 4.0]) / math.sqrt(3), rel=1e-4)
    assert math.isnan(spread([2.0])["half95"]) and spread([])["n"] == 0
    assert _by_threshold([1.3, 1.25, 1.4], lambda v: v >= 1.2) == (True, True)
    assert _by_threshold([1.5, 1.1, 1.4], lambda v: v >= 1.2) == (False, True)
    assert _by_threshold([1.0, 1.1], lambda v: v >= 1.2) == (False, False)
    assert _by_threshold([], lambda v: v >= 1.2)[0] is False


@pytest.mark.slow
def test_quick_schedules(tmp_path: Path) -> None:
    from smdyn.experiments.reproduce import reproduce

    reproduce("schedules", quick=True, out=tmp_path, threads=1, report=False, quiet=True)
    doc = json.loads((tmp_path / "claims.json").read_text())
    assert len(doc["runs"]) == 6 and all(
        r["status"] == "completed" and r["steps"] == 750 for r in doc["runs"]
    )
    claims = {c["id"]: c for c in doc["claims"]}
    assert set(claims) == {
        "grad_ratio_rises_under_cosine",
        "control_removes_rise_corrected",
        "control_removes_rise_corrected_growth",
        "control_removes_rise_rescaled",
        "control_removes_rise_rotation",
        "early_rotation_excess_without_warmup",
        "warmup_removes_rotation_excess",
    }
    assert all(c["verdict"] in {v.value for v in Verdict} for c in claims.values())
    excess = claims["early_rotation_excess_without_warmup"]["measured"]
    assert excess["planned_peak"]["mean"] > 2  # the initial norm is well below w*: an excess is planned
    assert excess["peak"]["mean"] > 2  # and measured
    # The rotation controller fixes the norm: ‖g‖/‖w‖ then moves with ‖g̃‖ only.
    assert math.isfinite(claims["control_removes_rise_rotation"]["measured"]["rise"]["mean"])


class _FakeRun:
    """What the claims read of a run: ‖g̃‖² and ‖w‖ per step for two layers, its config and summary."""

    def __init__(self, ratio: np.ndarray, seed: int, loss: float, warmup: int = 20) -> None:
        self.config = {"schedule": {"warmup": warmup}, "run": {"seed": seed}}
        self.layers = ["a", "b"]
        self.metrics = None
        self.summary = {"final_test_loss": loss}
        self.norm = np.full((len(ratio), 2), 2.0)
        self.unit_sq = (ratio[:, None] * self.norm**2) ** 2  # ‖g‖/‖w‖ = ‖g̃‖/‖w‖²
        self.steps = np.arange(len(ratio), dtype=np.float64)

    def wide(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        return self.steps, {"unit_grad_sq": self.unit_sq, "weight_norm": self.norm}[column]


def _ratio(final: float, n: int = 200, warmup: int = 20) -> np.ndarray:
    """‖g‖/‖w‖: 5 during the warm-up (not a minimum that counts), 1 after, ``final`` over the last 10%."""
    r = np.ones(n)
    r[:warmup] = 5.0
    r[int(0.9 * n) :] = final
    return r


def test_rise_and_control_claims_from_known_series() -> None:
    from smdyn.experiments.reproduce.schedules import _control_claim, _rise_claim, grad_rise

    base = [_FakeRun(_ratio(2.0), k, 2.0 + 0.1 * k) for k in range(3)]
    assert grad_rise(base[0])["rise"] == pytest.approx(2.0)  # the warm-up's 5 is not the reference
    claim, rises = _rise_claim(base, THRESHOLDS)
    assert claim.verdict == Verdict.REPRODUCED and rises == pytest.approx([2.0] * 3)
    weak = [_FakeRun(_ratio(v), k, 2.0) for k, v in enumerate((1.3, 1.15, 1.3))]
    assert _rise_claim(weak, THRESHOLDS)[0].verdict == Verdict.PARTLY  # mean 1.25 ≥ 1.2, one seed below

    flat = [_FakeRun(_ratio(1.05), k, 1.9 + 0.1 * k) for k in range(3)]  # 0.1 lower in every seed
    c = _control_claim("schedules_corrected", "corrected", flat, base, rises, THRESHOLDS)
    assert c.verdict == Verdict.REPRODUCED and c.id == "control_removes_rise_corrected"
    assert c.measured["paired_loss_difference"]["mean"] == pytest.approx(-0.1)
    assert c.measured["loss_effect"].startswith("a lower held-out loss")
    mixed = [
        _FakeRun(_ratio(v), k, 2.0 + 0.1 * k + d)
        for k, (v, d) in enumerate(((1.5, -0.1), (1.5, 0.1), (1.0, 0.0)))
    ]
    c = _control_claim("schedules_rotation", "rotation", mixed, base, rises, THRESHOLDS)
    assert c.verdict == Verdict.NOT_REPRODUCED  # mean rise 1.33 > 1.1
    # Paired differences −0.1, +0.1, 0: mean 0, inside t(2)·sd/√3 = 4.303·0.1/√3.
    assert c.measured["loss_effect"].startswith("no clear effect")
    assert f"±{4.303 * 0.1 / math.sqrt(3):.4f}" in c.measured["loss_effect"]
