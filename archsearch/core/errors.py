"""Errors a user can fix. The CLI prints them as one line and exits with code 2; anything else is a bug."""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """Bad input (a spec, a file, a storage URL, missing data): one clear line, exit code 2, no traceback."""
