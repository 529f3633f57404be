"""One optimiser step of K fused runs: forward, a hand-written backward of the fully connected layers, fused AdamW.

Why not plain autograd: at batch 32 the step of an MLP is a handful of small batched GEMMs, and on a CPU autograd's
bookkeeping (graph building, fresh gradient tensors every step, gradient layouts it does not choose for speed) cost
1.25-1.4x in model-steps per second (rows 10, 15, 16). Here the gradients of the linear layers are written
into buffers allocated once, by the same aten kernels autograd would call (``bmm``, the activations' ``*_backward``
ops, ``_log_softmax_backward_data``), so the arithmetic is autograd's; tests/test_step.py checks every activation's
gradient against autograd. A CNN's convolution trunk still runs under autograd (its cost is the convolution kernels,
not the bookkeeping): the head hands the gradient of its input to ``features.backward``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from archsearch.models import FusedModel

__all__ = ["ACTIVATION_BACKWARD", "AdamW", "FusedStep", "per_sample_loss"]

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


def per_sample_loss(logp: Tensor, y: Tensor, loss: str) -> Tensor:
    """Loss of each sample from log-probabilities (..., 10) and labels (...)."""
    if loss == "kl":
        # KL(one-hot || p) = sum_c t_c (log t_c - log p_c) = -log p_y: with hard targets it *is* cross-entropy.
        target = torch.nn.functional.one_hot(y, logp.shape[-1]).to(logp.dtype)
        return torch.nn.functional.kl_div(logp, target, reduction="none").sum(-1)
    return -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)


class FusedStep:
    """Trains ``model`` (K runs) one batch at a time with AdamW; call it with x and labels y ``(K, B)``.

    Each run's loss is the mean over its own batch, so run k's gradient is exactly that of run k trained alone; AdamW
    is element-wise, so its fused kernel over the stacked parameters updates each run as if it were alone.
    """

    def __init__(self, model: FusedModel, *, lr: float, weight_decay: float, loss: Literal["ce", "kl"] = "ce") -> None:
        self.model, self.loss = model, loss
        self.act_backward = ACTIVATION_BACKWARD[model.spec.activation]
        self.fc = list(zip(model.fc_weights, model.fc_biases, strict=True))
        self.conv_params = [*model.conv_weights, *model.conv_biases]
        # The head's gradients live in these buffers for good; the optimiser finds them as .grad.
        self.fc_grads = [(torch.zeros_like(w), torch.zeros_like(b)) for w, b in self.fc]
        for (w, b), (gw, gb) in zip(self.fc, self.fc_grads, strict=True):
            w.grad, b.grad = gw, gb
        self.opt = AdamW(list(model.parameters()), lr=lr, weight_decay=weight_decay)

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        """One step on batch x (the model's input layout) with labels y ``(K, B)``; returns each run's loss ``(K,)``."""
        model = self.model
        features = model.features(x) if model.is_cnn else x
        for p in self.conv_params:
            p.grad = None
        with torch.no_grad():
            h = features.detach()
            inputs, pre, post = [], [], []
            for i, (w, b) in enumerate(self.fc):
                inputs.append(h)
                h = torch.baddbmm(b, h, w.transpose(1, 2))
                if i < len(self.fc) - 1:
                    pre.append(h)
                    h = model.act(h)
                    post.append(h)
            logp = torch.log_softmax(h, dim=-1)
            run_loss = per_sample_loss(logp, y, self.loss).mean(dim=1)
            # d(mean_b -log p_y)/d log p: -1/B at the label. The same for KL with hard targets (see per_sample_loss).
            grad = torch.zeros_like(logp).scatter_(-1, y.unsqueeze(-1), -1.0 / y.shape[1])
            grad = aten._log_softmax_backward_data(grad, logp, -1, logp.dtype)
            for i in reversed(range(len(self.fc))):
                w, (grad_w, grad_b) = self.fc[i][0], self.fc_grads[i]
                torch.bmm(grad.transpose(1, 2), inputs[i], out=grad_w)
                torch.sum(grad, dim=1, keepdim=True, out=grad_b)
                if i > 0:
                    grad = self.act_backward(torch.bmm(grad, w), pre[i - 1], post[i - 1])
                elif model.is_cnn:
                    grad = torch.bmm(grad, w)
        if model.is_cnn:
            features.backward(grad)
        self.opt.step()
        return run_loss


class AdamW:
    """``torch.optim.AdamW(fused=True)``'s update (PyTorch's defaults: betas 0.9/0.999, eps 1e-8) without its per-step
    Python bookkeeping, which measured ~0.35 ms a step on this 2-core CPU, a tenth of a row-10 step: the state is
    allocated once and each step is one call of the same fused kernel. Elsewhere than CPU/CUDA it defers to torch.optim.
    """

    def __init__(self, params: list[Tensor], *, lr: float, weight_decay: float) -> None:
        self.params, self.lr, self.weight_decay = params, lr, weight_decay
        device = params[0].device
        self.fallback = None
        if device.type not in ("cpu", "cuda") or not hasattr(torch, "_fused_adamw_"):
            self.fallback = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        fused = self.fallback is None
        self.exp_avgs = [torch.zeros_like(p) for p in params] if fused else []
        self.exp_avg_sqs = [torch.zeros_like(p) for p in params] if fused else []
        self.step_count = torch.zeros((), dtype=torch.float32, device=device)  # one step counter serves every tensor

    @torch.no_grad()
    def step(self) -> None:
        if self.fallback is not None:
            self.fallback.step()
            return
        grads = [p.grad for p in self.params]
        assert all(g is not None for g in grads), "every parameter needs a gradient"
        self.step_count += 1
        torch._fused_adamw_(
            self.params,
            grads,  # type: ignore[arg-type]
            self.exp_avgs,
            self.exp_avg_sqs,
            [],
            [self.step_count] * len(self.params),
            lr=self.lr,
            beta1=0.9,
            beta2=0.999,
            weight_decay=self.weight_decay,
            eps=1e-8,
            amsgrad=False,
            maximize=False,
        )
