"""Write a Meta-layout checkpoint of any shape with random weights, without holding it in RAM.

    python benchmarks/make_random_checkpoint.py benchmarks/llama-7b-params.json checkpoints/random-7b \
        --vocab_size 49152 --dtype bf16
    python benchmarks/make_random_checkpoint.py benchmarks/llama-7b-params.json checkpoints/random-7b-4l \
        --dtype fp32 --n_layers 4

Weights are normal(0, 0.02) (norms 1), written through file-backed tensors so a 7B-shaped model
(~14 GB in bf16) can be made on a machine with less free memory than that.  Used to measure
memory and speed at scale; the scores of such a model are meaningless.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Optional

import fire
import torch
from tqdm import tqdm

from llama.model import ModelArgs, Transformer
from llama.runtime import resolve_dtype


def main(params_path: str, out_dir: str, vocab_size: int = 49152, dtype: str = "bf16", seed: int = 0,
         n_layers: Optional[int] = None) -> None:
    """Write OUT_DIR/params.json and OUT_DIR/consolidated.00.pth.

    Args:
        params_path: a params.json giving the shape (e.g. benchmarks/llama-7b-params.json).
        out_dir: the checkpoint directory to write.
        vocab_size: vocabulary rows when params.json leaves it at -1 (49152 = the default tokenizer's).
        dtype: fp32, fp16 or bf16.
        seed: random seed.
        n_layers: keep only this many blocks (default: params.json's): layers of the full width at
            a fraction of the memory, e.g. 7B-shaped blocks in fp32 on a 24 GB machine.
    """
    params = json.loads(Path(params_path).read_text())
    if n_layers is not None:
        params["n_layers"] = n_layers
    if params.get("vocab_size", -1) <= 0:
        params["vocab_size"] = vocab_size
    args = ModelArgs.from_params(params)
    dt = resolve_dtype(dtype, torch.device("cpu"))
    with torch.device("meta"):
        shapes = {name: p.shape for name, p in Transformer(args).state_dict().items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    state = {}
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        for i, (name, shape) in enumerate(tqdm(shapes.items(), desc="random weights", unit="tensor")):
            n = shape.numel()
            storage = torch.UntypedStorage.from_file(f"{tmp}/{i}", shared=True, nbytes=n * dt.itemsize)
            t = torch.empty(0, dtype=dt).set_(storage.untyped(), 0, (n,)).view(shape)
            if name.endswith("norm.weight"):
                t.fill_(1.0)
            else:  # in chunks: a float32 copy of a whole 7B matrix is not needed
                flat = t.view(-1)
                for s in range(0, n, 1 << 24):
                    flat[s: s + (1 << 24)] = torch.randn(min(1 << 24, n - s), generator=gen).mul_(0.02).to(dt)
            state[name] = t
        torch.save(state, out / "consolidated.00.pth")
    (out / "params.json").write_text(json.dumps(params, indent=2) + "\n")
    print(f"wrote {out} ({sum(s.numel() for s in shapes.values()) * dt.itemsize / 1e9:.2f} GB)")


if __name__ == "__main__":
    fire.Fire(main)
