"""The datasets archsearch trains on, by name: what each is without loading it, where its files are, how to get them.

One name picks a dataset everywhere (``--dataset``): ``fashion-mnist`` (the default: the report's dataset, found and
checked exactly as before, Debian's package included), ``mnist``, ``kmnist``, ``emnist-balanced``, ``cifar10``,
``cifar100``, ``svhn`` (torchvision's layouts under the data root), ``digits`` (scikit-learn's bundled 8x8 digits:
real data with no download) and ``folder:PATH`` (an ImageFolder tree). Every dataset comes back the same way, uint8
images (N, C, H, W), int64 labels 0..classes-1 and a ``DatasetInfo``, so models and training need not know which.

Files are looked for under one root: ``data_dir`` (``--data-dir``), else ``ARCHSEARCH_DATA``, else the user cache. A
download starts only when the caller allows it and ``ARCHSEARCH_OFFLINE`` is not "1"; otherwise a missing dataset is
one line that says which files to put where. ``ensure_dataset`` does that part alone, so a command fails before it
touches a study.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from archsearch.data import fashion_mnist
from archsearch.data.dataset import FASHION_MNIST, DataError, Dataset, DatasetInfo, split_dataset
from archsearch.data.digits import DIGITS, digits_available, digits_location, ensure_digits, load_digits_split
from archsearch.data.digits import HOW_TO_GET as DIGITS_HOW
from archsearch.data.fashion_mnist import DEBIAN_DIR, FILES, default_data_dir
from archsearch.data.folder import FOLDER_PREFIX, folder_info, load_folder, scan_folder
from archsearch.data.torchvision_sets import SOURCES, downloads_allowed

__all__ = ["DATASETS", "DEFAULT_DATASET", "dataset_info", "describe_datasets", "ensure_dataset", "load_dataset"]

DEFAULT_DATASET = FASHION_MNIST.name
DATASETS: tuple[str, ...] = (DEFAULT_DATASET, *SOURCES, DIGITS.name, f"{FOLDER_PREFIX}PATH")
"""Every name ``dataset_info``/``load_dataset`` take; the last is a pattern: ``folder:`` and a directory."""


def _parse(name: str) -> tuple[str, Path | None]:
    """(the registry key, or "folder" with its path) for a dataset name; ``DataError`` for an unknown one."""
    text = name.strip()
    if text.startswith(FOLDER_PREFIX):
        if not text[len(FOLDER_PREFIX) :]:
            raise DataError(f"dataset {name!r} names no folder: use folder:PATH, PATH holding one subfolder per class")
        return "folder", Path(text[len(FOLDER_PREFIX) :]).expanduser()
    key = text.lower()
    if key in (DEFAULT_DATASET, DIGITS.name) or key in SOURCES:
        return key, None
    raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


def dataset_info(name: str = DEFAULT_DATASET) -> DatasetInfo:
    """A dataset's shape, class names and normalisation, without loading it (``folder:`` reads the listing and the
    images' headers only, for the class names and the channel count)."""
    key, path = _parse(name)
    if path is not None:
        return folder_info(path, name.strip())
    if key == DEFAULT_DATASET:
        return FASHION_MNIST
    return DIGITS if key == DIGITS.name else SOURCES[key].info


def ensure_dataset(
    name: str = DEFAULT_DATASET,
    root: Path | None = None,
    download: bool = True,
    *,
    checksums: Mapping[str, str] | None = FILES,
    debian_dir: Path = DEBIAN_DIR,
) -> Path:
    """Find and check a dataset's files (downloading them where allowed); returns the folder that holds them.

    ``root``: the data root, else ``ARCHSEARCH_DATA``, else the user cache. ``checksums``: Fashion-MNIST's SHA-256s
    (as ``fashion_mnist.ensure_raw_files``); for the other datasets it is a switch: None turns off the checks against
    published digests and counts (for generated files), anything else keeps them (torchvision's MD5s).
    """
    key, path = _parse(name)
    if path is not None:
        scan_folder(path)
        return path
    if key == DIGITS.name:
        return ensure_digits()
    root = root if root is not None else default_data_dir()
    if key == DEFAULT_DATASET:
        return fashion_mnist.ensure_raw_files(
            root, debian_dir=debian_dir, download=downloads_allowed(download), checksums=checksums
        )
    return SOURCES[key].ensure(root, download=download, verify=checksums is not None)


def load_dataset(
    data_dir: Path | None = None,
    *,
    dataset: str = DEFAULT_DATASET,
    val_size: int = 0,
    split_seed: int = 0,
    train_size: int | None = None,
    device: torch.device | str = "cpu",
    checksums: Mapping[str, str] | None = FILES,
    debian_dir: Path = DEBIAN_DIR,
    download: bool = True,
) -> Dataset:
    """Load a dataset by name (Fashion-MNIST by default). With ``val_size`` > 0 a seeded random split of the training
    set is held out as ``val`` (see ``split_training``); the test set is always ``evals['test']`` (``digits`` and
    ``folder:`` have none of their own: a fixed seeded part is held out). ``checksums`` as in ``ensure_dataset``."""
    key, path = _parse(dataset)
    if key == DEFAULT_DATASET:  # exactly the Fashion-MNIST loader, its checks and its Debian package
        return fashion_mnist.load_dataset(
            data_dir,
            val_size=val_size,
            split_seed=split_seed,
            train_size=train_size,
            device=device,
            checksums=checksums,
            debian_dir=debian_dir,
            download=downloads_allowed(download),
        )
    if path is not None:
        info, (train_x, train_y, test_x, test_y) = load_folder(path, dataset.strip())
    elif key == DIGITS.name:
        info, (train_x, train_y, test_x, test_y) = DIGITS, load_digits_split()
    else:
        root = data_dir if data_dir is not None else default_data_dir()
        source = SOURCES[key]
        folder = source.ensure(root, download=download, verify=checksums is not None)
        info, (train_x, train_y, test_x, test_y) = replace(source.info, source=str(folder)), source.load(root)
    split = split_dataset(
        (train_x, train_y), (test_x, test_y), info, val_size=val_size, split_seed=split_seed, train_size=train_size
    )
    return split.to(device)


def describe_datasets(root: Path | None = None, *, debian_dir: Path | None = None) -> list[dict[str, Any]]:
    """One row per named dataset (``folder:PATH`` aside): its shape, class count and normalisation, whether it is
    present here (``root``, default as ``load_dataset`` finds it; for Fashion-MNIST also Debian's package in
    ``debian_dir``, default ``DEBIAN_DIR``), the path it would be loaded from (``path``) and what that copy is
    (``source``, or None), whether a missing one would be downloaded on first use (``downloads``), and how to get it.
    """
    root = root if root is not None else default_data_dir()
    debian_dir = debian_dir if debian_dir is not None else fashion_mnist.DEBIAN_DIR
    rows = []
    for name in DATASETS:
        if name.startswith(FOLDER_PREFIX):
            continue
        info = dataset_info(name)
        source: str | None = None
        downloads = downloads_allowed(True)
        if name == DEFAULT_DATASET:
            # as fashion_mnist.ensure_raw_files: the cache's copy, else Debian's package (decompressed into the cache
            # on first use), else a download
            raw = root / "FashionMNIST" / "raw"
            cached = all((raw / f).is_file() for f in FILES)
            debian = all((debian_dir / f"{f}.gz").is_file() for f in FILES)
            present, where = cached or debian, raw if cached or not debian else debian_dir
            if debian and not cached:
                source = "Debian's dataset-fashion-mnist"
                how = f"decompressed from Debian's package in {debian_dir} into {raw} on first use"
            elif cached:
                how = f"the four IDX files in {raw} (checked against their SHA-256 when loaded)"
            else:
                how = f"{fashion_mnist.HOW_TO_GET}, or run the command on a machine with network access to download it"
        elif name == DIGITS.name:
            present, where, how, downloads = digits_available(), digits_location(), DIGITS_HOW, False
            source = "scikit-learn's bundled copy" if present else None
        else:
            src = SOURCES[name]
            present, where, how = src.present(root), src.directory(root), src.how()
        rows.append({
            "name": name,
            "shape": str(info.shape),
            "classes": info.num_classes,
            "mean": list(info.mean) if info.mean is not None else None,
            "std": list(info.std) if info.std is not None else None,
            "present": present,
            "path": str(where),
            "source": source,
            "downloads": downloads,
            "how": how,
        })  # fmt: skip
    return rows
