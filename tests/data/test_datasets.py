"""The dataset registry: every named dataset is found in its real format (small generated files) under a root and
loaded with the right shapes, labels and orientation; missing or corrupt files are refused in one line; nothing is
downloaded (the network is off in every test, and ARCHSEARCH_OFFLINE=1 unless a test fakes torchvision's download)."""

from __future__ import annotations

import hashlib
import pickle
import socket
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision.datasets
from PIL import Image
from scipy.io import savemat

from archsearch.data import (
    DATASETS,
    FASHION_MNIST,
    DataError,
    dataset_info,
    describe_datasets,
    ensure_dataset,
    load_dataset,
)
from archsearch.data.torchvision_sets import SOURCES

IDX_SETS, PICKLE_SETS = ("mnist", "kmnist", "emnist-balanced"), ("cifar10", "cifar100")
N_TRAIN, N_TEST = 20, 8


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("no network in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("ARCHSEARCH_OFFLINE", "1")


def _images(n: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, *shape), dtype=np.uint8)


def write_set(root: Path, name: str) -> dict[str, np.ndarray]:
    """Write ``name``'s files in their real format under ``root``; returns the natural-orientation test images."""
    src, folder = SOURCES[name], SOURCES[name].directory(root)
    folder.mkdir(parents=True, exist_ok=True)
    k = src.info.num_classes
    out: dict[str, np.ndarray] = {}
    for split, n, files in (("train", N_TRAIN, src.train), ("test", N_TEST, src.test)):
        labels = np.arange(n) % k
        if src.kind == "idx":
            x = _images(n, (28, 28))
            stored = x.transpose(0, 2, 1) if src.transposed else x  # EMNIST stores images transposed
            (folder / files[0]).write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + stored.tobytes())
            (folder / files[1]).write_bytes(struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes())
        elif src.kind == "cifar":
            x = _images(n, (3, 32, 32))
            per = np.array_split(np.arange(n), len(files))
            for fname, idx in zip(files, per, strict=True):
                batch = {"data": x[idx].reshape(len(idx), -1), src.label_key: labels[idx].tolist()}
                (folder / fname).write_bytes(pickle.dumps(batch))
        else:
            x = _images(n, (3, 32, 32))
            y = np.where(labels == 0, 10, labels).reshape(-1, 1)  # SVHN writes digit 0 as 10
            savemat(str(folder / files[0]), {"X": x.transpose(2, 3, 1, 0), "y": y})
        out[split] = x
    if src.kind == "cifar":
        key = "label_names" if src.label_key == "labels" else "fine_label_names"
        (folder / src.extra[0]).write_bytes(pickle.dumps({key: list(src.info.classes)}))
    return out


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.mark.parametrize("name", [*IDX_SETS, *PICKLE_SETS, "svhn"])
def test_each_format_is_found_and_loaded(tmp_path: Path, name: str) -> None:
    written = write_set(tmp_path, name)
    data = load_dataset(tmp_path, dataset=name, checksums=None, val_size=5)
    info = dataset_info(name)
    c, h, w = info.shape.channels, info.shape.height, info.shape.width
    assert data.train_x.shape == (N_TRAIN - 5, c, h, w) and data.evals["val"][0].shape == (5, c, h, w)
    test_x, test_y = data.evals["test"]
    assert test_x.dtype == torch.uint8 and test_y.dtype == torch.int64
    x = written["test"][:, None] if c == 1 else written["test"]
    assert torch.equal(test_x, torch.from_numpy(x))  # orientation: EMNIST transposed back, SVHN's (H, W, C, N)
    assert test_y.tolist() == [i % info.num_classes for i in range(N_TEST)]  # SVHN's 10 is digit 0
    assert data.info.classes == info.classes and data.info.source == str(SOURCES[name].directory(tmp_path))
    assert ensure_dataset(name, tmp_path, download=False, checksums=None) == SOURCES[name].directory(tmp_path)


def test_dataset_info_needs_no_files() -> None:
    assert dataset_info() is FASHION_MNIST and dataset_info("fashion-mnist") is FASHION_MNIST
    shapes = {n: str(dataset_info(n).shape) for n in DATASETS if not n.startswith("folder:")}
    assert shapes == {"fashion-mnist": "1x28x28", "mnist": "1x28x28", "kmnist": "1x28x28",
                      "emnist-balanced": "1x28x28", "cifar10": "3x32x32", "cifar100": "3x32x32",
                      "svhn": "3x32x32", "digits": "1x8x8"}  # fmt: skip
    emnist = dataset_info("emnist-balanced").classes
    assert len(emnist) == 47 and emnist[:11] == (*"0123456789", "A") and emnist[36:] == tuple("abdefghnqrt")
    assert dataset_info("cifar100").num_classes == 100 and len(set(dataset_info("cifar100").classes)) == 100
    assert dataset_info("cifar10").mean is not None and dataset_info("mnist").mean is None
    with pytest.raises(DataError, match="choose one of: fashion-mnist, mnist"):
        dataset_info("imagenet")


@pytest.mark.parametrize("name", [*IDX_SETS, *PICKLE_SETS, "svhn"])
@pytest.mark.parametrize("download", [True, False])
def test_missing_files_say_how_and_write_nothing(tmp_path: Path, name: str, download: bool) -> None:
    root = tmp_path / "root"
    folder = SOURCES[name].folder
    with pytest.raises(DataError, match=f"in DIR/{folder}/ and point --data-dir DIR or ARCHSEARCH_DATA") as err:
        load_dataset(root, dataset=name, download=download)
    assert "\n" not in str(err.value) and SOURCES[name].files[0] in str(err.value)
    assert ("ARCHSEARCH_OFFLINE=1)" in str(err.value)) == download
    assert not root.exists()


def test_corrupt_idx_files_are_refused(tmp_path: Path) -> None:
    write_set(tmp_path, "mnist")
    with pytest.raises(DataError, match="20 items, expected 60000"):  # checks on: the genuine counts
        load_dataset(tmp_path, dataset="mnist")
    images = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(b"\x00\x00\x08\x01" + images.read_bytes()[4:])
    with pytest.raises(DataError, match="bad IDX magic number"):
        load_dataset(tmp_path, dataset="mnist", checksums=None)
    images.write_bytes(struct.pack(">IIII", 2051, 2, 32, 32) + bytes(2 * 32 * 32))
    with pytest.raises(DataError, match="images are 32x32, expected 28x28"):
        load_dataset(tmp_path, dataset="mnist", checksums=None)


class _Marker:
    """A pickle that would create a file if it were ever unpickled by a plain unpickler."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def test_pickles_are_checked_before_unpickling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_set(tmp_path, "cifar10")
    with pytest.raises(DataError, match="data_batch_1: checksum mismatch"):  # torchvision's MD5s: not genuine
        load_dataset(tmp_path, dataset="cifar10")
    folder = tmp_path / "cifar-10-batches-py"
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[f, md5[f]] for f, _ in cls.train_list])  # the MD5s are read from here
    monkeypatch.setattr(cls, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5["batches.meta"]})
    assert load_dataset(tmp_path, dataset="cifar10").train_x.shape == (N_TRAIN, 3, 32, 32)
    marker = tmp_path / "ran"
    (folder / "data_batch_2").write_bytes(pickle.dumps({"data": _Marker(marker), "labels": []}))
    with pytest.raises(DataError, match="data_batch_2: checksum mismatch"):
        load_dataset(tmp_path, dataset="cifar10")
    with pytest.raises(DataError, match=r"refusing to unpickle .*open"):  # checks off: still no code runs
        load_dataset(tmp_path, dataset="cifar10", checksums=None)
    assert not marker.exists()
    write_set(tmp_path, "svhn")
    with pytest.raises(DataError, match=r"train_32x32.mat: checksum mismatch"):
        load_dataset(tmp_path, dataset="svhn")


def test_downloads_only_where_allowed_and_never_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    class FakeMNIST:  # torchvision's layout: ROOT/MNIST/raw/...
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append(root)
            write_set(Path(root), "mnist")
            if fail:
                raise OSError("connection reset")

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeMNIST)
    fail, root = False, tmp_path / "root"
    with pytest.raises(DataError, match="ARCHSEARCH_OFFLINE=1"):
        load_dataset(root, dataset="mnist")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset(root, debian_dir=tmp_path / "nowhere")
    assert calls == [] and not root.exists()
    monkeypatch.delenv("ARCHSEARCH_OFFLINE")
    fail = True
    with pytest.raises(DataError, match=r"cannot download MNIST .*connection reset"):
        load_dataset(root, dataset="mnist", checksums=None)
    assert len(calls) == 1 and files_under(root) == [] and list(root.iterdir()) == []
    fail = False
    data = load_dataset(root, dataset="mnist", checksums=None)
    assert data.train_x.shape == (N_TRAIN, 1, 28, 28) and [p.name for p in root.iterdir()] == ["MNIST"]
    assert sorted(p.name for p in files_under(root)) == sorted(SOURCES["mnist"].files)


def test_digits_are_real_and_split(tmp_path: Path) -> None:
    data = load_dataset(tmp_path / "unused", dataset="digits", val_size=197)
    assert len(data.train_y) == 1300 and len(data.evals["val"][1]) == 197 and len(data.evals["test"][1]) == 300
    assert data.train_x.shape[1:] == (1, 8, 8) and data.train_x.dtype == torch.uint8
    x = torch.cat([data.train_x, data.evals["val"][0], data.evals["test"][0]])
    assert set(x.unique().tolist()) <= {round(v * 255 / 16) for v in range(17)} and x.max() == 255
    assert sorted(data.evals["test"][1].unique().tolist()) == list(range(10))
    again = load_dataset(dataset="digits")
    assert torch.equal(again.evals["test"][0], data.evals["test"][0])  # a fixed split
    assert not (tmp_path / "unused").exists()


def _tree(path: Path, mode: str = "L", size: tuple[int, int] = (28, 28), per_class: int = 5) -> None:
    for c, cls in enumerate(["dog", "cat"]):
        (path / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.new(mode, size, color=(40 * c + i) if mode == "L" else (c, i, 7)).save(path / cls / f"{i}.png")
    (path / "cat" / "notes.txt").write_text("not an image")
    (path / ".hidden").mkdir()


def test_folder_dataset(tmp_path: Path) -> None:
    _tree(tmp_path / "gray")
    name = f"folder:{tmp_path / 'gray'}"
    info = dataset_info(name)
    assert info.classes == ("cat", "dog") and str(info.shape) == "1x32x32"
    data = load_dataset(dataset=name, val_size=2)
    assert len(data.train_y) == 6 and len(data.evals["val"][1]) == 2 and data.evals["test"][1].tolist() == [0, 1]
    assert data.train_x.dtype == torch.uint8 and data.info.name == name
    cat, dog = data.evals["test"][0]  # uniform images: cat's pixels are 40 + i, dog's i (folders sorted: cat first)
    assert (cat == cat[0, 0, 0]).all() and 40 <= cat[0, 0, 0] <= 44 and 0 <= dog.max() <= 4
    _tree(tmp_path / "rgb", mode="RGB", size=(50, 40), per_class=2)
    Image.new("L", (8, 8)).save(tmp_path / "rgb" / "dog" / "gray.png")  # one colour image makes the tree RGB
    data = load_dataset(dataset=f"folder:{tmp_path / 'rgb'}")
    assert data.train_x.shape[1:] == (3, 32, 32) and len(data.evals["test"][1]) == 2
    (tmp_path / "rgb" / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read image file .*broken.png"):
        load_dataset(dataset=f"folder:{tmp_path / 'rgb'}")
    for setup, fragment in [(lambda p: None, "does not exist"), (lambda p: p.mkdir(), "no class subfolders"),
                            (lambda p: (p / "empty").mkdir(parents=True), "has no image files")]:  # fmt: skip
        bad = tmp_path / fragment.replace(" ", "-")
        setup(bad)
        with pytest.raises(DataError, match=fragment):
            ensure_dataset(f"folder:{bad}")


def test_describe_datasets_reports_presence(tmp_path: Path) -> None:
    write_set(tmp_path, "mnist")
    rows = {r["name"]: r for r in describe_datasets(tmp_path, debian_dir=tmp_path / "nowhere")}
    assert list(rows) == [n for n in DATASETS if not n.startswith("folder:")]
    assert rows["mnist"]["present"] and rows["digits"]["present"]
    assert not rows["cifar10"]["present"] and not rows["fashion-mnist"]["present"]
    assert rows["cifar10"]["shape"] == "3x32x32" and rows["cifar100"]["classes"] == 100
    assert rows["cifar10"]["mean"] is not None and rows["mnist"]["std"] is None
    assert "DIR/cifar-10-batches-py/" in rows["cifar10"]["how"] and "apt-get" in rows["fashion-mnist"]["how"]


def test_loading_digits_keeps_every_core() -> None:
    """scikit-learn's import pinned the process to one core where libxsmm's OpenMP was loaded first (torch's threads
    then shared that core); loading digits leaves the affinity as it found it."""
    from tests.conftest import python_in_subprocess

    code = (
        "import os\nfrom archsearch.engine import check_backends\ncheck_backends()\nbefore = os.sched_getaffinity(0)\n"
        "from archsearch.data import load_dataset\nload_dataset(None, dataset='digits')\n"
        "assert os.sched_getaffinity(0) == before, (before, os.sched_getaffinity(0))\nprint(len(before))"
    )
    done = python_in_subprocess(code, {})
    assert done.returncode == 0, done.stderr[-2000:]
