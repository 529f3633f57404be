"""The registry of study kinds drives these tests: every kind is recognised from what its study records, reads its
settings back as they were written, reports on a study with no trials yet, and is joined by workers or refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import optuna
import pytest

from archsearch.core.errors import UserError
from archsearch.study.finalists import FinalConfig
from archsearch.study.kinds import STUDY_KINDS, StudyKind, kind_of, run_worker
from archsearch.study.records import STUDY_ATTR
from archsearch.study.reproduce import ReproduceConfig, open_reproduce_study
from archsearch.study.search import SearchConfig, open_search_study
from archsearch.study.spaces import load_space
from archsearch.study.storage import open_storage

SETTINGS: dict[str, Any] = {
    "reproduce": ReproduceConfig(indexes=(0, 3), epochs=2, runs=3, first_seed=7, lr=1e-3),
    "search": SearchConfig(
        space="mlp",
        n_trials=3,
        epochs=2,
        runs=2,
        seed=5,
        sampler="random",
        pruner="none",
        val_size=500,
        fuse=1,
        budgets=(1000, 5000),
    ),
    "final": FinalConfig(finalists=2, epochs=4, runs=2, first_seed=3, budgets=(1000,)),
}


def make_study(kind: str, url: str) -> optuna.Study:
    """A study of ``kind`` as its command opens it, before any trial trains."""
    storage = open_storage(url)
    if kind == "reproduce":
        return open_reproduce_study(storage, "s", SETTINGS[kind])
    if kind == "search":
        return open_search_study(storage, "s", load_space("mlp"), SETTINGS[kind])
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    study.set_user_attr(STUDY_ATTR, SETTINGS[kind].to_attrs("search-mlp"))  # as run_finalists records it
    return study


def test_every_kind_has_settings_here() -> None:
    """A kind added to the registry without settings here fails this test."""
    assert set(SETTINGS) == set(STUDY_KINDS)


@pytest.mark.parametrize("kind", sorted(STUDY_KINDS))
def test_a_study_reads_back_the_settings_it_was_made_with(kind: str, tmp_path: Path) -> None:
    study = make_study(kind, f"sqlite:///{tmp_path}/s.db")
    found = kind_of(optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.db"))
    assert isinstance(found, StudyKind) and found is STUDY_KINDS[kind]
    wanted, read = SETTINGS[kind], found.config(study)
    if kind == "reproduce":  # the study keeps the protocol; its workers take every row and loss
        assert read.study_protocol() == wanted.study_protocol() and read.indexes == tuple(range(17))
    elif kind == "search":  # the space is kept whole, by its text and where it came from
        assert read == dataclasses.replace(wanted, space=load_space("mlp").source)
    else:
        assert read == wanted


@pytest.mark.parametrize("kind", sorted(STUDY_KINDS))
def test_every_kind_reports_on_a_study_with_no_trials_yet(kind: str, tmp_path: Path) -> None:
    summary = STUDY_KINDS[kind].summary(make_study(kind, f"sqlite:///{tmp_path}/s.db"))
    assert summary["study"] == "s" and summary["meta"]["kind"] == kind


def test_a_study_archsearch_did_not_make_has_no_kind() -> None:
    study = optuna.create_study()
    assert kind_of(study) is None
    study.set_user_attr(STUDY_ATTR, {"kind": "something else"})
    assert kind_of(study) is None


@pytest.mark.parametrize("kind", [k for k, v in sorted(STUDY_KINDS.items()) if v.join is None] + ["none"])
def test_a_worker_refuses_a_study_it_cannot_join_in_one_line(kind: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    if kind == "none":
        optuna.create_study(storage=url, study_name="s")
    else:
        make_study(kind, url)
    with pytest.raises(UserError) as info:
        run_worker(url, "s", device="cpu", data_dir=tmp_path, hooks=None)
    message = str(info.value)
    assert "\n" not in message and "workers join studies of archsearch reproduce or archsearch search" in message
    assert optuna.load_study(study_name="s", storage=url).get_trials() == []
