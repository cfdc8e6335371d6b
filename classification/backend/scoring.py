"""``LlamaLM``: the LanguageModel interface over a llama.Transformer, with two scoring paths.

naive  The original's algorithm: every (context, continuation) pair is one full sequence, with
       logits at every position.  Kept as the baseline that speed claims are measured against,
       and as a correctness oracle.
fast   The shared demonstration prefix is computed once per run and its keys/values (one row)
       are attended by every row in place, never copied per row (``prefix_attention``); requests
       with the same context are packed into one row (context suffix once, then every
       continuation as a branch of a token trie under a tree attention mask); rows are bucketed
       by length and batched by a token budget; the output head runs only where a token is
       scored, and only the scored log-probs leave the device.

Which tokens are cached is fixed per input file (``set_shared_prefix``: the longest prefix common
to all of its prompts), not per call, so chunking, batch size and data-parallel size do not change
how a request is computed.

Both compute the same numbers: log p(continuation tokens [+ EOS] | context).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from classification.backend import hidden as hidden_states
from llama.generation import generate_tokens
from llama.model import KVCache, Transformer

SCORING_MODES = ("fast", "naive")
# Logits (positions x vocabulary, fp32) of one block of the output head in the fast path: 256 MiB.
HEAD_BLOCK = 1 << 26


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    if not seqs:
        return 0
    first, n = seqs[0], min(len(s) for s in seqs)
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return n


@dataclass
class _Row:
    """One packed sequence after the shared prefix: context suffix + a trie of continuations."""

    tokens: List[int]
    n_ctx: int  # the first n_ctx tokens are the context suffix (plain causal)
    parent: List[int]  # index of each token's parent in the row (-1: attends to the prefix only)
    # One entry per scored token: the row position whose logits predict it, the token, its request.
    at: List[int] = field(default_factory=list)
    target: List[int] = field(default_factory=list)
    request: List[int] = field(default_factory=list)
    context: Tuple[int, ...] = ()  # the whole context's tokens (prefix included)


def _build_row(ctx_suffix: List[int], conts: List[Tuple[int, List[int]]]) -> _Row:
    """Pack one context suffix and its continuations; continuations sharing tokens share nodes."""
    n_ctx = len(ctx_suffix)
    row = _Row(list(ctx_suffix), n_ctx, list(range(-1, n_ctx - 1)))
    child: Dict[Tuple[int, int], int] = {}  # (node, next token) -> node: a path is its last node
    for req, cont in conts:
        at = n_ctx - 1
        row.at.append(at)
        row.target.append(cont[0])
        row.request.append(req)
        for tok, nxt in zip(cont, cont[1:]):  # the last token is only predicted, never fed in
            node = child.get((at, tok))
            if node is None:
                node = child[(at, tok)] = len(row.tokens)
                row.tokens.append(tok)
                row.parent.append(at)
            at = node
            row.at.append(at)
            row.target.append(nxt)
            row.request.append(req)
    return row


@dataclass
class _Batch:
    """The arrays of one forward pass over packed rows (host side, built without per-token Python)."""

    tokens: np.ndarray  # (bsz, width) int64
    positions: np.ndarray  # (bsz, width) RoPE positions: prefix length + depth in the row's tree
    mask: np.ndarray  # (bsz, width, width) bool: a token sees its ancestors and itself
    logits_at: np.ndarray  # (bsz, n_sel) row positions that go through the output head
    # One entry per scored token: row, slot in logits_at, target token, request number.
    at_row: np.ndarray
    at_slot: np.ndarray
    target: np.ndarray
    request: np.ndarray


def _collect(launched: Tuple[np.ndarray, Tensor], out: List[float]) -> None:
    """Read a launched batch's sums back into ``out`` (the one wait per batch on a GPU)."""
    reqs, sums = launched
    for req, value in zip(reqs.tolist(), sums.tolist()):
        out[req] = value


def _batch_arrays(rows: List[_Row], plen: int, pad_id: int) -> _Batch:
    bsz, width = len(rows), max(len(r.tokens) for r in rows)
    tokens = np.full((bsz, width), pad_id, dtype=np.int64)
    parent = np.tile(np.arange(-1, width - 1), (bsz, 1))  # padding hangs below the row's last token
    sel, slots = [], []
    for r, row in enumerate(rows):
        n = len(row.tokens)
        tokens[r, :n] = row.tokens
        parent[r, :n] = row.parent
        s, inverse = np.unique(np.asarray(row.at, dtype=np.int64), return_inverse=True)
        sel.append(s)
        slots.append(inverse)
    # Ancestors-or-self, left to right (a parent precedes its children), vectorized over rows;
    # parent -1 reads the extra last slot: nothing in the row (the shared prefix only), depth -1.
    anc = np.zeros((bsz, width + 1, width), dtype=bool)
    depth = np.full((bsz, width + 1), -1, dtype=np.int64)
    b = np.arange(bsz)
    for i in range(width):
        p = parent[:, i]
        anc[:, i] = anc[b, p]
        anc[:, i, i] = True
        depth[:, i] = depth[b, p] + 1
    logits_at = np.zeros((bsz, max(len(s) for s in sel)), dtype=np.int64)
    for r, s in enumerate(sel):
        logits_at[r, : len(s)] = s
    return _Batch(
        tokens, plen + depth[:, :width], anc[:, :width], logits_at,
        np.repeat(np.arange(bsz), [len(row.at) for row in rows]), np.concatenate(slots),
        np.fromiter((t for row in rows for t in row.target), dtype=np.int64),
        np.fromiter((q for row in rows for q in row.request), dtype=np.int64),
    )


def _split_group(n_ctx: int, conts: List[Tuple[int, List[int]]]) -> List[List[Tuple[int, List[int]]]]:
    """Continuations of one context, split into rows.

    Packing shares the context suffix but makes attention grow with the packed length: short
    continuations (label words) share one row; long ones (channel's texts) get a row each and
    repeat the context suffix, which is then short.
    """
    budget = max(2 * n_ctx, n_ctx + 32)
    parts: List[List[Tuple[int, List[int]]]] = []
    size = budget + 1
    for req, cont in conts:
        if size + len(cont) - 1 > budget:
            parts.append([])
            size = n_ctx
        parts[-1].append((req, cont))
        size += len(cont) - 1
    return parts


class LlamaLM:
    def __init__(
        self,
        model: Transformer,
        tokenizer,
        max_batch_size: int = 16,
        append_eos: bool = True,
        scoring: str = "fast",
        max_batch_tokens: Optional[int] = None,
        runtime: Optional[Any] = None,
    ):
        if scoring not in SCORING_MODES:
            raise ValueError(f"scoring must be one of {SCORING_MODES}, not {scoring!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_seq_len = model.params.max_seq_len
        self.max_batch_size = max_batch_size
        self.append_eos = append_eos
        self.scoring = scoring
        self.device = model.tok_embeddings.weight.device
        # Tokens (rows x row width) of one forward pass; attention over the prefix is computed in
        # blocks of bounded size (llama.model.PREFIX_SCORE_BLOCK), so the prefix adds no term.
        self.max_batch_tokens = max_batch_tokens or (16384 if self.device.type == "cuda" else 4096)
        self._shared: Optional[List[int]] = None  # set_shared_prefix's tokens
        self._prefix: Optional[Tuple[Tuple[int, ...], KVCache]] = None
        self.tokens_processed = 0  # tokens fed through the model (benchmarks report it)
        # keep_hidden: while scoring, keep each context's hidden states of ``hidden_layers`` at its
        # last token (the position that scores the label), for take_hidden; {context ids: (layers, dim)}.
        self.keep_hidden = False
        self.hidden_layers: Tuple[int, ...] = hidden_states.saved_layers(model.params.n_layers)
        self._hidden: Dict[Tuple[int, ...], np.ndarray] = {}
        # The process layout the model was loaded for (llama.runtime.Runtime; None: one process).
        self.runtime = runtime

    def set_shared_prefix(self, text: str) -> Optional[float]:
        """Cache the tokens of ``text`` (minus its last token) once for every later request.

        ``text`` is the longest prefix common to all contexts of an input file: the split between
        cached and per-row tokens is then the same whatever the chunk, batch or data-parallel
        size.  The last token is left to the rows because the text that follows it in a request
        may tokenize across the boundary; a request whose context does not start with these
        tokens is scored without the prefix.  Returns the model's mean negative log-likelihood
        (nats per token) of the cached tokens, a cheap check that model, params and tokenizer
        belong together; None when fewer than 2 tokens are cached.
        """
        bos = bool(getattr(self.tokenizer, "add_bos", True))
        ids = self.tokenizer.encode(text, bos=bos, eos=False)[:-1] if text else []
        self._shared = ids
        if len(ids) < 2:
            return None
        with torch.no_grad():
            return self._prefix_cache(ids, nll=True)[1]

    # -- tokenization ------------------------------------------------------------------------

    def _encode_many(self, texts: List[str], bos: bool) -> List[List[int]]:
        """Token ids of every text, in one batch where the tokenizer offers it."""
        if hasattr(self.tokenizer, "encode_many"):
            return self.tokenizer.encode_many(texts, bos=bos)
        return [self.tokenizer.encode(t, bos=bos, eos=False) for t in texts]

    def encode_pair(self, context: str, continuation: str) -> Tuple[List[int], List[int]]:
        """Tokenize jointly and split where the context's own tokens stop matching."""
        return self.encode_pairs([(context, continuation)])[0]

    def encode_pairs(self, requests: Sequence[Tuple[str, str]]) -> List[Tuple[List[int], List[int]]]:
        """``encode_pair`` of every request; each distinct string is tokenized once, in a batch."""
        bos = bool(getattr(self.tokenizer, "add_bos", True))
        texts = list(dict.fromkeys(s for c, x in requests for s in (c, c + x)))
        ids = dict(zip(texts, self._encode_many(texts, bos)))
        out = []
        for context, continuation in requests:
            whole, ctx = ids[context + continuation], ids[context]
            n = common_prefix_len([whole, ctx])
            cont = whole[n:]
            if self.append_eos:
                cont = cont + [self.tokenizer.eos_id]
            if not cont:
                raise ValueError(f"empty continuation after tokenization: {continuation!r}")
            if n == 0:
                raise ValueError("a context must have at least one token (the tokenizer adds no BOS)")
            out.append((whole[:n], cont))
        return out

    # -- scoring -----------------------------------------------------------------------------

    def loglikelihood(self, requests: Sequence[Tuple[str, str]]) -> List[float]:
        pairs = self.encode_pairs(requests)
        for ctx, cont in pairs:
            if len(ctx) + len(cont) - 1 > self.max_seq_len:
                raise ValueError(
                    f"a request of {len(ctx) + len(cont)} tokens exceeds max_seq_len {self.max_seq_len}: "
                    "raise --max_seq_len or shorten the input"
                )
        if not pairs:
            return []
        with torch.no_grad():
            if self.scoring == "naive":
                return self._score_naive(pairs)
            return self._score_fast(pairs)

    def _score_naive(self, pairs: List[Tuple[List[int], List[int]]]) -> List[float]:
        out = [0.0] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        for start in range(0, len(order), self.max_batch_size):
            batch = order[start: start + self.max_batch_size]
            seqs = [pairs[i][0] + pairs[i][1][:-1] for i in batch]
            width = max(len(s) for s in seqs)
            tokens = torch.full((len(batch), width), self.tokenizer.eos_id, dtype=torch.long)
            for r, s in enumerate(seqs):
                tokens[r, : len(s)] = torch.tensor(s)
            # As the original: logits and log-softmax at every position of every full sequence.
            logp = torch.log_softmax(self.model(tokens.to(self.device)), dim=-1)
            self.tokens_processed += sum(len(s) for s in seqs)
            for r, i in enumerate(batch):
                ctx, cont = pairs[i]
                pos = torch.arange(len(ctx) - 1, len(ctx) - 1 + len(cont), device=logp.device)
                out[i] = logp[r, pos, torch.tensor(cont, device=logp.device)].double().sum().item()
            del logp
        return out

    def _prefix_cache(self, prefix: List[int], nll: bool = False) -> Tuple[KVCache, Optional[float]]:
        """The one-row cache of ``prefix`` (computed once, reused while the prefix is the same);
        with ``nll``, also the mean negative log-likelihood of its tokens."""
        key = tuple(prefix)
        if self._prefix is not None and self._prefix[0] == key and not nll:
            return self._prefix[1], None
        cache = KVCache.for_model(self.model, 1, len(prefix))
        mean_nll = None
        if prefix:
            tokens = torch.tensor([prefix], device=self.device)
            hidden = self.model(tokens, 0, cache, return_hidden=True)[0]  # (len(prefix), dim)
            self.tokens_processed += len(prefix)
            if nll and len(prefix) > 1:
                total = torch.zeros((), device=self.device)
                for s in range(0, len(prefix) - 1, 256):  # the head in blocks: V logits per position
                    logits = self.model.output(hidden[s: min(s + 256, len(prefix) - 1)]).float()
                    target = tokens[0, s + 1: s + 1 + logits.shape[0]]
                    total += (torch.logsumexp(logits, -1) - logits.gather(-1, target[:, None])[:, 0]).sum()
                mean_nll = total.item() / (len(prefix) - 1)
        self._prefix = (key, cache)
        return cache, mean_nll

    def _split_len(self, contexts: Sequence[Sequence[int]]) -> int:
        """Tokens of these contexts served from the shared prefix cache.

        ``set_shared_prefix``'s tokens when every context extends them, else (direct API use,
        no file) the longest prefix the contexts of this call share.  Every row keeps at least its
        last context token, whose logits score the first target.
        """
        if self._shared is not None and all(self._extends_shared(c) for c in contexts):
            return len(self._shared)
        return min(common_prefix_len(contexts), min(len(c) for c in contexts) - 1)

    def prefix_for(self, token_lists: Sequence[Sequence[int]]) -> Tuple[int, Optional[KVCache]]:
        """(tokens served from the shared prefix, its one-row cache or None) for sequences that are
        all run after it: the file's prefix when they extend it (computed once, reused), else
        the prefix these sequences share."""
        plen = self._split_len(token_lists)
        return plen, (self._prefix_cache(list(token_lists[0][:plen]))[0] if plen else None)

    def _extends_shared(self, context: Sequence[int]) -> bool:
        """``context`` starts with set_shared_prefix's tokens and has at least one more."""
        n = len(self._shared)
        return len(context) > n and list(context[:n]) == self._shared

    def _score_fast(self, pairs: List[Tuple[List[int], List[int]]]) -> List[float]:
        out = [0.0] * len(pairs)
        contexts = [ctx for ctx, _ in pairs]
        if self._shared is None:
            parts = [(list(range(len(pairs))), self._split_len(contexts))]
        else:  # requests that do not extend the file's shared prefix are computed in full
            fits = [self._extends_shared(c) for c in contexts]
            parts = [([i for i, f in enumerate(fits) if f], len(self._shared)),
                     ([i for i, f in enumerate(fits) if not f], 0)]
        for ids, plen in parts:
            if ids:
                self._score_part([pairs[i] for i in ids], ids, plen, out)
        return out

    def _score_part(self, pairs: List[Tuple[List[int], List[int]]], ids: List[int], plen: int,
                    out: List[float]) -> None:
        """Score ``pairs`` (request numbers ``ids``) with their first ``plen`` tokens cached."""
        groups: Dict[Tuple[int, ...], List[int]] = {}
        for i, (ctx, _) in enumerate(pairs):
            groups.setdefault(tuple(ctx), []).append(i)
        rows = []
        for ctx, idx in groups.items():
            for part in _split_group(len(ctx) - plen, [(ids[i], pairs[i][1]) for i in idx]):
                rows.append(_build_row(list(ctx[plen:]), part))
                rows[-1].context = ctx
        rows.sort(key=lambda r: len(r.tokens))
        prefix = self._prefix_cache(pairs[0][0][:plen])[0] if plen else None
        # One batch in flight: the next batch is built and launched before the previous one's
        # sums are read back, so on a GPU the host's work overlaps the device's.
        pending: Optional[Tuple[np.ndarray, Tensor]] = None
        for batch in self._batches(rows):
            launched = self._score_rows(batch, prefix, plen)
            if pending is not None:
                _collect(pending, out)
            pending = launched
        if pending is not None:
            _collect(pending, out)

    def _batches(self, rows: List[_Row]) -> List[List[_Row]]:
        """Consecutive rows (sorted by length) while rows x longest row fits the token budget."""
        batches: List[List[_Row]] = []
        for row in rows:
            if batches:
                cur = batches[-1]
                n = len(cur) + 1
                if n <= self.max_batch_size and n * len(row.tokens) <= self.max_batch_tokens:
                    cur.append(row)
                    continue
            batches.append([row])
        return batches

    def _score_rows(self, rows: List[_Row], prefix: Optional[KVCache], plen: int) -> Tuple[np.ndarray, Tensor]:
        """Launch a batch: (request numbers, their log-prob sums on the device, not yet read back)."""
        arrays = _batch_arrays(rows, plen, self.tokenizer.eos_id)
        dev, put = self.device, self._put
        layers = dict(layers=self.hidden_layers, layers_at=put(np.array([[r.n_ctx - 1] for r in rows]))) \
            if self.keep_hidden else {}  # a row's context ends at n_ctx - 1: its label-predicting position
        h = self.model(put(arrays.tokens), 0, None, positions=put(arrays.positions),
                       mask=put(arrays.mask)[:, None], logits_at=put(arrays.logits_at),
                       prefix=prefix, return_hidden=True, **layers)  # (bsz, n_sel, dim): norm(h) at scored positions
        if self.keep_hidden:
            h, kept = h
            states = kept[:, 0].float().cpu().numpy()  # (bsz, layers, dim)
            for row, state in zip(rows, states):
                self._hidden.setdefault(row.context, state)
        self.tokens_processed += int(sum(len(r.tokens) for r in rows))
        logp = self._scored_log_probs(h, arrays)
        reqs, local = np.unique(arrays.request, return_inverse=True)
        sums = torch.zeros(len(reqs), dtype=logp.dtype, device=dev).index_add_(0, put(local), logp)
        return reqs, sums

    def _put(self, a: np.ndarray) -> Tensor:
        t = torch.from_numpy(a)
        if self.device.type != "cuda":
            return t
        # From pinned memory the copy is queued without waiting for the device's earlier work.
        return t.pin_memory().to(self.device, non_blocking=True)

    def _scored_log_probs(self, h: Tensor, arrays: _Batch) -> Tensor:
        """(n_scored,) fp64 log p(target) of every scored entry, from the final-normed states h
        (bsz, n_sel, dim), computed on the device.

        The output head and log-softmax run once per distinct scored position (no padding
        slots), in blocks of at most HEAD_BLOCK logits: the logits of a whole batch (positions x
        vocabulary, gigabytes for channel with a 128K vocabulary) never exist at once.  It is
        torch's log-softmax, as in the naive path, HF transformers and lm-evaluation-harness:
        logit - logsumexp is closer to fp64 on CPU (its log-softmax is ~4e-6 nats per token
        high), but would no longer equal theirs.
        """
        put = self._put
        positions, entry_pos = np.unique(arrays.at_row * h.shape[1] + arrays.at_slot, return_inverse=True)
        hv = h.flatten(0, 1)[put(positions)]  # (n_positions, dim)
        step = max(1, HEAD_BLOCK // self.model.params.vocab_size)
        logp = torch.empty(len(entry_pos), dtype=torch.float64, device=self.device)
        for start in range(0, len(positions), step):
            logits = self.model.output(hv[start: start + step]).float()  # (≤ step, vocab), as forward ends
            block = torch.log_softmax(logits, dim=-1)
            sel = np.flatnonzero((entry_pos >= start) & (entry_pos < start + step))
            logp[put(sel)] = block[put(entry_pos[sel] - start), put(arrays.target[sel])].double()
        return logp

    def take_hidden(self, contexts: Sequence[Sequence[int]]) -> List[Optional[np.ndarray]]:
        """The states kept (``keep_hidden``; (layers, dim) each, ``hidden_layers``) for these
        contexts' token ids while they were scored, None for any not scored since the last call;
        every kept state is then dropped."""
        got = [self._hidden.get(tuple(c)) for c in contexts]
        self._hidden.clear()
        return got

    # -- hidden states (classification.lm.HiddenStateModel; computed in backend.hidden) ------------

    def context_hidden(self, contexts: Sequence[str]) -> np.ndarray:
        return hidden_states.context_hidden(self, contexts)

    def context_states(self, contexts: Sequence[str]) -> np.ndarray:
        return hidden_states.context_states(self, contexts)

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        return hidden_states.text_embeddings(self, texts)

    def next_token_log_probs(self, states: np.ndarray) -> np.ndarray:
        return hidden_states.next_token_log_probs(self, states)

    # -- generation --------------------------------------------------------------------------

    def generate_until(
        self,
        contexts: Sequence[str],
        max_gen_len: int,
        stop: Sequence[str] = ("\n",),
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: Union[None, int, Sequence[int]] = None,
    ) -> List[str]:
        bos = bool(getattr(self.tokenizer, "add_bos", True))
        prompts = self._encode_many(list(contexts), bos)
        if not prompts:
            return []
        out: List[str] = []
        with torch.no_grad():
            plen, prefix = self.prefix_for(prompts) if self.scoring == "fast" else (0, None)  # demonstrations once
            for start in range(0, len(prompts), self.max_batch_size):
                batch = [p[plen:] for p in prompts[start: start + self.max_batch_size]]
                self.tokens_processed += sum(len(p) for p in batch)
                seeds = seed[start: start + self.max_batch_size] if isinstance(seed, (list, tuple)) else seed
                out += generate_tokens(self.model, self.tokenizer, batch, max_gen_len, temperature, top_p, stop,
                                       seeds, prefix=prefix, prefix_len=plen)
        return out

