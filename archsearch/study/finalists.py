"""The last step of a search: retrain its best trials with more seeds and more epochs before reporting.

A search screens many architectures cheaply (few epochs, one seed, pruned early), so its ranking is noisy and its
accuracies are those of short trainings. Here the top trials by validation accuracy — overall and within each
parameter budget, so that a small-model budget gets its own finalists — are trained again as fixed trials of a
second study, ``<search>-final``, in the same storage: same recipe, more epochs (``epochs``), more seeds (``runs``).
The best model per budget is then the finalist with the best *final* validation accuracy; test accuracy is
reported beside it and chooses nothing. Rerunning resumes: finished finalists are kept, a dead worker's is trained
again, and a finalist already trained is not trained twice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from archsearch.core.errors import UserError
from archsearch.core.protocol import Protocol
from archsearch.data import Dataset
from archsearch.models import parse_spec
from archsearch.study.objective import Hooks, TrainingDiverged, run_trial
from archsearch.study.records import STUDY_ATTR, TrialRecord, best_under
from archsearch.study.storage import fail_dead_trials, trial_key

__all__ = ["DEFAULT_BUDGETS", "FinalConfig", "final_study_name", "final_summary", "pick_finalists", "run_finalists"]

DEFAULT_BUDGETS = (10_000, 44_374, 100_000)  # the report CNN's 44,374 parameters among them
FINAL_ATTR = STUDY_ATTR


@dataclass(frozen=True)
class FinalConfig:
    finalists: int  # per budget (and overall)
    epochs: int
    runs: int
    first_seed: int = 42
    budgets: tuple[int, ...] = DEFAULT_BUDGETS

    @property
    def seeds(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.runs))

    def to_attrs(self, source_study: str) -> dict[str, Any]:
        """What the ``-final`` study records of its settings (its ``STUDY_ATTR`` attribute)."""
        return {"kind": "final", "source_study": source_study, **asdict(self), "budgets": list(self.budgets)}

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> FinalConfig:
        """The settings a ``-final`` study recorded (:meth:`to_attrs`)."""
        return cls(
            finalists=attrs["finalists"], epochs=attrs["epochs"], runs=attrs["runs"],
            first_seed=attrs.get("first_seed", 42), budgets=tuple(attrs.get("budgets", DEFAULT_BUDGETS)),
        )  # fmt: skip

    def __post_init__(self) -> None:
        if self.finalists < 1 or self.epochs < 1 or self.runs < 1:
            raise UserError("finalists, their epochs and their runs must be at least 1")
        if any(b < 1 for b in self.budgets):
            raise UserError(f"parameter budgets must be positive, got {list(self.budgets)}")


def pick_finalists(trials: Sequence[FrozenTrial], n: int, budgets: Sequence[int]) -> list[FrozenTrial]:
    """The ``n`` best complete trials by validation accuracy overall and under each budget, without repeats, in
    that order."""
    records = {r.number: r for r in map(TrialRecord.from_trial, trials)}
    ranked = sorted(
        (r for r in records.values() if r.state == "complete" and math.isfinite(r.accuracy)), key=lambda r: -r.accuracy
    )
    by_number = {t.number: t for t in trials}
    picked: dict[int, FrozenTrial] = {}
    for budget in (math.inf, *sorted(budgets)):
        fit = [r for r in ranked if (r.params or 0) <= budget]
        for r in fit[:n]:
            picked.setdefault(r.number, by_number[r.number])
    return list(picked.values())


def final_study_name(search_name: str) -> str:
    return f"{search_name}-final"


def run_finalists(
    search: optuna.Study,
    cfg: FinalConfig,
    data: Dataset,
    *,
    storage: Any,
    device: Any = None,
    threads: int | None = None,
    hooks: Hooks | None = None,
    artifact_store: Any = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Train the finalists of ``search`` (those not trained yet) in its ``-final`` study; returns that study.
    ``pruner`` may stop a finalist at an epoch boundary (a time budget's deadline); by default none is stopped."""
    name = final_study_name(search.study_name)
    final = optuna.create_study(
        storage=storage, study_name=name, direction="maximize", sampler=optuna.samplers.RandomSampler(0),
        pruner=pruner or optuna.pruners.NopPruner(), load_if_exists=True,
    )  # fmt: skip
    wanted = cfg.to_attrs(search.study_name)
    meta = final.user_attrs.get(FINAL_ATTR)
    if meta is None:
        final.set_user_attr(FINAL_ATTR, wanted)
    elif {k: v for k, v in meta.items() if k != "finalists"} != {k: v for k, v in wanted.items() if k != "finalists"}:
        raise UserError(f"study {name!r} trained finalists with other settings ({meta}); choose another --study-name")
    for number in fail_dead_trials(final):  # a dead worker's finalist is trained again
        final.enqueue_trial(trial_key(final.trials[number]))
    done = {trial_key(t).get("source") for t in final.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)}  # fmt: skip
    for t in pick_finalists(search.get_trials(deepcopy=False), cfg.finalists, cfg.budgets):
        if t.number not in done:
            final.enqueue_trial({"source": t.number})
    waiting = len(final.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    trials = search.get_trials(deepcopy=False)

    def objective(trial: optuna.Trial) -> float:
        source = trials[trial.suggest_int("source", 0, 1 << 30)]
        protocol = Protocol.from_dict(source.user_attrs["protocol"]).with_(epochs=cfg.epochs)
        trial.set_user_attr("source_trial", source.number)
        screen = TrialRecord.from_trial(source)
        trial.set_user_attr("screen", {"epochs": screen.protocol["epochs"], "val": screen.accuracy})
        value = run_trial(
            trial, parse_spec(source.user_attrs["spec"]), cfg.seeds, protocol, data,
            device=device, threads=threads, hooks=hooks, artifact_store=artifact_store, prune=pruner is not None,
        )  # fmt: skip
        return float(value)  # type: ignore[arg-type]

    if waiting:
        final.optimize(objective, n_trials=waiting, catch=(TrainingDiverged,), gc_after_trial=True)
    return final


def _row(r: TrialRecord) -> dict[str, Any]:
    return {
        "trial": r.number,
        "source_trial": r.source_trial,
        "spec": r.spec,
        "params": r.params,
        "screen_val_acc": r.screen_val,
        **r.accuracies(),
        "epochs": r.protocol.get("epochs"),
        "seeds": r.seeds,
        "seconds": r.seconds,
        "recipe": r.protocol or None,
    }


def final_summary(final: optuna.Study) -> dict[str, Any]:
    """Every finalist (final validation and test accuracy beside its screening validation accuracy) and, per budget,
    the one with the best final validation accuracy."""
    meta = final.user_attrs.get(FINAL_ATTR, {})
    records = [TrialRecord.from_trial(t) for t in final.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    rows = [_row(r) for r in sorted(records, key=lambda r: -r.accuracy)]
    best = {}
    for budget in meta.get("budgets", DEFAULT_BUDGETS):
        found = best_under(records, budget)
        best[str(budget)] = _row(found) if found is not None else None
    return {"study": final.study_name, "meta": meta, "finalists": rows, "best_under": best}
