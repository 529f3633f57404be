"""archsearch: reproduce, trust and extend architecture comparisons of small PyTorch models on Fashion-MNIST."""

__all__ = ["__version__"]

__version__ = "0.1.0"
