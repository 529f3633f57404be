"""The layer registry: every kind of layer a spec can say, each as one entry.

An entry is a frozen dataclass registered with :func:`register`. It brings everything archsearch needs to know about
its kind, in one place (timm's ``register_model`` is the model):

* its token in the string grammar (``pattern``, ``from_match``, ``token``) and its TOML table (``from_table``,
  ``to_table``), read and written by :mod:`archsearch.models.spec`;
* shape inference, parameter and multiply-accumulate counts (``out_shape``, ``params``, ``macs``);
* its plain modules, one run's ``nn.Module`` (``plain``), which checkpoints load into;
* its fused units, K runs at once (``fused``, see :mod:`archsearch.models.units`), which training runs;
* which accelerated steps support it (``accelerated``): a kind that no accelerator knows still trains, through the
  general autograd step (:mod:`archsearch.engine.steps`).

Weighted layers (conv, separable conv, residual block, linear) are followed by the spec's activation; a ``bn`` token
after one gives it BatchNorm before that activation (inside a residual block: after each of its convolutions), and its
convolution or product then has no bias (BatchNorm's shift replaces it). tests/models/test_layers.py runs every entry
through the same checks (registry-driven, as timm's tests are), so a new kind is one entry here plus its test case.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from torch import nn

from archsearch.core.errors import UserError
from archsearch.core.shapes import Shape
from archsearch.models import units as U
from archsearch.models.activations import ACTIVATIONS, activation_module

__all__ = [
    "ACTIVATIONS",
    "LAYERS",
    "BatchNormMixin",
    "Conv",
    "Dropout",
    "GlobalAvgPool",
    "Layer",
    "Linear",
    "Pool",
    "Residual",
    "SepConv",
    "SpecError",
    "activation_module",
    "register",
]

MAX_WIDTH = 1 << 16


class SpecError(UserError):
    """An architecture spec that cannot be built; the message names the problem."""


def check_int(value: Any, what: str, low: int = 1, high: int = MAX_WIDTH) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SpecError(f"{what} must be an integer between {low} and {high}, got {value!r}")
    return value


def _check_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"{what} must be true or false, got {value!r}")
    return value


def _out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


LAYERS: dict[str, type[Layer]] = {}


def register(cls: type[Layer]) -> type[Layer]:
    """Add a layer kind to the registry (its ``kind`` is its TOML key and its name in listings)."""
    if cls.kind in LAYERS:
        raise ValueError(f"layer kind {cls.kind!r} is registered twice")
    LAYERS[cls.kind] = cls
    return cls


@dataclass(frozen=True)
class Layer:
    """The base of every entry. Subclasses set the class variables and implement the methods they need."""

    kind: ClassVar[str]
    pattern: ClassVar[re.Pattern[str]]
    spatial: ClassVar[bool]  # True: a trunk layer on (C, H, W) feature maps; False: a head layer on flat features
    weighted: ClassVar[bool] = False  # followed by the activation; may carry BatchNorm (``norm``)
    depth: ClassVar[int] = 0  # weight layers it counts as in ``Spec.depth``
    accelerated: ClassVar[frozenset[str]] = frozenset()  # steps besides autograd that support it (engine.steps)
    fields_toml: ClassVar[tuple[str, ...]] = ()  # TOML keys besides ``kind``'s own

    @classmethod
    def from_match(cls, m: re.Match[str]) -> Layer:
        raise NotImplementedError

    def token(self) -> str:
        raise NotImplementedError

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> Layer:
        raise NotImplementedError

    def to_table(self) -> dict[str, Any]:
        raise NotImplementedError

    def out_shape(self, s: Shape) -> Shape:
        return s

    def params(self, s: Shape) -> int:
        return 0

    def macs(self, s: Shape) -> int:
        return 0

    def plain(self, s: Shape, act: str) -> list[nn.Module]:
        raise NotImplementedError

    def fused(self, s: Shape, k: int, act: str) -> list[U.Unit]:
        raise NotImplementedError

    @property
    def width(self) -> int | None:
        """Channels or units of a weighted layer (``Spec.widths``)."""
        return None


@dataclass(frozen=True)
class BatchNormMixin:
    """``norm``: BatchNorm after the layer's product, before its activation."""

    norm: bool = field(default=False, kw_only=True)

    def _bn_params(self, channels: int) -> int:
        return 2 * channels if self.norm else 0

    def _tail(self, channels: int, act: str, spatial: bool) -> list[nn.Module]:
        bn: list[nn.Module] = [nn.BatchNorm2d(channels) if spatial else nn.BatchNorm1d(channels)] if self.norm else []
        return [*bn, activation_module(act)]

    def _fused_tail(self, channels: int, k: int, act: str, spatial: bool, mirror: int) -> list[U.Unit]:
        bn: list[U.Unit] = [U.FusedBatchNorm(k, channels, spatial, mirror=mirror)] if self.norm else []
        return [*bn, U.Act(act)]


# ------------------------------------------------------------------------------------------------------------ trunk


@register
@dataclass(frozen=True)
class Conv(BatchNormMixin, Layer):
    """``32c3``, ``32c3p1`` (zero padding), ``32c3s2p1`` (stride 2): a convolution with ``channels`` filters."""

    channels: int = 1
    kernel: int = 3
    stride: int = 1
    padding: int = 0

    kind: ClassVar[str] = "conv"
    letters: ClassVar[str] = "c"  # between channels and kernel in the token
    pattern: ClassVar[re.Pattern[str]] = re.compile(r"^(\d+)c(\d+)(?:s(\d+))?(?:p(\d+))?$")
    spatial: ClassVar[bool] = True
    weighted: ClassVar[bool] = True
    depth: ClassVar[int] = 1
    accelerated: ClassVar[frozenset[str]] = frozenset({"python", "cconv"})
    fields_toml: ClassVar[tuple[str, ...]] = ("kernel", "stride", "padding", "norm")

    def __post_init__(self) -> None:
        check_int(self.channels, f"{self.kind} channels")
        check_int(self.kernel, f"{self.kind} kernel size", high=64)
        check_int(self.stride, f"{self.kind} stride", high=16)
        if isinstance(self.padding, bool) or not isinstance(self.padding, int) or not 0 <= self.padding < self.kernel:
            raise SpecError(f"{self.kind} padding must be an integer in [0, kernel), got {self.padding!r}")
        _check_bool(self.norm, f"{self.kind} norm")

    @classmethod
    def from_match(cls, m: re.Match[str]) -> Layer:
        return cls(channels=int(m[1]), kernel=int(m[2]), stride=int(m[3] or 1), padding=int(m[4] or 0))

    def token(self) -> str:
        stride = f"s{self.stride}" if self.stride != 1 else ""
        return f"{self.channels}{self.letters}{self.kernel}{stride}" + (f"p{self.padding}" if self.padding else "")

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> Layer:
        return cls(
            channels=table[cls.kind],
            kernel=table.get("kernel", 3),
            stride=table.get("stride", 1),
            padding=table.get("padding", 0),
            norm=table.get("norm", False),
        )

    def to_table(self) -> dict[str, Any]:
        out: dict[str, Any] = {self.kind: self.channels, "kernel": self.kernel, "padding": self.padding}
        if self.stride != 1:
            out["stride"] = self.stride
        if self.norm:
            out["norm"] = True
        return out

    def out_shape(self, s: Shape) -> Shape:
        return Shape(
            self.channels,
            _out(s.height, self.kernel, self.stride, self.padding),
            _out(s.width, self.kernel, self.stride, self.padding),
        )

    def params(self, s: Shape) -> int:
        bias = 0 if self.norm else self.channels
        return self.channels * s.channels * self.kernel**2 + bias + self._bn_params(self.channels)

    def macs(self, s: Shape) -> int:
        o = self.out_shape(s)
        return o.height * o.width * self.channels * s.channels * self.kernel**2

    def plain(self, s: Shape, act: str) -> list[nn.Module]:
        conv = nn.Conv2d(s.channels, self.channels, self.kernel, self.stride, self.padding, bias=not self.norm)
        return [conv, *self._tail(self.channels, act, spatial=True)]

    def fused(self, s: Shape, k: int, act: str) -> list[U.Unit]:
        c = s.channels
        conv = U.FusedConv(k, c, self.channels, self.kernel, self.stride, self.padding, not self.norm, mirror=0)
        return [conv, *self._fused_tail(self.channels, k, act, spatial=True, mirror=1)]

    @property
    def width(self) -> int:
        return self.channels


@register
@dataclass(frozen=True)
class SepConv(Conv):
    """``32ds3`` (``s2`` stride, ``p1`` padding as for conv): depthwise-separable convolution, a per-channel
    ``kernel`` x ``kernel`` filter then a 1x1 convolution to ``channels`` (MobileNet, Xception): ~k² fewer weights."""

    kind: ClassVar[str] = "sepconv"
    letters: ClassVar[str] = "ds"
    pattern: ClassVar[re.Pattern[str]] = re.compile(r"^(\d+)ds(\d+)(?:s(\d+))?(?:p(\d+))?$")
    accelerated: ClassVar[frozenset[str]] = frozenset()

    def params(self, s: Shape) -> int:
        depthwise = s.channels * self.kernel**2
        bias = 0 if self.norm else self.channels
        return depthwise + self.channels * s.channels + bias + self._bn_params(self.channels)

    def macs(self, s: Shape) -> int:
        o = self.out_shape(s)
        return o.height * o.width * s.channels * (self.kernel**2 + self.channels)

    def plain(self, s: Shape, act: str) -> list[nn.Module]:
        c = s.channels
        depthwise = nn.Conv2d(c, c, self.kernel, self.stride, self.padding, groups=c, bias=False)
        pointwise = nn.Conv2d(c, self.channels, 1, bias=not self.norm)
        return [depthwise, pointwise, *self._tail(self.channels, act, spatial=True)]

    def fused(self, s: Shape, k: int, act: str) -> list[U.Unit]:
        c = s.channels
        depthwise = U.FusedConv(k, c, c, self.kernel, self.stride, self.padding, False, depthwise=True, mirror=0)
        pointwise = U.FusedConv(k, c, self.channels, 1, 1, 0, not self.norm, mirror=1)
        return [depthwise, pointwise, *self._fused_tail(self.channels, k, act, spatial=True, mirror=2)]


@register
@dataclass(frozen=True)
class Residual(BatchNormMixin, Layer):
    """``r32``, ``r64s2``: a residual block (ResNet's basic block): two 3x3 convolutions with ``channels`` filters
    (the first with ``stride``), added to a shortcut, then the activation. The shortcut is the identity where shapes
    agree, else a 1x1 convolution with the stride. ``-bn`` puts BatchNorm after each convolution."""

    channels: int = 1
    stride: int = 1

    kind: ClassVar[str] = "residual"
    pattern: ClassVar[re.Pattern[str]] = re.compile(r"^r(\d+)(?:s(\d+))?$")
    spatial: ClassVar[bool] = True
    weighted: ClassVar[bool] = True
    depth: ClassVar[int] = 2
    fields_toml: ClassVar[tuple[str, ...]] = ("stride", "norm")

    def __post_init__(self) -> None:
        check_int(self.channels, "residual block channels")
        check_int(self.stride, "residual block stride", high=4)
        _check_bool(self.norm, "residual block norm")

    @classmethod
    def from_match(cls, m: re.Match[str]) -> Layer:
        return cls(channels=int(m[1]), stride=int(m[2] or 1))

    def token(self) -> str:
        return f"r{self.channels}" + (f"s{self.stride}" if self.stride != 1 else "")

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> Layer:
        return cls(channels=table["residual"], stride=table.get("stride", 1), norm=table.get("norm", False))

    def to_table(self) -> dict[str, Any]:
        out: dict[str, Any] = {"residual": self.channels}
        if self.stride != 1:
            out["stride"] = self.stride
        if self.norm:
            out["norm"] = True
        return out

    def _projects(self, s: Shape) -> bool:
        return self.stride != 1 or s.channels != self.channels

    def _convs(self, s: Shape) -> list[tuple[Conv, Shape]]:
        """The block's convolutions and their inputs: conv1, conv2 and (if it projects) the 1x1 shortcut."""
        c1 = Conv(self.channels, 3, self.stride, 1, norm=self.norm)
        c2 = Conv(self.channels, 3, 1, 1, norm=self.norm)
        out = [(c1, s), (c2, c1.out_shape(s))]
        if self._projects(s):
            out.append((Conv(self.channels, 1, self.stride, 0, norm=self.norm), s))
        return out

    def out_shape(self, s: Shape) -> Shape:
        return self._convs(s)[0][0].out_shape(s)

    def params(self, s: Shape) -> int:
        return sum(conv.params(inp) for conv, inp in self._convs(s))

    def macs(self, s: Shape) -> int:
        return sum(conv.macs(inp) for conv, inp in self._convs(s))

    def plain(self, s: Shape, act: str) -> list[nn.Module]:
        return [U.ResidualBlock(s.channels, self.channels, self.stride, self.norm, act, self._projects(s))]

    def fused(self, s: Shape, k: int, act: str) -> list[U.Unit]:
        return [U.FusedResidual(k, s.channels, self.channels, self.stride, self.norm, act, self._projects(s), mirror=0)]

    @property
    def width(self) -> int:
        return self.channels


@register
@dataclass(frozen=True)
class Pool(Layer):
    """``p2`` max pooling, ``ap2`` average pooling (window and stride ``size``)."""

    size: int = 2
    mode: str = "max"

    kind: ClassVar[str] = "pool"
    pattern: ClassVar[re.Pattern[str]] = re.compile(r"^(a?)p(\d+)$")
    spatial: ClassVar[bool] = True
    accelerated: ClassVar[frozenset[str]] = frozenset({"python", "cconv"})
    fields_toml: ClassVar[tuple[str, ...]] = ("mode",)

    def __post_init__(self) -> None:
        check_int(self.size, "pool size")
        if self.mode not in ("max", "avg"):
            raise SpecError(f"pool mode must be 'max' or 'avg', got {self.mode!r}")

    @classmethod
    def from_match(cls, m: re.Match[str]) -> Layer:
        return cls(size=int(m[2]), mode="avg" if m[1] else "max")

    def token(self) -> str:
        return ("ap" if self.mode == "avg" else "p") + str(self.size)

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> Layer:
        return cls(size=table["pool"], mode=table.get("mode", "max"))

    def to_table(self) -> dict[str, Any]:
        return {"pool": self.size, "mode": self.mode}

    def out_shape(self, s: Shape) -> Shape:
        return Shape(s.channels, s.height // self.size, s.width // self.size)

    def plain(self, s: Shape, act: str) -> list[nn.Module]:
        return [nn.MaxPool2d(self.size) if self.mode == "max" else nn.AvgPool2d(self.size)]

    def fused(self, s: Shape, k: int, act: str) -> list[U.Unit]:
        return [U.Pool2d(self.size, self.mode)]


@register
@dataclass(frozen=True)
class GlobalAvgPool(Layer):
    """``gap``: the mean of each channel over the whole feature map, so the head sees C values instead of C·H·W
    (what modern small CNNs do before their classifier)."""

    kind: ClassVar[str] = "gap"
    pattern: ClassVar[re.Pattern[str]] = re.compile(r"^gap$")
    spatial: ClassVar[bool] = True

    @classmethod
    def from_match(cls, m: re.Match[str]) -> Layer:
        return cls()

    def token(self) -> str:
        return "gap"

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> Layer:
        if table["gap"] is not True:
            raise SpecError("a gap layer is written { gap = true }")
        return cls()

    def to_table(self) -> dict[str, Any]:
        return {"gap": True}

    def out_shape(self, s: Shape) -> Shape:
        return Shape(s.channels, 1, 1)

    def plain(self, s: Shape, act: str) -> list[nn.Module]:
        return [nn.AdaptiveAvgPool2d(1)]

    def fused(self, s: Shape, k: int, act: str) -> list[U.Unit]:
        return [U.GlobalAvgPool()]


# ------------------------------------------------------------------------------------------------------ both / head


@register
@dataclass(frozen=True)
class Dropout(Layer):
    """``d0.25``: zero each value with probability ``p`` while training (scaling the rest by 1/(1-p)). Each run
    draws its masks from its own generator, so a run fused with others is the same run alone."""

    p: float = 0.5

    kind: ClassVar[str] = "dropout"
    pattern: ClassVar[re.Pattern[str]] = re.compile(r"^d(0?\.\d+)$")
    spatial: ClassVar[bool] = False  # allowed in both the trunk and the head (see Spec)

    def __post_init__(self) -> None:
        if isinstance(self.p, bool) or not isinstance(self.p, int | float) or not 0 < self.p < 1:
            raise SpecError(f"dropout probability must be in (0, 1), got {self.p!r}")

    @classmethod
    def from_match(cls, m: re.Match[str]) -> Layer:
        return cls(p=float(m[1]))

    def token(self) -> str:
        return f"d{self.p:g}"

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> Layer:
        return cls(p=table["dropout"])

    def to_table(self) -> dict[str, Any]:
        return {"dropout": self.p}

    def plain(self, s: Shape, act: str) -> list[nn.Module]:
        return [nn.Dropout(self.p)]

    def fused(self, s: Shape, k: int, act: str) -> list[U.Unit]:
        return [U.FusedDropout(self.p)]


@register
@dataclass(frozen=True)
class Linear(BatchNormMixin, Layer):
    """A fully connected hidden layer of ``units`` (``fc128`` in a CNN's head, ``128`` in an MLP)."""

    units: int = 1

    kind: ClassVar[str] = "fc"
    pattern: ClassVar[re.Pattern[str]] = re.compile(r"^(\d+)$")
    spatial: ClassVar[bool] = False
    weighted: ClassVar[bool] = True
    depth: ClassVar[int] = 1
    accelerated: ClassVar[frozenset[str]] = frozenset({"python", "c"})
    fields_toml: ClassVar[tuple[str, ...]] = ("norm",)

    def __post_init__(self) -> None:
        check_int(self.units, "fully connected layer width")
        _check_bool(self.norm, "fc norm")

    @classmethod
    def from_match(cls, m: re.Match[str]) -> Layer:
        return cls(units=int(m[1]))

    def token(self) -> str:
        return str(self.units)

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> Layer:
        return cls(units=table["fc"], norm=table.get("norm", False))

    def to_table(self) -> dict[str, Any]:
        return {"fc": self.units, **({"norm": True} if self.norm else {})}

    def out_shape(self, s: Shape) -> Shape:
        return Shape(self.units, 1, 1)

    def params(self, s: Shape) -> int:
        return s.features * self.units + (0 if self.norm else self.units) + self._bn_params(self.units)

    def macs(self, s: Shape) -> int:
        return s.features * self.units

    def plain(self, s: Shape, act: str) -> list[nn.Module]:
        return [nn.Linear(s.features, self.units, bias=not self.norm), *self._tail(self.units, act, spatial=False)]

    def fused(self, s: Shape, k: int, act: str) -> list[U.Unit]:
        linear = U.FusedLinear(k, s.features, self.units, bias=not self.norm, mirror=0)
        return [linear, *self._fused_tail(self.units, k, act, spatial=False, mirror=1)]

    @property
    def width(self) -> int:
        return self.units


def with_norm(layer: Layer, where: str) -> Layer:
    """``layer`` with BatchNorm, for a ``bn`` token or ``norm = true``; only weighted layers take it."""
    if not isinstance(layer, BatchNormMixin) or not layer.weighted:
        raise SpecError(f"{where}: 'bn' must follow a conv, separable conv, residual block or fc layer")
    if layer.norm:
        raise SpecError(f"{where}: 'bn' given twice for one layer")
    return replace(layer, norm=True)  # type: ignore[call-arg]
