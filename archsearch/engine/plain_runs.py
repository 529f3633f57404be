"""K runs as K plain models: each run its own ``nn.Sequential`` in NCHW, its own optimiser and recipe, stepped by
torch's own kernels — one run after another, or the runs spread over threads, one torch thread each.

This is the layout that pays for compute-bound CNNs on a CPU (BatchNorm CNNs at batch 128: a grouped convolution
over K runs is slower than K convolutions, and channels-last slower than NCHW there). Each run draws exactly what
it draws in the fused layout (initialisation and shuffling from its seed's generator, augmentation and dropout from
its own noise generators), so a run's numbers do not depend on the layout beyond float rounding, and a run is
bit-identical to the same run trained alone in this layout on one thread.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor, nn

from archsearch.core import interrupts
from archsearch.core.metrics import EVAL_CHUNK, logits
from archsearch.core.protocol import Protocol
from archsearch.data.dataset import Dataset, as_float
from archsearch.engine.augment import augment_run
from archsearch.engine.loss import per_sample_loss
from archsearch.engine.optim import lr_at, make_optimizer
from archsearch.engine.runtime import torch_threads
from archsearch.models import FusedModel, SeededDropout, Spec, build_model, init_model

__all__ = ["PlainRuns", "WeightAverage"]


class WeightAverage:
    """An exponential moving average of a model's weights and BatchNorm statistics (a recipe's ``ema``): a model of
    its own, updated after every optimiser step with decay ``min(decay, (1 + n) / (10 + n))`` at the n-th update, so
    the first steps do not tie it to the initialisation. Integer buffers (BatchNorm's step count) are copied."""

    def __init__(self, spec: Spec, live: nn.Module, decay: float, data: Dataset, memory_format: torch.memory_format):
        info = data.info
        self.model = build_model(spec, info.shape, info.num_classes).to(data.train_x.device)
        self.model.load_state_dict(live.state_dict())
        self.model.to(memory_format=memory_format).eval()
        self.decay, self.updates = decay, 0
        pairs = list(zip(self.model.state_dict().values(), live.state_dict().values(), strict=True))
        self.floats = [(a, b) for a, b in pairs if a.is_floating_point()]
        self.others = [(a, b) for a, b in pairs if not a.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_([a for a, _ in self.floats], [b for _, b in self.floats], 1.0 - d)
        for a, b in self.others:
            a.copy_(b)


class PlainRuns:
    """K runs of ``spec`` as plain models: ``protocols[r]`` is run r's recipe (they share batch size and epochs),
    ``gens[r]`` its generator (initialisation, then each epoch's order), ``aug_gens``/``drop_gens`` its noise.
    ``groups`` > 1 spreads the runs over that many threads (torch on one thread each); ``channels_last`` keeps the
    models and their inputs in that memory format (where it was measured faster, steps/calibrate.py)."""

    def __init__(
        self,
        spec: Spec,
        protocols: Sequence[Protocol],
        data: Dataset,
        gens: Sequence[torch.Generator],
        aug_gens: Sequence[torch.Generator],
        drop_gens: Sequence[torch.Generator],
        *,
        groups: int = 1,
        record_steps: bool = False,
        channels_last: bool = False,
    ) -> None:
        info, device = data.info, data.train_x.device
        self.spec, self.protocols, self.data, self.aug_gens = spec, list(protocols), data, list(aug_gens)
        self.models = [init_model(build_model(spec, info.shape, info.num_classes), g).to(device) for g in gens]
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        for model, g in zip(self.models, drop_gens, strict=True):
            _seed_dropout(model, g)
            model.to(memory_format=self.memory_format)
        self.opts = [make_optimizer(list(m.parameters()), p) for m, p in zip(self.models, self.protocols, strict=True)]
        self.averages = [
            WeightAverage(spec, m, p.ema, data, self.memory_format) if p.ema else None
            for m, p in zip(self.models, self.protocols, strict=True)
        ]
        self.normalize = info.normalizer(device)
        self.groups = max(1, min(groups, len(self.models)))
        self.step_losses: list[list[float]] | None = [[] for _ in self.models] if record_steps else None
        self.left: frozenset[int] = frozenset()

    def leave(self, runs: frozenset[int]) -> None:
        """These runs train no further (a pruned member of a group of trials); their weights stay as they are."""
        self.left = runs

    @property
    def k(self) -> int:
        return len(self.models)

    def epoch(self, perms: Tensor, first_step: int, on_step: Callable[[int], None] | None = None) -> Tensor:
        """One epoch of every run, run r in its order ``perms[r]``; ``first_step`` counts the steps before it (the
        schedule's position). Returns each run's summed loss (K,), float64."""
        sums = torch.full((self.k,), math.nan, dtype=torch.float64)
        active = [r for r in range(self.k) if r not in self.left]
        if self.groups == 1 or len(active) == 1:
            for r in active:
                sums[r] = self._run_epoch(r, perms[r], first_step, on_step)
            return sums
        shares = [active[g :: self.groups] for g in range(min(self.groups, len(active)))]

        def work(runs: list[int]) -> list[float]:
            with torch_threads(1):
                return [self._run_epoch(r, perms[r], first_step, None) for r in runs]

        with torch_threads(1), ThreadPoolExecutor(len(shares), thread_name_prefix="archsearch-run") as pool:
            for runs, losses in zip(shares, pool.map(work, shares), strict=True):
                sums[runs] = torch.tensor(losses, dtype=torch.float64)
        if on_step is not None:
            on_step(len(active) * _steps(len(perms[0]), self.protocols[0].batch_size))
        return sums

    def _run_epoch(self, r: int, order: Tensor, first_step: int, on_step: Callable[[int], None] | None) -> float:
        model, opt, protocol = self.models[r], self.opts[r], self.protocols[r]
        x_all, y_all, bs = self.data.train_x, self.data.train_y, protocol.batch_size
        scheduled = protocol.schedule != "constant" or protocol.warmup_epochs > 0
        steps, total = _steps(len(order), bs), 0.0
        model.train()
        for i, at in enumerate(range(0, len(order), bs)):
            if scheduled:
                opt.lr = lr_at(protocol, first_step + i, steps)
            idx = order[at : at + bs]
            x = as_float(x_all.index_select(0, idx))
            if protocol.augment.active:
                x = augment_run(x, protocol.augment, self.aug_gens[r])
            if self.normalize is not None:
                x = self.normalize(x)
            x = x.contiguous(memory_format=self.memory_format)
            loss = self._step(model, opt, protocol, x, y_all.index_select(0, idx))
            if (average := self.averages[r]) is not None:
                average.update()
            total += loss
            if self.step_losses is not None:
                self.step_losses[r].append(loss)
            interrupts.check()
            if on_step is not None:
                on_step(1)
        return total

    @staticmethod
    def _step(model: nn.Module, opt: object, protocol: Protocol, x: Tensor, y: Tensor) -> float:
        for p in model.parameters():
            p.grad = None
        logp = torch.log_softmax(model(x), dim=-1)
        loss = per_sample_loss(logp.unsqueeze(0), y.unsqueeze(0), protocol.loss, protocol.label_smoothing).mean()
        loss.backward()
        opt.step()  # type: ignore[attr-defined]
        return float(loss.detach())

    @torch.no_grad()
    def predict(self, x: Tensor, prep: Callable[[Tensor], Tensor]) -> Tensor:
        """Predicted classes (K, N) of every run for the images ``x`` (N, C, H, W)."""
        out = []
        for model, protocol in zip(self.evaluated(), self.protocols, strict=True):
            model.eval()
            chunks = (prep(chunk).contiguous(memory_format=self.memory_format) for chunk in x.split(EVAL_CHUNK))
            out.append(torch.cat([logits(model, c, protocol.tta).argmax(-1) for c in chunks]))
        return torch.stack(out)

    def evaluated(self) -> list[nn.Module]:
        """The model each run is evaluated (and kept) as: its weight average where its recipe keeps one."""
        return [a.model if a is not None else m for m, a in zip(self.models, self.averages, strict=True)]

    def recorded_steps(self) -> list[list[float]] | None:
        return self.step_losses

    def plain_models(self) -> list[nn.Module]:
        """Every run's model on the CPU, in eval mode, as ``build_model`` builds it (for final metrics, export): its
        averaged weights where its recipe keeps an average."""
        out: list[nn.Module] = []
        for model in self.evaluated():
            plain = build_model(self.spec, self.data.info.shape, self.data.info.num_classes)
            plain.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
            out.append(plain.eval())
        return out

    def fused(self) -> FusedModel:
        """The runs' weights as one fused model (what trial weights and export read)."""
        info = self.data.info
        return FusedModel.from_models(self.spec, self.plain_models(), info.shape, info.num_classes)


def _steps(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def _seed_dropout(model: nn.Module, generator: torch.Generator) -> None:
    """Replace ``model``'s ``nn.Dropout`` modules by ones drawing their masks from ``generator`` (the run's own)."""
    for name, child in list(model.named_children()):
        if type(child) is nn.Dropout:
            setattr(model, name, SeededDropout(child.p, generator))
        else:
            _seed_dropout(child, generator)
