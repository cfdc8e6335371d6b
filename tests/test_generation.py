"""Greedy generation against HF transformers, batching invariance, stop strings, sampling."""

from __future__ import annotations

import pytest
import torch

from llama.checkpoint import load_model
from llama.generation import generate_tokens, sample_top_p
from llama.tokenizer import load_tokenizer

PROMPTS = ["The capital of France is", "Article: Team wins the cup final.\nCategory: Sports\n"
           "Article: Stocks fall on weak earnings.\nCategory:", "1, 2, 3, 4,"]


@pytest.fixture(scope="module")
def smollm(default_model_dir):
    tok = load_tokenizer(str(default_model_dir / "tokenizer.json"))
    return load_model(str(default_model_dir / "135M"), vocab_size=tok.n_words, max_seq_len=256), tok


def test_greedy_matches_hf_and_batching(smollm, hf_default_model):
    model, tok = smollm
    hf = hf_default_model
    ids = [tok.encode(p, bos=tok.add_bos, eos=False) for p in PROMPTS]
    batched = generate_tokens(model, tok, ids, max_gen_len=12)
    for prompt_ids, got in zip(ids, batched):
        assert generate_tokens(model, tok, [prompt_ids], max_gen_len=12) == [got]
        out = hf.generate(torch.tensor([prompt_ids]), max_new_tokens=12, do_sample=False,
                          eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)
        new = out[0, len(prompt_ids):].tolist()
        if tok.eos_id in new:
            new = new[: new.index(tok.eos_id)]
        assert got == tok.decode(new)


def test_stop_strings_cut_output(smollm):
    model, tok = smollm
    ids = [tok.encode(PROMPTS[1], bos=tok.add_bos, eos=False)]
    free = generate_tokens(model, tok, ids, max_gen_len=20)[0]
    cut = generate_tokens(model, tok, ids, max_gen_len=20, stop=["\n"])[0]
    assert "\n" not in cut and free.startswith(cut)


def test_sampling_is_seeded_and_top_p_restricts(smollm):
    model, tok = smollm
    ids = [tok.encode(PROMPTS[0], bos=tok.add_bos, eos=False)]
    a = generate_tokens(model, tok, ids, 8, temperature=1.0, top_p=0.9, seed=3)
    assert a == generate_tokens(model, tok, ids, 8, temperature=1.0, top_p=0.9, seed=3)
    probs = torch.tensor([[0.6, 0.3, 0.1]])
    draws = {sample_top_p(probs, 0.5, torch.Generator().manual_seed(s)).item() for s in range(50)}
    assert draws == {0}


def test_per_prompt_seeds_make_samples_independent_of_batching(smollm):
    model, tok = smollm
    ids = [tok.encode(p, bos=tok.add_bos, eos=False) for p in PROMPTS]
    batched = generate_tokens(model, tok, ids, 6, temperature=1.0, seed=[11, 12, 13])
    alone = [generate_tokens(model, tok, [i], 6, temperature=1.0, seed=[s])[0] for i, s in zip(ids, (11, 12, 13))]
    assert batched == alone
