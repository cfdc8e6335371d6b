"""Retrieved demonstrations: record-building time (bm25, knn embeddings) and fast vs naive scoring.

    python benchmarks/bench_retrieval.py --n_test 0 --n_embed 512 --n_score 16

1. BM25 records for ``n_test`` ag_news test examples (0: all 7,600) against the whole train
   split (5,590 examples), k per class: index build + retrieval + prompts, wall time.
2. kNN embeddings with the default embedder (the scoring model, mean-pooled hidden states) for
   ``n_embed`` training texts: texts/s, and the time extrapolated to train + test.
3. ``n_score`` of those bm25 records scored with ``--scoring naive`` and fast: examples/s,
   speed-up, largest log-prob difference, identical predictions.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import List

import fire
import torch

from classification import methods
from classification.backend.loader import load_lm
from classification.backend.hidden import EMBED_MAX_TOKENS
from classification.backend.scoring import LlamaLM
from classification.inputs.datasets import load_dataset
from classification.inputs.retrieval import records_and_anchors
from classification.paths import DEFAULT_CKPT_DIR, DEFAULT_TOKENIZER_PATH

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ag_news"


def embedding_flops(lm: LlamaLM, texts: List[str]) -> float:
    """Multiply-adds x 2 of a forward pass over each text's tokens (as embedded: BOS, at most
    EMBED_MAX_TOKENS): the layers' weights, and the attention's scores and values; no output head."""
    params = lm.model.params
    layer_weights = sum(p.numel() for name, p in lm.model.named_parameters() if name.startswith("layers."))
    flops = 0.0
    for text in texts:
        t = min(len(lm.tokenizer.encode(text, bos=True, eos=False)), EMBED_MAX_TOKENS + 1)
        flops += 2 * layer_weights * t + 4 * params.n_layers * params.dim * t * t / 2  # causal: half the scores
    return flops


def mm_gflops(n: int = 2048, repeats: int = 10) -> float:
    """What fp32 torch.mm reaches on this machine (the limit a forward pass's matmuls approach)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def main(data_dir: str = str(DEFAULT_DATA), k: int = 1, n_test: int = 0, n_embed: int = 512, n_score: int = 16,
         ckpt_dir: str = DEFAULT_CKPT_DIR, tokenizer_path: str = DEFAULT_TOKENIZER_PATH) -> None:
    """Time bm25 record building, knn embedding and naive vs fast scoring of retrieved prompts.

    Args:
        data_dir: the ag_news folder (train.csv, test.csv).
        k: demonstrations per class.
        n_test: test examples to build bm25 records for (0: all 7,600).
        n_embed: training texts embedded to measure the embedding rate (0: skip).
        n_score: bm25 records scored naive and fast (0: skip).
        ckpt_dir, tokenizer_path: the scoring model (and default embedder).
    """
    data = load_dataset(preset="ag_news", data_dir=data_dir)
    start = time.time()
    records, _ = records_and_anchors(data, "direct", None, k, 1, bool(n_test), n_test or 16, 0, "bm25")
    print(f"bm25 records: {len(records)} test examples x {len(data.train)} train, k={k}: "
          f"{time.time() - start:.1f} s")
    if not (n_embed or n_score):
        return
    lm = load_lm(ckpt_dir, tokenizer_path)
    if n_embed:
        texts = [ex.text for ex in data.train[:n_embed]]
        start = time.time()
        lm.text_embeddings(texts)
        seconds = time.time() - start
        rate = n_embed / seconds
        total = len(data.train) + len(data.test)
        print(f"knn embeddings: {rate:.1f} texts/s; train + test ({total}) would take {total / rate / 60:.1f} min")
        flops = embedding_flops(lm, texts)
        limit = mm_gflops()
        print(f"  {flops / n_embed / 1e9:.1f} GFLOP per text: {flops / seconds / 1e9:.0f} GFLOP/s, "
              f"{flops / seconds / 1e9 / limit:.0%} of torch.mm's {limit:.0f} GFLOP/s here "
              f"(limit: {limit * 1e9 / (flops / n_embed):.1f} texts/s)")
    if n_score:
        chosen = records[:n_score]
        naive = LlamaLM(lm.model, lm.tokenizer, lm.max_batch_size, True, "naive")
        times, scores = {}, {}
        for name, model in (("naive", naive), ("fast", lm)):
            start = time.time()
            scores[name] = methods.direct(model, chosen)
            times[name] = time.time() - start
        diff = max(abs(a - b) for x, y in zip(scores["naive"], scores["fast"])
                   for a, b in zip(x["log_probs"], y["log_probs"]))
        same = all(x["prediction"] == y["prediction"] for x, y in zip(scores["naive"], scores["fast"]))
        print(f"direct, {n_score} bm25 records: naive {n_score / times['naive']:.2f} ex/s, fast "
              f"{n_score / times['fast']:.2f} ex/s, speed-up {times['naive'] / times['fast']:.1f}x, "
              f"max abs diff {diff:.2e}, same predictions {same}")


if __name__ == "__main__":
    fire.Fire(main)
