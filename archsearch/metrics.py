"""Classification metrics over a whole evaluation set, computed with torchmetrics, returned as plain data.

Precision, recall and F1 are macro averages over the 10 classes of the *whole* set. Fashion-MNIST's test set is
balanced (1,000 images per class), so macro recall equals accuracy exactly; the report's recall differs from its
accuracy, so the report cannot have computed whole-test-set macro metrics (probably a mean over mini-batches).
"""

from __future__ import annotations

from typing import Any

import torch

from archsearch.spec import NUM_CLASSES

__all__ = ["METRIC_NAMES", "classification_metrics"]

METRIC_NAMES = ("accuracy", "precision", "recall", "f1")


def classification_metrics(preds: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
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
    kw: dict[str, Any] = {"num_classes": NUM_CLASSES}
    return {
        "accuracy": float(multiclass_accuracy(preds, targets, average="micro", **kw)),
        "precision": float(multiclass_precision(preds, targets, average="macro", **kw)),
        "recall": float(multiclass_recall(preds, targets, average="macro", **kw)),
        "f1": float(multiclass_f1_score(preds, targets, average="macro", **kw)),
        "per_class_accuracy": multiclass_accuracy(preds, targets, average="none", **kw).tolist(),
        "confusion_matrix": multiclass_confusion_matrix(preds, targets, **kw).tolist(),
    }
