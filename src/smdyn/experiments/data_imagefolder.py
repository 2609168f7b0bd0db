"""The ``imagefolder`` data source of `smdyn.experiments.data` (ImageNet-style ``train/<class>/`` and
``val/<class>/`` folders), decoded with Pillow on demand: only this module needs it."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from smdyn.experiments.checks import as_int
from smdyn.experiments.data import (
    _IMAGE_SUFFIXES,
    _IMAGENET_MEAN,
    _IMAGENET_STD,
    _bool,
    _check_generator,
    _fixed_generator,
    _options,
    random_flip,
)

__all__ = ["imagefolder"]


def _import_pil() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError("the 'imagefolder' data set needs Pillow: pip install 'smdyn[imagenet]'") from exc
    return Image


def _list_images(folder: Path, classes: list[str] | None) -> tuple[list[str], list[Path], list[int]]:
    """Lists ``folder/<class>/<image>``, classes in sorted order (the torchvision ImageFolder indices)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist; expected {folder}/<class>/<image>")
    found = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    if classes is None:
        classes = found
        if not classes:
            raise ValueError(f"{folder} holds no class folders; expected {folder}/<class>/<image>")
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise ValueError(f"{folder} has class folders that the train folder lacks: {', '.join(extra)}")
    index = {name: i for i, name in enumerate(classes)}
    paths: list[Path] = []
    labels: list[int] = []
    for name in found:
        files = sorted(
            entry.name
            for entry in os.scandir(folder / name)
            if entry.is_file() and Path(entry.name).suffix.lower() in _IMAGE_SUFFIXES
        )
        paths += [folder / name / f for f in files]
        labels += [index[name]] * len(files)
    if not paths:
        raise ValueError(f"{folder} holds no images (looked for {', '.join(sorted(_IMAGE_SUFFIXES))})")
    return classes, paths, labels


class _ImageFolderSource:
    """ImageNet-style folders, decoded per batch: random-resized-crop + flip for training, and a resize to
    ``size / 0.875`` then centre crop for evaluation (the usual 256 → 224)."""

    name = "imagefolder"
    _SCALE = (0.08, 1.0)  # crop area as a fraction of the image
    _LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))  # crop aspect ratio, uniform in log
    _ATTEMPTS = 10

    def __init__(self, root: Path, *, size: int, augment: bool, test_size: int | None, seed: int) -> None:
        self._image = _import_pil()
        classes, self._train_paths, train_labels = _list_images(root / "train", None)
        _, self._val_paths, val_labels = _list_images(root / "val", classes)
        self.classes = classes
        self.num_classes = len(classes)
        self.input_shape = (3, size, size)
        self.train_size: int | None = len(self._train_paths)
        self._train_labels = torch.tensor(train_labels, dtype=torch.int64)
        self._val_labels = torch.tensor(val_labels, dtype=torch.int64)
        self._size, self._augment, self._test_size, self._seed = size, augment, test_size, seed
        self._mean = torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
        self._std = torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1)
        self._test: tuple[Tensor, Tensor] | None = None

    def __repr__(self) -> str:
        return (
            f"<imagefolder: {self.num_classes} classes, train {self.train_size}, val {len(self._val_paths)}, "
            f"size {self._size}, augment={self._augment}>"
        )

    def _decode(self, path: Path, box: tuple[float, float, float, float] | None) -> np.ndarray:
        """Crops ``box`` (None: the eval centre crop) and resizes to ``size``² in one resampling pass."""
        try:
            with self._image.open(path) as img:
                img = img.convert("RGB")
                if box is None:
                    box = self._centre_box(*img.size)
                out = img.resize((self._size, self._size), resample=self._image.BILINEAR, box=box)
        except OSError as exc:
            raise ValueError(f"cannot decode image {path}: {exc}") from exc
        return np.asarray(out, dtype=np.uint8)

    def _centre_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        side = min(width, height) * 0.875  # the crop of size² after resizing the short side to size / 0.875
        left, top = (width - side) / 2, (height - side) / 2
        return (left, top, left + side, top + side)

    def _crop_boxes(
        self, sizes: Tensor, generator: torch.Generator
    ) -> list[tuple[float, float, float, float]]:
        """Random-resized-crop boxes for all images at once (torchvision's rule, attempts vectorised)."""
        b, k = sizes.shape[0], self._ATTEMPTS
        width, height = sizes[:, 0:1].double(), sizes[:, 1:2].double()
        area = (
            width
            * height
            * (
                self._SCALE[0]
                + (self._SCALE[1] - self._SCALE[0])
                * torch.rand(b, k, generator=generator, dtype=torch.float64)
            )
        )
        low, high = self._LOG_RATIO
        ratio = torch.exp(low + (high - low) * torch.rand(b, k, generator=generator, dtype=torch.float64))
        crop_w = torch.sqrt(area * ratio).round()
        crop_h = torch.sqrt(area / ratio).round()
        position = torch.rand(b, 2, generator=generator, dtype=torch.float64)
        valid = (crop_w >= 1) & (crop_w <= width) & (crop_h >= 1) & (crop_h <= height)
        first = valid.double().argmax(1, keepdim=True)
        any_valid = valid.any(1)
        cw, ch = crop_w.gather(1, first).squeeze(1), crop_h.gather(1, first).squeeze(1)
        boxes = []
        for i in range(b):
            w, h = float(width[i]), float(height[i])
            if any_valid[i]:
                c_w, c_h = float(cw[i]), float(ch[i])
            else:  # fall back to the whole image, its aspect ratio clamped to the allowed range
                in_ratio = w / h
                if in_ratio < math.exp(low):
                    c_w, c_h = w, round(w / math.exp(low))
                elif in_ratio > math.exp(high):
                    c_w, c_h = round(h * math.exp(high)), h
                else:
                    c_w, c_h = w, h
            left = math.floor(float(position[i, 0]) * (w - c_w + 1))
            top = math.floor(float(position[i, 1]) * (h - c_h + 1))
            boxes.append((float(left), float(top), float(left + c_w), float(top + c_h)))
        return boxes

    def _to_input(self, pixels: list[np.ndarray]) -> Tensor:
        return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255.0

    def _normalise(self, x: Tensor) -> Tensor:
        return ((x - self._mean) / self._std).contiguous()

    def _eval_batch(self, paths: list[Path]) -> Tensor:
        return self._normalise(self._to_input([self._decode(p, None) for p in paths]))

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        batch_size = as_int("batch_size", batch_size, 1)
        _check_generator(generator)
        index = torch.randint(0, len(self._train_paths), (batch_size,), generator=generator)
        paths = [self._train_paths[i] for i in index.tolist()]
        if not self._augment:
            return self._eval_batch(paths), self._train_labels[index]
        sizes = []
        for path in paths:  # reads only the header: the size is known before anything is decoded
            try:
                with self._image.open(path) as img:
                    sizes.append(img.size)
            except OSError as exc:
                raise ValueError(f"cannot decode image {path}: {exc}") from exc
        boxes = self._crop_boxes(torch.tensor(sizes, dtype=torch.int64), generator)
        x = self._to_input([self._decode(p, box) for p, box in zip(paths, boxes, strict=True)])
        return self._normalise(random_flip(x, generator)), self._train_labels[index]

    def test_set(self) -> tuple[Tensor, Tensor]:
        if self._test is None:
            total = len(self._val_paths)
            if self._test_size is None or self._test_size >= total:
                index = torch.arange(total)
            else:
                order = torch.randperm(total, generator=_fixed_generator(self._seed, "test_subset"))
                index = order[: self._test_size].sort().values
            self._test = (
                self._eval_batch([self._val_paths[i] for i in index.tolist()]),
                self._val_labels[index],
            )
        return self._test

    def train_subset(self, n: int) -> tuple[Tensor, Tensor]:
        n = as_int("n", n, 1)
        total = len(self._train_paths)
        order = torch.randperm(total, generator=_fixed_generator(self._seed, "train_subset"))
        index = order[: min(n, total)]
        return self._eval_batch([self._train_paths[i] for i in index.tolist()]), self._train_labels[index]


def imagefolder(root: str | None, seed: int, options: Mapping[str, object]) -> _ImageFolderSource:
    """The ``imagefolder`` source of `smdyn.experiments.data.load_data` (its options are documented there)."""
    opts = _options("imagefolder", options, {"size": 224, "augment": True, "test_size": None})
    if root is None:
        raise ValueError(
            "the 'imagefolder' data set needs root=, a folder holding train/<class>/ and val/<class>/"
        )
    test_size = opts["test_size"]
    return _ImageFolderSource(
        Path(root).expanduser(),
        size=as_int("size", opts["size"], 8),
        augment=_bool("augment", opts["augment"]),
        test_size=None if test_size is None else as_int("test_size", test_size, 1),
        seed=seed,
    )
