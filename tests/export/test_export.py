"""Checkpoints: export from a study, load safely (never unpickle), evaluate to the recorded numbers, predict images.

The end-to-end tests (``slow``) train report row 6 (mlp:128-relu) for 1 epoch with 2 seeds on the real dataset, as
``archsearch reproduce --models 6 --runs 2 --epochs 1`` does, saving weights through the objective's ``on_result``
hook. The loading tests use hand-made checkpoints of untrained models: they check the file handling, not training.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from archsearch.core.errors import UserError
from archsearch.core.metrics import predict_plain
from archsearch.data import CLASSES, Dataset, as_float
from archsearch.export import CONFIG_FILE, WEIGHTS_FILE, evaluate_checkpoint, load_checkpoint, predict_images
from archsearch.models import build_model, init_model, parse_spec
from archsearch.study import export as export_mod
from archsearch.study.artifacts import artifact_store, save_trial_weights
from archsearch.study.export import ParetoChoiceNeeded, export_trial
from archsearch.study.objective import Hooks, run_trial
from archsearch.study.report import report_rows
from archsearch.study.reproduce import ReproduceConfig, open_reproduce_study, pending
from archsearch.study.storage import open_storage
from tests.conftest import single_thread

SEEDS = [42, 43]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Train and evaluate on one thread: the machine is shared, and evaluated-vs-recorded compares like with like."""
    with single_thread():
        yield


# ----------------------------------------------------------------------------------------------------------------
# end to end: a reproduce study on the real dataset


@pytest.fixture(scope="module")
def study_url(tmp_path_factory: pytest.TempPathFactory, fmnist: Dataset) -> str:
    """``reproduce --models 6 --runs 2 --epochs 1``, with weights saved (as the CLI will) via the on_result hook."""
    url = f"sqlite:///{tmp_path_factory.mktemp('study')}/s.db"
    cfg = ReproduceConfig(indexes=(6,), runs=2, epochs=1)
    study = open_reproduce_study(open_storage(url), "report-e1-r2", cfg)
    store = artifact_store(url)
    rows = report_rows()
    hooks = Hooks(on_result=lambda trial, result: save_trial_weights(trial, result, store))

    def objective(trial: optuna.Trial) -> float:
        row = trial.suggest_int("row", 0, len(rows) - 1)
        loss = trial.suggest_categorical("loss", ["ce", "kl"])
        value = run_trial(trial, rows[row].spec, cfg.seeds, cfg.protocol(str(loss)), fmnist, hooks=hooks)
        return float(value)  # type: ignore[arg-type]

    assert len(pending(study, cfg)) == 1
    study.optimize(objective, n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE
    return url


@pytest.fixture(scope="module")
def exported(study_url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "ckpt"
    export_trial(study_url, "report-e1-r2", out, None)
    return out


def trial0(url: str) -> optuna.trial.FrozenTrial:
    return optuna.load_study(study_name="report-e1-r2", storage=url).trials[0]


@pytest.mark.slow
def test_export_writes_weights_and_a_complete_config(study_url: str, exported: Path) -> None:
    assert sorted(p.name for p in exported.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    config = json.loads((exported / CONFIG_FILE).read_text())
    t = trial0(study_url)
    accs = t.user_attrs["test_per_seed"]["accuracy"]
    best = SEEDS[max(range(2), key=lambda i: (accs[i], -i))]
    assert config["seed"] == best and config["selection"]["monitor"] == "test" and "note" in config["selection"]
    assert config["spec"] == "mlp:128-relu" and config["spec_dict"] == parse_spec("mlp:128-relu").to_dict()
    assert config["params"] == 101770 and config["classes"] == list(CLASSES)
    assert config["protocol"] == t.user_attrs["protocol"] and config["protocol"]["epochs"] == 1
    assert config["source"] == {
        "study": "report-e1-r2",
        "trial": 0,
        "storage": study_url,
        "weights_artifact": t.user_attrs["weights_artifact"],
        "trial_seeds": SEEDS,
    }
    test = config["metrics"]["test"]
    i = SEEDS.index(best)
    assert test["accuracy"] == accs[i] and test["f1"] == t.user_attrs["test_per_seed"]["f1"][i]
    assert test["confusion_matrix"] == t.user_attrs["test_detail"][str(best)]["confusion_matrix"]
    assert "uint8" in config["input"]["scaling"] and config["versions"]["torch"] == torch.__version__
    model, _ = load_checkpoint(exported)
    assert list(model.state_dict()) == list(build_model(parse_spec("mlp:128-relu")).state_dict())
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".")]  # no temporary directory left


@pytest.mark.slow
def test_evaluate_reproduces_the_recorded_metrics_exactly(exported: Path) -> None:
    result = evaluate_checkpoint(exported)
    assert result["matches_recorded"], result["differences"]
    assert result["metrics"]["accuracy"] == result["recorded"]["accuracy"]
    assert result["metrics"]["confusion_matrix"] == result["recorded"]["confusion_matrix"]
    assert result["images"] == 10000


@pytest.mark.slow
def test_the_other_seed_and_torchscript(study_url: str, exported: Path, tmp_path: Path) -> None:
    chosen = json.loads((exported / CONFIG_FILE).read_text())["seed"]
    other = next(s for s in SEEDS if s != chosen)
    out = tmp_path / "other"
    info = export_trial(study_url, "report-e1-r2", out, 0, seed=other, formats=["torchscript"])
    assert info["config"]["seed"] == other and info["config"]["selection"] == {"rule": "seed given by the user"}
    assert (out / "model.pt").is_file()
    result = evaluate_checkpoint(out)  # the seed's weights give the seed's recorded numbers: the mapping is right
    assert result["matches_recorded"] and result["seed"] == other
    model, _ = load_checkpoint(out)
    with pytest.warns(FutureWarning):  # TorchScript is deprecated upstream; the file still loads
        scripted = torch.jit.load(str(out / "model.pt"))
    x = torch.rand(5, 1, 28, 28)
    assert torch.equal(scripted(x), model(x))
    # exporting again over an existing checkpoint replaces it
    export_trial(study_url, "report-e1-r2", out, 0, seed=chosen)
    assert json.loads((out / CONFIG_FILE).read_text())["seed"] == chosen and not (out / "model.pt").exists()


@pytest.mark.slow
def test_predict_png_images(exported: Path, fmnist: Dataset, tmp_path: Path) -> None:
    x, y = as_float(fmnist.evals["test"][0]), fmnist.evals["test"][1]
    paths = []
    for i in range(20):
        pixels = (x[i, 0] * 255).round().to(torch.uint8).numpy()
        path = tmp_path / f"img{i}.png"
        Image.fromarray(pixels, mode="L").save(path)
        paths.append(path)
    big = tmp_path / "big.png"
    Image.fromarray((x[0, 0] * 255).round().to(torch.uint8).numpy(), mode="L").resize((56, 56)).save(big)
    results = predict_images(exported, [*paths, big])
    model, _ = load_checkpoint(exported)
    expected = predict_plain([model], x[:20], as_float)[0]
    assert [r["index"] for r in results[:20]] == expected.tolist()  # PNG round trip: exactly the dataset's input
    assert sum(r["class"] == CLASSES[int(label)] for r, label in zip(results, y[:20], strict=False)) >= 15
    for r in results:
        assert set(r["probabilities"]) == set(CLASSES)
        assert sum(r["probabilities"].values()) == pytest.approx(1.0)
        assert r["probability"] == max(r["probabilities"].values())
    assert all(r["warnings"] == [] for r in results[:20])
    assert len(results[20]["warnings"]) == 1 and "resized from 56x56" in results[20]["warnings"][0]


@pytest.mark.slow
def test_export_refusals(study_url: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no study named 'nope'.*report-e1-r2"):
        export_trial(study_url, "nope", tmp_path / "a", None)
    with pytest.raises(UserError, match=r"no run with seed 7; its seeds: \[42, 43\]"):
        export_trial(study_url, "report-e1-r2", tmp_path / "a", 0, seed=7)
    with pytest.raises(UserError, match="has no trial 5"):
        export_trial(study_url, "report-e1-r2", tmp_path / "a", 5)
    with pytest.raises(UserError, match="unknown export format 'tflite'"):
        export_trial(study_url, "report-e1-r2", tmp_path / "a", 0, formats=["tflite"])
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not an archsearch checkpoint; refusing"):
        export_trial(study_url, "report-e1-r2", tmp_path / "taken", 0)
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_a_failed_export_leaves_nothing(study_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fmt: str, model: Any, path: Path, info: Any) -> None:
        path.write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(export_mod, "_write_format", broken)
    with pytest.raises(OSError, match="disk full"):
        export_trial(study_url, "report-e1-r2", tmp_path / "out", 0, formats=["torchscript"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.skipif(all(find_spec(m) for m in ("onnx", "onnxscript")), reason="onnx is installed")
def test_onnx_without_onnx_says_what_to_install(study_url: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"pip install 'archsearch\[onnx\]'"):
        export_trial(study_url, "report-e1-r2", tmp_path / "a", 0, formats=["onnx"])
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
@pytest.mark.skipif(not all(find_spec(m) for m in ("onnx", "onnxscript")), reason="needs onnx and onnxscript")
def test_onnx_export_computes_the_same_logits(study_url: str, tmp_path: Path) -> None:
    import onnx
    from onnx.reference import ReferenceEvaluator

    info = export_trial(study_url, "report-e1-r2", tmp_path / "o", 0, formats=["onnx"])
    assert info["files"] == [CONFIG_FILE, WEIGHTS_FILE, "model.onnx"]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [CONFIG_FILE, "model.onnx", WEIGHTS_FILE]
    graph = onnx.load(str(tmp_path / "o" / "model.onnx"))
    onnx.checker.check_model(graph)
    model, _ = load_checkpoint(tmp_path / "o")
    x = torch.rand(7, 1, 28, 28)  # another batch size than the export's example: the batch axis is dynamic
    (logits,) = ReferenceEvaluator(graph).run(None, {"image": x.numpy()})
    assert torch.allclose(torch.from_numpy(logits), model(x), atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# studies without weights, multi-objective studies (no training needed)


def test_multi_objective_study_needs_a_trial_from_the_front(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/m.db"
    study = optuna.create_study(storage=open_storage(url), study_name="m", directions=["maximize", "minimize"])
    points = [(0.80, 100.0, "mlp:linear"), (0.90, 200.0, "mlp:128-relu"), (0.70, 300.0, "mlp:256-relu")]

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        acc, params, spec = points[trial.number]
        trial.set_user_attr("spec", spec)
        return acc, params

    study.optimize(objective, n_trials=3)
    with pytest.raises(ParetoChoiceNeeded) as err:
        export_trial(url, "m", tmp_path / "out", None)
    assert err.value.front == [
        {"number": 0, "values": [0.8, 100.0], "spec": "mlp:linear"},
        {"number": 1, "values": [0.9, 200.0], "spec": "mlp:128-relu"},
    ]
    assert (
        isinstance(err.value, UserError)
        and "--trial" in str(err.value)
        and "1 (0.9, 200; mlp:128-relu)" in str(err.value)
    )
    # a trial of the front chosen, but trained without saving weights: refused, saying so
    with pytest.raises(UserError, match="trial 1 of study 'm' has no saved weights"):
        export_trial(url, "m", tmp_path / "out", 1)
    assert not (tmp_path / "out").exists()


def test_unknown_study_and_missing_storage(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    optuna.create_study(storage=open_storage(url), study_name="alpha")
    optuna.create_study(storage=open_storage(url), study_name="beta")
    with pytest.raises(UserError, match=r"no study named 'gamma' in .*; studies there: alpha, beta"):
        export_trial(url, "gamma", tmp_path / "out", None)
    with pytest.raises(UserError, match=r"no such file .*nothere\.db"):
        export_trial(f"sqlite:///{tmp_path}/nothere.db", "alpha", tmp_path / "out", None)
    assert not (tmp_path / "nothere.db").exists()  # looking did not create an empty database


# ----------------------------------------------------------------------------------------------------------------
# loading: hand-made checkpoints of untrained models


def handmade(directory: Path, spec: str = "mlp:32-relu", config_spec: str | None = None) -> Path:
    """A checkpoint laid out as ``export`` writes it (untrained weights): what the loading tests tamper with."""
    directory.mkdir(parents=True)
    model = init_model(build_model(parse_spec(spec)), torch.Generator().manual_seed(0))
    save_file(model.state_dict(), str(directory / WEIGHTS_FILE), metadata={"spec": spec, "seed": "0"})
    config = {"format": "archsearch-checkpoint", "format_version": 1, "spec": config_spec or spec, "seed": 0}
    (directory / CONFIG_FILE).write_text(json.dumps(config))
    return directory


def test_a_good_checkpoint_loads(tmp_path: Path) -> None:
    model, config = load_checkpoint(handmade(tmp_path / "c"))
    assert config["spec"] == "mlp:32-relu" and not model.training
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


class Evil:
    """Unpickling this runs ``touch <marker>``: what a malicious "checkpoint" does to whoever torch.load()s it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_posing_as_safetensors_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(Evil(marker))
    # the payload is live: unpickling it does create the file
    pickle.loads(pickle.dumps(Evil(tmp_path / "proof")))
    assert (tmp_path / "proof").exists()
    ckpt = handmade(tmp_path / "c")
    (ckpt / WEIGHTS_FILE).write_bytes(payload)
    with pytest.raises(UserError, match=r"not a safetensors file.*pickle"):
        load_checkpoint(ckpt)
    with pytest.raises(UserError, match="not a safetensors file"):
        predict_images(ckpt, [])
    assert not marker.exists()


def test_a_torch_save_file_is_refused(tmp_path: Path) -> None:
    ckpt = handmade(tmp_path / "c")
    torch.save(build_model(parse_spec("mlp:32-relu")).state_dict(), ckpt / WEIGHTS_FILE)
    with pytest.raises(UserError, match=r"not a safetensors file.*torch\.save"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("content", [b"", b"\x01\x00", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}xxxxxx", b"x" * 64])
def test_garbage_is_refused(tmp_path: Path, content: bytes) -> None:
    ckpt = handmade(tmp_path / "c")
    (ckpt / WEIGHTS_FILE).write_bytes(content)
    with pytest.raises(UserError, match="not a safetensors file"):
        load_checkpoint(ckpt)


def test_a_truncated_safetensors_file_is_refused(tmp_path: Path) -> None:
    ckpt = handmade(tmp_path / "c")
    data = (ckpt / WEIGHTS_FILE).read_bytes()
    (ckpt / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a valid safetensors file"):
        load_checkpoint(ckpt)


def test_weights_that_do_not_fit_the_spec_are_refused(tmp_path: Path) -> None:
    ckpt = handmade(tmp_path / "a", "mlp:128-relu", config_spec="mlp:64-relu")
    with pytest.raises(UserError, match=r"1\.weight has shape \(128, 784\), the spec needs \(64, 784\)"):
        load_checkpoint(ckpt)
    ckpt = handmade(tmp_path / "b", "mlp:128-relu", config_spec="mlp:128,64-relu")
    with pytest.raises(UserError, match=r"missing key\(s\) 5\.weight, 5\.bias$"):
        load_checkpoint(ckpt)
    ckpt = handmade(tmp_path / "c", "mlp:128,64-relu", config_spec="mlp:128-relu")
    with pytest.raises(UserError, match=r"unexpected key\(s\) 5\.bias, 5\.weight"):
        load_checkpoint(ckpt)
    # same shapes, another activation: only the recorded spec can tell
    ckpt = handmade(tmp_path / "d", "mlp:128-relu", config_spec="mlp:128-tanh")
    with pytest.raises(UserError, match=r"holds weights of mlp:128-relu, but config\.json says mlp:128-tanh"):
        load_checkpoint(ckpt)


def test_missing_or_broken_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not a directory"):
        load_checkpoint(tmp_path / "nothing")
    ckpt = handmade(tmp_path / "a")
    (ckpt / WEIGHTS_FILE).unlink()
    with pytest.raises(UserError, match=f"has no {WEIGHTS_FILE}"):
        load_checkpoint(ckpt)
    ckpt = handmade(tmp_path / "b")
    (ckpt / CONFIG_FILE).unlink()
    with pytest.raises(UserError, match=f"has no {CONFIG_FILE}"):
        load_checkpoint(ckpt)
    ckpt = handmade(tmp_path / "c")
    (ckpt / CONFIG_FILE).write_text("{oops")
    with pytest.raises(UserError, match="not valid JSON"):
        load_checkpoint(ckpt)
    (ckpt / CONFIG_FILE).write_text(json.dumps({"format": "archsearch-checkpoint", "format_version": 1}))
    with pytest.raises(UserError, match="lacks spec, seed"):
        load_checkpoint(ckpt)
    (ckpt / CONFIG_FILE).write_text(
        json.dumps({"format": "archsearch-checkpoint", "format_version": 1, "spec": "mlp:32-nope", "seed": 0})
    )
    with pytest.raises(UserError, match="unknown activation 'nope'"):
        load_checkpoint(ckpt)


def test_unreadable_images_are_named(tmp_path: Path) -> None:
    ckpt = handmade(tmp_path / "c")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(UserError, match=f"cannot read image {re.escape(str(bad))}"):
        predict_images(ckpt, [bad])
    with pytest.raises(UserError, match=r"cannot read image .*missing\.png"):
        predict_images(ckpt, [tmp_path / "missing.png"])


def test_predict_warns_about_light_backgrounds_and_reads_colour(tmp_path: Path) -> None:
    ckpt = handmade(tmp_path / "c")
    light = tmp_path / "light.jpg"
    Image.new("RGB", (28, 28), (250, 250, 250)).save(light)
    (result,) = predict_images(ckpt, [light])
    assert result["warnings"] and "invert" in result["warnings"][0]


def test_the_docs_plain_torch_snippet_rebuilds_what_load_checkpoint_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plain-torch code of the docs' "Models you can use without archsearch" (docs/guides/export.md), run as
    written on a BatchNorm + dropout checkpoint whose running statistics are not the initial ones: it must give
    load_checkpoint's logits (so the snippet's imports exist and its eval() is not forgotten)."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "guides" / "export.md").read_text()
    section = page.split("# Models you can use without archsearch", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    spec = "cnn:4c3p1-bn-p2-fc-d0.2-relu"
    handmade(tmp_path / "best", spec)
    weights = tmp_path / "best" / WEIGHTS_FILE
    state = load_checkpoint(tmp_path / "best")[0].state_dict()
    g = torch.Generator().manual_seed(1)
    for name, value in state.items():
        if name.endswith(("running_mean", "running_var")):
            state[name] = torch.rand(value.shape, generator=g) + 0.5
    save_file(state, str(weights), metadata={"spec": spec, "seed": "0"})
    monkeypatch.chdir(tmp_path)
    scope: dict[str, Any] = {}
    exec(compile(snippet, "docs/guides/export.md", "exec"), scope)  # our own docs: running them is the point
    x = torch.rand(5, 1, 28, 28, generator=g)
    reference, _ = load_checkpoint(tmp_path / "best")
    with torch.no_grad():
        assert torch.equal(scope["model"](x), reference(x))
        # and the check can fail: the same weights in training mode (batch statistics, dropout) differ
        assert not torch.allclose(scope["model"].train()(x), reference(x))
