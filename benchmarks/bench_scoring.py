"""Naive vs fast scoring on the same ag_news examples, in one run on one machine.

    python benchmarks/bench_scoring.py --n_examples 64
    python benchmarks/bench_scoring.py --random_init params_7b.json --dtype bf16 --n_examples 7600

Per method it prints examples/s, tokens through the model, speed-up, the largest log-prob
difference between the two paths, whether every prediction is identical, and the peak memory
beyond the weights (CUDA: max allocated; CPU: the process's peak RSS, which also counts the
Python runtime, minus the weights' bytes).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import fire
import torch

from classification import methods as icl
from classification.backend.loader import load_lm
from classification.backend.scoring import LlamaLM
from classification.cli import cli
from classification.inputs.ag_news import build_records, load_ag_news
from classification.paths import DEFAULT_CKPT_DIR, DEFAULT_TOKENIZER_PATH
from llama.model import ModelArgs, Transformer
from llama.quantize import calibration_tokens, check_mode, quantize_model, weight_bytes
from llama.runtime import resolve_dtype
from llama.tokenizer import load_tokenizer

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ag_news"


def random_model(params_path: str, vocab_size: int, device: torch.device, dtype: torch.dtype,
                 max_seq_len: int) -> Transformer:
    """A model of the shape in params.json with random weights (for timing without weights)."""
    args = ModelArgs.from_params(json.loads(Path(params_path).read_text()), max_seq_len=max_seq_len)
    if args.vocab_size <= 0:
        args.vocab_size = vocab_size
    with torch.device("meta"):
        model = Transformer(args)
    model = model.to_empty(device=device).to(dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return model.eval().requires_grad_(False)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_bytes(device: torch.device) -> int:
    """Peak memory so far: CUDA max allocated, or this process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _run(lm: LlamaLM, method: str, records: List[dict]) -> Dict[str, object]:
    lm.tokens_processed = 0
    recs = records["channel" if method == "channel" else "direct"]
    _sync(lm.device)
    start = time.perf_counter()
    if lm.scoring == "fast":
        lm.set_shared_prefix(icl.shared_context(recs, "channel" if method == "channel" else "direct"))
    if method == "calibrate":
        results = icl.direct(lm, records["direct"])
        p_cf = icl.content_free_probs(lm, records["direct"][0])
        results = icl.calibrate([r["log_probs"] for r in results], records["direct"][0]["label_words"], p_cf)
    else:
        results = getattr(icl, method)(lm, records[method])
    _sync(lm.device)
    return {"seconds": time.perf_counter() - start, "tokens": lm.tokens_processed, "results": results}


def main(
    n_examples: int = 64,
    k: int = 1,
    seed: int = 42,
    methods: str = "direct,calibrate,channel",
    ckpt_dir: str = DEFAULT_CKPT_DIR,
    tokenizer_path: str = DEFAULT_TOKENIZER_PATH,
    random_init: Optional[str] = None,
    dtype: Optional[str] = None,
    device: Optional[str] = None,
    max_batch_size: int = 16,
    max_batch_tokens: Optional[int] = None,
    max_seq_len: int = 2048,
    data_dir: str = str(DEFAULT_DATA),
    skip_naive: bool = False,
    quantize: str = "none",
) -> None:
    """Time naive and fast scoring per method and print a Markdown table.

    Args:
        n_examples: stratified ag_news test examples (7600 = the whole split).
        k: demonstrations per class in the prompt.
        seed: seed of demonstrations and sample.
        methods: comma-separated subset of direct, calibrate (= direct + content-free), channel.
        ckpt_dir: checkpoint to load (ignored with --random_init).
        tokenizer_path: tokenizer file.
        random_init: a params.json: random weights of that shape instead of a checkpoint.
        dtype: fp32, bf16 or fp16 (default fp32 on CPU; bf16 on CUDA where supported, else fp16).
        device: cpu or cuda (default cuda when available).
        max_batch_size: upper bound on rows per forward pass.
        max_batch_tokens: token budget per forward pass of the fast path (default by device).
        max_seq_len: longest sequence.
        data_dir: ag_news_csv directory (train.csv/test.csv).
        skip_naive: time the fast path only (the naive path on 7,600 examples takes long).
        quantize: none, int8 or int8w (llama.quantize; benchmarks/bench_quantize.py compares them).
    """
    check_mode(quantize)
    if random_init:  # random weights of a shape: no checkpoint to load
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dt = resolve_dtype(dtype, dev)
        tok = load_tokenizer(tokenizer_path)
        model = random_model(random_init, tok.n_words, dev, dt, max_seq_len)
        model = quantize_model(model, quantize, dev, calibration=calibration_tokens(tok))
        model_name = f"random init {random_init}"
    else:
        lm = load_lm(ckpt_dir, tokenizer_path, max_seq_len=max_seq_len, max_batch_size=max_batch_size, dtype=dtype,
                     device=device, quantize=quantize)
        model, tok, dev, dt, model_name = lm.model, lm.tokenizer, lm.device, lm.runtime.dtype, ckpt_dir
    train, test = load_ag_news(data_dir)
    sample = n_examples < len(test)
    records = {m: build_records(m, train, test, k=k, seed=seed, sample=sample, n_sample=n_examples)
               for m in ("direct", "channel")}
    wanted = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods)]
    print(f"model: {model_name} | device: {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'}, "
          f"{torch.get_num_threads()} threads) | dtype: {dt} | quantize: {quantize} | "
          f"examples: {len(records['direct'])} | k: {k}")
    weights = weight_bytes(model)
    print(f"weights: {weights / 2**30:.2f} GiB")
    print("| method | naive ex/s | fast ex/s | naive tokens | fast tokens | speed-up | max abs Δ log-prob | "
          "same predictions | fast s | fast tokens/s | fast peak beyond weights |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for method in wanted:
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        fast = _run(LlamaLM(model, tok, max_batch_size, True, "fast", max_batch_tokens), method, records)
        # On CPU the peak is the process's so far: only meaningful before any naive run.
        clean = dev.type == "cuda" or skip_naive or method == wanted[0]
        beyond = f"{(peak_bytes(dev) - weights) / 2**30:.2f} GiB" if clean else "-"
        n = len(records["direct"])
        timing = f"{fast['seconds']:.1f} | {fast['tokens'] / fast['seconds']:,.0f} | {beyond}"
        if skip_naive:
            print(f"| {method} | - | {n / fast['seconds']:.2f} | - | {fast['tokens']:,} | - | - | - | {timing} |")
            sys.stdout.flush()
            continue
        naive = _run(LlamaLM(model, tok, max_batch_size, True, "naive"), method, records)
        delta = max(abs(a - b) for ra, rb in zip(naive["results"], fast["results"])
                    for a, b in zip(ra["log_probs"], rb["log_probs"]))
        same = all(ra["prediction"] == rb["prediction"] for ra, rb in zip(naive["results"], fast["results"]))
        print(f"| {method} | {n / naive['seconds']:.2f} | {n / fast['seconds']:.2f} | {naive['tokens']:,} | "
              f"{fast['tokens']:,} | {naive['seconds'] / fast['seconds']:.1f}x | {delta:.2e} | {same} | {timing} |")
        sys.stdout.flush()


if __name__ == "__main__":
    fire.Fire(cli(main))
