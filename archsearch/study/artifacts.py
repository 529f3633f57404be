"""Trial weights as Optuna artifacts: one safetensors file per trial, listed by optuna-dashboard.

A trial trains one architecture once per seed (together, see :func:`archsearch.engine.train`). We keep the weights of
*every* run, not only the best one: which run to export is a choice made later (``archsearch export --seed``), and
comparing seeds, or re-checking a run's recorded metrics, needs all of them. The file maps runs to seeds
explicitly: tensor keys are ``run{k}.<key>`` where ``<key>`` is a key of the plain model's ``state_dict`` (exactly
``archsearch.models.build_model(spec).state_dict()``), and the safetensors metadata holds the spec string and the
JSON list ``seeds`` in which run ``k`` trained with ``seeds[k]``.

safetensors, never pickle: loading a pickle (``torch.load`` of an untrusted file) can run arbitrary code, while a
safetensors file is a JSON header plus raw tensor bytes. The file is written to a temporary directory, uploaded with
``optuna.artifacts.upload_artifact`` (so the dashboard lists it under the trial), then removed; the artifact id is
also recorded as the trial's user attribute ``weights_artifact``, which is what ``archsearch export`` looks up.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore
from safetensors import safe_open
from safetensors.torch import save_file

from archsearch import __version__
from archsearch.core.errors import UserError
from archsearch.engine import TrainResult
from archsearch.study.storage import artifact_dir

__all__ = [
    "WEIGHTS_ATTR",
    "WEIGHTS_FORMAT",
    "TrialWeights",
    "artifact_store",
    "read_trial_weights",
    "save_trial_weights",
    "trial_weights_tensors",
]

WEIGHTS_ATTR = "weights_artifact"  # trial user attribute holding the artifact id
WEIGHTS_FORMAT = "archsearch-trial-weights"
WEIGHTS_FORMAT_VERSION = "1"


def artifact_store(url: str | None, *, create: bool = True) -> FileSystemArtifactStore:
    """The artifact store belonging to storage ``url`` (see :func:`archsearch.study.storage.artifact_dir`).

    The directory is created unless ``create`` is false (readers such as ``export`` must not create it).
    """
    path = artifact_dir(url)
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create artifact directory {path}: {err.strerror or err}") from None
    return FileSystemArtifactStore(path)


def trial_weights_tensors(result: TrainResult) -> dict[str, torch.Tensor]:
    """Every run's plain weights as one flat dict, keys ``run{k}.<state_dict key>``, contiguous CPU tensors."""
    if result.model is None:
        raise ValueError("TrainResult has no model; cannot save weights")
    tensors: dict[str, torch.Tensor] = {}
    for k in range(result.model.k):
        for key, value in result.model.unfuse(k).state_dict().items():
            tensors[f"run{k}.{key}"] = value.detach().cpu().contiguous()
    return tensors


def save_trial_weights(trial: optuna.Trial, result: TrainResult, store: Any) -> str:
    """Upload all runs' weights of ``result`` as one safetensors artifact of ``trial``; returns the artifact id.

    The id is also recorded as the trial's user attribute ``weights_artifact``.
    """
    seeds = [r.seed for r in result.runs]
    metadata = {
        "format": WEIGHTS_FORMAT,
        "format_version": WEIGHTS_FORMAT_VERSION,
        "spec": result.spec,
        "seeds": json.dumps(seeds),
        "diverged_seeds": json.dumps([r.seed for r in result.runs if r.diverged]),
        "protocol": json.dumps(result.protocol),
        "archsearch_version": __version__,
        "torch_version": torch.__version__,
    }
    tensors = trial_weights_tensors(result)
    if result.model is not None and result.model.k != len(seeds):
        raise ValueError(f"model has {result.model.k} runs but the result lists {len(seeds)} seeds")
    with tempfile.TemporaryDirectory(prefix="archsearch-weights-") as tmp:
        # The file name is what optuna-dashboard shows for the artifact.
        path = Path(tmp) / f"trial{trial.number}-weights.safetensors"
        save_file(tensors, str(path), metadata=metadata)
        artifact_id = optuna.artifacts.upload_artifact(
            artifact_store=store, file_path=str(path), study_or_trial=trial, mimetype="application/octet-stream"
        )
    trial.set_user_attr(WEIGHTS_ATTR, artifact_id)
    return artifact_id


@dataclass
class TrialWeights:
    """The contents of a trial's weights file: ``runs[k]`` is run k's plain state dict, trained with ``seeds[k]``."""

    spec: str
    seeds: list[int]
    runs: list[dict[str, torch.Tensor]]
    diverged_seeds: list[int] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    def state_dict(self, seed: int) -> dict[str, torch.Tensor]:
        return self.runs[self.seeds.index(seed)]


def read_trial_weights(path: Path) -> TrialWeights:
    """Read a file written by :func:`save_trial_weights` (safetensors only; raises ``UserError`` if malformed)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata: dict[str, str] = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    except Exception as err:  # safetensors raises its own error type, and OSError
        raise UserError(f"{path} is not a readable safetensors weights file: {err}") from None
    if metadata.get("format") != WEIGHTS_FORMAT:
        raise UserError(f"{path} is not an archsearch trial weights file (metadata format {metadata.get('format')!r})")
    try:
        seeds = [int(s) for s in json.loads(metadata["seeds"])]
        diverged = [int(s) for s in json.loads(metadata.get("diverged_seeds", "[]"))]
        spec = metadata["spec"]
    except (KeyError, ValueError, TypeError) as err:
        raise UserError(f"{path}: bad weights metadata ({err})") from None
    runs: list[dict[str, torch.Tensor]] = [{} for _ in seeds]
    for key, value in tensors.items():
        prefix, _, rest = key.partition(".")
        if not prefix.startswith("run") or not prefix[3:].isdigit() or int(prefix[3:]) >= len(seeds) or not rest:
            raise UserError(f"{path}: unexpected tensor {key!r} for {len(seeds)} run(s)")
        runs[int(prefix[3:])][rest] = value
    return TrialWeights(spec, seeds, runs, diverged, metadata)
