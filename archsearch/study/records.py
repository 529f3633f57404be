"""A trial as archsearch recorded it: the typed record every reader of a study goes through.

The objective (:mod:`archsearch.study.objective`) writes a trial's user attributes once; :meth:`TrialRecord.from_trial`
reads them back once, for analysis, the search and finalist summaries, reproduce's table, the time-budget report and
export. Which split a trial is judged on (its validation split where it has one, else test, as reproduce's protocol
has no validation split) and the best trial under a parameter budget are decided here and nowhere else.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial

__all__ = ["STUDY_ATTR", "Scores", "TrialRecord", "best_under"]

STUDY_ATTR = "archsearch"  # the study user attribute that says what made a study: its kind and settings

METRICS = ("accuracy", "precision", "recall", "f1")


@dataclass(frozen=True)
class Scores:
    """One split's final metrics over a trial's runs: mean and (sample) std per metric, and the per-seed values of
    the runs that did not diverge."""

    mean: dict[str, float]
    std: dict[str, float]
    per_seed: dict[str, list[float]]

    @classmethod
    def read(cls, attrs: Mapping[str, Any], split: str) -> Scores | None:
        summary, per_seed = attrs.get(split), attrs.get(f"{split}_per_seed")
        if not isinstance(summary, Mapping):
            return None
        mean, std = {}, {}
        for name, value in summary.items():
            if isinstance(value, Mapping) and isinstance(value.get("mean"), int | float):
                mean[name], std[name] = float(value["mean"]), float(value.get("std") or 0.0)
        values = {k: [float(x) for x in v] for k, v in (per_seed or {}).items() if isinstance(v, list)}
        return cls(mean, std, values) if "accuracy" in mean else None

    @property
    def accuracy(self) -> float:
        return self.mean["accuracy"]

    @property
    def accuracy_std(self) -> float:
        return self.std.get("accuracy", 0.0)

    @property
    def accuracy_per_seed(self) -> list[float]:
        """Per-seed accuracies (one value, the mean, where a trial recorded no per-seed list)."""
        return self.per_seed.get("accuracy") or [self.accuracy]


@dataclass(frozen=True)
class TrialRecord:
    """What archsearch recorded on one Optuna trial; attributes a trial lacks are None (or empty)."""

    number: int
    state: str  # complete, pruned, fail, running, waiting (Optuna's), lower case
    sampled: dict[str, Any]  # the sampler's parameters (trial.params)
    spec: str | None = None
    kind: str | None = None
    params: int | None = None  # parameter count
    depth: int | None = None
    widths: list[int] | None = None
    activation: str | None = None
    dataset: str | None = None
    seeds: list[int] = field(default_factory=list)
    protocol: dict[str, Any] = field(default_factory=dict)
    monitor: str = "test"  # the split the trial is judged on
    scores: dict[str, Scores] = field(default_factory=dict)  # per split: val, test
    diverged_seeds: list[int] = field(default_factory=list)
    seconds: float | None = None
    engine_step: str | None = None
    curve: dict[int, float] = field(default_factory=dict)  # epoch -> mean monitored accuracy (intermediate values)
    epoch_seconds: list[list[float]] = field(default_factory=list)  # per epoch: [training, evaluation] per run, and
    # how many runs trained together that epoch
    report_row: int | None = None
    source_trial: int | None = None  # finalists: the screen trial retrained
    screen_val: float | None = None  # finalists: that trial's screen validation accuracy
    group: int | None = None  # fused trials: the group's first trial
    stopped: str | None = None  # "time": stopped at an epoch boundary by a time budget
    rejected: str | None = None  # why the space could not build the sample
    duplicate_of: int | None = None

    @classmethod
    def from_trial(cls, trial: FrozenTrial) -> TrialRecord:
        ua = trial.user_attrs
        scores = {split: s for split in ("val", "test") if (s := Scores.read(ua, split)) is not None}
        row = ua.get("report_row")  # reproduce: a dict describing the report's row; search: the row's index
        screen = ua.get("screen")
        params = ua.get("params")
        return cls(
            number=trial.number,
            state=trial.state.name.lower(),
            sampled=dict(trial.params),
            spec=_str(ua.get("spec")),
            kind=_str(ua.get("kind")),
            params=int(params) if isinstance(params, int | float) else None,
            depth=ua.get("depth"),
            widths=ua.get("widths"),
            activation=_str(ua.get("activation")),
            dataset=_str(ua.get("dataset")),
            seeds=list(ua.get("seeds") or []),
            protocol=dict(ua["protocol"]) if isinstance(ua.get("protocol"), Mapping) else {},
            monitor=str(ua.get("monitor") or ("val" if "val" in scores else "test")),
            scores=scores,
            diverged_seeds=list(ua.get("diverged_seeds") or []),
            seconds=ua.get("seconds"),
            engine_step=ua.get("engine_step"),
            curve=dict(trial.intermediate_values),
            epoch_seconds=list(ua.get("epoch_seconds") or []),
            report_row=row.get("index") if isinstance(row, Mapping) else row,
            source_trial=ua.get("source_trial"),
            screen_val=screen.get("val") if isinstance(screen, Mapping) else None,
            group=ua.get("group"),
            stopped=ua.get("stopped"),
            rejected=ua.get("rejected"),
            duplicate_of=ua.get("duplicate_of"),
        )

    @property
    def status(self) -> str:
        """The state, with samples the space rejected and duplicates apart (they trained nothing)."""
        if self.rejected is not None:
            return "rejected"
        if self.duplicate_of is not None:
            return "duplicate"
        return self.state

    @property
    def judged(self) -> Scores | None:
        """The scores of the split the trial is judged on (``monitor``)."""
        return self.scores.get(self.monitor)

    @property
    def accuracy(self) -> float:
        """Mean accuracy on the judged split; -inf where there is none (a pruned or failed trial)."""
        judged = self.judged
        return judged.accuracy if judged is not None and math.isfinite(judged.accuracy) else -math.inf

    def split(self, name: str) -> Scores | None:
        return self.scores.get(name)

    def accuracies(self) -> dict[str, Any]:
        """Validation and test accuracy — mean, std and per seed — under the names the summaries' rows use
        (``val_acc``, ``val_acc_std``, ``val_per_seed``, ``test_…``), None where the trial has no such split."""
        out: dict[str, Any] = {}
        for name in ("val", "test"):
            s = self.split(name)
            out[f"{name}_acc"] = s.accuracy if s else None
            out[f"{name}_acc_std"] = s.accuracy_std if s else None
            out[f"{name}_per_seed"] = s.per_seed.get("accuracy") if s else None
        return out


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def best_under(records: Iterable[TrialRecord], budget: float = math.inf) -> TrialRecord | None:
    """The complete trial with the best judged accuracy among those with at most ``budget`` parameters (ties: the
    earlier trial), or None."""
    fit = [r for r in records if r.state == "complete" and r.params is not None and r.params <= budget]
    fit = [r for r in fit if math.isfinite(r.accuracy)]
    return max(fit, key=lambda r: (r.accuracy, -r.number), default=None)
