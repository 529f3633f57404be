"""Ctrl-C and ``kill`` on real processes, at random moments: every command stops at once with 130 (SIGINT) or 143
(SIGTERM) and one line, the running trial is failed and kept, no output folder is left empty or half-written, and a
rerun ends where an uninterrupted run ends."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

pytestmark = pytest.mark.slow
SEARCH = ("search", "--dataset", "digits", "--space", "mlp", "--epochs", "10", "--threads", "1")
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
LAST_LINE = {signal.SIGINT: "archsearch: interrupted", signal.SIGTERM: "archsearch: interrupted by SIGTERM"}


def start(cwd: Path, *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "archsearch", *args]
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 600) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


def interrupt(proc: subprocess.Popen[str], sig: signal.Signals, after: float) -> tuple[int, str, str, float]:
    """Send ``sig`` ``after`` seconds in (unless the process has ended); its exit code, stdout, stderr, and how long
    it took to stop."""
    time.sleep(after)
    sent = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err, time.monotonic() - sent


def epochs_done(db: Path) -> tuple[int, int]:
    """How many trials have ended (complete or pruned), and the most epochs a running trial has reported; read
    straight from the SQLite file the command writes (read-only: never creates it)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2) as con:
            ended = con.execute("SELECT count(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')").fetchone()[0]
            rows = con.execute(
                "SELECT a.value_json FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id"
                " WHERE t.state = 'RUNNING' AND a.key = 'epoch_seconds'"
            ).fetchall()
    except sqlite3.OperationalError:  # not created yet, or locked by the writer this instant
        return 0, 0
    return ended, max((len(json.loads(value)) for (value,) in rows), default=0)


def interrupt_at(
    proc: subprocess.Popen[str], sig: signal.Signals, db: Path, epochs: int, ended: int = 0
) -> tuple[int, str, str, float]:
    """Send ``sig`` once ``ended`` trials have ended and a running one has trained ``epochs`` epochs: a moment
    inside training whatever the machine's speed (a fixed delay is all start-up on a slow machine and after the
    end on a fast one)."""
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        done, running = epochs_done(db)
        if done >= ended and running >= epochs:
            break
        time.sleep(0.02)
    return interrupt(proc, sig, 0.0)


def assert_stopped_by(sig: signal.Signals, code: int, out: str, err: str, seconds: float) -> None:
    assert code == EXIT[sig], err[-3000:]
    assert err.strip().splitlines()[-1] == LAST_LINE[sig] and "Traceback" not in err
    assert out == "" and seconds < 15


def trained(db: Path, name: str) -> list[tuple[dict[str, object], float | None]]:
    """The study's trials that count, in order: parameters and value."""
    trials = optuna.load_study(study_name=name, storage=f"sqlite:///{db}").get_trials()
    return [(t.params, t.value) for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_train_stops_at_once_with_the_signals_exit_code(tmp_path: Path, sig: signal.Signals) -> None:
    proc = start(tmp_path, "train", "mlp:32-relu", "--dataset", "digits", "--epochs", "100000", "--threads", "1")
    assert_stopped_by(sig, *interrupt(proc, sig, random.Random(sig).uniform(4.0, 8.0)))


def test_interrupted_search_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    clean, broken = tmp_path / "clean", tmp_path / "broken"
    clean.mkdir(), broken.mkdir()
    args = (*SEARCH, "--n-trials", "5", "--epochs", "30")
    finish(start(clean, *args))
    rng = random.Random(25)
    for ended, sig in enumerate((signal.SIGINT, signal.SIGTERM, signal.SIGINT)):
        epochs = rng.randint(1, 20)  # inside the (ended + 1)th trial, at a random epoch
        code, out, err, seconds = interrupt_at(start(broken, *args), sig, broken / "archsearch.db", epochs, ended)
        assert_stopped_by(sig, code, out, err, seconds)
    summary = json.loads(finish(start(broken, *args, "--json")))
    study = optuna.load_study(study_name="search-mlp", storage=f"sqlite:///{broken}/archsearch.db")
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 3 and all(t.system_attrs["archsearch:fail_reason"] == "interrupted" for t in failed)
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    assert trained(broken / "archsearch.db", "search-mlp") == trained(clean / "archsearch.db", "search-mlp")
    assert summary["counts"]["complete"] == 5 and summary["counts"]["fail"] == len(failed)


def test_interrupted_reproduce_leaves_no_out_folder_and_resumes(tmp_path: Path) -> None:
    args = ("reproduce", "--models", "0", "--runs", "2", "--epochs", "3", "--threads", "1", "--out", "out", "--json")
    clean, broken = tmp_path / "clean", tmp_path / "broken"
    clean.mkdir(), broken.mkdir()
    expected = json.loads(finish(start(clean, *args)))
    code, out, err, seconds = interrupt_at(start(broken, *args), signal.SIGTERM, broken / "archsearch.db", 1)
    assert_stopped_by(signal.SIGTERM, code, out, err, seconds)
    assert sorted(p.name for p in broken.iterdir()) == ["archsearch-artifacts", "archsearch.db"]  # no out, no temp
    resumed = json.loads(finish(start(broken, *args)))
    assert [r["acc_per_seed"] for r in resumed["rows"]] == [r["acc_per_seed"] for r in expected["rows"]]
    assert sorted(p.name for p in (broken / "out").iterdir()) == sorted(p.name for p in (clean / "out").iterdir())


def test_a_worker_stops_on_sigterm_and_its_trial_is_trained_again(tmp_path: Path) -> None:
    from archsearch.study.reproduce import ReproduceConfig, open_reproduce_study
    from archsearch.study.storage import open_storage

    url = f"sqlite:///{tmp_path}/archsearch.db"
    cfg = ReproduceConfig(indexes=(0,), runs=1, epochs=20)
    open_reproduce_study(open_storage(url), "r", cfg)
    worker = ("worker", "--study", "r", "--storage", url, "--threads", "1", "--json")
    db = tmp_path / "archsearch.db"
    assert_stopped_by(signal.SIGTERM, *interrupt_at(start(tmp_path, *worker), signal.SIGTERM, db, 2))
    study = optuna.load_study(study_name="r", storage=url)
    assert [t.state for t in study.trials] == [TrialState.FAIL]  # failed and kept as history, not left RUNNING
    proc = start(tmp_path, "reproduce", "--models", "0", "--runs", "1", "--epochs", "20", "--study-name", "r")
    finish(proc)
    assert [t.state for t in optuna.load_study(study_name="r", storage=url).trials] == [
        TrialState.FAIL,
        TrialState.COMPLETE,
    ]


@pytest.mark.parametrize("command", ["export", "analyze"])
def test_short_commands_write_their_folder_whole_or_not_at_all(tmp_path: Path, command: str) -> None:
    finish(start(tmp_path, *SEARCH, "--n-trials", "3", "--epochs", "2"))
    args = {
        "export": ("export", "--study", "search-mlp", "--out", "out"),
        "analyze": ("analyze", "--study", "search-mlp", "--out", "out"),
    }[command]
    finish(start(tmp_path, *args))
    whole = sorted(p.name for p in (tmp_path / "out").iterdir())
    rng, outcomes = random.Random(command), set()
    for _ in range(6):
        target = tmp_path / "out"
        if target.exists():
            for p in sorted(target.iterdir()):
                p.unlink()
            target.rmdir()
        code, _, err, _ = interrupt(start(tmp_path, *args), signal.SIGINT, rng.uniform(1.5, 4.0))
        assert code in (0, 130), err[-3000:]
        outcomes.add(code)
        present = sorted(p.name for p in target.iterdir()) if target.exists() else []
        # whole or absent; whole also after a signal that came as the files were put in place, or after
        assert present == whole if code == 0 else present in (whole, []), (code, present)
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temporary folder left
    assert 130 in outcomes  # at least one signal came while it worked


def test_a_clean_up_that_hangs_is_ended_after_its_grace(tmp_path: Path) -> None:
    """A signal's clean-up that hangs (a database lock the interrupt broke, say) must not keep the command alive."""
    script = tmp_path / "hang.py"
    script.write_text(
        "import sys, time\nfrom archsearch.core import interrupts\ninterrupts.GRACE_S = 2.0\n"
        "with interrupts.handled(exiting=True):\n    try:\n        print('ready', flush=True)\n        time.sleep(60)\n"
        "    finally:\n        time.sleep(60)  # the clean-up hangs\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    code, _, err, seconds = interrupt(proc, signal.SIGTERM, 0.0)
    assert code == 143 and 1.5 < seconds < 10
    assert err.strip().splitlines()[-1] == "archsearch: interrupted by SIGTERM (clean-up took over 2 s: ended)"


def test_a_signal_while_typer_builds_the_command_stops_it_cleanly(tmp_path: Path) -> None:
    """Between the imports and the command's own handling, typer builds the command from the functions' annotations
    (a second or so on a slow machine): a signal landing there is an interrupt like any other."""
    script = tmp_path / "build.py"
    script.write_text(
        "import os, signal, sys, typer.main\nfrom archsearch.__main__ import run\n"
        "build = typer.main.get_command\n"
        "def interrupted_build(app):\n    os.kill(os.getpid(), signal.SIGTERM)\n    return build(app)\n"
        "typer.main.get_command = interrupted_build\nsys.exit(run())\n"
    )
    proc = subprocess.Popen(
        [sys.executable, str(script), "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err = proc.communicate(timeout=60)
    assert_stopped_by(signal.SIGTERM, proc.returncode, out, err, 0.0)
