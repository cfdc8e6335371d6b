"""Greedy and temperature/top-p generation over the explicit KV cache.

Prompts of different lengths are left-padded: RoPE positions and the attention mask skip the
padding, so every row is computed exactly as if it were alone.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor

from llama.model import KVCache, Transformer


def sample_top_p(probs: Tensor, p: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """Sample from the smallest set of tokens whose probability mass reaches ``p``; (bsz,) ids."""
    sorted_probs, idx = torch.sort(probs, dim=-1, descending=True)
    outside = sorted_probs.cumsum(-1) - sorted_probs > p
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    choice = torch.multinomial(sorted_probs / sorted_probs.sum(-1, keepdim=True), 1, generator=generator)
    return idx.gather(-1, choice).squeeze(-1)


def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


@torch.no_grad()
def generate_tokens(
    model: Transformer,
    tokenizer,
    prompt_tokens: List[List[int]],
    max_gen_len: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop: Sequence[str] = (),
    seed: Union[None, int, Sequence[int]] = None,
    prefix: Optional[KVCache] = None,
    prefix_len: int = 0,
) -> List[str]:
    """Continue each prompt (token ids) for at most ``max_gen_len`` tokens.

    Greedy when temperature is 0.  Each output is cut before EOS or the first stop string.
    seed: one seed for the batch, or one per prompt (each row then samples from its own
    generator, so its output does not depend on which prompts share its batch).
    prefix/prefix_len: a one-row cache holding the ``prefix_len`` tokens shared by every prompt
    (attended in place, never copied); ``prompt_tokens`` are then what follows that prefix.
    """
    bsz = len(prompt_tokens)
    device = model.tok_embeddings.weight.device
    lengths = [len(t) for t in prompt_tokens]
    width = max(lengths)
    total = prefix_len + width + max_gen_len
    if total > model.params.max_seq_len:
        raise ValueError(f"prompt of {prefix_len + width} tokens + {max_gen_len} new ones exceeds max_seq_len {model.params.max_seq_len}")
    if min(lengths) < 1:
        raise ValueError("every prompt needs at least one token after the shared prefix")
    pad = torch.tensor([width - n for n in lengths], device=device)
    tokens = torch.full((bsz, width), tokenizer.eos_id, dtype=torch.long, device=device)
    for row, ids in enumerate(prompt_tokens):
        tokens[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long, device=device)
    # Row cache slots: [left padding + prompt | generated]; the shared prefix stays in its own
    # one-row cache, which every row attends to in place.
    slots = torch.arange(width + max_gen_len, device=device)
    valid = slots[None, :] >= pad[:, None]  # (bsz, slots): False on padding
    positions = prefix_len + (slots[None, :width] - pad[:, None]).clamp(min=0)
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    # Padding queries attend to themselves only, so no row of the mask is empty.
    mask = causal[None] & valid[:, None, :width]
    mask[:, torch.arange(width), torch.arange(width)] = True
    cache = KVCache.for_model(model, bsz, width + max_gen_len)
    shared = prefix if prefix_len else None
    if isinstance(seed, (list, tuple)):
        if len(seed) != bsz:
            raise ValueError(f"{len(seed)} seeds for {bsz} prompts")
        generators: List[Optional[torch.Generator]] = [torch.Generator(device=device).manual_seed(s) for s in seed]
    else:
        generators = [torch.Generator(device=device).manual_seed(seed) if seed is not None else None]

    last_at = torch.full((bsz, 1), width - 1, device=device)
    logits = model(tokens, 0, cache, positions=positions, mask=mask[:, None], logits_at=last_at, prefix=shared)
    out: List[List[int]] = [[] for _ in range(bsz)]
    done = [False] * bsz
    texts = [""] * bsz
    for step in range(max_gen_len):
        last = logits[:, -1]
        if temperature > 0:
            probs = torch.softmax(last / temperature, dim=-1)
            if len(generators) == 1:
                nxt = sample_top_p(probs, top_p, generators[0])
            else:
                nxt = torch.cat([sample_top_p(probs[r : r + 1], top_p, g) for r, g in enumerate(generators)])
        else:
            nxt = last.argmax(-1)
        for row, tok in enumerate(nxt.tolist()):
            if done[row]:
                continue
            if tok == tokenizer.eos_id:
                done[row] = True
                continue
            out[row].append(tok)
            texts[row], hit = _cut_at_stop(tokenizer.decode(out[row]), stop)
            done[row] = hit
        if all(done) or step == max_gen_len - 1:
            break
        slot = width + step
        step_pos = (torch.full((bsz,), width + step, device=device) - pad + prefix_len)[:, None]
        logits = model(nxt[:, None], slot, cache, positions=step_pos, mask=valid[:, None, None, : slot + 1],
                       prefix=shared)
    return texts
