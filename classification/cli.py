"""Script helpers: bad input becomes ``error: <message>`` on stderr and exit status 2."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, TypeVar

from classification.errors import ClassificationError
from llama.checkpoint import CheckpointError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_BAD_INPUT = 2


def cli(fn: F) -> F:
    """Decorate a script's ``main``: bad input (a :class:`ClassificationError`, or a checkpoint
    that cannot be used) prints one line and exits 2.

    The signature and docstring stay ``fn``'s, so ``fire.Fire(main)`` and ``--help`` still work.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ClassificationError, CheckpointError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)

    return wrapper  # type: ignore[return-value]


def run_main(fn: Callable[..., Any]) -> None:
    """``fire.Fire(fn)`` with :func:`cli`'s error handling."""
    import fire

    fire.Fire(cli(fn))
