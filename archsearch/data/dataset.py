"""What a dataset is once loaded: whole-dataset tensors, and what is known about its images.

Images stay uint8 as stored (47 MB for Fashion-MNIST's training set instead of 188 MB as float, in every training
process); consumers convert each batch (``DatasetInfo.prep``): pixel / 255, then the dataset's per-channel
normalisation where it has one. Element by element, so converting a gathered batch gives exactly the values
converting the whole set would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from archsearch.core.errors import UserError
from archsearch.core.shapes import FASHION_MNIST_SHAPE, Shape

__all__ = ["FASHION_MNIST", "DataError", "Dataset", "DatasetInfo", "as_float", "split_dataset", "split_training"]


class DataError(UserError):
    """A dataset is missing, corrupt, or cannot be split as asked: the user can fix it (the message says how)."""


def as_float(images: torch.Tensor) -> torch.Tensor:
    """Pixels as float in [0, 1] (what ``ToTensor`` gives): uint8 images are divided by 255, float ones pass through."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset's name, image shape, class names and normalisation (per-channel mean and std of the [0, 1] pixels;
    None: none, as the report trained on Fashion-MNIST)."""

    name: str
    shape: Shape
    classes: tuple[str, ...]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    source: str = ""  # where the files were found (a folder, a package)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def normalizer(self, device: torch.device | str = "cpu") -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The per-channel normalisation of float images (..., C, H, W), or None."""
        if self.mean is None or self.std is None:
            return None
        mean = torch.tensor(self.mean, device=device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=device).view(-1, 1, 1)
        return lambda x: (x - mean) / std

    def prep(self, device: torch.device | str = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
        """Stored images to a model's input: float in [0, 1], then normalised."""
        norm = self.normalizer(device)
        return as_float if norm is None else (lambda x: norm(as_float(x)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetInfo:
        """The inverse of ``to_dict`` (a checkpoint's config.json, a trial's record)."""
        c, h, w = data["shape"]
        mean, std = data.get("mean"), data.get("std")
        return cls(
            str(data["name"]), Shape(int(c), int(h), int(w)), tuple(map(str, data["classes"])),
            tuple(map(float, mean)) if mean is not None else None, tuple(map(float, std)) if std is not None else None,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": [self.shape.channels, self.shape.height, self.shape.width],
            "classes": list(self.classes),
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
        }


FASHION_MNIST = DatasetInfo(
    "fashion-mnist",
    FASHION_MNIST_SHAPE,
    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
)


@dataclass
class Dataset:
    """Whole-dataset tensors: images (N, C, H, W) uint8 and labels (N,) int64, plus held-out sets (``evals``: "test"
    always, "val" when a validation split was held out)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    evals: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    info: DatasetInfo = FASHION_MNIST

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(
            self.train_x.to(device),
            self.train_y.to(device),
            {k: (x.to(device), y.to(device)) for k, (x, y) in self.evals.items()},
            self.info,
        )


def split_training(
    x: torch.Tensor, y: torch.Tensor, val_size: int, seed: int, train_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """A seeded split of a training set: (train images, train labels, the held-out validation set or None).

    The validation images are the first ``val_size`` of a permutation drawn from ``seed``, so they are the same
    whatever ``train_size`` is; ``train_size`` keeps only that many of the rest (a cheaper, lower-fidelity trial on
    fewer images, judged on the same validation set). Indices are sorted: a split keeps the stored order.
    """
    n = len(y)
    if val_size and not 0 < val_size < n:
        raise DataError(f"validation size must be between 1 and {n - 1}, got {val_size}")
    if train_size is not None and not 0 < train_size <= n - val_size:
        raise DataError(f"training size must be between 1 and {n - val_size}, got {train_size}")
    if not val_size and train_size is None:
        return x, y, None
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, rest = order[:val_size].sort().values, order[val_size:]
    train_idx = (rest if train_size is None else rest[:train_size]).sort().values
    val = (x[val_idx], y[val_idx]) if val_size else None
    return x[train_idx], y[train_idx], val


def split_dataset(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    info: DatasetInfo,
    *,
    val_size: int,
    split_seed: int,
    train_size: int | None,
) -> Dataset:
    """A loaded training and test set as a Dataset, with the training set split as ``split_training`` does."""
    train_x, train_y, val = split_training(*train, val_size, split_seed, train_size)
    evals = {"val": val} if val is not None else {}
    evals["test"] = test
    return Dataset(train_x, train_y, evals, info)
