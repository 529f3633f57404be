"""The datasets torchvision knows, in torchvision's own layouts under the data root (so an existing torchvision cache
is found as is): MNIST, KMNIST, EMNIST (balanced), CIFAR-10, CIFAR-100 and SVHN.

Files are read here, not by torchvision's classes, so that each is checked first and fails with one line that names
it. torchvision is used only to download (its classes, ``download=True``), into a temporary directory under the root
whose files are renamed into place once all are there: an interrupted or failed download leaves nothing half-written.

CIFAR's files are Python pickles, and unpickling can run arbitrary code. So they are checked against torchvision's
published MD5s (read from its class attributes, ``CIFAR10.train_list`` etc.) before being unpickled, unless checks
are turned off (tests do, for generated files); and the unpickler accepts only the few numpy globals an array needs,
so even an unchecked file cannot call anything else. SVHN's ``.mat`` files are checked against ``SVHN.split_list``.
The IDX sets' published MD5s are of the .gz archives, not the files kept, so those get structural checks and, with
checks on, the expected counts.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from archsearch.core.settings import current
from archsearch.core.shapes import Shape
from archsearch.data.dataset import DataError, DatasetInfo
from archsearch.data.idx import check_idx, read_idx

__all__ = ["OFFLINE_ENV", "SOURCES", "Source", "downloads_allowed"]

OFFLINE_ENV = "ARCHSEARCH_OFFLINE"
Arrays = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # train x, train y, test x, test y


def downloads_allowed(download: bool) -> bool:
    """A download may start only when the caller allows it and ``ARCHSEARCH_OFFLINE`` is not "1"."""
    return download and not current().offline


def _tv(name: str) -> Any:
    """A torchvision dataset class, looked up when needed (its MD5 attributes, or to download)."""
    import torchvision.datasets

    return getattr(torchvision.datasets, name)


@dataclass(frozen=True)
class Source:
    """One dataset: what it is (``info``), where its files lie under the root, how to check, read and download it."""

    info: DatasetInfo
    title: str
    folder: str  # relative to the root
    train: tuple[str, ...]
    test: tuple[str, ...]
    extra: tuple[str, ...]  # read alongside (CIFAR's class names)
    size_mb: int  # what a download fetches
    kind: str  # "idx", "cifar" or "svhn"
    torchvision: str  # the class that downloads it
    counts: tuple[int, int] = (0, 0)  # IDX sets: the genuine train/test counts, checked when checks are on
    transposed: bool = False  # EMNIST stores each image transposed
    label_key: str = "labels"  # CIFAR: "labels", or CIFAR-100's "fine_labels"

    @property
    def files(self) -> tuple[str, ...]:
        return self.train + self.test + self.extra

    def directory(self, root: Path) -> Path:
        return root / self.folder

    def present(self, root: Path) -> bool:
        return all((self.directory(root) / f).is_file() for f in self.files)

    def how(self) -> str:
        """How to get the files, in words (the end of a one-line error, a row of ``describe_datasets``)."""
        return (
            f"put {', '.join(self.files)} in DIR/{self.folder}/ and point --data-dir DIR or ARCHSEARCH_DATA at DIR, "
            f"or run the command on a machine with network access, without {OFFLINE_ENV}=1, "
            f"to download it (about {self.size_mb} MB)"
        )

    def ensure(self, root: Path, *, download: bool, verify: bool) -> Path:
        """The checked folder of files under ``root``, downloaded first if missing and allowed."""
        if not self.present(root):
            if not downloads_allowed(download):
                off = f"downloads are off ({OFFLINE_ENV}=1)" if download else "downloads are off"
                raise DataError(f"{self.title} is not in {self.directory(root)} and {off}; {self.how()}")
            self._download(root)
        self.verify(root, verify=verify)
        return self.directory(root)

    def verify(self, root: Path, *, verify: bool) -> None:
        """Structural checks always (IDX), MD5s or counts when ``verify``: before anything is unpickled."""
        folder = self.directory(root)
        if self.kind == "idx":
            for name in self.files:
                count = (self.counts[0] if name in self.train else self.counts[1]) if verify else None
                check_idx(folder / name, what=self.title, how=self.how(), size=(28, 28), count=count)
        elif verify:
            for name, md5 in self._md5s().items():
                with (folder / name).open("rb") as f:
                    digest = hashlib.file_digest(f, "md5").hexdigest()
                if digest != md5:
                    raise DataError(
                        f"corrupt {self.title} file {folder / name}: checksum mismatch; delete it and {self.how()}"
                    )

    def _md5s(self) -> dict[str, str]:
        cls = _tv(self.torchvision)
        if self.kind == "svhn":
            return {fname: md5 for _, fname, md5 in (cls.split_list["train"], cls.split_list["test"])}
        return {**dict(cls.train_list), **dict(cls.test_list), cls.meta["filename"]: cls.meta["md5"]}

    def load(self, root: Path) -> Arrays:
        """Images uint8 (N, C, H, W) and labels int64 of both splits; call ``ensure`` first."""
        folder = self.directory(root)
        read: Callable[[Path, tuple[str, ...]], tuple[np.ndarray, np.ndarray]] = {
            "idx": self._read_idx,
            "cifar": self._read_cifar,
            "svhn": self._read_svhn,
        }[self.kind]
        if self.kind == "cifar":
            self._check_class_names(folder)
        out: list[torch.Tensor] = []
        for names in (self.train, self.test):
            x, y = read(folder, names)
            if len(x) != len(y) or (len(y) and not 0 <= y.min() <= y.max() < self.info.num_classes):
                raise DataError(
                    f"corrupt {self.title} files in {folder}: {len(x)} images, {len(y)} labels, labels must lie in "
                    f"0..{self.info.num_classes - 1}; delete them and {self.how()}"
                )
            out += [torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64))]
        return out[0], out[1], out[2], out[3]

    def _read_idx(self, folder: Path, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        images = read_idx(folder / next(n for n in names if "images" in n))
        labels = read_idx(folder / next(n for n in names if "labels" in n))
        if self.transposed:
            images = images.transpose(0, 2, 1)
        return images[:, None], labels

    def _read_cifar(self, folder: Path, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for name in names:
            batch = self._unpickle(folder / name)
            try:
                xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(batch[self.label_key], dtype=np.int64))
            except (KeyError, TypeError, ValueError) as err:
                raise DataError(
                    f"corrupt {self.title} file {folder / name}: {err!r}; delete it and {self.how()}"
                ) from None
        return np.concatenate(xs), np.concatenate(ys)

    def _check_class_names(self, folder: Path) -> None:
        meta_name = self.extra[0]
        key = "label_names" if self.label_key == "labels" else "fine_label_names"
        names = self._unpickle(folder / meta_name).get(key)
        if not isinstance(names, list) or tuple(names) != self.info.classes:
            raise DataError(
                f"corrupt {self.title} file {folder / meta_name}: not its class names; delete it and {self.how()}"
            )

    def _unpickle(self, path: Path) -> dict[str, Any]:
        try:
            with path.open("rb") as f:
                data = _ArrayUnpickler(f, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as err:
            raise DataError(f"corrupt {self.title} file {path}: {err}; delete it and {self.how()}") from None
        if not isinstance(data, dict):
            raise DataError(f"corrupt {self.title} file {path}: not a CIFAR batch; delete it and {self.how()}")
        return data

    def _read_svhn(self, folder: Path, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        from scipy.io import loadmat

        path = folder / names[0]
        try:
            mat = loadmat(str(path))
            x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1).astype(np.int64)
        except (KeyError, ValueError, OSError, TypeError) as err:
            raise DataError(f"corrupt {self.title} file {path}: {err!r}; delete it and {self.how()}") from None
        if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
            raise DataError(
                f"corrupt {self.title} file {path}: images are not 32x32x3 uint8; delete it and {self.how()}"
            )
        y[y == 10] = 0  # SVHN labels the digit 0 as 10
        return x.transpose(3, 2, 0, 1), y

    def _download(self, root: Path) -> None:
        """torchvision's download into a temporary folder under ``root``; only whole files are renamed into place."""
        try:
            root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".download-{self.info.name}-"))
        except OSError as err:
            raise DataError(f"cannot download {self.title} into {root}: {err}; {self.how()}") from None
        try:
            cls = _tv(self.torchvision)
            if self.kind == "svhn":
                for split in ("train", "test"):
                    cls(str(tmp / self.folder), split=split, download=True)
            elif self.torchvision == "EMNIST":
                cls(str(tmp), split="balanced", train=True, download=True)
            else:
                cls(str(tmp), train=True, download=True)
            for name in self.files:
                if not (tmp / self.folder / name).is_file():
                    raise OSError(f"the download did not produce {self.folder}/{name}")
            self.directory(root).mkdir(parents=True, exist_ok=True)
            for name in self.files:
                os.replace(tmp / self.folder / name, self.directory(root) / name)
        except (OSError, RuntimeError, ValueError) as err:  # network, disk, a bad archive
            raise DataError(f"cannot download {self.title} into {root}: {err}; {self.how()}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays, and refuses every other global."""

    _ALLOWED = frozenset({"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"})

    def find_class(self, module: str, name: str) -> Any:
        if (module.split(".")[0] == "numpy" and name in self._ALLOWED) or (module, name) == ("_codecs", "encode"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _idx_files(prefix: str, test: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The (train, test) IDX file names: ``train-images-idx3-ubyte`` etc., EMNIST's with a prefix and "test"."""
    return tuple(f"{prefix}train-{kind}-ubyte" for kind in ("images-idx3", "labels-idx1")), tuple(
        f"{prefix}{test}-{kind}-ubyte" for kind in ("images-idx3", "labels-idx1")
    )


_MNIST_SHAPE, _CIFAR_SHAPE = Shape(1, 28, 28), Shape(3, 32, 32)
_DIGITS = tuple("0123456789")
_LETTERS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ") + tuple("abdefghnqrt")
_CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_CIFAR100_NAMES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can castle "
    "caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant "
    "flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man "
    "maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree "
    "plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper "
    "snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train "
    "trout tulip turtle wardrobe whale willow_tree wolf woman worm"
)
_CIFAR100 = tuple(_CIFAR100_NAMES.split())  # CIFAR-100's fine labels, alphabetical as in its meta file
_KMNIST = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")


def _sources() -> dict[str, Source]:
    mnist_train, mnist_test = _idx_files("", "t10k")
    emnist_train, emnist_test = _idx_files("emnist-balanced-", "test")
    cifar10 = tuple(f"data_batch_{i}" for i in range(1, 6))
    # Standard per-channel statistics of the [0, 1] training pixels, as the literature normalises these sets.
    return {
        "mnist": Source(DatasetInfo("mnist", _MNIST_SHAPE, _DIGITS), "MNIST", "MNIST/raw", mnist_train, mnist_test,
                        (), 11, "idx", "MNIST", counts=(60000, 10000)),
        "kmnist": Source(DatasetInfo("kmnist", _MNIST_SHAPE, _KMNIST), "KMNIST", "KMNIST/raw", mnist_train,
                         mnist_test, (), 18, "idx", "KMNIST", counts=(60000, 10000)),
        "emnist-balanced": Source(DatasetInfo("emnist-balanced", _MNIST_SHAPE, _DIGITS + _LETTERS), "EMNIST (balanced)",
                                  "EMNIST/raw", emnist_train, emnist_test, (), 536, "idx", "EMNIST",
                                  counts=(112800, 18800), transposed=True),
        "cifar10": Source(DatasetInfo("cifar10", _CIFAR_SHAPE, _CIFAR10, (0.4914, 0.4822, 0.4465),
                                      (0.2470, 0.2435, 0.2616)), "CIFAR-10", "cifar-10-batches-py", cifar10,
                          ("test_batch",), ("batches.meta",), 163, "cifar", "CIFAR10"),
        "cifar100": Source(DatasetInfo("cifar100", _CIFAR_SHAPE, _CIFAR100, (0.5071, 0.4865, 0.4409),
                                       (0.2673, 0.2564, 0.2762)), "CIFAR-100", "cifar-100-python", ("train",),
                           ("test",), ("meta",), 161, "cifar", "CIFAR100", label_key="fine_labels"),
        "svhn": Source(DatasetInfo("svhn", _CIFAR_SHAPE, _DIGITS, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
                       "SVHN", "svhn", ("train_32x32.mat",), ("test_32x32.mat",), (), 246, "svhn", "SVHN"),
    }  # fmt: skip


SOURCES: dict[str, Source] = _sources()
