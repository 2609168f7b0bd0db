"""Tests for smdyn.experiments.models: shapes, parameter counts, scale invariance of the hidden weights.

Parameter counts are closed-form polynomials derived by hand from the layer shapes (below), checked against
the published totals; the conv → BN structure is read from the forward data flow, not from module order.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.fx
from torch import nn

from smdyn.experiments.models import (
    MODELS,
    build_model,
    cnn1d,
    mlp_layernorm,
    resnet18_cifar,
    resnet20,
    resnet50,
    small_bn_cnn,
)

_CONV = (nn.Conv1d, nn.Conv2d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)

# name, factory with small settings, input shape, number of classes
_CASES: list[tuple[str, Callable[[], nn.Module], tuple[int, ...], int]] = [
    ("resnet18_cifar", lambda: resnet18_cifar(width=8), (2, 3, 32, 32), 10),
    ("resnet18_cifar_gray", lambda: resnet18_cifar(num_classes=7, width=4, in_channels=1), (2, 1, 32, 32), 7),
    ("resnet20", lambda: resnet20(), (2, 3, 32, 32), 10),
    ("small_bn_cnn", lambda: small_bn_cnn(), (4, 3, 16, 16), 10),
    ("cnn1d", lambda: cnn1d(), (8, 40), 10),
    ("cnn1d_channel", lambda: cnn1d(num_classes=3, length=37, width=8), (8, 1, 37), 3),
    ("mlp_layernorm", lambda: mlp_layernorm(40), (8, 40), 10),
    ("mlp_layernorm_image", lambda: mlp_layernorm(12, num_classes=5, hidden=16, depth=3), (8, 3, 2, 2), 5),
]
_IDS = [c[0] for c in _CASES]
_CONV_CASES = [c for c in _CASES if not c[0].startswith("mlp")]


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def resnet50_model() -> nn.Module:
    torch.manual_seed(0)
    return resnet50()


# ---------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(("name", "factory", "shape", "classes"), _CASES, ids=_IDS)
def test_forward_shape(
    name: str, factory: Callable[[], nn.Module], shape: tuple[int, ...], classes: int
) -> None:
    torch.manual_seed(0)
    out = factory()(torch.randn(shape))
    assert out.shape == (shape[0], classes)
    assert torch.isfinite(out).all()


def test_resnet50_forward_shape(resnet50_model: nn.Module) -> None:
    torch.manual_seed(1)
    out = resnet50_model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 1000)
    assert torch.isfinite(out).all()


def test_cnn1d_rejects_wrong_input_shape() -> None:
    model = cnn1d()
    for shape in [(4, 39), (4, 2, 40), (40,), (2, 1, 1, 40)]:
        with pytest.raises(ValueError, match=r"x must have shape \[B, 40\]"):
            model(torch.randn(shape))


# ------------------------------------------------------------------------------------- parameter counts
# A k×k conv from a to b channels without bias has a·b·k² weights; BatchNorm(c) has 2c (γ, β).


def _resnet18_cifar_count(w: int, c: int, n: int) -> int:
    """Width w, c input channels, n classes.

    stem 3×3 conv + BN: 9cw + 2w.
    stage 1 (w→w): 4 convs 9w² + 4 BN(w) = 36w² + 8w.
    stage 2 (w→2w): block 1 has 9·w·2w + 9·4w² + 1×1 proj 2w² + 3 BN(2w) = 56w² + 12w;
        block 2 has 2·36w² + 2 BN(2w) = 72w² + 8w. Total 128w² + 20w.
    stage 3 (2w→4w) is stage 2 with w → 2w in the square terms, and 2× the linear ones: 512w² + 40w.
    stage 4 (4w→8w): 2048w² + 80w.
    fc: 8w·n + n.
    """
    return 2724 * w * w + (9 * c + 150) * w + 8 * w * n + n


def _resnet20_count(w: int, c: int, n: int) -> int:
    """Width w, c input channels, n classes, projection (option B) shortcuts.

    stem: 9cw + 2w.
    stage 1 (w→w): 6 convs 9w² + 6 BN(w) = 54w² + 12w.
    stage 2 (w→2w): 9·2w² + 5·9·4w² + proj 2w² + 7 BN(2w) = 200w² + 28w.
    stage 3 (2w→4w): 9·8w² + 5·9·16w² + proj 8w² + 7 BN(4w) = 800w² + 56w.
    fc: 4w·n + n.
    """
    return 1054 * w * w + (9 * c + 98) * w + 4 * w * n + n


def test_closed_forms_match_published_totals() -> None:
    # kuangliu/pytorch-cifar ResNet18 on CIFAR-10: 11,173,962 parameters.
    assert _resnet18_cifar_count(64, 3, 10) == 11_173_962
    # He et al. 2016 Table 6, ResNet-20: 0.27M with option A; its two projections (w→2w, 2w→4w, each with
    # a BN) are 2w² + 4w + 8w² + 8w = 2,752 at w = 16, and option A is the widely quoted 269,722.
    assert _resnet20_count(16, 3, 10) - (10 * 16 * 16 + 12 * 16) == 269_722


@pytest.mark.parametrize(("width", "in_channels", "classes"), [(64, 3, 10), (8, 1, 100), (5, 4, 3)])
def test_resnet18_cifar_param_count(width: int, in_channels: int, classes: int) -> None:
    model = resnet18_cifar(num_classes=classes, width=width, in_channels=in_channels)
    assert _n_params(model) == _resnet18_cifar_count(width, in_channels, classes)


@pytest.mark.parametrize(("width", "in_channels", "classes"), [(16, 3, 10), (8, 1, 100), (5, 4, 3)])
def test_resnet20_param_count(width: int, in_channels: int, classes: int) -> None:
    model = resnet20(num_classes=classes, width=width, in_channels=in_channels)
    assert _n_params(model) == _resnet20_count(width, in_channels, classes)


def test_resnet50_param_count(resnet50_model: nn.Module) -> None:
    # torchvision's documented resnet50 (IMAGENET1K_V1 "num_params"), the same layout.
    assert _n_params(resnet50_model) == 25_557_032


def test_small_models_param_counts() -> None:
    # small_bn_cnn: 9·3·32 + 9·32·64 + 9·64·64 convs, BN 2·(32 + 64 + 64), fc 64·10 + 10.
    assert _n_params(small_bn_cnn()) == 9 * 3 * 32 + 9 * 32 * 64 + 9 * 64 * 64 + 2 * 160 + 650
    # cnn1d: k = 5 convs 1→32, 32→32, 32→32; BN 3·64; length 40 → 20 → 10 → 5, fc 32·5·10 + 10.
    assert _n_params(cnn1d()) == 5 * 32 + 2 * 5 * 32 * 32 + 3 * 64 + 32 * 5 * 10 + 10
    assert 10_000 <= _n_params(cnn1d()) <= 30_000
    # mlp: (40·256 + 256) + LN 512 + (256·256 + 256) + LN 512 + fc 256·10 + 10.
    assert _n_params(mlp_layernorm(40)) == 40 * 256 + 256 + 512 + 256 * 256 + 256 + 512 + 2570


# ------------------------------------------------------------------------------------ structure / names


def test_module_names_match_the_paper() -> None:
    # Fig 3–4 plot layer2.0.conv2 of ResNet-50; Fig 6 plots layer1.0.conv1 of ResNet-18.
    r18 = dict(resnet18_cifar(width=4).named_modules())
    assert isinstance(r18["layer1.0.conv1"], nn.Conv2d)
    assert isinstance(r18["layer2.0.shortcut.0"], nn.Conv2d)
    assert isinstance(r18["layer2.0.shortcut.1"], nn.BatchNorm2d)
    r20 = dict(resnet20().named_modules())
    assert isinstance(r20["layer3.0.shortcut.0"], nn.Conv2d)
    assert len(r20["layer1.0.shortcut"]) == 0  # identity where shape is kept
    assert "layer4" not in r20


def test_resnet50_names(resnet50_model: nn.Module) -> None:
    modules = dict(resnet50_model.named_modules())
    assert isinstance(modules["layer2.0.conv2"], nn.Conv2d)
    assert modules["layer2.0.conv2"].stride == (2, 2)  # stride on the 3×3 conv
    assert isinstance(modules["layer4.2.bn3"], nn.BatchNorm2d)
    assert "layer4.3" not in modules


@pytest.mark.parametrize(("name", "factory", "shape", "classes"), _CASES, ids=_IDS)
def test_head_is_plain_linear(
    name: str, factory: Callable[[], nn.Module], shape: tuple[int, ...], classes: int
) -> None:
    model = factory()
    assert type(model.fc) is nn.Linear
    assert model.fc.out_features == classes
    assert model.fc.bias is not None
    for m in model.modules():
        if isinstance(m, _CONV):
            assert m.bias is None
        if isinstance(m, (*_BN, nn.LayerNorm)):
            assert m.weight is not None
            assert m.bias is not None


def _conv_feeds(model: nn.Module, x: torch.Tensor) -> dict[str, list[str]]:
    """Maps each conv to the BatchNorms whose input is exactly that conv's output tensor, via hooks."""
    conv_out: dict[str, list[torch.Tensor]] = {}
    bn_in: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, _CONV):
            conv_out[name] = []
            handles.append(m.register_forward_hook(lambda _m, _i, out, lst=conv_out[name]: lst.append(out)))
        elif isinstance(m, _BN):
            bn_in[name] = []
            handles.append(m.register_forward_pre_hook(lambda _m, inp, lst=bn_in[name]: lst.append(inp[0])))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    assert conv_out, "no convolution found"
    for calls in (*conv_out.values(), *bn_in.values()):
        assert len(calls) == 1, "each conv and BN should run exactly once per forward"
    feeds = {c: [b for b, t in bn_in.items() if t[0] is out[0]] for c, out in conv_out.items()}
    fed = [b for bs in feeds.values() for b in bs]
    assert sorted(fed) == sorted(bn_in), "every BatchNorm should read a convolution's raw output"
    return feeds


@pytest.mark.parametrize(
    ("name", "factory", "shape", "classes"), _CONV_CASES, ids=[c[0] for c in _CONV_CASES]
)
def test_every_conv_feeds_one_batchnorm(
    name: str, factory: Callable[[], nn.Module], shape: tuple[int, ...], classes: int
) -> None:
    torch.manual_seed(0)
    feeds = _conv_feeds(factory(), torch.randn(shape))
    assert all(len(bns) == 1 for bns in feeds.values()), feeds


def test_resnet50_every_conv_feeds_one_batchnorm(resnet50_model: nn.Module) -> None:
    torch.manual_seed(0)
    feeds = _conv_feeds(resnet50_model, torch.randn(1, 3, 64, 64))
    assert len(feeds) == 53  # 1 stem + 16 blocks × 3 + 4 projections
    assert all(len(bns) == 1 for bns in feeds.values())


@pytest.mark.parametrize(
    "factory",
    [lambda: resnet18_cifar(width=4), resnet20, small_bn_cnn, resnet50],
    ids=["r18", "r20", "cnn", "r50"],
)
def test_conv_output_has_no_other_consumer(factory: Callable[[], nn.Module]) -> None:
    # Hooks show a BN reads the conv output; the traced graph shows nothing else does (a residual add or a
    # second branch on the raw conv output would break the conv's scale invariance).
    graph = torch.fx.symbolic_trace(factory())
    n_conv = 0
    for node in graph.graph.nodes:
        if node.op == "call_module" and isinstance(graph.get_submodule(node.target), _CONV):
            n_conv += 1
            users = list(node.users)
            assert len(users) == 1, node.target
            assert users[0].op == "call_module"
            assert isinstance(graph.get_submodule(users[0].target), _BN)
    assert n_conv > 0


def test_mlp_layernorm_reads_each_linear_output() -> None:
    # Linear → LayerNorm → ReLU: the norm must see the raw affine output (hooks, as for conv → BN).
    model = mlp_layernorm(6, hidden=5, depth=3)
    seen: dict[str, torch.Tensor] = {}
    handles = [
        m.register_forward_hook(lambda _m, _i, out, n=n: seen.__setitem__(n + ".out", out))
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear)
    ]
    handles += [
        m.register_forward_pre_hook(lambda _m, inp, n=n: seen.__setitem__(n + ".in", inp[0]))
        for n, m in model.named_modules()
        if isinstance(m, nn.LayerNorm)
    ]
    model(torch.randn(4, 6))
    for h in handles:
        h.remove()
    for i in range(3):
        assert seen[f"blocks.{i}.norm.in"] is seen[f"blocks.{i}.linear.out"]
    assert "fc.out" in seen


# ----------------------------------------------------------------------------- scale invariance, backward


def _invariant_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """Each conv weight (a BN follows); each hidden Linear's (weight, bias) as one (a LayerNorm follows)."""
    groups = []
    for name, m in model.named_modules():
        if isinstance(m, _CONV):
            groups.append([m.weight])
        elif isinstance(m, nn.Linear) and name != "fc":
            groups.append([m.weight, m.bias])
    return groups


def _exact_norms(model: nn.Module) -> nn.Module:
    """float64 with eps ≈ 0 (torch refuses 0), so invariance holds to rounding, not to eps/var ≈ 1e-5."""
    model = model.double()
    for m in model.modules():
        if isinstance(m, (*_BN, nn.LayerNorm)):
            m.eps = 1e-30
    return model


@pytest.mark.parametrize(("name", "factory", "shape", "classes"), _CASES, ids=_IDS)
def test_hidden_weights_are_scale_invariant(
    name: str, factory: Callable[[], nn.Module], shape: tuple[int, ...], classes: int
) -> None:
    torch.manual_seed(0)
    model = _exact_norms(factory())
    x = torch.randn(shape, dtype=torch.float64)
    ref = model(x)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for group in _invariant_groups(model):
            k = 0.2 + 4.8 * torch.rand((), generator=gen, dtype=torch.float64)
            for p in group:
                p.mul_(k)
    torch.testing.assert_close(model(x), ref, rtol=1e-9, atol=1e-9)
    # The classifier is not scale-invariant: the same test on fc must fail.
    with torch.no_grad():
        model.fc.weight.mul_(2.0)
    assert (model(x) - ref).abs().max() > 1e-3


@pytest.mark.parametrize(("name", "factory", "shape", "classes"), _CASES, ids=_IDS)
def test_backward_and_gradient_orthogonal_to_weight(
    name: str, factory: Callable[[], nn.Module], shape: tuple[int, ...], classes: int
) -> None:
    torch.manual_seed(0)
    model = _exact_norms(factory())
    x = torch.randn(shape, dtype=torch.float64)
    y = torch.randint(0, classes, (shape[0],))
    nn.functional.cross_entropy(model(x), y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    # Lemma 1 (Eq 3): ⟨w, ∇L(w)⟩ = 0, per output channel under BN, per (weight, bias) pair under LayerNorm.
    for group in _invariant_groups(model):
        w = torch.cat([p.detach().reshape(p.shape[0], -1) for p in group], dim=1)
        g = torch.cat([p.grad.reshape(p.shape[0], -1) for p in group], dim=1)
        if len(group) == 1:  # BatchNorm: each filter separately
            cos = (w * g).sum(1) / (w.norm(dim=1) * g.norm(dim=1) + 1e-300)
        else:
            cos = (w * g).sum() / (w.norm() * g.norm())
        assert cos.abs().max() < 1e-8
    fc_w, fc_g = model.fc.weight.detach(), model.fc.weight.grad
    assert (fc_w * fc_g).sum().abs() / (fc_w.norm() * fc_g.norm()) > 1e-6


def test_resnet50_backward(resnet50_model: nn.Module) -> None:
    torch.manual_seed(2)
    model = resnet50_model
    model.zero_grad()
    nn.functional.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([3, 999])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert model.conv1.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------- registry, errors


def test_registry_builds_every_model() -> None:
    assert set(MODELS) == {
        "resnet18_cifar",
        "resnet20",
        "resnet50",
        "small_bn_cnn",
        "cnn1d",
        "mlp_layernorm",
        "gpt",
    }
    assert _n_params(build_model("resnet20", width=8)) == _resnet20_count(8, 3, 10)
    assert (
        _n_params(build_model("mlp_layernorm", in_features=5, hidden=3, depth=1)) == 5 * 3 + 3 + 6 + 30 + 10
    )
    assert isinstance(build_model("cnn1d", length=20), nn.Module)


def test_build_model_unknown_name_lists_known_names() -> None:
    with pytest.raises(ValueError, match="resnet18") as info:
        build_model("resnet19")
    for known in MODELS:
        assert known in str(info.value)
    assert "'resnet19'" in str(info.value)


def test_build_model_bad_arguments() -> None:
    with pytest.raises(TypeError, match="name"):
        build_model(20)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unexpected keyword"):
        build_model("resnet20", depth=3)
    with pytest.raises(TypeError, match="in_features"):
        build_model("mlp_layernorm")


@pytest.mark.parametrize(
    ("call", "exc", "arg"),
    [
        (lambda: resnet20(width=0), ValueError, "width"),
        (lambda: resnet18_cifar(width=2.5), TypeError, "width"),
        (lambda: resnet50(num_classes=0), ValueError, "num_classes"),
        (lambda: small_bn_cnn(in_channels=True), TypeError, "in_channels"),
        (lambda: cnn1d(length=-1), ValueError, "length"),
        (lambda: mlp_layernorm(40, depth=0), ValueError, "depth"),
        (lambda: mlp_layernorm("40"), TypeError, "in_features"),
    ],
)
def test_bad_arguments_name_the_argument(
    call: Callable[[], nn.Module], exc: type[Exception], arg: str
) -> None:
    with pytest.raises(exc, match=arg):
        call()
