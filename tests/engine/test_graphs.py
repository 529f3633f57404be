"""CUDA graphs: device-side batches equal the trainer's sliced batches (any device); on a GPU, a graphed run is the
eager run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from archsearch.core.protocol import Protocol
from archsearch.data import Dataset, as_float
from archsearch.engine import train
from archsearch.engine.steps.graphs import DeviceBatches, gather_batch
from archsearch.models import parse_spec


@pytest.mark.parametrize("is_mlp", [True, False], ids=["mlp", "cnn"])
def test_device_batches_are_the_sliced_batches(is_mlp: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    n, k, bs = 100, 3, 8
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=gen)
    layout = "features" if is_mlp else "image"
    batches = DeviceBatches(images, labels, k, bs, layout)
    assert batches.full == 12  # 100 = 12 * 8 + 4: the last, smaller batch is left to the caller
    for _ in range(2):  # the second epoch starts again from the first batch, in the new orders
        perms = torch.stack([torch.randperm(n, generator=gen) for _ in range(k)])
        batches.start_epoch(perms)
        for t in range(batches.full):
            x, y = batches.next()
            rows = perms[:, t * bs : (t + 1) * bs]
            assert torch.equal(y, labels[rows])
            expected = as_float(images[rows]).flatten(2) if is_mlp else as_float(images[rows.t()]).squeeze(2)
            assert x.shape == ((k, bs, 784) if is_mlp else (bs, k, 28, 28))
            assert torch.equal(x, expected)
            assert torch.equal(gather_batch(images, labels, rows, layout)[0], expected)


@pytest.fixture
def count_replays(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    calls = [0]
    replay = torch.cuda.CUDAGraph.replay

    def counting(self: torch.cuda.CUDAGraph) -> None:
        calls[0] += 1
        replay(self)

    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", counting)
    yield calls


@pytest.mark.cuda
@pytest.mark.parametrize(
    ("arch", "loss"), [("mlp:64,32-tanh", "ce"), ("mlp:256,32-relu", "kl"), ("cnn:4c5-p2-8c3-p2-fc32", "ce")]
)
def test_graphed_run_is_the_eager_run(arch: str, loss: str, small_real: Dataset, count_replays: list[int]) -> None:
    # 3,100 images: 96 full batches replayed per epoch and a last one of 28 stepped eagerly
    data = Dataset(small_real.train_x[:3100], small_real.train_y[:3100], small_real.evals).to("cuda")
    spec, protocol = parse_spec(arch), Protocol(epochs=2, loss=loss)  # type: ignore[arg-type]
    eager = train(spec, [7, 8], protocol, data, record_steps=True, cuda_graphs=False)
    assert count_replays[0] == 0
    graphed = train(spec, [7, 8], protocol, data, record_steps=True)
    assert count_replays[0] == 2 * 96 - 3  # every full batch but the three eager warm-up steps
    for a, b in zip(eager.runs, graphed.runs, strict=True):
        assert len(a.step_losses or []) == len(b.step_losses or []) == 2 * 97
        torch.testing.assert_close(torch.tensor(b.step_losses), torch.tensor(a.step_losses), rtol=1e-4, atol=1e-5)
        assert abs(a.metrics["test"]["accuracy"] - b.metrics["test"]["accuracy"]) <= 2 / 1000
