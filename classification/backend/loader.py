"""The one way a checkpoint becomes a :class:`~classification.backend.scoring.LlamaLM`.

:func:`load_lm` checks the files (:func:`check_model_files`: paths, Meta's ``checklist.chk``,
``--dtype``, the trained context), sets up the process layout (``llama.runtime``: plain python or
torchrun, model and data parallel), loads tokenizer and weights (``llama.checkpoint.load_model``),
quantizes when asked and wraps the model in a LlamaLM that carries its runtime.
:func:`precision_used` says which dtype and device a run uses, before or after loading.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Tuple

import torch

from classification.backend.scoring import LlamaLM
from classification.errors import ClassificationError
from classification.methods import completion_suffix
from classification.paths import DEFAULT_CKPT_DIR, DEFAULT_TOKENIZER_PATH
from llama.checkpoint import CheckpointError, count_shards, load_model
from llama.quantize import calibration_tokens, detect_int8_kernel, quantize_model
from llama.runtime import DTYPES, resolve_dtype, setup_runtime
from llama.tokenizer import load_tokenizer
from llama.verify import CHECKLIST, VerifyError, trained_context, verify_checklist


def check_model_files(
    ckpt_dir: str, tokenizer_path: str, max_seq_len: int, dtype: Optional[str], verify_checkpoint: Optional[bool]
) -> None:
    """One-line errors for missing files, a failed ``checklist.chk`` (``verify_checkpoint``; None:
    when there is one) or an unknown dtype; a warning for ``max_seq_len`` above the trained context."""
    for flag, path in (("--ckpt_dir", ckpt_dir), ("--tokenizer_path", tokenizer_path)):
        if not Path(path).exists():
            raise ClassificationError(f"{flag} {path} does not exist; run `make setup` or pass {flag}")
    if verify_checkpoint is not False:
        if verify_checkpoint and not (Path(ckpt_dir) / CHECKLIST).is_file():
            raise ClassificationError(f"--verify_checkpoint: {ckpt_dir} has no {CHECKLIST} to verify against")
        try:
            verify_checklist(ckpt_dir, show_progress=int(os.environ.get("RANK", "0")) == 0)
        except VerifyError as e:
            raise ClassificationError(str(e)) from None
    if dtype is not None:
        if str(dtype).lower() not in DTYPES:
            raise ClassificationError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    try:
        context, source = trained_context(ckpt_dir)
    except VerifyError as e:
        raise ClassificationError(str(e)) from None
    if context is not None and max_seq_len > context:
        print(f"warning: --max_seq_len {max_seq_len} is above the {context} tokens the model was trained for "
              f"({source}); longer prompts are extrapolated: pass --max_seq_len {context}", file=sys.stderr)


def load_lm(
    ckpt_dir: str = DEFAULT_CKPT_DIR,
    tokenizer_path: str = DEFAULT_TOKENIZER_PATH,
    *,
    max_seq_len: int = 2048,
    max_batch_size: int = 16,
    dtype: Optional[str] = None,
    device: Optional[str] = None,
    scoring: str = "fast",
    completion_end: str = "eos",
    quantize: str = "none",
    model_parallel_size: Optional[int] = None,
    verify_checkpoint: Optional[bool] = None,
) -> LlamaLM:
    """Load a checkpoint (Meta, HF or GGUF) and its tokenizer as a scorer for every method.

    ``dtype``: fp32, fp16 or bf16 (None: fp32 on CPU, bf16 on CUDA where supported, else fp16);
    ``device``: cpu or cuda (None: cuda when available); ``scoring``: fast or naive;
    ``completion_end``: eos scores EOS after every completion (none, newline: not);
    ``quantize``: none, int8 or int8w; ``model_parallel_size``: ranks that split the model (None:
    a Meta checkpoint's shard count).  Under torchrun the model is split and the examples shared
    across the ranks; the returned model's ``runtime`` says how.
    """
    completion_suffix(completion_end)  # a one-line error for an unknown value
    check_model_files(ckpt_dir, tokenizer_path, max_seq_len, dtype, verify_checkpoint)
    try:
        rt = setup_runtime(model_parallel_size or count_shards(ckpt_dir), dtype=dtype, device=device, source=ckpt_dir)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    start = time.time()
    tokenizer = load_tokenizer(tokenizer_path)
    model = load_model(ckpt_dir, rt.device, rt.dtype, rt.mp_rank, rt.mp_size, max_seq_len, max_batch_size,
                       vocab_size=tokenizer.n_words)
    model = quantize_model(model, quantize, rt.device, calibration=calibration_tokens(tokenizer))
    kernel = f", int8 kernel {detect_int8_kernel()}" if quantize == "int8" and rt.device.type == "cpu" else ""
    print(f"Loaded {ckpt_dir} ({rt.dtype}, {rt.device}, mp={rt.mp_size}, dp={rt.dp_size}{kernel}) "
          f"in {time.time() - start:.1f}s")
    return LlamaLM(model, tokenizer, max_batch_size, completion_end == "eos", scoring, runtime=rt)


def precision_used(lm: Any, runtime: Any, dtype: Optional[str], device: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """(dtype, device) as used, e.g. ("bfloat16", "cpu"): the runtime's or the model's when there
    is one, else what :func:`load_lm` will use for these flags; a model object without weights (a
    test double) keeps the flags."""
    if runtime is not None and hasattr(runtime, "dtype") and hasattr(runtime, "device"):
        return str(runtime.dtype).replace("torch.", ""), str(runtime.device)
    model = getattr(lm, "model", None)
    if model is not None:
        return str(next(model.parameters()).dtype).replace("torch.", ""), str(lm.device)
    if lm is not None:
        return dtype, device
    try:
        dev = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ClassificationError(f"--device {device!r} is not one of cpu, cuda (or cuda:N)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ClassificationError(f"--device {device} but torch sees no CUDA device here; use --device cpu")
    try:
        used = str(resolve_dtype(dtype, dev)).replace("torch.", "")
    except ValueError as e:
        raise ClassificationError(f"--dtype: {e}") from None
    # llama.runtime.setup_runtime puts each process on the GPU of its LOCAL_RANK.
    return used, f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if dev.type == "cuda" else str(dev)
