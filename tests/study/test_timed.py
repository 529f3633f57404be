"""`archsearch search --time`: the budget's clock and deadline, the finalists' plan, the recipe options fast
trainers use (weight averaging, mirrored evaluation), and the whole command on the real digits within its budget."""

from __future__ import annotations

import json
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch

from archsearch.cli import parse_duration
from archsearch.core.errors import UserError
from archsearch.core.metrics import classification_metrics, logits, predict_plain
from archsearch.core.protocol import Augment, Protocol
from archsearch.data import Dataset
from archsearch.engine import train
from archsearch.engine.plain_runs import WeightAverage
from archsearch.engine.steps import StepPlan, select_step
from archsearch.models import build_model, init_model, parse_spec
from archsearch.study.timed import CLOCK_ATTR, MAX_FINALISTS, Clock, DeadlinePruner, final_epochs, plan_finals

CNN = "cnn:6c3p1-bn-12c3s2p1-bn-gap-fc-d0.1-relu"
RECIPE = Protocol(epochs=2, batch_size=64, optimizer="sgd", schedule="onecycle", lr=0.05, augment=Augment(flip=True))


def test_weight_average_follows_its_decay_and_copies_step_counts(small_real: Dataset) -> None:
    spec = parse_spec(CNN)
    live = init_model(build_model(spec), torch.Generator().manual_seed(0))
    average = WeightAverage(spec, live, 0.9, small_real, torch.contiguous_format)
    want = {k: v.clone() for k, v in live.state_dict().items()}
    for n in range(1, 6):
        with torch.no_grad():
            for p in live.parameters():
                p.add_(torch.randn_like(p))
            for v in live.state_dict().values():
                if not v.is_floating_point():
                    v.add_(1)  # BatchNorm's step counts
        average.update()
        d = min(0.9, (1 + n) / (10 + n))
        for k, v in live.state_dict().items():
            want[k] = d * want[k] + (1 - d) * v if v.is_floating_point() else v.clone()
    for k, v in average.model.state_dict().items():
        torch.testing.assert_close(v, want[k], rtol=1e-6, atol=1e-6)


def test_mirrored_evaluation_averages_both_views_and_is_what_training_records(small_real: Dataset) -> None:
    spec = parse_spec(CNN)
    result = train(spec, [3], RECIPE.with_(tta=True, ema=0.9), small_real, threads=1)
    model = result.model.unfuse(0).eval() if result.model is not None else None
    assert model is not None
    x, y = small_real.evals["test"]
    prep = small_real.info.prep()
    with torch.no_grad():
        inp = prep(x[:8])
        torch.testing.assert_close(logits(model, inp, tta=True), (model(inp) + model(inp.flip(-1))) / 2)
    with_flip = predict_plain([model], x, prep, tta=True)[0]
    recorded = result.runs[0].metrics["test"]["accuracy"]
    assert recorded == classification_metrics(with_flip, y)["accuracy"]
    assert not torch.equal(predict_plain([model], x, prep)[0], with_flip)  # so the check above can fail


def test_weight_averaging_and_mirrors_train_as_plain_models_and_a_seed_as_alone(small_real: Dataset) -> None:
    spec = parse_spec("mlp:32-relu")
    averaged = Protocol(epochs=1, ema=0.99)
    assert select_step(spec, averaged, device="cpu", threads=1, shape=small_real.info.shape).layout == "plain"
    assert select_step(spec, Protocol(epochs=1), device="cpu", threads=1, shape=small_real.info.shape).layout != "plain"
    together = train(parse_spec(CNN), [1, 2], RECIPE.with_(ema=0.95, tta=True), small_real, threads=1)
    alone = train(parse_spec(CNN), [2], RECIPE.with_(ema=0.95, tta=True), small_real, threads=1,
                  plan=StepPlan(layout="plain"))  # fmt: skip
    assert together.engine_step.startswith("plain")
    assert together.runs[1].metrics == alone.runs[0].metrics
    plain = train(parse_spec(CNN), [2], RECIPE, small_real, threads=1, plan=StepPlan(layout="plain"))
    assert plain.runs[0].metrics != alone.runs[0].metrics  # averaging and mirrors did something


def test_the_clock_adds_earlier_runs_and_refuses_another_budget() -> None:
    study = optuna.create_study()
    clock = Clock(study, 100.0, started=time.monotonic() - 30)
    assert 30 <= clock.elapsed() < 31
    clock.save(force=True, final_epochs=7)
    again = Clock(study, 100.0, started=time.monotonic() - 5)
    assert 35 <= again.elapsed() < 36 and again.record["final_epochs"] == 7
    assert study.user_attrs[CLOCK_ATTR]["budget_s"] == 100.0
    with pytest.raises(UserError, match=r"--time 100\.0s, not 50\.0s"):
        Clock(study, 50.0)


def test_the_deadline_stops_trials_at_an_epoch_boundary_and_says_so() -> None:
    study = optuna.create_study()
    clock = Clock(study, 100.0, started=time.monotonic())
    study.pruner = DeadlinePruner(optuna.pruners.NopPruner(), clock, end=1000.0)
    trial = study.ask()
    trial.set_user_attr("protocol", {"epochs": 3})
    trial.report(0.5, 1)
    assert not trial.should_prune()
    study.pruner = DeadlinePruner(optuna.pruners.NopPruner(), clock, end=0.0)
    assert trial.should_prune()
    assert study.trials[0].user_attrs["stopped"] == "time"
    last = study.ask()
    last.set_user_attr("protocol", {"epochs": 3})
    last.report(0.5, 3)
    assert not last.should_prune()  # after its last epoch only the final evaluation is left: it finishes


def test_finalists_get_the_epochs_the_time_left_affords() -> None:
    # two finalists: 2 s and 4 s of training per run-epoch on the screen's images, 1 s of evaluation each; the full
    # training set is 2.5x the screen's; 2 seeds each: (2 x 2.5 + 1 + 4 x 2.5 + 1) x 2 = 34 s an epoch, and the
    # last evaluation of val and test (3 s a run, allowing for its one thread) 12 s once
    assert final_epochs([(2.0, 1.0), (4.0, 1.0)], 2, left_s=352, scale=2.5) == 10
    assert final_epochs([(2.0, 1.0), (4.0, 1.0)], 2, left_s=351, scale=2.5) == 9
    assert final_epochs([(2.0, 1.0), (4.0, 1.0)], 2, left_s=10, scale=2.5) == 1
    assert final_epochs([(0.001, 0.0)], 2, left_s=600, scale=1.0) == 60  # at most MAX_FINAL_EPOCHS


def test_time_left_over_at_the_epoch_cap_goes_to_more_finalists() -> None:
    cheap = [(0.01, 0.0)] * 5  # 0.02 s a finalist-epoch (2 seeds): 60 epochs of one finalist cost 1.2 s
    assert plan_finals(cheap, 2, left_s=2.5, scale=1.0) == (2, 60)  # 2.4 s: a third would need 3.6 s
    assert plan_finals(cheap, 2, left_s=3.7, scale=1.0) == (3, 60)
    assert plan_finals(cheap, 2, left_s=100, scale=1.0) == (MAX_FINALISTS, 60)  # never more than MAX_FINALISTS
    assert plan_finals(cheap[:3], 2, left_s=100, scale=1.0) == (3, 60)  # nor more than the screen completed
    assert plan_finals([(2.0, 1.0), (4.0, 1.0), (1.0, 1.0)], 2, left_s=352, scale=2.5) == (2, 10)  # under the cap
    assert plan_finals([(2.0, 1.0)], 2, left_s=352, scale=2.5) == (1, 28)


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("60m", 3600), ("1.5h", 5400)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def _search(cwd: Path, *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "archsearch", "search", "--dataset", "digits", "--threads", "2", "--json", *args]
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _evaluate(cwd: Path, checkpoint: Path) -> dict:  # type: ignore[type-arg]
    done = subprocess.run([sys.executable, "-m", "archsearch", "evaluate", str(checkpoint), "--json"], cwd=cwd,
                          capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.mark.slow
def test_a_60s_search_holds_its_budget_and_exports_the_best_by_mean_validation(tmp_path: Path) -> None:
    start = time.monotonic()
    proc = _search(tmp_path, "--time", "60s", "--out", "out")
    out, err = proc.communicate(timeout=300)
    wall = time.monotonic() - start
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out)
    assert summary["seconds"] <= 60 * 1.05 and wall <= 60 * 1.05 + 10  # + the interpreter's start-up
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary
    best, finalists = summary["best"], summary["finalists"]
    assert len(best["seeds"]) >= 2 and len(finalists) >= 2
    assert best["val_acc"] == max(f["val_acc"] for f in finalists)
    assert best["test_acc"] == pytest.approx(statistics.fmean(best["test_per_seed"]))
    assert summary["welch_p"] is not None and summary["distinguishable"] == (summary["welch_p"] < 0.05)
    assert summary["screen"]["counts"].get("pruned", 0) >= 1  # successive halving stopped some
    report = (tmp_path / "out" / "REPORT.md").read_text()
    for name in ("accuracy-over-time.png", "screen-vs-params.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0 and f"![{name}]({name})" in report
    assert report.count("![") == 2  # the two plots, nothing else
    evaluated = _evaluate(tmp_path, tmp_path / "out" / "best")
    assert evaluated["matches_recorded"] and evaluated["spec"] == best["spec"]


@pytest.mark.slow
def test_a_killed_timed_search_resumes_inside_its_budget(tmp_path: Path) -> None:
    """Killed (SIGKILL) at a random moment, then rerun: the rerun continues the same budget, and with a space
    whose recipe always averages weights and mirrors, the export rescores exactly."""
    space = tmp_path / "avg.toml"
    text = (Path(__file__).resolve().parents[2] / "studies" / "fast.toml").read_text()
    assert "\ntta = true\n" in text
    space.write_text(text.replace("ema = { choices = [0.0, 0.99] }", "ema = 0.9"))
    args = ("--time", "40s", "--space", str(space), "--out", "out")
    first = _search(tmp_path, *args)
    time.sleep(random.uniform(12, 22))
    first.send_signal(signal.SIGKILL)
    first.wait()
    start = time.monotonic()
    again = _search(tmp_path, *args)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:]
    summary = json.loads(out)
    assert time.monotonic() - start < 40  # it went on with the time left, not a new budget
    assert summary["seconds"] <= 40 * 1.05 + 5  # a kill loses at most a few seconds of the account
    config = json.loads((tmp_path / "out" / "best" / "config.json").read_text())
    assert config["protocol"]["tta"] is True and config["protocol"]["ema"] == 0.9
    assert _evaluate(tmp_path, tmp_path / "out" / "best")["matches_recorded"]


def test_the_time_budget_results_in_the_docs_and_readme_are_the_committed_summaries() -> None:
    """Every row of the time-budget results (docs/guides/time-budget.md, and the README's "One hour" rows) is
    copied from its run's committed summary.json: spec, parameters, seeds, validation and test mean ± std."""
    import re

    root = Path(__file__).resolve().parents[2]

    def best(run: str) -> dict:  # type: ignore[type-arg]
        return json.loads((root / "studies/results" / run / "summary.json").read_text())["best"]  # type: ignore[no-any-return]

    def pm(mean: float, std: float) -> str:
        return f"{mean:.4f} ± {std:.4f}"

    page = (root / "docs/guides/time-budget.md").read_text().split("## Results", 1)[1]
    rows = [line for line in page.splitlines() if re.match(r"\| [\d,]+ \| `search --time", line)]
    assert rows
    for row in rows:
        cells = [c.strip(" *") for c in row.strip("|").split("|")]
        run = re.search(r"studies/results/([\w-]+)/", cells[8]).group(1)  # type: ignore[union-attr]
        b = best(run)
        assert (cells[2].strip("`"), int(cells[3].replace(",", ""))) == (b["spec"], b["params"])
        assert cells[4] == ", ".join(map(str, b["seeds"]))
        assert (cells[5], cells[6]) == (pm(b["val_acc"], b["val_acc_std"]), pm(b["test_acc"], b["test_acc_std"]))
    readme = (root / "README.md").read_text()
    pattern = (
        r"\| One hour [^|]* \| `([^`]+)`, ([\d,]+) params: val ([\d.]+ ± [\d.]+), "
        r"test \*\*([\d.]+ ± [\d.]+)\*\*[^|]*\| `studies/results/([\w-]+)/`"
    )
    found = re.findall(pattern, readme)
    assert found and len(found) == len([line for line in readme.splitlines() if line.startswith("| One hour")])
    for spec, params, val, test, run in found:
        b = best(run)
        assert (spec, int(params.replace(",", ""))) == (b["spec"], b["params"])
        assert (val, test) == (pm(b["val_acc"], b["val_acc_std"]), pm(b["test_acc"], b["test_acc_std"]))
