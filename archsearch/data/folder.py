"""``folder:PATH``: a user's own images, in torchvision's ImageFolder layout ``PATH/<class>/<image files>``.

A model is built for one input shape, so every image is brought to one: grayscale (1 channel) when every image of
the tree is a grayscale mode, else RGB (3 channels, alpha dropped); then a square ``SIDE`` x ``SIDE`` (32) resize with
PIL's bilinear filter. One fixed side, whatever the images' sizes, so that the shape is known from the tree alone
and does not change when images are added. The tree has no test set of its own, so a seeded (seed 0) 20% of each
class is held out as ``test`` (at least one image of each class with two or more); the search's validation split
then comes from the training part, as for every dataset. Class names are the sorted subfolder names; image files
are those with an image extension (as ImageFolder), searched recursively, hidden files and folders skipped. The
whole tree is decoded into memory, as the other datasets are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from archsearch.core.shapes import Shape
from archsearch.data.dataset import DataError, DatasetInfo

__all__ = ["FOLDER_PREFIX", "IMAGE_EXTENSIONS", "SIDE", "TEST_FRACTION", "folder_info", "load_folder", "scan_folder"]

FOLDER_PREFIX = "folder:"
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
SIDE = 32
TEST_FRACTION = 0.2
_SPLIT_SEED = 0
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"})
_LAYOUT = "PATH/<class>/<image files>, one subfolder per class"


def _visible(path: Path, top: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(top).parts)


def scan_folder(path: Path) -> list[tuple[str, list[Path]]]:
    """(class name, sorted image files) for each class subfolder, sorted by name: the listing only, nothing opened."""
    if not path.is_dir():
        raise DataError(f"image folder {path} does not exist; expected {_LAYOUT}")
    classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"image folder {path} has no class subfolders; expected {_LAYOUT}")
    tree = []
    for folder in classes:
        files = sorted(
            p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and _visible(p, folder) and p.is_file()
        )
        if not files:
            raise DataError(f"class folder {folder} has no image files ({' '.join(IMAGE_EXTENSIONS)})")
        tree.append((folder.name, files))
    return tree


def _open_error(path: Path, err: Exception) -> DataError:
    return DataError(f"cannot read image file {path}: {err}; fix or remove it")


def _mode(path: Path) -> str:
    """An image's mode from its header, without decoding its pixels."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return str(im.mode)
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise _open_error(path, err) from None


def _info(path: Path, tree: list[tuple[str, list[Path]]], name: str) -> DatasetInfo:
    gray = all(_mode(f) in _GRAY_MODES for _, files in tree for f in files)
    return DatasetInfo(name, Shape(1 if gray else 3, SIDE, SIDE), tuple(c for c, _ in tree), source=str(path))


def folder_info(path: Path, name: str | None = None) -> DatasetInfo:
    """What ``folder:PATH`` holds: class names from the listing, channels from the images' headers (no pixels)."""
    return _info(path, scan_folder(path), name or f"{FOLDER_PREFIX}{path}")


def _pixels(path: Path, gray: bool) -> np.ndarray:
    """One image as uint8 (C, SIDE, SIDE)."""
    from PIL import Image

    try:
        with Image.open(path) as src:
            src.load()
            im: Image.Image = src
            if gray and im.mode.startswith("I;16"):  # 16-bit: keep the high byte, as a viewer would show it
                im = Image.fromarray((np.asarray(im, dtype=np.uint16) >> 8).astype(np.uint8))
            im = im.convert("L" if gray else "RGB")
            if im.size != (SIDE, SIDE):
                im = im.resize((SIDE, SIDE), Image.Resampling.BILINEAR)
            a = np.asarray(im, dtype=np.uint8)
    except Exception as err:
        raise _open_error(path, err) from None
    return a[None] if gray else a.transpose(2, 0, 1)


def load_folder(
    path: Path, name: str | None = None
) -> tuple[DatasetInfo, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(info, (train x, train y, test x, test y)): uint8 (N, C, SIDE, SIDE) images, int64 labels, class by class."""
    tree = scan_folder(path)
    info = _info(path, tree, name or f"{FOLDER_PREFIX}{path}")
    gray = info.shape.channels == 1
    g = torch.Generator().manual_seed(_SPLIT_SEED)
    parts: dict[bool, tuple[list[np.ndarray], list[int]]] = {False: ([], []), True: ([], [])}
    for label, (_, files) in enumerate(tree):
        n = len(files)
        n_test = max(1, round(n * TEST_FRACTION)) if n >= 2 else 0
        test = set(torch.randperm(n, generator=g)[:n_test].tolist())
        for i, f in enumerate(files):
            xs, ys = parts[i in test]
            xs.append(_pixels(f, gray))
            ys.append(label)
    if not parts[True][1]:
        raise DataError(f"image folder {path} is too small for a test set: give some class two or more images")
    (train_x, train_y), (test_x, test_y) = parts[False], parts[True]  # each class has a training image
    return info, (
        torch.from_numpy(np.stack(train_x)),
        torch.tensor(train_y, dtype=torch.int64),
        torch.from_numpy(np.stack(test_x)),
        torch.tensor(test_y, dtype=torch.int64),
    )
