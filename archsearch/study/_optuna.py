"""Every use of Optuna's private API, in one place, each with why the public API does not do.

Optuna's public API has no way to claim a *chosen* queued trial (``ask`` pops the oldest), to run its heartbeat
outside ``optimize``, or to fail a trial from another process; archsearch needs all three for reproduce's workers
and for recovering dead workers' trials. If an Optuna release moves these, this module is what changes.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled  # what optimize() uses
from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "fail",
    "heartbeat",
    "heartbeat_enabled",
    "set_study_system_attr",
    "set_system_attr",
    "storage_of",
    "study_system_attr",
    "system_attrs",
    "trial_id",
    "try_claim",
]


def storage_of(study: optuna.Study) -> BaseStorage:
    """The study's storage object (``Study._storage``; public attributes offer only the URL-less study)."""
    return study._storage


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (``_trial_id``): what storage methods take."""
    return int(trial._trial_id)


def heartbeat_enabled(study: optuna.Study) -> bool:
    return bool(is_heartbeat_enabled(storage_of(study)))


def heartbeat(study: optuna.Study, trial: optuna.Trial) -> Any:
    """Optuna's heartbeat thread for ``trial``, as ``optimize()`` runs it (a no-op where the storage has none); a
    context manager."""
    return get_heartbeat_thread(trial_id(trial), storage_of(study))


def try_claim(study: optuna.Study, frozen: FrozenTrial) -> optuna.Trial | None:
    """Take the queued trial ``frozen`` for this process: WAITING -> RUNNING is atomic in the storage (of two workers
    only one wins), the way ``ask`` claims the oldest. None if another process took it first."""
    if not storage_of(study).set_trial_state_values(trial_id(frozen), TrialState.RUNNING):
        return None
    return optuna.Trial(study, trial_id(frozen))


def set_system_attr(storage: BaseStorage, trial: optuna.Trial | FrozenTrial, key: str, value: Any) -> None:
    """A system attribute on ``trial`` (Optuna keeps these for itself; archsearch records a trial's owner there)."""
    storage.set_trial_system_attr(trial_id(trial), key, value)


def fail(study: optuna.Study, trial: FrozenTrial) -> None:
    """Mark another process's RUNNING trial FAIL (raises RuntimeError if it finished meanwhile)."""
    storage_of(study).set_trial_state_values(trial_id(trial), TrialState.FAIL)


def set_study_system_attr(study: optuna.Study, key: str, value: Any) -> None:
    """A system attribute on the study: kept with it for archsearch, and not among the user attributes that every
    Optuna client prints (``Study.set_system_attr`` is gone from the public API; the storage still has it)."""
    storage_of(study).set_study_system_attr(study._study_id, key, value)


def study_system_attr(study: optuna.Study, key: str) -> Any:
    """The study's system attribute ``key`` (None if unset)."""
    return storage_of(study).get_study_system_attrs(study._study_id).get(key)


def system_attrs(trial: optuna.Trial) -> dict[str, Any]:
    """A running trial's system attributes (``Trial.system_attrs`` is deprecated; the storage has them)."""
    return storage_of(trial.study).get_trial_system_attrs(trial_id(trial))
