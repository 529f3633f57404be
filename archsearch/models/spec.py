"""Architecture specs: the shared vocabulary of archsearch, read and written through the layer registry.

A spec is a frozen dataclass — a kind, a sequence of layers (:mod:`archsearch.models.layers`) and one activation —
that prints as a short string, parses back, reads from a TOML table, builds into modules for any input shape
(:mod:`archsearch.models.plain`, :mod:`archsearch.models.fused`) and is stored inside a checkpoint's config.

String grammar (tokens separated by ``-``; the activation is optional, default ``relu``)::

    mlp:linear                          no hidden layer (multiclass logistic regression)
    mlp:128-tanh                        one hidden layer of 128 units, tanh
    mlp:512,256-bn-d0.2-relu            two hidden layers, BatchNorm on the second, dropout before the output
    cnn:6c5-p2-16c5-p2-fc128,64         conv(6 ch, 5x5) pool(2) conv(16 ch, 5x5) pool(2) fc 128, 64 (report row 16)
    cnn:32c3p1-bn-p2-64c3s2p1-bn-gap-fc gap: global average pooling; ``fc`` alone is an empty head
    cnn:16c3p1-bn-r16-bn-r32s2-bn-gap-fc-d0.2
                                        residual blocks (``s2``: stride 2), dropout before the output layer

Trunk tokens (CNN): conv ``32c3`` (``s2`` stride, ``p1`` padding), separable conv ``32ds3``, residual block ``r32``,
max/average pooling ``p2``/``ap2``, global average pooling ``gap``, dropout ``d0.25``. Head tokens: ``fc128,64``
(CNN) or ``128,64`` (MLP), ``bn``, dropout. ``bn`` follows a weighted layer and puts BatchNorm before its
activation. Every weighted layer is followed by the activation; the final layer (one output per class) is implicit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from archsearch.core.shapes import FASHION_MNIST_SHAPE, Shape
from archsearch.models.layers import (
    ACTIVATIONS,
    LAYERS,
    MAX_WIDTH,
    Conv,
    Dropout,
    Layer,
    Linear,
    Residual,
    SepConv,
    SpecError,
    with_norm,
)

__all__ = ["ACTIVATIONS", "NUM_CLASSES", "Spec", "SpecError", "cnn", "mlp", "parse_spec", "spec_from_dict"]

NUM_CLASSES = 10  # Fashion-MNIST's, the default everywhere a dataset does not say otherwise
_CONV_LIKE = (Conv, SepConv, Residual)


def _check_activation(name: str) -> str:
    if name not in ACTIVATIONS:
        raise SpecError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return name


@dataclass(frozen=True)
class Spec:
    """``kind`` "mlp" (the image flattened into the head) or "cnn" (a trunk of spatial layers, then the head)."""

    kind: Literal["mlp", "cnn"]
    layers: tuple[Layer, ...] = ()
    activation: str = "relu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        if self.kind not in ("mlp", "cnn"):
            raise SpecError(f"spec kind must be 'mlp' or 'cnn', got {self.kind!r}")
        _check_activation(self.activation)
        for layer in self.layers:
            if not isinstance(layer, Layer):
                raise SpecError(f"not a layer: {layer!r}")
        if self.kind == "mlp" and any(layer.spatial for layer in self.layers):
            raise SpecError("an mlp has fully connected layers (and dropout) only; use cnn: for convolutions")
        if self.kind == "cnn":
            if not any(isinstance(layer, _CONV_LIKE) for layer in self.trunk):
                raise SpecError("a cnn needs at least one conv layer (for example 6c5)")
            if any(isinstance(layer, Linear) for layer in self.trunk):
                raise SpecError("nothing spatial (conv, pool, gap) may follow the fc head")

    # -- structure

    @property
    def trunk(self) -> tuple[Layer, ...]:
        """The spatial part: every layer up to the last spatial one (nothing for an MLP)."""
        last = max((i for i, layer in enumerate(self.layers) if layer.spatial), default=-1)
        return self.layers[: last + 1]

    @property
    def head(self) -> tuple[Layer, ...]:
        return self.layers[len(self.trunk) :]

    @property
    def depth(self) -> int:
        """Weight layers before the output layer (a residual block counts its two convolutions)."""
        return sum(type(layer).depth for layer in self.layers)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(w for layer in self.layers if (w := layer.width) is not None)

    @property
    def hidden(self) -> tuple[int, ...]:
        """Units of the fully connected hidden layers."""
        return tuple(layer.units for layer in self.layers if isinstance(layer, Linear))

    @property
    def kinds(self) -> frozenset[str]:
        """The layer kinds it uses (what the accelerated steps are asked about)."""
        return frozenset(type(layer).kind for layer in self.layers)

    @property
    def normed(self) -> bool:
        return any(getattr(layer, "norm", False) for layer in self.layers)

    def shapes(self, shape: Shape = FASHION_MNIST_SHAPE) -> list[Shape]:
        """The input shape of every layer, then that of the output layer; a layer that shrinks the image below 1x1
        is a SpecError naming it."""
        out, s = [], shape
        for i, layer in enumerate(self.trunk):
            out.append(s)
            s = layer.out_shape(s)
            if s.height < 1 or s.width < 1:
                raise SpecError(
                    f"layer {i + 1} ({layer.token()}) shrinks the {shape.height}x{shape.width} image below 1x1"
                )
        s = Shape(s.features, 1, 1)  # flattened into the head
        for layer in self.head:
            out.append(s)
            s = Shape(layer.out_shape(s).features, 1, 1)
        out.append(s)
        return out

    def check(self, shape: Shape = FASHION_MNIST_SHAPE) -> Spec:
        """``self`` if it can be built for ``shape`` (raises SpecError otherwise)."""
        self.shapes(shape)
        return self

    # -- text

    def __str__(self) -> str:
        if self.kind == "mlp":
            tokens = _head_tokens(self.layers, prefix="")
            return "mlp:linear" if not tokens else f"mlp:{'-'.join(tokens)}-{self.activation}"
        tokens = []
        for layer in self.trunk:
            tokens.append(layer.token())
            if getattr(layer, "norm", False):
                tokens.append("bn")
        head = _head_tokens(self.head, prefix="fc")
        if not head or not head[0].startswith("fc"):
            head.insert(0, "fc")
        return "cnn:" + "-".join([*tokens, *head, self.activation])

    def to_dict(self) -> dict[str, Any]:
        """The TOML/JSON form (the inverse of :func:`spec_from_dict`); plain specs keep the short keys."""
        out: dict[str, Any] = {"kind": self.kind}
        simple_head = all(isinstance(layer, Linear) and not layer.norm for layer in self.head)
        if self.kind == "mlp":
            if simple_head:
                out["hidden"] = list(self.hidden)
            else:
                out["layers"] = [layer.to_table() for layer in self.layers]
        else:
            out["layers"] = [layer.to_table() for layer in self.trunk]
            if simple_head:
                out["fc"] = list(self.hidden)
            else:
                out["head"] = [layer.to_table() for layer in self.head]
        out["activation"] = self.activation
        return out


def _head_tokens(layers: Sequence[Layer], prefix: str) -> list[str]:
    """Head layers as tokens: runs of plain fc layers merge into one ``fc128,64`` (``128,64`` in an MLP)."""
    tokens: list[str] = []
    widths: list[str] = []

    def flush() -> None:
        if widths:
            tokens.append(prefix + ",".join(widths))
            widths.clear()

    for layer in layers:
        if isinstance(layer, Linear):
            widths.append(layer.token())
            if layer.norm:
                flush()
                tokens.append("bn")
        else:
            flush()
            tokens.append(layer.token())
    flush()
    return tokens


_WIDTHS = re.compile(r"^\d+(?:,\d+)*$")
_FC = re.compile(r"^fc(\d+(?:,\d+)*)?$")
_TRUNK: tuple[type[Layer], ...] = tuple(cls for cls in LAYERS.values() if cls.spatial)
_NOT_ACTIVATIONS = frozenset({"fc", "linear", "bn", "gap"})


def _split_activation(tokens: list[str]) -> tuple[list[str], str]:
    if tokens and tokens[-1].isalpha() and tokens[-1].lower() not in _NOT_ACTIVATIONS:
        return tokens[:-1], _check_activation(tokens[-1].lower())
    return tokens, "relu"


def _trunk_layer(token: str) -> Layer | None:
    kinds: tuple[type[Layer], ...] = (*_TRUNK, Dropout)
    for cls in kinds:
        if m := cls.pattern.match(token):
            return cls.from_match(m)
    return None


def parse_spec(text: str) -> Spec:
    """Parse a spec string such as ``mlp:128-relu`` or ``cnn:6c5-p2-16c5-p2-fc128,64``."""
    original = text
    text = text.strip().replace(" ", "")
    kind, sep, body = text.partition(":")
    kind = kind.lower()
    if not sep or kind not in ("mlp", "cnn"):
        raise SpecError(f"spec {original!r} must start with 'mlp:' or 'cnn:'")
    tokens, activation = _split_activation(body.split("-") if body else [])
    layers: list[Layer] = []

    def add_norm(where: str) -> None:
        if not layers:
            raise SpecError(f"spec {original!r}: 'bn' must follow a layer")
        layers[-1] = with_norm(layers[-1], f"spec {original!r}")

    def widths(token: str) -> list[Layer]:
        out: list[Layer] = []
        for w in token.split(","):
            n = sum(isinstance(layer, Linear) for layer in layers) + len(out) + 1
            if int(w) < 1 or int(w) > MAX_WIDTH:
                raise SpecError(f"hidden layer {n} width must be an integer between 1 and {MAX_WIDTH}, got {w}")
            out.append(Linear(int(w)))
        return out

    if kind == "mlp":
        if tokens == ["linear"]:
            tokens = []
        for token in tokens:
            if _WIDTHS.match(token):
                layers += widths(token)
            elif token == "bn":
                add_norm(token)
            elif m := Dropout.pattern.match(token):
                layers.append(Dropout.from_match(m))
            else:
                raise SpecError(
                    f"mlp spec {original!r}: expected comma-separated widths (bn, dropout d0.2) then an activation"
                )
        return Spec("mlp", tuple(layers), activation)
    in_head = False
    for token in tokens:
        if m := _FC.match(token):
            in_head = True
            layers += widths(m[1]) if m[1] else []
        elif token == "bn":
            add_norm(token)
        elif (layer := _trunk_layer(token)) is not None and (not in_head or isinstance(layer, Dropout)):
            layers.append(layer)
        elif in_head:
            raise SpecError(f"cnn spec {original!r}: only fc, bn and dropout may follow the fc head, not {token!r}")
        else:
            raise SpecError(
                f"cnn spec {original!r}: cannot read token {token!r} (conv 6c5, pool p2, residual r32, gap, "
                "head fc128,64)"
            )
    return Spec("cnn", tuple(layers), activation)


_MLP_KEYS = {"kind", "hidden", "layers", "activation"}
_CNN_KEYS = {"kind", "layers", "fc", "head", "activation"}


def _layers_from_tables(entries: Any, where: str) -> list[Layer]:
    if not isinstance(entries, list):
        raise SpecError(f"{where} must be a list of tables")
    out: list[Layer] = []
    for entry in entries:
        if not isinstance(entry, Mapping):
            raise SpecError(f"{where}: {entry!r} is not a table")
        if entry.get("bn") is True and len(entry) == 1:  # { bn = true } on its own: like the token
            if not out:
                raise SpecError(f"{where}: 'bn' must follow a layer")
            out[-1] = with_norm(out[-1], where)
            continue
        kinds = [key for key in entry if key in LAYERS]
        if len(kinds) != 1:
            known = ", ".join(sorted(LAYERS))
            raise SpecError(f"{where}: layer {dict(entry)!r} needs exactly one of the keys {known}")
        cls = LAYERS[kinds[0]]
        if unknown := set(entry) - {cls.kind, *cls.fields_toml}:
            raise SpecError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} for a {cls.kind} layer")
        out.append(cls.from_table(entry))
    return out


def spec_from_dict(data: Mapping[str, Any]) -> Spec:
    """Build a spec from a TOML table / JSON object (the inverse of ``to_dict``); a ``spec`` string also works."""
    if "spec" in data and len(data) == 1:
        return parse_spec(str(data["spec"]))
    kind = data.get("kind")
    activation = str(data.get("activation", "relu"))
    if kind == "mlp":
        if unknown := set(data) - _MLP_KEYS:
            raise SpecError(f"unknown key(s) for an mlp spec: {', '.join(sorted(unknown))}")
        if "layers" in data:
            return Spec("mlp", tuple(_layers_from_tables(data["layers"], "mlp layers")), activation)
        return Spec("mlp", tuple(Linear(w) for w in data.get("hidden", ())), activation)
    if kind == "cnn":
        if unknown := set(data) - _CNN_KEYS:
            raise SpecError(f"unknown key(s) for a cnn spec: {', '.join(sorted(unknown))}")
        if "fc" in data and "head" in data:
            raise SpecError("a cnn spec takes 'fc' (widths) or 'head' (layer tables), not both")
        trunk = _layers_from_tables(data.get("layers", []), "cnn layers")
        head = (
            _layers_from_tables(data["head"], "cnn head") if "head" in data else [Linear(w) for w in data.get("fc", ())]
        )
        return Spec("cnn", (*trunk, *head), activation)
    raise SpecError(f"spec table needs kind = 'mlp' or 'cnn', got {kind!r}")


def mlp(hidden: Sequence[int] = (), activation: str = "relu") -> Spec:
    """An MLP of plain hidden layers (the report's MLPs)."""
    return Spec("mlp", tuple(Linear(w) for w in hidden), activation)


def cnn(trunk: Sequence[Layer], fc: Sequence[int] = (), activation: str = "relu") -> Spec:
    """A CNN of the given trunk layers and plain fully connected layers."""
    return Spec("cnn", (*trunk, *(Linear(w) for w in fc)), activation)
