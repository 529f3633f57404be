"""Fused trials: trials of one architecture trained together, each with its own recipe, each its own Optuna trial —
and, in the engine, runs with recipes of their own that leave a group at an epoch boundary."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from archsearch.core.protocol import Augment, Protocol
from archsearch.data import Dataset
from archsearch.engine import EpochReport, train
from archsearch.engine.steps import StepPlan
from archsearch.models import parse_spec
from tests.conftest import assert_same_training
from tests.study.test_search import search_json

CNN = "cnn:6c3p1-bn-12c3s2p1-bn-gap-fc-d0.1-relu"
BASE = Protocol(epochs=2, batch_size=64, optimizer="sgd", momentum=0.9, schedule="onecycle", lr=0.05)
RECIPES = [
    BASE,
    BASE.with_(lr=0.01, weight_decay=1e-4, label_smoothing=0.1, augment=Augment(crop=2, flip=True)),
    BASE.with_(optimizer="adamw", lr=3e-3, schedule="cosine", augment=Augment(erase=0.2)),
    BASE.with_(ema=0.9, tta=True, augment=Augment(flip=True)),  # weight averaging, mirrored evaluation
]


def _steps(result: object, run: int) -> torch.Tensor:
    return torch.tensor(result.runs[run].step_losses)  # type: ignore[attr-defined]


@pytest.mark.parametrize("plan", [StepPlan(layout="plain"), StepPlan(layout="plain", groups=2)], ids=lambda p: p.name)
def test_each_run_of_a_group_trains_as_its_recipe_alone(small_real: Dataset, plan: StepPlan) -> None:
    spec = parse_spec(CNN)
    group = train(spec, [7] * len(RECIPES), BASE, small_real, threads=1, plan=plan, record_steps=True, recipes=RECIPES)
    for r, recipe in enumerate(RECIPES):
        alone = train(spec, [7], recipe, small_real, threads=1, plan=StepPlan(layout="plain"), record_steps=True)
        assert torch.equal(_steps(group, r), _steps(alone, 0))
        assert group.runs[r].metrics == alone.runs[0].metrics
    assert len({tuple(_steps(group, r).tolist()) for r in range(len(RECIPES))}) == len(RECIPES)  # they did differ


# batch 32: 100 steps an epoch on the 3,200-image slice (what assert_same_training compares epoch by epoch)
TRIALS = [
    Protocol(epochs=2, optimizer="sgd", momentum=0.9, schedule="onecycle", lr=0.05),
    Protocol(epochs=2, optimizer="sgd", momentum=0.8, schedule="cosine", lr=0.01, weight_decay=1e-4,
             label_smoothing=0.1, augment=Augment(crop=2, flip=True)),
    Protocol(epochs=2, lr=3e-3, loss="kl", label_smoothing=0.05, augment=Augment(erase=0.3)),
]  # fmt: skip


@pytest.mark.parametrize("text", [CNN, "mlp:32-bn-d0.2-16-gelu"])
def test_each_run_of_one_fused_model_trains_as_its_recipe_alone(small_real: Dataset, text: str) -> None:
    """Fused trials as one fused model (a GPU's layout for them): each run its own optimiser, schedule, weight decay,
    momentum, loss, label smoothing and augmentation, and the same training as alone, to float rounding."""
    spec = parse_spec(text)
    group = train(spec, [7] * len(TRIALS), TRIALS[0], small_real, threads=1, plan=StepPlan(), record_steps=True,
                  recipes=TRIALS)  # fmt: skip
    assert group.engine_step == "autograd"
    for r, recipe in enumerate(TRIALS):
        alone = train(spec, [7], recipe, small_real, threads=1, plan=StepPlan(), record_steps=True)
        assert_same_training(_steps(group, r)[None], _steps(alone, 0)[None], rtol=1e-5)
    assert len({tuple(_steps(group, r).tolist()) for r in range(len(TRIALS))}) == len(TRIALS)  # they did differ


def test_a_fused_model_refuses_what_only_plain_models_train(small_real: Dataset) -> None:
    spec = parse_spec("mlp:16-relu")
    for recipes, message in [
        ([Protocol(epochs=1), Protocol(epochs=1, ema=0.9)], "weight averaging"),
        ([Protocol(epochs=1), Protocol(epochs=1, lr=1e-3)], "not replayed as one CUDA graph"),
    ]:
        plan = StepPlan(graphs=message.startswith("not"))
        with pytest.raises(ValueError, match=message):
            train(spec, [1, 2], Protocol(epochs=1), small_real, threads=1, plan=plan, recipes=recipes)
    with pytest.raises(ValueError, match="through the autograd step, not python"):
        train(spec, [1, 2], Protocol(epochs=1), small_real, threads=1, plan=StepPlan("python"),
              recipes=[Protocol(epochs=1), Protocol(epochs=1, lr=1e-3)])  # fmt: skip


def test_a_run_that_leaves_stops_and_the_others_go_on(small_real: Dataset) -> None:
    spec = parse_spec(CNN)

    def drop_first(report: EpochReport) -> None:
        if report.epoch == 1:
            report.leave.add(0)
        else:
            assert report.left == {0} and report.mean_over([0, 1]) == report.accuracy[1]

    result = train(spec, [7, 8], BASE, small_real, threads=1, on_epoch=drop_first, record_steps=True,
                   plan=StepPlan(layout="plain", groups=2), recipes=RECIPES[:2])  # fmt: skip
    assert [h["epoch"] for h in result.runs[0].history] == [1] and len(result.runs[1].history) == 2
    assert len(result.runs[0].step_losses or []) == 50 and len(result.runs[1].step_losses or []) == 100
    alone = train(spec, [8], RECIPES[1], small_real, threads=1, plan=StepPlan(layout="plain"), record_steps=True)
    assert torch.equal(_steps(result, 1), _steps(alone, 0)) and not result.runs[0].diverged


def test_runs_with_recipes_of_their_own_take_the_plain_layout(small_real: Dataset) -> None:
    result = train(parse_spec("mlp:16-relu"), [1, 2], Protocol(epochs=1), small_real, threads=2,
                   recipes=[Protocol(epochs=1), Protocol(epochs=1, lr=1e-3)])  # fmt: skip
    assert result.engine_step == "plain+2threads"
    with pytest.raises(ValueError, match="share their batch size"):
        train(parse_spec("mlp:16-relu"), [1, 2], Protocol(epochs=1), small_real,
              recipes=[Protocol(epochs=1), Protocol(epochs=1, batch_size=64)])  # fmt: skip


def _groups(db: str, name: str) -> dict[int, list[optuna.trial.FrozenTrial]]:
    trials = optuna.load_study(study_name=name, storage=db).get_trials()
    out: dict[int, list[optuna.trial.FrozenTrial]] = {}
    for t in trials:
        if t.state == TrialState.COMPLETE:
            out.setdefault(t.user_attrs["group"], []).append(t)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["digits", "fashion-mnist"])
def test_search_with_fuse_2_trains_groups_of_separate_trials(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, dataset: str
) -> None:
    small = ["--train-size", "1500", "--val-size", "500"] if dataset == "fashion-mnist" else []
    s = search_json(capsys, tmp_path, "--dataset", dataset, "--space", "cnn", "--n-trials", "4", "--epochs", "2",
                    "--fuse", "2", "--pruner", "none", *small)  # fmt: skip
    assert s["counts"]["complete"] == 4 and s["ran_now"] == 4
    groups = _groups(f"sqlite:///{tmp_path}/s.db", "search-cnn")
    assert sorted(len(g) for g in groups.values()) == [2, 2]
    for members in groups.values():
        assert len({m.user_attrs["spec"] for m in members}) == 1  # one architecture ...
        assert len({m.params["batch_size"] for m in members}) == 1
        assert len({m.params["lr"] for m in members}) == 2  # ... each member with its own recipe
        for m in members:  # each its own trial: curve, metrics, weights
            assert sorted(m.intermediate_values) == [1, 2] and m.value == m.user_attrs["val"]["accuracy"]["mean"]
            assert m.user_attrs["engine_step"].startswith("plain") and "weights_artifact" in m.user_attrs


@pytest.mark.slow
def test_a_killed_group_resumes_and_every_member_finishes_once(tmp_path: Path) -> None:
    args = ["search", "--dataset", "digits", "--space", "cnn", "--n-trials", "6", "--epochs", "30", "--fuse", "2",
            "--threads", "1", "--pruner", "none", "--json"]  # fmt: skip
    cmd = [sys.executable, "-m", "archsearch", *args]
    rng = random.Random(26)
    for _ in range(3):
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(5.0, 12.0))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = optuna.load_study(study_name="search-cnn", storage=f"sqlite:///{tmp_path}/archsearch.db").get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) >= 6 and not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    lost = [t for t in trials if t.state == TrialState.FAIL and "duplicate_of" not in t.user_attrs]
    assert lost  # the kills did land inside groups
    for t in lost:  # each lost member was queued again once, with its own parameters, and is complete now
        again = [r for r in trials if r.user_attrs.get("retry_of") == t.number]
        assert len(again) == 1 and again[0].params == t.params
        assert any(c.params == t.params for c in complete)
    keys = Counter(json.dumps(t.params, sort_keys=True) for t in complete)
    assert max(keys.values()) == 1  # nothing trained twice


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--space", "mlp", "--fuse", "2"], "opens none"),
        (["--space", "cnn", "--fuse", "2", "--sampler", "grid"], "grid sampler"),
        (["--space", "cnn", "--fuse", "2", "--objectives", "accuracy,params"], "single-objective"),
    ],
)
def test_fuse_refuses_what_it_cannot_group(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], message: str
) -> None:
    from archsearch.cli import main

    code = main(["search", "--dataset", "digits", "--storage", f"sqlite:///{tmp_path}/s.db", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s.db").exists()  # refused before the storage was touched
