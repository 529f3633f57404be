"""Registry-driven: every layer kind of archsearch.models.layers is put through the same checks (as timm's tests go
through its model registry), so a new kind is one registry entry plus its sample here.

For each kind: its token and TOML table round-trip; the registry's parameter count is the built model's; the fused
model of K plain models computes each plain model's output (eval mode, and train mode where nothing is random) and
unfuses back to the same state; a training step through autograd gives every parameter a finite gradient; on other
images (3 channels, 32x32) it builds and counts too.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from archsearch.core.shapes import Shape
from archsearch.models import LAYERS, FusedModel, build_model, count_params, init_model, parse_spec, spec_from_dict

# A spec exercising each kind (with BatchNorm where the kind takes it).
SAMPLES = {
    "conv": "cnn:6c3s2p1-bn-8c3-p2-fc16-tanh",
    "sepconv": "cnn:6c3p1-8ds3p1-bn-10ds5s2-p2-fc",
    "residual": "cnn:6c3p1-r6-bn-r8s2-r8-bn-gap-fc",
    "pool": "cnn:6c3p1-p2-8c3-ap2-p3-fc12-gelu",
    "gap": "cnn:6c3-gap-fc-silu",
    "dropout": "cnn:6c3-d0.3-p2-fc16-d0.5",
    "fc": "mlp:24-bn-16,8-elu",
}
K = 3


def test_every_kind_has_a_sample() -> None:
    assert set(SAMPLES) == set(LAYERS)
    for kind, text in SAMPLES.items():
        assert kind in parse_spec(text).kinds


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_text_and_table_round_trip(kind: str) -> None:
    spec = parse_spec(SAMPLES[kind])
    assert parse_spec(str(spec)) == spec
    assert spec_from_dict(spec.to_dict()) == spec
    for layer in spec.layers:
        cls = type(layer)
        match = cls.pattern.match(layer.token())
        assert match is not None
        # the token says everything but BatchNorm, which is the next token ("-bn")
        plain = dataclasses.replace(layer, norm=False) if getattr(layer, "norm", False) else layer  # type: ignore[call-arg]
        assert cls.from_match(match) == plain
        assert cls.from_table(layer.to_table()) == layer


@pytest.mark.parametrize("shape", [Shape(1, 28, 28), Shape(3, 32, 32)], ids=["28x28", "3x32x32"])
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_counts_are_the_built_models(kind: str, shape: Shape) -> None:
    spec = parse_spec(SAMPLES[kind])
    model = build_model(spec, shape, classes=7)
    assert count_params(spec, shape, classes=7) == sum(p.numel() for p in model.parameters())
    assert model(torch.rand(2, shape.channels, shape.height, shape.width)).shape == (2, 7)


def _inputs(spec_kind: str, x: torch.Tensor) -> torch.Tensor:
    """Per-run images (K, B, C, H, W) in the fused model's layout."""
    k, b = x.shape[:2]
    if spec_kind == "mlp":
        return x.reshape(k, b, -1)
    return x.transpose(0, 1).reshape(b, -1, *x.shape[3:]).contiguous()


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_fused_model_is_k_plain_models(kind: str) -> None:
    spec = parse_spec(SAMPLES[kind])
    plain = [init_model(build_model(spec), torch.Generator().manual_seed(s)) for s in range(K)]
    fused = FusedModel.from_models(spec, plain)
    x = torch.rand(K, 6, 1, 28, 28, generator=torch.Generator().manual_seed(9))
    random = "dropout" in spec.kinds
    for train_mode in (False, True):
        fused.train(train_mode)
        for m in plain:
            m.train(train_mode)
        if train_mode and random:  # dropout masks are drawn per run: equality is for tests/engine/test_parity.py
            continue
        out = fused(_inputs(spec.kind, x))
        for k in range(K):
            torch.testing.assert_close(out[k], plain[k](x[k]), rtol=1e-4, atol=1e-5)
    for k in range(K):  # BatchNorm's running statistics, updated above, travel too
        for (ka, a), (kb, b) in zip(fused.unfuse(k).state_dict().items(), plain[k].state_dict().items(), strict=True):
            assert ka == kb
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_a_backward_reaches_every_parameter(kind: str) -> None:
    spec = parse_spec(SAMPLES[kind])
    plain = [init_model(build_model(spec), torch.Generator().manual_seed(s)) for s in range(K)]
    fused = FusedModel.from_models(spec, plain)
    fused.set_noise([torch.Generator().manual_seed(s) for s in range(K)])
    out = fused(_inputs(spec.kind, torch.rand(K, 5, 1, 28, 28)))
    out.square().sum().backward()
    for name, p in fused.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
