"""Errors of the model layer that callers catch without importing torch (``llama.checkpoint`` does)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


def first_line(e: BaseException) -> str:
    """An exception's first message line (its type's name when it has none), for one-line errors."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
