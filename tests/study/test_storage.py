from __future__ import annotations

import os
import socket
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from archsearch.core.errors import UserError
from archsearch.study.storage import OWNER_ATTR, artifact_dir, fail_dead_trials, open_storage, storage_label


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("archsearch.db", "not a URL"),
        ("sqlite://", "needs a file"),
        ("sqlite:////nonexistent-dir/x.db", "not writable"),
        ("journal:///", "needs a file"),
        ("nosuchdialect://host/db", "cannot open storage"),
        ("postgresql://user:secret@127.0.0.1:1/db", "cannot open storage"),
    ],
)
def test_bad_storage_urls(url: str, fragment: str) -> None:
    with pytest.raises(UserError, match=fragment) as info:
        open_storage(url)
    assert "secret" not in str(info.value)


def test_password_is_hidden() -> None:
    assert storage_label("postgresql://me:pw@db:5432/x") == "postgresql://me:***@db:5432/x"


def test_artifact_dir_sits_next_to_the_database() -> None:
    assert artifact_dir("sqlite:///runs/a.db") == Path("runs/a-artifacts")


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
# The test makes its RUNNING trials with study.ask(), standing in for workers; Optuna warns that heartbeats are meant
# for optimize(). reproduce's workers claim trials themselves and run the heartbeat thread as optimize() does.
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_trials_of_dead_local_processes_are_failed(tmp_path: Path, kind: str) -> None:
    url = f"sqlite:///{tmp_path}/s.db" if kind == "sqlite" else f"journal:///{tmp_path}/s.log"
    study = optuna.create_study(storage=open_storage(url), study_name="s")
    dead = study.ask()
    alive = study.ask()
    elsewhere = study.ask()
    pid = os.fork()
    if pid == 0:  # a child that exits at once: its PID is certainly dead after waitpid
        os._exit(0)
    os.waitpid(pid, 0)
    storage = study._storage
    storage.set_trial_system_attr(dead._trial_id, OWNER_ATTR, {"host": socket.gethostname(), "pid": pid})
    storage.set_trial_system_attr(alive._trial_id, OWNER_ATTR, {"host": socket.gethostname(), "pid": os.getpid()})
    storage.set_trial_system_attr(elsewhere._trial_id, OWNER_ATTR, {"host": "another-host", "pid": pid})
    assert fail_dead_trials(study) == [dead.number]
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {
        dead.number: TrialState.FAIL,
        alive.number: TrialState.RUNNING,
        elsewhere.number: TrialState.RUNNING,
    }


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_process_killed_right_after_asking_leaves_a_trial_a_rerun_fails(tmp_path: Path, kind: str) -> None:
    """The owner is recorded in the storage call that starts the trial, new or queued: a process that dies before
    its objective runs (SIGKILL between Optuna's ask and the first line of training) is seen as dead by a rerun."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path}/s.db" if kind == "sqlite" else f"journal:///{tmp_path}/s.log"
    study = optuna.create_study(storage=open_storage(url), study_name="s")
    study.enqueue_trial({"x": 1.0})
    ask_and_die = (
        "import os, optuna\nfrom archsearch.study.storage import open_storage\n"
        f"study = optuna.load_study(study_name='s', storage=open_storage({url!r}))\n"
        "study.ask()\nstudy.ask()\nos._exit(0)\n"  # the queued trial, then a new one; killed before training
    )
    subprocess.run([sys.executable, "-c", ask_and_die], check=True, timeout=120)
    trials = optuna.load_study(study_name="s", storage=open_storage(url)).get_trials()
    assert [t.state for t in trials] == [TrialState.RUNNING] * 2
    assert all(t.system_attrs[OWNER_ATTR]["host"] == socket.gethostname() for t in trials)
    assert sorted(fail_dead_trials(study)) == [0, 1]


def test_sqlite_transactions_take_the_write_lock_at_begin(tmp_path: Path) -> None:
    """A claim (read WAITING, write RUNNING) must be atomic across processes: the lock is held from BEGIN, so another
    connection cannot start a writing transaction while one that has only *read* is open."""
    import sqlite3

    from sqlalchemy import text

    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    other = sqlite3.connect(tmp_path / "s.db", timeout=0, isolation_level=None)
    with storage.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(text("SELECT count(*) FROM trials")).scalar()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
    other.execute("BEGIN IMMEDIATE")  # free again once the transaction is over
    other.execute("ROLLBACK")


OPEN_AT_ONCE = """
import sys, time
import optuna
from archsearch.study.storage import open_storage
url, at = sys.argv[1], float(sys.argv[2])
while time.time() < at:
    time.sleep(0.001)
study = optuna.create_study(storage=open_storage(url), study_name="s", direction="maximize", load_if_exists=True)
study.set_user_attr(sys.argv[3], 1)
"""


@pytest.mark.slow
def test_processes_opening_a_new_sqlite_file_at_once_all_succeed(tmp_path: Path) -> None:
    """Optuna creates its tables when it opens a database; without the open lock, 5 of 6 processes opening a new
    file at the same moment failed with "table ... already exists"."""
    import subprocess
    import sys
    import time

    url, at = f"sqlite:///{tmp_path}/new.db", time.time() + 8  # after every interpreter has imported optuna
    procs = [
        subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, url, str(at), f"p{i}"], stderr=subprocess.PIPE, text=True)
        for i in range(6)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), [e.strip().splitlines()[-1:] for e in errors]
    study = optuna.load_study(study_name="s", storage=url)
    assert set(study.user_attrs) == {f"p{i}" for i in range(6)}


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_signal_inside_a_storage_call_is_raised_after_it(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C as a trial's attribute is written: the write finishes, the interrupt comes as it returns, and the
    clean-up's own writes (failing the trial) find no lock left taken by the interrupted one."""
    import signal
    import time

    from archsearch.core import interrupts

    url = f"sqlite:///{tmp_path}/s.db" if kind == "sqlite" else f"journal:///{tmp_path}/s.log"
    storage = open_storage(url)
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    sent: list[bool] = []

    def hit(*_args: object) -> None:
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    if kind == "sqlite":  # the signal arrives as SQLite begins the write's transaction ...
        from sqlalchemy import event

        event.listen(storage.engine, "before_cursor_execute", hit)
    else:  # ... or just after the journal's lock is taken
        lock = storage._backend._lock
        acquire = lock.acquire
        monkeypatch.setattr(lock, "acquire", lambda: (acquire(), hit())[0])
    with interrupts.handled(), pytest.raises(interrupts.Interrupted):
        trial.set_user_attr("epoch_seconds", [[1.0, 0.1, 1]])
    started = time.monotonic()
    study.tell(trial, state=TrialState.FAIL)  # the clean-up, on the same storage
    assert time.monotonic() - started < 5
    again = optuna.load_study(study_name="s", storage=open_storage(url))
    assert again.trials[0].user_attrs == {"epoch_seconds": [[1.0, 0.1, 1]]} and again.trials[0].state == TrialState.FAIL
