"""File helpers shared by preprocessing and evaluation: atomic JSON writes, early output checks."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

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


def check_output_path(path: str, flag: str = "--output_path", inputs: Sequence[str] = ()) -> None:
    """Fail now, before any long work, if ``path`` cannot be written (creates missing folders)."""
    p = Path(path)
    if p.is_dir():
        raise ClassificationError(f"{flag} {path} is a directory; give a .json file path")
    for other in inputs:
        if other and p.resolve() == Path(other).resolve():
            raise ClassificationError(f"{flag} {path} would overwrite an input file; choose another path")
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
