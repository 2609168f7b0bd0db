"""Normalised networks for the paper's experiments, written in plain torch.

Spherical Motion Dynamics concern scale-invariant weights: L(k·w) = L(w) for every k > 0, so the gradient is
orthogonal to w (Lemma 1, Eq 3) and weight decay alone sets ‖w‖ (Thm 1–2). Every model here is built so that
all its hidden weights have that property: each convolution has ``bias=False`` and feeds a BatchNorm directly
(per output channel, the filter is scale-invariant), and each hidden ``Linear`` (with bias) feeds a LayerNorm
(the pair weight and bias is jointly scale-invariant). The classifier ``fc`` is a plain ``Linear`` with no
norm after it, so it is *not* scale-invariant: it is the control that SMD does not describe.

Module names follow torchvision and the paper's figures (``layer2.0.conv2`` in Fig 3–4, ``layer1.0.conv1`` in
Fig 6), so a parameter named in the paper can be found by the same name. Convolutions use He (Kaiming) normal
initialisation with fan-out, BatchNorm starts at γ = 1, β = 0, and linear layers keep torch's default.

The exception is ``gpt`` (`smdyn.experiments.gpt`), a small transformer whose only scale-invariant weights
are the QK-normalised query and key projections: it is there to test the equilibrium beyond the paper.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from smdyn.experiments.checks import as_int
from smdyn.experiments.gpt import gpt

__all__ = [
    "MODELS",
    "CNN1d",
    "MLPLayerNorm",
    "ResNet18Cifar",
    "ResNet20",
    "ResNet50",
    "SmallBNCNN",
    "build_model",
    "cnn1d",
    "mlp_layernorm",
    "resnet18_cifar",
    "resnet20",
    "resnet50",
    "small_bn_cnn",
]


def _init_standard(model: nn.Module) -> None:
    """He-normal convolutions (fan-out, ReLU gain), BatchNorm γ = 1 and β = 0, as torchvision initialises."""
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _conv_bn(c_in: int, c_out: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    """A 2-D convolution straight into BatchNorm: the 1×1 projection shortcut (option B of He et al.)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(c_out),
    )


class _BasicBlock(nn.Module):
    """Two 3×3 conv-BN pairs and a residual add after the second BN (He et al. 2016, Fig 2 left).

    The add comes *after* ``bn2``, so ``conv2`` stays scale-invariant; the shortcut is the identity, or a 1×1
    conv + BN where the stride or width changes.
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = _conv_bn(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else nn.Sequential()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _Bottleneck(nn.Module):
    """1×1 → 3×3 → 1×1 conv-BN with 4× expansion; the stride sits on the 3×3 conv as in torchvision."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut = _conv_bn(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else nn.Sequential()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class _CifarResNet(nn.Module):
    """3×3 stem conv-BN-ReLU, stages of BasicBlocks (first block of each later stage strides 2), GAP, fc."""

    def __init__(
        self, blocks: Sequence[int], widths: Sequence[int], num_classes: int, in_channels: int
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        c_in = widths[0]
        for i, (n, c_out) in enumerate(zip(blocks, widths, strict=True)):
            stride = 1 if i == 0 else 2
            stage = [_BasicBlock(c_in if j == 0 else c_out, c_out, stride if j == 0 else 1) for j in range(n)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            c_in = c_out
        self.num_stages = len(blocks)
        self.fc = nn.Linear(c_in, num_classes)
        _init_standard(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            out = getattr(self, f"layer{i + 1}")(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


class ResNet18Cifar(_CifarResNet):
    """ResNet-18 for 32×32 images, the layout commonly trained on CIFAR-10 (the paper's Sec 5.3, Fig 6).

    He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 (arXiv:1512.03385), with
    the CIFAR adaptation of github.com/kuangliu/pytorch-cifar: a 3×3 stride-1 stem with no max-pool, then
    BasicBlock stages [2, 2, 2, 2] of widths width·{1, 2, 4, 8}, 1×1 conv + BN projection shortcuts, global
    average pooling and a linear classifier. 11,173,962 parameters at width 64 and 10 classes; a smaller
    ``width`` gives the narrow variant for CPU runs (width 16: 701,466).
    """

    def __init__(self, num_classes: int = 10, width: int = 64, in_channels: int = 3) -> None:
        num_classes = as_int("num_classes", num_classes, 1)
        width = as_int("width", width, 1)
        in_channels = as_int("in_channels", in_channels, 1)
        super().__init__([2, 2, 2, 2], [width, 2 * width, 4 * width, 8 * width], num_classes, in_channels)


class ResNet20(_CifarResNet):
    """ResNet-20 for CIFAR-10, He et al. 2016 §4.2 (n = 3: three stages of three BasicBlocks).

    He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 (arXiv:1512.03385). Widths
    width·{1, 2, 4} (16/32/64 by default). The two downsampling shortcuts are option B (1×1 conv + BN)
    rather than the paper's parameter-free option A (zero padding), so every convolution is followed by a
    BatchNorm and is scale-invariant. 272,474 parameters with 10 classes (the paper's option-A network has
    269,722; the two projections add 2,752).
    """

    def __init__(self, num_classes: int = 10, width: int = 16, in_channels: int = 3) -> None:
        num_classes = as_int("num_classes", num_classes, 1)
        width = as_int("width", width, 1)
        in_channels = as_int("in_channels", in_channels, 1)
        super().__init__([3, 3, 3], [width, 2 * width, 4 * width], num_classes, in_channels)


class ResNet50(nn.Module):
    """ResNet-50 for ImageNet, the network of the paper's Sec 5.1–5.2 (Fig 3–5).

    He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 (arXiv:1512.03385): 7×7
    stride-2 stem, 3×3 max-pool, Bottleneck stages [3, 4, 6, 3] of widths 64/128/256/512 (×4 out), global
    average pooling, linear classifier. The stride is on the 3×3 conv of each block and shortcuts are 1×1
    conv + BN projections, as in torchvision (the layout Goyal et al. 2017, arXiv:1706.02677, train).
    25,557,032 parameters with 1000 classes.
    """

    def __init__(self, num_classes: int = 1000) -> None:
        num_classes = as_int("num_classes", num_classes, 1)
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c_in = 64
        for i, (n, width) in enumerate(zip([3, 4, 6, 3], [64, 128, 256, 512], strict=True)):
            stride = 1 if i == 0 else 2
            stage = []
            for j in range(n):
                stage.append(_Bottleneck(c_in, width, stride if j == 0 else 1))
                c_in = width * _Bottleneck.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.fc = nn.Linear(c_in, num_classes)
        _init_standard(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


class SmallBNCNN(nn.Module):
    """A three-layer conv-BN-ReLU network with a linear head, small enough for second-long tests.

    Ioffe & Szegedy, "Batch Normalization", ICML 2015 (arXiv:1502.03167), makes each conv filter
    scale-invariant. conv(in→w) → 2×2 max-pool → conv(w→2w) → 2×2 max-pool → conv(2w→2w) →
    global average pool → linear; inputs need at least 4×4 pixels. 57,130 parameters at the defaults
    (3 input channels, width 32, 10 classes).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32) -> None:
        num_classes = as_int("num_classes", num_classes, 1)
        in_channels = as_int("in_channels", in_channels, 1)
        width = as_int("width", width, 1)
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)
        _init_standard(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        out = F.max_pool2d(F.relu(self.bn2(self.conv2(out))), 2)
        out = F.relu(self.bn3(self.conv3(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


class CNN1d(nn.Module):
    """A 1-D BatchNorm CNN for MNIST-1D sequences, fast enough to train to equilibrium on one CPU thread.

    MNIST-1D: Greydanus, "Scaling down Deep Learning", 2020 (arXiv:2011.14439); its reference CNN is three
    strided conv1d layers and a flattened linear head, kept here with BatchNorm (Ioffe & Szegedy 2015,
    arXiv:1502.03167) after each conv. Three conv1d(k=5, stride 2, padding 2)-BN-ReLU layers (length 40 →
    20 → 10 → 5), flatten, linear. Accepts ``[B, length]`` or ``[B, 1, length]``. 12,202 parameters at the
    defaults (length 40, width 32, 10 classes); one SGD step on a batch of 128 takes about 3 ms on one thread.
    """

    def __init__(self, num_classes: int = 10, length: int = 40, width: int = 32) -> None:
        num_classes = as_int("num_classes", num_classes, 1)
        length = as_int("length", length, 1)
        width = as_int("width", width, 1)
        super().__init__()
        self.length = length
        self.conv1 = nn.Conv1d(1, width, 5, stride=2, padding=2, bias=False)
        self.bn1 = nn.BatchNorm1d(width)
        self.conv2 = nn.Conv1d(width, width, 5, stride=2, padding=2, bias=False)
        self.bn2 = nn.BatchNorm1d(width)
        self.conv3 = nn.Conv1d(width, width, 5, stride=2, padding=2, bias=False)
        self.bn3 = nn.BatchNorm1d(width)
        out_len = self.length
        for _ in range(3):
            out_len = (out_len - 1) // 2 + 1  # k = 5, padding 2, stride 2
        self.fc = nn.Linear(width * out_len, num_classes)
        _init_standard(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        if x.dim() != 3 or x.shape[1] != 1 or x.shape[2] != self.length:
            raise ValueError(
                f"x must have shape [B, {self.length}] or [B, 1, {self.length}], got {list(x.shape)}"
            )
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = F.relu(self.bn3(self.conv3(out)))
        return self.fc(out.flatten(1))


class _LinearNorm(nn.Module):
    """Linear (with bias) → LayerNorm → ReLU: LayerNorm removes any common scale of (weight, bias)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(c_in, c_out)
        self.norm = nn.LayerNorm(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.linear(x)))


class MLPLayerNorm(nn.Module):
    """A LayerNorm MLP: ``depth`` blocks of Linear → LayerNorm → ReLU, then a linear classifier.

    Ba, Kiros, Hinton, "Layer Normalization", 2016 (arXiv:1607.06450). LayerNorm normalises over features
    per example, so scaling a hidden layer's weight *and* bias by the same k > 0 leaves the output unchanged:
    the pair is one scale-invariant vector (Lemma 1 holds for their concatenation, not for each alone), and
    unlike BatchNorm the result does not depend on the batch. Inputs are flattened from dim 1 on. 79,882
    parameters for ``in_features=40`` (MNIST-1D) at the defaults (hidden 256, depth 2, 10 classes).
    """

    def __init__(self, in_features: int, num_classes: int = 10, hidden: int = 256, depth: int = 2) -> None:
        in_features = as_int("in_features", in_features, 1)
        num_classes = as_int("num_classes", num_classes, 1)
        hidden = as_int("hidden", hidden, 1)
        depth = as_int("depth", depth, 1)
        super().__init__()
        self.blocks = nn.Sequential(
            *[_LinearNorm(in_features if i == 0 else hidden, hidden) for i in range(depth)]
        )
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(x.flatten(1)))


def resnet18_cifar(num_classes: int = 10, width: int = 64, in_channels: int = 3) -> ResNet18Cifar:
    """CIFAR-style ResNet-18 (11.2M parameters at width 64); see `ResNet18Cifar`."""
    return ResNet18Cifar(num_classes=num_classes, width=width, in_channels=in_channels)


def resnet20(num_classes: int = 10, width: int = 16, in_channels: int = 3) -> ResNet20:
    """CIFAR ResNet-20 with projection shortcuts (0.27M parameters); see `ResNet20`."""
    return ResNet20(num_classes=num_classes, width=width, in_channels=in_channels)


def resnet50(num_classes: int = 1000) -> ResNet50:
    """ImageNet ResNet-50 (25.6M parameters); see `ResNet50`."""
    return ResNet50(num_classes=num_classes)


def small_bn_cnn(num_classes: int = 10, in_channels: int = 3, width: int = 32) -> SmallBNCNN:
    """Three conv-BN-ReLU layers and a linear head (57k parameters); see `SmallBNCNN`."""
    return SmallBNCNN(num_classes=num_classes, in_channels=in_channels, width=width)


def cnn1d(num_classes: int = 10, length: int = 40, width: int = 32) -> CNN1d:
    """1-D BatchNorm CNN for MNIST-1D (12k parameters); see `CNN1d`."""
    return CNN1d(num_classes=num_classes, length=length, width=width)


def mlp_layernorm(in_features: int, num_classes: int = 10, hidden: int = 256, depth: int = 2) -> MLPLayerNorm:
    """Linear → LayerNorm → ReLU blocks and a linear head; see `MLPLayerNorm`."""
    return MLPLayerNorm(in_features, num_classes=num_classes, hidden=hidden, depth=depth)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnn1d": cnn1d,
    "gpt": gpt,
    "mlp_layernorm": mlp_layernorm,
    "resnet18_cifar": resnet18_cifar,
    "resnet20": resnet20,
    "resnet50": resnet50,
    "small_bn_cnn": small_bn_cnn,
}


def build_model(name: str, **kwargs: object) -> nn.Module:
    """Builds the model registered under ``name`` in `MODELS`, so configs can name a model by string.

    Raises:
        TypeError: ``name`` is not a string, or ``kwargs`` do not fit the model's factory.
        ValueError: ``name`` is not registered; the message lists the known names.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__} {name!r}")
    if name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; known names: {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)
