"""Hidden states from the model (return_hidden), their batched/pooled forms, and fast = naive with per-input prompts."""

from __future__ import annotations

import json

import numpy as np
import torch

from classification import methods, states
from classification.backend import hidden
from classification.backend.scoring import LlamaLM
from classification.paths import hidden_path
from classification_fakes import WhitespaceTokenizer
from llama.model import ModelArgs, Transformer


def tiny_lm(max_batch_size: int = 3, n_layers: int = 2) -> LlamaLM:
    args = ModelArgs(dim=64, n_layers=n_layers, n_heads=4, n_kv_heads=2, vocab_size=300, multiple_of=32, max_seq_len=256)
    torch.manual_seed(0)
    model = Transformer(args)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return LlamaLM(model.eval(), WhitespaceTokenizer(), max_batch_size=max_batch_size)


DEMOS = "Article: a b c\nCategory: x\nArticle: d e\nCategory: y\n"
TEXTS = ["one two three four", "five", "six seven", "eight nine ten eleven twelve thirteen"]


def plain_hidden(lm: LlamaLM, ids: list) -> torch.Tensor:
    """Hidden states of one unpadded sequence, from the logits path: norm(h) through the head are the logits."""
    with torch.no_grad():
        return lm.model(torch.tensor([ids]), return_hidden=True)[0]


def test_return_hidden_is_what_the_output_head_reads():
    lm = tiny_lm()
    ids = torch.tensor([lm.tokenizer.encode(DEMOS + "Article: one two", bos=True, eos=False)])
    with torch.no_grad():
        logits = lm.model(ids)
        h = lm.model(ids, return_hidden=True)
    assert h.shape == (1, ids.shape[1], 64)
    torch.testing.assert_close(lm.model.output(h).float(), logits)


def test_context_hidden_equals_one_plain_forward_per_context():
    lm = tiny_lm()
    contexts = [DEMOS + f"Article: {t}\nCategory:" for t in TEXTS]  # a shared prefix, run once
    got = hidden.context_hidden(lm, contexts)
    for row, c in zip(got, contexts):
        want = plain_hidden(lm, lm.tokenizer.encode(c, bos=True, eos=False))[-1]
        np.testing.assert_allclose(row, want.numpy(), atol=1e-4)
    other = hidden.context_hidden(lm, [f"Q {t}" for t in TEXTS])  # nothing shared but BOS
    np.testing.assert_allclose(other[1], plain_hidden(lm, lm.tokenizer.encode("Q five", True, False))[-1], atol=1e-4)


def test_text_embeddings_are_masked_means_over_each_text_alone():
    lm = tiny_lm(max_batch_size=4)
    got = hidden.text_embeddings(lm, TEXTS)
    for row, t in zip(got, TEXTS):
        h = plain_hidden(lm, lm.tokenizer.encode(t, bos=True, eos=False))
        np.testing.assert_allclose(row, h[1:].mean(0).numpy(), atol=1e-4)  # BOS left out


def test_next_token_log_probs_from_saved_states_match_the_logits():
    lm = tiny_lm()
    contexts = [DEMOS + f"Article: {t}\nCategory:" for t in TEXTS]
    got = hidden.next_token_log_probs(lm, hidden.context_hidden(lm, contexts))
    for row, c in zip(got, contexts):
        with torch.no_grad():
            logits = lm.model(torch.tensor([lm.tokenizer.encode(c, bos=True, eos=False)]))[0, -1]
        np.testing.assert_allclose(row, torch.log_softmax(logits, -1).numpy(), atol=1e-4)


def test_fast_equals_naive_with_a_prompt_per_input():
    """Retrieved demonstrations: every input has its own prompt; labels still share its row."""
    lm = tiny_lm(max_batch_size=4)
    naive = LlamaLM(lm.model, lm.tokenizer, 2, True, "naive")
    requests = []
    for i, t in enumerate(TEXTS):
        prompt = f"Article: demo{i} {t}\nCategory: x\nArticle: {t}\nCategory:"
        requests += [(prompt, " " + w) for w in ("x", "y", "z w")]
    fast = lm.loglikelihood(requests)
    slow = naive.loglikelihood(requests)
    assert max(abs(a - b) for a, b in zip(fast, slow)) <= 1e-4


def test_saved_rows_round_trip_as_float16(tmp_path):
    lm = tiny_lm()
    records = [{"prompt": DEMOS + "Article: {text}\nCategory:", "completion": "{label_word}", "text": t,
                "label_words": ["x", "y"]} for t in TEXTS]
    results = [{} for _ in records]
    states.attach_hidden(lm, records, results)
    path = str(tmp_path / "out.hidden.npy")
    states.save_hidden(path, results)
    saved = np.load(path)
    assert lm.hidden_layers == (1, 2) and results[0]["hidden_layers"] == [1, 2]  # the 2-layer model's last third
    assert saved.dtype == np.float16 and saved.shape == (4, 2, 64)
    want = hidden.context_states(lm, [DEMOS + f"Article: {t}\nCategory:" for t in TEXTS])
    np.testing.assert_allclose(saved.astype(np.float32), want, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(want[:, -1], hidden.context_hidden(lm, [DEMOS + f"Article: {t}\nCategory:"
                                                                         for t in TEXTS]))


def test_scoring_keeps_the_states_that_save_hidden_needs(monkeypatch):
    """With keep_hidden the direct scoring pass itself yields each record's state: no second
    forward pass, the same vectors as computing them afresh, and the same log-probs."""
    records = [{"prompt": DEMOS + "Article: {text}\nCategory:", "completion": "{label_word}", "text": t,
                "label_words": ["x", "y", "z w"]} for t in TEXTS]
    plain = tiny_lm()
    want_results = methods.direct(plain, records, "eos")
    want = hidden.context_hidden(plain, methods.record_contexts(plain, records))
    lm = tiny_lm()
    lm.keep_hidden = True
    results = methods.direct(lm, records, "eos")
    runs = []
    real_run = hidden._run_model
    monkeypatch.setattr(hidden, "_run_model", lambda m, ids, *a, **k: runs.append(len(ids)) or real_run(m, ids, *a, **k))
    got = hidden.context_hidden(lm, methods.record_contexts(lm, records))
    assert runs == [0]  # every state was kept while scoring
    np.testing.assert_allclose(got, want, atol=1e-4)
    for a, b in zip(results, want_results):
        np.testing.assert_allclose(a["log_probs"], b["log_probs"], atol=1e-6)
    assert hidden.context_hidden(lm, methods.record_contexts(lm, records[:1])).shape == (1, 64)  # then computed
    assert runs == [0, 1]


def test_states_are_kept_only_for_runs_that_save_them(tmp_path):
    """One model object across runs (seeds, anchors): a run with --save_hidden takes every state
    it kept, and a later run without it keeps none."""
    from classification.run import runner
    from test_runner import write_inputs

    data, recs = write_inputs(tmp_path)
    lm = tiny_lm()
    runner.evaluate("direct", data, str(tmp_path / "a.json"), lm=lm, save_hidden=True)
    assert lm.keep_hidden and not lm._hidden
    assert np.load(hidden_path(str(tmp_path / "a.json"))).shape == (len(recs), 2, 64)
    metrics = json.loads((tmp_path / "a.metrics.json").read_text())
    assert metrics["hidden_layers"] == [1, 2] and metrics["fingerprint"]["hidden_layers"] == "last third, 6 layers"
    runner.evaluate("direct", data, str(tmp_path / "b.json"), lm=lm)
    assert not lm.keep_hidden and not lm._hidden


def test_several_layers_saved_from_the_scoring_pass(tmp_path):
    """--save_hidden on a 6-layer model: the float16 states of layers 4, 5, 6 at each record's
    label-predicting token, from the very forward passes that score (as many as without saving)."""
    from classification.run import runner
    from test_runner import write_inputs

    data, recs = write_inputs(tmp_path)
    passes = {}
    for name, save in (("plain", False), ("saved", True)):
        lm = tiny_lm(n_layers=6)
        count = []
        lm.model.register_forward_hook(lambda *a: count.append(1))
        runner.evaluate("direct", data, str(tmp_path / f"{name}.json"), lm=lm, save_hidden=save)
        passes[name] = len(count)
    assert passes["saved"] == passes["plain"] > 0
    saved = np.load(hidden_path(str(tmp_path / "saved.json")))
    assert lm.hidden_layers == (4, 5, 6) and saved.dtype == np.float16 and saved.shape == (len(recs), 3, 64)
    # The same model (the test tokenizer numbers words as it meets them): the run took every kept
    # state, so these are computed by forward passes of their own.
    want = hidden.context_states(lm, methods.record_contexts(lm, recs))
    np.testing.assert_allclose(saved.astype(np.float32), want, rtol=2e-3, atol=2e-3)
    ids = lm.tokenizer.encode(methods.record_contexts(lm, recs[:1])[0], bos=True, eos=False)
    for j, layer in enumerate((4, 5, 6)):  # each layer as one plain forward computes it
        with torch.no_grad():
            _, ref = lm.model(torch.tensor([ids]), layers=[layer], layers_at=torch.tensor([[len(ids) - 1]]))
        np.testing.assert_allclose(want[0, j], ref[0, 0, 0].numpy(), atol=1e-4)
    outputs = [json.loads((tmp_path / f"{n}.json").read_text()) for n in ("plain", "saved")]
    assert [o["log_probs"] for o in outputs[0]] == [o["log_probs"] for o in outputs[1]]
