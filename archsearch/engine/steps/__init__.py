"""Training steps: the general autograd step, the accelerators, CUDA-graph replay, and the one place a step is chosen
(:func:`select_step`, in select.py)."""

from __future__ import annotations

from collections.abc import Sequence

from archsearch.core.protocol import Protocol
from archsearch.engine.native import conv
from archsearch.engine.steps.autograd import AutogradStep
from archsearch.engine.steps.graphs import DeviceBatches, GraphedStep, Step
from archsearch.engine.steps.handwritten import (
    ACTIVATION_BACKWARD,
    BLOCK_BYTES,
    STREAM_BYTES,
    XSMM_MIN_WEIGHTS,
    FusedStep,
)
from archsearch.engine.steps.select import StepPlan, applicable_plans, select_step
from archsearch.models import FusedModel

__all__ = [
    "ACTIVATION_BACKWARD",
    "BLOCK_BYTES",
    "STREAM_BYTES",
    "XSMM_MIN_WEIGHTS",
    "AutogradStep",
    "DeviceBatches",
    "FusedStep",
    "GraphedStep",
    "Step",
    "StepPlan",
    "applicable_plans",
    "build_step",
    "select_step",
]


def build_step(
    plan: StepPlan, model: FusedModel, protocol: Protocol, recipes: Sequence[Protocol] | None = None
) -> Step:
    """The step ``plan`` describes, over ``model``'s parameters (the C conv, where planned, becomes the model's trunk
    program: the same parameters through other kernels). ``recipes``: each run's, where they differ (fused trials:
    the autograd step only)."""
    if recipes is not None and any(r != protocol for r in recipes) and plan.step != "autograd":
        raise ValueError(f"runs with recipes of their own train through the autograd step, not {plan.name}")
    if plan.first_conv == "native":
        program = conv.first_conv_program(model)
        if program is None:
            raise ValueError(f"the C conv cannot compute the first layer of {model.spec}")
        model.trunk_program = program
    if plan.step == "autograd":
        return AutogradStep(model, protocol, recipes)
    return FusedStep(
        model,
        lr=protocol.lr,
        weight_decay=protocol.weight_decay,
        loss=protocol.loss,
        stream_bytes=plan.stream_bytes,
        xsmm=plan.xsmm,
        native=plan.step == "c",
        groups=plan.groups,
    )
