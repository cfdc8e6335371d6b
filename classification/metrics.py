"""Accuracy, per-class precision/recall/F1, macro-F1, confusion matrix and calibration error.

Predictions outside the label set (generate's "none") count as wrong and get their own
confusion-matrix column, ``NONE``.  A class never predicted has precision 0; a class with no
examples has recall 0; F1 is 0 when precision + recall is 0 (sklearn's zero_division=0).

Expected calibration error (ECE) is computed on the label probabilities normalized over the label
words, p = softmax(log_probs): confidence = max p, correct = (argmax p is the true label), and
with ``n_bins`` equal-width confidence bins B_1..B_M over [0, 1],
``ECE = sum_m |B_m| / n * |accuracy(B_m) - mean confidence(B_m)|``.  Methods without label
probabilities (generate) have ``ece`` None.

``accuracy_ci95`` is the 95 % Wilson score interval of the accuracy (k correct of n):
``(p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)`` with p = k/n and z = 1.959964.

:func:`compute_metrics` is all of it for a run's outputs (the ``*.metrics.json`` dict);
:func:`mean_std` and :func:`fmt_mean_std` summarize several seeds.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Dict, List, Mapping, Optional, Sequence

from classification.methods import softmax

NONE = "none"


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def confusion_matrix(
    ground_truth: Sequence[str], predictions: Sequence[str], labels: Sequence[str], none_column: bool = False
) -> List[List[int]]:
    """Counts with rows = true label, columns = predicted label (+ a last ``none`` column).

    The ``none`` column is added when ``none_column`` is set or any prediction is not a label.
    """
    if len(ground_truth) != len(predictions):
        raise ValueError(f"{len(ground_truth)} ground truths but {len(predictions)} predictions")
    col = {label: i for i, label in enumerate(labels)}
    unknown = [t for t in ground_truth if t not in col]
    if unknown:
        raise ValueError(f"ground truth {unknown[0]!r} is not among the labels {list(labels)}")
    extra = none_column or any(p not in col for p in predictions)
    matrix = [[0] * (len(labels) + (1 if extra else 0)) for _ in labels]
    for t, p in zip(ground_truth, predictions):
        matrix[col[t]][col.get(p, len(labels))] += 1
    return matrix


Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson_interval(correct: int, n: int, z: float = Z95) -> List[float]:
    """[low, high] Wilson score interval of a proportion ``correct / n`` ([0, 1] when n is 0)."""
    if n == 0:
        return [0.0, 1.0]
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # At 0 or n correct one end is exactly 0 or 1 (rounding would move it by an ulp).
    return [0.0 if correct == 0 else centre - half, 1.0 if correct == n else centre + half]


def classification_metrics(
    ground_truth: Sequence[str], predictions: Sequence[str], labels: Sequence[str], none_column: bool = False
) -> Dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support, confusion matrix, none count."""
    matrix = confusion_matrix(ground_truth, predictions, labels, none_column)
    n = len(ground_truth)
    correct = sum(matrix[i][i] for i in range(len(labels)))
    per_class: Dict[str, Dict[str, float]] = {}
    for i, label in enumerate(labels):
        support = sum(matrix[i])
        predicted = sum(row[i] for row in matrix)
        precision = matrix[i][i] / predicted if predicted else 0.0
        recall = matrix[i][i] / support if support else 0.0
        per_class[label] = {
            "precision": precision,
            "recall": recall,
            "f1": _f1(precision, recall),
            "support": support,
        }
    columns = list(labels) + ([NONE] if len(matrix[0]) > len(labels) else []) if labels else []
    return {
        "n": n,
        "accuracy": correct / n if n else 0.0,
        "accuracy_ci95": wilson_interval(correct, n),
        "macro_f1": sum(c["f1"] for c in per_class.values()) / len(labels) if labels else 0.0,
        "per_class": per_class,
        "confusion_matrix": {"rows": list(labels), "columns": columns, "matrix": matrix},
        "n_none": n - sum(sum(row[: len(labels)]) for row in matrix),
    }


N_BINS = 10


def reliability(
    log_probs: Sequence[Sequence[float]], truth: Sequence[int], n_bins: int = N_BINS
) -> Dict[str, Any]:
    """ECE and the reliability-diagram bins of normalized label probabilities.

    ``log_probs``: one list per example (label order, any additive constant); ``truth``: the
    true label indices.  Each bin has its range, count, mean confidence and accuracy (None when
    empty).  Bins are [lo, hi), the last one [0.9, 1.0] with 10 bins.
    """
    if len(log_probs) != len(truth):
        raise ValueError(f"{len(log_probs)} log-prob lists but {len(truth)} labels")
    counts = [0] * n_bins
    conf_sums = [0.0] * n_bins
    correct = [0] * n_bins
    for lp, t in zip(log_probs, truth):
        probs = softmax(lp)
        best = max(range(len(probs)), key=lambda i: (probs[i], -i))
        conf = probs[best]
        b = min(n_bins - 1, int(conf * n_bins))
        counts[b] += 1
        conf_sums[b] += conf
        correct[b] += int(best == t)
    n = len(truth)
    bins = []
    ece = 0.0
    for b in range(n_bins):
        acc = correct[b] / counts[b] if counts[b] else None
        conf = conf_sums[b] / counts[b] if counts[b] else None
        if counts[b]:
            ece += counts[b] / n * abs(acc - conf)  # type: ignore[operator]
        bins.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "n": counts[b], "confidence": conf, "accuracy": acc})
    return {"ece": ece if n else None, "bins": bins}


def calibration_metrics(
    log_probs: Sequence[Optional[Sequence[float]]], ground_truth: Sequence[str], labels: Sequence[str]
) -> Dict[str, Any]:
    """``{"ece": ..., "reliability": bins}``; ece and bins are None when any log_probs is None."""
    if not log_probs or any(lp is None for lp in log_probs):
        return {"ece": None, "reliability": None}
    col = {label: i for i, label in enumerate(labels)}
    result = reliability(log_probs, [col[t] for t in ground_truth])  # type: ignore[arg-type]
    return {"ece": result["ece"], "reliability": result["bins"]}


def compute_metrics(
    records: Sequence[Dict[str, Any]], outputs: Sequence[Dict[str, Any]], method: str,
    settings: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """Scores of ``outputs`` (one per record, as ``outputs_*.json`` holds them) plus the inputs'
    dataset/k/seed and the run's ``settings``: the dict ``<output stem>.metrics.json`` holds."""
    label_words = records[0]["label_words"]
    truth = [o["ground_truth"] for o in outputs]
    metrics = classification_metrics(
        truth, [o["prediction"] for o in outputs], label_words, none_column=method == "generate"
    )
    metrics.update(calibration_metrics([o["log_probs"] for o in outputs], truth, label_words))
    meta = records[0].get("meta")
    if isinstance(meta, dict):
        metrics.update({key: meta.get(key) for key in ("dataset", "k", "seed", "sample_seed")})
        # Further settings of the inputs, where recorded (the report groups runs by them).
        metrics.update({key: meta[key] for key in ("demos", "demo_pool", "template") if key in meta})
    metrics.update(settings or {})
    metrics["n_shortened"] = sum(o["shortened"] for o in outputs)
    return metrics


def mean_std(values: Sequence[float]) -> Dict[str, Optional[float]]:
    """Mean and sample standard deviation (n - 1; 0 for one value) of the values that are not None."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return {"mean": None, "std": None}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0}


def fmt_mean_std(stat: Dict[str, Optional[float]]) -> str:
    return "-" if stat["mean"] is None else f"{stat['mean']:.4f} ± {stat['std']:.4f}"
