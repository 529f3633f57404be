"""The wheel carries studies/ (report table, spaces), so a non-editable install finds them."""

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


def test_wheel_contains_the_studies(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for study in ("report.toml", "mlp.toml", "cnn.toml"):
        assert f"archsearch/_studies/{study}" in names


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
