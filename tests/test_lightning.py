"""SphericalMonitorCallback inside a real Lightning ``Trainer`` against float64 recomputations."""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("lightning.pytorch", reason="Lightning is not installed (pip install lightning)")

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins import MixedPrecision

import smdyn.integrations.lightning as integration
from smdyn.integrations._metrics import compact_metrics
from smdyn.integrations.lightning import RescalerCallback, SphericalMonitorCallback

_LR, _WD, _MOM = 0.1, 5e-3, 0.9
_STAR = math.sqrt(2 * _LR * _WD / (1 + _MOM))  # Thm 3
_UNITS = ("conv.weight", "fc.weight+fc.bias")  # what params="auto" finds in _Net
_TAGS = {"conv.weight": "conv.weight", "fc.weight+fc.bias": "fc.weight_fc.bias"}  # their logged names
_BATCHES = 10  # per epoch


class _Net(pl.LightningModule):
    """Conv(no bias) -> BatchNorm, then Linear(with bias) -> LayerNorm (invariant jointly with its bias)."""

    def __init__(self, milestones: list[int] | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(64, 16)
        self.ln = nn.LayerNorm(16)
        self.head = nn.Linear(16, 3)
        self.milestones = milestones

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x))).flatten(1)
        return self.head(torch.relu(self.ln(self.fc(x))))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=_LR, momentum=_MOM, weight_decay=_WD)
        if self.milestones is None:
            return opt
        drop = torch.optim.lr_scheduler.MultiStepLR(opt, self.milestones, 0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": drop, "interval": "step"}}


def _loader() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16 * _BATCHES, 1, 6, 6, generator=g)
    y = torch.randint(0, 3, (16 * _BATCHES,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


class _Probe(pl.Callback):
    """Each unit's weights (and gradients) around every optimizer step, in float64, taken outside the monitor.

    "Before" is read in ``on_before_optimizer_step``, so it sees what the callbacks listed before it did;
    "after" at the end of a batch whose ``global_step`` moved.
    """

    def __init__(self) -> None:
        self.before: list[dict[str, np.ndarray]] = []
        self.grad: list[dict[str, np.ndarray]] = []
        self.after: list[dict[str, np.ndarray]] = []
        self._step = 0

    @staticmethod
    def _take(module: nn.Module, attr: str) -> dict[str, np.ndarray]:
        named = {
            n: getattr(p, attr).detach().double().flatten().numpy() for n, p in module.named_parameters()
        }
        return {u: np.concatenate([named[n] for n in u.split("+")]) for u in _UNITS}

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._step = trainer.global_step

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.before.append(self._take(pl_module, "data"))
        self.grad.append(self._take(pl_module, "grad"))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        if trainer.global_step != self._step:
            self._step = trainer.global_step
            self.after.append(self._take(pl_module, "data"))


class _Memory(Logger):
    """A logger that keeps every ``log_metrics`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.seen.append((step, dict(metrics)))


def _fit(
    root: Path,
    callbacks: list[Any],
    steps: int = 20,
    ckpt: str | None = None,
    module: _Net | None = None,
    **trainer_kw: Any,
) -> pl.Trainer:
    torch.manual_seed(0)
    module = module or _Net()
    kw: dict[str, Any] = {
        "logger": False,
        "enable_checkpointing": False,
        "log_every_n_steps": 5,
        **trainer_kw,
    }
    trainer = pl.Trainer(
        max_steps=steps, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
        callbacks=callbacks, default_root_dir=root, **kw,
    )  # fmt: skip
    with warnings.catch_warnings():
        for category in (UserWarning, FutureWarning):  # data loader workers; its use of torch's pytree
            warnings.filterwarnings("ignore", category=category, module="lightning")
        trainer.fit(module, _loader(), ckpt_path=ckpt)
    return trainer


def _angle64(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    return 2 * math.atan2(np.linalg.norm(a - b), np.linalg.norm(a + b))


def _brute(probe: _Probe, unit: str) -> np.ndarray:
    return np.array([_angle64(b[unit], a[unit]) for b, a in zip(probe.before, probe.after, strict=True)])


def _rows(h: dict[str, np.ndarray], unit: str, col: str) -> np.ndarray:
    return h[col][h["param"] == unit]


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """20 steps (2 epochs), window 8, logged every 5 steps, with a Lightning checkpoint at step 10."""
    root = tmp_path_factory.mktemp("plain")
    cb, probe, logger = SphericalMonitorCallback(window=8, tol=1.5), _Probe(), _Memory()
    ckpt = ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=10, save_top_k=-1)
    trainer = _fit(root, [cb, probe, ckpt], logger=logger, enable_checkpointing=True)
    return {"cb": cb, "probe": probe, "logger": logger, "trainer": trainer, "ckpt": root / "ckpt"}


def test_one_record_per_step_equal_to_float64_angles(plain: dict[str, Any]) -> None:
    h, probe = plain["cb"].monitor.history(), plain["probe"]
    assert plain["trainer"].global_step == 20 and plain["cb"].monitor.step == 20
    assert len(probe.before) == len(probe.after) == 20
    assert list(h["param"]) == list(_UNITS) * 20
    np.testing.assert_array_equal(h["step"], np.repeat(np.arange(20), 2))
    for unit in _UNITS:
        delta = _brute(probe, unit)
        assert delta.min() > 1e-3  # a real angle, not a vanishing one
        np.testing.assert_allclose(_rows(h, unit, "angular_update"), delta, rtol=1e-4)
        norms = np.array([np.linalg.norm(b[unit]) for b in probe.before])
        np.testing.assert_allclose(_rows(h, unit, "weight_norm"), norms, rtol=1e-6)
        # The gradient measured is the one of this step's backward (the closure ran before the measurement).
        g2 = np.array([np.sum(g[unit] ** 2) for g in probe.grad])
        np.testing.assert_allclose(_rows(h, unit, "unit_grad_sq"), g2 * norms**2, rtol=1e-5)


def test_logger_gets_the_compact_metrics_at_logging_steps(plain: dict[str, Any]) -> None:
    seen, probe = plain["logger"].seen, plain["probe"]
    assert [s for s, _ in seen] == [4, 9, 14, 19]  # global steps 5, 10, 15, 20: the monitor's record steps
    per_unit = ("angular_update", "angular_update_rms", "theory_angular_update", "weight_norm")
    keys = {f"{m}/{_TAGS[u]}" for m in per_unit for u in _UNITS}
    keys |= {"smdyn/median_rms_ratio", "smdyn/fraction_in_equilibrium"}
    for step, metrics in seen:
        assert set(metrics) - {"epoch"} == keys
        ratios = []
        for unit in _UNITS:
            tag, delta = _TAGS[unit], _brute(probe, unit)
            rms = math.sqrt(np.mean(delta[max(0, step - 7) : step + 1] ** 2))  # trailing window of 8
            assert metrics[f"angular_update/{tag}"] == pytest.approx(delta[step], rel=1e-4)
            assert metrics[f"angular_update_rms/{tag}"] == pytest.approx(rms, rel=1e-4)
            # Lightning logs through float32 tensors
            assert metrics[f"theory_angular_update/{tag}"] == pytest.approx(_STAR, rel=1e-6)
            norm = np.linalg.norm(probe.before[step][unit])
            assert metrics[f"weight_norm/{tag}"] == pytest.approx(norm, rel=1e-6)
            ratios.append(rms / _STAR)
        assert metrics["smdyn/median_rms_ratio"] == pytest.approx(np.median(ratios), rel=1e-4)
        in_eq = [step >= 7 and abs(r - 1) <= 1.5 for r in ratios]  # window full, within tol
        assert metrics["smdyn/fraction_in_equilibrium"] == pytest.approx(np.mean(in_eq))
    fractions = [m["smdyn/fraction_in_equilibrium"] for _, m in seen]
    assert fractions[0] == 0.0 and max(fractions) > 0  # window not yet full, then some within tol


def test_resume_continues_step_count_and_windows(plain: dict[str, Any], tmp_path: Path) -> None:
    (ckpt,) = plain["ckpt"].glob("*step=10*.ckpt")
    saved = torch.load(ckpt, weights_only=True)["callbacks"]["SphericalMonitorCallback"]["monitor"]
    assert saved["step"] == 10
    cb, logger = SphericalMonitorCallback(window=8, tol=1.5), _Memory()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "windows start empty"
        _fit(tmp_path, [cb], ckpt=str(ckpt), logger=logger)
    a, b = plain["cb"].monitor.history(), cb.monitor.history()
    tail = a["step"] >= 10
    np.testing.assert_array_equal(b["step"], a["step"][tail])
    np.testing.assert_allclose(b["angular_update"], a["angular_update"][tail], rtol=1e-6)
    # The RMS windows carry steps 3-9 over: equal to the uninterrupted run, not to a fresh window.
    np.testing.assert_allclose(b["angular_update_rms"], a["angular_update_rms"][tail], rtol=1e-6)
    first = _rows(b, "conv.weight", "angular_update")[0]
    assert abs(_rows(b, "conv.weight", "angular_update_rms")[0] / first - 1) > 1e-3
    assert [s for s, _ in logger.seen] == [14, 19]


def test_resume_without_callback_state_warns_and_aligns_steps(plain: dict[str, Any], tmp_path: Path) -> None:
    (ckpt,) = plain["ckpt"].glob("*step=10*.ckpt")
    state = torch.load(ckpt, weights_only=True)
    del state["callbacks"]["SphericalMonitorCallback"]
    torch.save(state, tmp_path / "stripped.ckpt")
    cb = SphericalMonitorCallback(window=8)
    with pytest.warns(RuntimeWarning, match="windows start empty"):
        _fit(tmp_path, [cb], steps=12, ckpt=str(tmp_path / "stripped.ckpt"))
    b = cb.monitor.history()
    np.testing.assert_array_equal(np.unique(b["step"]), [10, 11])
    first = _rows(b, "conv.weight", "angular_update")[0]
    assert _rows(b, "conv.weight", "angular_update_rms")[0] == pytest.approx(first, rel=1e-12)


def test_gradient_accumulation_gives_one_record_per_optimizer_step(tmp_path: Path) -> None:
    cb, probe, logger = SphericalMonitorCallback(), _Probe(), _Memory()
    trainer = _fit(
        tmp_path, [cb, probe], steps=6, accumulate_grad_batches=2, logger=logger, log_every_n_steps=2
    )
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed == 12  # batches
    h = cb.monitor.history()
    np.testing.assert_array_equal(h["step"], np.repeat(np.arange(6), 2))
    assert len(probe.before) == len(probe.after) == 6
    for unit in _UNITS:
        delta = _brute(probe, unit)
        np.testing.assert_allclose(_rows(h, unit, "angular_update"), delta, rtol=1e-4)
        norms = np.array([np.linalg.norm(b[unit]) for b in probe.before])
        g2 = np.array([np.sum(g[unit] ** 2) for g in probe.grad])  # the accumulated gradient
        np.testing.assert_allclose(_rows(h, unit, "unit_grad_sq"), g2 * norms**2, rtol=1e-5)
        for step, metrics in logger.seen:
            assert metrics[f"angular_update/{_TAGS[unit]}"] == pytest.approx(delta[step], rel=1e-4)
    assert [s for s, _ in logger.seen] == [1, 3, 5]


@pytest.mark.parametrize("monitor_first", [True, False])
def test_with_rescaler_the_record_at_a_drop_is_the_rescaled_step(tmp_path: Path, monitor_first: bool) -> None:
    monitor, rescaler = SphericalMonitorCallback(), RescalerCallback()
    unscaled, rescaled = _Probe(), _Probe()  # weights before / after the rescale of on_before_optimizer_step
    callbacks = [unscaled, rescaler, rescaled]
    callbacks = [monitor, *callbacks] if monitor_first else [*callbacks, monitor]
    _fit(tmp_path, callbacks, steps=14, module=_Net(milestones=[10]))
    (r,) = rescaler.rescalers
    assert [e["step"] for e in r.events if e["action"] == "rescaled"] == [10]
    h = monitor.monitor.history()
    np.testing.assert_allclose(_rows(h, "conv.weight", "lr"), [_LR] * 10 + [_LR / 10] * 4, rtol=1e-12)
    c = 10 ** (-1 / 4)  # Sec 4.2: lr ÷ 10 -> weights × 10^(-1/4)
    for unit in _UNITS:
        norms = _rows(h, unit, "weight_norm")
        # Measured after the rescale: the norm of the rescaled weights, c times the unscaled ones at step 10.
        np.testing.assert_allclose(norms, [np.linalg.norm(b[unit]) for b in rescaled.before], rtol=1e-6)
        assert norms[10] == pytest.approx(c * np.linalg.norm(unscaled.before[10][unit]), rel=1e-6)
        np.testing.assert_allclose(_rows(h, unit, "angular_update"), _brute(rescaled, unit), rtol=1e-4)
        # The window restarted at the drop, so its RMS is the first step's Δ.
        rms, delta = _rows(h, unit, "angular_update_rms"), _rows(h, unit, "angular_update")
        assert rms[10] == pytest.approx(delta[10], rel=1e-12)
        assert _rows(h, unit, "theory_angular_update")[10] == pytest.approx(_STAR / math.sqrt(10), rel=1e-9)


def test_skipped_step_of_the_loss_scaler_warns(tmp_path: Path) -> None:
    class Overflowing(_Net):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            return loss * math.inf if batch_idx == 2 else loss  # non-finite gradients: the step is skipped

    cb = SphericalMonitorCallback()
    scaler = MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))
    with pytest.warns(RuntimeWarning, match="optimizer step 2 was not recorded"):
        trainer = _fit(tmp_path, [cb], steps=5, module=Overflowing(), plugins=[scaler])
    assert trainer.global_step == 5 and cb.monitor.step == 4


def test_channel_granularity_logs_median_over_channels(tmp_path: Path) -> None:
    cb, probe, logger = SphericalMonitorCallback(granularity="channel"), _Probe(), _Memory()
    _fit(tmp_path, [cb, probe], steps=5, logger=logger)
    ((step, metrics),) = logger.seen
    before, after = (x[step]["conv.weight"].reshape(4, -1) for x in (probe.before, probe.after))
    per_channel = [_angle64(b, a) for b, a in zip(before, after, strict=True)]
    assert metrics["angular_update/conv.weight"] == pytest.approx(np.median(per_channel), rel=1e-4)
    assert len(cb.monitor.history()["step"]) == 5 * (4 + 1)  # 4 channel rows + the LayerNorm pair


def test_hooks_removed_and_sinks_closed_after_fit(tmp_path: Path) -> None:
    class Sink:
        def __init__(self) -> None:
            self.rows, self.closed = 0, False

        def write(self, batch: dict[str, np.ndarray]) -> None:
            self.rows += len(batch["step"])

        def close(self) -> None:
            self.closed = True

    sink = Sink()
    cb = SphericalMonitorCallback(sinks=[sink], flush_every=100)
    trainer = _fit(tmp_path, [cb], steps=3)
    assert sink.closed and sink.rows == 6  # the last records were flushed at the end of fit
    module, opt = trainer.lightning_module, trainer.optimizers[0]
    x, y = next(iter(_loader()))
    w = module.conv.weight.detach().clone()
    F.cross_entropy(module(x), y).backward()
    opt.step()
    assert not torch.equal(w, module.conv.weight)  # the step ran
    assert cb.monitor.step == 3 and len(cb.monitor.history()["step"]) == 6


def test_bad_monitor_argument_raises_when_training_starts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="window"):
        _fit(tmp_path, [SphericalMonitorCallback(window=1)], steps=2)


def test_auto_without_forward_warns_and_named_params_work(tmp_path: Path) -> None:
    class NoForward(_Net):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Flatten(), nn.Linear(36, 8, bias=False), nn.LayerNorm(8), nn.Linear(8, 3)
            )

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return F.cross_entropy(self.net(batch[0]), batch[1])

    NoForward.forward = pl.LightningModule.forward  # as when the class defines none
    cb = SphericalMonitorCallback()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        _fit(tmp_path, [cb], steps=2, module=NoForward())
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert any("does not define" in m for m in messages) and any("idle" in m for m in messages)
    assert len(cb.monitor.history()["step"]) == 0
    cb = SphericalMonitorCallback(["net.1.weight"])
    _fit(tmp_path, [cb], steps=2, module=NoForward())
    np.testing.assert_array_equal(cb.monitor.history()["step"], [0, 1])


def test_logged_names_are_sanitised_and_unique() -> None:
    rows = [
        {"param": p, "angular_update": 0.1, "angular_update_rms": 0.2, "theory_angular_update": 0.4,
         "weight_norm": 2.0, "in_equilibrium": False}
        for p in ("a.w+a.b", "a.w_a.b", "x[0]:w")
    ]  # fmt: skip
    tags: dict[str, str] = {}
    out = compact_metrics(rows, lambda name: integration._tag(name, tags))
    assert tags == {"a.w+a.b": "a.w_a.b", "a.w_a.b": "a.w_a.b_2", "x[0]:w": "x_0__w"}
    assert out["weight_norm/a.w_a.b_2"] == 2.0
    assert out["smdyn/median_rms_ratio"] == pytest.approx(0.5)


def test_missing_lightning_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, name, None)  # import of it raises ImportError
    monkeypatch.setattr(integration, "_BUILT", {})
    with pytest.raises(ImportError, match=r"pip install smdyn\[lightning\]"):
        integration.SphericalMonitorCallback  # noqa: B018


# ------------------------------------------------------------------------------ never abort training


class _NoNorm(_Net):
    """Nothing scale-invariant: a plain MLP, no normalisation layer."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.net.parameters(), lr=_LR, momentum=_MOM, weight_decay=_WD)


def _smdyn_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [
        str(w.message) for w in caught if issubclass(w.category, RuntimeWarning) and "smdyn" in str(w.message)
    ]


@pytest.mark.parametrize("which", ["monitor", "rescaler"])
def test_nothing_to_monitor_or_rescale_goes_idle_with_one_warning(tmp_path: Path, which: str) -> None:
    cb = SphericalMonitorCallback() if which == "monitor" else RescalerCallback()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _fit(tmp_path, [cb], steps=4, module=_NoNorm())
    assert trainer.global_step == 4
    messages = _smdyn_warnings(caught)
    assert len(messages) == 1, messages
    name = "SphericalMonitorCallback" if which == "monitor" else "RescalerCallback"
    assert f"{name} is idle" in messages[0] and "on_train_start" in messages[0]
    assert ("no parameters to monitor" if which == "monitor" else "found no scale-invariant") in messages[0]
    assert cb.state_dict() == {}  # idle: nothing for the checkpoint


def test_a_failing_hook_warns_once_and_fit_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from smdyn.monitor import SphericalMonitor

    def broken(self: Any) -> Any:
        raise RuntimeError("summary broke")

    monkeypatch.setattr(SphericalMonitor, "summary", broken)
    cb = SphericalMonitorCallback()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _fit(tmp_path, [cb], steps=12)  # logs at steps 5 and 10
    assert trainer.global_step == 12
    messages = _smdyn_warnings(caught)
    assert len(messages) == 1 and "on_train_batch_end: RuntimeError: summary broke" in messages[0], messages
    assert cb.monitor.step == 5  # closed at the first logging step
    assert len(trainer.optimizers[0]._optimizer_step_pre_hooks) == 0
    assert cb.state_dict() == {}


def test_monitor_kwargs_as_a_mapping_or_as_keywords(tmp_path: Path) -> None:
    as_mapping = SphericalMonitorCallback(monitor_kwargs={"window": 4, "tol": 2.0})
    as_keywords = SphericalMonitorCallback(window=4, tol=2.0)
    histories = []
    for cb in (as_mapping, as_keywords):
        _fit(tmp_path / str(len(histories)), [cb], steps=4)
        assert cb.monitor.window == 4 and cb.monitor.tol == 2.0
        histories.append(cb.monitor.history())
    for key, values in histories[0].items():
        np.testing.assert_array_equal(values, histories[1][key], err_msg=key)
    with pytest.raises(TypeError, match="tol given both"):
        SphericalMonitorCallback(tol=1.0, monitor_kwargs={"tol": 2.0})
    with pytest.raises(TypeError, match="windw"):
        SphericalMonitorCallback(windw=4)
    with pytest.raises(ValueError, match="mode"):
        RescalerCallback(mode="smooth")
    with pytest.raises(ValueError, match="floor"):
        RescalerCallback(floor=2.0)
    with pytest.raises(TypeError, match="mdoe"):
        RescalerCallback(mdoe="drops")
