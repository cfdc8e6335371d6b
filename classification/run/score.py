"""Scoring records with a method: what :func:`classification.run.runner.evaluate` runs resumably
and :func:`classification.api.classify` runs in memory, so both compute the same results.

:func:`make_scorer` gives a function record positions -> results for a method (or a prepared
calibration); :func:`stop_at_nonfinite` stops at the first non-finite log-prob before anything is
stored; :func:`check_model_fits` gives the model the prefix shared by every prompt (cached once)
and checks that the model predicts it; :func:`longest_first` is the scoring order.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence

from classification import methods
from classification.calibrations import Calibration
from classification.errors import ClassificationError
from classification.lm import LanguageModel
from classification.run.resume import all_finite
from classification.states import attach_hidden

MODEL_CHECK_FRACTION = 0.75  # see check_model_fits

Result = Dict[str, Any]
Scorer = Callable[[List[int]], List[Result]]


def make_scorer(
    method: str,
    lm: Optional[LanguageModel],
    records: Sequence[Dict[str, Any]],
    completion_end: str,
    calibration: Optional[Calibration] = None,
    direct_outputs: Sequence[Dict[str, Any]] = (),
    generation: Optional[Dict[str, Any]] = None,
    save_hidden: bool = False,
) -> Scorer:
    """positions -> results for ``method`` (calibrations are prepared here, once); ``save_hidden``:
    each result also carries its label-predicting hidden state (:func:`classification.states.attach_hidden`)."""
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
                # The original's per-record score: the calibration's own (na, cbu), else the calibrated probabilities.
                result.setdefault("score", [math.exp(x) for x in result["log_probs"]])
                result["shortened"] = bool(direct_outputs[p].get("shortened", False))
                out.append(result)
            return out

        return calibrated
    if method == "generate":
        methods.check_label_matching(label_words, bool((generation or {}).get("ignore_case")))  # before any output
        return lambda positions: methods.generate(lm, [records[p] for p in positions], **(generation or {}))
    score_fn = getattr(methods, method)

    def scored(positions: List[int]) -> List[Result]:
        chunk = [records[p] for p in positions]
        results = score_fn(lm, chunk, completion_end)
        if save_hidden:
            attach_hidden(lm, chunk, results, completion_end)
        return results

    return scored


def stop_at_nonfinite(
    score: Scorer, records: Sequence[Dict[str, Any]], dtype: Optional[str], calibration: Optional[str] = None
) -> Scorer:
    """``score`` that stops, before anything is stored, at the first non-finite log-prob.

    The model's precision is blamed only when the model scored the record: a calibration works
    from files whose values were checked finite when read, so its NaN is its own."""

    def checked(positions: List[int]) -> List[Result]:
        results = score(positions)
        for p, result in zip(positions, results):
            if not all_finite(result):
                what = f"record {p} (index {records[p]['index']}) got a non-finite log-prob {result.get('log_probs')}"
                if calibration is not None:
                    raise ClassificationError(
                        f"{what} from calibration {calibration}, whose inputs are finite: the calibration failed "
                        "numerically on them; try another --calibration"
                    )
                raise ClassificationError(f"{what} with dtype {dtype}; rerun with --dtype bf16 or --dtype fp32")
        return results

    return checked


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


def longest_first(records: Sequence[Dict[str, Any]]) -> List[int]:
    """Record positions, longest texts first (even batches, early failure on memory); ties in record order."""
    return sorted(range(len(records)), key=lambda p: (-len(records[p]["text"]), p))
