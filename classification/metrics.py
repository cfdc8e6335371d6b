"""Accuracy, per-class precision/recall/F1, macro-F1 and the confusion matrix (pure Python).

Predictions outside the label set (generate's "none") count as wrong and get their own
confusion-matrix column, ``NONE``.  A class never predicted has precision 0; a class with no
examples has recall 0; F1 is 0 when precision + recall is 0 (sklearn's zero_division=0).
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

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
        "macro_f1": sum(c["f1"] for c in per_class.values()) / len(labels) if labels else 0.0,
        "per_class": per_class,
        "confusion_matrix": {"rows": list(labels), "columns": columns, "matrix": matrix},
        "n_none": n - sum(sum(row[: len(labels)]) for row in matrix),
    }
