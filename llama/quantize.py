"""Int8 weights for a loaded ``Transformer``: ``quantize_model(model, "int8", device)``.

The seven projections of every block (``wq wk wv wo w1 w2 w3``) are replaced by int8 layers; the
embedding, the norms and the output head keep the model's dtype.  The head is left alone as
bitsandbytes' own integrations do (``lm_head`` is skipped): it decides every log-prob directly,
and with tied embeddings (SmolLM2) it shares its matrix with the embedding, so quantizing it would
save no memory.

CUDA  bitsandbytes' LLM.int8 (``bnb.nn.Linear8bitLt``, Dettmers et al. 2022): row-wise int8
      weights, vector-wise int8 activations, and input features with a value above
      ``threshold`` (6.0) anywhere in the batch multiplied in fp16 (mixed-precision
      decomposition).  Activations are fp16, as in the paper, so the model must be fp16.
CPU   torch's dynamic int8 linear (``torch.ops.quantized.linear_dynamic``, fbgemm/oneDNN):
      int8 weights with one scale per output row, activations quantized per call (one scale
      per call), int32 accumulation.  Chosen by measurement (README "Precision and int8"): on a
      2-core AVX-512 VNNI CPU it beat fp32, bf16, torchao's int8 configurations and
      bitsandbytes' CPU backend.  Input features above ``threshold`` are multiplied in floating
      point, as LLM.int8 does, so that a few outlier features do not set the activation scale.

Under model parallel every fairscale ``ColumnParallelLinear``/``RowParallelLinear`` shard is
quantized on its own, and the replacement still does fairscale's gather (column, when
``gather_output``) and all-reduce (row) around the local int8 product.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch
from torch import Tensor, nn

from llama.checkpoint import CheckpointError

QUANTIZE_MODES = ("none", "int8", "int8w")
TARGETS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
DEFAULT_THRESHOLD = 6.0  # LLM.int8's outlier threshold


class QuantizeError(CheckpointError):
    """This model cannot be quantized this way here (scripts print ``error: ...`` and exit 2)."""


def check_mode(mode: str) -> str:
    if mode not in QUANTIZE_MODES:
        raise QuantizeError(f"--quantize {mode!r} is not one of {', '.join(QUANTIZE_MODES)}")
    return mode


def _rowwise_int8(w: Tensor, keep: Optional[Tensor]) -> Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
    """Row-wise int8 of ``w`` (out, in): (int8 values, fp32 scale per row, sorted kept feature
    indices or None, their weight columns (out, n_keep) in ``w``'s dtype or None).

    Kept input features (see outlier_features) are left out of the int8 matrix and of the row
    scales: the int8 rounding of exactly those columns, times activations in the hundreds, is
    what moves a small model's log-probs most.
    """
    kept = None if keep is None or not len(keep) else keep.to(w.device, torch.long).sort().values
    w_keep = None if kept is None else w[:, kept].contiguous()  # (out, n_keep)
    wf = w.float() if kept is None else w.float().index_fill(1, kept, 0.0)
    scale = wf.abs().amax(dim=1).clamp_min(1e-8) / 127.0  # (out,)
    return torch.round(wf / scale[:, None]).clamp_(-127, 127).to(torch.int8), scale, kept, w_keep


def _kept_bytes(keep: Optional[Tensor], w_keep: Optional[Tensor]) -> int:
    return 0 if keep is None else w_keep.numel() * w_keep.element_size() + keep.numel() * keep.element_size()


class Int8Linear(nn.Module):
    """CPU ``y = x W^T`` with W held as packed int8 (one fp scale per output row).

    threshold: input features whose magnitude exceeds it anywhere in the call are taken out of
        the int8 product and multiplied in fp32 with their dequantized weight columns (LLM.int8's
        decomposition); ``None`` or ``0`` quantizes every feature.
    """

    def __init__(self, weight: Tensor, threshold: float | None = DEFAULT_THRESHOLD, keep: Optional[Tensor] = None):
        super().__init__()
        w = weight.detach().to("cpu", torch.float32)
        self.out_features, self.in_features = w.shape
        self.threshold = threshold or None
        q, scale, self.keep, self.w_keep = _rowwise_int8(w, keep)
        with warnings.catch_warnings():  # quantized tensors are flagged deprecated; the kernels are not
            warnings.simplefilter("ignore")
            qw = torch._make_per_channel_quantized_tensor(q, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0)
            self._packed = torch.ops.quantized.linear_prepack(qw, None)

    def int8_weight(self) -> Tuple[Tensor, Tensor]:
        """(int8 weight (out, in), fp32 scale (out,)) as the packed form holds them."""
        qw, _ = torch.ops.quantized.linear_unpack(self._packed)
        return qw.int_repr(), qw.q_per_channel_scales().float()

    def weight_bytes(self) -> int:
        return self.out_features * self.in_features + 4 * self.out_features + _kept_bytes(self.keep, self.w_keep)

    def forward(self, x: Tensor) -> Tensor:
        x2 = x.float().flatten(0, -2)  # (tokens, in)
        a = x2.abs()  # one pass, reused: element-wise passes cost as much as the int8 product here
        if self.keep is not None:  # kept features go through fp32 below, and set no token's scale
            a.index_fill_(1, self.keep, 0.0)
        row = a.amax(1, keepdim=True)  # (tokens, 1)
        outliers = None
        if self.threshold is not None and row.max() > self.threshold:
            # Outlier features can only be in tokens whose absmax exceeds the threshold.
            hot = a[row[:, 0] > self.threshold]  # (hot tokens, in)
            outliers = (hot.amax(0) > self.threshold).nonzero().flatten()  # (n_outliers,)
            row = a.index_fill_(1, outliers, 0.0).amax(1, keepdim=True)  # absmax of the rest
        # The kernel quantizes its input with one scale per call; dividing every token by its own
        # absmax first makes that one scale per token (LLM.int8's vector-wise quantization), so a
        # token with huge activations (BOS: ~3,000 in SmolLM2) does not wipe out the others.
        row.clamp_(min=1e-12)
        scaled = x2 / row
        for cols in (self.keep, outliers):
            if cols is not None:  # multiplied in fp32 below: kept out of the int8 product and its scale
                scaled.index_fill_(1, cols, 0.0)
        y = torch.ops.quantized.linear_dynamic(scaled, self._packed, _reduce_range()).mul_(row)
        if outliers is not None:
            q, scale = self.int8_weight()
            w_out = q[:, outliers].float() * scale[:, None]  # (out, n_outliers)
            y.addmm_(x2[:, outliers], w_out.t())  # the outlier features in fp32
        if self.keep is not None:
            y.addmm_(x2[:, self.keep], self.w_keep.t())
        return y.unflatten(0, x.shape[:-1]).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, threshold={self.threshold}"


class Int8WeightLinear(nn.Module):
    """``--quantize int8w``: int8 weights (one scale per output row), activations untouched.

    Each call dequantizes the layer's weight into the input's dtype and multiplies as usual: the
    memory of int8 weights with the activations of the model's dtype (per-token int8 activations
    are what moves channel's sums over whole texts; README).  Runs on any device.  keep: input
    features whose weight columns stay in full precision (see :func:`outlier_features`).
    """

    def __init__(self, weight: Tensor, keep: Optional[Tensor] = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        # Plain attributes, like Int8Linear's packed weight: weight_bytes counts them once.
        self.q, self.scale, self.keep, self.w_keep = _rowwise_int8(weight.detach(), keep)

    def weight_bytes(self) -> int:
        return self.q.numel() + 4 * self.out_features + _kept_bytes(self.keep, self.w_keep)

    def forward(self, x: Tensor) -> Tensor:
        w = self.q.to(x.dtype) * self.scale[:, None].to(x.dtype)  # (out, in): one layer at a time
        if self.keep is not None:
            w.index_copy_(1, self.keep, self.w_keep.to(x.dtype))
        return nn.functional.linear(x, w)

    def extra_repr(self) -> str:
        kept = 0 if self.keep is None else len(self.keep)
        return f"in_features={self.in_features}, out_features={self.out_features}, kept={kept}"


@functools.lru_cache(maxsize=None)
def _reduce_range() -> bool:
    # fbgemm's AVX2 kernel multiplies u8 x s8 pairs into saturating int16, so full-range
    # activations can overflow there; AVX-512 VNNI accumulates in int32 and needs no reduction.
    caps = getattr(torch.cpu, "get_capabilities", dict)()
    return not (caps.get("avx512_vnni") or caps.get("amx_int8"))


class ShardedInt8(nn.Module):
    """A quantized model-parallel shard that keeps fairscale's communication around it."""

    def __init__(self, local: nn.Module, column: bool, gather_output: bool):
        super().__init__()
        self.local, self.column, self.gather_output = local, column, gather_output

    def forward(self, x: Tensor) -> Tensor:
        from fairscale.nn.model_parallel import mappings

        if self.column:
            y = self.local(mappings.copy_to_model_parallel_region(x))
            return mappings.gather_from_model_parallel_region(y) if self.gather_output else y
        return mappings.reduce_from_model_parallel_region(self.local(x))


def _bnb_linear(weight: Tensor, device: torch.device, threshold: float) -> nn.Module:
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise QuantizeError(
            "--quantize int8 on CUDA needs bitsandbytes: pip install -r requirements-gpu.txt"
        ) from None
    out_features, in_features = weight.shape
    layer = bnb.nn.Linear8bitLt(in_features, out_features, bias=False, has_fp16_weights=False, threshold=threshold)
    # Int8Params quantizes (row-wise) when it moves from CPU to the GPU.
    layer.weight = bnb.nn.Int8Params(weight.detach().to("cpu", torch.float16), requires_grad=False,
                                     has_fp16_weights=False)
    return layer.to(device)


def _targets(model: nn.Module) -> Iterator[Tuple[nn.Module, str, nn.Module]]:
    for parent in list(model.modules()):
        for name in TARGETS:
            child = getattr(parent, name, None)
            if isinstance(child, nn.Module):
                yield parent, name, child


# A short text for outlier_features: prose, a list, digits, quotes, newlines and colons, so that
# the fixed outlier channels of BOS, punctuation and line breaks all show up.  Measured on the
# default model it finds the same channels as the ag_news demonstrations do (README).
CALIBRATION_TEXT = (
    "The city council met on Tuesday to discuss the new budget.\n"
    "Sports: The home team won 3-1 after a late goal.\n"
    "Business: Shares of the company rose 5% (to $42.10) on strong earnings; analysts said: \"growth is back\".\n"
    "Science and technology: A new chip, announced today, doubles battery life."
)


def calibration_tokens(tokenizer) -> Tensor:
    """CALIBRATION_TEXT as the model sees a prompt: (1, n) token ids, with BOS if the tokenizer adds it."""
    bos = bool(getattr(tokenizer, "add_bos", True))
    return torch.tensor([tokenizer.encode(CALIBRATION_TEXT, bos=bos, eos=False)])


# Input features kept in fp32 per layer, at most this share of them (the largest first).
MAX_KEEP_SHARE = 1 / 8


def outlier_features(model: nn.Module, tokens: Tensor, threshold: float = DEFAULT_THRESHOLD,
                     max_share: float = MAX_KEEP_SHARE) -> Dict[int, Tensor]:
    """Input features of every target layer whose magnitude exceeds ``threshold`` in a forward
    pass over ``tokens`` (1, n): {id(layer): feature indices}, at most ``max_share`` of the layer's
    features, largest first.  In LLaMA-family models these are a few fixed channels (the
    "massive activations" of BOS and delimiters), so a short text finds them.
    """
    peak: Dict[int, Tensor] = {}

    def record(module: nn.Module, inputs: Tuple[Tensor, ...], _out: Tensor) -> None:
        a = inputs[0].detach().abs().float().flatten(0, -2).amax(0)  # (in,)
        peak[id(module)] = a if id(module) not in peak else torch.maximum(peak[id(module)], a)

    # fairscale's row-parallel layers see this rank's slice of the features, as their weight does.
    layers = [child for _, _, child in _targets(model)]
    hooks = [layer.register_forward_hook(record) for layer in layers]
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        for h in hooks:
            h.remove()
    keep = {}
    for layer in layers:
        a = peak[id(layer)]
        n = min(int((a > threshold).sum()), max(1, int(a.numel() * max_share)))
        keep[id(layer)] = a.topk(n).indices if n else a.new_zeros(0, dtype=torch.long)
    return keep


def quantize_model(model: nn.Module, mode: str, device: torch.device | str,
                   threshold: float = DEFAULT_THRESHOLD, calibration: Optional[Tensor] = None) -> nn.Module:
    """Replace the block projections of ``model`` (already on ``device``) by int8 layers, in place.

    mode: ``none`` (returns the model unchanged), ``int8`` (LLM.int8: int8 weights and
    activations) or ``int8w`` (int8 weights only, :class:`Int8WeightLinear`, any device).
    calibration: token ids (1, n); the input features above ``threshold`` in a forward pass over
    them keep full-precision weights (:func:`outlier_features`; int8 on CPU and int8w); under
    int8 any other feature above it in a later call is still taken out of the int8 product, with
    its int8 weights.  Raises :class:`QuantizeError` for an unknown mode, and under int8 for CUDA
    without bitsandbytes, CUDA with a dtype other than fp16, or a device other than CPU/CUDA.
    """
    check_mode(mode)
    if mode == "none":
        return model
    if mode == "int8w":
        keep = outlier_features(model, calibration.to(device), threshold) if calibration is not None else {}
        _replace(model, lambda child: Int8WeightLinear(child.weight, keep.get(id(child))))
        return model
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise QuantizeError(f"--quantize int8 runs on cpu or cuda, not {dev.type}")
    dtype = next(model.parameters()).dtype
    if dev.type == "cuda" and dtype != torch.float16:
        raise QuantizeError(f"--quantize int8 on CUDA uses fp16 activations (LLM.int8); run with --dtype fp16, not {dtype}")
    if dev.type == "cpu" and torch.backends.quantized.engine == "none":
        raise QuantizeError("this torch build has no quantized CPU engine (fbgemm/onednn) for --quantize int8")
    use_keep = calibration is not None and dev.type == "cpu"
    keep = outlier_features(model, calibration.to(dev), threshold) if use_keep else {}
    _replace(model, lambda child: _bnb_linear(child.weight, dev, threshold) if dev.type == "cuda"
             else Int8Linear(child.weight, threshold, keep.get(id(child))))
    return model


def _replace(model: nn.Module, make: Callable[[nn.Module], nn.Module]) -> None:
    """Every target projection by ``make(projection)``; fairscale shards keep their communication."""
    for parent, name, child in _targets(model):
        kind = type(child).__name__
        if isinstance(child, nn.Linear):
            sharded = None
        elif kind in ("ColumnParallelLinear", "RowParallelLinear"):
            sharded = (kind == "ColumnParallelLinear", bool(getattr(child, "gather_output", False)))
        else:
            raise QuantizeError(f"cannot quantize {name} of type {kind}")
        if getattr(child, "bias", None) is not None:
            raise QuantizeError(f"cannot quantize {name}: it has a bias (LLaMA projections have none)")
        local = make(child)
        setattr(parent, name, local if sharded is None else ShardedInt8(local, *sharded))


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's weights as held in memory (int8 layers: int8 values + row scales)."""
    seen = set()
    total = 0
    for module in model.modules():
        if isinstance(module, (Int8Linear, Int8WeightLinear)):
            total += module.weight_bytes()
        for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
            if id(t) not in seen:  # tied embedding/output counted once
                seen.add(id(t))
                total += t.numel() * t.element_size()
        # bitsandbytes' row scales: on the weight until the layer's first forward pass, which
        # moves them into the layer's matmul state.
        for holder in (getattr(module, "weight", None), getattr(module, "state", None)):
            scb = getattr(holder, "SCB", None)
            if isinstance(scb, Tensor) and id(scb) not in seen:
                seen.add(id(scb))
                total += scb.numel() * scb.element_size()
    return total


def planned_weight_bytes(model: nn.Module, dtype: torch.dtype, mode: str) -> int:
    """What :func:`weight_bytes` will be after loading in ``dtype`` and quantizing with ``mode``,
    computed from the shapes alone (the model may live on the meta device, e.g. a 7B shape)."""
    check_mode(mode)
    item = torch.empty((), dtype=dtype).element_size()
    quantized = set()
    total = 0
    if mode in ("int8", "int8w"):
        for _, _, child in _targets(model):
            out_features, in_features = child.weight.shape
            quantized.add(id(child.weight))
            total += out_features * in_features + 4 * out_features
    seen = set(quantized)
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * item
    return total
