"""One optimiser step of K fused runs: forward, a hand-written backward of the fully connected layers, fused AdamW.

Why not plain autograd: at batch 32 the step of an MLP is a handful of small batched GEMMs, and on a CPU autograd's
bookkeeping (graph building, fresh gradient tensors every step, gradient layouts it does not choose for speed) cost
1.25-1.4x in model-steps per second (rows 10, 15, 16). Here the gradients of the linear layers are written into buffers
allocated once, by the same aten kernels autograd would call (``bmm``, the activations' ``*_backward`` ops,
``_log_softmax_backward_data``), so the arithmetic is autograd's; tests/engine/test_handwritten.py checks every
activation's gradient against autograd. A CNN's convolution trunk still runs under autograd (its cost is the convolution
kernels, not the bookkeeping): the head hands the gradient of its input to ``features.backward``.

Why big layers are *streamed* on a single-threaded CPU worker: a wide layer's weights, gradient and AdamW state (row
15's first layer: 4 x 8 MB for 5 runs) do not stay in cache between the kernels that touch them, so done layer by
layer each kernel fetches them from memory again. A streamed layer is processed in blocks of output rows (~1 MB of
gradient each): the block's share of the input gradient, its weight gradient, its AdamW update and, for an MLP's first
layer, the *next* batch's forward through the freshly updated rows (the trainer announces the next batch), one after
the other while the block is still in cache. A streamed layer's whole gradient is never materialised. Measured side
by side with two workers: row 15 1.09-1.14x model-steps/s, row 10 1.02-1.08x (run-to-run noise here is ~5%).

Why libxsmm in single-threaded CPU workers: the products above are small (32 rows), and libxsmm's JIT kernels run them
1.2-1.4x faster than MKL's on this machine's one core (archsearch.engine.native.gemm); with them and libxsmm's
transposes a worker's row-15 step went from ~8.9 to ~7.7 ms. Elsewhere (several threads, a GPU, no libxsmm) torch
computes them as before.

Where all of that applies to a ReLU MLP, the same step runs as one C call instead (cstep.py): what was left between
the kernels, Python and torch's dispatch of small operations, was another ~1.5 ms of a row-10 step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from archsearch.engine.loss import per_sample_loss
from archsearch.engine.native import gemm
from archsearch.engine.optim import AdamW
from archsearch.engine.steps import cstep
from archsearch.models import FusedModel

__all__ = [
    "ACTIVATION_BACKWARD",
    "BLOCK_BYTES",
    "STREAM_BYTES",
    "XSMM_MIN_WEIGHTS",
    "FusedStep",
]

aten = torch.ops.aten

# (gradient of the activation's output, its input z, its output a) -> gradient of z, with the kernels autograd uses.
ACTIVATION_BACKWARD: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "relu": lambda g, z, a: aten.threshold_backward(g, a, 0),
    "leakyrelu": lambda g, z, a: aten.leaky_relu_backward(g, z, 0.01, False),
    "sigmoid": lambda g, z, a: aten.sigmoid_backward(g, a),
    "tanh": lambda g, z, a: aten.tanh_backward(g, a),
    "hardtanh": lambda g, z, a: aten.hardtanh_backward(g, z, -1.0, 1.0),
    "mish": lambda g, z, a: aten.mish_backward(g, z),
    "gelu": lambda g, z, a: aten.gelu_backward(g, z, approximate="none"),
    "silu": lambda g, z, a: aten.silu_backward(g, z),
    "elu": lambda g, z, a: aten.elu_backward(g, 1.0, 1, 1, False, z),
}

# Gradient bytes of one block of a streamed layer: the block's weights, gradient and AdamW state (4 x this) pass
# through a core's L2 (1 MB here) while they are used, instead of each kernel fetching them from memory.
BLOCK_BYTES = 1 << 20
# Layers with less gradient than this are not streamed: at a few blocks the extra kernel calls cost more than they save.
STREAM_BYTES = 2 << 20
# libxsmm pays on layers with at least this many weights per run; on smaller ones (a 10-way output layer, 128 -> 64)
# the ctypes call and the transposes cost more than its kernels save (benchmarks/bench_gemm.py: 0.45-1.0x there).
XSMM_MIN_WEIGHTS = 32768

AdamGroup = tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]  # params, grads, exp_avgs, exp_avg_sqs


@dataclass
class _Block:
    rows: slice  # output rows of the layer
    grad: Tensor  # (K, rows, in): this block's weight gradient, reused every step
    adam: AdamGroup  # the block's rows of every run (the first block also carries the bias)


@dataclass
class _Linear:
    w: Tensor  # (K, out, in)
    b: Tensor  # (K, 1, out)
    grad_b: Tensor
    grad_w: Tensor | None  # the whole weight gradient, unless the layer is streamed in blocks
    blocks: list[_Block] | None
    xsmm: bool = False  # products through libxsmm (archsearch.engine.native.gemm), else torch

    @property
    def mm(self) -> Callable[..., Tensor]:
        return gemm.mm if self.xsmm else gemm.torch_mm


class FusedStep:
    """Trains ``model`` (K runs) one batch at a time with AdamW; call it with x and labels y ``(K, B)``.

    Each run's loss is the mean over its own batch, so run k's gradient is exactly that of run k trained alone; AdamW
    is element-wise, so its fused kernel over the stacked parameters updates each run as if it were alone.
    """

    def __init__(
        self,
        model: FusedModel,
        *,
        lr: float,
        weight_decay: float,
        loss: Literal["ce", "kl"] = "ce",
        stream_bytes: int | None = None,
        block_bytes: int = BLOCK_BYTES,
        xsmm: bool = False,
        xsmm_all: bool = False,
        native: bool = False,
        groups: int = 1,
    ) -> None:
        """Every choice is explicit (archsearch.engine.steps.select_step makes them): ``stream_bytes``, layers with at
        least this many bytes of weights are streamed in blocks of ``block_bytes`` (None: none is); ``xsmm``, the
        linear layers of at least XSMM_MIN_WEIGHTS weights multiply through libxsmm (``xsmm_all``: every layer);
        ``native``, a ReLU MLP's whole step in C (archsearch.engine.steps.cstep), its runs split into ``groups``
        groups, one per thread. Which models and recipes it can take is decided there alone."""
        self.model, self.loss = model, loss
        self.act_backward = ACTIVATION_BACKWARD[model.spec.activation]
        self.opt = AdamW(list(model.parameters()), lr=lr, weight_decay=weight_decay)
        cpu = model.fc_weights[0].device.type == "cpu"
        if self.opt.fallback is not None or not cpu:
            stream_bytes = None
        self.xsmm = xsmm
        with torch.no_grad():
            self.layers = [
                self._linear(w, b, stream_bytes, block_bytes)
                for w, b in zip(model.fc_weights, model.fc_biases, strict=True)
            ]
        for layer in self.layers:  # libxsmm pays on big layers (XSMM_MIN_WEIGHTS); xsmm_all puts every one through it
            layer.xsmm = xsmm and (xsmm_all or layer.w.shape[1] * layer.w.shape[2] >= XSMM_MIN_WEIGHTS)
        self.conv_params: list[Tensor] = list(model.trunk_parameters())
        # Updated together once the backward is done: everything that is not streamed.
        self.rest: list[Tensor] = [*self.conv_params]
        self.rest += [p for layer in self.layers if layer.blocks is None for p in (layer.w, layer.b)]
        state = [self.opt.state(p) for p in self.rest] if self.opt.fallback is None else []
        self.rest_avgs, self.rest_sqs = [m for m, _ in state], [v for _, v in state]
        self._ahead: tuple[Tensor, Tensor] | None = None  # (next x, its first-layer output), computed a step early
        self.native = self._native_step(groups) if native else None

    @property
    def lr(self) -> float:
        return self.opt.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self.opt.lr = value
        if self.native is not None:
            self.native.lr = value

    def _native_step(self, groups: int) -> cstep.MLPStep:
        """The C step over this step's buffers, the runs split into one group per thread."""
        buffers = []
        for layer in self.layers:
            (m_w, v_w), (m_b, v_b) = self.opt.state(layer.w), self.opt.state(layer.b)
            if layer.blocks is None:
                assert layer.grad_w is not None
                grad_w, rows = layer.grad_w, 0
            else:  # the blocks' gradients are views of one buffer: the first block's is the biggest, at its start
                grad_w, rows = layer.blocks[0].grad, layer.blocks[0].rows.stop - layer.blocks[0].rows.start
            w, b = layer.w.detach(), layer.b.detach()
            buffers.append(cstep.LayerBuffers(w, b, grad_w, layer.grad_b, m_w, v_w, m_b, v_b, rows))
        return cstep.MLPStep(buffers, lr=self.opt.lr, weight_decay=self.opt.weight_decay, groups=groups)

    def _linear(self, w: Tensor, b: Tensor, stream_bytes: int | None, block_bytes: int) -> _Linear:
        grad_b = torch.zeros_like(b)
        b.grad = grad_b
        k, out, width = w.shape
        size = w.numel() * w.element_size()
        if stream_bytes is None or size < stream_bytes:
            grad_w = torch.zeros_like(w)
            w.grad = grad_w  # the buffer the backward writes into, found by AdamW as .grad
            return _Linear(w, b, grad_b, grad_w, None)
        rows = math.ceil(out / math.ceil(size / block_bytes))
        buffer = torch.zeros(k * rows * width, dtype=w.dtype, device=w.device)
        (w_avg, w_sq), (b_avg, b_sq) = self.opt.state(w), self.opt.state(b)
        blocks, weights = [], w.detach()
        for start in range(0, out, rows):
            sl = slice(start, min(out, start + rows))
            grad = buffer[: k * (sl.stop - start) * width].view(k, sl.stop - start, width)
            group: AdamGroup = ([], [], [], [])
            for run in range(k):  # per run, so that each tensor the kernel sees is contiguous
                for acc, t in zip(group, (weights[run, sl], grad[run], w_avg[run, sl], w_sq[run, sl]), strict=True):
                    acc.append(t)
            if start == 0:  # the bias is updated with the first block, before any row's next forward needs it
                for acc, t in zip(group, (b.detach(), grad_b, b_avg, b_sq), strict=True):
                    acc.append(t)
            blocks.append(_Block(sl, grad, group))
        return _Linear(w, b, grad_b, None, blocks)

    def __call__(self, x: Tensor, y: Tensor, next_x: Tensor | None = None) -> Tensor:
        """One step on batch x (the model's input layout) with labels y ``(K, B)``; returns each run's loss ``(K,)``.

        ``next_x``, the batch the next call will get, lets an MLP compute its first layer for it during this step.
        """
        if self.native is not None:
            self.opt.begin()
            return self.native(x, y, next_x, float(self.opt.step_count))
        model = self.model
        features = model.features(x) if model.is_cnn else x
        for p in self.conv_params:
            p.grad = None
        fused = self.opt.fallback is None
        ahead = next_x if not model.is_cnn else None
        with torch.no_grad():
            h = features.detach()
            inputs, pre, post = [], [], []
            last = len(self.layers) - 1
            for i, layer in enumerate(self.layers):
                inputs.append(h)
                if i == 0 and self._ahead is not None and self._ahead[0] is x:
                    h = self._ahead[1]
                else:
                    h = self._affine(layer, h)
                if i < last:
                    pre.append(h)
                    h = model.act(h)
                    post.append(h)
            self._ahead = None
            logp = torch.log_softmax(h, dim=-1)
            run_loss = per_sample_loss(logp, y, self.loss).mean(dim=1)
            # d(mean_b -log p_y)/d log p: -1/B at the label. The same for KL with hard targets (see per_sample_loss).
            grad = torch.zeros_like(logp).scatter_(-1, y.unsqueeze(-1), -1.0 / y.shape[1])
            grad = aten._log_softmax_backward_data(grad, logp, -1, logp.dtype)
            if fused:
                self.opt.begin()
            for i in reversed(range(len(self.layers))):
                layer, need_dx = self.layers[i], i > 0 or model.is_cnn
                torch.sum(grad, dim=1, keepdim=True, out=layer.grad_b)
                if layer.blocks is None:
                    assert layer.grad_w is not None
                    layer.mm(grad, inputs[i], trans_p=True, out=layer.grad_w)
                    dx = layer.mm(grad, layer.w) if need_dx else None
                else:
                    dx = self._stream(layer, grad, inputs[i], need_dx, ahead if i == 0 else None)
                if i > 0:
                    assert dx is not None
                    grad = self.act_backward(dx, pre[i - 1], post[i - 1])
                elif dx is not None:
                    grad = dx
        if model.is_cnn:
            features.backward(grad)
        with torch.no_grad():
            if not fused:
                self.opt.step()
            elif self.rest:
                grads = [p.grad for p in self.rest]
                self.opt.update(self.rest, grads, self.rest_avgs, self.rest_sqs)  # type: ignore[arg-type]
            if ahead is not None and self._ahead is None:  # first layer not streamed: its next forward comes last
                self._ahead = (ahead, self._affine(self.layers[0], ahead))
        return run_loss

    def _affine(self, layer: _Linear, h: Tensor) -> Tensor:
        """``h @ W^T + b`` for the runs' inputs ``h`` (K, B, in)."""
        if not layer.xsmm:
            return torch.baddbmm(layer.b, h, layer.w.transpose(1, 2))
        # libxsmm cannot transpose the right-hand operand, so the product is formed transposed, W @ h^T, from a copy
        # of h^T (batch-sized, cheap with libxsmm's transpose), and transposed back before the bias is added.
        return gemm.transpose(gemm.mm(layer.w, gemm.transpose(h))).add_(layer.b)

    def _stream(
        self, layer: _Linear, grad: Tensor, inputs: Tensor, need_dx: bool, ahead: Tensor | None
    ) -> Tensor | None:
        """Backward and update of a streamed layer, block by block; returns the gradient of its input if needed."""
        w, dx, ahead_parts = layer.w, None, []
        if ahead is not None and layer.xsmm:  # the next batch's output, transposed (see _affine), filled block by block
            ahead_t = gemm.transpose(ahead)
            ahead_zt = torch.empty(w.shape[0], w.shape[1], ahead.shape[1], dtype=w.dtype)
        for block in layer.blocks or ():
            rows = block.rows
            if need_dx:  # with the block's weights before their update
                dx = layer.mm(grad[:, :, rows], w[:, rows], out=dx, beta=0.0 if dx is None else 1.0)
            layer.mm(grad[:, :, rows], inputs, trans_p=True, out=block.grad)
            self.opt.update(*block.adam)
            if ahead is not None and layer.xsmm:
                gemm.mm(w[:, rows], ahead_t, out=ahead_zt[:, rows])
            elif ahead is not None:  # into a fresh tensor: out= a strided slice would take a slow per-run path
                ahead_parts.append(torch.baddbmm(layer.b[:, :, rows], ahead, w[:, rows].transpose(1, 2)))
        if ahead is not None and layer.xsmm:
            self._ahead = (ahead, gemm.transpose(ahead_zt).add_(layer.b))
        elif ahead is not None:
            self._ahead = (ahead, torch.cat(ahead_parts, dim=2))
        return dx
