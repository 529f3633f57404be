"""`archsearch search`: open architecture spaces explored with Optuna's samplers and pruners.

The objective is mean accuracy on a held-out validation split of the training set (seeded, 10,000 images by
default); the trial trains on the rest. Test metrics are recorded on every trial for reporting only — no sampler or
pruner ever sees them. ``--n-trials`` is the study's target of finished (complete or pruned) trials, so rerunning the
same command after a crash continues where it stopped instead of starting over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from archsearch.core import interrupts
from archsearch.core.errors import UserError
from archsearch.core.protocol import REPORT_PROTOCOL
from archsearch.data import DEFAULT_DATASET, Dataset, dataset_info, ensure_dataset, load_dataset
from archsearch.engine import usable_cores
from archsearch.models import count_params
from archsearch.study import _optuna
from archsearch.study.artifacts import artifact_store
from archsearch.study.finalists import DEFAULT_BUDGETS, FinalConfig, final_summary, run_finalists
from archsearch.study.groups import run_group
from archsearch.study.objective import Hooks, TrainingDiverged, run_trial
from archsearch.study.records import STUDY_ATTR, TrialRecord, best_under
from archsearch.study.report import report_rows
from archsearch.study.sampling import SlotSeededSampler
from archsearch.study.spaces import Space, SpaceError, check_buildable, parse_space, spec_or_reason
from archsearch.study.storage import DEFAULT_STORAGE, mark_interrupted, open_storage, retry_lost_trials
from archsearch.study.workers import spawn_workers, wait_workers

__all__ = [
    "PRUNERS",
    "SAMPLERS",
    "Duplicate",
    "SearchConfig",
    "check_config",
    "finished_trials",
    "load_search_study",
    "open_search_study",
    "run_search",
    "search_settings",
    "search_study",
    "search_summary",
]

SAMPLERS = ("tpe", "random", "grid", "cmaes", "nsga2")
PRUNERS = ("median", "hyperband", "halving", "none")
SPACE_ATTR = "archsearch:space"
RUN_ATTR = "archsearch:run"
OBJECTIVES = {"accuracy": optuna.study.StudyDirection.MAXIMIZE, "params": optuna.study.StudyDirection.MINIMIZE}


@dataclass(frozen=True)
class SearchConfig:
    space: str
    n_trials: int = 20
    timeout: float | None = None
    epochs: int = 10
    runs: int = 1
    seed: int = 42
    sampler: str = "tpe"
    pruner: str = "median"
    objectives: tuple[str, ...] = ("accuracy",)
    val_size: int | None = 10000  # None: a sixth of the training set, at most 10,000 (search_study decides)
    train_size: int | None = None  # train on this many of the other images (a cheaper, lower-fidelity screen)
    dataset: str = DEFAULT_DATASET
    include_report: bool = False
    budgets: tuple[int, ...] = DEFAULT_BUDGETS
    fuse: int | None = 1  # trials of one architecture trained together (study/groups.py); None: default_fuse's

    @property
    def seeds(self) -> list[int]:
        """Every trial trains the same seeds: architectures are compared on common random numbers."""
        return list(range(self.seed, self.seed + self.runs))

    def load_data(self, data_dir: Any, device: Any) -> Dataset:
        """The search's data: the validation split (seeded with ``seed``), the training images, the test set."""
        if self.val_size is None:
            raise ValueError("the validation size is decided by search_study (val_size None)")
        return load_dataset(
            data_dir, dataset=self.dataset, val_size=self.val_size, split_seed=self.seed, train_size=self.train_size,
            device=device,
        )  # fmt: skip

    def to_attrs(self, space: Space) -> dict[str, Any]:
        """What the study records of its settings (its ``STUDY_ATTR`` attribute): what must stay the same across
        reruns of one study. How it runs (trials, sampler, pruner: :meth:`run_attrs`) may change between reruns."""
        return {
            "kind": "search",
            "space": space.name,
            "space_sha256": hashlib.sha256(space.text.encode()).hexdigest()[:16],  # an edited space is another study
            "space_kind": space.kind,
            "objectives": list(self.objectives),
            "epochs": self.epochs,
            "seeds": self.seeds,
            **({"dataset": self.dataset} if self.dataset != DEFAULT_DATASET else {}),  # older studies: Fashion-MNIST
            "val_size": self.val_size,
            **({"train_size": self.train_size} if self.train_size is not None else {}),
            "split_seed": self.seed,
        }

    def run_attrs(self) -> dict[str, Any]:
        """What a worker joining from another machine needs to run the same search (may change between reruns)."""
        run = {k: getattr(self, k) for k in ("n_trials", "timeout", "sampler", "pruner", "runs", "fuse")}
        return {**run, "budgets": list(self.budgets)}

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], run: Mapping[str, Any], source: str) -> SearchConfig:
        """The settings a study recorded (:meth:`to_attrs` and :meth:`run_attrs`; ``source``: where its space came
        from)."""
        return cls(
            space=source, n_trials=run["n_trials"], timeout=run["timeout"], epochs=attrs["epochs"],
            runs=len(attrs["seeds"]), seed=attrs["split_seed"], sampler=run["sampler"], pruner=run["pruner"],
            objectives=tuple(attrs["objectives"]), val_size=attrs["val_size"], train_size=attrs.get("train_size"),
            dataset=attrs.get("dataset", DEFAULT_DATASET), fuse=run.get("fuse", 1),
            budgets=tuple(run.get("budgets", DEFAULT_BUDGETS)),
        )  # fmt: skip


def _sampler(cfg: SearchConfig, space: Space) -> optuna.samplers.BaseSampler:
    """The search's sampler, seeded per trial slot (:mod:`archsearch.study.sampling`): a resumed search or a joining
    worker continues the seeded sequence instead of starting it over."""
    make = _sampler_maker(cfg, space)
    make(cfg.seed)  # a bad combination is refused now, not at the first trial
    return SlotSeededSampler(make, cfg.seed)


def _sampler_maker(cfg: SearchConfig, space: Space) -> Callable[[int], optuna.samplers.BaseSampler]:
    multi = len(cfg.objectives) > 1
    if cfg.sampler == "tpe":

        def tpe(seed: int) -> optuna.samplers.BaseSampler:
            with warnings.catch_warnings():  # multivariate/group TPE is "experimental" but what conditional spaces need
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)

        return tpe
    if cfg.sampler == "random":
        return lambda seed: optuna.samplers.RandomSampler(seed=seed)
    if cfg.sampler == "grid":
        grid = space.grid()
        return lambda seed: optuna.samplers.GridSampler(grid, seed=seed)
    if cfg.sampler == "cmaes":
        if multi:
            raise UserError("the cmaes sampler is single-objective; use nsga2 or tpe with --objectives accuracy,params")
        # CMA-ES handles the numeric parameters; categorical and conditional ones fall back to TPE.
        return lambda seed: optuna.samplers.CmaEsSampler(
            seed=seed, independent_sampler=optuna.samplers.TPESampler(seed=seed)
        )
    if cfg.sampler == "nsga2":
        return lambda seed: optuna.samplers.NSGAIISampler(seed=seed)
    raise UserError(f"unknown sampler {cfg.sampler!r}; choose one of {', '.join(SAMPLERS)}")


def _pruner(cfg: SearchConfig) -> optuna.pruners.BasePruner:
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, cfg.epochs // 5))
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=cfg.epochs)
    if cfg.pruner == "halving":  # successive halving over epochs: rungs at 1, 3, 9, … epochs keep the best third
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if cfg.pruner == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"unknown pruner {cfg.pruner!r}; choose one of {', '.join(PRUNERS)}")


def _open_recipe(space: Space) -> bool:
    """Whether the space samples any of the recipe beyond the batch size (what the members of a group differ in)."""
    return any(key != "batch_size" and param.fixed is None for key, param in space.recipe.items())


def default_fuse(cfg: SearchConfig, space: Space, device: Any, threads: int | None) -> int:
    """``--fuse`` when not given: on a CPU, a CNN space with an open recipe trains one trial per thread together
    (up to 4): the plain layout spreads them over the threads (benchmarks/bench_search.py: per model, 1.2-1.6x one
    trial on both threads); elsewhere one trial at a time (on a GPU a group trains as one fused model, a recipe per
    run, which bench_search.py --device cuda --trials has not yet measured)."""
    cpu = getattr(device, "type", str(device or "cpu")) == "cpu"
    groupable = len(cfg.objectives) == 1 and cfg.sampler != "grid" and _open_recipe(space)
    if not cpu or not groupable or space.kind == "mlp":  # cnn and resnet spaces build CNNs
        return 1
    return max(1, min(4, threads or usable_cores()))


def check_config(cfg: SearchConfig, space: Space) -> None:
    """Refuse a bad configuration before any storage is opened (nothing half-written)."""
    for o in cfg.objectives:
        if o not in OBJECTIVES:
            raise UserError(f"unknown objective {o!r}; use accuracy or accuracy,params")
    if cfg.objectives[0] != "accuracy" or len(set(cfg.objectives)) != len(cfg.objectives):
        raise UserError("objectives must be 'accuracy' or 'accuracy,params'")
    fuse = cfg.fuse or 1
    if fuse > 1 and len(cfg.objectives) > 1:
        raise UserError("--fuse trains single-objective searches (Optuna cannot prune multi-objective trials)")
    if fuse > 1 and cfg.sampler == "grid":
        raise UserError("--fuse needs a sampler that fills in a queued trial's recipe; the grid sampler does not")
    if fuse > 1 and not _open_recipe(space):
        raise UserError(f"--fuse trains trials that differ in their recipe; space {space.name} opens none ([recipe])")
    _sampler(cfg, space)
    _pruner(cfg)


def open_search_study(storage: Any, study_name: str, space: Space, cfg: SearchConfig) -> optuna.Study:
    """Create or re-open a search study; refuse one that was made with another space or protocol."""
    check_config(cfg, space)
    if len(cfg.objectives) > 1 and cfg.pruner != "none":
        cfg = SearchConfig(**{**asdict(cfg), "pruner": "none"})  # Optuna cannot prune multi-objective trials
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        directions=[OBJECTIVES[o] for o in cfg.objectives],
        sampler=_sampler(cfg, space),
        pruner=_pruner(cfg),
        load_if_exists=True,
    )
    meta, wanted = study.user_attrs.get(STUDY_ATTR), cfg.to_attrs(space)
    if meta is None:
        study.set_user_attr(STUDY_ATTR, wanted)  # the space by name and hash; its text where workers read it:
        _optuna.set_study_system_attr(study, SPACE_ATTR, {"text": space.text, "source": space.source})
    elif meta.get("dataset", DEFAULT_DATASET) != cfg.dataset:
        raise UserError(
            f"study {study_name!r} trains on {meta.get('dataset', DEFAULT_DATASET)}, not {cfg.dataset}: a study "
            "cannot mix datasets; choose another --study-name"
        )
    elif meta != wanted:
        raise UserError(f"study {study_name!r} was made with other settings ({meta}); choose another --study-name")
    study.set_user_attr(RUN_ATTR, cfg.run_attrs())
    retry_lost_trials(study)  # an interrupted or dead worker's trial is tried again with the same parameters
    if cfg.include_report:  # those of the report's architectures that fit the space and the dataset's images
        info = dataset_info(cfg.dataset)
        for row in report_rows():
            params = space.report_params(row, info.shape, info.num_classes)
            if params is not None:
                study.enqueue_trial(params, user_attrs={"report_row": row.index}, skip_if_exists=True)
    return study


def search_settings(study: optuna.Study) -> tuple[Space, SearchConfig]:
    """The space and settings a search study keeps (what :func:`open_search_study` recorded)."""
    meta, run = study.user_attrs.get(STUDY_ATTR), study.user_attrs.get(RUN_ATTR)
    kept = _optuna.study_system_attr(study, SPACE_ATTR) or study.user_attrs.get(SPACE_ATTR)  # older: a user attr
    if not meta or meta.get("kind") != "search" or not run or not kept:
        raise UserError(f"study {study.study_name!r} is not an archsearch search study")
    return parse_space(kept["text"], kept["source"], meta["space"]), SearchConfig.from_attrs(meta, run, kept["source"])


def load_search_study(storage: Any, study_name: str) -> tuple[optuna.Study, Space, SearchConfig]:
    """Re-open a search study as a worker: the space, sampler and pruner are rebuilt from what the study keeps."""
    space, cfg = search_settings(optuna.load_study(study_name=study_name, storage=storage))
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=_sampler(cfg, space), pruner=_pruner(cfg))
    retry_lost_trials(study)
    return study, space, cfg


def finished_trials(study: optuna.Study) -> int:
    """Trials that count toward ``--n-trials``: trained to the end or pruned while training. A sample the space could
    not build (``rejected``) costs no training and does not count."""
    return sum(
        1
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if "rejected" not in t.user_attrs
    )


class Duplicate(RuntimeError):
    """The sampler proposed the parameters of a trial the study already has (a small space, mostly): the trial is
    failed, trains nothing, counts for nothing, and the next trial's sampler draws anew."""


def _duplicate_of(study: optuna.Study, trial: optuna.Trial) -> int | None:
    """The number of a finished or running trial with ``trial``'s parameters, unless ``trial`` was queued on purpose
    (a report row, a retried trial)."""
    if "fixed_params" in _optuna.system_attrs(trial):
        return None
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    for other in study.get_trials(deepcopy=False, states=states):
        if other.number != trial.number and other.params == trial.params and "rejected" not in other.user_attrs:
            return other.number
    return None


# A space that cannot build what it samples, this many times in a row, is given up on rather than sampled forever.
MAX_UNCOUNTED_IN_A_ROW = 100


def _objective(
    study: optuna.Study, space: Space, cfg: SearchConfig, data: Dataset, train: Callable[..., Any]
) -> Callable[[optuna.Trial], float | tuple[float, ...]]:
    multi = len(cfg.objectives) > 1

    def objective(trial: optuna.Trial) -> float | tuple[float, ...]:
        try:
            spec, recipe, reason = spec_or_reason(space, trial, data.info.shape, data.info.num_classes)
            if spec is None or reason is not None:
                trial.set_user_attr("rejected", reason)
                if spec is not None:
                    trial.set_user_attr("spec", str(spec))
                    trial.set_user_attr("params", count_params(spec, data.info.shape, data.info.num_classes))
                if multi:  # multi-objective trials cannot be pruned: mark them failed instead, with the reason
                    raise SpaceError(reason or "rejected")
                raise optuna.TrialPruned(reason)  # pruned: tells TPE that this corner of the space is no good
            if (same := _duplicate_of(study, trial)) is not None:
                trial.set_user_attr("duplicate_of", same)
                raise Duplicate(f"the parameters of trial {same}")
            return train(trial, spec, space.protocol(REPORT_PROTOCOL.with_(epochs=cfg.epochs), recipe))
        except KeyboardInterrupt:
            mark_interrupted(trial)
            raise

    return objective


def _run_groups(
    study: optuna.Study, space: Space, cfg: SearchConfig, data: Dataset, device: Any, threads: int | None,
    hooks: Hooks | None, artifact_store: Any, after_trial: Callable[[optuna.trial.FrozenTrial], bool],
) -> None:  # fmt: skip
    """Trials in groups of ``cfg.fuse`` (archsearch.study.groups) until ``after_trial`` says stop or time is up."""
    deadline = time.monotonic() + cfg.timeout if cfg.timeout is not None else math.inf
    while time.monotonic() < deadline:
        before = len(study.get_trials(deepcopy=False))
        k = max(1, min(cfg.fuse or 1, cfg.n_trials - finished_trials(study)))
        run_group(study, space, data, fuse=k, epochs=cfg.epochs, seeds=cfg.seeds, device=device, threads=threads,
                  hooks=hooks, artifact_store=artifact_store)  # fmt: skip
        new = [t for t in study.get_trials(deepcopy=False)[before:] if t.state.is_finished()]
        if any([after_trial(t) for t in new]):  # every trial seen (a list, not a short-circuit)
            return


def run_search(
    study: optuna.Study,
    space: Space,
    cfg: SearchConfig,
    data: Dataset,
    *,
    device: Any = None,
    threads: int | None = None,
    hooks: Hooks | None = None,
    callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = (),
    artifact_store: Any = None,
) -> int:
    """Run trials until the study has ``cfg.n_trials`` finished ones (or the timeout); returns how many trained now
    (samples the space rejected, and duplicates, train nothing)."""
    if "val" not in data.evals:
        raise ValueError("search data needs a validation split: the objective must never see the test set")
    multi = len(cfg.objectives) > 1

    def train(trial: optuna.Trial, spec: Any, protocol: Any) -> float | tuple[float, ...]:
        return run_trial(
            trial, spec, cfg.seeds, protocol, data, device=device, threads=threads, objectives=cfg.objectives,
            prune=not multi, hooks=hooks, artifact_store=artifact_store,
        )  # fmt: skip

    if finished_trials(study) >= cfg.n_trials:
        return 0
    before = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    uncounted: list[optuna.trial.FrozenTrial] = []

    def after_trial(trial: optuna.trial.FrozenTrial) -> bool:
        """Note a finished trial (the callbacks see it too); whether the search is done."""
        interrupts.check()
        counted = trial.state in (TrialState.COMPLETE, TrialState.PRUNED) and "rejected" not in trial.user_attrs
        uncounted[:] = [] if counted else [*uncounted, trial]
        for callback in callbacks:
            callback(study, trial)
        return finished_trials(study) >= cfg.n_trials or len(uncounted) >= MAX_UNCOUNTED_IN_A_ROW

    def stop_when_done(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if after_trial(trial):
            study.stop()

    if (cfg.fuse or 1) > 1:
        _run_groups(study, space, cfg, data, device, threads, hooks, artifact_store, after_trial)
    else:
        study.optimize(
            _objective(study, space, cfg, data, train),
            timeout=cfg.timeout,
            catch=(TrainingDiverged, SpaceError, Duplicate),
            callbacks=[stop_when_done],
            gc_after_trial=True,
        )
    if len(uncounted) >= MAX_UNCOUNTED_IN_A_ROW:
        last = uncounted[-1].user_attrs
        why = last.get("rejected") or f"the parameters of trial {last.get('duplicate_of')}"
        raise UserError(
            f"the space gave {len(uncounted)} samples in a row that cannot be trained or were done already (last: "
            f"{why}); widen the space or relax its constraints"
        )
    ran = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished() and t.number not in before]
    return sum(1 for t in ran if "rejected" not in t.user_attrs and "duplicate_of" not in t.user_attrs)


def _trial_row(r: TrialRecord) -> dict[str, Any]:
    accs = r.accuracies()
    return {
        "trial": r.number,
        "spec": r.spec,
        "params": r.params,
        **{k: v for k, v in accs.items() if not k.endswith("per_seed")},
        "n_runs": len(accs["test_per_seed"] or []) or None,  # how many runs the std is over
        "report_row": r.report_row,
    }


def search_summary(study: optuna.Study) -> dict[str, Any]:
    """Best trial (or Pareto front), the best under each parameter budget, and the report's rows to compare with.
    Validation accuracy chose the models; test accuracy is reported alongside, never used."""
    records = [TrialRecord.from_trial(t) for t in study.get_trials(deepcopy=False)]
    complete = [r for r in records if r.state == "complete"]
    states = [r.status for r in records]
    rows = [_trial_row(r) for r in sorted(complete, key=lambda r: -r.accuracy)]
    best = rows[0] if rows else None
    front_records = [TrialRecord.from_trial(t) for t in study.best_trials] if complete else []
    front = sorted((_trial_row(r) for r in front_records), key=lambda r: r["params"])
    report = report_rows()
    best_report = max(report, key=lambda r: r.reported_acc)

    def budget_best(budget: int) -> dict[str, Any] | None:
        found = best_under(complete, budget)
        return _trial_row(found) if found is not None else None

    budgets = (study.user_attrs.get(RUN_ATTR) or {}).get("budgets") or DEFAULT_BUDGETS

    nearest = None
    if best is not None:
        near = min(report, key=lambda r: abs(math.log(r.reported_params) - math.log(best["params"])))
        nearest = {"index": near.index, "label": near.label, "params": near.reported_params, "acc": near.reported_acc}
    return {
        "study": study.study_name,
        "meta": study.user_attrs.get(STUDY_ATTR),
        "counts": {name: states.count(name) for name in dict.fromkeys(sorted(states))},
        "best": best,
        "pareto_front": front if len(study.directions) > 1 else [],
        "best_under": {str(b): budget_best(b) for b in budgets},
        "report_best": {
            "index": best_report.index,
            "params": best_report.reported_params,
            "acc": best_report.reported_acc,
        },
        "report_nearest_params": nearest,
        "top": rows[:10],
        "note": "val_acc (validation split of the training set) chose the models; test_acc is reported only.",
    }


def search_study(
    cfg: SearchConfig,
    space: Space,
    *,
    storage_url: str | None = None,
    study_name: str | None = None,
    device: Any = None,
    threads: int | None = None,
    workers: int = 1,
    data_dir: Any = None,
    hooks: Hooks | None = None,
    final: FinalConfig | None = None,
) -> dict[str, Any]:
    """The whole command: open (or resume) the study, run trials until it has ``cfg.n_trials`` finished ones — in
    this process, or in ``workers`` worker processes —, retrain the ``final`` finalists in this process, and
    summarise it all (:func:`search_summary`, ``ran_now``, and ``final``: :func:`final_summary`)."""
    hooks = hooks or Hooks()
    if cfg.fuse is None:
        cfg = dataclasses.replace(cfg, fuse=default_fuse(cfg, space, device, threads))
    check_config(cfg, space)
    info = dataset_info(cfg.dataset)
    check_buildable(space, info.shape, info.num_classes, seed=cfg.seed)  # said once, before the study is touched
    ensure_dataset(cfg.dataset, data_dir)  # missing data fails before the study is touched
    if cfg.val_size is None:  # a sixth of the training images (Fashion-MNIST's 60,000: 10,000), at most 10,000
        n = len(load_dataset(data_dir, dataset=cfg.dataset).train_y)
        cfg = dataclasses.replace(cfg, val_size=min(10000, n // 6))
    store = open_storage(storage_url)
    name = study_name or f"search-{space.name}"
    study = open_search_study(store, name, space, cfg)
    done0 = finished_trials(study)

    def tick(*_: Any) -> None:
        hooks.on_progress(min(finished_trials(study), cfg.n_trials), cfg.n_trials)

    tick()
    data = None
    if workers > 1:
        procs = spawn_workers(workers, storage_url or DEFAULT_STORAGE, name, device=device, data_dir=data_dir)
        wait_workers(procs, tick)
        ran = finished_trials(study) - done0
    else:
        data = cfg.load_data(data_dir, device)
        ran = run_search(
            study, space, cfg, data, device=device, threads=threads, hooks=hooks, callbacks=[tick],
            artifact_store=artifact_store(storage_url),
        )  # fmt: skip
    summary = search_summary(study)
    summary["ran_now"] = ran
    if final is not None:  # at full fidelity: every training image, however many the screen used
        if data is None or cfg.train_size is not None:
            data = dataclasses.replace(cfg, train_size=None).load_data(data_dir, device)
        finals = run_finalists(
            study, final, data, storage=store, device=device, threads=threads, hooks=hooks,
            artifact_store=artifact_store(storage_url),
        )  # fmt: skip
        summary["final"] = final_summary(finals)
    return summary
