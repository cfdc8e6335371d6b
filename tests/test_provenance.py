"""classification.provenance: a reader takes a derived file only when it is what the reader needs.

Each test builds the situation a user reached (a file left from another run, model, seed or
precision) and checks that the run is refused with one line naming both sides, or that the stale
file is made again, instead of a wrong number with exit 0.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from classification.errors import ClassificationError
from classification.inputs import retrieval
from classification.inputs.datasets import Dataset, get_preset
from classification.run.runner import evaluate
from classification_fakes import FakeLM, synthetic_splits

ROOT = Path(__file__).resolve().parents[1]


def write_inputs(folder: Path, seed: int = 1, n_anchor: int = 3):
    """Test records and anchors of one preprocessing (ag_news layout, synthetic texts)."""
    train, test = synthetic_splits(8, 3)
    p = get_preset("ag_news")
    data = Dataset("ag_news", train, test, list(p.label_words), dict(p.templates), p.instruction)
    records, anchors = retrieval.records_and_anchors(data, "direct", None, 1, seed, True, 12, 0, n_anchor=n_anchor)
    (folder / "in.json").write_text(json.dumps(records))
    (folder / "in.anchors.json").write_text(json.dumps(anchors))
    return records, anchors, str(folder / "in.json")


def calibrate(folder: Path, inputs: str, direct: str, calibration: str = "hidden", name: str = "cal.json",
              lm=None, **flags):
    return evaluate("calibrate", inputs, str(folder / name), direct_output_path=direct, calibration=calibration,
                    lm=lm or FakeLM(), **flags)


def refused(fn, *args, **kwargs) -> str:
    with pytest.raises(ClassificationError) as e:
        fn(*args, **kwargs)
    message = str(e.value)
    assert "\n" not in message
    return message


def predictions(path: Path):
    return [o["prediction"] for o in json.loads(path.read_text())]


# Hidden states (item 1 of the trust issue)

def test_hidden_states_of_an_earlier_direct_run_are_refused(tmp_path):
    """Re-preprocess with another seed into the same path, re-run direct without --save_hidden:
    the states beside the output are the first run's."""
    _, _, inputs = write_inputs(tmp_path, seed=1)
    direct = str(tmp_path / "out.json")
    evaluate("direct", inputs, direct, lm=FakeLM(), save_hidden=True)
    write_inputs(tmp_path, seed=2)
    evaluate("direct", inputs, direct, lm=FakeLM())
    assert (tmp_path / "out.hidden.npy").is_file()
    message = refused(calibrate, tmp_path, inputs, direct)
    assert "saved no hidden states" in message and message.endswith("--save_hidden")


def test_hidden_states_changed_since_their_run_are_refused(tmp_path):
    _, _, inputs = write_inputs(tmp_path)
    direct = str(tmp_path / "out.json")
    evaluate("direct", inputs, direct, lm=FakeLM(), save_hidden=True)
    states = np.load(tmp_path / "out.hidden.npy")
    np.save(tmp_path / "out.hidden.npy", states[::-1])  # another run's rows: same shape, all finite
    message = refused(calibrate, tmp_path, inputs, direct)
    assert f"{tmp_path / 'out.hidden.npy'} is not the file the run of {direct} wrote" in message


class_with_other_states = """
import os, signal
from classification.run import runner
from classification_fakes import FakeLM

class OtherModel(FakeLM):
    def context_hidden(self, contexts):
        return super().context_hidden(contexts)[:, ::-1].copy()

# Killed for real once the hidden states are written, before the output and its metrics.
runner.write_finished = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
runner.evaluate("direct", {inputs!r}, {output!r}, lm=OtherModel(), save_hidden=True, dtype="bf16")
"""


def test_anchor_states_of_a_killed_run_are_scored_again(tmp_path, capsys):
    """A run in another dtype killed right after it wrote the anchors' states: the next run must not
    take the old metrics as "up to date" for the new states."""
    _, _, inputs = write_inputs(tmp_path)
    direct = str(tmp_path / "out.json")
    evaluate("direct", inputs, direct, lm=FakeLM(), save_hidden=True)
    calibrate(tmp_path, inputs, direct, name="first.json")
    anchors_out, anchors_hidden = tmp_path / "out.anchors.json", tmp_path / "out.anchors.hidden.npy"
    before = anchors_hidden.read_bytes()
    script = class_with_other_states.format(inputs=str(tmp_path / "in.anchors.json"), output=str(anchors_out))
    proc = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=str(ROOT / "tests")),
                          capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert anchors_hidden.read_bytes() != before  # the killed run's states, beside the old metrics
    capsys.readouterr()
    lm = FakeLM()
    calibrate(tmp_path, inputs, direct, name="second.json", lm=lm)
    assert f"Up to date: {anchors_out}" not in capsys.readouterr().out
    assert lm.calls > 0  # the anchors were scored again
    assert anchors_hidden.read_bytes() == before
    assert predictions(tmp_path / "second.json") == predictions(tmp_path / "first.json")


# Anchors (item 2)

def calibrate_with_anchors(folder: Path, inputs: str, anchors) -> str:
    """The refusal of a hidden calibration whose anchor records are ``anchors``."""
    (folder / "in.anchors.json").write_text(json.dumps(anchors))
    direct = str(folder / "out.json")
    evaluate("direct", inputs, direct, lm=FakeLM(), save_hidden=True)
    return refused(calibrate, folder, inputs, direct)


def test_anchors_of_another_seed_are_refused(tmp_path):
    _, _, inputs = write_inputs(tmp_path, seed=1)
    other = tmp_path / "other"
    other.mkdir()
    write_inputs(other, seed=2)
    message = calibrate_with_anchors(tmp_path, inputs, json.loads((other / "in.anchors.json").read_text()))
    assert "were made by another preprocessing" in message and "seed 2 vs 1" in message


def test_anchors_with_reordered_label_words_are_refused(tmp_path):
    _, anchors, inputs = write_inputs(tmp_path)
    reordered = [dict(a, label_words=a["label_words"][::-1]) for a in anchors]
    message = calibrate_with_anchors(tmp_path, inputs, reordered)
    assert "label words" in message and "another preprocessing" in message


def test_anchors_of_another_prompt_are_refused(tmp_path):
    """Hand-made records (no meta): the anchors' prompt must still be the test records'."""
    records, anchors, inputs = write_inputs(tmp_path)
    bare = [{k: v for k, v in r.items() if k != "meta"} for r in records]
    (tmp_path / "in.json").write_text(json.dumps(bare))
    other = [{k: v for k, v in dict(a, prompt="Other demonstrations\n" + a["prompt"]).items() if k != "meta"}
             for a in anchors]
    assert "another prompt" in calibrate_with_anchors(tmp_path, inputs, other)


def test_knn_k_of_all_anchors_and_lda_of_one_anchor_are_refused(tmp_path):
    _, anchors, inputs = write_inputs(tmp_path)
    direct = str(tmp_path / "out.json")
    evaluate("direct", inputs, direct, lm=FakeLM(), save_hidden=True)
    message = refused(calibrate, tmp_path, inputs, direct, "knn", knn_k=1000)
    assert f"--knn_k 1000 is not less than the {len(anchors)} anchors" in message
    assert "at least 2 anchors per class" in refused(calibrate, tmp_path, inputs, direct, "lda", n_anchor=1)
    calibrate(tmp_path, inputs, direct, "knn", knn_k=3)  # fewer than the anchors: fine


# The direct run's model and precision (item 3)

def model_dir(folder: Path, content: bytes) -> str:
    folder.mkdir()
    (folder / "weights.bin").write_bytes(content)
    return str(folder)


def test_calibration_with_another_model_than_the_direct_run_is_refused(tmp_path):
    _, _, inputs = write_inputs(tmp_path)
    a, b = model_dir(tmp_path / "a", b"A" * 64), model_dir(tmp_path / "b", b"B" * 64)
    direct = str(tmp_path / "out.json")
    evaluate("direct", inputs, direct, lm=FakeLM(), ckpt_dir=a)
    message = refused(calibrate, tmp_path, inputs, direct, "na", ckpt_dir=b)
    assert f"--direct_output_path {direct} was made with another model" in message
    assert "model_files" in message and "--accept_mismatch" in message
    calibrate(tmp_path, inputs, direct, "na", ckpt_dir=a)  # the direct run's model
    metrics = calibrate(tmp_path, inputs, direct, "na", name="knowingly.json", ckpt_dir=b, accept_mismatch=True)
    assert metrics["accuracy"] is not None
    assert "batch" not in message and calibrate(tmp_path, inputs, direct, "batch", ckpt_dir=b)  # no model: no check


def test_hidden_calibration_of_an_int8_direct_run_needs_int8(tmp_path):
    _, _, inputs = write_inputs(tmp_path)
    direct = str(tmp_path / "out.json")
    evaluate("direct", inputs, direct, lm=FakeLM(), save_hidden=True, quantize="int8", dtype="fp32")
    message = refused(calibrate, tmp_path, inputs, direct, dtype="fp32")
    assert "quantize 'int8' vs 'none'" in message
    calibrate(tmp_path, inputs, direct, dtype="fp32", quantize="int8")
    assert "dtype 'fp32' vs 'bf16'" in refused(calibrate, tmp_path, inputs, direct, name="bf16.json", dtype="bf16",
                                               quantize="int8")


def test_anchor_states_of_another_model_are_refused(tmp_path):
    """The anchors' run is checked against the direct run that saved the test states."""
    _, _, inputs = write_inputs(tmp_path)
    a, b = model_dir(tmp_path / "a", b"A" * 64), model_dir(tmp_path / "b", b"B" * 64)
    direct = str(tmp_path / "out.json")
    evaluate("direct", inputs, direct, lm=FakeLM(), save_hidden=True, ckpt_dir=a)
    # Anchors scored with model b (e.g. by an earlier calibration told to accept b).
    evaluate("direct", str(tmp_path / "in.anchors.json"), str(tmp_path / "out.anchors.json"), lm=FakeLM(),
             save_hidden=True, ckpt_dir=b)
    calibrate(tmp_path, inputs, direct, ckpt_dir=a)  # scored again with a: the fingerprint differs
    metrics = json.loads((tmp_path / "out.anchors.metrics.json").read_text())
    assert metrics["fingerprint"]["model_files"] == {"weights.bin": {"sha256": hashlib.sha256(b"A" * 64).hexdigest()}}


# The original scripts' direct outputs (no metrics file)

def test_original_direct_outputs_are_accepted_after_the_checks_that_can_be_made(tmp_path, capsys):
    records, _, inputs = write_inputs(tmp_path)
    direct = tmp_path / "out.json"
    evaluate("direct", inputs, str(direct), lm=FakeLM())
    ours = calibrate(tmp_path, inputs, str(direct), "na", name="ours.json")
    # What the original's run_evaluate_direct_llama.py writes: prediction, log_probs, correct.
    original = tmp_path / "original.json"
    original.write_text(json.dumps([{"prediction": o["prediction"], "log_probs": o["log_probs"],
                                     "correct": o["correct"]} for o in json.loads(direct.read_text())]))
    capsys.readouterr()
    theirs = calibrate(tmp_path, inputs, str(original), "na", name="theirs.json")
    note = capsys.readouterr().out
    assert f"Note: {original} has no metrics file" in note and "cannot be" in note
    assert predictions(tmp_path / "theirs.json") == predictions(tmp_path / "ours.json")
    assert theirs["accuracy"] == ours["accuracy"]
    # Other label words, in another order: the predictions are not their largest log-probs.
    renamed = [dict(r, label_words=r["label_words"][::-1], ground_truth=r["ground_truth"]) for r in records]
    (tmp_path / "renamed.json").write_text(json.dumps(renamed))
    message = refused(calibrate, tmp_path, str(tmp_path / "renamed.json"), str(original), "na", name="x.json")
    assert "not the label word of the largest log-prob" in message
    # The anchor calibrations need the hidden states only this project's direct run saves.
    assert "has no metrics file" in refused(calibrate, tmp_path, inputs, str(original), "hidden", name="y.json")
