"""One block's projections at a model's shapes: fp32, bf16 and the int8 layer, and where int8's time goes.

    python benchmarks/bench_int8_layer.py benchmarks/llama-7b-params.json --tokens 256 --threads 1

For each projection shape of a block (wq/wk/wv/wo, w1/w3, w2) it times, best of ``--repeats``:
the fp32 and bf16 matmuls, torch's int8 kernel alone (``linear_dynamic`` on int8 activations
already in its input format; on a CPU without VNNI the layer's ``avx2`` path calls it twice), and the whole :class:`llama.quantize.Int8Linear` forward on each
quantized engine (per-token scales, rounding, rescaling around the kernel) -- with no outliers,
with a few outlier features kept in fp32 by calibration, and with the same features left to the
run-time split (not calibrated).  Inputs are normal(0, 1) with 6 features scaled to 30, like the
few "massive activation" channels of LLaMA-family models; weights are normal(0, 0.02).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import fire
import torch

from llama.model import ModelArgs, Transformer
from llama.quantize import Int8Linear, cpu_int8_features, int8_engine


def best_of(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def block_shapes(params_path: str) -> Dict[str, tuple]:
    """{"wq": (out, in), ...}: one block's projection shapes (kv heads included) from a params.json."""
    args = ModelArgs.from_params(json.loads(Path(params_path).read_text()), n_layers=1, vocab_size=8)
    with torch.device("meta"):
        block = Transformer(args).layers[0]
    return {name: tuple(getattr(block.attention if name[0] == "w" and name[1] in "qkvo" else block.feed_forward,
                                name).weight.shape) for name in ("wq", "wk", "wv", "wo", "w1", "w2", "w3")}


def main(params_path: str, tokens: int = 256, repeats: int = 3, threads: Optional[int] = None,
         engines: str = "fbgemm,onednn", n_outliers: int = 6) -> None:
    """Print a Markdown table of milliseconds per projection and the block's total.

    Args:
        params_path: a params.json giving the shape (e.g. benchmarks/llama-7b-params.json).
        tokens: rows per call (a batch of prompts' tokens).
        repeats: timed calls per measurement; the fastest counts.
        threads: torch intra-op threads (default: torch's).
        engines: comma-separated quantized engines to pack the int8 weights with.
        n_outliers: input features scaled to 30 (above LLM.int8's threshold of 6).
    """
    if threads:
        torch.set_num_threads(threads)
    names = [e.strip() for e in (engines.split(",") if isinstance(engines, str) else engines)]
    shapes = block_shapes(params_path)
    torch.manual_seed(0)
    print(f"{params_path}: {tokens} tokens, {torch.get_num_threads()} threads, CPU {cpu_int8_features()}, "
          f"default int8 engine here: {int8_engine()}")
    cols = ["fp32", "bf16"] + [f"{e} {what}" for e in names for what in ("kernel", "int8", "int8 kept", "int8 run-time")]
    print("| projection (out x in) | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    totals: Dict[str, float] = {c: 0.0 for c in cols}
    for name, (out, inp) in shapes.items():
        w = torch.randn(out, inp) * 0.02
        x = torch.randn(tokens, inp)
        hot = torch.arange(n_outliers) * (inp // max(n_outliers, 1))  # (n_outliers,) spread features
        x_out = x.clone()
        x_out[:, hot] *= 30.0
        wb, xb = w.bfloat16(), x.bfloat16()
        row: Dict[str, float] = {"fp32": best_of(lambda: x @ w.t(), repeats),
                                 "bf16": best_of(lambda: xb @ wb.t(), repeats)}
        # The kernel's own input: the int8 values and the one range row (-128 ... 127) that fixes
        # its activation scale at 1 (llama.quantize's "vnni" path).
        ints = torch.cat([torch.round(x / (x.abs().amax(1, keepdim=True) / 127)), torch.zeros(1, inp)])
        ints[-1, 0], ints[-1, -1] = -128.0, 127.0
        for engine in names:
            plain = Int8Linear(w, 6.0, engine=engine)
            kept = Int8Linear(w, 6.0, keep=hot, kernel=plain.kernel, engine=engine)
            row[f"{engine} kernel"] = best_of(lambda: torch.ops.quantized.linear_dynamic(ints, plain._packed, False),
                                              repeats)
            row[f"{engine} int8"] = best_of(lambda: plain(x), repeats)
            row[f"{engine} int8 kept"] = best_of(lambda: kept(x_out), repeats)
            row[f"{engine} int8 run-time"] = best_of(lambda: plain(x_out), repeats)
        for c in cols:
            totals[c] += row[c]
        print(f"| {name} ({out} x {inp}) | " + " | ".join(f"{row[c] * 1e3:.1f}" for c in cols) + " |")
    print("| **block** | " + " | ".join(f"**{totals[c] * 1e3:.1f}**" for c in cols) + " |")
    print("speed-up against fp32 (block): "
          + ", ".join(f"{c} {totals['fp32'] / totals[c]:.2f}x" for c in cols[1:]))


if __name__ == "__main__":
    fire.Fire(main)
