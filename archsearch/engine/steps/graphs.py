"""CUDA graphs for the training step: on a GPU, capture one whole step once and replay it for every batch.

Why: on a GPU a fused step of the report's models is some 40 small kernels (microseconds each), every one launched from
Python; the device waits for the launches. A captured graph replays all of them, the batch gather included, with one
launch. What makes a step replayable is that nothing in it depends on the host: the batch's indices are read from a
device copy of the epoch's orders at a device-side step counter, which the graph itself advances.

Replaying is not approximating: the graph runs the same kernels on the same buffers in the same order as the eager step,
so a graphed run is the eager run (tests/engine/test_graphs.py checks per-step losses on a GPU). The first steps run
eagerly (they warm up cuBLAS/cuDNN and the caching allocator, as capture requires); the capture itself trains nothing,
and the replay right after it performs that step.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from archsearch.engine.batches import Layout, gather_batch

__all__ = ["DeviceBatches", "GraphedStep", "Step"]


class Step(Protocol):
    """What every training step is: called on a batch (and the next one, announced), returns each run's loss."""

    lr: float

    def __call__(self, x: Tensor, y: Tensor, next_x: Tensor | None = None) -> Tensor: ...


class DeviceBatches:
    """An epoch's full batches, found on the device: batch t is columns [t*B, (t+1)*B) of the orders (K, N), t being a
    device tensor that each batch advances. No host value enters, so a captured step can draw its own batches."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        runs: int,
        batch_size: int,
        layout: Layout,
        normalize: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        device = images.device
        self.images, self.labels, self.layout, self.normalize = images, labels, layout, normalize
        self.orders = torch.zeros(runs, len(labels), dtype=torch.long, device=device)
        self.step = torch.zeros((), dtype=torch.long, device=device)
        self.columns = torch.arange(batch_size, device=device)
        self.full = len(labels) // batch_size  # batches of exactly B; a smaller last one is the caller's

    def start_epoch(self, perms: Tensor) -> None:
        """Each run's order of the training set for this epoch, (K, N)."""
        self.orders.copy_(perms)
        self.step.zero_()

    def next(self) -> tuple[Tensor, Tensor]:
        rows = self.orders.index_select(1, self.columns + self.step * len(self.columns))
        self.step += 1
        return gather_batch(self.images, self.labels, rows, self.layout, self.normalize)


class GraphedStep:
    """A step on the next full batch of ``DeviceBatches``, replayed from a CUDA graph after ``warmup`` eager
    steps. Each call trains one step and returns each run's loss ``(K,)`` (a buffer the next call overwrites).

    Should capture fail (an operation that cannot be captured, on some future model or torch), the step warns and
    goes on eagerly: slower, never wrong.
    """

    def __init__(self, step: Step, batches: DeviceBatches, warmup: int = 3) -> None:
        self.step, self.batches, self.warmup = step, batches, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.loss: Tensor | None = None
        self.eager = False
        self._stream = torch.cuda.Stream(batches.images.device)

    def __call__(self) -> Tensor:
        if self.graph is not None:
            self.graph.replay()
            assert self.loss is not None
            return self.loss
        if self.eager:
            return self.step(*self.batches.next())
        current = torch.cuda.current_stream()
        if self.warmup > 0:
            # Warm-up steps are real steps, run on a side stream as capture requires (lazy library initialisation
            # must not happen inside the capture).
            self.warmup -= 1
            self._stream.wait_stream(current)
            with torch.cuda.stream(self._stream):
                loss = self.step(*self.batches.next())
            current.wait_stream(self._stream)
            return loss
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):  # records, runs nothing: this step happens at the replay below
                self.loss = self.step(*self.batches.next())
        except RuntimeError as err:
            warnings.warn(f"CUDA graph capture failed, training without graphs: {err}", RuntimeWarning, stacklevel=2)
            self.eager = True
            return self.step(*self.batches.next())
        self.graph = graph
        graph.replay()
        return self.loss
