"""Export one trained run from a study as a checkpoint that loads without Optuna (see :mod:`archsearch.export`).

A checkpoint is a directory with two files, written atomically (a temporary directory renamed into place, so a
failed export leaves nothing half-written):

* ``model.safetensors``: the plain ``nn.Sequential`` state dict of one run, keys exactly those of
  ``archsearch.models.build_model(spec).state_dict()``;
* ``config.json``: everything needed to rebuild and trust it: the spec, the seed, the training protocol, the input
  convention, class names, the metrics the study recorded for that seed, where it came from and library versions.

Which run? A trial trains one architecture once per seed and keeps every run's weights (see
:mod:`archsearch.study.artifacts`). ``export`` takes the seed it is given, else **the best run on the monitored split**:
the validation split for searches, the test split for ``reproduce`` (which, like the report, has no validation
set; that choice is then biased upwards by picking the best of N on the test set, and ``config.json`` says so under
``selection``). The median run would be the less biased pick; the best one is what a user exporting "the model"
expects, so that is the default and the rule is written down with the checkpoint.

Loading never unpickles: weights are read with ``safetensors.torch.load_file`` only, after checking that the file
really is safetensors, and every key and shape is checked against the spec before anything is loaded. ``torch.load``
of an untrusted file can run arbitrary code; a checkpoint directory is exactly the kind of file people pass around.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from archsearch import __version__
from archsearch.core.errors import UserError
from archsearch.data import FASHION_MNIST, DatasetInfo
from archsearch.export.checkpoint import (
    CHECKPOINT_FORMAT,
    CONFIG_FILE,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    MirrorAveraged,
    check_state_dict,
    checkpoint_tta,
)
from archsearch.models import build_model, count_params, parse_spec
from archsearch.results.files import output_dir
from archsearch.study.artifacts import WEIGHTS_ATTR, artifact_store, read_trial_weights
from archsearch.study.records import TrialRecord
from archsearch.study.storage import DEFAULT_STORAGE, artifact_dir, load_existing_study, storage_label

__all__ = ["FORMATS", "ParetoChoiceNeeded", "export_trial"]

FORMATS = ("torchscript", "onnx")
_FORMAT_FILES = {"torchscript": "model.pt", "onnx": "model.onnx"}


def input_description(info: DatasetInfo) -> dict[str, Any]:
    """How the model wants its input, in words and numbers (what `predict` and any other user must do)."""
    s = info.shape
    out: dict[str, Any] = {
        "shape": [s.channels, s.height, s.width],
        "layout": f"NCHW: a batch of ({s.channels}, {s.height}, {s.width}) images; MLPs flatten it themselves",
        "dtype": "float32",
        "color": "grayscale, one channel" if s.channels == 1 else f"{s.channels} channels (RGB)",
        "scaling": "uint8 pixel / 255, so values in [0, 1]",
        "normalisation": "none (no mean/std)"
        if info.mean is None
        else f"then (x - mean) / std per channel, mean {list(info.mean)}, std {list(info.std or ())}",
    }
    if info.name == FASHION_MNIST.name:
        out["convention"] = "Fashion-MNIST: a light object on a black (0) background, centred, 28x28"
    return out


def _output_description(classes: int) -> str:
    return f"logits (N, {classes}) in the order of `classes`; softmax gives probabilities"


class ParetoChoiceNeeded(UserError):
    """A multi-objective study has no single best trial: the user must choose one on the Pareto ``front``."""

    def __init__(self, study_name: str, front: list[dict[str, Any]]) -> None:
        self.study_name = study_name
        self.front = front
        listing = "; ".join(
            f"{t['number']} ({', '.join(_fmt_value(v) for v in t['values'])}; {t['spec']})" for t in front
        )
        super().__init__(
            f"study {study_name!r} has several objectives, so there is no single best trial; choose one of its "
            f"Pareto front with --trial: {listing or 'none (no complete trial)'}"
        )


def _fmt_value(value: float) -> str:
    return f"{value:g}" if isinstance(value, int | float) else str(value)


# ----------------------------------------------------------------------------------------------------------------
# export


def export_trial(
    storage_url: str | None,
    study_name: str,
    out_dir: Path,
    trial_number: int | None,
    seed: int | None = None,
    formats: Sequence[str] = (),
) -> dict[str, Any]:
    """Export one run of one trial to ``out_dir`` (``model.safetensors`` + ``config.json`` [+ other formats]).

    ``trial_number`` None picks the study's best trial (single objective only; a multi-objective study raises
    :class:`ParetoChoiceNeeded`). ``seed`` None picks the run with the best accuracy on the monitored split.
    Returns ``{"out": str, "files": [...], "config": {...}}``.
    """
    out_dir = Path(out_dir)
    formats = _check_formats(formats)
    _check_out_dir(out_dir)
    study = load_existing_study(storage_url, study_name)
    trial = _pick_trial(study, study_name, trial_number)
    artifact_id, weights = _trial_weights(study, trial, storage_url)
    spec = parse_spec(weights.spec)
    recorded = trial.user_attrs.get("dataset_info")
    info = DatasetInfo.from_dict(recorded) if isinstance(recorded, dict) else FASHION_MNIST  # older trials: Fashion
    chosen, selection = _pick_seed(trial, weights.seeds, weights.diverged_seeds, seed)
    model = build_model(spec, info.shape, info.num_classes)
    check_state_dict(weights.state_dict(chosen), model, f"weights artifact {artifact_id}")
    model.load_state_dict(weights.state_dict(chosen))
    model.eval()
    config = {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "spec": str(spec),
        "spec_dict": spec.to_dict(),
        "params": count_params(spec, info.shape, info.num_classes),
        "seed": chosen,
        "selection": selection,
        "protocol": trial.user_attrs.get("protocol"),
        "dataset": info.to_dict(),
        "input": input_description(info),
        "output": _output_description(info.num_classes),
        "classes": list(info.classes),
        "metrics": _seed_metrics(trial, weights.seeds, weights.diverged_seeds, chosen),
        "source": {
            "study": study_name,
            "trial": trial.number,
            "storage": storage_label(storage_url or DEFAULT_STORAGE),
            "weights_artifact": str(artifact_id),
            "trial_seeds": weights.seeds,
        },
        "versions": {"archsearch": __version__, "torch": torch.__version__},
        "files": {"weights": WEIGHTS_FILE, **{f: _FORMAT_FILES[f] for f in formats}},
    }
    _write_checkpoint(out_dir, model, config, formats, info)
    files = [CONFIG_FILE, WEIGHTS_FILE, *(_FORMAT_FILES[f] for f in formats)]
    return {"out": str(out_dir), "files": files, "config": config}


def _trial_weights(study: optuna.Study, trial: FrozenTrial, storage_url: str | None) -> tuple[str, Any]:
    """The trial's weights artifact: its id and every run's weights, checked to be the trial's."""
    artifact_id = trial.user_attrs.get(WEIGHTS_ATTR)
    if not artifact_id:
        raise UserError(
            f"trial {trial.number} of study {study.study_name!r} has no saved weights (trained before checkpoints "
            f"were saved, or without an artifact store); trials with weights: {_trials_with_weights(study) or 'none'}"
        )
    store = artifact_store(storage_url, create=False)
    with tempfile.TemporaryDirectory(prefix="archsearch-export-") as tmp:
        downloaded = Path(tmp) / "weights.safetensors"
        try:
            optuna.artifacts.download_artifact(
                artifact_store=store, file_path=str(downloaded), artifact_id=str(artifact_id)
            )
        except (optuna.artifacts.exceptions.ArtifactNotFound, OSError, ValueError):
            raise UserError(
                f"weights artifact {artifact_id} of trial {trial.number} is missing from the artifact store "
                f"{artifact_dir(storage_url)}; run export from the directory the study was run in"
            ) from None
        weights = read_trial_weights(downloaded)
    attrs = trial.user_attrs
    if weights.spec != attrs.get("spec", weights.spec) or weights.seeds != list(attrs.get("seeds", weights.seeds)):
        raise UserError(f"weights artifact {artifact_id} does not belong to trial {trial.number} (spec/seeds differ)")
    return str(artifact_id), weights


def _write_checkpoint(
    out_dir: Path, model: nn.Module, config: dict[str, Any], formats: Sequence[str], info: DatasetInfo
) -> None:
    """The checkpoint's files, whole or not at all: weights, the other formats (mirror-averaging where the recipe
    evaluates with mirrored images), config.json."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": CHECKPOINT_FORMAT, "spec": str(config["spec"]), "seed": str(config["seed"])}
    with output_dir(out_dir, replace=True) as tmp_dir:
        from safetensors.torch import save_file

        save_file(state, str(tmp_dir / WEIGHTS_FILE), metadata=meta)
        served = MirrorAveraged(model).eval() if checkpoint_tta(config) else model
        for fmt in formats:
            _write_format(fmt, served, tmp_dir / _FORMAT_FILES[fmt], info)
        (tmp_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def _check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    out: list[str] = []
    for fmt in formats:
        fmt = fmt.lower()
        if fmt not in FORMATS:
            raise UserError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
        if fmt == "onnx":
            missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
            if missing:
                raise UserError(f"ONNX export needs {' and '.join(missing)}: pip install 'archsearch[onnx]'")
        if fmt not in out:
            out.append(fmt)
    return tuple(out)


def _is_checkpoint_dir(path: Path) -> bool:
    try:
        return json.loads((path / CONFIG_FILE).read_text()).get("format") == CHECKPOINT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _check_out_dir(out_dir: Path) -> None:
    """``out_dir`` may be new, empty, or an earlier archsearch checkpoint (replaced); anything else is refused."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise UserError(f"--out {out_dir} exists and is not a directory")
        if any(out_dir.iterdir()) and not _is_checkpoint_dir(out_dir):
            raise UserError(f"--out {out_dir} exists and is not an archsearch checkpoint; refusing to overwrite it")
    existing = out_dir.absolute().parent
    while not existing.exists():  # the parents are created only when writing, so a refused export creates nothing
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise UserError(f"cannot write --out {out_dir}: {existing} is not a writable directory")


def _trials_with_weights(study: optuna.Study) -> str:
    numbers = [
        t.number
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get(WEIGHTS_ATTR)
    ]
    return ", ".join(map(str, numbers))


def _pick_trial(study: optuna.Study, name: str, number: int | None) -> FrozenTrial:
    if number is None:
        if len(study.directions) > 1:
            front = [
                {"number": t.number, "values": list(t.values), "spec": t.user_attrs.get("spec")}
                for t in sorted(study.best_trials, key=lambda t: t.number)
            ]
            raise ParetoChoiceNeeded(name, front)
        try:
            return study.best_trial
        except ValueError:
            raise UserError(f"study {name!r} has no complete trial yet") from None
    trials = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    if not trials:
        raise UserError(f"study {name!r} has no trial {number} (trials 0-{len(study.trials) - 1})")
    trial = trials[0]
    if trial.state != TrialState.COMPLETE:
        raise UserError(f"trial {number} of study {name!r} is {trial.state.name}, not COMPLETE")
    return trial


def _ok_seeds(seeds: Sequence[int], diverged: Sequence[int]) -> list[int]:
    return [s for s in seeds if s not in set(diverged)]


def _pick_seed(
    trial: FrozenTrial, seeds: list[int], diverged: list[int], seed: int | None
) -> tuple[int, dict[str, Any]]:
    """The run to export and, for config.json, how it was chosen."""
    ok = _ok_seeds(seeds, diverged)
    if seed is not None:
        if seed not in seeds:
            raise UserError(f"trial {trial.number} has no run with seed {seed}; its seeds: {seeds}")
        if seed not in ok:
            raise UserError(f"the run with seed {seed} of trial {trial.number} diverged; seeds that did not: {ok}")
        return seed, {"rule": "seed given by the user"}
    if not ok:
        raise UserError(f"every run of trial {trial.number} diverged; nothing to export")
    record = TrialRecord.from_trial(trial)
    monitor, judged = record.monitor, record.judged
    accs = judged.per_seed.get("accuracy") if judged is not None else None
    if not isinstance(accs, list) or len(accs) != len(ok):
        raise UserError(f"trial {trial.number} has no per-seed {monitor} accuracy to choose a run; pass --seed")
    best = max(range(len(ok)), key=lambda i: (accs[i], -i))  # ties: the first seed
    selection: dict[str, Any] = {
        "rule": f"best accuracy on the monitored split ({monitor}) among the trial's {len(ok)} run(s)",
        "monitor": monitor,
        "accuracy_per_seed": dict(zip(map(str, ok), accs, strict=True)),
    }
    if monitor == "test":
        selection["note"] = (
            "chosen on the test set (the report's protocol has no validation split): its test metrics are the best "
            "of several runs, so they overstate what a fresh run would get; see accuracy_per_seed"
        )
    return ok[best], selection


def _seed_metrics(trial: FrozenTrial, seeds: list[int], diverged: list[int], seed: int) -> dict[str, Any]:
    """The metrics the study recorded for ``seed``. Per-seed lists skip diverged runs (see objective.summarize)."""
    ok = _ok_seeds(seeds, diverged)
    i = ok.index(seed)
    out: dict[str, Any] = {}
    for split, scores in TrialRecord.from_trial(trial).scores.items():
        if any(len(values) != len(ok) for values in scores.per_seed.values()):
            raise UserError(f"trial {trial.number}: {split}_per_seed has not one value per run that did not diverge")
        out[split] = {name: values[i] for name, values in scores.per_seed.items()}
    detail = trial.user_attrs.get("test_detail", {}).get(str(seed))
    if detail:
        out.setdefault("test", {}).update(detail)
    return out


def _write_format(fmt: str, model: nn.Module, path: Path, info: DatasetInfo) -> None:
    s = info.shape
    example = torch.zeros(2, s.channels, s.height, s.width)
    if fmt == "torchscript":
        # TorchScript is deprecated upstream (FutureWarning) but still the easiest file for libtorch/C++ users.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(model, example)
            torch.jit.save(traced, str(path))
    elif fmt == "onnx":  # needs the optional onnx and onnxscript packages (checked by _check_formats)
        batch = torch.export.Dim("batch")
        # The exporter prints progress on stdout, which would corrupt `archsearch export --json`.
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=["image"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
                dynamo=True,
                external_data=False,  # one self-contained file; archsearch models are far below protobuf's 2 GB
                verbose=False,
            )
