"""Fashion-MNIST: find, verify and load it as whole-dataset tensors.

Discovery order: an explicit directory (``--data-dir`` or ``ARCHSEARCH_DATA``), else the user cache directory. If the
IDX files are not there yet they are taken from Debian's ``dataset-fashion-mnist`` package (decompressed once), else
downloaded by torchvision. The files are read by ``torchvision.datasets.FashionMNIST`` and checked on the decompressed
IDX bytes: Debian recompressed the .gz files, so torchvision's MD5s of the archives would not match.

Training never touches PIL: the loader returns float tensors scaled to [0, 1], meant to live on the training device.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch

from archsearch.core.settings import current
from archsearch.data.dataset import FASHION_MNIST, DataError, Dataset, split_dataset
from archsearch.data.idx import check_idx

__all__ = [
    "CLASSES",
    "DEBIAN_DIR",
    "FILES",
    "DataError",
    "default_data_dir",
    "ensure_raw_files",
    "load_dataset",
    "verify_raw_files",
]

CLASSES = FASHION_MNIST.classes
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
# SHA-256 of the decompressed IDX files: the genuine Zalando release, as Debian and torchvision's mirrors ship it.
FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
HOW_TO_GET = (
    "install Debian's dataset-fashion-mnist package (apt-get install dataset-fashion-mnist), "
    "or put the four IDX files in DIR/FashionMNIST/raw/ and pass --data-dir DIR"
)


def default_data_dir() -> Path:
    """``ARCHSEARCH_DATA`` if set, else the user cache directory (``$XDG_CACHE_HOME/archsearch``)."""
    return current().default_data_dir


def _raw_dir(root: Path) -> Path:
    return root / "FashionMNIST" / "raw"


def verify_raw_files(raw: Path, checksums: Mapping[str, str] | None = FILES) -> None:
    """Raise ``DataError`` unless all four IDX files are present, well-formed and (if given) match their checksums."""
    for name in FILES:
        path = raw / name
        if not path.is_file():
            raise DataError(f"Fashion-MNIST file {path} is missing; {HOW_TO_GET}")
        check_idx(path, what="Fashion-MNIST", how=HOW_TO_GET)
        if checksums is not None:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != checksums[name]:
                raise DataError(f"corrupt Fashion-MNIST file {path}: checksum mismatch; delete it and {HOW_TO_GET}")


def _decompress_from(source: Path, raw: Path) -> None:
    """Decompress ``source/*.gz`` into ``raw`` atomically (a temp file renamed into place), so no half file is left."""
    raw.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        if (raw / name).is_file():
            continue
        fd, tmp = tempfile.mkstemp(dir=raw, prefix=f".{name}.")
        try:
            with gzip.open(source / f"{name}.gz", "rb") as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, raw / name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def ensure_raw_files(
    root: Path, *, debian_dir: Path = DEBIAN_DIR, download: bool = True, checksums: Mapping[str, str] | None = FILES
) -> Path:
    """Make sure ``root/FashionMNIST/raw`` holds verified IDX files; returns that directory."""
    raw = _raw_dir(root)
    if not all((raw / name).is_file() for name in FILES):
        try:
            if all((debian_dir / f"{name}.gz").is_file() for name in FILES):
                _decompress_from(debian_dir, raw)
            elif download:
                from torchvision.datasets import FashionMNIST

                FashionMNIST(str(root), train=True, download=True)
        except OSError as err:  # unwritable directory, network failure, bad archive
            raise DataError(f"cannot prepare Fashion-MNIST in {root}: {err}; {HOW_TO_GET}") from None
    verify_raw_files(raw, checksums)
    return raw


def _read(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import FashionMNIST

    ds = FashionMNIST(str(root), train=train, download=False)
    return ds.data.unsqueeze(1), ds.targets.long()


def load_dataset(
    data_dir: Path | None = None,
    *,
    val_size: int = 0,
    split_seed: int = 0,
    train_size: int | None = None,
    device: torch.device | str = "cpu",
    checksums: Mapping[str, str] | None = FILES,
    debian_dir: Path = DEBIAN_DIR,
    download: bool = True,
) -> Dataset:
    """Load Fashion-MNIST. With ``val_size`` > 0 a seeded random split of the training set is held out as ``val``
    (the rest is trained on, or ``train_size`` images of it: see ``split_training``); the test set is always
    ``evals['test']``."""
    root = data_dir if data_dir is not None else default_data_dir()
    ensure_raw_files(root, debian_dir=debian_dir, download=download, checksums=checksums)
    info = replace(FASHION_MNIST, source=str(_raw_dir(root)))
    split = split_dataset(
        _read(root, train=True), _read(root, train=False), info, val_size=val_size, split_seed=split_seed,
        train_size=train_size,
    )  # fmt: skip
    return split.to(device)
