"""JSON output shared by every command: strict JSON (no NaN, which ``json.dumps`` would otherwise emit)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["dumps", "plain"]


def plain(value: Any) -> Any:
    """JSON-ready: NaN/inf become None (JSON has no NaN), numpy/torch scalars Python numbers, tuples lists."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value: Any) -> str:
    return json.dumps(plain(value), indent=2, allow_nan=False) + "\n"
