"""Checkpoints without Optuna or the engine: load an exported model safely, re-evaluate it, classify images.

Imports only :mod:`archsearch.core`, :mod:`archsearch.data` and :mod:`archsearch.models` (the plain builder), so a
checkpoint can be used where nothing else of archsearch's training stack is wanted.
"""

from archsearch.export.checkpoint import (
    CHECKPOINT_FORMAT,
    CONFIG_FILE,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    check_state_dict,
    evaluate_checkpoint,
    load_checkpoint,
    predict_images,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "check_state_dict",
    "evaluate_checkpoint",
    "load_checkpoint",
    "predict_images",
]
