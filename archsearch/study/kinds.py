"""The kinds of study archsearch makes, as data: each study records its ``kind`` and settings (``STUDY_ATTR``), and
:data:`STUDY_KINDS` says, per kind, which command makes it, which split ranks its trials, how its settings are read
back (its config's ``from_attrs``), what it reports, and how ``archsearch worker`` joins it
(:mod:`archsearch.study.workers` is only the process pool). Readers ask :func:`kind_of` rather than the raw
attribute."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna

from archsearch.core.errors import UserError
from archsearch.data import ensure_dataset, load_dataset
from archsearch.study import finalists, reproduce, search
from archsearch.study.artifacts import artifact_store as make_store
from archsearch.study.objective import Hooks
from archsearch.study.records import STUDY_ATTR
from archsearch.study.storage import load_existing_study, open_storage

__all__ = ["FINAL", "REPRODUCE", "SEARCH", "STUDY_KINDS", "StudyKind", "kind_of", "run_worker"]


@dataclasses.dataclass(frozen=True)
class Join:
    """How a worker takes part in a study: its storage, name, device, data and options."""

    storage: Any
    study_name: str
    device: Any
    data_dir: Path | None
    hooks: Hooks | None
    models: Sequence[int] | None
    threads: int | None
    artifact_store: Any


def _join_reproduce(job: Join) -> dict[str, Any]:
    ensure_dataset(root=job.data_dir)  # the report's Fashion-MNIST, checked before the study is touched
    study, cfg = reproduce.load_reproduce_study(job.storage, job.study_name)
    if job.models is not None:
        cfg = dataclasses.replace(cfg, indexes=tuple(job.models))
    data = load_dataset(job.data_dir, device=job.device)
    stats = reproduce.run_reproduce(
        study, cfg, data, device=job.device, threads=job.threads, hooks=job.hooks, artifact_store=job.artifact_store
    )
    return {"trained": len(stats.trained), "failed": len(stats.failed)}


def _join_search(job: Join) -> dict[str, Any]:
    study, space, cfg = search.load_search_study(job.storage, job.study_name)
    data = cfg.load_data(job.data_dir, job.device)
    ran = search.run_search(
        study, space, cfg, data, device=job.device, threads=job.threads, hooks=job.hooks,
        artifact_store=job.artifact_store,
    )  # fmt: skip
    return {"trained": ran}


def _attrs(study: optuna.Study) -> Mapping[str, Any]:
    attrs: Mapping[str, Any] = study.user_attrs[STUDY_ATTR]
    return attrs


def _reproduce_config(study: optuna.Study) -> reproduce.ReproduceConfig:
    return reproduce.ReproduceConfig.from_attrs(_attrs(study))


def _search_config(study: optuna.Study) -> search.SearchConfig:
    return search.search_settings(study)[1]


def _final_config(study: optuna.Study) -> finalists.FinalConfig:
    return finalists.FinalConfig.from_attrs(_attrs(study))


def _reproduce_summary(study: optuna.Study) -> dict[str, Any]:
    rows = reproduce.collect_results(study, _reproduce_config(study))
    return {"study": study.study_name, "meta": dict(_attrs(study)), "rows": rows}


@dataclasses.dataclass(frozen=True)
class StudyKind:
    """One kind of study: the command that makes it, the split that ranks its trials (``test`` for the report's
    protocol, which has no validation split; ``val`` where models are chosen), its settings read back from the study,
    what it reports, and how a worker takes part (None: no worker joins it; its command trains it)."""

    name: str
    command: str
    monitor: str
    config: Callable[[optuna.Study], Any]
    summary: Callable[[optuna.Study], dict[str, Any]]
    join: Callable[[Join], dict[str, Any]] | None = None


REPRODUCE = StudyKind("reproduce", "archsearch reproduce", "test", _reproduce_config, _reproduce_summary,
                      _join_reproduce)  # fmt: skip
SEARCH = StudyKind("search", "archsearch search", "val", _search_config, search.search_summary, _join_search)
FINAL = StudyKind("final", "archsearch search --finalists", "val", _final_config, finalists.final_summary)
STUDY_KINDS: dict[str, StudyKind] = {kind.name: kind for kind in (REPRODUCE, SEARCH, FINAL)}


def kind_of(study: optuna.Study) -> StudyKind | None:
    """The kind ``study`` records, or None for a study archsearch did not make."""
    attrs = study.user_attrs.get(STUDY_ATTR)
    return STUDY_KINDS.get(str(attrs.get("kind"))) if isinstance(attrs, Mapping) else None


def run_worker(
    storage_url: str | None,
    study_name: str,
    *,
    device: Any,
    data_dir: Path | None,
    hooks: Hooks | None,
    models: Sequence[int] | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Join a study (reproduce or search) and train until it has nothing left to do."""
    kind = kind_of(load_existing_study(storage_url, study_name))
    if models is not None and (kind is None or kind.name != "reproduce"):
        raise UserError(f"--models picks report rows; study {study_name!r} is not a reproduce study")
    if kind is None or kind.join is None:
        joinable = " or ".join(k.command for k in STUDY_KINDS.values() if k.join is not None)
        made = f"was made by {kind.command}, which trains it itself" if kind else "was not made by archsearch"
        raise UserError(f"study {study_name!r} {made}; workers join studies of {joinable}")
    job = Join(open_storage(storage_url), study_name, device, data_dir, hooks, models, threads,
               make_store(storage_url))  # fmt: skip
    return {"study": study_name, "kind": kind.name, **kind.join(job)}
