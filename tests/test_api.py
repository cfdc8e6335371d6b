"""The Python API (classification/__init__.py): in memory it gives what the scripts write to files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import classification
from classification import ClassificationError, calibrate, classify, compute_metrics, make_records
from classification.inputs.ag_news import build_records
from classification.inputs.datasets import Dataset
from classification.inputs.presets import get_preset
from classification.run.preprocess import preprocess_dataset
from classification.run.runner import evaluate
from classification_fakes import FakeLM, synthetic_splits


def synthetic_dataset() -> Dataset:
    train, test = synthetic_splits()
    preset = get_preset("ag_news")
    return Dataset("ag_news", train, test, list(preset.label_words), dict(preset.templates))


def run_files(tmp_path, method, records, **flags):
    data = tmp_path / f"in_{method}.json"
    if not data.exists():
        data.write_text(json.dumps(records), encoding="utf-8")
    out = tmp_path / f"out_{method}_{flags.get('calibration', '')}.json"
    metrics = evaluate(method, str(data), str(out), lm=FakeLM(), **flags)
    return json.loads(out.read_text(encoding="utf-8")), metrics


def test_the_api_is_what_init_exports():
    assert set(classification.__all__) == set(classification._API) | {"ClassificationError"}
    for name in classification.__all__:
        assert callable(getattr(classification, name)), name
    with pytest.raises(AttributeError):
        classification.no_such_name  # noqa: B018


def test_importing_classification_for_records_and_metrics_does_not_import_torch():
    code = ("import sys, classification; from classification import make_records, compute_metrics, classify; "
            "print('torch' in sys.modules); classification.load_lm; print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]


def test_make_records_equals_the_records_of_build_records_and_preprocess(tmp_path, shared_data):
    train, test = synthetic_splits()
    for method in ("direct", "channel"):
        assert make_records(synthetic_dataset(), method, k=2, seed=5, n_sample=8) == \
            build_records(method, train, test, k=2, seed=5, n_sample=8)
    path = tmp_path / "sst2.json"
    written = preprocess_dataset(preset="sst2", data_dir=str(shared_data / "sst2"), data_path=str(path), k=1,
                                 seed=3, n_sample=6, demos="bm25")
    in_memory = make_records("sst2", data_dir=str(shared_data / "sst2"), k=1, seed=3, n_sample=6, demos="bm25")
    assert in_memory == written == json.loads(path.read_text(encoding="utf-8"))
    assert len(make_records(synthetic_dataset(), n_sample=0)) == len(test)  # 0: the whole test split


@pytest.mark.parametrize("method", ["direct", "channel", "generate"])
def test_classify_gives_the_outputs_and_metrics_of_evaluate(tmp_path, method):
    records = make_records(synthetic_dataset(), "channel" if method == "channel" else "direct", seed=3, n_sample=12)
    outputs = classify(FakeLM(), records, method)
    on_file, metrics = run_files(tmp_path, method, records)
    assert outputs == on_file
    in_memory = compute_metrics(records, outputs, method)
    assert in_memory == {key: metrics[key] for key in in_memory}
    assert in_memory["accuracy"] > 0.5  # the fake model reads the topic word of each text


@pytest.mark.parametrize("name", ["na", "cbu", "dcpmi", "batch"])
def test_calibrate_gives_the_outputs_of_evaluate(tmp_path, name):
    records = make_records(synthetic_dataset(), seed=3, n_sample=12)
    direct, _ = run_files(tmp_path, "direct", records)
    calibrated = calibrate(None if name == "batch" else FakeLM(), records, classify(FakeLM(), records), name)
    on_file, _ = run_files(tmp_path, "calibrate", records, calibration=name,
                           direct_output_path=str(tmp_path / "out_direct_.json"))
    assert calibrated == on_file


def test_api_errors_are_one_line():
    records = make_records(synthetic_dataset(), n_sample=4)
    with pytest.raises(ClassificationError, match="classify takes one of direct, channel, generate"):
        classify(FakeLM(), records, "calibrate")
    with pytest.raises(ClassificationError, match="needs a model loaded with that completion_end"):
        classify(FakeLM(append_eos=True), records, completion_end="none")
    with pytest.raises(ClassificationError, match="reads the files of a direct run"):
        calibrate(FakeLM(), records, classify(FakeLM(), records), "hidden")
    with pytest.raises(ClassificationError, match="needs embed"):
        make_records(synthetic_dataset(), demos="knn")
    with pytest.raises(ClassificationError, match="lacks key"):
        classify(FakeLM(), [{"prompt": "x {text}"}])
