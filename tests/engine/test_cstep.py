"""archsearch.engine.steps.cstep: the ReLU MLP's whole step in C computes what the Python step does: autograd's
gradients, torch.optim.AdamW's updates, the first layer ahead only for the announced batch, the same numbers on a
rerun."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from archsearch.engine import torch_threads
from archsearch.engine.loss import per_sample_loss
from archsearch.engine.native import gemm
from archsearch.engine.steps import FusedStep
from archsearch.models import FusedModel, build_model, init_model, parse_spec

pytestmark = pytest.mark.skipif(not gemm.libxsmm_available(), reason="no libxsmm")

K, B = 3, 8
STREAMED = {"stream_bytes": 0, "block_bytes": 50_000}  # blocks of uneven size, as in tests/engine/test_handwritten.py


def _plain(text: str) -> list[nn.Sequential]:
    spec = parse_spec(text)
    return [init_model(build_model(spec), torch.Generator().manual_seed(s)) for s in range(K)]


@pytest.mark.parametrize("arch", ["mlp:24,16-relu", "mlp:linear", "mlp:40,8,30-relu"])
@pytest.mark.parametrize("loss", ["ce", "kl"])
@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_gradients_equal_autograd(arch: str, loss: str, streamed: bool) -> None:
    """Read from AdamW's first moment after one step with lr 0, as tests/engine/test_handwritten.py does."""
    spec, plain = parse_spec(arch), _plain(arch)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(K, B, 784, generator=gen) * 2 - 0.5
    y = torch.randint(0, 10, (K, B), generator=gen)
    fused = FusedModel.from_models(spec, plain)
    step = FusedStep(fused, lr=0.0, weight_decay=0.0, loss=loss, native=True, **(STREAMED if streamed else {}))
    assert step.native is not None and (step.layers[0].blocks is not None) == streamed
    run_loss = step(x, y)
    for k, model in enumerate(plain):
        ref = per_sample_loss(torch.log_softmax(model(x[k]), dim=-1), y[k], loss).mean()
        ref.backward()
        torch.testing.assert_close(run_loss[k], ref.detach(), rtol=1e-6, atol=1e-7)
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        for lin, w, b in zip(linears, fused.fc_weights, fused.fc_biases, strict=True):
            # libxsmm sums in another order than autograd's MKL (see tests/engine/test_handwritten.py)
            torch.testing.assert_close(step.opt.state(w)[0][k] / 0.1, lin.weight.grad, rtol=1e-5, atol=5e-7)
            torch.testing.assert_close(step.opt.state(b)[0][k, 0] / 0.1, lin.bias.grad, rtol=1e-5, atol=5e-7)
    for p, q in zip(fused.parameters(), FusedModel.from_models(spec, plain).parameters(), strict=True):
        assert torch.equal(p, q)  # lr 0 left every weight as it was


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_updates_like_torch_adamw_and_the_python_step(streamed: bool) -> None:
    """Three steps, each announcing the next batch: every run's weights move as torch.optim.AdamW moves its plain
    model's, and as the Python step (same kernels, same buffers) moves them."""
    arch = "mlp:24,16-relu"
    spec, plain = parse_spec(arch), _plain(arch)
    gen = torch.Generator().manual_seed(1)
    xs = [torch.rand(K, B, 784, generator=gen) for _ in range(3)]
    ys = [torch.randint(0, 10, (K, B), generator=gen) for _ in range(3)]
    fused = {native: FusedModel.from_models(spec, plain) for native in (True, False)}
    steps = {
        native: FusedStep(
            model, lr=1e-2, weight_decay=1e-2, native=native, xsmm=True, xsmm_all=True, **(STREAMED if streamed else {})
        )
        for native, model in fused.items()
    }
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=1e-2) for m in plain]
    for i in range(3):
        announced = xs[i + 1] if i + 1 < 3 else None
        losses = {native: step(xs[i], ys[i], announced) for native, step in steps.items()}
        torch.testing.assert_close(losses[True], losses[False], rtol=1e-6, atol=1e-6)
        for k, (model, opt) in enumerate(zip(plain, opts, strict=True)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xs[i][k]), ys[i][k]).backward()
            opt.step()
    for p, q in zip(fused[True].parameters(), fused[False].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
    for k, model in enumerate(plain):  # tolerance: see test_step_updates_like_torch_adamw
        for a, b in zip(fused[True].unfuse(k).parameters(), model.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-5)


def test_first_layer_ahead_only_for_the_announced_batch_and_any_batch_size() -> None:
    """The announced batch reuses the first layer computed a step early; another batch, or one of another size (an
    epoch's last, smaller batch; then a bigger one again), gets its own forward."""
    arch = "mlp:24-relu"
    spec, plain = parse_spec(arch), _plain(arch)
    gen = torch.Generator().manual_seed(2)
    x1, x2, other = (torch.rand(K, B, 784, generator=gen) for _ in range(3))
    small, y_small = torch.rand(K, 3, 784, generator=gen), torch.randint(0, 10, (K, 3), generator=gen)
    y1, y2 = (torch.randint(0, 10, (K, B), generator=gen) for _ in range(2))

    def run(native: bool, announce: torch.Tensor | None, second: torch.Tensor) -> list[torch.Tensor]:
        model = FusedModel.from_models(spec, plain)
        step = FusedStep(model, lr=1e-2, weight_decay=0.0, native=native, xsmm=True, xsmm_all=True)
        return [step(x1, y1, announce), step(second, y2, small), step(small, y_small, x1), step(x1, y1)]

    reference = run(False, None, x2)
    for got, want in zip(run(True, x2, x2), reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for got, want in zip(run(True, x2, other), run(False, None, other), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(run(True, x2, other)[1], reference[1])


def test_rerun_is_bit_identical() -> None:
    arch = "mlp:40,8,30-relu"
    spec, plain = parse_spec(arch), _plain(arch)
    gen = torch.Generator().manual_seed(3)
    xs = [torch.rand(K, B, 784, generator=gen) for _ in range(4)]
    ys = [torch.randint(0, 10, (K, B), generator=gen) for _ in range(4)]
    results = []
    for _ in range(2):
        fused = FusedModel.from_models(spec, plain)
        step = FusedStep(fused, lr=1e-2, weight_decay=1e-3, native=True, **STREAMED)
        losses = [step(xs[i], ys[i], xs[i + 1] if i < 3 else None) for i in range(4)]
        results.append((torch.stack(losses), [p.detach().clone() for p in fused.parameters()]))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(p, q) for p, q in zip(results[0][1], results[1][1], strict=True))


def test_the_c_step_is_chosen_only_for_what_it_computes() -> None:
    """select_step, the one place eligibility is decided: the C step takes ReLU MLPs without BatchNorm, on a CPU
    whose machine has libxsmm; anything else gets a reason."""
    from archsearch.core.protocol import Protocol
    from archsearch.core.shapes import FASHION_MNIST_SHAPE
    from archsearch.engine.steps.select import Machine, applicable_plans

    def c_plan(text: str, machine: Machine) -> list[str]:
        plans = applicable_plans(parse_spec(text), Protocol(), device="cpu", threads=1, shape=FASHION_MNIST_SHAPE,
                                 machine=machine)  # fmt: skip
        return [p.step for p in plans if p.step == "c"] or list(plans[0].why_not)

    kernels = Machine(libxsmm=True, native_conv=True, conv_pays=True)
    assert c_plan("mlp:16-relu", kernels) == ["c"]
    assert any("libxsmm" in why for why in c_plan("mlp:16-relu", Machine()))
    for text, reason in (("mlp:16-gelu", "relu"), ("cnn:4c3-fc-relu", "MLPs"), ("mlp:16-bn-relu", "BatchNorm")):
        assert any(reason in why for why in c_plan(text, kernels)), text


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_a_runs_numbers_do_not_depend_on_the_threads(streamed: bool) -> None:
    """One group of 5 runs on one thread, or groups of 2 and 3 on two threads: each run gets the very same numbers,
    losses and weights, bit for bit (the runs share nothing, and the blocks are cut the same way)."""
    arch = "mlp:40,8,30-relu"
    spec = parse_spec(arch)
    plain = [init_model(build_model(spec), torch.Generator().manual_seed(s)) for s in range(5)]
    gen = torch.Generator().manual_seed(4)
    xs = [torch.rand(5, B, 784, generator=gen) for _ in range(4)]
    ys = [torch.randint(0, 10, (5, B), generator=gen) for _ in range(4)]
    results = []
    for n in (1, 2):
        with torch_threads(n):
            fused = FusedModel.from_models(spec, plain)
            step = FusedStep(fused, lr=1e-2, weight_decay=1e-3, native=True, groups=n, **(STREAMED if streamed else {}))
            assert step.native is not None and len(step.native.groups) == n
            losses = [step(xs[i], ys[i], xs[i + 1] if i < 3 else None) for i in range(4)]
        results.append((torch.stack(losses), [p.detach().clone() for p in fused.parameters()]))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(p, q) for p, q in zip(results[0][1], results[1][1], strict=True))
