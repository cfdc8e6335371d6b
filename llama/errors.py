"""Errors of the model layer that callers catch without importing torch (``llama.checkpoint`` does)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the fix."""
