"""Tests for smdyn.experiments.data: loaders on small files written here in the real formats, augmentation.

Expected values come from the files the tests write (CIFAR-10 binary records built with numpy, PNGs built
with Pillow) or from brute force (every crop offset, every shift), never from the loader itself. Every test
runs with the network disabled, so a loader that tried to download would fail.
"""

from __future__ import annotations

import math
import pickle
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from smdyn.experiments.data import DATASETS, DataSource, load_data, random_crop, random_flip

_CIFAR_MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
_CIFAR_STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
_IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    try:
        import requests
    except ImportError:  # pragma: no cover - requests comes with mnist1d
        return
    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(requests.Session, "request", refuse)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------- entry


def test_dataset_names() -> None:
    assert set(DATASETS) == {"digits", "mnist1d", "shapes", "cifar10", "imagefolder", "text"}


def test_load_data_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown data set name 'cifar100'.*digits"):
        load_data("cifar100")
    with pytest.raises(TypeError, match="name"):
        load_data(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown option\(s\) for data set 'shapes': colour"):
        load_data("shapes", colour=True)
    with pytest.raises(ValueError, match="difficulty"):
        load_data("shapes", difficulty=1.5)
    with pytest.raises(TypeError, match="size"):
        load_data("shapes", size=32.0)
    with pytest.raises(ValueError, match="seed"):
        load_data("shapes", seed=-1)
    with pytest.raises(TypeError, match="augment"):
        load_data("mnist1d", root=str(tmp_path), num_samples=100, augment="yes")
    source = load_data("shapes", size=8, test_size=4)
    with pytest.raises(ValueError, match="batch_size"):
        source.train_batch(0, _gen())
    with pytest.raises(TypeError, match="generator"):
        source.train_batch(4, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be"):
        source.train_subset(0)


# -------------------------------------------------------------------------------------- augmentation


def test_random_crop_is_a_window_of_the_zero_padded_image() -> None:
    x = torch.rand(24, 2, 5, 6) + 1.0  # no zeros inside the image, so the padding is recognisable
    p = 2
    out = random_crop(x, p, _gen(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.zeros(24, 2, 5 + 2 * p, 6 + 2 * p)
    padded[:, :, p : p + 5, p : p + 6] = x
    used = set()
    for b in range(24):
        hits = [
            (i, j)
            for i in range(2 * p + 1)
            for j in range(2 * p + 1)
            if torch.equal(out[b], padded[b, :, i : i + 5, j : j + 6])
        ]
        assert len(hits) == 1, f"sample {b} is not exactly one window of the padded image"
        used.add(hits[0])
    assert len(used) > 5  # offsets vary from sample to sample (25 possible)


def test_random_crop_determinism_and_identity() -> None:
    x = torch.rand(16, 3, 8, 8)
    g = _gen(7)
    state = g.get_state()
    first = random_crop(x, 3, g)
    g.set_state(state)
    assert torch.equal(random_crop(x, 3, g), first)
    assert not torch.equal(random_crop(x, 3, g), first)  # the generator moved on
    assert torch.equal(random_crop(x, 0, _gen()), x)
    with pytest.raises(ValueError, match="x must be"):
        random_crop(torch.rand(3, 8, 8), 2, _gen())
    with pytest.raises(ValueError, match="padding"):
        random_crop(x, -1, _gen())


def test_random_flip_mirrors_about_half_the_samples() -> None:
    x = torch.arange(64 * 2 * 3 * 4, dtype=torch.float32).view(64, 2, 3, 4)  # no sample is symmetric
    g = _gen(3)
    state = g.get_state()
    out = random_flip(x, g)
    flipped = torch.tensor([torch.equal(out[b], x[b].flip(-1)) for b in range(64)])
    kept = torch.tensor([torch.equal(out[b], x[b]) for b in range(64)])
    assert torch.all(flipped ^ kept)
    assert 10 <= int(flipped.sum()) <= 54  # Binomial(64, ½): outside this range has probability < 1e-7
    assert torch.equal(out[flipped][..., 0], x[flipped][..., -1])  # really left-right
    g.set_state(state)
    assert torch.equal(random_flip(x, g), out)
    with pytest.raises(ValueError, match="x must be"):
        random_flip(torch.rand(5), _gen())


# -------------------------------------------------------------------------------------------- digits


def test_digits_split_and_standardisation() -> None:
    datasets = pytest.importorskip("sklearn.datasets")
    target = datasets.load_digits().target
    source = load_data("digits", seed=3)
    assert isinstance(source, DataSource)
    assert source.input_shape == (1, 8, 8) and source.num_classes == 10
    assert source.train_size == round(0.8 * 1797)
    x_train, y_train = source.train_subset(10_000)  # capped at the whole split
    x_test, y_test = source.test_set()
    assert x_train.shape == (source.train_size, 1, 8, 8) and x_test.shape == (
        1797 - source.train_size,
        1,
        8,
        8,
    )
    counts = np.bincount(y_train.numpy(), minlength=10) + np.bincount(y_test.numpy(), minlength=10)
    np.testing.assert_array_equal(counts, np.bincount(target, minlength=10))
    flat = x_train.double().reshape(len(x_train), 64)
    std = flat.std(0, unbiased=False)
    varying = std > 0
    np.testing.assert_allclose(flat.mean(0).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(std[varying].numpy(), 1.0, atol=1e-5)
    assert torch.all(flat[:, ~varying] == 0)
    # The split is fixed by the seed.
    again = load_data("digits", seed=3).test_set()
    other = load_data("digits", seed=4).test_set()
    assert torch.equal(again[0], x_test) and torch.equal(again[1], y_test)
    assert not torch.equal(other[1], y_test)


def test_digits_names_the_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        load_data("digits")


# ------------------------------------------------------------------------------------------- mnist1d


def _mnist1d_reference(num_samples: int, seed: int) -> dict[str, np.ndarray]:
    """The package's own generator with the same settings, called directly."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    return make_dataset(args)


def test_mnist1d_matches_the_package_generator_without_network(tmp_path: Path) -> None:
    pytest.importorskip("mnist1d")
    source = load_data("mnist1d", root=str(tmp_path), num_samples=200, seed=5)
    reference = _mnist1d_reference(200, 5)
    assert source.input_shape == (40,) and source.train_size == 160
    x_test, y_test = source.test_set()
    np.testing.assert_array_equal(x_test.numpy(), reference["x_test"].astype(np.float32))
    np.testing.assert_array_equal(y_test.numpy(), reference["y_test"])
    x_train, y_train = source.train_subset(10_000)
    rows = {tuple(r): int(c) for r, c in zip(reference["x"].astype(np.float32), reference["y"], strict=True)}
    assert len(x_train) == 160
    assert all(rows[tuple(r)] == int(c) for r, c in zip(x_train.numpy(), y_train, strict=True))
    assert len(list(tmp_path.glob("mnist1d-*.npz"))) == 1


def test_mnist1d_leaves_the_global_random_state_alone(tmp_path: Path) -> None:
    pytest.importorskip("mnist1d")
    # mnist1d's generator reseeds numpy's global state; a caller's own seeding must survive it.
    np.random.seed(123)  # noqa: NPY002
    expected = np.random.rand(3)  # noqa: NPY002
    np.random.seed(123)  # noqa: NPY002
    load_data("mnist1d", root=str(tmp_path), num_samples=100, cache=False)
    np.testing.assert_array_equal(np.random.rand(3), expected)  # noqa: NPY002


def test_mnist1d_cache_hit_miss_and_corruption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mnist1d")
    import mnist1d.data

    first = load_data("mnist1d", root=str(tmp_path), num_samples=100, seed=1).test_set()
    (path,) = tmp_path.glob("mnist1d-*.npz")
    real = mnist1d.data.make_dataset
    calls: list[int] = []

    def counting(args: object) -> dict[str, np.ndarray]:
        calls.append(1)
        return real(args)

    monkeypatch.setattr(mnist1d.data, "make_dataset", counting)
    hit = load_data("mnist1d", root=str(tmp_path), num_samples=100, seed=1).test_set()
    assert calls == [] and torch.equal(hit[0], first[0]) and torch.equal(hit[1], first[1])
    load_data("mnist1d", root=str(tmp_path), num_samples=100, seed=2)  # another seed is another file
    assert len(calls) == 1 and len(list(tmp_path.glob("mnist1d-*.npz"))) == 2
    path.write_bytes(b"not a zip file")
    again = load_data("mnist1d", root=str(tmp_path), num_samples=100, seed=1).test_set()
    assert len(calls) == 2 and torch.equal(again[0], first[0])
    # A file holding pickled objects is never unpickled: it is a cache miss.
    with open(path, "wb") as fh:
        np.savez(fh, x=np.array([object()]), y=np.zeros(1), x_test=np.zeros(1), y_test=np.zeros(1))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled the cache"))
    again = load_data("mnist1d", root=str(tmp_path), num_samples=100, seed=1).test_set()
    assert len(calls) == 3 and torch.equal(again[0], first[0])


def test_mnist1d_augmentation_is_a_bounded_circular_shift(tmp_path: Path) -> None:
    pytest.importorskip("mnist1d")
    source = load_data(
        "mnist1d", root=str(tmp_path), num_samples=100, augment=True, max_shift=2, noise_std=0.0, cache=False
    )
    x_all, y_all = source.train_subset(80)
    x, y = source.train_batch(32, _gen(4))
    shifts = set()
    for b in range(32):
        hits = [
            k
            for i in range(80)
            for k in range(-2, 3)
            if y_all[i] == y[b] and torch.equal(torch.roll(x_all[i], k), x[b])
        ]
        assert hits, f"sample {b} is not a shift of a training signal by at most 2"
        shifts.update(hits)
    assert len(shifts) > 1
    noisy = load_data(
        "mnist1d", root=str(tmp_path), num_samples=100, augment=True, max_shift=0, noise_std=0.5
    )
    x_noisy, _ = noisy.train_batch(64, _gen(4))
    x_clean, _ = load_data("mnist1d", root=str(tmp_path), num_samples=100).train_batch(64, _gen(4))
    assert abs(float((x_noisy - x_clean).std()) - 0.5) < 0.05  # same indices, noise of std 0.5 added


# -------------------------------------------------------------------------------------------- shapes


def test_shapes_stream_is_deterministic_and_fresh() -> None:
    source = load_data("shapes", size=16, difficulty=0.5, test_size=50)
    assert isinstance(source, DataSource)
    assert source.train_size is None and source.input_shape == (3, 16, 16) and source.num_classes == 10
    g = _gen(9)
    state = g.get_state()
    x, y = source.train_batch(64, g)
    assert x.shape == (64, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.isfinite(x).all() and int(y.min()) >= 0 and int(y.max()) <= 9
    x2, _ = source.train_batch(64, g)
    assert not torch.equal(x2, x)  # a stream: the next batch is new images
    g.set_state(state)
    x3, y3 = source.train_batch(64, g)
    assert torch.equal(x3, x) and torch.equal(y3, y)
    test = source.test_set()
    same = load_data("shapes", size=16, difficulty=0.5, test_size=50).test_set()
    other = load_data("shapes", size=16, difficulty=0.5, test_size=50, seed=1).test_set()
    assert torch.equal(test[0], same[0]) and not torch.equal(test[0], other[0])
    subset = source.train_subset(30)
    assert subset[0].shape == (30, 3, 16, 16) and torch.equal(source.train_subset(30)[0], subset[0])


def test_shapes_finite_split_samples_only_its_images() -> None:
    source = load_data("shapes", size=12, train_size=40, test_size=10)
    assert source.train_size == 40
    x_all, y_all = source.train_subset(1000)
    assert len(x_all) == 40
    x, y = source.train_batch(100, _gen(2))
    for b in range(100):
        match = [i for i in range(40) if torch.equal(x_all[i], x[b])]
        assert match and all(int(y_all[i]) == int(y[b]) for i in match)


class _OpCount(TorchDispatchMode):
    """Counts the aten ops dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def _ops_for_batch(source, batch_size: int) -> int:
    g = _gen()
    source.train_batch(batch_size, g)  # first call: anything made once
    with _OpCount() as count:
        source.train_batch(batch_size, g)
    return count.n


def test_shapes_batch_generation_is_vectorised() -> None:
    """Images are drawn as whole-batch tensor ops: the ops dispatched do not grow with the batch (a loop
    over images would make 4 x as many at 4 x the batch; a few ops per shape kind present is all that
    varies), so a generated batch stays cheap beside the step it feeds."""
    source = load_data("shapes", size=32, difficulty=0.5, test_size=1)
    small, large = _ops_for_batch(source, 128), _ops_for_batch(source, 512)
    assert small > 0
    assert large <= small + 16, (small, large)


def _tiny_cnn() -> nn.Module:
    layers: list[nn.Module] = []
    for c_in, c_out in ((3, 16), (16, 32), (32, 32)):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def _accuracy_after_training(difficulty: float) -> float:
    torch.manual_seed(0)
    source = load_data("shapes", size=24, difficulty=difficulty, test_size=1000)
    model = _tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    g = _gen()
    for _ in range(200):
        x, y = source.train_batch(32, g)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x_test, y_test = source.test_set()
    with torch.no_grad():
        return float((model(x_test).argmax(1) == y_test).float().mean())


@pytest.mark.slow
def test_shapes_is_learnable_and_difficulty_matters() -> None:
    easy, hard = _accuracy_after_training(0.0), _accuracy_after_training(1.0)
    assert easy > 0.1 + 0.2, f"difficulty 0 reached only {easy:.3f} (chance 0.1)"
    assert easy > hard + 0.15, f"difficulty 0: {easy:.3f}, difficulty 1: {hard:.3f}"


# ------------------------------------------------------------------------------------------- cifar10


def _write_cifar(
    folder: Path, counts: dict[str, int], seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Writes CIFAR-10 binary files: per record one label byte, then 1024 red, 1024 green, 1024 blue bytes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, n in counts.items():
        images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        records = b"".join(bytes([int(labels[i])]) + images[i].tobytes(order="C") for i in range(n))
        (folder / name).write_bytes(records)
        written[name] = (images, labels)
    return written


_CIFAR_COUNTS = {**{f"data_batch_{i}.bin": 3 for i in range(1, 6)}, "test_batch.bin": 4}


def _to_pixels(x: Tensor, mean: Tensor, std: Tensor) -> np.ndarray:
    return torch.round((x.double() * std.double() + mean.double()) * 255.0).numpy()


def test_cifar10_round_trips_pixels_and_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = _write_cifar(tmp_path / "cifar-10-batches-bin", _CIFAR_COUNTS)
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    source = load_data("cifar10", root=str(tmp_path), augment=False)  # finds the nested folder
    assert isinstance(source, DataSource)
    assert source.train_size == 15 and source.input_shape == (3, 32, 32) and source.num_classes == 10
    x_test, y_test = source.test_set()
    images, labels = written["test_batch.bin"]
    np.testing.assert_array_equal(_to_pixels(x_test, _CIFAR_MEAN, _CIFAR_STD), images)
    np.testing.assert_array_equal(y_test.numpy(), labels)
    # Normalised with the standard statistics: a red-plane pixel p maps to (p/255 − 0.4914)/0.2470.
    assert math.isclose(float(x_test[0, 0, 0, 0]), (images[0, 0, 0, 0] / 255 - 0.4914) / 0.2470, rel_tol=1e-5)
    train_images = np.concatenate([written[f"data_batch_{i}.bin"][0] for i in range(1, 6)])
    train_labels = np.concatenate([written[f"data_batch_{i}.bin"][1] for i in range(1, 6)])
    by_bytes = {img.tobytes(): int(lab) for img, lab in zip(train_images, train_labels, strict=True)}
    x_train, y_train = source.train_subset(100)
    pixels = _to_pixels(x_train, _CIFAR_MEAN, _CIFAR_STD).astype(np.uint8)
    assert len(pixels) == 15 and len({p.tobytes() for p in pixels}) == 15
    assert all(by_bytes[p.tobytes()] == int(c) for p, c in zip(pixels, y_train, strict=True))


def test_cifar10_augmented_batches_are_crops_and_flips(tmp_path: Path) -> None:
    written = _write_cifar(tmp_path, _CIFAR_COUNTS, seed=1)
    source = load_data("cifar10", root=str(tmp_path))
    g = _gen(5)
    state = g.get_state()
    x, y = source.train_batch(16, g)
    g.set_state(state)
    x2, y2 = source.train_batch(16, g)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    raw = _to_pixels(x, _CIFAR_MEAN, _CIFAR_STD)
    images = np.concatenate([written[f"data_batch_{i}.bin"][0] for i in range(1, 6)]).astype(np.float64)
    labels = np.concatenate([written[f"data_batch_{i}.bin"][1] for i in range(1, 6)])
    padded = np.pad(images, ((0, 0), (0, 0), (4, 4), (4, 4)))  # black padding
    seen = set()
    for b in range(16):
        found = [
            (dy, dx, mirror)
            for i in range(len(images))
            if labels[i] == int(y[b])
            for dy in range(9)
            for dx in range(9)
            for mirror in (False, True)
            if np.array_equal(padded[i, :, dy : dy + 32, dx : dx + 32][..., :: -1 if mirror else 1], raw[b])
        ]
        assert found, f"sample {b} is not a padded crop (or its mirror) of a training image with its label"
        seen.update(found)
    assert {m for _, _, m in seen} == {False, True}  # some mirrored, some not
    assert len({(dy, dx) for dy, dx, _ in seen}) > 3  # crops at varied offsets


def test_cifar10_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="root"):
        load_data("cifar10")
    _write_cifar(tmp_path, _CIFAR_COUNTS)
    (tmp_path / "data_batch_3.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"data_batch_3\.bin.*cs\.toronto\.edu"):
        load_data("cifar10", root=str(tmp_path))
    (tmp_path / "data_batch_3.bin").write_bytes(b"\x01" * 3072)  # one byte short of a record
    with pytest.raises(ValueError, match=r"data_batch_3\.bin is not a CIFAR-10 binary file"):
        load_data("cifar10", root=str(tmp_path))
    (tmp_path / "data_batch_3.bin").write_bytes(bytes([10]) + b"\x00" * 3072)
    with pytest.raises(ValueError, match="label 10"):
        load_data("cifar10", root=str(tmp_path))


# --------------------------------------------------------------------------------------- imagefolder


def _write_folder(root: Path) -> dict[tuple[str, str], np.ndarray]:
    """Writes train/{ant,bee,cat} and val/{ant,cat} PNGs of 32×32 random pixels; returns them by path."""
    image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    written = {}
    layout = {"train": {"ant": 3, "bee": 2, "cat": 3}, "val": {"ant": 2, "cat": 1}}
    for split, classes in layout.items():
        for cls, n in classes.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                image.fromarray(pixels).save(root / split / cls / f"{i}.png")
                written[(split, f"{cls}/{i}")] = pixels
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    return written


def test_imagefolder_eval_crop_round_trips_pixels(tmp_path: Path) -> None:
    written = _write_folder(tmp_path)
    # size 28 = 0.875 · 32: the evaluation transform is exactly the central 28×28 crop, no resampling.
    source = load_data("imagefolder", root=str(tmp_path), size=28)
    assert isinstance(source, DataSource)
    assert source.num_classes == 3 and source.train_size == 8 and source.input_shape == (3, 28, 28)
    x_val, y_val = source.test_set()
    assert y_val.tolist() == [0, 0, 2]  # classes sorted by name: ant 0, bee 1, cat 2
    expected = np.stack([written[("val", k)] for k in ("ant/0", "ant/1", "cat/0")])[:, 2:30, 2:30]
    np.testing.assert_array_equal(
        _to_pixels(x_val, _IMAGENET_MEAN, _IMAGENET_STD), expected.transpose(0, 3, 1, 2)
    )
    x_train, y_train = source.train_subset(100)
    crops = {
        written[("train", k)][2:30, 2:30].tobytes(): k.split("/")[0] for (s, k) in written if s == "train"
    }
    pixels = _to_pixels(x_train, _IMAGENET_MEAN, _IMAGENET_STD).astype(np.uint8).transpose(0, 2, 3, 1)
    assert len(pixels) == 8
    names = ["ant", "bee", "cat"]
    assert all(crops[p.tobytes()] == names[int(c)] for p, c in zip(pixels, y_train, strict=True))


def test_imagefolder_decodes_per_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(1)
    colours = {}
    for cls in ("a", "b"):
        for split in ("train", "val"):
            (tmp_path / split / cls).mkdir(parents=True)
        for i in range(3):  # one flat colour per image, of varied sizes and modes
            colour = rng.integers(0, 256, size=3, dtype=np.uint8)
            w, h = int(rng.integers(20, 60)), int(rng.integers(20, 60))
            img = image.fromarray(np.broadcast_to(colour, (h, w, 3)).copy())
            img.convert("RGBA").save(tmp_path / "train" / cls / f"{i}.png")
            colours[colour.tobytes()] = cls
        grey = image.fromarray(np.full((30, 30), 77, dtype=np.uint8))  # mode L becomes RGB
        grey.save(tmp_path / "val" / cls / "g.png")
    opened: list[str] = []
    real_open = image.open

    def counting_open(fp: object, *args: object, **kwargs: object) -> object:
        opened.append(str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(image, "open", counting_open)
    source = load_data("imagefolder", root=str(tmp_path), size=16)
    assert opened == []  # nothing decoded up front
    g = _gen(6)
    state = g.get_state()
    x, y = source.train_batch(5, g)
    assert len(opened) == 2 * 5  # a header read and a decode per image
    assert x.shape == (5, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    pixels = _to_pixels(x, _IMAGENET_MEAN, _IMAGENET_STD).astype(np.uint8)
    for b in range(5):
        colour = pixels[b, :, 0, 0]
        assert (pixels[b] == colour[:, None, None]).all()  # a crop of a flat image stays flat
        assert colours[colour.tobytes()] == "ab"[int(y[b])]
    g.set_state(state)
    x2, _ = source.train_batch(5, g)
    assert torch.equal(x2, x)
    x_val, _ = source.test_set()
    assert (_to_pixels(x_val, _IMAGENET_MEAN, _IMAGENET_STD) == 77).all()


def test_imagefolder_random_resized_crop_varies(tmp_path: Path) -> None:
    image = pytest.importorskip("PIL.Image")
    for split in ("train", "val"):
        (tmp_path / split / "only").mkdir(parents=True)
    ramp = np.broadcast_to(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (48, 64, 3)).copy()
    image.fromarray(ramp).save(tmp_path / "train" / "only" / "ramp.png")
    image.fromarray(ramp).save(tmp_path / "val" / "only" / "ramp.png")
    source = load_data("imagefolder", root=str(tmp_path), size=16)
    x, _ = source.train_batch(16, _gen(0))
    spans = {round(float(xi[0, 0, -1] - xi[0, 0, 0]), 2) for xi in x}
    assert len(spans) > 4  # crops of different widths see different parts of the ramp
    flipped = sum(float(xi[0, 0, -1] - xi[0, 0, 0]) < 0 for xi in x)
    assert 0 < flipped < 16
    fixed, _ = load_data("imagefolder", root=str(tmp_path), size=16, augment=False).train_batch(4, _gen(0))
    assert torch.equal(fixed[0], fixed[3])  # without augmentation every draw is the centre crop


def test_imagefolder_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("PIL.Image")
    with pytest.raises(ValueError, match="root"):
        load_data("imagefolder")
    _write_folder(tmp_path)
    (tmp_path / "val" / "dog").mkdir()
    with pytest.raises(ValueError, match="dog"):
        load_data("imagefolder", root=str(tmp_path))
    (tmp_path / "val" / "dog").rmdir()
    with pytest.raises(FileNotFoundError, match="train"):
        load_data("imagefolder", root=str(tmp_path / "nowhere"))
    source = load_data("imagefolder", root=str(tmp_path), size=8, test_size=2)
    assert len(source.test_set()[1]) == 2
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"smdyn\[imagenet\]"):
        load_data("imagefolder", root=str(tmp_path))
