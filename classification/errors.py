"""The one exception type for bad input: scripts turn it into `error: ...` and exit status 2."""

from __future__ import annotations


class ClassificationError(ValueError):
    """A problem with the user's input (files, flags, records) that a message can explain.

    The message is one line that names the problem and, where there is one, the fix.
    """
