"""One resumable, data-parallel evaluation loop shared by the four ``run_evaluate_*`` scripts.

:func:`evaluate` reads and checks the inputs, checks that the output can be written, loads the
model (or takes a given :class:`~classification.lm.LanguageModel`), scores the records in chunks
and writes, on the main rank:

- ``output_path``: one JSON record per input record, same order (``index``, ``ground_truth``,
  ``prediction``, ``correct``, ``log_probs``, ``shortened``, and ``generation`` for generate);
- ``<output stem>.metrics.json``: accuracy, macro-F1, per-class scores, confusion matrix, ECE
  and reliability bins of the normalized label probabilities, "none" count, the run's settings,
  the dataset/k/seed of the inputs (their ``meta``) and the run's fingerprint.

``reuse=True`` returns the metrics of a finished run with the same fingerprint without scoring
(the seeds command uses it to skip what is done).

Resume: every finished chunk is appended to ``<output_path>.partial.jsonl`` (one file per
data-parallel rank, ``<output_path>.partial.<rank>.jsonl``, when there are several), whose first
line is a fingerprint of everything that changes the results.  A rerun with the same arguments
skips what those files hold, so a run killed half way loses at most the chunk in flight and
scores nothing twice; a fingerprint mismatch starts over.  The files go once the output is
written (atomically).  Batch size, chunk size, device and data-parallel size are not part of the
fingerprint: the predictions do not depend on them.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from tqdm import tqdm

from classification import anchors, hidden, methods
from classification.errors import ClassificationError
from classification.fileio import check_output_path, file_sha256, write_json_atomic
from classification.lm import LanguageModel
from classification.metrics import calibration_metrics, classification_metrics
from classification.records import METHODS, load_direct_outputs, load_records
from classification.scoring import SCORING_MODES as SCORINGS

DEFAULT_CKPT_DIR = "checkpoints/smollm2/135M"
DEFAULT_TOKENIZER_PATH = "checkpoints/smollm2/tokenizer.json"
CHUNK_SIZE = 64
PARTIAL_VERSION = 1

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


def metrics_path(output_path: str) -> str:
    """``samples/outputs_x.json`` -> ``samples/outputs_x.metrics.json``."""
    return str(Path(output_path).with_suffix(".metrics.json"))


def partial_path(output_path: str, dp_rank: int = 0, dp_size: int = 1) -> str:
    """The JSONL file a data-parallel rank appends its finished results to."""
    return f"{output_path}.partial.jsonl" if dp_size == 1 else f"{output_path}.partial.{dp_rank}.jsonl"


def shard(positions: Sequence[int], dp_rank: int, dp_size: int) -> List[int]:
    """A data-parallel rank's share: every ``dp_size``-th position starting at ``dp_rank``."""
    return list(positions[dp_rank::dp_size])


def load_model(
    ckpt_dir: str,
    tokenizer_path: str,
    max_seq_len: int,
    max_batch_size: int,
    dtype: Optional[str],
    device: Optional[str],
    scoring: str,
    append_eos: bool,
) -> Tuple[LanguageModel, Any]:
    """Load the real model and its runtime (``classification.scoring.load_lm``)."""
    for flag, path in (("--ckpt_dir", ckpt_dir), ("--tokenizer_path", tokenizer_path)):
        if not Path(path).exists():
            raise ClassificationError(f"{flag} {path} does not exist; run `make setup` or pass {flag}")
    from classification.scoring import load_lm

    return load_lm(
        ckpt_dir,
        tokenizer_path,
        max_seq_len,
        max_batch_size,
        dtype,
        device,
        scoring=scoring,
        append_eos=append_eos,
    )


# ---------------------------------------------------------------------------------------------
# Partial results


def read_partials(
    output_path: str, fingerprint: Dict[str, Any], n: int
) -> Tuple[Dict[int, Result], Dict[str, List[str]]]:
    """Results already in partial files made with ``fingerprint``; also each file's valid lines.

    Lines that do not parse (a line cut short by a kill) are skipped; files with another
    fingerprint are ignored.
    """
    done: Dict[int, Result] = {}
    lines_by_file: Dict[str, List[str]] = {}
    for path in sorted(glob.glob(glob.escape(output_path) + ".partial*.jsonl")):
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().split("\n")
        except OSError:
            continue
        try:
            header = json.loads(lines[0])
        except (json.JSONDecodeError, IndexError):
            continue
        if not isinstance(header, dict) or header.get("fingerprint") != fingerprint:
            continue
        kept = [lines[0]]
        for line in lines[1:]:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            pos = entry.get("pos") if isinstance(entry, dict) else None
            if not isinstance(pos, int) or not 0 <= pos < n or not isinstance(entry.get("result"), dict):
                continue
            kept.append(line)
            done.setdefault(pos, entry["result"])
        lines_by_file[path] = kept
    return done, lines_by_file


class PartialWriter:
    """Appends finished results to one rank's partial file (flushed and synced per chunk)."""

    def __init__(self, path: str, fingerprint: Dict[str, Any], keep_lines: Optional[List[str]]) -> None:
        self.path = path
        lines = keep_lines or [json.dumps({"version": PARTIAL_VERSION, "fingerprint": fingerprint})]
        target = Path(path)
        fd, tmp = tempfile.mkstemp(dir=str(target.parent), prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, target)
        self.file = open(path, "a", encoding="utf-8")

    def append(self, entries: Sequence[Tuple[int, Result]]) -> None:
        for pos, result in entries:
            self.file.write(json.dumps({"pos": pos, "result": result}) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


# ---------------------------------------------------------------------------------------------
# The loop


def _content_free_list(content_free: Union[None, str, Sequence[Any]], calibration: str = "na") -> List[str]:
    if content_free is None:
        return list(methods.CBU_CONTENT_FREE if calibration == "cbu" else methods.DEFAULT_CONTENT_FREE)
    if isinstance(content_free, str):
        return [content_free]
    if isinstance(content_free, (list, tuple)):
        return [str(x) for x in content_free]
    return [str(content_free)]


def _check_flags(
    method: str, scoring: str, completion_end: str, max_seq_len: int, max_batch_size: int,
    max_gen_len: int, temperature: float, top_p: float, chunk_size: int,
) -> None:
    if method not in METHODS:
        raise ClassificationError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if scoring not in SCORINGS:
        raise ClassificationError(f"--scoring {scoring!r} is not one of {', '.join(SCORINGS)}")
    methods.completion_suffix(completion_end)
    for flag, value in (("--max_seq_len", max_seq_len), ("--max_batch_size", max_batch_size),
                        ("--max_gen_len", max_gen_len), ("chunk_size", chunk_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ClassificationError(f"{flag} must be a positive integer, got {value!r}")
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ClassificationError(f"--temperature must be 0 (greedy) or more, got {temperature!r}")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ClassificationError(f"--top_p must be in (0, 1], got {top_p!r}")


def _check_direct_run(direct_output_path: str, completion_end: str) -> None:
    """Calibration must score content-free inputs the way the direct run scored labels."""
    path = metrics_path(direct_output_path)
    try:
        with open(path, encoding="utf-8") as f:
            used = json.load(f).get("completion_end")
    except (OSError, ValueError, AttributeError):
        return
    if used is not None and used != completion_end:
        raise ClassificationError(
            f"the direct outputs were scored with --completion_end {used} (see {path}); "
            f"pass --completion_end {used} to calibrate them"
        )


def run_resumable(
    score: Callable[[List[int]], List[Result]],
    order: Sequence[int],
    output_path: str,
    fingerprint: Dict[str, Any],
    runtime: Any,
    chunk_size: int = CHUNK_SIZE,
    desc: str = "",
) -> Optional[Tuple[Dict[int, Result], int]]:
    """Score every position of ``order`` once, in chunks, across data-parallel ranks, resumably.

    Positions already in partial files with this ``fingerprint`` are skipped; the rest are
    strided over the ranks (:func:`shard`), and each rank appends its results to its own partial
    file after every chunk.  Returns ({position: result}, number resumed) on the main rank, None
    on the others.
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
            for i in range(0, len(mine), chunk_size):
                positions = mine[i : i + chunk_size]
                entries = list(zip(positions, score(positions)))
                if writer is not None:
                    writer.append(entries)
                new.extend(entries)
                bar.update(len(positions))
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


def build_outputs(records: Sequence[Dict[str, Any]], results: Dict[int, Result], method: str) -> List[Dict[str, Any]]:
    """One output record per input record, in input order."""
    outputs = []
    for pos, rec in enumerate(records):
        r = results[pos]
        out = {
            "index": rec["index"],
            "ground_truth": rec["ground_truth"],
            "prediction": r["prediction"],
            "correct": r["prediction"] == rec["ground_truth"],
            "log_probs": r.get("log_probs"),
            "shortened": bool(r.get("shortened", False)),
        }
        if method == "generate":
            out["generation"] = r.get("generation", "")
        outputs.append(out)
    return outputs


def _check_calibration(
    calibration: str, content_free: Any, domain_premise: Optional[str], batch_size: Optional[int]
) -> None:
    if calibration not in methods.CALIBRATIONS + anchors.CALIBRATIONS:
        names = ", ".join(methods.CALIBRATIONS + anchors.CALIBRATIONS)
        raise ClassificationError(f"--calibration {calibration!r} is not one of {names}")
    if content_free is not None and calibration not in ("na", "cbu"):
        raise ClassificationError(f"--content_free applies to --calibration na or cbu, not {calibration}")
    if domain_premise is not None and calibration != "dcpmi":
        raise ClassificationError(f"--domain_premise applies to --calibration dcpmi, not {calibration}")
    if batch_size is not None:
        if calibration != "batch":
            raise ClassificationError(f"--batch_size applies to --calibration batch, not {calibration}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ClassificationError(f"--batch_size must be a positive integer, got {batch_size!r}")


def _finished(output_path: str, fingerprint: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The metrics of a finished run with this fingerprint, else None."""
    try:
        with open(metrics_path(output_path), encoding="utf-8") as f:
            metrics = json.load(f)
    except (OSError, ValueError):
        return None
    if isinstance(metrics, dict) and metrics.get("fingerprint") == fingerprint and Path(output_path).is_file():
        return metrics
    return None


def evaluate(
    method: str,
    data_path: str,
    output_path: str,
    ckpt_dir: str = DEFAULT_CKPT_DIR,
    tokenizer_path: str = DEFAULT_TOKENIZER_PATH,
    max_seq_len: int = 2048,
    max_batch_size: int = 16,
    dtype: Optional[str] = None,
    device: Optional[str] = None,
    scoring: str = "fast",
    completion_end: str = "eos",
    direct_output_path: Optional[str] = None,
    content_free: Union[None, str, Sequence[str]] = None,
    calibration: str = "na",
    domain_premise: Optional[str] = None,
    batch_size: Optional[int] = None,
    max_gen_len: int = 10,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 1,
    chunk_size: int = CHUNK_SIZE,
    lm: Optional[LanguageModel] = None,
    runtime: Optional[Any] = None,
    reuse: bool = False,
    save_hidden: bool = False,
    n_anchor: Optional[int] = None,
    knn_k: int = anchors.DEFAULT_KNN_K,
) -> Optional[Dict[str, Any]]:
    """Classify the records of ``data_path`` with ``method`` and write ``output_path`` + metrics.

    ``method``: direct, calibrate, channel or generate.  For calibrate, ``data_path`` is the
    direct input file and ``direct_output_path`` the direct run's output, whose ``log_probs``
    are re-scored with ``calibration`` (na, cbu, dcpmi or batch; see
    :mod:`classification.methods`; hidden, lda or knn with ``n_anchor``/``knn_k``: see
    :mod:`classification.anchors`) without a second pass over the test set.  ``save_hidden``
    (direct): also write each record's label-predicting hidden state (:mod:`classification.hidden`).
    ``lm``/``runtime``: use this language model (and runtime; default single process) instead of loading
    ``ckpt_dir``.  Returns the metrics on the main rank, None elsewhere.
    """
    start = time.time()
    _check_flags(
        method, scoring, completion_end, max_seq_len, max_batch_size, max_gen_len, temperature, top_p, chunk_size
    )
    is_calibrate = method == "calibrate"
    if is_calibrate:
        _check_calibration(calibration, content_free, domain_premise, batch_size)
    if save_hidden and method != "direct":
        raise ClassificationError(f"--save_hidden applies to the direct method, not {method}")
    anchored = None
    if is_calibrate and calibration in anchors.CALIBRATIONS:
        anchored = anchors.AnchorCalibration(calibration, n_anchor, knn_k)
    if anchored is None and (n_anchor is not None or knn_k != anchors.DEFAULT_KNN_K):
        raise ClassificationError("--n_anchor and --knn_k apply to --calibration hidden, lda or knn")
    cf_texts = _content_free_list(content_free, calibration)
    records = load_records(data_path, method)
    label_words: List[str] = records[0]["label_words"]
    direct_outputs: List[Dict[str, Any]] = []
    inputs = [data_path]
    if is_calibrate:
        if not direct_output_path:
            raise ClassificationError(
                f"calibration {calibration} needs --direct_output_path (the output of run_evaluate_direct_llama.py "
                "on --direct_input_path)"
            )
        if calibration in ("na", "cbu") and not cf_texts:
            raise ClassificationError("--content_free needs at least one content-free text, e.g. N/A")
        direct_outputs = load_direct_outputs(direct_output_path, records)
        _check_direct_run(direct_output_path, completion_end)
        inputs.append(direct_output_path)
    anchor_fingerprint = anchored.check(data_path, direct_output_path, len(records)) if anchored else {}
    check_output_path(output_path, inputs=inputs)
    premise = None
    if is_calibrate and calibration == "dcpmi":
        premise = domain_premise if domain_premise is not None else methods.default_domain_premise(records[0])
        if not isinstance(premise, str) or not premise.strip():
            raise ClassificationError("--domain_premise must be a non-empty text, e.g. Category:")

    fingerprint: Dict[str, Any] = {
        "method": method,
        "data_sha256": file_sha256(data_path),
        "ckpt_dir": ckpt_dir,
        "tokenizer_path": tokenizer_path,
        "max_seq_len": max_seq_len,
        "dtype": dtype,
        "scoring": scoring,
    }
    if method == "generate":
        fingerprint.update(max_gen_len=max_gen_len, temperature=temperature, top_p=top_p, seed=seed)
    else:
        fingerprint["completion_end"] = completion_end
    if is_calibrate:
        assert direct_output_path is not None
        fingerprint.update(calibration=calibration, direct_output_sha256=file_sha256(direct_output_path))
        if calibration in ("na", "cbu"):
            fingerprint["content_free"] = cf_texts
        elif calibration == "dcpmi":
            fingerprint["domain_premise"] = premise
        else:
            fingerprint["batch_size"] = batch_size
        fingerprint.update(anchor_fingerprint)
    if save_hidden:
        fingerprint["save_hidden"] = True
    if reuse:
        done = _finished(output_path, fingerprint)
        if done is not None and (not save_hidden or Path(hidden.hidden_path(output_path)).is_file()):
            if runtime is None or runtime.is_main:
                print(f"Up to date: {output_path} (accuracy {done['accuracy']:.4f})")
            return done if runtime is None or runtime.is_main else None

    needs_model = not (is_calibrate and calibration == "batch")
    if lm is None and needs_model:
        if dtype is not None:
            from llama.runtime import DTYPES

            if str(dtype).lower() not in DTYPES:
                raise ClassificationError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        lm, runtime = load_model(
            ckpt_dir, tokenizer_path, max_seq_len, max_batch_size, dtype, device, scoring,
            append_eos=completion_end == "eos",
        )
    elif lm is not None and method != "generate" and bool(lm.append_eos) != (completion_end == "eos"):
        raise ClassificationError(
            f"--completion_end {completion_end} needs a model built with append_eos={completion_end == 'eos'}"
        )
    runtime = runtime if runtime is not None else LocalRuntime()
    if anchored is not None:
        anchored.prepare(lm, runtime, dict(
            ckpt_dir=ckpt_dir, tokenizer_path=tokenizer_path, max_seq_len=max_seq_len, max_batch_size=max_batch_size,
            dtype=dtype, device=device, scoring=scoring, completion_end=completion_end, chunk_size=chunk_size))

    cache: Dict[Tuple[str, str], List[float]] = {}
    batch_lp: List[List[float]] = []
    if is_calibrate and calibration == "batch":
        batch_lp = methods.batch_calibrate([o["log_probs"] for o in direct_outputs], batch_size)

    def calibrated(p: int, rec: Dict[str, Any]) -> Result:
        direct_lp = direct_outputs[p]["log_probs"]
        extra: Dict[str, Any] = {}
        if anchored is not None:
            log_probs = anchored.apply(p)
        elif calibration == "batch":
            log_probs = batch_lp[p]
        elif calibration == "dcpmi":
            assert premise is not None
            key = (premise, rec["completion"])
            if key not in cache:
                cache[key] = methods.premise_log_probs(lm, rec, premise, completion_end)
            log_probs = methods.dcpmi_log_probs(direct_lp, cache[key])
            extra["premise_log_probs"] = cache[key]
        else:
            key = (rec["prompt"], rec["completion"])
            if key not in cache:
                cache[key] = methods.content_free_probs(lm, rec, cf_texts, completion_end)
            log_probs = methods.calibrate_log_probs(direct_lp, cache[key])
            extra["p_cf"] = cache[key]
        return {
            "log_probs": log_probs,
            "prediction": label_words[methods.argmax(log_probs)],
            "shortened": bool(direct_outputs[p].get("shortened", False)),
            **extra,
        }

    def score(positions: List[int]) -> List[Result]:
        chunk = [records[p] for p in positions]
        if method in ("direct", "channel"):
            results = getattr(methods, method)(lm, chunk, completion_end)
            if save_hidden:
                hidden.attach_hidden(lm, chunk, results, completion_end)
            return results
        if method == "generate":
            return methods.generate(lm, chunk, max_gen_len, temperature, top_p, seed)
        return [calibrated(p, rec) for p, rec in zip(positions, chunk)]

    # Longest texts first (even batches, early failure on memory); ties in record order.
    order = sorted(range(len(records)), key=lambda p: (-len(records[p]["text"]), p))
    gathered = run_resumable(score, order, output_path, fingerprint, runtime, chunk_size, desc=method)
    metrics: Optional[Dict[str, Any]] = None
    if gathered is not None:
        results, n_resumed = gathered
        outputs = build_outputs(records, results, method)
        if save_hidden:
            hidden.save_hidden(hidden.hidden_path(output_path), [results[p] for p in range(len(records))])
        truth = [o["ground_truth"] for o in outputs]
        metrics = classification_metrics(
            truth, [o["prediction"] for o in outputs], label_words, none_column=method == "generate"
        )
        metrics.update(calibration_metrics([o["log_probs"] for o in outputs], truth, label_words))
        meta = records[0].get("meta")
        if isinstance(meta, dict):
            metrics.update({key: meta.get(key) for key in ("dataset", "k", "seed", "sample_seed")})
        metrics.update(
            method=method,
            model=ckpt_dir,
            tokenizer=tokenizer_path,
            data_path=data_path,
            output_path=output_path,
            n_shortened=sum(o["shortened"] for o in outputs),
            n_resumed=n_resumed,
            wall_time_s=round(time.time() - start, 3),
            max_seq_len=max_seq_len,
            dtype=dtype,
            device=device,
            scoring=scoring,
            dp_size=int(runtime.dp_size),
        )
        if method == "generate":
            metrics.update(max_gen_len=max_gen_len, temperature=temperature, top_p=top_p)
        else:
            metrics["completion_end"] = completion_end
        if is_calibrate:
            metrics.update(calibration=calibration, direct_output_path=direct_output_path)
            if calibration in ("na", "cbu"):
                metrics.update(content_free=cf_texts, content_free_probs=results[0].get("p_cf"))
            elif calibration == "dcpmi":
                metrics.update(domain_premise=premise, premise_log_probs=results[0].get("premise_log_probs"))
            elif anchored is not None:
                metrics.update(anchored.summary())
            else:
                means = methods.batch_means([o["log_probs"] for o in direct_outputs], batch_size)
                metrics.update(batch_size=batch_size, batch_mean_log_probs=means[0])
        if save_hidden:
            metrics["hidden_path"] = hidden.hidden_path(output_path)
        metrics["fingerprint"] = fingerprint
        write_json_atomic(output_path, outputs, indent=2)
        write_json_atomic(metrics_path(output_path), metrics, indent=2)
        for path in glob.glob(glob.escape(output_path) + ".partial*.jsonl"):
            os.unlink(path)
        print(f"Accuracy: {metrics['accuracy']:.4f}")
        if metrics["ece"] is not None:
            print(f"Expected calibration error: {metrics['ece']:.4f}")
        if method == "generate":
            print(f"Unparsed generations (none): {metrics['n_none']}")
        if metrics["n_shortened"]:
            print(f"Shortened test texts: {metrics['n_shortened']}")
        print(f"Wrote {output_path} and {metrics_path(output_path)}")
    runtime.barrier()
    return metrics
