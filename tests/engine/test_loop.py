from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn import functional as F

from archsearch.core.metrics import classification_metrics, predict_plain
from archsearch.core.protocol import Protocol
from archsearch.core.shapes import FASHION_MNIST_SHAPE
from archsearch.data import Dataset, as_float
from archsearch.engine import EpochReport, select_step, torch_threads, train
from archsearch.engine.steps import FusedStep, StepPlan, build_step
from archsearch.models import FusedModel, build_model, init_model, parse_spec
from archsearch.study.report import report_rows
from tests.conftest import assert_same_training


def plain_loop(spec: str, seed: int, protocol: Protocol, data: Dataset) -> tuple[list[float], torch.nn.Module]:
    """The textbook loop for one run, drawing init and shuffles from the seed's generator the way the trainer does."""
    gen = torch.Generator().manual_seed(seed)
    model = init_model(build_model(parse_spec(spec)), gen)
    opt = torch.optim.AdamW(model.parameters(), lr=protocol.lr, weight_decay=protocol.weight_decay)
    losses, n = [], len(data.train_y)
    for _ in range(protocol.epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, protocol.batch_size):
            idx = perm[start : start + protocol.batch_size]
            loss = F.cross_entropy(model(as_float(data.train_x[idx])), data.train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses, model


def streams_first_layer(spec: str, k: int, threads: int) -> bool:
    """Whether the step chosen for K = k runs on ``threads`` threads processes the first layer in blocks."""
    parsed = parse_spec(spec)
    plan = select_step(parsed, Protocol(), device="cpu", threads=threads, shape=FASHION_MNIST_SHAPE)
    step = build_step(plan, FusedModel(parsed, k), Protocol())
    return isinstance(step, FusedStep) and step.layers[0].blocks is not None


# mlp:256,32 with 3 runs has a first layer big enough to be streamed, so both ways of stepping are compared.
@pytest.mark.parametrize("spec", ["mlp:64,32-tanh", "mlp:256,32-relu", "cnn:4c5-p2-8c3-p2-fc32"])
def test_fused_run_equals_run_trained_alone(spec: str, small_real: Dataset) -> None:
    """The general autograd step on torch's kernels, as the textbook loop uses them: equal to rounding, 300 steps.

    The step select_step takes here may use other kernels (libxsmm's products, the C conv), whose rounding training
    amplifies (on an AVX-512 Xeon the C conv is 2e-7 off oneDNN at step 0 and 6e-3 off by step 187): it is held to
    the textbook loop as test_parity holds it to autograd, the first steps to rounding and each epoch's mean loss.
    """
    assert streams_first_layer(spec, 3, threads=1) == spec.startswith("mlp:256")
    protocol = Protocol(epochs=3)  # 300 steps of 32
    alone_losses, alone_model = plain_loop(spec, 8, protocol, small_real)
    fused = train(parse_spec(spec), [7, 8, 9], protocol, small_real, threads=1, record_steps=True, plan=StepPlan())
    fused_losses = fused.runs[1].step_losses
    assert fused.engine_step == "autograd"
    assert fused_losses is not None and len(fused_losses) == len(alone_losses) == 300
    torch.testing.assert_close(torch.tensor(fused_losses), torch.tensor(alone_losses), rtol=2e-4, atol=2e-5)
    # final weights and test predictions agree too
    assert fused.model is not None
    for a, b in zip(fused.model.unfuse(1).parameters(), alone_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    x, y = small_real.evals["test"]
    alone_acc = (alone_model(as_float(x)).argmax(1) == y).float().mean().item()
    assert abs(fused.runs[1].metrics["test"]["accuracy"] - alone_acc) <= 2 / len(y)
    chosen = train(parse_spec(spec), [7, 8, 9], protocol, small_real, threads=1, record_steps=True)
    assert chosen.engine_step != "autograd"  # each of these specs has an accelerated step on a CPU
    assert_same_training(torch.tensor([chosen.runs[1].step_losses]), torch.tensor([alone_losses]), rtol=2e-4)


def test_seed_result_does_not_depend_on_group(small_real: Dataset) -> None:
    spec, protocol = parse_spec("mlp:32"), Protocol(epochs=1)
    grouped = train(spec, [1, 2, 3], protocol, small_real, record_steps=True)
    alone = train(spec, [2], protocol, small_real, record_steps=True)
    torch.testing.assert_close(
        torch.tensor(grouped.runs[1].step_losses), torch.tensor(alone.runs[0].step_losses), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("arch", ["cnn:4c5-p2-fc16", "mlp:400-relu"])
def test_same_seed_is_bit_identical(arch: str, small_real: Dataset) -> None:
    assert streams_first_layer(arch, 2, threads=1) == arch.startswith("mlp")
    spec, protocol = parse_spec(arch), Protocol(epochs=1)
    a = train(spec, [42, 43], protocol, small_real, threads=1, record_steps=True)
    b = train(spec, [42, 43], protocol, small_real, threads=1, record_steps=True)
    assert [r.step_losses for r in a.runs] == [r.step_losses for r in b.runs]
    assert [r.metrics for r in a.runs] == [r.metrics for r in b.runs]
    assert a.runs[0].step_losses != a.runs[1].step_losses  # different seeds really differ


@pytest.mark.cuda
def test_same_seed_is_bit_identical_on_gpu(small_real: Dataset) -> None:
    """Also a CNN, whose cuDNN convolutions would otherwise accumulate in a varying order (see train._on_gpu)."""
    spec, protocol, data = parse_spec("cnn:4c5-p2-8c3-p2-fc32"), Protocol(epochs=2), small_real.to("cuda")
    a = train(spec, [42, 43], protocol, data, record_steps=True)
    b = train(spec, [42, 43], protocol, data, record_steps=True)
    assert [r.step_losses for r in a.runs] == [r.step_losses for r in b.runs]
    assert [r.metrics for r in a.runs] == [r.metrics for r in b.runs]
    assert torch.backends.cudnn.allow_tf32 and not torch.backends.cudnn.deterministic  # PyTorch's defaults restored


def test_kl_with_hard_targets_is_cross_entropy(small_real: Dataset) -> None:
    """The report's claim (section 2.2): same seed, CE and KL give identical results. Bit for bit."""
    spec = parse_spec("mlp:32-relu")
    ce = train(spec, [42], Protocol(epochs=1, loss="ce"), small_real, record_steps=True)
    kl = train(spec, [42], Protocol(epochs=1, loss="kl"), small_real, record_steps=True)
    assert ce.runs[0].step_losses == kl.runs[0].step_losses
    assert ce.runs[0].metrics == kl.runs[0].metrics


def test_epoch_callback_and_history(small_real: Dataset) -> None:
    seen: list[EpochReport] = []
    result = train(parse_spec("mlp:linear"), [1, 2], Protocol(epochs=2), small_real, on_epoch=seen.append)
    assert [r.epoch for r in seen] == [1, 2] and seen[0].monitor == "test"
    assert [h["epoch"] for h in result.runs[0].history] == [1, 2]
    assert result.runs[1].history[-1]["test_accuracy"] == seen[-1].accuracy[1]
    m = result.runs[0].metrics["test"]
    assert set(m) >= {"accuracy", "precision", "recall", "f1", "per_class_accuracy", "confusion_matrix"}


def test_callback_can_stop_training(small_real: Dataset) -> None:
    class Stop(Exception):
        pass

    def stop(report: EpochReport) -> None:
        raise Stop

    with pytest.raises(Stop):
        train(parse_spec("mlp:linear"), [1], Protocol(epochs=5), small_real, on_epoch=stop)


def test_training_leaves_what_existed_before_it_to_the_collector_afterwards(small_real: Dataset) -> None:
    """While training, what existed before it is frozen (no full collection walks it again); afterwards, and after a
    training stopped by its callback, the collector has it back; objects the process froze itself stay frozen."""
    frozen: list[int] = []

    def look(report: EpochReport) -> None:
        frozen.append(gc.get_freeze_count())
        if report.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(parse_spec("mlp:linear"), [1], Protocol(epochs=3), small_real, on_epoch=look)
    assert len(frozen) == 2 and min(frozen) > 1000 and gc.get_freeze_count() == 0
    gc.freeze()
    try:
        mine = gc.get_freeze_count()
        train(parse_spec("mlp:linear"), [1], Protocol(epochs=1), small_real)
        assert gc.get_freeze_count() == mine
    finally:
        gc.unfreeze()


@pytest.mark.slow
def test_report_model_0_one_epoch_on_real_data(fmnist: Dataset) -> None:
    result = train(report_rows()[0].spec, [42], Protocol(epochs=1), fmnist)
    m = result.runs[0].metrics["test"]
    assert m["accuracy"] >= 0.78
    assert abs(m["recall"] - m["accuracy"]) < 1e-6  # balanced test set


def test_one_diverging_run_does_not_spoil_the_others(small_real: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    import archsearch.engine.loop as train_module

    spec, protocol = parse_spec("mlp:32"), Protocol(epochs=1)
    alone = train(spec, [5], protocol, small_real, record_steps=True)
    real_init, calls = train_module.init_model, []

    def poison_second(model: torch.nn.Module, gen: torch.Generator) -> torch.nn.Module:
        model = real_init(model, gen)
        calls.append(1)
        if len(calls) == 2:  # the second seed's run starts with an infinite weight: its loss is NaN from step 1
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = float("inf")
        return model

    monkeypatch.setattr(train_module, "init_model", poison_second)
    mixed = train(spec, [5, 6], protocol, small_real, record_steps=True)
    assert [r.diverged for r in mixed.runs] == [False, True]
    assert mixed.runs[0].step_losses == pytest.approx(alone.runs[0].step_losses, rel=1e-5, abs=1e-6)
    assert mixed.runs[0].metrics["test"]["accuracy"] == pytest.approx(
        alone.runs[0].metrics["test"]["accuracy"], abs=2e-3
    )


THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@pytest.mark.skipif(not THP.exists() or "[never]" in THP.read_text(), reason="no transparent huge pages here")
@pytest.mark.parametrize("env", [None, "0"])
def test_big_tensors_get_huge_pages_unless_the_environment_says_no(env: str | None) -> None:
    code = (
        "from archsearch.engine import use_huge_pages\n"
        "use_huge_pages()\n"
        "import torch\n"
        "x = torch.zeros(16 << 20); x += 1\n"  # 64 MB, touched
        "print(next(l.split()[1] for l in open('/proc/self/smaps_rollup') if l.startswith('AnonHugePages')))\n"
    )
    environ = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if env is not None:
        environ["THP_MEM_ALLOC_ENABLE"] = env
    out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True)
    huge_kb = int(out.stdout.strip())
    assert huge_kb > 0 if env is None else huge_kb == 0


@pytest.mark.cuda
@pytest.mark.parametrize("spec", ["mlp:64,32-tanh", "cnn:4c5-p2-8c3-p2-fc32"])
def test_fused_run_on_gpu_equals_run_trained_alone(spec: str, small_real: Dataset) -> None:
    """The issue's equivalence, across devices: seed 8 fused with two others on the GPU, alone on the CPU."""
    protocol = Protocol(epochs=3)  # 300 steps of 32
    fused = train(parse_spec(spec), [7, 8, 9], protocol, small_real.to("cuda"), record_steps=True)
    alone_losses, alone_model = plain_loop(spec, 8, protocol, small_real)
    torch.testing.assert_close(
        torch.tensor(fused.runs[1].step_losses), torch.tensor(alone_losses), rtol=1e-3, atol=1e-4
    )
    x, y = small_real.evals["test"]
    alone_acc = (alone_model(as_float(x)).argmax(1) == y).float().mean().item()
    assert abs(fused.runs[1].metrics["test"]["accuracy"] - alone_acc) <= 3 / len(y)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_recorded_metrics_are_the_plain_models_on_the_cpu(device: str, small_real: Dataset) -> None:
    """What `archsearch evaluate` recomputes from an exported checkpoint (plain model, CPU) is what training recorded,
    exactly, wherever it trained."""
    result = train(parse_spec("cnn:4c5-p2-fc16"), [3, 4], Protocol(epochs=1), small_real.to(device))
    assert result.model is not None
    x, y = small_real.evals["test"]
    for r, run in enumerate(result.runs):
        (preds,) = predict_plain([result.model.unfuse(r).eval()], x, as_float)
        assert run.metrics["test"] == classification_metrics(preds, y)


@pytest.mark.parametrize("arch", ["mlp:64-relu", "cnn:4c5-p2-fc16"])
def test_a_runs_numbers_follow_its_arguments_not_the_ambient_thread_count(arch: str, small_real: Dataset) -> None:
    """The path and the threads come from ``train``'s arguments (select_step), whatever torch was set to before."""
    results = []
    for ambient in (1, 2):
        with torch_threads(ambient):
            results.append(train(parse_spec(arch), [3], Protocol(epochs=1), small_real, threads=1, record_steps=True))
    assert results[0].engine_step == results[1].engine_step
    assert results[0].runs[0].step_losses == results[1].runs[0].step_losses


@pytest.mark.parametrize("flags, forced", [({"avx2"}, None), ({"avx2", "avx512f"}, None), ({"avx2"}, "1")])
def test_cnns_take_the_hand_written_paths_only_where_they_pay(
    monkeypatch: pytest.MonkeyPatch, flags: set[str], forced: str | None
) -> None:
    """select_step: on a CPU without AVX-512 a CNN trains through autograd, which was measured faster there, unless
    ARCHSEARCH_CONV_ANY_CPU=1 insists; MLPs keep their accelerators either way."""
    from archsearch.engine.native import conv, loader

    monkeypatch.setattr(loader, "cpu_flags", lambda: frozenset(flags))
    if forced:
        monkeypatch.setenv("ARCHSEARCH_CONV_ANY_CPU", forced)
    else:
        monkeypatch.delenv("ARCHSEARCH_CONV_ANY_CPU", raising=False)
    pays = forced == "1" or "avx512f" in flags
    cnn = select_step(report_rows()[16].spec, Protocol(), device="cpu", threads=1, shape=FASHION_MNIST_SHAPE)
    if pays:
        assert cnn.step == "python" and cnn.first_conv == ("native" if conv.available() else "torch")
    else:
        assert cnn.name == "autograd" and any("AVX-512" in why for why in cnn.why_not)
    mlp = select_step(report_rows()[6].spec, Protocol(), device="cpu", threads=1, shape=FASHION_MNIST_SHAPE)
    assert mlp.step != "autograd"


def test_the_layout_follows_the_workload() -> None:
    """select_step chooses how K runs share the machine: BatchNorm CNNs at batch 128 on a CPU as plain models, spread
    over the threads where there are runs for them; small MLPs fused (their accelerators); everything fused on a GPU;
    runs with recipes of their own (fused trials) as plain models on a CPU and one fused model on a GPU, except where
    a recipe averages weights or mirrors its evaluation (plain models only)."""
    cnn, mlp = parse_spec("cnn:8c3p1-bn-8c3s2p1-bn-16c3p1-bn-p2-fc-d0.2-silu"), parse_spec("mlp:128-relu")
    big = Protocol(batch_size=128, optimizer="sgd", momentum=0.9)

    def plan(spec: Any, protocol: Protocol, device: str = "cpu", **kw: Any) -> Any:
        # calibrate=False: the memory format a CPU measures faster is tested below, apart from the layout
        return select_step(spec, protocol, device=device, shape=FASHION_MNIST_SHAPE, cuda_graphs=False, calibrate=False,
                           **kw)  # fmt: skip

    assert plan(cnn, big, threads=2).name == "plain"  # one run: torch's kernels on both threads
    assert plan(cnn, big, threads=2, runs=4).name == "plain+2threads"
    assert plan(cnn, big, threads=1, runs=4).name == "plain"
    assert plan(cnn, big, threads=2, runs=4, device="cuda").layout == "fused"
    assert plan(cnn, Protocol(), threads=2, runs=4).layout == "fused"  # batch 32: overhead-bound, fused pays
    assert plan(mlp, Protocol(), threads=2, runs=5).layout == "fused"
    trials = [Protocol(), Protocol(lr=1e-3), Protocol(label_smoothing=0.1), Protocol(weight_decay=0.0)]
    assert plan(cnn, Protocol(), threads=2, runs=4, recipes=trials).name == "plain+2threads"
    assert plan(mlp, Protocol(), threads=2, runs=4, device="cuda", recipes=trials).name == "autograd"  # fused
    averaged = [*trials[:3], Protocol(ema=0.99)]
    assert plan(mlp, Protocol(), threads=2, runs=4, device="cuda", recipes=averaged).name == "plain"


def test_channels_last_is_chosen_only_where_it_wins_by_the_margin() -> None:
    from archsearch.engine.steps.calibrate import MARGIN, choose

    nchw = [0.10, 0.11, 0.10, 0.12]
    slightly = [t * (1 - MARGIN / 2) for t in nchw]  # faster, but within the margin: noise, NCHW kept
    clearly = [t * (1 - 2 * MARGIN) for t in nchw]
    assert choose({"nchw": nchw, "channels_last": slightly}) == "nchw"
    assert choose({"nchw": nchw, "channels_last": clearly}) == "channels_last"
    assert choose({"nchw": clearly, "channels_last": nchw}) == "nchw"


def test_a_plain_cnns_memory_format_is_measured_once_and_cached(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from archsearch.engine.steps import calibrate

    monkeypatch.setenv("ARCHSEARCH_CACHE", str(tmp_path))
    measured: list[str] = []
    real = calibrate._Trainer.seconds_per_step

    def timed(self: Any, steps: int) -> list[float]:
        measured.append(self.fmt)
        real(self, steps)  # the real steps run; the times are made up, so the choice is known
        return [1.0 if self.fmt == "nchw" else 2.0] * steps

    monkeypatch.setattr(calibrate._Trainer, "seconds_per_step", timed)
    cnn, big = parse_spec("cnn:4c3p1-bn-8c3s2p1-bn-gap-fc"), Protocol(batch_size=64)
    plan = select_step(cnn, big, device="cpu", threads=1, shape=FASHION_MNIST_SHAPE, runs=2)
    assert plan.name == "plain" and not plan.channels_last and sorted(set(measured)) == ["channels_last", "nchw"]
    stored = json.loads((tmp_path / calibrate.CACHE_FILE).read_text())
    assert list(stored[calibrate._machine()].values()) == ["nchw"]
    measured.clear()
    assert select_step(cnn, big, device="cpu", threads=1, shape=FASHION_MNIST_SHAPE, runs=2) == plan
    assert measured == []  # the second time from the cache
    other = select_step(cnn, big, device="cpu", threads=2, shape=FASHION_MNIST_SHAPE, runs=2)
    assert other.name == "plain+2threads" and measured == []  # spread runs use one thread each: the same key
