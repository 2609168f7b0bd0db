"""Data sets for the paper's experiments, all local: nothing is downloaded at run time.

The equilibrium theorems (Thm 1–3) assume the unit gradient ‖g̃‖² keeps a non-zero expectation. That holds
while the network cannot fit its training data: a fresh stream (``shapes`` with ``train_size=None``) or a
large training split (``mnist1d`` at 60 000 samples, ``cifar10`` with augmentation). On a tiny split
(``digits``) the training loss goes to ~0, ‖g̃‖² collapses and Δ falls below Δ* = √(2λη/(1+α)) — the case
the experiments use to show where SMD stops describing training.

Every source follows `DataSource`: ``train_batch`` samples with replacement and draws *every* random number
(indices, augmentation, generated images) from the caller's ``torch.Generator``, so a checkpoint that saves
``generator.get_state()`` resumes the exact same batches. Fixed sets (test set, train subset) come from
``seed`` alone and are the same on every call.

Sources (see `load_data` for the options of each):

- ``digits``: scikit-learn's bundled 8×8 digits (1797 samples), per-pixel standardised, a seeded split.
- ``mnist1d``: Greydanus (2020), generated with the package's own ``make_dataset`` (its downloader is never
  called) and cached as ``.npz`` (loaded with ``allow_pickle=False``).
- ``shapes``: a procedural image task generated in torch: 10 shape classes at random position, scale,
  rotation and colour; ``difficulty`` in [0, 1] lowers contrast and raises noise, clutter and scale range.
- ``cifar10``: the official *binary* files (``cifar-10-batches-bin``), read with ``numpy.fromfile``.
- ``imagefolder``: ``root/train/<class>/*`` and ``root/val/<class>/*`` images (ImageNet layout), decoded per
  batch with Pillow, so a large folder is never held in memory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from smdyn.experiments._io import atomic_write
from smdyn.experiments.checks import as_int

__all__ = ["DATASETS", "DataSource", "load_data", "random_crop", "random_flip"]

DATASETS: tuple[str, ...] = ("digits", "mnist1d", "shapes", "cifar10", "imagefolder", "text")

_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
_CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_TEST_FILE = "test_batch.bin"
_CIFAR_RECORD = 1 + 3 * 32 * 32  # one label byte, then the red, green and blue planes, each row-major
# Per-channel mean and standard deviation of the 50 000 CIFAR-10 training images, pixels in [0, 1].
_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2470, 0.2435, 0.2616)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"})
_MNIST1D_CACHE_VERSION = 1


@runtime_checkable
class DataSource(Protocol):
    """What a training loop needs from a data set; every source of `load_data` satisfies it.

    Attributes:
        name: the name given to `load_data`.
        num_classes: labels are ``0 .. num_classes - 1``.
        input_shape: the shape of one sample, e.g. ``(3, 32, 32)`` or ``(40,)``.
        train_size: samples in the training split, or ``None`` for an endless stream of fresh samples,
            which a network can never memorise (so the unit gradient of Thm 1–3 cannot collapse).
    """

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    train_size: int | None

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Returns ``x`` float32 ``[B, *input_shape]`` and ``y`` int64 ``[B]``, augmented where the source
        augments, sampled with replacement using only ``generator`` (a saved generator state resumes it)."""
        ...

    def test_set(self) -> tuple[Tensor, Tensor]:
        """Returns the whole held-out set, un-augmented; the same (shared) tensors on every call."""
        ...

    def train_subset(self, n: int) -> tuple[Tensor, Tensor]:
        """Returns a fixed, un-augmented set of ``min(n, train_size)`` training samples (``n`` fresh but
        fixed samples for a stream), for the training loss and accuracy."""
        ...


# --------------------------------------------------------------------------------------------- validation


def _float(name: str, value: object, low: float, high: float) -> float:
    """Returns ``value`` as a finite float in ``[low, high]`` or raises naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    out = float(value)
    if not (math.isfinite(out) and low <= out <= high):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")
    return out


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def _check_generator(generator: object) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU generator, got device {generator.device}")
    return generator


def _options(name: str, given: Mapping[str, object], defaults: Mapping[str, object]) -> dict[str, Any]:
    """Merges ``given`` into ``defaults``; an unknown key is an error, not something silently ignored."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        accepted = ", ".join(sorted(defaults)) or "none"
        raise ValueError(
            f"unknown option(s) for data set {name!r}: {', '.join(unknown)}; accepted: {accepted}"
        )
    return {**defaults, **given}


def _derived_seed(seed: int, tag: str) -> int:
    """A 63-bit seed for one named purpose, so the test set, a finite train split and the train subset
    drawn from the same ``seed`` never share random numbers."""
    digest = hashlib.sha256(f"smdyn-data:{seed}:{tag}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _fixed_generator(seed: int, tag: str) -> torch.Generator:
    return torch.Generator().manual_seed(_derived_seed(seed, tag))


def _cache_dir(root: str | None) -> Path:
    if root is not None:
        return Path(root).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "smdyn"


# ------------------------------------------------------------------------------------------- augmentation


def random_crop(x: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Zero-pads each image by ``padding`` pixels and crops it back at a random offset, per sample.

    The standard CIFAR augmentation (crop 32 with padding 4), done batch-wise with one gather instead of a
    Python loop over images. Offsets are uniform in ``[0, 2·padding]`` on each axis and come only from
    ``generator``.

    Args:
        x: images ``[B, C, H, W]``.
        padding: pixels of zeros added on every side, ≥ 0 (0 returns a copy of ``x``).
        generator: the CPU generator that draws the offsets.

    Returns:
        A new tensor with the shape and dtype of ``x``.
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a [B, C, H, W] tensor, got {getattr(x, 'shape', type(x).__name__)}")
    padding = as_int("padding", padding, 0)
    _check_generator(generator)
    b, c, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator)
    if padding == 0:
        return x.clone()
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = (offsets[0][:, None] + torch.arange(h)).to(x.device)  # [B, H]
    cols = (offsets[1][:, None] + torch.arange(w)).to(x.device)  # [B, W]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def random_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Mirrors each sample along its last axis (left–right for images) with probability ½.

    Args:
        x: a batch ``[B, ...]`` with at least 2 dimensions.
        generator: the CPU generator that draws the coin flips.

    Returns:
        A new tensor with the shape and dtype of ``x``.
    """
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise ValueError(f"x must be a batch tensor [B, ...], got {getattr(x, 'shape', type(x).__name__)}")
    _check_generator(generator)
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(flip.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)


def _random_shift_1d(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Circularly shifts each signal ``[B, L]`` by a uniform integer in ``[-max_shift, max_shift]``."""
    b, length = x.shape
    shift = torch.randint(-max_shift, max_shift + 1, (b, 1), generator=generator)
    index = (torch.arange(length)[None, :] - shift) % length
    return x.gather(1, index)


# ------------------------------------------------------------------------------------- in-memory sources


class _TensorSource:
    """A data set held in memory as tensors, with an optional batch-wise augmentation.

    ``x_train`` may be stored compactly (uint8 pixels); ``prepare`` turns an indexed batch into float32
    model input, with ``augment`` applied in between when given.
    """

    def __init__(
        self,
        *,
        name: str,
        num_classes: int,
        x_train: Tensor,
        y_train: Tensor,
        x_test: Tensor,
        y_test: Tensor,
        seed: int,
        prepare: Callable[[Tensor], Tensor] = lambda x: x.float(),
        augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
        finish: Callable[[Tensor], Tensor] = lambda x: x,
    ) -> None:
        self.name = name
        self.num_classes = num_classes
        self.input_shape = tuple(int(s) for s in x_train.shape[1:])
        self.train_size: int | None = int(x_train.shape[0])
        self._x_train, self._y_train = x_train, y_train.long()
        self._x_test, self._y_test = x_test, y_test.long()
        self._seed = seed
        self._prepare, self._augment, self._finish = prepare, augment, finish
        self._test: tuple[Tensor, Tensor] | None = None

    def __repr__(self) -> str:
        return (
            f"<{self.name}: train {self.train_size}, test {self._x_test.shape[0]}, input {self.input_shape}, "
            f"{self.num_classes} classes, augment={self._augment is not None}>"
        )

    def _model_input(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        x = self._prepare(x)
        if generator is not None and self._augment is not None:
            x = self._augment(x, generator)
        return self._finish(x).to(torch.float32).contiguous()

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        batch_size = as_int("batch_size", batch_size, 1)
        _check_generator(generator)
        index = torch.randint(0, self._x_train.shape[0], (batch_size,), generator=generator)
        return self._model_input(self._x_train[index], generator), self._y_train[index]

    def test_set(self) -> tuple[Tensor, Tensor]:
        if self._test is None:
            self._test = (self._model_input(self._x_test, None), self._y_test)
        return self._test

    def train_subset(self, n: int) -> tuple[Tensor, Tensor]:
        n = as_int("n", n, 1)
        total = self._x_train.shape[0]
        index = torch.randperm(total, generator=_fixed_generator(self._seed, "train_subset"))[: min(n, total)]
        return self._model_input(self._x_train[index], None), self._y_train[index]


def _split(total: int, train_split: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded random train/test indices; both parts are non-empty."""
    n_train = round(total * train_split)
    if not 0 < n_train < total:
        raise ValueError(f"train_split={train_split} leaves an empty train or test split of {total} samples")
    order = torch.randperm(total, generator=_fixed_generator(seed, "split"))
    return order[:n_train], order[n_train:]


def _digits(root: str | None, seed: int, options: Mapping[str, object]) -> _TensorSource:
    """scikit-learn's 8×8 digits: so small that a network memorises it, which is the collapse case."""
    opts = _options("digits", options, {"train_split": 0.8})
    train_split = _float("train_split", opts["train_split"], 0.0, 1.0)
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError("the 'digits' data set needs scikit-learn: pip install scikit-learn") from exc
    bunch = load_digits()
    x = torch.as_tensor(np.asarray(bunch.data, dtype=np.float64)).reshape(-1, 1, 8, 8)
    y = torch.as_tensor(np.asarray(bunch.target, dtype=np.int64))
    train, test = _split(x.shape[0], train_split, seed)
    # Per-pixel standardisation with training statistics; border pixels that are always 0 keep scale 1.
    mean = x[train].mean(0, keepdim=True)
    std = x[train].std(0, unbiased=False, keepdim=True)
    std = torch.where(std > 0, std, torch.ones_like(std))
    x = ((x - mean) / std).float()
    return _TensorSource(
        name="digits",
        num_classes=10,
        x_train=x[train],
        y_train=y[train],
        x_test=x[test],
        y_test=y[test],
        seed=seed,
    )


# ---------------------------------------------------------------------------------------------- mnist1d


def _mnist1d_generate(args: Any) -> dict[str, np.ndarray]:
    """Runs mnist1d's procedural generator, leaving the global ``random`` and numpy states as they were.

    ``make_dataset`` seeds the global generators; restoring them keeps a caller's own seeding intact.
    """
    from mnist1d.data import make_dataset

    py_state, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002 - the state it reseeds
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)  # noqa: NPY002
    return {
        "x": np.asarray(data["x"], dtype=np.float32),
        "y": np.asarray(data["y"], dtype=np.int64),
        "x_test": np.asarray(data["x_test"], dtype=np.float32),
        "y_test": np.asarray(data["y_test"], dtype=np.int64),
    }


def _mnist1d_load_cache(path: Path, length: int) -> dict[str, np.ndarray] | None:
    """Reads a cache file written by `_mnist1d_arrays`; anything unreadable or malformed is a miss."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k]) for k in ("x", "y", "x_test", "y_test")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    ok = (
        arrays["x"].dtype == np.float32
        and arrays["x_test"].dtype == np.float32
        and arrays["y"].dtype == np.int64
        and arrays["y_test"].dtype == np.int64
        and arrays["x"].ndim == 2
        and arrays["x"].shape[1:] == arrays["x_test"].shape[1:] == (length,)
        and arrays["y"].shape == arrays["x"].shape[:1]
        and arrays["y_test"].shape == arrays["x_test"].shape[:1]
    )
    return arrays if ok else None


def _mnist1d_arrays(
    num_samples: int, train_split: float, seed: int, cache: bool, root: str | None
) -> dict[str, np.ndarray]:
    """mnist1d arrays, generated once and then read from ``.npz`` (generating 60 000 takes ~15 s).

    The cache key covers every generator argument and the mnist1d version, so a changed setting or
    package regenerates instead of returning stale data. Writes go to a temporary file and are renamed,
    so an interrupted write never leaves a half file under the final name.
    """
    try:
        import mnist1d
        from mnist1d.data import get_dataset_args
    except ImportError as exc:
        raise ImportError("the 'mnist1d' data set needs mnist1d: pip install 'smdyn[experiments]'") from exc
    args = get_dataset_args(as_dict=True)
    args.pop("url", None)
    args.update(num_samples=num_samples, train_split=train_split, seed=seed)
    try:
        from importlib.metadata import version

        package_version = version("mnist1d")
    except Exception:  # pragma: no cover - metadata missing in unusual installs
        package_version = getattr(mnist1d, "__version__", "unknown")
    key = json.dumps({"args": args, "mnist1d": package_version, "v": _MNIST1D_CACHE_VERSION}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = _cache_dir(root) / f"mnist1d-n{num_samples}-s{seed}-{digest}.npz"
    length = int(args["final_seq_length"])
    if cache and path.is_file():
        arrays = _mnist1d_load_cache(path, length)
        if arrays is not None:
            return arrays
    from mnist1d.utils import ObjectView

    arrays = _mnist1d_generate(ObjectView(dict(args)))
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda fh: np.savez(fh, **arrays))
    return arrays


def _mnist1d(root: str | None, seed: int, options: Mapping[str, object]) -> _TensorSource:
    """mnist1d (Greydanus 2020): 10 classes of 40-sample 1-D signals, generated locally.

    The defaults give 48 000 training signals, enough that a small network does not memorise them. With
    ``num_samples=5000, seed=42`` it runs with the package's default settings (4000 train, 1000 test).
    """
    defaults = {
        "num_samples": 60_000,
        "train_split": 0.8,
        "augment": False,
        "max_shift": 3,
        "noise_std": 0.1,
        "cache": True,
    }
    opts = _options("mnist1d", options, defaults)
    num_samples = as_int("num_samples", opts["num_samples"], 20)
    train_split = _float("train_split", opts["train_split"], 0.0, 1.0)
    usable = 10 * (num_samples // 10)  # make_dataset draws num_samples // 10 signals per class
    if not 0 < int(usable * train_split) < usable:
        raise ValueError(f"train_split={train_split} leaves an empty train or test split of {usable} samples")
    augment = _bool("augment", opts["augment"])
    max_shift = as_int("max_shift", opts["max_shift"], 0)
    noise_std = _float("noise_std", opts["noise_std"], 0.0, math.inf)
    cache = _bool("cache", opts["cache"])
    arrays = _mnist1d_arrays(num_samples, train_split, seed, cache, root)

    def _augment(x: Tensor, generator: torch.Generator) -> Tensor:
        x = _random_shift_1d(x, max_shift, generator)
        return x + noise_std * torch.randn(x.shape, generator=generator)

    return _TensorSource(
        name="mnist1d",
        num_classes=10,
        x_train=torch.from_numpy(arrays["x"]),
        y_train=torch.from_numpy(arrays["y"]),
        x_test=torch.from_numpy(arrays["x_test"]),
        y_test=torch.from_numpy(arrays["y_test"]),
        seed=seed,
        augment=_augment if augment else None,
    )


# ---------------------------------------------------------------------------------------------- cifar10


def _read_cifar_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads one CIFAR-10 binary file: records of 1 label byte and 3072 pixel bytes (R, G, B planes)."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _CIFAR_RECORD:
        raise ValueError(
            f"{path} is not a CIFAR-10 binary file: {raw.size} bytes is not a whole number of "
            f"{_CIFAR_RECORD}-byte records"
        )
    records = raw.reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise ValueError(f"{path}: label {int(labels.max())} is outside 0..9; is this the CIFAR-100 format?")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def _cifar10(root: str | None, seed: int, options: Mapping[str, object]) -> _TensorSource:
    """CIFAR-10 from the official binary files, with crop-with-padding-4 and flip augmentation."""
    opts = _options("cifar10", options, {"augment": True})
    augment = _bool("augment", opts["augment"])
    if root is None:
        raise ValueError(
            "the 'cifar10' data set needs root=, a folder holding the binary files (data_batch_1.bin ... "
            f"test_batch.bin) from the 'CIFAR-10 binary version' at {_CIFAR_URL}"
        )
    folder = Path(root).expanduser()
    if (folder / "cifar-10-batches-bin").is_dir():
        folder = folder / "cifar-10-batches-bin"
    for name in (*_CIFAR_TRAIN_FILES, _CIFAR_TEST_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"CIFAR-10 file {name} is missing from {folder}; download the 'CIFAR-10 binary version' "
                f"(cifar-10-binary.tar.gz) from {_CIFAR_URL} and unpack it there (smdyn never downloads it)"
            )
    parts = [_read_cifar_file(folder / name) for name in _CIFAR_TRAIN_FILES]
    x_train = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    y_train = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    x_test, y_test = (torch.from_numpy(a) for a in _read_cifar_file(folder / _CIFAR_TEST_FILE))
    mean = torch.tensor(_CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(_CIFAR_STD).view(1, 3, 1, 1)

    def _augment(x: Tensor, generator: torch.Generator) -> Tensor:
        # Crop before normalising, so the padding is black (pixel 0), as in the standard pipeline.
        return random_flip(random_crop(x, 4, generator), generator)

    return _TensorSource(
        name="cifar10",
        num_classes=10,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        seed=seed,
        prepare=lambda x: x.float() / 255.0,
        augment=_augment if augment else None,
        finish=lambda x: (x - mean) / std,
    )


# ----------------------------------------------------------------------------------------------- shapes

_SHAPE_NAMES = (
    "disk",
    "square",
    "triangle",
    "ring",
    "plus",
    "star",
    "ellipse",
    "frame",
    "crescent",
    "checker",
)
_SQRT3 = math.sqrt(3.0)


def _shape_mask(kind: int, u: Tensor, v: Tensor) -> Tensor:
    """Inside-test of shape ``kind`` in its own frame, where the shape fits the unit disk.

    Every shape has a mirror axis, so a random rotation plus a flip stays in the same class.
    """
    if kind == 0:  # disk
        return u * u + v * v < 1.0
    if kind == 1:  # square
        return torch.maximum(u.abs(), v.abs()) < 0.75
    if kind == 2:  # equilateral triangle inscribed in the unit circle
        return (v > -0.5) & (_SQRT3 * u.abs() + v < 1.0)
    if kind == 3:  # ring
        r2 = u * u + v * v
        return (r2 < 1.0) & (r2 > 0.3)
    if kind == 4:  # plus
        au, av = u.abs(), v.abs()
        return (torch.minimum(au, av) < 0.3) & (torch.maximum(au, av) < 0.95)
    if kind == 5:  # five-pointed star
        return torch.hypot(u, v) < 0.6 + 0.35 * torch.cos(5.0 * torch.atan2(v, u))
    if kind == 6:  # elongated ellipse
        return u * u + 6.25 * v * v < 1.0
    if kind == 7:  # hollow square
        box = torch.maximum(u.abs(), v.abs())
        return (box < 0.85) & (box > 0.5)
    if kind == 8:  # crescent
        return (u * u + v * v < 1.0) & ((u - 0.5) ** 2 + v * v > 0.5625)
    # checkerboard square: 4 × 4 cells
    cells = torch.floor((u + 0.85) / 0.425) + torch.floor((v + 0.85) / 0.425)
    return (torch.maximum(u.abs(), v.abs()) < 0.85) & (cells.remainder(2) == 0)


def _draw_shapes(n: int, size: int, difficulty: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Draws ``n`` labelled images ``[n, 3, size, size]`` as uint8, every random number from ``generator``.

    The label is the class of the main shape, drawn at a uniform position, rotation and radius. Colours are
    random, so only the shape carries the label. ``difficulty`` d in [0, 1] sets: the radius, uniform in
    [0.35 − 0.15d, 0.6] of the half-width; the foreground/background contrast, 0.7 − 0.45d; Gaussian noise
    of standard deviation 0.02 + 0.2d (pixels in [0, 1], the same noise in the three channels); and round(3d)
    distractor shapes of random class and colour, 0.25–0.45 times the main radius, painted behind it.

    Vectorised over the batch: each layer is a label map, the samples are grouped by class so each shape's
    test runs once on a contiguous slice, and one gather turns the label map into colours.
    """
    n_kinds = len(_SHAPE_NAMES)
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) * (2.0 / size) - 1.0
    xs, ys = coords.view(1, 1, size), coords.view(1, size, 1)

    def uniform(low: float | Tensor, high: float | Tensor, *shape: int) -> Tensor:
        return low + (high - low) * torch.rand(shape, generator=generator)

    def mask(kinds: Tensor, scale: Tensor) -> Tensor:
        reach = (1.0 - 0.8 * scale).clamp_min(0.0)
        cx, cy = uniform(-reach, reach, n), uniform(-reach, reach, n)
        angle = uniform(0.0, 2.0 * math.pi, n)
        order = torch.argsort(kinds, stable=True)
        counts = torch.bincount(kinds, minlength=n_kinds).tolist()
        cos, sin = torch.cos(angle[order]).view(n, 1, 1), torch.sin(angle[order]).view(n, 1, 1)
        dx, dy = xs - cx[order].view(n, 1, 1), ys - cy[order].view(n, 1, 1)
        inv = 1.0 / scale[order].view(n, 1, 1)
        u, v = (cos * dx + sin * dy) * inv, (cos * dy - sin * dx) * inv
        parts, start = [], 0
        for kind, count in enumerate(counts):
            if count:
                parts.append(_shape_mask(kind, u[start : start + count], v[start : start + count]))
            start += count
        out = torch.empty(n, size, size, dtype=torch.bool)
        out[order] = torch.cat(parts)
        return out

    labels = torch.randint(0, n_kinds, (n,), generator=generator)
    n_clutter = round(3 * difficulty)
    scale = uniform(0.35 - 0.15 * difficulty, 0.6, n)
    contrast = 0.7 - 0.45 * difficulty
    mid = uniform(0.35, 0.65, n, 1)
    sign = torch.where(torch.rand(n, 1, generator=generator) < 0.5, -1.0, 1.0)
    colours = torch.empty(n, 3, n_clutter + 2)  # per sample: background, distractors, main shape
    colours[:, :, -1] = mid + sign * contrast / 2 + uniform(-0.15, 0.15, n, 3)
    colours[:, :, 0] = mid - sign * contrast / 2 + uniform(-0.15, 0.15, n, 3)
    layer = torch.zeros(n, size, size, dtype=torch.int64)
    for j in range(1, n_clutter + 1):
        kinds = torch.randint(0, n_kinds, (n,), generator=generator)
        colours[:, :, j] = uniform(0.0, 1.0, n, 3)
        layer.masked_fill_(mask(kinds, scale * uniform(0.25, 0.45, n)), j)
    layer.masked_fill_(mask(labels, scale), n_clutter + 1)
    index = layer.view(n, 1, size * size).expand(n, 3, size * size)
    img = colours.gather(2, index).view(n, 3, size, size)
    img += (0.02 + 0.2 * difficulty) * torch.randn(n, 1, size, size, generator=generator)
    return img.mul_(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8), labels


class _ShapesSource:
    """Procedural shapes: a fresh stream (``train_size=None``) or a finite split drawn once from ``seed``."""

    name = "shapes"
    num_classes = len(_SHAPE_NAMES)
    _MEAN, _STD = 0.5, 0.3  # pixels in [0, 1] are shifted and scaled to about zero mean, unit variance
    _CHUNK = 1024  # images generated at a time for the fixed sets, to bound memory

    def __init__(
        self,
        *,
        size: int,
        difficulty: float,
        train_size: int | None,
        test_size: int,
        augment: bool,
        seed: int,
    ) -> None:
        self.input_shape = (3, size, size)
        self.train_size = train_size
        self._size, self._difficulty, self._seed = size, difficulty, seed
        self._test_size, self._augment = test_size, augment
        self._train: tuple[Tensor, Tensor] | None = None
        self._test: tuple[Tensor, Tensor] | None = None
        self._subsets: dict[int, tuple[Tensor, Tensor]] = {}

    def __repr__(self) -> str:
        return (
            f"<shapes: size {self._size}, difficulty {self._difficulty}, "
            f"train {self.train_size or 'stream'}, test {self._test_size}, augment={self._augment}>"
        )

    def _generate(self, n: int, tag: str) -> tuple[Tensor, Tensor]:
        generator = _fixed_generator(self._seed, tag)
        parts = [
            _draw_shapes(min(self._CHUNK, n - start), self._size, self._difficulty, generator)
            for start in range(0, n, self._CHUNK)
        ]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _normalise(self, x: Tensor) -> Tensor:
        return ((x.float() / 255.0 - self._MEAN) / self._STD).contiguous()

    def _augmented(self, x: Tensor, generator: torch.Generator) -> Tensor:
        x = x.float() / 255.0
        if self._augment:
            x = random_flip(random_crop(x, max(1, self._size // 8), generator), generator)
        return ((x - self._MEAN) / self._STD).contiguous()

    def _train_split(self) -> tuple[Tensor, Tensor]:
        if self._train is None:
            assert self.train_size is not None
            self._train = self._generate(self.train_size, "train")
        return self._train

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        batch_size = as_int("batch_size", batch_size, 1)
        _check_generator(generator)
        if self.train_size is None:
            x, y = _draw_shapes(batch_size, self._size, self._difficulty, generator)
        else:
            x_all, y_all = self._train_split()
            index = torch.randint(0, self.train_size, (batch_size,), generator=generator)
            x, y = x_all[index], y_all[index]
        return self._augmented(x, generator), y

    def test_set(self) -> tuple[Tensor, Tensor]:
        if self._test is None:
            x, y = self._generate(self._test_size, "test")
            self._test = (self._normalise(x), y)
        return self._test

    def train_subset(self, n: int) -> tuple[Tensor, Tensor]:
        n = as_int("n", n, 1)
        if self.train_size is not None:
            x_all, y_all = self._train_split()
            order = torch.randperm(self.train_size, generator=_fixed_generator(self._seed, "train_subset"))
            index = order[: min(n, self.train_size)]
            return self._normalise(x_all[index]), y_all[index]
        if n not in self._subsets:
            x, y = self._generate(n, "train_subset")
            self._subsets[n] = (self._normalise(x), y)
        return self._subsets[n]


def _shapes(root: str | None, seed: int, options: Mapping[str, object]) -> _ShapesSource:
    defaults = {"size": 32, "difficulty": 0.5, "train_size": None, "test_size": 10_000, "augment": False}
    opts = _options("shapes", options, defaults)
    train_size = opts["train_size"]
    return _ShapesSource(
        size=as_int("size", opts["size"], 8),
        difficulty=_float("difficulty", opts["difficulty"], 0.0, 1.0),
        train_size=None if train_size is None else as_int("train_size", train_size, 1),
        test_size=as_int("test_size", opts["test_size"], 1),
        augment=_bool("augment", opts["augment"]),
        seed=seed,
    )


# ------------------------------------------------------------------------------------------ imagefolder


def _imagefolder(root: str | None, seed: int, options: Mapping[str, object]) -> DataSource:
    from smdyn.experiments.data_imagefolder import imagefolder  # Pillow and its loader only when asked

    return imagefolder(root, seed, options)


def _text(root: str | None, seed: int, options: Mapping[str, object]) -> DataSource:
    from smdyn.experiments.text_data import load_text

    return load_text(root, seed, options)


# ------------------------------------------------------------------------------------------------ entry

_LOADERS: dict[str, Callable[[str | None, int, Mapping[str, object]], DataSource]] = {
    "digits": _digits,
    "mnist1d": _mnist1d,
    "shapes": _shapes,
    "cifar10": _cifar10,
    "imagefolder": _imagefolder,
    "text": _text,
}


def load_data(name: str, *, root: str | None = None, seed: int = 0, **options: object) -> DataSource:
    """Builds the data source ``name`` (one of `DATASETS`) from local data only.

    Options by source (defaults in brackets):

    - ``digits``: ``train_split`` [0.8]. ``root`` unused (the data ship with scikit-learn).
    - ``mnist1d``: ``num_samples`` [60 000], ``train_split`` [0.8], ``cache`` [True] (``.npz`` under
      ``root``, else ``$XDG_CACHE_HOME/smdyn`` or ``~/.cache/smdyn``), ``augment`` [False]: a circular
      shift uniform in ±``max_shift`` [3] samples plus Gaussian noise of std ``noise_std`` [0.1] (the
      signals have unit std). ``seed`` is the generator's seed.
    - ``shapes``: ``size`` [32], ``difficulty`` [0.5] in [0, 1], ``train_size`` [None: a fresh stream;
      an int: a finite split], ``test_size`` [10 000], ``augment`` [False]: crop with padding size/8 and
      flip (for a finite split; a stream needs none).
    - ``cifar10``: ``root`` (required) holds the binary files or ``cifar-10-batches-bin/``; ``augment``
      [True]: crop 32 with padding 4 and flip.
    - ``imagefolder``: ``root`` (required) holds ``train/<class>/`` and ``val/<class>/``; ``size`` [224],
      ``augment`` [True]: random-resized-crop and flip; ``test_size`` [None: the whole val folder; an int:
      a fixed random subset, since ``test_set`` returns one tensor in memory].
    - ``text``: next-character prediction on Python source, ``root`` [None: this Python's standard
      library], ``length`` [64], ``test_windows`` [256], ``test_every`` [10], ``min_chars`` [4 000 000]; see
      `smdyn.experiments.text_data` (``x`` and ``y`` are int64 ids ``[B, length]``).

    ``seed`` fixes every non-streamed choice: splits, the test set, `DataSource.train_subset`. Training
    batches draw from the generator given to `DataSource.train_batch` only.

    Raises:
        ValueError: an unknown ``name`` or option, or an option out of range (the message names it).
        TypeError: an option of the wrong type.
        FileNotFoundError: a file of the data set is missing (the message says where to get it).
        ImportError: an optional package the source needs is missing (the message names it).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__} {name!r}")
    if name not in _LOADERS:
        raise ValueError(f"unknown data set name {name!r}; known names: {', '.join(DATASETS)}")
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a path or None, got {type(root).__name__} {root!r}")
    seed = as_int("seed", seed, 0)
    return _LOADERS[name](None if root is None else os.fspath(root), seed, options)
