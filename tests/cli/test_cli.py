from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from archsearch.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_models_json_has_17_rows_with_exact_counts(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "models", "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 17
    for row in rows:
        assert {"index", "label", "spec", "params", "reported_params"} <= set(row)
        assert row["params"] == row["reported_params"]


def test_models_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "models")
    assert code == 0 and "569,016" in out and "cnn:6c5-p2-16c5-p2-fc128,64-relu" in out


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train", "mlp:0"], "width"),
        (["train", "mlp:12-swish"], "unknown activation"),
        (["train", "cnn:6c5-p2-16c13-fc"], "shrinks"),
        (["train", "mlp:12", "--epochs", "0"], "--epochs"),
        (["train", "mlp:12", "--seeds", "a,b"], "seeds"),
        (["train", "mlp:12", "--loss", "mse"], "--loss"),
        (["train", "mlp:12", "--device", "nonsense"], "device"),
        (["frobnicate"], "No such command"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], args: list[str], fragment: str) -> None:
    code, out, err = run_cli(capsys, *args)
    assert code == 2
    assert fragment in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert out == ""


def test_python_dash_m_entry_point() -> None:
    proc = subprocess.run([sys.executable, "-m", "archsearch", "models", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0 and len(json.loads(proc.stdout)) == 17


@pytest.mark.slow
def test_train_report_model_6_one_epoch(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "train", "mlp:128-relu", "--epochs", "1", "--seeds", "42,43", "--json")
    result = json.loads(out)
    assert code == 0 and [r["seed"] for r in result["runs"]] == [42, 43]
    for run in result["runs"]:
        test = run["metrics"]["test"]
        assert 0.80 <= test["accuracy"] <= 0.90  # one epoch of a 128-unit MLP: sensible, not perfect
        assert abs(test["recall"] - test["accuracy"]) < 1e-6
        assert len(test["confusion_matrix"]) == 10


def test_version_and_every_help_shows_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    from archsearch import __version__
    from archsearch.cli import app

    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == f"archsearch {__version__}"
    for command in app.registered_commands:
        name = command.name or command.callback.__name__  # type: ignore[union-attr]
        code, out, _ = run_cli(capsys, name, "--help")
        assert code == 0 and "Example: archsearch" in out, name


def test_doctor_says_what_trains_and_with_what(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "doctor", "--json")
    report = json.loads(out)
    assert code == 0 and report["products"] in ("libxsmm", "torch") and report["first_conv"] in ("native", "torch")
    assert (report["products_why_not"] is None) == (report["products"] == "libxsmm")
    steps = report["steps_on_cpu"]["CNN with BatchNorm"]
    assert set(steps.values()) == {"autograd"}  # no accelerator knows BatchNorm
    assert set(report["extras"]) == {"dashboard", "postgres", "onnx", "digits"}


def test_a_missing_extra_is_named(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "psycopg" else real(name, *a))
    code, _, err = run_cli(capsys, "analyze", "--study", "x", "--storage", "postgresql://u:p@127.0.0.1:1/db")
    assert code == 2 and "pip install 'archsearch[postgres]'" in err and len(err.strip().splitlines()) == 1


def doctor_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    code, out, err = run_cli(capsys, "doctor")
    assert code == 0, err
    return out.splitlines()


def test_doctor_says_where_each_dataset_is_in_plain_words(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from archsearch.data import FILES, fashion_mnist

    debian, data = tmp_path / "debian", tmp_path / "data"
    debian.mkdir()
    for name in FILES:
        (debian / f"{name}.gz").write_bytes(b"")
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", debian)
    monkeypatch.setenv("ARCHSEARCH_DATA", str(data))
    monkeypatch.delenv("ARCHSEARCH_OFFLINE", raising=False)

    # Debian's package, not yet decompressed into the data folder: found, there (it was "missing — taken from ...")
    lines = doctor_lines(capsys)
    assert not any("ARCHSEARCH_" in line for line in lines), lines  # settings' names are for --json and --help
    assert lines[1].startswith("fast CPU kernels: ") and lines[2].startswith("a CNN's first layer: ")
    assert f"data folder: {data}" in lines
    assert f"  fashion-mnist: found ({debian}, Debian's dataset-fashion-mnist)" in lines
    optional = ["mnist", "kmnist", "emnist-balanced", "cifar10", "cifar100", "svhn"]
    missing = [line for line in lines if "cifar10" in line or "svhn" in line]
    assert len(missing) == 1 and missing[0].startswith("  not here (downloaded on first use")
    assert missing[0].endswith(": " + ", ".join(optional))
    assert not any("missing" in line for line in lines)

    # decompressed into the data folder: loaded from there
    raw = data / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FILES:
        (raw / name).write_bytes(b"")
    assert f"  fashion-mnist: found ({raw})" in doctor_lines(capsys)

    # the JSON keeps the details and the settings' names
    code, out, _ = run_cli(capsys, "doctor", "--json")
    rows = {d["name"]: d for d in json.loads(out)["datasets"]}
    assert code == 0 and rows["fashion-mnist"]["present"] and rows["fashion-mnist"]["path"] == str(raw)
    assert not rows["mnist"]["present"] and "ARCHSEARCH_DATA" in rows["mnist"]["how"]


def test_doctor_says_why_torch_computes_without_settings_names(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import archsearch.engine
    from archsearch.engine.steps.select import CONV_NO_AVX512

    real = archsearch.engine.describe_runtime()
    fake = {
        **real,
        "products": "torch",
        "products_why_not": "its cache /ro/archsearch is not writable (Permission denied; set ARCHSEARCH_CACHE)",
        "first_conv": "torch",
        "first_conv_why_not": CONV_NO_AVX512,
    }
    monkeypatch.setattr(archsearch.engine, "describe_runtime", lambda: fake)
    lines = doctor_lines(capsys)
    assert lines[1] == (
        "fast CPU kernels: not available: the C kernels' cache /ro/archsearch is not writable (Permission denied); "
        "torch computes everything (slower)"
    )
    assert lines[2].startswith("a CNN's first layer: torch (") and "AVX-512" in lines[2]
    assert not any("ARCHSEARCH_" in line for line in lines), lines
    fake["products_why_not"] = "ARCHSEARCH_GEMM=torch"
    assert "switched off by an environment setting" in doctor_lines(capsys)[1]
    code, out, _ = run_cli(capsys, "doctor", "--json")
    assert code == 0 and json.loads(out)["products_why_not"] == "ARCHSEARCH_GEMM=torch"
