"""archsearch.engine.native.conv: the first convolution and its max-pooling by C kernels equal torch's, values and
gradients, and the pooling picks torch's winner among tied maxima."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from archsearch.engine.native import conv
from archsearch.models import FusedModel, build_model, init_model, parse_spec
from tests.conftest import python_in_subprocess

needs_kernels = pytest.mark.skipif(not conv.available(), reason="no C compiler")


def _torch_reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, padding: int, pool: int) -> torch.Tensor:
    z = F.conv2d(x, w, b, padding=padding, groups=x.shape[1])
    return F.max_pool2d(z, pool) if pool > 1 else z


# (batch, runs, filters per run, kernel, padding, pool): report row 16's first layer, padding, 10 filters (two
# blocks of 5 in the kernel), an odd conv output (25 -> 12 pooled: the last row and column are dropped), no pooling
GEOMETRIES = [(32, 5, 6, 5, 0, 2), (7, 3, 4, 3, 1, 2), (4, 2, 10, 7, 0, 2), (3, 2, 5, 4, 0, 2), (5, 2, 3, 3, 1, 1)]


@needs_kernels
@pytest.mark.parametrize(("batch", "runs", "filters", "kernel", "padding", "pool"), GEOMETRIES)
def test_values_and_gradients_equal_torch(
    one_thread: None, batch: int, runs: int, filters: int, kernel: int, padding: int, pool: int
) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, runs, 28, 28, generator=gen)
    x[:, :, :6] = 0  # blank rows, as around a Fashion-MNIST item: equal conv outputs, ties in the pooling
    w = (torch.randn(runs * filters, 1, kernel, kernel, generator=gen) * 0.2).requires_grad_()
    b = (torch.randn(runs * filters, generator=gen) * 0.1).requires_grad_()
    assert conv.takes(w, pool)
    out = conv.first_conv(x, w, b, padding, pool)
    w_ref, b_ref = w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    ref = _torch_reference(x, w_ref, b_ref, padding, pool)
    assert out.shape == ref.shape and out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    grad = torch.randn(ref.shape, generator=gen)
    out.backward(grad)
    ref.backward(grad)
    # sums over up to 32 x 576 terms, in another order than oneDNN's
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b.grad, b_ref.grad, rtol=1e-4, atol=1e-4)


@needs_kernels
def test_ties_and_nan_pick_torchs_winner(one_thread: None) -> None:
    """Exact ties (a blank region: every output there is the bias) and NaNs: each window's winner is torch's."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randint(0, 3, (4, 2, 14, 14), generator=gen).float()  # few values: many ties
    x[:, :, :6] = 0
    x[1, 0, 7, 8] = float("nan")
    w = torch.randint(-1, 2, (6, 1, 3, 3), generator=gen).float()
    b = torch.tensor([0.5, -0.5, 0.0, 1.0, 0.25, 0.0])
    out, arg = conv._forward(x, w, b, 1, 2)
    assert arg is not None
    ref, flat = F.max_pool2d(F.conv2d(x, w, b, padding=1, groups=2), 2, return_indices=True)
    assert torch.equal(out.isnan(), ref.isnan()) and torch.equal(out.nan_to_num(), ref.nan_to_num())
    rows, cols = flat // 14, flat % 14  # torch: the winner's place in the conv plane; here: its place in the window
    py, px = torch.arange(7).view(7, 1), torch.arange(7).view(1, 7)
    assert torch.equal(arg.long(), (rows - 2 * py) * 2 + (cols - 2 * px))
    assert int((out == b.view(1, 6, 1, 1)).sum()) > 100  # the blank rows did tie


@needs_kernels
def test_expanded_images_need_no_copy(one_thread: None) -> None:
    """Evaluation hands every run the same images: a stride-0 run dimension."""
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(9, 1, 28, 28, generator=gen).expand(-1, 4, -1, -1)
    w, b = torch.randn(24, 1, 5, 5, generator=gen), torch.randn(24, generator=gen)
    assert x.stride(1) == 0 and conv.takes(w, 2)
    with torch.no_grad():
        torch.testing.assert_close(conv.first_conv(x, w, b, 0, 2), _torch_reference(x, w, b, 0, 2))


@needs_kernels
def test_what_the_kernels_do_not_take() -> None:
    w = torch.rand(6, 1, 5, 5)
    assert conv.takes(w, 2) and conv.takes(w, 1)
    assert not conv.takes(w, 3)  # other poolings: torch
    assert not conv.takes(w.double(), 2)
    assert not conv.takes(torch.rand(6, 2, 5, 5), 2)  # not a first layer: several input channels per run
    assert not conv.takes(torch.rand(6, 1, 17, 17), 2)  # kernels above MAX_KERNEL


SPECS = [
    ("cnn:6c5-p2-16c5-p2-fc128,64-relu", 2),  # report row 16: conv and pooling fused
    ("cnn:8c3p1-p2-fc32-tanh", 1),  # tanh does not commute with the pooling: conv alone, torch pools after tanh
    ("cnn:4c5-ap2-fc-relu", 1),  # average pooling: conv alone
    ("cnn:4c3-hardtanh", 1),  # no pooling at all
    ("cnn:4c5p2-p3-fc-relu", 1),  # a 3x3 max pooling: conv alone, relu after torch's pooling
]


@needs_kernels
@pytest.mark.parametrize(("text", "pool"), SPECS)
def test_fused_model_agrees_with_the_torch_path(one_thread: None, text: str, pool: int) -> None:
    """The fused model's output and gradients are the same whichever program computes the first layer."""
    spec = parse_spec(text)
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(6, 3, 28, 28, generator=gen)
    plain = [init_model(build_model(spec), torch.Generator().manual_seed(seed)) for seed in range(3)]
    models = [FusedModel.from_models(spec, plain) for _ in range(2)]
    program = conv.first_conv_program(models[0])
    assert program is not None and program[0].pool == pool  # type: ignore[attr-defined]
    models[0].trunk_program = program
    outs = []
    for model in models:
        out = model(x)
        out.square().sum().backward()
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-4)


def _backend_in_subprocess(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return python_in_subprocess("from archsearch.engine.native import conv; print(conv.backend())", env)


def test_environment_chooses_the_backend(tmp_path: Path) -> None:
    torch_only = _backend_in_subprocess({"ARCHSEARCH_CONV": "torch", "ARCHSEARCH_CACHE": str(tmp_path)})
    assert torch_only.returncode == 0 and torch_only.stdout.strip() == "torch"
    assert not list(tmp_path.iterdir())  # nothing built
    bad = _backend_in_subprocess({"ARCHSEARCH_CONV": "fast"})
    assert bad.returncode != 0 and "ARCHSEARCH_CONV must be auto, torch or native, not 'fast'" in bad.stderr
    no_cc = {"ARCHSEARCH_CACHE": str(tmp_path / "empty"), "CC": "/nonexistent/cc", "PATH": "/nonexistent"}
    assert _backend_in_subprocess({**no_cc, "ARCHSEARCH_CONV": "auto"}).stdout.strip() == "torch"
    required = _backend_in_subprocess({**no_cc, "ARCHSEARCH_CONV": "native"})
    assert required.returncode != 0 and "ARCHSEARCH_CONV=native, but no C compiler (cc) was found" in required.stderr


@needs_kernels
def test_built_once_into_the_cache(tmp_path: Path) -> None:
    first = _backend_in_subprocess({"ARCHSEARCH_CONV": "native", "ARCHSEARCH_CACHE": str(tmp_path)})
    assert first.returncode == 0 and first.stdout.strip() == "native", first.stderr
    (built,) = tmp_path.glob("conv-*.so")
    stamp = built.stat().st_mtime_ns
    second = _backend_in_subprocess(
        {"ARCHSEARCH_CONV": "native", "ARCHSEARCH_CACHE": str(tmp_path), "CC": "/nonexistent/cc"}
    )
    assert second.stdout.strip() == "native" and built.stat().st_mtime_ns == stamp  # reused: no compiler needed
    assert [p.name for p in tmp_path.iterdir()] == [built.name]  # no temporary file left behind


def test_ci_really_uses_the_kernels() -> None:
    if os.environ.get("ARCHSEARCH_CONV") != "native":
        pytest.skip("ARCHSEARCH_CONV is not native here")
    assert conv.backend() == "native"
