"""The calibrations (na, cbu, dcpmi, batch): arithmetic on hand-made log-probs, the runner, bad input."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from classification import methods
from classification.run import runner
from classification.inputs.ag_news import build_records
from classification.errors import ClassificationError
from classification.metrics import calibration_metrics, reliability
from classification_fakes import FakeLM, synthetic_splits

ROOT = Path(__file__).resolve().parents[1]
L = math.log


def test_log_softmax():
    assert methods.log_softmax([L(1), L(3)]) == pytest.approx([L(0.25), L(0.75)])
    assert methods.log_softmax([1000.0, 1000.0]) == pytest.approx([L(0.5), L(0.5)])


def test_cbu_averages_content_free_probs_and_flips_the_prediction():
    # p_cf of "N/A" = (0.7, 0.3), of "" = (0.5, 0.5), of "[MASK]" = (0.6, 0.4): mean (0.6, 0.4).
    p_cf = [(0.7 + 0.5 + 0.6) / 3, (0.3 + 0.5 + 0.4) / 3]
    direct = [L(0.55), L(0.45)]  # direct predicts A
    # (0.55 / 0.6, 0.45 / 0.4) = (0.9167, 1.125) -> normalized (0.4490, 0.5510): B
    got = methods.calibrate_log_probs(direct, p_cf)
    want_b = (0.45 / 0.4) / (0.55 / 0.6 + 0.45 / 0.4)
    assert got == pytest.approx([L(1 - want_b), L(want_b)])
    assert methods.calibrate([direct], ["A", "B"], p_cf)[0]["prediction"] == "B"


def test_dcpmi_by_hand_changes_the_prediction():
    direct = [L(0.6), L(0.4)]  # unnormalized in general; A wins
    premise = [L(0.8), L(0.2)]  # the label prior under the domain premise favours A strongly
    # scores: log(0.6/0.8) = log 0.75, log(0.4/0.2) = log 2 -> softmax (0.75, 2) / 2.75
    got = methods.dcpmi_log_probs(direct, premise)
    assert got == pytest.approx([L(0.75 / 2.75), L(2 / 2.75)])
    assert methods.argmax(got) == 1
    # An additive constant on either side changes nothing.
    assert methods.dcpmi_log_probs([x - 5 for x in direct], [x + 2 for x in premise]) == pytest.approx(got)


def test_batch_calibration_averages_probabilities_as_in_the_paper():
    # Zhou et al. 2023: prior p(y) = mean of p(y|x_j); score = log p(y|x) - log prior.
    lps = [[L(0.99), L(0.01)], [L(0.5), L(0.5)], [L(0.2), L(0.8)], [L(0.3), L(0.7)]]
    prior = [(0.99 + 0.5 + 0.2 + 0.3) / 4, (0.01 + 0.5 + 0.8 + 0.7) / 4]  # 0.4975, 0.5025
    assert methods.batch_log_priors(lps) == [pytest.approx([L(p) for p in prior])] * 4
    got = methods.batch_calibrate(lps)
    ratio = [0.5 / prior[0], 0.5 / prior[1]]
    assert got[1] == pytest.approx([L(r / sum(ratio)) for r in ratio])
    # The uniform example leans to A (the slightly rarer label) by the paper's prior; the mean of
    # log-probs is dragged down by the one 0.01 and pushes it to B instead.
    assert methods.argmax(got[1]) == 0
    assert methods.argmax(methods.batch_calibrate(lps, average="log_probs")[1]) == 1


def test_batch_logmean_by_hand_changes_the_prediction():
    # Three examples, two labels; the model leans to A on every example.
    lps = [[L(0.9), L(0.1)], [L(0.7), L(0.3)], [L(0.8), L(0.2)]]
    means = methods.batch_log_priors(lps, average="log_probs")
    want_mean = [(L(0.9) + L(0.7) + L(0.8)) / 3, (L(0.1) + L(0.3) + L(0.2)) / 3]
    assert means == [pytest.approx(want_mean)] * 3
    got = methods.batch_calibrate(lps, average="log_probs")
    for lp, out in zip(lps, got):
        scores = [lp[0] - want_mean[0], lp[1] - want_mean[1]]
        assert out == pytest.approx(methods.log_softmax(scores))
    assert [methods.argmax(x) for x in lps] == [0, 0, 0]
    # Log-odds A:B are log 9, log 7/3, log 4 (mean 1.477): the two below the mean flip to B.
    assert [methods.argmax(x) for x in got] == [0, 1, 1]
    # Unnormalized inputs: the same (log-softmax first).
    shifted = methods.batch_calibrate([[x + 3 for x in lp] for lp in lps], average="log_probs")
    assert [x for row in shifted for x in row] == pytest.approx([x for row in got for x in row])


def test_batch_calibration_in_blocks():
    lps = [[L(0.9), L(0.1)], [L(0.7), L(0.3)], [L(0.6), L(0.4)], [L(0.2), L(0.8)]]
    got = methods.batch_calibrate(lps, batch_size=2)
    flat = [x for row in got for x in row]
    parts = [methods.batch_calibrate(lps[:2]), methods.batch_calibrate(lps[2:])]
    assert flat == pytest.approx([x for part in parts for row in part for x in row])


def test_default_domain_premise():
    rec = {"prompt": "Article: a\nCategory: World\nArticle: {text}\nCategory:", "completion": "{label_word}"}
    assert methods.default_domain_premise(rec) == "Category:"
    with pytest.raises(ClassificationError, match="--domain_premise"):
        methods.default_domain_premise({"prompt": "Say {text}", "completion": "{label_word}"})


def test_ece_by_hand():
    # Confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.55 (right) with bins of 0.1.
    lps = [[L(0.9), L(0.1)], [L(0.9), L(0.1)], [L(0.4), L(0.6)], [L(0.55), L(0.45)]]
    out = reliability(lps, [0, 1, 1, 0])
    # bin [0.9, 1]: conf 0.9, acc 0.5, 2 of 4; bin [0.6, 0.7): conf 0.6, acc 1; bin [0.5, 0.6): conf 0.55, acc 1
    assert out["ece"] == pytest.approx(0.5 * 0.4 + 0.25 * 0.4 + 0.25 * 0.45)
    assert [b["n"] for b in out["bins"]] == [0, 0, 0, 0, 0, 1, 1, 0, 0, 2]
    assert out["bins"][9]["accuracy"] == 0.5 and out["bins"][0]["confidence"] is None
    assert calibration_metrics([None, None], ["A", "B"], ["A", "B"]) == {"ece": None, "reliability": None}


# --- through the runner ----------------------------------------------------------------------


@pytest.fixture
def direct_run(tmp_path):
    train, test = synthetic_splits()
    recs = build_records("direct", train, test, k=1, seed=5, sample=False)
    data = tmp_path / "in.json"
    data.write_text(json.dumps(recs))
    out = tmp_path / "direct.json"
    runner.evaluate("direct", str(data), str(out), lm=FakeLM())
    return str(data), str(out), recs


def read(path):
    return json.loads(Path(path).read_text())


def test_runner_batch_needs_no_model(direct_run, tmp_path):
    data, direct_out, recs = direct_run
    out = tmp_path / "batch.json"
    # A checkpoint that does not exist: batch calibration never loads the model.
    m = runner.evaluate("calibrate", data, str(out), direct_output_path=direct_out, calibration="batch",
                        ckpt_dir=str(tmp_path / "none"))
    want = methods.batch_calibrate([o["log_probs"] for o in read(direct_out)])
    assert [x for o in read(out) for x in o["log_probs"]] == pytest.approx([x for row in want for x in row])
    assert m["calibration"] == "batch" and m["batch_size"] is None and m["ece"] is not None
    priors = methods.batch_log_priors([o["log_probs"] for o in read(direct_out)])
    assert m["batch_log_prior"] == pytest.approx(priors[0])
    m = runner.evaluate("calibrate", data, str(tmp_path / "logmean.json"), direct_output_path=direct_out,
                        calibration="batch_logmean")
    want = methods.batch_calibrate([o["log_probs"] for o in read(direct_out)], average="log_probs")
    got = read(str(tmp_path / "logmean.json"))
    assert [x for o in got for x in o["log_probs"]] == pytest.approx([x for row in want for x in row])


def test_runner_dcpmi_scores_only_the_label_words_after_the_premise(direct_run, tmp_path):
    data, direct_out, recs = direct_run
    lm = FakeLM()
    m = runner.evaluate("calibrate", data, str(tmp_path / "pmi.json"), direct_output_path=direct_out,
                        calibration="dcpmi", lm=lm)
    assert sorted(lm.requests) == sorted(("Category:", " " + w) for w in recs[0]["label_words"])
    assert m["domain_premise"] == "Category:" and len(m["premise_log_probs"]) == 4
    first = read(str(tmp_path / "pmi.json"))[0]
    assert first["log_probs"] == pytest.approx(methods.dcpmi_log_probs(read(direct_out)[0]["log_probs"],
                                                                       m["premise_log_probs"]))
    m2 = runner.evaluate("calibrate", data, str(tmp_path / "pmi2.json"), direct_output_path=direct_out,
                         calibration="dcpmi", domain_premise="Topic:", lm=FakeLM())
    assert m2["domain_premise"] == "Topic:"


def test_runner_cbu_uses_three_content_free_inputs(direct_run, tmp_path):
    data, direct_out, recs = direct_run
    lm = FakeLM()
    m = runner.evaluate("calibrate", data, str(tmp_path / "cbu.json"), direct_output_path=direct_out,
                        calibration="cbu", lm=lm)
    assert m["content_free"] == ["N/A", "", "[MASK]"] and sum(lm.requests.values()) == 3 * 4
    na = runner.evaluate("calibrate", data, str(tmp_path / "na.json"), direct_output_path=direct_out, lm=FakeLM())
    assert na["calibration"] == "na" and na["content_free"] == ["N/A"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"calibration": "pmi"}, "--calibration 'pmi' is not one of na, cbu, dcpmi, batch"),
        ({"calibration": "batch", "content_free": ["N/A"]}, "--content_free applies to --calibration na or cbu"),
        ({"calibration": "na", "domain_premise": "x"}, "--domain_premise applies to --calibration dcpmi"),
        ({"calibration": "batch", "batch_size": 0}, "--batch_size must be a positive integer"),
        ({"calibration": "dcpmi", "direct_output_path": None}, "calibration dcpmi needs --direct_output_path"),
        ({"calibration": "batch", "direct_output_path": None}, "calibration batch needs --direct_output_path"),
    ],
)
def test_runner_bad_calibration_input(direct_run, tmp_path, kwargs, message):
    data, direct_out, _ = direct_run
    args = {"direct_output_path": direct_out, "lm": FakeLM(), **kwargs}
    with pytest.raises(ClassificationError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        runner.evaluate("calibrate", data, str(tmp_path / "c.json"), **args)
    assert "\n" not in str(e.value)


def test_calibrate_script_without_the_files_it_needs(direct_run, tmp_path):
    data, direct_out, _ = direct_run

    def script(*args):
        return subprocess.run([sys.executable, "run_evaluate_direct_calibrate_llama.py", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    p = script("--direct_input_path", data, "--direct_output_path", "None", "--calibration", "batch",
               "--output_path", str(tmp_path / "o.json"))
    assert p.returncode == 2 and p.stderr.startswith("error: calibration batch needs --direct_output_path")
    assert p.stderr.count("\n") == 1
    p = script("--direct_input_path", data, "--direct_output_path", str(tmp_path / "nope.json"),
               "--calibration", "dcpmi", "--output_path", str(tmp_path / "o.json"))
    assert p.returncode == 2 and p.stderr.startswith("error: --direct_output_path") and "not found" in p.stderr
    p = script("--direct_input_path", data, "--direct_output_path", direct_out, "--calibration", "batch",
               "--output_path", str(tmp_path / "o.json"))
    assert p.returncode == 0, p.stderr
    assert "Accuracy: " in p.stdout and read(str(tmp_path / "o.metrics.json"))["calibration"] == "batch"


def test_non_finite_calibrated_log_prob_does_not_blame_the_dtype(direct_run, tmp_path, monkeypatch):
    """The calibration's inputs were checked finite when read: its NaN is its own, not the model's precision."""
    from classification import calibrations

    data, direct_out, _ = direct_run
    monkeypatch.setattr(calibrations.Batch, "apply", lambda self, pos, record, lp: {"log_probs": [float("nan")] * 4})
    with pytest.raises(ClassificationError) as e:
        runner.evaluate("calibrate", data, str(tmp_path / "c.json"), direct_output_path=direct_out,
                        calibration="batch")
    assert "from calibration batch" in str(e.value) and "dtype" not in str(e.value)


def test_calibrate_outputs_keep_the_originals_score(direct_run, tmp_path):
    """The original's calibrate output has, per record, score = w * softmax(direct log-probs) with
    w = 1 / p_cf, p_cf = softmax of the label log-probs of the prompt filled with "N/A" (not
    renormalized).  Recomputed here from the model's own log-probs, as the original's code does."""
    data, direct_out, recs = direct_run
    direct = read(direct_out)
    lm = FakeLM()
    out = tmp_path / "na.json"
    runner.evaluate("calibrate", data, str(out), direct_output_path=direct_out, lm=lm)
    got = read(str(out))
    rec = recs[0]
    cf_lp = np.array(lm.loglikelihood([(rec["prompt"].replace("{text}", "N/A"),
                                        " " + rec["completion"].replace("{label_word}", w))
                                       for w in rec["label_words"]]))
    p_cf = np.exp(cf_lp) / np.exp(cf_lp).sum()
    w = 1 / p_cf
    assert not np.allclose(p_cf, p_cf[0])  # the weights differ, so score is not a rescaled softmax
    for o, d in zip(got, direct):
        probs = np.exp(np.array(d["log_probs"])) / np.exp(np.array(d["log_probs"])).sum()
        assert o["score"] == pytest.approx((w * probs).tolist(), rel=1e-9)
        assert o["prediction"] == rec["label_words"][int(np.argmax(o["score"]))]
    # The other fields are those they were: calibrated log-probs normalized over the labels.
    assert set(got[0]) == {"index", "ground_truth", "prediction", "correct", "log_probs", "shortened", "score"}
    assert got[0]["log_probs"] == pytest.approx(
        methods.calibrate_log_probs(direct[0]["log_probs"], p_cf.tolist()))
    # cbu: p_cf averaged over its content-free texts; batch (no content-free input): the calibrated probabilities.
    runner.evaluate("calibrate", data, str(tmp_path / "cbu.json"), direct_output_path=direct_out,
                    calibration="cbu", lm=FakeLM())
    cf = [np.array(lm.loglikelihood([(rec["prompt"].replace("{text}", t), " " + w) for w in rec["label_words"]]))
          for t in ("N/A", "", "[MASK]")]
    p_cbu = np.mean([np.exp(x) / np.exp(x).sum() for x in cf], axis=0)
    probs = np.exp(np.array(direct[0]["log_probs"])) / np.exp(np.array(direct[0]["log_probs"])).sum()
    assert read(str(tmp_path / "cbu.json"))[0]["score"] == pytest.approx((probs / p_cbu).tolist(), rel=1e-9)
    runner.evaluate("calibrate", data, str(tmp_path / "batch.json"), direct_output_path=direct_out,
                    calibration="batch")
    for o in read(str(tmp_path / "batch.json")):
        assert o["score"] == pytest.approx([math.exp(x) for x in o["log_probs"]])
