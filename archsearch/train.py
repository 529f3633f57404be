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
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

from archsearch.data import Dataset, as_float
from archsearch.graphs import DeviceBatches, GraphedStep, gather_batch
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
    "torch_threads",
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


@contextmanager
def _on_gpu(device: torch.device) -> Iterator[None]:
    """On a GPU, training runs with ``device`` as the current device and cuDNN convolutions in true float32 and with
    deterministic algorithms; the previous settings are restored after.

    PyTorch lets convolutions round through TF32 by default, which moves a CNN's GPU results ~1e-3 away from the
    CPU's float32, and lets cuDNN pick algorithms that accumulate in a varying order: two runs of the report's CNN
    with the same seeds on an H200 gave mean accuracies 0.8987 and 0.9004 (its MLPs, all GEMMs, came out identical).
    A step of these models is bound by kernel launches, not by the convolutions' arithmetic, so neither setting is
    expected to cost speed (not yet measured on a GPU).
    """
    if device.type != "cuda":
        yield
        return
    cudnn = torch.backends.cudnn
    before = cudnn.allow_tf32, cudnn.deterministic
    cudnn.allow_tf32, cudnn.deterministic = False, True
    try:
        with torch.cuda.device(device):  # streams, graph capture and replay act on the current device (--device cuda:1)
            yield
    finally:
        cudnn.allow_tf32, cudnn.deterministic = before


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` (None: left alone) for the block, then restored."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
    images: torch.Tensor, labels: torch.Tensor, perms: torch.Tensor, bs: int, is_mlp: bool, start: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch's batches (x, y) in each run's own order ``perms`` (K, N), from sample ``start`` on."""
    for first in range(start, perms.shape[1], bs):
        yield gather_batch(images, labels, perms[:, first : first + bs], is_mlp)


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
    cuda_graphs: bool = True,
) -> TrainResult:
    """Train one architecture once per seed, all seeds fused into one model.

    ``on_epoch`` gets an :class:`EpochReport` after each epoch and may raise to stop training (Optuna's pruning does).
    ``on_step(done, total)`` is called every few hundred steps for progress displays. ``record_steps`` keeps every
    step's loss per run (costly; for tests). On a CUDA device the steps are replayed from a CUDA graph unless
    ``cuda_graphs`` is False (see archsearch.graphs).
    """
    start = time.perf_counter()
    device = torch.device(device) if device is not None else data.train_x.device
    with _on_gpu(device):
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
        graphed = None
        if cuda_graphs and device.type == "cuda":
            graphed = GraphedStep(step_fn, DeviceBatches(images, data.train_y, k, bs, is_mlp))
        for epoch in range(1, protocol.epochs + 1):
            model.train()
            perms = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(device)  # (K, N)
            loss_sum = torch.zeros(k, device=device, dtype=torch.float64)
            replayed = 0
            if graphed is not None:
                graphed.batches.start_epoch(perms)
                replayed = graphed.batches.full
            batches = _batches(images, data.train_y, perms, bs, is_mlp, start=replayed * bs)
            upcoming = next(batches, None)
            # While the C step spreads its runs over threads of its own, torch keeps to one: the loop's few torch
            # operations (the batch gather) would wake its OpenMP threads, which then spin on the very cores the runs
            # need (one process on 2 cores: row 10 0.9k -> 1.4k model-steps/s, row 15 0.7k -> 1.1-1.3k without that).
            with torch_threads(1 if step_fn.runs_own_threads else None):
                for i in range(steps):
                    if i < replayed:
                        assert graphed is not None
                        run_loss = graphed()
                    else:
                        assert upcoming is not None
                        x, y = upcoming
                        # The next batch is known a step early: an MLP's step computes its first layer (FusedStep)
                        upcoming = next(batches, None)
                        # (K,): runs share nothing, so each gets exactly its own gradient
                        run_loss = step_fn(x, y, upcoming[0] if upcoming is not None else None)
                    loss_sum += run_loss
                    if record_steps:
                        step_losses.append(run_loss.cpu())
                    done += 1
                    if on_step is not None and (done % 200 == 0 or done == total_steps):
                        on_step(done, total_steps)
            mean_loss = (loss_sum / steps).cpu()
            diverged |= ~torch.isfinite(mean_loss)
            model.eval()
            acc = (_predict(model, mon_x) == mon_y).double().mean(dim=1).cpu()
            for r in range(k):
                loss_r, acc_r = float(mean_loss[r]), float(acc[r])
                history[r].append({"epoch": epoch, "train_loss": loss_r, f"{monitor}_accuracy": acc_r})
            if on_epoch is not None:
                on_epoch(
                    EpochReport(epoch, protocol.epochs, monitor, acc.tolist(), mean_loss.tolist(), diverged.tolist())
                )
        model.eval()
        # Final metrics come from each run's *plain* model on the CPU: the exact computation `archsearch evaluate`
        # performs on an exported checkpoint, so it reproduces the recorded numbers bit for bit (batched kernels, and
        # a GPU's, round differently: a borderline image or two would change class).
        plain_models = [model.unfuse(r).eval() for r in range(k)]
        final = {split: predict_plain(plain_models, x.cpu()) for split, (x, _) in data.evals.items()}
        steps_by_run = torch.stack(step_losses, dim=1).tolist() if record_steps else None
        runs = []
        for r, seed in enumerate(seeds):
            metrics = {split: classification_metrics(final[split][r], y) for split, (_, y) in data.evals.items()}
            losses = steps_by_run[r] if steps_by_run is not None else None
            runs.append(RunResult(int(seed), metrics, history[r], bool(diverged[r]), losses))
        return TrainResult(str(spec), protocol.to_dict(), runs, time.perf_counter() - start, model)
