"""Tests of the transformer experiment: the GPT (causality, QK-norm invariance), the stdlib text corpus
(split, windows, size check), Muon + AdamW as one optimizer (against the real torch optimizers), training a
sequence model (per-character loss against a float64 recomputation, bit-identical resume), the claims'
grading, the report's per-layer figure by block and role on synthetic run directories, and (slow)
``smdyn reproduce transformer --quick``."""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _run_columns import RUN_COLUMNS

import smdyn.experiments._plotting as plotting
import smdyn.experiments.train as train_module
from smdyn import theory
from smdyn.experiments.config import Config, config_from_dict, load_config, save_config
from smdyn.experiments.gpt import GPT, gpt
from smdyn.experiments.optimizers import MuonWithAdamW, by_roles
from smdyn.experiments.report import write_report
from smdyn.experiments.reproduce.claims import Verdict
from smdyn.experiments.reproduce.transformer import THRESHOLDS, _grade, _group
from smdyn.experiments.text_data import VOCABULARY, encode, load_text
from smdyn.experiments.train import train
from smdyn.experiments.transformer_figures import LayerPlace, layer_place
from smdyn.invariance import find_scale_invariant

V = len(VOCABULARY) + 1


# ---------------------------------------------------------------------------------------------- model


def test_full_size_gpt_has_one_to_five_million_parameters() -> None:
    from smdyn.experiments.config import load_config

    for name in ("transformer_adamw", "transformer_muon"):
        cfg = load_config(name)
        model = gpt(V, cfg.data.options["length"], **cfg.model.options)
        n = sum(p.numel() for p in model.parameters())
        assert 1_000_000 <= n <= 5_000_000, (name, n)


def test_gpt_is_causal_and_returns_logits_per_position() -> None:
    torch.manual_seed(0)
    model = gpt(V, 16, width=32, depth=2, heads=4).eval()
    x = torch.randint(0, V, (3, 16))
    out = model(x)
    assert out.shape == (3, 16, V)
    y = x.clone()
    y[:, 10:] = (y[:, 10:] + 1) % V  # change the future only
    out2 = model(y)
    torch.testing.assert_close(out[:, :10], out2[:, :10])
    assert not torch.allclose(out[:, 10:], out2[:, 10:])


@pytest.mark.parametrize("qk_norm", ["layernorm", "rmsnorm"])
def test_qk_norm_makes_q_and_k_scale_invariant(qk_norm: str) -> None:
    torch.manual_seed(0)
    model = gpt(V, 16, width=32, depth=2, heads=4, qk_norm=qk_norm).eval()
    x = torch.randint(0, V, (2, 16))
    ref = model(x)
    for name in ("blocks.1.attn.q.weight", "blocks.0.attn.k.weight", "blocks.0.attn.v.weight"):
        scaled = copy.deepcopy(model)
        with torch.no_grad():
            dict(scaled.named_parameters())[name].mul_(3.0)
        change = float((scaled(x) - ref).detach().abs().max())
        # q, k: only the norms' eps (1e-5 against a variance ~1e-2) sees the scale; v moves the logits.
        assert (change < 1e-3) if ".v." not in name else (change > 0.05), (name, change)


def test_monitor_detection_finds_exactly_the_qk_normalised_projections() -> None:
    torch.manual_seed(0)
    x = torch.randint(0, V, (4, 16))
    found = find_scale_invariant(gpt(V, 16, width=32, depth=2, heads=4, qk_norm="layernorm"), x)
    names = sorted(p for f in found for p in f.params)
    assert names == sorted(f"blocks.{i}.attn.{r}.weight" for i in range(2) for r in "qk")
    assert find_scale_invariant(gpt(V, 16, width=32, depth=2, heads=4, qk_norm="none"), x) == []


def test_gpt_roles_tying_and_bad_arguments() -> None:
    model = gpt(V, 16, width=32, depth=2, heads=4, tie=True)
    assert model.head.weight is model.embed.weight
    roles = model.parameter_roles()
    assert roles["blocks.0.mlp.fc.weight"] == "matrix"
    assert roles["embed.weight"] == "embedding" and "head.weight" not in roles  # tied: listed once
    assert roles["blocks.1.ln2.weight"] == "gain" and roles["norm.bias"] == "gain"
    with pytest.raises(ValueError, match="heads"):
        GPT(V, 16, width=30, heads=4)
    with pytest.raises(ValueError, match="qk_norm"):
        GPT(V, 16, qk_norm="batchnorm")
    with pytest.raises(ValueError, match="longer than the context"):
        gpt(V, 8, width=16, depth=1, heads=2)(torch.zeros(1, 9, dtype=torch.long))


# ---------------------------------------------------------------------------------------------- data


def _corpus(root: Path, files: int = 24, chars: int = 3000) -> Path:
    """Python-looking files, each made of one distinctive line repeated, so a window tells its file."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        line = f"def f{i:02d}(x):\n    return x + {i}\n"
        (root / f"mod{i:02d}.py").write_text(line * (chars // len(line)))
    (root / "__pycache__").mkdir(exist_ok=True)
    (root / "__pycache__" / "skip.py").write_text("SKIPPED = 1\n" * 500)
    return root


def test_encode_maps_printable_ascii_and_folds_the_rest() -> None:
    ids = encode("a\n\té€\r".encode())
    assert [VOCABULARY[i] for i in ids[:3]] == ["a", "\n", "\t"]
    assert set(ids[3:].tolist()) == {len(VOCABULARY)}  # é and € (5 bytes) and \r share one id
    assert V == 98


def test_text_split_windows_and_determinism(tmp_path: Path) -> None:
    root = _corpus(tmp_path / "c")
    src = load_text(root, 0, {"length": 16, "test_windows": 64, "test_every": 3, "min_chars": 1000})
    held = {f"mod{i:02d}.py" for i in range(24) if zlib.crc32(f"mod{i:02d}.py".encode()) % 3 == 0}
    assert 0 < len(held) < 24
    assert src.fingerprint["files"] == 24  # __pycache__ left out
    x, y = src.test_set()
    assert x.shape == y.shape == (64, 16) and x.dtype == torch.long
    torch.testing.assert_close(x[:, 1:], y[:, :-1])
    text = ["".join(VOCABULARY[i] if i < len(VOCABULARY) else "?" for i in row) for row in x.tolist()]
    names = {f"{n[:-3].replace('mod', 'f')}(" for n in held}
    train_names = {f"f{i:02d}(" for i in range(24)} - names
    assert not any(n in t for t in text for n in train_names)  # no training file in the test windows
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a, b = src.train_batch(8, g1), src.train_batch(8, g2)
    torch.testing.assert_close(a[0], b[0])
    tr = ["".join(VOCABULARY[i] for i in row) for row in a[0].tolist()]
    assert not any(n in t for t in tr for n in names)  # no held-out file in the training batches


def test_text_refuses_a_small_corpus_and_unknown_options(tmp_path: Path) -> None:
    root = _corpus(tmp_path / "c", files=3, chars=400)
    with pytest.raises(ValueError, match="too small"):
        load_text(root, 0, {"test_every": 2})
    with pytest.raises(ValueError, match="unknown option"):
        load_text(root, 0, {"window": 3})
    with pytest.raises(FileNotFoundError):
        load_text(tmp_path / "absent", 0, {})


# ---------------------------------------------------------------------------------------------- optimizer


def _muon_cfg(**optim: object):
    raw = {
        "data": {"name": "text", "batch_size": 4},
        "model": {"name": "gpt"},
        "optim": {"name": "muon", "lr": 0.02, "weight_decay": 0.25, "momentum": 0.95, "nesterov": True}
        | optim,
    }
    return config_from_dict(raw)


def test_muon_with_adamw_steps_exactly_as_the_two_torch_optimizers() -> None:
    torch.manual_seed(0)
    model = gpt(V, 8, width=16, depth=2, heads=2)
    ref = copy.deepcopy(model)
    opt = by_roles(_muon_cfg(adamw_lr=0.003).optim, model)
    assert isinstance(opt, MuonWithAdamW)
    roles = ref.parameter_roles()
    named = dict(ref.named_parameters())
    by_shape: dict[tuple[int, ...], list[torch.nn.Parameter]] = {}
    for n, r in roles.items():
        if r == "matrix":
            by_shape.setdefault(tuple(named[n].shape), []).append(named[n])
    muon = torch.optim.Muon(
        [{"params": ps} for ps in by_shape.values()], lr=0.02, weight_decay=0.25, momentum=0.95, nesterov=True
    )
    decayed = [named[n] for n, r in roles.items() if r == "embedding"]
    gains = [named[n] for n, r in roles.items() if r == "gain"]
    adamw = torch.optim.AdamW(
        [{"params": decayed}, {"params": gains, "weight_decay": 0.0}], lr=0.003, weight_decay=0.25
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5**t)
    sched_m = torch.optim.lr_scheduler.LambdaLR(muon, lambda t: 0.5**t)
    sched_a = torch.optim.lr_scheduler.LambdaLR(adamw, lambda t: 0.5**t)
    for _ in range(3):
        x = torch.randint(0, V, (4, 8))
        for m in (model, ref):
            loss = F.cross_entropy(m(x).flatten(0, 1), x.flatten())
            m.zero_grad()
            loss.backward()
        opt.step()
        muon.step()
        adamw.step()
        for s in (sched, sched_m, sched_a):
            s.step()
    for (n, a), b in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.02 / 8)  # the scheduler reached the inner groups
    state = opt.state_dict()
    fresh = by_roles(_muon_cfg(adamw_lr=0.003).optim, copy.deepcopy(model))
    fresh.load_state_dict(state)
    assert fresh.muon.state_dict()["state"].keys() == state["muon"]["state"].keys()


def test_muon_needs_declared_matrices_and_config_checks() -> None:
    cfg = _muon_cfg()
    with pytest.raises(ValueError, match="hidden matrices"):
        by_roles(cfg.optim, torch.nn.Sequential(torch.nn.Linear(3, 3)))
    with pytest.raises(ValueError, match="adamw_lr"):
        config_from_dict({"optim": {"name": "adamw", "adamw_lr": 0.01}})
    with pytest.raises(ValueError, match="params"):
        config_from_dict({"monitor": {"params": "everything"}})
    assert config_from_dict({"monitor": {"params": "matrices"}}).monitor.params == "matrices"


# ---------------------------------------------------------------------------------------------- training


def _tiny(root: Path, optim: dict, steps: int, name: str):
    raw = {
        "run": {"name": name, "steps": steps, "eval_every": 10, "log_every": 5, "threads": 1},
        "data": {
            "name": "text",
            "root": str(root),
            "batch_size": 4,
            "options": {"length": 16, "test_windows": 32, "test_every": 3, "min_chars": 1000},
        },
        "model": {"name": "gpt", "options": {"width": 16, "depth": 2, "heads": 2}},
        "optim": optim,
        "monitor": {"window": 10, "flush_every": 5, "params": "matrices"},
    }
    return config_from_dict(raw)


_MUON = {
    "name": "muon",
    "lr": 0.02,
    "weight_decay": 0.25,
    "momentum": 0.95,
    "nesterov": True,
    "adamw_lr": 0.003,
}


def test_sequence_training_loss_is_per_character_and_resume_is_exact(tmp_path: Path) -> None:
    root = _corpus(tmp_path / "c")
    cfg = _tiny(root, _MUON, 20, "tiny")
    whole = train(cfg, tmp_path / "whole", quiet=True)
    half = train(
        dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, steps=10)), tmp_path / "half", quiet=True
    )
    train(cfg, half, resume=True, quiet=True)
    a = torch.load(whole / "checkpoint.pt", weights_only=True)
    b = torch.load(half / "checkpoint.pt", weights_only=True)
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)
    # The held-out loss is the mean over every character, recomputed here in float64.
    summary = json.loads((whole / "summary.json").read_text())
    model = gpt(V, 16, width=16, depth=2, heads=2)
    model.load_state_dict(a["model"])
    x, y = load_text(
        root, 0, {"length": 16, "test_windows": 32, "test_every": 3, "min_chars": 1000}
    ).test_set()
    with torch.no_grad():
        logp = torch.log_softmax(model.eval()(x).double(), dim=-1)
    expected = float(-logp.gather(-1, y[..., None]).mean())
    assert summary["final_test_loss"] == pytest.approx(expected, rel=1e-5)
    assert 0 <= summary["final_test_accuracy"] <= 1
    # Every matrix is monitored; Muon's with a Δ*, AdamW's embeddings with √(2ηλ(1−β₁)/(1+β₁)).
    import pandas as pd

    m = pd.read_csv(whole / "metrics.csv")
    last = m[m.step == m.step.max()].set_index("param")
    assert len(last) == 2 * 6 + 3
    assert np.isfinite(last.loc["blocks.0.mlp.fc.weight", "theory_angular_update"])
    want = math.sqrt(2 * 0.003 * 0.25 * 0.1 / 1.9)
    assert last.loc["embed.weight", "theory_angular_update"] == pytest.approx(want, rel=1e-9)


# ---------------------------------------------------------------------------------------------- claims


def _layers(ratios: list[float]) -> dict:
    return {f"l{i}": {"rms_delta": r, "reference": 1.0, "ratio": r} for i, r in enumerate(ratios)}


def test_grading_every_layer_median_or_none() -> None:
    t = THRESHOLDS
    ok = _group(_layers([0.95, 1.05, 1.09]), ["l0", "l1", "l2"], t.tol)
    assert _grade(ok, t, True)[0] == Verdict.REPRODUCED
    assert _grade(ok, t, False)[0] == Verdict.PARTLY  # too early to call it equilibrium
    some = _group(_layers([0.95, 1.05, 1.5]), ["l0", "l1", "l2"], t.tol)
    assert some["within_tol"] == 2 and some["max_abs_dev"] == pytest.approx(0.5)
    assert _grade(some, t, True)[0] == Verdict.PARTLY
    bad = _group(_layers([0.7, 1.3, 1.5]), ["l0", "l1", "l2"], t.tol)
    assert _grade(bad, t, True)[0] == Verdict.NOT_REPRODUCED
    assert _grade(_group({}, [], t.tol), t, True)[0] == Verdict.NOT_REPRODUCED


# ---------------------------------------------------------------------------------------------- report figure


@pytest.mark.parametrize(
    ("name", "block", "role", "group"),
    [
        ("blocks.0.attn.q.weight", 0, "q", "qk"),
        ("blocks.3.attn.k.weight", 3, "k", "qk"),
        ("blocks.12.attn.v.weight", 12, "v", "attention"),
        ("blocks.1.attn.o.weight", 1, "o", "attention"),
        ("blocks.4.mlp.fc.weight", 4, "fc", "mlp"),
        ("blocks.2.mlp.proj.weight", 2, "proj", "mlp"),
        ("embed.weight", None, "outside", "outside"),
        ("position.weight", None, "outside", "outside"),
        ("head.weight", None, "outside", "outside"),
        ("blocks.0.attn.q_norm.weight", None, "outside", "outside"),  # a gain, not the q projection
        ("blocks.0.mlp.fc.bias", None, "outside", "outside"),
    ],
)
def test_layer_place_by_block_and_role(name: str, block: int | None, role: str, group: str) -> None:
    assert layer_place(name) == LayerPlace(block, role, group)


def test_every_gpt_matrix_has_one_place() -> None:
    model = gpt(V, 16, width=16, depth=3, heads=2)
    places = [layer_place(n) for n, p in model.named_parameters() if p.dim() >= 2]
    inside = sorted((p.block, p.role) for p in places if p.block is not None)
    assert inside == sorted((b, r) for b in range(3) for r in ("q", "k", "v", "o", "fc", "proj"))
    assert sum(p.block is None for p in places) == 3  # embed, position, head


# Synthetic runs of the full configs, recorded every 10th step: Δ = ratio · Δ_ref over the claims' window.
_STRIDE, _RECORDS = 10, 500
_DEPTH = 5
_BLOCK_LAYERS = [
    f"blocks.{i}.{part}.weight"
    for i in range(_DEPTH)
    for part in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc", "mlp.proj")
]
_OUTSIDE = ["embed.weight", "position.weight", "head.weight"]
_ALL = [*_OUTSIDE, *_BLOCK_LAYERS]
# Distinct ratios, 0.85 ... 1.17 (some inside the 10% band, some not), each layer its own.
_RATIO = {n: 0.85 + 0.01 * j for j, n in enumerate(_ALL)}
_ROLE_OF = {"attn.q": "q", "attn.k": "k", "attn.v": "v", "attn.o": "o", "mlp.fc": "fc", "mlp.proj": "proj"}


def _hand_role(name: str) -> str:
    """The role written out from the name's parts (not through `layer_place`)."""
    parts = name.split(".")
    return "outside" if parts[0] != "blocks" else _ROLE_OF[f"{parts[2]}.{parts[3]}"]


def _alternating(rms: float, n: int, c: float = 0.3) -> np.ndarray:
    """n (even) values alternating rms·(1 ± c)/√(1+c²), whose RMS is exactly ``rms``."""
    return rms * np.where(np.arange(n) % 2 == 0, 1 + c, 1 - c) / math.sqrt(1 + c * c)


def _synthetic_run(run_dir: Path, cfg: Config, hyper: dict[str, tuple[float, float, float, float]]) -> None:
    """A finished run directory; ``hyper[layer]`` = (lr, wd, momentum, the monitor's Δ*), and Δ over the
    last 20% of the records = _RATIO · reference, where the reference is Δ* for Muon and
    √(2ηλ(1−β₁)/(1+β₁)) for AdamW (what the claims compare with)."""
    run_dir.mkdir(parents=True)
    save_config(cfg, run_dir / "config.toml")
    start = math.floor(0.8 * _RECORDS)
    adamw = cfg.optim.name == "adamw"
    delta = {}
    for name, (lr, wd, mom, star) in hyper.items():
        ref = math.sqrt(2 * lr * wd * (1 - mom) / (1 + mom)) if adamw else star
        delta[name] = np.r_[np.full(start, 3.0 * ref), _alternating(_RATIO[name] * ref, _RECORDS - start)]
    with open(run_dir / "metrics.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, RUN_COLUMNS, restval=1.0)
        w.writeheader()
        for t in range(_RECORDS):
            for name, (lr, wd, mom, star) in hyper.items():
                d = delta[name][t]
                w.writerow(
                    {
                        "step": t * _STRIDE,
                        "param": name,
                        "channel": -1,
                        "lr": lr,
                        "wd": wd,
                        "momentum": mom,
                        "angular_update": d,
                        "angular_update_rms": d,
                        "angular_update_mean": d,
                        "theory_angular_update": star,
                        "in_equilibrium": False,
                        "reason": "",
                    }
                )
    steps = _RECORDS * _STRIDE
    rows = ["step,epoch,lr,loss,accuracy,test_loss,test_accuracy"]
    rows += [f"{s},0.0,{cfg.optim.lr},2.0,0.4,2.1,0.4" for s in range(500, steps + 1, 500)]
    (run_dir / "train.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (run_dir / "events.csv").write_text("step,kind,group,lr_before,lr_after,factor\n", encoding="utf-8")
    summary = {"status": "completed", "steps": steps, "wall_time_s": 1.0, "steps_per_s": 1.0, "threads": 1}
    (run_dir / "summary.json").write_text(json.dumps(summary), encoding="utf-8")


def _synthetic_transformer(out: Path) -> None:
    adamw = load_config("transformer_adamw")
    assert adamw.model.options["depth"] == _DEPTH
    kosson = math.sqrt(2 * 0.002 * 2.5 * 0.1 / 1.9)
    _synthetic_run(out / "transformer_adamw", adamw, dict.fromkeys(_ALL, (0.002, 2.5, 0.9, kosson)))
    muon = load_config("transformer_muon")
    hyper = {n: (0.02, 0.25, 0.95, 0.05 + 0.001 * j) for j, n in enumerate(_BLOCK_LAYERS)}  # made-up Δ*
    hyper |= dict.fromkeys(_OUTSIDE, (0.002, 0.25, 0.9, math.sqrt(2 * 0.002 * 0.25 * 0.1 / 1.9)))
    _synthetic_run(out / "transformer_muon", muon, hyper)


def _claims_ratios(doc: dict) -> dict[str, dict[str, float]]:
    """Per run, every per-layer ratio that claims.json holds (read here from the JSON, by hand)."""
    out: dict[str, dict[str, float]] = {}
    for c in doc["claims"]:
        for key in ("per_layer", "adamw_trained_per_layer"):
            for name, v in c["measured"].get(key, {}).items():
                out.setdefault(c["runs"][0], {})[name] = v["ratio"]
    return out


def test_report_figure_draws_the_claims_per_layer_ratios(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from smdyn.experiments.reproduce import reproduce

    _synthetic_transformer(tmp_path)

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("train() called for a finished run")

    monkeypatch.setattr(train_module, "train", no_training)
    # The claim's side ratio to √(2ηλ/R) tabulates R by Monte Carlo (~20 s); this test does not read it.
    monkeypatch.delattr(theory, "muon_decorrelation")
    drawn: dict[str, object] = {}
    save = plotting.save_figure

    def keep(fig: object, path: Path) -> Path:
        drawn[Path(path).name] = fig
        return save(fig, path)

    monkeypatch.setattr(plotting, "save_figure", keep)
    reproduce("transformer", out=tmp_path, threads=1, quiet=True)

    doc = json.loads((tmp_path / "claims.json").read_text(encoding="utf-8"))
    ratios = _claims_ratios(doc)
    # claims.json holds every monitored matrix of both runs, at the ratio the runs were built with.
    for config in ("transformer_adamw", "transformer_muon"):
        assert set(ratios[config]) == set(_ALL)
        for name, r in ratios[config].items():
            assert r == pytest.approx(_RATIO[name], rel=1e-9), (config, name)
    # The figure plots exactly those ratios: per panel and role, in block order.
    fig = drawn["transformer_layers.png"]
    axes = fig.axes
    assert len(axes) == 2
    for ax, config in zip(axes, ("transformer_adamw", "transformer_muon"), strict=True):
        lines = {ln.get_gid(): ln for ln in ax.get_lines() if ln.get_gid()}
        assert set(lines) == {"q", "k", "v", "o", "fc", "proj", "outside"}
        for role, line in lines.items():
            names = [n for n in _ALL if _hand_role(n) == role]
            x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
            assert np.all(np.diff(x) > 0)  # blocks left to right, the outside matrices at the right
            if role != "outside":
                want = [ratios[config][n] for n in names]  # _BLOCK_LAYERS is in block order
            else:
                want = [ratios[config][n] for n in sorted(names)]
                assert x.min() > _DEPTH - 1  # beside the blocks
            np.testing.assert_array_equal(y, want)
    # The report shows it, first among the figures.
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert (tmp_path / "figures" / "transformer_layers.png").is_file()
    assert '<figure id="transformer_layers">' in page
    assert page.index('id="transformer_layers"') < page.index('id="angular_update"')
    assert "by block and role (band: 1 ± 10.0%)" in page


def test_write_report_checks_extra_figures(tmp_path: Path) -> None:
    _synthetic_run(
        tmp_path / "run", load_config("transformer_adamw"), dict.fromkeys(_OUTSIDE, (0.002, 2.5, 0.9, 0.01))
    )
    with pytest.raises(TypeError, match="extra_figures"):
        write_report([tmp_path / "run"], tmp_path / "r", extra_figures=[("title only",)])
    with pytest.raises(FileNotFoundError, match="extra_figures"):
        write_report([tmp_path / "run"], tmp_path / "r", extra_figures=[("t", "c", tmp_path / "none.png")])


@pytest.mark.slow
def test_quick_transformer(tmp_path: Path) -> None:
    from smdyn.experiments.reproduce import reproduce

    reproduce("transformer", quick=True, out=tmp_path, threads=1, quiet=True)
    doc = json.loads((tmp_path / "claims.json").read_text())
    assert all(r["status"] == "completed" and r["steps"] == 500 for r in doc["runs"])
    claims = {c["id"]: c for c in doc["claims"]}
    assert set(claims) == {"adamw_equilibrium_invariant", "adamw_equilibrium_other", "muon_equilibrium"}
    inv, muon = claims["adamw_equilibrium_invariant"]["measured"], claims["muon_equilibrium"]["measured"]
    assert inv["layers"] == 10 and muon["layers"] == 30
    assert set(muon["adamw_trained_per_layer"]) == {"embed.weight", "position.weight", "head.weight"}
    assert 'id="transformer_layers"' in (tmp_path / "report.html").read_text(encoding="utf-8")
    assert inv["long_enough"] and muon["long_enough"]
    # Even at 2.5/(ηλ) steps the median layer is near its equilibrium value (a loose band, not the claim).
    assert 0.8 < inv["median_ratio"] < 1.25
    assert 0.8 < muon["median_ratio"] < 1.25
    assert muon["final_test_loss"] < math.log(V)  # the model learned something
