"""The LLaMA-family transformer (LLaMA 1/2/3, SmolLM2, ...), with Meta's parameter names.

Pure: no file I/O, no device moves, no global default dtype.  Build it on the ``meta`` device,
load a state dict with ``assign=True`` and move it with ``.to(device, dtype)`` (see
``llama.checkpoint``).  The KV cache is an explicit object the caller creates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llama import parallel


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: Optional[int] = None
    vocab_size: int = -1  # LLaMA-1 params.json leaves it to the tokenizer
    multiple_of: int = 256
    ffn_dim_multiplier: Optional[float] = None
    # Not in Meta's params.json: set when a converted checkpoint's FFN width does not follow
    # the multiple_of rule (many HF configs).
    ffn_hidden_dim: Optional[int] = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # Llama-3.1 style frequency-dependent RoPE scaling.
    use_scaled_rope: bool = False
    rope_scale_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_seq_len: int = 8192
    # Informational: a converted model whose output head equals its embedding.
    tie_word_embeddings: bool = False
    max_seq_len: int = 2048
    max_batch_size: int = 32

    @classmethod
    def from_params(cls, params: Dict[str, Any], **overrides: Any) -> "ModelArgs":
        """From a params.json dict; unknown keys are ignored so newer Meta files still load."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in {**params, **overrides}.items() if k in known}
        return cls(**kwargs)

    def to_params(self) -> Dict[str, Any]:
        """The params.json dict (Meta's keys, plus ours only where they differ from defaults)."""
        out: Dict[str, Any] = {
            "dim": self.dim,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.kv_heads,
            "vocab_size": self.vocab_size,
            "multiple_of": self.multiple_of,
            "ffn_dim_multiplier": self.ffn_dim_multiplier,
            "norm_eps": self.norm_eps,
            "rope_theta": self.rope_theta,
            "use_scaled_rope": self.use_scaled_rope,
        }
        defaults = ModelArgs()
        for name in ("ffn_hidden_dim", "tie_word_embeddings", "rope_scale_factor",
                     "rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_seq_len"):
            if getattr(self, name) != getattr(defaults, name):
                out[name] = getattr(self, name)
        return out

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        if self.ffn_hidden_dim is not None:
            return self.ffn_hidden_dim
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)


def rope_inv_freq(args: ModelArgs, device: Optional[torch.device] = None) -> Tensor:
    """Per-pair rotation frequencies, fp32, shape (head_dim // 2,)."""
    d = args.head_dim
    inv = 1.0 / (args.rope_theta ** (torch.arange(0, d, 2, device=device, dtype=torch.float32) / d))
    if not args.use_scaled_rope:
        return inv
    # Llama-3.1: keep high frequencies, divide low ones by the factor, blend in between.
    low_wavelen = args.rope_original_max_seq_len / args.rope_low_freq_factor
    high_wavelen = args.rope_original_max_seq_len / args.rope_high_freq_factor
    wavelen = 2 * math.pi / inv
    smooth = (args.rope_original_max_seq_len / wavelen - args.rope_low_freq_factor) / (
        args.rope_high_freq_factor - args.rope_low_freq_factor
    )
    blended = (1 - smooth) * inv / args.rope_scale_factor + smooth * inv
    out = torch.where(wavelen > low_wavelen, inv / args.rope_scale_factor, blended)
    return torch.where(wavelen < high_wavelen, inv, out)


def rope_rotations(args: ModelArgs, positions: Tensor) -> Tensor:
    """Unit complex rotations e^(i θ_j p) for ``positions`` (bsz, seqlen): (bsz, seqlen, 1, head_dim // 2)."""
    angles = positions.float()[..., None] * rope_inv_freq(args, positions.device)
    return torch.polar(torch.ones_like(angles), angles)[:, :, None, :]


def apply_rope(x: Tensor, rot: Tensor) -> Tensor:
    """Rotate Meta's interleaved pairs (x[2i], x[2i+1]) as complex numbers; x: (bsz, seqlen, heads,
    head_dim), rot from :func:`rope_rotations`.  One complex product instead of four real ones
    and a stack (RoPE was 6% of the CPU time)."""
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (bsz, seqlen, heads, head_dim // 2)
    return torch.view_as_real(xc * rot).flatten(-2).type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class KVCache:
    """Keys/values of every layer for ``batch_size`` rows and up to ``max_seq_len`` positions.

    Created by the caller (``KVCache.for_model``).  A cache of one row whose every slot is
    filled can serve as the shared ``prefix`` of later forward passes: every row attends to it
    without a copy being made per row (:func:`prefix_attention`).
    """

    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, max_seq_len: int,
                 head_dim: int, device: torch.device, dtype: torch.dtype):
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        self.k: List[Tensor] = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v: List[Tensor] = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.batch_size = batch_size
        self.max_seq_len = max_seq_len

    @classmethod
    def for_model(cls, model: "Transformer", batch_size: int, max_seq_len: Optional[int] = None) -> "KVCache":
        w = model.tok_embeddings.weight
        attn = model.layers[0].attention
        return cls(model.params.n_layers, batch_size, attn.n_local_kv_heads,
                   max_seq_len or model.params.max_seq_len, attn.head_dim, w.device, w.dtype)


# Elements of one attention-score block over the shared prefix; bounds the transient memory of
# prefix attention whatever the batch (256 MiB in fp32).
PREFIX_SCORE_BLOCK = 1 << 26


def attention_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """The additive form of a bool attention mask (0 where True, -inf where False) in ``dtype``;
    a mask that is already additive is returned as it is."""
    if mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def _attend(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], scale: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Unnormalised attention of q over k/v: (Σ_j e_j v_j, max score m, Σ_j e_j), e_j = exp(s_j - m).

    q (..., s, d), k/v (..., t, d) broadcastable in the leading dims; bias additive (..., s, t),
    at least one key visible per query.  Accumulates in fp32 (fp64 for fp64 inputs).
    """
    acc = torch.promote_types(q.dtype, torch.float32)
    scores = torch.matmul(q, k.transpose(-1, -2)).to(acc) * scale
    if bias is not None:
        scores = scores + bias
    m = scores.amax(dim=-1, keepdim=True)
    e = torch.exp(scores - m)
    return torch.matmul(e.to(v.dtype), v).to(acc), m, e.sum(dim=-1, keepdim=True)


# torch's fused CPU attention that also returns the log-sum-exp (a private op; absent: plain products).
_CPU_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _cpu_flash(q: Tensor) -> bool:
    return q.device.type == "cpu" and q.dtype == torch.float32 and _CPU_FLASH is not None


def _attend_own(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], scale: float) -> Tuple[Tensor, Tensor]:
    """Queries (bsz, heads, s, d) against the rows' own keys (bsz, kv_heads, t, d) where ``mask``:
    (softmax output (bsz, heads, s, d), log-sum-exp (bsz, heads, s, 1)).

    On CPU the fused kernel never forms the (bsz, heads, s, t) scores: with rows of a few hundred
    packed tokens the plain products' element-wise passes over them took as long as all the
    projections together.
    """
    bias = None if mask is None else attention_bias(mask, q.dtype)
    if _cpu_flash(q):
        out, lse = _CPU_FLASH(q, k, v, 0.0, False, attn_mask=bias, scale=scale)[:2]  # shares KV heads itself
        return out, lse[..., None]
    bsz, n_heads, s, d = q.shape
    kv_heads = k.shape[1]
    qg = q.view(bsz, kv_heads, n_heads // kv_heads, s, d)  # heads sharing one KV head side by side
    own_bias = None if bias is None else bias.unsqueeze(2)  # (bsz or 1, 1, 1, s, t)
    num, m, l = _attend(qg, k.unsqueeze(2), v.unsqueeze(2), own_bias, scale)  # (bsz, kv, g, s, ·)
    return (num / l).view(bsz, n_heads, s, d), (m + torch.log(l)).view(bsz, n_heads, s, 1)


def _attend_prefix(q: Tensor, prefix_k: Tensor, prefix_v: Tensor, scale: float) -> Tuple[Tensor, Tensor]:
    """Queries (bsz, heads, s, d) against the one-row prefix (1, kv_heads, p, d): (softmax output
    (bsz, heads, s, d), log-sum-exp (bsz, heads, s, 1)).

    On CPU the fused kernel reads the prefix through a stride-0 batch view.  Elsewhere all rows'
    queries of a KV head form one batch-1 query block, whose scores are formed in blocks of at
    most PREFIX_SCORE_BLOCK elements.
    """
    bsz, n_heads, s, d = q.shape
    if _cpu_flash(q):
        out, lse = _CPU_FLASH(q, prefix_k.expand(bsz, -1, -1, -1), prefix_v.expand(bsz, -1, -1, -1),
                              0.0, False, scale=scale)[:2]
        return out, lse[..., None]
    kv_heads = prefix_k.shape[1]
    group = n_heads // kv_heads
    # (bsz, kv_heads, group, s, d) -> (kv_heads, queries, d)
    qp = q.view(bsz, kv_heads, group, s, d).permute(1, 0, 2, 3, 4).reshape(kv_heads, bsz * group * s, d)
    step = max(1, PREFIX_SCORE_BLOCK // max(1, kv_heads * prefix_k.shape[2]))
    outs, lses = [], []
    for i in range(0, qp.shape[1], step):
        num, m, l = _attend(qp[:, i: i + step], prefix_k[0], prefix_v[0], None, scale)
        outs.append(num / l)
        lses.append(m + torch.log(l))
    # (kv_heads, queries, ·) -> (bsz, kv_heads, group, s, ·) -> (bsz, heads, s, ·)
    out, lse = (torch.cat(t, 1).unflatten(1, (bsz, group, s)).transpose(0, 1).reshape(bsz, n_heads, s, -1)
                for t in (outs, lses))
    return out, lse


def prefix_attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], prefix_k: Tensor,
                     prefix_v: Tensor) -> Tensor:
    """Softmax attention over [shared prefix keys ; each row's own keys], in two exact parts.

    q (bsz, heads, s, d); k, v (bsz, kv_heads, t, d): the rows' own keys, visible where ``mask``
    (bool, or its :func:`attention_bias`; broadcastable to (bsz, 1, s, t)) allows; prefix_k/v (1, kv_heads, p, d): visible to
    every query and never copied per row.  Each part gives its softmax output o and log-sum-exp
    L, and they merge exactly: out = w o_prefix + (1 - w) o_own, where w = sigmoid(L_prefix -
    L_own) is the prefix's share of the softmax mass.
    """
    scale = q.shape[-1] ** -0.5
    out_own, lse_own = _attend_own(q, k, v, mask, scale)  # (bsz, heads, s, ·)
    out_pre, lse_pre = _attend_prefix(q, prefix_k, prefix_v, scale)
    share = torch.sigmoid(lse_pre - lse_own)  # (bsz, heads, s, 1)
    return torch.lerp(out_own, out_pre, share).to(q.dtype)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        mp = parallel.model_parallel_size()
        if args.n_heads % mp or args.kv_heads % mp:
            raise ValueError(f"{args.n_heads} heads / {args.kv_heads} kv heads do not split over {mp} shards")
        self.n_local_heads = args.n_heads // mp
        self.n_local_kv_heads = args.kv_heads // mp
        self.head_dim = args.head_dim
        self.wq = parallel.column_linear(args.dim, args.n_heads * self.head_dim)
        self.wk = parallel.column_linear(args.dim, args.kv_heads * self.head_dim)
        self.wv = parallel.column_linear(args.dim, args.kv_heads * self.head_dim)
        self.wo = parallel.row_linear(args.n_heads * self.head_dim, args.dim)

    def forward(self, x: Tensor, rot: Tensor, start_pos: int,
                cache: Optional[KVCache], layer: int, mask: Optional[Tensor],
                prefix: Optional[KVCache] = None) -> Tensor:
        bsz, seqlen, _ = x.shape
        q = self.wq(x).view(bsz, seqlen, self.n_local_heads, self.head_dim)
        k = self.wk(x).view(bsz, seqlen, self.n_local_kv_heads, self.head_dim)
        v = self.wv(x).view(bsz, seqlen, self.n_local_kv_heads, self.head_dim)
        q, k = apply_rope(q, rot), apply_rope(k, rot)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (bsz, heads, seqlen, head_dim)
        if cache is not None:
            end = start_pos + seqlen
            cache.k[layer][:bsz, :, start_pos:end] = k
            cache.v[layer][:bsz, :, start_pos:end] = v
            k = cache.k[layer][:bsz, :, :end]  # (bsz, kv_heads, end, head_dim)
            v = cache.v[layer][:bsz, :, :end]
        if prefix is not None:
            out = prefix_attention(q, k, v, mask, prefix.k[layer], prefix.v[layer])
        else:
            causal = mask is None and k.shape[2] == seqlen and seqlen > 1
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal,
                enable_gqa=self.n_local_heads != self.n_local_kv_heads,
            )
        out = out.transpose(1, 2).reshape(bsz, seqlen, -1)  # (bsz, seqlen, heads * head_dim)
        return self.wo(out)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = parallel.column_linear(dim, hidden_dim)
        self.w2 = parallel.row_linear(hidden_dim, dim)
        self.w3 = parallel.column_linear(dim, hidden_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, layer_id: int, args: ModelArgs):
        super().__init__()
        self.layer_id = layer_id
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args.dim, args.hidden_dim)
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)

    def forward(self, x: Tensor, rot: Tensor, start_pos: int,
                cache: Optional[KVCache], mask: Optional[Tensor], prefix: Optional[KVCache] = None) -> Tensor:
        h = x + self.attention(self.attention_norm(x), rot, start_pos, cache, self.layer_id, mask, prefix)
        return h + self.feed_forward(self.ffn_norm(h))


def _gather_positions(h: Tensor, at: Tensor) -> Tensor:
    """h (bsz, seqlen, dim) at ``at`` (bsz, n) indices into seqlen: (bsz, n, dim)."""
    return torch.gather(h, 1, at[..., None].expand(-1, -1, h.shape[-1]))


class Transformer(nn.Module):
    def __init__(self, params: ModelArgs):
        super().__init__()
        if params.vocab_size <= 0:
            raise ValueError("ModelArgs.vocab_size is not set (take it from the tokenizer)")
        self.params = params
        self.tok_embeddings = parallel.embedding(params.vocab_size, params.dim)
        self.layers = nn.ModuleList(TransformerBlock(i, params) for i in range(params.n_layers))
        self.norm = RMSNorm(params.dim, eps=params.norm_eps)
        self.output = parallel.column_linear(params.dim, params.vocab_size, gather_output=True)

    def forward(
        self,
        tokens: Tensor,
        start_pos: int = 0,
        cache: Optional[KVCache] = None,
        positions: Optional[Tensor] = None,
        mask: Optional[Tensor] = None,
        logits_at: Optional[Tensor] = None,
        prefix: Optional[KVCache] = None,
        return_hidden: bool = False,
        layers: Optional[Sequence[int]] = None,
        layers_at: Optional[Tensor] = None,
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """Logits (fp32) for ``tokens`` (bsz, seqlen) placed at slot ``start_pos`` of ``cache``.

        positions: (bsz, seqlen) RoPE positions; default (prefix length +) start_pos + arange.
            Packed sequences (several continuations after one context) pass their own.
        mask: bool (bsz or 1, 1, seqlen, start_pos + seqlen) over the rows' own keys (cache
            slots, or these tokens without a cache), True = may attend; default causal.
        logits_at: (bsz, n) indices into seqlen: only those positions go through the output
            head (it is a large share of a small model's FLOPs).  Default: every position.
        prefix: a filled one-row cache every row attends to in full before its own keys (the
            shared demonstrations), read in place: never copied per row.
        return_hidden: return the final-normed hidden states (at ``logits_at``) instead of logits.
        layers: also return the hidden states of these layers at ``layers_at`` (bsz, m) indices
            into seqlen, as ``(output, states)`` with states (bsz, m, len(layers), dim) in the
            forward's dtype.  Numbered as HF transformers' ``output_hidden_states``: 0 is the
            token embeddings, l in 1..n_layers-1 the residual stream after block l, and n_layers
            the final-normed state (what the output head reads).
        """
        bsz, seqlen = tokens.shape
        h = self.tok_embeddings(tokens)
        offset = 0 if prefix is None else prefix.max_seq_len
        if positions is None:
            positions = torch.arange(offset + start_pos, offset + start_pos + seqlen, device=tokens.device).expand(bsz, seqlen)
        rot = rope_rotations(self.params, positions)
        if mask is None and seqlen > 1 and ((cache is not None and start_pos > 0) or prefix is not None):
            slots = torch.arange(start_pos + seqlen, device=tokens.device)
            mask = slots[None, :] <= slots[start_pos:, None]  # (seqlen, start_pos + seqlen)
            mask = mask[None, None]
        if mask is not None:  # once for every layer
            mask = attention_bias(mask, h.dtype)
        n_layers = len(self.layers)
        wanted = self._check_layers(layers, layers_at, bsz)
        taken: Dict[int, Tensor] = {}
        if 0 in wanted:
            taken[0] = _gather_positions(h, layers_at)
        for i, layer in enumerate(self.layers, 1):
            h = layer(h, rot, start_pos, cache, mask, prefix)
            if i in wanted and i < n_layers:
                taken[i] = _gather_positions(h, layers_at)
        if n_layers in wanted:
            taken[n_layers] = self.norm(_gather_positions(h, layers_at))  # per position: as after the gather below
        if logits_at is not None:
            h = _gather_positions(h, logits_at)  # (bsz, n, dim)
        h = self.norm(h)
        out = h if return_hidden else self.output(h).float()
        if layers is None:
            return out
        return out, torch.stack([taken[i] for i in layers], dim=2)  # (bsz, m, len(layers), dim)

    def _check_layers(self, layers: Optional[Sequence[int]], layers_at: Optional[Tensor], bsz: int) -> set:
        if layers is None:
            return set()
        n_layers = len(self.layers)
        if not layers or any(not 0 <= int(i) <= n_layers for i in layers):
            raise ValueError(f"layers must be a non-empty list of layer numbers in 0..{n_layers}, got {list(layers)}")
        if layers_at is None or layers_at.dim() != 2 or layers_at.shape[0] != bsz:
            raise ValueError("layers needs layers_at: (bsz, m) indices into the sequence")
        return {int(i) for i in layers}
