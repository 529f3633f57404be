"""The foundation every layer stands on: errors users can fix, strict JSON, bundled resources, image shapes and the
training protocol with its defaults. Imports nothing else of archsearch."""

from archsearch.core.errors import UserError
from archsearch.core.jsonio import dumps, plain
from archsearch.core.protocol import REPORT_FIRST_SEED, REPORT_PROTOCOL, REPORT_RUNS, Augment, Protocol, ProtocolError
from archsearch.core.resources import read_toml, studies_dir
from archsearch.core.shapes import FASHION_MNIST_SHAPE, Shape

__all__ = [
    "FASHION_MNIST_SHAPE",
    "REPORT_FIRST_SEED",
    "REPORT_PROTOCOL",
    "REPORT_RUNS",
    "Augment",
    "Protocol",
    "ProtocolError",
    "Shape",
    "UserError",
    "dumps",
    "plain",
    "read_toml",
    "studies_dir",
]
