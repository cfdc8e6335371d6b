"""Post-hoc calibrations of a direct run's label log-probs, one class each (``--calibration``).

A calibration is built from the calibration flags and the input records (checking its flags),
``prepare``-d once with the model and every direct log-prob, then ``apply``-ed to each record.
A calibration that needs another run first (the anchors' direct run) declares it in
``needed_runs``; the runner runs it before ``prepare``, so no calibration runs anything itself.
Adding one means writing one class here and decorating it with :func:`register`; the runner, the
fingerprint, the metrics and ``run_seeds --methods`` pick it up from :data:`CALIBRATIONS`.
The math lives in :mod:`classification.methods` (hidden, lda, knn: :mod:`classification.anchors`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple, Type, Union

from classification import anchors, methods
from classification.errors import ClassificationError, check_int
from classification.lm import LanguageModel
from classification.paths import hidden_path

Record = Dict[str, Any]


@dataclass(frozen=True)
class CalibrationOptions:
    """The calibration flags as given (None: not given)."""

    content_free: Union[None, str, Sequence[str]] = None
    domain_premise: Optional[str] = None
    batch_size: Optional[int] = None
    completion_end: str = "eos"
    n_anchor: Optional[int] = None
    knn_k: Optional[int] = None
    # Not flags: the direct run's input and output files (the anchor calibrations read what the
    # direct run saved beside them).
    direct_input_path: Optional[str] = None
    direct_output_path: Optional[str] = None
    accept_mismatch: bool = False  # use anchors scored with another model than the test states


@dataclass(frozen=True)
class RunRequest:
    """A run a calibration needs before ``prepare``: ``method`` on ``data_path`` into ``output_path``,
    scored with the calibrated run's model and flags (reused when it is finished already)."""

    method: str
    data_path: str
    output_path: str
    save_hidden: bool = False


class Calibration:
    """Base class: a calibration's name, the flags it takes and its three steps."""

    name: ClassVar[str] = ""
    flags: ClassVar[Tuple[str, ...]] = ()  # the CalibrationOptions fields it reads (others must be None)
    needs_model: ClassVar[bool] = True
    # Whether it reads files a direct run saved (anchors, hidden states): not for records in memory.
    needs_direct_files: ClassVar[bool] = False

    def __init__(self, options: CalibrationOptions, records: Sequence[Record]) -> None:
        self.options = options

    def settings(self) -> Dict[str, Any]:
        """What changes its results (fingerprinted and written to the metrics)."""
        return {}

    def input_files(self) -> List[Tuple[str, str]]:
        """(what, path) of the files it reads besides the direct run's inputs and outputs (the
        run must not write over them)."""
        return []

    def needed_runs(self) -> Tuple[RunRequest, ...]:
        """Runs whose files ``prepare`` reads; the runner runs them first."""
        return ()

    def prepare(self, lm: Optional[LanguageModel], records: Sequence[Record], direct_log_probs: Sequence[Sequence[float]]) -> None:
        """Work shared by all records (content-free scores, batch means, ...)."""

    def apply(self, pos: int, record: Record, direct_log_probs: Sequence[float]) -> Dict[str, Any]:
        """``log_probs`` (normalized over the labels) of record ``pos``, plus any per-record extras."""
        raise NotImplementedError

    def summary(self) -> Dict[str, Any]:
        """Extra metrics describing what ``prepare`` computed."""
        return {}


CALIBRATIONS: Dict[str, Type[Calibration]] = {}


def register(cls: Type[Calibration]) -> Type[Calibration]:
    CALIBRATIONS[cls.name] = cls
    return cls


def calibration_class(name: str, options: CalibrationOptions) -> Type[Calibration]:
    """The calibration called ``name``, after checking that it takes the flags given (one-line errors)."""
    if name not in CALIBRATIONS:
        raise ClassificationError(f"--calibration {name!r} is not one of {', '.join(CALIBRATIONS)}")
    cls = CALIBRATIONS[name]
    for flag in ("content_free", "domain_premise", "batch_size", "n_anchor", "knn_k"):
        if getattr(options, flag) is not None and flag not in cls.flags:
            takers = " or ".join(n for n, c in CALIBRATIONS.items() if flag in c.flags)
            raise ClassificationError(f"--{flag} applies to --calibration {takers}, not {name}")
    return cls


class _ContentFree(Calibration):
    flags = ("content_free",)
    default_texts: ClassVar[Tuple[str, ...]] = methods.DEFAULT_CONTENT_FREE

    def __init__(self, options: CalibrationOptions, records: Sequence[Record]) -> None:
        super().__init__(options, records)
        cf = options.content_free
        if cf is None:
            self.texts = list(self.default_texts)
        elif isinstance(cf, (list, tuple)):
            self.texts = [str(x) for x in cf]
        else:
            self.texts = [str(cf)]
        if not self.texts:
            raise ClassificationError("--content_free needs at least one content-free text, e.g. N/A")
        self.p_cf: Dict[Tuple[str, str], List[float]] = {}

    def settings(self) -> Dict[str, Any]:
        return {"content_free": self.texts}

    def prepare(self, lm, records, direct_log_probs) -> None:
        for rec in records:  # one prompt per file in practice
            key = (rec["prompt"], rec["completion"])
            if key not in self.p_cf:
                self.p_cf[key] = methods.content_free_probs(lm, rec, self.texts, self.options.completion_end)

    def apply(self, pos, record, direct_log_probs) -> Dict[str, Any]:
        p_cf = self.p_cf[(record["prompt"], record["completion"])]
        return {"log_probs": methods.calibrate_log_probs(direct_log_probs, p_cf), "p_cf": p_cf,
                "score": methods.contextual_scores(direct_log_probs, p_cf)}  # the original's score

    def summary(self) -> Dict[str, Any]:
        return {"content_free": self.texts, "content_free_probs": next(iter(self.p_cf.values()), None)}


@register
class NA(_ContentFree):
    """Contextual calibration with the content-free input "N/A" (Zhao et al. 2021; the original's)."""

    name = "na"


@register
class CBU(_ContentFree):
    """Contextual calibration averaged over "N/A", "" and "[MASK]" (Calibrate Before Use)."""

    name = "cbu"
    default_texts = methods.CBU_CONTENT_FREE


@register
class DCPMI(Calibration):
    """Domain-conditional PMI (Holtzman et al. 2021): minus log p(y | domain premise)."""

    name = "dcpmi"
    flags = ("domain_premise",)

    def __init__(self, options: CalibrationOptions, records: Sequence[Record]) -> None:
        super().__init__(options, records)
        premise = options.domain_premise
        self.premise = premise if premise is not None else methods.default_domain_premise(records[0])
        if not isinstance(self.premise, str) or not self.premise.strip():
            raise ClassificationError("--domain_premise must be a non-empty text, e.g. Category:")
        self.premise_lp: Dict[str, List[float]] = {}

    def settings(self) -> Dict[str, Any]:
        return {"domain_premise": self.premise}

    def prepare(self, lm, records, direct_log_probs) -> None:
        for rec in records:
            if rec["completion"] not in self.premise_lp:
                self.premise_lp[rec["completion"]] = methods.premise_log_probs(
                    lm, rec, self.premise, self.options.completion_end
                )

    def apply(self, pos, record, direct_log_probs) -> Dict[str, Any]:
        lp = self.premise_lp[record["completion"]]
        return {"log_probs": methods.dcpmi_log_probs(direct_log_probs, lp), "premise_log_probs": lp}

    def summary(self) -> Dict[str, Any]:
        return {"domain_premise": self.premise, "premise_log_probs": next(iter(self.premise_lp.values()), None)}


@register
class Batch(Calibration):
    """Batch calibration (Zhou et al. 2023): minus the log of the batch's mean label probability;
    no model; the batch is the test set or blocks of it."""

    name = "batch"
    flags = ("batch_size",)
    needs_model = False
    average: ClassVar[str] = "probs"

    def __init__(self, options: CalibrationOptions, records: Sequence[Record]) -> None:
        super().__init__(options, records)
        size = options.batch_size
        if size is not None:
            check_int("--batch_size", size, 1)
        self.calibrated: List[List[float]] = []
        self.priors: List[List[float]] = []

    def settings(self) -> Dict[str, Any]:
        return {"batch_size": self.options.batch_size}

    def prepare(self, lm, records, direct_log_probs) -> None:
        self.priors = methods.batch_log_priors(direct_log_probs, self.options.batch_size, self.average)
        self.calibrated = methods.batch_calibrate(direct_log_probs, self.options.batch_size, self.average)

    def apply(self, pos, record, direct_log_probs) -> Dict[str, Any]:
        return {"log_probs": self.calibrated[pos]}

    def summary(self) -> Dict[str, Any]:
        return {"batch_size": self.options.batch_size, "batch_log_prior": self.priors[0] if self.priors else None}


@register
class BatchLogMean(Batch):
    """Batch calibration with the mean of the batch's log-probs as the log prior (not the paper's)."""

    name = "batch_logmean"
    average = "log_probs"


class _Anchored(Calibration):
    """Base of the calibrations on labeled anchors and the direct run's saved hidden states
    (``--save_hidden``; :class:`classification.anchors.AnchorCalibration` does the work)."""

    flags = ("n_anchor",)
    needs_direct_files = True

    def __init__(self, options: CalibrationOptions, records: Sequence[Record]) -> None:
        super().__init__(options, records)
        knn_k = anchors.DEFAULT_KNN_K if options.knn_k is None else options.knn_k
        self.anchored = anchors.AnchorCalibration(self.name, options.n_anchor, knn_k, options.accept_mismatch)
        paths = options.direct_input_path, options.direct_output_path
        if None in paths:
            raise ClassificationError(f"--calibration {self.name} needs the direct run's input and output paths")
        self.fingerprint = self.anchored.check(*paths, records)

    def settings(self) -> Dict[str, Any]:
        return dict(self.fingerprint)

    def input_files(self) -> List[Tuple[str, str]]:
        a = self.anchored
        return [("the anchor records", a.anchor_inputs), ("the hidden states", a.test_hidden_path),
                ("the scored anchors", a.anchor_outputs), ("the scored anchors' hidden states",
                                                           hidden_path(a.anchor_outputs))]

    def needed_runs(self) -> Tuple[RunRequest, ...]:
        # The anchors scored as the direct run scored the test set, with their hidden states.
        return (RunRequest("direct", self.anchored.anchor_inputs, self.anchored.anchor_outputs, save_hidden=True),)

    def prepare(self, lm, records, direct_log_probs) -> None:
        self.anchored.prepare(lm, direct_log_probs)

    def apply(self, pos, record, direct_log_probs) -> Dict[str, Any]:
        return {"log_probs": self.anchored.apply(pos)}

    def summary(self) -> Dict[str, Any]:
        return self.anchored.summary()


@register
class Hidden(_Anchored):
    """Hidden calibration (Cho et al. 2025): the nearest class centroid of the anchors' hidden states."""

    name = "hidden"


@register
class LDA(_Anchored):
    """The anchors' hidden states through a linear discriminant with a shrunk shared covariance."""

    name = "lda"


@register
class HiddenAuto(_Anchored):
    """Nearest class centroid on the saved layers and scaling that cross-validation on the anchors chooses."""

    name = "hidden_auto"


@register
class LDAAuto(_Anchored):
    """The shrunk linear discriminant on the saved layers, scaling and shrinkage that cross-validation
    on the anchors chooses."""

    name = "lda_auto"


@register
class LogisticAuto(_Anchored):
    """Logistic regression on the saved layer that cross-validation on the anchors chooses, with the
    label words' log-probs centred by the anchors' mean at a weight chosen there too."""

    name = "logistic_auto"


@register
class KNN(_Anchored):
    """kNN prompting (Xu et al. 2023): the ``knn_k`` anchors nearest in next-token distribution vote."""

    name = "knn"
    flags = ("n_anchor", "knn_k")
