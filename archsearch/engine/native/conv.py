"""A CNN's first convolution, and the 2x2 max-pooling after it, through hand-written C kernels (``_conv.c``) on
single-threaded CPU workers; torch (oneDNN) everywhere else (archsearch.engine.steps.select_step decides).

Why: the fused model's first layer is a grouped convolution with one input channel per run. On one core of this
project's 2-core AMD EPYC (Zen 4), report row 16's (5 runs of 6 filters of 5x5, batch 32) took ~1.1 ms forward and
~1.1 ms backward in oneDNN (~25 GFLOP/s), and max-pooling its output ~1 ms more (a 2.2 MB gradient zero-filled and
scattered every step): 3.2 of a 7.5 ms step. The kernels here correlate each run's image with its filters directly,
vectorised along the image, and pool while the convolution's plane is still in cache; the backward rebuilds each
plane's gradient from the pooled one and the winners' positions. About 1.3 ms for the same work
(benchmarks/bench_trainer.py has the end-to-end effect).

The arithmetic is the same sums in another order, so results agree with torch's to float rounding
(tests/engine/test_conv.py); the pooling's choice among tied maxima is torch's exactly (the first in scan order). The
shim is compiled on first use (archsearch.engine.native). ``ARCHSEARCH_CONV=torch`` forces torch;
``ARCHSEARCH_CONV=native`` makes a missing compiler an error, and ``ARCHSEARCH_CONV_ANY_CPU=1`` takes the kernels on
CPUs without AVX-512 too (CI sets both).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from archsearch.core.settings import Settings, current
from archsearch.engine.native import loader as native

__all__ = ["MAX_KERNEL", "available", "backend", "first_conv", "first_conv_program", "pays_here", "takes", "why_not"]

_SOURCE = Path(__file__).with_name("_conv.c")
MAX_KERNEL = 16  # the backward keeps a kernel row's partial sums in a fixed array


def _library() -> ctypes.CDLL | None:
    return _loaded(current())[0]


def why_not() -> str | None:
    """Why the C kernels are not there (None where they are)."""
    return _loaded(current())[1]


@functools.cache  # per settings: built and loaded once (a process's settings change only in tests)
def _loaded(settings: Settings) -> tuple[ctypes.CDLL | None, str | None]:
    lib, why = native.load(
        "ARCHSEARCH_CONV", settings.conv,
        lambda: native.build("conv", _SOURCE, flags=["-O3", "-march=native"], link=["-lm"]),
    )  # fmt: skip
    if lib is None:
        return None, why
    c_int, c_long, c_ptr = ctypes.c_int, ctypes.c_long, ctypes.c_void_p
    for fn in (lib.archsearch_conv_forward, lib.archsearch_conv_backward):
        fn.argtypes = [c_int] * 8 + [c_ptr, c_long, c_long, c_ptr, c_ptr, c_ptr, c_ptr]
        fn.restype = c_int
    return lib, None


def available() -> bool:
    """Whether the kernels are there (built and loaded on the first call)."""
    return _library() is not None


def pays_here() -> bool:
    """Whether the kernels are worth taking on this CPU. They were written and measured on AVX-512 (Zen 4: 1.3 ms
    against oneDNN's 3.2 for row 16's first layer); on an AVX2-only AMD EPYC the same step ran at 138 model-steps/s
    against 295 with oneDNN's conv, so there torch does the layer unless ``ARCHSEARCH_CONV_ANY_CPU=1`` insists."""
    return current().conv_any_cpu or "avx512f" in native.cpu_flags()


def backend() -> str:
    """What computes a CNN's first layer on a single-threaded CPU worker: "native" or "torch"."""
    return "native" if available() and pays_here() else "torch"


def takes(weight: Tensor, pool: int) -> bool:
    """Whether ``first_conv`` can compute a first layer with these filters: float32 on a CPU, one input channel per
    run, square kernels up to MAX_KERNEL, pooling 1 or 2, and the kernels built. The kernels use one core, so the
    caller takes them only where a process trains on one thread (with more threads oneDNN uses them all)."""
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and weight.shape[1] == 1
        and weight.shape[2] == weight.shape[3] <= MAX_KERNEL
        and pool in (1, 2)
        and available()
    )


def _geometry(x: Tensor, weight: Tensor, padding: int, pool: int) -> tuple[list[int], tuple[int, int, int, int]]:
    b, k, h, w = x.shape
    kc, _, r, _ = weight.shape
    oh, ow = h + 2 * padding - r + 1, w + 2 * padding - r + 1
    return [b, k, kc // k, h, w, r, padding, pool], (b, kc, oh // pool, ow // pool)


def _forward(x: Tensor, weight: Tensor, bias: Tensor, padding: int, pool: int) -> tuple[Tensor, Tensor | None]:
    """The pooled convolution and, with pooling, each window's winner (0-3: its row-major place in the window)."""
    lib = _library()
    assert lib is not None
    dims, shape = _geometry(x, weight, padding, pool)
    weight, bias = weight.contiguous(), bias.contiguous()
    out = torch.empty(shape, dtype=x.dtype)
    arg = torch.empty(shape, dtype=torch.uint8) if pool == 2 else None
    rc = lib.archsearch_conv_forward(
        *dims, x.data_ptr(), x.stride(0), x.stride(1), weight.data_ptr(), bias.data_ptr(), out.data_ptr(),
        arg.data_ptr() if arg is not None else None,
    )  # fmt: skip
    if rc != 0:
        raise MemoryError("the first convolution's buffers could not be allocated")
    return out, arg


class _FirstConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, padding: int, pool: int) -> Tensor:
        out, arg = _forward(x, weight, bias, padding, pool)
        ctx.save_for_backward(x, arg)
        ctx.dims, ctx.weight_shape = _geometry(x, weight, padding, pool)[0], weight.shape
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, Tensor, None, None]:
        lib = _library()
        assert lib is not None
        x, arg = ctx.saved_tensors
        grad = grad.contiguous()
        dw = torch.empty(ctx.weight_shape, dtype=grad.dtype)
        db = torch.empty(ctx.weight_shape[0], dtype=grad.dtype)
        rc = lib.archsearch_conv_backward(
            *ctx.dims, x.data_ptr(), x.stride(0), x.stride(1), grad.data_ptr(),
            arg.data_ptr() if arg is not None else None, dw.data_ptr(), db.data_ptr(),
        )  # fmt: skip
        if rc != 0:
            raise MemoryError("the first convolution's buffers could not be allocated")
        return None, dw, db, None, None


def first_conv(x: Tensor, weight: Tensor, bias: Tensor, padding: int, pool: int) -> Tensor:
    """``max_pool2d(conv2d(x, weight, bias, padding=padding, groups=K), pool)`` (no pooling for ``pool`` 1) for
    images ``x`` (B, K, H, W) and K runs' filters ``weight`` (K*C, 1, R, R), as a contiguous (B, K*C, H', W')
    tensor; differentiable in ``weight`` and ``bias``. Only for cases ``takes`` accepts."""
    out: Tensor = _FirstConv.apply(x, weight, bias, padding, pool)
    return out


class _NativeFirst:
    """The trunk's first units (input layout, conv, and a 2x2 max pooling right after it) as one call of the
    kernels, over the conv unit's own parameters. Its input: (B, K, H, W) images with contiguous rows, which the
    batch gather produces; no input gradient (images need none)."""

    def __init__(self, conv: Any, padding: int, pool: int) -> None:
        self.conv, self.padding, self.pool = conv, padding, pool

    def __call__(self, x: Tensor) -> Tensor:
        out = first_conv(x, self.conv.weight, self.conv.bias, self.padding, self.pool)
        # channels-last before the activation: its backward then sees one layout (relu's backward on mixed layouts
        # took 0.2 ms, eight times as long)
        return out.contiguous(memory_format=torch.channels_last)


def first_conv_program(model: Any) -> list[Any] | None:
    """``model``'s trunk program with its first convolution (and the 2x2 max pooling right after it, where the
    activation commutes with it: see archsearch.models.POOL_COMMUTES) through the kernels; None where they cannot
    compute that layer. Pure substitution: the parameters are the model's, and what follows runs as before."""
    from archsearch.models import units as U

    trunk = list(model.trunk)
    if len(trunk) < 2 or not isinstance(trunk[0], U.ChannelsLast) or not isinstance(trunk[1], U.FusedConv):
        return None
    conv = trunk[1]
    if conv.stride != 1 or conv.bias is None or conv.groups != model.k:
        return None
    after = trunk[2] if len(trunk) > 2 else None
    pool = 2 if isinstance(after, U.Pool2d) and after.mode == "max" and after.size == 2 else 1
    if not takes(conv.weight, pool):
        return None
    rest = trunk[3:] if pool == 2 else trunk[2:]
    return [_NativeFirst(conv, conv.padding, pool), *(u.forward for u in rest)]
