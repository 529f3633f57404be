"""Data augmentation on the training device: random crop with padding, horizontal flip, random erasing.

Each run draws its randomness from its own generator, on the CPU (a handful of numbers per image), so run k's
augmented batch is the one it would see trained alone, on any device; the pixels are transformed where they are,
batched over the run's images. The transforms are those of torchvision's ``RandomCrop(padding=p)``,
``RandomHorizontalFlip()`` and ``RandomErasing(p, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0)``, except that an
erasing box too large for the image is clipped to it rather than drawn again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from archsearch.core.protocol import Augment

__all__ = ["augment_run", "augment_runs"]

ERASE_SCALE, ERASE_RATIO = (0.02, 0.33), (0.3, 3.3)


def augment_runs(x: Tensor, augment: Augment | Sequence[Augment], generators: Sequence[torch.Generator]) -> Tensor:
    """Run-major images (K, B, C, H, W), run k augmented with ``generators[k]`` as ``augment`` says (or, a sequence,
    as its k-th says: fused trials)."""
    augments = [augment] * len(generators) if isinstance(augment, Augment) else list(augment)
    return torch.stack([augment_run(x[k], a, g) for k, (a, g) in enumerate(zip(augments, generators, strict=True))])


def augment_run(x: Tensor, augment: Augment, g: torch.Generator) -> Tensor:
    """One run's batch (B, C, H, W), float; the draws come from ``g`` in a fixed order (crop, flip, erase)."""
    b, c, h, w = x.shape
    dev = x.device
    if augment.crop:
        p = augment.crop
        offsets = torch.randint(0, 2 * p + 1, (b, 2), generator=g).to(dev)
        padded = F.pad(x, (p, p, p, p))
        rows = (offsets[:, 0:1] + torch.arange(h, device=dev)).view(b, 1, h, 1).expand(b, c, h, w + 2 * p)
        x = padded.gather(2, rows)
        cols = (offsets[:, 1:2] + torch.arange(w, device=dev)).view(b, 1, 1, w).expand(b, c, h, w)
        x = x.gather(3, cols)
    if augment.flip:
        flip = (torch.rand(b, generator=g) < 0.5).to(dev)
        x = torch.where(flip.view(b, 1, 1, 1), x.flip(3), x)
    if augment.erase:
        u = torch.rand(b, 5, generator=g).double()
        area = (ERASE_SCALE[0] + u[:, 1] * (ERASE_SCALE[1] - ERASE_SCALE[0])) * h * w
        log_lo, log_hi = math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])
        ratio = torch.exp(log_lo + u[:, 2] * (log_hi - log_lo))
        eh = torch.sqrt(area * ratio).round().clamp(1, h).long()
        ew = torch.sqrt(area / ratio).round().clamp(1, w).long()
        top = (u[:, 3] * (h - eh + 1)).floor().long()
        left = (u[:, 4] * (w - ew + 1)).floor().long()
        ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
        rows = (ys >= top.view(b, 1, 1)) & (ys < (top + eh).view(b, 1, 1))
        cols = (xs >= left.view(b, 1, 1)) & (xs < (left + ew).view(b, 1, 1))
        box = rows & cols & (u[:, 0] < augment.erase).view(b, 1, 1)
        x = x.masked_fill(box.unsqueeze(1).to(dev), 0.0)
    return x
