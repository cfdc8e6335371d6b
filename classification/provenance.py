"""What each derived file was made from, and the checks its readers make before they use it.

A run's metrics file is the record of everything the run read and wrote: its ``fingerprint``
(the sha256 of its input records, the content digests of the model and tokenizer files, dtype,
device, quantize mode and every setting that changes numbers) and the sha256 of each file it
wrote (``output_sha256``, ``hidden_sha256``).  A reader of a run's files

- takes them only with the metrics of the run that wrote them (:func:`read_metrics`,
  :func:`check_written`): a file left from another run, or rewritten by a run killed half way, has
  another hash;
- checks that run's fingerprint against what it needs (:func:`check_same_model`: the hidden states
  and label log-probs of one model, precision and quantization are not comparable with another's).

A mismatch is one line naming both sides and the fix.  Input records carry theirs in ``meta``
(:func:`check_same_prompt` for anchors); the embeddings cache in its file
(:class:`classification.inputs.retrieval.EmbeddingCache`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from classification.errors import ClassificationError
from classification.fileio import file_sha256
from classification.paths import hidden_path, metrics_path

# The fingerprint entries that make two runs' numbers comparable: the same weights and tokenizer
# (content), precision, quantization (and its CPU kernel) and truncation length.
MODEL_KEYS = ("model_files", "tokenizer_files", "dtype", "quantize", "int8_kernel", "max_seq_len")

# Record meta that varies between the test records and the anchors of one preprocessing.
_NOT_PROMPT_META = ("split", "anchor", "sample_seed")

# What each file a run writes is called in its metrics, and how it is named beside the output.
WRITTEN = {"hidden": ("hidden_sha256", hidden_path, "hidden states", "--save_hidden")}


def read_metrics(output_path: str) -> Optional[Dict[str, Any]]:
    """The metrics written beside ``output_path`` when they belong to that very output file
    (their ``output_sha256``), else None: a kill between the two writes leaves a mismatched pair."""
    try:
        with open(metrics_path(output_path), encoding="utf-8") as f:
            metrics = json.load(f)
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(metrics, dict) or not Path(output_path).is_file():
        return None
    if metrics.get("output_sha256") != file_sha256(output_path):
        return None
    return metrics


def written_problem(output_path: str, metrics: Dict[str, Any], kind: str) -> Optional[str]:
    """Why the ``kind`` file beside ``output_path`` is not the one its run wrote (None: it is)."""
    key, path_of, what, flag = WRITTEN[kind]
    path = path_of(output_path)
    recorded = metrics.get(key)
    if recorded is None:
        return f"the run of {output_path} saved no {what} (run without {flag}; see {metrics_path(output_path)})"
    if not Path(path).is_file():
        return f"{path} is missing (the run of {output_path} wrote it)"
    found = file_sha256(path)
    if found != recorded:
        return (f"{path} is not the file the run of {output_path} wrote (sha256 {found[:12]}, its metrics say "
                f"{str(recorded)[:12]}): it is left from another run or was changed since")
    return None


def check_written(output_path: str, metrics: Dict[str, Any], kind: str, fix: str) -> str:
    """The path of the ``kind`` file beside ``output_path`` after checking it is what the run wrote."""
    problem = written_problem(output_path, metrics, kind)
    if problem is not None:
        raise ClassificationError(f"{problem}; {fix}")
    return WRITTEN[kind][1](output_path)


def short(value: Any) -> str:
    """A fingerprint value as a message shows it: files by a short hash of their digests."""
    if isinstance(value, (dict, list)):
        digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
        return f"files {digest[:12]}"
    return repr(value)


def model_differences(made_with: Dict[str, Any], needed: Dict[str, Any]) -> List[str]:
    """``key: found vs needed`` for each :data:`MODEL_KEYS` entry in which two fingerprints differ."""
    return [f"{key} {short(made_with.get(key))} vs {short(needed.get(key))}" for key in MODEL_KEYS
            if made_with.get(key) != needed.get(key)]


def check_same_model(made_with: Dict[str, Any], needed: Dict[str, Any], what: str, fix: str) -> None:
    """One line when the run that made ``what`` (fingerprint ``made_with``) used another model,
    tokenizer, precision, quantization or ``max_seq_len`` than ``needed``."""
    differ = model_differences(made_with, needed)
    if differ:
        raise ClassificationError(f"{what} was made with another model or precision than this run "
                                  f"({'; '.join(differ)}); {fix}")


def check_same_prompt(anchors: Sequence[Dict[str, Any]], records: Sequence[Dict[str, Any]], anchors_file: str,
                      records_file: str) -> None:
    """Anchors must come from the preprocessing of the test records: the same label words (in
    order), dataset, seed, demonstrations and template (their ``meta``) and, when the test records
    share one prompt, that prompt."""
    fix = "preprocess again with --n_anchor M to write both from one run"
    words, want = list(anchors[0]["label_words"]), list(records[0]["label_words"])
    if words != want:
        raise ClassificationError(
            f"anchor records {anchors_file} have label words {words}, the test records {records_file} {want}; "
            f"they come from another preprocessing: {fix}")
    meta, test_meta = anchors[0].get("meta"), records[0].get("meta")
    if isinstance(meta, dict) and isinstance(test_meta, dict):
        keys = sorted((set(meta) | set(test_meta)) - set(_NOT_PROMPT_META))
        differ = [f"{k} {meta.get(k)!r} vs {test_meta.get(k)!r}" for k in keys if meta.get(k) != test_meta.get(k)]
        if differ:
            raise ClassificationError(
                f"anchor records {anchors_file} were made by another preprocessing than {records_file} "
                f"({'; '.join(differ)}); {fix}")
    prompts = {r["prompt"] for r in records}
    if len(prompts) == 1 and "demo_indices" not in anchors[0] and anchors[0]["prompt"] not in prompts:
        raise ClassificationError(
            f"anchor records {anchors_file} have another prompt (demonstrations) than the test records "
            f"{records_file}; {fix}")
