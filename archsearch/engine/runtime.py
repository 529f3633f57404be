"""Where and how training runs: the device, torch's threads, huge pages, the GPU settings training needs, and the
native backends' settings checked up front."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from archsearch.core.errors import UserError

__all__ = [
    "check_backends",
    "default_device",
    "on_device",
    "quiet_gc",
    "resolve_device",
    "torch_threads",
    "usable_cores",
    "use_huge_pages",
]


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, as a container's cpuset sets it), else all of them."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | None) -> torch.device:
    """``device`` (None: CUDA where there is one) checked to be usable; a UserError in one line otherwise."""
    try:
        dev = torch.device(device) if device else default_device()
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError) as err:
        raise UserError(f"device {device!r} is not usable: {str(err).splitlines()[0]}") from None
    return dev


def use_huge_pages() -> None:
    """Back CPU tensors of 2 MB and more with transparent huge pages (Linux; where THP is at least ``madvise``).

    A step walks the weights, AdamW state and dataset of a few tens of MB, more than 4 kB pages' TLB reach: measured
    side by side with two workers, row 15 1.07x and row 16 1.03x model-steps/s. torch reads the switch once, at the
    process's first tensor allocation, so this must run before that; workers inherit it through the environment.
    An explicit ``THP_MEM_ALLOC_ENABLE`` in the environment wins.
    """
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def check_backends() -> dict[str, str]:
    """What computes the CPU step's products and a CNN's first layer (``{"products": "libxsmm"|"torch",
    "first_conv": "native"|"torch"}``). A bad ``ARCHSEARCH_GEMM``/``ARCHSEARCH_CONV``, or a required library or
    compiler that is missing, is a UserError here, before any study is touched."""
    from archsearch.engine.native import conv, gemm

    return {"products": gemm.backend(), "first_conv": conv.backend()}


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` (None: left alone) for the block, then restored."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def on_device(device: torch.device) -> Iterator[None]:
    """On a GPU, training runs with ``device`` as the current device and cuDNN convolutions in true float32 and with
    deterministic algorithms; the previous settings are restored after.

    PyTorch lets convolutions round through TF32 by default, which moves a CNN's GPU results ~1e-3 away from the
    CPU's float32, and lets cuDNN pick algorithms that accumulate in a varying order: two runs of the report's CNN
    with the same seeds on an H200 gave mean accuracies 0.8987 and 0.9004 (its MLPs, all GEMMs, came out identical).
    A step of these models is bound by kernel launches, not by the convolutions' arithmetic, so neither setting is
    expected to cost speed (not yet measured on a GPU).
    """
    if device.type != "cuda":
        yield
        return
    cudnn = torch.backends.cudnn
    before = cudnn.allow_tf32, cudnn.deterministic
    cudnn.allow_tf32, cudnn.deterministic = False, True
    try:
        with torch.cuda.device(device):  # streams, graph capture and replay act on the current device (--device cuda:1)
            yield
    finally:
        cudnn.allow_tf32, cudnn.deterministic = before


@contextmanager
def quiet_gc() -> Iterator[None]:
    """Python's cycle collector leaves alone, for the block, every object that exists when it starts (``gc.freeze``):
    what torch, the dataset and the caller made before training is not scanned again while it trains; the objects
    come back under the collector after the block, so nothing is kept that would otherwise be freed.

    A full collection walks every tracked object, some 430k once torch and a dataset are loaded, in about 0.18 s on
    a 2-core AMD EPYC, and what loading made is still counted as new: the first few hundred steps trigger one or two,
    a pause in the middle of training, once per call. Measured there, report row 6 (5 runs, 1,875 steps an epoch),
    3 epochs: 2 full collections took 0.37 s without this, 1 took 0.01 s with it. Numbers do not change: the
    collector frees memory, it computes nothing. A process that froze objects itself (or a block inside another) is
    left as it is.
    """
    mine = gc.isenabled() and gc.get_freeze_count() == 0
    if mine:
        gc.freeze()
    try:
        yield
    finally:
        if mine:
            gc.unfreeze()
