"""Datasets beyond Fashion-MNIST behind the same commands: a search on scikit-learn's real 8x8 digits and one on a
generated image folder, each exported and rescored exactly by `evaluate`; specs and studies that do not fit refused in
one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from archsearch.cli import main

pytest.importorskip("sklearn")


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def image_tree(root: Path, classes: int = 3, per_class: int = 24) -> Path:
    """PNG images of 20x20 pixels, one folder per class: each class a bright square in its own corner, plus noise."""
    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = torch.randint(0, 60, (20, 20), generator=g, dtype=torch.uint8)
            r, col = divmod(c, 2)
            pixels[r * 10 : r * 10 + 10, col * 10 : col * 10 + 10] += 150
            Image.fromarray(pixels.numpy(), mode="L").save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["digits", "folder"])
def test_search_export_evaluate_on_another_dataset(
    kind: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    dataset = "digits" if kind == "digits" else f"folder:{image_tree(tmp_path / 'images')}"
    url = f"sqlite:///{tmp_path}/s.db"
    args = ["search", "--dataset", dataset, "--space", "cnn", "--n-trials", "3", "--epochs", "2"]
    code, out, err = cli(capsys, *args, "--storage", url, "--threads", "1", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["counts"].get("complete", 0) >= 1 and summary["meta"]["dataset"] == dataset
    code, out, err = cli(capsys, "export", "--study", summary["study"], "--storage", url, "--out", str(tmp_path / "m"),
                         "--json")  # fmt: skip
    assert code == 0, err
    config = json.loads(out)["config"]
    expected_shape = [1, 8, 8] if kind == "digits" else [1, 32, 32]
    assert config["dataset"]["name"] == dataset and config["input"]["shape"] == expected_shape
    assert len(config["classes"]) == (10 if kind == "digits" else 3)
    code, out, err = cli(capsys, "evaluate", str(tmp_path / "m"), "--json")
    assert code == 0, err
    evaluated = json.loads(out)
    assert evaluated["matches_recorded"], evaluated["differences"]
    assert evaluated["images"] == (300 if kind == "digits" else 15)
    # the same study cannot take another dataset
    code, _, err = cli(
        capsys, *args[:2], "fashion-mnist", *args[3:], "--storage", url, "--study-name", summary["study"]
    )
    assert code == 2 and "cannot mix datasets" in err and len(err.strip().splitlines()) == 1


def test_a_spec_that_does_not_fit_the_dataset_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "train", "cnn:6c5-p2-16c5-p2-fc128,64", "--dataset", "digits")
    assert code == 2 and out == "" and "shrinks the 8x8 image below 1x1" in err and len(err.strip().splitlines()) == 1


def test_missing_data_says_how_to_get_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = cli(capsys, "train", "mlp:16", "--dataset", "cifar10", "--data-dir", str(tmp_path / "none"))
    assert code == 2 and "cifar-10-batches-py" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "none").exists()  # nothing written
    code, _, err = cli(capsys, "train", "mlp:16", "--dataset", "imagenet")
    assert code == 2 and "unknown dataset 'imagenet'" in err


def test_train_on_digits_records_the_dataset(capsys: pytest.CaptureFixture[str]) -> None:
    spec = "cnn:8c3p1-bn-p2-16c3p1-bn-gap-fc"
    code, out, err = cli(capsys, "train", spec, "--dataset", "digits", "--epochs", "5", "--lr", "3e-3",
                         "--threads", "1", "--json")  # fmt: skip
    assert code == 0, err
    run = json.loads(out)["runs"][0]
    assert run["metrics"]["test"]["accuracy"] > 0.8  # 8x8 digits: a tiny CNN learns them in 5 epochs
    assert len(run["metrics"]["test"]["confusion_matrix"]) == 10
