"""Native kernels, compiled on first use: libxsmm's small products and the C training step of ReLU MLPs (gemm,
``_xsmm.c``), a CNN's first convolution (conv, ``_conv.c``), and the loader that builds and caches them."""

from archsearch.engine.native import conv, gemm, loader

__all__ = ["conv", "gemm", "loader"]
