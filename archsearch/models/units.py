"""The pieces fused models are made of: each unit computes one layer's step of the forward for K runs at once.

Layouts: a trunk unit sees ``(B, K*C, H, W)`` — run k's channels are the k-th block of C, so a grouped convolution
(``groups=K``) keeps the runs apart, and per-channel operations (pooling, BatchNorm's statistics) are per run by
construction; a head unit sees ``(K, B, F)``, run k's features in row k, so a batched product (``baddbmm``) keeps them
apart. Nothing is shared between runs: gradients, and element-wise optimisers, treat each run as if it were alone.

A unit that holds parameters *mirrors* one plain module (its index among its layer's plain modules): its state-dict
keys are that module's keys, and each of its tensors is the K runs' tensors stacked (``stack_mode``), so
:meth:`archsearch.models.FusedModel.from_models` and ``unfuse`` work the same way for every layer kind.

Forward is written once per kind: the plain modules are PyTorch's own (``nn.Conv2d``, ``nn.BatchNorm2d``…, and
:class:`ResidualBlock`), and each fused unit computes what they compute, batched over runs.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from archsearch.models.activations import activation_module

__all__ = [
    "Act",
    "ChannelsLast",
    "Flatten",
    "FusedBatchNorm",
    "FusedConv",
    "FusedDropout",
    "FusedLinear",
    "FusedResidual",
    "GlobalAvgPool",
    "Pool2d",
    "ResidualBlock",
    "SeededDropout",
    "StackMode",
    "Unit",
]

StackMode = Literal["cat", "stack", "stack_row", "shared"]
BN_EPS, BN_MOMENTUM = 1e-5, 0.1  # nn.BatchNorm's defaults, which the plain modules use


class Unit(nn.Module):
    """Base of every fused unit. ``mirror``: index of the plain module (within its layer's) it holds K copies of."""

    stacking: StackMode = "cat"  # how run k's tensors sit in the fused ones: along dim 0 (trunk units)

    def __init__(self, mirror: int | None = None) -> None:
        super().__init__()
        self.mirror = mirror

    def stack_mode(self, key: str) -> StackMode:
        return "shared" if key.endswith("num_batches_tracked") else self.stacking


def _activation(name: str) -> nn.Module:
    return activation_module(name)


class Act(Unit):
    """The spec's activation, element-wise: the same module the plain model uses."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.fn = _activation(name)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fn(x)
        return out


class ChannelsLast(Unit):
    """The trunk's input in NHWC memory layout: oneDNN's grouped convolution is ~2.5x faster that way on a CPU
    (benchmarks/bench_trainer.py). Parameters stay NCHW, so checkpoints and ``unfuse`` are unaffected."""

    def forward(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last)


class FusedConv(Unit):
    """K runs' ``nn.Conv2d(cin, cout, kernel, stride, padding)`` as one grouped convolution; ``depthwise``: K runs'
    per-channel convolution (``groups=cin`` each)."""

    def __init__(
        self,
        k: int,
        cin: int,
        cout: int,
        kernel: int,
        stride: int,
        padding: int,
        bias: bool,
        *,
        depthwise: bool = False,
        mirror: int | None = None,
    ) -> None:
        super().__init__(mirror)
        self.stride, self.padding = stride, padding
        self.groups = k * cin if depthwise else k
        shape = (k * cin, 1, kernel, kernel) if depthwise else (k * cout, cin, kernel, kernel)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.zeros(shape[0])) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, w, self.bias, stride=self.stride, padding=self.padding, groups=self.groups)


class FusedBatchNorm(Unit):
    """K runs' BatchNorm over C channels (``spatial``: 2d, on feature maps) or C features (1d, in the head): one
    BatchNorm over K*C channels, whose per-channel statistics are each run's own."""

    running_mean: Tensor
    running_var: Tensor
    num_batches_tracked: Tensor

    def __init__(self, k: int, channels: int, spatial: bool, *, mirror: int | None = None) -> None:
        super().__init__(mirror)
        self.spatial = spatial
        n = k * channels
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def _norm(self, x: Tensor) -> Tensor:
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, self.training, BN_MOMENTUM, BN_EPS
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.spatial:
            return self._norm(x)
        k, b, f = x.shape  # (K, B, F) -> (B, K*F): run k's features are channels k*F..(k+1)*F-1
        return self._norm(x.transpose(0, 1).reshape(b, k * f)).view(b, k, f).transpose(0, 1)


class Pool2d(Unit):
    def __init__(self, size: int, mode: str) -> None:
        super().__init__()
        self.size, self.mode = size, mode

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, self.size) if self.mode == "max" else F.avg_pool2d(x, self.size)


class GlobalAvgPool(Unit):
    def forward(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(x, 1)


class Flatten(Unit):
    """Trunk to head: ``(B, K*C, H, W)`` to ``(K, B, C*H*W)``, each run's features in (C, H, W) order as in the plain
    model's ``nn.Flatten`` (hence back to NCHW first)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: Tensor) -> Tensor:
        return x.contiguous().reshape(x.shape[0], self.k, -1).transpose(0, 1)


class FusedDropout(Unit):
    """Dropout with each run's mask drawn from that run's own generator (``generators``, set by the trainer through
    :meth:`archsearch.models.FusedModel.set_noise`): run k's masks are the ones it would draw alone. Without
    generators (or in eval mode) it is the identity, like ``nn.Dropout`` in eval mode."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.generators: list[torch.Generator] = []

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not self.generators:
            return x
        keep = 1.0 - self.p
        if x.dim() == 4:  # (B, K*C, H, W): each run's (B, C, H, W) mask, then placed in its block of channels
            b, kc, h, w = x.shape
            per_run = (b, kc // len(self.generators), h, w)
            masks = [torch.empty(per_run).bernoulli_(keep, generator=g) for g in self.generators]
            mask = torch.stack(masks, dim=1).reshape(b, kc, h, w).to(x.device)
            mask = mask.contiguous(memory_format=torch.channels_last) if not x.is_contiguous() else mask
        else:  # (K, B, F)
            mask = torch.stack([torch.empty(x.shape[1:]).bernoulli_(keep, generator=g) for g in self.generators])
            mask = mask.to(x.device)
        return x * mask.div_(keep)


class SeededDropout(nn.Module):
    """One plain run's dropout with its masks drawn from the run's own ``generator``, as :class:`FusedDropout` draws
    them for that run: the same masks in either layout. In eval mode it is the identity."""

    def __init__(self, p: float, generator: torch.Generator) -> None:
        super().__init__()
        self.p, self.generator = p, generator

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        keep = 1.0 - self.p
        mask = torch.empty(x.shape).bernoulli_(keep, generator=self.generator).to(x.device)
        return x * mask.div_(keep)


class FusedLinear(Unit):
    """K runs' ``nn.Linear(fin, fout)``: weights ``(K, fout, fin)`` (nn.Linear's own layout per run), bias
    ``(K, 1, fout)``; one batched product."""

    stacking: StackMode = "stack"

    def __init__(self, k: int, fin: int, fout: int, bias: bool = True, *, mirror: int | None = None) -> None:
        super().__init__(mirror)
        self.weight = nn.Parameter(torch.empty(k, fout, fin))
        self.bias = nn.Parameter(torch.zeros(k, 1, fout)) if bias else None

    def stack_mode(self, key: str) -> StackMode:
        return "stack_row" if key == "bias" else "stack"

    def forward(self, x: Tensor) -> Tensor:
        if self.bias is None:
            return torch.bmm(x, self.weight.transpose(1, 2))
        return torch.baddbmm(self.bias, x, self.weight.transpose(1, 2))


def _maybe_bn(channels: int, norm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if norm else nn.Identity()


class ResidualBlock(nn.Module):
    """The plain residual block (ResNet's basic block): ``act(bn2(conv2(act(bn1(conv1(x))))) + shortcut(x))``."""

    def __init__(self, cin: int, cout: int, stride: int, norm: bool, act: str, project: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=not norm)
        self.bn1 = _maybe_bn(cout, norm)
        self.act1 = _activation(act)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=not norm)
        self.bn2 = _maybe_bn(cout, norm)
        shortcut: nn.Module = nn.Identity()
        if project:
            shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=not norm), _maybe_bn(cout, norm))
        self.shortcut = shortcut
        self.act2 = _activation(act)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))) + self.shortcut(x))
        return out


class FusedResidual(Unit):
    """K runs' :class:`ResidualBlock`, its submodules fused under the same names (so the state-dict keys match)."""

    def __init__(
        self, k: int, cin: int, cout: int, stride: int, norm: bool, act: str, project: bool, *, mirror: int | None
    ) -> None:
        super().__init__(mirror)

        def bn() -> nn.Module:
            return FusedBatchNorm(k, cout, True) if norm else nn.Identity()

        self.conv1 = FusedConv(k, cin, cout, 3, stride, 1, not norm)
        self.bn1 = bn()
        self.act1 = Act(act)
        self.conv2 = FusedConv(k, cout, cout, 3, 1, 1, not norm)
        self.bn2 = bn()
        shortcut: nn.Module = nn.Identity()
        if project:
            shortcut = nn.Sequential(FusedConv(k, cin, cout, 1, stride, 0, not norm), bn())
        self.shortcut = shortcut
        self.act2 = Act(act)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))) + self.shortcut(x))
        return out
