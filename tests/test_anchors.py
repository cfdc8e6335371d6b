"""Hidden and kNN calibration: the math against numpy loops, and the runner end to end with the fake model."""

from __future__ import annotations

import hashlib
import json
import zlib

import numpy as np
import pytest

from classification.inputs import retrieval
from classification.anchors import (AUTO_SHRINKAGES, LABEL_WEIGHTS, LOGISTIC_L2, SHRINKAGES, Candidate, ChosenFeatures,
                                   ChosenLogistic, KnnVote, LogisticRegression, NearestCentroid, ShrinkageLDA)
from classification.inputs.datasets import Dataset, get_preset
from classification.errors import ClassificationError
from classification.run.runner import evaluate
from classification.templates import fill
from classification_fakes import FakeLM, run_ranks, synthetic_splits


def test_nearest_centroid_against_loops():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 6)), np.arange(30) % 3
    test = rng.normal(size=(9, 6))
    got = NearestCentroid().fit(x, y, 3).scores(test)
    for i, t in enumerate(test):
        for c in range(3):
            centroid = sum(x[j] for j in range(30) if y[j] == c) / 10
            assert got[i, c] == pytest.approx(-np.linalg.norm(t - centroid), abs=1e-9)


def test_shrinkage_lda_against_loops():
    rng = np.random.default_rng(2)
    y = np.arange(36) % 3
    x = rng.normal(size=(36, 5)) * [5, 1, 1, 0.2, 0.2] + np.eye(3, 5)[y] * 1.5  # one noisy direction
    test = rng.normal(size=(10, 5)) * [5, 1, 1, 0.2, 0.2]

    def fit(xs, ys, lam):
        means = [sum(xs[i] for i in range(len(xs)) if ys[i] == c) / (ys == c).sum() for c in range(3)]
        cov = sum(np.outer(xs[i] - means[ys[i]], xs[i] - means[ys[i]]) for i in range(len(xs))) / len(xs)
        return means, np.linalg.inv(cov + lam * np.trace(cov) / 5 * np.eye(5))

    def mahalanobis(t, means, prec):
        return [(t - m) @ prec @ (t - m) for m in means]

    def rank(i):  # position among the anchors of its class
        return sum(1 for j in range(i) if y[j] == y[i])

    def cv(lam):
        right = 0
        for f in range(4):
            held = [i for i in range(36) if rank(i) % 4 == f]
            kept = [i for i in range(36) if rank(i) % 4 != f]
            means, prec = fit(x[kept], y[kept], lam)
            right += sum(int(np.argmin(mahalanobis(x[i], means, prec))) == y[i] for i in held)
        return right / 36

    lda = ShrinkageLDA().fit(x, y, 3)
    assert lda.shrinkage == max(SHRINKAGES, key=lambda lam: (cv(lam), lam))
    means, prec = fit(x, y, lda.shrinkage)
    for t, got in zip(test, lda.scores(test)):
        d = mahalanobis(t, means, prec)
        assert got - got[0] == pytest.approx([-(dc - d[0]) / 2 for dc in d], abs=1e-9)


def test_knn_vote_against_loops():
    rng = np.random.default_rng(1)

    def log_dists(n):
        z = rng.normal(size=(n, 50)) * 2
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    anchors, y, tests = log_dists(12), np.arange(12) % 3, log_dists(7)
    knn = KnnVote(k=5).fit(anchors, y, 3)
    got = knn.scores(tests)
    for i, q in enumerate(tests):
        d = [np.mean(np.exp(a) * (a - q)) for a in anchors]  # KL(anchor || test) / |V|
        assert knn.distances(tests)[i] == pytest.approx(d, abs=1e-12)
        nearest = sorted(range(12), key=lambda j: d[j])[:5]
        votes = [sum(y[j] == c for j in nearest) for c in range(3)]
        assert list(np.exp(got[i]) * (5 + 3)) == pytest.approx([v + 1 for v in votes])
        assert int(np.argmax(got[i])) == votes.index(max(votes))


def write_inputs(tmp_path, n_anchor=3, n_train=8):
    train, test = synthetic_splits(n_train, 3)
    p = get_preset("ag_news")
    data = Dataset("ag_news", train, test, list(p.label_words), dict(p.templates), p.instruction)
    records, anchors = retrieval.records_and_anchors(data, "direct", None, 1, 1, True, 12, 0, n_anchor=n_anchor)
    inputs = tmp_path / "in.json"
    inputs.write_text(json.dumps(records))
    if anchors:
        (tmp_path / "in.anchors.json").write_text(json.dumps(anchors))
    return records, anchors, str(inputs)


def contexts(records):
    return [fill(r["prompt"], text=r["text"]) for r in records]


def test_saved_hidden_states_single_and_data_parallel(tmp_path):
    records, _, inputs = write_inputs(tmp_path)
    evaluate("direct", inputs, str(tmp_path / "one.json"), lm=FakeLM(), save_hidden=True)
    run_ranks(2, lambda rt: evaluate("direct", inputs, str(tmp_path / "two.json"), lm=FakeLM(), runtime=rt,
                                     save_hidden=True, chunk_size=2))
    one, two = np.load(tmp_path / "one.hidden.npy"), np.load(tmp_path / "two.hidden.npy")
    assert one.dtype == np.float16 and one.shape == (12, 5)
    np.testing.assert_array_equal(one, FakeLM().context_hidden(contexts(records)).astype(np.float16))
    np.testing.assert_array_equal(one, two)  # every rank's rows gathered in record order
    metrics = json.loads((tmp_path / "one.metrics.json").read_text())
    assert metrics["fingerprint"]["save_hidden"] is True and metrics["hidden_path"].endswith("one.hidden.npy")


@pytest.mark.parametrize("calibration", ["hidden", "lda", "knn"])
def test_anchor_calibrations_predict_as_the_reference(tmp_path, calibration):
    records, anchors, inputs = write_inputs(tmp_path)
    direct = str(tmp_path / "out.json")
    evaluate("direct", inputs, direct, lm=FakeLM(), save_hidden=True)
    fake = FakeLM()
    evaluate("calibrate", inputs, str(tmp_path / "cal.json"), direct_output_path=direct, calibration=calibration,
             lm=fake, **({"knn_k": 2} if calibration == "knn" else {}))  # --knn_k is knn's flag alone
    words = records[0]["label_words"]
    test_h = fake.context_hidden(contexts(records)).astype(np.float16).astype(np.float64)
    anchor_h = fake.context_hidden(contexts(anchors)).astype(np.float16).astype(np.float64)
    y = np.array([words.index(a["ground_truth"]) for a in anchors])
    want = []
    for h in test_h:
        if calibration == "hidden":
            d = [np.linalg.norm(h - anchor_h[y == c].mean(0)) for c in range(4)]
            want.append(words[int(np.argmin(d))])
        elif calibration == "lda":
            lda = ShrinkageLDA().fit(anchor_h, y, 4)
            d = [(h - m) @ lda.precision @ (h - m) for m in lda.means]
            want.append(words[int(np.argmin(d))])
        else:
            lq, la = fake.next_token_log_probs(h[None])[0], fake.next_token_log_probs(anchor_h)
            d = [np.mean(np.exp(a) * (a - lq)) for a in la]
            nearest = np.argsort(d, kind="stable")[:2]
            votes = [int((y[nearest] == c).sum()) for c in range(4)]
            want.append(words[votes.index(max(votes))])
    out = json.loads((tmp_path / "cal.json").read_text())
    assert [o["prediction"] for o in out] == want
    metrics = json.loads((tmp_path / "cal.metrics.json").read_text())
    assert metrics["calibration"] == calibration and metrics["n_anchor"] == 3
    assert (tmp_path / "out.anchors.hidden.npy").is_file()  # anchors scored once, cached beside the output
    # The fake model classifies these texts by their topic word, and so do the anchors.
    assert metrics["accuracy"] == 1.0


def test_anchor_calibration_bad_input_is_one_line(tmp_path):
    _, _, inputs = write_inputs(tmp_path)
    direct = str(tmp_path / "out.json")
    evaluate("direct", inputs, direct, lm=FakeLM())
    with pytest.raises(ClassificationError, match=r"saved no hidden states .* --save_hidden$"):
        evaluate("calibrate", inputs, str(tmp_path / "c.json"), direct_output_path=direct, calibration="hidden",
                 lm=FakeLM())
    evaluate("direct", inputs, direct, lm=FakeLM(), save_hidden=True)
    with pytest.raises(ClassificationError, match="--n_anchor 4 is more than the 3 anchors per class"):
        evaluate("calibrate", inputs, str(tmp_path / "c.json"), direct_output_path=direct, calibration="knn",
                 lm=FakeLM(), n_anchor=4)
    with pytest.raises(ClassificationError, match="--knn_k applies to --calibration knn, not hidden"):
        evaluate("calibrate", inputs, str(tmp_path / "c.json"), direct_output_path=direct, calibration="hidden",
                 lm=FakeLM(), knn_k=2)
    (tmp_path / "in.anchors.json").unlink()
    with pytest.raises(ClassificationError, match="needs anchor records .* --n_anchor"):
        evaluate("calibrate", inputs, str(tmp_path / "c.json"), direct_output_path=direct, calibration="hidden",
                 lm=FakeLM())
    with pytest.raises(ClassificationError, match="--save_hidden applies to the direct method"):
        evaluate("channel", inputs, str(tmp_path / "x.json"), lm=FakeLM(), save_hidden=True)


def calibrated_run(tmp_path):
    """Inputs with anchors, a direct run with --save_hidden, and one hidden calibration (anchors scored)."""
    records, anchors, inputs = write_inputs(tmp_path)
    direct = str(tmp_path / "out.json")
    evaluate("direct", inputs, direct, lm=FakeLM(), save_hidden=True)
    evaluate("calibrate", inputs, str(tmp_path / "cal.json"), direct_output_path=direct, calibration="hidden",
             lm=FakeLM())
    return records, anchors, inputs, direct


def calibrate_error(tmp_path, inputs, direct, calibration="hidden"):
    with pytest.raises(ClassificationError) as e:
        evaluate("calibrate", inputs, str(tmp_path / "c2.json"), direct_output_path=direct, calibration=calibration,
                 lm=FakeLM())
    message = str(e.value)
    assert "\n" not in message and "dtype" not in message  # the cause is in a file, not the precision
    return message


def save_as_the_runs(path, states):
    """Write hidden states as the run beside them wrote them (its metrics record their hash): what a
    run whose model gave NaN, or another dimension, would have left."""
    np.save(path, states)
    metrics_file = path.parent / path.name.replace(".hidden.npy", ".metrics.json")
    metrics = json.loads(metrics_file.read_text())
    metrics["hidden_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    metrics_file.write_text(json.dumps(metrics))


@pytest.mark.parametrize("calibration", ["hidden", "lda", "knn"])
@pytest.mark.parametrize("which", ["out.hidden.npy", "out.anchors.hidden.npy"])
def test_nan_in_a_hidden_file_is_named(tmp_path, calibration, which):
    _, _, inputs, direct = calibrated_run(tmp_path)
    path = tmp_path / which
    states = np.load(path)
    states[2, 1] = np.nan
    save_as_the_runs(path, states)
    message = calibrate_error(tmp_path, inputs, direct, calibration)
    assert str(path) in message and "row 2" in message and "NaN" in message


@pytest.mark.parametrize("calibration", ["hidden", "lda"])
def test_class_without_anchors_is_named(tmp_path, calibration):
    records, anchors, inputs = write_inputs(tmp_path)
    direct = str(tmp_path / "out.json")
    evaluate("direct", inputs, direct, lm=FakeLM(), save_hidden=True)
    (tmp_path / "in.anchors.json").write_text(json.dumps([a for a in anchors if a["ground_truth"] != "Sports"]))
    message = calibrate_error(tmp_path, inputs, direct, calibration)
    assert "in.anchors.json" in message and "no anchor of class 'Sports'" in message


def test_anchors_with_an_extra_label_are_refused(tmp_path):
    records, anchors, inputs = write_inputs(tmp_path)
    direct = str(tmp_path / "out.json")
    evaluate("direct", inputs, direct, lm=FakeLM(), save_hidden=True)
    extra = [dict(a, label_words=a["label_words"] + ["Weather"]) for a in anchors]
    extra[0]["ground_truth"] = "Weather"
    (tmp_path / "in.anchors.json").write_text(json.dumps(extra))
    message = calibrate_error(tmp_path, inputs, direct)
    assert "in.anchors.json" in message and "'Weather'" in message and "label words" in message


def test_anchor_hidden_file_of_another_dimension_is_refused(tmp_path):
    _, anchors, inputs, direct = calibrated_run(tmp_path)
    save_as_the_runs(tmp_path / "out.anchors.hidden.npy", np.zeros((len(anchors), 7), dtype=np.float16))
    message = calibrate_error(tmp_path, inputs, direct)
    assert "out.anchors.hidden.npy holds 7-dimensional" in message and "out.hidden.npy 5-dimensional" in message


@pytest.mark.parametrize("target", ["in.anchors.json", "out.anchors.json", "out.hidden.npy"])
def test_calibration_never_writes_over_the_anchors(tmp_path, target):
    """--output_path (or the metrics, partial or hidden file beside it) on a file the calibration reads."""
    _, _, inputs, direct = calibrated_run(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    output = tmp_path / target
    with pytest.raises(ClassificationError) as e:
        evaluate("calibrate", inputs, str(output), direct_output_path=direct, calibration="hidden", lm=FakeLM())
    assert f"--output_path {output} would overwrite an input file" in str(e.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_an_output_beside_the_output_never_overwrites_an_input(tmp_path):
    records, _, inputs = write_inputs(tmp_path)
    metrics_named = tmp_path / "x.metrics.json"  # the inputs under the name of x.json's metrics file
    metrics_named.write_text((tmp_path / "in.json").read_text())
    with pytest.raises(ClassificationError) as e:
        evaluate("direct", str(metrics_named), str(tmp_path / "x.json"), lm=FakeLM())
    assert f"the metrics of --output_path {metrics_named} would overwrite an input file (--data_path" in str(e.value)
    tok = tmp_path / "tok.hidden.npy"
    tok.write_bytes(b"tokenizer")
    with pytest.raises(ClassificationError) as e:
        evaluate("direct", inputs, str(tmp_path / "tok.json"), lm=FakeLM(), tokenizer_path=str(tok), save_hidden=True)
    assert "(--tokenizer_path" in str(e.value) and tok.read_bytes() == b"tokenizer"


# -- hidden_auto, lda_auto: features chosen on the anchors -------------------------------------


def layered_states(rng, y, n_layers=3, dim=4):
    """Layer 0 pure noise; layer 1 the classes in dimension 0 under a noise feature 100x larger; layer 2 weaker."""
    n = len(y)
    states = rng.normal(size=(n, n_layers, dim))
    states[:, 1, 0] += 3.0 * y
    states[:, 1, 1] *= 100.0
    states[:, 2, 0] += 1.0 * y
    return states


def test_chosen_features_against_loops():
    rng = np.random.default_rng(3)
    y = np.arange(36) % 3
    states, test = layered_states(rng, y), layered_states(rng, np.arange(9) % 3)

    def rank(i):
        return sum(1 for j in range(i) if y[j] == y[i])

    def feats(s, positions):
        return np.concatenate([s[:, p] for p in positions], axis=1)

    def fit(x, ys, lam):  # explicit inverse of the shrunk pooled covariance
        means = [x[ys == c].mean(0) for c in range(3)]
        cov = sum(np.outer(x[i] - means[ys[i]], x[i] - means[ys[i]]) for i in range(len(x))) / len(x)
        return means, np.linalg.inv(cov + lam * np.trace(cov) / x.shape[1] * np.eye(x.shape[1]))

    def scale(train, x, how):
        if how == "none":
            return x
        return (x - train.mean(0)) / train.std(0)

    def log_posteriors(means, prec, x):  # equal priors: log-softmax of minus half the Mahalanobis distances
        d = np.array([[-(t - m) @ prec @ (t - m) / 2 for m in means] for t in x])
        return d - np.log(np.exp(d - d.max(1, keepdims=True)).sum(1, keepdims=True)) - d.max(1, keepdims=True)

    sets = [(0,), (1,), (2,), (0, 1), (1, 2)]
    right, loglik = {}, {}
    for positions in sets:
        for how in ("standard", "none"):
            for lam in AUTO_SHRINKAGES:
                n, ll = 0, 0.0
                for f in range(4):
                    held = np.array([rank(i) % 4 == f for i in range(36)])
                    x = feats(states, positions)
                    xt, xh = scale(x[~held], x[~held], how), scale(x[~held], x[held], how)
                    means, prec = fit(xt, y[~held], lam)
                    lp = log_posteriors(means, prec, xh)
                    n += sum(int(np.argmax(row)) == t for row, t in zip(lp, y[held]))
                    ll += sum(row[t] for row, t in zip(lp, y[held]))
                right[(positions, how, lam)], loglik[(positions, how, lam)] = n, ll
    best = max(right, key=lambda k: (right[k], round(loglik[k], 6), k[2], k[1] == "standard", -len(k[0]), max(k[0])))
    chosen = ChosenFeatures("lda").fit(states, y, 3)
    assert (chosen.chosen.positions, chosen.chosen.scaling, chosen.shrinkage) == best
    assert chosen.cv_accuracy == right[best] / 36
    cv = chosen.cv_scores(states, y, 3)
    for (cand, lam), (n, ll) in cv.items():
        assert n == right[(cand.positions, cand.scaling, lam)]
        assert ll == pytest.approx(loglik[(cand.positions, cand.scaling, lam)], abs=1e-6)
    assert 0 not in best[0]  # the noise layer is never chosen
    x = feats(states, best[0])
    means, prec = fit(scale(x, x, best[1]), y, best[2])
    xt = scale(x, feats(test, best[0]), best[1])
    got = chosen.scores(test)
    for t, g in zip(xt, got):
        d = [(t - m) @ prec @ (t - m) for m in means]
        assert g - g[0] == pytest.approx([-(dc - d[0]) / 2 for dc in d], abs=1e-8)
    summary = chosen.summary([20, 25, 30])
    assert summary["layers"] == [[20, 25, 30][p] for p in best[0]] and summary["shrinkage"] == best[2]


def test_standardizing_undoes_a_large_noise_feature():
    """Nearest centroids: one feature of large noise hides the class feature unless standardized."""
    rng = np.random.default_rng(4)
    y = np.arange(48) % 2
    states = rng.normal(size=(48, 1, 3))
    states[:, 0, 0] += 4.0 * y
    states[:, 0, 1] *= 50.0
    chosen = ChosenFeatures("centroid").fit(states, y, 2)
    assert chosen.chosen == Candidate((0,), "standard") and chosen.shrinkage is None
    cv = chosen.cv_scores(states, y, 2)
    assert cv[(Candidate((0,), "standard"), None)][0] >= cv[(Candidate((0,), "none"), None)][0] + 10


class LayeredFakeLM(FakeLM):
    """FakeLM with three saved layers: 7 noise (hashed from the context), 8 the topic counts under one
    noise feature 1000x larger, 9 the final state (``context_hidden``)."""

    hidden_layers = (7, 8, 9)

    def context_states(self, contexts):
        final = self.context_hidden(contexts)
        noise = np.stack([np.random.default_rng(zlib.crc32(c.encode())).normal(size=final.shape[1])
                          for c in contexts]).astype(np.float32)
        middle = final + 0.1 * noise
        middle[:, -1] = 1000 * noise[:, 0]
        return np.stack([noise, middle, final], axis=1)


@pytest.mark.parametrize("calibration", ["hidden_auto", "lda_auto", "logistic_auto"])
def test_auto_features_use_the_anchors_only(tmp_path, calibration):
    """The choice and the predictions never see a test label: shuffling them changes neither."""
    runs = {}
    for name, shuffle in (("plain", False), ("shuffled", True)):
        folder = tmp_path / name
        folder.mkdir()
        records, _, inputs = write_inputs(folder, n_anchor=8, n_train=12)
        if shuffle:
            labels = [r["ground_truth"] for r in records]
            order = np.random.default_rng(0).permutation(len(labels))
            for r, i in zip(records, order):
                r["ground_truth"] = labels[i]
            assert [r["ground_truth"] for r in records] != labels
            (folder / "in.json").write_text(json.dumps(records))
        direct = str(folder / "out.json")
        evaluate("direct", inputs, direct, lm=LayeredFakeLM(), save_hidden=True)
        assert np.load(folder / "out.hidden.npy").shape == (len(records), 3, 5)
        evaluate("calibrate", inputs, str(folder / "cal.json"), direct_output_path=direct, calibration=calibration,
                 lm=LayeredFakeLM())
        out = json.loads((folder / "cal.json").read_text())
        runs[name] = ([o["prediction"] for o in out], [o["log_probs"] for o in out],
                      json.loads((folder / "cal.metrics.json").read_text()))
    assert runs["plain"][0] == runs["shuffled"][0] and runs["plain"][1] == runs["shuffled"][1]
    chosen = runs["plain"][2]["features"]
    assert chosen == runs["shuffled"][2]["features"]
    assert 7 not in chosen["layers"] and chosen["cv_accuracy"] == 1.0 and runs["plain"][2]["accuracy"] == 1.0
    assert set(chosen) >= {"layers", "scaling", "cv_accuracy", "folds"} and ("shrinkage" in chosen) == (calibration == "lda_auto")


def test_auto_features_on_a_file_of_the_final_state_alone(tmp_path):
    """(n, dim) files (saved before layers were, or by a model without layers) are the final layer."""
    _, _, inputs = write_inputs(tmp_path, n_anchor=8, n_train=12)
    direct = str(tmp_path / "out.json")
    evaluate("direct", inputs, direct, lm=FakeLM(), save_hidden=True)
    evaluate("calibrate", inputs, str(tmp_path / "cal.json"), direct_output_path=direct, calibration="lda_auto",
             lm=FakeLM())
    metrics = json.loads((tmp_path / "cal.metrics.json").read_text())
    assert metrics["features"]["layers"] == ["final"] and metrics["accuracy"] == 1.0


def test_auto_features_refuse_anchors_of_other_layers(tmp_path):
    _, _, inputs = write_inputs(tmp_path, n_anchor=8, n_train=12)
    direct = str(tmp_path / "out.json")
    evaluate("direct", inputs, direct, lm=FakeLM(), save_hidden=True)  # (n, dim): the final state alone
    evaluate("calibrate", inputs, str(tmp_path / "cal.json"), direct_output_path=direct, calibration="lda",
             lm=LayeredFakeLM())  # the anchors scored with layers: lda reads their final layer
    message = calibrate_error(tmp_path, inputs, direct, "lda_auto")
    assert "out.anchors.hidden.npy holds the states of layers [7, 8, 9]" in message and "of layers final" in message


# -- logistic_auto ----------------------------------------------------------------------------------


@pytest.mark.parametrize("l2", [1.0, 30.0])
def test_logistic_regression_is_the_penalized_optimum(l2):
    """The fit is where the penalized cross-entropy's gradient vanishes, and torch's L-BFGS on the same
    objective finds the same probabilities."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    y = np.arange(40) % 3
    x = rng.normal(size=(40, 12)) + np.eye(12)[y] * 1.5  # more features than anchors per class
    model = LogisticRegression(l2).fit(x, y, 3)
    p = np.exp(model.scores(x) - model.scores(x).max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    resid = p - np.eye(3)[y]
    assert np.abs(x.T @ resid + l2 * model.coef).max() < 1e-4 and np.abs(resid.sum(0)).max() < 1e-4
    w = torch.zeros(12, 3, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=2000, tolerance_grad=1e-10, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")
    xt, yt = torch.tensor(x), torch.tensor(y)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w + b, yt, reduction="sum") + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    ref = torch.softmax(xt @ w + b, 1).detach().numpy()
    np.testing.assert_allclose(p, ref, atol=1e-5)


def test_chosen_logistic_against_loops():
    """Layer, L2 and label weight: the held-out log-likelihood of loops over the same folds; the noise
    layer is never chosen; label log-probs that carry the class get weight, noise gets none."""
    rng = np.random.default_rng(6)
    y = np.arange(36) % 3
    states = layered_states(rng, y)
    states[:, 2, 0] = rng.normal(size=36)  # layer 2 is noise too: only layer 1 carries the class
    for label_lp, informative in ((rng.normal(size=(36, 3)), False), (np.eye(3)[y] * 2.0 - 1.0, True)):
        chosen = ChosenLogistic().fit(states, label_lp, y, 3)
        loglik, right = {}, {}
        for layer in range(3):
            for l2 in LOGISTIC_L2:
                for w in LABEL_WEIGHTS:
                    ll, n = 0.0, 0
                    for f in range(4):
                        held = np.array([sum(1 for j in range(i) if y[j] == y[i]) % 4 == f for i in range(36)])
                        x = states[:, layer]
                        mean, std = x[~held].mean(0), x[~held].std(0)
                        model = LogisticRegression(l2).fit((x[~held] - mean) / std, y[~held], 3)
                        for t, lab, yy in zip((x[held] - mean) / std, label_lp[held], y[held]):
                            s = model.scores(t[None])[0]
                            s = s - np.log(np.exp(s - s.max()).sum()) - s.max()
                            c = lab - label_lp[~held].mean(0)
                            c = c - np.log(np.exp(c - c.max()).sum()) - c.max()
                            z = s + w * c
                            z = z - np.log(np.exp(z - z.max()).sum()) - z.max()
                            ll += z[yy]
                            n += int(np.argmax(z) == yy)
                    loglik[(layer, l2, w)], right[(layer, l2, w)] = ll, n
        best = max(loglik, key=lambda k: (round(loglik[k], 6), k[1], -k[2], k[0]))
        assert (chosen.layer, chosen.l2, chosen.weight) == best
        assert chosen.cv_accuracy == right[best] / 36 and chosen.layer == 1
        assert (chosen.weight > 0) == informative
        summary = chosen.summary([20, 25, 30])
        assert summary["layers"] == [25] and summary["label_weight"] == chosen.weight and summary["l2"] == chosen.l2
