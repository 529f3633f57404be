"""Bad input, table-driven: one clear line on stderr, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest

from archsearch.cli import main
from archsearch.data import default_data_dir, ensure_raw_files

HALF_CONFIG = {"format": "archsearch-checkpoint", "format_version": 1, "spec": "mlp:5-relu", "seed": 42}
BAD_TOML = 'kind = "mlp"\ndepth = [0, 3\n'
UNKNOWN_KEY_TOML = 'kind = "mlp"\nwidht = { low = 4, high = 8 }\n'

CASES: list[tuple[str, list[str], str]] = [
    ("unknown model index", ["reproduce", "--models", "0,99"], "unknown model index 99"),
    ("unreadable model index", ["reproduce", "--models", "zero"], "cannot read model index"),
    ("zero epochs", ["reproduce", "--epochs", "0"], "--epochs"),
    ("unknown loss", ["reproduce", "--loss", "mse"], "--loss"),
    ("unknown space", ["search", "--space", "transformer"], "unknown space"),
    ("unknown activation", ["train", "mlp:128-swish"], "unknown activation 'swish'"),
    ("unknown sampler", ["search", "--space", "mlp", "--sampler", "annealing"], "--sampler"),
    ("unknown pruner", ["search", "--space", "mlp", "--pruner", "asha"], "--pruner"),
    ("unknown objective", ["search", "--space", "mlp", "--objectives", "loss"], "unknown objective"),
    ("malformed mlp spec", ["train", "mlp:12x"], "comma-separated widths"),
    ("malformed cnn spec", ["train", "cnn:6c5-q2-fc"], "cannot read token 'q2'"),
    ("not a spec", ["train", "resnet18"], "must start with 'mlp:' or 'cnn:'"),
    ("zero width", ["train", "mlp:128,0"], "hidden layer 2 width"),
    ("negative width", ["train", "mlp:-5"], "comma-separated widths"),
    ("conv kernel bigger than image", ["train", "cnn:6c29-fc"], "shrinks the 28x28 image"),
    ("conv stack shrinks to nothing", ["train", "cnn:6c5-p2-16c5-p2-16c5-fc"], "shrinks"),
    ("TOML syntax error", ["search", "--space", "{tmp}/bad.toml"], "TOML syntax error"),
    ("TOML unknown key", ["search", "--space", "{tmp}/unknown.toml"], ":2: unknown key 'widht'"),
    ("space file missing", ["search", "--space", "{tmp}/missing.toml"], "file not found"),
    ("storage not a URL", ["reproduce", "--models", "0", "--storage", "results.db"], "not a URL"),
    ("storage unreachable", ["reproduce", "--storage", "postgresql://u:pw@127.0.0.1:1/x"], "cannot open storage"),
    ("storage dialect unknown", ["reproduce", "--storage", "oracle+nope://h/db"], "cannot open storage"),
    ("storage directory missing", ["reproduce", "--storage", "sqlite:///{tmp}/no/such/dir/x.db"], "not writable"),
    ("unwritable --out", ["reproduce", "--models", "0", "--out", "{tmp}/afile/out"], "cannot write to --out"),
    ("corrupt dataset", ["train", "mlp:5", "--epochs", "1", "--data-dir", "{tmp}/corrupt"], "checksum mismatch"),
    ("dataset unobtainable", ["train", "mlp:5", "--data-dir", "/proc/archsearch-data"], "Fashion-MNIST"),
    ("bad seeds", ["train", "mlp:5", "--seeds", "a,b"], "cannot read seeds"),
    ("unusable device", ["train", "mlp:5", "--device", "tpu"], "device 'tpu'"),
    ("checkpoint dir missing", ["evaluate", "{tmp}/no-checkpoint"], "{tmp}/no-checkpoint"),
    ("checkpoint without weights", ["evaluate", "{tmp}/half-checkpoint"], "model.safetensors"),
    (
        "study does not exist (export)",
        ["export", "--study", "nope", "--storage", "sqlite:///{tmp}/has.db", "--out", "{tmp}/exp"],
        "nope",
    ),
    ("study does not exist (analyze)", ["analyze", "--study", "nope", "--storage", "sqlite:///{tmp}/has.db"], "nope"),
    ("study does not exist (worker)", ["worker", "--study", "nope", "--storage", "sqlite:///{tmp}/has.db"], "nope"),
    ("unknown command", ["frobnicate"], "No such command"),
    ("time unreadable", ["search", "--time", "soon"], "cannot read --time 'soon'"),
    ("time not positive", ["search", "--time", "0m"], "--time must be a positive duration"),
    ("max-params without --time", ["search", "--space", "cnn", "--max-params", "1000"], "belong to a search with"),
    ("search without a space or time", ["search"], "search needs --space"),
    (
        "timed search, unwritable --out",
        ["search", "--time", "60s", "--dataset", "digits", "--out", "{tmp}/afile/out"],
        "cannot write to --out",
    ),
    ("ema out of range", ["train", "mlp:5", "--ema", "1.5"], "ema decay must be 0 (off) or in [0.5, 1)"),
]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "bad.toml").write_text(BAD_TOML)
    (tmp_path / "unknown.toml").write_text(UNKNOWN_KEY_TOML)
    (tmp_path / "afile").write_text("")
    half = tmp_path / "half-checkpoint"
    half.mkdir()
    (half / "config.json").write_text(json.dumps(HALF_CONFIG))
    raw = tmp_path / "corrupt" / "FashionMNIST" / "raw"
    shutil.copytree(ensure_raw_files(default_data_dir()), raw)
    labels = bytearray((raw / "t10k-labels-idx1-ubyte").read_bytes())
    labels[100] = (labels[100] + 1) % 10  # one wrong label: well-formed, but not the genuine file
    (raw / "t10k-labels-idx1-ubyte").write_bytes(bytes(labels))
    optuna.create_study(storage=f"sqlite:///{tmp_path}/has.db", study_name="other")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.mark.parametrize("name, args, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input(
    workdir: Path, capsys: pytest.CaptureFixture[str], name: str, args: list[str], fragment: str
) -> None:
    args = [a.replace("{tmp}", str(workdir)) for a in args]
    before = snapshot(workdir)
    code = main(args)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (name, err)
    assert len(err.splitlines()) == 1 and err.startswith("archsearch: error: "), err
    assert "Traceback" not in err and fragment.replace("{tmp}", str(workdir)) in err
    assert captured.out == ""
    assert snapshot(workdir) == before  # nothing written, nothing changed


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"ARCHSEARCH_GEMM": "fast"}, "ARCHSEARCH_GEMM must be auto, torch or libxsmm, not 'fast'"),
        ({"ARCHSEARCH_GEMM": "libxsmm", "LIBXSMM_ROOT": "/nonexistent"}, "libxsmm (Debian: libxsmm-dev) was not found"),
        ({"ARCHSEARCH_CONV": "fast"}, "ARCHSEARCH_CONV must be auto, torch or native, not 'fast'"),
        (
            {
                "ARCHSEARCH_CONV": "native",
                "ARCHSEARCH_GEMM": "torch",  # else (in CI) a required libxsmm meets the missing compiler first
                "CC": "/nonexistent/cc",
                "PATH": "/nonexistent",
                "ARCHSEARCH_CACHE": "{tmp}/c",
            },
            "ARCHSEARCH_CONV=native, but no C compiler (cc) was found",
        ),
    ],
    ids=["unknown", "required but missing", "conv unknown", "conv compiler missing"],
)
def test_bad_native_setting(
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    fragment: str,
) -> None:
    """Refused before the study exists, even where only the workers would have used libxsmm or the conv kernels."""
    from archsearch.engine.native import conv, gemm

    for key, value in env.items():
        monkeypatch.setenv(key, value.replace("{tmp}", str(workdir)))
    gemm._loaded.cache_clear()  # the kernels are loaded once per settings
    conv._loaded.cache_clear()
    before = snapshot(workdir)
    try:
        code = main(["reproduce", "--models", "0", "--workers", "2", "--storage", f"sqlite:///{workdir}/new.db"])
    finally:
        monkeypatch.undo()
        gemm._loaded.cache_clear()
        conv._loaded.cache_clear()
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("archsearch: error: ") and fragment in err
    assert captured.out == "" and snapshot(workdir) == before
