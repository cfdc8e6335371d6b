"""Worker for tests/test_parallel.py: logits of a fixed batch under torchrun (any shard count).

    python mp_logits.py CKPT OUT [MP_SIZE [QUANTIZE]]   (MP_SIZE: default the checkpoint's shard count;
    "" for the default)
QUANTIZE quantizes the model first (llama.quantize mode, e.g. int8; calibrated on the first sequence)."""

import sys

import torch

from llama.checkpoint import count_shards, load_model
from llama.quantize import quantize_model
from llama.runtime import setup_runtime


def main(ckpt: str, out: str, mp_size: str = "", quantize: str = "none") -> None:
    rt = setup_runtime(model_parallel_size=int(mp_size) if mp_size else count_shards(ckpt), device="cpu")
    model = load_model(ckpt, rt.device, rt.dtype, rt.mp_rank, rt.mp_size)
    ids = torch.arange(40).view(2, 20) * 7 % model.params.vocab_size
    model = quantize_model(model, quantize, rt.device, calibration=ids[:1])  # every rank, in step
    with torch.no_grad():
        logits = model(ids)
    if rt.is_main:
        torch.save(logits, out)


if __name__ == "__main__":
    main(*sys.argv[1:5])
