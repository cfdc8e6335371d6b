"""File helpers shared by preprocessing and evaluation: atomic JSON writes, early output checks."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple

from classification.errors import ClassificationError, writing
from llama.verify import file_hash


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: str, obj: Any, indent: Optional[int] = None) -> None:
    """Write ``obj`` as JSON to ``path`` via a temporary file in the same folder and ``os.replace``
    (a full disk or an unwritable folder: one-line :class:`ClassificationError`, ``path`` untouched)."""
    target = Path(path)
    with writing(path):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=str(target.parent), prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(obj, f, ensure_ascii=False, indent=indent)
                f.write("\n")
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def same_file(a: str, b: str) -> bool:
    """Whether two paths name one file: the same once resolved, or one file under two names."""
    if Path(a).resolve() == Path(b).resolve():
        return True
    try:
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


def check_not_inputs(outputs: Sequence[Tuple[str, Optional[str]]], inputs: Sequence[Tuple[str, Optional[str]]]) -> None:
    """One line if a run would write any of its ``outputs`` over one of its ``inputs`` (each a
    (what, path) pair, e.g. ("--data_path", "in.json")), before anything is written."""
    for out_what, out in outputs:
        for in_what, source in inputs:
            if out and source and same_file(out, source):
                raise ClassificationError(
                    f"{out_what} {out} would overwrite an input file ({in_what} {source}) of this run; "
                    "choose another path"
                )


def check_output_path(path: str, flag: str = "--output_path", inputs: Sequence[str] = ()) -> None:
    """Fail now, before any long work, if ``path`` cannot be written (creates missing folders) or
    is one of the ``inputs`` (:func:`check_not_inputs` checks derived outputs too)."""
    p = Path(path)
    if p.is_dir():
        raise ClassificationError(f"{flag} {path} is a directory; give a .json file path")
    check_not_inputs([(flag, path)], [("input", other) for other in inputs])
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=str(p.parent), prefix=f".{p.name}.", suffix=".check")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ClassificationError(f"{flag} {path}: cannot write to {p.parent}: {e.strerror or e}") from None


def file_sha256(path: str) -> str:
    """sha256 of a whole file."""
    return file_hash(path, "sha256")
