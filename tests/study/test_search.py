from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from archsearch.cli import main
from archsearch.data import Dataset
from archsearch.study.search import SearchConfig, open_search_study, run_search, search_summary
from archsearch.study.spaces import load_space


def tiny_space(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text('kind = "mlp"\ndepth = { low = 0, high = 2 }\nwidth = { choices = [8, 16] }\n')
    return path


def search_json(capsys: pytest.CaptureFixture[str], tmp_path: Path, *args: str) -> dict:  # type: ignore[type-arg]
    code = main(["search", "--storage", f"sqlite:///{tmp_path}/s.db", "--threads", "1", "--json", *args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)  # type: ignore[no-any-return]


def test_objective_never_sees_the_test_set(small_real: Dataset, tmp_path: Path) -> None:
    x, y = small_real.evals["test"]
    g = torch.Generator().manual_seed(0)
    poisoned_test = (x, torch.randint(0, 10, y.shape, generator=g))  # test labels are noise: ~10% accuracy
    data = Dataset(small_real.train_x, small_real.train_y, {"val": (x, y), "test": poisoned_test})
    space = load_space(str(tiny_space(tmp_path)))
    cfg = SearchConfig(space="tiny", n_trials=3, epochs=2, pruner="none")
    study = open_search_study(optuna.storages.InMemoryStorage(), "t", space, cfg)
    run_search(study, space, cfg, data)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 3  # a sample repeating a trial (a tiny space) trains nothing and does not count
    for t in complete:
        assert t.value == pytest.approx(t.user_attrs["val"]["accuracy"]["mean"])
        assert t.value > 0.5 and t.user_attrs["test"]["accuracy"]["mean"] < 0.2
        assert t.intermediate_values[2] == pytest.approx(t.value, abs=1e-6)
    with pytest.raises(ValueError, match="validation split"):
        run_search(study, space, cfg, Dataset(small_real.train_x, small_real.train_y, {"test": (x, y)}))


@pytest.mark.slow
def test_mlp_search_completes_and_resumes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    s = search_json(capsys, tmp_path, "--space", "mlp", "--n-trials", "3", "--epochs", "1", "--include-report")
    assert s["ran_now"] == 3 and s["counts"]["complete"] == 3  # the other report rows stay queued
    study = optuna.load_study(study_name="search-mlp", storage=f"sqlite:///{tmp_path}/s.db")
    first = study.trials[0]
    assert first.params == {"depth": 0, "activation": "relu"} and first.user_attrs["report_row"] == 0
    for key in ("spec", "params", "depth", "widths", "activation", "kind", "val", "test"):
        assert key in first.user_attrs
    again = search_json(capsys, tmp_path, "--space", "mlp", "--n-trials", "3", "--epochs", "1", "--include-report")
    assert again["ran_now"] == 0 and again["best"] == s["best"]


@pytest.mark.slow
def test_cnn_space(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # one trial, the report's CNN (queued by --include-report): sampled CNNs can cost minutes per epoch
    s = search_json(capsys, tmp_path, "--space", "cnn", "--n-trials", "1", "--epochs", "1", "--include-report")
    assert s["best"]["spec"] == "cnn:6c5-p2-16c5-p2-fc128,64-relu" and s["counts"]["complete"] == 1
    assert s["best_under"]["44374"] == s["best"] and s["report_best"]["index"] == 16
    assert 0.7 < s["best"]["val_acc"] < 0.95


@pytest.mark.slow
def test_resnet_space(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # three sampled residual CNNs through the autograd step, end to end on the real data; --train-size keeps the
    # epoch to a few seconds on 2 cores (a full epoch of a sampled ResNet costs a minute or more there)
    s = search_json(
        capsys, tmp_path, "--space", "resnet", "--n-trials", "3", "--epochs", "1", "--train-size", "3000", "--seed", "1"
    )
    assert s["study"] == "search-resnet" and s["counts"]["complete"] + s["counts"].get("pruned", 0) == 3
    assert s["counts"]["complete"] >= 1
    assert all(r["spec"].startswith("cnn:") and "-r" in r["spec"] and r["spec"].count("gap") == 1 for r in s["top"])
    # one short epoch of a sampled recipe learns little, but it learns: the best is above chance (0.1)
    assert all(0.0 <= r["val_acc"] <= 1.0 for r in s["top"]) and s["best"]["val_acc"] > 0.11


@pytest.mark.slow
def test_custom_space_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    s = search_json(capsys, tmp_path, "--space", str(tiny_space(tmp_path)), "--n-trials", "3", "--epochs", "1")
    assert s["study"] == "search-tiny" and s["counts"]["complete"] == 3
    assert all(r["spec"].startswith("mlp:") and r["params"] <= 784 * 16 + 16 * 16 + 16 * 10 + 42 for r in s["top"])


@pytest.mark.slow
def test_two_objective_search_gives_a_pareto_front(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    s = search_json(
        capsys, tmp_path, "--space", str(tiny_space(tmp_path)), "--n-trials", "5", "--epochs", "1",
        "--objectives", "accuracy,params", "--sampler", "nsga2",
    )  # fmt: skip
    front = s["pareto_front"]
    assert front and s["counts"]["complete"] == 5
    for a in front:  # nothing on the front is dominated by another complete trial
        for b in s["top"]:
            assert not (b["val_acc"] > a["val_acc"] and b["params"] < a["params"])


def test_grid_sampler_on_a_finite_space(small_real: Dataset, tmp_path: Path) -> None:
    space = load_space(str(tiny_space(tmp_path)))
    cfg = SearchConfig(space="tiny", n_trials=3, epochs=1, sampler="grid", pruner="none")
    x, y = small_real.evals["test"]
    data = Dataset(small_real.train_x[:640], small_real.train_y[:640], {"val": (x, y), "test": (x, y)})
    study = open_search_study(optuna.storages.InMemoryStorage(), "g", space, cfg)
    run_search(study, space, cfg, data)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    # grid points that differ only in a parameter the sampled depth leaves out are the same trial: trained once
    others = [t for t in study.trials if t.state != TrialState.COMPLETE]
    assert all(t.state == TrialState.FAIL and "duplicate_of" in t.user_attrs for t in others)
    assert len({tuple(sorted(t.params.items())) for t in study.trials if t.state == TrialState.COMPLETE}) == 3
    assert search_summary(study)["best"]["val_acc"] > 0.3


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--space", "transformer"], "unknown space"),
        (["--space", "mlp", "--sampler", "annealing"], "--sampler"),
        (["--space", "mlp", "--pruner", "asha"], "--pruner"),
        (["--space", "mlp", "--objectives", "loss"], "unknown objective"),
        (["--space", "mlp", "--sampler", "grid"], "finite space"),
        (["--space", "mlp", "--sampler", "cmaes", "--objectives", "accuracy,params"], "single-objective"),
    ],
)
def test_bad_search_input(capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], fragment: str) -> None:
    code = main(["search", "--storage", f"sqlite:///{tmp_path}/bad.db", *args])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1
