"""archsearch.gemm: libxsmm's products and transposes equal torch's, on the layouts the step hands them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from archsearch.engine.native import gemm
from tests.conftest import python_in_subprocess

needs_libxsmm = pytest.mark.skipif(not gemm.libxsmm_available(), reason="no libxsmm")
# shapes of report rows 10 and 15 (5 runs, batch 32), and a small uneven one
SHAPES = [(5, 32, 784, 350), (5, 32, 350, 350), (5, 32, 512, 256), (3, 7, 13, 5)]


@needs_libxsmm
@pytest.mark.parametrize(("k", "b", "n_in", "n_out"), SHAPES)
def test_products_equal_torch(k: int, b: int, n_in: int, n_out: int) -> None:
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(k, b, n_in, generator=gen), torch.randn(k, n_out, n_in, generator=gen)
    g = torch.randn(k, b, n_out, generator=gen)
    close = {"rtol": 1e-5, "atol": 1e-4}  # sums of up to 784 products of N(0, 1) terms, in another order
    torch.testing.assert_close(gemm.mm(w, gemm.transpose(x)), torch.bmm(w, x.transpose(1, 2)), **close)  # forward
    torch.testing.assert_close(gemm.mm(g, x, trans_p=True), torch.bmm(g.transpose(1, 2), x), **close)  # weight grad
    torch.testing.assert_close(gemm.mm(g, w), torch.bmm(g, w), **close)  # input gradient
    acc = torch.randn(k, b, n_in, generator=gen)
    expected = acc + torch.bmm(g, w)
    assert gemm.mm(g, w, out=acc, beta=1.0) is acc  # accumulates in place, as a streamed layer's input gradient does
    torch.testing.assert_close(acc, expected, **close)


@needs_libxsmm
def test_slices_go_in_without_copies() -> None:
    """A block of rows of stacked weights and the matching columns of a gradient: strided, rows contiguous."""
    gen = torch.Generator().manual_seed(1)
    w, g, x = torch.randn(5, 64, 100, generator=gen), torch.randn(5, 32, 64, generator=gen), torch.randn(5, 32, 100)
    rows = slice(16, 40)
    out = torch.zeros(5, 64, 100)
    gemm.mm(g[:, :, rows], x, trans_p=True, out=out[:, rows])  # into a slice of a bigger buffer
    torch.testing.assert_close(out[:, rows], torch.bmm(g[:, :, rows].transpose(1, 2), x), rtol=1e-5, atol=1e-5)
    assert out[:, : rows.start].abs().sum() == 0 and out[:, rows.stop :].abs().sum() == 0  # nothing outside it
    torch.testing.assert_close(gemm.mm(g[:, :, rows], w[:, rows]), torch.bmm(g[:, :, rows], w[:, rows]))


@needs_libxsmm
def test_transpose_is_exact() -> None:
    x = torch.randn(5, 32, 784)
    for t in (x, x[:, 3:20, 100:300]):
        assert torch.equal(gemm.transpose(t), t.transpose(1, 2).contiguous())


def test_other_inputs_fall_back_to_torch() -> None:
    """Transposed rows or float64: torch computes them (same answer, slower)."""
    gen = torch.Generator().manual_seed(2)
    p, q = torch.randn(2, 6, 4, generator=gen), torch.randn(2, 5, 4, generator=gen).transpose(1, 2)
    torch.testing.assert_close(gemm.mm(p, q), torch.bmm(p, q))
    d = torch.randn(2, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(gemm.mm(d, d, trans_p=True), torch.bmm(d.transpose(1, 2), d))
    torch.testing.assert_close(gemm.transpose(q), q.transpose(1, 2).contiguous())


def _backend_in_subprocess(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return python_in_subprocess("from archsearch.engine.native import gemm; print(gemm.backend())", env)


def test_environment_chooses_the_backend(tmp_path: Path) -> None:
    torch_only = _backend_in_subprocess({"ARCHSEARCH_GEMM": "torch", "ARCHSEARCH_CACHE": str(tmp_path)})
    assert torch_only.returncode == 0 and torch_only.stdout.strip() == "torch"
    assert not list(tmp_path.iterdir())  # nothing built
    bad = _backend_in_subprocess({"ARCHSEARCH_GEMM": "fast"})
    assert bad.returncode != 0 and "ARCHSEARCH_GEMM must be auto, torch or libxsmm, not 'fast'" in bad.stderr


def test_required_libxsmm_that_is_missing_is_an_error(tmp_path: Path) -> None:
    """CI sets ARCHSEARCH_GEMM=libxsmm so that a missing libxsmm fails loudly instead of quietly running torch."""
    empty = tmp_path / "nowhere"
    (empty / "include").mkdir(parents=True)
    (empty / "lib").mkdir()
    proc = _backend_in_subprocess({"ARCHSEARCH_GEMM": "libxsmm", "LIBXSMM_ROOT": str(empty)})
    assert proc.returncode != 0 and "ARCHSEARCH_GEMM=libxsmm, but libxsmm (Debian: libxsmm-dev) was not found" in (
        proc.stderr
    )
    auto = _backend_in_subprocess({"ARCHSEARCH_GEMM": "auto", "LIBXSMM_ROOT": str(empty)})
    assert auto.returncode == 0 and auto.stdout.strip() == "torch"


@needs_libxsmm
def test_unwritable_cache_falls_back_or_says_why(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a file where the cache folder should be: mkdir fails, even as root
    auto = _backend_in_subprocess({"ARCHSEARCH_GEMM": "auto", "ARCHSEARCH_CACHE": str(blocker / "cache")})
    assert auto.returncode == 0 and auto.stdout.strip() == "torch"
    required = _backend_in_subprocess({"ARCHSEARCH_GEMM": "libxsmm", "ARCHSEARCH_CACHE": str(blocker / "cache")})
    assert required.returncode != 0
    assert f"ARCHSEARCH_GEMM=libxsmm, but its cache {blocker / 'cache'} is not writable" in required.stderr


@needs_libxsmm
def test_shim_is_built_once_into_the_cache(tmp_path: Path) -> None:
    first = _backend_in_subprocess({"ARCHSEARCH_GEMM": "libxsmm", "ARCHSEARCH_CACHE": str(tmp_path)})
    assert first.returncode == 0 and first.stdout.strip() == "libxsmm", first.stderr
    (built,) = tmp_path.glob("xsmm-*.so")
    stamp = built.stat().st_mtime_ns
    second = _backend_in_subprocess({"ARCHSEARCH_CACHE": str(tmp_path)})
    assert second.stdout.strip() == "libxsmm" and built.stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [built.name]  # no temporary file left behind


def test_ci_really_uses_libxsmm() -> None:
    """Where the environment asks for libxsmm (CI does), it is what the step uses."""
    if os.environ.get("ARCHSEARCH_GEMM") != "libxsmm":
        pytest.skip("ARCHSEARCH_GEMM is not libxsmm here")
    assert gemm.backend() == "libxsmm"
