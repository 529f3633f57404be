"""The one trainer every command uses. It knows nothing of Optuna: it takes a spec, seeds, a protocol and data
tensors, and returns plain data. Callers observe (and may stop) training through callbacks.

All seeds of one architecture train together as one ``FusedModel``, stepped by the step ``select_step`` chooses
(archsearch.engine.steps). Each run keeps everything that makes it *that* run: its own generator (seeded with its seed)
draws first its Xavier-normal initialisation, then every epoch's shuffling order; two more generators of its own, seeded
from the same seed, draw its augmentation and its dropout masks; its loss is averaged over its own batch; the optimisers
are element-wise, so its optimiser state is its own slice of the stacked state. A seed therefore gets the same result in
any group, up to float rounding of batched vs unbatched kernels (tests/engine/test_loop.py checks this against a plain
PyTorch loop), and bit-identical results when rerun with the same arguments on the same machine.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from archsearch.core import interrupts
from archsearch.core.metrics import EVAL_CHUNK, classification_metrics, predict_plain
from archsearch.core.protocol import Protocol
from archsearch.data.dataset import Dataset
from archsearch.engine.batches import Layout, gather_augmented, gather_batch
from archsearch.engine.optim import lr_at
from archsearch.engine.plain_runs import PlainRuns
from archsearch.engine.runtime import on_device, quiet_gc, torch_threads, usable_cores
from archsearch.engine.steps import AutogradStep, DeviceBatches, GraphedStep, StepPlan, build_step, select_step
from archsearch.models import FusedModel, Spec, build_model, init_model

__all__ = ["EpochReport", "FusedRuns", "RunResult", "TrainResult", "noise_generator", "train"]

AUGMENT_STREAM, DROPOUT_STREAM = 1, 2


@dataclass
class EpochReport:
    """Handed to ``on_epoch`` after every epoch. ``monitor`` is the split the accuracies are measured on."""

    epoch: int  # 1-based
    epochs: int
    monitor: str
    accuracy: list[float]  # per run, on ``monitor``
    train_loss: list[float]  # per run, mean over the epoch
    diverged: list[bool]
    # runs that stop here (the callback adds them: a pruned member of a group of trials); the others go on. Runs
    # that left train no further in the plain layout; in a fused model they go on with the others, unreported.
    leave: set[int] = field(default_factory=set)
    left: frozenset[int] = frozenset()  # runs that left at earlier epochs (their accuracy here is not measured)
    train_seconds: float = 0.0  # this epoch's training, all runs still training together
    eval_seconds: float = 0.0  # and the monitored split's evaluation

    @property
    def training(self) -> int:
        """How many runs trained this epoch (shared the seconds above)."""
        return len(self.accuracy) - len(self.left)

    @property
    def mean_accuracy(self) -> float:
        return self.mean_over(range(len(self.accuracy)))

    def mean_over(self, runs: Sequence[int]) -> float:
        """Mean accuracy of ``runs`` that have not diverged or left (NaN if none)."""
        ok = [self.accuracy[r] for r in runs if not self.diverged[r] and r not in self.left]
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

    def subset(self, runs: Sequence[int], protocol: Protocol) -> TrainResult:
        """The result of some of the runs (one member of a group of trials, trained with ``protocol``)."""
        model = None
        if self.model is not None:
            plain = [self.model.unfuse(r) for r in runs]
            model = FusedModel.from_models(self.model.spec, plain, self.model.shape, self.model.classes)
        picked = [self.runs[r] for r in runs]
        return dataclasses.replace(self, protocol=protocol.to_dict(), runs=picked, model=model)

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


class FusedRuns:
    """K runs as one :class:`FusedModel` (stacked weights: grouped convolutions, batched products), stepped by the
    step ``plan`` names, with CUDA-graph replay where planned. Run r's batches are gathered in its order, augmented
    from its own generator. ``recipes`` (fused trials): run r's own, where they differ — its optimiser, learning rate
    and schedule, weight decay, momentum, loss, label smoothing and augmentation (the autograd step)."""

    def __init__(
        self, spec: Spec, protocol: Protocol, data: Dataset, plain: list[nn.Module], plan: StepPlan,
        aug_gens: list[torch.Generator] | None, drop_gens: list[torch.Generator], record_steps: bool,
        recipes: Sequence[Protocol] | None = None,
    ) -> None:  # fmt: skip
        info = data.info
        self.spec, self.protocol, self.data, self.plan, self.aug_gens = spec, protocol, data, plan, aug_gens
        self.recipes = list(recipes) if recipes is not None and any(r != protocol for r in recipes) else None
        self.model = FusedModel.from_models(spec, plain, info.shape, info.num_classes).to(data.train_x.device)
        if "dropout" in spec.kinds:
            self.model.set_noise(drop_gens)
        self.step_fn = build_step(plan, self.model, protocol, self.recipes)
        self.layout: Layout = "image" if spec.kind == "cnn" else "features"
        self.normalize = info.normalizer(data.train_x.device)
        self.graphed = None
        if plan.graphs:
            batches = DeviceBatches(data.train_x, data.train_y, len(plain), protocol.batch_size, self.layout,
                                    self.normalize)  # fmt: skip
            self.graphed = GraphedStep(self.step_fn, batches)
        self.step_losses: list[Tensor] | None = [] if record_steps else None

    def _batches(self, perms: Tensor, first: int) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch's batches (x, y) in each run's own order ``perms`` (K, N), from sample ``first`` on."""
        data, bs, n = self.data, self.protocol.batch_size, perms.shape[1]
        for at in range(first, n, bs):
            rows = perms[:, at : at + bs]
            if self.aug_gens is not None:
                augment = [r.augment for r in self.recipes] if self.recipes is not None else self.protocol.augment
                yield gather_augmented(
                    data.train_x, data.train_y, rows, self.layout, augment, self.aug_gens, self.normalize
                )
            else:
                yield gather_batch(data.train_x, data.train_y, rows, self.layout, self.normalize)

    def epoch(self, perms: Tensor, first_step: int, on_step: Callable[[int], None] | None = None) -> Tensor:
        """One epoch of every run; returns each run's summed loss (K,), float64 on the CPU."""
        protocol, bs, n = self.protocol, self.protocol.batch_size, perms.shape[1]
        steps = math.ceil(n / bs)
        recipes = self.recipes or [protocol]
        scheduled = any(r.schedule != "constant" or r.warmup_epochs > 0 for r in recipes)
        loss_sum = torch.zeros(perms.shape[0], device=perms.device, dtype=torch.float64)
        self.model.train()
        replayed = 0
        if self.graphed is not None:
            self.graphed.batches.start_epoch(perms)
            replayed = self.graphed.batches.full
        epoch_batches = self._batches(perms, replayed * bs)
        upcoming = next(epoch_batches, None)
        # While the C step spreads its runs over threads of its own, torch keeps to one: the loop's few torch
        # operations (the batch gather) would wake its OpenMP threads, which then spin on the very cores the runs
        # need (one process on 2 cores: row 10 0.9k -> 1.4k model-steps/s, row 15 0.7k -> 1.1-1.3k without that).
        with torch_threads(1 if self.plan.step == "c" and self.plan.groups > 1 else None):
            for i in range(steps):
                if scheduled and self.recipes is None:
                    self.step_fn.lr = lr_at(protocol, first_step + i, steps)
                elif scheduled:
                    assert isinstance(self.step_fn, AutogradStep)  # the one step that trains runs of many recipes
                    self.step_fn.set_lrs([lr_at(r, first_step + i, steps) for r in recipes])
                if i < replayed:
                    assert self.graphed is not None
                    run_loss = self.graphed()
                else:
                    assert upcoming is not None
                    x, y = upcoming
                    # The next batch is known a step early: an MLP's step computes its first layer for it
                    upcoming = next(epoch_batches, None)
                    # (K,): runs share nothing, so each gets exactly its own gradient
                    run_loss = self.step_fn(x, y, upcoming[0] if upcoming is not None else None)
                loss_sum += run_loss
                if self.step_losses is not None:
                    self.step_losses.append(run_loss.cpu())
                interrupts.check()
                if on_step is not None:
                    on_step(1)
        return loss_sum.cpu()

    def predict(self, x: Tensor, prep: Callable[[Tensor], Tensor]) -> Tensor:
        self.model.eval()
        return _predict(self.model, x, prep)

    def leave(self, runs: frozenset[int]) -> None:
        """Runs of one fused model cannot leave it: they go on training with the others (nobody reads them)."""

    def recorded_steps(self) -> list[list[float]] | None:
        return torch.stack(self.step_losses, dim=1).tolist() if self.step_losses is not None else None

    def plain_models(self) -> list[nn.Module]:
        return [self.model.unfuse(r).eval() for r in range(self.model.k)]

    def fused(self) -> FusedModel:
        return self.model


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
    recipes: Sequence[Protocol] | None = None,
) -> TrainResult:
    """Train one architecture once per seed, all runs together in the layout ``select_step`` chooses.

    ``threads``: torch's CPU threads while training (None: every usable core); with ``device``, the spec and the
    number of runs it decides the step and the layout (``select_step``), unless ``plan`` names one. ``recipes``
    gives each run a recipe of its own (fused trials: the same batch size and epochs, anything else per run;
    default ``protocol`` for every run). ``on_epoch`` gets an :class:`EpochReport` after each epoch and may raise to
    stop training (Optuna's pruning does). ``on_step(done, total)`` is called every few hundred steps for progress
    displays. ``record_steps`` keeps every step's loss per run (costly; for tests).
    """
    start = time.perf_counter()
    device = torch.device(device) if device is not None else data.train_x.device
    threads = threads or usable_cores()
    recipes = list(recipes) if recipes is not None else [protocol] * len(seeds)
    _check_recipes(protocol, recipes, len(seeds))
    spec.check(data.info.shape)
    if plan is None:
        plan = select_step(
            spec, protocol, device=device, threads=threads, shape=data.info.shape, cuda_graphs=cuda_graphs,
            runs=len(seeds), recipes=recipes, classes=data.info.num_classes,
        )  # fmt: skip
    with on_device(device), torch_threads(threads), quiet_gc():
        data = data.to(device)
        runs, gens = _make_runs(spec, seeds, protocol, recipes, data, plan, record_steps)
        history, diverged, left = _train_epochs(runs, gens, protocol, data, on_epoch, on_step)
        final = _final_predictions(runs, data, left)
        result = _results(seeds, final, data, history, diverged, runs.recorded_steps())
        seconds = time.perf_counter() - start
        return TrainResult(str(spec), protocol.to_dict(), result, seconds, plan.name, threads, runs.fused())


def _check_recipes(protocol: Protocol, recipes: Sequence[Protocol], k: int) -> None:
    if len(recipes) != k:
        raise ValueError(f"{len(recipes)} recipes for {k} runs")
    for r in recipes:
        if (r.batch_size, r.epochs) != (protocol.batch_size, protocol.epochs):
            raise ValueError("runs trained together share their batch size and epochs")


def _make_runs(
    spec: Spec, seeds: Sequence[int], protocol: Protocol, recipes: list[Protocol], data: Dataset, plan: StepPlan,
    record_steps: bool,
) -> tuple[FusedRuns | PlainRuns, list[torch.Generator]]:  # fmt: skip
    """The runs in ``plan``'s layout, and each run's generator (its initialisation drawn, its shuffles to come)."""
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    drop_gens = [noise_generator(int(s), DROPOUT_STREAM) for s in seeds]
    aug_gens = [noise_generator(int(s), AUGMENT_STREAM) for s in seeds]
    if plan.layout == "plain":
        return PlainRuns(
            spec, recipes, data, gens, aug_gens, drop_gens, groups=plan.groups, record_steps=record_steps,
            channels_last=plan.channels_last,
        ), gens  # fmt: skip
    if any(r.ema or r.tta for r in recipes):
        raise ValueError("weight averaging (ema) and test-time flips (tta) train in the plain layout")
    if plan.graphs and any(r != protocol for r in recipes):
        raise ValueError("runs with recipes of their own are not replayed as one CUDA graph")
    info = data.info
    plain = [init_model(build_model(spec, info.shape, info.num_classes), g) for g in gens]
    augmenting = any(r.augment.active for r in recipes)
    aug = aug_gens if augmenting else None
    return FusedRuns(spec, protocol, data, plain, plan, aug, drop_gens, record_steps, recipes), gens


def _train_epochs(
    runs: FusedRuns | PlainRuns, gens: list[torch.Generator], protocol: Protocol, data: Dataset,
    on_epoch: Callable[[EpochReport], None] | None, on_step: Callable[[int, int], None] | None,
) -> tuple[list[list[dict[str, float]]], torch.Tensor, frozenset[int]]:  # fmt: skip
    """Every epoch: each run's order, its steps, then the monitored split's accuracy; ``on_epoch`` after each.
    Returns each run's history, which runs diverged, and which left before the end."""
    k, n, device = len(gens), len(data.train_y), data.train_x.device
    steps = math.ceil(n / protocol.batch_size)
    total, done, model_steps = steps * protocol.epochs, 0, 0
    monitor = "val" if "val" in data.evals else "test"
    mon_x, mon_y = data.evals[monitor]
    prep = data.info.prep(device)
    diverged = torch.zeros(k, dtype=torch.bool)
    history: list[list[dict[str, float]]] = [[] for _ in range(k)]

    def stepped(count: int) -> None:
        """``count`` steps of one run each (a fused step moves every run); progress is counted in steps of all the
        runs, as a fused model takes them."""
        nonlocal done, model_steps
        model_steps += count * (k if isinstance(runs, FusedRuns) else 1)
        before, done = done, model_steps // k
        if on_step is not None and done != before and (done // 200 != before // 200 or done == total):
            on_step(done, total)

    left: frozenset[int] = frozenset()
    for epoch in range(1, protocol.epochs + 1):
        started = time.perf_counter()
        perms = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(device)  # (K, N)
        mean_loss = runs.epoch(perms, (epoch - 1) * steps, stepped) / steps
        training = [r for r in range(k) if r not in left]
        diverged[training] |= ~torch.isfinite(mean_loss[training])
        trained = time.perf_counter()
        acc = (runs.predict(mon_x, prep) == mon_y).double().mean(dim=1).cpu()
        train_s, eval_s = trained - started, time.perf_counter() - trained
        for r in training:
            history[r].append({"epoch": epoch, "train_loss": float(mean_loss[r]), f"{monitor}_accuracy": float(acc[r])})
        if on_epoch is not None:
            report = EpochReport(
                epoch,
                protocol.epochs,
                monitor,
                acc.tolist(),
                mean_loss.tolist(),
                diverged.tolist(),
                left=left,
                train_seconds=train_s,
                eval_seconds=eval_s,
            )
            on_epoch(report)
            left = left | report.leave
            runs.leave(left)
            if len(left) == k:
                break
    return history, diverged, left


def _final_predictions(
    runs: FusedRuns | PlainRuns, data: Dataset, left: frozenset[int]
) -> dict[str, dict[int, torch.Tensor]]:
    """Final predictions come from each run's *plain* model on the CPU: the exact computation `archsearch evaluate`
    performs on an exported checkpoint, so it reproduces the recorded numbers bit for bit (batched kernels, and a
    GPU's, round differently: a borderline image or two would change class). Runs that ``left`` (pruned members of
    a group of trials: nobody reads them) are not evaluated."""
    models, prep = runs.plain_models(), data.info.prep("cpu")
    tta = [p.tta for p in runs.protocols] if isinstance(runs, PlainRuns) else [False] * len(models)
    kept = [r for r in range(len(models)) if r not in left]
    out: dict[str, dict[int, torch.Tensor]] = {}
    for split, (x, _) in data.evals.items():
        if kept:
            preds = predict_plain([models[r] for r in kept], x.cpu(), prep, [tta[r] for r in kept])
            out[split] = {r: preds[i] for i, r in enumerate(kept)}
        else:
            out[split] = {}
    return out


def _results(
    seeds: Sequence[int], final: dict[str, dict[int, torch.Tensor]], data: Dataset,
    history: list[list[dict[str, float]]], diverged: torch.Tensor, steps_by_run: list[list[float]] | None,
) -> list[RunResult]:  # fmt: skip
    """Each run's result; a run that left early has no final metrics (``metrics`` empty)."""
    out = []
    for r, seed in enumerate(seeds):
        metrics = {
            split: classification_metrics(final[split][r], y, data.info.num_classes)
            for split, (_, y) in data.evals.items()
            if r in final[split]
        }
        losses = steps_by_run[r] if steps_by_run is not None else None
        out.append(RunResult(int(seed), metrics, history[r], bool(diverged[r]), losses))
    return out
