"""The hand-written training step computes autograd's gradients, for every activation, in MLPs and CNNs (the Python
step: native=False; tests/engine/test_cstep.py holds the C step of ReLU MLPs to the same)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from archsearch.engine.loss import per_sample_loss
from archsearch.engine.native import gemm
from archsearch.engine.optim import AdamW
from archsearch.engine.steps import ACTIVATION_BACKWARD, FusedStep
from archsearch.models import ACTIVATIONS, FusedModel, build_model, init_model, parse_spec
from archsearch.models.units import FusedConv

K, B = 3, 8


def _fused_convs(model: FusedModel) -> list[FusedConv]:
    return [u for u in model.trunk if isinstance(u, FusedConv)]


def test_every_activation_has_a_backward() -> None:
    assert set(ACTIVATION_BACKWARD) == set(ACTIVATIONS)


# The linear layers' products through torch, and through libxsmm (archsearch.gemm) where it is installed (CI sets
# ARCHSEARCH_GEMM=libxsmm, which makes a missing libxsmm an error rather than a skip).
GEMMS = [
    pytest.param(False, id="torch"),
    pytest.param(True, id="libxsmm", marks=pytest.mark.skipif(not gemm.libxsmm_available(), reason="no libxsmm")),
]

# Forces streaming on these small layers, in blocks of uneven size (24 rows -> 5 blocks: 5, 5, 5, 5, 4).
STREAMED = {"stream_bytes": 0, "block_bytes": 50_000}


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("arch", ["mlp:24,16", "cnn:4c3p1-p2-6c5-ap2-fc12", "cnn:3c5-p2-5c3-p2"])
@pytest.mark.parametrize("loss", ["ce", "kl"])
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("xsmm", GEMMS)
def test_step_gradients_equal_autograd_on_plain_models(
    arch: str, activation: str, loss: str, streamed: bool, xsmm: bool
) -> None:
    """Each run's gradients equal those autograd gives its own plain model (conv -> activation -> pool order).

    Read from AdamW's first moment after one step, (1 - beta1) * gradient, because a streamed layer never holds its
    whole gradient; with lr 0 the step leaves the weights as they were.
    """
    spec = parse_spec(f"{arch}-{activation}")
    gen = torch.Generator().manual_seed(0)
    plain = [init_model(build_model(spec), torch.Generator().manual_seed(s)) for s in range(K)]
    x = torch.rand(K, B, 1, 28, 28, generator=gen) * 2 - 0.5  # negatives too, so relu/hardtanh see ties
    y = torch.randint(0, 10, (K, B), generator=gen)
    fused = FusedModel.from_models(spec, plain)
    step = FusedStep(
        fused, lr=0.0, weight_decay=0.0, loss=loss, xsmm=xsmm, xsmm_all=xsmm, **(STREAMED if streamed else {})
    )
    assert (step.layers[0].blocks is not None) == streamed and step.xsmm == xsmm
    inp = x.reshape(K, B, 784) if spec.kind == "mlp" else x.squeeze(2).transpose(0, 1)
    run_loss = step(inp, y)
    grads = {p: step.opt.state(p)[0] / 0.1 for p in fused.parameters()}
    # libxsmm sums the products in another order than MKL (autograd's): where a gradient entry is a sum of terms that
    # nearly cancel, the two differ by a few float32 roundings of the terms' scale (~1e-7 here), not of the result.
    # A CNN's trunk runs here as the fused model's one grouped convolution over the K runs (torch's kernels, no C
    # conv: FusedStep is built without a plan), which oneDNN sums in another order than each plain model's own conv
    # (1.19e-7 on a first-conv weight gradient of 8e-5 on an AVX-512 Xeon, with ARCHSEARCH_CONV=torch too).
    tol = {"rtol": 1e-5, "atol": 5e-7 if xsmm or spec.kind == "cnn" else 1e-7}
    for k, model in enumerate(plain):
        logp = torch.log_softmax(model(x[k]), dim=-1)
        ref_loss = per_sample_loss(logp, y[k], loss).mean()
        ref_loss.backward()
        torch.testing.assert_close(run_loss[k], ref_loss.detach(), rtol=1e-6, atol=1e-7)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        for conv, unit in zip(convs, _fused_convs(fused), strict=True):
            w, b = unit.weight, unit.bias
            n = conv.out_channels
            torch.testing.assert_close(grads[w][k * n : (k + 1) * n], conv.weight.grad, **tol)
            torch.testing.assert_close(grads[b][k * n : (k + 1) * n], conv.bias.grad, **tol)
        for lin, w, b in zip(linears, fused.fc_weights, fused.fc_biases, strict=True):
            torch.testing.assert_close(grads[w][k], lin.weight.grad, **tol)
            torch.testing.assert_close(grads[b][k, 0], lin.bias.grad, **tol)
    for p, q in zip(fused.parameters(), FusedModel.from_models(spec, plain).parameters(), strict=True):
        assert torch.equal(p, q)  # lr 0 left every weight as it was


@pytest.mark.parametrize("arch", ["cnn:4c3-p2-fc24-tanh", "mlp:24,16-tanh"])
@pytest.mark.parametrize("mode", ["whole", "streamed", "no-fused-kernel"])
@pytest.mark.parametrize("xsmm", GEMMS)
def test_step_updates_like_torch_adamw(arch: str, mode: str, xsmm: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three steps of the fused step move each run's weights as torch.optim.AdamW moves its plain model's.

    "no-fused-kernel": where torch lacks ``_fused_adamw_`` (or on a device other than CPU/CUDA) AdamW defers to
    torch.optim.AdamW, and the step must neither stream nor split the update.
    """
    if mode == "no-fused-kernel":
        monkeypatch.delattr(torch, "_fused_adamw_")
    spec = parse_spec(arch)
    plain = [init_model(build_model(spec), torch.Generator().manual_seed(s)) for s in range(K)]
    fused = FusedModel.from_models(spec, plain)
    step = FusedStep(
        fused, lr=1e-2, weight_decay=1e-2, xsmm=xsmm, xsmm_all=xsmm, **(STREAMED if mode != "whole" else {})
    )
    assert (step.opt.fallback is not None) == (mode == "no-fused-kernel")
    assert (step.layers[0].blocks is not None) == (mode == "streamed")
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=1e-2) for m in plain]
    gen = torch.Generator().manual_seed(1)
    batches = [
        (torch.rand(K, B, 1, 28, 28, generator=gen), torch.randint(0, 10, (K, B), generator=gen)) for _ in range(3)
    ]
    fused_input = [x.reshape(K, B, 784) if spec.kind == "mlp" else x.squeeze(2).transpose(0, 1) for x, _ in batches]
    for i, (x, y) in enumerate(batches):
        # the next batch announced, as the trainer does: an MLP computes its first layer for it a step early
        step(fused_input[i], y, fused_input[i + 1] if i + 1 < len(batches) else None)
        for k, (model, opt) in enumerate(zip(plain, opts, strict=True)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[k]), y[k]).backward()
            opt.step()
    # Adam divides by the gradient's running size, so where a gradient entry is near zero a last-bit difference in it
    # (libxsmm sums in another order than autograd's MKL) moves the update by far more than the gradient's rounding:
    # up to 8e-6 here, against an lr of 1e-2 (a wrong update is off by ~1e-2).
    atol = 2e-5 if xsmm else 1e-6
    for k, model in enumerate(plain):
        for a, b in zip(fused.unfuse(k).parameters(), model.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=atol)


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("xsmm", GEMMS)
def test_first_layer_computed_ahead_is_used_only_for_the_announced_batch(streamed: bool, xsmm: bool) -> None:
    """A step given ``next_x`` computes the first layer for it; a call with any other batch must not use it."""
    spec = parse_spec("mlp:24-relu")
    plain = [init_model(build_model(spec), torch.Generator().manual_seed(s)) for s in range(K)]
    gen = torch.Generator().manual_seed(2)
    x1, x2, other = (torch.rand(K, B, 784, generator=gen) for _ in range(3))
    y1, y2 = (torch.randint(0, 10, (K, B), generator=gen) for _ in range(2))
    kwargs: dict[str, Any] = {"xsmm": xsmm, "xsmm_all": xsmm, **(STREAMED if streamed else {})}

    def two_steps(announce: torch.Tensor | None, second: torch.Tensor) -> Tensor:
        step = FusedStep(FusedModel.from_models(spec, plain), lr=1e-2, weight_decay=0.0, **kwargs)
        step(x1, y1, announce)
        return step(second, y2)

    reference = two_steps(None, x2)
    torch.testing.assert_close(two_steps(x2, x2), reference, rtol=1e-6, atol=1e-7)  # announced: computed ahead
    assert not torch.allclose(two_steps(x2, other), reference)  # another batch than announced: its own forward
    torch.testing.assert_close(two_steps(x2, other), two_steps(None, other), rtol=1e-6, atol=1e-7)


def test_adamw_is_torch_fused_adamw_bit_for_bit() -> None:
    gen = torch.Generator().manual_seed(3)
    ours = [torch.randn(5, 7, generator=gen), torch.randn(3, generator=gen)]
    theirs = [nn.Parameter(p.clone()) for p in ours]
    opt = AdamW(ours, lr=1e-2, weight_decay=1e-3)
    ref = torch.optim.AdamW(theirs, lr=1e-2, weight_decay=1e-3, fused=True)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=gen) for p in ours]
        for p, q, g in zip(ours, theirs, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    for p, q in zip(ours, theirs, strict=True):
        assert torch.equal(p, q.detach())


@pytest.mark.cuda
@pytest.mark.parametrize("arch", ["mlp:24,16-gelu", "cnn:4c3p1-p2-6c5-ap2-fc12-relu"])
def test_step_gradients_on_gpu_equal_autograd(arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # float32 convolutions on both sides, as the trainer runs them (PyTorch's default would round through TF32)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    spec, k, b = parse_spec(arch), 3, 8
    gen = torch.Generator().manual_seed(0)
    plain = [init_model(build_model(spec), torch.Generator().manual_seed(s)).cuda() for s in range(k)]
    x = (torch.rand(k, b, 1, 28, 28, generator=gen) * 2 - 0.5).cuda()
    y = torch.randint(0, 10, (k, b), generator=gen).cuda()
    fused = FusedModel.from_models(spec, plain).cuda()
    step = FusedStep(fused, lr=0.0, weight_decay=0.0)
    run_loss = step(x.reshape(k, b, 784) if spec.kind == "mlp" else x.squeeze(2).transpose(0, 1), y)
    for r, model in enumerate(plain):
        ref = per_sample_loss(torch.log_softmax(model(x[r]), dim=-1), y[r], "ce").mean()
        ref.backward()
        torch.testing.assert_close(run_loss[r], ref.detach(), rtol=1e-5, atol=1e-6)
        grads = {p: step.opt.state(p)[0] / 0.1 for p in fused.parameters()}  # see the CPU test above
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        for conv, w in zip(convs, [u.weight for u in _fused_convs(fused)], strict=True):
            n = conv.out_channels
            torch.testing.assert_close(grads[w][r * n : (r + 1) * n], conv.weight.grad, rtol=1e-4, atol=1e-6)
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        for lin, w in zip(linears, fused.fc_weights, strict=True):
            torch.testing.assert_close(grads[w][r], lin.weight.grad, rtol=1e-4, atol=1e-6)
