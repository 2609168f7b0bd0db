"""SphericalMonitorCallback inside a real ``transformers.Trainer`` against float64 recomputations."""

from __future__ import annotations

import importlib
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

from transformers import Trainer, TrainerCallback, TrainingArguments

from smdyn.integrations.huggingface import SphericalMonitorCallback

_WEIGHTS = ("fc1.weight", "fc2.weight")
_LR, _WD = 0.1, 0.01


class _Net(nn.Module):
    """Linear(no bias) -> LayerNorm twice, then a head; returns the dict the Trainer expects."""

    def __init__(self, bias: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16, bias=bias)
        self.ln1 = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 16, bias=False)
        self.ln2 = nn.LayerNorm(16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        h = torch.relu(self.ln1(self.fc1(x)))
        logits = self.head(torch.relu(self.ln2(self.fc2(h))))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class _Data(torch.utils.data.Dataset):
    def __init__(self, n: int = 256) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


class _Snapshots(TrainerCallback):
    """Weights before and after every optimizer step, in float64, taken outside the monitor."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.before: list[dict[str, np.ndarray]] = []
        self.after: list[dict[str, np.ndarray]] = []

    def _take(self, model: nn.Module) -> dict[str, np.ndarray]:
        named = dict(model.named_parameters())
        return {n: named[n].detach().double().flatten().numpy().copy() for n in self.names}

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.before.append(self._take(kw["model"]))

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.after.append(self._take(kw["model"]))


class _Logs(TrainerCallback):
    """Every ``logs`` dict a callback sees, with its global step."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, dict[str, Any]]] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        self.seen.append((state.global_step, dict(logs)))


def _args(out: Path, momentum: float = 0.9, **over: Any) -> TrainingArguments:
    kw: dict[str, Any] = {
        "output_dir": str(out),
        "max_steps": 20,
        "logging_steps": 5,
        "report_to": [],
        "use_cpu": True,
        "optim": "sgd",
        "optim_args": f"momentum={momentum}",
        "learning_rate": _LR,
        "weight_decay": _WD,
        "lr_scheduler_type": "constant",
        "per_device_train_batch_size": 16,
        "save_strategy": "no",
        "disable_tqdm": True,
        "seed": 0,
        **over,
    }
    return TrainingArguments(**kw)


def _angle64(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    return 2 * math.atan2(np.linalg.norm(a - b), np.linalg.norm(a + b))


def _train(
    out: Path,
    callbacks: list[TrainerCallback],
    momentum: float = 0.9,
    model: nn.Module | None = None,
    **over: Any,
) -> Trainer:
    torch.manual_seed(0)
    trainer = Trainer(
        model=model or _Net(), args=_args(out, momentum, **over), train_dataset=_Data(), callbacks=callbacks
    )
    trainer.train()
    return trainer


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_records_equal_float64_recomputation(tmp_path: Path, momentum: float) -> None:
    cb, snaps = SphericalMonitorCallback(), _Snapshots(_WEIGHTS)
    _train(tmp_path, [cb, snaps], momentum)
    h = cb.monitor.history()
    # One row per optimizer step per weight, found by params="auto" (both Linear -> LayerNorm weights).
    assert len(snaps.before) == len(snaps.after) == 20
    assert len(h["step"]) == 20 * len(_WEIGHTS)
    assert sorted(set(h["param"])) == list(_WEIGHTS)
    star = math.sqrt(2 * _LR * _WD / (1 + momentum))  # Thm 3
    for name in _WEIGHTS:
        rows = h["param"] == name
        np.testing.assert_array_equal(h["step"][rows], np.arange(20))
        want = [_angle64(b[name], a[name]) for b, a in zip(snaps.before, snaps.after, strict=True)]
        assert min(want) > 1e-3  # the weights really moved
        np.testing.assert_allclose(h["angular_update"][rows], want, rtol=1e-4)
        norms = [np.linalg.norm(b[name]) for b in snaps.before]
        np.testing.assert_allclose(h["weight_norm"][rows], norms, rtol=1e-6)
        # The Trainer's decay group: weights decay at args.weight_decay; optim_args sets the momentum.
        np.testing.assert_array_equal(h["wd"][rows], _WD)
        np.testing.assert_array_equal(h["momentum"][rows], momentum)
        np.testing.assert_allclose(h["theory_angular_update"][rows], star, rtol=1e-12)


def test_logs_carry_latest_values_at_logging_steps_only(tmp_path: Path) -> None:
    cb, rec = SphericalMonitorCallback(), _Logs()
    torch.manual_seed(0)
    trainer = Trainer(model=_Net(), args=_args(tmp_path), train_dataset=_Data(), callbacks=[rec])
    # The documented way to reach callbacks that run before user callbacks (report_to integrations).
    trainer.callback_handler.callbacks.insert(0, cb)
    trainer.train()
    h = cb.monitor.history()
    keys = {f"{m}/{n}" for m in ("angular_update", "angular_update_rms", "weight_norm") for n in _WEIGHTS}
    keys |= {f"theory_angular_update/{n}" for n in _WEIGHTS}
    keys |= {"smdyn/median_rms_ratio", "smdyn/fraction_in_equilibrium"}
    with_metrics = [(s, logs) for s, logs in rec.seen if any(k.startswith("smdyn/") for k in logs)]
    assert [s for s, _ in with_metrics] == [5, 10, 15, 20]  # not on the final summary log at step 20
    assert len(rec.seen) == 5
    for step, logs in with_metrics:
        assert keys <= set(logs)
        ratios = []
        for n in _WEIGHTS:
            (i,) = np.flatnonzero((h["param"] == n) & (h["step"] == step - 1))
            assert logs[f"angular_update/{n}"] == pytest.approx(h["angular_update"][i], rel=1e-12)
            assert logs[f"weight_norm/{n}"] == pytest.approx(h["weight_norm"][i], rel=1e-12)
            rms = math.sqrt(np.mean(h["angular_update"][(h["param"] == n) & (h["step"] < step)] ** 2))
            assert logs[f"angular_update_rms/{n}"] == pytest.approx(rms, rel=1e-9)
            ratios.append(rms / math.sqrt(2 * _LR * _WD / 1.9))
        assert logs["smdyn/median_rms_ratio"] == pytest.approx(np.median(ratios), rel=1e-9)
        assert logs["smdyn/fraction_in_equilibrium"] == 0.0  # the 200-step window is not full yet
    history = [e for e in trainer.state.log_history if "smdyn/median_rms_ratio" in e]
    assert [e["step"] for e in history] == [5, 10, 15, 20]


def test_channel_granularity_logs_median_over_channels(tmp_path: Path) -> None:
    cb = SphericalMonitorCallback(params=["fc2.weight"], granularity="channel")
    logs = _Logs()
    _train(tmp_path, [cb, logs], max_steps=5)
    h = cb.monitor.history()
    last = h["step"] == 4
    assert last.sum() == 16  # one row per output channel
    (step_logs,) = [d for s, d in logs.seen if "angular_update/fc2.weight" in d]
    assert step_logs["angular_update/fc2.weight"] == pytest.approx(np.median(h["angular_update"][last]))
    assert not any(k.startswith("angular_update/fc1") for k in step_logs)


def test_hooks_removed_after_training(tmp_path: Path) -> None:
    cb = SphericalMonitorCallback()
    trainer = _train(tmp_path, [cb], max_steps=3)
    mon = cb.monitor
    rows, steps = len(mon.history()["step"]), mon.step
    assert steps == 3
    model, data = trainer.model, _Data()
    w = model.fc1.weight.detach().clone()
    model(data.x[:16], labels=data.y[:16])["loss"].backward()
    trainer.optimizer.step()
    assert not torch.equal(w, model.fc1.weight)  # the step ran
    assert mon.step == steps
    assert len(mon.history()["step"]) == rows


@pytest.mark.parametrize("where", ["same_output_dir", "args_resume_from_checkpoint"])
def test_resume_restores_monitor_windows(tmp_path: Path, where: str) -> None:
    full = SphericalMonitorCallback()
    _train(tmp_path / "a", [full], save_strategy="steps", save_steps=10)
    ckpt = tmp_path / "a" / "checkpoint-10"
    saved = torch.load(ckpt / "smdyn_monitor.pt", weights_only=True)
    assert saved["step"] == 10
    resumed = SphericalMonitorCallback()
    torch.manual_seed(0)
    if where == "same_output_dir":
        args = _args(tmp_path / "a")
    else:  # a checkpoint outside output_dir is found through TrainingArguments.resume_from_checkpoint
        args = _args(tmp_path / "b", resume_from_checkpoint=str(ckpt))
    trainer = Trainer(model=_Net(), args=args, train_dataset=_Data(), callbacks=[resumed])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "windows start empty"
        trainer.train(resume_from_checkpoint=str(ckpt))
    a, b = full.monitor.history(), resumed.monitor.history()
    tail = a["step"] >= 10
    np.testing.assert_array_equal(b["step"], a["step"][tail])
    np.testing.assert_allclose(b["angular_update"], a["angular_update"][tail], rtol=1e-6)
    # The RMS windows carry the first 10 steps over: equal to the uninterrupted run, not a fresh window.
    np.testing.assert_allclose(b["angular_update_rms"], a["angular_update_rms"][tail], rtol=1e-6)
    fresh = np.sqrt(np.mean(b["angular_update"][b["param"] == "fc1.weight"] ** 2))
    assert abs(b["angular_update_rms"][b["param"] == "fc1.weight"][-1] / fresh - 1) > 1e-4


def test_resume_without_saved_state_warns_and_aligns_steps(tmp_path: Path) -> None:
    _train(tmp_path, [SphericalMonitorCallback()], save_strategy="steps", save_steps=10, max_steps=10)
    ckpt = tmp_path / "checkpoint-10"
    (ckpt / "smdyn_monitor.pt").unlink()
    cb = SphericalMonitorCallback()
    torch.manual_seed(0)
    trainer = Trainer(model=_Net(), args=_args(tmp_path), train_dataset=_Data(), callbacks=[cb])
    with pytest.warns(RuntimeWarning, match="windows start empty"):
        trainer.train(resume_from_checkpoint=str(ckpt))
    assert cb.monitor.history()["step"].min() == 10


def test_weight_and_bias_with_different_decay_warn(tmp_path: Path) -> None:
    cb = SphericalMonitorCallback()
    with pytest.warns(RuntimeWarning, match=r"fc1\.weight\+fc1\.bias .* weight decays \[0\.0, 0\.01\]"):
        _train(tmp_path, [cb], model=_Net(bias=True), max_steps=2)


def test_bad_monitor_argument_raises_at_train_begin(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="granularity"):
        _train(tmp_path, [SphericalMonitorCallback(granularity="layer")], max_steps=2)  # type: ignore[arg-type]


def test_missing_transformers_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    monkeypatch.delitem(sys.modules, "smdyn.integrations.huggingface")
    with warnings.catch_warnings(), pytest.raises(ImportError, match=r"pip install smdyn\[huggingface\]"):
        importlib.import_module("smdyn.integrations.huggingface")


def _qwen3() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "Qwen3Config"):
        pytest.skip("this transformers version has no Qwen3")
    cfg = transformers.Qwen3Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    return transformers.Qwen3ForCausalLM(cfg)


class _Tokens(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.ids = torch.randint(0, 64, (128, 16), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def test_pretrained_model_with_named_qk_norm_weights(tmp_path: Path) -> None:
    """A tiny Qwen3 built from a config: q/k projections feed a per-head RMSNorm, so they are invariant."""
    names = ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight")
    cb, snaps, logs = SphericalMonitorCallback(params=list(names)), _Snapshots(names), _Logs()
    trainer = Trainer(
        model=_qwen3(),
        args=_args(tmp_path, max_steps=6, logging_steps=3, per_device_train_batch_size=8),
        train_dataset=_Tokens(),
        callbacks=[cb, snaps, logs],
    )
    trainer.train()
    h = cb.monitor.history()
    assert len(h["step"]) == 6 * len(names)
    for name in names:
        rows = h["param"] == name
        want = [_angle64(b[name], a[name]) for b, a in zip(snaps.before, snaps.after, strict=True)]
        np.testing.assert_allclose(h["angular_update"][rows], want, rtol=1e-4)
        assert np.all(np.abs(h["grad_cosine"][rows]) < 1e-3)  # Lemma 1: the gradient is tangential
    logged = [d for _, d in logs.seen if "smdyn/median_rms_ratio" in d]
    assert len(logged) == 2
    assert {f"angular_update/{n}" for n in names} <= set(logged[-1])


def test_auto_on_untraceable_model_warns_and_training_goes_on(tmp_path: Path) -> None:
    cb, logs = SphericalMonitorCallback(), _Logs()
    trainer = Trainer(
        model=_qwen3(),
        args=_args(tmp_path, max_steps=3, logging_steps=3, per_device_train_batch_size=8),
        train_dataset=_Tokens(),
        callbacks=[cb, logs],
    )
    with pytest.warns(RuntimeWarning, match="found nothing to monitor"):
        trainer.train()
    assert trainer.state.global_step == 3
    assert not any("/" in k for _, d in logs.seen for k in d)


# ------------------------------------------------------------------------------ never abort training


class _NoNorm(nn.Module):
    """Nothing scale-invariant: Linear -> ReLU -> Linear, no normalisation layer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.head(torch.relu(self.fc1(x)))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


def _runtime_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [
        str(w.message) for w in caught if issubclass(w.category, RuntimeWarning) and "smdyn" in str(w.message)
    ]


@pytest.mark.parametrize("which", ["auto", "stranger"])
def test_nothing_to_monitor_goes_idle_with_one_warning(tmp_path: Path, which: str) -> None:
    """A model without a scale-invariant weight (or a parameter that is not the model's): training goes on."""
    params = "auto" if which == "auto" else [("stranger", nn.Parameter(torch.ones(3)))]
    cb, logs = SphericalMonitorCallback(params), _Logs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _train(tmp_path, [cb, logs], model=_NoNorm(), max_steps=6)
    assert trainer.state.global_step == 6
    messages = _runtime_warnings(caught)
    assert len(messages) == 1, messages
    assert "SphericalMonitorCallback is idle" in messages[0] and "on_train_begin" in messages[0]
    assert ("no parameters to monitor" if which == "auto" else "does not belong") in messages[0]
    assert not any("/" in k for _, d in logs.seen for k in d)


def test_a_failing_hook_warns_once_and_training_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from smdyn.monitor import SphericalMonitor

    def broken(self: Any) -> Any:
        raise RuntimeError("summary broke")

    monkeypatch.setattr(SphericalMonitor, "summary", broken)
    cb = SphericalMonitorCallback()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _train(tmp_path, [cb], max_steps=12)  # logs at steps 5 and 10
    assert trainer.state.global_step == 12
    messages = _runtime_warnings(caught)
    assert len(messages) == 1 and "on_log: RuntimeError: summary broke" in messages[0], messages
    assert cb.monitor.step == 5  # stopped at the first logging step: its hooks are gone
    from smdyn.integrations.huggingface import _unwrap

    assert len(_unwrap(trainer.optimizer)._optimizer_step_pre_hooks) == 0


def test_monitor_kwargs_as_a_mapping_or_as_keywords(tmp_path: Path) -> None:
    as_mapping = SphericalMonitorCallback(monitor_kwargs={"window": 4, "tol": 2.0, "history_rows": 50})
    as_keywords = SphericalMonitorCallback(window=4, tol=2.0, history_rows=50)
    histories = []
    for cb in (as_mapping, as_keywords):
        _train(tmp_path / str(len(histories)), [cb], max_steps=6)
        assert cb.monitor.window == 4 and cb.monitor.tol == 2.0
        histories.append(cb.monitor.history())
    for key, values in histories[0].items():
        np.testing.assert_array_equal(values, histories[1][key], err_msg=key)
    with pytest.raises(TypeError, match="window given both"):
        SphericalMonitorCallback(window=4, monitor_kwargs={"window": 8})
    with pytest.raises(TypeError, match="windw"):
        SphericalMonitorCallback(windw=4)
    with pytest.raises(ValueError, match="window"):  # checked by the monitor itself, before training
        SphericalMonitorCallback(monitor_kwargs={"window": 1})
    with pytest.raises(ValueError, match="params"):
        SphericalMonitorCallback("everything")
