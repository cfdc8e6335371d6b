"""Hidden states of a :class:`~classification.backend.scoring.LlamaLM`: at the label-predicting
position, mean-pooled over texts, and through the output head.

These are the LlamaLM's :class:`~classification.lm.HiddenStateModel` methods (it calls them with
itself), run on its ``model`` (:class:`llama.model.Transformer`) in padded batches:

- :func:`context_hidden` -- the final-normed hidden state at the last token of each context, the
  position whose next-token distribution scores the label (``--save_hidden``, hidden/kNN
  calibration); states the scorer kept while scoring those contexts (``LlamaLM.keep_hidden``)
  are taken as they are, the rest computed here;
- :func:`text_embeddings` -- the mean of the final-normed hidden states over a text's own tokens
  (each text alone, BOS excluded): the default embedder of ``--demos knn``;
- :func:`next_token_log_probs` -- the model's output head + log-softmax applied to saved hidden
  states (``Transformer.forward(..., return_hidden=True)`` returns ``norm(h)``, so
  ``output(hidden)`` are exactly the logits).

Saving them with the results and in files: :mod:`classification.states`.
"""

from __future__ import annotations

from typing import Any, List, Sequence

import numpy as np
import torch

from classification.errors import ClassificationError

EMBED_MAX_TOKENS = 256  # texts are cut to this many tokens for embedding (retrieval needs no more)
_BATCH_TOKENS = 4096
# Embedding batches are sized by tokens alone: texts are short (ag_news: 55 tokens), and 16 rows of
# them (the scorer's --max_batch_size) left the matmuls too small (10.4 vs 16.3 texts/s at 64).
_EMBED_MAX_ROWS = 64


def _run_model(lm: Any, token_lists: Sequence[List[int]], pool: str, skip_first: bool = False) -> np.ndarray:
    """(n, dim) float32: the last position's hidden state (pool="last") or the mean over positions.

    For "last", the shared prefix (the demonstrations of random prompts) comes from the scorer's
    own cache (``LlamaLM.prefix_for``: the file's prefix, computed once per run).
    """
    model = lm.model
    device = model.tok_embeddings.weight.device
    pad = int(lm.tokenizer.eos_id)
    max_rows = int(getattr(lm, "max_batch_size", 16)) if pool == "last" else _EMBED_MAX_ROWS
    out = np.zeros((len(token_lists), model.params.dim), dtype=np.float32)
    if not token_lists:
        return out
    with torch.no_grad():
        plen, prefix = lm.prefix_for(token_lists) if pool == "last" else (0, None)
    rows = [t[plen:] for t in token_lists]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    start = 0
    while start < len(order):
        width = len(rows[order[start]])
        n = max(1, min(max_rows, _BATCH_TOKENS // max(1, plen + width)))
        batch = order[start : start + n]
        start += n
        tokens = torch.full((len(batch), width), pad, dtype=torch.long)
        lengths = torch.tensor([len(rows[i]) for i in batch])
        for r, i in enumerate(batch):
            tokens[r, : lengths[r]] = torch.tensor(rows[i])
        with torch.no_grad():
            # Right padding under causal attention: real tokens never see the pads, so only the
            # pooling has to leave them out.
            # The shared prefix is attended in place (llama.model's prefix), never copied per row.
            h = model(tokens.to(device), prefix=prefix, return_hidden=True)
            h = h.float().cpu()  # (bsz, width, dim)
        if pool == "last":
            vecs = h[torch.arange(len(batch)), lengths - 1]  # (bsz, dim)
        else:
            pos = torch.arange(width)[None, :]  # (1, width)
            first = 1 if skip_first else 0
            lo = torch.where(lengths > first, first, 0)  # a text without tokens keeps its BOS
            keep = (pos < lengths[:, None]) & (pos >= lo[:, None])  # (bsz, width)
            w = keep.float()[..., None]  # (bsz, width, 1)
            vecs = (h * w).sum(1) / w.sum(1).clamp(min=1)
        out[batch] = vecs.numpy()
    return out


def context_hidden(lm: Any, contexts: Sequence[str]) -> np.ndarray:
    """(n, dim) float32: the final hidden state at the last token of each context (BOS as scored)."""
    bos = bool(getattr(lm.tokenizer, "add_bos", True))
    ids = [lm.tokenizer.encode(c, bos=bos, eos=False) for c in contexts]
    if any(not t for t in ids):
        raise ClassificationError("a context has no tokens; cannot take its hidden state")
    # States the scorer kept while scoring these contexts (LlamaLM.keep_hidden) need no forward pass.
    take = getattr(lm, "take_hidden", None)
    kept = take(ids) if callable(take) else [None] * len(ids)
    computed = _run_model(lm, [t for t, state in zip(ids, kept) if state is None], "last")
    if all(state is None for state in kept):
        return computed
    rest = iter(computed)
    return np.stack([next(rest) if state is None else state for state in kept])


def text_embeddings(lm: Any, texts: Sequence[str]) -> np.ndarray:
    """(n, dim) float32: mean-pooled final hidden states of each text alone (first 256 tokens, no BOS)."""
    bos = bool(getattr(lm.tokenizer, "add_bos", True))
    ids = [lm.tokenizer.encode(t, bos=bos, eos=False)[: EMBED_MAX_TOKENS + bos] or [lm.tokenizer.eos_id]
           for t in texts]
    return _run_model(lm, ids, "mean", skip_first=bos)


def next_token_log_probs(lm: Any, hidden: np.ndarray, chunk: int = 256) -> np.ndarray:
    """(n, vocab) float32: log-softmax of the output head applied to final-normed hidden states."""
    head = lm.model.output
    weight = lm.model.tok_embeddings.weight
    parts = []
    with torch.no_grad():
        for i in range(0, len(hidden), chunk):
            x = torch.from_numpy(np.asarray(hidden[i : i + chunk], dtype=np.float32)).to(weight.device, weight.dtype)
            parts.append(torch.log_softmax(head(x).float(), dim=-1).cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
