"""Every path a spec can train through computes the same training, registry-driven.

For every report row and a set of specs that together use every layer kind of the registry (and every recipe
option), each step that applies (engine.steps.applicable_plans: the C step, the Python step, either with the C first
conv, autograd) and each layout (the runs fused into one model, or plain models one after another or spread over
threads) is held to the general fused autograd step, per training step over 200 steps, to float32 rounding; and on
every path a seed trained with another equals the same seed trained alone.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from archsearch.core.protocol import Augment, Protocol
from archsearch.core.shapes import FASHION_MNIST_SHAPE
from archsearch.data import Dataset
from archsearch.engine import train
from archsearch.engine.steps import StepPlan, applicable_plans
from archsearch.models import LAYERS, parse_spec
from archsearch.study.report import report_rows
from tests.conftest import assert_same_training

THREADS = 1  # where every accelerator applies (libxsmm's products and the C conv are single-threaded)
EPOCHS = 2  # 200 steps of 32 on the 3,200-image slice
RECIPE = Protocol(
    epochs=EPOCHS, schedule="cosine", warmup_epochs=0.5, augment=Augment(crop=2, flip=True, erase=0.3)
)  # what the hand-written steps support beyond the report's protocol: a changing lr, augmentation

CASES: list[tuple[str, Protocol]] = [(str(row.spec), Protocol(epochs=EPOCHS)) for row in report_rows()]
CASES += [
    ("mlp:64,32-relu", RECIPE),
    ("cnn:6c5-p2-12c3-fc32-tanh", RECIPE),
    ("cnn:8c3s2p1-bn-p2-16c3p1-gap-fc-silu", Protocol(epochs=EPOCHS)),
    ("cnn:8ds3p1-bn-r8-bn-r16s2-gap-fc-d0.3", Protocol(epochs=EPOCHS, optimizer="sgd", lr=0.01, momentum=0.9)),
    ("mlp:48-bn-d0.2-24-gelu", Protocol(epochs=EPOCHS, schedule="onecycle", lr=3e-3, label_smoothing=0.1)),
    ("cnn:6c5-d0.1-p2-fc32-bn-d0.4-elu", Protocol(epochs=EPOCHS, loss="kl", label_smoothing=0.05)),
]


# The heaviest cases (a few seconds to twenty each on a 2-core CPU) run in CI and with `-m slow`, not in the fast loop.
HEAVY = {"cnn:6c5-p2-12c3-fc32-tanh", "cnn:8ds3p1-bn-r8-bn-r16s2-gap-fc-d0.3", "cnn:6c5-d0.1-p2-fc32-bn-d0.4-elu"}
HEAVY |= {"cnn:6c5-p2-16c5-p2-fc128,64-relu"}  # the report's CNN


def _cases() -> list[object]:
    return [pytest.param(text, p, id=text, marks=[pytest.mark.slow] if text in HEAVY else []) for text, p in CASES]


def test_the_cases_use_every_layer_kind() -> None:
    """Registry-driven: a kind added to the registry without a case here fails this test."""
    used = set().union(*(parse_spec(text).kinds for text, _ in CASES))
    assert used == set(LAYERS)


# Every spec can also train as plain models (the layout CPUs take for CNNs at batch 64 or more): one after another,
# or spread over two threads.
PLAIN_LAYOUTS = [
    StepPlan(layout="plain"),
    StepPlan(layout="plain", groups=2),
    StepPlan(layout="plain", channels_last=True),
]


REPORT_SPECS = {str(row.spec) for row in report_rows()}


def _plans(text: str, protocol: Protocol, *, plain: bool = True) -> list[StepPlan]:
    """The plans that apply, ending with the fused autograd step (the reference); with ``plain``, the plain layouts
    too, for the generated cases (together they use every layer kind; the report's rows, at batch 32, never train as
    plain models)."""
    plans = applicable_plans(parse_spec(text), protocol, device="cpu", threads=THREADS, shape=FASHION_MNIST_SHAPE)
    if not plain or text in REPORT_SPECS:
        return plans
    return [*(p for p in PLAIN_LAYOUTS if p not in plans), *plans]


def _losses(text: str, seeds: list[int], protocol: Protocol, data: Dataset, plan: StepPlan) -> torch.Tensor:
    result = train(parse_spec(text), seeds, protocol, data, threads=THREADS, record_steps=True, plan=plan)
    assert result.engine_step == plan.name
    return torch.tensor([run.step_losses for run in result.runs])


@pytest.mark.parametrize(("text", "protocol"), _cases())
def test_every_path_trains_what_autograd_trains(text: str, protocol: Protocol, small_real: Dataset) -> None:
    plans = _plans(text, protocol)
    assert plans[-1] == StepPlan("autograd")
    reference = _losses(text, [7, 8], protocol, small_real, plans[-1])
    assert reference.shape == (2, EPOCHS * 100) and torch.isfinite(reference).all()
    for plan in plans[:-1]:
        assert_same_training(_losses(text, [7, 8], protocol, small_real, plan), reference, rtol=2e-4)


@pytest.mark.parametrize(("text", "protocol"), _cases())
def test_a_seed_fused_equals_the_seed_alone_on_every_path(text: str, protocol: Protocol, small_real: Dataset) -> None:
    for plan in _plans(text, protocol, plain=False):  # the plain layouts: bit for bit, test below
        fused = _losses(text, [7, 8], protocol, small_real, plan)[1:]
        alone = _losses(text, [8], protocol, small_real, plan)
        assert_same_training(fused, alone, rtol=1e-5)


@pytest.mark.parametrize(
    "plan",
    [
        pytest.param(p, id=p.name, marks=[pytest.mark.slow] if p.groups > 1 or p.channels_last else [])
        for p in PLAIN_LAYOUTS
    ],
)
def test_a_plain_run_is_bit_identical_to_the_run_alone(plan: StepPlan, small_real: Dataset) -> None:
    """In the plain layout runs share nothing, not even a kernel call: with others, spread over threads or not, a
    seed trains exactly as alone (one torch thread each)."""
    text, protocol = "cnn:8ds3p1-bn-r8-bn-r16s2-gap-fc-d0.3", Protocol(epochs=1, augment=Augment(crop=2, flip=True))
    together = _losses(text, [7, 8, 9], protocol, small_real, plan)
    alone = dataclasses.replace(plan, groups=1)
    for r, seed in enumerate([7, 8, 9]):
        assert torch.equal(together[r], _losses(text, [seed], protocol, small_real, alone)[0])
