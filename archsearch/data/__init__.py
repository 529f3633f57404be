"""Datasets as whole tensors, found, verified and loaded; and what is known about their images."""

from archsearch.data.dataset import FASHION_MNIST, Dataset, DatasetInfo, as_float, split_training
from archsearch.data.fashion_mnist import (
    CLASSES,
    DEBIAN_DIR,
    FILES,
    DataError,
    default_data_dir,
    ensure_raw_files,
    load_dataset,
    verify_raw_files,
)

__all__ = [
    "CLASSES",
    "DEBIAN_DIR",
    "FASHION_MNIST",
    "FILES",
    "DataError",
    "Dataset",
    "DatasetInfo",
    "as_float",
    "default_data_dir",
    "ensure_raw_files",
    "load_dataset",
    "split_training",
    "verify_raw_files",
]
