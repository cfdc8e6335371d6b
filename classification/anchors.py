"""Classifiers from the direct pass: hidden-state and kNN calibration on labeled anchors.

All re-classify a direct run from what it saved with ``--save_hidden`` (hidden states at the
position that predicts the label, :mod:`classification.backend.hidden`) and the same states of
*anchors*: m labeled training examples per class, never demonstrations, written by the
preprocess scripts with ``--n_anchor`` (``<inputs stem>.anchors.json``, the test set's prompt).
The anchors are scored once by an ordinary direct run (``<direct output stem>.anchors.json`` +
its ``.hidden.npy``), so they are cached and resumable like any run: the calibration declares
that run (:meth:`classification.calibrations.Calibration.needed_runs`) and the runner runs it.

- ``hidden`` -- Hidden Calibration (Cho et al., NAACL 2025): the centroid of each class's anchor
  states; the prediction is the nearest centroid (Euclidean).  ``log_probs`` = log-softmax of
  minus the distances.
- ``lda`` -- the same states through a linear discriminant (not in the papers; tried here because
  nearest centroids ignore that some directions of the hidden space vary much more than others):
  class means, the pooled within-class covariance S shrunk to S + λ·(tr S / dim)·I, equal priors;
  λ from :data:`SHRINKAGES` by 4-fold cross-validation on the anchors (folds by rank within each
  class; no test labels; ties to the larger λ, and λ → ∞ is the nearest centroid).
  ``log_probs`` = the discriminant's log-softmax.
- ``knn`` -- kNN prompting (Xu et al., ICLR 2023): the anchors' next-token distributions over the
  whole vocabulary (output head + log-softmax of the saved states) are the datastore; the
  distance of a test distribution q to an anchor's p is their code's
  ``mean_v p_v (log p_v - log q_v)`` (KL(p || q) / |V|); the ``knn_k`` nearest anchors vote, ties
  to the first label.  ``log_probs`` = log of the Laplace-smoothed vote shares,
  (votes + 1) / (knn_k + C).
- ``hidden_auto``, ``lda_auto`` -- the nearest centroid and the shrunk discriminant on features
  they choose themselves (:class:`ChosenFeatures`).  The direct run saves the states of a few
  layers (the last third of the model, :func:`classification.backend.hidden.saved_layers`);
  which layer separates the classes best, and whether each feature should first be
  standardized, differ by model and dataset.  Candidates: each saved layer alone and every two
  neighbouring saved layers side by side; scaled by ``standard`` (minus the mean, divided by the
  standard deviation, of the anchors; within cross-validation, of the training folds) or
  ``none``; for ``lda_auto`` also λ from :data:`AUTO_SHRINKAGES`.  The choice is made by
  cross-validation on the anchors alone (the same folds as ``lda``): most held-out anchors
  right, then the highest held-out log-probability of their class, then the stronger shrinkage,
  standardized, one layer, the later layer.  The chosen classifier is fitted on all anchors;
  what it chose goes into the metrics (``features``).  hidden, lda and knn read the last saved
  layer: the final-normed state.

:class:`AnchorCalibration` is what the registered calibrations of :mod:`classification.calibrations`
call: ``check`` (one-line errors before any model is loaded), ``prepare`` (fit on the scored
anchors) and ``apply`` (one record's log-probs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from classification.errors import ClassificationError, check_int
from classification.fileio import file_sha256
from classification.paths import anchors_path
from classification.provenance import check_same_model, check_same_prompt, check_written, read_metrics
from classification.records import load_direct_outputs, load_records
from classification.states import load_hidden, saved_layers

NAMES = ("hidden", "lda", "knn", "hidden_auto", "lda_auto", "logistic_auto")  # registered in classification.calibrations
SHRINKAGES = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
DEFAULT_KNN_K = 3


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


class NearestCentroid:
    """Class centroids of anchor vectors; scores = minus the Euclidean distance to each centroid."""

    def fit(self, x: np.ndarray, y: np.ndarray, n_classes: int) -> "NearestCentroid":
        self.centroids = np.stack([x[y == c].mean(axis=0) for c in range(n_classes)])  # (C, dim)
        return self

    def scores(self, x: np.ndarray) -> np.ndarray:
        d2 = (x * x).sum(1)[:, None] - 2 * x @ self.centroids.T + (self.centroids**2).sum(1)[None, :]  # (n, C)
        return -np.sqrt(np.maximum(d2, 0.0))


class ShrinkageLDA:
    """Linear discriminant with a shrunk shared covariance; the shrinkage by cross-validation on the anchors."""

    def __init__(self, shrinkages: Sequence[float] = SHRINKAGES, folds: int = 4) -> None:
        self.shrinkages, self.folds = tuple(shrinkages), folds

    @staticmethod
    def _fit(x: np.ndarray, y: np.ndarray, n_classes: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Class means (C, dim) and the pooled within-class covariance S = V' diag(e) V, as its
        eigenvectors V (r, dim) with r <= anchors, eigenvalues e (r,) and tr S / dim."""
        means = np.stack([x[y == c].mean(axis=0) for c in range(n_classes)])  # (C, dim)
        resid = (x - means[y]) / np.sqrt(len(x))  # S = resid' resid
        _, sv, vt = np.linalg.svd(resid, full_matrices=False)  # (r,), (r, dim)
        e = sv**2
        return means, vt, e, max(float(e.sum()) / x.shape[1], 1e-300)

    @staticmethod
    def _means_times_precision(means: np.ndarray, vt: np.ndarray, e: np.ndarray, s: float) -> np.ndarray:
        # (S + s I)^-1 = (I - V' diag(e / (e + s)) V) / s: only the anchors' span, no dim x dim
        # inverse (per fold and shrinkage that was seconds at dim 4096).
        return (means - ((means @ vt.T) * (e / (e + s))) @ vt) / s  # (C, dim)

    @staticmethod
    def _scores(x: np.ndarray, means: np.ndarray, pm: np.ndarray) -> np.ndarray:
        # -(x - m)' P (x - m) / 2 without the term every class shares: x' P m - m' P m / 2.
        return x @ pm.T - 0.5 * (pm * means).sum(1)[None, :]

    def cv_accuracy(self, x: np.ndarray, y: np.ndarray, n_classes: int) -> Dict[float, float]:
        """{λ: accuracy over ``folds`` folds of the anchors}.  Fold = an anchor's rank within its
        class modulo folds, so every fold trains on every class whatever the order of the file."""
        fold = np.zeros(len(x), dtype=np.int64)
        for c in range(n_classes):
            fold[y == c] = np.arange(int((y == c).sum())) % self.folds
        right = dict.fromkeys(self.shrinkages, 0)
        for f in range(self.folds):
            train = fold != f
            means, vt, e, unit = self._fit(x[train], y[train], n_classes)
            for lam in self.shrinkages:
                pm = self._means_times_precision(means, vt, e, lam * unit)
                right[lam] += int((self._scores(x[~train], means, pm).argmax(1) == y[~train]).sum())
        return {lam: n / len(x) for lam, n in right.items()}

    def fit(self, x: np.ndarray, y: np.ndarray, n_classes: int) -> "ShrinkageLDA":
        x = x.astype(np.float64)
        if np.bincount(y, minlength=n_classes).min() >= 2 * self.folds:
            accuracy = self.cv_accuracy(x, y, n_classes)
            self.shrinkage = max(self.shrinkages, key=lambda lam: (accuracy[lam], lam))
        else:  # too few anchors to cross-validate: the strongest shrinkage
            self.shrinkage = max(self.shrinkages)
        self.means, self._vt, self._e, unit = self._fit(x, y, n_classes)
        self._s = self.shrinkage * unit
        self._pm = self._means_times_precision(self.means, self._vt, self._e, self._s)
        return self

    @property
    def precision(self) -> np.ndarray:
        """The shrunk covariance's inverse (dim, dim); scoring never forms it."""
        return (np.eye(self._vt.shape[1]) - self._vt.T @ (self._vt * (self._e / (self._e + self._s))[:, None])) / self._s

    def scores(self, x: np.ndarray) -> np.ndarray:
        return self._scores(x.astype(np.float64), self.means, self._pm)


class KnnVote:
    """kNN prompting: the ``k`` anchors nearest in KL(anchor || test) / |V| vote (Laplace-smoothed shares)."""

    def __init__(self, k: int = DEFAULT_KNN_K) -> None:
        self.k = k

    def fit(self, log_p: np.ndarray, y: np.ndarray, n_classes: int) -> "KnnVote":
        self.log_p, self.y, self.n_classes = log_p.astype(np.float64), y, n_classes
        self.p = np.exp(self.log_p)
        self.neg_entropy = (self.p * self.log_p).sum(1)  # (m,)
        return self

    def distances(self, log_q: np.ndarray) -> np.ndarray:
        """(n, m): mean over the vocabulary of p_a (log p_a - log q), as a matmul."""
        cross = log_q.astype(np.float64) @ self.p.T  # (n, m): sum_v p_a log q
        return (self.neg_entropy[None, :] - cross) / self.p.shape[1]

    def scores(self, log_q: np.ndarray) -> np.ndarray:
        d = self.distances(log_q)
        m = d.shape[1]
        nearest = np.argsort(d, axis=1, kind="stable")[:, : min(self.k, m)]  # (n, k)
        votes = np.zeros((len(d), self.n_classes))
        for c in range(self.n_classes):
            votes[:, c] = (self.y[nearest] == c).sum(1)
        return np.log((votes + 1) / (votes.shape[1] + min(self.k, m)))


# -- hidden_auto, lda_auto: features chosen on the anchors ------------------------------------

KINDS = ("centroid", "lda")
AUTO_KINDS = {"hidden_auto": "centroid", "lda_auto": "lda"}  # calibration name -> ChosenFeatures kind
CHOOSING = ("hidden_auto", "lda_auto", "logistic_auto")  # the calibrations that choose their layer on the anchors
SCALINGS = ("standard", "none")
DEFAULT_FOLDS = 4
# lda_auto's shrinkages: SHRINKAGES and stronger ones (standardized states often want more; λ -> ∞
# is the nearest centroid of the scaled features).
AUTO_SHRINKAGES = SHRINKAGES + (30.0, 100.0)


@dataclass(frozen=True)
class Candidate:
    """Features = the saved layers at ``positions`` (indices into the saved-layer axis), side by side."""

    positions: Tuple[int, ...]
    scaling: str


Key = Tuple[Candidate, Optional[float]]  # a candidate and its shrinkage (None: nearest centroid)


def rank_folds(y: np.ndarray, n_classes: int, folds: int) -> np.ndarray:
    """Each anchor's fold: its rank within its class modulo ``folds``."""
    fold = np.zeros(len(y), dtype=np.int64)
    for c in range(n_classes):
        fold[y == c] = np.arange(int((y == c).sum())) % folds
    return fold


class Scaler:
    """Standardization by the fitting rows' per-feature mean and standard deviation (``standard``), or none."""

    def __init__(self, scaling: str) -> None:
        if scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, not {scaling!r}")
        self.scaling = scaling

    def fit(self, x: np.ndarray) -> "Scaler":
        if self.scaling == "standard":
            self.mean = x.mean(axis=0)
            std = x.std(axis=0)
            # A feature constant over the anchors carries nothing: left unscaled rather than blown up.
            self.std = np.where(std > 1e-6 * max(float(std.max()), 1e-30), std, 1.0)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std if self.scaling == "standard" else x


def features(states: np.ndarray, positions: Sequence[int]) -> np.ndarray:
    """(n, len(positions) * dim) float64: the states (n, layers, dim) of those saved layers side by side."""
    return states[:, list(positions)].reshape(len(states), -1).astype(np.float64)


class ChosenFeatures:
    """A centroid or LDA classifier on layers and scaling chosen by cross-validation on the anchors."""

    def __init__(self, kind: str, folds: int = DEFAULT_FOLDS, shrinkages: Sequence[float] = AUTO_SHRINKAGES,
                 scalings: Sequence[str] = SCALINGS, pairs: bool = True) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        self.kind, self.folds, self.shrinkages = kind, folds, tuple(shrinkages)
        self.scalings, self.pairs = tuple(scalings), pairs

    def candidates(self, n_saved: int) -> List[Candidate]:
        """Every saved layer alone and (``pairs``) every two neighbouring saved layers, in every scaling."""
        sets = [(i,) for i in range(n_saved)]
        if self.pairs:
            sets += [(i, i + 1) for i in range(n_saved - 1)]
        return [Candidate(s, scaling) for s in sets for scaling in self.scalings]

    def _strengths(self) -> Tuple[Optional[float], ...]:
        return self.shrinkages if self.kind == "lda" else (None,)

    def cv_scores(self, states: np.ndarray, y: np.ndarray, n_classes: int) -> Dict[Key, Tuple[int, float]]:
        """{(candidate, λ or None): (held-out anchors classified right, their summed log-prob of
        the true class (log-softmax of the scores, as the calibration outputs)) over the folds}."""
        fold = rank_folds(y, n_classes, self.folds)
        right: Dict[Key, int] = {}
        loglik: Dict[Key, float] = {}
        for cand in self.candidates(states.shape[1]):
            x = features(states, cand.positions)
            for f in range(self.folds):
                train, held = fold != f, fold == f
                scaler = Scaler(cand.scaling).fit(x[train])
                xt, xh = scaler.transform(x[train]), scaler.transform(x[held])
                for lam, scores in self._held_out_scores(xt, y[train], xh, n_classes):
                    key = (cand, lam)
                    right[key] = right.get(key, 0) + int((scores.argmax(1) == y[held]).sum())
                    true = _log_softmax(scores)[np.arange(len(xh)), y[held]]
                    loglik[key] = loglik.get(key, 0.0) + float(true.sum())
        return {key: (right[key], loglik[key]) for key in right}

    def _held_out_scores(self, xt: np.ndarray, yt: np.ndarray, xh: np.ndarray,
                         n_classes: int) -> Iterator[Tuple[Optional[float], np.ndarray]]:
        if self.kind == "centroid":
            yield None, NearestCentroid().fit(xt, yt, n_classes).scores(xh)
            return
        means, vt, e, unit = ShrinkageLDA._fit(xt, yt, n_classes)
        for lam in self.shrinkages:
            pm = ShrinkageLDA._means_times_precision(means, vt, e, lam * unit)
            yield lam, ShrinkageLDA._scores(xh, means, pm)

    def _preference(self, key: Key) -> Tuple[Any, ...]:
        """Last ties: stronger shrinkage, standardized, one layer, later layer."""
        cand, lam = key
        return (lam if lam is not None else 0.0, cand.scaling == "standard", -len(cand.positions), max(cand.positions))

    def fit(self, states: np.ndarray, y: np.ndarray, n_classes: int) -> "ChosenFeatures":
        """Choose on the anchors' states (m, layers, dim) and labels, then fit on all of them."""
        if states.ndim != 3:
            raise ValueError(f"states must be (anchors, layers, dim), not {states.shape}")
        counts = np.bincount(y, minlength=n_classes)
        if counts.min() >= 2 * self.folds:
            cv = self.cv_scores(states, y, n_classes)
            self.chosen, self.shrinkage = max(cv, key=lambda k: (cv[k], self._preference(k)))
            self.cv_accuracy: Optional[float] = cv[(self.chosen, self.shrinkage)][0] / len(y)
        else:  # too few anchors to cross-validate: the last layer standardized, the strongest shrinkage
            self.chosen = Candidate((states.shape[1] - 1,), "standard")
            self.shrinkage = max(self.shrinkages) if self.kind == "lda" else None
            self.cv_accuracy = None
        x = features(states, self.chosen.positions)
        self.scaler = Scaler(self.chosen.scaling).fit(x)
        xs = self.scaler.transform(x)
        if self.kind == "lda":
            self.model: Any = ShrinkageLDA(shrinkages=(self.shrinkage,)).fit(xs, y, n_classes)
        else:
            self.model = NearestCentroid().fit(xs, y, n_classes)
        return self

    def scores(self, states: np.ndarray) -> np.ndarray:
        """(n, classes) scores of the test states (n, layers, dim); argmax = prediction."""
        return self.model.scores(self.scaler.transform(features(states, self.chosen.positions)))

    def summary(self, layer_numbers: Optional[Sequence[int]] = None) -> Dict[str, Any]:
        """What was chosen: the layers (``layer_numbers``: the saved layers' numbers; None: a file
        of the final-normed state alone), scaling, shrinkage, cross-validated accuracy on the anchors."""
        names: List[Any] = list(layer_numbers) if layer_numbers is not None else ["final"]
        out: Dict[str, Any] = {"layers": [names[i] for i in self.chosen.positions], "scaling": self.chosen.scaling,
                               "cv_accuracy": self.cv_accuracy, "folds": self.folds}
        if self.kind == "lda":
            out["shrinkage"] = self.shrinkage
        return out


# -- logistic_auto: logistic regression on the states, with the label words' log-probs -----------

# L2 weights of logistic_auto on standardized features (sum of the anchors' cross-entropies plus
# l2 / 2 times the squared weights) and weights of the label words' log-probs.
LOGISTIC_L2 = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
LABEL_WEIGHTS = (0.0, 0.5, 1.0, 2.0)


class LogisticRegression:
    """Multinomial logistic regression with an L2 penalty on the weights (not the intercepts).

    Solved in the basis of the rows' right singular vectors (the optimum lies in their span, so a
    576- or 4096-dimensional state becomes one coordinate per anchor), by gradient steps on
    Böhning's bound of the Hessian (1/2 X'X, diagonal there) with Nesterov momentum restarted
    whenever the loss rises: no dim x dim matrix and no line search.
    """

    def __init__(self, l2: float, max_iter: int = 5000, tol: float = 1e-10) -> None:
        if l2 <= 0:
            raise ValueError(f"l2 must be positive, not {l2}")
        self.l2, self.max_iter, self.tol = l2, max_iter, tol

    def fit(self, x: np.ndarray, y: np.ndarray, n_classes: int) -> "LogisticRegression":
        return self.fit_path(x, y, n_classes, (self.l2,))[0]

    def fit_path(self, x: np.ndarray, y: np.ndarray, n_classes: int,
                 l2s: Sequence[float]) -> List["LogisticRegression"]:
        """One fitted model per L2 weight in ``l2s``, each solve started from the previous optimum
        (give the weights strongest first)."""
        x = x.astype(np.float64)
        u, sv, vt = np.linalg.svd(x, full_matrices=False)  # (n, r), (r,), (r, dim)
        f = u * sv  # (n, r): the rows in the singular basis
        onehot = np.eye(n_classes)[y]  # (n, C)
        coef, intercept = np.zeros((len(sv), n_classes)), np.zeros(n_classes)
        models = []
        for l2 in l2s:
            coef, intercept = self._solve(f, sv, onehot, l2, coef, intercept)
            model = LogisticRegression(l2, self.max_iter, self.tol)
            model.coef, model.intercept = vt.T @ coef, intercept  # (dim, C), (C,)
            models.append(model)
        return models

    @staticmethod
    def _loss(f: np.ndarray, onehot: np.ndarray, l2: float, coef: np.ndarray, intercept: np.ndarray) -> float:
        return float(-(onehot * _log_softmax(f @ coef + intercept)).sum() + 0.5 * l2 * (coef * coef).sum())

    def _solve(self, f: np.ndarray, sv: np.ndarray, onehot: np.ndarray, l2: float, coef: np.ndarray,
               intercept: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        step = 1.0 / (0.5 * sv**2 + l2)  # (r,): the bound's inverse curvature per coordinate
        step_b = 1.0 / (0.5 * len(f))
        loss = self._loss(f, onehot, l2, coef, intercept)
        prev_c, prev_b, t = coef, intercept, 1.0
        for _ in range(self.max_iter):
            t_next = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
            mom = (t - 1.0) / t_next
            yc, yb = coef + mom * (coef - prev_c), intercept + mom * (intercept - prev_b)
            resid = np.exp(_log_softmax(f @ yc + yb)) - onehot  # (n, C)
            grad_c, grad_b = f.T @ resid + l2 * yc, resid.sum(0)
            new_c, new_b = yc - step[:, None] * grad_c, yb - step_b * grad_b
            new_loss = self._loss(f, onehot, l2, new_c, new_b)
            if new_loss > loss:  # momentum overshot: restart with a plain step from the last point
                t_next = 1.0
                resid = np.exp(_log_softmax(f @ coef + intercept)) - onehot
                new_c = coef - step[:, None] * (f.T @ resid + l2 * coef)
                new_b = intercept - step_b * resid.sum(0)
                new_loss = self._loss(f, onehot, l2, new_c, new_b)
            prev_c, prev_b, coef, intercept, t = coef, intercept, new_c, new_b, t_next
            done = loss - new_loss <= self.tol * max(abs(new_loss), 1.0)
            loss = new_loss
            if done:
                break
        return coef, intercept

    def scores(self, x: np.ndarray) -> np.ndarray:
        return x.astype(np.float64) @ self.coef + self.intercept


class ChosenLogistic:
    """logistic_auto: logistic regression on one saved layer (standardized), plus ``w`` times the
    label words' log-probs centred by the training anchors' mean (a calibration of the direct
    scores by the anchors); layer, L2 weight and ``w`` chosen by cross-validation on the anchors.

    The choice maximizes the held-out anchors' summed log-probability of their class (with 16-32
    held-out anchors per fold, accuracy moves in steps and ties often; the log-likelihood does
    not), then the stronger L2, the smaller ``w``, the later layer.  ``w`` = 0 is the states alone.
    """

    def __init__(self, folds: int = DEFAULT_FOLDS, l2s: Sequence[float] = LOGISTIC_L2,
                 label_weights: Sequence[float] = LABEL_WEIGHTS) -> None:
        self.folds, self.l2s, self.label_weights = folds, tuple(sorted(l2s, reverse=True)), tuple(label_weights)

    @staticmethod
    def _centred(label_lp: np.ndarray, mean: np.ndarray) -> np.ndarray:
        return _log_softmax(label_lp - mean)

    def cv_scores(self, states: np.ndarray, label_lp: np.ndarray, y: np.ndarray,
                  n_classes: int) -> Dict[Tuple[int, float, float], Tuple[float, int]]:
        """{(saved layer, L2, w): (held-out log-likelihood, held-out anchors right)} over the folds."""
        fold = rank_folds(y, n_classes, self.folds)
        out: Dict[Tuple[int, float, float], Tuple[float, int]] = {}
        for layer in range(states.shape[1]):
            for f in range(self.folds):
                train, held = fold != f, fold == f
                scaler = Scaler("standard").fit(states[train, layer].astype(np.float64))
                xt, xh = scaler.transform(states[train, layer]), scaler.transform(states[held, layer])
                words = self._centred(label_lp[held], label_lp[train].mean(0))
                models = LogisticRegression(self.l2s[0]).fit_path(xt, y[train], n_classes, self.l2s)
                for model in models:
                    from_states = _log_softmax(model.scores(xh))
                    for w in self.label_weights:
                        lp = _log_softmax(from_states + w * words)
                        key = (layer, model.l2, w)
                        ll, right = out.get(key, (0.0, 0))
                        out[key] = (ll + float(lp[np.arange(len(lp)), y[held]].sum()),
                                    right + int((lp.argmax(1) == y[held]).sum()))
        return out

    def fit(self, states: np.ndarray, label_lp: np.ndarray, y: np.ndarray, n_classes: int) -> "ChosenLogistic":
        """Choose on the anchors' states (m, layers, dim), label-word log-probs (m, C) and labels; fit on all."""
        if states.ndim != 3:
            raise ValueError(f"states must be (anchors, layers, dim), not {states.shape}")
        if np.bincount(y, minlength=n_classes).min() >= 2 * self.folds:
            cv = self.cv_scores(states, label_lp, y, n_classes)
            self.layer, self.l2, self.weight = max(cv, key=lambda k: (cv[k][0], k[1], -k[2], k[0]))
            self.cv_accuracy: Optional[float] = cv[(self.layer, self.l2, self.weight)][1] / len(y)
            self.cv_log_likelihood: Optional[float] = cv[(self.layer, self.l2, self.weight)][0] / len(y)
        else:  # too few anchors to cross-validate: the last layer, the strongest L2, the states alone
            self.layer, self.l2, self.weight = states.shape[1] - 1, self.l2s[0], 0.0
            self.cv_accuracy = self.cv_log_likelihood = None
        x = states[:, self.layer].astype(np.float64)
        self.scaler = Scaler("standard").fit(x)
        self.model = LogisticRegression(self.l2).fit(self.scaler.transform(x), y, n_classes)
        self.label_mean = label_lp.mean(0)
        return self

    def scores(self, states: np.ndarray, label_lp: np.ndarray) -> np.ndarray:
        """(n, classes) log-probs of the test states (n, layers, dim) with their label-word log-probs (n, C)."""
        from_states = _log_softmax(self.model.scores(self.scaler.transform(states[:, self.layer])))
        return _log_softmax(from_states + self.weight * self._centred(label_lp, self.label_mean))

    def summary(self, layer_numbers: Optional[Sequence[int]] = None) -> Dict[str, Any]:
        names: List[Any] = list(layer_numbers) if layer_numbers is not None else ["final"]
        return {"layers": [names[self.layer]], "scaling": "standard", "l2": self.l2, "label_weight": self.weight,
                "cv_accuracy": self.cv_accuracy, "cv_log_likelihood": self.cv_log_likelihood, "folds": self.folds}


class AnchorCalibration:
    """The work of ``--calibration hidden|lda|knn|hidden_auto|lda_auto`` (:mod:`classification.calibrations`):
    check, prepare, apply."""

    def __init__(self, name: str, n_anchor: Optional[int] = None, knn_k: int = DEFAULT_KNN_K,
                 accept_mismatch: bool = False) -> None:
        if name not in NAMES:
            raise ClassificationError(f"anchor calibration {name!r} is not one of {', '.join(NAMES)}")
        for flag, value in (("--n_anchor", n_anchor), ("--knn_k", knn_k)):
            if value is not None:
                check_int(flag, value, 1)
        self.name, self.n_anchor, self.knn_k, self.accept_mismatch = name, n_anchor, knn_k, accept_mismatch
        self.log_probs: np.ndarray = np.zeros((0, 0))

    def check(self, direct_input_path: str, direct_output_path: str, records: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
        """One-line errors, before any model is loaded, for hidden states that are not the direct
        run's, anchors missing or from another preprocessing than the test ``records`` (label words,
        prompt), a class without anchors, or too few anchors for the method; the fingerprint entries."""
        rerun = (f"rerun run_evaluate_direct_llama.py --data_path {direct_input_path} --output_path {direct_output_path} "
                 "--save_hidden")
        direct_metrics = read_metrics(direct_output_path)
        if direct_metrics is None:
            raise ClassificationError(f"--direct_output_path {direct_output_path} has no metrics file of its own run "
                                      f"to show which hidden states are its; {rerun}")
        self.test_fingerprint = direct_metrics.get("fingerprint") or {}
        self.test_hidden_path = check_written(direct_output_path, direct_metrics, "hidden", rerun)
        self.test_states = load_hidden(self.test_hidden_path, len(records), f"--direct_output_path {direct_output_path}",
                                       rerun)
        # hidden, lda, knn: the final-normed state (the last saved layer); *_auto: every saved layer.
        self.test_layers = saved_layers(direct_output_path, direct_metrics, self.test_states)
        self.test_hidden = self.test_states[:, -1] if self.test_states.ndim == 3 else self.test_states
        self.anchor_inputs = anchors_path(direct_input_path)
        if not Path(self.anchor_inputs).is_file():
            raise ClassificationError(
                f"--calibration {self.name} needs anchor records {self.anchor_inputs}; preprocess with --n_anchor M "
                "(M labeled training examples per class)"
            )
        self.anchor_outputs = anchors_path(direct_output_path)
        self.anchor_records = load_records(self.anchor_inputs, "direct")
        check_same_prompt(self.anchor_records, records, self.anchor_inputs, direct_input_path)
        demos = (records[0].get("meta") or {}).get("demos", "random")
        if demos != "random":
            # Measured (docs/results.md, "Anchors and retrieved demonstrations"): not an error, a worse choice.
            print(f"Note: with --demos {demos} every test input and every anchor has its own prompt, so "
                  f"--calibration {self.name} compares hidden states of different prompts; measured against one "
                  "random set of demonstrations for all, it was no better on ag_news and trec and worse on sst2, at "
                  "about 3x the scoring time: prefer --demos random with the anchor calibrations")
        words = self.anchor_records[0]["label_words"]
        labels = np.array([words.index(r["ground_truth"]) for r in self.anchor_records])
        counts = np.bincount(labels, minlength=len(words))
        if counts.min() == 0:
            raise ClassificationError(
                f"anchor records {self.anchor_inputs} have no anchor of class {words[int(counts.argmin())]!r}; every "
                "class needs anchors: preprocess again with --n_anchor M"
            )
        if self.n_anchor is not None and self.n_anchor > counts.min():
            raise ClassificationError(
                f"--n_anchor {self.n_anchor} is more than the {counts.min()} anchors per class in {self.anchor_inputs}"
            )
        # The first n_anchor anchors of each class, in file order.
        rank = np.array([(labels[: i + 1] == labels[i]).sum() for i in range(len(labels))])
        self.keep = np.nonzero(rank <= (self.n_anchor or counts.max()))[0]
        self.labels, self.n_classes = labels[self.keep], len(words)
        per_class = int(np.bincount(self.labels).min())
        if self.name == "lda" and per_class < 2:
            raise ClassificationError(
                "--calibration lda needs at least 2 anchors per class (their spread within a class is its "
                f"covariance), not {per_class}; use --calibration hidden, or preprocess with a larger --n_anchor"
            )
        if self.name == "knn" and self.knn_k >= len(self.keep):
            raise ClassificationError(
                f"--knn_k {self.knn_k} is not less than the {len(self.keep)} anchors used: every input would get "
                f"the same votes; use --knn_k {max(1, per_class)} or fewer, or more anchors (--n_anchor)"
            )
        out: Dict[str, Any] = {"anchors_sha256": file_sha256(self.anchor_inputs), "n_anchor": self.n_anchor}
        if self.name == "knn":
            out["knn_k"] = self.knn_k
        return out

    def prepare(self, lm: Any, direct_log_probs: Optional[Sequence[Sequence[float]]] = None) -> None:
        """Fit on the anchors' hidden states (saved by the direct run of ``anchor_inputs`` into
        ``anchor_outputs``, which has to be run first); knn also takes ``lm``'s output head,
        logistic_auto the test records' label log-probs ``direct_log_probs`` and the anchors' own."""
        rescore = f"delete {self.anchor_outputs} to score the anchors again"
        metrics = read_metrics(self.anchor_outputs)
        if metrics is None:
            raise ClassificationError(f"the anchors' run {self.anchor_outputs} has no metrics file of its own; {rescore}")
        anchor_hidden = check_written(self.anchor_outputs, metrics, "hidden", rescore)
        if not self.accept_mismatch:
            check_same_model(metrics.get("fingerprint") or {}, self.test_fingerprint,
                             f"the anchors' hidden states {anchor_hidden}",
                             f"the test states {self.test_hidden_path} are the direct run's: {rescore} with its flags")
        all_states = load_hidden(anchor_hidden, len(self.anchor_records), f"anchors {self.anchor_outputs}",
                                 rescore)[self.keep]
        states = all_states[:, -1] if all_states.ndim == 3 else all_states  # the final-normed state
        if states.shape[1] != self.test_hidden.shape[1]:
            raise ClassificationError(
                f"{anchor_hidden} holds {states.shape[1]}-dimensional hidden states but {self.test_hidden_path} "
                f"{self.test_hidden.shape[1]}-dimensional ones: they come from different models; delete {anchor_hidden} "
                "to score the anchors again with this model"
            )
        if self.name in CHOOSING:
            self._prepare_auto(all_states, anchor_hidden, metrics, direct_log_probs)
        elif self.name in ("hidden", "lda"):
            model = NearestCentroid() if self.name == "hidden" else ShrinkageLDA()
            self.fitted = model.fit(states, self.labels, self.n_classes)
            self.log_probs = _log_softmax(self.fitted.scores(self.test_hidden))
        else:
            knn = KnnVote(self.knn_k).fit(lm.next_token_log_probs(states), self.labels, self.n_classes)
            # Chunks: a (rows, vocab) distribution per test record is large for a whole test split.
            parts = [knn.scores(lm.next_token_log_probs(self.test_hidden[i : i + 256]))
                     for i in range(0, len(self.test_hidden), 256)]
            self.log_probs = _log_softmax(np.concatenate(parts))

    def _prepare_auto(self, anchor_states: np.ndarray, anchor_hidden: str, metrics: Dict[str, Any],
                      direct_log_probs: Optional[Sequence[Sequence[float]]]) -> None:
        """hidden_auto, lda_auto, logistic_auto: layers, scaling (and shrinkage, L2, label weight)
        chosen on the anchors' saved layers."""
        anchor_layers = saved_layers(self.anchor_outputs, metrics, anchor_states)
        if anchor_layers != self.test_layers:
            raise ClassificationError(
                f"{anchor_hidden} holds the states of layers {anchor_layers or 'final'} but {self.test_hidden_path} of "
                f"layers {self.test_layers or 'final'}; --calibration {self.name} needs the same layers: rerun the "
                f"direct run with --save_hidden, or delete {anchor_hidden} to score the anchors again"
            )
        as_layers = (lambda x: x if x.ndim == 3 else x[:, None, :])  # (n, dim): the final state alone
        if self.name == "logistic_auto":
            if direct_log_probs is None:
                raise ValueError("logistic_auto needs the test records' direct log-probs")
            outputs = load_direct_outputs(self.anchor_outputs, self.anchor_records)
            anchor_lp = np.array([out["log_probs"] for out in outputs], dtype=np.float64)[self.keep]  # (m, C)
            self.fitted = ChosenLogistic().fit(as_layers(anchor_states), anchor_lp, self.labels, self.n_classes)
            self.log_probs = self.fitted.scores(as_layers(self.test_states), np.asarray(direct_log_probs, np.float64))
            return
        self.fitted = ChosenFeatures(AUTO_KINDS[self.name]).fit(as_layers(anchor_states), self.labels, self.n_classes)
        self.log_probs = _log_softmax(self.fitted.scores(as_layers(self.test_states)))

    def apply(self, pos: int) -> List[float]:
        """Normalized label log-probs of record ``pos``."""
        return [float(x) for x in self.log_probs[pos]]

    def summary(self) -> Dict[str, Any]:
        out = {"n_anchor": int(np.bincount(self.labels).min()), "anchor_path": self.anchor_inputs,
               "hidden_path": self.test_hidden_path}
        if self.name == "lda":
            out["lda_shrinkage"] = self.fitted.shrinkage
        if self.name in CHOOSING:
            out["features"] = self.fitted.summary(self.test_layers)
        if self.name == "knn":
            out["knn_k"] = self.knn_k
        return out

