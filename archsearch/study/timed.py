"""`archsearch search --time`: a search that plans for a wall-clock budget, from start to exported model.

The budget is spent in two phases on one clock:

1. **the screen** (``SCREEN_SHARE`` of the budget): the space's trials on a subset of the training images
   (``SCREEN_IMAGES``), ``SCREEN_EPOCHS`` epochs each, successive halving over epochs (rungs at 1, 3, 9 epochs keep
   the best third), trials of one architecture fused where the engine measured it pays (``search --fuse``'s
   default). When the screen's time is up, a trial in training stops at its next epoch boundary (pruned, by time);
2. **the finalists**: the ``FINALISTS`` best screen trials by validation accuracy, each trained again on every
   training image with ``FINAL_SEEDS`` seeds (fused), for as many epochs as the time left affords — the cost of an
   epoch measured on the screen's own trials — and at most ``MAX_FINAL_EPOCHS``; time those leave over goes to the
   next best screen trials (up to ``MAX_FINALISTS`` finalists) at the same length. The winner is the finalist
   with the best **mean** validation accuracy over its seeds; Welch's test says whether the runner-up is
   distinguishable from it. Test accuracy chooses nothing.

The clock is kept in the study (``CLOCK_ATTR``): a killed run, rerun, resumes inside the same budget — finished
trials are kept, the lost ones retried, and the time already spent counts.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from archsearch.core.errors import UserError
from archsearch.data import DEFAULT_DATASET, dataset_info, load_dataset
from archsearch.engine import EpochReport
from archsearch.results.stats import ALPHA, welch
from archsearch.study import _optuna
from archsearch.study.finalists import FinalConfig, final_summary, run_finalists
from archsearch.study.objective import Hooks
from archsearch.study.records import TrialRecord
from archsearch.study.search import SearchConfig, open_search_study, run_search
from archsearch.study.spaces import Space, load_space, parse_space

__all__ = [
    "CLOCK_ATTR",
    "Clock",
    "DeadlinePruner",
    "TimedConfig",
    "final_epochs",
    "plan_finals",
    "run_epoch_cost",
    "timed_search",
    "timed_space",
]

CLOCK_ATTR = "archsearch:clock"
SCREEN_SHARE = 0.4  # of the budget; the rest trains the finalists
SCREEN_EPOCHS = 9  # successive halving's rungs: 1, 3, 9
SCREEN_IMAGES = 20_000  # training images per screen trial (at most; all where the dataset has fewer)
FINALISTS, FINAL_SEEDS, MAX_FINAL_EPOCHS = 2, 2, 60
MAX_FINALISTS = 4  # where FINALISTS reach MAX_FINAL_EPOCHS with time to spare, the next best screen trials join
RESERVE_S = 0.02  # of the budget, kept for the export and the report
PLAN_MARGIN = 0.9  # the finalists' epochs are planned for this share of the time left: an epoch on every training
# image costs up to 10% more per image than on the screen's subset (measured on a 2-core CPU)
DEFAULT_SPACE = "fast"


@dataclass(frozen=True)
class TimedConfig:
    time_s: float
    max_params: int | None = None
    dataset: str = DEFAULT_DATASET
    seed: int = 42
    space: str = DEFAULT_SPACE
    fuse: int | None = None  # screen trials fused; None: what the engine measured pays (search_study's default)

    def __post_init__(self) -> None:
        if not math.isfinite(self.time_s) or self.time_s <= 0:
            raise UserError(f"--time must be a positive duration, got {self.time_s!r} seconds")
        if self.max_params is not None and self.max_params < 1:
            raise UserError(f"--max-params must be positive, got {self.max_params}")

    @property
    def screen_end(self) -> float:
        return SCREEN_SHARE * self.time_s

    @property
    def final_end(self) -> float:
        return (1 - RESERVE_S) * self.time_s


def timed_space(cfg: TimedConfig) -> Space:
    """The space searched: ``cfg.space`` (the built-in ``fast`` by default) with ``max_params`` set to the budget
    (in its text too, which the study keeps and hashes: another budget is another study)."""
    space = load_space(cfg.space)
    if cfg.max_params is None:
        return space
    lines = [ln for ln in space.text.splitlines() if not ln.startswith("max_params")]
    text = "\n".join([f"max_params = {cfg.max_params}", *lines]) + "\n"
    return parse_space(text, space.source, f"{space.name}-{cfg.max_params}")


class Clock:
    """The budget's clock, kept in the study's attribute ``CLOCK_ATTR``: seconds spent by earlier runs of the same
    command plus this run's, saved every few seconds (a killed run loses at most that much of its account)."""

    SAVE_EVERY_S = 5.0

    def __init__(self, study: optuna.Study, budget_s: float, started: float | None = None) -> None:
        record = study.user_attrs.get(CLOCK_ATTR) or {}
        if record and record.get("budget_s") != budget_s:
            raise UserError(
                f"study {study.study_name!r} was searched with --time {record.get('budget_s')}s, not {budget_s}s; "
                "choose another --study-name"
            )
        self.study, self.budget_s = study, budget_s
        self.spent_before = float(record.get("spent_s", 0.0))
        self.record = dict(record, budget_s=budget_s)
        self.started = started if started is not None else time.monotonic()
        self.saved_at = -math.inf

    def elapsed(self) -> float:
        return self.spent_before + time.monotonic() - self.started

    def save(self, force: bool = False, **facts: Any) -> None:
        now = time.monotonic()
        if not force and not facts and now - self.saved_at < self.SAVE_EVERY_S:
            return
        self.record.update(facts, spent_s=round(self.elapsed(), 3))
        self.study.set_user_attr(CLOCK_ATTR, self.record)
        self.saved_at = now


class DeadlinePruner(optuna.pruners.BasePruner):
    """``inner``'s decisions, and every trial stopped at its next epoch boundary once ``clock`` passes ``end``
    seconds (recorded as the trial's ``stopped``: ``time``) — but not after its last epoch, when all that is left
    is its final evaluation."""

    def __init__(self, inner: optuna.pruners.BasePruner, clock: Clock, end: float) -> None:
        self.inner, self.clock, self.end = inner, clock, end

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        epochs = (trial.user_attrs.get("protocol") or {}).get("epochs")
        last = trial.last_step is not None and epochs is not None and trial.last_step >= epochs
        if self.clock.elapsed() >= self.end and not last:
            _optuna.storage_of(study).set_trial_user_attr(_optuna.trial_id(trial), "stopped", "time")
            return True
        return self.inner.prune(study, trial)


def _timed_hooks(hooks: Hooks, clock: Clock) -> Hooks:
    """``hooks`` with the budget's bar (seconds spent of the budget) and the clock saved as training goes."""

    def tick() -> None:
        clock.save()
        hooks.on_progress(min(int(clock.elapsed()), int(clock.budget_s)), int(clock.budget_s))

    def on_step(done: int, total: int) -> None:
        hooks.on_step(done, total)
        tick()

    def on_epoch(report: EpochReport) -> None:
        hooks.on_epoch(report)
        tick()

    return dataclasses.replace(hooks, on_progress=lambda d, t: tick(), on_step=on_step, on_epoch=on_epoch)


def run_epoch_cost(trial: FrozenTrial, together: int = FINAL_SEEDS) -> tuple[float, float] | None:
    """Seconds of training and of evaluation per run and epoch that ``trial`` measured (medians over its epochs), or
    None. Epochs in which ``together`` runs shared the cores, as the finalists' seeds will, where there are any: a run
    left alone in its group (its siblings pruned) keeps one thread of two busy, and costs up to twice as much."""
    cost = TrialRecord.from_trial(trial).epoch_seconds
    alike = [c for c in cost if len(c) > 2 and c[2] == together]
    cost = alike or cost
    if not cost:
        return None
    return statistics.median(c[0] for c in cost), statistics.median(c[1] for c in cost)


def final_epochs(costs: list[tuple[float, float]], seeds: int, left_s: float, scale: float) -> int:
    """Epochs each finalist can train in ``left_s`` seconds. ``costs``: per finalist, the seconds of training (on
    the screen's images) and of evaluation per run and epoch; ``scale``: the full training set over the screen's;
    ``seeds`` runs each. Each finalist's runs also score validation and test once at the end (on one thread:
    counted as three evaluations). At least 1, at most ``MAX_FINAL_EPOCHS``."""
    per_epoch = seeds * sum(train * scale + evaluation for train, evaluation in costs)
    once = seeds * sum(3 * evaluation for _, evaluation in costs)
    return max(1, min(MAX_FINAL_EPOCHS, int((left_s - once) / per_epoch))) if per_epoch > 0 else 1


def plan_finals(costs: list[tuple[float, float]], seeds: int, left_s: float, scale: float) -> tuple[int, int]:
    """How many finalists, and how many epochs each: ``costs`` is per candidate, best first (``final_epochs``).
    ``FINALISTS`` of them for as many epochs as the time affords; where that reaches ``MAX_FINAL_EPOCHS``, the time
    left over goes to more candidates (up to ``MAX_FINALISTS``) at that length rather than being left unspent."""
    n = min(FINALISTS, len(costs))
    epochs = final_epochs(costs[:n], seeds, left_s, scale)
    while epochs == MAX_FINAL_EPOCHS and n < min(len(costs), MAX_FINALISTS):
        if final_epochs(costs[: n + 1], seeds, left_s, scale) < MAX_FINAL_EPOCHS:
            break
        n += 1
    return n, epochs


def _search_config(cfg: TimedConfig, space: Space, n_images: int) -> SearchConfig:
    val = min(10000, n_images // 6)
    screen = SCREEN_IMAGES if n_images - val > SCREEN_IMAGES else None
    return SearchConfig(
        space=space.source, n_trials=1_000_000, epochs=SCREEN_EPOCHS, runs=1, seed=cfg.seed, sampler="tpe",
        pruner="halving", val_size=val, train_size=screen, dataset=cfg.dataset, fuse=cfg.fuse,
        budgets=(cfg.max_params,) if cfg.max_params is not None else (),
    )  # fmt: skip


def _screen(
    study: optuna.Study, space: Space, scfg: SearchConfig, clock: Clock, cfg: TimedConfig, data_dir: Any,
    device: Any, threads: int | None, hooks: Hooks, store_url: str | None,
) -> None:  # fmt: skip
    from archsearch.study.artifacts import artifact_store

    left = cfg.screen_end - clock.elapsed()
    if left <= 0:
        return
    study.pruner = DeadlinePruner(study.pruner, clock, cfg.screen_end)
    data = scfg.load_data(data_dir, device)
    run_search(
        study, space, dataclasses.replace(scfg, timeout=left), data, device=device, threads=threads, hooks=hooks,
        artifact_store=artifact_store(store_url),
    )  # fmt: skip


def _plan_finals(
    study: optuna.Study, scfg: SearchConfig, clock: Clock, cfg: TimedConfig, n_images: int
) -> tuple[int, int]:
    """The finalists' number and epochs: planned once, when the finals start, and kept in the clock for a rerun."""
    from archsearch.study.finalists import pick_finalists

    planned, finalists = clock.record.get("final_epochs"), clock.record.get("finalists", FINALISTS)
    if isinstance(planned, int) and isinstance(finalists, int):
        return finalists, planned
    picked = pick_finalists(study.get_trials(deepcopy=False), MAX_FINALISTS, scfg.budgets)
    if not picked:
        raise UserError(f"--time {cfg.time_s:g}s trained no screen trial to the end; give the search more time")
    fallback = (cfg.screen_end / SCREEN_EPOCHS, 0.0)  # trials recorded before epoch timings were
    costs = [run_epoch_cost(t) or fallback for t in picked]
    screen_images = scfg.train_size or n_images - (scfg.val_size or 0)
    scale = (n_images - (scfg.val_size or 0)) / screen_images
    left = PLAN_MARGIN * (cfg.final_end - clock.elapsed())
    finalists, epochs = plan_finals(costs, FINAL_SEEDS, left, scale)
    clock.save(force=True, final_epochs=epochs, finalists=finalists)
    return finalists, epochs


def timed_search(
    cfg: TimedConfig,
    *,
    storage_url: str | None = None,
    study_name: str | None = None,
    device: Any = None,
    threads: int | None = None,
    data_dir: Any = None,
    hooks: Hooks | None = None,
    out: Any = None,
    started: float | None = None,
) -> dict[str, Any]:
    """The whole command: screen, finalists, the winner chosen by mean validation accuracy, and with ``out`` its
    export (``out/best``), ``summary.json`` and ``REPORT.md``. ``started`` (``time.monotonic()``): when the command
    began, so start-up counts against the budget. Rerun with the same arguments, it resumes inside the budget."""
    from pathlib import Path

    from archsearch.data import ensure_dataset
    from archsearch.results.files import check_writable
    from archsearch.study.artifacts import artifact_store
    from archsearch.study.search import check_config, default_fuse
    from archsearch.study.spaces import check_buildable
    from archsearch.study.storage import open_storage

    hooks = hooks or Hooks()
    space = timed_space(cfg)
    info = dataset_info(cfg.dataset)
    if out is not None:
        check_writable(Path(out))
    check_buildable(space, info.shape, info.num_classes, seed=cfg.seed)
    ensure_dataset(cfg.dataset, data_dir)
    n_images = len(load_dataset(data_dir, dataset=cfg.dataset).train_y)
    scfg = _search_config(cfg, space, n_images)
    if scfg.fuse is None:
        scfg = dataclasses.replace(scfg, fuse=default_fuse(scfg, space, device, threads))
    check_config(scfg, space)
    store = open_storage(storage_url)
    name = study_name or f"time-{space.name}-{cfg.dataset}-{cfg.time_s:g}s"
    study = open_search_study(store, name, space, scfg)
    clock = Clock(study, cfg.time_s, started)
    timed_hooks = _timed_hooks(hooks, clock)
    timed_hooks.on_progress(0, 0)
    _screen(study, space, scfg, clock, cfg, data_dir, device, threads, timed_hooks, storage_url)
    clock.save(force=True)
    finalists, epochs = _plan_finals(study, scfg, clock, cfg, n_images)
    final_cfg = FinalConfig(finalists, epochs, FINAL_SEEDS, cfg.seed, scfg.budgets)
    data = dataclasses.replace(scfg, train_size=None).load_data(data_dir, device)
    final = run_finalists(
        study, final_cfg, data, storage=store, device=device, threads=threads, hooks=timed_hooks,
        artifact_store=artifact_store(storage_url),
        pruner=DeadlinePruner(optuna.pruners.NopPruner(), clock, cfg.final_end),
    )  # fmt: skip
    clock.save(force=True)
    summary = timed_summary(study, final, cfg, scfg, space, clock)
    if out is not None:
        _write(summary, Path(out), storage_url, final.study_name, clock)
    clock.save(force=True)
    return summary


def _since(trial: FrozenTrial, origin: Any) -> float | None:
    end = trial.datetime_complete
    return round((end - origin).total_seconds(), 1) if end is not None and origin is not None else None


def _screen_rows(study: optuna.Study, origin: Any) -> list[dict[str, Any]]:
    """Every screen trial that trained: its last validation accuracy, epochs, state, and when it ended."""
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        r = TrialRecord.from_trial(t)
        if r.status != r.state or not r.curve:  # a sample the space rejected, or one that trained no epoch
            continue
        last = max(r.curve)
        rows.append({
            "trial": r.number, "spec": r.spec, "params": r.params, "val_acc": r.curve[last], "epochs": last,
            "state": r.state, "stopped": r.stopped, "end_s": _since(t, origin),
        })  # fmt: skip
    return rows


def _verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Welch's test of the winner's per-seed validation accuracies against the runner-up's."""
    if len(rows) < 2:
        return {"runner_up": None, "welch_p": None, "distinguishable": None}
    p = welch(rows[0]["val_per_seed"] or [], rows[1]["val_per_seed"] or [])
    return {"runner_up": rows[1], "welch_p": p, "distinguishable": None if p is None else p < ALPHA, "alpha": ALPHA}


def timed_summary(
    study: optuna.Study, final: optuna.Study, cfg: TimedConfig, scfg: SearchConfig, space: Space, clock: Clock
) -> dict[str, Any]:
    """What the command reports: the screen, the finalists (best mean validation accuracy first), the winner and
    whether the runner-up is distinguishable from it. ``best.test_acc`` is the mean over ``best.seeds``."""
    trials = study.get_trials(deepcopy=False)
    origin = min((t.datetime_start for t in trials if t.datetime_start is not None), default=None)
    rows = final_summary(final)["finalists"]
    by_number = {t.number: t for t in final.get_trials(deepcopy=False)}
    for row in rows:
        row["end_s"] = _since(by_number[row["trial"]], origin)
        row["hyperparams"] = study.trials[row["source_trial"]].params
    stopped = [t.number for t in final.get_trials(deepcopy=False, states=(TrialState.PRUNED,))]
    if not rows:
        raise UserError(f"--time {cfg.time_s:g}s ran out before a finalist finished training; give it more time")
    screen = _screen_rows(study, origin)
    states = [TrialRecord.from_trial(t).status for t in trials]
    return {
        "study": study.study_name,
        "final_study": final.study_name,
        "dataset": cfg.dataset,
        "space": space.name,
        "max_params": cfg.max_params,
        "time_budget_s": cfg.time_s,
        "seconds": round(clock.elapsed(), 1),
        "seed": cfg.seed,
        "screen": {
            "epochs": scfg.epochs,
            "train_images": scfg.train_size,
            "val_images": scfg.val_size,
            "fuse": scfg.fuse,
            "counts": {s: states.count(s) for s in sorted(set(states))},
            "trials": screen,
        },
        "final_epochs": clock.record.get("final_epochs"),
        "finalists": rows,
        "stopped_finalists": stopped,
        "best": rows[0],
        **_verdict(rows),
        "note": "Validation accuracy (held out of the training set) chose every model; test accuracy chose nothing.",
    }


def _write(summary: dict[str, Any], out: Any, storage_url: str | None, final_name: str, clock: Clock) -> None:
    """``out/best`` (the winner's export: its best seed on validation), ``summary.json``, ``REPORT.md`` and plots,
    written whole or not at all."""
    from archsearch.results.budget import write_budget_report
    from archsearch.results.files import output_dir
    from archsearch.study.export import export_trial

    with output_dir(out, replace=True) as tmp:
        exported = export_trial(storage_url, final_name, tmp / "best", summary["best"]["trial"])
        summary["best"]["exported_seed"] = exported["config"]["seed"]
        summary["seconds"] = round(clock.elapsed(), 1)
        write_budget_report(summary, tmp)
