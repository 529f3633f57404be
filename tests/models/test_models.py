"""Registry-driven: every architecture of the report is built, run forward and backward, and counted."""

from __future__ import annotations

import pytest
import torch

from archsearch.models import FusedModel, build_model, count_params, init_model, parse_spec
from archsearch.study.report import ReportRow, report_rows

ROWS = report_rows()


def test_report_has_17_rows() -> None:
    assert [r.index for r in ROWS] == list(range(17))


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"row{r.index}")
def test_report_architecture(row: ReportRow) -> None:
    model = build_model(row.spec)
    # the report's count is the ground truth; the registry's formulas and the built model agree with it
    assert count_params(row.spec) == sum(p.numel() for p in model.parameters()) == row.reported_params
    x = torch.rand(4, 1, 28, 28)
    out = model(x)
    assert out.shape == (4, 10)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("spec", ["mlp:linear", "mlp:16,8-tanh", "cnn:4c3p1-p2-6c5-ap2-fc12-gelu"])
def test_fused_model_is_k_plain_models(spec: str) -> None:
    parsed = parse_spec(spec)
    plain = [init_model(build_model(parsed), torch.Generator().manual_seed(s)) for s in (1, 2, 3)]
    fused = FusedModel.from_models(parsed, plain)
    x = torch.rand(3, 5, 1, 28, 28)  # a different batch per run
    inp = x.reshape(3, 5, 784) if parsed.kind == "mlp" else x.squeeze(2).transpose(0, 1)
    out = fused(inp)
    for k in range(3):
        torch.testing.assert_close(out[k], plain[k](x[k]), rtol=1e-5, atol=1e-6)
        for a, b in zip(fused.unfuse(k).state_dict().values(), plain[k].state_dict().values(), strict=True):
            assert torch.equal(a, b)


def test_init_is_xavier_normal_with_zero_bias() -> None:
    model = init_model(build_model(parse_spec("mlp:512")), torch.Generator().manual_seed(0))
    w, b = model[1].weight, model[1].bias
    expected_std = (2.0 / (784 + 512)) ** 0.5
    assert abs(w.std().item() - expected_std) / expected_std < 0.02
    assert torch.count_nonzero(b) == 0
