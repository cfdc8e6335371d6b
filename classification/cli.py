"""Script helpers: bad input becomes ``error: <message>`` on stderr and exit status 2."""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable, List, TypeVar

from classification.errors import ClassificationError
from llama.errors import CheckpointError
from llama.tokenizer import TokenizerError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_BAD_INPUT = 2


def cli(fn: F) -> F:
    """Decorate a script's ``main``: bad input (a :class:`ClassificationError`, or a checkpoint or
    tokenizer that cannot be used) prints one line and exits 2.

    The signature and docstring stay ``fn``'s, so ``fire.Fire(main)`` and ``--help`` still work.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ClassificationError, CheckpointError, TokenizerError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)

    return wrapper  # type: ignore[return-value]


def run_main(fn: Callable[..., Any]) -> None:
    """``fire.Fire(fn)`` with :func:`cli`'s error handling."""
    import fire

    fire.Fire(cli(fn))


def as_list(value: Any) -> Any:
    """A list flag as fire may hand it over: a list, or a string ``"[a, b]"`` that fire could not
    parse (paths, words with spaces) -> ``["a", "b"]``; ``"a,b"`` -> ``["a", "b"]``.  Anything
    else is returned unchanged."""
    if not isinstance(value, str):
        return list(value) if isinstance(value, tuple) else value
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            parsed = json.loads(text)
            if isinstance(parsed, list):
                return parsed
        except (ValueError, RecursionError):
            pass
        text = text[1:-1]
    elif "," not in text:
        return value
    items: List[str] = [part.strip().strip("'\"").strip() for part in text.split(",")]
    return [item for item in items if item]
