"""The in-memory half of the Python API: records, outputs and calibrations without files.

:func:`make_records` builds input records (what ``run_preprocess.py`` writes), :func:`classify`
scores them with a model (what an ``outputs_*.json`` holds), :func:`calibrate` re-scores direct
outputs; the results are those of the file-based :func:`classification.run.runner.evaluate`
(same scorer, same checks).  See :mod:`classification` for the whole API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from classification.calibrations import CalibrationOptions, calibration_class
from classification.errors import ClassificationError
from classification.inputs.datasets import Dataset, load_dataset
from classification.inputs.retrieval import check_demos, records_and_anchors
from classification.lm import LanguageModel
from classification.methods import MODEL_METHODS, completion_suffix
from classification.records import build_outputs, validate_records
from classification.run.score import check_model_fits, longest_first, make_scorer, stop_at_nonfinite

Record = Dict[str, Any]
IN_MEMORY = "<records>"  # how messages name records that come from no file


def make_records(
    dataset: Union[str, Dataset],
    method: str = "direct",
    *,
    data_dir: Optional[str] = None,
    k: int = 1,
    seed: int = 42,
    n_sample: int = 16,
    sample_seed: Optional[int] = None,
    template: Optional[str] = None,
    demos: str = "random",
    demo_pool: Optional[int] = None,
    embed: Optional[Callable[[List[str]], np.ndarray]] = None,
    embeddings_cache: Optional[Path] = None,
    demo_sampling: str = "default",
) -> List[Record]:
    """Input records of a preset (read from ``data_dir``, else the hub) or a loaded ``Dataset``.

    ``k`` demonstrations per class chosen with ``seed`` (``demos``: random, bm25, or knn with
    ``embed``, a function texts -> embeddings such as a loaded model's ``text_embeddings``), a
    stratified test sample of ``n_sample`` drawn with ``sample_seed`` (default: ``seed``; 0: the
    whole test split).  ``demo_sampling="original"`` draws the random demonstrations as the original
    project did (needs ``datasets``).  The same records as ``run_preprocess.py`` with these flags writes.
    """
    check_demos(demos, demo_pool, None, 0, demo_sampling)
    if demos == "knn" and embed is None:
        raise ClassificationError("demos='knn' needs embed, e.g. embed=lm.text_embeddings of a loaded model")
    data = load_dataset(preset=dataset, data_dir=data_dir) if isinstance(dataset, str) else dataset
    records, _ = records_and_anchors(data, method, template, k, seed, n_sample != 0, n_sample, sample_seed, demos,
                                     demo_pool, 0, embed, embeddings_cache, demo_sampling)
    return records


def classify(
    lm: LanguageModel,
    records: Sequence[Record],
    method: str = "direct",
    *,
    completion_end: str = "eos",
    check_model: bool = True,
    max_gen_len: int = 10,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 1,
) -> List[Record]:
    """Classify ``records`` with ``method`` (direct, channel or generate): one output record per
    input record (``index``, ``ground_truth``, ``prediction``, ``correct``, ``log_probs``,
    ``shortened``; ``generation`` for generate), as ``outputs_*.json`` holds them.

    ``completion_end`` must be the one the model was loaded with (:func:`load_lm`);
    ``check_model``: stop when the model predicts the shared demonstrations hardly better than
    uniform; ``max_gen_len``, ``temperature``, ``top_p``, ``seed``: generate's.
    """
    if method not in MODEL_METHODS:
        raise ClassificationError(f"classify takes one of {', '.join(MODEL_METHODS)}, not {method!r}")
    completion_suffix(completion_end)
    if method != "generate" and bool(lm.append_eos) != (completion_end == "eos"):
        raise ClassificationError(f"completion_end {completion_end} needs a model loaded with that completion_end")
    records = validate_records(list(records), method, IN_MEMORY)
    check_model_fits(lm, records, method, check_model)
    generation = dict(max_gen_len=max_gen_len, temperature=temperature, top_p=top_p, seed=seed)
    score = make_scorer(method, lm, records, completion_end, generation=generation)
    return _score_all(stop_at_nonfinite(score, records, _dtype(lm)), records, method)


def calibrate(
    lm: Optional[LanguageModel],
    records: Sequence[Record],
    direct_outputs: Sequence[Record],
    calibration: str = "na",
    *,
    completion_end: str = "eos",
    content_free: Union[None, str, Sequence[str]] = None,
    domain_premise: Optional[str] = None,
    batch_size: Optional[int] = None,
) -> List[Record]:
    """Re-score the direct outputs of ``records`` (from :func:`classify`) with a calibration: na,
    cbu, dcpmi (they score with ``lm``), batch or batch_logmean (``lm`` may be None).  The anchor
    calibrations (hidden, lda, knn) read a direct run's files: run them with :func:`evaluate`."""
    options = CalibrationOptions(content_free, domain_premise, batch_size, completion_end)
    cls = calibration_class(calibration, options)
    if cls.needs_direct_files:
        raise ClassificationError(f"calibration {calibration} reads the files of a direct run: use evaluate")
    records = validate_records(list(records), "calibrate", IN_MEMORY)
    if len(direct_outputs) != len(records):
        raise ClassificationError(f"{len(direct_outputs)} direct outputs for {len(records)} records")
    score = make_scorer("calibrate", lm, records, completion_end, cls(options, records), direct_outputs)
    return _score_all(stop_at_nonfinite(score, records, _dtype(lm)), records, "calibrate")


def _score_all(score: Callable[[List[int]], List[Record]], records: Sequence[Record], method: str) -> List[Record]:
    order = longest_first(records)  # the runner's order
    return build_outputs(records, dict(zip(order, score(order))), method)


def _dtype(lm: Any) -> Optional[str]:
    model = getattr(lm, "model", None)
    return None if model is None else str(next(model.parameters()).dtype).replace("torch.", "")
