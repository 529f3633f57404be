"""A search's finalists: the best trials overall and per budget, retrained with more epochs and seeds in a second
study, resumable; and a model of the new vocabulary (BatchNorm, dropout, residual blocks, GAP, strided and separable
convs) with the new recipe trains, saves its weights, exports, and evaluates to exactly its record."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from archsearch.data import Dataset, load_dataset
from archsearch.export import evaluate_checkpoint, load_checkpoint
from archsearch.study import FinalConfig, export_trial, final_summary, run_finalists
from archsearch.study.artifacts import artifact_store
from archsearch.study.finalists import pick_finalists
from archsearch.study.search import SearchConfig, open_search_study, run_search
from archsearch.study.spaces import load_space
from archsearch.study.storage import open_storage

SPACE = """
kind = "cnn"
blocks = { low = 1, high = 2 }
channels = { choices = [4, 8] }
kernel = 3
padding = "same"
convs = { low = 1, high = 2 }
pool = { choices = ["max", "stride"] }
norm = { choices = [true, false] }
head = { choices = ["flatten", "gap"] }
fc_depth = { low = 0, high = 1 }
fc_width = 16
dropout = { choices = [0.0, 0.2] }

[recipe]
optimizer = { choices = ["adamw", "sgd"] }
lr = { low = 1e-3, high = 1e-2, log = true }
schedule = { choices = ["cosine", "onecycle"] }
label_smoothing = { choices = [0.0, 0.1] }
crop = 2
flip = true
erase = 0.2
batch_size = 64
"""


@pytest.fixture(scope="module")
def data() -> Dataset:
    """3,200 training images and the whole 10,000-image test set (what `evaluate` rescores), a 1,000-image val."""
    full = load_dataset(val_size=1000, split_seed=42)
    return Dataset(full.train_x[:3200], full.train_y[:3200], full.evals, full.info)


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory, data: Dataset) -> tuple[str, optuna.Study, optuna.Study]:
    root = tmp_path_factory.mktemp("finalists")
    (root / "space.toml").write_text(SPACE)
    url = f"sqlite:///{root}/s.db"
    space = load_space(str(root / "space.toml"))
    cfg = SearchConfig(space="space", n_trials=4, epochs=1, pruner="none", val_size=1000)
    storage = open_storage(url)
    search = open_search_study(storage, "s", space, cfg)
    run_search(search, space, cfg, data, threads=1, artifact_store=artifact_store(url))
    final = run_finalists(
        search, FinalConfig(1, epochs=2, runs=2, budgets=(3000,)), data, storage=storage, threads=1,
        artifact_store=artifact_store(url),
    )  # fmt: skip
    return url, search, final


@pytest.mark.slow
def test_finalists_are_the_best_overall_and_per_budget(studies: tuple[str, optuna.Study, optuna.Study]) -> None:
    _, search, final = studies
    complete = [t for t in search.trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.user_attrs["val"]["accuracy"]["mean"])
    small = [t for t in complete if t.user_attrs["params"] <= 3000]
    picked = pick_finalists(search.trials, 1, (3000,))
    assert picked[0].number == best.number
    assert len(picked) == (1 if not small or best in small else 2)
    summary = final_summary(final)
    assert [r["source_trial"] for r in summary["finalists"]] != []
    assert {r["source_trial"] for r in summary["finalists"]} == {t.number for t in picked}
    for r in summary["finalists"]:
        source = search.trials[r["source_trial"]]
        assert r["spec"] == source.user_attrs["spec"] and r["epochs"] == 2 and len(r["seeds"]) == 2
        assert r["recipe"] == {**source.user_attrs["protocol"], "epochs": 2}  # the same recipe, more epochs
    budget = summary["best_under"]["3000"]
    assert budget is None if not small else budget["params"] <= 3000


@pytest.mark.slow
def test_finalists_resume_without_retraining(studies: tuple[str, optuna.Study, optuna.Study], data: Dataset) -> None:
    url, search, final = studies
    before = len(final.trials)
    again = run_finalists(search, FinalConfig(1, epochs=2, runs=2, budgets=(3000,)), data, storage=open_storage(url))
    assert len(again.trials) == before
    with pytest.raises(Exception, match="other settings"):
        run_finalists(search, FinalConfig(1, epochs=3, runs=2, budgets=(3000,)), data, storage=open_storage(url))


@pytest.mark.slow
def test_a_finalist_exports_and_evaluates_to_its_record(
    studies: tuple[str, optuna.Study, optuna.Study], tmp_path: Path
) -> None:
    url, _, final = studies
    out = tmp_path / "best"
    result = export_trial(url, final.study_name, out, None)
    model, config = load_checkpoint(out)
    assert config["spec"] == final.best_trial.user_attrs["spec"]
    assert config["protocol"]["augment"] == {"crop": 2, "flip": True, "erase": 0.2}
    evaluated = evaluate_checkpoint(out)
    assert evaluated["matches_recorded"], evaluated["differences"]
    assert result["config"]["params"] == sum(p.numel() for p in model.parameters())


def test_every_new_layer_kind_saves_exports_and_evaluates(tmp_path: Path, data: Dataset) -> None:
    from archsearch.core.protocol import Augment, Protocol
    from archsearch.models import parse_spec
    from archsearch.study.objective import run_trial

    url = f"sqlite:///{tmp_path}/n.db"
    spec = parse_spec("cnn:8ds3p1-bn-8c3s2p1-r8-bn-r16s2-bn-gap-fc16-bn-d0.2-silu")
    protocol = Protocol(epochs=1, batch_size=64, optimizer="sgd", lr=0.05, schedule="onecycle", label_smoothing=0.1,
                        augment=Augment(crop=2, flip=True, erase=0.3))  # fmt: skip
    study = optuna.create_study(storage=url, study_name="n", direction="maximize")
    store = artifact_store(url)
    study.optimize(
        lambda t: float(run_trial(t, spec, [1, 2], protocol, data, threads=1, artifact_store=store)),  # type: ignore[arg-type]
        n_trials=1,
    )
    # a CNN at batch 64 on a CPU: plain models (in the memory format this CPU measured faster: "plain" or "plain+cl")
    assert study.trials[0].user_attrs["engine_step"].split("+")[0] == "plain"
    export_trial(url, "n", tmp_path / "ckpt", None)
    evaluated = evaluate_checkpoint(tmp_path / "ckpt")
    assert evaluated["matches_recorded"] and evaluated["spec"] == str(spec)
    model, _ = load_checkpoint(tmp_path / "ckpt")
    assert any("running_mean" in k for k in model.state_dict())  # BatchNorm's statistics travel with the weights


def test_the_readme_and_docs_best_per_budget_figures_are_the_committed_searches_record() -> None:
    """The best model per parameter budget, in the searching guide's table and in the README's headline results, is
    copied from the budget searches' committed summaries, not retyped: every row's spec, parameter count, final
    validation and test accuracy equal its study's `best_under` entry."""
    root = Path(__file__).resolve().parents[2]

    def best_under(run: str, budget: str) -> dict[str, Any]:
        summary = json.loads((root / "studies/results" / run / "summary.json").read_text())
        return summary["final"]["best_under"][budget.replace(",", "")]

    # docs/guides/searching.md: | budget | params | spec | val | test | search |, the search named first or follow-up
    page = (root / "docs/guides/searching.md").read_text()
    table = page.split("Best model per parameter budget", 1)[1].split("\n\n", 2)[1]
    rows = [line for line in table.splitlines() if re.match(r"\| [\d,]+ \|", line)]
    assert len(rows) == 3
    runs = {"first": "budgets", "follow-up": "budgets-100k"}
    for row in rows:
        budget, params, spec, val, test, search = (cell.strip(" `*") for cell in row.strip("|").split("|"))
        best = best_under(runs[search.split(",")[0]], budget)
        assert (spec, int(params.replace(",", ""))) == (best["spec"], best["params"])
        assert (val, test) == (f"{best['val_acc']:.4f}", f"{best['test_acc']:.4f}")

    # README.md's results: "Best under N parameters | `SPEC`, P params: val V, test **T** | `studies/results/RUN/`, ..."
    readme = (root / "README.md").read_text()
    pattern = (
        r"\| Best under ([\d,]+) parameters[^|]* \| `([^`]+)`, ([\d,]+) params: "
        r"val ([\d.]+), test \*\*([\d.]+)\*\* \| `studies/results/([\w-]+)/`"
    )
    headline = re.findall(pattern, readme)
    assert len(headline) == 3 == len([line for line in readme.splitlines() if line.startswith("| Best under")])
    for budget, spec, params, val, test, run in headline:
        best = best_under(run, budget)
        assert (spec, int(params.replace(",", ""))) == (best["spec"], best["params"])
        assert (val, test) == (f"{best['val_acc']:.4f}", f"{best['test_acc']:.4f}")
