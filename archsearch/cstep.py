"""FusedStep's training step of a ReLU MLP as one C call (``archsearch_mlp_step`` in ``_xsmm.c``), for
single-threaded CPU workers with libxsmm.

Why: once libxsmm computed the products (archsearch.gemm), a report row-10 step of ~5.9 ms on one core spent ~1.5 ms
between kernels: the Python of the step, torch's dispatch of ~40 small operations (bias, relu and its backward,
log-softmax, loss, transposes) and one ctypes call per product and per streamed block. The C step runs the same
computation with the same buffers in the same order — forward, loss, hand-written backward, layers streamed in blocks,
AdamW with torch's fused formula, the first layer for the announced next batch — in a few loops around the same
libxsmm kernels. tests/test_cstep.py holds it to autograd's gradients and to torch.optim.AdamW, as tests/test_step.py
holds the Python step.

The caller (FusedStep) owns every tensor: weights, biases, gradient buffers and AdamW state are passed by address once;
the step's activations live in a workspace allocated here, sized for the largest batch seen.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch
from torch import Tensor

from archsearch import gemm

__all__ = ["LayerBuffers", "MLPStep"]

# torch.optim.AdamW's defaults, as archsearch.step.AdamW uses them
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


@dataclass
class LayerBuffers:
    """One linear layer's tensors, all float32, contiguous, on the CPU; ``rows`` > 0: streamed in blocks of that many
    output rows, ``grad_w`` then being the (K, rows, in) block buffer."""

    w: Tensor  # (K, out, in)
    b: Tensor  # (K, 1, out)
    grad_w: Tensor
    grad_b: Tensor
    exp_avg_w: Tensor
    exp_avg_sq_w: Tensor
    exp_avg_b: Tensor
    exp_avg_sq_b: Tensor
    rows: int = 0

    def tensors(self) -> list[Tensor]:
        return [self.w, self.b, self.grad_w, self.grad_b, self.exp_avg_w, self.exp_avg_sq_w, self.exp_avg_b,
                self.exp_avg_sq_b]  # fmt: skip


class MLPStep:
    """Call with x (K, B, in), labels y (K, B), the announced next batch (or None) and AdamW's step number (already
    counted for this step); returns each run's loss (K,)."""

    def __init__(self, layers: list[LayerBuffers], *, lr: float, weight_decay: float) -> None:
        lib = gemm.library()
        if lib is None:
            raise RuntimeError("the C step needs libxsmm (archsearch.gemm)")
        self.lib, self.lr, self.weight_decay = lib, lr, weight_decay
        self.k = layers[0].w.shape[0]
        tensors = [t for layer in layers for t in layer.tensors()]
        if not all(t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous() for t in tensors):
            raise ValueError("the C step takes contiguous float32 CPU tensors")
        self._tensors = tensors  # the C side holds their addresses: keep them alive
        dims = [layers[0].w.shape[2], *(layer.w.shape[1] for layer in layers)]
        self.n_layers = len(layers)
        self.dims = (ctypes.c_int * len(dims))(*dims)
        self.rows = (ctypes.c_int * len(layers))(*(layer.rows for layer in layers))
        self.params = (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))
        self.work: Tensor | None = None
        self.bmax = 0
        self._ahead_of: Tensor | None = None  # the batch whose first layer the last call computed

    def __call__(self, x: Tensor, y: Tensor, next_x: Tensor | None, step: float) -> Tensor:
        batch, next_batch = x.shape[1], next_x.shape[1] if next_x is not None else 0
        if max(batch, next_batch) > self.bmax:  # a bigger batch: a bigger workspace (and no first layer ahead)
            self.bmax = max(batch, next_batch)
            size = self.lib.archsearch_mlp_workspace(self.k, self.n_layers, self.bmax, self.dims)
            self.work, self._ahead_of = torch.empty(size, dtype=torch.float32), None
        assert self.work is not None
        x, y = x.contiguous(), y.to(torch.int64).contiguous()
        assert x.dtype == torch.float32 and x.device.type == "cpu"
        if next_x is not None:
            next_x = next_x.contiguous()
        loss = torch.empty(self.k, dtype=torch.float32)
        rc = self.lib.archsearch_mlp_step(
            self.k, self.n_layers, self.bmax, batch, self.dims, self.rows, self.params, self.work.data_ptr(),
            x.data_ptr(), next_x.data_ptr() if next_x is not None else None, next_batch,
            int(self._ahead_of is not None and self._ahead_of is x), y.data_ptr(), loss.data_ptr(),
            step, self.lr, BETA1, BETA2, self.weight_decay, EPS,
        )  # fmt: skip
        if rc != 0:
            raise RuntimeError(f"the C training step failed (code {rc})")
        self._ahead_of = next_x
        return loss
