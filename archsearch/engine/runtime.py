"""Where and how training runs: the device, torch's threads, huge pages, the GPU settings training needs, and the
native backends' settings checked up front."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from archsearch.core.errors import UserError

__all__ = [
    "check_backends",
    "default_device",
    "describe_runtime",
    "on_device",
    "plain_reason",
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


def describe_runtime() -> dict[str, object]:
    """What training here runs on and through: torch, CUDA, cores, the native backends (and why not, where torch
    computes instead), and the step each kind of model takes on one thread and on every core (``archsearch
    doctor``)."""
    from archsearch.core.protocol import REPORT_PROTOCOL
    from archsearch.core.shapes import FASHION_MNIST_SHAPE
    from archsearch.engine.native import conv, gemm
    from archsearch.engine.native.loader import WHY_NOT, cache_dir
    from archsearch.engine.steps.select import CONV_NO_AVX512, select_step
    from archsearch.models import parse_spec

    backends = check_backends()
    cuda = torch.cuda.is_available()
    examples = {
        "ReLU MLP (report row 6)": "mlp:128-relu",
        "tanh MLP (report row 2)": "mlp:128-tanh",
        "the report's CNN (row 16)": "cnn:6c5-p2-16c5-p2-fc128,64",
        "CNN with BatchNorm": "cnn:32c3p1-bn-p2-64c3p1-bn-gap-fc",
    }
    cores = usable_cores()
    steps = {
        label: {
            f"{n} thread{'s' if n > 1 else ''}": select_step(
                parse_spec(text), REPORT_PROTOCOL, device="cpu", threads=n, shape=FASHION_MNIST_SHAPE
            ).name
            for n in sorted({1, cores})
        }
        for label, text in examples.items()
    }
    return {
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if cuda else None,
        "cores": cores,
        "products": backends["products"],
        "products_why_not": WHY_NOT.get("ARCHSEARCH_GEMM") if backends["products"] == "torch" else None,
        "first_conv": backends["first_conv"],
        "first_conv_why_not": (WHY_NOT.get("ARCHSEARCH_CONV") or (None if conv.pays_here() else CONV_NO_AVX512))
        if backends["first_conv"] == "torch"
        else None,
        "native_cache": str(cache_dir()) if gemm.libxsmm_available() or conv.available() else None,
        "steps_on_cpu": steps,
    }


def plain_reason(why: str) -> str:
    """A native backend's why-not (``describe_runtime``'s ``*_why_not``) in a user's words, for ``archsearch doctor``'s
    first screen: no environment variables' names (they stay in ``doctor --json`` and the ``--help`` texts)."""
    from archsearch.engine.steps.select import CONV_NO_AVX512

    if why == CONV_NO_AVX512:
        return "the C kernel is faster than torch's on CPUs with AVX-512 only, and this one has none"
    if re.fullmatch(r"ARCHSEARCH_\w+=torch", why):
        return "switched off by an environment setting; `archsearch doctor --json` names it"
    text = re.sub(r";\s*set ARCHSEARCH_\w+", "", why)  # "... (Permission denied; set ARCHSEARCH_CACHE)"
    text = re.sub(r"\s*\([^()]*ARCHSEARCH_[^()]*\)", "", text)  # a parenthesis about a setting
    text = re.sub(r"\bARCHSEARCH_\w+(=\S+)?", "a setting", text)  # whatever is left
    return text.replace("compiling its shim failed", "compiling the C kernels failed").replace(
        "its cache", "the C kernels' cache"
    )


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
