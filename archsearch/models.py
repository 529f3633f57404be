"""Build PyTorch models from specs: the plain single-run model and the fused K-run model used for training.

The plain model (``build_model``) is an ordinary ``nn.Sequential``; it is what checkpoints load into and what the
parameter counts of the report refer to. The fused model (``FusedModel``) holds K independent copies of the same
architecture as stacked weights so that K runs (seeds) train in one pass: batched matmuls (``baddbmm``) for the fully
connected layers and grouped convolutions for the conv layers. Nothing is shared between the K copies, so gradients,
and AdamW (an element-wise optimiser), treat each run exactly as if it were trained alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from archsearch import conv as conv_kernels
from archsearch.spec import IMAGE_SHAPE, NUM_CLASSES, CNNSpec, ConvLayer, MLPSpec, PoolLayer, Spec

__all__ = ["FusedModel", "activation_module", "build_model", "count_params", "init_model", "macs_per_sample"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "hardtanh": nn.Hardtanh,
    "mish": nn.Mish,
    "leakyrelu": nn.LeakyReLU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
}


def activation_module(name: str) -> nn.Module:
    return _ACTIVATIONS[name]()


def build_model(spec: Spec) -> nn.Sequential:
    """The plain single-run model for ``spec``: input (N, 1, 28, 28) or (N, 784), output (N, 10) logits."""
    layers: list[nn.Module] = []
    if isinstance(spec, MLPSpec):
        layers.append(nn.Flatten())
        features = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]
        hidden = spec.hidden
    else:
        channels = IMAGE_SHAPE[0]
        for layer in spec.layers:
            if isinstance(layer, ConvLayer):
                layers += [nn.Conv2d(channels, layer.channels, layer.kernel, padding=layer.padding)]
                layers += [activation_module(spec.activation)]
                channels = layer.channels
            elif layer.mode == "max":
                layers.append(nn.MaxPool2d(layer.size))
            else:
                layers.append(nn.AvgPool2d(layer.size))
        layers.append(nn.Flatten())
        c, h, w = spec.feature_shape()
        features = c * h * w
        hidden = spec.fc
    for width in hidden:
        layers += [nn.Linear(features, width), activation_module(spec.activation)]
        features = width
    layers.append(nn.Linear(features, NUM_CLASSES))
    return nn.Sequential(*layers)


def count_params(spec_or_model: Spec | nn.Module) -> int:
    model = spec_or_model if isinstance(spec_or_model, nn.Module) else build_model(spec_or_model)
    return sum(p.numel() for p in model.parameters())


def macs_per_sample(spec: Spec) -> int:
    """Multiply-accumulates of one forward pass of one image (weights layers only): the unit of training cost."""
    macs = 0
    if isinstance(spec, CNNSpec):
        c, h, w = IMAGE_SHAPE
        for layer in spec.layers:
            if isinstance(layer, ConvLayer):
                h, w = h + 2 * layer.padding - layer.kernel + 1, w + 2 * layer.padding - layer.kernel + 1
                macs += h * w * layer.channels * c * layer.kernel**2
                c = layer.channels
            else:
                h, w = h // layer.size, w // layer.size
        features, hidden = c * h * w, spec.fc
    else:
        features, hidden = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2], spec.hidden
    for width in (*hidden, NUM_CLASSES):
        macs += features * width
        features = width
    return macs


def init_model(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """The report's initialisation: Xavier-normal weights, zero biases, drawn in layer order from ``generator``."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                nn.init.xavier_normal_(module.weight, generator=generator)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
    return model


# Activations that commute with max pooling *exactly*, gradients included: max(f(a), f(b)) == f(max(a, b)) for a
# non-decreasing f, and where f flattens ties (relu's zeros, hardtanh's saturation) its gradient there is zero, so which
# tied element max-pooling picks cannot matter. Pooling first applies f to 4x fewer values (see FusedModel.features).
_POOL_COMMUTES = frozenset({"relu", "hardtanh"})


class FusedModel(nn.Module):
    """K copies of one architecture with stacked weights.

    Input: MLP ``(K, B, 784)``; CNN ``(B, K, 28, 28)`` (run k's images in channel k). Output: ``(K, B, 10)``.
    Parameters are stored so that run k's slice is exactly run k's plain model (see ``from_models``/``unfuse``):
    conv weights stacked along the output channels (a grouped convolution), linear weights as ``(K, out, in)``,
    nn.Linear's own layout, biases as ``(K, 1, out)``.
    """

    def __init__(self, spec: Spec, k: int) -> None:
        super().__init__()
        self.spec, self.k = spec, k
        self.act = activation_module(spec.activation)
        self.conv_weights = nn.ParameterList()
        self.conv_biases = nn.ParameterList()
        self.conv_layers: list[ConvLayer | PoolLayer] = []
        if isinstance(spec, CNNSpec):
            channels = IMAGE_SHAPE[0]
            for layer in spec.layers:
                self.conv_layers.append(layer)
                if isinstance(layer, ConvLayer):
                    w = torch.empty(k * layer.channels, channels, layer.kernel, layer.kernel)
                    self.conv_weights.append(nn.Parameter(w))
                    self.conv_biases.append(nn.Parameter(torch.zeros(k * layer.channels)))
                    channels = layer.channels
            c, h, w_ = spec.feature_shape()
            features, hidden = c * h * w_, spec.fc
        else:
            features, hidden = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2], spec.hidden
        self.fc_weights = nn.ParameterList()
        self.fc_biases = nn.ParameterList()
        for width in (*hidden, NUM_CLASSES):
            self.fc_weights.append(nn.Parameter(torch.empty(k, width, features)))
            self.fc_biases.append(nn.Parameter(torch.zeros(k, 1, width)))
            features = width

    @property
    def is_cnn(self) -> bool:
        return bool(self.conv_layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the fully connected head, ``(K, B, F)``: the conv trunk's output for a CNN, else ``x``."""
        if not self.conv_layers:
            return x
        swap = self.spec.activation in _POOL_COMMUTES
        conv, layers, deferred, start = 0, self.conv_layers, False, 0
        first, after = layers[0], layers[1] if len(layers) > 1 else None
        max_after = isinstance(after, PoolLayer) and after.mode == "max"
        if isinstance(first, ConvLayer):  # single-threaded CPU: the first conv (and its pooling) by archsearch.conv
            fuse = swap and max_after and isinstance(after, PoolLayer) and after.size == 2
            if conv_kernels.takes(x, self.conv_weights[0], 2 if fuse else 1):
                x = conv_kernels.first_conv(
                    x, self.conv_weights[0], self.conv_biases[0], first.padding, 2 if fuse else 1
                ).contiguous(memory_format=torch.channels_last)  # before the activation: its backward then sees
                # one layout (relu's backward on mixed layouts took 0.2 ms, eight times as long)
                conv, start, deferred = 1, 2 if fuse else 1, swap and max_after and not fuse
                if not deferred:  # (after the pooling, where it was fused: see _POOL_COMMUTES)
                    x = self.act(x)
        # oneDNN's grouped convolution is ~2.5x faster in NHWC (channels_last) than in NCHW on CPU
        # (benchmarks/bench_trainer.py); parameters stay NCHW so checkpoints and unfuse() are unaffected.
        x = x.contiguous(memory_format=torch.channels_last)
        for i in range(start, len(layers)):
            layer = layers[i]
            if isinstance(layer, ConvLayer):
                w = self.conv_weights[conv].contiguous(memory_format=torch.channels_last)
                x = F.conv2d(x, w, self.conv_biases[conv], padding=layer.padding, groups=self.k)
                conv += 1
                after = layers[i + 1] if i + 1 < len(layers) else None
                deferred = swap and isinstance(after, PoolLayer) and after.mode == "max"
                if not deferred:
                    x = self.act(x)
            else:
                x = F.max_pool2d(x, layer.size) if layer.mode == "max" else F.avg_pool2d(x, layer.size)
                if deferred:  # the conv's activation, applied after the pool (see _POOL_COMMUTES)
                    x, deferred = self.act(x), False
        # back to NCHW so each run's features flatten in (C, H, W) order, exactly as in the plain model
        return x.contiguous().reshape(x.shape[0], self.k, -1).transpose(0, 1)  # (B, K*C, H, W) -> (K, B, C*H*W)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The fully connected layers: features ``(K, B, F)`` to logits ``(K, B, 10)``."""
        last = len(self.fc_weights) - 1
        for i, (w, b) in enumerate(zip(self.fc_weights, self.fc_biases, strict=True)):
            x = torch.baddbmm(b, x, w.transpose(1, 2))
            if i < last:
                x = self.act(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def _plain_params(self, model: nn.Module) -> tuple[list[nn.Conv2d], list[nn.Linear]]:
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        return convs, linears

    @classmethod
    def from_models(cls, spec: Spec, models: Sequence[nn.Module]) -> FusedModel:
        """Stack K plain models (same spec) into one fused model."""
        fused = cls(spec, len(models))
        with torch.no_grad():
            per_run = [fused._plain_params(m) for m in models]
            for i, (w, b) in enumerate(zip(fused.conv_weights, fused.conv_biases, strict=True)):
                w.copy_(torch.cat([convs[i].weight for convs, _ in per_run]))
                b.copy_(torch.cat([convs[i].bias for convs, _ in per_run]))  # type: ignore[misc]
            for i, (w, b) in enumerate(zip(fused.fc_weights, fused.fc_biases, strict=True)):
                w.copy_(torch.stack([lin[i].weight for _, lin in per_run]))
                b.copy_(torch.stack([lin[i].bias.unsqueeze(0) for _, lin in per_run]))
        return fused

    def unfuse(self, run: int) -> nn.Sequential:
        """Run ``run``'s weights as a plain model (on the CPU), e.g. for export."""
        model = build_model(self.spec)
        convs, linears = self._plain_params(model)
        with torch.no_grad():
            for conv, w, b in zip(convs, self.conv_weights, self.conv_biases, strict=True):
                n = conv.out_channels
                conv.weight.copy_(w[run * n : (run + 1) * n])
                conv.bias.copy_(b[run * n : (run + 1) * n])  # type: ignore[union-attr]
            for lin, w, b in zip(linears, self.fc_weights, self.fc_biases, strict=True):
                lin.weight.copy_(w[run])
                lin.bias.copy_(b[run, 0])
        return model
