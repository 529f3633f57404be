"""The objective: adapts an Optuna trial to the trainer and records what the trainer returns on the trial.

The trainer never sees a trial. Here each epoch's mean accuracy becomes an intermediate value (learning curves in
optuna-dashboard, and what pruners decide on), and the final per-seed metrics become user attributes.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna

from archsearch.core.protocol import Protocol
from archsearch.data import Dataset
from archsearch.engine import EpochReport, RunResult, TrainResult, train
from archsearch.models import Spec, count_params, parse_spec
from archsearch.study.artifacts import save_trial_weights
from archsearch.study.storage import claim_trial

__all__ = [
    "Hooks",
    "TrainingDiverged",
    "epoch_reporter",
    "finish_trial",
    "run_trial",
    "spec_attrs",
    "start_trial",
    "summarize",
]

SCALAR_METRICS = ("accuracy", "precision", "recall", "f1")


class TrainingDiverged(RuntimeError):
    """Every run of the trial produced a non-finite loss."""


@dataclass
class Hooks:
    """Progress callbacks from the study layer to whoever displays progress (the CLI): ``on_progress(done, total)``
    for the study's trials, the others for the trial in training."""

    on_progress: Callable[[int, int], None] = lambda done, total: None
    on_trial: Callable[[str], None] = lambda label: None
    on_step: Callable[[int, int], None] = lambda done, total: None
    on_epoch: Callable[[EpochReport], None] = lambda report: None
    on_result: Callable[[optuna.Trial, TrainResult], None] = field(default=lambda trial, result: None)


def spec_attrs(spec: Spec, data: Dataset | None = None) -> dict[str, Any]:
    """What the dashboard and analysis need to know about an architecture (counted for ``data``'s images)."""
    params = count_params(spec) if data is None else count_params(spec, data.info.shape, data.info.num_classes)
    return {
        "spec": str(spec),
        "kind": spec.kind,
        "params": params,
        "depth": spec.depth,
        "widths": list(spec.widths),
        "activation": spec.activation,
    }


def summarize(runs: Sequence[RunResult], split: str) -> dict[str, dict[str, Any]]:
    """Per metric: the per-seed values, their mean and (sample) standard deviation, over runs that did not diverge."""
    ok = [r for r in runs if not r.diverged]
    out = {}
    for name in SCALAR_METRICS:
        values = [r.metrics[split][name] for r in ok]
        out[name] = {
            "values": values,
            "mean": statistics.fmean(values) if values else math.nan,
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        }
    return out


def start_trial(trial: optuna.Trial, spec: Spec, seeds: Sequence[int], protocol: Protocol, data: Dataset) -> None:
    """Claim ``trial`` for this process and record what it trains (before training, so a dead trial says so too)."""
    claim_trial(trial)
    for key, value in spec_attrs(spec, data).items():
        trial.set_user_attr(key, value)
    trial.set_user_attr("dataset", data.info.name)
    trial.set_user_attr("dataset_info", data.info.to_dict())  # what export writes into config.json
    trial.set_user_attr("seeds", list(seeds))
    trial.set_user_attr("protocol", protocol.to_dict())


def epoch_reporter(
    trial: optuna.Trial, runs: Sequence[int], objectives: Sequence[str], prune: bool
) -> Callable[[EpochReport], None]:
    """What a trial does after each epoch of its ``runs``: report their mean accuracy (learning curves in the
    dashboard, the pruners' input), fail if every run diverged, prune if the pruner says so."""
    curve: list[float] = []
    cost: list[list[float]] = []

    def on_epoch(report: EpochReport) -> None:
        accuracy = report.mean_over(runs)
        curve.append(accuracy)
        together = max(1, report.training)  # seconds per run: the epoch's time shared by the runs that trained
        cost.append([round(report.train_seconds / together, 4), round(report.eval_seconds / together, 4), together])
        trial.set_user_attr("epoch_seconds", cost)  # [training, evaluation] per run, runs together: plans budgets
        if len(objectives) == 1 and not math.isnan(accuracy):
            trial.report(accuracy, report.epoch)
        else:  # Optuna has no intermediate values for multi-objective trials: keep the curve as an attribute
            trial.set_user_attr("curve", curve)
        if all(report.diverged[r] for r in runs):
            raise TrainingDiverged(f"loss became NaN or infinite in every run by epoch {report.epoch}")
        if prune and trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {report.epoch}")

    return on_epoch


def finish_trial(
    trial: optuna.Trial,
    result: TrainResult,
    data: Dataset,
    *,
    objectives: Sequence[str] = ("accuracy",),
    artifact_store: Any = None,
    hooks: Hooks | None = None,
) -> float | tuple[float, ...]:
    """Record a trained trial's results on it (metrics per split and seed, weights as an artifact); its value(s)."""
    monitor = "val" if "val" in data.evals else "test"
    trial.set_user_attr("monitor", monitor)
    trial.set_user_attr("diverged_seeds", [r.seed for r in result.runs if r.diverged])
    trial.set_user_attr("seconds", round(result.seconds, 2))
    trial.set_user_attr("engine_step", result.engine_step)  # which path trained it (archsearch.engine.steps)
    trial.set_user_attr("threads", result.threads)
    for split in data.evals:
        summary = summarize(result.runs, split)
        trial.set_user_attr(split, {k: {"mean": v["mean"], "std": v["std"]} for k, v in summary.items()})
        trial.set_user_attr(f"{split}_per_seed", {k: v["values"] for k, v in summary.items()})
    trial.set_user_attr(
        "test_detail",
        {
            str(r.seed): {k: r.metrics["test"][k] for k in ("per_class_accuracy", "confusion_matrix")}
            for r in result.runs
        },
    )
    if artifact_store is not None:  # every run's weights, as an Optuna artifact the dashboard lists
        save_trial_weights(trial, result, artifact_store)
    (hooks or Hooks()).on_result(trial, result)
    value = summarize(result.runs, monitor)["accuracy"]["mean"]
    if len(objectives) == 1:
        return value
    params = float(count_params(parse_spec(result.spec), data.info.shape, data.info.num_classes))
    return tuple(value if o == "accuracy" else params for o in objectives)


def run_trial(
    trial: optuna.Trial,
    spec: Spec,
    seeds: Sequence[int],
    protocol: Protocol,
    data: Dataset,
    *,
    device: Any = None,
    threads: int | None = None,
    objectives: Sequence[str] = ("accuracy",),
    prune: bool = False,
    hooks: Hooks | None = None,
    artifact_store: Any = None,
) -> float | tuple[float, ...]:
    """Train ``spec`` once per seed for ``trial``; return the objective value(s).

    The objective is the mean accuracy on the monitored split: ``val`` when the data has one (searches), else
    ``test`` (the report's protocol, which has no validation set). ``params`` as a second objective is the count.
    """
    hooks = hooks or Hooks()
    start_trial(trial, spec, seeds, protocol, data)
    reporter = epoch_reporter(trial, range(len(seeds)), objectives, prune)

    def on_epoch(report: EpochReport) -> None:
        hooks.on_epoch(report)
        reporter(report)

    hooks.on_trial(str(spec))
    try:
        result = train(
            spec, seeds, protocol, data, device=device, threads=threads, on_epoch=on_epoch, on_step=hooks.on_step
        )
    except TrainingDiverged as err:
        trial.set_user_attr("fail_reason", str(err))
        raise
    return finish_trial(trial, result, data, objectives=objectives, artifact_store=artifact_store, hooks=hooks)
