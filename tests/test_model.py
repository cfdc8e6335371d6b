"""llama.model against HF transformers' LlamaForCausalLM, and the KV cache against full forwards."""

from __future__ import annotations

import pytest
import torch

from llama.checkpoint import load_model
from llama import model as llama_model
from llama.model import KVCache, ModelArgs, Transformer, prefix_attention

transformers = pytest.importorskip("transformers")

TINY_CONFIGS = {
    "mha_untied": dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False),
    "gqa_tied": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "mqa_untied": dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False),
    "gqa_rope_scaled": dict(
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
    ),
}


def make_hf_checkpoint(path, seed: int = 0, **overrides):
    """A random tiny LlamaForCausalLM saved as config.json + model.safetensors."""
    cfg = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, vocab_size=300,
               rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=256)
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).eval()
    with torch.no_grad():
        for p in model.parameters():  # norms start at 1: randomise them too
            p.normal_(0, 0.2)
    model.save_pretrained(path, safe_serialization=True)
    return model


def tokens(n: int, vocab: int, bsz: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (bsz, n), generator=g)


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_tiny_configs_match_hf(tmp_path, name):
    hf = make_hf_checkpoint(tmp_path, **TINY_CONFIGS[name])
    ours = load_model(str(tmp_path))
    ids = tokens(80, 300)  # longer than the rope-scaling original length
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-4


def test_default_model_matches_hf(default_gguf, hf_default_model):
    """The embedded SmolLM2-135M, read by us and by transformers from the same GGUF."""
    hf = hf_default_model
    ours = load_model(str(default_gguf))
    assert ours.params.n_layers == 30 and ours.params.dim == 576 and ours.params.kv_heads == 3
    ids = tokens(48, ours.params.vocab_size)
    with torch.no_grad():
        diff = (ours(ids) - hf(ids).logits).abs().max().item()
    assert diff <= 1e-3


def random_model(seed: int = 0, **kw) -> Transformer:
    args = ModelArgs(**{"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 200, "multiple_of": 32, **kw})
    torch.manual_seed(seed)
    model = Transformer(args)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def test_kv_cache_incremental_equals_full():
    model = random_model()
    ids = tokens(30, 200, bsz=3)
    with torch.no_grad():
        full = model(ids)
        cache = KVCache.for_model(model, batch_size=3, max_seq_len=64)
        parts = [model(ids[:, :12], 0, cache), model(ids[:, 12:20], 12, cache)]
        parts += [model(ids[:, t:t + 1], t, cache) for t in range(20, 30)]
    assert (torch.cat(parts, dim=1) - full).abs().max().item() <= 1e-4


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])  # MHA, GQA, MQA
def test_shared_prefix_attended_in_place(n_kv_heads):
    """A prefix computed once (batch 1) and attended, uncopied, by several different suffixes."""
    model = random_model(n_kv_heads=n_kv_heads)
    prefix, suffixes = tokens(16, 200, bsz=1), tokens(7, 200, bsz=3, seed=5)
    with torch.no_grad():
        full = model(torch.cat([prefix.expand(3, -1), suffixes], dim=1))[:, 16:]
        pcache = KVCache.for_model(model, 1, 16)
        model(prefix, 0, pcache)
        got = model(suffixes, prefix=pcache)
        # The rows' own part can also live in a cache, filled step by step (generation).
        cache = KVCache.for_model(model, 3, 7)
        steps = [model(suffixes[:, :4], 0, cache, prefix=pcache)]
        steps += [model(suffixes[:, t:t + 1], t, cache, prefix=pcache) for t in range(4, 7)]
    assert (got - full).abs().max().item() <= 1e-4
    assert (torch.cat(steps, dim=1) - full).abs().max().item() <= 1e-4


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_prefix_attention_equals_attention_over_the_concatenation(dtype, fused, monkeypatch):
    """Two-part attention merged flash-style = one softmax over [prefix; own keys] (SDPA), with
    torch's fused CPU kernel (fp32) and with the plain products every other device uses."""
    if not fused:
        monkeypatch.setattr(llama_model, "_CPU_FLASH", None)
    gen = torch.Generator().manual_seed(0)
    bsz, heads, kv_heads, s, p, d = 3, 6, 2, 5, 9, 8
    q = torch.randn(bsz, heads, s, d, generator=gen, dtype=dtype)
    k, v = (torch.randn(bsz, kv_heads, s, d, generator=gen, dtype=dtype) for _ in range(2))
    pk, pv = (torch.randn(1, kv_heads, p, d, generator=gen, dtype=dtype) for _ in range(2))
    mask = (torch.rand(bsz, 1, s, s, generator=gen) > 0.5) | torch.eye(s, dtype=torch.bool)
    keys = torch.cat([pk.expand(bsz, -1, -1, -1), k], 2)
    values = torch.cat([pv.expand(bsz, -1, -1, -1), v], 2)
    full_mask = torch.cat([torch.ones(bsz, 1, s, p, dtype=torch.bool), mask], 3)
    want = torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=full_mask, enable_gqa=True)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert (prefix_attention(q, k, v, mask, pk, pv) - want).abs().max().item() <= tol
    # Blocks over the prefix (a tiny block size) change nothing.
    old = llama_model.PREFIX_SCORE_BLOCK
    try:
        llama_model.PREFIX_SCORE_BLOCK = kv_heads * p * 2
        assert (prefix_attention(q, k, v, mask, pk, pv) - want).abs().max().item() <= tol
    finally:
        llama_model.PREFIX_SCORE_BLOCK = old


def test_packed_continuations_with_tree_mask():
    """Two continuations packed after one context, each seeing only the context and itself."""
    model = random_model()
    ctx, a, b = tokens(10, 200, bsz=1), tokens(3, 200, bsz=1, seed=2), tokens(2, 200, bsz=1, seed=3)
    packed = torch.cat([ctx, a, b], dim=1)
    n = packed.shape[1]
    positions = torch.tensor([list(range(13)) + [10, 11]])
    mask = torch.tril(torch.ones(n, n, dtype=torch.bool))
    mask[13:, 10:13] = False  # b must not see a
    with torch.no_grad():
        got = model(packed, positions=positions, mask=mask[None, None])
        want_a = model(torch.cat([ctx, a], 1))
        want_b = model(torch.cat([ctx, b], 1))
    assert (got[:, :13] - want_a).abs().max().item() <= 1e-4
    assert (got[:, 13:] - want_b[:, 10:]).abs().max().item() <= 1e-4


def test_logits_at_selected_positions():
    model = random_model(tie_word_embeddings=False)
    ids = tokens(12, 200, bsz=2)
    at = torch.tensor([[3, 11], [0, 5]])
    with torch.no_grad():
        full = model(ids)
        sel = model(ids, logits_at=at)
    assert sel.shape == (2, 2, 200)
    assert torch.allclose(sel, torch.gather(full, 1, at[..., None].expand(-1, -1, 200)), atol=1e-5)


def test_hidden_dim_rules():
    # LLaMA-7B and Llama-3-8B FFN widths from their params.json values.
    assert ModelArgs(dim=4096, multiple_of=256).hidden_dim == 11008
    assert ModelArgs(dim=4096, multiple_of=1024, ffn_dim_multiplier=1.3).hidden_dim == 14336
    args = ModelArgs.from_params({"dim": 512, "n_layers": 2, "n_heads": 8, "unknown_key": 1})
    assert args.n_layers == 2 and args.kv_heads == 8


def test_layer_states_match_hf_hidden_states(tmp_path):
    """forward(layers=..., layers_at=...) against HF's output_hidden_states (0: embeddings, l: after
    block l, n_layers: final-normed), at chosen positions, with and without logits_at."""
    hf = make_hf_checkpoint(tmp_path, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
    ours = load_model(str(tmp_path))
    ids = tokens(20, 300)
    at = torch.tensor([[19, 4], [7, 0]])
    with torch.no_grad():
        want = hf(ids, output_hidden_states=True).hidden_states  # 5 tensors (bsz, seqlen, dim)
        logits, got = ours(ids, layers=[0, 1, 3, 4], layers_at=at)
        _, got_sel = ours(ids, logits_at=at[:, :1], return_hidden=True, layers=[4, 2], layers_at=at)
    assert got.shape == (2, 2, 4, 64) and got_sel.shape == (2, 2, 2, 64)
    for j, layer in enumerate([0, 1, 3, 4]):
        ref = torch.gather(want[layer], 1, at[..., None].expand(-1, -1, 64))
        assert (got[:, :, j] - ref).abs().max().item() <= 1e-4
    torch.testing.assert_close(got_sel[:, :, 0], got[:, :, 3])
    torch.testing.assert_close(got_sel[:, :, 1], torch.gather(want[2], 1, at[..., None].expand(-1, -1, 64)),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(logits, hf(ids).logits, atol=1e-4, rtol=0)  # the output is unchanged
    with pytest.raises(ValueError, match="layer numbers in 0..4"):
        ours(ids, layers=[5], layers_at=at)
    with pytest.raises(ValueError, match="needs layers_at"):
        ours(ids, layers=[1])
