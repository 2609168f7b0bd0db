"""Tests for smdyn.invariance: data-flow detection of scale-invariant weights and the numerical probe."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

from smdyn import invariance
from smdyn.invariance import InvariantParam, find_scale_invariant


def images(n: int = 8) -> torch.Tensor:
    return torch.randn(n, 3, 6, 6, generator=torch.Generator().manual_seed(1))


def vectors(n: int = 8, d: int = 6) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(2))


# ------------------------------------------------------------------------------------------- models
class ConvBN(nn.Module):
    """conv -> [act] -> bn -> relu -> mean -> head; ``bn`` may be any norm of 4 channels."""

    def __init__(self, bias: bool = False, act: Callable | None = None, bn: nn.Module | None = None) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1, bias=bias), bn or nn.BatchNorm2d(4)
        self.head, self.act = nn.Linear(4, 2), act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        h = self.act(h) if self.act is not None else h
        return self.head(F.relu(self.bn(h)).mean((2, 3)))


class LinearNorm(nn.Module):
    def __init__(self, norm: nn.Module, bias: bool = True) -> None:
        super().__init__()
        self.fc, self.norm, self.head = nn.Linear(6, 8, bias=bias), norm, nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.norm(self.fc(x))))


class Residual(nn.Module):
    """``bn(conv(x) + x)`` (pre_add=True) mixes x in before the norm; ``bn(conv(x)) + x`` does not."""

    def __init__(self, pre_add: bool) -> None:
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Linear(3, 2)
        self.pre_add = pre_add

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.conv(x) + x) if self.pre_add else self.bn(self.conv(x)) + x
        return self.head(h.mean((2, 3)))


class Shuffled(nn.Module):
    """Registration order suggests conv_b -> bn; the data flow is conv_a -> bn -> conv_b -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 2)
        self.conv_b = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.conv_a = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv_b(F.relu(self.bn(self.conv_a(x)))).mean((2, 3)))


class TwoConsumers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return self.head(self.bn(h).mean((2, 3)) + h.mean((2, 3)))


class Twice(nn.Module):
    """One conv called twice: invariant if both calls feed a norm (leak=False), not if one feeds the head."""

    def __init__(self, leak: bool) -> None:
        super().__init__()
        self.conv, self.bn1, self.bn2 = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.BatchNorm2d(3)
        self.head, self.leak = nn.Linear(3, 2), leak

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(F.relu(self.bn1(self.conv(x))))
        return self.head((h if self.leak else self.bn2(h)).mean((2, 3)))


class Block(nn.Module):
    """CIFAR ResNet basic block with a 1x1 conv -> BN downsample shortcut."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, 2, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.block = Block(4, 8)
        self.drop, self.fc = nn.Dropout(0.3), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.block(F.relu(self.bn(self.stem(x)))).mean((2, 3))))


class Untraceable(ConvBN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) if x.sum() > -1e9 else x  # data-dependent branch: fx cannot trace it


RESNET = {"stem.weight", "block.conv1.weight", "block.conv2.weight", "block.shortcut.0.weight"}


# ---------------------------------------------------------------------------------------- structure
@pytest.fixture(params=["fx", "fx+batch", "recorded"])
def find(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., dict[str, InvariantParam]]:
    """Structural detection (probe off) from each graph source; "recorded" is the fallback when fx fails."""
    if request.param == "recorded":

        def untraceable(*args: object) -> None:
            raise torch.fx.proxy.TraceError("untraceable")

        monkeypatch.setattr(invariance, "_fx_graph", untraceable)

    def run(model: nn.Module, batch: torch.Tensor) -> dict[str, InvariantParam]:
        found = find_scale_invariant(model, None if request.param == "fx" else batch, probe=False)
        how = "recorded forward" if request.param == "recorded" else "torch.fx"
        assert all(how in f.evidence[0] for f in found if f.kind != "weight_norm")
        return {f.name: f for f in found}

    return run


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(
    ("norm", "kind"),
    [
        (lambda: nn.BatchNorm2d(4), "batchnorm"),
        (lambda: nn.InstanceNorm2d(4), "instancenorm"),
        (lambda: nn.InstanceNorm2d(4, affine=True, track_running_stats=True), "instancenorm"),
    ],
)
def test_conv_before_mean_subtracting_norm_alone_even_with_bias(
    find: Callable, bias: bool, norm: Callable[[], nn.Module], kind: str
) -> None:
    found = find(ConvBN(bias, bn=norm()), images())
    assert set(found) == {"conv.weight"}  # the head feeds no norm
    f = found["conv.weight"]
    assert (f.params, f.norm, f.kind, f.per_channel) == (("conv.weight",), "bn", kind, True)
    assert any("conv -> bn" in e for e in f.evidence)


def test_transposed_conv_is_not_per_channel(find: Callable) -> None:
    """A ConvTranspose's output channels are its weight's dim 1: its dim-0 slices are not invariant alone."""
    model = nn.Sequential(nn.ConvTranspose2d(3, 4, 2, stride=2), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
    assert {n: f.per_channel for n, f in find(model, images()).items()} == {"0.weight": False}


@pytest.mark.parametrize(
    "norm", [nn.LayerNorm(8), nn.RMSNorm(8), nn.GroupNorm(2, 8)], ids=lambda m: type(m).__name__
)
def test_layer_norms_need_the_bias_jointly(find: Callable, norm: nn.Module) -> None:
    kind = type(norm).__name__.lower()
    found = find(LinearNorm(norm, bias=True), vectors())
    assert set(found) == {"fc.weight+fc.bias"}
    assert (found["fc.weight+fc.bias"].params, found["fc.weight+fc.bias"].kind) == (
        ("fc.weight", "fc.bias"),
        kind,
    )
    assert not found["fc.weight+fc.bias"].per_channel
    found = find(LinearNorm(copy.deepcopy(norm), bias=False), vectors())
    assert set(found) == {"fc.weight"}


def test_linear_batchnorm1d_needs_the_input_rank_to_drop_the_bias() -> None:
    model = LinearNorm(nn.BatchNorm1d(8))
    with_batch = find_scale_invariant(model, vectors(), probe=False)
    assert [(f.name, f.per_channel) for f in with_batch] == [("fc.weight", True)]
    without = find_scale_invariant(model)  # 2-D or 3-D input: channel axis unknown, so the pair
    assert [(f.name, f.per_channel) for f in without] == [("fc.weight+fc.bias", False)]


@pytest.mark.parametrize(
    ("act", "expected"),
    [
        (F.relu, {"conv.weight+conv.bias": True}),
        (nn.Dropout(0.2), {"conv.weight+conv.bias": True}),
        (F.gelu, {}),
    ],
)
def test_homogeneous_ops_between_layer_and_norm(find: Callable, act: Callable, expected: dict) -> None:
    """relu(k·y) = k·relu(y) keeps invariance, but then the mean subtraction keeps the bias; GELU does not."""
    found = find(ConvBN(bias=True, act=act), images())
    assert {n: f.per_channel for n, f in found.items()} == expected


def test_layer_norm_over_permuted_channels_is_whole_tensor(find: Callable) -> None:
    class ConvNeXtish(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.ln, self.head = nn.Conv2d(3, 4, 3), nn.LayerNorm(4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.ln(self.conv(x).permute(0, 2, 3, 1)).mean((1, 2)))

    assert {n: f.per_channel for n, f in find(ConvNeXtish(), images()).items()} == {
        "conv.weight+conv.bias": False
    }


@pytest.mark.parametrize(("pre_add", "expected"), [(True, set()), (False, {"conv.weight"})])
def test_residual_add_before_the_norm_breaks_invariance(find: Callable, pre_add: bool, expected: set) -> None:
    assert set(find(Residual(pre_add), images())) == expected


def test_data_flow_not_registration_order(find: Callable) -> None:
    assert set(find(Shuffled(), images())) == {"conv_a.weight"}


def test_a_second_consumer_breaks_invariance(find: Callable) -> None:
    assert find(TwoConsumers(), images()) == {}


def test_a_weight_used_outside_its_layer_is_excluded(find: Callable) -> None:
    class Penalised(ConvBN):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) + self.conv.weight.square().sum()

    assert find(Penalised(), images()) == {}


def test_batchnorm_over_another_axis_is_not_per_channel(find: Callable) -> None:
    """conv -> swap C and H -> BatchNorm2d normalises rows: the whole weight is invariant, a filter is not."""

    class Swapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x).transpose(1, 2)).flatten(1)[:, :5]

    model = Swapped()
    assert {n: f.per_channel for n, f in find(model, images()).items()} == {"conv.weight": False}
    base = loss_after_scaling(model, images(), (), 1.0)
    assert loss_after_scaling(model, images(), ("conv.weight",), 3.0) == pytest.approx(base, rel=1e-4)
    k = torch.tensor([1.0, 3.0, 1.0, 1.0, 1.0, 1.0])
    assert abs(loss_after_scaling(model, images(), ("conv.weight",), k) / base - 1) > 1e-3


@pytest.mark.parametrize(("leak", "expected"), [(False, {"conv.weight": "bn1,bn2"}), (True, {})])
def test_module_used_twice(find: Callable, leak: bool, expected: dict) -> None:
    assert {n: f.norm for n, f in find(Twice(leak), images()).items()} == expected


def test_resnet_block_with_downsample_shortcut(find: Callable) -> None:
    found = find(ResNet(), images())
    assert set(found) == RESNET
    assert found["block.shortcut.0.weight"].norm == "block.shortcut.1"
    assert all(f.per_channel for f in found.values())


def test_weight_norm_directions(find: Callable) -> None:
    model = nn.Sequential(parametrizations.weight_norm(nn.Linear(6, 4)), nn.ReLU(), nn.Linear(4, 2))
    model[2] = parametrizations.weight_norm(model[2], dim=None)
    found = find(model, vectors())
    assert {n: (f.kind, f.norm, f.per_channel) for n, f in found.items()} == {
        "0.parametrizations.weight.original1": ("weight_norm", "0", True),
        "2.parametrizations.weight.original1": ("weight_norm", "2", False),
    }
    with pytest.warns(FutureWarning):
        legacy = nn.Sequential(nn.utils.weight_norm(nn.Linear(6, 4)), nn.ReLU())
    assert set(find(legacy, vectors())) == {"0.weight_v"}


def test_frozen_tied_and_unnormalised_parameters_are_excluded(find: Callable) -> None:
    frozen = ConvBN()
    frozen.conv.weight.requires_grad_(False)
    assert find(frozen, images()) == {}
    tied = nn.Sequential(
        nn.Linear(6, 6, bias=False), nn.LayerNorm(6), nn.Linear(6, 6, bias=False), nn.LayerNorm(6)
    )
    tied[2].weight = tied[0].weight
    assert find(tied, vectors()) == {}
    assert find(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)), vectors()) == {}


def test_order_and_names_follow_named_parameters() -> None:
    model = nn.DataParallel(ResNet())  # on CPU it just calls the module; names gain "module."
    found = find_scale_invariant(model)
    names = [n for n, _ in model.named_parameters()]
    assert [f.name for f in found] == [n for n in names if n.removeprefix("module.") in RESNET]
    assert found[0].norm == "module.bn"


def test_untraceable_model_falls_back_to_a_recorded_forward() -> None:
    with pytest.warns(UserWarning, match="example_batch"):
        assert find_scale_invariant(Untraceable()) == []
    found = find_scale_invariant(Untraceable(), images())
    assert [f.name for f in found] == ["conv.weight"]
    assert "recorded forward" in found[0].evidence[0]


# ------------------------------------------------------------------------------------------- probe
def loss_after_scaling(
    model: nn.Module, batch: torch.Tensor, names: tuple[str, ...], k: float | torch.Tensor
) -> float:
    """The test's own loss (sum of squares) after scaling the named tensors, on a copy of the model."""
    model = copy.deepcopy(model)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n in names:
            params[n].mul_(k if isinstance(k, float) else k.reshape(-1, *[1] * (params[n].dim() - 1)))
        torch.manual_seed(0)
        return float(model(batch).square().sum())


def small_eps(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if hasattr(m, "eps"):
            m.eps = 1e-12
    return model.double()


@pytest.mark.parametrize(
    ("make", "batch"),
    [
        (ResNet, images),
        (lambda: ConvBN(True, F.relu), images),
        (lambda: Twice(False), images),
        (
            lambda: nn.Sequential(
                nn.ConvTranspose2d(3, 4, 2, 2), nn.InstanceNorm2d(4), nn.Flatten(), nn.Linear(576, 2)
            ),
            images,
        ),
        (lambda: LinearNorm(nn.LayerNorm(8)), vectors),
        (lambda: LinearNorm(nn.GroupNorm(2, 8), bias=False), vectors),
        (
            lambda: nn.Sequential(parametrizations.weight_norm(nn.Linear(6, 4)), nn.Tanh(), nn.Linear(4, 2)),
            vectors,
        ),
    ],
)
def test_every_reported_item_is_scale_invariant(make: Callable[[], nn.Module], batch: Callable) -> None:
    torch.manual_seed(3)
    model = small_eps(make())  # float64, eps ~ 0: invariance exact up to rounding, checked independently
    batch = batch().double()
    found = find_scale_invariant(model, batch)
    assert found
    base = loss_after_scaling(model, batch, (), 1.0)
    params = dict(model.named_parameters())
    torch.manual_seed(0)
    grads = torch.autograd.grad(model(batch).square().sum(), list(params.values()), allow_unused=True)
    grad = dict(zip(params, grads, strict=True))
    for f in found:
        assert [e.split(":")[0] for e in f.evidence[-2:]] == ["probe", "lemma 1"]
        for k in (0.37, 2.9):
            assert loss_after_scaling(model, batch, f.params, k) == pytest.approx(base, rel=1e-9)
        if f.per_channel:
            k = torch.rand(params[f.params[0]].shape[0], dtype=torch.float64) * 3 + 0.2
            assert loss_after_scaling(model, batch, f.params, k) == pytest.approx(base, rel=1e-9)
        dot = sum(float((params[n].detach() * grad[n]).sum()) for n in f.params)  # Lemma 1, Eq 3
        norms = [
            sum(float(t.detach().square().sum()) for t in ts)
            for ts in ([params[n] for n in f.params], [grad[n] for n in f.params])
        ]
        assert abs(dot) <= 1e-9 * (norms[0] * norms[1]) ** 0.5
    head = [n for n, p in model.named_parameters() if n.endswith("weight") and p.dim() == 2][-1]
    assert abs(loss_after_scaling(model, batch, (head,), 2.9) / base - 1) > 1e-3  # the check can fail


def test_probe_keeps_default_float32_models() -> None:
    torch.manual_seed(4)
    found = find_scale_invariant(ResNet(), images(16), lambda out: F.cross_entropy(out, torch.arange(16) % 3))
    assert {f.name for f in found} == RESNET


def test_probe_confirms_small_weights_despite_eps() -> None:
    """At σ² ≈ 1e-4 the eps = 1e-5 guard alone moves L(0.5w) by 2%: the probe tests the norm without it."""
    model = ConvBN()
    with torch.no_grad():
        model.conv.weight.mul_(0.02)
    assert [f.name for f in find_scale_invariant(model, images())] == ["conv.weight"]


def test_probe_refutes_eval_mode_running_statistics() -> None:
    torch.manual_seed(5)
    model = ConvBN()
    for _ in range(3):
        model(images() * 3 + 1)  # running statistics away from the batch's own
    model.eval()
    assert [f.name for f in find_scale_invariant(model)] == ["conv.weight"]  # structure alone
    with pytest.warns(UserWarning, match="running statistics"):
        assert find_scale_invariant(model, images()) == []


def test_probe_refutes_a_loss_that_penalises_the_norm() -> None:
    model = ConvBN()

    def penalised(out: torch.Tensor) -> torch.Tensor:
        return out.square().mean() + model.conv.weight.square().sum()

    with pytest.warns(UserWarning, match="conv.weight: dropped"):
        assert find_scale_invariant(model, images(), penalised) == []


def test_probe_refutes_a_non_invariant_candidate() -> None:
    model = ConvBN()
    fake = InvariantParam("head.weight", ("head.weight",), "bn", "batchnorm", False, ())
    with invariance._preserved(model) as reset, pytest.warns(UserWarning, match="refutes"):
        assert invariance._probe(model, images(), None, [fake], 1e-4, reset) == []


def test_state_is_bit_identical_after_the_probe() -> None:
    torch.manual_seed(6)
    model = ResNet()
    model(images()).sum().backward()  # gradients and running statistics present
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: (p.grad, p.grad.clone()) for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    rng = torch.get_rng_state()
    assert find_scale_invariant(model, images()), "the probe must actually run"
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())
    assert all(
        p.grad is grads[n][0] and torch.equal(p.grad, grads[n][1]) for n, p in model.named_parameters()
    )
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
    assert torch.equal(torch.get_rng_state(), rng) and model.training
    fresh = ResNet()
    assert find_scale_invariant(fresh, images())
    assert all(p.grad is None for p in fresh.parameters())  # no gradient left behind


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="model"):
        find_scale_invariant("resnet")  # type: ignore[arg-type]
    for tol in (0, -1.0, float("nan"), 2.0):
        with pytest.raises(ValueError, match="tol"):
            find_scale_invariant(ConvBN(), tol=tol)
    with pytest.raises(ValueError, match="loss_fn"):
        find_scale_invariant(ConvBN(), loss_fn=lambda out: out.sum())
    with pytest.raises(ValueError, match="loss_fn"):
        find_scale_invariant(ConvBN(), images(), lambda out: out)
    with pytest.raises(ValueError, match="nan"):
        find_scale_invariant(ConvBN(), images(), lambda out: out.sum() * float("nan"))
