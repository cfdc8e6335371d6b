"""The one exception type for bad input: scripts turn it into `error: ...` and exit status 2."""

from __future__ import annotations

import contextlib
import errno
from typing import Any, Iterator, Optional


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


def json_cause(e: ValueError) -> str:
    """The cause of a ``json`` ValueError in a few words: a JSONDecodeError's message, or for an
    integer of more digits than Python converts, that limit (without its advice to raise it)."""
    text = str(e).split(";")[0].strip()
    return text or type(e).__name__


@contextlib.contextmanager
def writing(path: Any, flag: str = "") -> Iterator[None]:
    """Turn an OSError raised while writing ``path`` (a full disk, a read-only folder) into one
    line naming the file, the cause and the fix; a partly written file stays as the writer left it."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            fix = "free some space and run again (finished work is kept)"
        elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            fix = "choose a folder you can write to"
        else:
            fix = "check the path and run again"
        where = f"{flag} {path}" if flag else str(path)
        raise ClassificationError(f"{where}: cannot write: {e.strerror or e}; {fix}") from None
