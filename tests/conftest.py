"""Shared fixtures: the real Fashion-MNIST (integration tests), small generated IDX files (discovery tests), and
torch on one thread; tests marked ``cuda`` are skipped where no CUDA device exists."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import torch

# No test downloads anything: a missing dataset is an error here, whatever the network allows (subprocesses inherit it).
os.environ["ARCHSEARCH_OFFLINE"] = "1"

from archsearch.data import FILES, Dataset, load_dataset
from archsearch.engine import torch_threads


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fmnist() -> Dataset:
    """The real dataset, found the way the CLI finds it (cache, else Debian's package, else download)."""
    return load_dataset()


@pytest.fixture(scope="session")
def small_real(fmnist: Dataset) -> Dataset:
    """A fixed 3,200-image slice of the real training set (100 steps of 32) and 1,000 test images: fast but real."""
    x, y = fmnist.evals["test"]
    return Dataset(fmnist.train_x[:3200], fmnist.train_y[:3200], {"test": (x[:1000], y[:1000])})


def write_idx(raw: Path, n_train: int = 64, n_test: int = 32, gz: bool = False, seed: int = 0) -> None:
    """Write four small but well-formed IDX files (optionally gzipped, as Debian ships them) into ``raw``."""
    g = torch.Generator().manual_seed(seed)
    raw.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        n = n_train if name.startswith("train") else n_test
        if "images" in name:
            body = (
                struct.pack(">IIII", 2051, n, 28, 28)
                + torch.randint(0, 256, (n * 784,), generator=g).byte().numpy().tobytes()
            )
        else:
            body = struct.pack(">II", 2049, n) + torch.randint(0, 10, (n,), generator=g).byte().numpy().tobytes()
        path = raw / (name + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(body) if gz else body)


def single_thread() -> AbstractContextManager[None]:
    """torch on one thread, as in a --workers process (and like with like on a shared machine)."""
    return torch_threads(1)


@pytest.fixture(autouse=True)
def _torch_threads_restored() -> Iterator[None]:
    """Every test leaves torch's thread count as it found it: a CLI command run in-process applies its ``--threads``,
    and a later test would otherwise run on one thread (and through the single-threaded kernels) by accident."""
    with torch_threads(None):
        yield


@pytest.fixture
def one_thread() -> Iterator[None]:
    with single_thread():
        yield


def python_in_subprocess(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with ``env`` added: settings read once per process (ARCHSEARCH_GEMM...)."""
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


def assert_same_training(got: torch.Tensor, want: torch.Tensor, rtol: float) -> None:
    """Two trainings' per-step losses (runs, steps) are the same training.

    Float32 rounding differs between kernels (libxsmm's products and the C conv sum in other orders than MKL and
    oneDNN; a batched kernel over K runs, BatchNorm's over K*C channels, vectorise differently from K = 1), and
    training amplifies it step by step: Adam moves a weight whose gradient is near zero by about lr either way, so a
    last-bit difference in such a gradient is a difference of lr in the weight (row 13, libxsmm against MKL: 1.6e-5
    in the loss at step 2, 1e-2 by step 20, while the C and Python steps on the same kernels agree bit for bit); a
    unit at relu's edge goes one way or the other; BatchNorm on a batch of 32 magnifies it. So the first 5 steps
    agree to rounding, and every epoch's mean loss to 1.5%; a wrong gradient, mask or augmentation is off from the
    second step on, by far more.
    """
    torch.testing.assert_close(got[:, :5], want[:, :5], rtol=rtol, atol=rtol / 10)
    epochs = got.shape[1] // 100
    torch.testing.assert_close(
        got.view(-1, epochs, 100).mean(2), want.view(-1, epochs, 100).mean(2), rtol=0.015, atol=0
    )
