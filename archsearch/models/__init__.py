"""Models from specs: the layer registry, the spec grammar it drives, the plain builder and the fused K-run builder.

Imports only :mod:`archsearch.core` (and torch): what a checkpoint needs to be rebuilt.
"""

from archsearch.models.fused import POOL_COMMUTES, FusedModel, Program
from archsearch.models.layers import (
    ACTIVATIONS,
    LAYERS,
    Conv,
    Dropout,
    GlobalAvgPool,
    Layer,
    Linear,
    Pool,
    Residual,
    SepConv,
    SpecError,
    activation_module,
    register,
)
from archsearch.models.plain import build_model, count_params, init_model, macs_per_sample
from archsearch.models.spec import NUM_CLASSES, Spec, cnn, mlp, parse_spec, spec_from_dict
from archsearch.models.units import SeededDropout

__all__ = [
    "ACTIVATIONS",
    "LAYERS",
    "NUM_CLASSES",
    "POOL_COMMUTES",
    "Conv",
    "Dropout",
    "FusedModel",
    "GlobalAvgPool",
    "Layer",
    "Linear",
    "Pool",
    "Program",
    "Residual",
    "SeededDropout",
    "SepConv",
    "Spec",
    "SpecError",
    "activation_module",
    "build_model",
    "cnn",
    "count_params",
    "init_model",
    "macs_per_sample",
    "mlp",
    "parse_spec",
    "register",
    "spec_from_dict",
]
