"""SphericalMonitor against a brute-force float64 recomputation from saved weights."""

from __future__ import annotations

import copy
import io
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from smdyn import SphericalMonitor, theory
from smdyn.monitor import COLUMNS


class _Net(nn.Module):
    """conv -> BN -> relu -> linear(bias) -> LayerNorm -> head: per-channel, joint and plain cases."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 6, 3, bias=False)
        self.bn = nn.BatchNorm1d(6)
        self.fc = nn.Linear(6 * 14, 12)
        self.ln = nn.LayerNorm(12)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x.unsqueeze(1))))
        return self.head(torch.relu(self.ln(self.fc(h.flatten(1)))))


_PARAMS = ["conv.weight", "fc.weight+fc.bias", "head.weight"]


def _batches(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 16, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(n)]


def _vec(model: nn.Module, name: str, grads: bool = False) -> np.ndarray:
    named = dict(model.named_parameters())
    parts = [
        (named[n].grad if grads else named[n].detach()).double().flatten().numpy() for n in name.split("+")
    ]
    return np.concatenate(parts)


def _momentum_vec(model: nn.Module, opt: torch.optim.Optimizer, name: str) -> np.ndarray:
    """The momentum buffers of ``name``'s tensors before the step, float64, zeros where there is none yet."""
    named = dict(model.named_parameters())
    return np.concatenate(
        [
            opt.state[p]["momentum_buffer"].double().flatten().numpy()
            if "momentum_buffer" in opt.state.get(p, {})
            else np.zeros(p.numel())
            for p in (named[m] for m in name.split("+"))
        ]
    )


def _angle64(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    return 2 * math.atan2(np.linalg.norm(a - b), np.linalg.norm(a + b))


def _optimizer(kind: str, model: nn.Module) -> torch.optim.Optimizer:
    groups = [
        {"params": [model.conv.weight], "lr": 0.2, "weight_decay": 1e-3},
        {"params": [model.fc.weight, model.fc.bias], "lr": 0.05, "weight_decay": 5e-3},
        {
            "params": [
                p for n, p in model.named_parameters() if n not in ("conv.weight", "fc.weight", "fc.bias")
            ]
        },
    ]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=0.1, weight_decay=1e-4)
    if kind == "sgdm":
        return torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=1e-4)
    if kind == "nesterov":
        return torch.optim.SGD(groups, lr=0.1, momentum=0.8, nesterov=True, weight_decay=1e-4)
    if kind == "dampening":
        return torch.optim.SGD(groups, lr=0.1, momentum=0.7, dampening=0.3, weight_decay=1e-4)
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=1e-2, weight_decay=1e-2)
    if kind == "adam_l2":
        return torch.optim.Adam(groups, lr=1e-2, weight_decay=1e-2)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["sgd", "sgdm", "nesterov", "dampening", "adamw"])
def test_records_match_brute_force_float64(kind: str) -> None:
    torch.manual_seed(0)
    model = _Net()
    opt = _optimizer(kind, model)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    loss_fn = nn.CrossEntropyLoss()
    mon = SphericalMonitor(model, opt, params=_PARAMS, flush_every=3)
    expected: dict[tuple[int, str], dict[str, float]] = {}
    for step, (x, y) in enumerate(_batches(10)):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        before = {n: _vec(model, n) for n in _PARAMS}
        grads = {n: _vec(model, n, grads=True) for n in _PARAMS}
        bufs = {n: _momentum_vec(model, opt, n) for n in _PARAMS}
        lrs = {n: opt.param_groups[i]["lr"] for i, n in enumerate(_PARAMS)}
        opt.step()
        sched.step()
        for n in _PARAMS:
            w, g, w1 = before[n], grads[n], _vec(model, n)
            mom = opt.param_groups[_PARAMS.index(n)].get("momentum", 0.0)
            expected[(step, n)] = {
                "angular_update": _angle64(w, w1),
                "weight_norm": float(np.linalg.norm(w)),
                "unit_grad_sq": float(g @ g * (w @ w)),
                "grad_cosine": float(w @ g / np.linalg.norm(w) / np.linalg.norm(g)),
                "h_tilde": float((g @ g + 2 * mom * (bufs[n] @ g)) * (w @ w)),
                "lr": lrs[n],
            }
    h = mon.history()
    mon.close()
    assert len(h["step"]) == 10 * len(_PARAMS)
    for i in range(len(h["step"])):
        exp = expected[(int(h["step"][i]), h["param"][i])]
        assert h["lr"][i] == pytest.approx(exp["lr"], rel=1e-12)
        for key in ("weight_norm", "unit_grad_sq", "grad_cosine"):
            assert h[key][i] == pytest.approx(exp[key], rel=1e-4, abs=1e-7), key
        assert h["angular_update"][i] == pytest.approx(exp["angular_update"], rel=1e-4), (kind, i)
        if kind in ("sgd", "sgdm"):
            assert h["h_tilde"][i] == pytest.approx(exp["h_tilde"], rel=1e-4, abs=1e-7)
        else:
            assert np.isnan(h["h_tilde"][i]) or kind in ("nesterov", "dampening")


def test_theory_only_for_rules_that_have_one() -> None:
    torch.manual_seed(0)
    for kind, has_theory in (("sgdm", True), ("nesterov", True), ("adam_l2", False), ("adamw", True)):
        model = _Net()
        opt = _optimizer(kind, model)
        with SphericalMonitor(model, opt, params=["conv.weight"]) as mon:
            for x, y in _batches(2):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
        h = mon.history()
        assert np.isfinite(h["theory_angular_update"]).all() == has_theory, kind
        if kind == "sgdm":
            assert h["theory_angular_update"][0] == pytest.approx(math.sqrt(2 * 0.2 * 1e-3 / 1.9), rel=1e-12)
        if kind == "nesterov":  # Δ*² = 2λη(1 + 2α − 2α³)/(1 + α), α = 0.8 (derived in smdyn.theory)
            want = math.sqrt(2 * 0.2 * 1e-3 * (1 + 1.6 - 2 * 0.512) / 1.8)
            assert h["theory_angular_update"][0] == pytest.approx(want, rel=1e-12)
        if not has_theory:
            assert all("L2 weight decay" in r for r in h["reason"])


def test_per_channel_rows_match_brute_force() -> None:
    torch.manual_seed(1)
    model = _Net()
    opt = _optimizer("sgdm", model)
    mon = SphericalMonitor(model, opt, params=["conv.weight"], granularity="channel")
    for x, y in _batches(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        w = model.conv.weight.detach().double().clone()
        opt.step()
    w1 = model.conv.weight.detach().double()
    h = mon.history()
    last = h["step"] == 2
    assert list(h["channel"][last]) == list(range(6))
    for c in range(6):
        exp = _angle64(w[c].flatten().numpy(), w1[c].flatten().numpy())
        assert h["angular_update"][last][c] == pytest.approx(exp, rel=1e-4)


def test_bad_inputs_are_recorded_as_nan_with_a_reason_and_never_raise() -> None:
    torch.manual_seed(0)
    model = _Net()
    model.fc.bias.requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    mon = SphericalMonitor(model, opt, params=["conv.weight", "fc.weight", "fc.bias", "ln.weight"])
    x, y = _batches(1)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the monitor must not even warn on these
        # step 0: fine; step 1: NaN gradient on conv; step 2: zero weight on ln.weight, no grad on fc.weight
        for step in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            if step == 1:
                model.conv.weight.grad[0, 0, 0] = float("nan")
            if step == 2:
                with torch.no_grad():
                    model.ln.weight.zero_()
                model.ln.weight.grad.zero_()
                model.fc.weight.grad = None
            opt.step()
            with torch.no_grad():  # keep training alive after the NaN
                for p in model.parameters():
                    p.nan_to_num_(0.0)
    h = mon.history()
    rows = {
        (int(s), p): (a, r)
        for s, p, a, r in zip(h["step"], h["param"], h["angular_update"], h["reason"], strict=True)
    }
    assert rows[(0, "conv.weight")][1] == ""
    assert np.isfinite(rows[(0, "conv.weight")][0])
    assert np.isnan(rows[(1, "conv.weight")][0]) and "non-finite" in rows[(1, "conv.weight")][1]
    assert np.isnan(rows[(2, "ln.weight")][0]) and "zero-norm" in rows[(2, "ln.weight")][1]
    assert np.isnan(rows[(2, "fc.weight")][0]) and "no gradient" in rows[(2, "fc.weight")][1]
    assert "frozen" in rows[(0, "fc.bias")][1]
    mon.close()


def test_every_and_flush_and_state_dict_resume() -> None:
    torch.manual_seed(0)
    batches = _batches(12)

    def run(split: bool) -> dict[str, np.ndarray]:
        torch.manual_seed(0)
        model = _Net()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        mon = SphericalMonitor(model, opt, params=_PARAMS, every=2, window=3, flush_every=2)
        out = []
        for i, (x, y) in enumerate(batches):
            if split and i == 6:  # resume into a fresh monitor, as after a restart
                buffer = io.BytesIO()  # through a checkpoint file, loaded the safe way
                torch.save(mon.state_dict(), buffer)
                buffer.seek(0)
                state = torch.load(buffer, weights_only=True)
                out.append(mon.history())
                mon.close()
                mon = SphericalMonitor(model, opt, params=_PARAMS, every=2, window=3, flush_every=2)
                mon.load_state_dict(state)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        out.append(mon.history())
        mon.close()
        return {c: np.concatenate([o[c] for o in out]) for c in COLUMNS}

    whole, resumed = run(False), run(True)
    assert sorted(set(whole["step"].tolist())) == [0, 2, 4, 6, 8, 10]
    for c in ("step", "angular_update_rms", "l_estimate", "theory_weight_norm"):
        np.testing.assert_array_equal(whole[c], resumed[c])


def test_window_statistics_and_theory_norm() -> None:
    torch.manual_seed(0)
    model = _Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5, weight_decay=1e-3)
    mon = SphericalMonitor(model, opt, params=["conv.weight"], window=4)
    for x, y in _batches(9):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    h = mon.history()
    d, ht = h["angular_update"], h["h_tilde"]
    assert h["angular_update_rms"][-1] == pytest.approx(math.sqrt(np.mean(d[-4:] ** 2)), rel=1e-12)
    assert h["angular_update_mean"][-1] == pytest.approx(np.mean(d[-4:]), rel=1e-12)
    assert h["l_estimate"][-1] == pytest.approx(np.mean(ht[-4:]), rel=1e-12)
    w_star = (np.mean(ht[-4:]) * 0.1 / (1e-3 * 0.5 * (2 - 1e-4 / 1.5))) ** 0.25
    assert h["theory_weight_norm"][-1] == pytest.approx(w_star, rel=1e-10)
    assert h["angular_update_rms"][1] == pytest.approx(math.sqrt(np.mean(d[:2] ** 2)), rel=1e-12)


def test_lr_changes_are_logged_with_corollary_lag() -> None:
    torch.manual_seed(0)
    model = _Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[3], gamma=0.1)
    with SphericalMonitor(model, opt, params=["conv.weight"]) as mon:
        for x, y in _batches(5):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
    (event,) = mon.events
    assert event["step"] == 3
    assert event["lr_after"] == pytest.approx(0.01)
    assert event["steps_to_new"] == theory.steps_to_new_equilibrium(10, 0.01, 1e-3, 0.9)
    h = mon.history()
    assert np.isnan(h["angular_update_rms"]).sum() == 0
    # the Δ window restarts at the drop
    d = h["angular_update"]
    assert h["angular_update_rms"][3] == pytest.approx(abs(d[3]), rel=1e-12)


def test_hooks_removed_on_close_and_bad_arguments() -> None:
    model = _Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = SphericalMonitor(model, opt, params=["conv.weight"])
    mon.close()
    x, y = _batches(1)[0]
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert mon.step == 0
    with pytest.raises(ValueError, match="nope"):
        SphericalMonitor(model, opt, params=["nope.weight"])
    with pytest.raises(ValueError, match="every"):
        SphericalMonitor(model, opt, params=["conv.weight"], every=0)
    with pytest.raises(TypeError, match="optimizer"):
        SphericalMonitor(model, "sgd", params=["conv.weight"])  # type: ignore[arg-type]
    other = torch.optim.SGD([model.conv.weight], lr=0.1)
    with pytest.raises(ValueError, match=r"fc\.weight"):
        SphericalMonitor(model, other, params=["fc.weight"])


def test_sink_receives_every_flushed_row(tmp_path) -> None:
    from smdyn.sinks import CSVSink, read_metrics

    model = _Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    mon = SphericalMonitor(model, opt, params=_PARAMS, sinks=[CSVSink(tmp_path / "m.csv")], flush_every=2)
    for x, y in _batches(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert len(read_metrics(tmp_path / "m.csv")["step"]) == 4 * len(_PARAMS)  # two flushes so far
    mon.close()
    back = read_metrics(tmp_path / "m.csv")
    h = mon.history()
    np.testing.assert_array_equal(back["angular_update"], h["angular_update"])
    assert list(back["param"]) == list(h["param"])


def test_grad_scaler_skipped_step_is_not_a_step() -> None:
    model = _Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    with SphericalMonitor(model, opt, params=["conv.weight"]) as mon:
        for i, (x, y) in enumerate(_batches(3)):
            opt.zero_grad()
            scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
            if i == 1:
                model.conv.weight.grad[0, 0, 0] = float("inf")
            scaler.step(opt)
            scaler.update()
    assert mon.step == 2
    assert np.isfinite(mon.history()["angular_update"]).all()


class _Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, so detection must use a real forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3, bias=False)
        self.bn = nn.BatchNorm1d(4)
        self.head = nn.Linear(4 * 14, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))


def test_auto_detection_from_the_first_forward_pass_when_fx_fails() -> None:
    torch.manual_seed(0)
    model = _Untraceable()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    reference = _Untraceable()
    reference.load_state_dict(model.state_dict())
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    with SphericalMonitor(model, opt) as mon:
        for x, y in _batches(3):
            for m, o in ((model, opt), (reference, ref_opt)):
                o.zero_grad()
                nn.functional.cross_entropy(m(x), y).backward()
                o.step()
    assert [u.name for u in mon.units] == ["conv.weight"]
    assert len(mon.history()["step"]) == 3
    # detection ran its own forward passes but left training bit-identical to an unmonitored run
    for (n, a), b in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b), n


def test_a_monitor_that_finds_its_weights_late_resumes_like_one_never_stopped() -> None:
    """load_state_dict before the first step, when the weights are only known from that step's forward."""
    torch.manual_seed(0)
    model = _Untraceable()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    batches = _batches(6)

    def train(mon_model: nn.Module, o: torch.optim.Optimizer, part: list) -> None:
        for x, y in part:
            o.zero_grad()
            nn.functional.cross_entropy(mon_model(x), y).backward()
            o.step()

    whole = copy.deepcopy(model)
    whole_opt = torch.optim.SGD(whole.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    with SphericalMonitor(whole, whole_opt, window=4) as straight:
        train(whole, whole_opt, batches)
    with SphericalMonitor(model, opt, window=4) as first:
        train(model, opt, batches[:3])
    saved = first.state_dict()
    with SphericalMonitor(model, opt, window=4) as resumed:
        resumed.load_state_dict(saved)
        assert resumed.step == 3
        again = resumed.state_dict()  # saved again before the weights are known: nothing is lost
        assert again["units"] == saved["units"] and again["windows"].keys() == saved["windows"].keys()
        train(model, opt, batches[3:])
    a, b = resumed.history(), straight.history()
    assert list(a["step"]) == [3, 4, 5]
    for column in ("angular_update", "angular_update_rms", "weight_norm"):
        np.testing.assert_allclose(a[column], b[column][3:], rtol=1e-12)


def test_continuous_schedule_restarts_the_window_only_after_a_5_percent_move() -> None:
    torch.manual_seed(0)
    model = _Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - 0.009 * step)  # -0.9% per step
    with SphericalMonitor(model, opt, params=["conv.weight"], window=50) as mon:
        for x, y in _batches(8):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
    h = mon.history()
    d = h["angular_update"]
    # lr 0.1, 0.0991, ...: the window restarts at step 6 (lr 0.0946 is 5.4% below 0.1), not before
    assert h["angular_update_rms"][5] == pytest.approx(math.sqrt(np.mean(d[:6] ** 2)), rel=1e-12)
    assert h["angular_update_rms"][7] == pytest.approx(math.sqrt(np.mean(d[6:8] ** 2)), rel=1e-12)
    assert [e["step"] for e in mon.events] == [6]
    assert mon.summary()[0]["step"] == 7


def test_step_with_closure_measures_after_the_closure_computed_the_gradients() -> None:
    """Lightning-style ``optimizer.step(closure)``: forward and backward run inside the step."""
    torch.manual_seed(0)
    model = _Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    mon = SphericalMonitor(model, opt, params=["conv.weight"])
    angles = []
    for x, y in _batches(4):

        def closure(x=x, y=y) -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        before = _vec(model, "conv.weight")
        opt.step(closure)
        angles.append(_angle64(before, _vec(model, "conv.weight")))
    h = mon.history()
    mon.close()
    np.testing.assert_allclose(h["angular_update"], angles, rtol=1e-4)


def test_units_computed_together_keep_their_own_rows_and_groups() -> None:
    """A flush computes units that share a shape and their host facts in one pass (records._unit_blocks):
    rows must still land on their own names, with their own group's theory, across groups and a frozen
    unit. Δ against float64 angles of the stored weights, Δ* against √(2λη/(1+α)) per group."""
    torch.manual_seed(0)
    model = nn.ModuleDict({f"l{i}": nn.Linear(8, 8, bias=False) for i in range(7)})
    names = [f"l{i}.weight" for i in range(7) if i != 5]
    settings = {i: (0.1, 1e-3) for i in (0, 2, 4, 6)} | {i: (0.05, 5e-3) for i in (1, 3)}
    groups = [
        {"params": [model[f"l{i}"].weight for i in (0, 2, 4, 6)], "lr": 0.1, "weight_decay": 1e-3},
        {"params": [model[f"l{i}"].weight for i in (1, 3)], "lr": 0.05, "weight_decay": 5e-3},
    ]  # l5 is not monitored (nor optimized); l6 is frozen after the first step
    opt = torch.optim.SGD(groups, momentum=0.9)
    mon = SphericalMonitor(model, opt, params=names, flush_every=1000)
    want: dict[tuple[str, int], float] = {}
    for step in range(4):
        if step == 1:
            model["l6"].weight.requires_grad_(False)
        x = torch.randn(16, 8)
        loss = sum((model[f"l{i}"](x) ** 2).mean() for i in range(7))
        opt.zero_grad()
        loss.backward()
        before = {n: p.detach().double().clone() for n, p in model.named_parameters()}
        opt.step()
        for n, p in model.named_parameters():
            a, b = before[n].flatten(), p.detach().double().flatten()
            a, b = a / a.norm(), b / b.norm()
            want[n, step] = 2 * math.atan2(float((a - b).norm()), float((a + b).norm()))
    mon.close()
    h = mon.history()
    for name, step, got, star, code in zip(
        h["param"], h["step"], h["angular_update"], h["theory_angular_update"], h["reason_code"], strict=True
    ):
        i = int(name[1])
        if i == 6 and step >= 1:
            assert code == "frozen"
            continue
        lr, wd = settings[i]
        assert got == pytest.approx(want[name, int(step)], rel=1e-4), (name, step)
        assert star == pytest.approx(math.sqrt(2 * lr * wd / 1.9), rel=1e-12), (name, step)


@pytest.mark.parametrize("kind", ["sgdm", "adamw"])
def test_large_tensors_measured_one_at_a_time_match_float64(kind: str) -> None:
    """Whole tensors above the batching size take plain dot products whose rows are assembled for all of
    them at once (monitor.batch): shapes that differ, the step without a momentum buffer and the steps with
    one (SGDM), a weight past one Gram block, a pair (weight + bias). AdamW's are measured from snapshots,
    whose sums are taken on the host (measure._fill_large_cpu). Every row against float64 sums of the stored
    tensors."""
    torch.manual_seed(0)
    shapes = {"a": (200, 180), "b": (190, 190), "c": (600, 500)}  # 36 000, 36 100, 300 000 > 2**18
    model = nn.ModuleDict({k: nn.Linear(s[1], s[0]) for k, s in shapes.items()})
    if kind == "sgdm":
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    names = ["a.weight", "b.weight+b.bias", "c.weight"]
    mon = SphericalMonitor(model, opt, params=names, flush_every=1000)
    want: dict[tuple[str, int], dict[str, float]] = {}
    for step in range(3):
        opt.zero_grad()
        loss = sum(m(torch.randn(8, m.in_features)).square().mean() for m in model.values())
        loss.backward()
        w = {n: _vec(model, n) for n in names}
        g = {n: _vec(model, n, grads=True) for n in names}
        buf = {n: _momentum_vec(model, opt, n) for n in names}
        opt.step()
        for n in names:
            want[n, step] = {
                "angular_update": _angle64(w[n], _vec(model, n)),
                "weight_norm": float(np.linalg.norm(w[n])),
                "unit_grad_sq": float(g[n] @ g[n] * (w[n] @ w[n])),
                "grad_cosine": float(w[n] @ g[n] / np.linalg.norm(w[n]) / np.linalg.norm(g[n])),
                "h_tilde": float((g[n] @ g[n] + 1.8 * (buf[n] @ g[n])) * (w[n] @ w[n])),
            }
    mon.close()
    h = mon.history()
    assert sorted(zip(h["param"].tolist(), h["step"].tolist(), strict=True)) == sorted(want)
    for i, (name, step) in enumerate(zip(h["param"], h["step"], strict=True)):
        for key, value in want[name, int(step)].items():
            if key == "h_tilde" and kind == "adamw":
                assert np.isnan(h[key][i])
                continue
            assert h[key][i] == pytest.approx(value, rel=1e-5, abs=1e-9), (name, step, key)
