"""The training loss of each sample, shared by every step."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["per_sample_loss"]


def per_sample_loss(logp: Tensor, y: Tensor, loss: str, smoothing: float = 0.0) -> Tensor:
    """Loss of each sample from log-probabilities (..., classes) and labels (...).

    ``smoothing`` ε: the target puts 1-ε on the label and ε spread evenly over all classes. Without it, cross-entropy
    is ``-log p_y`` and KL divergence from the one-hot target is the same number (the report's section 2.2).
    """
    classes = logp.shape[-1]
    if loss == "kl":
        # KL(t || p) = sum_c t_c (log t_c - log p_c); with hard targets it *is* cross-entropy, -log p_y.
        target = torch.nn.functional.one_hot(y, classes).to(logp.dtype)
        if smoothing:
            target = target * (1.0 - smoothing) + smoothing / classes
        return torch.nn.functional.kl_div(logp, target, reduction="none").sum(-1)
    nll = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    if not smoothing:
        return nll
    return (1.0 - smoothing) * nll - smoothing * logp.mean(-1)
