"""fp32 vs bf16 vs int8 weights on the same ag_news examples, in one run on one machine.

    python benchmarks/bench_quantize.py --n_examples 64
    python benchmarks/bench_quantize.py --device cuda --variants fp16,int8 --n_examples 7600

Per method and variant it prints examples/s, tokens/s (tokens through the model), the speed-up against the first variant (wall time,
and process CPU time, which other processes on a shared machine disturb less), the
largest and the mean log-prob difference and the share of identical predictions against it, and the bytes of
weights; then the planned weight bytes of a 7B-shaped model.  Every variant scores with the fast
path; the best of ``--repeats`` timed runs counts.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import fire
import torch

from bench_scoring import DEFAULT_DATA, _run
from classification.backend.loader import load_lm
from classification.backend.scoring import LlamaLM
from classification.cli import cli
from classification.errors import ClassificationError
from classification.inputs.ag_news import build_records, load_ag_news
from classification.paths import DEFAULT_CKPT_DIR, DEFAULT_TOKENIZER_PATH
from llama.model import ModelArgs, Transformer
from llama.quantize import (
    DEFAULT_THRESHOLD, calibration_tokens, cpu_int8_features, detect_int8_kernel, int8_engine, planned_weight_bytes,
    quantize_model,
    weight_bytes,
)
from llama.runtime import DTYPES

SEVEN_B = Path(__file__).resolve().parent / "llama-7b-params.json"


def variant_model(base: Transformer, name: str, device: torch.device, threshold: float,
                  calibration: torch.Tensor) -> Transformer:
    """``fp32``/``bf16``/``fp16``: a copy in that dtype; ``int8``: quantized on top of the base
    dtype (fp16 on CUDA, fp32 on CPU), as the scripts do; ``int8w``: int8 weights only (base
    dtype activations); ``int8-nocal``: without the fp32
    weights of calibrated outlier features; ``int8-nothr``: without any outlier split;
    ``int8-vnni``/``int8-avx2``: int8 through that CPU kernel path (default: this CPU's)."""
    if name == "int8w":
        return quantize_model(copy.deepcopy(base), "int8w", device, threshold=threshold, calibration=calibration)
    if name.startswith("int8"):
        dt = torch.float16 if device.type == "cuda" else torch.float32
        model = copy.deepcopy(base).to(dt)
        kernel = name[len("int8-"):] if name in ("int8-vnni", "int8-avx2") else None
        return quantize_model(model, "int8", device, threshold=0.0 if name == "int8-nothr" else threshold,
                              calibration=None if name in ("int8-nocal", "int8-nothr") else calibration,
                              int8_kernel=kernel)
    return copy.deepcopy(base).to(DTYPES[name])


def seven_b_bytes() -> Dict[str, int]:
    args = ModelArgs.from_params(json.loads(SEVEN_B.read_text()), vocab_size=32000)
    with torch.device("meta"):
        model = Transformer(args)
    return {"fp32": planned_weight_bytes(model, torch.float32, "none"),
            "bf16": planned_weight_bytes(model, torch.bfloat16, "none"),
            "int8 / int8w (rest fp16)": planned_weight_bytes(model, torch.float16, "int8")}


def main(
    n_examples: int = 64,
    k: int = 1,
    seed: int = 42,
    methods: str = "direct,channel",
    variants: str = "fp32,bf16,int8",
    threshold: float = DEFAULT_THRESHOLD,
    repeats: int = 2,
    ckpt_dir: str = DEFAULT_CKPT_DIR,
    tokenizer_path: str = DEFAULT_TOKENIZER_PATH,
    device: Optional[str] = None,
    max_batch_size: int = 16,
    data_dir: str = str(DEFAULT_DATA),
    threads: Optional[int] = None,
) -> None:
    """Score the same examples with every variant and print a Markdown table.

    Args:
        n_examples: stratified ag_news test examples (7600 = the whole split).
        k: demonstrations per class in the prompt.
        seed: seed of demonstrations and sample.
        methods: comma-separated subset of direct, calibrate (= direct + content-free), channel.
        variants: comma-separated fp32, bf16, fp16, int8, int8w (int8 weights only), int8-nocal
            (int8 without calibrated fp32 outlier columns), int8-nothr (int8 without any outlier
            split), int8-vnni / int8-avx2 (int8 through that CPU kernel path; int8 alone takes
            this CPU's); the first is the reference.
        threshold: LLM.int8 outlier threshold of the int8 variant.
        repeats: timed runs per (method, variant); the fastest counts.
        ckpt_dir: checkpoint to load.
        tokenizer_path: tokenizer file.
        device: cpu or cuda (default cuda when available).
        max_batch_size: upper bound on rows per forward pass.
        data_dir: ag_news_csv directory (train.csv/test.csv).
        threads: torch intra-op threads (default: torch's).  On a machine shared with other jobs, 1
            thread and the CPU-time column are the steadiest: waiting threads otherwise spin.
    """
    names = [v.strip() for v in (variants.split(",") if isinstance(variants, str) else variants)]
    int8s = ("int8", "int8w", "int8-nocal", "int8-nothr", "int8-vnni", "int8-avx2")
    bad = [v for v in names if v not in int8s and v not in DTYPES]
    if bad:
        raise ClassificationError(f"--variants: unknown {bad[0]!r}; use one of {', '.join(list(DTYPES) + list(int8s))}")
    if threads:
        torch.set_num_threads(threads)
    loaded = load_lm(ckpt_dir, tokenizer_path, dtype="fp32", device=device)  # every variant starts from fp32
    base, tok, dev = loaded.model, loaded.tokenizer, loaded.device
    del loaded
    models = {name: variant_model(base, name, dev, threshold, calibration_tokens(tok)) for name in names}
    del base
    train, test = load_ag_news(data_dir)
    records = {m: build_records(m, train, test, k=k, seed=seed, sample=n_examples < len(test), n_sample=n_examples)
               for m in ("direct", "channel")}
    n = len(records["direct"])
    wanted = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods)]
    print(f"model: {ckpt_dir} | device: {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'}, "
          f"{torch.get_num_threads()} threads, int8 engine {int8_engine()}, "
          f"int8 kernel {detect_int8_kernel() if dev.type == 'cpu' else 'bitsandbytes'}, CPU {cpu_int8_features()}) | "
          f"examples: {n} | k: {k} | best of {repeats}")
    print("| method | weights | ex/s | tokens/s | speed-up | CPU-time speed-up | max abs Δ log-prob | mean abs Δ | "
          "same predictions | weight bytes |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for method in wanted:
        runs: Dict[str, Dict[str, object]] = {}
        for _ in range(max(1, repeats)):  # variants interleaved: load drifts hit all of them alike
            for name, model in models.items():
                cpu = time.process_time()
                run = _run(LlamaLM(model, tok, max_batch_size, True, "fast"), method, records)
                run["cpu"] = time.process_time() - cpu
                if name not in runs or run["seconds"] < runs[name]["seconds"]:
                    runs[name] = run
        ref = runs[names[0]]
        for name in names:
            run = runs[name]
            res: List[dict] = run["results"]  # type: ignore[assignment]
            deltas = [abs(a - b) for ra, rb in zip(ref["results"], res) for a, b in zip(ra["log_probs"], rb["log_probs"])]
            same = sum(ra["prediction"] == rb["prediction"] for ra, rb in zip(ref["results"], res)) / n
            print(f"| {method} | {name} | {n / run['seconds']:.2f} | {run['tokens'] / run['seconds']:.0f} | "
                  f"{ref['seconds'] / run['seconds']:.2f}x | "
                  f"{ref['cpu'] / run['cpu']:.2f}x | "
                  f"{max(deltas):.3g} | {sum(deltas) / len(deltas):.3g} | {same:.1%} | {weight_bytes(models[name]):,} |")
            sys.stdout.flush()
    print("7B-shaped (benchmarks/llama-7b-params.json, vocab 32000) planned weight bytes: "
          + ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in seven_b_bytes().items()))


if __name__ == "__main__":
    fire.Fire(cli(main))
