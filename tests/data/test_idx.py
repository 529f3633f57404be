from __future__ import annotations

from pathlib import Path

import pytest
import torch

from archsearch.data import FILES, DataError, Dataset, as_float, ensure_raw_files, load_dataset, verify_raw_files
from tests.conftest import write_idx


def test_decompresses_from_debian_dir_once(tmp_path: Path) -> None:
    debian = tmp_path / "debian"
    write_idx(debian, gz=True)
    root = tmp_path / "cache"
    raw = ensure_raw_files(root, debian_dir=debian, download=False, checksums=None)
    assert raw == root / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(FILES)  # no temp files left behind
    data = load_dataset(root, debian_dir=tmp_path / "nowhere", download=False, checksums=None)
    assert data.train_x.shape == (64, 1, 28, 28) and data.evals["test"][0].shape == (32, 1, 28, 28)
    assert data.train_x.dtype == torch.uint8  # kept as stored; batches are converted by as_float
    pixels = as_float(data.train_x)
    assert pixels.dtype == torch.float32 and pixels.min() >= 0.0 and pixels.max() <= 1.0
    assert torch.equal(as_float(data.train_x[5:9]), pixels[5:9])  # per batch == whole set, exactly
    assert as_float(pixels) is pixels


def test_explicit_directory_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_idx(tmp_path / "mine" / "FashionMNIST" / "raw", n_train=40)
    monkeypatch.setenv("ARCHSEARCH_DATA", str(tmp_path / "mine"))
    data = load_dataset(None, debian_dir=tmp_path / "nowhere", download=False, checksums=None)
    assert len(data.train_y) == 40


def test_missing_data_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset(tmp_path, debian_dir=tmp_path / "nowhere", download=False)


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-10]), "size does not match"),
        (lambda p: p.write_bytes(b"\x00\x00\x08\x01" + p.read_bytes()[4:]), "bad IDX magic"),
        (lambda p: p.write_bytes(b"\x00\x00"), "truncated header"),
        (lambda p: p.unlink(), "is missing"),
    ],
)
def test_corrupt_files_are_refused(tmp_path: Path, damage: object, fragment: str) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    write_idx(raw)
    damage(raw / "train-images-idx3-ubyte")  # type: ignore[operator]
    with pytest.raises(DataError, match=fragment):
        verify_raw_files(raw, checksums=None)


def test_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_idx(raw)
    with pytest.raises(DataError, match="checksum mismatch"):
        verify_raw_files(raw)  # well-formed, but not the genuine files


def test_validation_split_is_seeded_and_disjoint(tmp_path: Path) -> None:
    write_idx(tmp_path / "FashionMNIST" / "raw", n_train=100)
    kw = {"debian_dir": tmp_path / "nowhere", "download": False, "checksums": None}
    a = load_dataset(tmp_path, val_size=30, split_seed=1, **kw)  # type: ignore[arg-type]
    b = load_dataset(tmp_path, val_size=30, split_seed=1, **kw)  # type: ignore[arg-type]
    c = load_dataset(tmp_path, val_size=30, split_seed=2, **kw)  # type: ignore[arg-type]
    full = load_dataset(tmp_path, **kw)  # type: ignore[arg-type]
    assert len(a.train_y) == 70 and len(a.evals["val"][1]) == 30
    assert torch.equal(a.evals["val"][0], b.evals["val"][0])
    assert not torch.equal(a.evals["val"][0], c.evals["val"][0])
    # every training image lands in exactly one of the two parts
    rows = {tuple(r.tolist()) for r in full.train_x.reshape(100, -1)}
    parts = [tuple(r.tolist()) for r in torch.cat([a.train_x, a.evals["val"][0]]).reshape(100, -1)]
    assert len(parts) == 100 and set(parts) == rows
    with pytest.raises(DataError, match="validation size"):
        load_dataset(tmp_path, val_size=100, **kw)  # type: ignore[arg-type]


def test_real_dataset_is_genuine(fmnist: Dataset) -> None:
    assert fmnist.train_x.shape == (60000, 1, 28, 28)
    assert fmnist.evals["test"][0].shape == (10000, 1, 28, 28)
    assert torch.bincount(fmnist.evals["test"][1]).tolist() == [1000] * 10  # balanced: macro recall == accuracy
