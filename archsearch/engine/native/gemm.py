"""Batched small matrix products for the CPU step, through libxsmm when it is installed, else through torch.

Why: a training step of the report's MLPs at batch 32 is a chain of products like (32 x 784) @ (784 x 512), one per
fused run. torch runs them through MKL, which on this project's 2-core AMD EPYC (Zen 4) reaches 78-90 GFLOP/s on one
core for these shapes; libxsmm's JIT-generated kernels (Intel's small-matrix library, BSD-3, Debian's libxsmm-dev),
called from here, reach 95-112 (the three products of a linear layer, measured side by side in one process). Its
kernels are single-threaded, so the step uses them in single-threaded workers (``--workers``) only.

libxsmm ships as a C library, so a shim (``_xsmm.c``: these products and transposes, and
archsearch.engine.steps.cstep's whole MLP step built on them) is compiled on first use with the system's C compiler
into a per-user cache (archsearch.engine.native), and loaded with ctypes. No compiler or no libxsmm: everything runs
through torch, as before.
``ARCHSEARCH_GEMM=torch`` forces torch; ``ARCHSEARCH_GEMM=libxsmm`` makes a missing libxsmm an error (CI sets it, so
that it cannot fall back silently).

Products are in row-major terms: ``out = beta * out + op(p) @ q`` with ``op(p) = p`` or ``p``'s transpose (libxsmm
can transpose this operand only). Operands are (batch, rows, cols) float32 CPU tensors whose rows are contiguous;
row and batch strides are free, so slices of stacked weights and gradients go in without copies.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from torch import Tensor

from archsearch.core.settings import Settings, current
from archsearch.engine.native import loader as native

__all__ = ["backend", "library", "libxsmm_available", "mm", "torch_mm", "transpose", "why_not"]

_SOURCE = Path(__file__).with_name("_xsmm.c")
_INCLUDE_DIRS = ("/usr/include", "/usr/local/include")
_LIB_DIRS = ("/usr/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/local/lib")
# libxsmm's BLAS fallback is not needed (a shape without a kernel falls back to torch here): link its no-BLAS stub.
_LIBS = ("xsmm", "xsmmnoblas")


def _find_libxsmm() -> tuple[Path, list[Path]] | None:
    """libxsmm's include folder and library files (static or shared), or None."""
    prefix = current().libxsmm_root
    includes = [Path(prefix, "include")] if prefix else [Path(d) for d in _INCLUDE_DIRS]
    libdirs = [Path(prefix, "lib")] if prefix else [Path(d) for d in _LIB_DIRS]
    include = next((d for d in includes if (d / "libxsmm.h").is_file()), None)
    for suffix in (".a", ".so"):
        for d in libdirs:
            libs = [d / f"lib{name}{suffix}" for name in _LIBS]
            if include is not None and all(p.is_file() for p in libs):
                return include, libs
    return None


def _build(include: Path, libs: list[Path]) -> Path | str:
    """The compiled shim (archsearch.engine.native), or why it cannot be; keyed by the libxsmm files too, so an upgrade
    rebuilds it."""
    link = [*map(str, libs), "-lpthread", "-lm", "-ldl", "-lrt"]
    # -ffp-contract=off: AdamW in the shim rounds as torch's kernel does, without fused multiply-adds it has not
    flags = ["-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off", f"-I{include}"]
    return native.build("xsmm", _SOURCE, flags=flags, link=link, deps=libs)


def _library() -> ctypes.CDLL | None:
    return _loaded(current())[0]


def why_not() -> str | None:
    """Why torch computes the products here (None where libxsmm does)."""
    return _loaded(current())[1]


@functools.cache  # per settings: built and loaded once (a process's settings change only in tests)
def _loaded(settings: Settings) -> tuple[ctypes.CDLL | None, str | None]:
    def make() -> Path | str:
        found = _find_libxsmm()
        return _build(*found) if found is not None else "libxsmm (Debian: libxsmm-dev) was not found"

    lib, why = native.load("ARCHSEARCH_GEMM", settings.gemm, make)
    if lib is None:
        return None, why
    c_int, c_long, c_ptr = ctypes.c_int, ctypes.c_long, ctypes.c_void_p
    lib.archsearch_xsmm_bgemm.argtypes = [c_int, c_int, c_int, c_int]  # batch, M, N, K
    lib.archsearch_xsmm_bgemm.argtypes += [c_ptr, c_long, c_int, c_int, c_ptr, c_long, c_int, c_ptr, c_long, c_int]
    lib.archsearch_xsmm_bgemm.argtypes += [ctypes.c_float]
    lib.archsearch_xsmm_bgemm.restype = c_int
    lib.archsearch_xsmm_btrans.argtypes = [c_int, c_int, c_int, c_ptr, c_long, c_int, c_ptr, c_long, c_int]
    lib.archsearch_xsmm_btrans.restype = None
    lib.archsearch_mlp_workspace.argtypes = [c_int, c_int, c_int, c_ptr]
    lib.archsearch_mlp_workspace.restype = c_long
    c_double = ctypes.c_double
    lib.archsearch_mlp_step.argtypes = [c_int, c_int, c_int, c_int, c_ptr, c_ptr, c_ptr, c_ptr]  # K, L, Bmax, B...
    lib.archsearch_mlp_step.argtypes += [c_ptr, c_ptr, c_int, c_int, c_ptr, c_ptr]  # x, next x, its B, ahead?, y, loss
    lib.archsearch_mlp_step.argtypes += [c_double] * 6  # step, lr, beta1, beta2, weight decay, eps
    lib.archsearch_mlp_step.restype = c_int
    lib.archsearch_xsmm_init()
    return lib, None


def library() -> ctypes.CDLL | None:
    """The loaded shim (products, transposes, and archsearch.engine.steps.cstep's whole MLP step), or None without
    libxsmm."""
    return _library()


def libxsmm_available() -> bool:
    """Whether products go through libxsmm (built and loaded on the first call)."""
    return _library() is not None


def backend() -> str:
    """Where ``mm`` computes: "libxsmm" or "torch"."""
    return "libxsmm" if libxsmm_available() else "torch"


def _rows_contiguous(t: Tensor) -> bool:
    return t.dim() == 3 and t.dtype == torch.float32 and t.device.type == "cpu" and t.stride(2) == 1


def mm(p: Tensor, q: Tensor, *, out: Tensor | None = None, trans_p: bool = False, beta: float = 0.0) -> Tensor:
    """``out = beta * out + op(p) @ q`` per batch entry (see the module's docstring); returns ``out``."""
    batch, m, k = (p.shape[0], p.shape[2], p.shape[1]) if trans_p else p.shape
    n = q.shape[2]
    if out is None:
        out = torch.empty(batch, m, n, dtype=p.dtype, device=p.device)
    lib = _library()
    if lib is not None and all(map(_rows_contiguous, (p, q, out))) and q.shape[:2] == (batch, k):
        rc = lib.archsearch_xsmm_bgemm(
            batch, m, n, k,
            p.data_ptr(), p.stride(0), p.stride(1), int(trans_p),
            q.data_ptr(), q.stride(0), q.stride(1),
            out.data_ptr(), out.stride(0), out.stride(1),
            beta,
        )  # fmt: skip
        if rc == 0:
            return out
    return torch_mm(p, q, out=out, trans_p=trans_p, beta=beta)


def transpose(t: Tensor) -> Tensor:
    """A contiguous copy of ``t`` (batch, rows, cols) as (batch, cols, rows); libxsmm's transpose is several times
    faster than torch's strided copy for a batch of activations (benchmarks/bench_gemm.py)."""
    batch, rows, cols = t.shape
    lib = _library()
    if lib is None or not _rows_contiguous(t):
        return t.transpose(1, 2).contiguous()
    out = torch.empty(batch, cols, rows, dtype=t.dtype)
    lib.archsearch_xsmm_btrans(
        batch, rows, cols, t.data_ptr(), t.stride(0), t.stride(1), out.data_ptr(), cols * rows, rows
    )
    return out


def torch_mm(p: Tensor, q: Tensor, *, out: Tensor | None = None, trans_p: bool = False, beta: float = 0.0) -> Tensor:
    """``mm`` through torch (any device, any strides, any thread count)."""
    left = p.transpose(1, 2) if trans_p else p
    if out is None:
        return torch.bmm(left, q)
    if beta == 0.0:
        return torch.bmm(left, q, out=out)
    return out.baddbmm_(left, q, beta=beta)
