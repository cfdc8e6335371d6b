"""Saved hidden states: in results while a run is in progress, and in ``.npy`` files after it.

The state of a record is the model's final-normed hidden state at the position that predicts its
label (:meth:`classification.lm.HiddenStateModel.context_hidden` of its direct context).  While a
run is in progress each result carries its row as base64 float16 (``hidden_b64``), so resume and
data-parallel gathering work as for every other result; the finished run writes them as one
float16 ``.npy`` (one row per input record, in record order; named by
:func:`classification.paths.hidden_path`).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from classification.errors import ClassificationError, writing
from classification.methods import record_contexts
from classification.paths import staging_path


def attach_hidden(
    lm: Any, records: Sequence[Dict[str, Any]], results: List[Dict[str, Any]], completion_end: str = "eos"
) -> None:
    """Add each record's label-predicting hidden state to its result (base64 float16, ``hidden_b64``)."""
    contexts = record_contexts(lm, records, completion_end)
    states = np.asarray(lm.context_hidden(contexts), dtype=np.float32).astype(np.float16)
    for result, row in zip(results, states):
        result["hidden_b64"] = base64.b64encode(row.tobytes()).decode("ascii")


def save_hidden(path: str, results: Sequence[Dict[str, Any]]) -> None:
    """Write the ``hidden_b64`` rows of ``results`` (record order) as one float16 (n, dim) ``.npy``."""
    rows = [np.frombuffer(base64.b64decode(r["hidden_b64"]), dtype=np.float16) for r in results]
    tmp = staging_path(Path(path))
    with writing(path):
        np.save(tmp, np.stack(rows))
        tmp.replace(path)


def load_hidden(path: str, n: int, what: str, hint: str) -> np.ndarray:
    """(n, dim) float32 hidden states from ``path``; one-line error when missing, of another size,
    or holding a NaN or infinity (damaged bytes; a calibration fitted on them would be NaN)."""
    if not Path(path).is_file():
        raise ClassificationError(f"{what} has no saved hidden states ({path} not found); {hint}")
    try:
        states = np.load(path)
    except (OSError, ValueError, EOFError) as e:
        cause = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ClassificationError(f"{path}: cannot read hidden states: {cause}; {hint}") from None
    if states.ndim != 2 or states.shape[0] != n or not np.issubdtype(states.dtype, np.floating):
        raise ClassificationError(f"{path} holds hidden states of shape {states.shape} ({states.dtype}), expected "
                                  f"{n} rows of floats; {hint}")
    bad = np.nonzero(~np.isfinite(states).all(axis=1))[0]
    if len(bad):
        raise ClassificationError(f"{path}: the hidden states of {len(bad)} record(s) (first: row {bad[0]}) hold NaN "
                                  f"or infinite values; {hint}")
    return states.astype(np.float32)
