"""The shape of what a model sees: image channels and size. Datasets describe their images with it, models are built
for it, so a spec adapts to the data it is trained on."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FASHION_MNIST_SHAPE", "Shape"]


@dataclass(frozen=True)
class Shape:
    """(channels, height, width) of one image, or of the feature map after a layer."""

    channels: int
    height: int
    width: int

    @property
    def features(self) -> int:
        """Values per image when flattened."""
        return self.channels * self.height * self.width

    def __str__(self) -> str:
        return f"{self.channels}x{self.height}x{self.width}"


FASHION_MNIST_SHAPE = Shape(1, 28, 28)
