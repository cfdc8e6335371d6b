"""Resumable, data-parallel scoring: partial files, their writer, fingerprints and sharding.

Every finished chunk is appended to ``<output_path>.partial.jsonl`` (one file per data-parallel
rank, ``<output_path>.partial.<rank>.jsonl``, when there are several: :mod:`classification.paths`), whose first line is a
fingerprint of everything that changes the results.  A rerun with the same fingerprint skips what
those files hold, so a run killed half way loses at most the chunk in flight and scores nothing
twice; a fingerprint mismatch starts over.  The files go once the output is written.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

from classification.errors import writing
from classification.fileio import file_sha256, write_json_atomic
from classification.paths import metrics_path, partial_files, partial_path
from classification.provenance import read_metrics

CHUNK_SIZE = 64
SAVE_EVERY_S = 10.0
PARTIAL_VERSION = 2

Result = Dict[str, Any]


@dataclass
class LocalRuntime:
    """The single-process stand-in for :class:`llama.runtime.Runtime` (rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    mp_size: int = 1

    mp_rank = property(lambda self: 0)
    dp_rank = property(lambda self: 0)
    dp_size = property(lambda self: 1)
    is_main = property(lambda self: True)

    def all_gather_object(self, obj: Any) -> List[Any]:
        return [obj]

    def barrier(self) -> None:
        pass


def shard(positions: Sequence[int], dp_rank: int, dp_size: int) -> List[int]:
    """A data-parallel rank's share: every ``dp_size``-th position starting at ``dp_rank``."""
    return list(positions[dp_rank::dp_size])


def differing_keys(old: Any, new: Dict[str, Any]) -> List[str]:
    """The top-level fingerprint keys whose values differ (all of them when ``old`` is no dict)."""
    if not isinstance(old, dict):
        return sorted(new)
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def all_finite(result: Result) -> bool:
    lps = result.get("log_probs")
    return lps is None or all(isinstance(x, (int, float)) and math.isfinite(x) for x in lps)


def read_partials(
    output_path: str, fingerprint: Dict[str, Any], n: int
) -> Tuple[Dict[int, Result], Dict[str, List[str]]]:
    """Results already in partial files made with ``fingerprint``; also each file's valid lines.

    Lines that do not parse (a line cut short by a kill) or hold a non-finite score are skipped;
    files with another fingerprint are ignored, with one line saying what changed.
    """
    done: Dict[int, Result] = {}
    lines_by_file: Dict[str, List[str]] = {}
    stale: List[str] = []
    for path in partial_files(output_path):
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().split("\n")
        except OSError:
            continue
        try:
            header = json.loads(lines[0])
        except (ValueError, RecursionError, IndexError):  # also too deep, or an over-long integer
            continue
        if not isinstance(header, dict) or header.get("fingerprint") != fingerprint:
            old = header.get("fingerprint") if isinstance(header, dict) else None
            stale.extend(k for k in differing_keys(old, fingerprint) if k not in stale)
            continue
        kept = [lines[0]]
        for line in lines[1:]:
            try:
                entry = json.loads(line)
            except (ValueError, RecursionError):
                continue
            pos = entry.get("pos") if isinstance(entry, dict) else None
            if not isinstance(pos, int) or not 0 <= pos < n or not isinstance(entry.get("result"), dict):
                continue
            if not all_finite(entry["result"]):
                continue
            kept.append(line)
            done.setdefault(pos, entry["result"])
        lines_by_file[path] = kept
    if stale and not done:
        print(f"Starting over: the partial results of {output_path} were made with another {', '.join(stale)}")
    return done, lines_by_file


class PartialWriter:
    """Appends finished results to one rank's partial file (flushed and synced per chunk)."""

    def __init__(self, path: str, fingerprint: Dict[str, Any], keep_lines: Optional[List[str]]) -> None:
        self.path = path
        lines = keep_lines or [json.dumps({"version": PARTIAL_VERSION, "fingerprint": fingerprint})]
        target = Path(path)
        with writing(path):
            fd, tmp = tempfile.mkstemp(dir=str(target.parent), prefix=f".{target.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write("\n".join(lines) + "\n")
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            self.file = open(path, "a", encoding="utf-8")

    def append(self, entries: Sequence[Tuple[int, Result]]) -> None:
        """Append and sync; a full disk is one line, and the lines synced before stay."""
        with writing(self.path):
            for pos, result in entries:
                self.file.write(json.dumps({"pos": pos, "result": result}) + "\n")
            self.file.flush()
            os.fsync(self.file.fileno())

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:  # only what a failed append could not write is lost; it was reported then
            pass


def run_resumable(
    score: Callable[[List[int]], List[Result]],
    order: Sequence[int],
    output_path: str,
    fingerprint: Dict[str, Any],
    runtime: Any,
    chunk_size: int = CHUNK_SIZE,
    desc: str = "",
    save_every_s: Optional[float] = SAVE_EVERY_S,
    min_chunk: int = 16,
) -> Optional[Tuple[Dict[int, Result], int]]:
    """Score every position of ``order`` once, in chunks, across data-parallel ranks, resumably.

    Positions already in partial files with this ``fingerprint`` are skipped; the rest are
    strided over the ranks (:func:`shard`), and each rank appends its results to its own partial
    file after every chunk.  A chunk is at most ``chunk_size`` examples and, at the measured
    speed, about ``save_every_s`` seconds of work, but at least ``min_chunk`` examples (the
    model's batch, so saving often costs no batching); the first chunk is ``min_chunk``.  So a
    killed run of any size keeps what it finished.  ``save_every_s=None``: every chunk is
    ``min_chunk`` examples whatever the speed, for models whose results depend on which rows
    share a forward pass (the chunks then never depend on the machine's load).  Returns ({position: result}, number resumed) on the
    main rank, None on the others.
    """
    is_main = bool(runtime.is_main)
    dp_rank, dp_size = int(runtime.dp_rank), int(runtime.dp_size)
    done, lines_by_file = read_partials(output_path, fingerprint, len(order))
    runtime.barrier()  # every rank has read the partial files before any rank rewrites its own
    mine = shard([p for p in order if p not in done], dp_rank, dp_size)
    if is_main and done:
        print(f"Resuming: {len(done)} of {len(order)} examples already scored in {output_path}.partial*")
    own = partial_path(output_path, dp_rank, dp_size)
    # Model-parallel ranks of one group score the same share; one of them writes it down.
    writer = PartialWriter(own, fingerprint, lines_by_file.get(own)) if getattr(runtime, "mp_rank", 0) == 0 else None
    new: List[Tuple[int, Result]] = []
    try:
        with tqdm(total=len(mine), desc=desc, unit="ex", disable=not is_main) as bar:
            floor = max(1, min(chunk_size, min_chunk))
            i, size = 0, floor
            while i < len(mine):
                positions = mine[i : i + size]
                tick = time.monotonic()
                entries = list(zip(positions, score(positions)))
                if writer is not None:
                    writer.append(entries)
                new.extend(entries)
                bar.update(len(positions))
                i += len(positions)
                if save_every_s is not None:
                    per_example = max(time.monotonic() - tick, 1e-6) / len(positions)
                    size = max(floor, min(chunk_size, int(save_every_s / per_example)))
    finally:
        if writer is not None:
            writer.close()
    gathered = runtime.all_gather_object(new)
    if not is_main:
        return None
    results = dict(done)
    for part in gathered:
        for pos, result in part:
            results.setdefault(pos, result)
    missing = [p for p in order if p not in results]
    if missing:
        raise RuntimeError(f"{len(missing)} examples have no result (first: record {missing[0]})")
    return results, len(done)


def finished(output_path: str, fingerprint: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The metrics of a finished run with this fingerprint, else None."""
    metrics = read_metrics(output_path)
    if metrics is not None and metrics.get("fingerprint") == fingerprint:
        return metrics
    return None


def write_finished(output_path: str, outputs: Any, metrics: Dict[str, Any]) -> None:
    """Write the output, then its metrics carrying the output's hash, then drop the partials."""
    write_json_atomic(output_path, outputs, indent=2)
    metrics["output_sha256"] = file_sha256(output_path)
    write_json_atomic(metrics_path(output_path), metrics, indent=2)
    for path in partial_files(output_path):
        os.unlink(path)
