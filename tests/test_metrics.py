import pytest

import math

from classification.metrics import Z95, classification_metrics, confusion_matrix, wilson_interval

LABELS = ["A", "B", "C"]
TRUE = ["A", "A", "A", "B", "B", "C"]
PRED = ["A", "A", "B", "B", "C", "C"]


def test_confusion_matrix_rows_true_cols_predicted():
    assert confusion_matrix(TRUE, PRED, LABELS) == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_metrics_by_hand():
    m = classification_metrics(TRUE, PRED, LABELS)
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    # A: P=2/2, R=2/3, F1=0.8; B: P=1/2, R=1/2, F1=0.5; C: P=1/2, R=1/1, F1=2/3
    assert m["per_class"]["A"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert m["per_class"]["B"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["per_class"]["C"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["confusion_matrix"]["columns"] == LABELS
    assert m["n_none"] == 0


def test_none_column_and_zero_division():
    m = classification_metrics(["A", "B", "B", "C"], ["A", "none", "A", "none"], LABELS, none_column=True)
    assert m["confusion_matrix"]["columns"] == ["A", "B", "C", "none"]
    assert m["confusion_matrix"]["matrix"] == [[1, 0, 0, 0], [1, 0, 0, 1], [0, 0, 0, 1]]
    assert m["n_none"] == 2
    assert m["accuracy"] == pytest.approx(0.25)
    # A: P=1/2, R=1 -> F1=2/3; B and C never predicted correctly -> 0.
    assert m["per_class"]["A"]["f1"] == pytest.approx(2 / 3)
    assert m["per_class"]["B"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert m["macro_f1"] == pytest.approx(2 / 9)


def test_unknown_prediction_gets_none_column_even_when_not_asked():
    assert confusion_matrix(["A"], ["zzz"], LABELS) == [[0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_bad_ground_truth_and_lengths():
    with pytest.raises(ValueError):
        confusion_matrix(["D"], ["A"], LABELS)
    with pytest.raises(ValueError):
        confusion_matrix(["A"], [], LABELS)


@pytest.mark.parametrize("correct,n", [(0, 10), (3, 10), (81, 100), (255, 300), (300, 300)])
def test_wilson_interval_inverts_the_score_test(correct, n):
    """Its ends are the proportions p whose score test is exactly at z: |k/n - p| = z sqrt(p(1-p)/n)."""
    lo, hi = wilson_interval(correct, n)
    phat = correct / n
    for p in (lo, hi):
        if 1e-9 < p < 1 - 1e-9:
            assert abs(phat - p) == pytest.approx(Z95 * math.sqrt(p * (1 - p) / n), abs=1e-12)
    assert lo <= phat <= hi and (lo == 0) == (correct == 0) and (hi == 1) == (correct == n)
    # Rounded values from the literature (Newcombe 1998, table I: 81/263 -> 0.2553-0.3662).
    assert wilson_interval(81, 263) == pytest.approx([0.2553, 0.3662], abs=1e-4)


def test_metrics_carry_the_accuracy_interval():
    m = classification_metrics(["a", "b", "a", "b"], ["a", "b", "b", "b"], ["a", "b"])
    assert m["accuracy_ci95"] == wilson_interval(3, 4)
