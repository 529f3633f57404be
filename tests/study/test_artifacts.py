"""Trial weights as Optuna artifacts: one safetensors file with every run's weights, listed under the trial."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import optuna
import pytest
import torch
from safetensors import safe_open

from archsearch.core.errors import UserError
from archsearch.core.protocol import Protocol
from archsearch.data import Dataset
from archsearch.engine import TrainResult, train
from archsearch.models import parse_spec
from archsearch.study.artifacts import (
    WEIGHTS_ATTR,
    artifact_store,
    read_trial_weights,
    save_trial_weights,
)
from archsearch.study.storage import artifact_dir, open_storage

SPEC = "cnn:2c5-p4-fc8-relu"  # tiny but with conv and linear layers: both kinds of fused weights are unfused


def test_artifact_store_lives_next_to_the_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    artifact_store(url)
    assert artifact_dir(url) == tmp_path / "s-artifacts" and (tmp_path / "s-artifacts").is_dir()


def test_weights_of_every_run_are_an_artifact_of_the_trial(
    tmp_path: Path, small_real: Dataset, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where save_trial_weights writes its temporary file
    url = f"sqlite:///{tmp_path}/s.db"
    store = artifact_store(url)
    study = optuna.create_study(storage=open_storage(url), study_name="t", direction="maximize")
    results: list[TrainResult] = []

    def objective(trial: optuna.Trial) -> float:
        result = train(parse_spec(SPEC), [1, 2], Protocol(epochs=1), small_real)
        save_trial_weights(trial, result, store)
        results.append(result)
        return result.runs[0].metrics["test"]["accuracy"]

    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    metas = optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage)
    assert len(metas) == 1 and metas[0].filename == "trial0-weights.safetensors"
    assert trial.user_attrs[WEIGHTS_ATTR] == metas[0].artifact_id

    path = tmp_path / "downloaded.safetensors"
    optuna.artifacts.download_artifact(artifact_store=store, file_path=str(path), artifact_id=metas[0].artifact_id)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["spec"] == SPEC and json.loads(meta["seeds"]) == [1, 2]
    layers = ("0.weight", "0.bias", "4.weight", "4.bias", "6.weight", "6.bias")  # conv, hidden fc, output
    assert keys == {f"run{k}.{name}" for k in (0, 1) for name in layers}

    weights = read_trial_weights(path)
    model = results[0].model
    assert model is not None and weights.seeds == [1, 2] and weights.spec == SPEC
    for k, seed in enumerate([1, 2]):
        plain = model.unfuse(k).state_dict()
        saved = weights.state_dict(seed)
        assert saved.keys() == plain.keys()
        for key in plain:
            assert torch.equal(saved[key], plain[key]), key
    # the runs really differ (each seed its own initialisation): the mapping matters
    assert not torch.equal(weights.state_dict(1)["0.weight"], weights.state_dict(2)["0.weight"])
    assert list(temp.iterdir()) == []  # the temporary file is gone


def test_reading_something_else_is_a_user_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x80\x04garbage" * 10)
    with pytest.raises(UserError, match="not a readable safetensors"):
        read_trial_weights(bad)
