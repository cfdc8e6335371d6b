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
CPU   torch's int8 linear kernel (``torch.ops.quantized.linear_dynamic``, fbgemm/oneDNN): int8
      weights with one scale per output row, int8 activations with one scale per token (the
      vector-wise quantization of LLM.int8), exact int32 sums on every x86 CPU (the ``avx2``
      kernel path where the CPU lacks VNNI, see :data:`INT8_KERNELS`).  Chosen by measurement
      (docs): on a 2-core AVX-512 VNNI CPU it beat fp32, bf16, torchao's int8 configurations and
      bitsandbytes' CPU backend.  A token's values above ``threshold`` are multiplied in floating
      point, as LLM.int8 does, so that a few outlier features do not set its scale.

Under model parallel every fairscale ``ColumnParallelLinear``/``RowParallelLinear`` shard is
quantized on its own, and the replacement still does fairscale's gather (column, when
``gather_output``) and all-reduce (row) around the local int8 product.
"""

from __future__ import annotations

import contextlib
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


# Above this many outlier columns in one call, unpacking the int8 matrix is cheaper than reading
# the columns through the kernel (measured at 4096 x 11008: one-hot rows cost like as many tokens).
ONE_HOT_COLUMNS = 512


class Int8Linear(nn.Module):
    """CPU ``y = x W^T`` with W held as packed int8 (one fp scale per output row).

    Every token is quantized on its own to int8 values in [-127, 127] (LLM.int8's vector-wise
    quantization), and the kernel sums their exact products with the int8 weights.

    threshold: a token's values above it are taken out of the int8 product and multiplied in fp32
        with their dequantized weight columns (LLM.int8's decomposition, per token so that the
        layer's result for a token does not depend on its batch); ``None`` or ``0`` quantizes
        every value.
    kernel: how the int8 activations reach the kernel (:data:`INT8_KERNELS`): ``"vnni"`` in one
        product, ``"avx2"`` as two halves whose products fit the int16 sums of CPUs without VNNI.
        Both give the same sums; ``None`` picks what this CPU needs (:func:`detect_int8_kernel`).
    engine: torch's quantized engine that packs and runs the weight (``fbgemm``, ``onednn``,
        ``x86``); ``None``: :func:`int8_engine`.
    """

    def __init__(self, weight: Tensor, threshold: float | None = DEFAULT_THRESHOLD, keep: Optional[Tensor] = None,
                 kernel: Optional[str] = None, engine: Optional[str] = None):
        super().__init__()
        w = weight.detach().to("cpu", torch.float32)
        self.out_features, self.in_features = w.shape
        if self.in_features < 2:
            raise QuantizeError("int8 layers need at least 2 input features")
        self.threshold = threshold or None
        self.kernel = check_kernel(kernel) if kernel is not None else detect_int8_kernel()
        self.engine = engine or int8_engine()
        q, self.scale, self.keep, self.w_keep = _rowwise_int8(w, keep)
        # Packed with unit scales: the kernel returns its int32 sums as floats (exact below 2^24),
        # so both kernel paths round them identically; the row scales are applied after.  The
        # packed weight belongs to the engine it was packed under, which later calls follow.
        with warnings.catch_warnings(), quantized_engine(self.engine):
            warnings.simplefilter("ignore")  # quantized tensors are flagged deprecated; the kernels are not
            qw = torch._make_per_tensor_quantized_tensor(q, 1.0, 0)
            self._packed = torch.ops.quantized.linear_prepack(qw, None)

    def int8_weight(self) -> Tuple[Tensor, Tensor]:
        """(int8 weight (out, in), fp32 scale (out,)) as the layer multiplies them."""
        qw, _ = torch.ops.quantized.linear_unpack(self._packed)
        return qw.int_repr(), self.scale

    def _weight_columns(self, cols: Tensor) -> Tensor:
        """(n, out) fp32: the int8 weight's columns ``cols``, transposed.  Up to ONE_HOT_COLUMNS
        of them are read through the kernel with one-hot rows (exact: single products of 1 and an
        int8 value), as unpacking the whole matrix costs more than the int8 product at 7B shapes."""
        if len(cols) > ONE_HOT_COLUMNS:
            q, _ = self.int8_weight()
            return q[:, cols].t().float()
        one_hot = torch.zeros(len(cols), self.in_features)  # (n, in)
        one_hot[torch.arange(len(cols)), cols] = 1.0
        return _int8_product(one_hot, torch.ones(len(cols), 1), None, None, None, self._packed, self.kernel)

    def weight_bytes(self) -> int:
        return self.out_features * self.in_features + 4 * self.out_features + _kept_bytes(self.keep, self.w_keep)

    def forward(self, x: Tensor) -> Tensor:
        x2 = x.float().flatten(0, -2)  # (tokens, in)
        a = x2.abs()  # one pass, reused: element-wise passes cost as much as the int8 product here
        if self.keep is not None:  # kept features go through fp32 below, and set no token's scale
            a.index_fill_(1, self.keep, 0.0)
        row = a.amax(1, keepdim=True)  # (tokens, 1)
        hot: Optional[Tensor | slice] = None
        mask = None
        if self.threshold is not None and row.max() > self.threshold:
            # LLM.int8's decomposition, decided per token rather than per batch: a token's values
            # above the threshold are multiplied in fp32, so this layer's result for a token
            # depends on that token alone.  (The model's still does on its batch: int8 rounding
            # amplifies float-level differences, so runs fix their batches: docs/precision.md.)
            hot = (row[:, 0] > self.threshold).nonzero().flatten()  # (hot tokens,)
            if len(hot) == len(x2):  # every token: plain slices, no gathered copies
                hot = slice(None)
            a_hot = a[hot]  # (hot tokens, in)
            mask = a_hot > self.threshold
            row[hot] = a_hot.masked_fill_(mask, 0.0).amax(1, keepdim=True)  # absmax of the rest
        # One scale per token, so a token with huge activations (BOS: ~3,000 in SmolLM2) does not
        # wipe out the others.
        step = row.clamp_(min=1e-12).div_(127)  # (tokens, 1)
        y = _int8_product(x2, step, self.keep, hot, mask, self._packed, self.kernel).mul_(self.scale)  # (tokens, out)
        if hot is not None:
            cols = mask.any(0).nonzero().flatten()  # (n_outliers,)
            x_out = x2[hot][:, cols] * mask[:, cols]  # (hot tokens, n_outliers), the outlier values only
            y[hot] += x_out @ self._weight_columns(cols).mul_(self.scale)
        if self.keep is not None:
            y.addmm_(x2[:, self.keep], self.w_keep.t())
        return y.unflatten(0, x.shape[:-1]).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, threshold={self.threshold}, "
                f"kernel={self.kernel}, engine={self.engine}")


# CPU int8 kernel paths.  fbgemm and oneDNN multiply u8 activations by s8 weights.  With AVX-512
# VNNI (or AMX) each product goes straight into an int32 sum.  Without it (AVX2: most AMD servers
# and laptops) the kernel adds pairs of products in int16 first (vpmaddubsw), which saturates
# above 32,767: 2 * 255 * 127 = 64,770.  torch's own answer, ``reduce_range``, quantizes the
# activations to 7 bits and doubles their rounding error (the default model lost 1.5 nats of
# log-prob on average).  Here the int8 activations q are handed to the kernel as u8 = q + 128 on
# "vnni", and on "avx2" as two halves q = 2 * hi + lo (hi in [-64, 63], lo in {0, 1}) sent as
# u8 = half + 64 <= 127, so every pair sum stays within 2 * 127 * 127 = 32,258: the same 8-bit x
# 8-bit sums for twice the rows.  The int8 weights are stored once either way.
INT8_KERNELS = ("vnni", "avx2")
# u8 = value + zero point needs the kernel's dynamic quantizer to pick scale 1 and that zero point:
# it maps [min(x, 0), max(x, 0)] onto [0, 255], so one extra row holding these two values fixes it.
_RANGE = {"vnni": (-128.0, 127.0), "avx2": (-64.0, 191.0)}


@functools.lru_cache(maxsize=None)
def int8_engine() -> str:
    """The quantized engine that packs int8 layers here: oneDNN on CPUs with AMX int8 (it runs
    the product on AMX tiles: 2-2.5x fbgemm's speed at 7B shapes, docs/precision.md), else
    torch's default.  Both give the same exact int32 sums (tests compare them)."""
    caps = getattr(torch.cpu, "get_capabilities", dict)()
    if caps.get("amx_int8") and "onednn" in torch.backends.quantized.supported_engines:
        return "onednn"
    return torch.backends.quantized.engine


@contextlib.contextmanager
def quantized_engine(engine: str) -> Iterator[None]:
    """torch's global quantized engine set to ``engine`` for the block, then restored."""
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


def check_kernel(kernel: str) -> str:
    if kernel not in INT8_KERNELS:
        raise QuantizeError(f"int8 kernel {kernel!r} is not one of {', '.join(INT8_KERNELS)}")
    return kernel


def _int8_product(x: Tensor, step: Tensor, keep: Optional[Tensor], hot: Optional[Tensor | slice], mask: Optional[Tensor],
                  packed: object, kernel: str) -> Tensor:
    """``round(x / step) @ q_W^T * step`` through the packed int8 kernel: x (tokens, in)
    fp32, step (tokens, 1) with |x / step| <= 127 outside of what is left out: the ``keep``
    columns, and in the ``hot`` rows the entries where ``mask`` (hot tokens, in) is set."""
    n = x.shape[0]
    halves = 2 if kernel == "avx2" else 1
    buf = x.new_empty(halves * n + 1, x.shape[1])  # (halves * tokens + 1 range row, in)
    q = torch.div(x, step, out=buf[:n]).round_()  # (tokens, in), integers in [-127, 127]
    if keep is not None:
        q.index_fill_(1, keep, 0.0)
    if hot is not None:
        q[hot] = q[hot].masked_fill_(mask, 0.0)
    if kernel == "avx2":
        lo = torch.remainder(q, 2, out=buf[n:2 * n])  # floor modulo: 0 or 1
        q.sub_(lo).mul_(0.5)  # hi, exact in fp32
    buf[-1].zero_()
    buf[-1, 0], buf[-1, -1] = _RANGE[kernel]
    y = torch.ops.quantized.linear_dynamic(buf, packed, False)  # (halves * tokens + 1, out)
    if kernel == "avx2":
        return y[:n].mul_(2).add_(y[n:2 * n]).mul_(step)
    return y[:n].mul_(step)


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


def kernel_is_exact(kernel: str) -> bool:
    """Whether this CPU's int8 kernel gives ``kernel``'s exact sums in the worst case: every
    activation at its token's absmax (int8 127, and -127) times weights of 127, where the pair
    sums of a kernel without VNNI saturate on the ``vnni`` path."""
    n_in = 64
    layer = Int8Linear(torch.full((4, n_in), 127.0), threshold=None, kernel=kernel)
    x = torch.tensor([[1.0], [-1.0]]).expand(2, n_in)
    return bool((layer(x) - x.sum(1, keepdim=True) * 127.0).abs().max() < 1e-3)


@functools.lru_cache(maxsize=None)
def detect_int8_kernel() -> str:
    """The int8 kernel path for this CPU: ``vnni`` where the plain product is exact (measured,
    not inferred from the CPU's flags, so ISA limits set for fbgemm or oneDNN count too), else
    ``avx2``.  Raises :class:`QuantizeError` if neither is exact (no x86 kernel known to us)."""
    for kernel in INT8_KERNELS:
        if kernel_is_exact(kernel):
            return kernel
    raise QuantizeError(f"no exact int8 kernel on this CPU ({cpu_int8_features()}); use --quantize int8w")


def cpu_int8_features() -> str:
    """The CPU's int8 dot-product features, for messages and metrics, e.g. 'avx512_vnni, amx_int8'."""
    caps = getattr(torch.cpu, "get_capabilities", dict)()
    names = [k for k in ("avx512_vnni", "amx_int8", "avx_vnni", "avx2") if caps.get(k)]
    return ", ".join(names) if names else "no AVX2/VNNI"


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
                   threshold: float = DEFAULT_THRESHOLD, calibration: Optional[Tensor] = None,
                   int8_kernel: Optional[str] = None) -> nn.Module:
    """Replace the block projections of ``model`` (already on ``device``) by int8 layers, in place.

    mode: ``none`` (returns the model unchanged), ``int8`` (LLM.int8: int8 weights and
    activations) or ``int8w`` (int8 weights only, :class:`Int8WeightLinear`, any device).
    calibration: token ids (1, n); the input features above ``threshold`` in a forward pass over
    them keep full-precision weights (:func:`outlier_features`; int8 on CPU and int8w); under
    int8 any other feature above it in a later call is still taken out of the int8 product, with
    its int8 weights.  int8_kernel: the CPU kernel path under int8 (:data:`INT8_KERNELS`; None
    picks this CPU's, :func:`detect_int8_kernel`).  Raises :class:`QuantizeError` for an unknown mode, and under int8 for CUDA
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
    if dev.type == "cpu":
        kernel = check_kernel(int8_kernel) if int8_kernel is not None else detect_int8_kernel()
    _replace(model, lambda child: _bnb_linear(child.weight, dev, threshold) if dev.type == "cuda"
             else Int8Linear(child.weight, threshold, keep.get(id(child)), kernel))
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
