"""The wheel carries studies/ (report table, spaces), so a non-editable install finds them."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_the_studies(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        str(ROOT),
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(tmp_path),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    (wheel,) = tmp_path.glob("archsearch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for study in ("report.toml", "mlp.toml", "cnn.toml"):
        assert f"archsearch/_studies/{study}" in names


def test_installed_package_finds_its_studies(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        str(ROOT),
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(tmp_path),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    (wheel,) = tmp_path.glob("archsearch-*.whl")
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)  # a non-editable install, minus the metadata pip would add
    probe = "from archsearch.resources import studies_dir; from archsearch.report import report_rows; " \
            "print(studies_dir()); print(len(report_rows()))"  # fmt: skip
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(target)},
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert out == [str(target / "archsearch" / "_studies"), "17"]
