"""The plain single-run model of a spec: an ordinary ``nn.Sequential``, what checkpoints load into and what the
report's parameter counts refer to; and the report's initialisation."""

from __future__ import annotations

import torch
from torch import nn

from archsearch.core.shapes import FASHION_MNIST_SHAPE, Shape
from archsearch.models.layers import Layer
from archsearch.models.spec import NUM_CLASSES, Spec

__all__ = ["build_model", "count_params", "init_model", "macs_per_sample", "plain_layers"]


def plain_layers(spec: Spec, shape: Shape = FASHION_MNIST_SHAPE) -> list[tuple[Layer | None, list[nn.Module]]]:
    """The plain modules of each layer, in order, with ``None`` for the glue (flattening, the output layer)."""
    shapes = spec.shapes(shape)
    act = spec.activation
    out: list[tuple[Layer | None, list[nn.Module]]] = []
    if spec.kind == "mlp":
        out.append((None, [nn.Flatten()]))
    trunk = spec.trunk
    for layer, s in zip(trunk, shapes, strict=False):
        out.append((layer, layer.plain(s, act)))
    if spec.kind == "cnn":
        out.append((None, [nn.Flatten()]))
    for layer, s in zip(spec.head, shapes[len(trunk) :], strict=False):
        out.append((layer, layer.plain(s, act)))
    return out


def build_model(spec: Spec, shape: Shape = FASHION_MNIST_SHAPE, classes: int = NUM_CLASSES) -> nn.Sequential:
    """The plain single-run model for ``spec``: input (N, C, H, W) images, output (N, classes) logits.

    The report's specs build exactly the modules they always did (Conv2d, activation, pooling, Flatten, Linear…), so
    their parameter counts, state-dict keys and initialisation draws are unchanged.
    """
    modules = [m for _, group in plain_layers(spec, shape) for m in group]
    modules.append(nn.Linear(spec.shapes(shape)[-1].features, classes))
    return nn.Sequential(*modules)


def count_params(spec: Spec, shape: Shape = FASHION_MNIST_SHAPE, classes: int = NUM_CLASSES) -> int:
    """Learnable parameters (BatchNorm's running statistics are buffers, not counted), from the layer registry's
    formulas; tests/models/test_layers.py holds them to the built model's count."""
    shapes = spec.shapes(shape)
    return (
        sum(layer.params(s) for layer, s in zip(spec.layers, shapes, strict=False))
        + (shapes[-1].features + 1) * classes
    )


def macs_per_sample(spec: Spec, shape: Shape = FASHION_MNIST_SHAPE, classes: int = NUM_CLASSES) -> int:
    """Multiply-accumulates of one forward pass of one image (weight layers only): the unit of training cost."""
    shapes = spec.shapes(shape)
    return sum(layer.macs(s) for layer, s in zip(spec.layers, shapes, strict=False)) + shapes[-1].features * classes


def init_model(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """The report's initialisation: Xavier-normal weights, zero biases, drawn in module order from ``generator``
    (BatchNorm starts at its identity: weight 1, bias 0)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                nn.init.xavier_normal_(module.weight, generator=generator)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
    return model
