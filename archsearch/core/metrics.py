"""Classification metrics over a whole evaluation set, computed with torchmetrics, returned as plain data.

Precision, recall and F1 are macro averages over the classes of the *whole* set. Fashion-MNIST's test set is
balanced (1,000 images per class), so macro recall equals accuracy exactly; the report's recall differs from its
accuracy, so the report cannot have computed whole-test-set macro metrics (probably a mean over mini-batches).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["EVAL_CHUNK", "METRIC_NAMES", "classification_metrics", "logits", "predict_plain"]

METRIC_NAMES = ("accuracy", "precision", "recall", "f1")
EVAL_CHUNK = 2000


def logits(model: torch.nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """``model``'s logits for the inputs ``x`` (N, C, H, W); with ``tta`` the mean of its logits for each image and
    for the image mirrored left to right (test-time augmentation, a recipe's ``tta``)."""
    out = model(x)
    return (out + model(x.flip(-1))) / 2 if tta else out


@torch.no_grad()
def predict_plain(
    models: Sequence[torch.nn.Module],
    x: torch.Tensor,
    prep: Callable[[torch.Tensor], torch.Tensor],
    tta: Sequence[bool] | bool = False,
) -> torch.Tensor:
    """Predicted classes (K, N) of K plain models on images ``x``, ``prep`` turning stored pixels into the models'
    input, in fixed-size chunks, on one thread: the one computation both training's final metrics and ``archsearch
    evaluate`` use, so an exported checkpoint rescores its record exactly (whatever threads either ran with: a
    kernel's summation order may depend on its thread count, and a borderline image would change class). ``tta``
    (per model, or for all) evaluates with mirrored images too (:func:`logits`)."""
    flips = [tta] * len(models) if isinstance(tta, bool) else list(tta)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.stack(
            [
                torch.cat([logits(m, prep(c), f).argmax(-1) for c in x.split(EVAL_CHUNK)]).cpu()
                for m, f in zip(models, flips, strict=True)
            ]
        )
    finally:
        torch.set_num_threads(before)


def classification_metrics(preds: torch.Tensor, targets: torch.Tensor, num_classes: int = 10) -> dict[str, Any]:
    """Metrics of predicted class indices against targets: floats, plus per-class accuracy and the confusion matrix."""
    # Imported here, not at the top: torchmetrics imports torchvision's models, ~150 MB and seconds per process, which
    # processes that never score (the coordinator of `reproduce --workers`, `archsearch models`) should not pay.
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_confusion_matrix,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    preds, targets = preds.detach().cpu(), targets.detach().cpu()
    kw: dict[str, Any] = {"num_classes": num_classes}
    return {
        "accuracy": float(multiclass_accuracy(preds, targets, average="micro", **kw)),
        "precision": float(multiclass_precision(preds, targets, average="macro", **kw)),
        "recall": float(multiclass_recall(preds, targets, average="macro", **kw)),
        "f1": float(multiclass_f1_score(preds, targets, average="macro", **kw)),
        "per_class_accuracy": multiclass_accuracy(preds, targets, average="none", **kw).tolist(),
        "confusion_matrix": multiclass_confusion_matrix(preds, targets, **kw).tolist(),
    }
