"""Optimisers and learning-rate schedules for fused runs, written once for every step.

Every optimiser here is element-wise (its update of a value depends on that value, its gradient and its own state
only), so stepping K runs' stacked parameters updates each run exactly as if it were alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol as TypingProtocol

import torch
from torch import Tensor

from archsearch.core.protocol import Protocol

__all__ = ["SGD", "AdamW", "Optimizer", "RunOptimizers", "lr_at", "make_optimizer", "run_slice"]


class Optimizer(TypingProtocol):
    lr: float

    def step(self) -> None: ...


class AdamW:
    """``torch.optim.AdamW(fused=True)``'s update (PyTorch's defaults: betas 0.9/0.999, eps 1e-8) without its per-step
    Python bookkeeping, which measured ~0.35 ms a step on this 2-core CPU, a tenth of a row-10 step: the state is
    allocated once and each step is one call of the same fused kernel (or a few, on parts of the parameters: see
    ``begin``/``update``). Elsewhere than CPU/CUDA it defers to torch.optim.
    """

    def __init__(self, params: list[Tensor], *, lr: float, weight_decay: float) -> None:
        self.params, self.lr, self.weight_decay = params, lr, weight_decay
        device = params[0].device
        self.fallback = None
        if device.type not in ("cpu", "cuda") or not hasattr(torch, "_fused_adamw_"):
            self.fallback = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        fused = self.fallback is None
        self.exp_avgs = [torch.zeros_like(p) for p in params] if fused else []
        self.exp_avg_sqs = [torch.zeros_like(p) for p in params] if fused else []
        self._index = {id(p): i for i, p in enumerate(params)}
        self.step_count = torch.zeros((), dtype=torch.float32, device=device)  # one step counter serves every tensor

    def state(self, param: Tensor) -> tuple[Tensor, Tensor]:
        """(exp_avg, exp_avg_sq) of one of the parameters."""
        i = self._index[id(param)]
        return self.exp_avgs[i], self.exp_avg_sqs[i]

    @torch.no_grad()
    def step(self) -> None:
        """A whole step: every parameter from its ``.grad``."""
        if self.fallback is not None:
            for group in self.fallback.param_groups:
                group["lr"] = self.lr
            self.fallback.step()
            return
        grads = [p.grad for p in self.params]
        assert all(g is not None for g in grads), "every parameter needs a gradient"
        self.begin()
        self.update(self.params, grads, self.exp_avgs, self.exp_avg_sqs)  # type: ignore[arg-type]

    def begin(self) -> None:
        """Start a step; then ``update`` every parameter exactly once, in any number of parts."""
        self.step_count += 1

    def update(
        self, params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor]
    ) -> None:
        """AdamW on some parameters (or views of them) with their gradients and the matching views of their state."""
        torch._fused_adamw_(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            [self.step_count] * len(params),
            lr=self.lr,
            beta1=0.9,
            beta2=0.999,
            weight_decay=self.weight_decay,
            eps=1e-8,
            amsgrad=False,
            maximize=False,
        )


class SGD:
    """SGD with Nesterov momentum (torch.optim.SGD's foreach kernels); ``lr`` may change between steps."""

    def __init__(self, params: list[Tensor], *, lr: float, weight_decay: float, momentum: float) -> None:
        self.lr = lr
        self._opt = torch.optim.SGD(
            params, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay, foreach=True
        )

    @torch.no_grad()
    def step(self) -> None:
        for group in self._opt.param_groups:
            group["lr"] = self.lr
        self._opt.step()


def make_optimizer(params: Sequence[Tensor], protocol: Protocol) -> AdamW | SGD:
    """The protocol's optimiser over ``params``."""
    params = list(params)
    if protocol.optimizer == "sgd":
        return SGD(params, lr=protocol.lr, weight_decay=protocol.weight_decay, momentum=protocol.momentum)
    return AdamW(params, lr=protocol.lr, weight_decay=protocol.weight_decay)


# OneCycle as torch.optim.lr_scheduler.OneCycleLR defines it: from lr/25 up to lr over the first 30% of the steps,
# then down to lr/(25*1e4), both halves cosine.
ONECYCLE_PCT, ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 0.3, 25.0, 1e4


def _cos(start: float, end: float, frac: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * min(max(frac, 0.0), 1.0))) / 2


def lr_at(protocol: Protocol, step: int, steps_per_epoch: int) -> float:
    """The learning rate for step ``step`` (0-based, over the whole training) of ``protocol``'s schedule.

    constant and cosine warm up linearly over ``warmup_epochs`` (from lr/steps to lr), then stay, or decay to 0 along
    a cosine; onecycle is torch's ``OneCycleLR`` step for step (cosine annealing, ``div_factor`` 25,
    ``final_div_factor`` 1e4; its warm-up is ``warmup_epochs`` where given, else 30% of the steps): the peak at the
    warm-up's last step, the final rate at the last step (tests/engine/test_optim.py holds it to torch's).
    """
    lr, total = protocol.lr, protocol.epochs * steps_per_epoch
    warm = round(protocol.warmup_epochs * steps_per_epoch)
    if protocol.schedule == "onecycle":
        peak = (warm if warm > 0 else ONECYCLE_PCT * total) - 1  # OneCycleLR: float(pct_start * total_steps) - 1
        low, final = lr / ONECYCLE_DIV, lr / (ONECYCLE_DIV * ONECYCLE_FINAL_DIV)
        if step <= peak:
            return _cos(low, lr, step / peak) if peak > 0 else lr
        return _cos(lr, final, (step - peak) / max(1e-12, total - 1 - peak))
    if step < warm:
        return lr * (step + 1) / warm
    if protocol.schedule == "cosine":
        return _cos(lr, 0.0, (step - warm) / max(1, total - warm))
    return lr


def run_slice(tensor: Tensor, run: int, k: int) -> Tensor:
    """Run ``run``'s part of a fused model's parameter (or its gradient) as a view: every parameter holds its K runs
    in K blocks along its first dimension (stacked, or concatenated as a grouped convolution's output channels)."""
    return tensor.unflatten(0, (k, -1))[run]


class RunOptimizers:
    """One optimiser per run of a fused model, each over its run's slices of the stacked parameters (``run_slice``) with
    its own recipe — optimiser, learning rate, weight decay, momentum: fused trials. Each run's update is the one its
    optimiser makes alone (torch's multi-tensor SGD with Nesterov momentum, or the fused AdamW kernel), so the runs
    differ from their runs alone only where the fused forward and backward round differently."""

    def __init__(self, params: Sequence[Tensor], recipes: Sequence[Protocol]) -> None:
        self.params, self.recipes = list(params), list(recipes)
        self.lrs = [r.lr for r in self.recipes]
        self.bufs: list[list[Tensor] | None] = [None] * len(self.recipes)  # SGD: momentum, from the first step
        self.adams = {  # AdamW over run k's slices: its state, stepped through AdamW.update
            k: AdamW(self._slices(self.params, k), lr=r.lr, weight_decay=r.weight_decay)
            for k, r in enumerate(self.recipes) if r.optimizer == "adamw"
        }  # fmt: skip

    def _slices(self, tensors: Sequence[Tensor | None], run: int) -> list[Tensor]:
        assert all(t is not None for t in tensors), "every parameter needs a gradient"
        return [run_slice(t, run, len(self.recipes)) for t in tensors]  # type: ignore[arg-type]

    @property
    def lr(self) -> float:
        return self.lrs[0]

    @torch.no_grad()
    def step(self) -> None:
        for k, recipe in enumerate(self.recipes):
            params, grads = self._slices(self.params, k), self._slices([p.grad for p in self.params], k)
            if (adam := self.adams.get(k)) is not None:
                adam.lr = self.lrs[k]
                adam.begin()
                adam.update(params, grads, adam.exp_avgs, adam.exp_avg_sqs)
            else:
                self._sgd(k, params, grads, recipe)

    def _sgd(self, k: int, params: list[Tensor], grads: list[Tensor] | tuple[Tensor, ...], recipe: Protocol) -> None:
        """torch.optim.SGD's multi-tensor update (Nesterov momentum, no dampening) on run k's slices."""
        if recipe.weight_decay:
            grads = torch._foreach_add(grads, params, alpha=recipe.weight_decay)
        if recipe.momentum:
            bufs = self.bufs[k]
            if bufs is None:
                bufs = self.bufs[k] = [torch.clone(g).detach() for g in grads]
            else:
                torch._foreach_mul_(bufs, recipe.momentum)
                torch._foreach_add_(bufs, grads)
            grads = torch._foreach_add(grads, bufs, alpha=recipe.momentum)
        torch._foreach_add_(params, grads, alpha=-self.lrs[k])
