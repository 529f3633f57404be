"""Architecture specs: the shared vocabulary of archsearch.

A spec is a small frozen dataclass that can be printed as a short string, parsed back, read from a TOML table,
built into an ``nn.Module`` (see :mod:`archsearch.models`) and stored inside a checkpoint's config.

String grammar (tokens separated by ``-``; the activation is optional and defaults to ``relu``)::

    mlp:linear                      no hidden layer (multiclass logistic regression)
    mlp:128-tanh                    one hidden layer of 128 units, tanh
    mlp:512,256,64-relu             three hidden layers
    cnn:6c5-p2-16c5-p2-fc128,64     conv(6 ch, 5x5) pool(2) conv(16 ch, 5x5) pool(2) fc 128, 64, then 10 outputs
    cnn:32c3p1-p2-64c3p1-ap2-fc128-gelu
                                    ``p1`` after a conv is zero padding; ``p2`` alone is 2x2 max pooling,
                                    ``ap2`` average pooling; an empty head is written ``fc``

Every conv is followed by the activation; so is every hidden fully connected layer. The final 10-way layer is implicit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from archsearch.errors import UserError

__all__ = [
    "ACTIVATIONS",
    "IMAGE_SHAPE",
    "NUM_CLASSES",
    "CNNSpec",
    "ConvLayer",
    "MLPSpec",
    "PoolLayer",
    "Spec",
    "SpecError",
    "parse_spec",
    "spec_from_dict",
]

IMAGE_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
# The report's six activations plus three common modern ones.
ACTIVATIONS = ("sigmoid", "tanh", "hardtanh", "mish", "leakyrelu", "relu", "gelu", "silu", "elu")
MAX_WIDTH = 1 << 16


class SpecError(UserError):
    """An architecture spec that cannot be built; the message names the problem."""


def _check_activation(name: str) -> str:
    if name not in ACTIVATIONS:
        raise SpecError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return name


def _check_width(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WIDTH:
        raise SpecError(f"{what} must be an integer between 1 and {MAX_WIDTH}, got {value!r}")
    return value


@dataclass(frozen=True)
class MLPSpec:
    hidden: tuple[int, ...] = ()
    activation: str = "relu"
    kind: Literal["mlp"] = "mlp"

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(self.hidden))
        for i, w in enumerate(self.hidden):
            _check_width(w, f"hidden layer {i + 1} width")
        _check_activation(self.activation)

    @property
    def depth(self) -> int:
        """Number of hidden layers."""
        return len(self.hidden)

    @property
    def widths(self) -> tuple[int, ...]:
        return self.hidden

    def __str__(self) -> str:
        if not self.hidden:
            return "mlp:linear"
        return f"mlp:{','.join(map(str, self.hidden))}-{self.activation}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "mlp", "hidden": list(self.hidden), "activation": self.activation}


@dataclass(frozen=True)
class ConvLayer:
    channels: int
    kernel: int
    padding: int = 0

    def __post_init__(self) -> None:
        _check_width(self.channels, "conv channels")
        _check_width(self.kernel, "conv kernel size")
        if isinstance(self.padding, bool) or not isinstance(self.padding, int) or not 0 <= self.padding < self.kernel:
            raise SpecError(f"conv padding must be an integer in [0, kernel), got {self.padding!r}")

    def __str__(self) -> str:
        return f"{self.channels}c{self.kernel}" + (f"p{self.padding}" if self.padding else "")


@dataclass(frozen=True)
class PoolLayer:
    size: int = 2
    mode: Literal["max", "avg"] = "max"

    def __post_init__(self) -> None:
        _check_width(self.size, "pool size")
        if self.mode not in ("max", "avg"):
            raise SpecError(f"pool mode must be 'max' or 'avg', got {self.mode!r}")

    def __str__(self) -> str:
        return ("ap" if self.mode == "avg" else "p") + str(self.size)


@dataclass(frozen=True)
class CNNSpec:
    layers: tuple[ConvLayer | PoolLayer, ...]
    fc: tuple[int, ...] = ()
    activation: str = "relu"
    kind: Literal["cnn"] = "cnn"

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "fc", tuple(self.fc))
        if not any(isinstance(layer, ConvLayer) for layer in self.layers):
            raise SpecError("a cnn needs at least one conv layer (for example 6c5)")
        for i, w in enumerate(self.fc):
            _check_width(w, f"fully connected layer {i + 1} width")
        _check_activation(self.activation)
        self.feature_shape()  # validates that the image never shrinks below 1x1

    def feature_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) after the conv stack; raises if the image shrinks to nothing."""
        c, h, w = IMAGE_SHAPE
        for i, layer in enumerate(self.layers):
            if isinstance(layer, ConvLayer):
                c = layer.channels
                h, w = h + 2 * layer.padding - layer.kernel + 1, w + 2 * layer.padding - layer.kernel + 1
            else:
                h, w = h // layer.size, w // layer.size
            if h < 1 or w < 1:
                raise SpecError(f"layer {i + 1} ({layer}) shrinks the 28x28 image below 1x1")
        return c, h, w

    @property
    def depth(self) -> int:
        """Number of weight layers before the output layer (convs plus hidden fully connected layers)."""
        return len(self.convs) + len(self.fc)

    @property
    def convs(self) -> tuple[ConvLayer, ...]:
        return tuple(layer for layer in self.layers if isinstance(layer, ConvLayer))

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(c.channels for c in self.convs) + self.fc

    def __str__(self) -> str:
        tokens = [str(layer) for layer in self.layers]
        tokens.append("fc" + ",".join(map(str, self.fc)))
        tokens.append(self.activation)
        return "cnn:" + "-".join(tokens)

    def to_dict(self) -> dict[str, Any]:
        layers: list[dict[str, Any]] = []
        for layer in self.layers:
            if isinstance(layer, ConvLayer):
                layers.append({"conv": layer.channels, "kernel": layer.kernel, "padding": layer.padding})
            else:
                layers.append({"pool": layer.size, "mode": layer.mode})
        return {"kind": "cnn", "layers": layers, "fc": list(self.fc), "activation": self.activation}


Spec = MLPSpec | CNNSpec

_CONV = re.compile(r"^(\d+)c(\d+)(?:p(\d+))?$")
_POOL = re.compile(r"^(a?)p(\d+)$")
_FC = re.compile(r"^fc(\d+(?:,\d+)*)?$")
_WIDTHS = re.compile(r"^\d+(?:,\d+)*$")


def _split_activation(tokens: list[str]) -> tuple[list[str], str]:
    if tokens and tokens[-1].isalpha() and tokens[-1] not in ("fc", "linear"):
        return tokens[:-1], _check_activation(tokens[-1].lower())
    return tokens, "relu"


def parse_spec(text: str) -> Spec:
    """Parse a spec string such as ``mlp:128-relu`` or ``cnn:6c5-p2-16c5-p2-fc128,64``."""
    original = text
    text = text.strip().replace(" ", "")
    kind, sep, body = text.partition(":")
    if not sep or kind.lower() not in ("mlp", "cnn"):
        raise SpecError(f"spec {original!r} must start with 'mlp:' or 'cnn:'")
    tokens, activation = _split_activation([t for t in body.split("-")] if body else [])
    if kind.lower() == "mlp":
        if tokens in ([], ["linear"]):
            return MLPSpec((), activation)
        if len(tokens) != 1 or not _WIDTHS.match(tokens[0]):
            raise SpecError(f"mlp spec {original!r}: expected comma-separated widths then an optional activation")
        return MLPSpec(tuple(int(w) for w in tokens[0].split(",")), activation)
    layers: list[ConvLayer | PoolLayer] = []
    fc: tuple[int, ...] | None = None
    for token in tokens:
        if fc is not None:
            raise SpecError(f"cnn spec {original!r}: nothing may follow the fc head except the activation")
        if m := _CONV.match(token):
            layers.append(ConvLayer(int(m[1]), int(m[2]), int(m[3] or 0)))
        elif m := _POOL.match(token):
            layers.append(PoolLayer(int(m[2]), "avg" if m[1] else "max"))
        elif m := _FC.match(token):
            fc = tuple(int(w) for w in m[1].split(",")) if m[1] else ()
        else:
            raise SpecError(f"cnn spec {original!r}: cannot read token {token!r} (conv 6c5, pool p2, head fc128,64)")
    return CNNSpec(tuple(layers), fc or (), activation)


_MLP_KEYS = {"kind", "hidden", "activation"}
_CNN_KEYS = {"kind", "layers", "fc", "activation"}


def spec_from_dict(data: Mapping[str, Any]) -> Spec:
    """Build a spec from a TOML table / JSON object (the inverse of ``to_dict``); a ``spec`` string also works."""
    if "spec" in data and len(data) == 1:
        return parse_spec(str(data["spec"]))
    kind = data.get("kind")
    activation = str(data.get("activation", "relu"))
    if kind == "mlp":
        if unknown := set(data) - _MLP_KEYS:
            raise SpecError(f"unknown key(s) for an mlp spec: {', '.join(sorted(unknown))}")
        return MLPSpec(tuple(data.get("hidden", ())), activation)
    if kind == "cnn":
        if unknown := set(data) - _CNN_KEYS:
            raise SpecError(f"unknown key(s) for a cnn spec: {', '.join(sorted(unknown))}")
        layers: list[ConvLayer | PoolLayer] = []
        for entry in data.get("layers", ()):
            if "conv" in entry:
                layers.append(ConvLayer(entry["conv"], entry.get("kernel", 3), entry.get("padding", 0)))
            elif "pool" in entry:
                layers.append(PoolLayer(entry["pool"], entry.get("mode", "max")))
            else:
                raise SpecError(f"cnn layer {dict(entry)!r} needs a 'conv' or a 'pool' key")
        return CNNSpec(tuple(layers), tuple(data.get("fc", ())), activation)
    raise SpecError(f"spec table needs kind = 'mlp' or 'cnn', got {kind!r}")
