"""One evaluation loop shared by the four ``run_evaluate_*`` scripts.

:func:`evaluate` reads and checks the inputs, checks that the output can be written, loads the
model (or takes a given :class:`~classification.lm.LanguageModel`), scores the records
resumably (:mod:`classification.run.resume`) and writes, on the main rank:

- ``output_path``: one JSON record per input record, same order (``index``, ``ground_truth``,
  ``prediction``, ``correct``, ``log_probs``, ``shortened``, and ``generation`` for generate);
- ``<output stem>.metrics.json``: accuracy, macro-F1, per-class scores, confusion matrix, ECE
  and reliability bins of the normalized label probabilities, "none" count, the run's settings,
  the dataset/k/seed of the inputs (their ``meta``) and the run's fingerprint.

``reuse=True`` returns the metrics of a finished run with the same fingerprint without scoring
(the seeds command uses it to skip what is done).  Calibrations are objects of
:mod:`classification.calibrations`.  Batch size, chunk size and data-parallel size are not part
of the fingerprint: the predictions do not depend on them.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from classification import methods
from classification.backend import hidden
from classification.calibrations import Calibration, CalibrationOptions, calibration_class
from classification.errors import ClassificationError, check_int
from classification.fileio import check_output_path, file_sha256
from classification.lm import LanguageModel
from classification.metrics import calibration_metrics, classification_metrics
from classification.methods import METHODS
from classification.records import load_direct_outputs, load_records
from classification.run.resume import (
    CHUNK_SIZE, SAVE_EVERY_S, LocalRuntime, all_finite, files_fingerprint, finished, metrics_path, read_metrics,
    run_resumable, write_finished,
)
from classification.backend.scoring import SCORING_MODES as SCORINGS
from llama.quantize import QUANTIZE_MODES

__all__ = ["evaluate", "load_model", "metrics_path", "DEFAULT_CKPT_DIR"]

DEFAULT_CKPT_DIR = "checkpoints/smollm2/135M"
DEFAULT_TOKENIZER_PATH = "checkpoints/smollm2/tokenizer.json"
MODEL_CHECK_FRACTION = 0.75  # see check_model_fits

Result = Dict[str, Any]


def load_model(
    ckpt_dir: str,
    tokenizer_path: str,
    max_seq_len: int,
    max_batch_size: int,
    dtype: Optional[str],
    device: Optional[str],
    scoring: str,
    append_eos: bool,
    verify_checkpoint: Optional[bool] = None,
    model_parallel_size: Optional[int] = None,
    quantize: str = "none",
) -> Tuple[LanguageModel, Any]:
    """Load the real model and its runtime (``classification.backend.scoring.load_lm``), after checking
    the files against Meta's ``checklist.chk`` when ``verify_checkpoint`` (None: when there is one)."""
    for flag, path in (("--ckpt_dir", ckpt_dir), ("--tokenizer_path", tokenizer_path)):
        if not Path(path).exists():
            raise ClassificationError(f"{flag} {path} does not exist; run `make setup` or pass {flag}")
    if verify_checkpoint is not False:
        from llama.verify import CHECKLIST, VerifyError, verify_checklist

        if verify_checkpoint and not (Path(ckpt_dir) / CHECKLIST).is_file():
            raise ClassificationError(f"--verify_checkpoint: {ckpt_dir} has no {CHECKLIST} to verify against")
        try:
            verify_checklist(ckpt_dir, show_progress=int(os.environ.get("RANK", "0")) == 0)
        except VerifyError as e:
            raise ClassificationError(str(e)) from None
    if dtype is not None:
        from llama.runtime import DTYPES

        if str(dtype).lower() not in DTYPES:
            raise ClassificationError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    from llama.verify import trained_context

    context, source = trained_context(ckpt_dir)
    if context is not None and max_seq_len > context:
        print(f"warning: --max_seq_len {max_seq_len} is above the {context} tokens the model was trained for "
              f"({source}); longer prompts are extrapolated: pass --max_seq_len {context}", file=sys.stderr)
    from classification.backend.scoring import load_lm

    return load_lm(
        ckpt_dir,
        tokenizer_path,
        max_seq_len,
        max_batch_size,
        dtype,
        device,
        scoring=scoring,
        append_eos=append_eos,
        model_parallel_size=model_parallel_size,
        quantize=quantize,
    )


# ---------------------------------------------------------------------------------------------
# Checks


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
        check_int(flag, value, 1)
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ClassificationError(f"--temperature must be 0 (greedy) or more, got {temperature!r}")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ClassificationError(f"--top_p must be in (0, 1], got {top_p!r}")


def _check_direct_run(direct_output_path: str, data_path: str, completion_end: str) -> None:
    """The direct outputs must come from this very input file (the input hash their metrics
    record), and calibration must score content-free inputs the way the direct run scored labels."""
    path = metrics_path(direct_output_path)
    metrics = read_metrics(direct_output_path)
    rerun = f"rerun run_evaluate_direct_llama.py --data_path {data_path} --output_path {direct_output_path}"
    if metrics is None:
        raise ClassificationError(
            f"--direct_output_path {direct_output_path}: no metrics file {path} of that very output to show "
            f"which inputs it came from; {rerun}"
        )
    recorded = (metrics.get("fingerprint") or {}).get("data_sha256")
    if recorded != file_sha256(data_path):
        raise ClassificationError(
            f"--direct_output_path {direct_output_path} was produced from other inputs than {data_path} "
            f"(input sha256 {str(recorded)[:12]}, not {file_sha256(data_path)[:12]}); {rerun}"
        )
    used = metrics.get("completion_end")
    if used is not None and used != completion_end:
        raise ClassificationError(
            f"the direct outputs were scored with --completion_end {used} (see {path}); "
            f"pass --completion_end {used} to calibrate them"
        )


# ---------------------------------------------------------------------------------------------
# Scoring and outputs


def make_scorer(
    method: str,
    lm: Optional[LanguageModel],
    records: Sequence[Dict[str, Any]],
    completion_end: str,
    calibration: Optional[Calibration] = None,
    direct_outputs: Sequence[Dict[str, Any]] = (),
    generation: Optional[Dict[str, Any]] = None,
    save_hidden: bool = False,
) -> Callable[[List[int]], List[Result]]:
    """positions -> results for ``method`` (calibrations are prepared here, once); ``save_hidden``:
    each result also carries its label-predicting hidden state (:func:`classification.backend.hidden.attach_hidden`)."""
    label_words: List[str] = records[0]["label_words"]
    if hasattr(lm, "keep_hidden"):
        # The hidden states come from the scoring pass, not a second one.  Set on every run: one
        # model object can serve several (seeds, anchors), and states nobody takes would pile up.
        lm.keep_hidden = save_hidden
    if calibration is not None:
        direct_lp = [o["log_probs"] for o in direct_outputs]
        calibration.prepare(lm, records, direct_lp)

        def calibrated(positions: List[int]) -> List[Result]:
            out = []
            for p in positions:
                result = calibration.apply(p, records[p], direct_lp[p])
                result["prediction"] = label_words[methods.argmax(result["log_probs"])]
                result["shortened"] = bool(direct_outputs[p].get("shortened", False))
                out.append(result)
            return out

        return calibrated
    if method == "generate":
        return lambda positions: methods.generate(lm, [records[p] for p in positions], **(generation or {}))
    score_fn = getattr(methods, method)

    def scored(positions: List[int]) -> List[Result]:
        chunk = [records[p] for p in positions]
        results = score_fn(lm, chunk, completion_end)
        if save_hidden:
            hidden.attach_hidden(lm, chunk, results, completion_end)
        return results

    return scored


def check_finite(
    score: Callable[[List[int]], List[Result]], records: Sequence[Dict[str, Any]], dtype: Optional[str]
) -> Callable[[List[int]], List[Result]]:
    """``score`` that stops, before anything is stored, at the first non-finite log-prob."""

    def checked(positions: List[int]) -> List[Result]:
        results = score(positions)
        for p, result in zip(positions, results):
            if not all_finite(result):
                raise ClassificationError(
                    f"record {p} (index {records[p]['index']}) got a non-finite log-prob {result.get('log_probs')} "
                    f"with dtype {dtype}; rerun with --dtype bf16 or --dtype fp32"
                )
        return results

    return checked


def precision_used(lm: Any, runtime: Any, dtype: Optional[str], device: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """(dtype, device) as used, e.g. ("bfloat16", "cpu"): the runtime's or the model's when there
    is one, else what loading would pick for these flags; a model object without weights (a test
    double) keeps the flags."""
    if runtime is not None and hasattr(runtime, "dtype") and hasattr(runtime, "device"):
        return str(runtime.dtype).replace("torch.", ""), str(runtime.device)
    model = getattr(lm, "model", None)
    if model is not None:
        return str(next(model.parameters()).dtype).replace("torch.", ""), str(lm.device)
    if lm is not None:
        return dtype, device
    import torch

    from llama.runtime import resolve_dtype

    try:
        dev = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ClassificationError(f"--device {device!r} is not one of cpu, cuda (or cuda:N)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ClassificationError(f"--device {device} but torch sees no CUDA device here; use --device cpu")
    try:
        return str(resolve_dtype(dtype, dev)).replace("torch.", ""), dev.type
    except ValueError as e:
        raise ClassificationError(f"--dtype: {e}") from None


def check_model_fits(lm: Any, records: Sequence[Dict[str, Any]], method: str, check_model: bool) -> Optional[float]:
    """Give the model the prefix shared by the whole file (it caches it once) and, with
    ``check_model``, stop when the model predicts that prefix hardly better than uniform.

    A model that belongs to its params and tokenizer predicts its own prompt far better than
    log V nats per token (SmolLM2-135M on the ag_news demonstrations: about a third of log V;
    random weights of the same shape: log V or more), while a wrong tokenizer, params that
    contradict the weights or corrupted weights land near log V.  The threshold is 0.75 log V.
    """
    setter = getattr(lm, "set_shared_prefix", None)
    if setter is None or method not in methods.MODEL_METHODS:
        return None
    nll = setter(methods.shared_context(records, method))
    if check_model and nll is not None:
        log_v = math.log(lm.tokenizer.n_words)
        if not nll <= MODEL_CHECK_FRACTION * log_v:
            raise ClassificationError(
                f"the model's mean loss on the demonstration prefix is {nll:.2f} nats/token, near uniform "
                f"(log V = {log_v:.2f}): checkpoint, params and tokenizer do not belong together "
                "(--check_model False skips this check, e.g. for random weights)"
            )
    return nll


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


def compute_metrics(
    records: Sequence[Dict[str, Any]], outputs: Sequence[Dict[str, Any]], method: str, settings: Dict[str, Any]
) -> Dict[str, Any]:
    """Scores of ``outputs`` plus the inputs' dataset/k/seed and the run's ``settings``."""
    label_words = records[0]["label_words"]
    truth = [o["ground_truth"] for o in outputs]
    metrics = classification_metrics(
        truth, [o["prediction"] for o in outputs], label_words, none_column=method == "generate"
    )
    metrics.update(calibration_metrics([o["log_probs"] for o in outputs], truth, label_words))
    meta = records[0].get("meta")
    if isinstance(meta, dict):
        metrics.update({key: meta.get(key) for key in ("dataset", "k", "seed", "sample_seed")})
    metrics.update(settings)
    metrics["n_shortened"] = sum(o["shortened"] for o in outputs)
    return metrics


def report(output_path: str, method: str, metrics: Dict[str, Any]) -> None:
    print(f"Accuracy: {metrics['accuracy']:.4f}")
    if metrics["ece"] is not None:
        print(f"Expected calibration error: {metrics['ece']:.4f}")
    if method == "generate":
        print(f"Unparsed generations (none): {metrics['n_none']}")
    if metrics["n_shortened"]:
        print(f"Shortened test texts: {metrics['n_shortened']}")
    print(f"Wrote {output_path} and {metrics_path(output_path)}")


# ---------------------------------------------------------------------------------------------
# The loop


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
    quantize: str = "none",
    check_model: bool = True,
    verify_checkpoint: Optional[bool] = None,
    chunk_size: int = CHUNK_SIZE,
    save_every_s: float = SAVE_EVERY_S,
    lm: Optional[LanguageModel] = None,
    runtime: Optional[Any] = None,
    reuse: bool = False,
    model_parallel_size: Optional[int] = None,
    save_hidden: bool = False,
    n_anchor: Optional[int] = None,
    knn_k: Optional[int] = None,
) -> Optional[Dict[str, Any]]:
    """Classify the records of ``data_path`` with ``method`` and write ``output_path`` + metrics.

    ``method``: direct, calibrate, channel or generate.  For calibrate, ``data_path`` is the
    direct input file and ``direct_output_path`` the direct run's output, whose ``log_probs``
    are re-scored with ``calibration`` (one of :data:`classification.calibrations.CALIBRATIONS`)
    without a second pass over the test set.  ``lm``/``runtime``: use this language model (and
    runtime; default single process) instead of loading ``ckpt_dir``.  Returns the metrics on
    the main rank, None elsewhere.  ``check_model``: stop when the model predicts the shared
    demonstration prefix hardly better than uniform (:func:`check_model_fits`).
    ``verify_checkpoint``: check Meta's ``checklist.chk`` (None: when the checkpoint has one).
    ``save_hidden`` (direct): also write each record's label-predicting hidden state to
    ``<output stem>.hidden.npy`` (:mod:`classification.backend.hidden`), which the anchor calibrations
    (hidden, lda, knn; ``n_anchor``, ``knn_k``: :mod:`classification.anchors`) read.
    """
    start = time.time()
    _check_flags(
        method, scoring, completion_end, max_seq_len, max_batch_size, max_gen_len, temperature, top_p, chunk_size
    )
    direct_run = dict(data_path=data_path, direct_output_path=direct_output_path, ckpt_dir=ckpt_dir,
                      tokenizer_path=tokenizer_path, max_seq_len=max_seq_len, max_batch_size=max_batch_size,
                      dtype=dtype, device=device, scoring=scoring, quantize=quantize, chunk_size=chunk_size)
    options = CalibrationOptions(content_free, domain_premise, batch_size, completion_end, n_anchor, knn_k, direct_run)
    calibration_cls = calibration_class(calibration, options) if method == "calibrate" else None
    if quantize not in QUANTIZE_MODES:
        raise ClassificationError(f"--quantize {quantize!r} is not one of {', '.join(QUANTIZE_MODES)}")
    if save_hidden and method != "direct":
        raise ClassificationError(f"--save_hidden applies to the direct method, not {method}")
    records = load_records(data_path, method)
    calibrator: Optional[Calibration] = None
    direct_outputs: List[Dict[str, Any]] = []
    inputs = [data_path]
    if calibration_cls is not None:
        if not direct_output_path:
            raise ClassificationError(
                f"calibration {calibration} needs --direct_output_path (the output of run_evaluate_direct_llama.py "
                "on --direct_input_path)"
            )
        direct_outputs = load_direct_outputs(direct_output_path, records)
        _check_direct_run(direct_output_path, data_path, completion_end)
        calibrator = calibration_cls(options, records)
        inputs.append(direct_output_path)
    check_output_path(output_path, inputs=inputs)

    needs_model = calibrator is None or calibrator.needs_model
    if not needs_model and runtime is None and int(os.environ.get("RANK", "0")) != 0:
        return None  # no model, so no process group: under torchrun rank 0 alone does the work

    settings: Dict[str, Any] = {"method": method, "max_seq_len": max_seq_len, "scoring": scoring}
    if needs_model:
        settings["dtype"], settings["device"] = precision_used(lm, runtime, dtype, device)
        settings["quantize"] = quantize
        if quantize == "int8":  # LLM.int8 picks outlier features per forward pass: batches matter
            settings["max_batch_size"] = max_batch_size
    generation = dict(max_gen_len=max_gen_len, temperature=temperature, top_p=top_p, seed=seed)
    if method == "generate":
        settings.update(generation)
    else:
        settings["completion_end"] = completion_end
    if save_hidden:
        settings["save_hidden"] = True

    # What is behind the paths, not their names; hashed once (settings may change after loading).
    digests: Dict[str, Any] = {"data_sha256": file_sha256(data_path)}
    if needs_model:
        digests.update(model_files=files_fingerprint(ckpt_dir), tokenizer_files=files_fingerprint(tokenizer_path))
    if calibrator is not None:
        assert direct_output_path is not None
        digests.update(calibration=calibration, direct_output_sha256=file_sha256(direct_output_path))

    def fingerprint_of(settings: Dict[str, Any]) -> Dict[str, Any]:
        return {**settings, **digests, **(calibrator.settings() if calibrator is not None else {})}

    fingerprint = fingerprint_of(settings)
    if reuse:
        done = finished(output_path, fingerprint)
        if done is not None and (not save_hidden or Path(hidden.hidden_path(output_path)).is_file()):
            if runtime is None or runtime.is_main:
                print(f"Up to date: {output_path} (accuracy {done['accuracy']:.4f})")
            return done if runtime is None or runtime.is_main else None

    if lm is None and needs_model:
        lm, runtime = load_model(
            ckpt_dir, tokenizer_path, max_seq_len, max_batch_size, dtype, device, scoring,
            append_eos=completion_end == "eos", verify_checkpoint=verify_checkpoint,
            model_parallel_size=model_parallel_size,
            quantize=quantize,
        )
        settings["dtype"], settings["device"] = precision_used(lm, runtime, dtype, device)
        fingerprint = fingerprint_of(settings)
    elif lm is not None and method != "generate" and bool(lm.append_eos) != (completion_end == "eos"):
        raise ClassificationError(
            f"--completion_end {completion_end} needs a model built with append_eos={completion_end == 'eos'}"
        )
    runtime = runtime if runtime is not None else LocalRuntime()
    prefix_nll = check_model_fits(lm, records, method, check_model)

    if calibrator is not None:
        calibrator.runtime = runtime
    score = make_scorer(method, lm, records, completion_end, calibrator, direct_outputs, generation, save_hidden)
    score = check_finite(score, records, settings.get("dtype"))
    # Longest texts first (even batches, early failure on memory); ties in record order.
    order = sorted(range(len(records)), key=lambda p: (-len(records[p]["text"]), p))
    gathered = run_resumable(
        score, order, output_path, fingerprint, runtime, chunk_size, method, save_every_s, min_chunk=max_batch_size
    )
    metrics: Optional[Dict[str, Any]] = None
    if gathered is not None:
        results, n_resumed = gathered
        outputs = build_outputs(records, results, method)
        settings.pop("seed", None)
        settings.update(
            model=ckpt_dir, tokenizer=tokenizer_path, data_path=data_path, output_path=output_path,
            n_resumed=n_resumed, dp_size=int(runtime.dp_size), prefix_nll=prefix_nll,
        )
        if calibrator is not None:
            settings.update(calibration=calibration, direct_output_path=direct_output_path, **calibrator.summary())
        if save_hidden:
            hidden.save_hidden(hidden.hidden_path(output_path), [results[p] for p in range(len(records))])
            settings["hidden_path"] = hidden.hidden_path(output_path)
        metrics = compute_metrics(records, outputs, method, settings)
        metrics["wall_time_s"] = round(time.time() - start, 3)
        metrics["fingerprint"] = fingerprint
        write_finished(output_path, outputs, metrics)
        report(output_path, method, metrics)
    runtime.barrier()
    return metrics
