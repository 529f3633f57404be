"""Checkpoints: export one trained run from a study, load it safely, re-evaluate it, and classify images with it.

A checkpoint is a directory with two files, written atomically (a temporary directory renamed into place, so a
failed export leaves nothing half-written):

* ``model.safetensors``: the plain ``nn.Sequential`` state dict of one run, keys exactly those of
  ``archsearch.models.build_model(spec).state_dict()``;
* ``config.json``: everything needed to rebuild and trust it: the spec, the seed, the training protocol, the input
  convention, class names, the metrics the study recorded for that seed, where it came from and library versions.

Which run? A trial trains one architecture once per seed and keeps every run's weights (see
:mod:`archsearch.artifacts`). ``export`` takes the seed it is given, else **the best run on the monitored split**:
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
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from archsearch import __version__
from archsearch.artifacts import WEIGHTS_ATTR, artifact_store, read_trial_weights
from archsearch.data import CLASSES, load_dataset
from archsearch.errors import UserError
from archsearch.metrics import METRIC_NAMES, classification_metrics
from archsearch.models import build_model, count_params
from archsearch.spec import IMAGE_SHAPE, Spec, SpecError, parse_spec
from archsearch.storage import DEFAULT_STORAGE, artifact_dir, load_existing_study, storage_label
from archsearch.train import predict_plain

__all__ = [
    "CHECKPOINT_FORMAT",
    "CONFIG_FILE",
    "FORMATS",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "ParetoChoiceNeeded",
    "evaluate_checkpoint",
    "export_trial",
    "load_checkpoint",
    "predict_images",
]

CHECKPOINT_FORMAT = "archsearch-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMATS = ("torchscript", "onnx")
_FORMAT_FILES = {"torchscript": "model.pt", "onnx": "model.onnx"}
_REQUIRED_KEYS = ("format", "format_version", "spec", "seed")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header

INPUT_DESCRIPTION: dict[str, Any] = {
    "shape": list(IMAGE_SHAPE),
    "layout": "NCHW: a batch of (1, 28, 28) images; MLPs flatten it themselves",
    "dtype": "float32",
    "color": "grayscale, one channel",
    "scaling": "uint8 pixel / 255, so values in [0, 1]",
    "normalisation": "none (no mean/std)",
    "convention": "Fashion-MNIST: a light object on a black (0) background, centred, 28x28",
}
OUTPUT_DESCRIPTION = "logits (N, 10) in the order of `classes`; softmax gives probabilities"


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
    artifact_id = trial.user_attrs.get(WEIGHTS_ATTR)
    if not artifact_id:
        raise UserError(
            f"trial {trial.number} of study {study_name!r} has no saved weights (trained before checkpoints were "
            f"saved, or without an artifact store); trials with weights: {_trials_with_weights(study) or 'none'}"
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
    spec = parse_spec(weights.spec)
    chosen, selection = _pick_seed(trial, weights.seeds, weights.diverged_seeds, seed)
    model = build_model(spec)
    _check_state_dict(weights.state_dict(chosen), model, f"weights artifact {artifact_id}")
    model.load_state_dict(weights.state_dict(chosen))
    model.eval()
    config = {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "spec": str(spec),
        "spec_dict": spec.to_dict(),
        "params": count_params(spec),
        "seed": chosen,
        "selection": selection,
        "protocol": attrs.get("protocol"),
        "input": INPUT_DESCRIPTION,
        "output": OUTPUT_DESCRIPTION,
        "classes": list(CLASSES),
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
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": CHECKPOINT_FORMAT, "spec": str(spec), "seed": str(chosen)}
    with _atomic_dir(out_dir) as tmp_dir:
        from safetensors.torch import save_file

        save_file(state, str(tmp_dir / WEIGHTS_FILE), metadata=meta)
        for fmt in formats:
            _write_format(fmt, model, tmp_dir / _FORMAT_FILES[fmt])
        (tmp_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    files = [CONFIG_FILE, WEIGHTS_FILE, *(_FORMAT_FILES[f] for f in formats)]
    return {"out": str(out_dir), "files": files, "config": config}


def _check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    out: list[str] = []
    for fmt in formats:
        fmt = fmt.lower()
        if fmt not in FORMATS:
            raise UserError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
        if fmt == "onnx":
            missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
            if missing:
                raise UserError(f"ONNX export needs {' and '.join(missing)}: pip install onnx onnxscript")
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


@contextlib.contextmanager
def _atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``out_dir``; on success it replaces ``out_dir``, on failure it vanishes."""
    parent = out_dir.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create {parent}: {err.strerror or err}") from None
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        yield tmp
        mask = _umask()  # mkdtemp (and safetensors) create private files; a checkpoint is an ordinary directory
        for path in tmp.iterdir():
            os.chmod(path, 0o666 & ~mask)
        os.chmod(tmp, 0o777 & ~mask)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out_dir.name}.old-"))
            os.replace(out_dir, old / "previous")
            try:
                os.replace(tmp, out_dir)
            except OSError:
                os.replace(old / "previous", out_dir)
                raise
            finally:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
    monitor = str(trial.user_attrs.get("monitor", "test"))
    accs = trial.user_attrs.get(f"{monitor}_per_seed", {}).get("accuracy")
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
    for key, per_metric in trial.user_attrs.items():
        if not key.endswith("_per_seed") or not isinstance(per_metric, dict):
            continue
        split = key.removesuffix("_per_seed")
        if any(len(values) != len(ok) for values in per_metric.values()):
            raise UserError(f"trial {trial.number}: {key} does not have one value per run that did not diverge")
        out[split] = {name: values[i] for name, values in per_metric.items()}
    detail = trial.user_attrs.get("test_detail", {}).get(str(seed))
    if detail:
        out.setdefault("test", {}).update(detail)
    return out


def _write_format(fmt: str, model: nn.Module, path: Path) -> None:
    example = torch.zeros(2, *IMAGE_SHAPE)
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


# ----------------------------------------------------------------------------------------------------------------
# load


def _read_config(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise UserError(f"checkpoint {directory} is not a directory (export one with `archsearch export`)")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"checkpoint {directory} has no {CONFIG_FILE} (export one with `archsearch export`)")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UserError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} must hold a JSON object")
    if missing := [k for k in _REQUIRED_KEYS if k not in config]:
        raise UserError(f"{path} lacks {', '.join(missing)}; is it an archsearch checkpoint?")
    if config["format"] != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: format {config['format']!r} is not {CHECKPOINT_FORMAT!r}")
    if config["format_version"] != FORMAT_VERSION:
        raise UserError(
            f"{path}: checkpoint format version {config['format_version']!r}; this archsearch reads {FORMAT_VERSION}"
        )
    return config


def _check_safetensors_file(path: Path) -> dict[str, Any]:
    """Check that ``path`` is structurally a safetensors file (8-byte header length, JSON header) without loading
    it; returns the header. Pickles and zip archives (``torch.save``) are recognised and named."""
    if not path.is_file():
        raise UserError(f"checkpoint {path.parent} has no {path.name}")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        header_bytes = f.read(n) if 0 < n <= min(_MAX_HEADER, size - 8) else b""
    what = ""
    if head.startswith(b"PK\x03\x04"):
        what = " (it is a zip archive, as torch.save writes: pickle, which can run code, so it is never loaded)"
    elif head[:1] == b"\x80":
        what = " (it looks like a Python pickle, which can run code, so it is never loaded)"
    try:
        header = json.loads(header_bytes) if header_bytes else None
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise UserError(f"{path} is not a safetensors file{what}")
    return header


def _shape(t: torch.Tensor) -> str:
    return f"({', '.join(map(str, t.shape))})"


def _check_state_dict(state: dict[str, torch.Tensor], model: nn.Module, where: str) -> None:
    """Keys, shapes and dtypes must be exactly those of ``model``; the message names the first mismatch."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = sorted(k for k in state if k not in expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing key(s) {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected key(s) {', '.join(unexpected)}")
        raise UserError(f"{where} does not match the spec's model: {'; '.join(parts)}")
    for key, want in expected.items():
        got = state[key]
        if tuple(got.shape) != tuple(want.shape):
            raise UserError(
                f"{where} does not match the spec's model: {key} has shape {_shape(got)}, the spec needs {_shape(want)}"
            )
        if got.dtype != want.dtype:
            raise UserError(f"{where}: {key} is {got.dtype}, the spec's model needs {want.dtype}")


def load_checkpoint(directory: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint directory: the plain model (CPU, eval mode) and its config. Raises ``UserError`` for a
    missing or invalid config, a weights file that is not safetensors, or weights that do not fit the spec."""
    directory = Path(directory)
    config = _read_config(directory)
    try:
        spec: Spec = parse_spec(str(config["spec"]))
    except SpecError as err:
        raise UserError(f"{directory / CONFIG_FILE}: {err}") from None
    weights = directory / WEIGHTS_FILE
    header = _check_safetensors_file(weights)
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights), device="cpu")
    except Exception as err:  # safetensors' own error type (truncated file, bad offsets, …)
        raise UserError(f"{weights} is not a valid safetensors file: {err}") from None
    model = build_model(spec)
    _check_state_dict(state, model, str(weights))
    metadata = header.get("__metadata__")
    recorded = metadata.get("spec") if isinstance(metadata, dict) else None
    if recorded is not None and recorded != str(spec):
        # Same shapes, other activation (mlp:128-relu vs mlp:128-tanh) would load silently and predict garbage.
        raise UserError(f"{weights} holds weights of {recorded}, but {CONFIG_FILE} says {spec}")
    model.load_state_dict(state)
    model.eval()
    return model, config


# ----------------------------------------------------------------------------------------------------------------
# evaluate / predict


def evaluate_checkpoint(directory: Path, data_dir: Path | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint on the Fashion-MNIST test set, beside the metrics recorded when it was trained.

    ``matches_recorded`` is true when accuracy, precision, recall and F1 equal the recorded ones exactly: training
    computed them with the same plain model and the same chunked evaluation (``predict_plain``), so on the same
    kind of device they are bit-identical; a model trained on a GPU may differ in a few predictions on a CPU.
    """
    model, config = load_checkpoint(directory)
    data = load_dataset(data_dir)
    x, y = data.evals["test"]
    preds = predict_plain([model], x)[0]
    metrics = classification_metrics(preds, y)
    recorded = (config.get("metrics") or {}).get("test") or {}
    differences = {
        name: {"evaluated": metrics[name], "recorded": recorded.get(name)}
        for name in METRIC_NAMES
        if recorded.get(name) != metrics[name]
    }
    return {
        "checkpoint": str(directory),
        "spec": config["spec"],
        "seed": config["seed"],
        "split": "test",
        "images": len(y),
        "metrics": metrics,
        "recorded": recorded,
        "matches_recorded": bool(recorded) and not differences,
        "differences": differences,
    }


def _open_image(path: Path) -> tuple[torch.Tensor, list[str]]:
    from PIL import Image, UnidentifiedImageError

    warnings_: list[str] = []
    try:
        with Image.open(path) as img:
            img.load()
            gray = img.convert("L")
    except UnidentifiedImageError:
        raise UserError(f"cannot read image {path}: not an image format Pillow can read") from None
    except (OSError, Image.DecompressionBombError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise UserError(f"cannot read image {path}: {reason}") from None
    if gray.size != (28, 28):
        warnings_.append(
            f"resized from {gray.size[0]}x{gray.size[1]} to 28x28; the model only saw 28x28 Fashion-MNIST images"
        )
        gray = gray.resize((28, 28), Image.Resampling.BILINEAR)
    pixels = torch.frombuffer(bytearray(gray.tobytes()), dtype=torch.uint8).reshape(1, 28, 28)
    x = pixels.float().div_(255.0)  # exactly as archsearch.data scales the dataset
    border = torch.cat([x[0, 0], x[0, -1], x[0, :, 0], x[0, :, -1]])
    if border.mean() > 0.5:
        warnings_.append(
            "the background looks light; Fashion-MNIST images are light objects on black, so invert it first"
        )
    return x, warnings_


def predict_images(directory: Path, paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Classify image files with a checkpoint. Each image is read as grayscale and scaled to [0, 1]; other sizes
    are resized to 28x28 with a warning. Returns per image its top class, probability and all 10 probabilities."""
    model, config = load_checkpoint(directory)
    classes = list(config.get("classes") or CLASSES)
    if len(classes) != len(CLASSES):
        classes = list(CLASSES)
    loaded = [(Path(p), *_open_image(Path(p))) for p in paths]  # read all first: a bad file fails before any work
    results = []
    with torch.no_grad():
        for path, x, notes in loaded:
            probs = torch.softmax(model(x.unsqueeze(0)).double(), dim=-1)[0]
            top = int(probs.argmax())
            results.append(
                {
                    "path": str(path),
                    "class": classes[top],
                    "index": top,
                    "probability": float(probs[top]),
                    "probabilities": {c: float(p) for c, p in zip(classes, probs, strict=True)},
                    "warnings": notes,
                }
            )
    return results
