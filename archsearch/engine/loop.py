"""The one trainer every command uses. It knows nothing of Optuna: it takes a spec, seeds, a protocol and data
tensors, and returns plain data. Callers observe (and may stop) training through callbacks.

All seeds of one architecture train together as one ``FusedModel``, stepped by the step ``select_step`` chooses
(archsearch.engine.steps). Each run keeps everything that makes it *that* run: its own generator (seeded with its
seed) draws first its Xavier-normal initialisation, then every epoch's shuffling order; two more generators of its
own, seeded from the same seed, draw its augmentation and its dropout masks; its loss is averaged over its own batch;
the optimisers are element-wise, so its optimiser state is its own slice of the stacked state. A seed therefore gets
the same result in any group, up to float rounding of batched vs unbatched kernels (tests/test_train.py checks this
against a plain PyTorch loop), and bit-identical results when rerun with the same arguments on the same machine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from archsearch.core.metrics import classification_metrics, predict_plain
from archsearch.core.protocol import Protocol
from archsearch.data.dataset import Dataset
from archsearch.engine.batches import Layout, gather_augmented, gather_batch
from archsearch.engine.optim import lr_at
from archsearch.engine.runtime import on_device, torch_threads, usable_cores
from archsearch.engine.steps import DeviceBatches, GraphedStep, StepPlan, build_step, select_step
from archsearch.models import FusedModel, Spec, build_model, init_model

__all__ = ["EpochReport", "RunResult", "TrainResult", "noise_generator", "train"]

EVAL_CHUNK = 2000
AUGMENT_STREAM, DROPOUT_STREAM = 1, 2


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
    engine_step: str = ""  # the path that trained (StepPlan.name): "c", "python+cconv", "autograd"…
    threads: int = 1
    model: FusedModel | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "protocol": self.protocol,
            "seconds": self.seconds,
            "engine_step": self.engine_step,
            "threads": self.threads,
            "runs": [asdict(r) for r in self.runs],
        }


def noise_generator(seed: int, stream: int) -> torch.Generator:
    """Run ``seed``'s generator for one kind of noise (augmentation, dropout), apart from the one that draws its
    initialisation and shuffles: adding augmentation to a recipe does not move any other draw."""
    return torch.Generator().manual_seed((seed + (stream << 48)) % (1 << 63))


def _layout(spec: Spec) -> Layout:
    return "image" if spec.kind == "cnn" else "features"


@torch.no_grad()
def _predict(model: FusedModel, x: torch.Tensor, prep: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Predicted classes (K, N) of every run for the same images x (N, C, H, W)."""
    k, out = model.k, []
    for chunk in x.split(EVAL_CHUNK):
        inp = prep(chunk)
        if model.is_cnn:
            n, c, h, w = inp.shape  # run k's copy in channels k*C..: a view when C is 1
            inp = inp.expand(n, k, h, w) if c == 1 else inp.repeat(1, k, 1, 1)
        else:
            inp = inp.reshape(1, inp.shape[0], -1).expand(k, -1, -1)
        out.append(model(inp).argmax(-1))
    return torch.cat(out, dim=1)


def train(
    spec: Spec,
    seeds: Sequence[int],
    protocol: Protocol,
    data: Dataset,
    *,
    device: torch.device | str | None = None,
    threads: int | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    record_steps: bool = False,
    cuda_graphs: bool = True,
    plan: StepPlan | None = None,
) -> TrainResult:
    """Train one architecture once per seed, all seeds fused into one model.

    ``threads``: torch's CPU threads while training (None: every usable core); with ``device`` and the spec it
    decides the step (``select_step``), unless ``plan`` names one. ``on_epoch`` gets an :class:`EpochReport` after
    each epoch and may raise to stop training (Optuna's pruning does). ``on_step(done, total)`` is called every few
    hundred steps for progress displays. ``record_steps`` keeps every step's loss per run (costly; for tests).
    """
    start = time.perf_counter()
    device = torch.device(device) if device is not None else data.train_x.device
    threads = threads or usable_cores()
    info = data.info
    spec.check(info.shape)
    if plan is None:
        plan = select_step(spec, protocol, device=device, threads=threads, shape=info.shape, cuda_graphs=cuda_graphs)
    with on_device(device), torch_threads(threads):
        data = data.to(device)
        k, n = len(seeds), len(data.train_y)
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        plain = [init_model(build_model(spec, info.shape, info.num_classes), g) for g in gens]
        model = FusedModel.from_models(spec, plain, info.shape, info.num_classes).to(device)
        if "dropout" in spec.kinds:
            model.set_noise([noise_generator(int(s), DROPOUT_STREAM) for s in seeds])
        aug_gens = [noise_generator(int(s), AUGMENT_STREAM) for s in seeds] if protocol.augment.active else None
        step_fn = build_step(plan, model, protocol)
        layout = _layout(spec)
        normalize = info.normalizer(device)
        prep = info.prep(device)
        monitor = "val" if "val" in data.evals else "test"
        mon_x, mon_y = data.evals[monitor]
        bs = protocol.batch_size
        steps = math.ceil(n / bs)
        total_steps, done = steps * protocol.epochs, 0
        scheduled = protocol.schedule != "constant" or protocol.warmup_epochs > 0
        diverged = torch.zeros(k, dtype=torch.bool)
        history: list[list[dict[str, float]]] = [[] for _ in seeds]
        step_losses: list[torch.Tensor] = []
        graphed = None
        if plan.graphs:
            graphed = GraphedStep(step_fn, DeviceBatches(data.train_x, data.train_y, k, bs, layout, normalize))

        def batches(perms: torch.Tensor, first: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            """One epoch's batches (x, y) in each run's own order ``perms`` (K, N), from sample ``first`` on."""
            for at in range(first, n, bs):
                rows = perms[:, at : at + bs]
                if aug_gens is not None:
                    yield gather_augmented(
                        data.train_x, data.train_y, rows, layout, protocol.augment, aug_gens, normalize
                    )
                else:
                    yield gather_batch(data.train_x, data.train_y, rows, layout, normalize)

        for epoch in range(1, protocol.epochs + 1):
            model.train()
            perms = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(device)  # (K, N)
            loss_sum = torch.zeros(k, device=device, dtype=torch.float64)
            replayed = 0
            if graphed is not None:
                graphed.batches.start_epoch(perms)
                replayed = graphed.batches.full
            epoch_batches = batches(perms, replayed * bs)
            upcoming = next(epoch_batches, None)
            # While the C step spreads its runs over threads of its own, torch keeps to one: the loop's few torch
            # operations (the batch gather) would wake its OpenMP threads, which then spin on the very cores the runs
            # need (one process on 2 cores: row 10 0.9k -> 1.4k model-steps/s, row 15 0.7k -> 1.1-1.3k without that).
            with torch_threads(1 if plan.step == "c" and plan.groups > 1 else None):
                for i in range(steps):
                    if scheduled:
                        step_fn.lr = lr_at(protocol, done, steps)
                    if i < replayed:
                        assert graphed is not None
                        run_loss = graphed()
                    else:
                        assert upcoming is not None
                        x, y = upcoming
                        # The next batch is known a step early: an MLP's step computes its first layer for it
                        upcoming = next(epoch_batches, None)
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
            acc = (_predict(model, mon_x, prep) == mon_y).double().mean(dim=1).cpu()
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
        cpu_prep = info.prep("cpu")
        final = {split: predict_plain(plain_models, x.cpu(), cpu_prep) for split, (x, _) in data.evals.items()}
        steps_by_run = torch.stack(step_losses, dim=1).tolist() if record_steps else None
        runs = []
        for r, seed in enumerate(seeds):
            metrics = {
                split: classification_metrics(final[split][r], y, info.num_classes)
                for split, (_, y) in data.evals.items()
            }
            losses = steps_by_run[r] if steps_by_run is not None else None
            runs.append(RunResult(int(seed), metrics, history[r], bool(diverged[r]), losses))
        seconds = time.perf_counter() - start
        return TrainResult(str(spec), protocol.to_dict(), runs, seconds, plan.name, threads, model)
