"""One evaluation shared by the four ``run_evaluate_*`` scripts, in three steps.

:func:`evaluate` = :func:`plan_run` (the flags, a :class:`RunFlags`, checked once and turned into a
frozen :class:`RunPlan`: the records, the calibration, the settings and the fingerprint, computed
once) -> :func:`score_run` (the runs a calibration needs, then the records scored resumably,
:mod:`classification.run.resume`) -> :func:`write_run`, on the main rank:

- ``output_path``: one JSON record per input record, same order (``index``, ``ground_truth``,
  ``prediction``, ``correct``, ``log_probs``, ``shortened``, and ``generation`` for generate);
- ``<output stem>.metrics.json``: accuracy, macro-F1, per-class scores, confusion matrix, ECE
  and reliability bins of the normalized label probabilities, "none" count, the run's settings,
  the dataset/k/seed of the inputs (their ``meta``) and the run's fingerprint.

The model is loaded (:func:`classification.backend.loader.load_lm`) unless one is given.
``reuse=True`` returns the metrics of a finished run with the same fingerprint without scoring
(the seeds command uses it to skip what is done).  Calibrations are objects of
:mod:`classification.calibrations`.  Batch size, chunk size and data-parallel size are not part
of the fingerprint: the predictions do not depend on them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from classification import methods
from classification.backend.hidden import SAVED_LAYERS_RULE
from classification.backend.loader import load_lm, precision_used
from classification.backend.scoring import SCORING_MODES as SCORINGS
from classification.calibrations import Calibration, CalibrationOptions, calibration_class
from classification.errors import ClassificationError, check_int
from classification.fileio import check_not_inputs, check_output_path, file_sha256, files_fingerprint
from classification.lm import LanguageModel
from classification.methods import METHODS
from classification.metrics import compute_metrics
from classification.paths import DEFAULT_CKPT_DIR, DEFAULT_TOKENIZER_PATH, hidden_path, metrics_path, partial_path
from classification.provenance import check_same_model, read_metrics, written_problem
from classification.records import build_outputs, check_foreign_outputs, load_direct_outputs, load_records
from classification.run.resume import (
    CHUNK_SIZE, SAVE_EVERY_S, LocalRuntime, finished, run_resumable, write_finished,
)
from classification.run.score import check_model_fits, longest_first, make_scorer, stop_at_nonfinite
from classification.states import save_hidden
from llama.quantize import QUANTIZE_MODES, detect_int8_kernel

# DEFAULT_CKPT_DIR and DEFAULT_TOKENIZER_PATH (classification.paths) are the scripts' defaults.
__all__ = ["evaluate", "plan_run", "score_run", "write_run", "RunFlags", "RunPlan", "DEFAULT_CKPT_DIR", "DEFAULT_TOKENIZER_PATH"]

Result = Dict[str, Any]
Record = Dict[str, Any]


@dataclass(frozen=True)
class RunFlags:
    """The flags of a run as given (those of the evaluate scripts, with their defaults)."""

    ckpt_dir: str = DEFAULT_CKPT_DIR
    tokenizer_path: str = DEFAULT_TOKENIZER_PATH
    max_seq_len: int = 2048
    max_batch_size: int = 16
    dtype: Optional[str] = None
    device: Optional[str] = None
    scoring: str = "fast"
    completion_end: str = "eos"
    direct_output_path: Optional[str] = None  # calibrate: the direct run's output
    content_free: Union[None, str, Sequence[str]] = None
    calibration: str = "na"
    domain_premise: Optional[str] = None
    batch_size: Optional[int] = None
    max_gen_len: int = 10
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 1  # generate: the sampling seed
    quantize: str = "none"
    check_model: bool = True
    verify_checkpoint: Optional[bool] = None
    chunk_size: int = CHUNK_SIZE
    save_every_s: float = SAVE_EVERY_S
    model_parallel_size: Optional[int] = None
    save_hidden: bool = False
    n_anchor: Optional[int] = None
    knn_k: Optional[int] = None
    ignore_case: bool = False  # generate: match label words case-insensitively (default: exact case)
    accept_mismatch: bool = False  # calibrate: use a direct run of another model or precision knowingly

    def generation(self) -> Dict[str, Any]:
        # ignore_case is part of the fingerprint: exact case became the default, so generations
        # parsed the old way are not reused.
        return dict(max_gen_len=self.max_gen_len, temperature=self.temperature, top_p=self.top_p, seed=self.seed,
                    ignore_case=self.ignore_case)

    def model(self) -> Dict[str, Any]:
        """The flags another run with the same model shares (the anchors' run of a calibration)."""
        names = ("ckpt_dir", "tokenizer_path", "max_seq_len", "max_batch_size", "dtype", "device", "scoring",
                 "quantize", "chunk_size", "completion_end")
        return {name: getattr(self, name) for name in names}


@dataclass(frozen=True)
class RunPlan:
    """A checked run: what it reads, what it computes with, what it writes (nothing changes later)."""

    method: str
    data_path: str
    output_path: str
    flags: RunFlags
    records: List[Record]
    calibrator: Optional[Calibration]
    direct_outputs: List[Record]
    direct_metrics: Optional[Dict[str, Any]]  # calibrate: the direct run's (None: a file of the original scripts)
    needs_model: bool
    settings: Dict[str, Any]  # what changes the results, as used (dtype and device included)
    fingerprint: Dict[str, Any]  # settings + the digests of what is behind the paths

    def finished_metrics(self) -> Optional[Dict[str, Any]]:
        """The metrics of a finished run with this very fingerprint (and its hidden states), else None."""
        done = finished(self.output_path, self.fingerprint)
        if done is None or (self.flags.save_hidden and written_problem(self.output_path, done, "hidden")):
            return None
        return done


def evaluate(
    method: str, data_path: str, output_path: str, *, lm: Optional[LanguageModel] = None,
    runtime: Optional[Any] = None, reuse: bool = False, **flags: Any,
) -> Optional[Dict[str, Any]]:
    """Classify the records of ``data_path`` with ``method`` and write ``output_path`` + metrics.

    ``method``: direct, calibrate, channel or generate.  ``flags``: the fields of
    :class:`RunFlags`.  For calibrate, ``data_path`` is the direct input file and
    ``direct_output_path`` the direct run's output, whose ``log_probs`` are re-scored with
    ``calibration`` (one of :data:`classification.calibrations.CALIBRATIONS`) without a second pass
    over the test set.  ``lm``/``runtime``: use this language model (and runtime; default: the
    model's, else a single process) instead of loading ``ckpt_dir``.  ``check_model``: stop when
    the model predicts the shared demonstration prefix hardly better than uniform.
    ``verify_checkpoint``: check Meta's ``checklist.chk`` (None: when the checkpoint has one).
    ``save_hidden`` (direct): also write each record's label-predicting hidden state to
    ``<output stem>.hidden.npy``, which the anchor calibrations (hidden, lda, knn; ``n_anchor``,
    ``knn_k``: :mod:`classification.anchors`) read.  ``ignore_case`` (generate): match generations
    to label words case-insensitively (default: exact case, so "US" is not "us").  Returns the
    metrics on the main rank, None elsewhere.
    """
    start = time.time()
    runtime = runtime if runtime is not None else getattr(lm, "runtime", None)
    plan = plan_run(method, data_path, output_path, RunFlags(**flags), lm, runtime)
    if not plan.needs_model and runtime is None and int(os.environ.get("RANK", "0")) != 0:
        return None  # no model, so no process group: under torchrun rank 0 alone does the work
    is_main = runtime is None or runtime.is_main
    done = plan.finished_metrics() if reuse else None
    if done is not None:
        if is_main:
            print(f"Up to date: {output_path} (accuracy {done['accuracy']:.4f})")
        return done if is_main else None
    lm, runtime = _model(plan, lm, runtime)
    gathered, prefix_nll = score_run(plan, lm, runtime)
    metrics = write_run(plan, *gathered, runtime, prefix_nll, start) if gathered is not None else None
    runtime.barrier()
    return metrics


# ---------------------------------------------------------------------------------------------
# Plan: the flags checked once, the settings and fingerprint computed once


def plan_run(
    method: str, data_path: str, output_path: str, flags: RunFlags,
    lm: Optional[LanguageModel] = None, runtime: Optional[Any] = None,
) -> RunPlan:
    """Check the flags and inputs (one-line errors, before any model is loaded) and fix what the
    run computes with: the dtype and device it will use, its settings and fingerprint."""
    _check_flags(method, flags)
    records, calibrator, direct_outputs, direct_metrics = _read_inputs(method, data_path, flags)
    check_output_path(output_path)
    needs_model = calibrator is None or calibrator.needs_model
    _check_not_inputs(method, data_path, output_path, flags, calibrator, needs_model)
    settings = _settings(method, flags, needs_model, lm, runtime)
    # What is behind the paths, not their names.
    digests: Dict[str, Any] = {"data_sha256": file_sha256(data_path)}
    if needs_model:
        digests.update(model_files=files_fingerprint(flags.ckpt_dir),
                       tokenizer_files=files_fingerprint(flags.tokenizer_path))
    if calibrator is not None:
        assert flags.direct_output_path is not None
        digests.update(calibration=flags.calibration, direct_output_sha256=file_sha256(flags.direct_output_path))
    fingerprint = {**settings, **digests, **(calibrator.settings() if calibrator is not None else {})}
    if direct_metrics is not None and needs_model and not flags.accept_mismatch:
        # Content-free scores and the anchors' states must come from the direct run's model.
        check_same_model(direct_metrics.get("fingerprint") or {}, fingerprint,
                         f"--direct_output_path {flags.direct_output_path}",
                         "calibrate with the direct run's --ckpt_dir, --tokenizer_path, --dtype, --quantize and "
                         "--max_seq_len (see its metrics), or pass --accept_mismatch to use it knowingly")
    return RunPlan(method, data_path, output_path, flags, records, calibrator, direct_outputs, direct_metrics,
                   needs_model, settings, fingerprint)


def _check_not_inputs(method: str, data_path: str, output_path: str, flags: RunFlags,
                      calibrator: Optional[Calibration], needs_model: bool) -> None:
    """No file this run writes is one of its inputs (one line naming both)."""
    inputs = [("--direct_input_path" if method == "calibrate" else "--data_path", data_path)]
    if calibrator is not None:
        assert flags.direct_output_path is not None
        inputs += [("--direct_output_path", flags.direct_output_path),
                   ("the metrics of --direct_output_path", metrics_path(flags.direct_output_path)),
                   *calibrator.input_files()]
    if needs_model:
        ckpt = Path(flags.ckpt_dir)
        inputs += [("--tokenizer_path", flags.tokenizer_path)]
        inputs += [("--ckpt_dir", str(f)) for f in (ckpt.iterdir() if ckpt.is_dir() else [ckpt])]
    outputs = [("--output_path", output_path), ("the metrics of --output_path", metrics_path(output_path)),
               ("the partial results of --output_path", partial_path(output_path))]
    if flags.save_hidden:
        outputs.append(("the hidden states of --output_path", hidden_path(output_path)))
    check_not_inputs(outputs, inputs)


def _check_flags(method: str, flags: RunFlags) -> None:
    if method not in METHODS:
        raise ClassificationError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if flags.scoring not in SCORINGS:
        raise ClassificationError(f"--scoring {flags.scoring!r} is not one of {', '.join(SCORINGS)}")
    methods.completion_suffix(flags.completion_end)
    for flag, value in (("--max_seq_len", flags.max_seq_len), ("--max_batch_size", flags.max_batch_size),
                        ("--max_gen_len", flags.max_gen_len), ("chunk_size", flags.chunk_size)):
        check_int(flag, value, 1)
    temperature, top_p = flags.temperature, flags.top_p
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ClassificationError(f"--temperature must be 0 (greedy) or more, got {temperature!r}")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ClassificationError(f"--top_p must be in (0, 1], got {top_p!r}")


def _read_inputs(
    method: str, data_path: str, flags: RunFlags
) -> Tuple[List[Record], Optional[Calibration], List[Record], Optional[Dict[str, Any]]]:
    """(records, the calibration or None, the direct outputs it re-scores and their run's metrics)."""
    options = CalibrationOptions(flags.content_free, flags.domain_premise, flags.batch_size, flags.completion_end,
                                 flags.n_anchor, flags.knn_k, data_path, flags.direct_output_path,
                                 flags.accept_mismatch)
    calibration_cls = calibration_class(flags.calibration, options) if method == "calibrate" else None
    if flags.quantize not in QUANTIZE_MODES:
        raise ClassificationError(f"--quantize {flags.quantize!r} is not one of {', '.join(QUANTIZE_MODES)}")
    if flags.save_hidden and method != "direct":
        raise ClassificationError(f"--save_hidden applies to the direct method, not {method}")
    records = load_records(data_path, method)
    if calibration_cls is None:
        if flags.accept_mismatch:
            raise ClassificationError("--accept_mismatch applies to calibrate (run_evaluate_direct_calibrate_llama.py)")
        return records, None, [], None
    direct_output_path = flags.direct_output_path
    if not direct_output_path:
        raise ClassificationError(
            f"calibration {flags.calibration} needs --direct_output_path (the output of run_evaluate_direct_llama.py "
            "on --direct_input_path)"
        )
    direct_outputs = load_direct_outputs(direct_output_path, records)
    metrics = _check_direct_run(direct_output_path, data_path, flags.completion_end, records, direct_outputs,
                                calibration_cls.needs_direct_files)
    return records, calibration_cls(options, records), direct_outputs, metrics


def _check_direct_run(direct_output_path: str, data_path: str, completion_end: str, records: List[Record],
                      outputs: List[Record], needs_files: bool) -> Optional[Dict[str, Any]]:
    """The direct run's metrics, after checking that its outputs come from this very input file
    (the input hash the metrics record) and that calibration scores content-free inputs the way
    the direct run scored labels.  Outputs without a metrics file (the original scripts write
    none) are checked against the records as far as they can be: None."""
    path = metrics_path(direct_output_path)
    metrics = read_metrics(direct_output_path)
    rerun = f"rerun run_evaluate_direct_llama.py --data_path {data_path} --output_path {direct_output_path}"
    if metrics is None and Path(path).exists():
        raise ClassificationError(
            f"--direct_output_path {direct_output_path}: its metrics file {path} belongs to another output (a run "
            f"killed between the two writes, or a file changed since); {rerun}"
        )
    if metrics is None:
        if needs_files:
            raise ClassificationError(
                f"--direct_output_path {direct_output_path} has no metrics file {path}, so no hidden states of its "
                f"run; {rerun} --save_hidden"
            )
        check_foreign_outputs(direct_output_path, records, outputs, f"--direct_input_path {data_path}")
        print(f"Note: {direct_output_path} has no metrics file (not written by this project's direct run): its record "
              "count, label words and record order were checked against the inputs; the model, precision and "
              "input hash it was scored with cannot be")
        return None
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
    return metrics


def _settings(method: str, flags: RunFlags, needs_model: bool, lm: Any, runtime: Any) -> Dict[str, Any]:
    """What changes the results: fingerprinted, and written to the metrics."""
    settings: Dict[str, Any] = {"method": method, "max_seq_len": flags.max_seq_len, "scoring": flags.scoring}
    if needs_model:
        settings["dtype"], settings["device"] = precision_used(lm, runtime, flags.dtype, flags.device)
        settings["quantize"] = flags.quantize
        if flags.quantize == "int8":
            # int8 activations round: the float-level differences that another batching makes
            # flip roundings and grow to tenths of a nat, so batches are fixed and fingerprinted.
            settings["max_batch_size"] = flags.max_batch_size
            if not str(settings["device"]).startswith("cuda"):
                settings["int8_kernel"] = detect_int8_kernel()
    if method == "generate":
        settings.update(flags.generation())
    else:
        settings["completion_end"] = flags.completion_end
    if flags.save_hidden:
        settings["save_hidden"] = True
        settings["hidden_layers"] = SAVED_LAYERS_RULE  # which states the file holds
    return settings


# ---------------------------------------------------------------------------------------------
# Score: load the model unless given, run what the calibration needs, score resumably


def _model(plan: RunPlan, lm: Optional[LanguageModel], runtime: Optional[Any]) -> Tuple[Any, Any]:
    """(model, runtime) for the plan: loaded when none is given and the plan needs one."""
    flags = plan.flags
    if lm is None and plan.needs_model:
        lm = load_lm(flags.ckpt_dir, flags.tokenizer_path, max_seq_len=flags.max_seq_len,
                     max_batch_size=flags.max_batch_size, dtype=flags.dtype, device=flags.device,
                     scoring=flags.scoring, completion_end=flags.completion_end, quantize=flags.quantize,
                     model_parallel_size=flags.model_parallel_size, verify_checkpoint=flags.verify_checkpoint)
        runtime = getattr(lm, "runtime", None)
        used = precision_used(lm, runtime, flags.dtype, flags.device)
        planned = plan.settings["dtype"], plan.settings["device"]
        if getattr(lm, "model", None) is not None and used != planned:  # the fingerprint says what was used
            raise RuntimeError(f"the model was loaded as {used}, not as planned {planned}")
    elif lm is not None and plan.method != "generate" and bool(lm.append_eos) != (flags.completion_end == "eos"):
        raise ClassificationError(
            f"--completion_end {flags.completion_end} needs a model built with append_eos={flags.completion_end == 'eos'}"
        )
    return lm, runtime if runtime is not None else LocalRuntime()


def score_run(plan: RunPlan, lm: Any, runtime: Any) -> Tuple[Optional[Tuple[Dict[int, Result], int]], Optional[float]]:
    """(({position: result}, number resumed) on the main rank, else None; the prefix's mean loss)."""
    flags = plan.flags
    for needed in plan.calibrator.needed_runs() if plan.calibrator is not None else ():
        # The calibrated run's model and flags; the model was checked by the run that made the inputs.
        evaluate(needed.method, needed.data_path, needed.output_path, lm=lm, runtime=runtime, reuse=True,
                 save_hidden=needed.save_hidden, check_model=False, **flags.model())
        runtime.barrier()
    prefix_nll = check_model_fits(lm, plan.records, plan.method, flags.check_model)
    score = make_scorer(plan.method, lm, plan.records, flags.completion_end, plan.calibrator, plan.direct_outputs,
                        flags.generation(), flags.save_hidden)
    score = stop_at_nonfinite(score, plan.records, plan.settings.get("dtype"),
                              flags.calibration if plan.calibrator is not None else None)
    # Chunks sized by the measured speed, except where batching changes the numbers (int8).
    save_every_s = None if "max_batch_size" in plan.settings else flags.save_every_s
    gathered = run_resumable(score, longest_first(plan.records), plan.output_path, plan.fingerprint, runtime,
                             flags.chunk_size, plan.method, save_every_s, min_chunk=flags.max_batch_size)
    return gathered, prefix_nll


# ---------------------------------------------------------------------------------------------
# Write: outputs, hidden states, metrics


def write_run(
    plan: RunPlan, results: Dict[int, Result], n_resumed: int, runtime: Any, prefix_nll: Optional[float],
    start: float,
) -> Dict[str, Any]:
    """Write the outputs (+ hidden states) and their metrics; print the summary; return the metrics."""
    flags, output_path = plan.flags, plan.output_path
    outputs = build_outputs(plan.records, results, plan.method)
    run = {key: value for key, value in plan.settings.items() if key != "seed"}  # the inputs' seed is meta's
    run.update(model=flags.ckpt_dir, tokenizer=flags.tokenizer_path, data_path=plan.data_path,
               output_path=output_path, n_resumed=n_resumed, dp_size=int(runtime.dp_size), prefix_nll=prefix_nll)
    if plan.calibrator is not None:
        run.update(calibration=flags.calibration, direct_output_path=flags.direct_output_path,
                   **plan.calibrator.summary())
    if flags.save_hidden:
        save_hidden(hidden_path(output_path), [results[p] for p in range(len(plan.records))])
        run["hidden_path"] = hidden_path(output_path)
        if "hidden_layers" in results[0]:
            run["hidden_layers"] = results[0]["hidden_layers"]
    metrics = compute_metrics(plan.records, outputs, plan.method, run)
    if flags.save_hidden:  # which states are this run's (a later run's or a killed run's are not)
        metrics["hidden_sha256"] = file_sha256(hidden_path(output_path))
    metrics["wall_time_s"] = round(time.time() - start, 3)
    metrics["fingerprint"] = plan.fingerprint
    write_finished(output_path, outputs, metrics)
    report(output_path, plan.method, metrics)
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

