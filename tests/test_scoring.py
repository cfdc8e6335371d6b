"""LlamaLM.loglikelihood against HF transformers on the same strings, and fast == naive."""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import pytest
import torch

from classification.backend.scoring import LlamaLM, _build_row, common_prefix_len
from tolerance import sum_tolerance
from llama.checkpoint import load_model
from llama.tokenizer import load_tokenizer

DEMO = ("Article: Stocks rise as oil prices fall.\nCategory: Business\n"
        "Article: Champions win the cup final in extra time.\nCategory: Sports\n")
TEXTS = ["Rocket explodes at scrapyard, killing 10 people", "Intel's new chip doubles speed #39;s claim",
         "Braces {text} and {label_word} stay literal", "Short"]
LABELS = ["World", "Sports", "Business", "Science and technology", "Science fiction"]


@pytest.fixture(scope="module")
def smollm(default_model_dir):
    tok = load_tokenizer(str(default_model_dir / "tokenizer.json"))
    model = load_model(str(default_model_dir / "135M"), vocab_size=tok.n_words)
    return model, tok


def direct_requests():
    return [(DEMO + f"Article: {t}\nCategory:", " " + label) for t in TEXTS for label in LABELS]


def channel_requests():
    return [(DEMO + f"Category: {label}\nArticle:", " " + t) for t in TEXTS for label in LABELS]


def test_matches_hf_transformers_on_strings(smollm, hf_default_model, hf_default_tokenizer):
    """Independent computation: HF model + HF tokenizer read from the GGUF, summed log-softmax."""
    model, tok = smollm
    hf = hf_default_model
    hf_tok = hf_default_tokenizer
    lm = LlamaLM(model, tok, append_eos=True, scoring="fast")
    requests = direct_requests()[:10]
    ours = lm.loglikelihood(requests)
    for (ctx, cont), got in zip(requests, ours):
        whole = hf_tok(ctx + cont, add_special_tokens=False)["input_ids"]
        n_ctx = len(hf_tok(ctx, add_special_tokens=False)["input_ids"])
        ids = torch.tensor([whole + [hf_tok.eos_token_id]])
        with torch.no_grad():
            logp = torch.log_softmax(hf(ids).logits[0].float(), -1)
        want = sum(logp[p - 1, ids[0, p]].item() for p in range(n_ctx, ids.shape[1]))
        assert abs(got - want) <= 1e-3


@pytest.mark.parametrize("append_eos", [True, False])
def test_fast_equals_naive(smollm, append_eos):
    model, tok = smollm
    requests = direct_requests() + channel_requests()
    naive = LlamaLM(model, tok, 4, append_eos, "naive").loglikelihood(requests)
    fast_lm = LlamaLM(model, tok, 16, append_eos, "fast")
    fast = fast_lm.loglikelihood(requests)
    assert max(abs(a - b) for a, b in zip(naive, fast)) <= 1e-4
    # Batch composition does not change results: one row per batch vs big batches.
    tiny = LlamaLM(model, tok, 1, append_eos, "fast", max_batch_tokens=1).loglikelihood(requests)
    assert max(abs(a - b) for a, b in zip(tiny, fast)) <= 1e-4


def test_shared_first_tokens_share_trie_nodes(smollm):
    _, tok = smollm
    a = tok.encode(" Science and technology", bos=False, eos=False)
    b = tok.encode(" Science fiction", bos=False, eos=False)
    assert a[0] == b[0] and a != b
    row = _build_row([5, 6, 7], [(0, a + [2]), (1, b + [2])])
    # " Science" is fed once; each label's remaining tokens hang below it.
    assert row.tokens.count(a[0]) == 1
    assert len(row.tokens) == 3 + 1 + (len(a) - 1) + (len(b) - 1)
    first_preds = {}
    for at, target, req in zip(row.at, row.target, row.request):
        first_preds.setdefault(req, (at, target))
    assert first_preds[0] == first_preds[1] == (2, a[0])


def test_multi_token_labels_scored_right(smollm):
    """Labels with shared first tokens equal separate single-pair scores."""
    model, tok = smollm
    ctx = DEMO + "Article: A new telescope finds a planet.\nCategory:"
    labels = [" Science and technology", " Science fiction", " Science", " Sports"]
    lm = LlamaLM(model, tok, append_eos=False, scoring="fast")
    together = lm.loglikelihood([(ctx, x) for x in labels])
    alone = [LlamaLM(model, tok, append_eos=False, scoring="naive").loglikelihood([(ctx, x)])[0] for x in labels]
    assert max(abs(a - b) for a, b in zip(together, alone)) <= 1e-4


def test_joint_tokenization_scores_space_prefixed_label(smollm):
    model, tok = smollm
    lm = LlamaLM(model, tok, append_eos=False)
    ctx, cont = lm.encode_pair("Category:", " World")
    assert tok.decode(cont) == " World" and len(cont) == 1
    assert cont == tok.encode(" World", bos=False, eos=False)


def test_too_long_request_is_a_clear_error(smollm):
    model, tok = smollm
    lm = LlamaLM(model, tok)
    with pytest.raises(ValueError, match="max_seq_len"):
        lm.loglikelihood([("word " * (model.params.max_seq_len + 10), " World")])


def test_common_prefix_len():
    assert common_prefix_len([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_len([[1], [2]]) == 0


def test_generation_with_prefix_cache_equals_plain(smollm):
    model, tok = smollm
    contexts = [d[0] for d in direct_requests()[:: len(LABELS)]]
    fast = LlamaLM(model, tok, 3, scoring="fast").generate_until(contexts, 6)
    naive = LlamaLM(model, tok, 3, scoring="naive").generate_until(contexts, 6)
    assert fast == naive and all(isinstance(g, str) for g in fast)


def test_shared_prefix_split_is_batch_independent(smollm):
    """With the file's prefix fixed, chunking and batch size do not change any score (fp32)."""
    model, tok = smollm
    requests = direct_requests() + channel_requests()
    shared = DEMO  # common to every context above
    whole = LlamaLM(model, tok, 16, True, "fast")
    nll = whole.set_shared_prefix(shared)
    ref = whole.loglikelihood(requests)
    chunked = LlamaLM(model, tok, 3, True, "fast", max_batch_tokens=40)
    chunked.set_shared_prefix(shared)
    parts = [x for i in range(0, len(requests), 7) for x in chunked.loglikelihood(requests[i: i + 7])]
    # Only fp32 rounding of differently shaped matmuls is left (measured ≤ 4e-5 on sums of up
    # to 20 tokens); before the split was fixed per file, the cached tokens moved with the chunk.
    assert max(abs(a - b) for a, b in zip(ref, parts)) <= 1e-4
    naive = LlamaLM(model, tok, 4, True, "naive").loglikelihood(requests)
    assert max(abs(a - b) for a, b in zip(naive, ref)) <= 1e-4
    # The returned loss is the mean NLL of the cached tokens (all but the text's last token).
    ids = tok.encode(shared, bos=bool(tok.add_bos), eos=False)[:-1]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids]))[0].double(), -1)
    want = -sum(logp[i, ids[i + 1]].item() for i in range(len(ids) - 1)) / (len(ids) - 1)
    assert nll is not None and abs(nll - want) <= 1e-4
    # A request that does not extend the prefix is computed in full, still exactly.
    other = [("Category:", " World"), ("Article: x\nCategory:", " Sports")]
    assert max(abs(a - b) for a, b in zip(whole.loglikelihood(other),
                                          LlamaLM(model, tok, 4, True, "naive").loglikelihood(other))) <= 1e-4


def test_fast_equals_naive_mha_random_model():
    """Multi-head (not grouped) attention, random weights, long prefix, several batch sizes."""
    from llama.model import ModelArgs, Transformer

    class Tok:
        bos_id, eos_id, n_words, add_bos = 1, 2, 300, True

        def encode(self, s, bos, eos):
            return ([1] if bos else []) + [3 + (ord(c) % 290) for c in s]

    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=300, multiple_of=32)).eval()
    demo = "the shared demonstrations " * 8
    requests = [(demo + f"text {t}:", f" label {y}") for t in ("a", "bb", "ccc") for y in ("x", "yy", "x z")]
    naive = LlamaLM(model, Tok(), 4, True, "naive").loglikelihood(requests)
    for batch_tokens in (8, 4096):
        lm = LlamaLM(model, Tok(), 16, True, "fast", max_batch_tokens=batch_tokens)
        lm.set_shared_prefix(demo + "text ")
        assert max(abs(a - b) for a, b in zip(naive, lm.loglikelihood(requests))) <= 1e-4


def _random_lm(dtype, scoring, n_kv_heads=2, device="cuda"):
    """A small random model on ``device``; weights scaled up so that log-probs are far from uniform."""
    from llama.model import ModelArgs, Transformer

    class Tok:
        bos_id, eos_id, n_words, add_bos = 1, 2, 512, True

        def encode(self, s, bos, eos):
            return ([1] if bos else []) + [3 + (ord(c) % 500) for c in s]

        def decode(self, ids):
            return "".join(chr(97 + i % 26) for i in ids)

    torch.manual_seed(0)
    args = ModelArgs(dim=256, n_layers=4, n_heads=8, n_kv_heads=n_kv_heads, vocab_size=512, multiple_of=64,
                     max_seq_len=1024)
    with torch.device("meta"):
        model = Transformer(args)
    model = model.to_empty(device=device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0) if name.endswith("norm.weight") else p.normal_(0, 0.08)
    return LlamaLM(model.to(dtype).eval(), Tok(), 16, True, scoring)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
# The sums are ~57 nats, where one bf16 step is 0.25: bf16 is held to 1.6 steps (CPU measured 0.24).
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-3), (torch.bfloat16, 0.4), (torch.float16, 0.05)])
def test_fast_equals_naive_in_each_precision(dtype, tol, device):
    """Shared prefix in place + tree mask + device gather, against the naive path, in fp32, bf16
    and fp16.  On CPU, bf16 and fp16 take the plain-product attention that CUDA takes."""
    torch.backends.cuda.matmul.allow_tf32 = False
    demo = "demonstration text shared by all " * 12
    requests = [(demo + f"input {t}:", f" label {y}") for t in ("one", "two two", "three three three")
                for y in ("a", "bb", "a c", "a d")]
    naive = _random_lm(dtype, "naive", device=device).loglikelihood(requests)
    lm = _random_lm(dtype, "fast", device=device)
    lm.set_shared_prefix(demo + "input ")
    fast = lm.loglikelihood(requests)
    assert max(abs(a - b) for a, b in zip(naive, fast)) <= tol
    best = lambda xs: [max(range(4), key=lambda j: xs[4 * i + j]) for i in range(3)]  # noqa: E731
    assert best(naive) == best(fast)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_generation_equals_naive(device):
    contexts = ["demonstration text shared by all " * 12 + f"input {t}:" for t in ("one", "two two", "x")]
    fast = _random_lm(torch.float32, "fast", device=device).generate_until(contexts, 8, stop=())
    naive = _random_lm(torch.float32, "naive", device=device).generate_until(contexts, 8, stop=())
    assert fast == naive


@pytest.fixture(scope="module")
def ag_news_k4(shared_data) -> dict:
    """Real ag_news records, k=4 demonstrations per class (prompts of about 1,060 tokens), one
    test text per class (a stratified sample of 4), for both templates."""
    from classification.inputs.ag_news import build_records, load_ag_news

    data_dir = shared_data / "ag_news"
    if not (data_dir / "train.csv").is_file() or not (data_dir / "test.csv").is_file():
        pytest.skip(f"no ag_news train.csv/test.csv in {data_dir}")
    train, test = load_ag_news(str(data_dir))
    return {m: build_records(m, train, test, k=4, seed=42, sample=True, n_sample=4) for m in ("direct", "channel")}


@pytest.fixture(scope="module")
def ag_news_k4_results(smollm, ag_news_k4) -> Callable[[str, str], list]:
    """(method, scoring) -> results, each computed once (the naive path over 1,000-token prompts
    is what makes this slow).  The fast model gets the file's shared prefix as the runner gives
    it (check_model_fits); the naive path never reads that prefix, so it gets none.  calibrate
    re-scores the direct run's log-probs with content-free "N/A" probabilities, as the runner
    and benchmarks/bench_scoring.py do; generate continues the direct prompts."""
    from classification import methods

    model, tok = smollm
    lms: Dict[Tuple[str, str], LlamaLM] = {}
    cache: Dict[Tuple[str, str], list] = {}

    def lm_for(template: str, scoring: str) -> LlamaLM:
        if (template, scoring) not in lms:
            lm = lms[template, scoring] = LlamaLM(model, tok, 16, True, scoring)
            if scoring == "fast":
                lm.set_shared_prefix(methods.shared_context(ag_news_k4[template], template))
        return lms[template, scoring]

    def results(method: str, scoring: str) -> list:
        if (method, scoring) not in cache:
            template = "channel" if method == "channel" else "direct"
            recs = ag_news_k4[template]
            if template == "direct":  # calibrate and generate reuse the direct model's prefix:
                assert methods.shared_context(recs, "generate") == methods.shared_context(recs, "direct")
            lm = lm_for(template, scoring)
            if method == "calibrate":
                p_cf = methods.content_free_probs(lm, recs[0])
                direct = [r["log_probs"] for r in results("direct", scoring)]
                cache[method, scoring] = methods.calibrate(direct, recs[0]["label_words"], p_cf)
            else:
                cache[method, scoring] = getattr(methods, method)(lm, recs)
        return cache[method, scoring]

    return results


@pytest.mark.slow  # ~2 minutes; the k=1 end-to-end runs check the same in make test
@pytest.mark.parametrize("method", ["direct", "channel", "calibrate", "generate"])
def test_fast_equals_naive_on_real_ag_news_k4(smollm, ag_news_k4, ag_news_k4_results, method):
    """The acceptance check of the fast path on the data it is built for: long shared prompts of
    real demonstrations, where the prefix cache and the per-row split actually matter."""
    _, tok = smollm
    recs = ag_news_k4["channel" if method == "channel" else "direct"]
    assert len(recs) == 4 and len({r["ground_truth"] for r in recs}) == 4
    assert recs[0]["prompt"].count("Category:") == 4 * 4 + 1  # k=4 demonstrations per class + the test's
    naive, fast = ag_news_k4_results(method, "naive"), ag_news_k4_results(method, "fast")
    assert [r["prediction"] for r in fast] == [r["prediction"] for r in naive]
    if method == "generate":
        assert [r["generation"] for r in fast] == [r["generation"] for r in naive]
        assert any(r["generation"].strip() for r in fast)  # something was generated at all
        return
    deltas = [max(abs(a - b) for a, b in zip(rn["log_probs"], rf["log_probs"])) for rn, rf in zip(naive, fast)]
    print(f"{method}: max |Δ log-prob| naive vs fast = {max(deltas):.2e}")
    if method != "channel":
        assert max(deltas) <= 1e-4
        return
    # Channel sums a log-prob per text token, so fp32 rounding grows with the text (tolerance.py).
    for rec, delta in zip(recs, deltas):
        n_scored = len(tok.encode(" " + rec["text"], bos=False, eos=False)) + 1  # + EOS
        assert delta <= sum_tolerance(n_scored), (rec["index"], n_scored)


def test_output_head_in_blocks_changes_nothing(monkeypatch):
    """The head + log-softmax over blocks of a few positions = over the whole batch at once."""
    from classification.backend import scoring

    demo = "demonstration text shared by all " * 4
    requests = [(demo + f"input {t}:", f" label {y} and more words") for t in ("one", "two two", "x")
                for y in ("a", "bb", "a c")]
    whole = _random_lm(torch.float32, "fast", device="cpu").loglikelihood(requests)
    monkeypatch.setattr(scoring, "HEAD_BLOCK", 512 * 3)  # vocabulary 512: 3 positions per block
    blocked = _random_lm(torch.float32, "fast", device="cpu").loglikelihood(requests)
    assert max(abs(a - b) for a, b in zip(whole, blocked)) <= 1e-5


def test_saved_layer_states_match_hf_transformers(smollm, hf_default_model, tmp_path):
    """The states --save_hidden keeps from the scoring pass (float16, layers 20..30 of 30) against HF's
    output_hidden_states on the same token ids, at each context's last token."""
    import numpy as np

    from classification import methods, states
    from classification.backend.hidden import context_states

    model, tok = smollm
    hf = hf_default_model
    lm = LlamaLM(model, tok, append_eos=True, scoring="fast")
    assert lm.hidden_layers == (20, 22, 24, 26, 28, 30)
    lm.keep_hidden = True
    records = [{"prompt": DEMO + "Article: {text}\nCategory:", "completion": "{label_word}", "text": t,
                "label_words": LABELS} for t in TEXTS]
    methods.direct(lm, records, "eos")  # the scoring pass
    contexts = methods.record_contexts(lm, records, "eos")
    results = [{} for _ in contexts]
    passes = []
    hook = model.register_forward_hook(lambda *a: passes.append(1))
    states.attach_hidden(lm, records, results)
    hook.remove()
    assert not passes  # every state came from the scoring pass
    path = str(tmp_path / "h.npy")
    states.save_hidden(path, results)
    saved = np.load(path)
    assert saved.dtype == np.float16 and saved.shape == (len(contexts), 6, 576)
    for row, ctx in zip(saved, contexts):
        ids = torch.tensor([tok.encode(ctx, bos=bool(getattr(tok, "add_bos", True)), eos=False)])
        with torch.no_grad():
            want = hf(ids, output_hidden_states=True).hidden_states
        for j, layer in enumerate(lm.hidden_layers):
            ref = want[layer][0, -1].numpy()
            # float16 rounding (2^-11 relative) of states whose entries reach the hundreds, plus fp32 noise
            np.testing.assert_allclose(row[j].astype(np.float32), ref, rtol=1e-3, atol=2e-3 * np.abs(ref).max())
    np.testing.assert_allclose(saved[:, -1].astype(np.float32), context_states(lm, contexts)[:, -1], atol=2e-2)
