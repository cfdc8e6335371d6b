"""Every preset end to end with the default model on CPU: offline copy -> records -> every method.

A few test examples per preset (one seed); the seeds command drives preprocessing and all seven
runs (direct, the four calibrations, channel, generate) with one loaded model.
"""

import json
from pathlib import Path

import pytest

from classification.backend.loader import load_lm
from classification.inputs.presets import PRESETS
from classification.run.seeds import SEED_METHODS, run_seeds

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def real_lm(default_model_dir):
    return load_lm(str(default_model_dir / "135M"), str(default_model_dir / "tokenizer.json"), device="cpu")


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data not present")
# dbpedia's 14 label words make its run the longest; it runs with the slow tests.
@pytest.mark.parametrize("preset", [pytest.param(p, marks=pytest.mark.slow) if p == "dbpedia" else p for p in PRESETS])
def test_preset_end_to_end_with_the_default_model(tmp_path, real_lm, preset):
    out = tmp_path / preset
    summary = run_seeds(preset, data_dir=str(SHARED / preset), seeds=[7], n_sample=2, out_dir=str(out), lm=real_lm)
    assert list(summary["methods"]) == ["direct", "direct+na", "direct+cbu", "direct+dcpmi", "direct+batch",
                                        "channel", "generate"]
    words = list(PRESETS[preset].label_words)
    for method in SEED_METHODS:
        outputs = json.loads((out / "seed7" / f"outputs_{method}.json").read_text())
        metrics = json.loads((out / "seed7" / f"outputs_{method}.metrics.json").read_text())
        assert len(outputs) == 2 and metrics["n"] == 2 and metrics["dataset"] == preset and metrics["seed"] == 7
        assert 0.0 <= metrics["accuracy"] <= 1.0 and len(metrics["confusion_matrix"]["rows"]) == len(words)
        for o in outputs:
            assert o["prediction"] in words + ["none"]
            if method != "generate":
                assert len(o["log_probs"]) == len(words) and all(x <= 0 for x in o["log_probs"])
        assert (metrics["ece"] is None) == (method == "generate")


@pytest.mark.skipif(not (SHARED / "sst2").is_dir(), reason="../shared/data not present")
def test_dataset_given_by_file_paths_and_a_template_with_the_default_model(tmp_path, real_lm):
    spec = tmp_path / "reviews.json"
    spec.write_text(json.dumps({
        "train": str(SHARED / "sst2" / "dev.csv"), "test": str(SHARED / "sst2" / "test.csv"), "name": "reviews",
        "label_words": ["bad", "good"],
        "templates": {"direct": "{text} All in all, it was {label_word}.", "channel": "A {label_word} film: {text}"},
    }))
    out = tmp_path / "runs"
    summary = run_seeds(str(spec), methods=["direct", "batch", "channel", "generate"], seeds=[1, 2], n_sample=2,
                        out_dir=str(out), lm=real_lm)
    assert list(summary["methods"]) == ["direct", "direct+batch", "channel", "generate"]
    rec = json.loads((out / "seed1" / "inputs_direct.json").read_text())[0]
    assert rec["prompt"].endswith("\n{text} All in all, it was") and rec["completion"] == "{label_word}."
    assert json.loads((out / "seed2" / "outputs_channel.metrics.json").read_text())["dataset"] == "reviews"
