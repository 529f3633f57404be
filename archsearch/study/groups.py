"""Fused trials: K trials of one architecture and batch size trained together (HFTA's idea, inside Optuna).

The sampler proposes an architecture (the group's first trial); K-1 siblings are queued with the same architecture
and batch size, and the sampler fills in each sibling's recipe (``enqueue_trial`` with partial parameters). The K
trials then train as one call of the trainer, each run with its own recipe: learning rate, weight decay, momentum,
optimizer, schedule, label smoothing, augmentation, dropout. Each member stays its own Optuna trial, with its own
intermediate values, attributes, weights and pruning decision; a pruned or diverged member leaves the group at the
epoch boundary and the others go on. A member lost to an interrupt or a dead process is queued again with its own
parameters (storage.retry_lost_trials), and a queued member's architecture is what the next group is made around,
so after a kill every member finishes exactly once.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from archsearch.core.protocol import REPORT_PROTOCOL, Protocol
from archsearch.data import Dataset
from archsearch.engine import EpochReport, train
from archsearch.models import Spec, count_params
from archsearch.study import _optuna
from archsearch.study.objective import Hooks, TrainingDiverged, epoch_reporter, finish_trial, start_trial
from archsearch.study.spaces import Space, spec_or_reason
from archsearch.study.storage import claim_trial, mark_interrupted, trial_key

__all__ = ["GROUP_ATTR", "Member", "run_group"]

GROUP_ATTR = "group"  # user attribute: the number of the group's first trial


@dataclass
class Member:
    """One trial of a group: its runs among the group's, its recipe, whether it is still training."""

    trial: optuna.Trial
    protocol: Protocol
    runs: list[int] = field(default_factory=list)
    done: bool = False  # told (pruned, diverged), or about to be


def _ask(study: optuna.Study) -> optuna.Trial:
    """``study.ask()``, whose warning that heartbeats belong to ``optimize`` is moot: a group runs them itself."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        return study.ask()


def _shared_params(space: Space, params: dict[str, Any]) -> dict[str, Any]:
    """What the members of a group share: everything but the recipe, and the recipe's batch size."""
    return {k: v for k, v in params.items() if k not in space.recipe or k == "batch_size"}


def _siblings(study: optuna.Study, space: Space, first: optuna.Trial, k: int) -> list[optuna.Trial]:
    """Up to ``k`` trials with ``first``'s architecture and batch size: queued ones first (members of a group that
    was lost, or siblings queued by a process that died), then new ones queued and claimed here."""
    shared = _shared_params(space, first.params)
    out: list[optuna.Trial] = []
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if len(out) >= k or _shared_params(space, trial_key(frozen)) != shared:
            continue
        if (claimed := _optuna.try_claim(study, frozen)) is not None:
            claim_trial(claimed)
            out.append(claimed)
    while len(out) < k:
        study.enqueue_trial(shared, user_attrs={GROUP_ATTR: first.number})
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        mine = [t for t in waiting if t.user_attrs.get(GROUP_ATTR) == first.number]
        claimed = _optuna.try_claim(study, mine[-1]) if mine else None
        if claimed is None:  # another worker took it: it trains there, as a trial of its own
            break
        claim_trial(claimed)
        out.append(claimed)
    return out


def _sample(
    space: Space, trial: optuna.Trial, data: Dataset, base: Protocol
) -> tuple[Spec | None, Protocol | None, str | None]:
    spec, recipe, reason = spec_or_reason(space, trial, data.info.shape, data.info.num_classes)
    if spec is None or reason is not None:
        return spec, None, reason
    return spec, space.protocol(base, recipe), None


def _reject(study: optuna.Study, trial: optuna.Trial, spec: Spec | None, reason: str, data: Dataset) -> None:
    trial.set_user_attr("rejected", reason)
    if spec is not None:
        trial.set_user_attr("spec", str(spec))
        trial.set_user_attr("params", count_params(spec, data.info.shape, data.info.num_classes))
    study.tell(trial, state=TrialState.PRUNED)


def run_group(
    study: optuna.Study,
    space: Space,
    data: Dataset,
    *,
    fuse: int,
    epochs: int,
    seeds: Sequence[int],
    device: Any = None,
    threads: int | None = None,
    hooks: Hooks | None = None,
    artifact_store: Any = None,
) -> int:
    """Ask one architecture (a queued trial's, where one waits: a lost member) and ``fuse``-1 siblings, train them
    together, tell each; returns how many trained. An interrupt fails every member not yet told, kept as history and
    queued again on resume."""
    hooks = hooks or Hooks()
    base = REPORT_PROTOCOL.with_(epochs=epochs)
    members: list[Member] = []
    first = _ask(study)
    claim_trial(first)
    try:
        spec, protocol, reason = _sample(space, first, data, base)
        if spec is None or protocol is None:
            _reject(study, first, spec, reason or "rejected", data)
            return 0
        members.append(Member(first, protocol))
        for trial in _siblings(study, space, first, fuse - 1):
            members.append(Member(trial, base))  # told as failed if interrupted before its recipe is known
            sib_spec, sib_protocol, _ = _sample(space, trial, data, base)
            if sib_spec != spec or sib_protocol is None or sib_protocol.batch_size != protocol.batch_size:
                members.pop()
                _reject(study, trial, sib_spec, "a sibling's architecture must be its group's", data)
                continue
            members[-1].protocol = sib_protocol
        return _train_group(study, spec, members, data, seeds, device, threads, hooks, artifact_store)
    except KeyboardInterrupt:
        for member in members or [Member(first, base)]:
            if not member.done and member.trial.number not in _told(study, members):
                mark_interrupted(member.trial)
                study.tell(member.trial, state=TrialState.FAIL)
        raise


def _told(study: optuna.Study, members: list[Member]) -> set[int]:
    numbers = {m.trial.number for m in members}
    return {t.number for t in study.get_trials(deepcopy=False) if t.number in numbers and t.state.is_finished()}


def _train_group(
    study: optuna.Study, spec: Spec, members: list[Member], data: Dataset, seeds: Sequence[int], device: Any,
    threads: int | None, hooks: Hooks, artifact_store: Any,
) -> int:  # fmt: skip
    for m, member in enumerate(members):
        member.runs = [m * len(seeds) + i for i in range(len(seeds))]
        start_trial(member.trial, spec, seeds, member.protocol, data)
        member.trial.set_user_attr(GROUP_ATTR, members[0].trial.number)
    on_epoch = _group_epoch(study, members, hooks)
    hooks.on_trial(f"{spec} ×{len(members)} trials")
    with contextlib.ExitStack() as beats:  # Optuna's heartbeat per member (RDB storages), as optimize() runs it
        for member in members:
            beats.enter_context(_optuna.heartbeat(study, member.trial))
        result = train(
            spec, [s for _ in members for s in seeds], members[0].protocol, data, device=device, threads=threads,
            on_epoch=on_epoch, on_step=hooks.on_step, recipes=[m.protocol for m in members for _ in seeds],
        )  # fmt: skip
    for member in (m for m in members if not m.done):
        value = finish_trial(member.trial, result.subset(member.runs, member.protocol), data,
                             artifact_store=artifact_store, hooks=hooks)  # fmt: skip
        study.tell(member.trial, float(value))  # type: ignore[arg-type]
        member.done = True
    return len(members)


def _group_epoch(study: optuna.Study, members: list[Member], hooks: Hooks) -> Callable[[EpochReport], None]:
    """After each epoch: every member still training reports, and leaves if pruned or diverged (told at once, so
    the pruner's statistics see it)."""
    reporters = [epoch_reporter(m.trial, m.runs, ("accuracy",), True) for m in members]

    def on_epoch(report: EpochReport) -> None:
        hooks.on_epoch(report)
        for member, reporter in zip(members, reporters, strict=True):
            if member.done:
                continue
            try:
                reporter(report)
            except optuna.TrialPruned:
                member.done = True
                study.tell(member.trial, state=TrialState.PRUNED)
            except TrainingDiverged as err:
                member.done = True
                member.trial.set_user_attr("fail_reason", str(err))
                study.tell(member.trial, state=TrialState.FAIL)
            if member.done:
                report.leave.update(member.runs)

    return on_epoch
