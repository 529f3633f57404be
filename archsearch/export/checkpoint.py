"""Checkpoints without Optuna: load an exported model safely, re-evaluate it, classify images with it.

A checkpoint is a directory with ``model.safetensors`` (the plain ``nn.Sequential`` state dict of one run) and
``config.json`` (spec, seed, protocol, input convention, class names, recorded metrics, provenance), written by
:mod:`archsearch.export`. This module needs torch and safetensors only.

Loading never unpickles: weights are read with ``safetensors.torch.load_file`` only, after checking that the file
really is safetensors, and every key and shape is checked against the spec before anything is loaded. ``torch.load``
of an untrusted file can run arbitrary code; a checkpoint directory is exactly the kind of file people pass around.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from archsearch.core.errors import UserError
from archsearch.core.metrics import METRIC_NAMES, classification_metrics, logits, predict_plain
from archsearch.data import FASHION_MNIST, DatasetInfo, load_dataset
from archsearch.models import Spec, SpecError, build_model, parse_spec

__all__ = [
    "CHECKPOINT_FORMAT",
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "MirrorAveraged",
    "check_state_dict",
    "checkpoint_dataset",
    "checkpoint_tta",
    "evaluate_checkpoint",
    "load_checkpoint",
    "predict_images",
]

CHECKPOINT_FORMAT = "archsearch-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_REQUIRED_KEYS = ("format", "format_version", "spec", "seed")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


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


def check_state_dict(state: dict[str, torch.Tensor], model: nn.Module, where: str) -> None:
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


def checkpoint_dataset(config: dict[str, Any]) -> DatasetInfo:
    """The dataset a checkpoint was trained on, as its config records it (Fashion-MNIST for older checkpoints)."""
    recorded = config.get("dataset")
    if recorded is None:
        return FASHION_MNIST
    try:
        return DatasetInfo.from_dict(recorded)
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{CONFIG_FILE}: bad dataset record ({err})") from None


class MirrorAveraged(nn.Module):
    """A model whose logits are the mean over each image and its left-right mirror (a recipe's ``tta``): what the
    TorchScript and ONNX files of such a checkpoint hold, so that they predict as ``evaluate`` scores."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits(self.model, x, tta=True)


def checkpoint_tta(config: dict[str, Any]) -> bool:
    """Whether the model was trained to be evaluated with mirrored images too (its recipe's ``tta``): evaluate and
    predict then average the logits of each image and its mirror, as training's evaluation did."""
    protocol = config.get("protocol")
    return bool(protocol.get("tta", False)) if isinstance(protocol, dict) else False


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
    info = checkpoint_dataset(config)
    model = build_model(spec, info.shape, info.num_classes)
    check_state_dict(state, model, str(weights))
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
    """Evaluate a checkpoint on the test set of the dataset it was trained on, beside the metrics recorded then.

    ``matches_recorded`` is true when accuracy, precision, recall and F1 equal the recorded ones exactly: training
    computed them with the same plain model and the same chunked evaluation (``predict_plain``), so on the same
    kind of device they are bit-identical; a model trained on a GPU may differ in a few predictions on a CPU.
    """
    model, config = load_checkpoint(directory)
    info = checkpoint_dataset(config)
    data = load_dataset(data_dir, dataset=info.name)
    if (data.info.shape, data.info.classes) != (info.shape, info.classes):
        raise UserError(
            f"the {info.name} found now ({data.info.shape}, {data.info.num_classes} classes) is not the one "
            f"{directory} was trained on ({info.shape}, {info.num_classes} classes)"
        )
    x, y = data.evals["test"]
    preds = predict_plain([model], x, info.prep(), checkpoint_tta(config))[0]
    metrics = classification_metrics(preds, y, info.num_classes)
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


def _open_image(path: Path, info: DatasetInfo) -> tuple[torch.Tensor, list[str]]:
    """An image file as the model's input: the checkpoint's channels and size, scaled and normalised as its
    dataset was (archsearch.data)."""
    from PIL import Image, UnidentifiedImageError

    warnings_: list[str] = []
    c, h, w = info.shape.channels, info.shape.height, info.shape.width
    try:
        with Image.open(path) as img:
            img.load()
            gray = img.convert("L" if c == 1 else "RGB")
    except UnidentifiedImageError:
        raise UserError(f"cannot read image {path}: not an image format Pillow can read") from None
    except (OSError, Image.DecompressionBombError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise UserError(f"cannot read image {path}: {reason}") from None
    if gray.size != (w, h):
        warnings_.append(
            f"resized from {gray.size[0]}x{gray.size[1]} to {w}x{h}; the model only saw {w}x{h} {info.name} images"
        )
        gray = gray.resize((w, h), Image.Resampling.BILINEAR)
    pixels = torch.frombuffer(bytearray(gray.tobytes()), dtype=torch.uint8).reshape(h, w, c).permute(2, 0, 1)
    x = info.prep()(pixels.contiguous())  # exactly as archsearch.data scales (and normalises) the dataset
    border = torch.cat([pixels[0, 0], pixels[0, -1], pixels[0, :, 0], pixels[0, :, -1]]).float() / 255
    if info.name == FASHION_MNIST.name and border.mean() > 0.5:
        warnings_.append(
            "the background looks light; Fashion-MNIST images are light objects on black, so invert it first"
        )
    return x, warnings_


def predict_images(directory: Path, paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Classify image files with a checkpoint. Each image is read with the checkpoint's channels (grayscale or RGB)
    and scaled as its dataset was; other sizes are resized with a warning. Returns per image its top class, its
    probability and every class's."""
    model, config = load_checkpoint(directory)
    info = checkpoint_dataset(config)
    classes, tta = list(info.classes), checkpoint_tta(config)
    loaded = [(Path(p), *_open_image(Path(p), info)) for p in paths]  # read all first: a bad file fails before any work
    results = []
    with torch.no_grad():
        for path, x, notes in loaded:
            probs = torch.softmax(logits(model, x.unsqueeze(0), tta).double(), dim=-1)[0]
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
