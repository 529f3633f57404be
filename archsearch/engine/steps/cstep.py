"""FusedStep's training step of a ReLU MLP in C (``archsearch_mlp_step`` in ``_xsmm.c``) on a CPU with libxsmm: one
call per step for each group of runs, one group per thread.

Why: once libxsmm computed the products (archsearch.engine.native.gemm), a report row-10 step of ~5.9 ms on one core
spent ~1.5 ms between kernels: the Python of the step, torch's dispatch of ~40 small operations (bias, relu and its
backward, log-softmax, loss, transposes) and one ctypes call per product and per streamed block. The C step runs the
same computation with the same buffers in the same order — forward, loss, hand-written backward, layers streamed in
blocks, AdamW with torch's fused formula, the first layer for the announced next batch — in a few loops around the same
libxsmm kernels. tests/engine/test_cstep.py holds it to autograd's gradients and to torch.optim.AdamW, as
tests/engine/test_handwritten.py holds the Python step.

The caller (FusedStep) owns every tensor: weights, biases, gradient buffers and AdamW state are passed by address once;
the step's activations live in a workspace allocated here per group of runs, sized for the largest batch seen.
"""

from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor

from archsearch.engine.native import gemm

__all__ = ["LayerBuffers", "MLPStep"]

# torch.optim.AdamW's defaults, as archsearch.step.AdamW uses them
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


@dataclass
class LayerBuffers:
    """One linear layer's tensors, all float32, contiguous, on the CPU. ``rows`` > 0: the layer is streamed in blocks
    of that many output rows, and ``grad_w`` is a (K, rows, in) block buffer, each block's gradient at the start of
    each run's slice."""

    w: Tensor  # (K, out, in)
    b: Tensor  # (K, 1, out)
    grad_w: Tensor  # (K, out, in), or the block buffer
    grad_b: Tensor
    exp_avg_w: Tensor
    exp_avg_sq_w: Tensor
    exp_avg_b: Tensor
    exp_avg_sq_b: Tensor
    rows: int = 0


def _split(k: int, groups: int) -> list[tuple[int, int]]:
    """Runs 0..k-1 as ``groups`` contiguous ranges, as even as possible."""
    groups = max(1, min(groups, k))
    bounds = [round(i * k / groups) for i in range(groups + 1)]
    return list(pairwise(bounds))


class _Group:
    """Runs [start, stop): the C side's view of every layer's tensors (the addresses of the group's first run) and the
    group's own workspace."""

    def __init__(self, layers: list[LayerBuffers], start: int, stop: int) -> None:
        self.start, self.k = start, stop - start
        tensors = [t for layer in layers for t in _tensors(layer)]
        ptrs = [t.data_ptr() + start * (t.numel() // t.shape[0]) * t.element_size() for t in tensors]
        self.params = (ctypes.c_void_p * len(ptrs))(*ptrs)
        self.work: Tensor | None = None


def _tensors(layer: LayerBuffers) -> list[Tensor]:
    """A layer's tensors in the order archsearch_mlp_step takes them."""
    return [layer.w, layer.b, layer.grad_w, layer.grad_b, layer.exp_avg_w, layer.exp_avg_sq_w, layer.exp_avg_b,
            layer.exp_avg_sq_b]  # fmt: skip


class MLPStep:
    """Call with x (K, B, in), labels y (K, B), the announced next batch (or None) and AdamW's step number (already
    counted for this step); returns each run's loss (K,).

    With ``groups`` > 1 the runs are split into that many groups, each stepped by its own C call on its own thread
    (ctypes releases the GIL): the runs share nothing, so a group computes exactly what the whole would for its runs,
    and a run's numbers do not depend on the grouping (tests/engine/test_cstep.py). One group per core lets a single
    process use its cores with the single-threaded libxsmm kernels.
    """

    def __init__(self, layers: list[LayerBuffers], *, lr: float, weight_decay: float, groups: int = 1) -> None:
        lib = gemm.library()
        if lib is None:
            raise RuntimeError("the C step needs libxsmm (archsearch.engine.native.gemm)")
        self.lib, self.lr, self.weight_decay = lib, lr, weight_decay
        self.k = layers[0].w.shape[0]
        tensors = [t for layer in layers for t in _tensors(layer)]
        if not all(t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous() for t in tensors):
            raise ValueError("the C step takes contiguous float32 CPU tensors")
        self._tensors = tensors  # the C side holds their addresses: keep them alive
        dims = [layers[0].w.shape[2], *(layer.w.shape[1] for layer in layers)]
        self.n_layers = len(layers)
        self.dims = (ctypes.c_int * len(dims))(*dims)
        self.rows = (ctypes.c_int * len(layers))(*(layer.rows for layer in layers))
        self.groups = [_Group(layers, start, stop) for start, stop in _split(self.k, groups)]
        self._pool = ThreadPoolExecutor(len(self.groups) - 1) if len(self.groups) > 1 else None
        self.bmax = 0
        self._ahead_of: Tensor | None = None  # the batch whose first layer the last call computed

    def __call__(self, x: Tensor, y: Tensor, next_x: Tensor | None, step: float) -> Tensor:
        batch, next_batch = x.shape[1], next_x.shape[1] if next_x is not None else 0
        if max(batch, next_batch) > self.bmax:  # a bigger batch: bigger workspaces (and no first layer ahead)
            self.bmax = max(batch, next_batch)
            for group in self.groups:
                size = self.lib.archsearch_mlp_workspace(group.k, self.n_layers, self.bmax, self.dims)
                group.work = torch.empty(size, dtype=torch.float32)
            self._ahead_of = None
        x, y = x.contiguous(), y.to(torch.int64).contiguous()
        assert x.dtype == torch.float32 and x.device.type == "cpu"
        if next_x is not None:
            next_x = next_x.contiguous()
        ahead = int(self._ahead_of is not None and self._ahead_of is x)
        loss = torch.empty(self.k, dtype=torch.float32)

        def run(group: _Group) -> int:
            assert group.work is not None
            at = group.start
            rc: int = self.lib.archsearch_mlp_step(
                group.k, self.n_layers, self.bmax, batch, self.dims, self.rows, group.params, group.work.data_ptr(),
                x[at].data_ptr(), next_x[at].data_ptr() if next_x is not None else None, next_batch, ahead,
                y[at].data_ptr(), loss[at:].data_ptr(), step, self.lr, BETA1, BETA2, self.weight_decay, EPS,
            )  # fmt: skip
            return rc

        if self._pool is None:
            codes = [run(self.groups[0])]
        else:  # the first group on this thread, the others on the pool's
            others = [self._pool.submit(run, group) for group in self.groups[1:]]
            codes = [run(self.groups[0]), *(f.result() for f in others)]
        if any(codes):
            raise RuntimeError(f"the C training step failed (code {max(codes, key=abs)})")
        self._ahead_of = next_x
        return loss
