"""Where the bundled ``studies/`` folder lives, in a source checkout and in an installed wheel."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from archsearch.core.errors import UserError

__all__ = ["read_toml", "studies_dir"]


def studies_dir() -> Path:
    """A wheel carries ``studies/`` as ``archsearch/_studies`` (pyproject.toml); a checkout has it beside it."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_studies", package.parent / "studies"):
        if candidate.is_dir():
            return candidate
    raise UserError("archsearch's bundled studies/ folder is missing; reinstall archsearch")


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file; a syntax error becomes a one-line ``UserError`` naming the file, line and column."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"file not found: {path}") from None
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: TOML syntax error: {err}") from None
