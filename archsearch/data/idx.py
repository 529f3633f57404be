"""IDX files (MNIST's format, shared by Fashion-MNIST, KMNIST and EMNIST): structural checks and readers.

The check runs before anything is read, so a truncated download or a file of another dataset fails with a message
that names the file and says how to get a good one, instead of a reshape error deep inside numpy.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import numpy.typing as npt

from archsearch.data.dataset import DataError

__all__ = ["check_idx", "read_idx"]

_IMAGES, _LABELS = 2051, 2049  # magic numbers: unsigned bytes, 3 dimensions (images) or 1 (labels)


def check_idx(
    path: Path, *, what: str, how: str, size: tuple[int, int] | None = None, count: int | None = None
) -> tuple[int, int, int]:
    """Raise ``DataError`` unless ``path`` is a well-formed IDX file; returns (count, rows, cols) from its header.

    Images or labels are told apart by the file name (``images`` in it), as every IDX release names them. The
    magic number must match, the file size must equal the header's dimensions, and, where given, the image size
    (``size``, rows x cols) and the item count (``count``) must be the expected ones. ``what`` names the dataset and
    ``how`` completes "delete it and ..." in the message.
    """
    with path.open("rb") as f:
        header = f.read(16)
    images = "images" in path.name
    need = 16 if images else 8
    if len(header) < need:
        raise DataError(f"corrupt {what} file {path}: truncated header; delete it and {how}")
    magic, n = struct.unpack(">II", header[:8])
    if magic != (_IMAGES if images else _LABELS):
        raise DataError(f"corrupt {what} file {path}: bad IDX magic number {magic}; delete it and {how}")
    rows, cols = struct.unpack(">II", header[8:16]) if images else (1, 1)
    if path.stat().st_size != need + n * rows * cols:
        raise DataError(f"corrupt {what} file {path}: size does not match its header; delete it and {how}")
    if images and size is not None and (rows, cols) != size:
        raise DataError(
            f"corrupt {what} file {path}: images are {rows}x{cols}, expected {size[0]}x{size[1]}; delete it and {how}"
        )
    if count is not None and n != count:
        raise DataError(f"corrupt {what} file {path}: {n} items, expected {count}; delete it and {how}")
    return n, rows, cols


def read_idx(path: Path) -> npt.NDArray[np.uint8]:
    """The items of a checked IDX file: images (N, rows, cols) or labels (N,), uint8, as stored."""
    with path.open("rb") as f:
        header = f.read(16)
    n = struct.unpack(">I", header[4:8])[0]
    if "images" in path.name:
        rows, cols = struct.unpack(">II", header[8:16])
        return np.fromfile(path, dtype=np.uint8, offset=16).reshape(n, rows, cols)
    return np.fromfile(path, dtype=np.uint8, offset=8)
