"""TrialRecord: a trial's user attributes read back once, the judged split and the best under a budget decided once."""

from __future__ import annotations

import math

import optuna
from optuna.trial import TrialState

from archsearch.study.records import TrialRecord, best_under


def _study(*trials: dict) -> optuna.Study:  # type: ignore[type-arg]
    study = optuna.create_study()
    for attrs in trials:
        t = study.ask()
        state = attrs.pop("_state", TrialState.COMPLETE)
        for k, v in attrs.items():
            t.set_user_attr(k, v)
        study.tell(t, 0.0 if state == TrialState.COMPLETE else None, state=state)
    return study


def _scores(acc: float, *per_seed: float) -> dict:  # type: ignore[type-arg]
    return {"accuracy": {"mean": acc, "std": 0.01}, "precision": {"mean": acc, "std": 0.0}}


def test_the_judged_split_is_validation_where_recorded_else_test() -> None:
    study = _study(
        {
            "spec": "a",
            "params": 10,
            "val": _scores(0.8),
            "test": _scores(0.7),
            "val_per_seed": {"accuracy": [0.79, 0.81]},
        },
        {"spec": "b", "params": 10, "test": _scores(0.9)},  # reproduce: no validation split
        {"spec": "c", "params": 10, "monitor": "test", "val": _scores(0.5), "test": _scores(0.6)},
    )
    a, b, c = (TrialRecord.from_trial(t) for t in study.trials)
    assert (a.monitor, a.accuracy, a.judged.accuracy_per_seed) == ("val", 0.8, [0.79, 0.81])  # type: ignore[union-attr]
    assert (b.monitor, b.accuracy, b.judged.accuracy_per_seed) == ("test", 0.9, [0.9])  # type: ignore[union-attr]
    assert (c.monitor, c.accuracy) == ("test", 0.6)  # what the trial says it monitored wins


def test_status_tells_rejected_and_duplicate_samples_apart() -> None:
    study = _study(
        {"rejected": "too many parameters", "_state": TrialState.PRUNED},
        {"duplicate_of": 0, "_state": TrialState.FAIL},
        {"_state": TrialState.PRUNED},
    )
    assert [TrialRecord.from_trial(t).status for t in study.trials] == ["rejected", "duplicate", "pruned"]
    assert TrialRecord.from_trial(study.trials[2]).accuracy == -math.inf


def test_best_under_a_budget_is_the_best_complete_trial_that_fits_first_on_ties() -> None:
    study = _study(
        {"params": 500, "val": _scores(0.95)},
        {"params": 90, "val": _scores(0.90)},
        {"params": 80, "val": _scores(0.90)},
        {"params": 50, "val": _scores(0.99), "_state": TrialState.PRUNED},
    )
    records = [TrialRecord.from_trial(t) for t in study.trials]
    assert best_under(records).number == 0  # type: ignore[union-attr]
    assert best_under(records, 100).number == 1  # type: ignore[union-attr]
    assert best_under(records, 10) is None
