"""The general step: the fused model's own forward, the loss summed over runs, ``backward()``, the optimiser.

Every spec the layer registry can express trains through it, on any device: nothing here knows a layer kind. The
loss is the sum of the runs' mean losses, so run k's parameters get exactly the gradient of run k's loss (the runs
share no parameter), and the optimisers are element-wise (archsearch.engine.optim), so each run is stepped as if it
were alone. The hand-written steps (handwritten.py, cstep.py) compute the same for the specs they know, faster on a
CPU; select_step chooses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from archsearch.core.protocol import Protocol
from archsearch.engine.loss import per_sample_loss
from archsearch.engine.optim import SGD, AdamW, RunOptimizers, make_optimizer
from archsearch.models import FusedModel

__all__ = ["AutogradStep"]


class AutogradStep:
    """Call with x (the model's input layout) and labels y ``(K, B)``; returns each run's loss ``(K,)``.

    ``recipes``, one per run where they differ (fused trials): each run's loss, label smoothing and optimiser are its
    own, and ``set_lrs`` sets each run's learning rate (``lr`` sets them all alike)."""

    def __init__(self, model: FusedModel, protocol: Protocol, recipes: Sequence[Protocol] | None = None) -> None:
        self.model = model
        self.params = list(model.parameters())
        self.recipes = list(recipes) if recipes is not None and any(r != protocol for r in recipes) else None
        self.opt: AdamW | SGD | RunOptimizers
        if self.recipes is None:
            self.opt = make_optimizer(self.params, protocol)
        else:
            self.opt = RunOptimizers(self.params, self.recipes)
        self.loss, self.smoothing = protocol.loss, protocol.label_smoothing

    @property
    def lr(self) -> float:
        return self.opt.lr

    @lr.setter
    def lr(self, value: float) -> None:
        if isinstance(self.opt, RunOptimizers):
            self.opt.lrs = [value] * len(self.opt.lrs)
        else:
            self.opt.lr = value

    def set_lrs(self, values: Sequence[float]) -> None:
        """Each run's learning rate, where the runs have recipes of their own."""
        assert isinstance(self.opt, RunOptimizers), "runs of one recipe share their learning rate (set lr)"
        self.opt.lrs = list(values)

    def __call__(self, x: Tensor, y: Tensor, next_x: Tensor | None = None) -> Tensor:
        for p in self.params:  # fresh gradients (what a CUDA graph capture records, too)
            p.grad = None
        logp = torch.log_softmax(self.model(x), dim=-1)
        if self.recipes is None:
            run_loss = per_sample_loss(logp, y, self.loss, self.smoothing).mean(dim=1)
        else:  # each run's own loss and label smoothing
            run_loss = torch.stack([
                per_sample_loss(logp[k], y[k], r.loss, r.label_smoothing).mean() for k, r in enumerate(self.recipes)
            ])  # fmt: skip
        run_loss.sum().backward()
        self.opt.step()
        return run_loss.detach()
