"""Saved hidden states: in results while a run is in progress, and in ``.npy`` files after it.

The states of a record are the model's hidden states at the position that predicts its label:
those of a few layers (:meth:`classification.lm.HiddenStateModel.context_states` of its direct
context; the last one is the final-normed state), or of the final-normed state alone for a model
without layers (``context_hidden``).  While a run is in progress each result carries them as
base64 float16 (``hidden_b64``, with ``hidden_layers``: the layer numbers), so resume and
data-parallel gathering work as for every other result; the finished run writes them as one
float16 ``.npy`` in record order (named by :func:`classification.paths.hidden_path`):
(n, layers, dim), or (n, dim) without layers, as every file before layers were saved.  The layer
numbers go into the run's metrics (``hidden_layers``, read back by :func:`saved_layers`).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from classification.errors import ClassificationError, writing
from classification.methods import record_contexts
from classification.paths import hidden_path, metrics_path, staging_path


def attach_hidden(
    lm: Any, records: Sequence[Dict[str, Any]], results: List[Dict[str, Any]], completion_end: str = "eos"
) -> None:
    """Add each record's label-predicting hidden states to its result (base64 float16, ``hidden_b64``;
    ``hidden_layers`` when the model has layers)."""
    contexts = record_contexts(lm, records, completion_end)
    layers = getattr(lm, "hidden_layers", None)
    with_layers = layers is not None and callable(getattr(lm, "context_states", None))
    found = lm.context_states(contexts) if with_layers else lm.context_hidden(contexts)
    states = np.asarray(found, dtype=np.float32).astype(np.float16)
    for result, row in zip(results, states):
        result["hidden_b64"] = base64.b64encode(row.tobytes()).decode("ascii")
        if with_layers:
            result["hidden_layers"] = [int(i) for i in layers]


def save_hidden(path: str, results: Sequence[Dict[str, Any]]) -> None:
    """Write the ``hidden_b64`` rows of ``results`` (record order) as one float16 ``.npy``:
    (n, layers, dim) when they carry ``hidden_layers``, else (n, dim)."""
    rows = [np.frombuffer(base64.b64decode(r["hidden_b64"]), dtype=np.float16) for r in results]
    rows = [row.reshape(len(r["hidden_layers"]), -1) if "hidden_layers" in r else row for r, row in zip(results, rows)]
    tmp = staging_path(Path(path))
    with writing(path):
        np.save(tmp, np.stack(rows))
        tmp.replace(path)


def load_hidden(path: str, n: int, what: str, hint: str) -> np.ndarray:
    """(n, dim) or (n, layers, dim) float32 hidden states from ``path``; one-line error when
    missing, of another size, or holding a NaN or infinity (damaged bytes; a calibration fitted
    on them would be NaN)."""
    if not Path(path).is_file():
        raise ClassificationError(f"{what} has no saved hidden states ({path} not found); {hint}")
    try:
        states = np.load(path)
    except (OSError, ValueError, EOFError) as e:
        cause = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ClassificationError(f"{path}: cannot read hidden states: {cause}; {hint}") from None
    if states.ndim not in (2, 3) or states.shape[0] != n or not np.issubdtype(states.dtype, np.floating):
        raise ClassificationError(f"{path} holds hidden states of shape {states.shape} ({states.dtype}), expected "
                                  f"{n} rows of floats; {hint}")
    bad = np.nonzero(~np.isfinite(states).reshape(n, -1).all(axis=1))[0]
    if len(bad):
        raise ClassificationError(f"{path}: the hidden states of {len(bad)} record(s) (first: row {bad[0]}) hold NaN "
                                  f"or infinite values; {hint}")
    return states.astype(np.float32)


def saved_layers(output_path: str, metrics: Dict[str, Any], states: np.ndarray) -> Optional[List[int]]:
    """The layer numbers of the states ``output_path``'s run saved (``states``, as loaded; ``metrics``:
    that run's, as read by the caller): None for an (n, dim) file (the final-normed state alone);
    for (n, layers, dim), their ``hidden_layers`` (one-line error when they do not name one layer
    per saved state)."""
    if states.ndim == 2:
        return None
    layers = metrics.get("hidden_layers")
    if not isinstance(layers, list) or len(layers) != states.shape[1] or not all(isinstance(i, int) for i in layers):
        raise ClassificationError(
            f"{metrics_path(output_path)} does not name the {states.shape[1]} layers of the states in "
            f"{hidden_path(output_path)} (hidden_layers: {layers!r}); rerun the direct run of {output_path} with "
            "--save_hidden"
        )
    return layers
