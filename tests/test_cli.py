from __future__ import annotations

import json
import subprocess
import sys

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
