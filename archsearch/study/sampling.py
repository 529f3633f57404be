"""Seeded samplers that continue a study instead of restarting it.

An Optuna sampler seeded once per process draws the same sequence in every process: a rerun of a seeded search, or a
second worker on it, would propose the trials already done. Here each trial's sampler is seeded from the search's
seed and the trial's *slot*: its number, not counting earlier trials that were lost to an interrupt or a dead worker
(each is retried in a slot of its own, with its parameters, so it is no new draw). A fresh study therefore draws
exactly what it drew last time; a resumed one, or a joining worker, goes on where the study stands; and a run that
was interrupted and resumed draws, slot by slot, what an uninterrupted run draws.

The sampler is rebuilt for each trial from ``make(seed)``: Optuna's samplers keep their state in the study (CMA-ES,
NSGA-II, the grid) or in nothing but their random generators, so a new one per trial loses nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from archsearch.study.storage import FAIL_REASON_ATTR, LOST_REASONS

__all__ = ["SlotSeededSampler", "slot_of"]


def slot_of(study: optuna.Study, number: int) -> int:
    """Trial ``number``'s slot: how many earlier trials were not lost (interrupted, or left by a dead worker)."""
    earlier = [t for t in study.get_trials(deepcopy=False) if t.number < number]
    lost = sum(
        1 for t in earlier if t.state == TrialState.FAIL and t.system_attrs.get(FAIL_REASON_ATTR) in LOST_REASONS
    )
    return number - lost


class SlotSeededSampler(BaseSampler):
    """``make(seed)``'s sampler, seeded anew for every trial from ``seed`` and the trial's slot."""

    def __init__(self, make: Callable[[int], BaseSampler], seed: int) -> None:
        self._make, self._seed = make, seed
        self._inner = make(seed)

    def _seed_for(self, slot: int) -> int:
        return int(np.random.SeedSequence([self._seed, slot]).generate_state(1)[0])

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner = self._make(self._seed_for(slot_of(study, trial.number)))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()
