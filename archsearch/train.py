"""The one trainer every command uses. It knows nothing of Optuna: it takes a spec, seeds, a protocol and data
tensors, and returns plain data. Callers observe (and may stop) training through callbacks.

All seeds of one architecture train together as one ``FusedModel``, stepped by ``archsearch.step.FusedStep``. Each
run keeps everything that makes it *that* run: its own generator (seeded with its seed) draws first its Xavier-normal
initialisation, then every epoch's shuffling order; its loss is averaged over its own batch; AdamW is element-wise,
so its optimiser state is its own slice of the stacked state. A seed therefore gets the same result in any group, up
to float rounding of batched vs unbatched kernels (tests/test_train.py checks this against a plain PyTorch loop), and
bit-identical results when rerun the same way on the same machine.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

from archsearch.data import Dataset, as_float
from archsearch.metrics import classification_metrics
from archsearch.models import FusedModel, build_model, init_model
from archsearch.spec import MLPSpec, Spec
from archsearch.step import FusedStep

__all__ = [
    "EpochReport",
    "Protocol",
    "RunResult",
    "TrainResult",
    "default_device",
    "predict_plain",
    "train",
    "use_huge_pages",
]

EVAL_CHUNK = 2000


@dataclass(frozen=True)
class Protocol:
    """How to train; the defaults are the report's protocol."""

    epochs: int = 50
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 1e-3
    loss: Literal["ce", "kl"] = "ce"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EpochReport:
    """Handed to ``on_epoch`` after every epoch. ``monitor`` is the split the accuracies are measured on."""

    epoch: int  # 1-based
    epochs: int
    monitor: str
    accuracy: list[float]  # per seed, on ``monitor``
    train_loss: list[float]  # per seed, mean over the epoch
    diverged: list[bool]

    @property
    def mean_accuracy(self) -> float:
        ok = [a for a, d in zip(self.accuracy, self.diverged, strict=True) if not d]
        return sum(ok) / len(ok) if ok else float("nan")


@dataclass
class RunResult:
    seed: int
    metrics: dict[str, dict[str, Any]]  # split name -> metrics of classification_metrics
    history: list[dict[str, float]]  # per epoch: epoch, train_loss, <monitor>_accuracy
    diverged: bool = False
    step_losses: list[float] | None = None  # only with ``record_steps=True`` (equivalence tests)


@dataclass
class TrainResult:
    spec: str
    protocol: dict[str, Any]
    runs: list[RunResult]
    seconds: float
    model: FusedModel | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "protocol": self.protocol,
            "seconds": self.seconds,
            "runs": [asdict(r) for r in self.runs],
        }


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def use_huge_pages() -> None:
    """Back CPU tensors of 2 MB and more with transparent huge pages (Linux; where THP is at least ``madvise``).

    A step walks the weights, AdamW state and dataset of a few tens of MB, more than 4 kB pages' TLB reach: measured
    side by side with two workers, row 15 1.07x and row 16 1.03x model-steps/s. torch reads the switch once, at the
    process's first tensor allocation, so this must run before that; workers inherit it through the environment.
    An explicit ``THP_MEM_ALLOC_ENABLE`` in the environment wins.
    """
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


@torch.no_grad()
def _predict(model: FusedModel, x: torch.Tensor) -> torch.Tensor:
    """Predicted classes (K, N) of every run for the same images x (N, 1, 28, 28)."""
    k, out = model.k, []
    for chunk in map(as_float, x.split(EVAL_CHUNK)):
        if isinstance(model.spec, MLPSpec):
            inp = chunk.reshape(1, chunk.shape[0], -1).expand(k, -1, -1)
        else:
            inp = chunk.expand(-1, k, -1, -1)
        out.append(model(inp).argmax(-1))
    return torch.cat(out, dim=1)


@torch.no_grad()
def predict_plain(models: Sequence[torch.nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Predicted classes (K, N) of K plain models, evaluated in fixed-size chunks (as export/evaluate does)."""
    return torch.stack([torch.cat([m(as_float(c)).argmax(-1) for c in x.split(EVAL_CHUNK)]).cpu() for m in models])


def _batches(
    images: torch.Tensor, labels: torch.Tensor, perms: torch.Tensor, bs: int, is_mlp: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch's batches (x, y) in each run's own order ``perms`` (K, N); x in the fused model's input layout."""
    order = perms if is_mlp else perms.t().contiguous()  # MLP batches are (K, B, ...), CNN batches (B, K, ...)
    for start in range(0, perms.shape[1], bs):
        rows = order[:, start : start + bs] if is_mlp else order[start : start + bs]
        # index_select on flat indices: ~120 us for a (5, 32) MLP batch here, against ~215 us for images[idx]
        x = as_float(images.index_select(0, rows.reshape(-1)).view(*rows.shape, *images.shape[1:]))
        yield x, labels[perms[:, start : start + bs]]


def train(
    spec: Spec,
    seeds: Sequence[int],
    protocol: Protocol,
    data: Dataset,
    *,
    device: torch.device | str | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    record_steps: bool = False,
) -> TrainResult:
    """Train one architecture once per seed, all seeds fused into one model.

    ``on_epoch`` gets an :class:`EpochReport` after each epoch and may raise to stop training (Optuna's pruning does).
    ``on_step(done, total)`` is called every few hundred steps for progress displays. ``record_steps`` keeps every
    step's loss per run (costly; for tests).
    """
    start = time.perf_counter()
    device = torch.device(device) if device is not None else data.train_x.device
    data = data.to(device)
    k, n = len(seeds), len(data.train_y)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    plain = [init_model(build_model(spec), g) for g in gens]
    model = FusedModel.from_models(spec, plain).to(device)
    step_fn = FusedStep(model, lr=protocol.lr, weight_decay=protocol.weight_decay, loss=protocol.loss)
    is_mlp = isinstance(spec, MLPSpec)
    # MLP input is (K, B, 784); CNN input is (B, K, 28, 28) with run k's images in channel k.
    images = data.train_x.reshape(n, -1) if is_mlp else data.train_x.reshape(n, 28, 28)
    monitor = "val" if "val" in data.evals else "test"
    mon_x, mon_y = data.evals[monitor]
    bs = protocol.batch_size
    steps = math.ceil(n / bs)
    total_steps, done = steps * protocol.epochs, 0
    diverged = torch.zeros(k, dtype=torch.bool)
    history: list[list[dict[str, float]]] = [[] for _ in seeds]
    step_losses: list[torch.Tensor] = []
    for epoch in range(1, protocol.epochs + 1):
        model.train()
        perms = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(device)  # (K, N)
        loss_sum = torch.zeros(k, device=device, dtype=torch.float64)
        batches = _batches(images, data.train_y, perms, bs, is_mlp)
        x, y = next(batches)
        for _ in range(steps):
            # The next batch is known a step early: the step computes an MLP's first layer for it (see FusedStep)
            upcoming = next(batches, None)
            # (K,): runs share nothing, so each gets exactly its own gradient
            run_loss = step_fn(x, y, upcoming[0] if upcoming is not None else None)
            loss_sum += run_loss
            if record_steps:
                step_losses.append(run_loss.cpu())
            done += 1
            if on_step is not None and (done % 200 == 0 or done == total_steps):
                on_step(done, total_steps)
            if upcoming is not None:
                x, y = upcoming
        mean_loss = (loss_sum / steps).cpu()
        diverged |= ~torch.isfinite(mean_loss)
        model.eval()
        acc = (_predict(model, mon_x) == mon_y).double().mean(dim=1).cpu()
        for r in range(k):
            history[r].append({"epoch": epoch, "train_loss": float(mean_loss[r]), f"{monitor}_accuracy": float(acc[r])})
        if on_epoch is not None:
            report = EpochReport(epoch, protocol.epochs, monitor, acc.tolist(), mean_loss.tolist(), diverged.tolist())
            on_epoch(report)
    model.eval()
    # Final metrics come from each run's *plain* model: the exact computation an exported checkpoint performs,
    # so `archsearch evaluate` reproduces the recorded numbers bit for bit (batched kernels round differently).
    plain_models = [model.unfuse(r).to(device).eval() for r in range(k)]
    final = {split: predict_plain(plain_models, x) for split, (x, _) in data.evals.items()}
    steps_by_run = torch.stack(step_losses, dim=1).tolist() if record_steps else None
    runs = []
    for r, seed in enumerate(seeds):
        metrics = {split: classification_metrics(final[split][r], y) for split, (_, y) in data.evals.items()}
        losses = steps_by_run[r] if steps_by_run is not None else None
        runs.append(RunResult(int(seed), metrics, history[r], bool(diverged[r]), losses))
    return TrainResult(str(spec), protocol.to_dict(), runs, time.perf_counter() - start, model)
