"""scikit-learn's bundled 8x8 handwritten digits: a real dataset that needs no download, small enough for a search
to finish in seconds (1,797 images), so a machine without network or a test can still train on real images.

sklearn ships one set only; a fixed seeded split makes the test set (the search's validation split then comes from
the training part, like every other dataset's).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from archsearch.core.shapes import Shape
from archsearch.data.dataset import DataError, DatasetInfo

__all__ = ["DIGITS", "DIGITS_TEST_SIZE", "digits_available", "digits_location", "ensure_digits", "load_digits_split"]

DIGITS = DatasetInfo("digits", Shape(1, 8, 8), tuple("0123456789"), source="scikit-learn (sklearn.datasets)")
DIGITS_TEST_SIZE = 300  # of 1,797: 1,497 train, 300 test
_SPLIT_SEED = 0
HOW_TO_GET = "it ships with scikit-learn: pip install 'archsearch[digits]' (or scikit-learn)"


def digits_available() -> bool:
    """Whether scikit-learn (and so its bundled digits) is installed."""
    import importlib.util

    return importlib.util.find_spec("sklearn") is not None


def digits_location() -> Path:
    """Where scikit-learn keeps its bundled data (found without importing it), or just "scikit-learn"."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return Path("scikit-learn")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def ensure_digits() -> Path:
    """The folder of scikit-learn's bundled data, or ``DataError`` when scikit-learn is not installed.

    Importing scikit-learn can pin this process to one core (its bundled OpenMP runtime binds the calling thread
    where another OpenMP runtime, libxsmm's, is already loaded: measured here, the affinity went from {0, 1} to
    {0}, and torch's threads then shared one core); the affinity is put back as it was.
    """
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        import sklearn.datasets
    except ImportError:
        raise DataError(f"the digits dataset is not available: {HOW_TO_GET}") from None
    finally:
        if cores is not None and os.sched_getaffinity(0) != cores:
            os.sched_setaffinity(0, cores)
    return Path(sklearn.datasets.__file__).parent / "data"


def load_digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train x, train y, test x, test y): uint8 (N, 1, 8, 8) images and int64 labels.

    sklearn's pixels are 0..16; they become round(v * 255 / 16) so that they are scaled like every other dataset's
    bytes (v = 8 gives 127.5, rounded half to even: 128). The test set is the first 300 of a permutation seeded 0;
    both parts keep the stored order.
    """
    ensure_digits()
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(np.rint(np.asarray(bunch.images) * 255.0 / 16.0).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(np.asarray(bunch.target).astype(np.int64))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(_SPLIT_SEED))
    test, train = order[:DIGITS_TEST_SIZE].sort().values, order[DIGITS_TEST_SIZE:].sort().values
    return x[train], y[train], x[test], y[test]
