"""Datasets as whole tensors, found, verified and loaded by name; and what is known about their images.

``load_dataset`` loads Fashion-MNIST unless another dataset is named (``DATASETS``): see ``registry``.
"""

from archsearch.data.dataset import FASHION_MNIST, DataError, Dataset, DatasetInfo, as_float, split_training
from archsearch.data.fashion_mnist import (
    CLASSES,
    DEBIAN_DIR,
    FILES,
    default_data_dir,
    ensure_raw_files,
    verify_raw_files,
)
from archsearch.data.registry import (
    DATASETS,
    DEFAULT_DATASET,
    dataset_info,
    describe_datasets,
    ensure_dataset,
    load_dataset,
)
from archsearch.data.torchvision_sets import OFFLINE_ENV, downloads_allowed

__all__ = [
    "CLASSES",
    "DATASETS",
    "DEBIAN_DIR",
    "DEFAULT_DATASET",
    "FASHION_MNIST",
    "FILES",
    "OFFLINE_ENV",
    "DataError",
    "Dataset",
    "DatasetInfo",
    "as_float",
    "dataset_info",
    "default_data_dir",
    "describe_datasets",
    "downloads_allowed",
    "ensure_dataset",
    "ensure_raw_files",
    "load_dataset",
    "split_training",
    "verify_raw_files",
]
