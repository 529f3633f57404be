"""End to end on the real dataset: `archsearch reproduce` in real processes, on real SQLite, killed and resumed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from archsearch.data import Dataset
from archsearch.study.reproduce import ReproduceConfig, open_reproduce_study, run_reproduce


def cli(cwd: Path, *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "archsearch", "reproduce", "--threads", "1", *args]
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return out


def trials(db: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}").get_trials()


def running_after_an_epoch(db: Path) -> bool:
    """Read-only peek with sqlite3 (opening it through Optuna would race the CLI creating the tables)."""
    query = "SELECT count(*) FROM trials t JOIN trial_intermediate_values v USING (trial_id) WHERE t.state = 'RUNNING'"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as con:
            return bool(con.execute(query).fetchone()[0])
    except sqlite3.Error:  # not created yet, or mid-creation
        return False


@pytest.mark.slow
def test_two_rows_then_rerun_trains_nothing(tmp_path: Path) -> None:
    args = ("--models", "0,6", "--runs", "2", "--epochs", "1", "--out", "out", "--json")
    first = json.loads(finish(cli(tmp_path, *args)))
    assert first["meta"]["trained_now"] == 2 and first["meta"]["study"] == "report-e1-r2"
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["index"] for r in saved["rows"]] == [0, 6] and all(r["n_runs"] == 2 for r in saved["rows"])
    assert (tmp_path / "out" / "REPORT.md").is_file() and (tmp_path / "out" / "accuracy_vs_params.png").is_file()
    assert saved["meta"]["deviations"] == ["epochs 1 (report: 50)", "runs 2 (report: 5)"]
    ts = trials(tmp_path / "archsearch.db", "report-e1-r2")
    assert [t.state for t in ts] == [TrialState.COMPLETE] * 2
    t0 = ts[0]
    assert t0.params == {"row": 0, "loss": "ce"} and t0.intermediate_values.keys() == {1}
    for key in ("spec", "params", "depth", "widths", "activation", "kind", "seeds", "test", "test_per_seed"):
        assert key in t0.user_attrs
    assert t0.user_attrs["report_row"]["acc"] == 0.8394
    assert t0.value == pytest.approx(sum(t0.user_attrs["test_per_seed"]["accuracy"]) / 2)

    again = json.loads(finish(cli(tmp_path, *args)))
    assert again["meta"]["trained_now"] == 0
    assert again["rows"] == first["rows"]
    assert len(trials(tmp_path / "archsearch.db", "report-e1-r2")) == 2


@pytest.mark.slow
def test_killed_mid_trial_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    args = ("--models", "0,12", "--runs", "2", "--epochs", "2", "--storage", "sqlite:///k.db", "--json")
    proc = cli(tmp_path, *args)
    db = tmp_path / "k.db"
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until the first trial has finished an epoch, then kill mid-trial
        time.sleep(0.5)
        if running_after_an_epoch(db):
            break
    else:
        pytest.fail("no trial started")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = json.loads(finish(cli(tmp_path, *args)))
    ts = trials(db, "report-e2-r2")
    complete = Counter((t.params["row"], t.params["loss"]) for t in ts if t.state == TrialState.COMPLETE)
    assert complete == {(0, "ce"): 1, (12, "ce"): 1}
    assert [t.state for t in ts].count(TrialState.FAIL) == 1  # the killed one, kept as history
    assert resumed["meta"]["trained_now"] >= 1
    # the interrupted trial, run again from scratch, gives exactly what an uninterrupted run gives
    clean = json.loads(finish(cli(tmp_path, "--models", "0,12", "--runs", "2", "--epochs", "2",
                                  "--storage", "sqlite:///clean.db", "--json")))  # fmt: skip
    assert [r["acc_per_seed"] for r in resumed["rows"]] == [r["acc_per_seed"] for r in clean["rows"]]


@pytest.mark.slow
def test_another_protocol_in_the_same_study_is_refused(tmp_path: Path) -> None:
    finish(cli(tmp_path, "--models", "12", "--runs", "1", "--epochs", "1", "--study-name", "s"))
    proc = cli(tmp_path, "--models", "12", "--runs", "2", "--epochs", "1", "--study-name", "s")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "another protocol" in err and "Traceback" not in err


def test_default_study_names() -> None:
    assert ReproduceConfig().default_study_name() == "report"
    assert ReproduceConfig(epochs=2, runs=2).default_study_name() == "report-e2-r2"
    assert ReproduceConfig().deviations() == []


@pytest.mark.slow
def test_diverging_trials_fail_with_a_reason_and_the_study_goes_on(tmp_path: Path) -> None:
    out = json.loads(
        finish(cli(tmp_path, "--models", "0,12", "--runs", "2", "--epochs", "1", "--lr", "1e30", "--json"))
    )
    assert out["meta"]["failed_now"] == 2 and out["rows"] == []
    ts = trials(tmp_path / "archsearch.db", "report-e1-r2-lr1e+30")
    assert [t.state for t in ts] == [TrialState.FAIL, TrialState.FAIL]  # both tried: the first failure did not stop it
    assert all("NaN or infinite" in t.user_attrs["fail_reason"] for t in ts)


def test_only_the_requested_rows_are_trained(small_real: Dataset, tmp_path: Path) -> None:
    """The study may hold queued rows of an earlier command; this one trains what it was asked for."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/q.db")
    both = ReproduceConfig(indexes=(0, 12), runs=1, epochs=1)
    study = open_reproduce_study(storage, "q", both)
    only_12 = ReproduceConfig(indexes=(12,), runs=1, epochs=1)
    stats = run_reproduce(open_reproduce_study(storage, "q", only_12), only_12, small_real)
    states = {t.params.get("row", t.system_attrs["fixed_params"]["row"]): t.state for t in study.get_trials()}
    assert states == {0: TrialState.WAITING, 12: TrialState.COMPLETE} and len(stats.trained) == 1
