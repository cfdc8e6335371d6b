"""File helpers shared by preprocessing and evaluation: atomic JSON writes, early output checks."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

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


# Files up to this size are hashed whole; larger ones (weights) by size, mtime and their ends.
WHOLE_HASH_BYTES = 64 << 20
END_BYTES = 1 << 20


def file_digest(path: str) -> Dict[str, Any]:
    """What identifies a file's content cheaply: its sha256, or for a large file its size, mtime
    and a hash of its first and last MiB (so a file rewritten in place with the same size fails)."""
    st = os.stat(path)
    if st.st_size <= WHOLE_HASH_BYTES:
        return {"sha256": file_sha256(path)}
    h = hashlib.sha256()  # over two reads, so not file_sha256
    with open(path, "rb") as f:
        h.update(f.read(END_BYTES))
        f.seek(-END_BYTES, os.SEEK_END)
        h.update(f.read(END_BYTES))
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ends_sha256": h.hexdigest()}


def files_fingerprint(path: str) -> Dict[str, Any]:
    """:func:`file_digest` of a file, or of every file in a folder (by name); a missing path is
    recorded as missing (a model given as an object, in tests)."""
    p = Path(path)
    if p.is_file():
        return file_digest(str(p))
    if p.is_dir():
        return {f.name: file_digest(str(f)) for f in sorted(p.iterdir()) if f.is_file() and not f.name.startswith(".")}
    return {"missing": str(path)}


def files_digest(paths: Sequence[str]) -> str:
    """One sha256 over the :func:`files_fingerprint` of each path (e.g. a model and its tokenizer)."""
    prints = json.dumps([files_fingerprint(p) for p in paths], sort_keys=True)
    return hashlib.sha256(prints.encode()).hexdigest()
