"""In-context text classification with LLaMA-family models (direct, calibrate, channel, generate).

The Python API::

    load_lm(ckpt_dir, tokenizer_path, *, dtype, device, quantize, scoring, completion_end, ...) -> model
    make_records(preset_or_dataset, method, *, data_dir, k, seed, n_sample, demos, ...) -> input records
    classify(lm, records, method, *, completion_end, ...) -> output records (as outputs_*.json)
    calibrate(lm, records, direct_outputs, calibration, ...) -> output records
    compute_metrics(records, outputs, method) -> metrics (as *.metrics.json)
    evaluate(method, data_path, output_path, **flags) -> metrics: the resumable run on files
    load_dataset(preset=..., data_dir=..., ...) -> a Dataset for make_records

Layers, each importing only those above it: ``llama`` (the model) | ``errors``, ``paths``,
``fileio``, ``templates``, ``lm`` (the LanguageModel interface), ``records``, ``methods``,
``metrics``, ``states``, ``anchors``, ``calibrations``, ``cli`` | ``inputs/`` (datasets to
records) and ``backend/`` (the LlamaLM scorer and its loader: the only torch) | ``run/`` (runner,
resume, seeds, preprocessing) and ``report/`` (table, Markdown report) | ``api``.

The names are imported on first use, so ``import classification`` for records or metrics does
not import torch (only ``load_lm`` and ``evaluate`` do).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from classification.errors import ClassificationError

# name -> the module that defines it (imported when the name is first used).
_API = {
    "load_lm": "classification.backend.loader",
    "make_records": "classification.api",
    "classify": "classification.api",
    "calibrate": "classification.api",
    "compute_metrics": "classification.metrics",
    "evaluate": "classification.run.runner",
    "load_dataset": "classification.inputs.datasets",
}

__all__ = ["ClassificationError", "load_lm", "make_records", "classify", "calibrate", "compute_metrics", "evaluate",
           "load_dataset"]

if TYPE_CHECKING:  # the same names for type checkers (and the import graph of tests/test_layers.py)
    from classification.api import calibrate, classify, make_records
    from classification.backend.loader import load_lm
    from classification.inputs.datasets import load_dataset
    from classification.metrics import compute_metrics
    from classification.run.runner import evaluate


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'classification' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))
