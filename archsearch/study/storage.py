"""Optuna storages: URL checking, SQLite/PostgreSQL (RDB) and journal files, and recovery of trials left RUNNING
by dead processes.

Optuna's heartbeat notices dead workers only for RDB storages and only inside ``optimize()``, and only after a grace
period. archsearch also records which process owns a trial (host and PID); a trial RUNNING on this host whose process
is gone is failed and re-queued at once, on every storage.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import os
import socket
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from archsearch.core import interrupts
from archsearch.core.errors import UserError
from archsearch.study import _optuna

__all__ = [
    "DEFAULT_STORAGE",
    "FAIL_REASON_ATTR",
    "LOST_REASONS",
    "OWNER_ATTR",
    "artifact_dir",
    "claim_trial",
    "fail_dead_trials",
    "fail_stale_trials",
    "load_existing_study",
    "mark_interrupted",
    "open_storage",
    "retry_lost_trials",
    "storage_label",
    "trial_key",
]

DEFAULT_STORAGE = "sqlite:///archsearch.db"
OWNER_ATTR = "archsearch:owner"
FAIL_REASON_ATTR = "archsearch:fail_reason"
RETRY_OF_ATTR = "retry_of"
INTERRUPTED, WORKER_DIED = "interrupted", "worker died"
LOST_REASONS = (INTERRUPTED, WORKER_DIED)  # failed through no fault of their own: tried again with the same params
HEARTBEAT_S = 20
GRACE_S = 120


def open_storage(url: str | None) -> BaseStorage:
    """An Optuna storage for ``url``: ``sqlite:///file.db`` (default ``archsearch.db`` here), ``postgresql://…``,
    any SQLAlchemy URL, or ``journal:///path/file.log`` for Optuna's JournalStorage on one host."""
    url = url or DEFAULT_STORAGE
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme == "journal":
        if ":///" not in url or not url.split(":///", 1)[1]:
            raise UserError(f"storage {url!r}: a journal URL needs a file, e.g. journal:///archsearch.log")
        path = Path(url.split(":///", 1)[1])  # like SQLite: journal:///rel.log, journal:////abs/path.log
        _check_parent_writable(path, url)
        return _SignalSafeJournalStorage(JournalFileBackend(str(path)))
    if not scheme:
        raise UserError(f"storage {url!r} is not a URL; use e.g. sqlite:///archsearch.db or postgresql://host/db")
    engine_kwargs: dict[str, Any] = {}
    if scheme == "sqlite":
        path_text = url.split(":///", 1)[1] if ":///" in url else ""
        if not path_text:
            raise UserError(f"storage {url!r}: an SQLite URL needs a file, e.g. sqlite:///archsearch.db")
        _check_parent_writable(Path(path_text), url)
        # Several processes share one SQLite file: wait for locks instead of failing with "database is locked".
        # isolation_level=None hands transaction control to SQLAlchemy; see _sqlite_transactions_take_the_lock.
        engine_kwargs = {"connect_args": {"timeout": 120, "isolation_level": None}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
        if scheme in ("postgresql", "postgresql+psycopg") and importlib.util.find_spec("psycopg") is None:
            raise UserError("PostgreSQL storage needs psycopg: pip install 'archsearch[postgres]'")
    try:
        with warnings.catch_warnings(), _sqlite_init_lock(url if scheme == "sqlite" else None):
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: "experimental"
            storage = _SignalSafeRDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(),
            )
            if scheme == "sqlite":
                _sqlite_transactions_take_the_lock(storage.engine)
            return storage
    except Exception as err:  # SQLAlchemy raises many types: unknown dialect, refused connection, bad credentials
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot open storage {storage_label(url)}: {first}") from None


def _signal_safe(cls: type[Any]) -> type[Any]:
    """``cls`` whose every storage call runs whole: a SIGINT or SIGTERM that lands inside one is raised when it
    returns (:func:`interrupts.deferred`). An interrupt inside a database transaction leaves the transaction's lock
    (SQLite: the write lock; a journal: its lock file) held by a connection nobody will use again, and the clean-up
    that fails the interrupted trial then waits on it until the grace period ends the process (reproduced: 2 of 15
    interrupts that came as an epoch's results were written)."""

    def wrap(method: Any) -> Any:
        @functools.wraps(method)
        def whole(self: Any, *args: Any, **kwargs: Any) -> Any:
            with interrupts.deferred():
                return method(self, *args, **kwargs)

        return whole

    # every method, the private ones too (Optuna's cache reads trials through ``_get_trials``); not static methods
    names = [n for n in dir(cls) if not n.startswith("__") and inspect.isfunction(inspect.getattr_static(cls, n))]
    methods = {n: wrap(getattr(cls, n)) for n in names}
    name = cls.__name__.removeprefix("_Claiming")
    return type(f"SignalSafe{name}", (cls,), {"__module__": __name__, **methods})


class _ClaimsQueued(BaseStorage):
    """Records the owner (host, PID) of a queued trial in the storage call in which this process wins it."""

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        # the storage mixed in after this class (RDBStorage, JournalStorage) implements it
        started = super().set_trial_state_values(trial_id, state, values)  # type: ignore[safe-super]
        if started and state == TrialState.RUNNING:
            self.set_trial_system_attr(trial_id, OWNER_ATTR, _owner())
        return started


class _ClaimingRDBStorage(_ClaimsQueued, RDBStorage):
    """An RDB storage that records the owner (host, PID) of every trial this process starts, in the storage call that
    makes it RUNNING: a process killed between Optuna's ``ask`` and the objective's own claim (sampling, a few storage
    writes: seen once in 60 kills) left an ownerless RUNNING trial that no rerun could tell from a live one.
    ``_create_new_trial`` is Optuna's private hook (its trial cache calls it instead of ``create_new_trial``)."""

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        trial = super()._create_new_trial(study_id, template_trial)
        if trial.state == TrialState.RUNNING:
            self.set_trial_system_attr(_optuna.trial_id(trial), OWNER_ATTR, _owner())
            trial.system_attrs[OWNER_ATTR] = _owner()  # the copy Optuna's cache keeps
        return trial


class _ClaimingJournalStorage(_ClaimsQueued, JournalStorage):
    """:class:`_ClaimingRDBStorage`'s claim on a journal file."""

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        trial_id = super().create_new_trial(study_id, template_trial)
        if template_trial is None or template_trial.state == TrialState.RUNNING:
            self.set_trial_system_attr(trial_id, OWNER_ATTR, _owner())
        return trial_id


_SignalSafeRDBStorage = _signal_safe(_ClaimingRDBStorage)
_SignalSafeJournalStorage = _signal_safe(_ClaimingJournalStorage)


@contextlib.contextmanager
def _sqlite_init_lock(url: str | None) -> Iterator[None]:
    """Hold an exclusive lock on the SQLite file while Optuna opens it.

    RDBStorage creates its tables when it opens a database (``create_all``, then the schema version's row), in
    SQLite's autocommit mode and before any of our transaction settings apply: processes that open a new file at the
    same moment (``--workers``, a coordinator and its workers) each find the tables missing and all but one fail with
    "table ... already exists" (5 of 6 processes, reproduced). One opener at a time: the others wait, then find the
    tables there. The lock is ``flock`` on the database file itself, apart from SQLite's own (fcntl) locks.
    """
    try:
        import fcntl  # POSIX; elsewhere Optuna opens the file unguarded, as before
    except ImportError:
        fcntl = None  # type: ignore[assignment]
    if url is None or fcntl is None:
        yield
        return
    path = Path(url.split(":///", 1)[1])
    with open(path, "ab") as handle:  # an empty file is an empty SQLite database
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _sqlite_transactions_take_the_lock(engine: Any) -> None:
    """Start every SQLite transaction with BEGIN IMMEDIATE (SQLAlchemy's documented pysqlite recipe).

    Optuna claims a queued trial by reading its state and writing RUNNING if it was WAITING, "FOR UPDATE" on servers;
    SQLite has no row locks and pysqlite begins a transaction only at the first write, so two processes could both
    read WAITING and both claim the trial (seen with 4 workers: one trial trained twice, the second tell failed).
    Taking SQLite's write lock at the start makes each read-check-write atomic; other processes wait (timeout 120 s).
    """
    from sqlalchemy import event

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def load_existing_study(url: str | None, name: str, **kwargs: Any) -> optuna.Study:
    """Load a study that must already exist: a missing SQLite/journal file is refused instead of being created
    empty, and an unknown name is refused with the names the storage does hold (a typo is fixed in one step)."""
    label = url or DEFAULT_STORAGE
    if label.startswith(("sqlite:///", "journal:///")):
        path = Path(label.split(":///", 1)[1]).expanduser()
        if not path.is_file():
            raise UserError(f"storage {label!r}: no such file {path}; give the --storage the study was run with")
    storage = open_storage(url)
    try:
        return optuna.load_study(study_name=name, storage=storage, **kwargs)
    except KeyError:
        names = sorted(optuna.get_all_study_names(storage))
        have = f"studies there: {', '.join(names)}" if names else "it holds no studies"
        raise UserError(f"no study named {name!r} in {storage_label(label)}; {have}") from None


def _check_parent_writable(path: Path, url: str) -> None:
    parent = path.expanduser().resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UserError(f"storage {url!r}: directory {parent} does not exist or is not writable")


def storage_label(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


def artifact_dir(url: str | None) -> Path:
    """Where trial artifacts (weights) go: next to an SQLite/journal file, else ./archsearch-artifacts."""
    url = url or DEFAULT_STORAGE
    if url.startswith(("sqlite:///", "journal:///")):
        path = Path(url.split(":///", 1)[1])
        return path.parent / f"{path.stem}-artifacts"
    return Path("archsearch-artifacts")


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def claim_trial(trial: optuna.Trial) -> None:
    """Record this process as the trial's owner, so that a rerun can tell a dead worker's trial from a live one."""
    _optuna.set_system_attr(trial.storage, trial, OWNER_ATTR, _owner())


def trial_key(trial: FrozenTrial) -> dict[str, Any]:
    """A trial's parameters, also for WAITING trials (whose enqueued params are not yet in ``params``)."""
    return trial.params or dict(trial.system_attrs.get("fixed_params", {}))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_dead_here(trial: FrozenTrial) -> bool:
    owner = trial.system_attrs.get(OWNER_ATTR)
    if not isinstance(owner, dict) or owner.get("host") != socket.gethostname():
        return False
    return owner.get("pid") != os.getpid() and not _pid_alive(int(owner.get("pid", -1)))


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Fail RUNNING trials whose owner process on this host is gone (and, via Optuna's heartbeat, those of dead
    workers elsewhere). Returns the numbers of the trials failed here; callers re-queue their parameters."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _is_dead_here(trial):
            try:
                _optuna.set_system_attr(_optuna.storage_of(study), trial, FAIL_REASON_ATTR, WORKER_DIED)
                _optuna.fail(study, trial)
                failed.append(trial.number)
            except RuntimeError:  # another process finished or failed it first
                pass
    if isinstance(_optuna.storage_of(study), RDBStorage):
        fail_stale_trials(study)
    return failed


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's heartbeat check (fail trials whose worker stopped beating; the retry callback re-queues them)."""
    with warnings.catch_warnings():  # "experimental" since Optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def mark_interrupted(trial: optuna.Trial) -> None:
    """Record that ``trial`` is failing because the command was interrupted (it is tried again on resume)."""
    _optuna.set_system_attr(trial.storage, trial, FAIL_REASON_ATTR, INTERRUPTED)


def retry_lost_trials(study: optuna.Study) -> list[int]:
    """Queue again, once each, the parameters of trials lost to an interrupt or a dead worker (failing the dead
    ones first); returns the lost trials' numbers. The retry records which trial it repeats (``retry_of``) and keeps
    the user attributes it was queued with (a report row, say), so it is the same trial to every reader."""
    fail_dead_trials(study)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(RETRY_OF_ATTR) for t in trials}
    lost = []
    for trial in trials:
        reason = trial.system_attrs.get(FAIL_REASON_ATTR)
        if trial.state == TrialState.FAIL and reason in LOST_REASONS and trial.number not in retried:
            queued = {k: v for k, v in trial.user_attrs.items() if k == "report_row"}
            study.enqueue_trial(trial_key(trial), user_attrs={**queued, RETRY_OF_ATTR: trial.number})
            lost.append(trial.number)
    return lost
