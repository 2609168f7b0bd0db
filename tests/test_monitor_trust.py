"""Regression tests of the monitor's guarantees: counted once, bounded, never raises, refuses bad state."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from smdyn import SphericalMonitor
from smdyn.monitor import COLUMNS, REASONS, measure, records


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16, bias=False), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 2))


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(4, 8, generator=g)).square().mean().backward()
        opt.step()


class _CallsSuper(torch.optim.SGD):
    """A subclass whose step() calls the parent's: torch runs the step hooks twice per step."""

    def step(self, closure=None):
        return super().step(closure)


def test_a_subclass_calling_super_step_is_counted_once() -> None:
    model = _model()
    torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)  # the parent's step is hooked too
    opt = _CallsSuper(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    calls = []
    opt.register_step_post_hook(lambda *a: calls.append(1))
    with SphericalMonitor(model, opt, params=["0.weight"]) as mon:
        _train(model, opt, 5)
    assert len(calls) == 10, "torch really runs the hooks twice a step here"
    assert mon.step == 5
    assert list(mon.history()["step"]) == [0, 1, 2, 3, 4]
    assert set(mon.history()["reason_code"]) == {"no_theory"}  # an overridden step() is not SGD's


def test_a_step_that_raised_does_not_leave_the_monitor_stuck() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-3)
    with SphericalMonitor(model, opt, params=["0.weight"]) as mon:
        _train(model, opt, 2)
        with pytest.raises(RuntimeError, match="user closure"):
            opt.step(lambda: (_ for _ in ()).throw(RuntimeError("user closure")))
        _train(model, opt, 3)
    assert mon.step == 5
    assert np.isfinite(mon.history()["angular_update"]).all()


def test_history_is_bounded_by_default_and_warns_once_when_rows_are_lost() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-3)
    mon = SphericalMonitor(model, opt, params=["0.weight"], history_rows=6, flush_every=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _train(model, opt, 20)
        mon.close()
    assert sum("latest 6 rows" in str(w.message) for w in caught) == 1
    h = mon.history()
    assert list(h["step"]) == list(range(14, 20))
    assert mon.dropped_rows == 14
    unbounded = SphericalMonitor(model, opt, params=["0.weight"], history_rows=None, flush_every=4)
    _train(model, opt, 20)
    unbounded.close()
    assert len(unbounded.history()["step"]) == 20
    from smdyn.monitor.history import DEFAULT_ROWS

    assert SphericalMonitor(model, opt, params=["0.weight"])._history.max_rows == DEFAULT_ROWS == 100_000


def test_rows_that_cannot_be_computed_are_kept_as_nan_with_a_reason(monkeypatch) -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-3)

    def broken(*args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(records, "build", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with SphericalMonitor(model, opt, params=["0.weight"], flush_every=2) as mon:
            _train(model, opt, 5)
    h = mon.history()
    assert list(h["step"]) == [0, 1, 2, 3, 4]
    assert set(h["reason_code"]) == {"internal"}
    assert np.isnan(h["angular_update"]).all()
    assert any("boom" in str(w.message) for w in caught)
    assert tuple(h) == COLUMNS


class _ListSink:
    def __init__(self) -> None:
        self.steps: list[int] = []

    def write(self, rows: dict) -> None:
        self.steps += [int(s) for s in rows["step"]]

    def close(self) -> None:
        pass


@pytest.mark.parametrize("where", ["measure_step", "measure_after"])
def test_a_failed_measurement_is_kept_as_nan_rows_and_training_is_untouched(monkeypatch, where) -> None:
    """A hook that fails (a sync-debug mode, an exotic tensor, a bug of ours) loses no row: the step is
    recorded as NaN with ``not_measured``, in step order, and the weights are those of an unwatched run."""
    from smdyn.monitor import batch

    def run(watch: bool) -> tuple[nn.Module, SphericalMonitor | None, _ListSink]:
        model = _model()
        opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=1e-2)
        sink = _ListSink()
        mon = None
        if watch:
            mon = SphericalMonitor(model, opt, params=["0.weight"], flush_every=2, sinks=[sink])
        _train(model, opt, 6)
        if mon is not None:
            mon.close()
        return model, mon, sink

    original, calls = getattr(batch, where), [0]

    def fails_on_the_third_call(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("device lost")
        return original(*args, **kwargs)

    monkeypatch.setattr(batch, where, fails_on_the_third_call)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        watched, mon, sink = run(True)
    unwatched, _, _ = run(False)
    for a, b in zip(watched.parameters(), unwatched.parameters(), strict=True):
        assert torch.equal(a, b)
    h = mon.history()
    assert list(h["step"]) == sink.steps == [0, 1, 2, 3, 4, 5]
    assert list(h["reason_code"]) == ["", "", "not_measured", "", "", ""]
    assert "device lost" in h["reason"][2]
    assert np.isnan(h["angular_update"][2]) and np.isfinite(np.delete(h["angular_update"], 2)).all()
    assert sum("skipped step 2" in str(w.message) for w in caught) == 1
    assert mon.step == 6


def test_group_added_mid_run_and_state_of_another_optimizer_is_refused() -> None:
    model = _model()
    first, second = model[0].weight, model[3].weight
    opt = torch.optim.SGD([first], lr=0.1, weight_decay=1e-3)
    with SphericalMonitor(model, opt, params=["0.weight"]) as mon:
        _train(model, opt, 2)
        opt.add_param_group({"params": [second], "lr": 0.01})
        _train(model, opt, 2)
        state = mon.state_dict()
    assert mon.step == 4
    assert np.isfinite(mon.history()["angular_update"]).all()
    other = SphericalMonitor(model, torch.optim.SGD([first], lr=0.1), params=["0.weight"])
    with pytest.raises(ValueError, match="2 optimizer param groups, this optimizer has 1"):
        other.load_state_dict(state)
    same = SphericalMonitor(model, opt, params=["0.weight"])
    same.load_state_dict(state)
    assert same.step == 4


def test_a_pre_hook_registered_later_runs_before_the_measurement_from_the_next_step() -> None:
    """Clipping in a step pre-hook: the monitor measures the clipped gradient. On the step the hook first
    runs after the monitor's, the gradient the monitor would see is not the one applied: NaN, with why."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-3)
    seen = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with SphericalMonitor(model, opt, params=["0.weight"]) as mon:
            _train(model, opt, 1)
            opt.register_step_pre_hook(
                lambda o, a, k: [nn.utils.clip_grad_norm_(model.parameters(), 1e-3)][:0] or None
            )
            opt.register_step_pre_hook(lambda o, a, k: seen.append(float(model[0].weight.grad.norm())))
            _train(model, opt, 4)
            with SphericalMonitor(model, opt, params=["0.weight"]):  # another monitor after it: only reads
                _train(model, opt, 2)
    h = mon.history()
    assert list(h["reason_code"]) == ["", "not_measured", "", "", "", "", ""]
    assert "<lambda> ran after the monitor's measurement point" in h["reason"][1]
    assert sum("did not measure step 1" in str(w.message) for w in caught) == 1
    measured = np.sqrt(h["unit_grad_sq"]) / h["weight_norm"]
    np.testing.assert_allclose(measured[2:], seen[1:], rtol=1e-5)


def test_every_callable_that_raises_never_reaches_the_training_loop() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-3)

    def every(step: int) -> bool:
        if step == 2:
            raise KeyError("schedule bug")
        return True

    mon = SphericalMonitor(model, opt, params=["0.weight"], every=every)
    with pytest.warns(RuntimeWarning, match="schedule bug"):
        _train(model, opt, 4)
    mon.close()
    assert list(mon.history()["step"]) == [0, 1, 3]
    assert mon.step == 4


def test_every_reason_code_has_prose() -> None:
    assert all(isinstance(v, str) and v for v in REASONS.values())
    assert math.isfinite(len(REASONS))


def test_gradients_made_with_create_graph_are_measured_without_recording_a_graph() -> None:
    """Second-order methods backpropagate with create_graph=True: the monitor's sums must not join the
    graph (it would keep every step's activations until the flush, and the rows could not be read)."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    g = torch.Generator().manual_seed(1)
    with SphericalMonitor(model, opt, params=["0.weight"], flush_every=10) as mon:
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            model(torch.randn(4, 8, generator=g)).square().mean().backward(create_graph=True)
            opt.step()
        assert not any(b.requires_grad for _, _, m in mon._pending for b in m.blocks)
    h = mon.history()
    assert list(h["reason_code"]) == ["", "", ""]
    assert np.isfinite(h["angular_update"]).all()


def test_a_closure_called_with_arguments_gets_them() -> None:
    class _ProbingSgd(torch.optim.SGD):
        def step(self, closure=None):
            with torch.enable_grad():
                closure(True)
            return super().step()

    model = _model()
    opt = _ProbingSgd(model.parameters(), lr=0.1)
    x = torch.randn(4, 8)
    seen = []

    def closure(backward: bool = False) -> torch.Tensor:
        seen.append(backward)
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        return loss

    with SphericalMonitor(model, opt, params=["0.weight"]) as mon:
        opt.step(closure)
    assert seen == [True] and mon.step == 1


class _DrawsRandomNumbers(nn.Module):
    """Draws from torch's, Python's and numpy's generators in forward (LayerDrop, stochastic depth)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn, self.b = nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import random

        h = torch.relu(self.bn(self.a(x)))
        noise = torch.empty(8).uniform_() * random.random() * float(np.random.rand())  # noqa: NPY002
        return self.b(h + noise)


@pytest.mark.parametrize("with_batch", [False, True])
def test_finding_the_weights_does_not_change_the_run(with_batch) -> None:
    """Detection traces or runs the forward, which draws random numbers: the run must be the same."""
    import random

    def run(watch: bool) -> tuple[list[torch.Tensor], list[float]]:
        torch.manual_seed(0)
        random.seed(0)
        np.random.seed(0)  # noqa: NPY002
        model = _DrawsRandomNumbers()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        x = torch.randn(16, 4)
        mon = SphericalMonitor(model, opt, example_batch=x if with_batch else None) if watch else None
        for _ in range(3):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        if mon is not None:
            assert [u.name.split("+")[0] for u in mon.units] == ["a.weight"]
            mon.close()
        draws = [float(torch.rand(())), random.random(), float(np.random.rand())]  # noqa: NPY002
        return [p.detach().clone() for p in model.parameters()], draws

    (watched, after_watched), (plain, after_plain) = run(True), run(False)
    assert all(torch.equal(a, b) for a, b in zip(watched, plain, strict=True))
    assert after_watched == after_plain


def test_lr_events_stay_bounded_and_the_count_of_older_ones_survives_a_resume(monkeypatch) -> None:
    """An lr that moves every step (a cyclic schedule, a continuous Rescaler) logs an event a step."""
    from smdyn import Rescaler, _event_log

    monkeypatch.setattr(_event_log, "MAX_EVENTS", 20)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    mon = SphericalMonitor(model, opt, params=["0.weight"], every=10**9, history_rows=0)
    rescaler = Rescaler(opt, ["0.weight"], model, mode="continuous")
    model(torch.randn(4, 8)).square().mean().backward()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(60):
            opt.param_groups[0]["lr"] = 0.1 if i % 2 else 0.2
            opt.step()
    for log, count in ((mon.events, 59), (rescaler.events, 60)):
        assert 20 <= len(log) <= 22 and log.dropped == count - len(log)  # trimmed when an eighth over
        assert log[-1]["step"] == 59 and log[0]["step"] == 59 - len(log) + 1
    assert sum("latest 20 events" in str(w.message) for w in caught) == 2  # once for each
    resumed = SphericalMonitor(model, opt, params=["0.weight"], every=10**9, history_rows=0)
    resumed.load_state_dict(mon.state_dict())
    assert resumed.events == mon.events and resumed.events.dropped == mon.events.dropped
    rescaler.close()
    again = Rescaler(opt, ["0.weight"], model, mode="continuous")
    again.load_state_dict(rescaler.state_dict())
    assert again.events == rescaler.events and again.events.dropped == rescaler.events.dropped
    too_many = _event_log.EventLog([{"step": i} for i in range(50)])  # a state saved with a larger bound
    assert len(too_many) == 20 and too_many.dropped == 30 and too_many[0] == {"step": 30}


def test_kept_buffers_follow_the_weights_of_the_last_step_not_every_set_ever_seen() -> None:
    """Top-k experts: a different set of weights has gradients each step. The monitor keeps CPU buffers
    between recorded steps; they must stay those of the last step, not grow with every set seen."""
    import itertools

    experts = nn.ModuleList(nn.Linear(8, 8, bias=False) for _ in range(5))
    norm = nn.LayerNorm(8)
    model = nn.ModuleDict({"experts": experts, "norm": norm})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    names = [f"experts.{i}.weight" for i in range(5)]
    subsets = list(itertools.combinations(range(5), 2))  # 10 different sets of two
    kept = []
    with SphericalMonitor(model, opt, params=names) as mon:
        for step in range(2 * len(subsets)):
            x = torch.randn(4, 8)
            loss = sum(norm(experts[i](x)).square().mean() for i in subsets[step % len(subsets)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            kept.append(sum(t.numel() for t in mon._buffers._kept.values()))
    one_step = max(kept[:1])  # each step's set is freed after it has gone unused for KEEP_UNUSED steps
    assert max(kept) <= (measure.Buffers.KEEP_UNUSED + 2) * one_step < 10 * one_step, kept
    assert np.isfinite(
        mon.history()["angular_update"][~np.isin(mon.history()["reason_code"], ["no_grad"])]
    ).all()


def test_a_weight_the_theory_cannot_cover_loses_only_its_own_rows() -> None:
    """A zero-element weight: AdamW's w* refuses numel 0. That must not turn the other rows NaN."""

    class _WithEmpty(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.empty = nn.Parameter(torch.zeros(8, 0))
            self.a, self.ln, self.head = nn.Linear(4, 8, bias=False), nn.LayerNorm(8), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.ln(self.a(x) + x[:, :0] @ self.empty.T))

    model = _WithEmpty()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    with SphericalMonitor(model, opt, params=["empty", "a.weight"]) as mon:
        _train_on(model, opt, 3, features=4)
    h = mon.history()
    empty, a = h["param"] == "empty", h["param"] == "a.weight"
    assert set(h["reason_code"][empty]) == {"zero_norm"}
    assert set(h["reason_code"][a]) <= {"", "rotation_excess"}
    assert np.isfinite(h["angular_update"][a]).all() and np.isfinite(h["theory_weight_norm"][a]).all()


def _train_on(model: nn.Module, opt: torch.optim.Optimizer, steps: int, features: int) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(4, features, generator=g)).square().mean().backward()
        opt.step()


def test_complex_parameters_are_refused_by_name() -> None:
    """Its dot products would not conjugate: a wrong Δ with no reason. Refused when attaching instead."""
    w = nn.Parameter(torch.randn(8, 4, dtype=torch.cfloat))
    model = nn.Module()
    model.w = w
    opt = torch.optim.AdamW([w], lr=1e-2, weight_decay=0.1)
    with pytest.raises(ValueError, match="w: complex parameters are not supported"):
        SphericalMonitor(model, opt, params=["w"])


def test_a_known_update_too_radial_to_resolve_is_nan_with_a_reason_not_a_wrong_angle() -> None:
    """A weight that is not scale-invariant, its gradient almost along it: the tangential part of the SGD
    step is ~1e-6 of it, below what the float32 Gram of (w, g, v) resolves (it read Δ 19% off)."""
    torch.manual_seed(0)
    w, u = nn.Parameter(torch.randn(100_000)), torch.randn(100_000)
    model = nn.Module()
    model.w = w
    opt = torch.optim.SGD([w], lr=0.1)
    with SphericalMonitor(model, opt, params=["w"]) as mon:
        for _ in range(3):
            opt.zero_grad()
            (0.5 * (w @ w) + 1e-3 * (u @ w)).backward()
            opt.step()
    h = mon.history()
    assert list(h["reason_code"]) == ["radial_step"] * 3
    assert np.isnan(h["angular_update"]).all() and np.isnan(h["theory_angular_update"]).all()
    assert np.isfinite(h["weight_norm"]).all() and (h["grad_cosine"] > 0.99).all()


def test_a_weight_and_bias_in_groups_with_different_settings_get_no_theory_but_a_true_angle() -> None:
    """ "No weight decay on biases": Linear → LayerNorm is scale-invariant in (weight, bias) jointly, but the
    two follow different (lr, λ): no single equilibrium. The angle is still the one taken."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    weight, bias = model[0].weight, model[0].bias
    rest = [model[1].weight, model[1].bias, model[2].weight, model[2].bias]
    opt = torch.optim.SGD(
        [
            {"params": [weight], "weight_decay": 5e-4},
            {"params": [bias, *rest], "weight_decay": 0.0, "lr": 0.01},
        ],
        lr=0.1,
        momentum=0.9,
    )
    angles = []
    with SphericalMonitor(model, opt, params=["0.weight+0.bias"]) as mon:
        for t in range(3):
            opt.zero_grad()
            model(torch.randn(16, 4, generator=torch.Generator().manual_seed(t))).square().mean().backward()
            before = torch.cat([weight.detach().flatten(), bias.detach()]).double()
            opt.step()
            after = torch.cat([weight.detach().flatten(), bias.detach()]).double()
            angles.append(
                math.atan2(
                    float(torch.linalg.norm(before / before.norm() - after / after.norm())),
                    float(torch.linalg.norm(before / before.norm() + after / after.norm())),
                )
                * 2
            )
    h = mon.history()
    assert set(h["reason_code"]) == {"mixed_groups"}
    assert np.isnan(h["theory_angular_update"]).all()
    np.testing.assert_allclose(h["angular_update"], angles, rtol=1e-5)


def test_named_weights_feeding_a_batchnorm_in_eval_mode_are_norm_frozen_too() -> None:
    """Detection knew the BatchNorm of the weights it found; weights named by the user must get it as well."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    with SphericalMonitor(model, opt, params=["0.weight"]) as mon:
        _train_on(model, opt, 2, features=4)
        model.eval()
        _train_on(model, opt, 2, features=4)
    assert list(mon.history()["reason_code"][2:]) == ["norm_frozen"] * 2


def test_rows_a_failed_sink_never_took_do_not_leave_memory_silently() -> None:
    class _Refuses:
        def write(self, rows: dict) -> None:
            raise ValueError("columns differ from the file's header")

        def close(self) -> None:
            pass

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with SphericalMonitor(
            model, opt, params=["0.weight"], sinks=[_Refuses()], history_rows=5, flush_every=2
        ):
            _train(model, opt, 12)
    messages = [str(w.message) for w in caught]
    assert sum("the latest 5 rows are kept in memory" in m for m in messages) == 1
    assert sum("older rows that sink did not take are lost" in m for m in messages) == 1


def test_settings_past_the_equilibrium_are_bad_hparams_and_every_step_is_kept() -> None:
    """lr·wd ≥ 2(1+α): the closed forms refuse it. The lr event must not drop the step, and only those
    steps are bad_hparams (the others keep their theory)."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, weight_decay=3.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with SphericalMonitor(model, opt, params=["0.weight"], flush_every=10) as mon:
            _train(model, opt, 2)
            opt.param_groups[0]["lr"] = 1.0  # lr·wd = 3 ≥ 2
            _train(model, opt, 2)
    h = mon.history()
    assert list(h["step"]) == [0, 1, 2, 3]
    assert list(h["reason_code"][2:]) == ["bad_hparams"] * 2
    assert np.isfinite(h["theory_angular_update"][:2]).all()
    assert not [w for w in caught if "skipped step" in str(w.message)]
