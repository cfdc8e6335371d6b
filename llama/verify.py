"""Checks that a checkpoint is what it claims to be, before any number is computed with it.

- :func:`verify_checklist`: Meta's ``checklist.chk`` (``<md5>  <file name>`` lines) against the files.
- :func:`check_vocab`: the tokenizer's vocabulary must fit the embedding exactly, allowing only
  the usual padding of the embedding rows to a multiple of 64, 128 or 256.
- :func:`check_params_match_config`: a Meta ``params.json`` beside an HF ``config.json`` must agree.
- :func:`check_finite`: every loaded tensor is finite.

Each raises :class:`llama.checkpoint.CheckpointError`-compatible ``ValueError``s with one line.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, Optional, Tuple

from llama.tokenizer import gguf_field, open_gguf

if TYPE_CHECKING:  # torch is imported only where tensors are checked (preprocessing never needs it)
    from torch import Tensor

CHECKLIST = "checklist.chk"
PADDING_MULTIPLES = (64, 128, 256)


class VerifyError(ValueError):
    """A checkpoint that fails a check; the message names the file, the values and the fix."""


def file_hash(path: str | Path, algorithm: str = "sha256", progress: Optional[Any] = None) -> str:
    """Hex digest of a whole file read in 4 MiB blocks; ``progress.update(n)`` per block if given."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
            if progress is not None:
                progress.update(len(block))
    return h.hexdigest()


def read_checklist(ckpt_dir: Path) -> Dict[str, str]:
    """{file name: md5} from ``checklist.chk`` (empty when there is none)."""
    path = ckpt_dir / CHECKLIST
    if not path.is_file():
        return {}
    entries: Dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or len(parts[0]) != 32:
            raise VerifyError(f"{path}:{n}: expected '<md5>  <file name>', got {line.strip()!r}")
        entries[parts[1].lstrip("*")] = parts[0].lower()
    return entries


def verify_checklist(ckpt_dir: str | Path, show_progress: bool = True) -> int:
    """Check every file listed in ``checklist.chk`` by its md5; returns how many were checked."""
    from tqdm import tqdm

    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return 0
    entries = read_checklist(folder)
    if not entries:
        return 0
    missing = [name for name in entries if not (folder / name).is_file()]
    if missing:
        raise VerifyError(f"{folder / missing[0]} is listed in {CHECKLIST} but missing; copy the whole checkpoint")
    total = sum((folder / name).stat().st_size for name in entries)
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"md5 {CHECKLIST}", disable=not show_progress) as bar:
        for name, want in entries.items():
            got = file_hash(folder / name, "md5", bar)
            if got != want:
                raise VerifyError(
                    f"{folder / name}: md5 {got} differs from {want} in {CHECKLIST}: the file is corrupted or "
                    "from another checkpoint; download it again (--verify_checkpoint False skips this check)"
                )
    return len(entries)


def allowed_rows(n_words: int) -> Tuple[int, ...]:
    """Embedding sizes a vocabulary of ``n_words`` tokens may come with."""
    return tuple(sorted({n_words} | {math.ceil(n_words / m) * m for m in PADDING_MULTIPLES}))


def check_vocab(n_words: int, rows: int, path: str) -> None:
    """The tokenizer (``n_words`` tokens, special tokens included) must belong to an embedding of ``rows``."""
    if rows not in allowed_rows(n_words):
        raise VerifyError(
            f"the tokenizer has {n_words} tokens but the checkpoint at {path} has a {rows}-row embedding "
            f"(it fits {', '.join(map(str, allowed_rows(n_words)))}): pass the --tokenizer_path that belongs "
            "to this checkpoint"
        )


# params.json key -> HF config.json key
_PARAMS_VS_CONFIG = {"dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
                     "n_kv_heads": "num_key_value_heads", "vocab_size": "vocab_size"}


def check_params_match_config(ckpt_dir: str | Path) -> None:
    """When a folder holds both Meta ``params.json`` and HF ``config.json``, they must agree."""
    folder = Path(ckpt_dir)
    params_path, config_path = folder / "params.json", folder / "config.json"
    if not (params_path.is_file() and config_path.is_file()):
        return
    try:
        params, config = json.loads(params_path.read_text()), json.loads(config_path.read_text())
    except (ValueError, RecursionError, OSError):
        return  # the reader reports unreadable files
    if not isinstance(params, dict) or not isinstance(config, dict):
        return
    if params.get("n_kv_heads") is None and "n_heads" in params:
        params = {**params, "n_kv_heads": params["n_heads"]}
    for key, hf_key in _PARAMS_VS_CONFIG.items():
        a, b = params.get(key), config.get(hf_key)
        if a is not None and b is not None and a != -1 and a != b:
            raise VerifyError(
                f"{params_path} says {key} {a} but {config_path} says {hf_key} {b}; remove the file that does "
                "not belong to these weights"
            )


def trained_context(path: str | Path) -> Tuple[Optional[int], str]:
    """(context length the model was trained for, where it was read) from an HF ``config.json``
    (``max_position_embeddings``) or GGUF metadata (``<arch>.context_length``); (None, "") when
    the checkpoint does not say (Meta's params.json does not)."""
    p = Path(path)
    config = p / "config.json"
    if p.is_dir() and config.is_file():
        try:
            value = json.loads(config.read_text()).get("max_position_embeddings")
        except (ValueError, RecursionError, OSError, AttributeError):
            value = None  # the loader reports a config.json it cannot read
        return (int(value), str(config)) if isinstance(value, int) else (None, "")
    gguf_files = [p] if p.suffix == ".gguf" else sorted(p.glob("*.gguf")) if p.is_dir() else []
    if gguf_files and gguf_files[0].is_file():
        reader = open_gguf(gguf_files[0], VerifyError)  # a damaged file: one line, before any loading
        value = gguf_field(reader, f"{gguf_field(reader, 'general.architecture', 'llama')}.context_length")
        ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        return (value, str(gguf_files[0])) if ok else (None, "")
    return None, ""


# Elements checked at a time: the check's bool mask stays at 16 MiB instead of one byte per weight
# (0.5 GiB for an 8B model's embedding).
FINITE_BLOCK = 1 << 24


def tensor_is_finite(t: "Tensor", block: int = FINITE_BLOCK) -> bool:
    """Whether every element of ``t`` is finite, checked ``block`` elements at a time."""
    import torch

    flat = t.reshape(-1)  # a view for the contiguous tensors checkpoints hold
    for i in range(0, flat.numel(), block):
        part = flat[i: i + block]
        # One read, no bool copy: a NaN or inf makes the sum non-finite.  A finite block can only
        # overflow the float32 sum, so only a non-finite sum takes the exact element-wise check.
        if not torch.isfinite(part.sum(dtype=torch.float32)) and not torch.isfinite(part).all():
            return False
    return True


def check_finite(tensors: Iterable[Tuple[str, "Tensor"]], path: str) -> None:
    """Every floating-point tensor must hold only finite values (corrupted bytes decode to inf/NaN)."""
    for name, t in tensors:
        if t.is_floating_point() and t.device.type != "meta" and not tensor_is_finite(t):
            raise VerifyError(
                f"{path}: tensor {name} holds inf or NaN values; the checkpoint is corrupted, download it again"
            )
