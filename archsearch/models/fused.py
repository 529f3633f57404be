"""The fused model: K independent copies of one architecture as one module, so that K runs (seeds) train in one pass.

Built from the same layer registry as the plain model, unit for unit (:mod:`archsearch.models.units`), so run k's
slice of every tensor is exactly run k's plain model (``from_models``/``unfuse``). Input: MLP ``(K, B, C*H*W)``,
CNN ``(B, K*C, H, W)`` (run k's images in channels k*C..). Output: ``(K, B, classes)``.

The forward runs a *program*, a list of functions, one per unit: by default the units' own ``forward``. An
accelerated step (archsearch.engine.steps) may run a program of its own over the same parameters — the C kernels
for a CNN's first layer — which is how a path is chosen outside the model: the model never asks what it runs on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from archsearch.core.shapes import FASHION_MNIST_SHAPE, Shape
from archsearch.models import units as U
from archsearch.models.plain import build_model, plain_layers
from archsearch.models.spec import NUM_CLASSES, Spec

__all__ = ["POOL_COMMUTES", "FusedModel", "Program"]

Program = list[Callable[[Tensor], Tensor]]

# Activations that commute with max pooling *exactly*, gradients included: max(f(a), f(b)) == f(max(a, b)) for a
# non-decreasing f, and where f flattens ties (relu's zeros, hardtanh's saturation) its gradient there is zero, so which
# tied element max-pooling picks cannot matter. Pooling first applies f to 4x fewer values.
POOL_COMMUTES = frozenset({"relu", "hardtanh"})


def _commute(units: list[U.Unit]) -> list[U.Unit]:
    """Move each commuting activation after the max pooling that follows it (see POOL_COMMUTES)."""
    out = list(units)
    for i in range(len(out) - 1):
        a, b = out[i], out[i + 1]
        if isinstance(a, U.Act) and a.name in POOL_COMMUTES and isinstance(b, U.Pool2d) and b.mode == "max":
            out[i], out[i + 1] = b, a
    return out


class FusedModel(nn.Module):
    """K copies of ``spec`` for images of ``shape`` and ``classes`` outputs, with stacked weights."""

    def __init__(self, spec: Spec, k: int, shape: Shape = FASHION_MNIST_SHAPE, classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.spec, self.k, self.shape, self.classes = spec, k, shape, classes
        shapes, act = spec.shapes(shape), spec.activation
        trunk: list[U.Unit] = [U.ChannelsLast()] if spec.trunk else []
        head: list[U.Unit] = []
        self._mirrors: list[tuple[U.Unit, int]] = []  # (unit, index of its module in the plain nn.Sequential)
        offset, i = 0, 0  # i: the layer's place in spec.layers (the trunk's layers come first)
        for layer, plain in plain_layers(spec, shape):
            if layer is None:  # glue: Flatten
                if spec.kind == "cnn":
                    trunk.append(U.Flatten(k))
                offset += len(plain)
                continue
            units = layer.fused(shapes[i], k, act)
            for unit in units:
                if unit.mirror is not None:
                    self._mirrors.append((unit, offset + unit.mirror))
            (trunk if i < len(spec.trunk) else head).extend(units)
            offset, i = offset + len(plain), i + 1
        output = U.FusedLinear(k, shapes[-1].features, classes, mirror=0)
        self._mirrors.append((output, offset))
        head.append(output)
        self.trunk = nn.ModuleList(_commute(trunk))
        self.head = nn.ModuleList(head)
        self.trunk_program: Program = [u.forward for u in self.trunk]
        self.head_program: Program = [u.forward for u in self.head]
        self.act = U.Act(spec.activation)  # the activation every layer uses (the hand-written step calls it)

    # -- forward

    def features(self, x: Tensor) -> Tensor:
        """The head's input ``(K, B, F)``: the trunk's output for a CNN, else ``x``."""
        for f in self.trunk_program:
            x = f(x)
        return x

    def forward_head(self, x: Tensor) -> Tensor:
        for f in self.head_program:
            x = f(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.features(x))

    def set_noise(self, generators: Sequence[torch.Generator]) -> None:
        """Each run's generator for its dropout masks (run k draws from ``generators[k]``)."""
        for unit in self.modules():
            if isinstance(unit, U.FusedDropout):
                unit.generators = list(generators)

    # -- what accelerated steps read

    @property
    def is_cnn(self) -> bool:
        return self.spec.kind == "cnn"

    @property
    def linears(self) -> list[U.FusedLinear]:
        """The head's products, output layer last."""
        return [u for u in self.head if isinstance(u, U.FusedLinear)]

    @property
    def fc_weights(self) -> list[nn.Parameter]:
        return [u.weight for u in self.linears]

    @property
    def fc_biases(self) -> list[nn.Parameter]:
        biases = [u.bias for u in self.linears]
        assert all(b is not None for b in biases), "the hand-written steps need every product's bias"
        return biases  # type: ignore[return-value]

    def trunk_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())

    # -- plain models in and out

    @classmethod
    def from_models(
        cls,
        spec: Spec,
        models: Sequence[nn.Module],
        shape: Shape = FASHION_MNIST_SHAPE,
        classes: int = NUM_CLASSES,
    ) -> FusedModel:
        """Stack K plain models of ``spec`` (``build_model``'s) into one fused model."""
        fused = cls(spec, len(models), shape, classes)
        seqs = [list(m.children()) for m in models]
        with torch.no_grad():
            for unit, index in fused._mirrors:
                states = [seq[index].state_dict() for seq in seqs]
                for key, tensor in unit.state_dict(keep_vars=True).items():
                    parts = [state[key] for state in states]
                    tensor.copy_(_stack(parts, unit.stack_mode(key)))
        return fused

    def unfuse(self, run: int) -> nn.Sequential:
        """Run ``run``'s weights as a plain model (on the CPU), e.g. for export."""
        model = build_model(self.spec, self.shape, self.classes)
        children = list(model.children())
        with torch.no_grad():
            for unit, index in self._mirrors:
                plain = children[index].state_dict(keep_vars=True)
                for key, tensor in unit.state_dict().items():
                    target = plain[key]
                    target.copy_(_slice(tensor, run, self.k, unit.stack_mode(key)).reshape(target.shape))
        return model


def _stack(parts: list[Tensor], mode: U.StackMode) -> Tensor:
    if mode == "cat":
        return torch.cat(parts)
    if mode == "stack":
        return torch.stack(parts)
    if mode == "stack_row":
        return torch.stack([p.unsqueeze(0) for p in parts])
    return parts[0]  # shared (BatchNorm's batch counter: the same for every run)


def _slice(tensor: Tensor, run: int, k: int, mode: U.StackMode) -> Tensor:
    if mode == "shared":
        return tensor.detach().cpu()
    if mode == "cat":
        n = tensor.shape[0] // k
        return tensor[run * n : (run + 1) * n].detach().cpu()
    return tensor[run].detach().cpu()
