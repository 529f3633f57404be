"""What `archsearch doctor` says of this machine: torch, CUDA, cores, the native backends (and why not, in a user's
words), and the step each kind of model takes here."""

from __future__ import annotations

import re

import torch

from archsearch.engine.runtime import check_backends, usable_cores

__all__ = ["describe_runtime", "plain_reason"]


def describe_runtime() -> dict[str, object]:
    """What training here runs on and through: torch, CUDA, cores, the native backends (and why not, where torch
    computes instead), and the step each kind of model takes on one thread and on every core (``archsearch
    doctor``)."""
    from archsearch.core.protocol import REPORT_PROTOCOL
    from archsearch.core.shapes import FASHION_MNIST_SHAPE
    from archsearch.engine.native import conv, gemm
    from archsearch.engine.native.loader import cache_dir
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
        "products_why_not": gemm.why_not() if backends["products"] == "torch" else None,
        "first_conv": backends["first_conv"],
        "first_conv_why_not": (conv.why_not() or (None if conv.pays_here() else CONV_NO_AVX512))
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
