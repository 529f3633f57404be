"""select_step: the one place where the path a training step takes is chosen.

Every spec trains through the general autograd step. The hand-written steps are accelerators, taken only where they
apply, and they must compute the same numbers to float rounding (tests/engine/test_parity.py holds each to autograd):

* ``c`` — a ReLU MLP's whole step as one C call per group of runs (cstep.py), on a CPU with libxsmm: one group per
  thread, so one process uses every core it is given with the single-threaded libxsmm kernels;
* ``python`` — the hand-written backward of the fully connected head (handwritten.py): chains of Linear, conv,
  pooling and one activation, with AdamW; on one CPU thread with libxsmm's products for big layers and wide layers
  streamed in blocks;
* ``cconv`` — a CNN's first convolution (and the 2x2 max pooling right after it) through C kernels
  (archsearch.engine.native.conv), on one CPU thread; with the python step or with autograd;
* ``graphs`` — on a GPU, the whole step captured once as a CUDA graph and replayed (graphs.py), wherever nothing in
  the step needs the host (no dropout or augmentation drawn on the CPU, a constant learning rate).

The choice depends on what is passed in — spec, protocol, device, thread count — never on ambient state (torch's
current thread count, say), so a run's numbers follow from its arguments. Which layer kinds each accelerated step
supports is written on the kinds themselves (``Layer.accelerated`` in the layer registry).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from archsearch.core.protocol import Protocol
from archsearch.core.shapes import Shape
from archsearch.engine.native import conv, gemm
from archsearch.engine.steps.calibrate import memory_format
from archsearch.engine.steps.handwritten import STREAM_BYTES
from archsearch.models import NUM_CLASSES, Conv, Spec

__all__ = ["CONV_NO_AVX512", "PLAIN_MIN_BATCH", "Machine", "StepPlan", "applicable_plans", "select_step"]

CONV_NO_AVX512 = "the C conv pays on AVX-512 CPUs only (ARCHSEARCH_CONV_ANY_CPU=1 insists)"

StepKind = Literal["autograd", "python", "c"]
Layout = Literal["fused", "plain"]
# A CNN's runs train as plain NCHW models on a CPU from this batch size on (compute-bound: torch's own convolutions
# beat one grouped convolution over the runs, and NCHW beats channels-last; benchmarks/bench_search.py measures it).
PLAIN_MIN_BATCH = 64


@dataclass(frozen=True)
class StepPlan:
    """What trains: ``step`` and the accelerators it uses. ``name`` is what trials and ``train --json`` record."""

    step: StepKind = "autograd"
    first_conv: Literal["torch", "native"] = "torch"
    xsmm: bool = False  # python step: big layers' products through libxsmm
    stream_bytes: int | None = None  # python and c steps: stream layers of at least this many weight bytes
    groups: int = 1  # c step, and the plain layout: groups of runs, one per thread
    graphs: bool = False  # CUDA graph replay
    layout: Layout = "fused"  # the K runs as one fused model, or as K plain models (engine/plain_runs.py)
    channels_last: bool = False  # plain layout: the models in channels-last (measured faster: calibrate.py)
    why_not: tuple[str, ...] = field(default=(), compare=False)  # why faster paths were not taken, for `doctor`

    @property
    def name(self) -> str:
        if self.layout == "plain":
            return (
                "plain" + ("+cl" if self.channels_last else "") + (f"+{self.groups}threads" if self.groups > 1 else "")
            )
        parts: list[str] = [self.step]
        if self.first_conv == "native":
            parts.append("cconv")
        if self.graphs:
            parts.append("graphs")
        return "+".join(parts)


@dataclass(frozen=True)
class Machine:
    """What the choice depends on beyond the spec, the recipe, the device and the threads: the native kernels this
    machine has. ``Machine.here()`` asks the native backends (building their kernels on first use)."""

    libxsmm: bool = False  # libxsmm's products (and the C step) are available
    native_conv: bool = False  # the C conv kernels are built and loaded
    conv_pays: bool = False  # and this CPU runs them faster than torch (AVX-512, or ARCHSEARCH_CONV_ANY_CPU=1)

    @classmethod
    def here(cls) -> Machine:
        return cls(gemm.libxsmm_available(), conv.available(), conv.pays_here())


def _unsupported(spec: Spec, step: str) -> list[str]:
    from archsearch.models import LAYERS

    return sorted(kind for kind in spec.kinds if step not in LAYERS[kind].accelerated)


def _hand_written_recipe(protocol: Protocol) -> str | None:
    """Why the hand-written steps cannot train with ``protocol`` (they implement AdamW and the plain loss)."""
    if protocol.optimizer != "adamw":
        return f"optimizer {protocol.optimizer}"
    if protocol.label_smoothing:
        return "label smoothing"
    return None


def _c_step(spec: Spec, protocol: Protocol, cpu: bool, machine: Machine) -> str | None:
    """Why the C step cannot take this run, or None."""
    if spec.kind != "mlp":
        return "the C step takes MLPs"
    if bad := _unsupported(spec, "c"):
        return f"the C step takes fully connected layers only, not {', '.join(bad)}"
    if spec.normed:
        return "the C step has no BatchNorm"
    if spec.activation != "relu":
        return f"the C step is written for relu, not {spec.activation}"
    if not cpu:
        return "the C step runs on a CPU"
    if (why := _hand_written_recipe(protocol)) is not None:
        return f"the C step does not implement {why}"
    if not machine.libxsmm:
        return "the C step needs libxsmm (Debian: libxsmm-dev) and a C compiler"
    return None


def _python_step(spec: Spec, protocol: Protocol, device: torch.device, machine: Machine) -> str | None:
    if bad := _unsupported(spec, "python"):
        return f"the hand-written step knows conv, pool and fc layers, not {', '.join(bad)}"
    if spec.normed:
        return "the hand-written step has no BatchNorm"
    if (why := _hand_written_recipe(protocol)) is not None:
        return f"the hand-written step does not implement {why}"
    if device.type not in ("cpu", "cuda") or not hasattr(torch, "_fused_adamw_"):
        return "the hand-written step needs torch's fused AdamW (CPU or CUDA)"
    if spec.kind == "cnn" and device.type == "cpu" and not machine.conv_pays:
        # measured on an AVX2-only AMD EPYC, row 16 on one thread: autograd 359 model-steps/s, the hand-written step
        # 295 with oneDNN's first conv, 138 with the C conv; its CNN path was tuned with the C conv on AVX-512
        return "on a CPU without AVX-512 autograd trains CNNs faster than the hand-written step"
    return None


def _native_conv(spec: Spec, shape: Shape, cpu: bool, threads: int, machine: Machine) -> str | None:
    first = spec.trunk[0] if spec.trunk else None
    if type(first) is not Conv or first.norm or first.stride != 1 or shape.channels != 1:
        return "the C conv takes a first conv of one input channel, stride 1, no BatchNorm"
    if first.kernel > conv.MAX_KERNEL:
        return f"the C conv takes kernels up to {conv.MAX_KERNEL}"
    if not cpu or threads != 1:
        return "the C conv runs in single-threaded CPU processes (--workers)"
    if not machine.native_conv:
        return "the C conv needs a C compiler"
    if not machine.conv_pays:
        return CONV_NO_AVX512
    return None


def applicable_plans(
    spec: Spec,
    protocol: Protocol,
    *,
    device: torch.device | str,
    threads: int,
    shape: Shape,
    cuda_graphs: bool = True,
    runs: int = 1,
    recipes: Sequence[Protocol] | None = None,
    classes: int = NUM_CLASSES,
    calibrate: bool = True,
    machine: Machine | None = None,
) -> list[StepPlan]:
    """Every plan that computes ``runs`` runs of ``spec`` under ``protocol`` on ``device`` with ``threads`` CPU
    threads, fastest first: the plain layout where it pays, the C step, the Python step (with the C conv where it
    applies, then without), autograd (likewise). The last is always the fused autograd step, which computes
    everything. ``why_not`` of the first says why faster ones do not apply. ``recipes``: each run's recipe, where
    they differ (fused trials): on a CPU they train as plain models, on a GPU as one fused model through the autograd
    step (without CUDA graphs), the one plan then; weight averaging or test-time flips in any recipe need the plain
    layout. A plain CNN's memory format
    is measured on this CPU once and cached (calibrate.py); ``calibrate`` false takes NCHW without measuring.
    ``machine``: the native kernels there are (default: this machine's, :meth:`Machine.here`)."""
    device = torch.device(device)
    machine = machine if machine is not None else Machine.here()
    cpu, one = device.type == "cpu", threads == 1
    why: list[str] = []
    plans: list[StepPlan] = []
    graphs = False
    if device.type == "cuda" and cuda_graphs:
        stochastic = "dropout" in spec.kinds or protocol.augment.active
        changing_lr = protocol.schedule != "constant" or protocol.warmup_epochs > 0
        graphs = not stochastic and not changing_lr
        if not graphs:
            why.append("CUDA graphs: " + ("dropout or augmentation draws on the host" if stochastic else "lr changes"))
    if (no_c := _c_step(spec, protocol, cpu, machine)) is None:
        # Streaming pays in the C step, whose groups of runs each run on one thread (see handwritten.py).
        plans.append(StepPlan("c", xsmm=True, stream_bytes=STREAM_BYTES, groups=threads))
    else:
        why.append(no_c)
    first_convs: list[Literal["torch", "native"]] = ["torch"]
    if spec.kind == "cnn":
        if (no_conv := _native_conv(spec, shape, cpu, threads, machine)) is None:
            first_convs.insert(0, "native")
        else:
            why.append(no_conv)
    if (no_python := _python_step(spec, protocol, device, machine)) is None:
        # libxsmm's kernels are single-threaded, and streaming pays on one thread only: on more, each block's small
        # kernels split badly (row 15: 0.7x at 2 threads), and a GPU would only see more, smaller kernel launches.
        xsmm = cpu and one and machine.libxsmm
        stream = STREAM_BYTES if cpu and one else None
        plans += [StepPlan("python", first, xsmm, stream, graphs=graphs) for first in first_convs]
    else:
        why.append(no_python)
    plans += [StepPlan("autograd", first, graphs=graphs) for first in first_convs]
    # runs spread over the threads, one torch thread each, where there are runs enough for them
    groups = min(threads, runs) if cpu and runs > 1 else 1
    only_plain = _only_plain(protocol, recipes, cpu)
    last = False
    plain_pays = only_plain or _plain_layout(spec, protocol, cpu, plans[0]) is None
    if cpu and calibrate and spec.kind == "cnn" and plain_pays:
        per_run = 1 if groups > 1 else threads
        last = memory_format(spec, shape, classes, protocol.batch_size, per_run) == "channels_last"
    plain = StepPlan("autograd", layout="plain", groups=groups, channels_last=last)
    if only_plain:
        return [dataclasses.replace(plain, why_not=(only_plain,))]
    if any(r != protocol for r in recipes or ()):  # on a GPU: one fused model, a recipe per run
        return [StepPlan("autograd", why_not=("runs with recipes of their own train through the autograd step",))]
    if (no_plain := _plain_layout(spec, protocol, cpu, plans[0])) is None:
        plans.insert(0, plain)
    else:
        why.append(no_plain)
    plans[0] = dataclasses.replace(plans[0], why_not=tuple(why))
    return plans


def _only_plain(protocol: Protocol, recipes: Sequence[Protocol] | None, cpu: bool) -> str | None:
    """Why the runs can only train as plain models, or None: only plain models keep averaged weights and evaluate
    with mirrored images, and on a CPU, where the search's CNNs train faster as plain models spread over the cores
    (benchmarks/bench_search.py), runs with recipes of their own train so too."""
    every = recipes or [protocol]
    if any(r.ema or r.tta for r in every):
        return "weight averaging (ema) and test-time flips (tta) train as plain models"
    if cpu and any(r != protocol for r in every):
        return "runs with recipes of their own train as plain models on a CPU"
    return None


def _plain_layout(spec: Spec, protocol: Protocol, cpu: bool, fastest: StepPlan) -> str | None:
    """Why the runs do not train as plain models (one after another, or spread over the threads), or None."""
    if not cpu:
        return "on a GPU the runs train as one fused model"
    if fastest.step != "autograd":
        return "a hand-written step trains the fused runs faster"
    if spec.kind != "cnn" or protocol.batch_size < PLAIN_MIN_BATCH:
        return f"plain models pay for CNNs at batch {PLAIN_MIN_BATCH} or more"
    return None


def select_step(
    spec: Spec,
    protocol: Protocol,
    *,
    device: torch.device | str,
    threads: int,
    shape: Shape,
    cuda_graphs: bool = True,
    runs: int = 1,
    recipes: Sequence[Protocol] | None = None,
    classes: int = NUM_CLASSES,
    calibrate: bool = True,
    machine: Machine | None = None,
) -> StepPlan:
    """The fastest step and layout that compute ``runs`` runs of ``spec`` under ``protocol`` on ``device`` with
    ``threads`` CPU threads (see :func:`applicable_plans`)."""
    return applicable_plans(
        spec, protocol, device=device, threads=threads, shape=shape, cuda_graphs=cuda_graphs, runs=runs,
        recipes=recipes, classes=classes, calibrate=calibrate, machine=machine,
    )[0]  # fmt: skip
