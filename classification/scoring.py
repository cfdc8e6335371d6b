"""``LlamaLM``: the LanguageModel interface over a llama.Transformer, with two scoring paths.

naive  The original's algorithm: every (context, continuation) pair is one full sequence, with
       logits at every position.  Kept as the baseline that speed claims are measured against,
       and as a correctness oracle.
fast   The shared demonstration prefix is computed once and its KV cache reused; requests with
       the same context are packed into one row (context suffix once, then every continuation
       as a branch of a token trie under a tree attention mask); rows are bucketed by length and
       batched by a token budget; the output head runs only where a token is scored.

Both compute the same numbers: log p(continuation tokens [+ EOS] | context).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

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
        self.max_batch_tokens = max_batch_tokens or (65536 if self.device.type == "cuda" else 4096)
        self._prefix: Optional[Tuple[Tuple[int, ...], KVCache]] = None
        self.tokens_processed = 0  # tokens fed through the model (benchmarks report it)

    # -- tokenization ------------------------------------------------------------------------

    def encode_pair(self, context: str, continuation: str) -> Tuple[List[int], List[int]]:
        """Tokenize jointly and split where the context's own tokens stop matching."""
        bos = bool(getattr(self.tokenizer, "add_bos", True))
        whole = self.tokenizer.encode(context + continuation, bos=bos, eos=False)
        ctx = self.tokenizer.encode(context, bos=bos, eos=False)
        n = common_prefix_len([whole, ctx])
        cont = whole[n:]
        if self.append_eos:
            cont = cont + [self.tokenizer.eos_id]
        if not cont:
            raise ValueError(f"empty continuation after tokenization: {continuation!r}")
        if n == 0:
            raise ValueError("a context must have at least one token (the tokenizer adds no BOS)")
        return whole[:n], cont

    # -- scoring -----------------------------------------------------------------------------

    def loglikelihood(self, requests: Sequence[Tuple[str, str]]) -> List[float]:
        pairs = [self.encode_pair(c, x) for c, x in requests]
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
                out[i] = logp[r, pos, torch.tensor(cont, device=logp.device)].sum().item()
            del logp
        return out

    def _prefix_cache(self, prefix: List[int]) -> KVCache:
        key = tuple(prefix)
        if self._prefix is None or self._prefix[0] != key:
            cache = KVCache.for_model(self.model, 1, len(prefix))
            if prefix:
                self.model(torch.tensor([prefix], device=self.device), 0, cache, logits_at=torch.zeros(1, 1, dtype=torch.long, device=self.device))
                self.tokens_processed += len(prefix)
            self._prefix = (key, cache)
        return self._prefix[1]

    def _score_fast(self, pairs: List[Tuple[List[int], List[int]]]) -> List[float]:
        contexts = [ctx for ctx, _ in pairs]
        # Every row keeps at least its last context token, whose logits score the first target.
        plen = min(common_prefix_len(contexts), min(len(c) for c in contexts) - 1)
        groups: Dict[Tuple[int, ...], List[int]] = {}
        for i, ctx in enumerate(contexts):
            groups.setdefault(tuple(ctx), []).append(i)
        rows = [_build_row(list(ctx[plen:]), part) for ctx, idx in groups.items()
                for part in _split_group(len(ctx) - plen, [(i, pairs[i][1]) for i in idx])]
        rows.sort(key=lambda r: len(r.tokens))
        prefix = self._prefix_cache(contexts[0][:plen])
        out = [0.0] * len(pairs)
        for batch in self._batches(rows):
            self._score_rows(batch, prefix, plen, out)
        return out

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

    def _score_rows(self, rows: List[_Row], prefix: KVCache, plen: int, out: List[float]) -> None:
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
        mask = torch.cat([torch.ones(bsz, width, plen, dtype=torch.bool), tree], dim=2)[:, None]
        n_sel = max(len(s) for s in scored)
        logits_at = torch.zeros((bsz, n_sel), dtype=torch.long)
        for r, s in enumerate(scored):
            logits_at[r, : len(s)] = torch.tensor(s)
        cache = KVCache.for_model(self.model, bsz, plen + width)
        cache.copy_prefix(prefix, plen)
        dev = self.device
        logits = self.model(tokens.to(dev), plen, cache, positions=positions.to(dev), mask=mask.to(dev),
                            logits_at=logits_at.to(dev))
        self.tokens_processed += int(sum(len(r.tokens) for r in rows))
        logp = torch.log_softmax(logits.float(), dim=-1).cpu()
        for r, row in enumerate(rows):
            slot = {pos: k for k, pos in enumerate(scored[r])}
            for req, preds in row.targets:
                out[req] = sum(logp[r, slot[pos], tok].item() for pos, tok in preds)

    # -- generation --------------------------------------------------------------------------

    def generate_until(
        self,
        contexts: Sequence[str],
        max_gen_len: int,
        stop: Sequence[str] = ("\n",),
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: Optional[int] = None,
    ) -> List[str]:
        bos = bool(getattr(self.tokenizer, "add_bos", True))
        prompts = [self.tokenizer.encode(c, bos=bos, eos=False) for c in contexts]
        if not prompts:
            return []
        plen = 0
        if self.scoring == "fast":  # the demonstrations are computed once, as in scoring
            plen = min(common_prefix_len(prompts), min(len(p) for p in prompts) - 1)
        out: List[str] = []
        with torch.no_grad():
            prefix = self._prefix_cache(prompts[0][:plen])
            for start in range(0, len(prompts), self.max_batch_size):
                batch = [p[plen:] for p in prompts[start: start + self.max_batch_size]]
                self.tokens_processed += sum(len(p) for p in batch)
                out += generate(self.model, self.tokenizer, batch, max_gen_len, temperature, top_p, stop, seed,
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
    quantize: str = "none",
):
    """Set up the runtime, load tokenizer and model; returns (LlamaLM, Runtime)."""
    import time

    from llama.checkpoint import CheckpointError, count_shards, load_model
    from llama.quantize import quantize_model
    from llama.runtime import setup_runtime
    from llama.tokenizer import load_tokenizer

    try:
        rt = setup_runtime(count_shards(ckpt_dir), dtype=dtype, device=device, source=ckpt_dir)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    start = time.time()
    tokenizer = load_tokenizer(tokenizer_path)
    model = load_model(ckpt_dir, rt.device, rt.dtype, rt.mp_rank, rt.mp_size, max_seq_len, max_batch_size,
                       vocab_size=tokenizer.n_words)
    model = quantize_model(model, quantize, rt.device)
    print(f"Loaded {ckpt_dir} ({rt.dtype}, {rt.device}, mp={rt.mp_size}, dp={rt.dp_size}) in {time.time() - start:.1f}s")
    return LlamaLM(model, tokenizer, max_batch_size, append_eos, scoring), rt
