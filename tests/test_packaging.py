"""The wheel carries studies/ (report table, spaces) and the C sources of the native kernels, so a non-editable
install finds them (.ci/wheel goes further: it installs the wheel for a user who is not root and runs the CLI)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    (built,) = out.glob("archsearch-*.whl")
    return built


def test_wheel_contains_the_studies_and_the_c_sources(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    studies = sorted(p.name for p in (ROOT / "studies").glob("*.toml"))
    assert {"report.toml", "mlp.toml", "cnn.toml", "resnet.toml"} <= set(studies)
    for study in studies:  # every space in studies/ (pyproject.toml lists them one by one)
        assert f"archsearch/_studies/{study}" in names
    assert {"archsearch/engine/native/_xsmm.c", "archsearch/engine/native/_conv.c"} <= names
    assert not any(name.startswith("archsearch/_studies/results/") for name in names)  # results are not data


def test_base_install_is_small_and_extras_name_what_they_add() -> None:
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(meta["dependencies"])
    assert "optuna-dashboard" not in base and "psycopg" not in base and "onnx" not in base
    extras = meta["optional-dependencies"]
    assert {"dashboard", "postgres", "onnx", "digits", "dev"} <= set(extras)


def test_installed_package_finds_its_studies(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)  # a non-editable install, minus the metadata pip would add
    probe = (
        "from archsearch.core.resources import studies_dir; from archsearch.study.report import report_rows; "
        "print(studies_dir()); print(len(report_rows()))"
    )
    env = {"PYTHONPATH": str(target)}
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(target / "archsearch" / "_studies"), "17"]
