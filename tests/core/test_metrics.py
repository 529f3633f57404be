from __future__ import annotations

import torch

from archsearch.core.metrics import classification_metrics


def test_macro_metrics_by_hand() -> None:
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 2, 2, *list(range(3, 10))])
    preds = torch.tensor([0, 1, 1, 1, 2, 2, 0, 2, *list(range(3, 10))])
    m = classification_metrics(preds, targets)
    assert abs(m["accuracy"] - 13 / 15) < 1e-6
    # class 0: precision 1/2, recall 1/2; class 1: 2/3, 1; class 2: 1, 3/4; classes 3..9 perfect
    assert abs(m["precision"] - (0.5 + 2 / 3 + 1 + 7) / 10) < 1e-6
    assert abs(m["recall"] - (0.5 + 1 + 0.75 + 7) / 10) < 1e-6
    assert m["per_class_accuracy"][:3] == [0.5, 1.0, 0.75]
    assert m["confusion_matrix"][0] == [1, 1] + [0] * 8
    assert sum(map(sum, m["confusion_matrix"])) == 15


def test_balanced_set_macro_recall_equals_accuracy() -> None:
    g = torch.Generator().manual_seed(0)
    targets = torch.arange(10).repeat(100)  # 100 per class, like the test set's 1,000 per class
    preds = torch.where(torch.rand(1000, generator=g) < 0.8, targets, torch.randint(0, 10, (1000,), generator=g))
    m = classification_metrics(preds, targets)
    assert abs(m["recall"] - m["accuracy"]) < 1e-6
    assert abs(m["precision"] - m["accuracy"]) > 1e-4  # precision is not tied to accuracy
