"""Hidden states of a :class:`~classification.backend.scoring.LlamaLM`: at the label-predicting
position, mean-pooled over texts, and through the output head.

These are the LlamaLM's :class:`~classification.lm.HiddenStateModel` methods (it calls them with
itself), run on its ``model`` (:class:`llama.model.Transformer`) in padded batches:

- :func:`context_states` -- the hidden states of the layers :func:`saved_layers` chooses at the
  last token of each context, the position whose next-token distribution scores the label
  (``--save_hidden``, the anchor calibrations); states the scorer kept while scoring those
  contexts (``LlamaLM.keep_hidden``) are taken as they are, the rest computed here;
  :func:`context_hidden` is its last layer, the final-normed state;
- :func:`text_embeddings` -- the mean of the final-normed hidden states over a text's own tokens
  (each text alone, BOS excluded): the default embedder of ``--demos knn``;
- :func:`next_token_log_probs` -- the model's output head + log-softmax applied to saved hidden
  states (``Transformer.forward(..., return_hidden=True)`` returns ``norm(h)``, so
  ``output(hidden)`` are exactly the logits).

Saving them with the results and in files: :mod:`classification.states`.
"""

from __future__ import annotations

import math
from typing import Any, List, Sequence, Tuple

import numpy as np
import torch

from classification.errors import ClassificationError

EMBED_MAX_TOKENS = 256  # texts are cut to this many tokens for embedding (retrieval needs no more)
_BATCH_TOKENS = 4096
# Embedding batches are sized by tokens alone: texts are short (ag_news: 55 tokens), and 16 rows of
# them (the scorer's --max_batch_size) left the matmuls too small (10.4 vs 16.3 texts/s at 64).
_EMBED_MAX_ROWS = 64
# Which layers --save_hidden keeps, fingerprinted by the runs that save them: SAVED_LAYER_COUNT
# layers spread evenly over the last third of the model, the last one the final-normed state.
SAVED_LAYERS_RULE = "last third, 6 layers"
SAVED_LAYER_COUNT = 6


def saved_layers(n_layers: int) -> Tuple[int, ...]:
    """The layers whose states ``--save_hidden`` keeps, numbered as ``Transformer.forward``'s
    ``layers`` (n_layers: the final-normed state): :data:`SAVED_LAYER_COUNT` of them, evenly
    spread from two thirds of the depth to the last (SmolLM2-135M: 20, 22, ..., 30).

    Why these: on ag_news the states of the last third of SmolLM2-135M's layers classify best
    (layers up to 21 of 30 were worse), and neighbouring layers' states are close, so every
    other layer loses little.  Six float16 states cost 6 x dim x 2 bytes per record: 6.9 KB at
    dim 576, 48 KB at dim 4096 (370 MB for the 7,600 ag_news test inputs of a 7B model, against
    1.9 GB for all 33 states).
    """
    picks = {max(0, math.floor(n_layers - i * n_layers / (3 * (SAVED_LAYER_COUNT - 1)) + 0.5))
             for i in range(SAVED_LAYER_COUNT)}
    return tuple(sorted(picks | {n_layers}))


def _run_model(lm: Any, token_lists: Sequence[List[int]], pool: str, skip_first: bool = False) -> np.ndarray:
    """(n, layers, dim) float32: the last position's states of ``lm.hidden_layers`` (pool="last"),
    or (n, dim): the mean over positions of the final-normed states.

    For "last", the shared prefix (the demonstrations of random prompts) comes from the scorer's
    own cache (``LlamaLM.prefix_for``: the file's prefix, computed once per run).
    """
    model = lm.model
    device = model.tok_embeddings.weight.device
    pad = int(lm.tokenizer.eos_id)
    max_rows = int(getattr(lm, "max_batch_size", 16)) if pool == "last" else _EMBED_MAX_ROWS
    layers = tuple(getattr(lm, "hidden_layers", (model.params.n_layers,)))
    shape = (len(layers), model.params.dim) if pool == "last" else (model.params.dim,)
    out = np.zeros((len(token_lists), *shape), dtype=np.float32)
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
            if pool == "last":
                last = (lengths - 1)[:, None].to(device)
                _, kept = model(tokens.to(device), prefix=prefix, logits_at=last, return_hidden=True,
                                layers=layers, layers_at=last)
                out[batch] = kept[:, 0].float().cpu().numpy()  # (bsz, layers, dim)
                continue
            h = model(tokens.to(device), prefix=prefix, return_hidden=True)
            h = h.float().cpu()  # (bsz, width, dim)
        pos = torch.arange(width)[None, :]  # (1, width)
        first = 1 if skip_first else 0
        lo = torch.where(lengths > first, first, 0)  # a text without tokens keeps its BOS
        keep = (pos < lengths[:, None]) & (pos >= lo[:, None])  # (bsz, width)
        w = keep.float()[..., None]  # (bsz, width, 1)
        out[batch] = ((h * w).sum(1) / w.sum(1).clamp(min=1)).numpy()
    return out


def context_hidden(lm: Any, contexts: Sequence[str]) -> np.ndarray:
    """(n, dim) float32: the final-normed hidden state at the last token of each context (BOS as scored)."""
    return context_states(lm, contexts)[:, -1]


def context_states(lm: Any, contexts: Sequence[str]) -> np.ndarray:
    """(n, layers, dim) float32: the states of ``lm.hidden_layers`` (the last: the final-normed
    state) at the last token of each context (BOS as scored)."""
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
