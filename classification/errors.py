"""The one exception type for bad input: scripts turn it into `error: ...` and exit status 2."""

from __future__ import annotations


from typing import Any, Optional


class ClassificationError(ValueError):
    """A problem with the user's input (files, flags, records) that a message can explain.

    The message is one line that names the problem and, where there is one, the fix.
    """


def check_int(flag: str, value: Any, least: Optional[int] = None) -> None:
    """One-line error unless ``value`` is an integer (a bool is not) of at least ``least``."""
    if isinstance(value, int) and not isinstance(value, bool) and (least is None or value >= least):
        return
    need = {None: "an integer", 0: "an integer, 0 or more", 1: "a positive integer"}.get(
        least, f"an integer of at least {least}")
    raise ClassificationError(f"{flag} must be {need}, got {value!r}")
