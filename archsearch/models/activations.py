"""The one table of activations a spec may name: what the plain models (layers.py) and the fused units (units.py)
both build."""

from __future__ import annotations

from torch import nn

__all__ = ["ACTIVATIONS", "activation_module"]

# The report's six activations plus three common modern ones.
ACTIVATIONS = ("sigmoid", "tanh", "hardtanh", "mish", "leakyrelu", "relu", "gelu", "silu", "elu")

_ACTIVATION_MODULES: dict[str, type[nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "hardtanh": nn.Hardtanh,
    "mish": nn.Mish,
    "leakyrelu": nn.LeakyReLU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
}


def activation_module(name: str) -> nn.Module:
    """A new module of the activation ``name`` (one of ``ACTIVATIONS``)."""
    return _ACTIVATION_MODULES[name]()
