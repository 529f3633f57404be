"""How to train: the report's protocol as the defaults, and every recipe option a search may open.

This is the one place the protocol's defaults are written (AdamW, lr 3e-4, weight decay 1e-3, batch 32, 50 epochs,
cross-entropy): the CLI's option defaults, reproduce, the search spaces and the trainer all read them from here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from archsearch.core.errors import UserError

__all__ = [
    "LOSSES",
    "OPTIMIZERS",
    "REPORT_FIRST_SEED",
    "REPORT_PROTOCOL",
    "REPORT_RUNS",
    "SCHEDULES",
    "Augment",
    "Protocol",
    "ProtocolError",
]

LOSSES = ("ce", "kl")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("constant", "cosine", "onecycle")


class ProtocolError(UserError):
    """A training option out of range; the message names it."""


@dataclass(frozen=True)
class Augment:
    """Data augmentation on the device, drawn per run from the run's own generator (see archsearch.engine.augment).

    ``crop``: pad by this many pixels (zeros) and crop back at a random offset; ``flip``: mirror left-right with
    probability 1/2; ``erase``: probability of random erasing (a rectangle of 2-33% of the image set to 0).
    """

    crop: int = 0
    flip: bool = False
    erase: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.crop, bool) or not isinstance(self.crop, int) or not 0 <= self.crop <= 16:
            raise ProtocolError(f"augment crop padding must be an integer from 0 to 16, got {self.crop!r}")
        if not isinstance(self.flip, bool):
            raise ProtocolError(f"augment flip must be true or false, got {self.flip!r}")
        if not _number(self.erase) or not 0.0 <= self.erase <= 1.0:
            raise ProtocolError(f"augment erase probability must be in [0, 1], got {self.erase!r}")

    @property
    def active(self) -> bool:
        return bool(self.crop or self.flip or self.erase)

    def __str__(self) -> str:
        parts = [f"crop{self.crop}"] if self.crop else []
        parts += ["flip"] if self.flip else []
        parts += [f"erase{self.erase:g}"] if self.erase else []
        return "+".join(parts) or "none"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Protocol:
    """How to train; every default is the report's protocol. Fused runs of one trial share it."""

    epochs: int = 50
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 1e-3
    loss: Literal["ce", "kl"] = "ce"
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = 0.9  # SGD only: Nesterov momentum
    schedule: Literal["constant", "cosine", "onecycle"] = "constant"
    warmup_epochs: float = 0.0  # linear warm-up of the learning rate (constant and cosine schedules)
    label_smoothing: float = 0.0
    augment: Augment = field(default_factory=Augment)
    # Weight averaging: after every step, ema <- d*ema + (1-d)*weights (BatchNorm statistics too), d = min(ema,
    # (1+step)/(10+step)) so that early steps are not tied to the initialisation; 0 is off. The averaged weights are
    # what is evaluated, kept and exported.
    ema: float = 0.0
    # Test-time augmentation: every evaluation averages the logits of each image and its left-right mirror.
    tta: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ProtocolError(f"{name} must be a positive integer, got {value!r}")
        if not _number(self.lr) or self.lr <= 0:
            raise ProtocolError(f"learning rate must be positive, got {self.lr!r}")
        if not _number(self.weight_decay) or self.weight_decay < 0:
            raise ProtocolError(f"weight decay must be >= 0, got {self.weight_decay!r}")
        if self.loss not in LOSSES:
            raise ProtocolError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ProtocolError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not _number(self.momentum) or not 0 <= self.momentum < 1:
            raise ProtocolError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.schedule not in SCHEDULES:
            raise ProtocolError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not _number(self.warmup_epochs) or not 0 <= self.warmup_epochs <= self.epochs:
            raise ProtocolError(f"warm-up must be between 0 and {self.epochs} epochs, got {self.warmup_epochs!r}")
        if not _number(self.label_smoothing) or not 0 <= self.label_smoothing < 1:
            raise ProtocolError(f"label smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if not _number(self.ema) or not (self.ema == 0 or 0.5 <= self.ema < 1):
            raise ProtocolError(f"ema decay must be 0 (off) or in [0.5, 1), got {self.ema!r}")
        if not isinstance(self.tta, bool):
            raise ProtocolError(f"tta must be true or false, got {self.tta!r}")
        if not isinstance(self.augment, Augment):
            raise ProtocolError("augment must be an Augment")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Protocol:
        """The inverse of ``to_dict``; keys it does not know are refused, missing ones take the defaults (so a
        protocol recorded before an option existed reads back as what it was)."""
        known = {f.name for f in fields(cls)}
        if unknown := set(data) - known:
            raise ProtocolError(f"unknown protocol key(s): {', '.join(sorted(unknown))}")
        values = dict(data)
        if isinstance(values.get("augment"), Mapping):
            values["augment"] = Augment(**values["augment"])
        return cls(**values)

    def with_(self, **changes: Any) -> Protocol:
        return replace(self, **changes)

    def deviations(self, reference: Protocol | None = None) -> list[str]:
        """Every option that differs from ``reference`` (the report's protocol), in words."""
        ref = reference or REPORT_PROTOCOL
        out = []
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(ref, f.name)
            if mine != theirs:
                out.append(f"{f.name} {mine} (report: {theirs})")
        return out


REPORT_PROTOCOL = Protocol()
REPORT_RUNS, REPORT_FIRST_SEED = 5, 42  # the report's "mean of 5 runs", seed 42
