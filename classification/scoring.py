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
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from llama.generation import generate
from llama.model import KVCache, Transformer

SCORING_MODES = ("fast", "naive")


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
    # For every request in the row: (request index, [(predicting row position, target token)])
    targets: List[Tuple[int, List[Tuple[int, int]]]] = field(default_factory=list)


def _build_row(ctx_suffix: List[int], conts: List[Tuple[int, List[int]]]) -> _Row:
    """Pack one context suffix and its continuations; continuations sharing tokens share nodes."""
    row = _Row(list(ctx_suffix), len(ctx_suffix), [i - 1 for i in range(len(ctx_suffix))])
    nodes: Dict[Tuple[int, ...], int] = {}
    last_ctx = len(ctx_suffix) - 1
    for req, cont in conts:
        preds, at = [], last_ctx
        for j, tok in enumerate(cont):
            preds.append((at, tok))
            if j == len(cont) - 1:
                break  # the last token is only predicted, never fed in
            key = tuple(cont[: j + 1])
            if key not in nodes:
                nodes[key] = len(row.tokens)
                row.tokens.append(tok)
                row.parent.append(at)
            at = nodes[key]
        row.targets.append((req, preds))
    return row


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

    def encode_pair(self, context: str, continuation: str) -> Tuple[List[int], List[int]]:
        """Tokenize jointly and split where the context's own tokens stop matching."""
        return self.encode_pairs([(context, continuation)])[0]

    def encode_pairs(self, requests: Sequence[Tuple[str, str]]) -> List[Tuple[List[int], List[int]]]:
        """``encode_pair`` of every request; each distinct string is tokenized once, in a batch."""
        bos = bool(getattr(self.tokenizer, "add_bos", True))
        texts = list(dict.fromkeys(s for c, x in requests for s in (c, c + x)))
        if hasattr(self.tokenizer, "encode_many"):
            ids = dict(zip(texts, self.tokenizer.encode_many(texts, bos=bos)))
        else:
            ids = {t: self.tokenizer.encode(t, bos=bos, eos=False) for t in texts}
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
        shared = self._shared
        if shared is not None and all(len(c) > len(shared) and list(c[: len(shared)]) == shared for c in contexts):
            return len(shared)
        return min(common_prefix_len(contexts), min(len(c) for c in contexts) - 1)

    def _score_fast(self, pairs: List[Tuple[List[int], List[int]]]) -> List[float]:
        out = [0.0] * len(pairs)
        contexts = [ctx for ctx, _ in pairs]
        if self._shared is None:
            parts = [(list(range(len(pairs))), self._split_len(contexts))]
        else:  # requests that do not extend the file's shared prefix are computed in full
            n = len(self._shared)
            fits = [len(c) > n and c[:n] == self._shared for c in contexts]
            parts = [([i for i, f in enumerate(fits) if f], n), ([i for i, f in enumerate(fits) if not f], 0)]
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
        rows = [_build_row(list(ctx[plen:]), part) for ctx, idx in groups.items()
                for part in _split_group(len(ctx) - plen, [(ids[i], pairs[i][1]) for i in idx])]
        rows.sort(key=lambda r: len(r.tokens))
        prefix = self._prefix_cache(pairs[0][0][:plen])[0] if plen else None
        for batch in self._batches(rows):
            self._score_rows(batch, prefix, plen, out)

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

    def _score_rows(self, rows: List[_Row], prefix: Optional[KVCache], plen: int, out: List[float]) -> None:
        bsz, width = len(rows), max(len(r.tokens) for r in rows)
        tokens = torch.full((bsz, width), self.tokenizer.eos_id, dtype=torch.long)
        depth = torch.zeros((bsz, width), dtype=torch.long)
        # Tree mask over the row part: a token sees its ancestors and itself (padding: causal).
        tree = torch.tril(torch.ones(width, width, dtype=torch.bool)).repeat(bsz, 1, 1)
        scored: List[List[int]] = []
        for r, row in enumerate(rows):
            n = len(row.tokens)
            tokens[r, :n] = torch.tensor(row.tokens)
            depth[r, : row.n_ctx] = torch.arange(row.n_ctx)
            tree[r, row.n_ctx: n, row.n_ctx:] = False
            for i in range(row.n_ctx, n):
                p = row.parent[i]
                tree[r, i, : p + 1] = tree[r, p, : p + 1]
                tree[r, i, i] = True
                depth[r, i] = depth[r, p] + 1
            scored.append(sorted({pos for _, preds in row.targets for pos, _ in preds}))
        positions = plen + depth
        pad_pos = plen + torch.arange(width)
        for r, row in enumerate(rows):
            positions[r, len(row.tokens):] = pad_pos[len(row.tokens):]
        n_sel = max(len(s) for s in scored)
        logits_at = torch.zeros((bsz, n_sel), dtype=torch.long)
        # One entry per scored token: (row, slot in logits_at, target token, request).
        at_row, at_slot, target, request = [], [], [], []
        for r, (row, sel) in enumerate(zip(rows, scored)):
            logits_at[r, : len(sel)] = torch.tensor(sel)
            slot = {pos: k for k, pos in enumerate(sel)}
            for req, preds in row.targets:
                for pos, tok in preds:
                    at_row.append(r)
                    at_slot.append(slot[pos])
                    target.append(tok)
                    request.append(req)
        dev = self.device
        logits = self.model(tokens.to(dev), 0, None, positions=positions.to(dev), mask=tree[:, None].to(dev),
                            logits_at=logits_at.to(dev), prefix=prefix)  # (bsz, n_sel, vocab) fp32
        self.tokens_processed += int(sum(len(r.tokens) for r in rows))
        # Gather on the device: only the scored log-probs are copied back.
        r_i, s_i = torch.tensor(at_row, device=dev), torch.tensor(at_slot, device=dev)
        logp = torch.log_softmax(logits, dim=-1)[r_i, s_i, torch.tensor(target, device=dev)].double()
        reqs = sorted(set(request))
        local = {req: k for k, req in enumerate(reqs)}
        sums = torch.zeros(len(reqs), dtype=logp.dtype, device=dev).index_add_(
            0, torch.tensor([local[q] for q in request], device=dev), logp)
        for req, value in zip(reqs, sums.tolist()):
            out[req] = value

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
        if hasattr(self.tokenizer, "encode_many"):
            prompts = self.tokenizer.encode_many(list(contexts), bos=bos)
        else:
            prompts = [self.tokenizer.encode(c, bos=bos, eos=False) for c in contexts]
        if not prompts:
            return []
        plen = self._split_len(prompts) if self.scoring == "fast" else 0  # demonstrations computed once
        out: List[str] = []
        with torch.no_grad():
            prefix = self._prefix_cache(prompts[0][:plen])[0]
            for start in range(0, len(prompts), self.max_batch_size):
                batch = [p[plen:] for p in prompts[start: start + self.max_batch_size]]
                self.tokens_processed += sum(len(p) for p in batch)
                seeds = seed[start: start + self.max_batch_size] if isinstance(seed, (list, tuple)) else seed
                out += generate(self.model, self.tokenizer, batch, max_gen_len, temperature, top_p, stop, seeds,
                                prefix=prefix, prefix_len=plen)
        return out


def load_lm(
    ckpt_dir: str,
    tokenizer_path: str,
    max_seq_len: int = 2048,
    max_batch_size: int = 16,
    dtype: Optional[str] = None,
    device: Optional[str] = None,
    scoring: str = "fast",
    append_eos: bool = True,
    model_parallel_size: Optional[int] = None,
    quantize: str = "none",
):
    """Set up the runtime, load tokenizer and model; returns (LlamaLM, Runtime)."""
    import time

    from llama.checkpoint import CheckpointError, count_shards, load_model
    from llama.quantize import quantize_model
    from llama.runtime import setup_runtime
    from llama.tokenizer import load_tokenizer

    try:
        rt = setup_runtime(model_parallel_size or count_shards(ckpt_dir), dtype=dtype, device=device, source=ckpt_dir)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    start = time.time()
    tokenizer = load_tokenizer(tokenizer_path)
    model = load_model(ckpt_dir, rt.device, rt.dtype, rt.mp_rank, rt.mp_size, max_seq_len, max_batch_size,
                       vocab_size=tokenizer.n_words)
    model = quantize_model(model, quantize, rt.device)
    print(f"Loaded {ckpt_dir} ({rt.dtype}, {rt.device}, mp={rt.mp_size}, dp={rt.dp_size}) in {time.time() - start:.1f}s")
    return LlamaLM(model, tokenizer, max_batch_size, append_eos, scoring), rt
