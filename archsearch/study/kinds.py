"""The kinds of study a worker can join, by the ``kind`` each study records: what ``archsearch worker`` does with
a reproduce study and with a search study (:mod:`archsearch.study.workers` is only the process pool)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna

from archsearch.core.errors import UserError
from archsearch.data import ensure_dataset, load_dataset
from archsearch.study import reproduce, search
from archsearch.study.artifacts import artifact_store as make_store
from archsearch.study.objective import Hooks
from archsearch.study.records import STUDY_ATTR
from archsearch.study.storage import load_existing_study, open_storage

__all__ = ["STUDY_KINDS", "run_worker"]


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


STUDY_KINDS: dict[str, Callable[[Join], dict[str, Any]]] = {"reproduce": _join_reproduce, "search": _join_search}


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
    probe: optuna.Study = load_existing_study(storage_url, study_name)
    kind = (probe.user_attrs.get(STUDY_ATTR) or {}).get("kind")
    if models is not None and kind != "reproduce":
        raise UserError(f"--models picks report rows; study {study_name!r} is not a reproduce study")
    if kind not in STUDY_KINDS:
        raise UserError(f"study {study_name!r} was not made by archsearch reproduce or search")
    job = Join(open_storage(storage_url), study_name, device, data_dir, hooks, models, threads,
               make_store(storage_url))  # fmt: skip
    return {"study": study_name, "kind": kind, **STUDY_KINDS[kind](job)}
