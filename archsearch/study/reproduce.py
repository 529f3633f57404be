"""`archsearch reproduce`: the report's table as fixed (enqueued) Optuna trials, resumable.

One trial per (report row, loss). Its params are exactly ``{"row": i, "loss": "ce"}`` — what distinguishes the
trials — and everything else (protocol, seeds) belongs to the study, so a study holds one protocol only. Rerunning
the same command re-opens the study: finished trials are kept, trials of dead workers are failed and queued again,
and only what is missing is trained.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from archsearch.core import interrupts
from archsearch.core.errors import UserError
from archsearch.core.protocol import REPORT_FIRST_SEED, REPORT_PROTOCOL, REPORT_RUNS, Protocol
from archsearch.data import Dataset, ensure_dataset, load_dataset
from archsearch.results.compare import NOTES, compare
from archsearch.results.files import check_writable
from archsearch.results.reproduction import write_outputs
from archsearch.study import _optuna
from archsearch.study.artifacts import artifact_store
from archsearch.study.objective import Hooks, TrainingDiverged, run_trial
from archsearch.study.records import STUDY_ATTR, TrialRecord
from archsearch.study.report import ReportRow, report_protocol, report_rows
from archsearch.study.storage import (
    DEFAULT_STORAGE,
    claim_trial,
    fail_dead_trials,
    fail_stale_trials,
    open_storage,
    trial_key,
)
from archsearch.study.workers import default_workers, spawn_workers, wait_workers

__all__ = [
    "Hooks",
    "ReproduceConfig",
    "ReproduceResult",
    "Stats",
    "collect_results",
    "config_dict",
    "load_reproduce_study",
    "open_reproduce_study",
    "pending",
    "reproduce_study",
    "run_reproduce",
]


@dataclass(frozen=True)
class ReproduceConfig:
    indexes: tuple[int, ...] = tuple(range(17))
    losses: tuple[str, ...] = ("ce",)
    runs: int = REPORT_RUNS
    first_seed: int = REPORT_FIRST_SEED
    epochs: int = REPORT_PROTOCOL.epochs
    batch_size: int = REPORT_PROTOCOL.batch_size
    lr: float = REPORT_PROTOCOL.lr
    weight_decay: float = REPORT_PROTOCOL.weight_decay

    @property
    def seeds(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.runs))

    def protocol(self, loss: str) -> Protocol:
        return REPORT_PROTOCOL.with_(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay, loss=loss
        )

    def study_protocol(self) -> dict[str, Any]:
        """What must be the same for every trial of one study (the rows and losses may grow)."""
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "seeds": self.seeds,
        }

    def to_attrs(self) -> dict[str, Any]:
        """What the study records of its settings (its ``STUDY_ATTR`` attribute): the kind and the protocol."""
        return {"kind": "reproduce", "protocol": self.study_protocol()}

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> ReproduceConfig:
        """The settings a study recorded (:meth:`to_attrs`), with every report row and loss: what a worker trains."""
        p = attrs["protocol"]
        return cls(
            indexes=tuple(range(len(report_rows()))), losses=("ce", "kl"), runs=len(p["seeds"]),
            first_seed=p["seeds"][0], epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"],
            weight_decay=p["weight_decay"],
        )  # fmt: skip

    def deviations(self) -> list[str]:
        """Every change from the report's stated protocol, in words."""
        ref = report_protocol()
        out = []
        for key in ("epochs", "batch_size", "lr", "weight_decay", "runs"):
            if getattr(self, key) != ref[key]:
                out.append(f"{key} {getattr(self, key)} (report: {ref[key]})")
        if self.first_seed != ref["seed"]:
            out.append(f"first seed {self.first_seed} (report: {ref['seed']})")
        return out

    def default_study_name(self) -> str:
        ref = report_protocol()
        parts = [
            f"{short}{getattr(self, key)}"
            for key, short in (
                ("epochs", "e"),
                ("runs", "r"),
                ("batch_size", "b"),
                ("lr", "lr"),
                ("weight_decay", "wd"),
            )
            if getattr(self, key) != ref[key]
        ]
        if self.first_seed != ref["seed"]:
            parts.append(f"s{self.first_seed}")
        return "-".join(["report", *parts])


@dataclass
class Stats:
    trained: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


def open_reproduce_study(storage: Any, study_name: str, cfg: ReproduceConfig) -> optuna.Study:
    """Create or re-open the study, check it holds the same protocol, recover dead trials, queue missing ones."""
    study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize", load_if_exists=True)
    meta = study.user_attrs.get(STUDY_ATTR)
    wanted = cfg.to_attrs()
    if meta is None:
        study.set_user_attr(STUDY_ATTR, wanted)
        study.set_user_attr("deviations_from_report", cfg.deviations())
        study.set_user_attr("report_protocol", report_protocol())
    elif meta != wanted:
        raise UserError(
            f"study {study_name!r} holds another protocol ({meta.get('kind')}: {meta.get('protocol')}); "
            "choose another --study-name"
        )
    fail_dead_trials(study)
    _enqueue_missing(study, rows_needed(cfg))
    return study


def load_reproduce_study(storage: Any, study_name: str) -> tuple[optuna.Study, ReproduceConfig]:
    """Re-open a reproduce study as a worker: its protocol comes from the study; every queued row is fair game."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    meta = study.user_attrs.get(STUDY_ATTR)
    if not meta or meta.get("kind") != "reproduce":
        raise UserError(f"study {study_name!r} is not an archsearch reproduce study")
    cfg = ReproduceConfig.from_attrs(meta)
    requested = {_key(t) for t in study.get_trials(deepcopy=False)}
    dead = fail_dead_trials(study)
    if dead:  # queue again what dead workers left unfinished
        _enqueue_missing(study, sorted(k for k in requested if None not in k))
    return study, cfg


def _enqueue_missing(study: optuna.Study, wanted: Sequence[tuple[Any, Any]]) -> None:
    have = {
        _key(t)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING))
    }
    rows = report_rows()
    for i, loss in wanted:
        if (i, loss) not in have:
            study.enqueue_trial({"row": i, "loss": loss}, user_attrs={"report_row": _row_attrs(rows[i])})


def _key(trial: optuna.trial.FrozenTrial) -> tuple[Any, Any]:
    params = trial_key(trial)
    return params.get("row"), params.get("loss")


def _row_attrs(row: ReportRow) -> dict[str, Any]:
    return {
        "index": row.index,
        "label": row.label,
        "params": row.reported_params,
        "acc": row.reported_acc,
        "prec": row.reported_prec,
        "rec": row.reported_rec,
    }


def run_reproduce(
    study: optuna.Study,
    cfg: ReproduceConfig,
    data: Dataset,
    *,
    device: Any = None,
    threads: int | None = None,
    hooks: Hooks | None = None,
    artifact_store: Any = None,
) -> Stats:
    """Train the queued trials of the requested rows until none is left. Safe in several processes at once.

    Optuna's ``optimize``/``ask`` would pop the *oldest* queued trial, which may belong to a row this command did not
    ask for; so the trial is claimed here, the way Optuna claims one (WAITING -> RUNNING is atomic in the storage:
    of two workers only one wins), with Optuna's heartbeat running for RDB storages as ``optimize`` would.
    """
    stats = Stats()
    rows = report_rows()
    while (trial := _claim(study, cfg)) is not None:
        if _optuna.heartbeat_enabled(study):
            fail_stale_trials(study)
        with _optuna.heartbeat(study, trial):
            row = trial.suggest_int("row", 0, len(rows) - 1)
            loss = str(trial.suggest_categorical("loss", ["ce", "kl"]))
            try:
                value = run_trial(
                    trial, rows[row].spec, cfg.seeds, cfg.protocol(loss), data,
                    device=device, threads=threads, hooks=hooks, artifact_store=artifact_store,
                )  # fmt: skip
            except TrainingDiverged:
                study.tell(trial, state=TrialState.FAIL)
                stats.failed.append(trial.number)
                continue
            except BaseException:  # Ctrl-C and bugs: the trial is over either way; a rerun queues it again
                study.tell(trial, state=TrialState.FAIL)
                raise
        study.tell(trial, float(value))  # type: ignore[arg-type]
        stats.trained.append(trial.number)
        interrupts.check()
    return stats


def _claim(study: optuna.Study, cfg: ReproduceConfig) -> optuna.Trial | None:
    """Atomically take one queued trial of the requested rows (None when there is none left)."""
    for frozen in pending(study, cfg):
        if (trial := _optuna.try_claim(study, frozen)) is not None:
            claim_trial(trial)
            return trial
    return None


def collect_results(
    study_or_trials: optuna.Study | Sequence[optuna.trial.FrozenTrial], cfg: ReproduceConfig
) -> list[dict[str, Any]]:
    """One row per (report row, loss) that has a complete trial: reproduced mean ± std beside the reported values."""
    trials = (
        study_or_trials.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if isinstance(study_or_trials, optuna.Study)
        else [t for t in study_or_trials if t.state == TrialState.COMPLETE]
    )
    latest: dict[tuple[int, str], optuna.trial.FrozenTrial] = {}
    for t in trials:
        latest[(t.params["row"], t.params["loss"])] = t
    rows = report_rows()
    out = []
    for i in cfg.indexes:
        for loss in cfg.losses:
            if (i, loss) not in latest:
                continue
            r, row = TrialRecord.from_trial(latest[(i, loss)]), rows[i]
            test = r.split("test")
            if test is None:
                continue
            out.append(
                {
                    "index": i,
                    "label": row.label,
                    "spec": r.spec,
                    "loss": loss,
                    "trial": r.number,
                    "params": r.params,
                    "reported_params": row.reported_params,
                    "depth": r.depth,
                    "activation": r.activation,
                    "kind": r.kind,
                    "n_runs": len(test.per_seed["accuracy"]),
                    "seeds": r.seeds,
                    "acc_mean": test.mean["accuracy"],
                    "acc_std": test.std["accuracy"],
                    "prec_mean": test.mean["precision"],
                    "prec_std": test.std["precision"],
                    "rec_mean": test.mean["recall"],
                    "rec_std": test.std["recall"],
                    "f1_mean": test.mean["f1"],
                    "acc_per_seed": test.per_seed["accuracy"],
                    "reported_acc": row.reported_acc,
                    "reported_prec": row.reported_prec,
                    "reported_rec": row.reported_rec,
                    "acc_diff": test.mean["accuracy"] - row.reported_acc,
                    "seconds": r.seconds,
                }
            )
    return out


def pending(study: optuna.Study, cfg: ReproduceConfig) -> list[optuna.trial.FrozenTrial]:
    """Queued trials of the requested rows: what this run will train."""
    wanted = set(rows_needed(cfg))
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)) if _key(t) in wanted]


def config_dict(cfg: ReproduceConfig) -> dict[str, Any]:
    return {**asdict(cfg), "seeds": cfg.seeds, "deviations": cfg.deviations()}


def rows_needed(cfg: ReproduceConfig) -> Sequence[tuple[int, str]]:
    return [(i, loss) for i in cfg.indexes for loss in cfg.losses]


@dataclass
class ReproduceResult:
    """What ``reproduce`` did and found: reproduced rows beside reported, and the report's comparisons checked."""

    study: str
    meta: dict[str, Any]
    rows: list[dict[str, Any]]
    comparisons: list[dict[str, Any]]
    written: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "rows": self.rows, "comparisons": self.comparisons, "notes": list(NOTES)}


def reproduce_study(
    cfg: ReproduceConfig,
    *,
    storage_url: str | None = None,
    study_name: str | None = None,
    device: Any = None,
    threads: int | None = None,
    workers: int | None = None,
    data_dir: Path | None = None,
    out_dir: Path | None = None,
    hooks: Hooks | None = None,
) -> ReproduceResult:
    """The whole command: open (or resume) the study, train what is missing — in this process, or in ``workers``
    single-threaded worker processes (default: one per core on a CPU) — collect, compare, and write ``out_dir``.

    Everything that can be refused is refused before the study is touched: an unwritable ``out_dir``, missing data.
    """
    hooks = hooks or Hooks()
    if out_dir is not None:
        check_writable(out_dir)
    ensure_dataset(root=data_dir)  # missing data fails before the study is touched
    store = open_storage(storage_url)
    name = study_name or cfg.default_study_name()
    study = open_reproduce_study(store, name, cfg)
    todo = pending(study, cfg)
    if workers is None:
        workers = default_workers(device, threads, len(todo))
    hooks.on_progress(0, len(todo))
    stats = Stats()
    if todo and workers > 1:
        rows_arg = ",".join(map(str, cfg.indexes))
        procs = spawn_workers(workers, storage_url or DEFAULT_STORAGE, name, device=device, data_dir=data_dir,
                              models=rows_arg)  # fmt: skip
        wait_workers(procs, lambda: hooks.on_progress(len(todo) - len(pending(study, cfg)), len(todo)))
        trained_now = len(todo) - len(pending(study, cfg))
    elif todo:
        data = load_dataset(data_dir, device=device)
        finished = hooks.on_result

        def on_result(trial: optuna.Trial, result: Any) -> None:
            finished(trial, result)
            hooks.on_progress(len(todo) - len(pending(study, cfg)), len(todo))

        counting = dataclasses.replace(hooks, on_result=on_result)
        stats = run_reproduce(
            study, cfg, data, device=device, threads=threads, hooks=counting, artifact_store=artifact_store(storage_url)
        )
        trained_now = len(stats.trained)
    else:
        trained_now = 0
    rows = collect_results(study, cfg)
    comparisons = compare(rows)
    meta = {**config_dict(cfg), "study": name, "storage": storage_url or DEFAULT_STORAGE, "device": str(device),
            "trained_now": trained_now, "failed_now": len(stats.failed), "workers": workers}  # fmt: skip
    written = write_outputs(out_dir, rows, comparisons, meta) if out_dir is not None else []
    return ReproduceResult(name, meta, rows, comparisons, written)
